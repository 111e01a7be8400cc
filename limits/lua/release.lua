-- Remove members: releases (concurrency slots, reservations never sent) and
-- undos.  KEYS: sorted sets.  ARGV: channel, then per key: member, limit.
-- A key whose member was there is published on the channel when its set
-- held at least `limit` members before (0: always), i.e. when someone may
-- be waiting for it.  Reply: now.

--! include prelude.lua
for i = 1, #KEYS do
  local lim = tonumber(ARGV[2 * i + 1])
  local before = 0
  if lim > 0 then before = redis.call('ZCARD', KEYS[i]) end
  if redis.call('ZREM', KEYS[i], ARGV[2 * i]) == 1 and before >= lim then
    redis.call('PUBLISH', ARGV[1], KEYS[i])
  end
end
return now
