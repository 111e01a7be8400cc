"""The Redis store's guarantees under stress: stalls, outages, sync reports,
held calls across instances, and exact windows on the provider's clock.

Each test runs the real sluice binary against a real redis-server and a
recording upstream, and asserts what a user would see: statuses, what the
upstream received and when, and what Redis holds.
"""
import json
import re
import socket
import threading
import time

import pytest

from harness import (DelayRelay, RedisServer, Upstream, hand_overs, max_in_window, parallel,
                     wait_for)


class DebugRedis(RedisServer):
    """A redis-server that accepts DEBUG SLEEP from local clients."""

    EXTRA_ARGS = ("--enable-debug-command", "local")


class SlowSetupRelay(DelayRelay):
    """A TCP relay that, while armed, holds the first flight a client sends
    on a new connection (the TLS ClientHello) for HOLD seconds, and nothing
    else: a call on such a connection is sent HOLD after it was admitted,
    and arrives as soon as it is sent (a slow connection set-up)."""

    def __init__(self, target_port, hold):
        super().__init__(target_port, 0.0)
        self.hold = hold
        self.armed = True

    def forward(self, data, towards_target, first):
        if towards_target and first and self.armed:
            time.sleep(self.hold)
        return data


class CutRelay(DelayRelay):
    """A TCP relay to Redis that, once armed, swallows the next reply it sees
    and closes that connection: the command ran, its answer never arrives."""

    def __init__(self, target_port):
        super().__init__(target_port, 0.0)
        self.cut_next = False
        self.cut_lock = threading.Lock()

    def forward(self, data, towards_target, first):
        if towards_target:  # towards Redis: as is
            return data
        with self.cut_lock:
            cut, self.cut_next = self.cut_next, False
        return None if cut else data


class SplitSetupRelay(DelayRelay):
    """A TCP relay to Redis scripted in three phases.  "pass": as is.
    "silent": every reply is swallowed (Redis hangs, connections stay open).
    "split": the next connection whose first answers are the link's PING's
    (its handshake without AUTH or SELECT), ROLE's and TIME's gets those answers
    and nothing after them (the rest of its set-up is late, as when Redis
    answers a large pipeline over several passes of its loop); later
    connections pass."""

    # PONG, ROLE's answer (a primary with no replica), TIME's.
    TIME_REPLY = re.compile(
        rb"\A\+PONG\r\n\*3\r\n\$6\r\nmaster\r\n:\d+\r\n\*0\r\n"
        rb"\*2\r\n\$\d+\r\n\d+\r\n\$\d+\r\n\d+\r\n")

    def __init__(self, target_port):
        super().__init__(target_port, 0.0)
        self.mode = "pass"
        self.lock = threading.Lock()
        self.conn = threading.local()  # one pipe thread per direction

    def forward(self, data, towards_target, first):
        if towards_target:
            return data
        if first:
            self.conn.cut = False
            with self.lock:
                m = self.TIME_REPLY.match(data)
                if self.mode == "split" and m:
                    self.mode = "pass"
                    self.conn.cut = True
                    return data[:m.end()]
        if self.conn.cut:
            return b""
        with self.lock:
            return b"" if self.mode == "silent" else data


@pytest.fixture
def dredis():
    r = DebugRedis()
    yield r
    r.stop()


def cfg(up, redis, rules, upstream=None, **top):
    u = {"name": "leads", "prefix": "/leads", "url": up.url, "rules": rules}
    u.update(upstream or {})
    c = {"store": redis.url, "upstreams": [u]}
    c.update(top)
    return c


def keys(redis, kind):
    """Keys of one kind ('r' log, 'v' reservations, 'c' slots, 's' report)."""
    return [k for k in redis.cli("KEYS", "*").split() if (":%s:" % kind) in k]


RATE = "sluice:{leads}:r:1:w:"


# ---- stalls: a decision given up on is never recorded ----

