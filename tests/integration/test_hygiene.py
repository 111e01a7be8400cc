"""Request and response hygiene (RFC 9112): what a client and the upstream see
when either side sends something ambiguous or hostile.

Every test talks raw bytes over a socket, so the exact spelling reaches
sluice (http.client would normalize or refuse it).  The desired behaviour
follows NGINX and Envoy:

  - a request whose framing is in doubt (Transfer-Encoding other than
    "chunked", Transfer-Encoding together with Content-Length, conflicting
    or malformed Content-Length) is answered (501 / 400) and its connection
    closed, so that bytes a client hid behind it (a second, "smuggled"
    request) never reach the upstream;
  - a request head that libmicrohttpd 0.9.75 would silently rewrite (NUL
    bytes, which it truncates at; obs-fold lines, which it glues onto the
    header *name*; names with whitespace; bare CR) is refused with 400;
  - a client that trickles its headers is cut off after header_timeout,
    whatever libmicrohttpd's idle timeout thinks;
  - an upstream response with ambiguous framing, or with headers too large
    to relay, becomes a clean 502 with a JSON body saying why.

After each test sluice must still serve a normal call on a new connection,
and its log must hold no AddressSanitizer report.
"""
import json
import re
import socket
import threading
import time

import pytest

# How long a test waits for sluice to answer and close a connection it
# should close at once.  client_timeout is left at its 60 s default in the
# request tests, so a close seen within this deadline is sluice refusing
# the request, never the idle timeout.
CLOSE_DEADLINE = 4.0

SMUGGLED = b"GET /up/smuggled HTTP/1.1\r\nHost: h\r\n\r\n"


def config(up, **top):
    cfg = {"upstreams": [{"name": "up", "prefix": "/up", "url": up.url}]}
    cfg.update(top)
    return cfg


class Reply:
    """What a client saw on one raw connection."""

    def __init__(self, raw, closed, elapsed):
        self.raw = raw
        self.closed = closed        # sluice closed the connection (FIN or RST)
        self.elapsed = elapsed      # seconds from send to close (or deadline)
        m = re.match(rb"HTTP/1\.[01] (\d{3})", raw)
        self.status = int(m.group(1)) if m else None
        self.headers = {}
        self.body = b""
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if self.status is None or not sep:
            return
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            self.headers[name.strip().lower().decode("latin-1")] = \
                value.strip().decode("latin-1")
        if "content-length" in self.headers:
            try:
                self.body = rest[: int(self.headers["content-length"])]
            except ValueError:
                self.body = rest
        elif "chunked" in self.headers.get("transfer-encoding", "").lower():
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                try:
                    size = int(size_line.split(b";")[0], 16)
                except ValueError:
                    break
                if size == 0:
                    break
                body += rest[:size]
                rest = rest[size + 2:]
            self.body = body
        else:
            self.body = rest

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "Reply(status=%r closed=%r elapsed=%.2f raw=%r)" % (
            self.status, self.closed, self.elapsed, self.raw[:300])


def exchange(port, data, deadline=CLOSE_DEADLINE):
    """Send DATA on a new connection; read until sluice closes it or DEADLINE."""
    s = socket.create_connection(("127.0.0.1", port))
    got = b""
    closed = False
    t0 = time.monotonic()
    try:
        s.sendall(data)
        while True:
            left = deadline - (time.monotonic() - t0)
            if left <= 0:
                break
            s.settimeout(left)
            try:
                piece = s.recv(65536)
            except socket.timeout:
                break
            if not piece:
                closed = True
                break
            got += piece
    except (ConnectionResetError, BrokenPipeError):
        closed = True
    finally:
        s.close()
    return Reply(got, closed, time.monotonic() - t0)


def settle_and_assert_nothing_forwarded(up):
    """No request, not even a partial one, reached the upstream.

    The recording upstream counts a request once its body is read, counts
    `active` while its handler runs and `errors` for one cut short; a
    request sluice started to forward and then abandoned shows in one of
    the last two.  0.3 s lets an (unwanted) forward arrive first."""
    time.sleep(0.3)
    with up.lock:
        targets = [r.target for r in up.records]
        active, errors = up.active, up.errors
    assert targets == [], targets
    assert active == 0 and errors == 0, (active, errors)


