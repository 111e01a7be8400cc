-- The token broker: a value and its time left (the token, or the
-- failure in force).
--   KEYS  the key
--   ARGV  none
-- Reply: {value, PTTL in ms}, or nil when there is none.

local v = redis.call('GET', KEYS[1])
if not v then return nil end
return {v, redis.call('PTTL', KEYS[1])}
