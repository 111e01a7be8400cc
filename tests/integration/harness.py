"""Test harness: a scripted upstream and a real sluice process on free ports.

The upstream is a threaded HTTP/1.1 server that records every request it
receives (arrival time, method, raw target, headers, body length and hash)
and behaves as the request's X-Test-* headers ask:

  X-Test-Status: N          answer with status N
  X-Test-Delay: SECONDS     sleep before answering
  X-Test-Body-Size: N       answer with N bytes (a deterministic pattern)
  X-Test-Chunked: 1         answer with chunked transfer coding
  X-Test-Resp-Header: H: V  add a response header (repeatable)

Without X-Test-Body-Size the answer is a JSON echo of what arrived.
Upstream(tls=True) serves HTTPS with a throw-away certificate (its CA file
is up.ca_file); Upstream(close=True) closes every connection after one
answer, so each call needs a fresh connection (and TLS handshake).
DelayRelay sits between sluice and an upstream and delays every piece of
data towards the upstream by a random time, like a jittery network.

Shared by the test files: upstream_config() writes the common
configuration (one upstream, its rules, a store, an admin listener),
admin_request() makes one call to an admin listener, wait_for() polls a
condition instead of sleeping for it.
"""
import hashlib
import http.client
import io
import json
import os
import random
import re
import shutil
import signal
import ssl
import socket
import struct
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLUICE_BIN = os.environ.get("SLUICE_BIN", os.path.join(ROOT, "build", "sluice"))


# Ports handed out by free_port(), each held by a bound socket until
# release_ports() (conftest calls it after every test).
_reserved = []
_reserved_lock = threading.Lock()


