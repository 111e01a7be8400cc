"""Operator actions on an upstream's pause, on the admin listener:
POST /upstreams/NAME/pause ({"for": ..., "reason": ...} pauses by hand,
{"resume_in": ...} shortens, {"clear": true} clears) and DELETE
/upstreams/NAME/pause (clears).  Against the real binary, a recording
upstream, a webhook receiver, the memory store and a real redis-server
shared by two instances."""
import json
import threading
import time


from harness import upstream_config, wait_for
from test_admin import Receiver

TOKEN = "operator-token-0123456789"
FAR = "Fri, 31 Dec 9999 23:59:59 GMT"  # capped at 7 days by sluice
AUTH = {"Authorization": "Bearer " + TOKEN}


def start(sluice, upstream, store=None, rx=None, **up_extra):
    conf = upstream_config(upstream, [{"name": "all", "limit": 1000, "window": "1m"}], store,
                           name="crm", prefix="/crm", admin={"token": TOKEN}, **up_extra)
    if rx is not None:
        conf["alerts"] = [{"url": rx.url}]
    return sluice(conf)


def admin(sl, method, path, body=None, headers=None, auth=True):
    h = {"Content-Type": "application/json"} if body is not None else {"X-Sluice-Admin": "1"}
    if auth:
        h.update(AUTH)
    h.update(headers or {})
    code, headers, raw = sl.admin(method, path, body, h)
    return code, headers, json.loads(raw)


def paused(sl):
    return admin(sl, "GET", "/status")[2]["upstreams"][0]["paused"]


def provider_pause(sl, retry_after=FAR):
    """One call the provider answers 429 + Retry-After: the upstream pauses."""
    status, h, body = sl.request("GET", "/crm/limit", headers={
        "X-Test-Status": "429", "X-Test-Resp-Header": "Retry-After: " + retry_after})
    assert status == 429 and "retry-after" in h  # the provider's own answer
    # With Redis the pause is written behind the answer (another worker's
    # connection): an operator acts on what /status shows.
    assert wait_for(lambda: paused(sl) is not None)


def test_clear_a_far_future_pause_on_every_instance(upstream, redis, sluice):
    rx = Receiver()
    try:
        a = start(sluice, upstream, redis.url, rx)
        b = start(sluice, upstream, redis.url, rx)
        provider_pause(a)
        status, h, body = b.request("GET", "/crm/x")
        assert status == 429 and json.loads(body)["error"] == "upstream_paused"
        assert int(h["retry-after"]) == 3600  # max_retry_after's bound (the pause: 7 d)
        p = paused(b)
        assert p["set_by"] == "provider" and p["resumes_in"] > 6 * 86400
        # The provider's pause is announced once (the fleet's check, ~1 s).
        assert len(rx.wait(1, "pause")) == 1
        assert upstream.count() == 1

        status, h, got = admin(a, "DELETE", "/upstreams/crm/pause")
        assert status == 200, got
        assert got["action"] == "clear" and got["paused"] is None
        assert got["was"]["set_by"] == "provider" and got["was"]["resumes_in"] > 6 * 86400
        assert got["by"] == "127.0.0.1"
        # Instance B forwards again at once: the pause key is gone from Redis.
        assert b.request("GET", "/crm/y")[0] == 200
        assert a.request("GET", "/crm/z")[0] == 200
        assert paused(b) is None and paused(a) is None
        assert upstream.count() == 3

        # Clearing again changes nothing: 409, and no second alert.
        status, h, got = admin(b, "DELETE", "/upstreams/crm/pause")
        assert status == 409 and got["error"] == "not_paused"
        # Two alert checks (1 s apart) pass: exactly one operator alert, and
        # the cleared pause is not announced again by either instance.
        time.sleep(2.5)
        ops = rx.events("operator")
        assert len(ops) == 1 and len(rx.events("pause")) == 1
        assert ops[0]["action"] == "clear" and ops[0]["upstream"] == "crm"
        assert ops[0]["by"] == "127.0.0.1" and ops[0]["paused"] is None
        assert ops[0]["was"]["set_by"] == "provider"
        assert "cleared the pause of crm" in ops[0]["text"]
        log = a.read_log()
        assert "127.0.0.1 cleared the pause of upstream crm" in log
        # A new provider pause after the clear is announced as before.
        provider_pause(b, "30")
        assert len(rx.wait(2, "pause")) == 2
    finally:
        rx.close()


