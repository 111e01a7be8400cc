"""A call can be followed from an app's log through sluice's to the
provider's: X-Request-ID kept or made, sent upstream, returned to the
client, logged with the W3C trace id; and two small deployment helpers
(SLUICE_ADMIN_LISTEN, Retry-After on a relayed refusal)."""
import http.client
import re

from harness import Sluice, free_port, upstream_config


def conf(up, **extra):
    return upstream_config(up, [{"name": "w", "limit": 2, "window": "1m"}], name="crm",
                           prefix="/crm", top={"access_log": True}, **extra)


def sent_header(rec, name):
    return [v for k, v in rec.headers if k.lower() == name.lower()]


def test_a_request_id_is_made_kept_and_logged(upstream, sluice):
    sl = sluice(conf(upstream))
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    # Made here: 32 hex digits, the same upstream and back.
    status, h, _ = sl.request("GET", "/crm/a", headers={"traceparent": trace})
    assert status == 200
    rid = h["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid), rid
    rec = upstream.records[-1]
    assert sent_header(rec, "X-Request-ID") == [rid]
    assert sent_header(rec, "traceparent") == [trace]
    # Kept when the app sends a plain one.
    status, h, _ = sl.request("GET", "/crm/b", headers={"X-Request-ID": "app-42.x:1"})
    assert h["x-request-id"] == "app-42.x:1"
    assert sent_header(upstream.records[-1], "X-Request-ID") == ["app-42.x:1"]
    # Replaced when it is not a plain token (spaces, too long, a newline trick).
    for bad in ("two words", "x" * 65, "a;b"):
        status, h, body = sl.request("GET", "/crm/c", headers={"X-Request-ID": bad})
        assert re.fullmatch(r"[0-9a-f]{32}", h["x-request-id"]), (bad, h)
    # Sluice's own answers carry one too (a 429 here, and a 404).
    assert status == 429
    status, h, _ = sl.request("GET", "/nowhere")
    assert status == 404 and re.fullmatch(r"[0-9a-f]{32}", h["x-request-id"])
    first = "request_id=%s trace_id=4bf92f3577b34da6a3ce929d0e0e4736" % rid
    assert first in sl.wait_log(first)
    assert "request_id=app-42.x:1 trace_id=-" in sl.wait_log("request_id=app-42.x:1")


def test_admin_listen_from_the_environment(upstream):
    port = free_port()
    sl = Sluice(conf(upstream), env={"SLUICE_ADMIN_LISTEN": "127.0.0.1:%d" % port})
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/healthz")
        assert c.getresponse().status == 200
    finally:
        sl.stop()
    # It overrides the file's admin.listen as well.
    other = free_port()
    cfg = conf(upstream)
    cfg["admin"] = {"listen": "127.0.0.1:%d" % free_port()}
    sl = Sluice(cfg, env={"SLUICE_ADMIN_LISTEN": "127.0.0.1:%d" % other})
    try:
        c = http.client.HTTPConnection("127.0.0.1", other, timeout=10)
        c.request("GET", "/readyz")
        assert c.getresponse().status == 200
    finally:
        sl.stop()


def test_a_relayed_refusal_tells_when_to_retry(upstream, sluice):
    """The provider's 403 REQUEST_LIMIT_EXCEEDED (no Retry-After) pauses the
    upstream; relayed as is, it gains the pause's Retry-After, which is what
    client libraries read."""
    sl = sluice(conf(upstream, limit_signals=[
        {"status": 403, "body_contains": "REQUEST_LIMIT_EXCEEDED", "pause": "90s"}]))
    upstream.script = [{"status": 403, "body":
                        b'[{"errorCode":"REQUEST_LIMIT_EXCEEDED","message":"x"}]'}]
    status, h, body = sl.request("GET", "/crm/a")
    assert status == 403 and b"REQUEST_LIMIT_EXCEEDED" in body
    assert 89 <= int(h["retry-after"]) <= 90
    # A provider's own Retry-After is kept, not doubled.
    upstream.script = [{"status": 429, "headers": ["Retry-After: 7"]}]
    sl2 = sluice(conf(upstream))
    status, h, _ = sl2.request("GET", "/crm/b")
    assert status == 429 and h["retry-after"] == "7"