def stall_sigstop(redis):
    redis.proc.send_signal(19)  # SIGSTOP: alive, connections accepted, silent
    time.sleep(1.0)
    redis.proc.send_signal(18)  # SIGCONT


def stall_debug_sleep(redis):
    redis.cli("DEBUG", "SLEEP", "2.5")  # blocks Redis's one thread


@pytest.mark.parametrize("stall", [stall_sigstop, stall_debug_sleep],
                         ids=["sigstop-1s", "debug-sleep-2.5s"])
@pytest.mark.parametrize("policy", ["local", "deny", "allow"])
def test_a_stall_leaves_no_phantom_in_redis(upstream, dredis, sluice, policy, stall):
    redis = dredis
    sl = sluice(cfg(upstream, redis,
                    [{"name": "w", "limit": 100, "window": "1m"},
                     {"name": "one", "concurrency": 1}],
                    on_store_error=policy, store_timeout="200ms"))
    # Three calls decided by Redis, done before the stall.
    assert [sl.request("GET", "/leads/x")[0] for _ in range(3)] == [200] * 3
    assert int(redis.cli("LLEN", RATE)) == 3

    staller = threading.Thread(target=stall, args=(redis,))
    staller.start()
    time.sleep(0.05)
    # Ten calls arrive during the stall, 80 ms apart, each on its own client.
    during = [None] * 10

    def call(i):
        time.sleep(0.08 * i)
        during[i] = sl.request("GET", "/leads/x", timeout=10)[0]

    parallel(10, call)
    staller.join()
    if policy == "deny":
        assert during == [503] * 10
    elif policy == "allow":
        assert during == [200] * 10
    else:
        # Decided by the local store (one slot at a time on this instance).
        assert set(during) <= {200, 429} and 200 in during

    # Redis answers again: the next call goes through at once, not after a
    # phantom lease of concurrency_lease (10 s) lapsed.
    assert "is back" in sl.wait_log("is back", timeout=4)
    t0 = time.monotonic()
    assert sl.request("GET", "/leads/after")[0] == 200
    assert time.monotonic() - t0 < 2.0  # a loaded machine's stall, far below 10 s

    sent = upstream.count()
    if policy == "allow":
        logged = sent - 10          # forwarded uncounted, as configured
    else:
        # Every call the upstream received is in the log (the local ones are
        # logged once Redis answers, at their send time), and nothing else:
        # none of the decisions given up on during the stall.
        logged = sent
    assert wait_for(lambda: int(redis.cli("LLEN", RATE)) == logged, 3), \
        (redis.cli("LLEN", RATE), logged, during)
    time.sleep(0.3)
    assert int(redis.cli("LLEN", RATE)) == logged
    # No reservation and no slot is left behind.
    assert keys(redis, "v") == [] and keys(redis, "c") == []


def test_back_means_back_when_the_set_up_answers_late(upstream, redis, sluice):
    """A reconnection whose first answer comes in time but whose remaining
    set-up does not is not "back": the instance says so only once a whole
    set-up was answered, and from then on calls are decided by Redis (no
    relapse into the outage right after "is back")."""
    relay = SplitSetupRelay(redis.port)
    try:
        conf = cfg(upstream, redis, [{"name": "w", "limit": 100, "window": "1m"}],
                   on_store_error="deny", store_timeout="200ms",
                   store="redis://127.0.0.1:%d" % relay.port)
        sl = sluice(conf, workers=1)
        assert sl.request("GET", "/leads/warm")[0] == 200
        with relay.lock:
            relay.mode = "silent"
        assert sl.request("GET", "/leads/x")[0] == 503
        assert "unreachable" in sl.wait_log("unreachable", timeout=3)
        with relay.lock:
            relay.mode = "split"
        # The split connection is given up on after store_timeout; the next
        # one (50 ms of backoff later) is answered in full.
        assert "is back" in sl.wait_log("is back", timeout=5)
        with relay.lock:
            assert relay.mode == "pass"  # the split did happen
        for i in range(5):
            assert sl.request("GET", "/leads/after%d" % i)[0] == 200
        log = sl.read_log()
        assert log.count("unreachable") == 1, log
        assert log.count("is back") == 1, log
        assert int(redis.cli("LLEN", RATE)) == 6
    finally:
        relay.close()


