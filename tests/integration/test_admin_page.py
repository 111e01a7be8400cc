"""The usage page (GET / on the admin listener), as a person sees it.

The page is loaded in headless Chromium (chromium.py), which runs its
script, polls /status and renders; the assertions read the rendered DOM:
bar widths and colours, bands, figures, the per-app legends, the bucket
table of a `per` rule, the store line, the provider-pause banner, and what
happens with a token-protected listener, and the app shares of a rule
with "apps" (each app's calls against its max, its reserve).

Waiting: Chromium runs the page on a virtual clock that stands still while
a fetch is pending (see chromium.py), so "wait_ms=N" means "the first poll
plus N/1000 more", whatever the machine's speed; no test here depends on
real-time luck.  Where a test needs sluice to be in a state first (a call
in flight, calls held), it polls /status for it with a bounded timeout.

SLUICE_SCREENSHOT=1 also writes docs/usage-page.png (1280x900) from the
screenshot test; without it the screenshot goes to a temporary file only,
so CI runs leave the tree clean.
"""
import base64
import calendar
import http.client
import json
import os
import re
import shutil
import struct
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import chromium
from chromium import ChromiumError
from harness import ROOT, Sluice, Upstream, free_port

TOKEN = "page-token-0123456789abcdef"
BAND_COLOUR = {"ok": "#2e7d32", "warn": "#ef6c00", "critical": "#c62828"}

# Bounded waits for sluice to reach a state the test set up (a call in
# flight upstream, calls held in the queue): each takes a loop pass or two
# in sluice, milliseconds; 10 s covers a sanitizer build on a loaded machine.
STATE_WAIT = 10.0


# ---------------------------------------------------------------- helpers

def admin_get(port, path, auth=None, bearer=None, timeout=10):
    """(status, headers as an http.client.HTTPMessage, body)."""
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path))
    if auth is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(
            ("%s:%s" % auth).encode()).decode())
    if bearer is not None:
        req.add_header("Authorization", "Bearer " + bearer)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def status(port, bearer=None):
    code, _, body = admin_get(port, "/status", bearer=bearer)
    assert code == 200, body
    return json.loads(body)


def wait_status(port, pred, what, bearer=None, timeout=STATE_WAIT):
    deadline = time.monotonic() + timeout
    while True:
        st = status(port, bearer)
        if pred(st):
            return st
        if time.monotonic() > deadline:
            raise AssertionError("no %s after %.0f s: %s" % (what, timeout, json.dumps(st)))
        time.sleep(0.02)


def rules_of(st, upstream):
    up = next(u for u in st["upstreams"] if u["name"] == upstream)
    return {r["name"]: r for r in up["rules"]}


def send(sl, app, path, method="GET", headers=None, timeout=30):
    h = dict(headers or {})
    if app:
        h["X-Sluice-App"] = app
    return sl.request(method, path, headers=h, timeout=timeout)[0]


class Background:
    """Calls made on threads, answers collected (or the exception)."""

    def __init__(self):
        self.threads = []
        self.results = []
        self.lock = threading.Lock()

    def call(self, sl, app, path, headers=None, timeout=60):
        def run():
            try:
                r = send(sl, app, path, headers=headers, timeout=timeout)
            except Exception as e:  # cut by sluice's shutdown, for one
                r = e
            with self.lock:
                self.results.append(r)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)

    def join(self, timeout=30):
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "background calls still running"
        return self.results


def band(util, warn, critical):
    return "critical" if util >= critical else "warn" if util >= warn else "ok"


def check_bar(row, used, limit, warn, critical):
    """A rule row (or a bucket row, or an app's share row) shows USED of
    LIMIT the way a person reads it."""
    util = used / limit
    b = band(util, warn, critical)
    pct = "%.1f%%" % (min(util, 1) * 100)
    assert row["data-band"] == b, (row, used, limit)
    fill = row.find(cls="fill") or row.find(cls="bfill") or row.find(cls="sfill")
    assert fill.style == {"width": pct, "background": BAND_COLOUR[b]}, (fill.style, used, limit)
    return b


