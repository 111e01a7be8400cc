"""The provider's count is the truth: a provider that counts the whole
account (most of whose calls do not go through sluice) reports its usage in
every answer, and exactly its remaining calls go through -- with the memory
store, and with Redis shared by one or three instances -- and what the
operator sees is the provider's figure."""
import json
import re

import pytest

from harness import RedisServer, admin_request, upstream_config


def conf(up, store=None, fmt="sforce-limit-info", limit=15000, window="24h"):
    return upstream_config(up, [{"name": "daily", "limit": limit, "window": window,
                                 "sync": fmt}], store, name="crm", prefix="/crm")


FORMATS = {  # sync setting: (the harness's report format, the provider's max)
    "sforce-limit-info": ("sforce", 15000),
    "x-ratelimit": ("x-ratelimit", 5000),
    "ratelimit": ("ratelimit", 1000),
    "shopify": ("shopify", 40),
}


@pytest.mark.parametrize("store_kind,ninst,sync", [
    ("memory", 1, "sforce-limit-info"), ("redis", 1, "sforce-limit-info"),
    ("redis", 3, "sforce-limit-info"),
    ("memory", 1, "x-ratelimit"), ("redis", 3, "x-ratelimit"),
    ("memory", 1, "ratelimit"), ("redis", 3, "ratelimit"),
    ("memory", 1, "shopify"), ("redis", 3, "shopify"),
])
def test_exactly_the_providers_remaining_calls_go_through(upstream, sluice, store_kind,
                                                         ninst, sync):
    redis = RedisServer() if store_kind == "redis" else None
    fmt, cap = FORMATS[sync]
    try:
        # The account's other tools have used all but 14.
        upstream.account = {"used": cap - 14, "max": cap, "format": fmt}
        c = conf(upstream, redis.url if redis else None, fmt=sync, limit=cap,
                 window="1h")
        insts = [sluice(c) for _ in range(ninst)]
        codes = [insts[i % ninst].request("GET", "/crm/x%d" % i)[0] for i in range(20)]
        # Each call waits for the previous answer, and an answer reaches its
        # client only once its report is in the store (with Redis too), so
        # every call is decided on the report just before it: exactly the
        # 14 pass, in a row, and then none.
        assert codes == [200] * 14 + [429] * 6, codes
        assert upstream.count() == 14
        assert upstream.account["used"] == cap
    finally:
        if redis:
            redis.stop()


def admin_get(port, path):
    code, _, body = admin_request(port, "GET", path)
    return code, body


@pytest.mark.parametrize("store_kind", ["memory", "redis"])
def test_the_operator_sees_the_providers_count(upstream, sluice, store_kind):
    """The CRM case: the account at 14,985 of 15,000 by the provider's own
    report.  /status, the metrics, RateLimit, the refusal and the alert all
    say what the provider says, not what went through sluice."""
    from harness import free_port
    from test_admin import Receiver
    redis = RedisServer() if store_kind == "redis" else None
    rx = Receiver()
    try:
        upstream.account = {"used": 14985, "max": 15000, "format": "sforce"}
        port = free_port()
        c = conf(upstream, redis.url if redis else None)
        c["admin"] = {"listen": "127.0.0.1:%d" % port}
        c["alerts"] = [{"url": rx.url, "at": [0.9]}]
        sl = sluice(c)
        status, h, _ = sl.request("GET", "/crm/first")
        assert status == 200
        # This answer's RateLimit says what the provider just said (14
        # left), not sluice's own 14,999.
        assert h["ratelimit"].startswith('"daily";r=14;'), h["ratelimit"]
        # With Redis the report reaches the store at the end of the loop
        # pass that relays the answer: the client may ask first.  A second
        # is hundreds of times that.
        import time
        deadline = time.time() + 1
        while True:
            daily = json.loads(admin_get(port, "/status")[1])["upstreams"][0]["rules"][0]
            if daily["source"] == "provider" or time.time() > deadline:
                break
            time.sleep(0.01)
        assert daily["source"] == "provider"
        assert daily["used"] == 14986 and daily["remaining"] == 14
        assert daily["utilization"] == pytest.approx(14986 / 15000, abs=1e-4)
        assert daily["band"] == "critical"
        assert daily["window"] == "24h"
        p = daily["provider"]
        assert p["reported_remaining"] == 14 and p["reported_used"] == 14986
        assert p["sent_since"] == 0 and 0 <= p["age"] < 5
        # One more through sluice: the provider's figure moves with it.
        assert sl.request("GET", "/crm/second")[0] == 200
        deadline = time.time() + 1
        while True:
            daily = json.loads(admin_get(port, "/status")[1])["upstreams"][0]["rules"][0]
            if daily["used"] == 14987 or time.time() > deadline:
                break
            time.sleep(0.01)
        assert daily["used"] == 14987
        code, metrics = admin_get(port, "/metrics")
        line = [l for l in metrics.decode().splitlines()
                if l.startswith("sluice_rule_utilization_ratio{") and 'rule="daily"' in l]
        assert len(line) == 1 and float(line[0].split()[-1]) > 0.99, line
        # The 0.9 threshold alert fires on the provider's figure.
        got = rx.wait(1, "threshold", timeout=15)
        assert len(got) >= 1 and got[0]["rule"] == "daily", got
        # Spend the rest; the refusal speaks the provider's words.
        # (A call may be refused a moment early -- the safe side -- when a
        # report is slow to reach Redis: retry as a client would.)
        codes = []
        for i in range(20):
            if upstream.account["used"] == 15000:
                break
            codes.append(sl.request("GET", "/crm/x%d" % i)[0])
        assert codes.count(200) == 13 and 403 not in codes, codes
        status, h, body = sl.request("GET", "/crm/over")
        assert status == 429
        msg = json.loads(body)["message"]
        # The provider's last report and, if the last call's report has not
        # reached the store yet (Redis: the next call may be decided
        # first), the call sent since: 15,000 either way.
        m = re.search(r"the provider reports (\d+) of 15000 calls per 24h used \(as of "
                      r"[0-9T:-]+Z\)(?:, and (\d+) sent through sluice since)?: ", msg)
        assert m and int(m.group(1)) + int(m.group(2) or 0) == 15000, msg
        assert upstream.account["used"] == 15000
    finally:
        rx.close()
        if redis:
            redis.stop()