def free_port():
    """A loopback port for a process that must be told its port beforehand
    (sluice, redis-server, prometheus), and that nobody else can be handed
    meanwhile: a socket bound to it with SO_REUSEADDR, never listening, is
    kept until release_ports().  The kernel gives no other port-0 bind (in
    this or a concurrent test process) a port in use, while the process
    started on it, which sets SO_REUSEADDR as servers do, can still bind
    and listen there.  Connecting to it before then is refused, as to a
    free port.  Python servers bind port 0 themselves instead."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    with _reserved_lock:
        _reserved.append(s)
    return s.getsockname()[1]


def release_ports():
    """Let go of every port free_port() has handed out."""
    with _reserved_lock:
        held = list(_reserved)
        del _reserved[:]
    for s in held:
        s.close()


def _address_in_use(log):
    return "address already in use" in log.lower()


def upstream_config(up, rules=None, store=None, name="leads", prefix="/leads",
                    admin=None, top=None, **options):
    """The configuration most tests start from: one upstream NAME at PREFIX
    forwarding to UP (an Upstream, or a URL), with RULES (None: no "rules" key) and
    the upstream OPTIONS given as keyword arguments (on_limit, max_wait,
    margin, limit_signals, ...).  STORE: None for the memory store, or a
    Redis URL.  ADMIN: None for no admin listener, True for one on a free
    port, or a dict of admin settings (its "listen" defaults to a free
    port); Sluice reads the port back into sl.admin_port.  TOP: more
    top-level keys."""
    u = {"name": name, "prefix": prefix, "url": up if isinstance(up, str) else up.url}
    if rules is not None:
        u["rules"] = list(rules)
    u.update(options)
    c = {"upstreams": [u]}
    if store:
        c["store"] = store
    if admin is not None:
        a = dict(admin) if isinstance(admin, dict) else {}
        a.setdefault("listen", "127.0.0.1:%d" % free_port())
        c["admin"] = a
    c.update(top or {})
    return c


def admin_request(port, method, path, body=None, headers=None, timeout=10):
    """One call to the admin listener on PORT: (status, headers with
    lower-case names, body bytes).  BODY: bytes, or an object sent as JSON.
    HEADERS are sent as given: a POST says it is no cross-site form
    (X-Sluice-Admin: 1 or a JSON Content-Type) only when the caller does."""
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def pattern_bytes(n):
    """N bytes of a fixed, non-repeating-at-64K pattern, generated in chunks."""
    block = bytes((i * 7 + 13) % 251 for i in range(65521))
    while n > 0:
        piece = block[: min(n, len(block))]
        n -= len(piece)
        yield piece


def pattern_sha256(n):
    h = hashlib.sha256()
    for piece in pattern_bytes(n):
        h.update(piece)
    return h.hexdigest()


class Record:
    def __init__(self, t, method, target, headers, body_len, body_sha, peer):
        self.status = None
        self.t = t
        self.peer = peer
        self.method = method
        self.target = target
        self.headers = headers
        self.body_len = body_len
        self.body_sha = body_sha


# The kernel's receive stamp of a segment (struct timespec, CLOCK_REALTIME),
# asked for with SO_TIMESTAMPNS; Linux numbers, as Python does not name them.
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_STAMP_SPACE = socket.CMSG_SPACE(16)


class _StampedRaw(io.RawIOBase):
    """A plain socket read through recvmsg, keeping the kernel's receive
    stamp of the first bytes read since the last take_stamp(): when a
    request reached the upstream's host, as a provider counts arrivals at
    its edge, not when a Python thread of this test server got to run
    (on a busy machine that lags by a hundred milliseconds and more, and
    unevenly, which made "at the upstream" assertions fail on the server's
    scheduling rather than on sluice's sends)."""

    def __init__(self, sock):
        super().__init__()
        self.sock = sock
        self.stamp = None

    def readable(self):
        return True

    def readinto(self, b):
        n, anc, _flags, _addr = self.sock.recvmsg_into([b], _STAMP_SPACE)
        if n > 0 and self.stamp is None:
            self.stamp = time.monotonic()
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= 16:
                    sec, nsec = struct.unpack("qq", data[:16])
                    # Onto the monotonic clock the tests use: the offset
                    # between the two clocks, read now (a step of the wall
                    # clock within a test would show; none is made).
                    self.stamp = sec + nsec / 1e9 - (time.time() - time.monotonic())
                    break
        return n

    def take_stamp(self):
        t, self.stamp = self.stamp, None
        return t


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes

    def setup(self):
        super().setup()
        self.stamped = None
        if type(self.connection) is socket.socket:
            # Plain TCP: read through recvmsg for the kernel's stamps (TLS
            # connections keep the thread's clock). One request at a time
            # per connection (no pipelining from a proxy), so the first
            # bytes read after a request was handled are the next one's.
            self.connection.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            self.stamped = _StampedRaw(self.connection)
            self.rfile = io.BufferedReader(self.stamped, self.rbufsize
                                           if self.rbufsize > 0 else io.DEFAULT_BUFFER_SIZE)

    def handle_one_request(self):
        if self.stamped is not None:
            self.stamped.take_stamp()  # the last request's body is not the next one
        super().handle_one_request()

    def log_message(self, fmt, *args):
        pass

    def _read_body(self):
        h = hashlib.sha256()
        n = 0
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                left = size
                while left:
                    piece = self.rfile.read(min(left, 65536))
                    if not piece:
                        raise ConnectionError("short chunk")
                    h.update(piece)
                    n += len(piece)
                    left -= len(piece)
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length", "0") or 0)
            while left:
                piece = self.rfile.read(min(left, 65536))
                if not piece:
                    raise ConnectionError("short body")
                h.update(piece)
                n += len(piece)
                left -= len(piece)
        return n, h.hexdigest()

    def _handle(self):
        up = self.server.owner
        arrived = self.stamped.take_stamp() if self.stamped is not None else None
        if arrived is None:
            arrived = time.monotonic()
        ended = []

        def end():
            # The call ends, for the provider's count of calls in flight,
            # just before its last bytes go: the proxy cannot see the answer
            # complete (and free its slot) any earlier.  Counting it down
            # after the write instead would count, on a loaded machine, the
            # time this thread waits to run again, and a next call that
            # arrived in that gap as overlapping.
            if not ended:
                ended.append(True)
                with up.lock:
                    up.active -= 1

        with up.lock:
            up.active += 1
            up.max_active = max(up.max_active, up.active)
        try:
            body_len, body_sha = self._read_body()
            rec = Record(arrived, self.command, self.path, list(self.headers.items()),
                         body_len, body_sha, self.client_address[1])
            with up.lock:
                up.records.append(rec)
                # A provider that counts the whole account (calls made
                # outside sluice included: account["used"] starts there) and
                # says so in every answer, refusing past its max.
                acct = up.account
                if acct is not None:
                    acct["used"] += 1
                    used, cap = acct["used"], acct["max"]
            if acct is not None:
                report = {
                    "sforce": "Sforce-Limit-Info: api-usage=%d/%d" % (min(used, cap), cap),
                    "x-ratelimit": "X-RateLimit-Remaining: %d" % max(cap - used, 0),
                    "ratelimit": 'RateLimit: "account";r=%d;t=60' % max(cap - used, 0),
                    "shopify": "X-Shopify-Shop-Api-Call-Limit: %d/%d" % (min(used, cap), cap),
                }[acct.get("format", "sforce")]
                if used > cap:
                    body = b'[{"errorCode":"REQUEST_LIMIT_EXCEEDED","message":"TotalRequests Limit exceeded."}]'
                    rec.status = 403
                    self.send_response(403)
                    self.send_header(*[x.strip() for x in report.split(":", 1)])
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    end()
                    self.wfile.write(body)
                    return
            delay = float(self.headers.get("X-Test-Delay", "0"))
            if delay:
                time.sleep(delay)
            status = int(self.headers.get("X-Test-Status", "200"))
            extra = self.headers.get_all("X-Test-Resp-Header") or []
            if acct is not None:
                extra = extra + [report]
            # A scripted answer (the test's up.script), consumed in order.
            with up.lock:
                step = up.script.pop(0) if up.script else None
                rec.status = status if step is None else step.get("status", 200)
            if step is not None:
                body = step.get("body", b"")
                self.send_response(step.get("status", 200))
                for hdr in step.get("headers", []):
                    name, _, value = hdr.partition(":")
                    self.send_header(name.strip(), value.strip())
                self.send_header("Content-Length", str(len(body)))
                if not body:
                    end()
                self.end_headers()
                end()
                self.wfile.write(body)
                return
            size = self.headers.get("X-Test-Body-Size")
            chunked = self.headers.get("X-Test-Chunked") == "1"
            if size is None:
                payload = json.dumps({
                    "method": self.command,
                    "target": self.path,
                    "headers": [[k, v] for k, v in self.headers.items()],
                    "body_len": body_len,
                    "body_sha256": body_sha,
                }).encode()
                chunks = [payload]
                total = len(payload)
                ctype = "application/json"
            else:
                total = int(size)
                chunks = pattern_bytes(total)
                ctype = "application/octet-stream"
            self.send_response(status)
            if up.close_each:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.send_header("Content-Type", ctype)
            for h in extra:
                name, _, value = h.partition(":")
                self.send_header(name.strip(), value.strip())
            if self.command == "HEAD" or status in (204, 304):
                self.send_header("Content-Length", str(total))
                end()
                self.end_headers()
                return
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for c in chunks:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(c), c))
                end()
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.send_header("Content-Length", str(total))
                if total == 0:
                    end()
                self.end_headers()
                sent = 0
                for c in chunks:
                    sent += len(c)
                    if sent >= total:
                        end()
                    self.wfile.write(c)
        finally:
            end()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def server_bind(self):
        # Receive stamps on from the start (inherited by accepted sockets),
        # so a request that arrives before its handler runs is stamped too.
        self.socket.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        super().server_bind()

    def handle_error(self, request, client_address):
        # Clients that hang up mid-exchange are part of the tests; count them.
        with self.owner.lock:
            self.owner.errors += 1