def legend(row):
    """[(app, calls)] of a rule row's legend, in the page's order."""
    out = []
    for li in row.find(cls="detail").find_all("li", cls="app"):
        name, _, n = li.text.rpartition(": ")
        assert name == li["data-app"], li.text
        out.append((name, int(n)))
    return out


def clock_seconds(hms):
    h, m, s = (int(x) for x in hms.split(":"))
    return h * 3600 + m * 60 + s


def seconds_apart(a, b):
    """a - b in seconds of day, wrapped to (-43200, 43200] (midnight-safe)."""
    d = (a - b) % 86400
    return d - 86400 if d > 43200 else d


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


class Sluices:
    """Factory like conftest's `sluice`, but with the admin port at hand
    and stop() usable inside the test (held calls answered before join)."""

    def __init__(self):
        self.started = []

    def start(self, config, admin=None, token=None):
        port = free_port()
        a = {"listen": "127.0.0.1:%d" % port}
        a.update(admin or {})
        if token:
            a["token"] = token
        config = dict(config, admin=a)
        config.setdefault("app", "header:X-Sluice-App")
        s = Sluice(config)
        s.admin = port
        s.page = "http://127.0.0.1:%d/" % port
        self.started.append(s)
        return s

    def stop_all(self):
        errors = []
        for s in self.started:
            try:
                s.stop()
            except AssertionError as e:
                errors.append(str(e))
        return errors


@pytest.fixture
def sluices():
    f = Sluices()
    yield f
    errors = f.stop_all()
    if errors:
        pytest.fail("\n".join(errors))


def crm_config(up, **extra):
    u = {"name": "crm", "prefix": "/crm", "url": up.url, "rules": [
        {"name": "daily", "limit": 25, "window": "1h"},
        {"name": "burst", "path": "/a/**", "limit": 5, "window": "1m"},
        {"name": "pub", "path": "/pub/{p}/*", "per": "{p}", "limit": 4, "window": "1h"},
        {"name": "inflight", "concurrency": 2},
    ]}
    u.update(extra)
    # A call kept in flight (X-Test-Delay) is cut 1 s into the shutdown.
    return {"shutdown_timeout": "1s", "upstreams": [u]}


# ---------------------------------------------------------------- the bars

