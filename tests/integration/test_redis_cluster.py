"""A redis-cluster:// store against a real Redis Cluster: six redis-server
processes (three primaries, a replica each) joined by `redis-cli --cluster
create`, all on loopback ports.  Sluice reads the slot map, sends each
upstream's scripts to the primary owning its slot, follows MOVED and ASK
while a slot is moved mid-window (and retries TRYAGAIN), survives a
primary's failover -- one that lost the last writes too -- and the quota
stays one count, checked at the upstream."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from harness import (RedisError, RedisServer, free_port, hand_overs, max_in_window,
                     resp_encode, resp_read, upstream_config, wait_for)


class ClusterNode(RedisServer):
    """One cluster-enabled redis-server; its cluster bus on a port of its
    own (cluster-port), its nodes.conf in DIR."""

    def __init__(self, directory, node_timeout):
        self.dir = directory
        self.bus = free_port()
        self.node_timeout = node_timeout
        super().__init__()

    @property
    def EXTRA_ARGS(self):
        return ("--cluster-enabled", "yes", "--cluster-port", str(self.bus),
                "--cluster-config-file", os.path.join(self.dir, "nodes-%d.conf" % self.port),
                "--cluster-node-timeout", str(self.node_timeout),
                # A replica that lost touch with its primary still takes
                # over (the lost-writes test cuts it off first).
                "--cluster-replica-validity-factor", "0",
                # Replicas sync at once, not after the default 5 s wait.
                "--repl-diskless-sync-delay", "0")

    def info(self, section):
        return dict(line.strip().split(":", 1)
                    for line in self.cli("INFO", section).splitlines() if ":" in line)

    def myid(self):
        return self.cli("CLUSTER", "MYID")

    def readonly_command(self, *args):
        """A read on a replica (READONLY first, on the same connection)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(resp_encode("READONLY") + resp_encode(*args))
            f = s.makefile("rb")
            resp_read(f)
            return resp_read(f)


class Cluster:
    """PRIMARIES primaries with REPLICAS replicas each, every slot covered;
    a primary not heard from for NODE_TIMEOUT ms is failed over."""

    def __init__(self, primaries=3, replicas=1, node_timeout=1000):
        self.dir = tempfile.mkdtemp(prefix="sluice-cluster-")
        self.nprimaries = primaries
        self.nodes = []
        try:
            for _ in range(primaries * (1 + replicas)):
                self.nodes.append(ClusterNode(self.dir, node_timeout))
            subprocess.run(["redis-cli", "--cluster", "create"] +
                           ["127.0.0.1:%d" % n.port for n in self.nodes] +
                           ["--cluster-replicas", str(replicas), "--cluster-yes"],
                           check=True, capture_output=True, timeout=60)
            assert wait_for(self._ready, 30), "the cluster did not come up"
        except BaseException:
            self.stop()
            raise

    def _ready(self):
        try:
            for n in self.live():
                if "cluster_state:ok" not in n.cli("CLUSTER", "INFO"):
                    return False
                rep = n.info("replication")
                if rep.get("role") == "slave" and rep.get("master_link_status") != "up":
                    return False
            return len(self.primaries()) == self.nprimaries
        except (OSError, subprocess.SubprocessError, RedisError):
            return False

    def live(self):
        return [n for n in self.nodes if n.proc and n.proc.poll() is None]

    def primaries(self):
        return [n for n in self.live() if n.info("replication").get("role") == "master"]

    def url(self, scheme="redis-cluster", auth=""):
        return "%s://%s%s" % (scheme, auth,
                              ",".join("127.0.0.1:%d" % n.port for n in self.nodes))

    def node(self, port):
        return next(n for n in self.nodes if n.port == port)

    def slot(self, upstream):
        return int(self.live()[0].cli("CLUSTER", "KEYSLOT", "{%s}" % upstream))

    def owner(self, upstream, ask=None):
        """The primary serving UPSTREAM's slot, as node ASK (any live node)
        sees the map."""
        slot = self.slot(upstream)
        for r in (ask or self.live()[0]).command("CLUSTER", "SLOTS"):
            if r[0] <= slot <= r[1]:
                return self.node(r[2][1])
        return None

    def replica_of(self, primary):
        pid = primary.myid()
        for n in self.live():
            if n is not primary and n.info("replication").get("role") == "slave" and \
                    pid in n.cli("CLUSTER", "NODES").split("myself,slave ")[1].split()[0]:
                return n
        return None

    def synced(self, primary, replica):
        """REPLICA has every write PRIMARY made so far."""
        want = int(primary.info("replication")["master_repl_offset"])
        return wait_for(lambda: int(replica.info("replication").get(
            "slave_repl_offset", -1)) >= want, 10)

    def stop(self):
        for n in self.nodes:
            n.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def cluster():
    c = Cluster()
    yield c
    c.stop()