def make_cert(directory):
    """A self-signed certificate for 127.0.0.1: (cert path, key path)."""
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


class _TLSServer(_Server):
    """The handshake runs on the request's thread, not in accept()."""

    def __init__(self, addr, handler, context):
        self.context = context
        super().__init__(addr, handler)

    def finish_request(self, request, client_address):
        try:
            conn = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        super().finish_request(conn, client_address)


class Upstream:
    """A recording HTTP/1.1 upstream on a free loopback port."""

    def __init__(self, tls=False, close=False):
        self.lock = threading.Lock()
        self.records = []
        self.script = []  # list of {"status", "headers", "body"} answers
        # {"used": N, "max": M, "format": "sforce"|"x-ratelimit"|"ratelimit"|
        # "shopify"}: answer as a provider counting the whole account would.
        self.account = None
        self.active = 0
        self.max_active = 0
        self.errors = 0
        self.close_each = close
        self.tls = tls
        self.dir = None
        self.ca_file = None
        # Port 0: the listening socket is ours from the start, no race.
        if tls:
            self.dir = tempfile.mkdtemp(prefix="sluice-tls-")
            cert, key = make_cert(self.dir)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            self.ca_file = cert
            self.server = _TLSServer(("127.0.0.1", 0), _Handler, ctx)
        else:
            self.server = _Server(("127.0.0.1", 0), _Handler)
        self.port = self.server.server_address[1]
        self.server.owner = self
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return "%s://127.0.0.1:%d" % ("https" if self.tls else "http", self.port)

    def count(self, pred=lambda r: True):
        with self.lock:
            return sum(1 for r in self.records if pred(r))

    def times(self, pred=lambda r: True):
        with self.lock:
            return sorted(r.t for r in self.records if pred(r))

    def reset(self):
        with self.lock:
            self.records = []
            self.max_active = 0

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