def assert_still_serving(sl, up):
    """A normal call on a new connection still works, and ASan saw nothing."""
    before = up.count()
    status, _, body = sl.request("GET", "/up/after", timeout=10)
    assert status == 200, body
    assert json.loads(body)["target"] == "/after"
    assert up.count() == before + 1
    log = sl.read_log()
    assert "AddressSanitizer" not in log, log[-4000:]
    assert "runtime error" not in log, log[-4000:]


def assert_refused_and_closed(reply, status):
    assert reply.status == status, reply
    assert reply.closed, reply


# ---------------------------------------------------------------------------
# Transfer-Encoding other than exactly "chunked": 501, closed, promptly.

TE_UNSUPPORTED = {
    "gzip-then-chunked": [b"gzip, chunked"],
    "chunked-then-identity": [b"chunked, identity"],
    "identity": [b"identity"],
    "chunked-twice-in-one-value": [b"chunked, chunked"],
    "deflate": [b"deflate"],
    "chunked-prefix": [b"chunkedx"],
    "two-headers-chunked-first": [b"chunked", b"gzip"],
    "two-headers-chunked-last": [b"gzip", b"chunked"],
}


@pytest.mark.parametrize("values", list(TE_UNSUPPORTED.values()),
                         ids=list(TE_UNSUPPORTED))
def test_unsupported_transfer_coding_is_501_and_closes(upstream, sluice, values):
    sl = sluice(config(upstream))
    head = b"POST /up/te HTTP/1.1\r\nHost: h\r\n"
    for v in values:
        head += b"Transfer-Encoding: " + v + b"\r\n"
    # A body that is valid chunked framing, then a second request: if the
    # first one's framing were guessed, the second would be smuggled.
    reply = exchange(sl.port, head + b"\r\n5\r\nhello\r\n0\r\n\r\n" + SMUGGLED)
    assert_refused_and_closed(reply, 501)
    assert reply.json()["error"] == "unsupported_transfer_coding"
    # Prompt: sluice decides when the headers are in.  2 s is far above
    # sluice's loop latency and far below client_timeout (60 s), the only
    # other thing that would close this connection.
    assert reply.elapsed < 2.0, reply
    settle_and_assert_nothing_forwarded(upstream)
    assert_still_serving(sl, upstream)