NAMES = ["leads", "crm", "mail", "ads", "billing", "search"]


def cfg(up, url, limit=10, window="1m", names=("leads",), rules=None, options=None,
        **top):
    """One rate rule (or RULES) per upstream NAMES (all forwarding to UP,
    with upstream OPTIONS), one worker unless told (so "up" in /status
    means the one connection is)."""
    top.setdefault("workers", 1)
    rules = rules or [{"name": "all", "limit": limit, "window": window}]
    c = upstream_config(up, rules, url, name=names[0], prefix="/" + names[0], admin=True,
                        top=top, **(options or {}))
    for n in names[1:]:
        u = dict(c["upstreams"][0])
        u.update(name=n, prefix="/" + n)
        c["upstreams"].append(u)
    return c


def calls(instances, n, path="/leads/x", headers=None):
    return [instances[i % len(instances)].request("GET", path, headers=headers)[0]
            for i in range(n)]


def store_up(sl):
    return sl.status()["store"]["state"] == "up"


def heartbeat_past_the_calls(node, upstream="leads"):
    """Wait until a fleet heartbeat written on NODE is 0.4 s past the calls
    made so far: a repair (a failover, a slot that moved: another run_id)
    then puts none of them back twice (test_redis_sentinel.py says why
    0.4 s)."""
    sec, usec = node.cli("TIME").split()
    after = int(sec) * 1000000 + int(usec) + 400000

    def beat():
        m = node.command("GET", "sluice:{%s}:m" % upstream) or b""
        return int(m.split(b"|")[-1] or 0) > after if m.count(b"|") == 5 else False

    assert wait_for(beat, 10)


def rate_key(upstream):
    return "sluice:{%s}:r:3:all:" % upstream


def test_upstreams_spread_over_the_primaries_and_each_keeps_one_count(upstream, cluster,
                                                                    sluice):
    """Six upstreams, two instances of two workers each: each upstream's
    count is exact across both, and their keys live on more than one
    primary (each upstream's on the primary owning its slot)."""
    conf = lambda: cfg(upstream, cluster.url(), names=NAMES, workers=2)
    a, b = two_instances(sluice, conf)
    for name in NAMES:
        assert calls([a, b], 13, "/%s/x" % name) == [200] * 10 + [429] * 3, name
    assert len(upstream.times()) == 10 * len(NAMES)
    owners = set()
    for name in NAMES:
        owner = cluster.owner(name)
        owners.add(owner.port)
        assert int(owner.cli("LLEN", rate_key(name))) == 10, name
    assert len(owners) >= 2, owners
    st = a.status()["store"]
    assert st["address"].startswith("cluster 127.0.0.1:%d," % cluster.nodes[0].port)
    assert "Pw" not in st["address"]


def errorstats(node):
    """NODE's error replies so far, by their first word."""
    return {k[len("errorstat_"):]: int(v.split("=")[1])
            for k, v in node.info("errorstats").items()}


def two_instances(sluice, conf):
    """Two sluice instances, each on its own CONF(), once both have
    reached the cluster."""
    a, b = sluice(conf()), sluice(conf())
    assert wait_for(lambda: store_up(a) and store_up(b), 15)
    return a, b


def move_slot(cluster, slot, src, dst, pause):
    """Move SLOT from SRC to DST as `redis-cli --cluster reshard` does,
    waiting PAUSE seconds at each stage (or PAUSE[i] at stage i):
    IMPORTING and MIGRATING set (keys all on SRC, some absent: TRYAGAIN),
    the rate logs moved (keys split: TRYAGAIN), every key moved (the slot
    still migrating: ASK, then TRYAGAIN from DST for a key never written),
    then the new owner told to every primary (MOVED).  The commands go
    on the test's own connections, not through redis-cli: a process
    started per command adds its start-up to every stage on a busy
    machine."""
    pauses = pause if isinstance(pause, tuple) else (pause,) * 3
    dst_id, src_id = dst.myid(), src.myid()
    dst.command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    src.command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    time.sleep(pauses[0])
    keys = [k.decode() for k in src.command("CLUSTER", "GETKEYSINSLOT", slot, 1000)]
    rate = [k for k in keys if ":r:" in k]
    assert rate, keys
    src.command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", *rate)
    time.sleep(pauses[1])
    while True:            # (a heartbeat may write a key meanwhile)
        left = src.command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        if not left:
            break
        src.command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS",
                    *[k.decode() for k in left])
    time.sleep(pauses[2])
    for n in cluster.primaries():
        n.command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)


