"""Shadow rules: matched and counted like enforced ones, reported when they
would have denied, never denying, queueing or delaying a call; with the
memory store and with Redis."""
import json
import time

from harness import upstream_config
from test_admin import admin_get, rule, status


def shadow_config(up, store=None, **top):
    return upstream_config(up, [
        {"name": "new-limit", "limit": 3, "window": "1h", "mode": "shadow"},
        {"name": "new-conc", "concurrency": 1, "mode": "shadow"},
        {"name": "enforced", "limit": 100, "window": "1h"}],
        store, name="crm", prefix="/crm", admin=True,
        top=dict({"app": "header:X-Sluice-App"}, **top),
        on_limit="queue", max_wait="5s")


def test_shadow_rule_denies_nothing_and_reports(upstream, sluice, store):
    cfg = shadow_config(upstream, store)
    sl = sluice(cfg)
    t0 = time.monotonic()
    codes = [sl.request("GET", "/crm/x", headers={"X-Sluice-App": "a"})[0]
             for _ in range(8)]
    elapsed = time.monotonic() - t0
    # Nothing denied, nothing held: 8 answers from the upstream at once
    # (a held call would wait; queue mode is on).
    assert codes == [200] * 8 and upstream.count() == 8
    assert elapsed < 2.0, elapsed
    st = status(sl)
    shadow = rule(st, "new-limit")
    assert shadow["mode"] == "shadow"
    # Counted as enforcement would have: 3 admitted, 5 it would deny.
    assert shadow["used"] == 3 and shadow["remaining"] == 0
    assert shadow["band"] == "critical"
    assert shadow["shadow_denied"] == 5
    assert rule(st, "enforced")["used"] == 8
    assert rule(st, "enforced")["mode"] == "enforce"
    assert "shadow_denied" not in rule(st, "enforced")
    log = sl.wait_log(" access ", count=8)
    lines = [l for l in log.splitlines() if " access " in l]
    assert len(lines) == 8
    assert sum("shadow_denied=new-limit" in l for l in lines) == 5
    assert all("outcome=forwarded" in l for l in lines)
    _, _, m = admin_get(sl, "/metrics")
    assert ('sluice_decisions_total{upstream="crm",rule="new-limit",'
            'result="shadow_denied"} 5') in m.decode()
    assert ('sluice_decisions_total{upstream="crm",rule="new-limit",'
            'result="allowed"} 3') in m.decode()
    # The client never sees a shadow rule in RateLimit headers.
    _, h, _ = sl.request("GET", "/crm/x")
    assert "new-limit" not in h.get("ratelimit-policy", "")


def test_top_level_shadow_puts_every_rule_in_shadow(upstream, sluice, store):
    cfg = shadow_config(upstream, store, shadow=True)
    cfg["upstreams"][0]["rules"][2]["limit"] = 2
    sl = sluice(cfg)
    assert [sl.request("GET", "/crm/x")[0] for _ in range(5)] == [200] * 5
    st = status(sl)
    assert all(r["mode"] == "shadow" for r in st["upstreams"][0]["rules"])
    assert rule(st, "enforced")["shadow_denied"] == 3


def test_shadow_concurrency_rule_never_holds(upstream, sluice, store):
    import threading
    cfg = shadow_config(upstream, store)
    sl = sluice(cfg)
    res = []
    ts = [threading.Thread(target=lambda: res.append(sl.request(
        "GET", "/crm/slow", headers={"X-Test-Delay": "1"})[0])) for _ in range(3)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    # All three in flight together: a shadow concurrency limit of 1 held
    # none of them (serialised they would take 3 s).
    assert res == [200] * 3 and upstream.max_active == 3
    assert time.monotonic() - t0 < 2.5
    assert rule(status(sl), "new-conc")["shadow_denied"] == 2


def test_mode_is_checked(tmp_path):
    import subprocess
    from harness import SLUICE_BIN
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"upstreams": [{"name": "a", "prefix": "/a",
                                            "url": "http://127.0.0.1:1",
                                            "rules": [{"name": "r", "limit": 1,
                                                       "window": "1s",
                                                       "mode": "dry-run"}]}]}))
    r = subprocess.run([SLUICE_BIN, "--check", "-c", str(p)], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 1
    assert 'upstreams[0].rules[0].mode: "dry-run" must be "enforce" or "shadow"' in r.stderr