def test_late_logged_local_calls_carry_their_send_time(upstream, redis, sluice):
    """Calls sent locally during an outage are logged at their send time."""
    sl = sluice(cfg(upstream, redis, [{"name": "w", "limit": 100, "window": "1m"}],
                    store_timeout="100ms"), workers=1)
    assert sl.request("GET", "/leads/x")[0] == 200
    # The first call's commit follows its answer: wait until Redis holds it.
    # Stopped before it ran, Redis would stamp it when it runs (after the
    # resume, later than the send: the safe side), and the calls logged
    # after it would be written no earlier than it (the log stays ordered).
    assert wait_for(lambda: int(redis.cli("LLEN", RATE)) == 1, 3)
    redis.proc.send_signal(19)
    try:
        time.sleep(0.05)
        assert [sl.request("GET", "/leads/x")[0] for _ in range(4)] == [200] * 4
        time.sleep(0.5)
    finally:
        redis.proc.send_signal(18)
    resumed = redis.cli("TIME").split()
    resumed_us = int(resumed[0]) * 1000000 + int(resumed[1])
    assert wait_for(lambda: int(redis.cli("LLEN", RATE)) == 5, 3)
    stamps = [int(x) for x in redis.cli("LRANGE", RATE, 0, -1).split()]
    # Sent before Redis resumed (at least 0.5 s before), not stamped on arrival.
    assert all(s < resumed_us - 400000 for s in stamps), (stamps, resumed_us)


# ---- the local fallback starts from what this instance spent ----

def test_local_fallback_counts_the_calls_sent_through_redis(upstream, redis, sluice):
    sl = sluice(cfg(upstream, redis, [{"name": "w", "limit": 20, "window": "1m"}],
                    store_timeout="100ms"))
    assert [sl.request("GET", "/leads/x")[0] for _ in range(20)] == [200] * 20
    redis.kill()
    during = [sl.request("GET", "/leads/x") for _ in range(10)]
    assert [s for s, h, b in during] == [429] * 10
    assert json.loads(during[0][2])["rule"] == "w"
    assert upstream.count() == 20


def test_two_instances_each_use_their_share_during_an_outage(upstream, redis, sluice):
    conf = cfg(upstream, redis, [{"name": "w", "limit": 20, "window": "1m"}],
               store_timeout="100ms", local_share=0.5)
    a, b = sluice(conf), sluice(conf)
    # Let both connect (without a call: the history stays empty).
    time.sleep(0.3)
    redis.kill()
    got = parallel(2, lambda i: [(a, b)[i].request("GET", "/leads/x")[0]
                                 for _ in range(20)])
    assert [s.count(200) for s in got] == [10, 10], got
    assert upstream.count() == 20


# ---- held calls are woken by room freed in another instance ----

