"""No count lost when Redis loses data (limits/sl_redis_repair.c).

Three sluice instances share one rate rule through a real redis-server.
Some of the window's calls are sent, then Redis loses its data -- a
FLUSHALL, a restart without persistence, keys evicted under allkeys-lru --
while clients keep calling.  Asserted at the upstream's arrival times:
no interval of the window holds more than `limit` calls (every instance's
calls before the loss still count), service resumes within the stated
bound (5 s after the loss is seen; the calls left in the window are sent),
and every call is answered.
"""
import signal
import threading
import time

from harness import fill_until_evicted, hammer, max_in_window, upstream_config, wait_for

LIMIT, WINDOW = 30, 10.0
BEFORE = 21                 # calls sent before the loss: 7 per instance
RATE = "sluice:{leads}:r:1:w:"
MARKER = "sluice:{leads}:m"
# The upstream stamps arrival with the kernel's receive time, after sluice
# sent it; on a loaded 2-core machine that lags the send by a few ms, and
# the window's two ends lag alike.  100 ms of margin (the rule's, so the
# store keeps each call 100 ms longer) covers that jitter, so the windows
# are asserted exact: a full WINDOW, at most LIMIT.
MARGIN = "100ms"
# Service resumes within 5 s of the loss being seen (SL_FLEET_PHASE_MAX_US),
# about 1.3 s when every instance answers; detection is at the next
# decision or heartbeat (0.5 s), reconnecting after a restart within the
# 1 s backoff.  Asserted with slack for a loaded machine.
RESUME = 7.0


def conf(up, redis, on_store_error="local"):
    return upstream_config(
        up, [{"name": "w", "limit": LIMIT, "window": "%ds" % WINDOW}], redis.url,
        top={"on_store_error": on_store_error, "local_share": 0.33},
        on_limit="queue", max_wait="30s", margin=MARGIN)


def send_before(instances):
    """BEFORE calls, one after the other, spread over the instances."""
    for i in range(BEFORE):
        status = instances[i % len(instances)].request("GET", "/leads/x")[0]
        assert status == 200


def load(instances, until, results):
    """Three clients per instance calling until UNTIL (monotonic); each
    call's (status or exception, monotonic time of its answer)."""
    lock = threading.Lock()

    def run(sl):
        while time.monotonic() < until:
            try:
                status = sl.request("GET", "/leads/x", timeout=40)[0]
            except Exception as e:  # an unanswered call: reported below
                status = repr(e)
            with lock:
                results.append((status, time.monotonic()))

    ts = [threading.Thread(target=run, args=(sl,)) for sl in instances for _ in range(3)]
    for t in ts:
        t.start()
    return ts


def check(upstream, results, lost_at, first_before, answers):
    times = upstream.times()
    bad = [s for s, _ in results if s not in answers]
    assert not bad, bad[:5]
    # Every instance's calls before the loss still count: the window holds
    # LIMIT at most, though Redis forgot BEFORE of them.
    assert max_in_window(times, WINDOW) <= LIMIT, max_in_window(times, WINDOW)
    after = [t for t in times if t > lost_at]
    # The calls left in the window (LIMIT - BEFORE) went within RESUME of
    # the loss; and the window after the first call's was used again.
    assert after and after[0] - lost_at < RESUME, (after[:1], lost_at)
    assert len([t for t in after if t < first_before + WINDOW]) == LIMIT - BEFORE
    assert len(times) > LIMIT


def scenario(upstream, redis, sluice, lose, on_store_error="local", answers=(200,)):
    c = conf(upstream, redis, on_store_error)
    instances = [sluice(c) for _ in range(3)]
    send_before(instances)
    first_before = upstream.times()[0]
    # The last commit rides in its instance's next loop pass.
    assert wait_for(lambda: int(redis.command("LLEN", RATE)) == BEFORE, timeout=2)
    lost_at = lose(instances)
    results = []
    # Past the first window's end, so that its room and the next window's
    # are both used.
    threads = load(instances, first_before + WINDOW + 3,
                   results)
    for t in threads:
        t.join()
    check(upstream, results, lost_at, first_before, answers)
    return instances


