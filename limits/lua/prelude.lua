-- Shared by the scripts below: the time (NOW: as Redis writes it), number
-- formatting, and logging sends in rate list L and its app list AP (keeps
-- both ordered newest first, index for index the same calls; refreshes
-- their TTLs): STAMPS, in the order they were sent, by APPS (one each).
-- A stamp earlier than the list's newest entry is written as that entry
-- (the list stays ordered; later is the safe side).  H (rules with
-- shares, else nil): a hash of each app's entries in L, with '#n' the
-- number of entries it accounts for; kept by every script that adds or
-- drops entries, and rebuilt from AP by a decision that finds '#n'
-- differing from L's length (see share_wait).  Stale entries are popped by
-- decisions.  A list is at most LIMIT long, except when the limit was
-- lowered (a reload) under calls already admitted: those are all kept (up
-- to 2 x LIMIT + 64), so that raising the limit again grants nothing they
-- used.  One LPUSH per list, whatever the number of sends: each returns
-- the list's length, so the two lengths are compared after the fact.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function fmt(x) return string.format('%.0f', x) end
local NOW = fmt(now)
local function hadd(h, app, n)
  if not h or n == 0 then return end
  if redis.call('HINCRBY', h, app, n) <= 0 then redis.call('HDEL', h, app) end
  redis.call('HINCRBY', h, '#n', n)
end
-- CMD (LPUSH or RPUSH) VALS, in order, onto list KEY, at most 1000
-- a command (Lua's stack bounds unpack); returns the list's length
local function push(cmd, key, vals)
  local len, i = 0, 1
  while i <= #vals do
    local j = math.min(i + 999, #vals)
    len = redis.call(cmd, key, unpack(vals, i, j))
    i = j + 1
  end
  return len
end
local function log(l, ap, stamps, apps, limit, span, h)
  local n, sv = #stamps, {}
  local cur = tonumber(redis.call('LINDEX', l, 0) or 0)
  for i = 1, n do
    if stamps[i] > cur then cur = stamps[i] end
    sv[i] = fmt(cur)
  end
  local len = push('LPUSH', l, sv)
  local alen = push('LPUSH', ap, apps)
  if alen > len then
    redis.call('LTRIM', ap, 0, len - 1)
  elseif alen < len then
    -- the app list lost step with the log (it expired, or an older
    -- version did not keep it): the older entries' apps are unknown
    redis.call('DEL', ap)
    local pad = {}
    for i = 1, len - n do pad[i] = '-' end
    push('RPUSH', ap, pad)
    push('LPUSH', ap, apps)
    if h then redis.call('DEL', h) end
  end
  if h then
    local cnt = {}
    for i = 1, n do cnt[apps[i]] = (cnt[apps[i]] or 0) + 1 end
    for x, c in pairs(cnt) do hadd(h, x, c) end
  end
  local most = 2 * limit + 64
  if len > most then
    if h then
      local cnt = {}
      for _, x in ipairs(redis.call('LRANGE', ap, most, -1)) do cnt[x] = (cnt[x] or 0) + 1 end
      for x, c in pairs(cnt) do hadd(h, x, -c) end
    end
    redis.call('LTRIM', l, 0, most - 1)
    redis.call('LTRIM', ap, 0, most - 1)
  end
  local ttl = fmt(math.ceil(span / 1000) + 1000)
  redis.call('PEXPIRE', l, ttl)
  redis.call('PEXPIRE', ap, ttl)
  if h then redis.call('PEXPIRE', h, ttl) end
end
-- The entries of log L stamped from CUTOFF on (read from the newest, 64
-- a command, up to the first older one).
local function logged_from(l, cutoff)
  local after, i, more = 0, 0, true
  while more do
    local chunk = redis.call('LRANGE', l, i, i + 63)
    if #chunk == 0 then break end
    for j = 1, #chunk do
      if tonumber(chunk[j]) >= cutoff then after = after + 1
      else more = false; break end
    end
    i = i + 64
  end
  return after
end
-- A leaky bucket's level: hash LB holds l (units of 1/p call), at (µs),
-- n and p (the leak it was written with: n calls per p µs).  Read in
-- units of the leak N per P, drained to now (a reload that changed the
-- leak is rescaled, rounded up: it never grants room).  Also whether LB
-- exists (a level drained to 0 keeps its key until its TTL; a missing one
-- may have been evicted: decide.lua).
local function level(lb, n, p)
  local h = redis.call('HMGET', lb, 'l', 'at', 'n', 'p')
  if not h[1] then return 0, false end
  local l = tonumber(h[1])
  if l <= 0 then return 0, true end
  local hp = tonumber(h[4] or p)
  if hp ~= p then l = math.ceil(l * p / hp) end
  local dt = now - tonumber(h[2] or now)
  if dt <= 0 then return l, true end
  if dt >= math.floor(l / n) + 1 then return 0, true end
  return math.max(l - n * dt, 0), true
end
-- Write level L (drained to now) to LB, kept until it has drained plus
-- SPAN (µs) and a second.
local function set_level(lb, l, n, p, span)
  if l <= 0 then redis.call('DEL', lb); return end
  redis.call('HSET', lb, 'l', fmt(l), 'at', NOW, 'n', fmt(n), 'p', fmt(p))
  redis.call('PEXPIRE', lb, fmt(math.ceil((l / n + span) / 1000) + 1000))
end
-- A call of cost n (> 1) holds one reservation member, MEMBER with '*n'
-- before its '|app' (base:call*n|app); UNITS reads it back (1 without).
local function weigh(member, n)
  if n <= 1 then return member end
  local head, app = string.match(member, '^(.*)|([^|]*)$')
  return head .. '*' .. n .. '|' .. app
end
local function units(mb) return tonumber(string.match(mb, '%*(%d+)|[^|]*$') or 1) end
-- Units reserved in V: its members, each weighed (WEIGHTED: the rule has
-- costs, else each member is one).
local function reserved(v, weighted)
  if not weighted then return redis.call('ZCARD', v) end
  local n = 0
  for _, mb in ipairs(redis.call('ZRANGE', v, 0, -1)) do n = n + units(mb) end
  return n
end
--! include commits.lua