class DelayRelay:
    """A TCP relay to 127.0.0.1:TARGET_PORT that holds every piece of data
    on its way to the target for a random time in [0, MAX_DELAY] seconds
    (in order within a connection), as a jittery network would."""

    def __init__(self, target_port, max_delay, seed=1):
        self.target_port = target_port
        self.max_delay = max_delay
        self.rng = random.Random(seed)
        self.rng_lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _delay(self):
        with self.rng_lock:
            return self.rng.uniform(0, self.max_delay)

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def forward(self, data, towards_target, first):
        """What to pass on of DATA (None: cut the connection).  FIRST: the
        first piece in this direction.  Subclasses script other networks."""
        if towards_target:
            time.sleep(self._delay())
        return data

    def _pipe(self, src, dst, towards_target):
        first = True
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                data = self.forward(data, towards_target, first)
                first = False
                if data is None:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _serve(self, client):
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            client.close()
            return
        threading.Thread(target=self._pipe, args=(upstream, client, False),
                         daemon=True).start()
        self._pipe(client, upstream, True)

    def close(self):
        self.closed = True
        self.sock.close()


class Sluice:
    """The real sluice binary, started on a config, stopped with SIGTERM."""

    START_ATTEMPTS = 3  # ports of its own tried when one turns out taken

    def __init__(self, config, env=None, workers=None, port=None, preexec_fn=None):
        config = dict(config)
        if workers is not None:
            config["workers"] = workers
        # The harness chooses the port unless the test did (config or PORT).
        chosen = port is None and "listen" not in config
        self.port = port or free_port()
        config.setdefault("listen", "127.0.0.1:%d" % self.port)
        self.dir = tempfile.mkdtemp(prefix="sluice-test-")
        self.config_path = os.path.join(self.dir, "sluice.json")
        self.log_path = os.path.join(self.dir, "sluice.log")
        self.log = None
        for attempt in range(self.START_ATTEMPTS):
            if self._start(config, env, preexec_fn):
                return
            # Its port was taken after all (free_port holds it against
            # port-0 binds, not against a bind to that very port): take
            # another one, if the harness chose it.
            if not (chosen and _address_in_use(self.read_log())):
                break
            self.port = free_port()
            config["listen"] = "127.0.0.1:%d" % self.port
        raise RuntimeError("sluice exited early:\n" + self.read_log())

    def _start(self, config, env, preexec_fn):
        """Start on CONFIG: True once it accepts connections, False if it
        exited first (its log says why); raises if it hangs."""
        # The admin listener's port, when the config has one on loopback.
        admin = config.get("admin")
        port_text = str(admin.get("listen", "")).rsplit(":", 1)[-1] if isinstance(admin, dict) else ""
        self.admin_port = int(port_text) if port_text.isdigit() else None
        with open(self.config_path, "w") as f:
            json.dump(config, f)
        if self.log is not None:
            self.log.close()
        self.log = open(self.log_path, "w")
        full_env = dict(os.environ)
        full_env.update(env or {})
        # Limits set by PREEXEC_FN (a file size limit) would bind the log
        # file too: the log then goes through a pipe, copied by a thread.
        self._copier = None
        self.proc = subprocess.Popen([SLUICE_BIN, "-c", self.config_path],
                                     stdout=subprocess.PIPE if preexec_fn else self.log,
                                     stderr=subprocess.STDOUT,
                                     env=full_env, preexec_fn=preexec_fn)
        if preexec_fn is not None:
            def copy(src=self.proc.stdout, dst=self.log):
                for line in iter(src.readline, b""):
                    dst.write(line.decode(errors="replace"))
                    dst.flush()
            self._copier = threading.Thread(target=copy, daemon=True)
            self._copier.start()
        deadline = time.time() + 15
        while time.time() < deadline:
            if self.proc.poll() is not None:
                if self._copier is not None:
                    self._copier.join(5)
                return False
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
            except OSError:
                time.sleep(0.05)
                continue
            self._wait_fleet(config)
            return True
        self.proc.kill()
        raise RuntimeError("sluice did not start:\n" + self.read_log())

    @staticmethod
    def _wait_fleet(config, timeout=8):
        """On a Redis that has not seen sluice (a new one, as every test's),
        the fleet's first repair phase holds decisions for about 1.3 s
        (limits/sl_redis_repair.c): wait until each upstream's marker says
        decisions run, so that a test's timing starts from a working
        store.  Plain redis:// URLs without credentials only; nothing when
        Redis is not there."""
        store = config.get("store") or ""
        m = re.match(r"redis://([0-9.]+|localhost):(\d+)/?(\d*)$", store)
        if not m or m.group(3) not in ("", "0"):
            return
        port = int(m.group(2))
        prefix = config.get("store_prefix", "sluice:")
        names = [u.get("name") for u in config.get("upstreams", [])]
        deadline = time.monotonic() + timeout

        def ask(*args):
            with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                c.sendall(resp_encode(*args))
                return resp_read(c.makefile("rb"))
        try:
            # A replica is refused by sluice: nothing to wait for.
            if b"role:master" not in ask("INFO", "replication"):
                return
        except (OSError, RedisError):
            return
        for name in names:
            key = "%s{%s}:m" % (prefix, name)
            while time.monotonic() < deadline:
                try:
                    v = ask("GET", key)
                except (OSError, RedisError):
                    return
                if v and v.startswith(b"o"):
                    break
                time.sleep(0.05)

    def read_log(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def wait_log(self, needle, timeout=5, count=1):
        """The log once it contains NEEDLE COUNT times.  A call's access
        line is written when the exchange completes, after its client has
        the answer, and calls on two workers complete in either order: a
        test that counts lines waits for as many as it counts
        (wait_log(" access ", count=N)), not for the first of them."""
        deadline = time.time() + timeout
        while True:
            log = self.read_log()
            if log.count(needle) >= count or time.time() > deadline:
                return log
            time.sleep(0.02)

    def admin(self, method, path, body=None, headers=None, timeout=10):
        """One call to this sluice's admin listener (see admin_request)."""
        return admin_request(self.admin_port, method, path, body, headers, timeout)

    def status(self):
        """/status of this sluice's admin listener, parsed."""
        code, _, body = self.admin("GET", "/status")
        assert code == 200, body
        return json.loads(body)

    def held(self, upstream=0):
        """Calls held in the queue of UPSTREAM (its index), as /status says."""
        return self.status()["upstreams"][upstream]["queue"]["depth"]

    def conn(self, timeout=30):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, timeout=30):
        """One call on a new connection: (status, headers dict, body bytes)."""
        c = self.conn(timeout)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def proc_status_kib(self, field):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise KeyError(field)

    def vm_hwm_kib(self):
        return self.proc_status_kib("VmHWM")

    def stop(self, expect_code=0):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("sluice did not stop on SIGTERM:\n" + self.read_log())
        if self._copier is not None:
            self._copier.join(5)
        self.log.close()
        code = self.proc.returncode
        if expect_code is not None and code != expect_code:
            raise AssertionError("sluice exited with %s:\n%s" % (code, self.read_log()))
        return code


