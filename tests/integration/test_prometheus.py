"""The admin listener's /metrics, as Prometheus sees it.

promtool lints the exposition sluice writes after a realistic mix of calls
(several apps, forwarded calls, 429s, a call held in queue mode and
released, a call with no route), and the figures a user would graph are
checked against what the test's clients and upstreams saw.  Then a real
Prometheus server (Debian's `prometheus` package) scrapes the admin
listener -- without a token, and with one given either way Prometheus
knows (`authorization: {credentials}` and the older `bearer_token`) -- and
its query API must return the same figures.

prometheus and promtool are required: a missing one fails the test with
what to install (tests/run installs the test dependencies); nothing here is
skipped.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from harness import SLUICE_BIN, Upstream, free_port, parallel

PROMETHEUS = os.environ.get("PROMETHEUS", "/usr/bin/prometheus")
PROMTOOL = os.environ.get("PROMTOOL", "/usr/bin/promtool")
TOKEN = "metrics-token-0123456789abcdef"

# How long to wait for Prometheus to show a figure.  Prometheus 2.42 hands
# new scrape targets to its scrape loops on a 5 s tick, and a loop's first
# scrape comes after an offset under one scrape_interval (1 s here): the
# first sample lands about 6 s after start (measured: 6.0 s).  A later
# change shows within one interval plus the scrape itself.  30 s is five
# times the worst expected case; a wait that runs out reports the last
# value seen and the target's state, so a slow machine cannot be mistaken
# for a wrong figure.
PROM_WAIT = 30.0

# How long to wait for sluice's own counters to settle after the clients
# have their answers: the upstream-duration histogram is observed when the
# worker reaps libcurl's completion, at most a loop pass after the client
# has the last byte (microseconds to milliseconds; 10 s covers a sanitizer
# build on a loaded machine).
SETTLE = 10.0


def require(path, what):
    """Fail (never skip) when a tool the test needs is missing."""
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail("%s not found at %s: install the Debian package `prometheus` "
                    "(apt-get install prometheus), which tests/run's dependencies "
                    "must include" % (what, path))


# ---------------------------------------------------------------- exposition

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """{(name, frozenset of (label, value)): float} of an exposition text."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, "not a sample line: %r" % line
        name, labels, value = m.groups()
        key = (name, frozenset(LABEL.findall(labels or "")))
        assert key not in out, "duplicate series: %r" % line
        out[key] = float(value)
    return out


def value(samples, name, **labels):
    key = (name, frozenset(labels.items()))
    assert key in samples, "no series %s%r in /metrics" % (name, labels)
    return samples[key]


def series(samples, name, **labels):
    """{frozenset of the other labels: value} of every NAME series with LABELS."""
    want = set(labels.items())
    return {k[1] - want: v for k, v in samples.items()
            if k[0] == name and want <= k[1]}


def admin_get(port, path, token=None, timeout=10):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path))
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def metrics(port, token=None):
    code, headers, body = admin_get(port, "/metrics", token)
    assert code == 200, body
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return body.decode()


def status(port, token=None):
    code, _, body = admin_get(port, "/status", token)
    assert code == 200, body
    return json.loads(body)


# ---------------------------------------------------------------- the scenario

def config(crm, leads, admin_port, token=None):
    admin = {"listen": "127.0.0.1:%d" % admin_port}
    if token:
        admin["token"] = token
    return {
        "app": "header:X-Sluice-App",
        "admin": admin,
        "upstreams": [
            {"name": "crm", "prefix": "/crm", "url": crm.url, "rules": [
                {"name": "daily", "limit": 100, "window": "1h"},
                {"name": "burst", "path": "/a/**", "limit": 6, "window": "1h"},
                {"name": "pub", "path": "/pub/{p}/*", "per": "{p}", "limit": 3,
                 "window": "1h"},
                {"name": "inflight", "concurrency": 4},
            ]},
            # Queue mode: the second of two simultaneous calls waits for the
            # 1 s window, then goes.
            {"name": "leads", "prefix": "/leads", "url": leads.url,
             "on_limit": "queue", "max_wait": "30s", "rules": [
                 {"name": "per-second", "limit": 1, "window": "1s"},
             ]},
        ],
    }


