"""Issue 19, second round: forwarding, provider feedback, the queue.

- libcurl's silent resend: a provider that reads a call on a kept-alive
  connection and closes without answering must not get it a second time.
- Repeated usage and Retry-After headers: the most conservative wins.
- Hand-over in queue mode: a freed slot starts the next held call at once.
- A client that never reads a large response does not hold its slot.
"""
import json
import socket
import threading
import time

import pytest

from harness import parallel, upstream_config


# ---- an upstream that reads a call on a kept-alive connection and hangs up ----

class HangUpUpstream:
    """A raw HTTP/1.1 upstream on a free loopback port.  On each connection
    the first request is answered (200, keep-alive); every later request on
    the same connection is read, counted, and the connection closed without
    an answer, as a provider that counted the call and then failed would.
    With headers_only, a later request is counted as soon as its head has
    arrived and the connection is closed before its body is read."""

    def __init__(self, headers_only=False):
        self.headers_only = headers_only
        self.lock = threading.Lock()
        self.arrivals = []  # (method, target) of every request read
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def count(self):
        with self.lock:
            return len(self.arrivals)

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        buf = b""
        n = 0
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = c.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                method, target = lines[0].split(b" ")[:2]
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                with self.lock:
                    self.arrivals.append((method.decode(), target.decode()))
                n += 1
                if n > 1 and self.headers_only:
                    return
                while len(buf) < length:
                    data = c.recv(65536)
                    if not data:
                        return
                    buf += data
                buf = buf[length:]
                if n > 1:
                    return  # read, counted, no answer
                body = b"ok"
                resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
                c.sendall(resp if method == b"HEAD" else resp + body)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.closed = True
        self.sock.close()


def rate_conf(url, limit, window="20s", **up):
    return upstream_config(url, [{"name": "w", "limit": limit, "window": window}],
                           name="p", prefix="/p", top={"workers": 1}, **up)


CASES = [("GET", None), ("HEAD", None), ("DELETE", None), ("DELETE", b"gone"),
         ("PUT", b"x" * 100), ("PUT", b"y" * 300000), ("POST", b"z" * 10)]


@pytest.mark.parametrize("headers_only", [False, True], ids=["read-all", "headers-only"])
@pytest.mark.parametrize("method,body", CASES,
                         ids=["%s-%d" % (m, len(b or b"")) for m, b in CASES])
def test_a_call_the_provider_read_is_never_sent_again(sluice, method, body, headers_only):
    up = HangUpUpstream(headers_only=headers_only)
    try:
        sl = sluice(rate_conf(up.url, 5))
        got = []
        for i in range(7):
            # One client connection per call; sluice keeps its upstream
            # connection alive between them, so calls 2, 4, ... go on a
            # reused connection the provider then drops.
            status, hdrs, data = sl.request(method, "/p/x?i=%d" % i, body=body)
            got.append((status, data))
        statuses = [s for s, d in got]
        # The provider's count is the truth: 5 per 20 s, whatever libcurl
        # would like to retry.  Before the fix: 9 of 5 arrived.
        assert up.count() <= 5, (up.arrivals, statuses)
        # Every call sent is one the client hears about: 200 when answered,
        # 502 when the provider hung up on it (never a silent second try).
        assert statuses[:5].count(200) + statuses[:5].count(502) == 5, statuses
        assert statuses[:5].count(502) >= 2, statuses
        assert up.count() == 5, (up.arrivals, statuses)
        for s, d in got[:5]:
            if s == 502 and method != "HEAD":
                e = json.loads(d)
                assert e["error"] == "upstream_error"
                assert "closed after the call was sent and before any answer" \
                    in e["message"], e
                assert "not sent again" in e["message"], e
        # The two over the limit are sluice's own 429s: nothing reached it.
        assert statuses[5:] == [429, 429], statuses
    finally:
        up.close()


# ---- the provider says it twice: the most conservative copy wins ----

# (sync kind, a copy that leaves 50, a copy that leaves 2, comma-joinable)
USAGE = [
    ("x-ratelimit", "X-RateLimit-Remaining", "50", "2"),
    ("ratelimit", "RateLimit", '"a";r=50;t=60', '"b";r=2;t=60'),
    ("ratelimit", "RateLimit-Remaining", "50", "2"),
    ("shopify", "X-Shopify-Shop-Api-Call-Limit", "50/100", "98/100"),
    ("sforce-limit-info", "Sforce-Limit-Info", "api-usage=50/100", "api-usage=98/100"),
]
SPELLINGS = ["two lines, low last", "two lines, low first", "comma-joined, low last"]


def spelled(name, high, low, how):
    if how == "two lines, low last":
        return ["%s: %s" % (name, high), "%s: %s" % (name, low)]
    if how == "two lines, low first":
        return ["%s: %s" % (name, low), "%s: %s" % (name, high)]
    return ["%s: %s, %s" % (name, high, low)]


