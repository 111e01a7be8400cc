"""What one rule, one key and one client can take of the memory store.

A `per` rule gets a bucket per distinct key, and keys come from clients
(a header, a path segment).  These tests make one rule's keys as many and
as long as a client likes, and check that the damage stays in that rule:
other rules still get their buckets, long keys cost no more than short
ones, and a full rule says so.
"""
import http.client
import json

from harness import free_port


def get(sl, path, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", sl.port, timeout=10)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def status(sl):
    c = http.client.HTTPConnection("127.0.0.1", sl.admin_port, timeout=10)
    try:
        c.request("GET", "/status")
        r = c.getresponse()
        assert r.status == 200
        return json.loads(r.read())
    finally:
        c.close()


def start(sluice, up, **top):
    port = free_port()
    cfg = {"admin": {"listen": "127.0.0.1:%d" % port},
           "upstreams": [
               {"name": "a", "prefix": "/a", "url": up.url, "rules": [
                   {"name": "per-user", "per": "header:X-User", "limit": 5, "window": "1m",
                    "max_keys": 40},
                   {"name": "per-user-2", "path": "/two", "per": "header:X-User",
                    "limit": 5, "window": "1m"}]},
               {"name": "b", "prefix": "/b", "url": up.url, "rules": [
                   {"name": "b-all", "limit": 100, "window": "1m"},
                   {"name": "b-per", "per": "header:X-User", "limit": 5, "window": "1m"}]}]}
    cfg.update(top)
    sl = sluice(cfg)
    sl.admin_port = port
    return sl


def test_one_rules_keys_stay_within_max_keys(upstream, sluice):
    sl = start(sluice, upstream)
    # 24 KB keys, each distinct in its last bytes.
    big = "u" * 24000
    codes = [get(sl, "/a/x", {"X-User": big + str(i)}) for i in range(60)]
    assert [c for c, _ in codes[:40]] == [200] * 40
    assert [c for c, _ in codes[40:]] == [503] * 20
    body = json.loads(codes[-1][1])
    assert body["error"] == "limit_state_unavailable"
    assert 'rule "per-user"' in body["message"] and "max_keys" in body["message"]
    assert upstream.count() == 40
    # Existing keys keep working, and other rules, here and on another
    # upstream, still get new buckets.
    assert get(sl, "/a/x", {"X-User": big + "0"})[0] == 200
    assert get(sl, "/b/x", {"X-User": "fresh"})[0] == 200
    for i in range(5):
        assert get(sl, "/b/x", {"X-User": "other-%d" % i})[0] == 200


def test_a_long_key_is_one_short_bucket(upstream, sluice):
    sl = start(sluice, upstream)
    big = "k" * 24000
    for _ in range(5):
        assert get(sl, "/b/x", {"X-User": big})[0] == 200
    # The same key: the same bucket, now full.
    code, body = get(sl, "/b/x", {"X-User": big})
    assert code == 429 and json.loads(body)["rule"] == "b-per"
    # A key that differs only past the kept prefix is another bucket.
    assert get(sl, "/b/x", {"X-User": big[:-1] + "j"})[0] == 200
    st = status(sl)
    per = next(r for r in st["upstreams"][1]["rules"] if r["name"] == "b-per")
    keys = sorted(b["key"] for b in per["buckets"])
    assert len(keys) == 2
    for k in keys:
        assert len(k) <= 128 and k.startswith("k" * 80 + "~"), k
    assert keys[0] != keys[1]


def test_a_full_store_still_serves_rules_without_per(upstream, sluice):
    # The smallest memory_limit, and a per rule allowed far more keys than
    # fit in it.
    port = free_port()
    sl = sluice({"admin": {"listen": "127.0.0.1:%d" % port}, "memory_limit": "64KB",
                 "upstreams": [
                     {"name": "a", "prefix": "/a", "url": upstream.url, "rules": [
                         {"name": "per-user", "per": "header:X-User", "limit": 5,
                          "window": "1m", "max_keys": 100000}]},
                     {"name": "b", "prefix": "/b", "url": upstream.url, "rules": [
                         {"name": "b-all", "limit": 100, "window": "1m"},
                         {"name": "b-login", "path": "/login", "limit": 100,
                          "window": "1m"}]}]})
    codes = []
    for i in range(2000):
        code, body = get(sl, "/a/x", {"X-User": "flood-%d-%s" % (i, "z" * 100)})
        codes.append(code)
        if code != 200:
            break
    assert codes[-1] == 503, (len(codes), codes[-1])
    assert "memory_limit" in json.loads(body)["message"]
    assert len(codes) > 50  # buckets of ~350 bytes in 60 KB
    # Rules without per on another upstream make their first buckets now,
    # from the reserve the per rule could not take.
    assert get(sl, "/b/x")[0] == 200
    assert get(sl, "/b/login")[0] == 200
    assert get(sl, "/b/login")[0] == 200
