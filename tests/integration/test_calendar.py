"""Calendar windows through the binary: "reset": "calendar" counts calls
since the last boundary and gives room back at the next one, in UTC, at a
fixed offset or in a zone from the system's zone files; "1mo" is a
calendar month.  With the memory store and with Redis (time from Redis)."""
import json
import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from harness import Sluice, upstream_config


def start(up, rule, store, **top):
    return Sluice(upstream_config(up, [dict({"name": "quota"}, **rule)], store, name="crm",
                                  prefix="/crm", admin=True, top=top))


def wait_until_after_boundary(period, after):
    """Sleep until AFTER seconds past the next multiple of PERIOD (Unix
    time): periods of a span that divides a day are aligned to midnight,
    so in UTC to multiples of the span."""
    now = time.time()
    target = (now // period + 1) * period + after
    time.sleep(target - now)
    return target - after


def test_short_calendar_window_resets_at_the_boundary(upstream, store):
    # 3 calls per calendar period of 4 s (UTC: boundaries at multiples of
    # 4 s).  Each burst is sent 0.3 s after a boundary and takes a few ms,
    # so it fits in its period with more than 3 s to spare on a slow
    # machine.
    sl = start(upstream, {"limit": 3, "window": "4s", "reset": "calendar"}, store)
    try:
        b = wait_until_after_boundary(4, 0.3)
        got = [sl.request("GET", "/crm/x") for _ in range(4)]
        assert [g[0] for g in got] == [200, 200, 200, 429]
        # Room comes back at the boundary, not 4 s after the first call:
        # Retry-After is the time left in the period, rounded up.
        left = b + 4 - time.time()
        assert int(got[3][1]["retry-after"]) == pytest.approx(left, abs=1.0)
        body = json.loads(got[3][2])
        assert body["error"] == "rate_limited" and body["rule"] == "quota"
        # The next period: three more.
        wait_until_after_boundary(4, 0.3)
        assert [sl.request("GET", "/crm/x")[0] for _ in range(4)] == [200, 200, 200, 429]
        assert upstream.count() == 6
    finally:
        sl.stop()


def test_margin_counts_calls_sent_just_before_the_boundary(upstream, store):
    # A call sent within the margin before a boundary may reach the
    # provider after it: it counts in the new period too.
    sl = Sluice(upstream_config(upstream, [{"name": "quota", "limit": 2, "window": "4s",
                                            "reset": "calendar"}],
                                store, name="crm", prefix="/crm", margin="1s"))
    try:
        wait_until_after_boundary(4, 3.4)       # 0.6 s before the next one
        assert sl.request("GET", "/crm/x")[0] == 200
        wait_until_after_boundary(4, 0.3)
        # One of two already counted in this period.
        assert [sl.request("GET", "/crm/x")[0] for _ in range(2)] == [200, 429]
    finally:
        sl.stop()


def seconds_to(dt):
    return (dt - datetime.now(timezone.utc)).total_seconds()


@pytest.mark.parametrize("tz", ["+05:30", "Asia/Kolkata"])
def test_hour_in_a_half_hour_zone(upstream, store, tz):
    # In India hours start at :30 UTC.  The 429's Retry-After, RateLimit t=
    # and /status all point at the next :30.
    sl = start(upstream, {"limit": 1, "window": "1h", "reset": "calendar",
                          "timezone": tz}, store)
    try:
        assert sl.request("GET", "/crm/x")[0] == 200
        code, headers, _ = sl.request("GET", "/crm/x")
        assert code == 429
        now = datetime.now(timezone.utc)
        nxt = now.replace(minute=30, second=0, microsecond=0)
        if nxt <= now:
            nxt += timedelta(hours=1)
        want = seconds_to(nxt)
        assert int(headers["retry-after"]) == pytest.approx(want, abs=2)
        assert "t=%s" % headers["retry-after"] in headers["ratelimit"]
        st = json.loads(sl.admin("GET", "/status")[2])
        r = st["upstreams"][0]["rules"][0]
        assert (r["reset"], r["timezone"], r["used"]) == ("calendar", tz, 1)
        assert r["resets_in"] == pytest.approx(want, abs=2)
    finally:
        sl.stop()


def test_month_in_a_dst_zone(upstream, store):
    # A monthly quota in New York: Retry-After points at midnight on the
    # 1st, New York time (the offset of that date, not today's).
    sl = start(upstream, {"limit": 2, "window": "1mo", "timezone": "America/New_York"},
               store, max_retry_after="0s")
    try:
        assert [sl.request("GET", "/crm/x")[0] for _ in range(3)] == [200, 200, 429]
        code, headers, _ = sl.request("GET", "/crm/x")
        ny = ZoneInfo("America/New_York")
        local = datetime.now(ny)
        first = datetime(local.year + (local.month == 12), local.month % 12 + 1, 1,
                         tzinfo=ny)
        assert int(headers["retry-after"]) == pytest.approx(seconds_to(first), abs=2)
    finally:
        sl.stop()


def test_calendar_config_errors(tmp_path):
    import subprocess
    from harness import SLUICE_BIN
    rules = [
        ({"limit": 1, "window": "7h", "reset": "calendar"}, "a calendar window divides a day"),
        ({"limit": 1, "window": "1d", "timezone": "UTC"}, "only calendar windows have a time zone"),
        ({"limit": 1, "window": "1d", "reset": "calendar", "timezone": "Mars/Olympus"},
         "no such time zone"),
        ({"limit": 1, "window": "1d", "reset": "calendar", "timezone": "+2"},
         "a fixed offset is written"),
        ({"limit": 1, "window": "1mo", "reset": "rolling"}, "is a calendar month"),
        ({"limit": 1, "window": "1d", "reset": "weekly"}, "must be \"rolling\" or \"calendar\""),
    ]
    for rule, message in rules:
        cfg = {"upstreams": [{"name": "u", "prefix": "/u", "url": "http://127.0.0.1:1",
                              "rules": [dict({"name": "r"}, **rule)]}]}
        path = tmp_path / "c.json"
        path.write_text(json.dumps(cfg))
        r = subprocess.run([SLUICE_BIN, "-c", str(path), "--check"],
                           capture_output=True, text=True)
        assert r.returncode == 1 and message in r.stderr, (rule, r.stderr)
        assert "upstreams[0].rules[0]." in r.stderr
