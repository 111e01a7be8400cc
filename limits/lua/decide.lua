-- The decision script: one run logs the upstream's calls sent in this loop
-- pass (the commit section, first: safe however late it runs), then
-- decides a batch of calls, each all-or-nothing, in order.
--   KEYS  the commit section's, then each bucket of the batch once: rate
--         r, v, a [, s if sync] [, h if shares]; leaky bucket r, v, a
--         [, s if sync], b; concurrency c [, k if per]; pause p
--   ARGV  base, lease_us, reserve_us, deadline (Redis µs, 0: none), the
--         commit section, then the batch's rules, each once: a count, then
--         per rule: kind, limit, span_us, probe_us (-1: no sync;
--         concurrency: -2 when the bucket is entered in its rule's index
--         k); a calendar rule (kind k, K) has the margin for span_us and
--         three more: its period's start and end and the next period's end
--         (Redis µs, as this instance estimates Redis's clock: the script
--         moves to the next period itself when its TIME is already past
--         the end); a leaky bucket (kind b, B) has three more: its leak
--         (n calls per p µs) and its capacity in units of 1/p call (the
--         margin taken off); a rate or bucket rule's arguments end with
--         its shares ("apps", always none for a bucket):
--         a count, then per share: app ('*': every app not named), max,
--         reserve (in calls).  Then ncalls, then per call: app, nrules,
--         then per rule: its number among the batch's rules and the index
--         in KEYS of its bucket's first key, and the call's cost in it (a
--         call of cost n > 1 holds one reservation, its member weighed:
--         base:call*n|app).  A rule's limit field is negative when the
--         rule has costs: its reservations are then summed by weight.
-- A call's member is base..':'..call_number..'|'..app (app names have no
-- '|': the snapshot reads a concurrency slot's app from its member).
-- Reply: {now, 0} when past the deadline (no decision written), {now, 2}
-- when Redis lost data or the fleet is putting its calls back (no
-- decision; what the run reserved before it found out is undone), else {now, 1, per call: {1, best_rule,
-- remaining, reset_us, shadow_rule, shadow_wait_us, {every shadow rule
-- that would deny}} or {0, denying_rule,
-- wait_us, share (0: the rule's limit, 1: the app's max, 2: other apps'
-- reservations), the calls left as the provider's report said when that
-- report is what refuses (else -1), that report's age_us (-1), and the
-- calls sent since it}}.  A rule's kind in upper case (R, B, C) is in shadow mode: when
-- it would deny, the call goes on and takes nothing from it.

--! include prelude.lua
-- Drop the entries of L that left the window (the oldest, at its
-- tail), and their apps from AP and H (nil: no shares).  LEN: L's
-- length (as read in this run: entries are counted by index).
-- Returns the new length and the oldest entry left (nil or false:
-- none).  The oldest entry is read first: when it is still in
-- the window, as in long windows, that is all.  Otherwise the tail is
-- read 16 entries a command, and what left is cut with one LTRIM: a
-- batch's worth of entries leaving costs a few commands, not two per
-- entry.
local function prune(l, ap, h, len, span)
  local cut = now - span
  local tail = redis.call('LINDEX', l, -1)
  if not tail or tonumber(tail) > cut then return len, tail end
  local n = len - 1
  tail = nil
  while n > 0 do
    local lo = math.max(n - 16, 0)
    local chunk = redis.call('LRANGE', l, lo, n - 1)
    local j = #chunk
    while j >= 1 and tonumber(chunk[j]) <= cut do j = j - 1 end
    n = lo + j
    if j >= 1 then tail = chunk[j]; break end
  end
  if n < len then
    if n > 0 then redis.call('LTRIM', l, 0, n - 1) else redis.call('DEL', l) end
    if h then
      local cnt = {}
      for _, x in ipairs(redis.call('LRANGE', ap, n, len - 1)) do cnt[x] = (cnt[x] or 0) + 1 end
      for x, c in pairs(cnt) do hadd(h, x, -c) end
    end
    -- the app list keeps the same calls, index for index from the head
    if n > 0 then redis.call('LTRIM', ap, 0, n - 1) else redis.call('DEL', ap) end
  end
  return n, tail
