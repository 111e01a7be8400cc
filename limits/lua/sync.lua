-- The provider's usage report.  KEYS: r, v, s.  ARGV: remaining, age_us,
-- allowance_us, span_us, limit, probe_us, deadline, channel, cutoff.  With
-- eff = min(now, deadline), the reporting call was sent at the latest at
-- eff - age, and not before CUTOFF: its local send time on the instance's
-- lower bound of Redis's clock (0 when none is known yet: eff - age -
-- allowance, allowance = store_timeout).  Entries stamped from the cutoff
-- on are not in the report -- but for the reporting call's own, which is
-- among them (a stamp is never earlier than its send; its commit is
-- written before the report, sl_redis_sync): one is taken off.  So a call sent just before the reporting one (within the clock
-- bound's error, microseconds on a LAN) counts twice, the safe side, and
-- calls sent one after the other count once.  The walk reads those
-- entries only; the report holds until eff - age + span.  Publishes s when
-- it gives room back.  A leaky bucket (KEYS b, its level; ARGV n, p, its
-- leak) keeps no report: the provider's level when it answered (limit -
-- remaining calls, which held the reporting call), drained from the
-- reporting call's latest possible send, plus every call sent after it
-- counted whole (the safe side), becomes the bucket's level, up or down.
-- `cut` keeps the cutoff and `sat` the reporting call's latest send: calls
-- a repair puts back later (repair.lua), sent from the cutoff on, are
-- added to `sent` (a call that was committed before Redis lost data too
-- then counts twice, the safe side), and a report put back is written
-- over this one only if its call was sent later.
-- Reply: now.

--! include prelude.lua
local l, v, s = KEYS[1], KEYS[2], KEYS[3]
local remaining, age, allow = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local span, limit, probe = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local deadline, eff = tonumber(ARGV[7]), now
if deadline > 0 and deadline < now then eff = deadline end
local cutoff, untl = eff - age - allow, eff - age + span
local known = tonumber(ARGV[9])
if known > 0 then cutoff = math.min(known, eff - age) end
local lb = KEYS[4]
if untl <= now and not lb then
  redis.call('DEL', s)
  return now
end
if remaining > limit then remaining = limit end
local after = logged_from(l, cutoff)
if lb then
  local n, p = tonumber(ARGV[10]), tonumber(ARGV[11])
  local was = level(lb, n, p)
  local theirs = (limit - remaining) * p - n * (now - (eff - age))
  local l = math.max(theirs, 0) + math.max(after - 1, 0) * p
  set_level(lb, l, n, p, span)
  if l < was then redis.call('PUBLISH', ARGV[8], s) end
  return now
end
local nres = redis.call('ZCOUNT', v, '(' .. fmt(now), '+inf')
local old = redis.call('HMGET', s, 'left', 'sent', 'until')
local oldroom = nil
if old[1] and tonumber(old[3]) > now then
  oldroom = tonumber(old[1]) - tonumber(old[2] or 0) - nres
end
local left = remaining - math.max(after - 1, 0)
redis.call('HSET', s, 'left', fmt(left), 'sent', 0, 'until', fmt(untl),
  'rv', fmt(remaining), 'rat', fmt(now), 'cut', fmt(cutoff), 'sat', fmt(eff - age))
local room = left - nres
-- the next probe comes one interval after the latest word, whatever
-- room it leaves (as the memory store does): a report that leaves one
-- call, spent through sluice, must not let a probe through at once
redis.call('HSET', s, 'probe', fmt(now + probe))
redis.call('PEXPIRE', s, fmt(math.ceil((untl - now) / 1000) + 1000))
if room > 0 and oldroom and room > oldroom then
  redis.call('PUBLISH', ARGV[8], s)
end
return now