def test_flushall_mid_window_loses_no_count(upstream, redis, sluice):
    def lose(_instances):
        redis.command("FLUSHALL")
        return time.monotonic()
    instances = scenario(upstream, redis, sluice, lose)
    assert any("redis lost data" in sl.read_log() for sl in instances)


def test_restart_without_persistence_loses_no_count(upstream, redis, sluice):
    # "deny" while Redis is away: the outage itself grants nothing (with
    # "local", each instance would grant its share meanwhile, the outage's
    # own bound), so every call after the restart is Redis's decision.
    def lose(_instances):
        redis.stop()
        t = time.monotonic()
        redis.start()
        return t
    # Calls made while it is down (until the instance reconnects, its
    # backoff: at most 1 s) are answered 503.
    scenario(upstream, redis, sluice, lose, on_store_error="deny", answers=(200, 503))


def test_eviction_loses_no_count(upstream, redis, sluice):
    def lose(instances):
        # Fill until Redis evicted the rule's log, the least recently used
        # key once it is a tick of Redis's LRU clock (1 s) older than any
        # junk: keys touched in one tick tie, and which of some 2,000 goes
        # first is a draw.  Then Redis, sampling 5 keys an eviction into a
        # pool of 16, evicts it within about 400 evictions on average, and
        # misses it through 18,000 with a chance of e^-45.  The instances
        # are frozen (SIGSTOP) meanwhile: running, each loss of one of
        # their keys under this pressure is seen and repaired within about
        # 100 ms, the repair writes the log anew, and its eviction becomes
        # a race it once lost for more than 20,000 writes beside a CPU hog.
        # They wake to a Redis that lost the log: the loss this is about.
        assert wait_for(lambda: redis.command("OBJECT", "IDLETIME", RATE) >= 1, timeout=5)
        t = time.monotonic()
        for sl in instances:
            sl.proc.send_signal(signal.SIGSTOP)
        try:
            fill_until_evicted(redis, "allkeys-lru", 512 * 1024,
                               lambda: not redis.command("EXISTS", RATE), writes=20000)
            assert not redis.command("EXISTS", RATE)
        finally:
            for sl in instances:
                sl.proc.send_signal(signal.SIGCONT)
        return t
    scenario(upstream, redis, sluice, lose)


def test_a_redis_that_keeps_evicting_is_logged_once_then_counted(upstream, redis, sluice):
    """A Redis whose memory stays full under allkeys-lru evicts keys all
    the time, the ones each repair writes back among them: every
    heartbeat sees keys evicted and repairs again, a loss each 0.1 to
    0.5 s for as long as it lasts (it was a warn line each).  The first
    loss is logged at once; those of the next 10 s are one line at its
    end, with their count and the likely cause.  Calls are decided again
    once Redis stops evicting."""
    sl = sluice(conf(upstream, redis), workers=1)
    assert [sl.request("GET", "/leads/x")[0] for _ in range(3)] == [200] * 3
    # The first start's phase is over (the heartbeat ending it has seen
    # the marker: a loss from now on is a warn, not the first start's info).
    assert wait_for(lambda: "leads is decided in redis again" in sl.read_log(), 5)
    t0 = time.monotonic()
    # 4 s of eviction: 8 heartbeats at least, each seeing keys evicted.
    fill_until_evicted(redis, "allkeys-lru", 512 * 1024,
                       lambda: time.monotonic() - t0 > 4.0, writes=10 ** 7)
    lost = [line for line in sl.read_log().splitlines() if "redis lost data" in line]
    assert len(lost) == 1 and " warn store: redis lost data (a flush" in lost[0], lost
    # The count comes with the first heartbeat 10 s after the first line.
    summary = wait_for(lambda: [line for line in sl.read_log().splitlines()
                                if "redis lost data" in line and "more time" in line], 10)
    assert len(summary) == 1, sl.read_log()[-2000:]
    more = int(summary[0].split("redis lost data ")[1].split()[0])
    assert more >= 3 and "maxmemory-policy noeviction" in summary[0], summary
    assert len([line for line in sl.read_log().splitlines()
                if "redis lost data" in line]) == 2
    assert wait_for(lambda: sl.request("GET", "/leads/x")[0] == 200, RESUME)


