-- The token broker: store the token under the lease ARGV[1] (a login
-- that works ends the fleet's back-off).
--   KEYS  token, lease, fail, backoff
--   ARGV  fence (the lease's value), the sealed token, its TTL in ms,
--         the broker's channel
-- Reply: 1, or 0 when the lease is no longer ARGV[1]'s (nothing written).
-- Publishes "token <fence>" on the channel.

if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('PUBLISH', ARGV[4], 'token ' .. ARGV[1])
return 1