def parallel(n, fn):
    """Run fn(0..n-1) on n threads at once; their results, in order."""
    out = [None] * n

    def run(i):
        out[i] = fn(i)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def hammer(instances, seconds, per_instance=3, path="/leads/x", headers=None,
           pause=0.005):
    """PER_INSTANCE clients on each of INSTANCES, each calling PATH over one
    keep-alive connection as fast as it can for SECONDS; after a non-200 a
    client waits PAUSE (a retry loop, not a sleep to Retry-After, so demand
    stays above any limit the whole time).  Returns (port, status) per
    call, in the order they were answered."""
    stop = time.monotonic() + seconds
    results = []
    lock = threading.Lock()

    def run(sl):
        c = sl.conn()
        while time.monotonic() < stop:
            c.request("GET", path, headers=headers or {})
            r = c.getresponse()
            r.read()
            with lock:
                results.append((sl.port, r.status))
            if r.status != 200:
                time.sleep(pause)
        c.close()

    ts = [threading.Thread(target=run, args=(sl,))
          for sl in instances for _ in range(per_instance)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return results


def hand_overs(insts, upstream, n=15, headers=None):
    """One client per instance (two), N calls each, one at a time with a
    10 ms pause, each call 20 ms at the upstream, on a rule of one
    concurrency slot in queue mode: every time one instance frees the slot,
    the other holds a call that only a notice from Redis can wake before
    the first client's next call takes the slot again (HEADERS: sent with
    every call besides).  Asserts every call
    was answered 200; returns the order of arrivals by instance ("abab..")
    and the sorted gaps between arrivals from different instances."""
    def client(i):
        time.sleep(0.005 * i)
        out = []
        for _ in range(n):
            out.append(insts[i].request("GET", "/leads/x", headers=dict(
                headers or {}, **{"X-Test-Delay": "0.02", "X-Via": "ab"[i]}))[0])
            time.sleep(0.01)
        return out

    assert parallel(2, client) == [[200] * n] * 2
    with upstream.lock:
        recs = sorted(upstream.records, key=lambda r: r.t)
    via = [dict(r.headers).get("X-Via") for r in recs]
    gaps = sorted(recs[i + 1].t - recs[i].t for i in range(len(recs) - 1)
                  if via[i] != via[i + 1])
    return "".join(via), gaps


def fill_until_evicted(redis, policy, room, done, writes=40000):
    """Make REDIS evict: maxmemory-policy POLICY, maxmemory ROOM bytes above
    what it uses, then junk keys until DONE() (asked every 50 writes), or
    until Redis refuses a write with OOM (memory no eviction frees, the
    script cache or buffers, can fill the room first: by then Redis has
    evicted all it could).  No memory limit afterwards."""
    used = int(redis.command("INFO", "memory").decode().split("used_memory:")[1].split()[0])
    redis.command("CONFIG", "SET", "maxmemory-policy", policy)
    redis.command("CONFIG", "SET", "maxmemory", str(used + room))
    try:
        for i in range(writes):
            try:
                redis.command("SET", "junk:%d" % i, "x" * 200)
            except RedisError as e:
                assert "OOM" in str(e), e
                break
            if i % 50 == 0 and done():
                break
    finally:
        redis.command("CONFIG", "SET", "maxmemory", "0")
        redis.command("CONFIG", "SET", "maxmemory-policy", "noeviction")


def wait_for(pred, timeout=10, step=0.05):
    """PRED's first true value within TIMEOUT seconds, else its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(step)


def max_in_window(times, window):
    """Largest number of times inside any half-open interval of length WINDOW."""
    best = 0
    j = 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


class _PortTaken(Exception):
    pass


class RedisError(Exception):
    pass


def resp_encode(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def resp_read(f):
    """One RESP2 reply from file F (a socket's makefile('rb'))."""
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise OSError("Redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RedisError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [resp_read(f) for _ in range(n)]
    raise OSError("not a RESP reply: %r" % line)


def resp_command(port, *args):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(resp_encode(*args))
        return resp_read(s.makefile("rb"))


class RedisServer:
    """A real redis-server on a free loopback port (no persistence)."""

    START_ATTEMPTS = 3

    def __init__(self, port=None):
        self.port = port or free_port()
        self.proc = None
        # Its own directory: a replica's full sync writes an RDB file even
        # without --save, and a later server on the same port must not load
        # it (a cluster node would refuse to join, a test would find keys).
        self.data_dir = tempfile.mkdtemp(prefix="sluice-redis-")
        for attempt in range(self.START_ATTEMPTS):
            try:
                self.start()
                return
            except _PortTaken:
                if port is not None or attempt == self.START_ATTEMPTS - 1:
                    raise RuntimeError("redis-server could not bind port %d" % self.port)
                self.port = free_port()

    @property
    def url(self):
        return "redis://127.0.0.1:%d" % self.port

    EXTRA_ARGS = ()  # more redis-server options, for subclasses

    def start(self):
        os.makedirs(self.data_dir, exist_ok=True)   # (a restart after stop())
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--loglevel", "warning",
             # (see __init__: never the checkout, never another's)
             "--dir", self.data_dir, "--dbfilename", "dump.rdb",
             *self.EXTRA_ARGS],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        # Its log (warnings only) is read if it exits; drained meanwhile.
        said = []
        drain = threading.Thread(target=lambda out=self.proc.stdout: said.extend(out),
                                 daemon=True)
        drain.start()
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                drain.join(5)
                log = b"".join(said).decode(errors="replace")
                if _address_in_use(log):
                    raise _PortTaken()
                raise RuntimeError("redis-server exited:\n" + log)
            try:
                # Answered by this process, not another one on the port.
                m = re.search(r"process_id:(\d+)", self.cli("INFO", "server"))
                if m and int(m.group(1)) == self.proc.pid:
                    return
            except (OSError, subprocess.CalledProcessError):
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("redis-server did not start")

    def command(self, *args):
        """One command on a fresh connection; the reply as Python values
        (bytes for strings, int, None, lists; an error raises RedisError)."""
        return resp_command(self.port, *args)

    def cli(self, *args):
        out = subprocess.run(["redis-cli", "-p", str(self.port)] + [str(a) for a in args],
                             capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        self.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)