@pytest.mark.parametrize("how", SPELLINGS)
@pytest.mark.parametrize("kind,name,high,low", USAGE,
                         ids=["x-ratelimit", "ratelimit", "ratelimit-remaining",
                              "shopify", "sforce"])
def test_a_usage_report_sent_twice_counts_the_lower(upstream, sluice, kind, name,
                                                    high, low, how):
    sl = sluice({"upstreams": [{"name": "p", "prefix": "/p", "url": upstream.url,
                                "rules": [{"name": "w", "limit": 100, "window": "1m",
                                           "sync": kind}]}]})
    upstream.script = [{"status": 200, "headers": spelled(name, high, low, how),
                        "body": b"ok"}]
    assert sl.request("GET", "/p/report")[0] == 200
    upstream.reset()
    statuses = [sl.request("GET", "/p/x?i=%d" % i)[0] for i in range(6)]
    # The provider left 2 by one copy and 50 by the other: 2 go through.
    # Before, the first line alone counted (50 left: all 6 through), and a
    # comma-joined value was ignored as malformed.
    assert statuses == [200, 200, 429, 429, 429, 429], statuses
    assert upstream.count() == 2


@pytest.mark.parametrize("lines", [["1", "3"], ["3", "1"], ["1, 3"],
                                   ["Thu, 01 Jan 1970 00:00:01 GMT, 3"]],
                         ids=["two lines, long last", "two lines, long first",
                              "comma-joined", "a past date and seconds"])
def test_two_retry_afters_pause_for_the_longer(upstream, sluice, lines):
    sl = sluice({"upstreams": [{"name": "p", "prefix": "/p", "url": upstream.url,
                                "default_pause": "1s",
                                "rules": [{"name": "w", "limit": 100, "window": "1m"}]}]})
    upstream.script = [{"status": 429, "headers": ["Retry-After: %s" % v for v in lines],
                        "body": b"slow down"}]
    t0 = time.monotonic()
    assert sl.request("GET", "/p/first")[0] == 429
    upstream.reset()
    status, hdrs, body = sl.request("GET", "/p/next")
    # Paused for 3 s, the longer of the two (1 s, the shorter or the
    # default_pause a malformed value falls back to, would say 1).
    assert status == 429, body
    assert json.loads(body)["error"] == "upstream_paused"
    assert int(hdrs["retry-after"]) >= 2, hdrs
    assert upstream.count() == 0
    # Still paused after the shorter one has run out.
    time.sleep(max(0, 1.3 - (time.monotonic() - t0)))
    assert sl.request("GET", "/p/later")[0] == 429
    assert upstream.count() == 0


# ---- a client that does not read its large response ----

def start_unread_download(sl, size):
    """Ask for SIZE bytes and read nothing yet: (socket, reader thread
    result list).  The caller reads the whole response later."""
    s = socket.create_connection(("127.0.0.1", sl.port))
    s.sendall(b"GET /p/big HTTP/1.1\r\nHost: x\r\nX-Test-Body-Size: %d\r\n\r\n" % size)
    return s


def read_response(s, timeout=60):
    """The whole response on S: (status, body bytes)."""
    s.settimeout(timeout)
    f = s.makefile("rb")
    status = int(f.readline().split()[1])
    length = None
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = f.read(length)
    return status, body


def queue_conf(url, **extra):
    return upstream_config(url, [{"name": "one", "concurrency": 1}], name="p", prefix="/p",
                           top=extra, on_limit="queue", max_wait="20s", timeout="60s")


def test_a_client_that_does_not_read_frees_its_slot_when_the_provider_is_done(
        upstream, sluice):
    from harness import pattern_sha256
    import hashlib
    size = 20 * 1024 * 1024
    sl = sluice(queue_conf(upstream.url))
    s = start_unread_download(sl, size)
    try:
        # The provider sends its 20 MB at once; the client reads none of it.
        deadline = time.monotonic() + 10
        while upstream.count() < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        t0 = time.monotonic()
        status, hdrs, body = sl.request("GET", "/p/next", timeout=30)
        took = time.monotonic() - t0
        assert status == 200, body
        # The slot came free when the upstream had sent the whole answer
        # (well under a second on loopback, a few more on a busy machine),
        # not at the 60 s timeout, and not when the first client reads.
        assert took < 10, took
        assert upstream.max_active == 1
        # The first client then reads its whole answer, byte for byte.
        st, data = read_response(s)
        assert st == 200
        assert len(data) == size
        assert hashlib.sha256(data).hexdigest() == pattern_sha256(size)
    finally:
        s.close()


