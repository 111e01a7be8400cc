"""The usage history (GET /history): calls per minute per app over the last
24 hours, per rate rule, against the real binary, a recording upstream and
a real redis-server shared by two instances."""
import json
import time

from harness import upstream_config
from test_admin import admin_get

TOKEN = "s3cret-admin-token-0123"


def history(sl, query="", headers=None):
    code, hdrs, body = admin_get(sl, "/history" + query, headers)
    assert code == 200, body
    assert hdrs["content-type"].startswith("application/json")
    return json.loads(body)


def hrule(doc, name, upstream="crm"):
    up = next(u for u in doc["upstreams"] if u["name"] == upstream)
    return next(r for r in up["rules"] if r["name"] == name)


def per_app(r):
    """Calls per app, added up over every minute of the rule's history."""
    out = {}
    for m in r["minutes"]:
        for app, n in m["apps"].items():
            out[app] = out.get(app, 0) + n
    return out


def start(sluice, up, rules, store=None, admin=None):
    return sluice(upstream_config(up, rules, store, name="crm", prefix="/crm",
                                  admin=admin or True, top={"app": "header:X-Sluice-App"}))


def call(sl, path, app=None):
    return sl.request("GET", path, headers={"X-Sluice-App": app} if app else {})


RULES = [
    {"name": "daily", "limit": 20, "window": "1h"},
    {"name": "per-pub", "path": "/pub/{p}/*", "per": "{p}", "limit": 3, "window": "1h"},
    {"name": "conc", "concurrency": 5},
]