# (app, path) in order; None: no X-Sluice-App header (app "-").
CRM_CALLS = (
    [("billing", "/crm/a/x")] * 4 + [("reports", "/crm/a/x")] * 3 + [(None, "/crm/a/x")]
    + [("crm-sync", "/crm/pub/p1/x")] * 4 + [("billing", "/crm/pub/p2/x")]
    + [("crm-sync", "/crm/contacts")] * 2
)


def send(sl, app, path):
    headers = {"X-Sluice-App": app} if app else {}
    return sl.request("GET", path, headers=headers)[0]


class Served:
    """What the clients and upstreams saw."""

    def __init__(self):
        self.crm = []    # (app, path, status)
        self.leads = []  # status


def serve(sl):
    served = Served()
    for app, path in CRM_CALLS:
        served.crm.append((app or "-", path, send(sl, app, path)))
    served.leads += parallel(2, lambda i: send(sl, "leads-sync", "/leads/lead/%d" % i))
    assert send(sl, "billing", "/nowhere") == 404
    return served


def settle(sl_admin, crm_up, leads_up, token=None):
    """/metrics once every upstream exchange is in the histograms and no
    call is in flight (bounded by SETTLE)."""
    deadline = time.monotonic() + SETTLE
    while True:
        text = metrics(sl_admin, token)
        s = parse_metrics(text)
        done = (value(s, "sluice_upstream_duration_seconds_count", upstream="crm")
                == crm_up.count()
                and value(s, "sluice_upstream_duration_seconds_count", upstream="leads")
                == leads_up.count()
                and value(s, "sluice_rule_used", upstream="crm", rule="inflight") == 0)
        if done or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def count(rows, pred):
    return sum(1 for r in rows if pred(*r))


def expected_app_calls(served, rule_pred):
    """{app: calls forwarded} of the crm calls a rule matched."""
    out = {}
    for app, path, st in served.crm:
        if st == 200 and rule_pred(path):
            out[app] = out.get(app, 0) + 1
    return out


RULES = {
    "daily": lambda p: True,
    "burst": lambda p: p.startswith("/crm/a/"),
    "pub": lambda p: p.startswith("/crm/pub/"),
    "inflight": lambda p: True,
}


