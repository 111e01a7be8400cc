"""A rule's "login_cache": apps that log in themselves, answered from
sluice's cache while their token is valid.

LoginProvider is a token endpoint (/token) that counts the logins it
receives, knows two clients (by form fields or HTTP Basic), and answers
each login with a new token; a mode makes it answer 401, 400, non-JSON,
JSON without a token or without expires_in.
"""
import base64
import json
import os
import secrets
import subprocess
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler

import pytest

from harness import SLUICE_BIN, RedisServer, _Server, free_port, parallel

CLIENTS = {"app-a": "sa-" + secrets.token_hex(12), "app-b": "sb-" + secrets.token_hex(12)}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class LoginProvider:
    def __init__(self, expires_in=3600):
        self.expires_in = expires_in
        self.mode = "ok"        # ok, 401, 400, nonjson, notoken, noexpiry
        self.lock = threading.Lock()
        self.attempts = 0       # token requests received
        self.issued = []        # tokens handed out
        self.port = free_port()
        owner = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def answer(self, status, body, ctype="application/json"):
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = b""
                    while True:
                        n = int(self.rfile.readline().strip(), 16)
                        chunk = self.rfile.read(n + 2)[:n]
                        if n == 0:
                            break
                        body += chunk
                    body = body.decode()
                else:
                    n = int(self.headers.get("Content-Length", "0"))
                    body = self.rfile.read(n).decode()
                if self.path.split("?")[0] != "/token":
                    return self.answer(200, '{"ok":true}')
                owner.token(self, body)

            def do_GET(self):
                self.answer(200, '{"ok":true}')

        self.server = _Server(("127.0.0.1", self.port), H)
        self.server.owner = self
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def token(self, h, body):
        with self.lock:
            self.attempts += 1
            mode = self.mode
        if h.headers.get("Content-Type") == "application/json":
            form = json.loads(body)
        else:
            form = {k: v[0] for k, v in urllib.parse.parse_qs(body).items()}
        cid, secret = form.get("client_id"), form.get("client_secret")
        basic = h.headers.get("Authorization", "")
        if basic.startswith("Basic "):
            cid, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
        if mode == "nonjson":
            return h.answer(200, "<html>maintenance</html>", "text/html")
        if mode == "400":
            return h.answer(400, '{"error":"invalid_request"}')
        if mode == "401" or CLIENTS.get(cid) != secret:
            return h.answer(401, '{"error":"invalid_client"}')
        token = "tok-" + secrets.token_hex(16)
        with self.lock:
            self.issued.append(token)
        answer = {"access_token": token, "token_type": "Bearer",
                  "expires_in": self.expires_in}
        if mode == "notoken":
            del answer["access_token"]
        if mode == "noexpiry":
            del answer["expires_in"]
        if mode == "refresh":
            answer["refresh_token"] = "rt-" + secrets.token_hex(8)
        if mode == "idtoken":
            answer["id_token"] = "eyJ.id.sig"
        h.answer(200, json.dumps(answer))

    def logins(self):
        with self.lock:
            return self.attempts

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def provider():
    p = LoginProvider()
    yield p
    p.close()


def make_config(provider, store=None, login_cache=True, rules=None):
    rules = rules if rules is not None else [
        {"name": "logins", "path": "/token", "limit": 100, "window": "5m",
         "login_cache": login_cache},
        {"name": "all", "limit": 3000, "window": "5m"}]
    c = {"upstreams": [{"name": "leads", "prefix": "/leads", "url": provider.url,
                        "rules": rules}],
         "admin": {"listen": "127.0.0.1:%d" % free_port()}}
    if store:
        c["store"] = store
    return c


def form(client="app-a", **extra):
    f = {"grant_type": "client_credentials", "client_id": client,
         "client_secret": CLIENTS.get(client, "wrong")}
    f.update(extra)
    return urllib.parse.urlencode(f).encode()


def login(sl, body=None, headers=None, path="/leads/token"):
    h = dict(FORM)
    h.update(headers or {})
    code, hdrs, data = sl.request("POST", path, body=body or form(), headers=h)
    return code, hdrs, data


def rule_status(sl, name="logins"):
    for r in sl.status()["upstreams"][0]["rules"]:
        if r["name"] == name:
            return r
    raise KeyError(name)


def test_twenty_apps_one_login_while_valid(provider, sluice, store):
    sl = sluice(make_config(provider, store), workers=3)
    code, h, first = login(sl)
    assert code == 200 and h["x-sluice-login-cache"] == "stored", first
    token = json.loads(first)["access_token"]

    seq = [login(sl) for _ in range(19)]
    par = parallel(20, lambda i: login(sl))
    for code, h, body in seq + par:
        assert code == 200, body
        assert h["x-sluice-login-cache"] == "hit"
        assert h["content-type"] == "application/json"
        assert h["cache-control"] == "no-store"
        assert json.loads(body)["access_token"] == token
        assert body == first
    assert provider.logins() == 1
    r = rule_status(sl)
    assert r["login_cache"] == {"entries": 1, "hits": 39, "misses": 1, "stored": 1,
                                "max_entries": 1000}
    # The rules count only what reached the provider.
    assert r["used"] == 1
    assert rule_status(sl, "all")["used"] == 1
    # Other calls of the upstream are untouched.
    code, h, _ = sl.request("GET", "/leads/api/x")
    assert code == 200 and "x-sluice-login-cache" not in h
    assert rule_status(sl, "all")["used"] == 2
    metrics = sl.admin("GET", "/metrics")[2].decode()
    assert 'sluice_calls_total{upstream="leads",outcome="login_cached"} 39' in metrics


