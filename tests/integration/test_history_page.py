"""The usage history on the page, as a person sees it (headless Chromium,
see chromium.py and test_admin_page.py): a chart per rate rule whose bars
add up to the calls sent, per app, with a legend naming the apps, the
limit's even-pace line and the warn/critical tints.

SLUICE_SCREENSHOT=1 also writes docs/usage-history.png."""
import os
import shutil
import tempfile
import time

import chromium
from harness import ROOT, RedisServer, Upstream
from test_admin_page import Sluices, png_size, sluices  # noqa: F401 (fixture)


def send(sl, app, path):
    return sl.request("GET", path, headers={"X-Sluice-App": app})[0]


def chart(root, rule):
    return root.find(cls="rule", data_rule=rule).find(cls="history")


def drawn(hist):
    """Calls per app as drawn: the data-n of every bar segment, added up."""
    out = {}
    for seg in hist.find_all("rect", cls="seg"):
        out[seg["data-app"]] = out.get(seg["data-app"], 0) + int(seg["data-n"])
    return out


def legend(hist):
    return {li["data-app"]: li.text for li in hist.find_all("li", cls="happ")}


def test_chart_per_rule_shows_the_calls_by_app(upstream, sluices):
    sl = sluices.start({"upstreams": [{"name": "crm", "prefix": "/crm", "url": upstream.url,
                                       "rules": [
        {"name": "daily", "limit": 15000, "window": "24h"},
        {"name": "burst", "path": "/a/**", "limit": 100, "window": "5m"},
        {"name": "inflight", "concurrency": 2}]}]})
    for app, n in (("billing", 6), ("crm-sync", 3), ("reports", 1)):
        for _ in range(n):
            assert send(sl, app, "/crm/a/x") == 200
    assert send(sl, "billing", "/crm/b") == 200
    root = chromium.parse(chromium.dump_dom(sl.page, wait_ms=1500))

    daily = chart(root, "daily")
    assert daily is not None and daily["data-history"] == "daily"
    # A 24 h rule: 96 bars of 15 minutes; the bars hold every call sent.
    assert len(daily.find_all("g", cls="bar")) == 96
    assert drawn(daily) == {"billing": 7, "crm-sync": 3, "reports": 1}
    assert legend(daily) == {"billing": "billing: 7", "crm-sync": "crm-sync: 3",
                             "reports": "reports: 1"}
    # The calls are in the newest bars (the last, or the one before if a
    # 15-minute boundary passed between the calls and the render).
    bars = daily.find_all("g", cls="bar")
    assert sum(int(b["data-calls"]) for b in bars[-2:]) == 11
    assert "even pace, 156 per 15 min" in daily.find(cls="caption").text
    assert daily.find("line", cls="pace") is not None
    assert daily.find("rect", cls="band-warn") is not None
    assert daily.find("rect", cls="band-critical") is not None

    # A 5-minute rule: an hour of minute bars; only the calls on its path.
    burst = chart(root, "burst")
    assert len(burst.find_all("g", cls="bar")) == 60
    assert drawn(burst) == {"billing": 6, "crm-sync": 3, "reports": 1}
    assert "calls per min, last 1 h" in burst.find(cls="caption").text
    # Concurrency rules have no history, hence no chart.
    assert root.find(cls="rule", data_rule="inflight").find(cls="history") is None


def test_chart_of_a_rule_without_calls_says_so(upstream, sluices):
    sl = sluices.start({"upstreams": [{"name": "crm", "prefix": "/crm", "url": upstream.url,
                                       "rules": [{"name": "daily", "limit": 10,
                                                  "window": "24h"}]}]})
    root = chromium.parse(chromium.dump_dom(sl.page, wait_ms=1500))
    daily = chart(root, "daily")
    assert drawn(daily) == {}
    assert "no calls sent in this span" in daily.find(cls="legend").text


def test_screenshot_of_a_fleet_history(sluices):
    """Two instances on one Redis; the day before the test is written into
    Redis as the instances would have (hashes of app counts per rule and
    minute), then real calls go through both.  The chart shows the day:
    a night's trickle, a morning sync burst over the even pace, billing's
    export.  Written to docs/usage-history.png when SLUICE_SCREENSHOT=1."""
    redis = RedisServer()
    crm = Upstream()
    try:
        config = {"store": redis.url, "upstreams": [
            {"name": "crm", "prefix": "/crm", "url": crm.url, "rules": [
                {"name": "api-daily", "limit": 15000, "window": "24h"},
                {"name": "logins", "path": "/oauth/token", "limit": 100, "window": "5m"}]}]}
        a = sluices.start(config)
        b = sluices.start(config)
        now_min = int(time.time() // 60)
        pipe = []
        for m in range(now_min - 1439, now_min):
            hour = (m % 1440) / 60.0
            apps = {"crm-sync": 3 if hour < 6 else 9, "reports": 1 if 8 <= hour < 18 else 0}
            if 6 <= hour < 7:
                apps["crm-sync"] = 40  # the morning full sync
            if 13 <= hour < 14:
                apps["billing"] = 25  # billing's export
            for app, n in apps.items():
                if n:
                    pipe.append("HINCRBY sluice:{crm}:y:9:api-daily:%d %s %d" % (m, app, n))
            if m % 7 == 0:
                pipe.append("HINCRBY sluice:{crm}:y:6:logins:%d crm-sync 2" % m)
        script = "\n".join(pipe) + "\n"
        import subprocess
        subprocess.run(["redis-cli", "-p", str(redis.port)], input=script, text=True,
                       capture_output=True, check=True, timeout=60)
        for i in range(30):
            assert send(a if i % 2 else b, ("billing", "crm-sync", "reports")[i % 3],
                        "/crm/oauth/token" if i % 5 == 0 else "/crm/contacts") == 200
        # The instances write every 2 s: wait for both writes.
        time.sleep(2.5)
        root = chromium.parse(chromium.dump_dom(a.page, wait_ms=1500, env={"TZ": "UTC"}))
        daily = chart(root, "api-daily")
        got = drawn(daily)
        assert set(got) == {"billing", "crm-sync", "reports"}
        # Yesterday's counts plus the 30 calls just made through both.
        assert sum(got.values()) > 30
        assert set(legend(chart(root, "logins"))) >= {"crm-sync"}
        path = os.path.join(tempfile.mkdtemp(prefix="sluice-shot-"), "usage-history.png")
        try:
            chromium.screenshot(a.page, path, size=(1280, 700), wait_ms=1500,
                                env={"TZ": "UTC"})
            assert png_size(path) == (1280, 700)
            if os.environ.get("SLUICE_SCREENSHOT") == "1":
                shutil.copyfile(path, os.path.join(ROOT, "docs", "usage-history.png"))
        finally:
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    finally:
        sluices.stop_all()
        crm.close()
        redis.stop()
