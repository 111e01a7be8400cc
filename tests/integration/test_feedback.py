"""Upstream feedback: the provider says stop, or says how much is left."""
import email.utils
import json
import threading
import time

from harness import parallel, upstream_config, wait_for


def crm(up, rules, store=None, **options):
    """One upstream "crm" at /crm."""
    return upstream_config(up, rules, store, name="crm", prefix="/crm", **options)


def ok_count(up):
    with up.lock:
        return sum(1 for r in up.records if r.status == 200)


def test_429_with_retry_after_pauses_the_upstream(upstream, sluice, store):
    sl = sluice(crm(upstream, store=store, rules=[{"name": "all", "limit": 100, "window": "1m"}]))
    upstream.script = [{"status": 429, "headers": ["Retry-After: 2"], "body": b"slow down"}]
    status, h, body = sl.request("GET", "/crm/a")
    assert status == 429 and body == b"slow down"  # passed on unchanged
    status, h, body = sl.request("GET", "/crm/b")
    assert status == 429
    assert h["retry-after"] in ("1", "2")
    e = json.loads(body)
    assert e["error"] == "upstream_paused" and e["rule"] == "upstream-pause"
    assert upstream.count() == 1  # the paused call never left
    time.sleep(2.05)
    assert sl.request("GET", "/crm/c")[0] == 200


def test_http_date_retry_after_on_503(upstream, sluice, store):
    sl = sluice(crm(upstream, store=store, rules=[]))
    when = email.utils.formatdate(time.time() + 3, usegmt=True)
    upstream.script = [{"status": 503, "headers": ["Retry-After: " + when]}]
    assert sl.request("GET", "/crm/a")[0] == 503
    status, h, body = sl.request("GET", "/crm/b")
    assert status == 429 and 1 <= int(h["retry-after"]) <= 3
    # A 503 without Retry-After is an error, not a limit: no pause.
    time.sleep(int(h["retry-after"]) + 0.1)
    upstream.script = [{"status": 503}]
    assert sl.request("GET", "/crm/c")[0] == 503
    assert sl.request("GET", "/crm/d")[0] == 200


def test_limit_signal_in_a_403_body(upstream, sluice, store):
    sl = sluice(crm(upstream, store=store, rules=[], limit_signals=[
        {"status": 403, "body_contains": "REQUEST_LIMIT_EXCEEDED", "pause": "1500ms"}]))
    upstream.script = [{"status": 403, "body": b'[{"errorCode":"INSUFFICIENT_ACCESS"}]'}]
    assert sl.request("GET", "/crm/a")[0] == 403
    assert sl.request("GET", "/crm/b")[0] == 200  # another 403: no pause
    upstream.script = [{"status": 403, "body": b'[{"message":"TotalRequests Limit exceeded.",'
                                               b'"errorCode":"REQUEST_LIMIT_EXCEEDED"}]'}]
    status, h, body = sl.request("GET", "/crm/c")
    assert status == 403 and b"REQUEST_LIMIT_EXCEEDED" in body
    status, h, body = sl.request("GET", "/crm/d")
    assert status == 429 and h["retry-after"] in ("1", "2")
    time.sleep(1.6)
    assert sl.request("GET", "/crm/e")[0] == 200
    assert "signalled a limit (status 403, a configured limit signal)" in sl.read_log()


def test_retry_on_limit_gives_the_client_one_success(upstream, sluice, store):
    sl = sluice(crm(upstream, store=store, rules=[], retry_on_limit=True))
    upstream.script = [{"status": 429, "headers": ["Retry-After: 1"]}]
    t0 = time.monotonic()
    status, h, body = sl.request("PUT", "/crm/obj", body=b'{"name":"x"}')
    assert status == 200
    assert time.monotonic() - t0 >= 0.95
    e = json.loads(body)
    assert e["method"] == "PUT" and e["body_len"] == 12
    assert upstream.count() == 2
    # POST is not idempotent: its 429 is passed on, not retried.
    upstream.script = [{"status": 429, "headers": ["Retry-After: 1"]}]
    time.sleep(0.05)
    assert sl.request("POST", "/crm/obj", body=b"{}")[0] == 429