def test_bars_figures_bands_and_apps(upstream, sluices):
    warn, critical = 0.5, 0.9
    sl = sluices.start(crm_config(upstream), admin={"warn": warn, "critical": critical})
    for app in ("billing", "billing", "billing", "reports", "crm-sync"):
        assert send(sl, app, "/crm/a/x") == 200
    assert send(sl, "reports", "/crm/a/x") == 429  # counts nowhere
    for app in ("crm-sync", "crm-sync", "billing"):
        assert send(sl, app, "/crm/pub/p1/x") == 200
    assert send(sl, "reports", "/crm/pub/p2/x") == 200
    slow = Background()
    slow.call(sl, "reports", "/crm/slow", headers={"X-Test-Delay": "30"})
    try:
        # In flight, and already at the upstream: sent, so in the daily
        # window (an admitted call is only a reservation until it is sent,
        # and reservations have no app in the legend).
        wait_status(sl.admin, lambda st: rules_of(st, "crm")["inflight"]["in_flight"] == 1
                    and upstream.count() == 10, "call in flight")
        root = chromium.parse(chromium.dump_dom(sl.page, wait_ms=1000))

        sec = root.find("section", cls="upstream", data_upstream="crm")
        assert sec.find("h2").text == "crm"
        assert sec.find(cls="prefix").text == "/crm"
        assert sec.find(cls="queue").text == "queue 0"
        assert sec.find(cls="banner") is None
        rows = {r["data-rule"]: r for r in sec.find_all(cls="rule")}
        assert list(rows) == ["daily", "burst", "pub", "inflight"]

        # (used, limit, band, legend) as the calls above make them.
        want = {
            "daily": (10, 25, "ok", [("billing", 4), ("crm-sync", 3), ("reports", 3)]),
            "burst": (5, 5, "critical", [("billing", 3), ("crm-sync", 1), ("reports", 1)]),
            "pub": (3, 4, "warn", [("crm-sync", 2), ("billing", 1)]),  # busiest: p1
            # The concurrency rule's legend: see test_in_flight_calls_show_their_apps.
            "inflight": (1, 2, "warn", None),
        }
        for name, (used, limit, b, apps) in want.items():
            row = rows[name]
            assert check_bar(row, used, limit, warn, critical) == b, name
            assert row.find(cls="figures").text == "{:,} / {:,} ({:.1f}%)".format(
                used, limit, 100.0 * used / limit), name
            if apps is None:
                continue
            assert legend(row) == apps, name
            assert sum(n for _, n in apps) == used, name
            # The split bar above the legend: one segment per app, by share.
            segs = row.find(cls="split").find_all("span")
            assert [s.style["width"] for s in segs] == [
                "%.1f%%" % (100.0 * n / used) for _, n in apps], name
        assert rows["daily"].find(cls="figures").text == "10 / 25 (40.0%)"
        assert rows["burst"].find(cls="fill").style["width"] == "100.0%"
        assert rows["daily"].find(cls="meta").text == "25 per 1h"
        assert rows["burst"].find(cls="meta").text == "5 per 1m"
        assert rows["pub"].find(cls="meta").text == "4 per 1h · per {p}"
        assert rows["inflight"].find(cls="meta").text == "concurrency · 2 at once"
        assert rows["inflight"].find(cls="resets").text == "in flight"
        # A rolling window gives room back call by call: what is left now
        # (25 - 10), and for a full one when the next call fits (the
        # oldest of 5 calls made seconds ago leaves its 1m window).
        assert rows["daily"].find(cls="resets").text == "15 left"
        assert re.fullmatch(r"room again in (\d+s|1m 00s)",
                            rows["burst"].find(cls="resets").text)

        # The per rule's buckets.
        pub = rows["pub"]
        assert "busiest bucket: p1" in pub.find(cls="note").text
        table = pub.find("table", cls="buckets")
        assert table.find("caption").text == "2 buckets"
        buckets = {tr["data-key"]: tr for tr in table.find_all("tr", cls="bucket")}
        assert list(buckets) == ["p1", "p2"]
        for key, used in (("p1", 3), ("p2", 1)):
            tr = buckets[key]
            cells = [td.text for td in tr.find_all("td")]
            assert cells[:3] == [key, "%d / 4" % used, "%.1f%%" % (25.0 * used)]
            check_bar(tr, used, 4, warn, critical)
        assert buckets["p1"]["data-band"] == "warn" and buckets["p2"]["data-band"] == "ok"

        # The header: store, version, last update.
        store = root.find(id="store")
        assert store["data-state"] == "up"
        assert store.text == "store: memory · up"
        st = status(sl.admin)
        assert root.find(id="version").text == "v" + st["version"]
        assert root.find(id="updated").text.startswith("updated ")
        assert root.find(id="error").get("hidden") is not None
    finally:
        sl.stop()
        slow.join()


def test_in_flight_calls_show_their_apps(upstream, sluices):
    sl = sluices.start(crm_config(upstream))
    slow = Background()
    slow.call(sl, "reports", "/crm/slow", headers={"X-Test-Delay": "30"})
    try:
        st = wait_status(sl.admin, lambda st: rules_of(st, "crm")["inflight"]["in_flight"] == 1,
                         "call in flight")
        row = chromium.find(chromium.dump_dom(sl.page, wait_ms=500), cls="rule",
                            data_rule="inflight")
        assert row.find(cls="figures").text == "1 / 2 (50.0%)"
        assert "none in flight" not in row.text
        assert legend(row) == [("reports", 1)]
        assert rules_of(st, "crm")["inflight"]["per_app"] == {"reports": 1}
    finally:
        sl.stop()
        slow.join()


# ---------------------------------------------------------------- app shares

def shares_of(row):
    """{app: [cell texts]} of a rule row's share table, in the page's order."""
    table = row.find("table", cls="shares")
    return {tr["data-app"]: [td.text for td in tr.find_all("td")]
            for tr in table.find_all("tr", cls="share")}