def test_a_slot_freed_by_another_instance_wakes_held_calls_at_once(upstream, redis,
                                                                   sluice):
    conf = cfg(upstream, redis, [{"name": "one", "concurrency": 1}],
               upstream={"on_limit": "queue", "max_wait": "20s"})
    a, b = sluice(conf), sluice(conf)
    assert a.request("GET", "/leads/warm")[0] == 200
    assert b.request("GET", "/leads/warm")[0] == 200
    upstream.reset()
    statuses = parallel(30, lambda i: (a, b)[i % 2].request(
        "GET", "/leads/x", headers={"X-Test-Delay": "0.02", "X-Via": "ab"[i % 2]})[0])
    assert statuses == [200] * 30
    assert upstream.max_active == 1
    # Serial by construction, timed where the calls arrive.  Between one
    # arrival and the next: the call's 20 ms at the upstream, its answer,
    # the release, its notice and a new decision (three Redis round trips,
    # well under 1 ms each) and the send: a few ms on top of the 20.  Held
    # calls woken by the 50 ms poll that notices replace would make the
    # typical gap 20 ms plus half a poll or more.  The median ignores a
    # rare stall of a loaded machine (the wall time of the whole run,
    # thread start-up included, does not).
    times = upstream.times()
    gaps = sorted(y - x for x, y in zip(times, times[1:]))
    assert gaps[len(gaps) // 2] < 0.020 + 0.015, [round(g, 3) for g in gaps]


def test_each_hand_over_between_instances_is_prompt(upstream, redis, sluice):
    """One client per instance, one call at a time each, a 10 ms pause between
    calls: every time one instance frees the slot, the other holds a call
    that only a notice from Redis can wake before the first client's next
    call takes the slot again."""
    conf = cfg(upstream, redis, [{"name": "one", "concurrency": 1}],
               upstream={"on_limit": "queue", "max_wait": "20s"})
    insts = [sluice(conf), sluice(conf)]
    for sl in insts:
        assert sl.request("GET", "/leads/warm")[0] == 200
    upstream.reset()

    via, gaps = hand_overs(insts, upstream)
    # Nearly every hand-over crosses instances (measured: 29 of 29, 21.5 ms
    # each: the 20 ms call plus release, notice, decision and send).  With
    # the 50 ms polling that notices replace, the held call lost every other
    # hand-over to the other client's next call (15 of 29 crossed).
    assert len(gaps) >= 25, via
    # The median, not the mean: one stall of a loaded machine skews a mean,
    # and 15 ms over the call's 20 is still well under a 50 ms poll.
    assert gaps[len(gaps) // 2] < 0.020 + 0.015, [round(g, 3) for g in gaps]


# ---- sync reports cost O(1), whatever the limit ----

def test_sync_report_is_o1_and_a_probe_learns_the_room_back(upstream, redis, sluice):
    # One worker: a report reaches Redis on the link of the worker that read
    # it, asynchronously; a call taken by another worker a fraction of a
    # millisecond later can be decided on its own link before the report
    # lands (as a call on another instance can).  This test is about what
    # the report does, so its calls share one link, where Redis keeps order.
    sl = sluice(cfg(upstream, redis,
                    [{"name": "day", "limit": 5000000, "window": "1d",
                      "sync": "x-ratelimit", "sync_probe": "1s"}]), workers=1)
    upstream.script = [{"status": 200, "headers": ["X-RateLimit-Remaining: 0"]}]
    pings = []
    stop = threading.Event()
    conn = socket.create_connection(("127.0.0.1", redis.port), timeout=5)

    def ping():
        # One connection, so only Redis's own delay is measured.
        while not stop.is_set():
            t = time.monotonic()
            conn.sendall(b"PING\r\n")
            assert conn.recv(64) == b"+PONG\r\n"
            pings.append(time.monotonic() - t)
            time.sleep(0.01)

    pinger = threading.Thread(target=ping)
    pinger.start()
    try:
        assert sl.request("GET", "/leads/x")[0] == 200
        t0 = time.monotonic()
        status, h, body = sl.request("GET", "/leads/x")
        assert status == 429, body
        # Writing 5,000,000 entries (what an O(n) report would) takes Redis
        # seconds; 0.5 s leaves a loaded machine's scheduling room.
        assert time.monotonic() - t0 < 0.5
        assert json.loads(body)["rule"] == "day"
        assert h["retry-after"] == "1"  # the probe, not the day
    finally:
        stop.set()
        pinger.join()
        conn.close()
    # The same argument for Redis's own stall, seen by a PING every 10 ms.
    assert pings and max(pings) < 0.5, max(pings)
    for k in redis.cli("KEYS", "*").split():
        assert int(redis.cli("MEMORY", "USAGE", k)) < 512, k
    assert upstream.count() == 1

    # After the probe interval one call goes through and learns the room back.
    time.sleep(1.05)
    probe = sl.request("GET", "/leads/x",
                       headers={"X-Test-Resp-Header": "X-RateLimit-Remaining: 50"})
    assert probe[0] == 200
    assert [sl.request("GET", "/leads/x")[0] for _ in range(5)] == [200] * 5
    assert upstream.count() == 7


def test_sync_report_counts_calls_sent_after_the_reporting_call(upstream, redis,
                                                                 sluice):
    """A report of 3 left, answered to a call other calls overtook: those calls
    were not in the provider's count, so fewer than 3 remain."""
    # One worker, as in the test above: the report and the calls after it
    # share one Redis link, which keeps their order.
    sl = sluice(cfg(upstream, redis,
                    [{"name": "m", "limit": 1000, "window": "1m",
                      "sync": "x-ratelimit", "sync_probe": "0s"}]), workers=1)
    slow = threading.Thread(target=lambda: sl.request(
        "GET", "/leads/slow", headers={"X-Test-Delay": "0.5",
                                       "X-Test-Resp-Header": "X-RateLimit-Remaining: 3"}))
    slow.start()
    # The upstream records a call as it arrives, before its delay: the slow
    # call was sent before the two below.
    assert wait_for(lambda: upstream.count() == 1, 5)
    # Two calls sent after the slow one, answered before it.
    assert [sl.request("GET", "/leads/x")[0] for _ in range(2)] == [200, 200]
    slow.join()
    # 3 left at the slow call's send, 2 sent since: 1 more (at most).
    statuses = [sl.request("GET", "/leads/x")[0] for _ in range(3)]
    assert statuses.count(200) <= 1 and statuses[-1] == 429, statuses


# ---- exact windows on the provider's clock, with reservations ----

def test_three_instances_exact_at_the_upstream_in_queue_mode(upstream, redis, sluice):
    # The upstream records arrival when its handler thread starts, after
    # Python's accept, thread start and header parsing: a few ms after
    # sluice stamped the call, more when this 2-core machine is busy with
    # three sluices, Redis and 35 client threads.  100 ms bounds that
    # jitter generously; windows are then exact as recorded.
    conf = cfg(upstream, redis, [{"name": "w", "limit": 10, "window": "2s"}],
               upstream={"on_limit": "queue", "max_wait": "30s", "margin": "100ms"})
    instances = [sluice(conf) for _ in range(3)]
    seen = {}
    stop = threading.Event()

    def watch():
        # The log keeps at most `limit` entries: sample it often enough that
        # every entry (alive for 2 s) is seen, with its multiplicity.
        while not stop.is_set():
            snap = redis.cli("LRANGE", RATE, 0, -1).split()
            counts = {}
            for s in snap:
                counts[int(s)] = counts.get(int(s), 0) + 1
            for s, n in counts.items():
                seen[s] = max(seen.get(s, 0), n)
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        statuses = parallel(35, lambda i: instances[i % 3].request(
            "GET", "/leads/x", timeout=40)[0])
        time.sleep(0.3)
    finally:
        stop.set()
        watcher.join()
    assert statuses == [200] * 35
    times = upstream.times()
    assert len(times) == 35
    assert max_in_window(times, 2.0) <= 10
    stamps = sorted(s for s, n in seen.items() for _ in range(n))
    assert len(stamps) == 35
    # On Redis's clock: never more than 10 entries within any span
    # (window + margin) -- the rule the store enforces.
    assert max_in_window([s / 1e6 for s in stamps], 2.1) <= 10


def test_windows_run_from_the_send_not_the_admission(redis, sluice):
    """The first ten calls wait 0.4 s for their connections before being sent;
    the next ones connect at once.  Logged when admitted, the first ten would
    leave the window 0.4 s early and the next ten would arrive at the
    provider within 1.7 s of them."""
    up = Upstream(tls=True, close=True)
    relay = SlowSetupRelay(up.port, 0.4)
    try:
        # Nothing is delayed after the send: the margin covers only the
        # upstream's own recording jitter (see the test above).
        conf = {"store": redis.url, "upstreams": [{
            "name": "leads", "prefix": "/leads",
            "url": "https://127.0.0.1:%d" % relay.port, "ca_file": up.ca_file,
            "on_limit": "queue", "max_wait": "30s", "margin": "100ms",
            "rules": [{"name": "w", "limit": 10, "window": "2s"}]}]}
        instances = [sluice(conf) for _ in range(3)]
        done = []

        def burst():
            done.extend(parallel(20, lambda i: instances[i % 3].request(
                "GET", "/leads/x", timeout=40)[0]))

        t = threading.Thread(target=burst)
        t.start()
        time.sleep(1.0)
        relay.armed = False  # the first ten are on their way; the rest connect fast
        t.join()
        assert done == [200] * 20
        times = up.times()
        assert len(times) == 20
        assert max_in_window(times, 2.0) <= 10, [round(x - times[0], 3) for x in times]
    finally:
        relay.close()
        up.close()


def test_an_instance_killed_between_decision_and_send_still_counts(redis, sluice):
    """Its reservation holds the room, then lapses into an entry: the call
    might have reached the provider, so it counts as sent."""
    up = Upstream(tls=True, close=True)
    relay = SlowSetupRelay(up.port, 10.0)  # the connection never gets ready
    try:
        conf = {"store": redis.url, "store_timeout": "100ms", "upstreams": [{
            "name": "leads", "prefix": "/leads",
            "url": "https://127.0.0.1:%d" % relay.port, "ca_file": up.ca_file,
            "connect_timeout": "2s",
            "rules": [{"name": "w", "limit": 1, "window": "30s"}]}]}
        a, b = sluice(conf), sluice(conf)
        threading.Thread(target=lambda: _quiet(a.request, "GET", "/leads/x", timeout=5),
                         daemon=True).start()
        assert wait_for(lambda: keys(redis, "v"), 2)
        t0 = time.monotonic()  # the decision was made before now
        a.proc.kill()
        a.proc.wait()
        a.proc = type("Gone", (), {"poll": lambda self: 0, "returncode": 0})()
        # The reservation counts for the other instance...
        assert b.request("GET", "/leads/x")[0] == 429
        # ...until it lapses (connect_timeout + 2 x store_timeout + 1 s after
        # the decision), when the next decision turns it into an entry.
        time.sleep(max(0.0, t0 + 3.4 - time.monotonic()))
        status, h, body = b.request("GET", "/leads/x")
        assert status == 429
        assert int(redis.cli("LLEN", RATE)) == 1
        assert keys(redis, "v") == []
        assert 26 <= int(h["retry-after"]) <= 31  # the window + the default 100 ms margin, rounded up
        assert up.count() == 0
    finally:
        relay.close()
        up.close()


def _quiet(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except Exception:
        return None


def test_a_decision_whose_answer_was_lost_is_undone(upstream, redis, sluice):
    """Redis ran the decision, then the connection broke before its answer
    came back: the call was decided by on_store_error, so what Redis took
    for it is given back on the next connection."""
    relay = CutRelay(redis.port)
    try:
        conf = cfg(upstream, redis, [{"name": "w", "limit": 100, "window": "1m"},
                                     {"name": "one", "concurrency": 1}],
                   on_store_error="deny", store="redis://127.0.0.1:%d" % relay.port)
        sl = sluice(conf, workers=1)
        assert sl.request("GET", "/leads/warm")[0] == 200
        # Its release's notice crosses the relay on the subscriber link; then
        # nothing else talks for 2 s (the clock is refreshed by replies).
        time.sleep(0.3)
        with relay.cut_lock:
            relay.cut_next = True
        assert sl.request("GET", "/leads/x")[0] == 503
        assert "is back" in sl.wait_log("is back", timeout=3)
        # No phantom slot: the next call goes through at once.
        assert sl.request("GET", "/leads/y")[0] == 200
        assert wait_for(lambda: keys(redis, "v") == [] and keys(redis, "c") == [], 1)
        assert int(redis.cli("LLEN", RATE)) == 2
        assert upstream.count() == 2
    finally:
        relay.close()


# ---- commits that wait for a decision to ride in ----

def redis_time_us(redis):
    s, us = redis.cli("TIME").split()
    return int(s) * 1000000 + int(us)


def test_commits_behind_calls_in_progress_reach_redis_within_the_hold(
        upstream, redis, sluice):
    """While more calls of an instance are in progress than commits wait,
    its commits wait for its next decision to ride in, 10 ms at most.  With
    no further decision they are still written then (not when the slow
    calls end), each stamped no earlier than its call was sent, with its
    app."""
    sl = sluice(cfg(upstream, redis, [{"name": "w", "limit": 100, "window": "1m"}],
                    app="header:X-Sluice-App"), workers=1)
    slow = []
    try:
        for _ in range(2):
            s = socket.create_connection(("127.0.0.1", sl.port))
            s.sendall(b"GET /leads/slow HTTP/1.1\r\nHost: x\r\nX-Sluice-App: a\r\n"
                      b"X-Test-Delay: 4\r\n\r\n")
            slow.append(s)
            assert wait_for(lambda: upstream.count() == len(slow), 2)
        t0 = time.monotonic()
        # The second slow call's commit waited behind the first call.
        assert wait_for(lambda: int(redis.cli("LLEN", RATE)) == 2, 1.5)
        before = []
        for app in ("b", "c", "c"):
            before.append(redis_time_us(redis))
            assert sl.request("GET", "/leads/x",
                              headers={"X-Sluice-App": app})[0] == 200
        # Each quick call's commit waits behind the two slow calls.  The
        # hold is 10 ms; the bound leaves a loaded machine's scheduling
        # plenty of room and is far below the slow calls' 4 s, which is
        # when the commits would go if the hold had no deadline.
        assert wait_for(lambda: int(redis.cli("LLEN", RATE)) == 5, 1.5)
        assert time.monotonic() - t0 < 3
        for s in slow:
            s.setblocking(False)
            try:
                assert s.recv(1) == b"", "a slow call answered early"
            except BlockingIOError:
                pass  # still in progress, as it should be
        # Newest first: the three quick calls, each sent after its "before".
        stamps = [int(x) for x in redis.cli("LRANGE", RATE, 0, 2).split()][::-1]
        assert all(s >= b for s, b in zip(stamps, before)), (stamps, before)
        assert redis.cli("LRANGE", "sluice:{leads}:a:1:w:", 0, -1).split() == \
            ["c", "c", "b", "a", "a"]
    finally:
        for s in slow:
            s.close()


@pytest.mark.parametrize("method,body", [("GET", b""), ("HEAD", b""),
                                         ("DELETE", b""), ("POST", b"x" * 100)])
def test_client_hangup_while_a_redis_decided_call_waits_for_the_upstream(
        upstream, redis, sluice, method, body):
    """A call decided by Redis waits suspended for its upstream's answer
    (with no body to read, without being resumed in between).  A client
    that hangs up meanwhile is noticed: its transfer is aborted and its
    slot comes back at once."""
    sl = sluice(cfg(upstream, redis, [{"name": "one", "concurrency": 1}]), workers=1)
    s = socket.create_connection(("127.0.0.1", sl.port))
    head = "%s /leads/slow HTTP/1.1\r\nHost: x\r\nX-Test-Delay: 3\r\n" % method
    if body:
        head += "Content-Length: %d\r\n" % len(body)
    s.sendall(head.encode() + b"\r\n" + body)
    assert wait_for(lambda: upstream.active == 1, 2)
    assert sl.request("GET", "/leads/now")[0] == 429
    s.close()
    assert "outcome=client_gone" in sl.wait_log("outcome=client_gone")
    t0 = time.monotonic()
    assert sl.request("GET", "/leads/now")[0] == 200
    # The slot came back with the hang-up, not when the 3 s upstream call
    # would have ended.
    assert time.monotonic() - t0 < 1.5