def test_a_slot_moved_mid_window_keeps_the_count(upstream, cluster, sluice):
    """The upstream's slot moves to another primary, as `redis-cli
    --cluster reshard` moves it, while calls keep coming.  During the move
    a decision whose keys are split between the two primaries (or partly
    absent) is answered TRYAGAIN and sent again; once every key has moved,
    the old primary answers ASK (the call goes to the new one, behind
    ASKING); once the move is final, MOVED (the map is read again).  Redis
    counts each of those answers; every call is answered 200 or 429, and
    the upstream sees exactly the limit."""
    limit = 40
    conf = lambda: cfg(upstream, cluster.url(), limit=limit, store_timeout="3s",
                       on_store_error="deny")
    a, b = two_instances(sluice, conf)
    src = cluster.owner("leads")
    dst = next(n for n in cluster.primaries() if n is not src)
    slot = cluster.slot("leads")
    assert calls([a, b], 6) == [200] * 6
    heartbeat_past_the_calls(src)
    results, stop = [], threading.Event()

    def load():
        # One call every 100 ms, alternating instances: one is always
        # waiting on a TRYAGAIN (retried every 200 ms at most) when the
        # last keys move, so the old primary answers it ASK.
        i = 0
        while not stop.is_set():
            try:
                results.append(calls([(a, b)[i % 2]], 1)[0])
            except Exception as e:  # an unanswered call: reported below
                results.append(repr(e))
            i += 1
            stop.wait(0.1)

    t = threading.Thread(target=load)
    t.start()
    try:
        time.sleep(0.3)
        # At most 1.5 s of stages and a 200 ms backoff for a call that
        # arrives as the move starts, within the 3 s store_timeout.
        move_slot(cluster, slot, src, dst, pause=0.5)
        time.sleep(1.0)        # final: MOVED, once per connection
    finally:
        stop.set()
        t.join()
    assert results and set(results) <= {200, 429}, results
    stats = errorstats(src)
    assert stats.get("TRYAGAIN", 0) > 0 and stats.get("ASK", 0) > 0 and \
        stats.get("MOVED", 0) > 0, stats
    # The rest of the window's room, then 429.
    got = []
    while len(got) < 100 and got[-3:] != [429] * 3:
        got += calls([a, b], 1)
    assert set(got) <= {200, 429}, got
    times = upstream.times()
    assert max_in_window(times, 60.0) <= limit
    # Exact: the marker came with the slot, naming the old primary, still
    # a live primary: a migration, which loses nothing, so no repair phase
    # (which would put the last calls back a second time).
    assert len(times) == limit, len(times)
    assert "redis lost data" not in a.read_log() + b.read_log()
    assert int(dst.cli("LLEN", rate_key("leads"))) == limit
    assert src.command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0


def test_a_slot_move_left_unfinished_is_waited_out(upstream, cluster, sluice):
    """Every key of the slot moved, the move not made final for 2 s (an
    operator's reshard stalled between its last MIGRATE and its SETSLOT
    NODE).  The old primary answers ASK, the new one TRYAGAIN (a
    decision names keys never written, which Redis cannot tell from keys
    not yet moved), for as long as that lasts: each retry starts with
    fresh redirections, so a decision waits the move out within
    store_timeout instead of giving up after five hops (about 300 ms, as
    it once did: every call of those 2 s answered 503)."""
    conf = lambda: cfg(upstream, cluster.url(), limit=200, store_timeout="3s",
                       on_store_error="deny")
    a, b = two_instances(sluice, conf)
    assert calls([a, b], 4) == [200] * 4
    src = cluster.owner("leads")
    dst = next(n for n in cluster.primaries() if n is not src)
    results, stop = [], threading.Event()

    def load(i):
        # Four callers, each one call at a time: a call waiting on the
        # move holds its caller, the others keep arriving during it.
        time.sleep(0.1 * i)
        while not stop.is_set():
            t0 = time.monotonic()
            status = calls([(a, b)[i % 2]], 1)[0]
            results.append((status, time.monotonic() - t0))
            stop.wait(0.1)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        # A call arriving as the move starts waits 0.1 + 0.1 + 2.0 s and
        # a last backoff (200 ms at most) before its slot is final: 2.4 s
        # of a 3 s store_timeout.  The stages' commands go on plain
        # sockets (no process started), milliseconds even beside a CPU
        # hog; a call arriving later waits less.
        move_slot(cluster, cluster.slot("leads"), src, dst, pause=(0.1, 0.1, 2.0))
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert set(s for s, _ in results) == {200}, results
    # Calls waited on the move for longer than five hops' backoffs take.
    assert max(d for _, d in results) > 1.0, results
    assert errorstats(src).get("ASK", 0) > 0
    assert errorstats(dst).get("TRYAGAIN", 0) > 0
    assert upstream.count() == 4 + len(results)