def share_conf(up, rule):
    return {"upstreams": [{"name": "crm", "prefix": "/crm", "url": up.url,
                           "app": "header:X-App", "rules": [rule]}]}


def test_app_shares_show_use_against_max_and_reserve(upstream, sluices):
    sl = sluices.start(share_conf(upstream, {
        "name": "quota", "limit": 10, "window": "1m", "apps": {
            "sync": {"max": 0.5}, "ui": {"reserve": 3},
            "*": {"max": 2, "reserve": 1, "lend": True}}}))

    def calls(app, n):
        return [send(sl, None, "/crm/x", headers={"X-App": app}) for _ in range(n)]

    assert calls("ui", 1) == [200]
    assert calls("sync", 6) == [200] * 5 + [429]   # sync's max: half of 10
    assert calls("batch", 3) == [200] * 2 + [429]  # "*": at most 2 each
    assert upstream.count() == 8
    st = status(sl.admin)
    root = chromium.parse(chromium.dump_dom(sl.page, wait_ms=1000))

    row = root.find(cls="rule", data_rule="quota")
    assert row.find(cls="figures").text == "8 / 10 (80.0%)"
    assert legend(row) == [("sync", 5), ("batch", 2), ("ui", 1)]
    table = row.find("table", cls="shares")
    assert table.find("caption").text == "app shares"
    assert [th.text for th in table.find_all("th")] == ["app", "used / max", "", "reserve"]
    # Named apps in the order written, then every app not named.
    assert shares_of(row) == {
        "sync": ["sync", "5 / 5", "", "—"],
        "ui": ["ui", "1 / 10", "", "3 · kept while idle"],
        "*": ["every other app", "2 in all · max 2 each", "", "1 in all · lent while idle"],
    }
    assert list(shares_of(row)) == ["sync", "ui", "*"]
    # A bar per named app, of its calls against its max: sync is at its
    # max (critical, full), ui has used a tenth of what it may.
    bands = st["bands"]
    rows = {tr["data-app"]: tr for tr in table.find_all("tr", cls="share")}
    assert check_bar(rows["sync"], 5, 5, bands["warn"], bands["critical"]) == "critical"
    assert check_bar(rows["ui"], 1, 10, bands["warn"], bands["critical"]) == "ok"
    assert rows["*"].find(cls="minibar") is None  # 2 in all, not of one app's max
    assert rows["*"].get("data-band") is None
    # The app's colour is its colour in the legend above.
    legend_colour = {li["data-app"]: li.find(cls="swatch").style["background"]
                     for li in row.find(cls="legend").find_all("li", cls="app")}
    for app in ("sync", "ui"):
        assert rows[app].find(cls="swatch").style["background"] == legend_colour[app]
    assert rows["*"].find(cls="swatch") is None
    # What is shown is what /status says.
    shares = rules_of(st, "crm")["quota"]["shares"]
    assert {a: (s["used"], s["max"], s["reserve"], s["lend"]) for a, s in shares.items()} == {
        "sync": (5, 5, 0, False), "ui": (1, 10, 3, False), "*": (2, 2, 1, True)}

    # A rule without shares has no share table.
    plain = sluices.start(crm_config(upstream))
    assert send(plain, "billing", "/crm/x") == 200
    root = chromium.parse(chromium.dump_dom(plain.page, wait_ms=1000))
    assert root.find(cls="rule", data_rule="daily") is not None
    assert root.find("table", cls="shares") is None


