"""No bypass by spelling: what a rule matches and what is forwarded are the
same request, and no spelling leaves the upstream's base path.

Requests here are written byte for byte on raw sockets: a client library
could normalize a target before it ever reached sluice.
"""
import json
import re
import socket

import pytest

from harness import Upstream

LOGIN = {"name": "login", "methods": ["POST"], "path": "/api/v2/login",
         "limit": 2, "window": "1m"}


def leads(up, rules=(), **extra):
    u = {"name": "leads", "prefix": "/leads", "url": up.url + "/base", "rules": list(rules)}
    u.update(extra)
    return u


def raw(sl, method, target, body=b"", headers=(), timeout=10):
    """Send one request exactly as given; (status, headers, body) of the answer."""
    head = "%s %s HTTP/1.1\r\nHost: sluice.test\r\nConnection: close\r\n" % (method, target)
    for h in headers:
        head += h + "\r\n"
    if body or method.upper() in ("POST", "PUT", "PATCH"):
        head += "Content-Length: %d\r\n" % len(body)
    data = head.encode("latin-1") + b"\r\n" + body
    s = socket.create_connection(("127.0.0.1", sl.port), timeout=timeout)
    try:
        s.sendall(data)
        buf = b""
        while b"\r\n\r\n" not in buf:
            piece = s.recv(65536)
            if not piece:
                break
            buf += piece
        assert b"\r\n\r\n" in buf, "no answer to %s %r: %r" % (method, target, buf[:200])
        top, _, rest = buf.partition(b"\r\n\r\n")
        lines = top.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        n = int(hdrs.get("content-length", "0"))
        while len(rest) < n:
            piece = s.recv(65536)
            if not piece:
                break
            rest += piece
        return status, hdrs, rest[:n]
    finally:
        s.close()


def error_of(body):
    try:
        return json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None


ESCAPES = [
    "/leads/..%2Fsecret",
    "/leads/..%2fsecret",
    "/leads/%2e%2e%2fsecret",
    "/leads/%2E%2E/secret",
    "/leads/.%2e/secret",
    "/leads/%2e./secret",
    "/leads/..;/secret",
    "/leads/..;x=1/secret",
    "/leads/..\\secret",
    "/leads/..%5csecret",
    "/leads/..%5Csecret",
    "/leads/%252e%252e/secret",
    "/leads/%252e%252e%252fsecret",
    "/leads/..%252fsecret",
    "/leads/a/../../secret",
    "/leads/a/%2e%2e/%2e%2e/secret",
    "/leads/./x",
    "/leads/%2e/x",
    "/leads/x/..",
    "/leads/x/%2e%2e?q=1",
    "/leads/..",
    "/leads/...",
    "/leads/..%00/secret",
    "/leads/%2e%2e%00/secret",
    # Overlong UTF-8 for '.' and '/', read as such by some old decoders.
    "/leads/%c0%ae%c0%ae/secret",
    "/leads/..%c0%afsecret",
]


# A server that decodes twice reads these as the login endpoint: one
# decoding must leave no escape behind, or the rule is dodged.
DOUBLE_ENCODED = [
    "/leads/api/v2/log%2569n",
    "/leads/api/v2/%256Cogin",
    "/leads/api%252Fv2/login",
    "/leads/api/v2/login%253Bx",
]


def test_double_encoded_spellings_are_refused(upstream, sluice):
    sl = sluice({"upstreams": [leads(upstream, [LOGIN])]})
    for target in DOUBLE_ENCODED:
        status, _, body = sl.request("POST", target)
        assert (status, error_of(body)) == (400, "bad_request"), target
    assert upstream.count() == 0


def test_no_escape_from_the_base_path(upstream, sluice):
    sl = sluice({"upstreams": [leads(upstream, [LOGIN])]})
    failures = []
    for target in ESCAPES:
        for method in ("GET", "POST"):
            status, h, body = raw(sl, method, target)
            if status != 400 or error_of(body) != "bad_request":
                failures.append((method, target, status, body[:200]))
    assert failures == []
    assert upstream.count() == 0, [r.target for r in upstream.records]
    # The same upstream is reachable, under its base path.
    assert raw(sl, "GET", "/leads/ok")[0] == 200
    assert [r.target for r in upstream.records] == ["/base/ok"]


