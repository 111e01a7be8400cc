-- The token broker: drop the lease ARGV[1] (if it is still held) and
-- announce the failure.
--   KEYS  lease
--   ARGV  fence, the broker's channel
-- Reply: 1.  Publishes "failed <fence>" on the channel.

if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('PUBLISH', ARGV[2], 'failed ' .. ARGV[1])
return 1