def test_app_shares_of_a_per_rule_are_its_busiest_buckets(upstream, sluices):
    sl = sluices.start(share_conf(upstream, {
        "name": "team", "per": "header:X-Team", "limit": 6, "window": "1h",
        "apps": {"sync": {"max": 3}, "ui": {"reserve": 2, "lend": True}}}))

    def calls(app, team, n):
        return [send(sl, None, "/crm/x", headers={"X-App": app, "X-Team": team})
                for _ in range(n)]

    assert calls("sync", "red", 4) == [200] * 3 + [429]
    assert calls("ui", "red", 1) == [200]
    assert calls("sync", "blue", 1) == [200]
    root = chromium.parse(chromium.dump_dom(sl.page, wait_ms=1000))
    row = root.find(cls="rule", data_rule="team")
    assert row.find(cls="figures").text == "4 / 6 (66.7%)"
    assert row.find("table", cls="shares").find("caption").text == "app shares in bucket red"
    assert shares_of(row) == {
        "sync": ["sync", "3 / 3", "", "—"],
        "ui": ["ui", "1 / 6", "", "2 · lent while idle"],
    }
    buckets = [tr["data-key"] for tr in row.find("table", cls="buckets").find_all("tr", cls="bucket")]
    assert buckets == ["red", "blue"]
    # The buckets' own shares are in /status; the page draws the busiest.
    st = rules_of(status(sl.admin), "crm")["team"]
    assert [b["shares"]["sync"]["used"] for b in st["buckets"]] == [3, 1]


# ---------------------------------------------------------------- the pause

def test_pause_banner_shows_resume_time_and_held_calls(upstream, sluices):
    sl = sluices.start(crm_config(upstream, on_limit="queue", max_wait="2m"))
    # The provider says stop for 30 s: sluice pauses the upstream.
    assert send(sl, "billing", "/crm/x", headers={
        "X-Test-Status": "429", "X-Test-Resp-Header": "Retry-After: 30"}) == 429
    held = Background()
    held.call(sl, "billing", "/crm/a/held")
    held.call(sl, "reports", "/crm/b/held")
    try:
        before = wait_status(sl.admin, lambda st: st["upstreams"][0]["queue"]["depth"] == 2,
                             "two calls held")
        root = chromium.parse(chromium.dump_dom(sl.page, wait_ms=500, env={"TZ": "UTC"}))
        after = status(sl.admin)
        p = before["upstreams"][0]["paused"]
        assert p is not None and after["upstreams"][0]["paused"] is not None
        assert after["upstreams"][0]["queue"]["depth"] == 2

        sec = root.find("section", cls="upstream", data_upstream="crm")
        banner = sec.find(cls="banner")
        m = re.fullmatch(r"Paused by the provider until (\d\d:\d\d:\d\d), (\d+) calls held",
                         banner.find(cls="title").text)
        assert m, banner.text
        assert int(m.group(2)) == 2
        # The time: /status gives the pause's end as resumes_at (UTC, whole
        # seconds rounded up) and resumes_at_unix (ms).  The end is one fixed
        # instant; each /status computes it as wall-clock now + the pause's
        # remaining time, so the page's own poll and ours agree within a few
        # ms.  The page truncates to the second (Date.getSeconds), resumes_at
        # rounds up: 0 or 1 s apart, and a ms of jitter can only move one of
        # them across a second boundary in the direction that closes the gap.
        # So +-1 s covers every rounding, and nothing else.
        shown = clock_seconds(m.group(1))
        iso = calendar.timegm(time.strptime(p["resumes_at"], "%Y-%m-%dT%H:%M:%SZ"))
        assert abs(seconds_apart(shown, iso % 86400)) <= 1, (m.group(1), p)
        assert abs(seconds_apart(shown, int(p["resumes_at_unix"]) % 86400)) <= 1, (m.group(1), p)
        # And it is about 30 s after the 429 (the page loaded within seconds).
        assert 0 < p["resumes_in"] <= 30
        reason = banner.find(cls="reason").text
        assert re.fullmatch(r"status 429, Retry-After · resumes in (\d+)s", reason), reason
        assert 0 < int(re.search(r"(\d+)s$", reason).group(1)) <= 30

        q = sec.find(cls="queue")
        assert q["data-depth"] == "2"
        assert re.fullmatch(r"queue 2 · oldest waiting \d+\.\ds", q.text), q.text
        assert upstream.count() == 1  # nothing went upstream during the pause
    finally:
        sl.stop()
        # Held calls are answered 503 (shutting_down) when sluice stops: they
        # were held all along, neither refused nor forwarded.
        assert held.join() == [503, 503]


# ---------------------------------------------------------------- updates