def test_failover_of_a_primary_keeps_the_count_and_resumes(upstream, cluster, sluice):
    """kill -9 of the primary serving the upstream: the cluster sees it
    down after 1 s (cluster-node-timeout) and its replica takes over.
    Calls are refused meanwhile (on_store_error deny), then decided on the
    promoted replica, the calls made before the crash still counted."""
    conf = lambda: cfg(upstream, cluster.url(), limit=10, on_store_error="deny")
    a, b = two_instances(sluice, conf)
    assert calls([a, b], 6) == [200] * 6
    old = cluster.owner("leads")
    new = cluster.replica_of(old)
    assert new is not None
    heartbeat_past_the_calls(old)
    assert cluster.synced(old, new)
    t0 = time.monotonic()
    old.kill()
    # Resumes within 10 s: 1 s to be seen down, the replica's election
    # (about a second more), then the instances' next connection (at most
    # 1 s of backoff) reads the new map; the rest is room for a loaded
    # machine.
    assert wait_for(lambda: cluster.owner("leads", ask=new) is new, 20)
    assert wait_for(lambda: calls([a], 1) == [200], 20)
    resumed = time.monotonic() - t0
    assert resumed < 10, resumed
    got = calls([a, b], 6)
    assert got.count(200) == 3 and got.count(429) == 3, got
    assert len(upstream.times()) == 10


def calls_the_replica_lacks(upstream, cluster, sluice):
    """Two instances, 20 calls per 30 s: 8 calls replicated, then the
    primary's replica cut off (the primary's default user may no longer
    run PSYNC or SYNC, and the replication link is killed), then 6 calls
    on the primary alone.  (a, b, the old primary, its replica.)"""
    conf = lambda: cfg(upstream, cluster.url(), limit=20, window="30s",
                       on_store_error="deny")
    a, b = two_instances(sluice, conf)
    assert calls([a, b], 8) == [200] * 8
    old = cluster.owner("leads")
    new = cluster.replica_of(old)
    assert cluster.synced(old, new)
    heartbeat_past_the_calls(old)
    old.cli("ACL", "SETUSER", "default", "-psync", "-sync")
    old.cli("CLIENT", "KILL", "TYPE", "replica")
    assert wait_for(lambda: new.info("replication").get("master_link_status") == "down", 10)
    assert calls([a, b], 6) == [200] * 6
    assert new.readonly_command("LLEN", rate_key("leads")) == 8   # really lost
    return a, b, old, new


def the_rest_of_the_window(a, b, upstream, new):
    """After a repair put the 14 calls back: 6 more fit, then 429; the
    window holds exactly 20 at the upstream."""
    got = []
    deadline = time.monotonic() + 30
    while got.count(200) < 6 and time.monotonic() < deadline:
        got += calls([a, b], 1)
    assert got.count(200) == 6 and set(got) <= {200, 503}, got
    assert calls([a, b], 4) == [429] * 4
    times = upstream.times()
    assert len(times) == 20
    assert max_in_window(times, 30.0) == 20
    assert int(new.cli("LLEN", rate_key("leads"))) == 20
    assert "redis lost data" in a.read_log() + b.read_log()


def test_failover_that_lost_the_last_writes_loses_no_count(upstream, cluster, sluice):
    """The replica is cut off from its primary (the primary's default
    user may no longer run PSYNC or SYNC, and the replication link is
    killed), calls are made on the primary alone, then the primary is
    killed: the promoted replica lacks them.  The instances see another
    run_id in the upstream's marker and put their calls back before
    anything more is decided: the window holds 20 at the upstream, not
    20 plus the lost ones."""
    a, b, old, new = calls_the_replica_lacks(upstream, cluster, sluice)
    assert int(old.cli("LLEN", rate_key("leads"))) == 14
    old.kill()
    assert wait_for(lambda: cluster.owner("leads", ask=new) is new, 20)
    # The repair phase, then 6 more fit: the 14 sent still count.
    assert wait_for(lambda: store_up(a) and store_up(b), 20)
    the_rest_of_the_window(a, b, upstream, new)


