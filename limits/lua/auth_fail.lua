-- The token broker: under the lease ARGV[1], the login failed.  The
-- failure (ARGV[2]) is in force for this try's back-off (the fleet's, from
-- KEYS[3], at least ARGV[4]); the next back-off is twice that, at most
-- ARGV[5], and is kept past this one so that the next failure finds it.
--   KEYS  lease, fail, backoff
--   ARGV  fence, the failure's text, the channel, the first back-off (ms),
--         the longest back-off (ms)
-- Reply: this try's back-off in ms, or 0 when the lease was lost (nothing
-- written).  Publishes "failed <fence>" on the channel.

if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local b = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
if b < tonumber(ARGV[4]) then b = tonumber(ARGV[4]) end
local nb = math.min(b * 2, tonumber(ARGV[5]))
redis.call('SET', KEYS[2], ARGV[2], 'PX', b)
redis.call('SET', KEYS[3], nb, 'PX', b + nb + tonumber(ARGV[5]))
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[3], 'failed ' .. ARGV[1])
return b
