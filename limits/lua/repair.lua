-- Put one member's calls back after Redis lost data (sl_redis_repair.c),
-- for one upstream, and acknowledge the repair phase.
--   KEYS  m, k (as fleet.lua), then per rate bucket: r, a, x (ids put
--         back, a set) [, h if shares] [, b if a leaky bucket] [, s if it
--         follows reports and is not a leaky bucket, whose reports go into
--         its level]; then one key per slot; then per report: r, and
--         s (b for a leaky bucket); then the pause key p if there is a pause
--   ARGV  member, since (the phase this repair answers), then nbuckets,
--         per bucket: limit, span_us, flags (1: shares, 2: a leaky bucket,
--         followed by its leak: n calls per p µs; 4: reports), n, then n
--         triples: id,
--         delay_us (the call was sent delay_us before this script was
--         written: it is stamped now - delay_us, never earlier than its
--         send), app; then nslots, per slot: member, ttl_us (ZADD key now +
--         ttl_us member: a reservation or a concurrency lease, the same
--         member as before, so resending adds nothing); then nreports,
--         per report: leaky (0/1), remaining, delay_us (since its call was
--         sent), known (its send on the instance's lower bound of Redis's
--         clock; 0: none, then now - delay_us - allowance_us), allowance_us,
--         span_us, limit, probe_us [, n, p if leaky];
--         then the pause: left_us (0: none).
-- A usage report is written as sync.lua writes one, from the merged log,
-- unless the bucket holds one whose call was sent later (`sat`); its
-- cutoff (the earliest its call can have been sent) is kept in s as `cut`, and calls put back later by
-- other members' repairs that were sent from the cutoff on are added to
-- its `sent`: each call counts once against the report, whichever order
-- the repairs run in.
-- An id (the process, its send time, an ordinal) is added to x once per
-- phase, and only then its stamp to r: two workers of one process, a
-- resent repair or two racing repairs put a call back once.  A later
-- phase puts it back again (its log may have been lost again while x
-- was not).  Only calls stamped from the phase's cutoff on (in the
-- marker, see fleet.lua) are put back: the others survived.  Stamps are
-- merged into r in order (newest first), with their apps in a; h is
-- dropped, rebuilt by the next decision.  A leaky bucket's level is
-- replayed from its merged log (refill() below), never lowered.  The
-- member is added to k only if the marker still names this phase.
-- Reply: {now, calls put back, acknowledged (0/1)}.