def test_a_takeover_by_a_replica_that_lost_writes_is_not_taken_for_a_migration(
        upstream, cluster, sluice):
    """`CLUSTER FAILOVER TAKEOVER` on a replica cut off from its primary:
    the old primary stays alive (a primary in the new one's view for a
    moment), so the marker names a live primary, as after a migration.
    But the new primary continues the old one's replication history (its
    master_replid2 is the old replid): writes may be lost, and the fleet
    repairs.  The old primary's writes are paused across the takeover, as
    an operator would pause them: writes it took between the takeover and
    learning of it would be lost by Redis itself (see the guide).  The
    window holds exactly the limit."""
    a, b, old, new = calls_the_replica_lacks(upstream, cluster, sluice)
    old.cli("CLIENT", "PAUSE", 3000, "WRITE")
    new.cli("CLUSTER", "FAILOVER", "TAKEOVER")
    assert wait_for(lambda: cluster.owner("leads", ask=new) is new, 20)
    the_rest_of_the_window(a, b, upstream, new)


def test_a_slot_freed_on_one_node_wakes_calls_held_through_another(upstream, cluster,
                                                                   sluice):
    """Room notices cross the cluster: each instance's subscriber listens
    on the first seed, while the upstream's keys (and the scripts that
    PUBLISH when a slot frees) are on the primary owning its slot -- a
    PUBLISH reaches every node's subscribers.  The seeds are listed with
    another primary first, so the notice must cross.  As in
    test_redis_guarantee.py's test on one Redis: one slot, one client per
    instance with a call at a time, and each hand-over between instances
    is prompt: only a notice wakes the held call before the other
    client's next call takes the slot again."""
    owner = cluster.owner("leads")
    seeds = [n for n in cluster.primaries() if n is not owner] + [owner]
    url = "redis-cluster://" + ",".join("127.0.0.1:%d" % n.port for n in seeds)
    conf = lambda: cfg(upstream, url, rules=[{"name": "one", "concurrency": 1}],
                       options={"on_limit": "queue", "max_wait": "20s"})
    insts = [sluice(conf()), sluice(conf())]
    assert wait_for(lambda: all(store_up(sl) for sl in insts), 15)
    for sl in insts:
        assert sl.request("GET", "/leads/warm")[0] == 200
    upstream.reset()

    via, gaps = hand_overs(insts, upstream)
    # (test_redis_guarantee.py's test_each_hand_over_between_instances_is_
    # prompt argues both bounds: without notices, the held call loses
    # every other hand-over to the other client's next call: 15 of 29
    # crossed here with notices off.)  A notice on a cluster takes one hop
    # more, over the cluster bus to the subscriber's node, so under the
    # sanitizers with a second test beside it a few more hand-overs go to
    # the other client's next call (23 of 29 in one CI run): 20 keeps the
    # count apart from 15, and the median gap below is the bound that
    # polling could not meet.
    assert len(gaps) >= 20, via
    assert gaps[len(gaps) // 2] < 0.020 + 0.015, [round(g, 3) for g in gaps]


def test_a_cluster_that_cannot_be_reached_is_one_clear_line(upstream, sluice):
    """No seed answers: one line naming the last seed and why, and
    on_store_error decides meanwhile."""
    dead = [free_port(), free_port()]
    url = "redis-cluster://" + ",".join("127.0.0.1:%d" % p for p in dead)
    sl = sluice(cfg(upstream, url, on_store_error="deny"))
    assert wait_for(lambda: "unreachable" in sl.read_log(), 10)
    log = sl.read_log()
    assert "seed 127.0.0.1:%d" % dead[1] in log or "seed 127.0.0.1:%d" % dead[0] in log, log
    assert sl.request("GET", "/leads/x")[0] == 503


def test_a_plain_redis_named_as_a_cluster_says_so(upstream, redis, sluice):
    sl = sluice(cfg(upstream, "redis-cluster://127.0.0.1:%d" % redis.port,
                    on_store_error="deny"))
    assert wait_for(lambda: "gave no slot map" in sl.read_log(), 10)
    assert "cluster support disabled" in sl.read_log()
    assert sl.request("GET", "/leads/x")[0] == 503


def test_the_token_broker_finds_its_slots_primary(cluster):
    """The broker's keys carry the upstream's hash tag on a cluster, so
    its scripts run on one primary: three instances, one login for the
    fleet, the token sealed on the primary owning {crm}'s slot."""
    from test_auth import FakeProvider, get, start
    from harness import parallel
    p = FakeProvider()
    fleet = []
    try:
        for _ in range(3):
            fleet.append(start(p, store=cluster.url(), workers=1))
        res = parallel(30, lambda i: get(fleet[i % 3], "/crm/x/%d" % i))
        assert [r[0] for r in res] == [200] * 30, [r[2] for r in res if r[0] != 200][:3]
        assert p.nlogins() == 1
        assert "auth:{crm}:token" in cluster.owner("crm").cli("KEYS", "*")
    finally:
        for sl in fleet:
            sl.stop()
        p.close()


def test_an_acl_user_with_the_least_permissions_on_a_cluster(upstream, cluster, sluice):
    """The ACL of test_redis_tls.py's least user, plus what a cluster asks
    for: CLUSTER SLOTS (the map), CLUSTER MYID and CLUSTER NODES (the
    fleet's marker names its node, and tells a slot that moved from a
    loss), and ASKING.  Calls to two upstreams and a slot moved under
    load: none of it is refused, and every node's ACL LOG stays empty."""
    from test_redis_tls import ACL_COMMANDS
    extra = ["+cluster|slots", "+cluster|myid", "+cluster|nodes", "+asking"]
    for n in cluster.nodes:
        n.cli("ACL", "SETUSER", "quota", "reset", "on", ">s3cret", "~acl:*", "&acl:*",
              *ACL_COMMANDS, *extra)
        n.cli("ACL", "LOG", "RESET")
    conf = lambda: cfg(upstream, cluster.url(auth="quota:s3cret@"), limit=30,
                       names=("leads", "crm"), store_prefix="acl:", store_timeout="3s",
                       on_store_error="deny")
    a, b = two_instances(sluice, conf)
    assert calls([a, b], 4) == [200] * 4
    assert calls([a, b], 4, "/crm/x") == [200] * 4
    src = cluster.owner("leads")
    dst = next(n for n in cluster.primaries() if n is not src)
    results = []

    def load():
        for _ in range(15):
            results.append(calls([a, b], 1)[0])
            time.sleep(0.1)

    t = threading.Thread(target=load)
    t.start()
    # A call arriving as the move starts waits it out: three stages of
    # 0.5 s and a last backoff of 200 ms at most, 1.7 s of the 3 s
    # store_timeout (the stages' commands take milliseconds: no process
    # is started for them).
    move_slot(cluster, cluster.slot("leads"), src, dst, pause=0.5)
    t.join()
    assert set(results) == {200}, results
    assert errorstats(src).get("ASK", 0) > 0
    assert calls([a, b], 4) == [200] * 4
    assert len(upstream.times()) == 27
    for n in cluster.nodes:
        assert n.cli("ACL", "LOG") == "", (n.port, n.cli("ACL", "LOG"))


# ---- tenant groups: one upstream's `per` buckets over the shards ----

def tenant_group(per):
    """The tenant group of a per value, as sluice computes it (FNV-1a of
    its bytes, modulo 16): every instance must agree."""
    h = 2166136261
    for byte in per.encode():
        h = ((h ^ byte) * 16777619) & 0xFFFFFFFF
    return h % 16


def tenant_key(tenant, rule="tenant", typ="r"):
    return "sluice:{leads#%d}:%s:%d:%s:%s" % (tenant_group(tenant), typ, len(rule), rule,
                                              tenant)


def tenant_calls(upstream, tenant):
    return upstream.count(lambda r: ("X-Tenant", tenant) in r.headers)


TENANT_RULES = [{"name": "tenant", "per": "header:X-Tenant", "limit": 3, "window": "1m"},
                {"name": "tconc", "per": "header:X-Tenant", "concurrency": 2}]


def test_the_tenants_of_one_upstream_spread_over_the_primaries(upstream, cluster, sluice):
    """An upstream whose rules all count per one header is split into 16
    tenant groups, each its own slot ({leads#G}): 24 tenants, two
    instances of two workers, each tenant's count exact at the upstream,
    its keys on the primary owning its group's slot, and the groups on
    every primary.  The operator view merges the groups: every tenant's
    bucket is counted and shown."""
    def conf():
        c = cfg(upstream, cluster.url(), rules=TENANT_RULES, workers=2)
        c["admin"]["top"] = 30
        return c
    a, b = two_instances(sluice, conf)
    tenants = ["t%d" % i for i in range(24)]
    for t in tenants:
        got = calls([a, b], 5, headers={"X-Tenant": t})
        assert got == [200] * 3 + [429] * 2, (t, got)
        assert tenant_calls(upstream, t) == 3, t
    assert len(upstream.times()) == 3 * len(tenants)
    groups = {tenant_group(t) for t in tenants}
    holders = set()
    for t in tenants:
        slot = int(cluster.live()[0].cli("CLUSTER", "KEYSLOT", tenant_key(t)))
        owner = next(cluster.node(r[2][1])
                     for r in cluster.live()[0].command("CLUSTER", "SLOTS")
                     if r[0] <= slot <= r[1])
        assert int(owner.cli("LLEN", tenant_key(t))) == 3, t
        holders.add(owner.port)
    # 16 groups over three primaries' slot ranges: every primary holds
    # some of the groups these 24 tenants fall in (checked, not assumed:
    # the hash is fixed, so this is the same every run).
    assert len(groups) >= 10, groups
    assert holders == {n.port for n in cluster.primaries()}, holders
    # Nothing under the upstream's whole tag but the usage history.
    for n in cluster.primaries():
        whole = [k for k in n.cli("KEYS", "sluice:{leads}:*").split() if ":y:" not in k]
        assert whole == [], whole
    # The operator view: all 24 buckets, from every group, merged.
    st = a.status()
    rule = next(r for r in st["upstreams"][0]["rules"] if r["name"] == "tenant")
    assert rule["buckets_total"] == 24, rule
    assert sorted(x["key"] for x in rule["buckets"]) == sorted(tenants)
    assert all(x["used"] == 3 for x in rule["buckets"]), rule["buckets"]


def test_a_pause_reaches_every_tenant_group(upstream, cluster, sluice):
    """The provider's pause is the whole account's: written to every
    group, so a tenant in another group (another primary) is held too; an
    operator's clear ends it in every group, told once."""
    conf = lambda: cfg(upstream, cluster.url(), rules=TENANT_RULES)
    a, b = two_instances(sluice, conf)
    assert a.request("GET", "/leads/p", headers={
        "X-Tenant": "t0", "X-Test-Status": "429",
        "X-Test-Resp-Header": "Retry-After: 30"})[0] == 429
    for g in range(16):
        assert wait_for(lambda: any(n.cli("EXISTS", "sluice:{leads#%d}:p:14:upstream-pause:" % g)
                                    == "1" for n in cluster.primaries()), 5), g
    # Tenants of other groups, on the other instance: refused by sluice.
    others = [t for t in ("u%d" % i for i in range(40))
              if tenant_group(t) != tenant_group("t0")][:8]
    before = len(upstream.times())
    for t in others:
        code, headers, _ = b.request("GET", "/leads/x", headers={"X-Tenant": t})
        assert code == 429, t
        assert 20 <= int(headers["retry-after"]) <= 30, headers
    assert len(upstream.times()) == before
    paused = b.status()["upstreams"][0]["paused"]
    assert paused["set_by"] == "provider" and paused["resumes_in"] > 20, paused
    code, _, body = b.admin("DELETE", "/upstreams/leads/pause",
                            headers={"X-Sluice-Admin": "1"})
    assert code == 200, body
    got = json.loads(body)
    assert got["action"] == "clear" and got["paused"] is None, got
    assert got["was"]["set_by"] == "provider", got
    for n in cluster.primaries():
        assert n.cli("KEYS", "sluice:{leads#*}:p:*") == ""
    assert a.request("GET", "/leads/x", headers={"X-Tenant": others[0]})[0] == 200
    assert b.status()["upstreams"][0]["paused"] is None


def test_a_tenants_freed_slot_wakes_its_held_calls_across_nodes(upstream, cluster, sluice):
    """Room notices name a tenant group's key ({leads#G}): each instance
    reads it back to the bucket and wakes the calls held for it, with the
    subscriber on another primary than the group's (the margins are
    test_a_slot_freed_on_one_node_wakes_calls_held_through_another's)."""
    group = "leads#%d" % tenant_group("acme")
    owner = cluster.owner(group)
    seeds = [n for n in cluster.primaries() if n is not owner] + [owner]
    url = "redis-cluster://" + ",".join("127.0.0.1:%d" % n.port for n in seeds)
    conf = lambda: cfg(upstream, url, rules=[
        {"name": "one", "per": "header:X-Tenant", "concurrency": 1}],
        options={"on_limit": "queue", "max_wait": "20s"})
    insts = [sluice(conf()), sluice(conf())]
    assert wait_for(lambda: all(store_up(sl) for sl in insts), 15)
    for sl in insts:
        assert sl.request("GET", "/leads/warm", headers={"X-Tenant": "acme"})[0] == 200
    assert owner.cli("EXISTS", "sluice:{%s}:m" % group) == "1"
    upstream.reset()

    via, gaps = hand_overs(insts, upstream, headers={"X-Tenant": "acme"})
    assert len(gaps) >= 20, via
    assert gaps[len(gaps) // 2] < 0.020 + 0.015, [round(g, 3) for g in gaps]


def test_tenant_groups_put_their_calls_back_after_every_primary_lost_its_data(
        upstream, cluster, sluice):
    """Each group is repaired on its own: every primary flushed mid-window
    (every group's marker gone), each instance puts back, group by group,
    the calls of the tenants in that group, and no tenant's window at the
    upstream holds more than its limit."""
    conf = lambda: cfg(upstream, cluster.url(), rules=[
        {"name": "tenant", "per": "header:X-Tenant", "limit": 6, "window": "1m"}], workers=2)
    a, b = two_instances(sluice, conf)
    tenants = ["t%d" % i for i in range(8)]
    for t in tenants:
        got = calls([a, b], 4, headers={"X-Tenant": t})
        assert got == [200] * 4, (t, got)
    for n in cluster.primaries():
        n.cli("FLUSHALL")
    for t in tenants:
        got = calls([a, b], 5, headers={"X-Tenant": t})
        assert got == [200] * 2 + [429] * 3, (t, got)
    for t in tenants:
        times = upstream.times(lambda r: ("X-Tenant", t) in r.headers)
        assert len(times) == 6 and max_in_window(times, 60.0) == 6, t
    assert "redis lost data" in a.read_log() + b.read_log()


def reload_rules(sl, rules):
    """Rewrite SL's configuration with RULES on its upstream, POST /reload,
    and wait until every worker serves it."""
    with open(sl.config_path) as f:
        c = json.load(f)
    c["upstreams"][0]["rules"] = rules
    with open(sl.config_path, "w") as f:
        json.dump(c, f)
    code, _, body = sl.admin("POST", "/reload", headers={"X-Sluice-Admin": "1"})
    assert code == 200, body
    generation = json.loads(body)["generation"]
    assert wait_for(lambda: sl.status()["config"]["serving"] == generation, 5)


def test_a_reload_out_of_tenant_groups_and_back_keeps_each_tenants_count(
        upstream, cluster, sluice):
    """A rule that is not `per` the header joins the tenant groups into the
    upstream's one slot; removing it splits them again.  Each move puts
    the calls made under the other keys back (the keys moved to are new,
    or kept by no instance since: their marker's registry was dropped when
    the fleet left them), so a tenant's window stays exact across both."""
    tenant_only = [{"name": "tenant", "per": "header:X-Tenant", "limit": 6, "window": "1m"}]
    with_all = tenant_only + [{"name": "all", "limit": 1000, "window": "1m"}]
    conf = lambda: cfg(upstream, cluster.url(), rules=tenant_only, workers=2)
    a, b = two_instances(sluice, conf)
    t = {"X-Tenant": "acme"}
    group = "leads#%d" % tenant_group("acme")
    assert calls([a, b], 2, headers=t) == [200, 200]
    # (a repair puts back the calls from the keys' last heartbeat less a
    # margin: as in the failover tests, a heartbeat past these calls
    # keeps them from being put back twice, the safe side this test would
    # otherwise see as 2 more)
    heartbeat_past_the_calls(cluster.owner(group), group)
    for sl in (a, b):
        reload_rules(sl, with_all)
    assert calls([a, b], 2, headers=t) == [200, 200]
    for sl in (a, b):
        reload_rules(sl, tenant_only)
    got = calls([a, b], 4, headers=t)
    assert got == [200, 200, 429, 429], got
    times = upstream.times(lambda r: ("X-Tenant", "acme") in r.headers)
    assert len(times) == 6 and max_in_window(times, 60.0) == 6


def test_tenant_groups_turned_off_keep_the_upstream_in_one_slot(upstream, cluster, sluice):
    """`"tenant_groups": false`: the same tenant-keyed upstream keeps every
    key under its one tag, on the primary owning that slot, and each
    tenant's count is still exact."""
    conf = lambda: cfg(upstream, cluster.url(), rules=TENANT_RULES,
                       options={"tenant_groups": False})
    a, b = two_instances(sluice, conf)
    for t in ("t1", "t2", "t3"):
        got = calls([a, b], 4, headers={"X-Tenant": t})
        assert got == [200] * 3 + [429], (t, got)
        assert int(cluster.owner("leads").cli("LLEN", "sluice:{leads}:r:6:tenant:" + t)) == 3
    for n in cluster.primaries():
        assert n.cli("KEYS", "sluice:{leads#*") == ""
