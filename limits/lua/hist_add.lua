-- History write.  KEYS: minute hashes (y keys).  ARGV: ttl_ms, max_fields,
-- then per key: nfields, then (app, calls) pairs.  An app the hash does
-- not know yet is counted as "other" once it holds max_fields names.
-- Returns now (µs of Redis time).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl, maxf, a = tonumber(ARGV[1]), tonumber(ARGV[2]), 3
for i = 1, #KEYS do
  local k, nf = KEYS[i], tonumber(ARGV[a])
  a = a + 1
  for j = 1, nf do
    local f, c = ARGV[a], tonumber(ARGV[a + 1])
    a = a + 2
    if f ~= 'other' and redis.call('HEXISTS', k, f) == 0 and
       redis.call('HLEN', k) >= maxf then f = 'other' end
    redis.call('HINCRBY', k, f, c)
  end
  redis.call('PEXPIRE', k, ttl)
end
return now