end
-- Shares: the wait until a call of APP also fits its share of the
-- rule (0: now), why it waits (1: the app's max, 2: other apps'
-- reservations), and when it fits, the calls the app has left after
-- it.  L, AP, H: the bucket's log, apps and per-app counts, LEN
-- entries in the window (pruned); NRES reservations in V.  SHR: {app,
-- max, reserve} per share ('*': every app not named).  The same
-- arithmetic as the memory store (sl_mem_share_wait).
local function share_wait(b, l, ap, v, h, len, nres, limit, span, pend, app, shr)
  -- the counts are read once a run (B, the bucket's cache): the run's
  -- own reservations are added to them as it makes them
  if not b.cnt then
    if tonumber(redis.call('HGET', h, '#n') or 0) ~= len then
      -- counts missing or out of step: rebuilt from the app list
      redis.call('DEL', h)
      if len > 0 then
        local cnt = {}
        for _, x in ipairs(redis.call('LRANGE', ap, 0, len - 1)) do cnt[x] = (cnt[x] or 0) + 1 end
        local alen = redis.call('LLEN', ap)
        if alen < len then cnt['-'] = (cnt['-'] or 0) + len - alen end
        for x, c in pairs(cnt) do redis.call('HSET', h, x, c) end
        redis.call('HSET', h, '#n', len)
        local pt = redis.call('PTTL', l)
        if pt > 0 then redis.call('PEXPIRE', h, pt) end
      end
    end
    local cnt, held = {}, {}
    local hv = redis.call('HGETALL', h)
    for j = 1, #hv, 2 do cnt[hv[j]] = tonumber(hv[j + 1]) end
    if nres > 0 then
      for _, mb in ipairs(redis.call('ZRANGE', v, 0, -1)) do
        local x = string.match(mb, '|([^|]*)$') or '-'
        held[x] = (held[x] or 0) + 1
      end
    end
    b.cnt, b.held = cnt, held
  end
  local cnt, held = b.cnt, b.held
  local function used(x) return (cnt[x] or 0) + (held[x] or 0) end
  local mine, other, names = nil, nil, {}
  for _, e in ipairs(shr) do
    if e[1] == '*' then other = e else names[e[1]] = e end
  end
  local named = names[app] ~= nil
  if named then mine = names[app] else mine = other end
  local max = mine and mine[2] or limit
  local all, u = len + nres, used(app)
  if u + 1 > max then
    if pend then return pend - now, 1 end
    -- room when the (u - max)-th oldest of its calls leaves (held ones
    -- are not logged yet)
    local k, seen, hi = u - max, 0, len - 1
    -- read from the oldest end in chunks, and stop as soon as found: a
    -- denial costs the entries up to that call, not the whole log
    while hi >= 0 do
      local lo = math.max(hi - 127, 0)
      local apps = redis.call('LRANGE', ap, lo, hi)
      for x = #apps, 1, -1 do
        if apps[x] == app then
          if seen == k then
            return math.max(tonumber(redis.call('LINDEX', l, lo + x - 1)) + span - now, 1), 1
          end
          seen = seen + 1
        end
      end
      hi = lo - 1
    end
    return span, 1
  end
  local cls, nused, pool = {}, 0, nil
  for x, e in pairs(names) do
    local ue = used(x)
    nused = nused + ue
    if e[3] ~= 0 and x ~= app then cls[x] = {math.abs(e[3]), ue, e[3] < 0} end
  end
  if named and other and other[3] ~= 0 then
    pool = {math.abs(other[3]), math.max(all - nused, 0), other[3] < 0}
  end
  local function kept(c)
    if c[2] >= c[1] or (c[3] and c[2] == 0) then return 0 end
    return c[1] - c[2]
  end
  local unused = 0
  for _, c in pairs(cls) do unused = unused + kept(c) end
  if pool then unused = unused + kept(pool) end
  if all + 1 + unused > limit then
    if pend then return pend - now, 2 end
    -- walk the log from its oldest entry (in chunks, stopping as soon
    -- as there is room): each one leaving frees a call, unless it was
    -- part of a reservation still unused then
    local hi = len - 1
    while hi >= 0 do
      local lo = math.max(hi - 127, 0)
      local apps = redis.call('LRANGE', ap, lo, hi)
      local times = redis.call('LRANGE', l, lo, hi)
      for j = #times, 1, -1 do
        local x = apps[j] or '-'
        local c = cls[x]
        if not c and pool and not names[x] then c = pool end
        all = all - 1
        if c and c[2] > 0 then
          local before = kept(c)
          c[2] = c[2] - 1
          unused = unused - before + kept(c)
        end
        if all + 1 + unused <= limit then
          return math.max(tonumber(times[j]) + span - now, 1), 2
        end
      end
      hi = lo - 1
    end
    return span, 2
  end
  local left = max - u - 1
  if limit - all - 1 - unused < left then left = limit - all - 1 - unused end
  return 0, 0, left
end
local deadline = tonumber(ARGV[4])
local a, k = commits(5, 1)
if deadline > 0 and now > deadline then return {now, 0} end
-- the fleet's marker, the last key (fleet.lua): missing, or a repair
-- phase, and no decision is made ({now, 2}); nor when a rate log is
-- found empty, or a leaky bucket's level missing, while Redis has
-- evicted keys since the marker was set (lost(): INFO, only then)
local mk = redis.call('GET', KEYS[#KEYS])
if not mk or string.sub(mk, 1, 1) ~= 'o' then return {now, 2} end
-- on a Redis Cluster the marker names the node it was written on: on
-- another node (the slot moved, or failed over, under a connection that
-- lived on), the next heartbeat says which, first
local mnode = string.match(mk, '^o|%d+|[^|@]*@(%x+)@')
if mnode and mnode ~= redis.call('CLUSTER', 'MYID') then return {now, 2} end
local function lost()
  local s = redis.pcall('INFO', 'stats')
  local ev = type(s) == 'string' and string.match(s, 'evicted_keys:(%d+)')
  return tonumber(ev or 0) > tonumber(string.match(mk, '^o|(%d+)|') or 0)
end
local base, lease, rttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
-- what this run learnt of each bucket, so that the calls of a batch
-- that share one read it once: bk[r key] = {len (entries in the list,
-- pruned once pruned), nres (live reservations), pruned, tail (the
-- oldest entry, once pruned), vttl (v's TTL set), and with shares
-- cnt and held (each app's entries and reservations, see share_wait)};
-- pz[p key] = the pause.  Only this run writes to them meanwhile, and
-- NOW is fixed.
local bk, pz, LAPSE = {}, {}, fmt(now + rttl)
-- the batch's rules, each once (a calendar rule counts from its
-- period's start minus the margin, its span field, and is full until
-- the period's end)
local SP, nsp = {}, tonumber(ARGV[a])
a = a + 1
for j = 1, nsp do
  local kind, limit, span, probe = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local weighted = limit < 0
  limit = math.abs(limit)
  local sh = kind == 'R' or kind == 'C' or kind == 'K' or kind == 'B'
  local pend, ttl, shr, leak = nil, span, nil, nil
  kind = string.lower(kind)
  a = a + 4
  if kind == 'k' then
    local ps, pe = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
    if now >= pe then ps, pe = pe, tonumber(ARGV[a + 2]) end
    kind, pend, ttl = 'r', pe, pe - now + span
    span = math.max(now - ps + span, 0)
    a = a + 3
  end
  if kind == 'b' then
    leak = {tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])}
    a = a + 3
  end
  if kind == 'r' or kind == 'b' then
    local m = tonumber(ARGV[a])
    a = a + 1
    if m > 0 then
      shr = {}
      for x = 1, m do
        shr[x] = {ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])}
        a = a + 3
      end
    end
  end
  SP[j] = {kind, limit, span, probe, sh, pend, ttl, shr, leak, weighted}
end
local out, ncalls = {now, 1}, tonumber(ARGV[a])
a = a + 1
for c = 1, ncalls do
  local app, n = ARGV[a], tonumber(ARGV[a + 1])
  local member, deny, wait, st = base .. ':' .. c .. '|' .. app, 0, 0, {}
  local skip, shadow, swait, shadows = {}, 0, 0, {}
  -- each rule: its entry in SP, and where its bucket's keys start
  local R, K, W = {}, {}, {}
  for i = 1, n do
    R[i] = SP[tonumber(ARGV[a + 3 * i - 1])]
    K[i] = tonumber(ARGV[a + 3 * i])
    W[i] = tonumber(ARGV[a + 3 * i + 1])
  end
  a = a + 2 + 3 * n
  -- phase one: look (lapsed reservations become entries: they count
  -- the same, so this is no decision)
  for i = 1, n do
    local kind, limit, span, probe, sh, pend, ttl, shr, leak, weighted = unpack(R[i], 1, 10)
    local w, why, sleft, ka, byrep, cost = 0, 0, nil, K[i], nil, W[i]
    if kind == 'b' then
      -- a leaky bucket: level + (reservations + 1) x p <= cap
      local l, v, ap = KEYS[ka], KEYS[ka + 1], KEYS[ka + 2]
      ka = ka + 3
      if probe >= 0 then ka = ka + 1 end  -- a report goes into the level
      local lb, n, p, cap = KEYS[ka], leak[1], leak[2], leak[3]
      local b = bk[l]
      if not b then
        local nres = reserved(v, weighted)
        local lvl, had = level(lb, n, p)
        -- a missing level (drained and expired, or deleted at 0) may
        -- also have been evicted, with its log or without: as for an
        -- empty rate log, Redis is asked whether it evicted keys since the
        -- marker (the heartbeat then has the fleet put it back, repair.lua)
        if not had and lost() then return {now, 2} end
        if nres > 0 then
          -- lapsed reservations count as sent now: into the log and level
          local lapsed = redis.call('ZRANGEBYSCORE', v, '-inf', NOW)
          if #lapsed > 0 then
            local st, apps = {}, {}
            for j = 1, #lapsed do
              for _ = 1, units(lapsed[j]) do st[#st + 1] = now; apps[#apps + 1] = '-' end
            end
            redis.call('ZREMRANGEBYSCORE', v, '-inf', NOW)
            log(l, ap, st, apps, limit, ttl, nil)
            lvl = lvl + #st * p
            set_level(lb, lvl, n, p, span)
            nres = nres - #st
          end
        end
        b = {nres = nres, lvl = lvl}
        bk[l] = b
      end
      if (b.nres + cost) * p > cap then
        -- never fits as things stand: the level's drain, one call's at least
        w = math.max(math.ceil(b.lvl / n), math.ceil(p / n))
      else
        local need = b.lvl + (b.nres + cost) * p - cap
        if need > 0 then w = math.ceil(need / n) end
      end
      st[i] = {0, b.nres, nil, false, nil, 0, nil}
    elseif kind == 'r' then
      local l, v, ap, s, h = KEYS[ka], KEYS[ka + 1], KEYS[ka + 2], nil, nil
      ka = ka + 3
      if probe >= 0 then s = KEYS[ka]; ka = ka + 1 end
      if shr then h = KEYS[ka] end
      local b, len, nres = bk[l], 0, 0
      if b then len, nres = b.len, b.nres
      else
        nres = reserved(v, weighted)
        if nres > 0 then
          -- with shares, each lapsed reservation is logged as its app's
          local lapsed = redis.call('ZRANGEBYSCORE', v, '-inf', NOW)
          local gone = #lapsed
          if gone > 0 then
            local st, apps = {}, {}
            for _, mb in ipairs(lapsed) do
              for _ = 1, units(mb) do
                st[#st + 1] = now
                apps[#apps + 1] = h and (string.match(mb, '|([^|]*)$') or '-') or '-'
              end
            end
            gone = #st
            redis.call('ZREMRANGEBYSCORE', v, '-inf', NOW)
            log(l, ap, st, apps, limit, ttl, h)
            nres = nres - gone
            if s and redis.call('EXISTS', s) == 1 then
              redis.call('HINCRBY', s, 'sent', gone)
            end
          end
        end
        len = redis.call('LLEN', l)
        if len == 0 and lost() then return {now, 2} end
        b = {len = len, nres = nres}
        if h then b.len, b.tail = prune(l, ap, h, len, span); b.pruned = true end
        len = b.len
        bk[l] = b
      end
      -- COST units fit iff entries + nres + cost - 1 < limit
      local m = limit - nres - (cost - 1)
      if m <= 0 then w = pend and pend - now or span
      elseif len >= m then
        local e = tonumber(redis.call('LINDEX', l, m - 1))
        if e > now - span then w = pend and pend - now or e + span - now end
      end
      local room, isprobe = nil, false
      if s then
        local h = redis.call('HMGET', s, 'left', 'sent', 'until', 'probe', 'rv', 'rat')
        if h[1] and tonumber(h[3]) > now then
          room = tonumber(h[1]) - tonumber(h[2] or 0) - nres
          if w == 0 and room < cost then
            local pa = tonumber(h[4] or 0)
            if probe > 0 and now >= pa then isprobe = true
            else
              w = tonumber(h[3]) - now
              if probe > 0 and pa - now < w then w = pa - now end
              -- refused by the provider's word: what it said, and when
              byrep = {tonumber(h[5] or -1), h[6] and now - tonumber(h[6]) or -1,
                       tonumber(h[2] or 0)}
            end
          end
        end
      end
      if h and w == 0 then
        w, why, sleft = share_wait(b, l, ap, v, h, len, nres, limit, span, pend, app, shr)
      end
      st[i] = {len, nres, room, isprobe, sleft, why, byrep}
    elseif kind == 'p' then
      local u = pz[KEYS[ka]]
      if not u then
        u = tonumber(redis.call('GET', KEYS[ka]) or 0)
        pz[KEYS[ka]] = u
      end
      if u > now then w = u - now end
    else
      if redis.call('ZCOUNT', KEYS[ka], '(' .. NOW, '+inf') >= limit then
        w = 1000000
      end
    end
    -- a shadow rule that would deny: reported, untouched, denies nothing
    if sh and w > 0 then
      skip[i] = true
      shadows[#shadows + 1] = i
      if w > swait then shadow, swait = i, w end
    elseif w > wait then deny, wait = i, w end
  end
  if deny > 0 then
    local br = st[deny] and st[deny][7]
    out[#out + 1] = {0, deny, wait, st[deny] and st[deny][6] or 0,
                     br and br[1] or -1, br and br[2] or -1, br and br[3] or 0}
  else
    -- phase two: take room in every bucket
    local best, rem, reset = 0, 0, 0
    for i = 1, n do
      local kind, limit, span, probe, sh, pend, ttl, shr, leak = unpack(R[i], 1, 9)
      local ka, cost = K[i], W[i]
      if skip[i] or kind == 'p' then
      -- a shadow rule that would deny takes nothing; a pause takes nothing
      elseif kind == 'b' then
        local v, b, p = KEYS[ka + 1], bk[KEYS[ka]], leak[2]
        redis.call('ZADD', v, LAPSE, weigh(member, cost))
        b.nres = b.nres + cost
        if not b.vttl then
          redis.call('PEXPIRE', v, fmt(math.ceil((rttl + ttl) / 1000) + 1000))
          b.vttl = true
        end
        local left = math.max(math.floor((leak[3] - b.lvl) / p) - b.nres, 0)
        if not sh and (best == 0 or left < rem) then
          best, rem, reset = i, left, math.ceil((b.lvl + b.nres * p) / leak[1])
        end
      elseif kind == 'r' then
        local l, v, ap, s, h = KEYS[ka], KEYS[ka + 1], KEYS[ka + 2], nil, nil
        ka = ka + 3
        if probe >= 0 then s = KEYS[ka]; ka = ka + 1 end
        if shr then h = KEYS[ka] end
        local nres, room, b = st[i][2], st[i][3], bk[l]
        if not b.pruned then
          b.len, b.tail = prune(l, ap, h, b.len, span)
          b.pruned = true
        end
        local len, tail = b.len, b.tail
        redis.call('ZADD', v, LAPSE, weigh(member, cost))
        b.nres = nres + cost
        if b.held then b.held[app] = (b.held[app] or 0) + 1 end
        if not b.vttl then
          redis.call('PEXPIRE', v, fmt(math.ceil((rttl + ttl) / 1000) + 1000))
          b.vttl = true
        end
        if st[i][4] then redis.call('HSET', s, 'probe', fmt(now + probe)) end
        local used, left = len + nres + cost, 0
        if used < limit then left = limit - used end
        if room and room - cost < left then left = math.max(room - cost, 0) end
        if st[i][5] and st[i][5] < left then left = st[i][5] end
        if not sh and (best == 0 or left < rem) then
          best, rem, reset = i, left, span
          if tail then reset = math.max(tonumber(tail) + span - now, 0) end
          if pend then reset = pend - now end
        end
      else
        local key = KEYS[ka]
        ka = ka + 1
        redis.call('ZREMRANGEBYSCORE', key, '-inf', NOW)
        redis.call('ZADD', key, fmt(now + lease), member)
        redis.call('PEXPIRE', key, fmt(math.ceil(lease / 1000) * 2 + 1000))
        if probe == -2 then
          redis.call('ZADD', KEYS[ka], fmt(now + lease), key)
          redis.call('PEXPIRE', KEYS[ka], fmt(math.ceil(lease / 1000) * 2 + 1000))
        end
      end
    end
    out[#out + 1] = {1, best, rem, reset, shadow, swait, shadows}
  end
end
return out