def check_figures(text, served, crm_up, leads_up, st):
    s = parse_metrics(text)
    ok = count(served.crm, lambda a, p, c: c == 200)
    limited = count(served.crm, lambda a, p, c: c == 429)
    # The scenario is what it was meant to be: 6 of 8 /a/ calls fit the
    # burst rule, 3 of 4 calls for p1 fit pub.
    assert (ok, limited) == (12, 3), served.crm
    assert served.leads == [200, 200]

    # Calls: what the upstream received, what the clients were refused.
    assert crm_up.count() == ok
    assert value(s, "sluice_calls_total", upstream="crm", outcome="forwarded") == ok
    assert value(s, "sluice_calls_total", upstream="crm", outcome="rejected") == limited
    for outcome in ("queued", "released", "expired", "paused", "error", "invalid"):
        assert value(s, "sluice_calls_total", upstream="crm", outcome=outcome) == 0, outcome
    # leads: one went at once, one was held, then released; both went
    # upstream (forwarded + released is what the provider received).
    assert leads_up.count() == 2
    assert value(s, "sluice_calls_total", upstream="leads", outcome="forwarded") == 1
    assert value(s, "sluice_calls_total", upstream="leads", outcome="queued") == 1
    assert value(s, "sluice_calls_total", upstream="leads", outcome="released") == 1
    assert value(s, "sluice_calls_total", upstream="leads", outcome="rejected") == 0
    # The call with no route counts under upstream "-".
    assert value(s, "sluice_calls_total", upstream="-", outcome="invalid") == 1

    # Per app, per rule: what each app had forwarded.
    for rule, pred in RULES.items():
        got = {dict(k)["app"]: v for k, v in
               series(s, "sluice_app_calls_total", upstream="crm", rule=rule).items()}
        assert got == expected_app_calls(served, pred), rule
    assert series(s, "sluice_app_calls_total", upstream="leads", rule="per-second") == {
        frozenset({("app", "leads-sync")}): 2}

    # Decisions: each 429 is one denial by the rule that was full.
    assert value(s, "sluice_decisions_total", upstream="crm", rule="burst",
                 result="denied") == 2
    assert value(s, "sluice_decisions_total", upstream="crm", rule="pub",
                 result="denied") == 1
    assert value(s, "sluice_decisions_total", upstream="crm", rule="daily",
                 result="allowed") == ok

    # Rule gauges: the expected figures, and the same as /status.
    p1 = count(served.crm, lambda a, p, c: c == 200 and p.startswith("/crm/pub/p1/"))
    want = {"daily": (ok, 100), "burst": (6, 6), "pub": (p1, 3), "inflight": (0, 4)}
    rules = {r["name"]: r for r in st["upstreams"][0]["rules"]}
    for rule, (used, limit) in want.items():
        assert value(s, "sluice_rule_used", upstream="crm", rule=rule) == used, rule
        assert value(s, "sluice_rule_limit", upstream="crm", rule=rule) == limit, rule
        assert value(s, "sluice_rule_remaining", upstream="crm", rule=rule) == limit - used
        ratio = value(s, "sluice_rule_utilization_ratio", upstream="crm", rule=rule)
        assert ratio == pytest.approx(used / limit, abs=1e-6), rule
        assert (rules[rule]["used"], rules[rule]["limit"]) == (used, limit), rule
        assert rules[rule]["utilization"] == pytest.approx(ratio, abs=1e-4), rule
    assert value(s, "sluice_rule_buckets", upstream="crm", rule="pub") == 2
    # The busiest bucket's apps.
    assert series(s, "sluice_rule_app_used", upstream="crm", rule="pub") == {
        frozenset({("app", "crm-sync")}): 3}

    # Histograms: one observation per exchange with the upstream, buckets
    # cumulative up to +Inf == _count.
    for up, n in (("crm", ok), ("leads", 2)):
        assert value(s, "sluice_upstream_duration_seconds_count", upstream=up) == n
        buckets = sorted(((float(dict(k)["le"]), v) for k, v in
                          series(s, "sluice_upstream_duration_seconds_bucket",
                                 upstream=up).items()))
        assert buckets[-1] == (float("inf"), n)
        assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), buckets
        assert value(s, "sluice_upstream_duration_seconds_sum", upstream=up) >= 0
    # The held call waited for the 1 s window (less its first call's age).
    assert value(s, "sluice_queue_wait_seconds_count", upstream="leads") == 1
    assert 0.5 <= value(s, "sluice_queue_wait_seconds_sum", upstream="leads") <= 5
    assert value(s, "sluice_queue_depth", upstream="leads") == 0
    assert value(s, "sluice_store_up", store="memory") == 1
    return s


def promtool_check(text):
    require(PROMTOOL, "promtool")
    p = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(),
                       capture_output=True, timeout=60)
    out = (p.stdout + p.stderr).decode()
    # Lint findings ("no help text", "counter metrics should have _total
    # suffix", ...) make promtool exit 3; a clean exposition prints nothing.
    assert p.returncode == 0, out
    assert out.strip() == "", out


# ---------------------------------------------------------------- promtool

def test_promtool_accepts_metrics_and_figures_match(sluice):
    crm, leads = Upstream(), Upstream()
    try:
        admin = free_port()
        sl = sluice(config(crm, leads, admin))
        served = serve(sl)
        text = settle(admin, crm, leads)
        promtool_check(text)
        check_figures(text, served, crm, leads, status(admin))
        # Families are declared once each, with a type, before their samples.
        types = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
        assert len(types) == len(set(types))
        assert ("sluice_calls_total", "counter") in types
        assert ("sluice_upstream_duration_seconds", "histogram") in types
        assert ("sluice_rule_utilization_ratio", "gauge") in types
        # The reference (sluice --print-metrics, docs/metrics.md) names every
        # family with the type and the labels the scrape gives it.
        ref = subprocess.run([SLUICE_BIN, "--print-metrics"],
                             capture_output=True, text=True, timeout=30,
                             check=True).stdout
        rows = {m.group(1): (m.group(2), set(re.findall(r"`(\w+)`", m.group(3))))
                for m in re.finditer(r"^\| `(\w+)` \| (\w+) \| ([^|]*) \|",
                                     ref, re.M)}
        assert [name for name, _ in types] == list(rows)
        for name, kind in types:
            assert rows[name][0] == kind, name
            samples = re.findall(r"^%s(?:_bucket|_sum|_count)?\{([^}]*)\}" % name,
                                 text, re.M)
            for labels in samples:
                seen = set(re.findall(r"(\w+)=", labels)) - {"le"}
                assert seen == rows[name][1], (name, labels)
    finally:
        crm.close()
        leads.close()


