-- Renew a call's concurrency leases (XX: a lapsed lease stays lapsed).
-- KEYS: sets.  ARGV: member, lease_us.  Reply: now.

--! include prelude.lua
local ttl = tonumber(ARGV[2])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', fmt(now + ttl), ARGV[1])
  redis.call('PEXPIRE', KEYS[i], fmt(math.ceil(ttl / 1000) * 2 + 1000))
end
return now