class AdminRelay:
    """An HTTP relay in front of the admin listener that counts the page's
    /status polls and runs before_poll(n) before relaying poll n (1-based).
    Chromium's virtual clock stands still while a poll is pending, so
    whatever before_poll does happens between two polls, deterministically."""

    def __init__(self, admin_port, before_poll):
        self.polls = 0
        self.lock = threading.Lock()
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                if self.path == "/status":
                    with relay.lock:
                        relay.polls += 1
                        n = relay.polls
                    before_poll(n)
                c = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
                try:
                    c.request("GET", self.path)
                    r = c.getresponse()
                    body = r.read()
                    self.send_response(r.status)
                    for k in ("Content-Type", "Cache-Control", "Content-Security-Policy"):
                        if r.getheader(k):
                            self.send_header(k, r.getheader(k))
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    c.close()

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # Chromium hanging up when it is done

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_page_updates_itself(upstream, sluices):
    sl = sluices.start(crm_config(upstream))
    for app in ("billing", "reports"):
        assert send(sl, app, "/crm/x") == 200
    late = []

    def before_poll(n):
        # After the page has rendered its first poll: three more calls.
        if n == 2:
            late.extend(send(sl, "late-app", "/crm/y") for _ in range(3))

    relay = AdminRelay(sl.admin, before_poll)
    try:
        t0 = time.time()
        # wait_ms=3000: the first poll and three more, one per virtual second.
        root = chromium.parse(chromium.dump_dom(
            "http://127.0.0.1:%d/" % relay.port, wait_ms=3000, env={"TZ": "UTC"}))
        t1 = time.time()
    finally:
        relay.close()
    assert late == [200, 200, 200]
    # Virtual time: the poll at load, then one per virtual second (measured:
    # wait_ms 1000/3000/5000 give 2/4/6 polls, on every run).
    assert relay.polls == 4, relay.polls
    # What is shown came from a poll after the calls: the page re-rendered.
    daily = root.find(cls="rule", data_rule="daily")
    assert daily.find(cls="figures").text == "5 / 25 (20.0%)"
    assert legend(daily) == [("late-app", 3), ("billing", 1), ("reports", 1)]
    # "updated HH:MM:SS · up Ns": sluice's clock at the last poll (UTC here).
    updated = root.find(id="updated").text
    m = re.fullmatch(r"updated (\d\d:\d\d:\d\d) · up (\d+\.\ds|\d+s|\d+m \d\ds)", updated)
    assert m, updated
    shown = clock_seconds(m.group(1))
    assert -1 <= seconds_apart(shown, int(t0) % 86400) and \
        seconds_apart(shown, int(t1) % 86400) <= 1, (m.group(1), t0, t1)
    assert root.find(id="error").get("hidden") is not None


# ---------------------------------------------------------------- the token

def test_token_protected_page(upstream, sluices):
    sl = sluices.start(crm_config(upstream), token=TOKEN)
    assert send(sl, "billing", "/crm/a/x") == 200

    # A browser without credentials is refused and told to use Basic auth.
    code, headers, _ = admin_get(sl.admin, "/")
    assert code == 401
    challenges = headers.get_all("WWW-Authenticate")
    assert any(c.startswith("Basic ") for c in challenges), challenges
    assert admin_get(sl.admin, "/", auth=("admin", TOKEN + "x"))[0] == 401
    assert admin_get(sl.admin, "/status", auth=("admin", TOKEN[:-1]))[0] == 401
    code, headers, body = admin_get(sl.admin, "/", auth=("admin", TOKEN))
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert b"sluice" in body
    assert admin_get(sl.admin, "/status", bearer=TOKEN)[0] == 200

    # With the token as the Basic password the page loads and polls.
    root = chromium.parse(chromium.dump_dom(sl.page, wait_ms=1000, auth=("admin", TOKEN)))
    daily = root.find(cls="rule", data_rule="daily")
    assert daily.find(cls="figures").text == "1 / 25 (4.0%)"
    assert legend(daily) == [("billing", 1)]
    assert root.find(id="error").get("hidden") is not None
    # Without credentials, or with a wrong one, Chromium gets no page at all.
    with pytest.raises(ChromiumError):
        chromium.dump_dom(sl.page, wait_ms=500)
    with pytest.raises(ChromiumError):
        chromium.dump_dom(sl.page, wait_ms=500, auth=("admin", "not-the-token-at-all"))