def test_clear_releases_held_calls_at_once(upstream, store, sluice):
    """Queue mode: calls held by the pause go as soon as it is cleared, on
    the instance that holds them (with Redis: not the one cleared on)."""
    a = start(sluice, upstream, store, on_limit="queue", max_wait="5m")
    b = start(sluice, upstream, store, on_limit="queue", max_wait="5m") if store else a
    # 120 s: held (under max_wait), and far longer than any margin below.
    provider_pause(a, "120")
    res = []
    threads = [threading.Thread(target=lambda i=i: res.append(
        b.request("GET", "/crm/held%d" % i, timeout=60))) for i in range(3)]
    for t in threads:
        t.start()
    assert wait_for(lambda: admin(b, "GET", "/status")[2]["upstreams"][0]["queue"]["depth"] == 3)
    assert upstream.count() == 1
    t0 = time.time()
    status, h, got = admin(a, "POST", "/upstreams/crm/pause", {"clear": True})
    assert status == 200 and got["paused"] is None
    for t in threads:
        t.join(30)
    took = time.time() - t0
    assert sorted(s for s, _, _ in res) == [200, 200, 200]
    # Woken by the clear (a room notice), not by their timer (120 s): the
    # bound is loose for a busy machine and still 60 times below the timer.
    assert took < 2.0
    assert upstream.count() == 4


def test_shorten_to_two_seconds(upstream, store, sluice):
    rx = Receiver()
    try:
        # Both instances alert: each action is still announced once, by
        # the instance that carried it out.
        a = start(sluice, upstream, store, rx)
        b = start(sluice, upstream, store, rx) if store else a
        provider_pause(a)
        t_sent = time.monotonic()  # the upstream's records are on this clock
        status, h, got = admin(a, "POST", "/upstreams/crm/pause", {"resume_in": "2s"})
        assert status == 200 and got["action"] == "shorten"
        assert 1.5 < got["paused"]["resumes_in"] <= 2.0
        assert got["paused"]["set_by"] == "provider"  # still the provider's pause
        # Shortening never lengthens: asking for 60 s now changes nothing.
        status, h, got = admin(a, "POST", "/upstreams/crm/pause", {"resume_in": "60s"})
        assert status == 409 and got["error"] == "ends_sooner"
        assert got["paused"]["resumes_in"] <= 2.0
        # Calls (on the other instance with Redis) pass after ~2 s, never
        # before: the store counts the 2 s from when it acted, which is after
        # t_sent.  Polled every 50 ms.
        first_ok = None
        while time.monotonic() < t_sent + 6:
            status, h, body = b.request("GET", "/crm/poll")
            if status == 200:
                first_ok = time.monotonic()
                break
            assert json.loads(body)["error"] == "upstream_paused"
            assert int(h["retry-after"]) <= 2
            time.sleep(0.05)
        assert first_ok is not None
        oks = [r.t for r in upstream.records if r.status == 200]
        assert oks and min(oks) >= t_sent + 2.0
        # 2 s plus the poll step, one admin round trip and a busy machine.
        assert first_ok < t_sent + 3.5
        ops = rx.wait(1, "operator")
        time.sleep(1.5)  # no second alert comes for the action
        assert len(rx.events("operator")) == 1 and ops[0]["action"] == "shorten"
        assert 0 < ops[0]["paused"]["resumes_in"] <= 2.0
    finally:
        rx.close()


def test_pause_by_hand(upstream, store, sluice):
    rx = Receiver()
    try:
        # Both instances alert: each action is still announced once, by
        # the instance that carried it out.
        a = start(sluice, upstream, store, rx)
        b = start(sluice, upstream, store, rx) if store else a
        reason = "maintenance <!channel> & co"
        status, h, got = admin(a, "POST", "/upstreams/crm/pause",
                               {"for": "10m", "reason": reason})
        assert status == 200 and got["action"] == "pause" and got["was"] is None
        assert got["paused"]["set_by"] == "operator" and got["paused"]["reason"] == reason
        assert 599 < got["paused"]["resumes_in"] <= 600
        # Every instance: a paused call never reaches the upstream.
        status, h, body = b.request("GET", "/crm/x")
        assert status == 429 and json.loads(body)["error"] == "upstream_paused"
        assert 598 <= int(h["retry-after"]) <= 600
        assert upstream.count() == 0
        p = paused(b)
        assert p["set_by"] == "operator" and p["reason"] == reason
        # Pausing by hand never shortens a pause.
        status, h, got = admin(a, "POST", "/upstreams/crm/pause", {"for": "1m"})
        assert status == 409 and got["error"] == "paused_longer"
        assert got["paused"]["set_by"] == "operator"
        # One alert, the operator's, escaped for chat; the pause is not
        # announced again as the provider's by the alert checks.
        ops = rx.wait(1, "operator")
        time.sleep(2.5)
        assert len(rx.events("operator")) == 1 and rx.events("pause") == []
        assert ops[0]["action"] == "pause" and ops[0]["reason"] == reason
        assert "&lt;!channel&gt; &amp; co" in ops[0]["text"]
        assert "<!channel>" not in ops[0]["text"]
        status, h, got = admin(b, "DELETE", "/upstreams/crm/pause")
        assert status == 200 and got["was"]["set_by"] == "operator"
        assert got["was"]["reason"] == reason
        assert a.request("GET", "/crm/y")[0] == 200
        assert len(rx.wait(2, "operator")) == 2
    finally:
        rx.close()


