-- Pause the upstream.  KEYS: p, w.  ARGV: duration_us, deadline, reason.
-- Counted from min(now, deadline): a pause that arrives late is not
-- stretched.  w keeps the reason as long as the pause lasts.

--! include prelude.lua
local d, deadline = tonumber(ARGV[1]), tonumber(ARGV[2])
local eff = now
if deadline > 0 and deadline < now then eff = deadline end
local u = eff + d
if u > now and u > tonumber(redis.call('GET', KEYS[1]) or 0) then
  redis.call('SET', KEYS[1], fmt(u), 'PX', fmt(math.ceil((u - now) / 1000) + 1000))
  redis.call('SET', KEYS[2], ARGV[3], 'PX', fmt(math.ceil((u - now) / 1000) + 1000))
end
return now