@pytest.mark.parametrize("value", [b"chunked", b"Chunked", b"CHUNKED"])
def test_chunked_request_is_forwarded_and_pipelining_still_works(upstream, sluice, value):
    """The control: the one coding sluice accepts keeps working, and a
    request pipelined behind a valid chunked body is an ordinary call."""
    sl = sluice(config(upstream))
    reply = exchange(sl.port,
                     b"POST /up/ok HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: " + value +
                     b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                     b"GET /up/second HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert reply.status == 200, reply
    assert reply.raw.count(b"HTTP/1.1 200") == 2, reply
    time.sleep(0.2)
    with upstream.lock:
        got = [(r.target, r.body_len) for r in upstream.records]
    assert got == [("/ok", 5), ("/second", 0)]
    assert_still_serving(sl, upstream)


@pytest.mark.parametrize("value", [b"chunked ", b"chunked\t", b"  chunked  "],
                         ids=["trailing-space", "trailing-tab", "both-sides"])
def test_chunked_with_trailing_whitespace_never_hangs(upstream, sluice, value):
    """libmicrohttpd 0.9.75 skips whitespace before a header value but keeps
    it after, and decodes chunks only for a value equal to "chunked": for
    "chunked " it hands the raw chunk bytes to sluice as an unframed body
    that ends when the client closes.  Whatever sluice does (forward the
    5-byte body intact, or refuse with 400/501 and close), it must answer
    at once and never send the upstream a mangled body."""
    sl = sluice(config(upstream))
    reply = exchange(sl.port, b"POST /up/ws HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: " + value +
                     b"\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert reply.status in (200, 400, 501), reply
    assert reply.closed and reply.elapsed < 2.0, reply
    if reply.status == 200:
        time.sleep(0.2)
        with upstream.lock:
            assert [(r.target, r.body_len) for r in upstream.records] == [("/ws", 5)]
    else:
        settle_and_assert_nothing_forwarded(upstream)
    assert_still_serving(sl, upstream)


# ---------------------------------------------------------------------------
# Transfer-Encoding together with Content-Length: 400, closed.

TE_AND_CL = {
    "te-then-cl": [b"Transfer-Encoding: chunked", b"Content-Length: 5"],
    "cl-then-te": [b"Content-Length: 5", b"Transfer-Encoding: chunked"],
    "cl-zero": [b"Content-Length: 0", b"Transfer-Encoding: chunked"],
    "te-mixed-case": [b"transfer-encoding: Chunked", b"content-length: 5"],
    "identity-and-cl": [b"Transfer-Encoding: identity", b"Content-Length: 5"],
}


@pytest.mark.parametrize("lines", list(TE_AND_CL.values()), ids=list(TE_AND_CL))
def test_transfer_encoding_with_content_length_is_400_and_closes(upstream, sluice, lines):
    sl = sluice(config(upstream))
    head = b"POST /up/both HTTP/1.1\r\nHost: h\r\n" + b"".join(l + b"\r\n" for l in lines)
    reply = exchange(sl.port, head + b"\r\n5\r\nhello\r\n0\r\n\r\n" + SMUGGLED)
    assert_refused_and_closed(reply, 400)
    settle_and_assert_nothing_forwarded(upstream)
    assert_still_serving(sl, upstream)


# ---------------------------------------------------------------------------
# Content-Length: conflicting or not a plain decimal number: 400, closed.

CL_BAD = {
    "two-headers-differ": [b"Content-Length: 5", b"Content-Length: 40"],
    "two-headers-differ-reversed": [b"Content-Length: 40", b"Content-Length: 5"],
    "one-header-list": [b"Content-Length: 5, 40"],
    "one-header-list-no-space": [b"Content-Length: 5,40"],
    "non-numeric": [b"Content-Length: abc"],
    "negative": [b"Content-Length: -5"],
    "leading-plus": [b"Content-Length: +5"],
    "hex": [b"Content-Length: 0x5"],
    "decimal-point": [b"Content-Length: 5.0"],
    "empty": [b"Content-Length: "],
    "u64-max": [b"Content-Length: 18446744073709551615"],  # MHD_SIZE_UNKNOWN
}


@pytest.mark.parametrize("lines", list(CL_BAD.values()), ids=list(CL_BAD))
def test_bad_content_length_is_400_and_closes(upstream, sluice, lines):
    sl = sluice(config(upstream))
    head = b"POST /up/cl HTTP/1.1\r\nHost: h\r\n" + b"".join(l + b"\r\n" for l in lines)
    reply = exchange(sl.port, head + b"\r\nhello" + SMUGGLED)
    assert_refused_and_closed(reply, 400)
    settle_and_assert_nothing_forwarded(upstream)
    assert_still_serving(sl, upstream)


@pytest.mark.parametrize("value", [b"99999999999999999999999", b"100000000000000000000"])
def test_content_length_beyond_64_bits_is_refused_and_closes(upstream, sluice, value):
    """A plain decimal too large for any body: 400 or 413 (libmicrohttpd's
    own answer), and the connection closed."""
    sl = sluice(config(upstream))
    reply = exchange(sl.port, b"POST /up/cl HTTP/1.1\r\nHost: h\r\nContent-Length: " + value +
                     b"\r\n\r\nhello" + SMUGGLED)
    assert reply.status in (400, 413), reply
    assert reply.closed, reply
    settle_and_assert_nothing_forwarded(upstream)
    assert_still_serving(sl, upstream)


def test_same_content_length_twice_may_be_accepted(upstream, sluice):
    """RFC 9112 6.3 allows folding identical values; refusing is fine too.
    Either way the body is 5 bytes and nothing behind it is smuggled."""
    sl = sluice(config(upstream))
    reply = exchange(sl.port, b"POST /up/same HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                     b"Content-Length: 5\r\nConnection: close\r\n\r\nhello")
    assert reply.status in (200, 400), reply
    time.sleep(0.3)
    with upstream.lock:
        got = [(r.target, r.body_len) for r in upstream.records]
    assert got == ([("/same", 5)] if reply.status == 200 else []), got
    assert_still_serving(sl, upstream)


# ---------------------------------------------------------------------------
# Host: HTTP/1.1 needs exactly one.

HOST_BAD = {
    "http11-no-host": b"GET /up/h HTTP/1.1\r\n\r\n",
    "http11-no-host-other-headers": b"GET /up/h HTTP/1.1\r\nAccept: */*\r\n\r\n",
    "two-hosts-differ": b"GET /up/h HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "two-hosts-same": b"GET /up/h HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
    "two-hosts-http10": b"GET /up/h HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
}


@pytest.mark.parametrize("raw", list(HOST_BAD.values()), ids=list(HOST_BAD))
def test_missing_or_repeated_host_is_400(upstream, sluice, raw):
    sl = sluice(config(upstream))
    reply = exchange(sl.port, raw)
    assert reply.status == 400, reply
    settle_and_assert_nothing_forwarded(upstream)
    assert_still_serving(sl, upstream)


def test_http10_without_host_is_served(upstream, sluice):
    sl = sluice(config(upstream))
    reply = exchange(sl.port, b"GET /up/old HTTP/1.0\r\n\r\n")
    assert reply.status == 200, reply
    assert upstream.count(lambda r: r.target == "/old") == 1
    assert_still_serving(sl, upstream)


# ---------------------------------------------------------------------------
# Bytes libmicrohttpd 0.9.75 rewrites behind the application's back: NUL
# (it truncates the method, target and header values at it), obs-fold (it
# appends the continuation to the header NAME: "Content-: 5" + " Length"
# becomes "Content-Length: 5"), a line ": x" after another header (it ends
# the header block there, and the lines after it become the next request),
# whitespace in names, bare CR.  All 400, connection closed, nothing
# forwarded.

MALFORMED = {
    "nul-in-target": b"GET /up/x\x00/../admin HTTP/1.1\r\nHost: h\r\n\r\n",
    "nul-in-query": b"GET /up/x?a=1\x00b HTTP/1.1\r\nHost: h\r\n\r\n",
    "nul-in-method": b"GE\x00T /up/x HTTP/1.1\r\nHost: h\r\n\r\n",
    "nul-in-header-name": b"GET /up/x HTTP/1.1\r\nHost: h\r\nX-F\x00oo: bar\r\n\r\n",
    "nul-in-header-value": b"GET /up/x HTTP/1.1\r\nHost: h\r\nX-Foo: ba\x00r\r\n\r\n",
    "nul-in-host": b"GET /up/x HTTP/1.1\r\nHost: h\x00.evil\r\n\r\n",
    "nul-in-content-length": b"POST /up/x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\x0040\r\n\r\nhello",
    "obs-fold-space": b"GET /up/x HTTP/1.1\r\nHost: h\r\nX-Foo: a\r\n  b\r\n\r\n",
    "obs-fold-tab": b"GET /up/x HTTP/1.1\r\nHost: h\r\nX-Foo: a\r\n\tb\r\nX-Bar: c\r\n\r\n",
    "obs-fold-builds-content-length":
        b"POST /up/x HTTP/1.1\r\nHost: h\r\nContent-: 5\r\n Length\r\n\r\nhello",
    "obs-fold-builds-host-name": b"GET /up/x HTTP/1.1\r\nHost: h\r\n : x\r\n\r\n",
    "first-header-line-folded": b"GET /up/x HTTP/1.1\r\n Host: h\r\n\r\n",
    "space-in-header-name": b"GET /up/x HTTP/1.1\r\nHost: h\r\nFoo Bar: x\r\n\r\n",
    "tab-in-header-name": b"GET /up/x HTTP/1.1\r\nHost: h\r\nFoo\tBar: x\r\n\r\n",
    "space-before-colon-host": b"GET /up/x HTTP/1.1\r\nHost : h\r\n\r\n",
    "space-before-colon-te":
        b"POST /up/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n"
        b"Content-Length: 5\r\n\r\nhello",
    "empty-header-name-first": b"GET /up/x HTTP/1.1\r\n: x\r\nHost: h\r\n\r\n",
    "empty-header-name-later": b"GET /up/x HTTP/1.1\r\nHost: h\r\n: x\r\nX-A: b\r\n\r\n",
    "bare-cr-in-value": b"GET /up/x HTTP/1.1\r\nHost: h\r\nX-Foo: a\rb\r\n\r\n",
    "bare-cr-ends-value": b"GET /up/x HTTP/1.1\r\nHost: h\r\nX-Foo: a\r\r\n\r\n",
    "bare-cr-injects-header":
        b"GET /up/x HTTP/1.1\r\nHost: h\r\nX-Foo: a\rX-Injected: 1\r\n\r\n",
}


@pytest.mark.parametrize("raw", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_request_head_is_400_and_closes(upstream, sluice, raw):
    sl = sluice(config(upstream))
    reply = exchange(sl.port, raw + SMUGGLED)
    assert_refused_and_closed(reply, 400)
    settle_and_assert_nothing_forwarded(upstream)
    assert_still_serving(sl, upstream)


FRAGMENTS = {
    "fragment": b"/up/x#frag",
    "fragment-after-query": b"/up/x?a=1#frag",
    "bare-hash": b"/up/#",
    "fragment-with-dots": b"/up/a#/../../other",
    "fragment-before-prefix-boundary": b"/up#x",
}


@pytest.mark.parametrize("target", list(FRAGMENTS.values()), ids=list(FRAGMENTS))
def test_fragment_in_target_is_400(upstream, sluice, target):
    """A client never sends a fragment; libcurl would drop it before the
    upstream, so what sluice matched and what the upstream got differ."""
    sl = sluice(config(upstream))
    reply = exchange(sl.port, b"GET " + target + b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert reply.status == 400, reply
    assert reply.json()["error"] == "bad_request"
    settle_and_assert_nothing_forwarded(upstream)
    assert_still_serving(sl, upstream)


# ---------------------------------------------------------------------------
# Slow clients.  libmicrohttpd's connection timeout is an idle timeout reset
# by every byte; sluice's header_timeout bounds the whole request head.

SLOW = {"header_timeout": "1s", "client_timeout": "3s"}

# header_timeout is 1 s: a trickler must be gone before 3 s.  The 2 s of
# slack cover sluice's deadline granularity (its loop wakes at least every
# 100 ms) and a loaded test machine; 3 s is also client_timeout, and the
# trickler resets libmicrohttpd's idle timer every 0.3 s, so only
# header_timeout can close it in time.
SLOW_CLOSE_BY = 3.0


def trickle(socks, starts, data, interval, until):
    """Send DATA one byte per INTERVAL on every socket in SOCKS; return, for
    each, the seconds from its start to sluice closing it (None: still open
    at UNTIL seconds)."""
    closed_at = [None] * len(socks)
    pos = [0] * len(socks)
    t0 = min(starts)
    next_send = time.monotonic()
    for s in socks:
        s.setblocking(False)
    while time.monotonic() - t0 < until and None in closed_at:
        now = time.monotonic()
        for i, s in enumerate(socks):
            if closed_at[i] is not None:
                continue
            try:
                piece = s.recv(4096)
                if not piece:
                    closed_at[i] = now - starts[i]
                    continue
                # A 408 before the close is fine; keep reading until EOF.
            except BlockingIOError:
                pass
            except OSError:
                closed_at[i] = now - starts[i]
                continue
            if now >= next_send:
                try:
                    s.send(data[pos[i] % len(data):pos[i] % len(data) + 1])
                    pos[i] += 1
                except BlockingIOError:
                    pass
                except OSError:
                    closed_at[i] = now - starts[i]
        if now >= next_send:
            next_send = now + interval
        time.sleep(0.02)
    for s in socks:
        s.close()
    return closed_at


@pytest.mark.parametrize("first", [b"GET /up/slow HTTP/1.1\r\n", b"GET /up/slow HTTP/1.1\r\nHost: h\r\n", b""],
                         ids=["after-request-line", "after-a-header", "from-the-first-byte"])
def test_trickled_headers_are_cut_off_by_header_timeout(upstream, sluice, first):
    sl = sluice(config(upstream, **SLOW))
    s = socket.create_connection(("127.0.0.1", sl.port))
    start = time.monotonic()
    s.sendall(first)
    data = b"X-Slow: " + b"a" * 200 if first else b"GET /up/slow HTTP/1.1\r\nX-Slow: " + b"a" * 200
    closed = trickle([s], [start], data, 0.3, SLOW_CLOSE_BY + 2.0)[0]
    assert closed is not None and closed < SLOW_CLOSE_BY, closed
    settle_and_assert_nothing_forwarded(upstream)
    assert_still_serving(sl, upstream)


def test_silent_connection_is_closed_by_header_timeout(upstream, sluice):
    """A connection that never sends a byte holds its slot no longer than
    header_timeout either (as NGINX's client_header_timeout)."""
    sl = sluice(config(upstream, **SLOW))
    reply = exchange(sl.port, b"", deadline=SLOW_CLOSE_BY + 2.0)
    assert reply.closed and reply.elapsed < SLOW_CLOSE_BY, reply
    assert_still_serving(sl, upstream)


def test_fifty_trickling_connections_are_all_closed(upstream, sluice):
    sl = sluice(config(upstream, **SLOW))
    socks, starts = [], []
    for _ in range(50):
        s = socket.create_connection(("127.0.0.1", sl.port))
        s.sendall(b"GET /up/slow HTTP/1.1\r\n")
        socks.append(s)
        starts.append(time.monotonic())
    closed = trickle(socks, starts, b"X-Slow: " + b"a" * 200, 0.3, SLOW_CLOSE_BY + 3.0)
    # Each one within the same bound as a single trickler, plus 1 s for 50
    # of them being served by one loop on a loaded machine.
    late = [(i, c) for i, c in enumerate(closed) if c is None or c >= SLOW_CLOSE_BY + 1.0]
    assert late == [], late
    settle_and_assert_nothing_forwarded(upstream)
    assert_still_serving(sl, upstream)


def test_idle_keepalive_connection_outlives_header_timeout(upstream, sluice):
    """header_timeout is for a request head in progress; an idle keep-alive
    connection between requests has client_timeout (3 s here)."""
    sl = sluice(config(upstream, **SLOW))
    s = socket.create_connection(("127.0.0.1", sl.port))
    s.settimeout(5)
    req = b"GET /up/ka HTTP/1.1\r\nHost: h\r\n\r\n"
    f = s.makefile("rb")
    try:
        for n in range(2):
            if n:
                # 1.5 s idle: past header_timeout (1 s), well inside
                # client_timeout (3 s) even with 1 s of scheduling slack.
                time.sleep(1.5)
            s.sendall(req)
            status = f.readline()
            assert status.startswith(b"HTTP/1.1 200"), (n, status)
            length = None
            while True:
                line = f.readline()
                if line in (b"\r\n", b""):
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            assert length is not None
            f.read(length)
    finally:
        f.close()
        s.close()
    assert upstream.count(lambda r: r.target == "/ka") == 2
    assert_still_serving(sl, upstream)


# ---------------------------------------------------------------------------
# Upstream responses sluice must not relay as if they were fine.

class RawUpstream:
    """A TCP server that reads each request head and answers a canned byte
    string, then closes the connection."""

    def __init__(self, answer):
        self.answer = answer
        self.requests = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def _serve(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(c,), daemon=True).start()

    def _answer(self, c):
        try:
            c.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head:
                piece = c.recv(65536)
                if not piece:
                    return
                head += piece
            with self.lock:
                self.requests += 1
            c.sendall(self.answer)
            c.shutdown(socket.SHUT_WR)
            # Let the peer read everything before the socket goes away.
            c.settimeout(5)
            while c.recv(65536):
                pass
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.stopped = True
        self.sock.close()


def raw_config(up, raw):
    return {"upstreams": [
        {"name": "up", "prefix": "/up", "url": up.url},
        {"name": "raw", "prefix": "/raw", "url": raw.url},
    ]}


def big_headers(n, size):
    return b"".join(b"X-Big-%d: %s\r\n" % (i, b"v" * size) for i in range(n))


UPSTREAM_BAD = {
    "cl-and-te": (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"5\r\nhello\r\n0\r\n\r\n", ("content-length", "transfer-encoding")),
    "te-and-cl": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 50\r\n\r\n"
                  b"5\r\nhello\r\n0\r\n\r\n", ("content-length", "transfer-encoding")),
    "two-content-lengths": (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
                            b"hello!", ("content-length",)),
    "content-length-list": (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!",
                            ("content-length",)),
}


@pytest.mark.parametrize("answer,words", list(UPSTREAM_BAD.values()), ids=list(UPSTREAM_BAD))
def test_ambiguous_upstream_framing_is_502(upstream, sluice, answer, words):
    raw = RawUpstream(answer)
    try:
        sl = sluice(raw_config(upstream, raw))
        reply = exchange(sl.port, b"GET /raw/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                         deadline=10)
        assert reply.status == 502, reply
        e = reply.json()
        assert e["error"] == "upstream_error", e
        assert e["upstream"] == "raw", e
        # The message names the reason, not just "failed".
        msg = e["message"].lower()
        for w in words:
            assert w in msg, e
        assert raw.requests == 1
        assert_still_serving(sl, upstream)
    finally:
        raw.close()


UPSTREAM_BIG = {
    "forty-2KiB-headers": big_headers(40, 2048),
    "one-1MB-header": big_headers(1, 1024 * 1024),
    "hundred-1KiB-headers": big_headers(100, 1024),
    "past-libcurls-own-300KiB-cap": big_headers(400, 1024),
}


@pytest.mark.parametrize("headers", list(UPSTREAM_BIG.values()), ids=list(UPSTREAM_BIG))
def test_oversized_upstream_headers_are_502_saying_so(upstream, sluice, headers):
    """Over 64 KiB of response headers: a clean 502 telling the client the
    headers were too large, not "out of memory" and not a cut connection."""
    assert len(headers) > 64 * 1024
    raw = RawUpstream(b"HTTP/1.1 200 OK\r\n" + headers + b"Content-Length: 2\r\n\r\nok")
    try:
        sl = sluice(raw_config(upstream, raw))
        reply = exchange(sl.port, b"GET /raw/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                         deadline=10)
        assert reply.status == 502, reply
        e = reply.json()
        assert e["error"] == "upstream_error", e
        msg = e["message"].lower()
        assert "header" in msg, e
        assert any(w in msg for w in ("too large", "too big", "too long", "exceed")), e
        assert "out of memory" not in msg, e
        assert_still_serving(sl, upstream)
    finally:
        raw.close()


# ---------------------------------------------------------------------------
# Request heads and the response head beside them.  A client connection's
# memory holds the request head and then the response head; sluice accepts
# only request heads that leave room for the largest response head it
# relays (16 KiB of upstream headers), and refuses larger ones with a JSON
# 431 before forwarding anything.  Each spelling of "a large head" (one
# long header, many short ones, cookies split into many, query arguments)
# is tried just under and just over the limit: every call gets a whole
# answer, never a connection closed without one.

REQ_HEAD_MAX = 48 * 1024 - 16 * 1024 - 2 * 1024   # SL_REQ_HEAD_MAX
LINE_COST = 64                                    # SL_HEAD_LINE_COST


def head_one_header(budget):
    return b"/raw/x", b"X-Token: " + b"t" * max(budget - 11, 1) + b"\r\n"


def head_many_headers(budget):
    # 40-byte lines, each also costing a 64-byte record.
    n = max(budget // (40 + LINE_COST), 1)
    return b"/raw/x", b"".join(b"X-H%05d: %s\r\n" % (i, b"h" * 29) for i in range(n))


def head_cookies(budget):
    # The Cookie header counts twice (libmicrohttpd copies it to split it),
    # plus a record per cookie.
    n = max(budget // (2 * 12 + LINE_COST), 1)
    return b"/raw/x", b"Cookie: " + b"; ".join(b"c%05d=abc" % i for i in range(n)) + b"\r\n"


def head_query_args(budget):
    n = max(budget // (10 + LINE_COST), 1)
    return b"/raw/x?" + b"&".join(b"a%05d=1" % i for i in range(n)), b""


HEAD_SPELLINGS = {
    "one-long-header": head_one_header,
    "many-short-headers": head_many_headers,
    "many-cookies": head_cookies,
    "many-query-arguments": head_query_args,
}

# The largest upstream response head sluice relays, less a margin for the
# status line: 15 lines of 1063 bytes.
BIG_RESPONSE = (b"HTTP/1.1 200 OK\r\n" +
                b"".join(b"X-Resp-%02d: %s\r\n" % (i, b"r" * 1050) for i in range(15)) +
                b"Content-Length: 2\r\n\r\nok")


# Budgets around the limit.  "just-under" leaves 1,500 bytes for what the
# spelling does not count (request line, Host and Connection lines with
# their records: under 300 bytes) and its rounding: it must be forwarded.
# "at-the-limit" is within 200 bytes of it, where either answer is right
# as long as it is whole: forwarded with the big response head, or 431.
BUDGETS = {"half": REQ_HEAD_MAX // 2, "just-under": REQ_HEAD_MAX - 1500,
           "at-the-limit": REQ_HEAD_MAX - 200, "just-over": REQ_HEAD_MAX + 1500,
           "well-over": REQ_HEAD_MAX + 8000}


@pytest.mark.parametrize("spelling", list(HEAD_SPELLINGS.values()), ids=list(HEAD_SPELLINGS))
@pytest.mark.parametrize("budget", list(BUDGETS.values()), ids=list(BUDGETS))
def test_large_request_heads_always_get_a_whole_answer(upstream, sluice, spelling, budget):
    assert len(BIG_RESPONSE) > 15.5 * 1024
    raw = RawUpstream(BIG_RESPONSE)
    try:
        sl = sluice(raw_config(upstream, raw))
        target, lines = spelling(budget)
        reply = exchange(sl.port, b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n" + lines +
                         b"Connection: close\r\n\r\n", deadline=10)
        assert reply.status in (200, 431), reply
        if budget <= BUDGETS["just-under"]:
            assert reply.status == 200, reply
        elif budget > REQ_HEAD_MAX:
            assert reply.status == 431, reply
        if reply.status == 200:
            # Forwarded, and the big response head relayed whole.
            assert reply.body == b"ok", reply
            assert reply.headers.get("x-resp-14") == "r" * 1050, reply
            assert raw.requests == 1
        else:
            e = reply.json()
            assert e["error"] == "request_header_too_large", e
            assert str(REQ_HEAD_MAX) in e["message"], e
            assert reply.closed, reply
            time.sleep(0.2)
            assert raw.requests == 0
        assert_still_serving(sl, upstream)
    finally:
        raw.close()


def test_a_head_past_the_connection_memory_is_431_and_closes(upstream, sluice):
    """Too large even to be read: libmicrohttpd's own 431 page, then close."""
    sl = sluice(config(upstream))
    reply = exchange(sl.port, b"GET /up/x HTTP/1.1\r\nHost: h\r\n" +
                     big_headers(60, 1024) + b"\r\n", deadline=10)
    assert_refused_and_closed(reply, 431)
    settle_and_assert_nothing_forwarded(upstream)
    assert_still_serving(sl, upstream)
