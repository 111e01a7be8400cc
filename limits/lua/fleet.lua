-- The fleet's heartbeat and repair phase, one upstream (sl_redis_repair.c).
--   KEYS  m (the marker), f (live members: hash member -> last seen, µs),
--         k (members that put their calls back in this phase: set),
--         p (the upstream's pause key: published when the phase ends)
--   ARGV  member, expiry_us (a member not seen for this long is not
--         waited for), min_us, max_us (a phase lasts at least / at most),
--         channel, margin_us (how long a commit may run after its call
--         was sent: store_timeout and the commit's hold), cluster (1: a
--         Redis Cluster, whose node ids the marker carries; else 0)
-- The marker is "state|evicted|run_id|since|cutoff|beat": state o
-- (decisions run) or r (a repair phase since `since`, Redis µs), Redis's
-- run_id and evicted_keys when it was set, the phase's cutoff, and the
-- last heartbeat (Redis µs; every heartbeat writes it).  A repair phase
-- starts when the marker is missing (FLUSHALL, a restart without
-- persistence, a failover to a replica without it, its eviction), names
-- another run_id (a restart that loaded a snapshot, a failover) or fewer
-- evicted keys than Redis reports now.  On a Redis Cluster the run_id
-- field carries the node's id and replication id too
-- ("run_id@node@replid"), and a marker naming another node that is still
-- a primary, not failing, and whose replication history this node does
-- not continue (its master_replid2 is not that node's replid: it was not
-- promoted from it, by a failover or a takeover) came with its slot by
-- migration: MIGRATE moves keys whole and a script never runs on keys
-- split between two nodes (TRYAGAIN), so nothing was lost, and the
-- marker is taken over (this node's names and evicted count) without a
-- phase.  The cutoff says which calls are
-- put back: those sent from then on.  0 (all) unless the marker survived
-- on another server: replication and snapshots keep a primary's writes in
-- order, so every commit that ran before the surviving heartbeat survived
-- too, and only calls sent from that heartbeat less margin_us may be
-- missing.  A phase ends when it is min_us old and every member seen
-- within expiry_us is in k, or when it is max_us old.
-- A phase also starts when no member has beaten for 2 x expiry_us (the
-- member registry f expired): the fleet was stopped, or decided under
-- other keys (a reload that split the upstream into tenant groups, or
-- joined them, and back); its cutoff is the last heartbeat's.
-- Reply: {now, in_phase (0/1), since, this member put its calls back (0/1),
-- this run started the phase (0: no, 1: a loss, 2: no member beat for a
-- while)}.

--! include prelude.lua
local m, f, k, p = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local me, expiry = ARGV[1], tonumber(ARGV[2])
local pmin, pmax, chan = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local margin = tonumber(ARGV[6])
local cluster = ARGV[7] == '1'
-- (a user without +info: the marker alone detects a loss)
local function info(section, field)
  local s = redis.pcall('INFO', section)
  if type(s) ~= 'string' then return nil end
  return string.match(s, field .. ':(%w+)')
end
local rid = info('server', 'run_id') or '-'
local node = cluster and redis.pcall('CLUSTER', 'MYID')
local replid2
if type(node) == 'string' then
  rid = rid .. '@' .. node .. '@' .. (info('replication', 'master_replid') or '-')
  replid2 = info('replication', 'master_replid2')
end
local ev = tonumber(info('stats', 'evicted_keys') or 0)
local st, mev, mrid, since, mcut, beat = nil, 0, nil, 0, 0, 0
local cur = redis.call('GET', m)
if cur then
  local a, b, c, d, x, e = string.match(cur, '^(%a)|(%d+)|([^|]*)|(%d+)|(%d+)|(%d+)$')
  st, mev, mrid, since = a, tonumber(b or 0), c, tonumber(d or 0)
  mcut, beat = tonumber(x or 0), tonumber(e or 0)
end
-- the marker's node (a cluster's) is another, alive, and a primary: the
-- slot moved here with its keys
local function migrated()
  local from, frepl
  if mrid then from, frepl = string.match(mrid, '@(%x+)@(%w+)$') end
  if not from or type(node) ~= 'string' or from == node or frepl == replid2 then
    return false
  end
  local all = redis.pcall('CLUSTER', 'NODES')
  if type(all) ~= 'string' then return false end
  for line in string.gmatch(all, '[^\n]+') do
    local id, flags = string.match(line, '^(%x+) %S+ (%S+)')
    if id == from then
      local set = {}
      for f in string.gmatch(flags, '[^,]+') do set[f] = true end
      return set.master == true and not set.fail and not set['fail?']
    end
  end
  return false
end
-- the marker outlives every heartbeat (renewed by each) by a day: only a
-- fleet stopped that long starts with a repair phase
local MTTL = 86400000
local function mark(s, cut)
  redis.call('SET', m, s .. '|' .. mev .. '|' .. rid .. '|' .. fmt(since) .. '|' ..
    fmt(cut) .. '|' .. NOW, 'PX', MTTL)
end
local started = 0
if st and mrid ~= rid and migrated() then
  mev = ev
  mark(st, mcut)
  mrid = rid
end
-- no member beat for a while (the registry f outlives the last heartbeat
-- by 2 x expiry): the whole fleet was stopped, or decided under other
-- keys meanwhile (a reload that moved the upstream's keys: tenant groups
-- on a cluster), so calls sent since the last heartbeat may be missing
local stale = st == 'o' and mrid == rid and ev <= mev and redis.call('EXISTS', f) == 0
if not st or mrid ~= rid or ev > mev or stale then
  local cut = 0
  if st and (mrid ~= rid or stale) and beat > 0 then cut = math.max(beat - margin, 0) end
  st, since, started, mev = 'r', now, stale and 2 or 1, ev
  mark('r', cut)
  redis.call('DEL', k)
elseif st == 'o' then
  mark('o', 0)
end
redis.call('HSET', f, me, NOW)
local all = redis.call('HGETALL', f)
local live = {}
for j = 1, #all, 2 do
  if tonumber(all[j + 1]) > now - expiry then live[#live + 1] = all[j]
  else redis.call('HDEL', f, all[j]) end
end
redis.call('PEXPIRE', f, fmt(math.ceil(expiry / 1000) * 2))
if st == 'r' then
  local age, done = now - since, false
  if age >= pmax then done = true
  elseif age >= pmin then
    done = true
    for _, x in ipairs(live) do
      if redis.call('SISMEMBER', k, x) == 0 then done = false; break end
    end
  end
  if done then
    -- evictions during the phase may have taken what it put back: the
    -- count from its start stays, so that they start another
    mark('o', 0)
    redis.call('PUBLISH', chan, p)
    st = 'o'
  end
end
local acked = 0
if st == 'r' and redis.call('SISMEMBER', k, me) == 1 then acked = 1 end
return {now, st == 'r' and 1 or 0, fmt(since), acked, started}