@pytest.mark.parametrize("method,target", [
    ("POST", "/leads/api/v2/login#x"),
    ("POST", "/leads/api/v2/login#"),
    ("GET", "/leads/x?a=1#frag"),
    ("GET", "/leads/api/v2/login#/../../secret"),
    ("POST", "/leads/other#/api/v2/login"),
])
def test_fragment_is_refused(upstream, sluice, method, target):
    sl = sluice({"upstreams": [leads(upstream, [LOGIN])]})
    status, h, body = raw(sl, method, target, body=b"{}" if method == "POST" else b"")
    assert status == 400, (target, status, body)
    assert error_of(body) == "bad_request"
    assert upstream.count() == 0


# Spellings of "POST /api/v2/login" that many servers read as that endpoint.
LOGIN_SPELLINGS = [
    ("POST", "/leads/api/v2/login/"),
    ("POST", "/leads/api/v2/login//"),
    ("POST", "/leads/api//v2/login"),
    ("POST", "/leads//api/v2/login"),
    ("POST", "/leads///api///v2///login"),
    ("POST", "/leads/api/v2/login;jsessionid=x"),
    ("POST", "/leads/api;x=1/v2/login"),
    ("POST", "/leads/api/v2;/login"),
    ("POST", "/leads/api/v2/login;/"),
    ("POST", "/leads/API/V2/LOGIN"),
    ("POST", "/leads/Api/v2/Login"),
    ("POST", "/leads/api%2Fv2%2Flogin"),
    ("POST", "/leads/api%2fv2/login"),
    ("POST", "/leads/api\\v2\\login"),
    ("POST", "/leads/api/v2%5clogin"),
    ("POST", "/leads/api/v2%5Clogin"),
    ("POST", "/leads/api/v2/%6Cogin"),
    ("POST", "/leads/api/v2/%6cogin"),
    ("POST", "/leads/%61%70%69/%76%32/%6C%6F%67%69%6E"),
    ("POST", "/leads/api/v2/login?x=1"),
    ("POST", "/leads/api/v2/login?"),
    ("POST", "/leads/API%2F%2Fv2\\Login;a=b/?q"),
    ("post", "/leads/api/v2/login"),
    ("Post", "/leads/api/v2/login"),
    ("pOsT", "/leads/api//v2/LOGIN/"),
]


def test_no_spelling_dodges_a_rule(upstream, sluice):
    sl = sluice({"upstreams": [leads(upstream, [LOGIN])]})
    for _ in range(2):
        assert raw(sl, "POST", "/leads/api/v2/login", body=b"{}")[0] == 200
    failures = []
    for method, target in LOGIN_SPELLINGS:
        status, h, body = raw(sl, method, target, body=b"{}")
        try:
            e = json.loads(body)
        except ValueError:
            e = {}
        if status != 429 or e.get("error") != "rate_limited" or e.get("rule") != "login":
            failures.append((method, target, status, body[:200]))
    assert failures == []
    # Only the two plain logins ever reached the provider.
    assert upstream.count() == 2, [(r.method, r.target) for r in upstream.records]
    # Other endpoints and methods are not the login rule's.
    assert raw(sl, "GET", "/leads/api/v2/login")[0] == 200
    assert raw(sl, "POST", "/leads/api/v2/logins", body=b"{}")[0] == 200
    assert raw(sl, "POST", "/leads/api/v2/login/x", body=b"{}")[0] == 200


# Allowed calls: what went upstream is the base path plus exactly the bytes
# the client sent after the prefix.
FORWARDED = [
    "/api//v2/Login;x=1",
    "//api/v2/login",
    "/api/v2/%6Cogin?q=%2F&r=a%20b",
    "/API%2Fv2%2flogin/",
    "/api/v2/login;jsessionid=ABC?x=%3B",
    "/api\\v2\\login",
    "/api/v2%5clogin",
    "/%61pi/v2/login//",
]


def test_allowed_calls_are_forwarded_byte_for_byte(upstream, sluice):
    sl = sluice({"upstreams": [leads(upstream, [dict(LOGIN, limit=100)])]})
    failures = []
    for i, rest in enumerate(FORWARDED):
        status, h, body = raw(sl, "POST", "/leads" + rest, body=b"{}")
        assert status == 200, (rest, status, body[:200])
        # Every spelling counted in the login rule (its budget shrinks by one).
        m = re.match(r'"login";r=(\d+);t=', h.get("ratelimit", ""))
        if m is None or int(m.group(1)) != 99 - i:
            failures.append(("not counted", rest, h.get("ratelimit")))
        got = upstream.records[i].target
        if got != "/base" + rest:
            failures.append(("forwarded as", rest, got))
    assert failures == []
    assert upstream.count() == len(FORWARDED)