def test_different_credentials_log_in_separately(provider, sluice, store):
    sl = sluice(make_config(provider, store), workers=2)
    a = login(sl, form("app-a"))
    b = login(sl, form("app-b"))
    basic = {"Authorization": "Basic " + base64.b64encode(
        ("app-b:" + CLIENTS["app-b"]).encode()).decode()}
    c = login(sl, b"grant_type=client_credentials", basic)
    assert [x[0] for x in (a, b, c)] == [200, 200, 200]
    assert [x[1]["x-sluice-login-cache"] for x in (a, b, c)] == ["stored"] * 3
    tokens = [json.loads(x[2])["access_token"] for x in (a, b, c)]
    assert len(set(tokens)) == 3
    assert provider.logins() == 3
    # Each one again: its own answer.
    again = [login(sl, form("app-a")), login(sl, form("app-b")),
             login(sl, b"grant_type=client_credentials", basic)]
    assert [json.loads(x[2])["access_token"] for x in again] == tokens
    assert [x[1]["x-sluice-login-cache"] for x in again] == ["hit"] * 3
    # A wrong secret is its own login, and is not answered from the cache.
    wrong = urllib.parse.urlencode({"grant_type": "client_credentials",
                                    "client_id": "app-a",
                                    "client_secret": "nope"}).encode()
    assert login(sl, wrong)[0] == 401
    assert login(sl, wrong)[0] == 401
    # Another scope, another path spelling: other logins.
    assert login(sl, form("app-a", scope="read"))[1]["x-sluice-login-cache"] == "stored"
    assert login(sl, path="/leads/token?x=1")[1]["x-sluice-login-cache"] == "stored"
    assert provider.logins() == 7
    assert rule_status(sl)["used"] == 7


def test_an_expiring_token_is_fetched_again(provider, sluice):
    provider.expires_in = 3
    c = make_config(provider, login_cache={"margin": "1s"})
    sl = sluice(c)
    t1 = json.loads(login(sl)[2])["access_token"]
    code, h, body = login(sl)
    assert h["x-sluice-login-cache"] == "hit" and json.loads(body)["access_token"] == t1
    time.sleep(2.3)   # 3 s minus the 1 s margin has passed
    code, h, body = login(sl)
    assert code == 200 and h["x-sluice-login-cache"] == "stored"
    assert json.loads(body)["access_token"] != t1
    assert provider.logins() == 2
    # A token that lives less than the margin is never kept.
    provider.expires_in = 30   # default margin: 60 s
    sl2 = sluice(make_config(provider))
    assert login(sl2)[1]["x-sluice-login-cache"] == "miss"
    assert login(sl2)[1]["x-sluice-login-cache"] == "miss"
    assert provider.logins() == 4


@pytest.mark.parametrize("mode,status", [("401", 401), ("400", 400), ("nonjson", 200),
                                         ("notoken", 200), ("noexpiry", 200),
                                         ("refresh", 200), ("idtoken", 200)])
def test_answers_without_a_usable_token_are_never_kept(provider, sluice, mode, status):
    provider.mode = mode
    sl = sluice(make_config(provider), workers=2)
    for _ in range(3):
        code, h, _ = login(sl)
        assert code == status and h["x-sluice-login-cache"] == "miss"
    assert provider.logins() == 3
    assert rule_status(sl)["login_cache"]["entries"] == 0
    provider.mode = "ok"
    assert login(sl)[1]["x-sluice-login-cache"] == "stored"
    assert login(sl)[1]["x-sluice-login-cache"] == "hit"
    assert provider.logins() == 4


