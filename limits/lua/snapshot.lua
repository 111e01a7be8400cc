-- What an operator sees of one upstream; never takes quota (it only drops
-- index entries and alert levels that are stale, and with ARGV alerts
-- records the levels it reports).
--   KEYS  x (alert levels: HASH rule\nper -> level), p, w, then per rule
--         without per: rate r, v, a [, s]; leaky bucket r, v, a [, s], b;
--         concurrency c; per rule with per: k (its index: member = the
--         bucket's r or c key)
--   ARGV  alerts (0/1), top, candidates, x_ttl_ms, nrules, then per rule:
--         kind (r, b, c), per (0/1), limit, span_us, sync (0/1), name,
--         nlevels, levels..., heads r, v, a, s, c (keys without the per
--         value), and for a bucket its leak n, p, its capacity and head b
-- Reply: {now, paused_until, reason, pause_new, per rule: {nbuckets,
-- {bucket, ...}}}, or only the first four when ARGV alerts is set and
-- another check of this upstream ran less than 0.9 s ago (whoever runs the
-- check records every crossing: the others need not repeat it).
-- with bucket = {key, used, reserved, remaining, resets_in_us,
-- report_left, level_was, level, {app, calls, app, calls, ...},
-- from_provider (0/1), reported remaining, sent since the report,
-- report age_us}.  While a report is in force, used is the provider's
-- count (limit - the report's room) when that is more than the log's.

--! include prelude.lua
local alerts, top, cand, xttl = ARGV[1] == '1', tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local nrules, a, k = tonumber(ARGV[5]), 6, 4
local pu = tonumber(redis.call('GET', KEYS[2]) or 0)
local out = {now, pu, redis.call('GET', KEYS[3]) or '', 0}
-- a pause is alerted once, by whoever sees it first; extending a
-- running pause is the same pause
if alerts and pu > now then
  local seen = tonumber(redis.call('HGET', KEYS[1], '\npause') or 0)
  if seen ~= pu then
    if seen <= now then out[4] = 1 end
    redis.call('HSET', KEYS[1], '\npause', fmt(pu))
    redis.call('PEXPIRE', KEYS[1], xttl)
  end
end
-- the fleet checks thresholds once a second, not once per instance:
-- an alert check that finds a recent one done answers only the above
if alerts then
  local last = tonumber(redis.call('HGET', KEYS[1], '\nchecked') or 0)
  if now - last < 900000 and now >= last then return out end
  redis.call('HSET', KEYS[1], '\nchecked', fmt(now))
  redis.call('PEXPIRE', KEYS[1], xttl)
end
-- entries of list l newer than horizon (newest first: binary search)
local function newer(l, horizon)
  local lo, hi = 0, redis.call('LLEN', l)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if tonumber(redis.call('LINDEX', l, mid)) > horizon then lo = mid + 1 else hi = mid end
  end
  return lo
end
local function figures(kind, key, r, v, ap, s, c, limit, span, pend, lb, leak)
  local f = {key = key, used = 0, res = 0, resets = -1, left = -1, n = 0, ap = ap,
             src = 0, rv = -1, sent = 0, age = -1}
  if kind == 'b' then
    -- the level in whole calls (rounded up) and the reservations; what
    -- fits now after both; no per-app split (the log is not the level)
    local n, p, cap = leak[1], leak[2], leak[3]
    local lvl = level(lb, n, p)
    f.res = reserved(v, true)
    f.used = math.ceil(lvl / p) + f.res
    f.left = math.max(math.floor((cap - lvl) / p) - f.res, 0)
    f.resets = math.ceil((lvl + f.res * p) / n)
  elseif kind == 'r' then
    f.n = newer(r, now - span)
    f.res = reserved(v, true)
    f.used = f.n + f.res
    if f.n > 0 then
      f.resets = math.max(tonumber(redis.call('LINDEX', r, f.n - 1)) + span - now, 0)
    elseif f.res > 0 then f.resets = span else f.resets = 0 end
    if pend > 0 then f.resets = f.used > 0 and math.max(pend - now, 0) or 0 end
    if s then
      local h = redis.call('HMGET', s, 'left', 'sent', 'until', 'rv', 'rat')
      if h[1] and tonumber(h[3]) > now then
        local room = tonumber(h[1]) - tonumber(h[2] or 0) - f.res
        f.left = math.max(room, 0)
        -- one figure: the provider's count when it is more than ours
        f.used = math.max(f.used, limit - room)
        f.src, f.rv, f.sent = 1, tonumber(h[4] or -1), tonumber(h[2] or 0)
        f.age = h[5] and math.max(now - tonumber(h[5]), 0) or -1
      end
    end
  else
    local live = redis.call('ZRANGEBYSCORE', c, '(' .. fmt(now), '+inf')
    f.used, f.held = #live, live
  end
  return f
end
local function emit(f, limit, name, levels)
  local rem = math.max(limit - f.used, 0)
  if f.left >= 0 and f.left < rem then rem = f.left end
  local level = 0
  for i = 1, #levels do
    if f.used >= levels[i] * limit - 1e-9 then level = i end
  end
  local field = name .. '\n' .. f.key
  local was = level
  if #levels > 0 then
    -- level:time of the last look; a level not looked at for 10 minutes
    -- (its bucket left the index) is forgotten
    local v = redis.call('HGET', KEYS[1], field)
    was = 0
    if v then
      local lv, at = string.match(v, '^(%d+):(%d+)$')
      if lv and now - tonumber(at) <= 600000000 then was = tonumber(lv) end
    end
    if alerts then
      if level == 0 then
        if v then redis.call('HDEL', KEYS[1], field) end
      else redis.call('HSET', KEYS[1], field, level .. ':' .. fmt(now)) end
      redis.call('PEXPIRE', KEYS[1], xttl)
    end
  end
  local apps = {}
  if f.n > 0 or f.held then
    local tally, names, list = {}, {}, {}
    if f.held then
      -- a concurrency slot's member ends in |app
      for i = 1, #f.held do list[i] = string.match(f.held[i], '|([^|]*)$') or '-' end
    else list = redis.call('LRANGE', f.ap, 0, f.n - 1) end
    for i = 1, #list do
      local x = list[i]
      if not tally[x] then tally[x] = 0; names[#names + 1] = x end
      tally[x] = tally[x] + 1
    end
    if not f.held and #list < f.n then
      if not tally['-'] then tally['-'] = 0; names[#names + 1] = '-' end
      tally['-'] = tally['-'] + f.n - #list
    end
    for i = 1, #names do apps[#apps + 1] = names[i]; apps[#apps + 1] = tally[names[i]] end
  end
  return {f.key, f.used, f.res, rem, f.resets, f.left, was, level, apps,
          f.src, f.rv, f.sent, f.age}
end
for i = 1, nrules do
  local kind, per, limit, span, sync, name = ARGV[a], ARGV[a + 1] == '1',
    tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), ARGV[a + 4] == '1', ARGV[a + 5]
  -- a calendar rule: its period's end (Redis µs; 0: rolling); its span
  -- reaches back to the period's start minus the margin
  local pend = tonumber(ARGV[a + 6])
  if pend > 0 and now >= pend then span = 0 end
  local nl, levels = tonumber(ARGV[a + 7]), {}
  for j = 1, nl do levels[j] = tonumber(ARGV[a + 7 + j]) end
  a = a + 8 + nl
  local hr, hv, ha, hs, hc = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  a = a + 5
  local leak, hb = nil, nil
  if kind == 'b' then
    leak, hb = {tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])}, ARGV[a + 3]
    a = a + 4
  end
  local rule = {}
  if not per then
    local f
    if kind == 'b' then
      local kb = k + 3
      if sync then kb = kb + 1 end
      f = figures(kind, '', KEYS[k], KEYS[k + 1], KEYS[k + 2], nil, nil, limit, span, pend,
                  KEYS[kb], leak)
      k = kb + 1
    elseif kind == 'r' then
      local s = nil
      if sync then s = KEYS[k + 3] end
      f = figures(kind, '', KEYS[k], KEYS[k + 1], KEYS[k + 2], s, nil, limit, span, pend)
      k = k + 3
      if sync then k = k + 1 end
    else
      f = figures(kind, '', nil, nil, nil, nil, KEYS[k], limit, span, pend)
      k = k + 1
    end
    rule = {1, {emit(f, limit, name, levels)}}
  else
    local idx = KEYS[k]
    k = k + 1
    if kind ~= 'c' then redis.call('ZREMRANGEBYSCORE', idx, '-inf', fmt(now - span))
    else redis.call('ZREMRANGEBYSCORE', idx, '-inf', fmt(now)) end
    local total = redis.call('ZCARD', idx)
    local members = redis.call('ZREVRANGE', idx, 0, cand - 1)
    local fs = {}
    for j = 1, #members do
      local m = members[j]
      local f
      if kind == 'b' then
        local key = string.sub(m, #hr + 1)
        f = figures(kind, key, m, hv .. key, ha .. key, nil, nil, limit, span, pend,
                    hb .. key, leak)
      elseif kind == 'r' then
        local key = string.sub(m, #hr + 1)
        local s = nil
        if sync then s = hs .. key end
        f = figures(kind, key, m, hv .. key, ha .. key, s, nil, limit, span, pend)
      else
        f = figures(kind, string.sub(m, #hc + 1), nil, nil, nil, nil, m, limit, span, pend)
      end
      fs[#fs + 1] = f
    end
    table.sort(fs, function(x, y)
      if x.used ~= y.used then return x.used > y.used end
      return x.key < y.key end)
    local list = {}
    for j = 1, #fs do
      local e = emit(fs[j], limit, name, levels)
      if (j <= top and e[2] > 0) or e[7] ~= e[8] then list[#list + 1] = e end
    end
    rule = {total, list}
  end
  out[#out + 1] = rule
end
return out
