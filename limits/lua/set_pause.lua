-- An operator's action on the pause.  KEYS: p, w, x (the alert levels).
-- ARGV: action ("set", "shorten" or "clear"), duration_us, reason (set:
-- the operator's, marked), channel.  set ends the pause at now + duration
-- if that is later, shorten at now + duration if that is sooner, clear
-- now; all on Redis's clock.  The pause alert's record in x (see the
-- snapshot) follows: a pause set or cleared counts as announced (the
-- operator's own alert says it), a shortened one keeps whether it was.  A
-- pause that ends sooner is published on the room channel, so the calls
-- every instance holds for it ask again at once.
-- Reply: {now, until before, reason before, changed (0/1), until after}
-- (untils in Redis µs, 0: none).

--! include prelude.lua
local p, w, x = KEYS[1], KEYS[2], KEYS[3]
local act, d = ARGV[1], tonumber(ARGV[2])
local old = tonumber(redis.call('GET', p) or 0)
if old <= now then old = 0 end
local why = redis.call('GET', w) or ''
local new = old
if act == 'set' then
  if now + d > old then new = now + d end
elseif act == 'shorten' then
  if old > now + d then new = now + d end
else new = 0 end
if new == old then return {now, old, why, 0, old} end
local seen = tonumber(redis.call('HGET', x, '\npause') or 0)
if new == 0 then
  redis.call('DEL', p, w)
  redis.call('HDEL', x, '\npause')
else
  local ttl = fmt(math.ceil((new - now) / 1000) + 1000)
  redis.call('SET', p, fmt(new), 'PX', ttl)
  if act == 'set' then redis.call('SET', w, ARGV[3], 'PX', ttl)
  else redis.call('PEXPIRE', w, ttl) end
  if act == 'set' or seen == old then
    redis.call('HSET', x, '\npause', fmt(new))
    if redis.call('PTTL', x) < 0 then
      redis.call('PEXPIRE', x, fmt(math.ceil((new - now) / 1000) + 600000))
    end
  end
end
if old > 0 and (new == 0 or new < old) then
  redis.call('PUBLISH', ARGV[4], p)
end
return {now, old, why, 1, new}