# ---- leaky buckets: the level is state of its own, put back from the log
# (repair.lua's refill, sl_bucket_refill) ----

def bucket_conf(up, redis, bucket, leak, margin):
    return upstream_config(
        up, [{"name": "rest", "bucket": bucket, "leak": leak}], redis.url,
        top={"on_store_error": "local", "local_share": 0.5}, margin=margin)


def test_flushall_keeps_a_full_bucket_full(upstream, redis, sluice):
    """A bucket filled by a burst, then FLUSHALL: the level (its own key)
    is gone with the log, and the burst is not granted again."""
    c = bucket_conf(upstream, redis, 10, "1/m", "0ms")
    instances = [sluice(c) for _ in range(2)]
    codes = [instances[i % 2].request("GET", "/leads/x")[0] for i in range(12)]
    assert codes == [200] * 10 + [429] * 2
    assert wait_for(lambda: int(redis.command("LLEN", "sluice:{leads}:r:4:rest:")) == 10,
                    timeout=2)
    redis.command("FLUSHALL")
    # 3 s of demand on both instances (a call leaks out each minute, so
    # none is due): every call is answered, none is sent.
    statuses = [s for _, s in hammer(instances, 3.0, per_instance=2, pause=0.05)]
    assert statuses and set(statuses) == {429}, set(statuses)
    assert upstream.count() == 10
    logs = [sl.read_log() for sl in instances]
    # the first start on a new Redis is no loss (info); the flush is (warn)
    assert any(" info store: redis holds no state for upstream leads yet" in log
               for log in logs)
    assert any(" warn store: redis lost data" in log for log in logs)


def test_flushall_under_demand_at_the_leak_rate_keeps_the_bound(upstream, redis, sluice):
    """Demand above the leak for long enough keeps the bucket full, calls
    going at the leak rate; then FLUSHALL.  The log holds one drain time
    of calls spaced at the leak rate, which replayed into an empty bucket
    would leave it nearly empty: what was in it before counts too.  At
    the upstream, no interval t holds more than bucket + rate x t."""
    bucket, rate = 6, 2.0
    c = bucket_conf(upstream, redis, bucket, "2/s", "100ms")
    instances = [sluice(c) for _ in range(2)]
    # The drain time (3 s) is longer than the repair phase (about 1.3 s),
    # so the bucket is still more than half full when calls resume; and
    # demand has kept it full for more than a span (3.1 s) when it is lost.
    flushed = []
    flush = threading.Timer(5.5, lambda: flushed.append(redis.command("FLUSHALL")))
    flush.start()
    statuses = [s for _, s in hammer(instances, 9.0, per_instance=2, pause=0.02)]
    flush.join()
    assert flushed
    times = upstream.times()
    # The precondition: the burst (the bucket's 6, within half a second of
    # the first call) had left the span (3.1 s) when Redis lost the log 5.5
    # s after the start: the log held only calls at the leak rate, which a
    # replay alone reads as a nearly empty bucket.
    burst = [t for t in times if t - times[0] < 0.5]
    assert len(burst) >= bucket and burst[-1] - times[0] < 0.5
    worst = max((j - i + 1) - (bucket + rate * (times[j] - times[i]))
                for i in range(len(times)) for j in range(i, len(times)))
    assert worst <= 0, worst
    assert set(statuses) <= {200, 429}
    # Service went on after the repair: calls at the leak rate in the last
    # two seconds (4; the margin and the last call's drain cost about one).
    end = times[-1]
    assert len([t for t in times if t > end - 2.0]) >= 3
    assert any("redis lost data" in sl.read_log() for sl in instances)