def test_the_page_shows_the_providers_figure_and_who_was_refused(upstream, sluice):
    """What a person sees: the bar at the provider's count with where it
    comes from, and the app that was refused."""
    import chromium
    from harness import free_port
    upstream.account = {"used": 14985, "max": 15000, "format": "sforce"}
    port = free_port()
    c = conf(upstream)
    c["admin"] = {"listen": "127.0.0.1:%d" % port}
    c["app"] = "header:X-App"
    sl = sluice(c)
    for i in range(15):
        assert sl.request("GET", "/crm/a%d" % i, headers={"X-App": "sync"})[0] == 200
    for i in range(3):
        assert sl.request("GET", "/crm/b%d" % i, headers={"X-App": "reports"})[0] == 429
    root = chromium.parse(chromium.dump_dom("http://127.0.0.1:%d/" % port, wait_ms=1000))
    daily = root.find(cls="rule", data_rule="daily")
    assert daily.find(cls="figures").text == "15,000 / 15,000 (100.0%)"
    assert daily["data-band"] == "critical"
    note = daily.find(cls="note").text
    assert "reported by the provider" in note and "0 through sluice since" in note, note
    assert "refused: reports 3" in note, note
    # A full rolling window says when room comes back, not that it resets.
    assert daily.find(cls="resets").text.startswith("room again in "), daily
    # The same refusals in /status and /metrics.
    st = json.loads(admin_get(port, "/status")[1])
    assert st["upstreams"][0]["rules"][0]["refused_per_app"] == {"reports": 3}
    metrics = admin_get(port, "/metrics")[1].decode()
    assert 'sluice_app_denied_total{upstream="crm",rule="daily",app="reports"} 3' in metrics


def test_held_calls_are_counted_by_app(upstream, sluice):
    import threading
    import time
    from harness import free_port
    port = free_port()
    sl = sluice({"app": "header:X-App", "admin": {"listen": "127.0.0.1:%d" % port},
                 "upstreams": [{"name": "crm", "prefix": "/crm", "url": upstream.url,
                                "on_limit": "queue", "max_wait": "20s",
                                "rules": [{"name": "w", "limit": 1, "window": "3s"}]}]})
    assert sl.request("GET", "/crm/a", headers={"X-App": "sync"})[0] == 200
    got = []
    ts = [threading.Thread(target=lambda i=i: got.append(sl.request(
        "GET", "/crm/h%d" % i, headers={"X-App": "sync" if i else "ui"}, timeout=30)[0]))
        for i in range(3)]
    for t in ts:
        t.start()
    deadline = time.time() + 5
    while time.time() < deadline:
        st = json.loads(admin_get(port, "/status")[1])
        if sum(st["queue_by_app"].values()) == 3:
            break
        time.sleep(0.05)
    assert st["queue_by_app"] == {"sync": 2, "ui": 1}
    metrics = admin_get(port, "/metrics")[1].decode()
    assert 'sluice_app_queue_depth{app="sync"} 2' in metrics
    assert 'sluice_app_queue_depth{app="ui"} 1' in metrics
    for t in ts:
        t.join(30)
    assert got == [200] * 3
    assert json.loads(admin_get(port, "/status")[1])["queue_by_app"] == {}