def test_history_counts_sent_calls_per_app_and_minute(upstream, sluice):
    sl = start(sluice, upstream, RULES)
    before = time.time()
    for app, n in (("billing", 4), ("crm-sync", 2)):
        for _ in range(n):
            assert call(sl, "/crm/x", app)[0] == 200
    # per-pub: 3 calls to p1 fit, the 4th is refused; 1 to p2.
    codes = [call(sl, "/crm/pub/p1/a", "leads")[0] for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    assert call(sl, "/crm/pub/p2/a", "leads")[0] == 200
    after = time.time()
    assert upstream.count() == 10

    doc = history(sl)
    assert doc["minutes"] == 1440 and doc["figures"] == "shared"
    assert doc["bands"] == {"warn": 0.8, "critical": 0.9}
    daily = hrule(doc, "daily")
    assert daily["limit"] == 20 and daily["window"] == "1h" and daily["per"] is None
    # Every call sent, none of the refused one, split by app, busiest first.
    assert daily["calls"] == upstream.count() == 10
    assert daily["apps"] == {"billing": 4, "leads": 4, "crm-sync": 2}
    assert list(daily["apps"]) == ["billing", "leads", "crm-sync"]
    assert per_app(daily) == daily["apps"]
    # Minutes are the minutes the calls were sent in (the test's clock and
    # sluice's are the same machine's).
    for m in daily["minutes"]:
        assert int(before // 60) * 60 <= m["t"] <= int(after // 60) * 60
        assert m["calls"] == sum(m["apps"].values())
    # A `per` rule's history is its total across keys.
    pub = hrule(doc, "per-pub")
    assert pub["per"] == "{p}"
    assert pub["calls"] == 4 and pub["apps"] == {"leads": 4}
    # Concurrency rules keep no history.
    assert [r["name"] for r in doc["upstreams"][0]["rules"]] == ["daily", "per-pub"]


def test_history_apps_add_up_to_what_the_upstream_got(upstream, sluice):
    sl = start(sluice, upstream, [{"name": "daily", "limit": 100, "window": "1h"}])
    for app, n in (("billing", 5), ("crm-sync", 3), (None, 2)):
        for _ in range(n):
            assert call(sl, "/crm/x", app)[0] == 200
    d = hrule(history(sl, "?upstream=crm&rule=daily"), "daily")
    assert d["apps"] == {"billing": 5, "crm-sync": 3, "-": 2}
    assert list(d["apps"]) == ["billing", "crm-sync", "-"]
    assert d["calls"] == upstream.count() == 10
    # Rejected calls consume nothing, and show nothing.
    sl2 = start(sluice, upstream, [{"name": "tiny", "limit": 2, "window": "1h"}])
    codes = [call(sl2, "/crm/x", "a")[0] for _ in range(5)]
    assert codes == [200, 200, 429, 429, 429]
    assert hrule(history(sl2), "tiny")["apps"] == {"a": 2}


def test_history_bad_queries_get_a_clear_json_answer(upstream, sluice):
    sl = start(sluice, upstream, RULES)
    cases = [
        ("?rule=daily", 400, "needs upstream"),
        ("?upstream=crm&bogus=1", 400, "not \"bogus\""),
        ("?upstream=crm&upstream=crm", 400, "once"),
        ("?upstream=nope", 404, "no upstream is named \"nope\""),
        ("?upstream=crm&rule=nope", 404, "has no rule named \"nope\""),
        ("?upstream=crm&rule=conc", 400, "only rate rules"),
        ("?upstream=%ff%00&rule=%22", 404, "no upstream"),
    ]
    for query, want, text in cases:
        code, hdrs, body = admin_get(sl, "/history" + query)
        assert code == want, (query, body)
        assert hdrs["content-type"] == "application/json"
        j = json.loads(body)
        assert text in j["message"], (query, j)
    # Still serving after all of them.
    assert hrule(history(sl, "?upstream=crm"), "daily")["calls"] == 0


def test_history_needs_the_token_like_status(upstream, sluice):
    sl = start(sluice, upstream, RULES, admin={"token": TOKEN})
    assert call(sl, "/crm/x", "a")[0] == 200
    code, hdrs, body = admin_get(sl, "/history")
    assert code == 401 and json.loads(body)["error"] == "unauthorized"
    doc = history(sl, headers={"Authorization": "Bearer " + TOKEN})
    assert hrule(doc, "daily")["apps"] == {"a": 1}


def wait_history(sl, name, want, timeout=10):
    """The history of rule NAME once its per-app totals are WANT.  The
    instances write to Redis every 2 s (SL_REDIS_HISTORY_EVERY_MS) on
    worker 0's loop: 10 s is five write periods, ample on a busy machine."""
    deadline = time.time() + timeout
    while True:
        d = hrule(history(sl), name)
        if d["apps"] == want or time.time() > deadline:
            return d
        time.sleep(0.2)


def test_two_redis_instances_share_one_history(upstream, sluice, redis):
    a = start(sluice, upstream, RULES, store=redis.url)
    b = start(sluice, upstream, RULES, store=redis.url)
    for _ in range(3):
        assert call(a, "/crm/x", "billing")[0] == 200
    for _ in range(2):
        assert call(b, "/crm/x", "crm-sync")[0] == 200
    assert call(b, "/crm/pub/p1/a", "billing")[0] == 200
    want = {"billing": 4, "crm-sync": 2}
    da = wait_history(a, "daily", want)
    db = wait_history(b, "daily", want)
    assert da["apps"] == db["apps"] == want
    assert da["calls"] == upstream.count() == 6
    assert da["minutes"] == db["minutes"]
    assert hrule(history(a), "per-pub")["apps"] == {"billing": 1}
    assert history(a)["figures"] == "shared"
    # One hash per rule and minute, living 25 hours (24 shown + slack).
    keys = redis.cli("--scan", "--pattern", "*:y:*").split()
    assert keys and all(":y:5:daily:" in k or ":y:7:per-pub:" in k for k in keys)
    for k in keys:
        ttl = int(redis.cli("TTL", k))
        assert 25 * 3600 - 60 <= ttl <= 25 * 3600
    # More calls: added on top, never written twice.
    assert call(a, "/crm/x", "billing")[0] == 200
    want = {"billing": 5, "crm-sync": 2}
    assert wait_history(b, "daily", want)["apps"] == want
    time.sleep(2.5)  # one more write period: nothing is written again
    assert hrule(history(b), "daily")["apps"] == want


def test_redis_history_falls_back_to_the_instances_own(upstream, sluice, redis):
    a = start(sluice, upstream, RULES, store=redis.url)
    for _ in range(2):
        assert call(a, "/crm/x", "billing")[0] == 200
    redis.kill()
    doc = history(a)
    assert doc["figures"] == "local"
    assert hrule(doc, "daily")["apps"] == {"billing": 2}