# ---------------------------------------------------------------- escaping

def test_bucket_keys_are_shown_as_text(upstream, sluices):
    """A `per` value is whatever a client put in a header: the page shows it
    as text, never as markup."""
    up = {"name": "crm", "prefix": "/crm", "url": upstream.url, "rules": [
        {"name": "tenant", "per": "header:X-Tenant", "limit": 5, "window": "1h"}]}
    sl = sluices.start({"upstreams": [up]})
    evil = '<img src=x onerror="document.title=1">&amp;"\''
    for _ in range(2):
        assert send(sl, "billing", "/crm/x", headers={"X-Tenant": evil}) == 200
    root = chromium.parse(chromium.dump_dom(sl.page, wait_ms=500))
    row = root.find(cls="rule", data_rule="tenant")
    tr = row.find("tr", cls="bucket")
    assert tr["data-key"] == evil
    assert tr.find("td", cls="key").text == evil
    assert root.find("main").find("img") is None
    assert root.find("title").text == "sluice · usage"
    assert "busiest bucket: " + evil in row.find(cls="note").text


def test_non_utf8_bucket_key_is_shown(upstream, sluices):
    sl = sluices.start(crm_config(upstream))
    assert send(sl, "billing", "/crm/pub/caf%E9/x") == 200
    buckets = rules_of(status(sl.admin), "crm")["pub"]["buckets"]
    assert len(buckets) == 1
    assert isinstance(buckets[0].get("key"), str) and buckets[0]["key"], buckets
    root = chromium.parse(chromium.dump_dom(sl.page, wait_ms=500))
    tr = root.find(cls="rule", data_rule="pub").find("tr", cls="bucket")
    assert tr["data-key"] not in ("", "undefined")
    assert tr.find("td", cls="key").text.startswith("caf")


# ---------------------------------------------------------------- screenshot