def test_bad_requests_get_clear_json_errors(upstream, sluice):
    rx = Receiver()
    try:
        sl = start(sluice, upstream, None, rx)
        path = "/upstreams/crm/pause"
        cases = [
            # (method, path, body, extra headers, auth, status, error)
            ("POST", path, {"for": "10m"}, {}, False, 401, "unauthorized"),
            ("DELETE", path, None, {}, False, 401, "unauthorized"),
            ("GET", path, None, {}, True, 405, "method_not_allowed"),
            ("PUT", path, {"for": "10m"}, {}, True, 405, "method_not_allowed"),
            # A simple cross-site POST (a form, text/plain): refused.
            ("POST", path, b'{"for": "10m"}', {"Content-Type": "text/plain"}, True,
             403, "forbidden"),
            ("DELETE", path, b"", {"Content-Type": "text/plain"}, True, 403, "forbidden"),
            ("POST", path, {"for": "10m"}, {"Host": "evil.example"}, True, 421,
             "misdirected"),
            ("POST", "/upstreams/nope/pause", {"for": "10m"}, {}, True, 404,
             "unknown_upstream"),
            ("DELETE", "/upstreams/nope/pause", None, {}, True, 404, "unknown_upstream"),
            ("POST", "/upstreams/crm", {"for": "10m"}, {}, True, 404, "not_found"),
            ("POST", "/upstreams/crm/pause/x", {"for": "10m"}, {}, True, 404, "not_found"),
            ("POST", path, b"", {}, True, 400, "bad_request"),
            ("POST", path, b"{not json", {}, True, 400, "bad_request"),
            ("POST", path, [], {}, True, 400, "bad_request"),
            ("POST", path, {}, {}, True, 400, "bad_request"),
            ("POST", path, {"for": "soon"}, {}, True, 400, "bad_request"),
            ("POST", path, {"for": "0s"}, {}, True, 400, "bad_request"),
            ("POST", path, {"for": "8d"}, {}, True, 400, "bad_request"),
            ("POST", path, {"for": -5}, {}, True, 400, "bad_request"),
            ("POST", path, {"for": "10m", "resume_in": "1s"}, {}, True, 400, "bad_request"),
            ("POST", path, {"resume_in": "1s", "reason": "x"}, {}, True, 400, "bad_request"),
            ("POST", path, {"for": "10m", "reason": "a\nforged log line"}, {}, True, 400,
             "bad_request"),
            ("POST", path, {"for": "10m", "reason": "x" * 81}, {}, True, 400, "bad_request"),
            ("POST", path, {"for": "10m", "reason": 5}, {}, True, 400, "bad_request"),
            ("POST", path, {"clear": False}, {}, True, 400, "bad_request"),
            ("POST", path, {"clear": True, "bogus": 1}, {}, True, 400, "bad_request"),
            ("POST", path, b'{"for": "1m", "for": "2m"}', {}, True, 400, "bad_request"),
            ("POST", path, b"x" * 5000, {}, True, 413, "too_large"),
            # Nothing to shorten or clear: said so, nothing done.
            ("POST", path, {"resume_in": "5s"}, {}, True, 409, "not_paused"),
            ("DELETE", path, None, {}, True, 409, "not_paused"),
        ]
        for method, p, body, extra, auth, want, error in cases:
            status, h, got = admin(sl, method, p, body, extra, auth)
            assert (status, got.get("error")) == (want, error), (method, p, body, got)
            assert got["message"], got
            if want == 405:
                assert h["allow"] == "POST, DELETE"
        assert paused(sl) is None
        assert sl.request("GET", "/crm/ok")[0] == 200  # sluice serves on
        time.sleep(1.5)
        assert rx.events() == []  # no action took place: no alert
    finally:
        rx.close()