--! include prelude.lua
-- A leaky bucket's level after Redis lost it: replayed from log L (newest
-- first) over SPAN (a drain time of the full bucket, plus the margin),
-- as an empty bucket before its calls would have filled -- and what may
-- have been in it.  By the queue's reflection formula, for any moment u
-- the level now is at most max(the replay, Q(u) + A(u) - n x (now - u)),
-- A(u) the calls' worth sent after u, and Q(u) is at most the bucket
-- (LIMIT x p) at the span's start and just after each call (it was
-- admitted): the least of these bounds, at most the bucket
-- (sl_bucket_refill's arithmetic).  A bucket empty a drain time before a
-- burst comes back with at most the burst, undrained; one that was being
-- kept full comes back full.
-- Written only if above the level found (other members' repairs,
-- commits since).
local function refill(l, lb, limit, span, n, p)
  local all, cut = redis.call('LRANGE', l, 0, -1), now - span
  local st = {}
  for i = 1, #all do
    local x = tonumber(all[i])
    if x <= cut then break end
    st[i] = x
  end
  if #st == 0 then return end
  -- the replay, oldest first
  local q, prev = 0, nil
  for i = #st, 1, -1 do
    if prev and st[i] > prev then q = math.max(q - n * (st[i] - prev), 0) end
    q, prev = q + p, math.max(prev or st[i], st[i])
  end
  if now > prev then q = math.max(q - n * (now - prev), 0) end
  -- the least bound: the span's start, then just after each moment sent
  local least, i = #st * p - n * span, 1
  while i <= #st do
    local j = i
    while j < #st and st[j + 1] == st[i] do j = j + 1 end
    local term = (i - 1) * p - n * math.max(now - st[i], 0)
    if term < least then least = term end
    i = j + 1
  end
  local full = limit * p
  q = math.max(q, full + math.min(least, 0))
  if q > full then q = full end
  if q > level(lb, n, p) then set_level(lb, q, n, p, span) end
end
local m, k = KEYS[1], KEYS[2]
local me, since = ARGV[1], ARGV[2]
-- the phase's cutoff (fleet.lua): calls sent before it survived
local cur = redis.call('GET', m)
local cut = tonumber(cur and string.match(cur, '^r|%d+|[^|]*|%d+|(%d+)|') or 0)
local a, kk, put = 3, 3, 0
local nb = tonumber(ARGV[a])
a = a + 1
for _ = 1, nb do
  local limit, span, flags = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  local l, ap, x, h, lb, ln, lp = KEYS[kk], KEYS[kk + 1], KEYS[kk + 2], nil, nil, nil, nil
  kk = kk + 3
  if flags % 2 == 1 then h = KEYS[kk]; kk = kk + 1 end
  if flags % 4 >= 2 then
    lb, ln, lp = KEYS[kk], tonumber(ARGV[a]), tonumber(ARGV[a + 1])
    kk, a = kk + 1, a + 2
  end
  local sk = nil
  if flags % 8 >= 4 then sk = KEYS[kk]; kk = kk + 1 end
  local n = tonumber(ARGV[a])
  a = a + 1
  local add, aps = {}, {}
  for j = 1, n do
    local st = now - tonumber(ARGV[a + 3 * j - 2])
    if st > now - span and st >= cut and redis.call('SADD', x, since .. '/' .. ARGV[a + 3 * j - 3]) == 1 then
      add[#add + 1] = st
      aps[st] = aps[st] or {}
      table.insert(aps[st], ARGV[a + 3 * j - 1])
    end
  end
  a = a + 3 * n
  if #add > 0 then
    table.sort(add, function(p, q) return p > q end)
    local old, oap = redis.call('LRANGE', l, 0, -1), redis.call('LRANGE', ap, 0, -1)
    local sv, av, i, j, most = {}, {}, 1, 1, 2 * limit + 64
    while (i <= #old or j <= #add) and #sv < most do
      if j > #add or (i <= #old and tonumber(old[i]) >= add[j]) then
        sv[#sv + 1] = old[i]; av[#av + 1] = oap[i] or '-'; i = i + 1
      else
        sv[#sv + 1] = fmt(add[j]); av[#av + 1] = table.remove(aps[add[j]]); j = j + 1
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
    -- a report put back before these calls: those sent from its cutoff on
    -- are not in it
    local cut = sk and tonumber(redis.call('HGET', sk, 'cut') or 'x')
    if cut then
      local late = 0
      for _, st in ipairs(add) do if st >= cut then late = late + 1 end end
      if late > 0 then redis.call('HINCRBY', sk, 'sent', late) end
    end
  end
  if lb then refill(l, lb, limit, span, ln, lp) end
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
-- the provider's usage reports (sync.lua's arithmetic)
local nrep = tonumber(ARGV[a])
a = a + 1
for _ = 1, nrep do
  local l, s = KEYS[kk], KEYS[kk + 1]
  kk = kk + 2
  local leaky, remaining, delay = ARGV[a] == '1', tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local known, allow, span = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local limit, probe = tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7])
  a = a + 8
  local ln, lp = nil, nil
  if leaky then ln, lp = tonumber(ARGV[a]), tonumber(ARGV[a + 1]); a = a + 2 end
  -- its call was sent at the latest at `at` (never earlier than measured),
  -- at the earliest at the cutoff
  local at = now - delay
  local cutoff, untl = at - allow, at + span
  if known > 0 then cutoff = math.min(known, at) end
  if remaining > limit then remaining = limit end
  local after = logged_from(l, cutoff)
  if leaky then
    -- the provider's level, drained from the send, and every call after
    local l2 = math.max((limit - remaining) * lp - ln * (now - at), 0) + math.max(after - 1, 0) * lp
    if l2 > level(s, ln, lp) then set_level(s, l2, ln, lp, span) end
  elseif untl > now then
    local old = redis.call('HGET', s, 'sat')
    if not old or tonumber(old) < at then
      redis.call('HSET', s, 'left', fmt(remaining - math.max(after - 1, 0)), 'sent', 0,
        'until', fmt(untl), 'rv', fmt(remaining), 'rat', fmt(at), 'cut', fmt(cutoff), 'sat', fmt(at),
        'probe', fmt(now + probe))
      redis.call('PEXPIRE', s, fmt(math.ceil((untl - now) / 1000) + 1000))
    end
  end
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