def test_what_is_not_looked_up_goes_through(provider, sluice):
    sl = sluice(make_config(provider), workers=2)
    big = form(padding="x" * (17 * 1024))
    for body, headers in [
            (big, None),                                            # over 16 KiB
            (form(grant_type="refresh_token", refresh_token="r"), None),
            (form(grant_type="authorization_code", code="c"), None),
            (form(code="c"), None),                                 # a code, any grant
            (form() + b"&grant_type=refresh_token", None),          # named twice
            (form(client_assertion="eyJ.x.y"), None),               # a signed assertion
            (form(), {"X-Api-Key": "k"}),                           # a credential header
            (form(), {"Cookie": "s=1"}),
            (form(), {"DPoP": "eyJ.proof"}),                        # a proof of possession
            (form(), {"X-Tenant-Id": "t1"})]:                       # any other caller header
        for _ in range(2):
            code, h, _ = login(sl, body, headers)
            assert h["x-sluice-login-cache"] == "bypass"
    assert provider.logins() == 20
    # Not a POST: a GET of the token path is a call like any other.
    code, h, _ = sl.request("GET", "/leads/token")
    assert code == 200 and h["x-sluice-login-cache"] == "bypass"
    # A chunked body is not read ahead.
    conn = sl.conn()
    conn.putrequest("POST", "/leads/token")
    conn.putheader("Content-Type", FORM["Content-Type"])
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    data = form()
    conn.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
    r = conn.getresponse()
    r.read()
    conn.close()
    assert r.status == 200 and r.getheader("X-Sluice-Login-Cache") == "bypass"
    assert provider.logins() == 21
    # JSON logins are read too.
    jbody = json.dumps({"grant_type": "client_credentials", "client_id": "app-a",
                        "client_secret": CLIENTS["app-a"]}).encode()
    code, h, _ = sl.request("POST", "/leads/token", body=jbody,
                            headers={"Content-Type": "application/json"})
    assert code == 200 and h["x-sluice-login-cache"] == "stored"
    code, h, _ = sl.request("POST", "/leads/token", body=jbody,
                            headers={"Content-Type": "application/json"})
    assert code == 200 and h["x-sluice-login-cache"] == "hit"
    jbody = json.dumps({"grant_type": "authorization_code", "code": "x"}).encode()
    code, h, _ = sl.request("POST", "/leads/token", body=jbody,
                            headers={"Content-Type": "application/json"})
    assert h["x-sluice-login-cache"] == "bypass"


def test_over_the_rule_a_login_is_refused_but_hits_still_answer(provider, sluice):
    rules = [{"name": "logins", "path": "/token", "limit": 2, "window": "1m",
              "login_cache": True}]
    sl = sluice(make_config(provider, rules=rules))
    assert login(sl, form("app-a"))[0] == 200
    assert login(sl, form("app-b"))[0] == 200
    # The rule is full: a third set of credentials waits its turn...
    wrong = form("app-c")
    assert login(sl, wrong)[0] == 429
    # ... yet logins already answered are still answered.
    for _ in range(5):
        assert login(sl, form("app-a"))[0] == 200
    assert provider.logins() == 2


def test_no_secret_or_token_in_status_log_metrics_or_redis(provider, sluice):
    redis = RedisServer()
    try:
        c = make_config(provider, redis.url)
        c["log_format"] = "json"
        sl = sluice(c, workers=2)
        for cl in ("app-a", "app-b"):
            for _ in range(3):
                assert login(sl, form(cl))[0] == 200
        assert provider.logins() == 2
        texts = [sl.read_log(), json.dumps(sl.status()),
                 sl.admin("GET", "/metrics")[2].decode()]
        for k in redis.cli("--scan").split():
            texts.append(k)
            if redis.cli("TYPE", k) == "string":
                texts.append(redis.cli("GET", k))
            else:
                texts.append(subprocess.run(
                    ["redis-cli", "-p", str(redis.port), "DUMP", k],
                    capture_output=True).stdout.decode(errors="replace"))
        with provider.lock:
            tokens = list(provider.issued)
        for text in texts:
            for s in list(CLIENTS.values()) + tokens:
                assert s not in text
    finally:
        redis.stop()


def check(tmp_path, rules):
    cfg = {"upstreams": [{"name": "leads", "prefix": "/leads",
                          "url": "http://127.0.0.1:9", "rules": rules}]}
    p = os.path.join(str(tmp_path), "sluice.json")
    with open(p, "w") as f:
        json.dump(cfg, f)
    return subprocess.run([SLUICE_BIN, "--check", "-c", p], capture_output=True,
                          text=True, timeout=30)


def test_check_refuses_and_warns(tmp_path):
    r = check(tmp_path, [{"name": "c", "concurrency": 5, "login_cache": True}])
    assert r.returncode != 0
    assert "upstreams[0].rules[0].login_cache" in r.stderr
    assert "concurrency" in r.stderr
    r = check(tmp_path, [{"name": "l", "limit": 5, "window": "5m",
                          "login_cache": {"max_entries": 0}}])
    assert r.returncode != 0 and "login_cache.max_entries" in r.stderr
    r = check(tmp_path, [{"name": "l", "limit": 5, "window": "5m",
                          "login_cache": {"ttl": "1m"}}])
    assert r.returncode != 0 and "ttl" in r.stderr
    r = check(tmp_path, [{"name": "l", "limit": 5, "window": "5m", "login_cache": True}])
    assert r.returncode == 0
    assert "login_cache" in r.stderr and 'no "path"' in r.stderr
    r = check(tmp_path, [{"name": "l", "path": "/token", "limit": 5, "window": "5m",
                          "login_cache": {"max_entries": 10, "margin": "30s"}}])
    assert r.returncode == 0 and r.stderr == "", r.stderr
