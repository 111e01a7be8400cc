-- Log sent calls: the commit section, ARGV from A and KEYS from K, returns
-- where the next section starts.  KEYS: per call, per rate rule: r, v, a
-- [, s if sync] [, h if shares] [, b if a leaky bucket] [, z if it settles]
-- [, k if per].
-- ARGV: ncalls, then per call: member ("" for a call decided locally during
-- an outage: logged unconditionally), delay_us, app, nrules, then per rule:
-- limit, span_us, flags (1: sync, 2: per, 4: shares, 8: a leaky bucket,
-- followed by its leak: n, p; 16: the call's cost in this rule follows, its
-- reservation is the member weighed, and it logs that many entries; 32: the
-- rule settles costs: KEYS has its z after b, where the call's member gets
-- the stamp its entries were written with, for settle.lua).  A call with a member is logged only
-- if its reservation was still there; its stamp is now minus the delay
-- since it was sent.  The calls going to one bucket are written together,
-- in their order (one LPUSH of all their stamps), and a `per` bucket's r
-- key is (re)entered in its rule's index k, scored by now.  A leaky
-- bucket's level takes one call's worth (p) per call logged, at now (a
-- reservation becomes level when its send is known: the bucket's proof,
-- docs/internals/design.md, "Leaky buckets").

local function commits(a, k)
  local n = tonumber(ARGV[a])
  local g, order = {}, {}
  a = a + 1
  for c = 1, n do
    local member, delay, app, nr = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2], tonumber(ARGV[a + 3])
    a = a + 4
    for i = 1, nr do
      local limit, span, flags = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
      a = a + 3
      local l, v, ap, s, idx, h, lb, ln, lp = KEYS[k], KEYS[k + 1], KEYS[k + 2], nil, nil, nil, nil, nil, nil
      k = k + 3
      if flags % 2 == 1 then s = KEYS[k]; k = k + 1 end
      if flags % 8 >= 4 then h = KEYS[k]; k = k + 1 end
      if flags % 16 >= 8 then
        lb, ln, lp = KEYS[k], tonumber(ARGV[a]), tonumber(ARGV[a + 1])
        k, a = k + 1, a + 2
      end
      local z = nil
      if flags % 64 >= 32 then z = KEYS[k]; k = k + 1 end
      if flags % 4 >= 2 then idx = KEYS[k]; k = k + 1 end
      local cost = 1
      if flags % 32 >= 16 then cost = tonumber(ARGV[a]); a = a + 1 end
      local stamp, go = now - delay, false
      if member == '' then go = stamp > now - span
      else go = redis.call('ZREM', v, weigh(member, cost)) == 1 end
      if go then
        -- a reload between two calls' commits may have changed the rule: the
        -- larger limit and span keep more, the safe side
        local b = g[l]
        if not b then
          b = {ap = ap, h = h, s = s, idx = idx, limit = limit, span = span, st = {}, apps = {},
               lb = lb, ln = ln, lp = lp, z = z, zm = {}}
          g[l] = b
          order[#order + 1] = l
        end
        if limit > b.limit then b.limit = limit end
        if span > b.span then b.span = span end
        for _ = 1, cost do
          b.st[#b.st + 1] = stamp
          b.apps[#b.apps + 1] = app
        end
        if z then b.zm[#b.st] = member end
      end
    end
  end
  local ix, ixo = {}, {}
  for _, l in ipairs(order) do
    local b = g[l]
    if b.z then
      -- each settling call's stamp as log() writes it (never earlier than
      -- the list's head): its newest entry's
      local cur = tonumber(redis.call('LINDEX', l, 0) or 0)
      for i = 1, #b.st do
        if b.st[i] > cur then cur = b.st[i] end
        if b.zm[i] then redis.call('HSET', b.z, b.zm[i], fmt(cur)) end
      end
      redis.call('PEXPIRE', b.z, fmt(math.ceil(b.span / 1000) + 1000))
    end
    log(l, b.ap, b.st, b.apps, b.limit, b.span, b.h)
    if b.lb then
      set_level(b.lb, level(b.lb, b.ln, b.lp) + #b.st * b.lp, b.ln, b.lp, b.span)
    end
    if b.s and redis.call('EXISTS', b.s) == 1 then
      redis.call('HINCRBY', b.s, 'sent', #b.st)
    end
    if b.idx then
      local e = ix[b.idx]
      if not e then e = {span = 0, m = {}}; ix[b.idx] = e; ixo[#ixo + 1] = b.idx end
      e.m[#e.m + 1] = NOW
      e.m[#e.m + 1] = l
      if b.span > e.span then e.span = b.span end
    end
  end
  -- each index once a run: its buckets in one ZADD (pairs stay whole:
  -- push() cuts after an even count)
  for _, idx in ipairs(ixo) do
    push('ZADD', idx, ix[idx].m)
    redis.call('PEXPIRE', idx, fmt(math.ceil(ix[idx].span / 1000) + 1000))
  end
  return a, k
end