def test_queued_calls_all_succeed_after_a_pause(upstream, sluice, store):
    sl = sluice(crm(upstream, store=store, rules=[{"name": "all", "limit": 100, "window": "1m"}],
                                       on_limit="queue", retry_on_limit=True))
    upstream.script = [{"status": 429, "headers": ["Retry-After: 1"]}]
    first = {}
    t = threading.Thread(target=lambda: first.setdefault(
        "r", sl.request("GET", "/crm/x?i=0", timeout=20)))
    t.start()
    # The others come once sluice has read the 429: a call decided before
    # that was sent before the provider said stop, and may arrive after the
    # 429 left the provider (on a busy machine, by more than any stagger).
    assert "signalled a limit" in sl.wait_log("signalled a limit")
    res = parallel(11, lambda i: (time.sleep(0.02 * i),
                                  sl.request("GET", "/crm/x?i=%d" % (i + 1), timeout=20))[1])
    t.join()
    assert first["r"][0] == 200 and [s for s, h, b in res] == [200] * 11
    assert ok_count(upstream) == 12
    first_429 = upstream.records[0].t
    assert all(r.t >= first_429 + 0.95 for r in upstream.records[1:])


def test_pause_is_shared_by_every_instance(upstream, redis, sluice):
    conf = crm(upstream, [{"name": "all", "limit": 1000, "window": "1m"}], redis.url,
               on_limit="queue", retry_on_limit=True)
    instances = [sluice(conf) for _ in range(3)]
    upstream.script = [{"status": 429, "headers": ["Retry-After: 2"]}]
    first = {}
    t = threading.Thread(target=lambda: first.setdefault(
        "r", instances[0].request("GET", "/crm/first", timeout=20)))
    t.start()
    # The 429 has paused the upstream for every instance: in Redis.
    assert wait_for(lambda: redis.cli("EXISTS", "sluice:{crm}:p:14:upstream-pause:") == "1")
    res = parallel(15, lambda i: instances[i % 3].request("GET", "/crm/x", timeout=20))
    t.join()
    statuses = [s for s, h, b in res]
    assert first["r"][0] == 200 and statuses == [200] * 15
    t429 = upstream.records[0].t
    assert all(r.t >= t429 + 1.95 for r in upstream.records[1:])
    # Clients saw 16 successes; the upstream served exactly 16, plus the 429.
    assert ok_count(upstream) == 16 and upstream.count() == 17
    assert int(redis.cli("EXISTS", "sluice:{crm}:p:14:upstream-pause:")) == 1


def test_usage_report_leaves_exactly_what_the_provider_says(upstream, sluice, store):
    sl = sluice(crm(upstream, store=store, rules=[
        {"name": "daily", "limit": 15000, "window": "24h", "sync": "sforce-limit-info"}]))
    upstream.script = [{"status": 200, "headers": ["Sforce-Limit-Info: api-usage=14990/15000"]}]
    assert sl.request("GET", "/crm/a")[0] == 200
    statuses = [sl.request("GET", "/crm/b")[0] for _ in range(11)]
    assert statuses == [200] * 10 + [429]
    status, h, body = sl.request("GET", "/crm/c")
    assert json.loads(body)["rule"] == "daily"


def test_other_usage_formats(upstream, sluice, store):
    conf = crm(upstream, store=store, rules=[{"name": "shop", "limit": 40, "window": "1m", "sync": "shopify"}])
    conf["upstreams"] += [
        {"name": "x", "prefix": "/x", "url": upstream.url,
         "rules": [{"name": "x", "limit": 50, "window": "1m", "sync": "x-ratelimit"}]},
        {"name": "ietf", "prefix": "/ietf", "url": upstream.url,
         "rules": [{"name": "i", "limit": 50, "window": "1m", "sync": "ratelimit"}]},
    ]
    sl = sluice(conf)
    upstream.script = [{"headers": ["X-Shopify-Shop-Api-Call-Limit: 38/40"]}]
    assert [sl.request("GET", "/crm/a")[0] for _ in range(4)] == [200, 200, 200, 429]
    upstream.script = [{"headers": ["X-RateLimit-Limit: 50", "X-RateLimit-Remaining: 1"]}]
    assert [sl.request("GET", "/x/a")[0] for _ in range(3)] == [200, 200, 429]
    upstream.script = [{"headers": ['RateLimit: "default";r=0;t=30',
                                    'RateLimit-Policy: "default";q=50;w=60']}]
    assert [sl.request("GET", "/ietf/a")[0] for _ in range(2)] == [200, 429]


def test_malformed_usage_reports_are_ignored(upstream, sluice, store):
    sl = sluice(crm(upstream, store=store, rules=[
        {"name": "daily", "limit": 5, "window": "1m", "sync": "sforce-limit-info"}]))
    upstream.script = [{"headers": ["Sforce-Limit-Info: api-usage=lots/15000"]},
                       {"headers": ["Sforce-Limit-Info: per-app-api-usage=4/5"]}]
    assert [sl.request("GET", "/crm/a")[0] for _ in range(6)] == [200] * 5 + [429]
    assert "ignored a malformed usage report" in sl.read_log()