def test_screenshot_of_a_busy_day(sluices):
    """A realistic state: two providers, four rules in all three bands, three
    apps sharing the daily quota (the sync capped near its max, billing's
    reserve, the others' pool), a per-account rule with three buckets, and
    the second provider paused with calls held.  Written to
    docs/usage-page.png when SLUICE_SCREENSHOT=1.  (No concurrency rule: it
    would show "none in flight" under its in-flight calls, see
    test_in_flight_calls_show_their_apps; and without it, and with the share
    table in place of a fifth rule, the page fits 1280x900.)"""
    crm, leads = Upstream(), Upstream()
    bg = Background()
    try:
        config = {"upstreams": [
            {"name": "crm", "prefix": "/crm", "url": crm.url, "rules": [
                {"name": "api-daily", "limit": 1000, "window": "24h", "apps": {
                    "crm-sync": {"max": 0.1}, "billing": {"reserve": 0.2},
                    "*": {"max": 0.25, "reserve": 50, "lend": True}}},
                {"name": "logins", "methods": ["POST"], "path": "/oauth/token",
                 "limit": 10, "window": "5m"},
                {"name": "per-account", "path": "/accounts/{account}/**",
                 "per": "{account}", "limit": 50, "window": "1h"},
            ]},
            {"name": "leads", "prefix": "/leads", "url": leads.url, "on_limit": "queue",
             "max_wait": "5m", "rules": [
                 {"name": "lead-results", "path": "/api/v2/lead-result/**",
                  "limit": 140, "window": "5m"},
             ]},
        ]}
        sl = sluices.start(config)
        apps = ("billing", "reports", "crm-sync")
        plan = ([("POST", "/crm/jobs/export", apps[i % 2]) for i in range(17)]
                + [("POST", "/crm/oauth/token", apps[i % 3]) for i in range(12)]
                + [("GET", "/crm/accounts/acme/contacts", apps[i % 3]) for i in range(44)]
                + [("GET", "/crm/accounts/globex/deals", apps[1 + i % 2]) for i in range(21)]
                + [("GET", "/crm/accounts/initech/contacts", "billing")] * 8
                + [("GET", "/crm/contacts?page=%d" % i, apps[(i * 7) % 3 if i % 5 else 0])
                   for i in range(221)]
                + [("GET", "/leads/api/v2/lead-result/%d" % i, "crm-sync" if i % 4 else "reports")
                   for i in range(57)])
        results = [send(sl, app, path, method) for method, path, app in plan]
        assert results.count(429) == 2  # two logins over the limit
        # The lead platform says stop for two minutes; two calls wait.
        assert send(sl, "crm-sync", "/leads/api/v2/lead-result/x", headers={
            "X-Test-Status": "429", "X-Test-Resp-Header": "Retry-After: 120"}) == 429
        bg.call(sl, "crm-sync", "/leads/api/v2/lead-result/y", timeout=120)
        bg.call(sl, "reports", "/leads/api/v2/lead-result/z", timeout=120)
        wait_status(sl.admin, lambda st: st["upstreams"][1]["queue"]["depth"] == 2,
                    "two calls held")

        root = chromium.parse(chromium.dump_dom(sl.page, wait_ms=1500, env={"TZ": "UTC"}))
        bands = {r["data-rule"]: r["data-band"] for r in root.find_all(cls="rule")
                 if r.get("data-rule")}
        assert bands == {"api-daily": "ok", "logins": "critical",
                         "per-account": "warn", "lead-results": "ok"}
        daily = root.find(cls="rule", data_rule="api-daily")
        assert daily.find(cls="figures").text == "321 / 1,000 (32.1%)"
        assert sorted(a for a, _ in legend(daily)) == sorted(apps)
        assert sum(n for _, n in legend(daily)) == 321
        calls = dict(legend(daily))
        assert shares_of(daily) == {
            "crm-sync": ["crm-sync", "%d / 100" % calls["crm-sync"], "", "—"],
            "billing": ["billing", "%d / 1000" % calls["billing"], "", "200 · kept while idle"],
            "*": ["every other app", "%d in all · max 250 each" % calls["reports"], "",
                  "50 in all · lent while idle"]}
        assert daily.find("tr", cls="share", data_app="crm-sync")["data-band"] == "warn"
        assert [tr["data-key"] for tr in root.find_all("tr", cls="bucket")] == [
            "acme", "globex", "initech"]
        banner = root.find("section", data_upstream="leads").find(cls="banner")
        assert banner.find(cls="title").text.endswith(", 2 calls held")

        path = os.path.join(tempfile.mkdtemp(prefix="sluice-shot-"), "usage-page.png")
        try:
            chromium.screenshot(sl.page, path, size=(1280, 900), wait_ms=1500,
                                env={"TZ": "UTC"})
            assert png_size(path) == (1280, 900)
            assert os.path.getsize(path) > 20000  # a rendered page, not a blank one
            if os.environ.get("SLUICE_SCREENSHOT") == "1":
                shutil.copyfile(path, os.path.join(ROOT, "docs", "usage-page.png"))
        finally:
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    finally:
        sluices.stop_all()
        bg.join()
        crm.close()
        leads.close()


def test_a_leaky_bucket_shows_its_level_and_leak(upstream, sluices):
    up = {"name": "shop", "prefix": "/shop", "url": upstream.url, "margin": "0ms",
          "rules": [{"name": "rest", "bucket": 10, "leak": "1/m"}]}
    sl = sluices.start({"upstreams": [up]}, admin={"warn": 0.5, "critical": 0.9})
    for _ in range(10):
        assert send(sl, "billing", "/shop/x") == 200
    root = chromium.parse(chromium.dump_dom(sl.page, wait_ms=500))
    row = root.find(cls="rule", data_rule="rest")
    assert row.find(cls="meta").text == "bucket of 10 · leaks 1/m"
    check_bar(row, 10, 10, 0.5, 0.9)
    assert row.find(cls="figures").text == "10 / 10 (100.0%)"
    # Full: empty again once all ten have leaked, at one a minute.
    assert re.fullmatch(r"empty in (9m 5\d|10m 00)s", row.find(cls="resets").text)