def test_with_the_spool_full_a_slow_client_holds_its_slot(upstream, sluice):
    import hashlib
    from harness import pattern_sha256
    size = 20 * 1024 * 1024
    # 1 MB of spool, 256 KiB of buffer and the sockets' buffers (a few MB on
    # loopback) hold far less than 20 MB: the transfer waits for the client.
    sl = sluice(queue_conf(upstream.url, response_spool="1MB"))
    s = start_unread_download(sl, size)
    try:
        deadline = time.monotonic() + 10
        while upstream.count() < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        result = []
        t = threading.Thread(target=lambda: result.append(
            sl.request("GET", "/p/next", timeout=30)))
        t.start()
        time.sleep(1.5)
        # Held: the first call is still in progress at the provider.
        assert result == [] and upstream.count() == 1
        st, data = read_response(s)
        assert st == 200 and len(data) == size
        assert hashlib.sha256(data).hexdigest() == pattern_sha256(size)
        t.join(30)
        assert result and result[0][0] == 200
        assert upstream.count() == 2 and upstream.max_active == 1
    finally:
        s.close()


# ---- queue mode: a freed slot starts the next held call at once ----

def test_forty_held_calls_hand_over_without_waiting_for_a_poll(upstream, sluice, store):
    c = {"upstreams": [{"name": "p", "prefix": "/p", "url": upstream.url,
                        "on_limit": "queue", "max_wait": "30s",
                        "rules": [{"name": "one", "concurrency": 1}]}]}
    if store:
        c["store"] = store
    # Two workers: a slot freed on one worker wakes a call held by the other.
    sl = sluice(c, workers=2)
    assert sl.request("GET", "/p/warm")[0] == 200
    upstream.reset()
    took = []
    for _ in range(3):
        t0 = time.monotonic()
        res = parallel(40, lambda i: sl.request("GET", "/p/x?i=%d" % i, timeout=60))
        took.append(time.monotonic() - t0)
        assert [s for s, h, b in res] == [200] * 40
    assert upstream.count() == 120
    assert upstream.max_active == 1
    # One at a time by construction.  A hand-over costs sluice well under a
    # millisecond; the Python upstream and 40 client threads cost 1-2 ms a
    # call on this 2-core machine (0.05-0.1 s a burst measured idle), and a
    # machine busy with builds (load 12 seen) stretches that several times;
    # the best of three bursts skips a passing spike.  Hand-overs left to
    # the 50 ms safety poll take 25 ms each on average: 40 of them 1 s and
    # more (issue 19 measured 1.15 s).
    assert min(took) < 0.6, took


def test_no_held_call_waits_for_the_safety_poll(upstream, sluice, redis):
    """Four callers, one slot shared through Redis by two workers: a call
    waits for at most the three others (a few ms), unless the wake-up for
    it was lost and it waited for the 50 ms safety poll.  Before issue 19,
    a slot freed while the next call's decision was out at Redis woke
    nobody: 3-10% of such calls waited for the poll."""
    sl = sluice({"store": redis.url,
                 "upstreams": [{"name": "p", "prefix": "/p", "url": upstream.url,
                                "on_limit": "queue", "max_wait": "30s",
                                "rules": [{"name": "one", "concurrency": 1}]}]},
                workers=2)
    assert sl.request("GET", "/p/warm")[0] == 200
    took = []
    lock = threading.Lock()

    def caller(i):
        c = sl.conn(30)
        end = time.monotonic() + 4
        while time.monotonic() < end:
            t0 = time.monotonic()
            c.request("GET", "/p/x")
            r = c.getresponse()
            r.read()
            assert r.status == 200
            with lock:
                took.append(time.monotonic() - t0)
        c.close()

    parallel(4, caller)
    slow = sorted(t for t in took if t >= 0.045)
    # A call here takes 1-5 ms (three others ahead, each a Python upstream
    # round trip).  45 ms or more means the 50 ms poll, or the machine
    # stalled the test itself: a busy 2-core machine does that now and
    # then, not to one call in a hundred.  Before: 3-10% of them.
    assert len(took) > 200, len(took)
    assert len(slow) <= len(took) // 100, (len(slow), len(took), slow[-5:])


def test_without_a_usable_spool_directory_responses_still_arrive_whole(upstream, sluice):
    import hashlib
    from harness import pattern_sha256
    size = 8 * 1024 * 1024
    sl = sluice(queue_conf(upstream.url), env={"TMPDIR": "/nonexistent/sluice-spool"})
    s = start_unread_download(sl, size)
    try:
        time.sleep(0.5)  # the buffer fills; the spool cannot be opened
        st, data = read_response(s)
        assert st == 200 and len(data) == size
        assert hashlib.sha256(data).hexdigest() == pattern_sha256(size)
    finally:
        s.close()
    # Said once, with what it means for slow clients.
    log = sl.wait_log("cannot open a response spool file")
    assert log.count("cannot open a response spool file in /nonexistent/sluice-spool") == 1
    assert "slow clients hold their upstream calls open" in log
