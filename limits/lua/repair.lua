-- Put one member's calls back after Redis lost data (sl_redis_repair.c),
-- for one upstream, and acknowledge the repair phase.
--   KEYS  m, k (as fleet.lua), then per rate bucket: r, a, x (ids put
--         back, a set) [, h if shares]; then one key per slot; then the
--         pause key p if there is a pause
--   ARGV  member, since (the phase this repair answers), then nbuckets,
--         per bucket: limit, span_us, has_h (0/1), n, then n pairs: id,
--         delay_us (the call was sent delay_us before this script was
--         written: it is stamped now - delay_us, never earlier than its
--         send); then nslots, per slot: member, ttl_us (ZADD key now +
--         ttl_us member: a reservation or a concurrency lease, the same
--         member as before, so resending adds nothing); then the pause:
--         left_us (0: none).
-- An id (the process, its send time, an ordinal) is added to x once per
-- phase, and only then its stamp to r: two workers of one process, a
-- resent repair or two racing repairs put a call back once.  A later
-- phase puts it back again (its log may have been lost again while x
-- was not).  Only calls stamped from the phase's cutoff on (in the
-- marker, see fleet.lua) are put back: the others survived.  Stamps are
-- merged into r in order (newest first), with '-' as their app in a; h is
-- dropped, rebuilt by the next decision.  The member is added to k only
-- if the marker still names this phase.
-- Reply: {now, calls put back, acknowledged (0/1)}.

--! include prelude.lua
local m, k = KEYS[1], KEYS[2]
local me, since = ARGV[1], ARGV[2]
-- the phase's cutoff (fleet.lua): calls sent before it survived
local cur = redis.call('GET', m)
local cut = tonumber(cur and string.match(cur, '^r|%d+|[^|]*|%d+|(%d+)|') or 0)
local a, kk, put = 3, 3, 0
local nb = tonumber(ARGV[a])
a = a + 1
for _ = 1, nb do
  local limit, span, hash, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), ARGV[a + 2] == '1', tonumber(ARGV[a + 3])
  a = a + 4
  local l, ap, x, h = KEYS[kk], KEYS[kk + 1], KEYS[kk + 2], nil
  kk = kk + 3
  if hash then h = KEYS[kk]; kk = kk + 1 end
  local add = {}
  for j = 1, n do
    local st = now - tonumber(ARGV[a + 2 * j - 1])
    if st > now - span and st >= cut and redis.call('SADD', x, since .. '/' .. ARGV[a + 2 * j - 2]) == 1 then
      add[#add + 1] = st
    end
  end
  a = a + 2 * n
  if #add > 0 then
    table.sort(add, function(p, q) return p > q end)
    local old, oap = redis.call('LRANGE', l, 0, -1), redis.call('LRANGE', ap, 0, -1)
    local sv, av, i, j, most = {}, {}, 1, 1, 2 * limit + 64
    while (i <= #old or j <= #add) and #sv < most do
      if j > #add or (i <= #old and tonumber(old[i]) >= add[j]) then
        sv[#sv + 1] = old[i]; av[#av + 1] = oap[i] or '-'; i = i + 1
      else
        sv[#sv + 1] = fmt(add[j]); av[#av + 1] = '-'; j = j + 1
      end
    end
    redis.call('DEL', l, ap)
    push('RPUSH', l, sv)
    push('RPUSH', ap, av)
    local ttl = fmt(math.ceil(span / 1000) + 1000)
    redis.call('PEXPIRE', l, ttl)
    redis.call('PEXPIRE', ap, ttl)
    if h then redis.call('DEL', h) end
    put = put + #add
  end
  redis.call('PEXPIRE', x, fmt(math.ceil(span / 1000) + 1000))
end
local ns = tonumber(ARGV[a])
a = a + 1
for _ = 1, ns do
  local ttl = tonumber(ARGV[a + 1])
  redis.call('ZADD', KEYS[kk], fmt(now + ttl), ARGV[a])
  if redis.call('PTTL', KEYS[kk]) < math.ceil(ttl / 1000) + 1000 then
    redis.call('PEXPIRE', KEYS[kk], fmt(math.ceil(ttl / 1000) * 2 + 1000))
  end
  kk, a = kk + 1, a + 2
end
local left = tonumber(ARGV[a])
if left > 0 then
  local u = now + left
  if u > tonumber(redis.call('GET', KEYS[kk]) or 0) then
    redis.call('SET', KEYS[kk], fmt(u), 'PX', fmt(math.ceil(left / 1000) + 1000))
  end
end
local acked = 0
if cur and string.match(cur, '^r|%d+|[^|]*|(%d+)|') == since then
  redis.call('SADD', k, me)
  redis.call('PEXPIRE', k, 60000)
  acked = 1
end
return {now, put, acked}