def test_path_case_sensitive_upstream(upstream, sluice):
    sl = sluice({"upstreams": [leads(upstream, [LOGIN], path_case="sensitive")]})
    for _ in range(2):
        assert raw(sl, "POST", "/leads/api/v2/login", body=b"{}")[0] == 200
    # Another letter case is another endpoint there: not the login rule's.
    for target in ("/leads/API/v2/login", "/leads/api/v2/LOGIN", "/leads/Api/V2/Login"):
        status, h, body = raw(sl, "POST", target, body=b"{}")
        assert status == 200, (target, status, body[:200])
    # Every other spelling still counts.
    for target in ("/leads/api//v2/login", "/leads/api/v2/login/", "/leads/api/v2/%6Cogin",
                   "/leads/api%2Fv2%2Flogin", "/leads/api/v2/login;x=1",
                   "/leads/api\\v2\\login"):
        status, h, body = raw(sl, "POST", target, body=b"{}")
        assert status == 429, (target, status, body[:200])
        assert json.loads(body)["rule"] == "login"
    assert [r.target for r in upstream.records][2:] == [
        "/base/API/v2/login", "/base/api/v2/LOGIN", "/base/Api/V2/Login"]


# Targets that route to the catch-all as written but to /leads once decoded
# and normalized (a server reading them so would serve the login endpoint).
REROUTED = [
    "//leads/api/v2/login",
    "///leads/api/v2/login",
    "/lead%73/api/v2/login",
    "/%6Ceads/api/v2/login",
    "/leads%2Fapi/v2/login",
    "/leads%2fapi/v2/login",
    "/leads%5capi/v2/login",
    "/leads\\api/v2/login",
    "/leads;x=1/api/v2/login",
    "/leads;/api/v2/login",
]


def test_no_route_around_a_prefix(sluice):
    guarded, other = Upstream(), Upstream()
    try:
        sl = sluice({"upstreams": [
            {"name": "leads", "prefix": "/leads", "url": guarded.url, "rules": [LOGIN]},
            {"name": "other", "prefix": "/", "url": other.url},
        ]})
        for _ in range(2):
            assert raw(sl, "POST", "/leads/api/v2/login", body=b"{}")[0] == 200
        failures = []
        for target in REROUTED:
            for method in ("POST", "GET"):
                status, h, body = raw(sl, method, target,
                                      body=b"{}" if method == "POST" else b"")
                if status != 400 or error_of(body) != "bad_request":
                    failures.append((method, target, status, body[:200]))
        assert failures == []
        assert other.count() == 0, [r.target for r in other.records]
        assert guarded.count() == 2
        # The catch-all itself works.
        assert raw(sl, "GET", "/elsewhere/x")[0] == 200
        assert raw(sl, "GET", "/leadsx/api/v2/login")[0] == 200
        assert [r.target for r in other.records] == ["/elsewhere/x", "/leadsx/api/v2/login"]
    finally:
        guarded.close()
        other.close()


# Segment-level spellings of a lead-result call.  Frameworks that route on
# the raw path (Express, Go's ServeMux, Rails, ASP.NET) read "x%2Fy" as one
# segment "x/y"; some servers read '\' as a plain character; Tomcat drops
# ";params" but not "%3B..."; Express keeps empty segments.  Each target
# below is a lead-result call under at least one of those readings (and
# some are not under the canonical one), so each must meet the rule.
LEAD_RULE = {"name": "lead", "path": "/api/v2/publisher/{publisher}/lead-result/{lead}",
             "limit": 1, "window": "5m"}