def test_flushall_puts_the_providers_usage_report_back(upstream, redis, sluice):
    """The provider's report (it counts calls sluice never sent: 14,990 of
    15,000 used) is state of its own; after a FLUSHALL the fleet puts it
    back with the calls, so the provider's count still holds: 10 left at
    the report, 3 sent since, 7 more and no others."""
    c = upstream_config(
        upstream, [{"name": "daily", "limit": 15000, "window": "24h",
                    "sync": "sforce-limit-info"}], redis.url, name="crm", prefix="/crm")
    instances = [sluice(c) for _ in range(2)]
    upstream.script = [{"status": 200, "headers": ["Sforce-Limit-Info: api-usage=14990/15000"]}]
    assert instances[0].request("GET", "/crm/a")[0] == 200
    assert [instances[i % 2].request("GET", "/crm/b")[0] for i in range(3)] == [200] * 3
    assert wait_for(lambda: int(redis.command("LLEN", "sluice:{crm}:r:5:daily:")) == 4,
                    timeout=2)
    redis.command("FLUSHALL")
    statuses = [s for _, s in hammer(instances, 3.0, per_instance=2, path="/crm/c",
                                     pause=0.05)]
    assert set(statuses) == {200, 429}, set(statuses)
    assert upstream.count() == 11, upstream.count()
    assert any("redis lost data" in sl.read_log() for sl in instances)


def test_flushall_puts_calls_back_with_their_apps(upstream, redis, sluice):
    """With shares, a call put back counts as its app's: an app that used
    its whole share before a FLUSHALL gets nothing more after it, and the
    other app still gets its half."""
    c = upstream_config(
        upstream, [{"name": "quota", "limit": 10, "window": "1m",
                    "apps": {"sync": {"max": 0.5}}}], redis.url,
        app="header:X-App", margin="50ms")
    instances = [sluice(c) for _ in range(2)]

    def call(i, app):
        return instances[i % 2].request("GET", "/leads/x", headers={"X-App": app})[0]

    assert [call(i, "sync") for i in range(5)] == [200] * 5
    assert wait_for(lambda: int(redis.command("LLEN", "sluice:{leads}:r:5:quota:")) == 5,
                    timeout=2)
    redis.command("FLUSHALL")
    # The first call waits out the repair phase (about 1.3 s).
    assert [call(i, "sync") for i in range(3)] == [429] * 3
    assert [call(i, "ui") for i in range(6)] == [200] * 5 + [429]
    assert upstream.count() == 10
    assert redis.command("LRANGE", "sluice:{leads}:a:5:quota:", 0, -1).count(b"sync") == 5


def test_flushall_puts_a_call_back_at_its_settled_cost(upstream, redis, sluice):
    """A call admitted at its estimate (1) and charged its real cost (5)
    when the answer said so is put back at 5 after a FLUSHALL."""
    c = upstream_config(
        upstream, [{"name": "points", "limit": 10, "window": "1h", "cost": "header:X-Cost",
                    "settle": "header:X-Actual-Cost"}], redis.url, margin="0ms")
    instances = [sluice(c) for _ in range(2)]
    upstream.script = [{"status": 200, "headers": ["X-Actual-Cost: 5"]}]
    assert instances[0].request("GET", "/leads/x", headers={"X-Cost": "1"})[0] == 200
    assert wait_for(lambda: int(redis.command("LLEN", "sluice:{leads}:r:6:points:")) == 5,
                    timeout=2)
    redis.command("FLUSHALL")
    # 5 left, whichever instance asks (the first waits out the repair)
    codes = [instances[i % 2].request("GET", "/leads/x", headers={"X-Cost": "1"})[0]
             for i in range(7)]
    assert codes == [200] * 5 + [429] * 2, codes
    assert upstream.count() == 6