def test_large_rule_figures_are_exact(upstream, sluice):
    admin = free_port()
    sl = sluice({"admin": {"listen": "127.0.0.1:%d" % admin},
                 "upstreams": [{"name": "crm", "prefix": "/crm", "url": upstream.url,
                                "rules": [{"name": "monthly", "limit": 1234567,
                                           "window": "30d"}]}]})
    assert sl.request("GET", "/crm/x")[0] == 200
    s = parse_metrics(metrics(admin))
    assert value(s, "sluice_rule_used", upstream="crm", rule="monthly") == 1
    assert value(s, "sluice_rule_limit", upstream="crm", rule="monthly") == 1234567
    assert value(s, "sluice_rule_remaining", upstream="crm", rule="monthly") == 1234566


# ---------------------------------------------------------------- Prometheus

class Prometheus:
    """A real Prometheus on a free loopback port, its config and TSDB in a
    temporary directory; stop() ends it with SIGTERM and wants exit 0."""

    def __init__(self, scrape_configs):
        self.proc = None
        self.dir = tempfile.mkdtemp(prefix="sluice-prometheus-")
        self.config_path = os.path.join(self.dir, "prometheus.yml")
        # JSON is YAML: no YAML library needed.
        with open(self.config_path, "w") as f:
            json.dump({"global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                                  "evaluation_interval": "1s"},
                       "scrape_configs": scrape_configs}, f, indent=1)
        p = subprocess.run([PROMTOOL, "check", "config", self.config_path],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
        self.log_path = os.path.join(self.dir, "prometheus.log")
        # free_port() holds its port against port-0 binds, not against a
        # bind to that very port: a Prometheus that could not bind exits at
        # once; try another port.
        for attempt in range(3):
            self.port = free_port()
            if self._start():
                return
        raise AssertionError("prometheus did not start:\n" + self.read_log())

    def _start(self):
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [PROMETHEUS, "--config.file=" + self.config_path,
                 "--storage.tsdb.path=" + os.path.join(self.dir, "data"),
                 "--web.listen-address=127.0.0.1:%d" % self.port,
                 "--log.level=info"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if "address already in use" in self.read_log():
                    return False
                raise AssertionError("prometheus exited with %s:\n%s"
                                     % (self.proc.returncode, self.read_log()))
            try:
                with urllib.request.urlopen(self.url("/-/ready"), timeout=2) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise AssertionError("prometheus not ready after 30 s:\n" + self.read_log())

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def read_log(self):
        try:
            with open(self.log_path) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def api(self, path, **params):
        url = self.url(path) + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=10) as r:
            doc = json.load(r)
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr):
        return self.api("/api/v1/query", query=expr)["result"]

    def targets(self):
        return {t["labels"]["job"]: t for t in self.api("/api/v1/targets")["activeTargets"]}

    def wait_value(self, expr, want, timeout=PROM_WAIT):
        """Poll an instant query until it is one series equal to WANT."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if len(result) == 1 and float(result[0]["value"][1]) == want:
                return result[0]
            if time.monotonic() > deadline:
                raise AssertionError(
                    "after %.0f s Prometheus has %s = %r, not %r\ntargets: %r"
                    % (timeout, expr, result, want,
                       {j: (t["health"], t["lastError"]) for j, t in self.targets().items()}))
            time.sleep(0.2)

    def stop(self):
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                    raise AssertionError("prometheus ignored SIGTERM:\n" + self.read_log())
                if self.proc.returncode != 0:
                    raise AssertionError("prometheus exited with %s:\n%s"
                                         % (self.proc.returncode, self.read_log()))
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def prometheus(request):
    """Factory: prometheus(scrape_configs) starts one; each is stopped
    (SIGTERM, exit 0 required) by a finalizer."""
    require(PROMETHEUS, "prometheus")
    require(PROMTOOL, "promtool")

    def start(scrape_configs):
        holder = {}

        def stop():
            if "p" in holder:
                holder["p"].stop()
        request.addfinalizer(stop)
        holder["p"] = Prometheus(scrape_configs)
        return holder["p"]

    return start


def job(name, admin_port, **extra):
    j = {"job_name": name, "metrics_path": "/metrics",
         "static_configs": [{"targets": ["127.0.0.1:%d" % admin_port]}]}
    j.update(extra)
    return j


def check_scraped(prom, jobname, served, crm, leads):
    ok = count(served.crm, lambda a, p, c: c == 200)
    limited = count(served.crm, lambda a, p, c: c == 429)
    sel = 'job="%s",upstream="crm"' % jobname
    prom.wait_value('up{job="%s"}' % jobname, 1)
    prom.wait_value('sluice_calls_total{%s,outcome="forwarded"}' % sel, ok)
    prom.wait_value('sluice_calls_total{%s,outcome="rejected"}' % sel, limited)
    prom.wait_value('sluice_calls_total{job="%s",upstream="leads",outcome="released"}'
                    % jobname, 1)
    prom.wait_value('sluice_upstream_duration_seconds_count{%s}' % sel, crm.count())
    prom.wait_value('sluice_app_calls_total{%s,rule="daily",app="crm-sync"}' % sel,
                    expected_app_calls(served, RULES["daily"])["crm-sync"])
    prom.wait_value('sluice_rule_utilization_ratio{%s,rule="burst"}' % sel, 1)
    # A PromQL view over the series: the share of crm calls refused.
    prom.wait_value('sum(sluice_calls_total{%s,outcome="rejected"}) / '
                    'sum(sluice_calls_total{%s,outcome=~"forwarded|rejected"})'
                    % (sel, sel), limited / (ok + limited))
    t = prom.targets()[jobname]
    assert t["health"] == "up" and t["lastError"] == "", t


def test_prometheus_scrapes_the_admin_listener(prometheus, sluice):
    crm, leads = Upstream(), Upstream()
    try:
        admin = free_port()
        sl = sluice(config(crm, leads, admin))
        served = serve(sl)
        settle(admin, crm, leads)
        prom = prometheus([job("sluice", admin)])
        check_scraped(prom, "sluice", served, crm, leads)
        # Scraping goes on: three more calls show up.
        before = crm.count()
        for i in range(3):
            assert send(sl, "reports", "/crm/contacts/%d" % i) == 200
        prom.wait_value('sluice_calls_total{job="sluice",upstream="crm",'
                        'outcome="forwarded"}', before + 3)
        prom.wait_value('sluice_app_calls_total{job="sluice",upstream="crm",'
                        'rule="daily",app="reports"}',
                        expected_app_calls(served, RULES["daily"])["reports"] + 3)
    finally:
        crm.close()
        leads.close()


def test_prometheus_scrapes_a_token_protected_admin_listener(prometheus, sluice):
    crm, leads = Upstream(), Upstream()
    try:
        admin = free_port()
        sl = sluice(config(crm, leads, admin, token=TOKEN))
        # The listener wants the token, and says how to give it.
        code, headers, _ = admin_get(admin, "/metrics")
        assert code == 401 and "Bearer" in headers["WWW-Authenticate"]
        assert admin_get(admin, "/metrics", token=TOKEN[:-1] + "X")[0] == 401
        served = serve(sl)
        settle(admin, crm, leads, token=TOKEN)
        prom = prometheus([
            job("sluice", admin, authorization={"type": "Bearer", "credentials": TOKEN}),
            job("sluice-bearer-token", admin, bearer_token=TOKEN),
            job("sluice-no-token", admin),
        ])
        for name in ("sluice", "sluice-bearer-token"):
            check_scraped(prom, name, served, crm, leads)
        # Without the token Prometheus is refused: the target is down.
        prom.wait_value('up{job="sluice-no-token"}', 0)
        t = prom.targets()["sluice-no-token"]
        assert t["health"] == "down" and "401" in t["lastError"], t
        assert prom.query('sluice_calls_total{job="sluice-no-token"}') == []
    finally:
        crm.close()
        leads.close()