LEAD_SPELLINGS = [
    "/leads/api/v2/publisher/P/lead-result/x%2Fy",
    "/leads/api/v2/publisher/P/lead-result/x%2fy",
    "/leads/api/v2/publisher/P/lead-result/a%2Fb%2Fc",
    "/leads/api/v2/publisher/P/lead-result/%2F",
    "/leads/api/v2/publisher/P/lead-result/x%2F",
    "/leads/api/v2/publisher/p2%2Fz/lead-result/L3",
    "/leads/api/v2/publisher/P/lead-result/x%5Cy",
    "/leads/api/v2/publisher/P/lead-result/x%5cy",
    "/leads/api/v2/publisher/P/lead-result/x\\y",
    "/leads/api/v2/publisher/P/lead-result/a\\b\\c",
    "/leads/api/v2/publisher/p\\q/lead-result/L3",
    "/leads/api/v2/publisher/P/lead-result/;x",
    "/leads/api/v2/publisher/P/lead-result/%3Bx",
    "/leads/api/v2/publisher/P/lead-result;a/%3Bx",
    "/leads/api/v2/publisher/P/lead-result/L4;a=b",
    "/leads/api/v2/publisher/;x/lead-result/L3",
    "/leads/api/v2/publisher/P%2Flead-result%2FL9",
    "/leads/api/v2/publisher/P//lead-result/x",
]


def test_no_reading_of_a_segment_dodges_a_rule(upstream, sluice):
    sl = sluice({"upstreams": [leads(upstream, [LEAD_RULE])]})
    assert raw(sl, "GET", "/leads/api/v2/publisher/P/lead-result/L1")[0] == 200
    assert raw(sl, "GET", "/leads/api/v2/publisher/P/lead-result/L2")[0] == 429
    failures = []
    for target in LEAD_SPELLINGS:
        status, h, body = raw(sl, "GET", target)
        try:
            e = json.loads(body)
        except ValueError:
            e = {}
        if status != 429 or e.get("rule") != "lead":
            failures.append((target, status, body[:200]))
    assert failures == [], "\n".join(map(repr, failures))
    # A dot segment under the reading that splits at "%2F" is refused, as
    # every other spelling of ".." is.
    assert raw(sl, "GET", "/leads/api/v2/publisher/P/lead-result/x%2F..%2Fy")[0] == 400
    # One lead-result call reached the provider, whatever it reads as one.
    assert [r.target for r in upstream.records] == [
        "/base/api/v2/publisher/P/lead-result/L1"]
    # Paths that are no lead-result call under any reading still pass.
    # (No server splits one "%2F" and not the other; none reads an empty
    # segment as a publisher.)
    for target in ("/leads/api/v2/publisher/P/lead-result",
                   "/leads/api/v2/publisher/P/lead-result/x/y",
                   "/leads/api%2Fv2/publisher/P/lead-result/x%2Fy",
                   "/leads/api/v2/publisher//lead-result/L3",
                   "/leads/api/v2/publisher/P/other/x%2Fy"):
        assert raw(sl, "GET", target)[0] == 200, target


def test_an_escaped_slash_is_one_key_as_the_provider_reads_it(upstream, sluice, store):
    # Per lead: "x%2Fy" and "x%2fy" are one lead ("x/y") to a provider that
    # routes on the raw path, and "x%2Fz" another.  The canonical reading
    # ("/x/y", no lead-result call) must not hide it from its bucket.
    # A call charged under two keys of one rule (and a "deep" rule only the
    # splitting reading matches), in one atomic step, in either store.
    rule = dict(LEAD_RULE, per="{lead}")
    deep = {"name": "deep", "path": "/api/v2/publisher/*/lead-result/*/*",
            "limit": 4, "window": "5m"}
    cfg = {"upstreams": [leads(upstream, [rule, deep])]}
    if store:
        cfg["store"] = store
    sl = sluice(cfg)
    base = "/leads/api/v2/publisher/P/lead-result/"
    assert raw(sl, "GET", base + "x%2Fy")[0] == 200
    status, _, body = raw(sl, "GET", base + "x%2fy")
    assert (status, json.loads(body)["rule"]) == (429, "lead")
    assert raw(sl, "GET", base + "x%2Fz")[0] == 200
    assert raw(sl, "GET", base + "x\\y")[0] == 200
    assert raw(sl, "GET", base + "x%5Cy")[0] == 429   # '\' and %5C: one lead
    assert upstream.count() == 3
    # Each of x%2Fy, x%2Fz, x\y also read as two segments: "deep" counted
    # them (and not the refused ones): room for one more.
    assert raw(sl, "GET", base + "a%2Fb")[0] == 200
    status, _, body = raw(sl, "GET", base + "c%2Fd")
    assert (status, json.loads(body)["rule"]) == (429, "deep")
    assert upstream.count() == 4
