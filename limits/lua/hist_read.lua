-- History read.  KEYS[1]: the rule's y key with an empty per value (the
-- minute hashes are it plus the minute).  ARGV: first minute, minutes.
-- Returns {now, minute, {app, calls, ...}, minute, {...}, ...} for the
-- minutes that hold calls.

local t = redis.call('TIME')
local out = {tonumber(t[1]) * 1000000 + tonumber(t[2])}
local first, n = tonumber(ARGV[1]), tonumber(ARGV[2])
for m = first, first + n - 1 do
  local f = redis.call('HGETALL', KEYS[1] .. string.format('%d', m))
  if #f > 0 then
    out[#out + 1] = m
    out[#out + 1] = f
  end
end
return out
