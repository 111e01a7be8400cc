"""The operator view: app identity, the admin listener (/status, /readyz,
tokens), alerts and the access log, against the real binary, a recording
upstream, a webhook receiver that counts what it gets, and a real
redis-server."""
import base64
import http.client
import json
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

from harness import SLUICE_BIN, RedisServer, Sluice, _Server, free_port, upstream_config

TOKEN = "s3cret-admin-token-0123"


class Receiver:
    """A webhook receiver: records every POSTed JSON body."""

    def __init__(self, status=200):
        self.bodies = []
        self.lock = threading.Lock()
        self.status = status
        owner = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(n))
                with owner.lock:
                    owner.bodies.append((self.path, dict(self.headers), body))
                self.send_response(owner.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = _Server(("127.0.0.1", 0), H)  # port 0: ours from the start
        self.port = self.server.server_address[1]
        self.server.owner = self
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self):
        return "http://127.0.0.1:%d/hook" % self.port

    def events(self, kind=None):
        with self.lock:
            return [b for _, _, b in self.bodies if kind is None or b["event"] == kind]

    def wait(self, n, kind=None, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if len(self.events(kind)) >= n:
                return self.events(kind)
            time.sleep(0.05)
        return self.events(kind)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def admin_get(sl, path, headers=None):
    return sl.admin("GET", path, headers=headers)


def status(sl, headers=None):
    code, _, body = admin_get(sl, "/status", headers)
    assert code == 200, body
    return json.loads(body)


def rule(st, name, upstream=0):
    return next(r for r in st["upstreams"][upstream]["rules"] if r["name"] == name)


def start(sluice, up, rules, admin=None, upstream_extra=None, **top):
    """sluice with an admin listener on a free port (sl.admin_port)."""
    return sluice(upstream_config(up, rules, name="crm", prefix="/crm", admin=admin or True,
                                  top=dict({"app": "header:X-Sluice-App"}, **top),
                                  **(upstream_extra or {})))


def call(sl, path, app=None, headers=None):
    h = dict(headers or {})
    if app is not None:
        h["X-Sluice-App"] = app
    return sl.request("GET", path, headers=h)


# ---- status ----

def test_status_figures_equal_upstream_counts_and_per_app_adds_up(upstream, sluice):
    sl = start(sluice, upstream, [
        {"name": "daily", "limit": 20, "window": "1h"},
        {"name": "per-pub", "path": "/pub/{p}/*", "per": "{p}", "limit": 3,
         "window": "1m"},
        {"name": "conc", "concurrency": 5}])
    # billing: 5 calls outside per-pub; sync and crm-export: 2 in p0, 2 in
    # p1 and one more in p0 (over its limit of 3: a 429, counted nowhere).
    codes = [call(sl, "/crm/x", "billing")[0] for _ in range(5)]
    for app in ("sync", "crm-export"):
        for p in ("p0", "p1"):
            codes.append(call(sl, "/crm/pub/%s/x" % p, app)[0])
    codes.append(call(sl, "/crm/pub/p0/x", "sync")[0])
    codes.append(call(sl, "/crm/pub/p0/x", "sync")[0])
    assert call(sl, "/crm/other")[0] == 200  # no app header: "-"
    assert codes.count(429) == 1
    st = status(sl)
    daily = rule(st, "daily")
    assert daily["used"] == upstream.count() == 11
    assert daily["remaining"] == 9
    assert daily["utilization"] == pytest.approx(11 / 20)
    assert daily["band"] == "ok"
    assert daily["per_app"] == {"billing": 5, "sync": 3, "crm-export": 2, "-": 1}
    assert sum(daily["per_app"].values()) + daily["reserved"] == daily["used"]
    assert daily["window"] == "1h" and daily["window_s"] == 3600
    # resets_in: the oldest call leaves the window in just under an hour.
    # (plus the default margin of 100 ms: the call counts that much longer)
    assert 3590 < daily["resets_in"] <= 3600.1
    # per rule: the busiest bucket is the rule's bar; every bucket is listed.
    pub = rule(st, "per-pub")
    keys = {b["key"]: b for b in pub["buckets"]}
    assert pub["buckets_total"] == 2
    at_upstream = {k: upstream.count(lambda r, k=k: r.target.startswith("/pub/%s/" % k))
                   for k in ("p0", "p1")}
    assert {k: b["used"] for k, b in keys.items()} == {"p0": 3, "p1": 2}
    for k, b in keys.items():
        assert b["used"] == at_upstream[k]
        assert sum(b["per_app"].values()) == b["used"]
    assert pub["used"] == max(b["used"] for b in pub["buckets"])
    assert pub["band"] == "critical" and pub["remaining"] == 0
    conc = rule(st, "conc")
    assert conc["kind"] == "concurrency" and conc["in_flight"] == 0
    assert conc["window"] is None


def test_reading_status_never_consumes_quota(upstream, sluice):
    sl = start(sluice, upstream, [{"name": "tiny", "limit": 2, "window": "1h"}])
    assert call(sl, "/crm/a", "x")[0] == 200
    for _ in range(30):
        status(sl)
        assert admin_get(sl, "/metrics")[0] == 200
    assert rule(status(sl), "tiny")["used"] == 1
    assert call(sl, "/crm/a", "x")[0] == 200
    assert call(sl, "/crm/a", "x")[0] == 429
    assert upstream.count() == 2


def test_bands_change_at_the_thresholds(upstream, sluice):
    sl = start(sluice, upstream, [{"name": "r", "limit": 8, "window": "1h"}],
               admin={"warn": 0.5, "critical": 0.75})
    seen = []
    for i in range(8):
        r = rule(status(sl), "r")
        seen.append((r["used"], r["band"]))
        assert call(sl, "/crm/x", "a")[0] == 200
    seen.append((rule(status(sl), "r")["used"], rule(status(sl), "r")["band"]))
    assert seen == [(0, "ok"), (1, "ok"), (2, "ok"), (3, "ok"), (4, "warn"),
                    (5, "warn"), (6, "critical"), (7, "critical"), (8, "critical")]
    assert status(sl)["bands"] == {"warn": 0.5, "critical": 0.75}


def test_concurrency_in_flight_and_queue_in_status(upstream, sluice):
    sl = start(sluice, upstream, [{"name": "conc", "concurrency": 2}],
               upstream_extra={"on_limit": "queue", "max_wait": "20s"})
    threads = [threading.Thread(target=call, args=(sl, "/crm/slow", "a",
                                                   {"X-Test-Delay": "1.5"}))
               for _ in range(4)]
    for t in threads:
        t.start()
    # Two are in flight, two held; poll until the figures settle (bounded).
    deadline = time.time() + 5
    while time.time() < deadline:
        st = status(sl)
        if rule(st, "conc")["in_flight"] == 2 and st["upstreams"][0]["queue"]["depth"] == 2:
            break
        time.sleep(0.05)
    assert rule(st, "conc")["in_flight"] == 2
    assert rule(st, "conc")["band"] == "critical"
    q = st["upstreams"][0]["queue"]
    assert q["depth"] == 2 and q["oldest_wait"] is not None and q["oldest_wait"] >= 0
    for t in threads:
        t.join()
    st = status(sl)
    assert rule(st, "conc")["in_flight"] == 0
    assert st["upstreams"][0]["queue"] == {"depth": 0, "oldest_wait": None,
                                           "max_queue": 10000}


def test_pause_shows_reason_and_resumes_at(upstream, sluice):
    rx = Receiver()
    try:
        sl = start(sluice, upstream, [{"name": "r", "limit": 100, "window": "1h"}],
                   alerts=[{"url": rx.url}])
        t0 = time.time()
        code, _, _ = call(sl, "/crm/x", "a", {"X-Test-Status": "429",
                                             "X-Test-Resp-Header": "Retry-After: 30"})
        assert code == 429
        st = status(sl)
        p = st["upstreams"][0]["paused"]
        assert p is not None and "Retry-After" in p["reason"]
        # 30 s from the 429's arrival: resumes_at within a second or two of
        # that (the call and the status request each take milliseconds;
        # resumes_at is rounded up to the whole second).
        assert t0 + 28 <= p["resumes_at_unix"] <= time.time() + 31
        assert 28 <= p["resumes_in"] <= 30
        # One alert for the pause, however many checks see it.
        ev = rx.wait(1, "pause")
        time.sleep(2.5)
        ev = rx.events("pause")
        assert len(ev) == 1
        assert ev[0]["upstream"] == "crm" and "Retry-After" in ev[0]["reason"]
        assert "paused crm until" in ev[0]["text"]
        # Another 429 while it runs extends the same pause: no new alert.
        assert call(sl, "/crm/y", "a")[0] == 429  # sluice's own, paused
        assert rx.events("pause") == ev
    finally:
        rx.close()


# ---- app identity ----

def test_app_header_removed_unless_forwarded(upstream, sluice):
    sl = start(sluice, upstream, [{"name": "r", "limit": 100, "window": "1h"}])
    assert call(sl, "/crm/x", "billing")[0] == 200
    names = [k.lower() for k, _ in upstream.records[-1].headers]
    assert "x-sluice-app" not in names
    sl2 = start(sluice, upstream, [{"name": "r", "limit": 100, "window": "1h"}],
                forward_app_header=True)
    assert call(sl2, "/crm/x", "billing")[0] == 200
    assert ("X-Sluice-App", "billing") in upstream.records[-1].headers


def test_app_by_client_ip_per_upstream(upstream, sluice):
    port = free_port()
    sl = sluice({"app": "header:X-App",
                 "admin": {"listen": "127.0.0.1:%d" % port},
                 "upstreams": [{"name": "crm", "prefix": "/crm", "url": upstream.url,
                                "app": "client_ip",
                                "rules": [{"name": "r", "limit": 9, "window": "1h"}]}]})
    sl.admin_port = port
    call(sl, "/crm/x", headers={"X-App": "ignored"})
    assert rule(status(sl), "r")["per_app"] == {"127.0.0.1": 1}
    # The header of the top level is not this upstream's: it is forwarded.
    assert ("X-App", "ignored") in upstream.records[-1].headers


def test_app_names_are_bounded(upstream, sluice):
    sl = start(sluice, upstream, [{"name": "r", "limit": 100, "window": "1h"}],
               max_apps=3)
    for app in ["a", "b", "c", "d", "e"]:
        assert call(sl, "/crm/x", app)[0] == 200
    # Too long, or bytes outside the allowed set: "other" too.
    call(sl, "/crm/x", "x" * 65)
    call(sl, "/crm/x", "has space")
    call(sl, "/crm/x", "<script>")
    call(sl, "/crm/x", "")
    per_app = rule(status(sl), "r")["per_app"]
    assert per_app == {"a": 1, "b": 1, "c": 1, "other": 5, "-": 1}
    log = sl.read_log()
    assert log.count("more than 3 distinct apps") == 1


# ---- the admin listener ----

def test_admin_token_required_off_loopback():
    import os
    import tempfile
    d = tempfile.mkdtemp()
    path = os.path.join(d, "c.json")
    cfg = {"admin": {"listen": "0.0.0.0:9901"},
           "upstreams": [{"name": "a", "prefix": "/a", "url": "http://127.0.0.1:1"}]}
    with open(path, "w") as f:
        json.dump(cfg, f)
    for argv in ([SLUICE_BIN, "--check", "-c", path], [SLUICE_BIN, "-c", path]):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        assert r.returncode == 1
        assert "admin.token: required because admin.listen" in r.stderr
        assert "not a loopback address" in r.stderr
    cfg["admin"] = {"listen": ":9901"}
    with open(path, "w") as f:
        json.dump(cfg, f)
    r = subprocess.run([SLUICE_BIN, "--check", "-c", path], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 1 and "admin.token: required" in r.stderr
    cfg["admin"] = {"listen": "0.0.0.0:9901", "token": "short"}
    with open(path, "w") as f:
        json.dump(cfg, f)
    r = subprocess.run([SLUICE_BIN, "--check", "-c", path], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 1 and "admin.token: must be 16 to 256" in r.stderr


def test_admin_token_bearer_and_basic(upstream, sluice):
    port = free_port()
    sl = sluice({"admin": {"listen": "0.0.0.0:%d" % port, "token": TOKEN},
                 "upstreams": [{"name": "crm", "prefix": "/crm", "url": upstream.url,
                                "rules": [{"name": "r", "limit": 5, "window": "1m"}]}]})
    sl.admin_port = port
    for path in ["/status", "/metrics", "/", "/index.html", "/nope"]:
        code, h, body = admin_get(sl, path)
        assert code == 401, path
        assert "Basic realm" in h["www-authenticate"]
        assert b"limit" not in body and b"crm" not in body
    # The probes say only ok/ready, and a kubelet cannot send a secret.
    assert admin_get(sl, "/healthz")[:1] == (200,)
    assert admin_get(sl, "/readyz")[2] == b"ready\n"
    assert admin_get(sl, "/status", {"Authorization": "Bearer wrong-token-xxxxxxxx"})[0] == 401
    assert admin_get(sl, "/status", {"Authorization": "Bearer " + TOKEN[:-1]})[0] == 401
    assert admin_get(sl, "/status", {"Authorization": "Bearer " + TOKEN})[0] == 200
    basic = base64.b64encode(("admin:" + TOKEN).encode()).decode()
    assert admin_get(sl, "/status", {"Authorization": "Basic " + basic})[0] == 200
    bad = base64.b64encode(b"admin:nope").decode()
    assert admin_get(sl, "/status", {"Authorization": "Basic " + bad})[0] == 401


def test_admin_token_from_the_environment(upstream):
    port = free_port()
    sl = Sluice({"admin": {"listen": "0.0.0.0:%d" % port},
                 "upstreams": [{"name": "crm", "prefix": "/crm", "url": upstream.url}]},
                env={"SLUICE_ADMIN_TOKEN": TOKEN})
    try:
        sl.admin_port = port
        assert admin_get(sl, "/status")[0] == 401
        assert admin_get(sl, "/status", {"Authorization": "Bearer " + TOKEN})[0] == 200
    finally:
        sl.stop()


def test_admin_listener_reaches_no_upstream(upstream, sluice):
    sl = start(sluice, upstream, [{"name": "r", "limit": 5, "window": "1m"}])
    for path in ["/crm/x", "/crm", "/status/../crm/x", "//crm/x"]:
        code, _, _ = admin_get(sl, path)
        assert code == 404, path
    c = http.client.HTTPConnection("127.0.0.1", sl.admin_port, timeout=5)
    c.request("POST", "/status", body=b"x" * 10)
    assert c.getresponse().status == 405
    c.close()
    assert upstream.count() == 0
    assert admin_get(sl, "/healthz")[:1] == (200,)
    assert admin_get(sl, "/readyz")[0] == 200


def test_readyz_flips_while_redis_is_down_with_deny(upstream, sluice):
    redis = RedisServer()
    rx = Receiver()
    try:
        port = free_port()
        sl = sluice({"store": redis.url, "on_store_error": "deny",
                     "store_timeout": "100ms",
                     "admin": {"listen": "127.0.0.1:%d" % port},
                     "alerts": [{"url": rx.url, "events": ["store"]}],
                     "upstreams": [{"name": "crm", "prefix": "/crm", "url": upstream.url,
                                    "rules": [{"name": "r", "limit": 50, "window": "1m"}]}]})
        sl.admin_port = port

        def wait_ready(code, timeout=10):
            deadline = time.time() + timeout
            while time.time() < deadline:
                got = admin_get(sl, "/readyz")
                if got[0] == code:
                    return got
                time.sleep(0.05)
            return got

        assert wait_ready(200)[0] == 200
        redis.kill()
        # A call notices at once; the reconnection backoff caps at 1 s.
        sl.request("GET", "/crm/x")
        got = wait_ready(503)
        assert got[0] == 503 and b"deny" in got[2]
        assert status(sl)["store"]["state"] == "down"
        assert status(sl)["store"]["figures"] == "local"
        assert admin_get(sl, "/healthz")[0] == 200  # the process still serves
        assert rx.wait(1, "store_down")[0]["event"] == "store_down"
        redis.start()
        assert wait_ready(200, 15)[0] == 200
        assert status(sl)["store"]["state"] == "up"
        assert rx.wait(1, "store_up")[0]["event"] == "store_up"
        assert len(rx.events("store_down")) == 1
    finally:
        rx.close()
        redis.stop()


# ---- Redis: one view for every instance ----

def test_three_redis_instances_show_the_same_shared_figures(upstream, sluice, redis):
    insts = []
    for i in range(3):
        port = free_port()
        sl = sluice({"store": redis.url, "app": "header:X-Sluice-App",
                     "admin": {"listen": "127.0.0.1:%d" % port},
                     "upstreams": [{"name": "crm", "prefix": "/crm", "url": upstream.url,
                                    "rules": [
                                        {"name": "daily", "limit": 30, "window": "1h"},
                                        {"name": "per-pub", "path": "/pub/{p}/*",
                                         "per": "{p}", "limit": 4, "window": "1h"}]}]})
        sl.admin_port = port
        insts.append(sl)
    for i, sl in enumerate(insts):
        for k in range(i + 2):
            assert call(sl, "/crm/pub/p%d/x" % k, "app%d" % i)[0] == 200
    views = [status(sl) for sl in insts]
    for v in views:
        assert v["store"] == views[0]["store"] | {}
        d = rule(v, "daily")
        assert d["used"] == upstream.count() == 9
        assert d["per_app"] == {"app0": 2, "app1": 3, "app2": 4}
        pub = rule(v, "per-pub")
        assert pub["buckets_total"] == 4
        assert {b["key"]: b["used"] for b in pub["buckets"]} == \
            {"p0": 3, "p1": 3, "p2": 2, "p3": 1}
        # The same buckets, apps and figures (resets_in moves with the clock
        # between the three requests).
        strip = [{k: x for k, x in b.items() if k != "resets_in"} for b in pub["buckets"]]
        assert strip == [{k: x for k, x in b.items() if k != "resets_in"}
                         for b in rule(views[0], "per-pub")["buckets"]]
        assert v["store"]["kind"] == "redis" and v["store"]["figures"] == "shared"


# ---- alerts ----

def test_alerts_fire_once_per_crossing_and_rearm(upstream, sluice):
    rx = Receiver()
    try:
        sl = start(sluice, upstream, [
            {"name": "short", "limit": 4, "window": "3s"},
            {"name": "quiet", "limit": 1000, "window": "1h"}],
            alerts=[{"url": rx.url, "at": [0.5, 1.0], "rules": ["short"],
                     "headers": {"X-Hook-Key": "k1"}}])
        call(sl, "/crm/x", "billing")
        call(sl, "/crm/x", "sync")
        got = rx.wait(1, "threshold")
        e = got[0]
        assert e["upstream"] == "crm" and e["rule"] == "short"
        assert e["threshold"] == 0.5 and e["used"] == 2 and e["limit"] == 4
        assert e["per_app"] == {"billing": 1, "sync": 1}
        assert "reached 50%" in e["text"] and e["time"].endswith("Z")
        assert rx.bodies[0][1].get("X-Hook-Key") == "k1"
        call(sl, "/crm/x", "billing")
        call(sl, "/crm/x", "billing")
        got = rx.wait(2, "threshold")
        assert [x["threshold"] for x in got] == [0.5, 1.0]
        # Checks run every second: two more seconds of checks add nothing.
        time.sleep(2)
        assert len(rx.events("threshold")) == 2
        # The window empties (3 s), the levels re-arm; crossing again alerts.
        time.sleep(2.5)
        call(sl, "/crm/x", "other-app")
        call(sl, "/crm/x", "other-app")
        got = rx.wait(3, "threshold")
        assert [x["threshold"] for x in got] == [0.5, 1.0, 0.5]
        assert got[2]["per_app"] == {"other-app": 2}
        assert "alert: sluice: crm rule \"short\" reached 50%" in sl.read_log()
    finally:
        rx.close()


def test_three_redis_instances_alert_once(upstream, sluice, redis):
    rx = Receiver()
    try:
        insts = []
        for i in range(3):
            insts.append(sluice({
                "store": redis.url,
                "alerts": [{"url": rx.url, "at": [0.5, 0.9]}],
                "upstreams": [{"name": "crm", "prefix": "/crm", "url": upstream.url,
                               "rules": [{"name": "daily", "limit": 10,
                                          "window": "1h"}]}]}))
        for i in range(9):
            assert insts[i % 3].request("GET", "/crm/x")[0] == 200
        got = rx.wait(2, "threshold")
        # Every instance checks every second: three more seconds would show
        # any duplicate.
        time.sleep(3)
        got = rx.events("threshold")
        assert sorted(x["threshold"] for x in got) == [0.5, 0.9]
    finally:
        rx.close()


def test_dead_alert_receiver_delays_no_call(upstream, sluice):
    # A receiver that accepts connections (the kernel's backlog) and never
    # answers: every POST waits for its 5 s timeout.
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead.listen(64)
    url = "http://127.0.0.1:%d/hook" % dead.getsockname()[1]
    try:
        sl = start(sluice, upstream, [{"name": "r", "limit": 100000, "window": "1h"}],
                   alerts=[{"url": url, "at": [0.00001, 0.00002, 0.00005, 0.0001]}],
                   workers=1)
        worst = 0.0
        t_end = time.time() + 3
        while time.time() < t_end:
            t0 = time.time()
            assert call(sl, "/crm/x", "a")[0] == 200
            worst = max(worst, time.time() - t0)
        # Calls to a local upstream take milliseconds; an alert sent on the
        # call path would stall one for the receiver's 2 s connect or 5 s
        # request timeout.  1.5 s is far above the one (a loaded machine's
        # stall included) and below the other.
        assert worst < 1.5, worst
        assert "alert: sluice: crm rule" in sl.read_log()
    finally:
        dead.close()


# ---- logs ----

def test_access_log_fields(upstream, sluice):
    sl = start(sluice, upstream, [
        {"name": "per-pub", "path": "/pub/{p}/*", "per": "{p}", "limit": 1,
         "window": "1h"}])
    call(sl, "/crm/pub/acme/x?api_key=SECRET1", "billing",
         {"Authorization": "Bearer SECRET2", "Cookie": "s=SECRET3"})
    call(sl, "/crm/pub/acme/y?api_key=SECRET1", "billing")
    log = sl.wait_log(" access ", count=2)
    lines = sorted((l for l in log.splitlines() if " access " in l),
                   key=lambda l: "status=429" in l)
    assert len(lines) == 2
    ok, limited = lines
    for f in ["client=127.0.0.1", "app=billing", "upstream=crm", "outcome=forwarded",
              "rule=per-pub", "per=acme", "remaining=0", "held_ms=0", "upstream_ms="]:
        assert f in ok, (f, ok)
    for f in ["status=429", "outcome=rejected", "per=acme", "upstream_ms=-"]:
        assert f in limited, (f, limited)
    assert "SECRET" not in log


def test_log_format_json(upstream, sluice):
    sl = start(sluice, upstream, [{"name": "r", "limit": 5, "window": "1h"}],
               log_format="json")
    call(sl, "/crm/a%22b?token=SECRET", "billing", {"Authorization": "Basic SECRET"})
    log = sl.wait_log('"msg":"access"')
    objs = [json.loads(l) for l in log.splitlines() if l.strip()]
    access = [o for o in objs if o.get("msg") == "access"]
    assert len(access) == 1
    a = access[0]
    assert a["app"] == "billing" and a["client"] == "127.0.0.1"
    assert a["path"] == "/crm/a%22b" and a["status"] == 200
    assert a["remaining"] == 4 and a["held_ms"] == 0 and a["upstream_ms"] >= 0
    assert a["level"] == "info" and a["time"].endswith("Z")
    # Every other line is JSON too.
    assert any("listening on" in o.get("msg", "") for o in objs)
    assert "SECRET" not in log


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_in_flight_calls_by_app(upstream, sluice, store):
    redis = RedisServer() if store == "redis" else None
    try:
        extra = {"store": redis.url} if redis else {}
        sl = start(sluice, upstream, [
            {"name": "conc", "concurrency": 4},
            {"name": "per-conc", "per": "header:X-Tenant", "concurrency": 2}], **extra)
        calls = [("billing", "t1"), ("billing", "t2"), ("sync", "t1")]
        threads = [threading.Thread(target=call, args=(sl, "/crm/slow", app,
                                                       {"X-Test-Delay": "1.5",
                                                        "X-Tenant": tenant}))
                   for app, tenant in calls]
        for t in threads:
            t.start()
        # Until all three are at the upstream (bounded: they take ms).
        deadline = time.time() + 5
        while upstream.count() < 3 and time.time() < deadline:
            time.sleep(0.02)
        st = status(sl)
        conc = rule(st, "conc")
        assert conc["in_flight"] == 3
        assert conc["per_app"] == {"billing": 2, "sync": 1}
        per = rule(st, "per-conc")
        assert per["buckets_total"] == 2
        assert {b["key"]: (b["in_flight"], b["per_app"]) for b in per["buckets"]} == \
            {"t1": (2, {"billing": 1, "sync": 1}), "t2": (1, {"billing": 1})}
        for t in threads:
            t.join()
        st = status(sl)
        assert rule(st, "conc")["in_flight"] == 0
        assert rule(st, "conc")["per_app"] == {}
    finally:
        if redis:
            redis.stop()
