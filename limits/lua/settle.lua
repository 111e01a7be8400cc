-- A call's cost settled: the provider says what it really cost.
--   KEYS  r, v, a, z (HASH member -> the stamp of the call's entries, as
--         its commit wrote it, or "-" once settled) [, b when a leaky
--         bucket]
--   ARGV  member (the call's, unweighed), cost (units it was logged with),
--         actual (units the provider says), limit, span_us, app, sent (a
--         lower bound of the call's send, Redis µs), and for a bucket its
--         leak n, p
-- Once per call: a member marked "-" in z is not settled again (z lives
-- one span).  Charged (actual > cost): the difference is logged now, as
-- sends (and into a bucket's level).  Refunded: the newest `cost - actual`
-- entries stamped no later than the call's stamp leave the log and the
-- app list: its own (entries later than it stay), or, when z does not
-- know its stamp (its commit not run yet), entries no later than SENT,
-- which are older than its own: what stays is never earlier than the
-- truth, the safe side.  A bucket's level drops by what the log's replay
-- loses with them (never more than the level owes them).
-- Reply: now.

--! include prelude.lua
local l, v, ap, z, lb = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local member, cost, actual = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local limit, span, app, sent = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local n, p = tonumber(ARGV[8]), tonumber(ARGV[9])
local mark = redis.call('HGET', z, member)
if mark == '-' then return now end
if mark then sent = tonumber(mark) end
redis.call('HSET', z, member, '-')
redis.call('PEXPIRE', z, fmt(math.ceil(span / 1000) + 1000))
if actual > cost then
  local st, apps = {}, {}
  for i = 1, actual - cost do st[i] = now; apps[i] = app end
  log(l, ap, st, apps, limit, span, nil)
  if lb then set_level(lb, level(lb, n, p) + (actual - cost) * p, n, p, span) end
  return now
end
if actual == cost then return now end
local vals = redis.call('LRANGE', l, 0, -1)
local gone, k = {}, cost - actual
for i = 1, #vals do
  if k == 0 then break end
  if tonumber(vals[i]) <= sent then gone[i] = true; k = k - 1 end
end
if next(gone) == nil then return now end
-- a bucket: the level its log replays to, with and without them
local function replay(skip)
  local lvl, at = 0, nil
  for i = #vals, 1, -1 do
    if not (skip and gone[i]) then
      local t = tonumber(vals[i])
      if at then lvl = math.max(lvl - n * (t - at), 0) end
      lvl, at = lvl + p, t
    end
  end
  if at and now > at then lvl = math.max(lvl - n * (now - at), 0) end
  return lvl
end
local owed = 0
if lb then owed = replay(false) - replay(true) end
local alen = redis.call('LLEN', ap)
for i in pairs(gone) do
  redis.call('LSET', l, i - 1, '\0gone')
  if i <= alen then redis.call('LSET', ap, i - 1, '\0gone') end
end
redis.call('LREM', l, 0, '\0gone')
redis.call('LREM', ap, 0, '\0gone')
if lb then set_level(lb, math.max(level(lb, n, p) - owed, 0), n, p, span) end
return now
