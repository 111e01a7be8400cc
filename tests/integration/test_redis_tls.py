"""The Redis store over TLS (rediss://, store_tls), with a client
certificate, and as an ACL user with the least sluice needs: the real binary
against a real redis-server serving TLS with a private CA made here."""
import json
import os
import shutil
import subprocess
import tempfile

import pytest

from harness import (SLUICE_BIN, RedisServer, free_port, max_in_window,
                     upstream_config, wait_for)
from harness import hammer

# The commands sluice's Redis store sends (sl_store_redis.c): EVALSHA (EVAL
# after a NOSCRIPT), SCRIPT LOAD, TIME and ROLE at connect, SUBSCRIBE on the
# subscriber link, and what its Lua scripts call (INFO: the heartbeat's
# run_id and evicted_keys, sl_redis_repair.c).  AUTH needs no permission;
# a URL naming a database other than 0 needs +select as well.
ACL_COMMANDS = (
    "+evalsha +eval +script|load +time +role +subscribe "
    "+get +set +del +exists +pexpire +pttl +publish "
    "+lpush +rpush +lindex +llen +lrange +ltrim "
    "+hget +hmget +hset +hdel +hexists +hgetall +hincrby +hlen "
    "+zadd +zcard +zcount +zrange +zrangebyscore +zrevrange +zrem "
    "+zremrangebyscore +sadd +sismember +info").split()


@pytest.fixture(scope="module")
def certs():
    """A private CA, another CA nobody trusts, a server certificate for
    localhost and 127.0.0.1, and a client certificate, all in a directory."""
    d = tempfile.mkdtemp(prefix="sluice-tls-")
    script = (
        "set -e; K='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes';"
        "openssl req -x509 $K -keyout ca.key -out ca.crt -days 2 -subj /CN=sluice-test-ca;"
        "openssl req -x509 $K -keyout other-ca.key -out other-ca.crt -days 2 -subj /CN=other-ca;"
        "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' >server.ext;"
        "openssl req -new $K -keyout server.key -out server.csr -subj /CN=localhost;"
        "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial"
        " -out server.crt -days 2 -extfile server.ext;"
        "openssl req -new $K -keyout client.key -out client.csr -subj /CN=sluice;"
        "openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial"
        " -out client.crt -days 2;")
    subprocess.run(["sh", "-c", script], cwd=d, check=True, capture_output=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


class TLSRedis(RedisServer):
    """redis-server with a TLS port (sluice's) beside its plain loopback port
    (the test's redis-cli)."""

    def __init__(self, certs, client_certs=False):
        self.tls_port = free_port()
        self.EXTRA_ARGS = (
            "--tls-port", str(self.tls_port),
            "--tls-cert-file", os.path.join(certs, "server.crt"),
            "--tls-key-file", os.path.join(certs, "server.key"),
            "--tls-ca-cert-file", os.path.join(certs, "ca.crt"),
            "--tls-auth-clients", "yes" if client_certs else "no")
        super().__init__()

    def tls_url(self, cred=""):
        return "rediss://%s127.0.0.1:%d" % (cred, self.tls_port)

    def tls_clients(self):
        """Clients connected on the TLS port now (CLIENT LIST's laddr)."""
        return [c for c in self.cli("CLIENT", "LIST").splitlines()
                if "laddr=127.0.0.1:%d " % self.tls_port in c]


@pytest.fixture
def tls_redis(certs):
    r = TLSRedis(certs)
    yield r
    r.stop()


def conf(up, url, certs, rules, ca="ca.crt", tls=None, admin=None, **top):
    """One upstream at /leads on store URL, trusting CA (a file of CERTS);
    TLS: more store_tls keys; TOP: more top-level keys."""
    t = {"ca_file": os.path.join(certs, ca)}
    t.update(tls or {})
    return upstream_config(up, rules, url, admin=admin, top=dict(store_tls=t, **top))


def check(config):
    """sluice --check on CONFIG: (exit status, stderr)."""
    d = tempfile.mkdtemp(prefix="sluice-check-")
    try:
        path = os.path.join(d, "c.json")
        with open(path, "w") as f:
            json.dump(config, f)
        r = subprocess.run([SLUICE_BIN, "--check", "-c", path], capture_output=True,
                           text=True, timeout=30)
        return r.returncode, r.stderr
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_two_instances_share_one_exact_window_over_tls(upstream, tls_redis, certs,
                                                       sluice):
    n, w = 30, 2.0
    c = conf(upstream, tls_redis.tls_url(), certs, [{"name": "all", "limit": n,
                                                      "window": "2s"}])
    instances = [sluice(c, workers=2) for _ in range(2)]
    # A new Redis: the fleet's first repair phase (about 1.3 s) ends first.
    assert wait_for(lambda: (tls_redis.command("GET", "sluice:{leads}:m") or b"")
                    .startswith(b"o"), timeout=8)
    # Windows open at 0, 2.1 and 4.2 s (the default 100 ms margin): 5 s of
    # demand leaves the last one 0.8 s, and ends before a fourth.
    results = hammer(instances, 5.0)
    times = upstream.times()
    ok = [port for port, s in results if s == 200]
    # The limit as the upstream counts arrivals.  Each call is stamped in
    # Redis when it is sent, never earlier; its arrival here follows by the
    # loopback hop and this Python server's thread scheduling, which on a
    # busy 2-core machine stays well under the 15 ms allowed (the same
    # allowance as test_redis's plain-TCP test).
    assert max_in_window(times, w - 0.015) <= n
    # Demand exceeded the quota: the windows starting at 0, 2 and 4 s were
    # used, at least 95% of them.
    assert len(times) >= 0.95 * n * 3, len(times)
    assert len(ok) == len(times)
    assert len(set(ok)) == 2  # both instances forwarded: one shared quota
    # Over TLS indeed (main and subscriber link of each worker), and Redis
    # holds the calls of the last window.
    assert len(tls_redis.tls_clients()) == 2 * 2 * 2
    assert 0 < int(tls_redis.cli("LLEN", "sluice:{leads}:r:3:all:")) <= n
    for sl in instances:
        assert "unreachable" not in sl.read_log()


def admin_get(sl, path):
    code, _, body = sl.admin("GET", path)
    return code, body


@pytest.mark.parametrize("policy", ["local", "deny"])
def test_an_untrusted_certificate_is_one_clear_line_and_on_store_error_decides(
        upstream, tls_redis, certs, sluice, policy):
    # The client trusts another CA than the one that signed Redis's
    # certificate.
    sl = sluice(conf(upstream, tls_redis.tls_url(), certs,
                     [{"name": "w", "limit": 3, "window": "1m"}], ca="other-ca.crt",
                     on_store_error=policy, store_timeout="100ms", admin=True),
                workers=1)
    statuses = [sl.request("GET", "/leads/x")[0] for _ in range(5)]
    log = sl.wait_log("was not accepted")
    line = [x for x in log.splitlines() if "unreachable" in x]
    assert len(line) == 1, log  # once per outage, not per attempt
    assert ("the certificate of 127.0.0.1:%d was not accepted: " % tls_redis.tls_port
            in line[0]), line[0]
    # redis-server sends its CA along: a chain ending in a root not trusted.
    assert "self-signed certificate in certificate chain" in line[0]
    if policy == "local":
        # The memory store stands in, with the same limit (local_share 1).
        assert statuses == [200, 200, 200, 429, 429]
        assert upstream.count() == 3
        assert admin_get(sl, "/readyz")[0] == 200
    else:
        # "deny": 503 with Retry-After: 1, and not ready.
        assert statuses == [503] * 5
        assert sl.request("GET", "/leads/x")[1]["retry-after"] == "1"
        assert upstream.count() == 0
        assert admin_get(sl, "/readyz")[0] == 503
    # Nothing reached Redis.
    assert tls_redis.cli("KEYS", "*") == ""


def test_the_server_name_is_verified(upstream, tls_redis, certs, sluice):
    sl = sluice(conf(upstream, tls_redis.tls_url(), certs,
                     [{"name": "w", "limit": 3, "window": "1m"}],
                     tls={"server_name": "redis.example.org"}, on_store_error="deny"),
                workers=1)
    assert sl.request("GET", "/leads/x")[0] == 503
    assert "was not accepted: hostname mismatch" in sl.wait_log("hostname mismatch")
    # The name it does carry: accepted.
    ok = sluice(conf(upstream, tls_redis.tls_url(), certs,
                     [{"name": "w", "limit": 3, "window": "1m"}],
                     tls={"server_name": "localhost"}, on_store_error="deny"),
                workers=1)
    assert [ok.request("GET", "/leads/x")[0] for _ in range(4)] == [200] * 3 + [429]


def test_mutual_tls_with_a_client_certificate_and_refused_without(upstream, certs,
                                                                   sluice):
    r = TLSRedis(certs, client_certs=True)
    try:
        rules = [{"name": "w", "limit": 3, "window": "1m"}]
        without = sluice(conf(upstream, r.tls_url(), certs, rules,
                              on_store_error="deny"), workers=1)
        assert without.request("GET", "/leads/x")[0] == 503
        line = [x for x in without.wait_log("unreachable").splitlines()
                if "unreachable" in x]
        assert len(line) == 1
        # TLS 1.3 ends the client's handshake before the server looks at its
        # certificate: the server's alert is read ("tlsv13 alert certificate
        # required"), unless its reset overtook the first write.
        assert ("TLS with 127.0.0.1:%d failed: tlsv13 alert certificate required"
                % r.tls_port in line[0] or "reset by peer" in line[0]), line[0]
        assert upstream.count() == 0

        with_cert = sluice(conf(upstream, r.tls_url(), certs, rules,
                                on_store_error="deny",
                                tls={"cert_file": os.path.join(certs, "client.crt"),
                                     "key_file": os.path.join(certs, "client.key")}),
                           workers=1)
        assert [with_cert.request("GET", "/leads/x")[0] for _ in range(4)] == \
            [200] * 3 + [429]
        assert upstream.count() == 3
        assert int(r.cli("LLEN", "sluice:{leads}:r:1:w:")) == 3
        assert "unreachable" not in with_cert.read_log()
    finally:
        r.stop()


def test_an_acl_user_with_the_least_permissions(upstream, tls_redis, certs, sluice):
    """Every script sluice runs (decide, commit, release, renew, pause,
    sync, snapshot, history write and read, an operator's pause) as a user
    allowed only its key prefix, its channel and the commands listed above:
    Redis logs no refusal, and the limits hold."""
    tls_redis.cli("ACL", "SETUSER", "quota", "reset", "on", ">s3cret", "~acl:*",
                  "&acl:*", *ACL_COMMANDS)
    url = tls_redis.tls_url("quota:s3cret@")
    sl = sluice(conf(upstream, url, certs, [
        {"name": "all", "limit": 6, "window": "1m", "sync": "x-ratelimit"},
        {"name": "pub", "path": "/pub/{p}/**", "per": "{p}", "limit": 1, "window": "1m"},
        {"name": "inflight", "concurrency": 2},
    ], store_prefix="acl:", on_store_error="deny", concurrency_lease="600ms",
        admin=True), workers=1)
    # Decisions and commits; the per rule's index.
    assert sl.request("GET", "/leads/pub/A/x")[0] == 200
    assert sl.request("GET", "/leads/pub/A/y")[0] == 429
    # A slow call: its lease is renewed (every 200 ms) while it runs, and
    # released at its end.
    assert sl.request("GET", "/leads/slow", headers={"X-Test-Delay": "0.5"})[0] == 200
    # A usage report (sync).
    assert sl.request("GET", "/leads/r", headers={
        "X-Test-Resp-Header": "X-RateLimit-Remaining: 3"})[0] == 200
    # The provider's pause, then an operator ending it.
    assert sl.request("GET", "/leads/p", headers={
        "X-Test-Status": "429", "X-Test-Resp-Header": "Retry-After: 30"})[0] == 429
    assert wait_for(lambda: tls_redis.cli("EXISTS", "acl:{leads}:p:14:upstream-pause:")
                    == "1")
    code, _, body = sl.admin("POST", "/upstreams/leads/pause", {"clear": True},
                             headers={"X-Sluice-Admin": "1"})
    assert code == 200, body
    # The snapshot (/status) and the history, written every 2 s, then read.
    code, body = admin_get(sl, "/status")
    assert code == 200, body
    assert wait_for(lambda: tls_redis.cli("KEYS", "acl:{leads}:y:*") != "", timeout=5)
    code, body = admin_get(sl, "/history?upstream=leads&rule=all")
    assert code == 200, body
    # The report said 3 were left after /leads/r; /leads/p was one of them.
    statuses = [sl.request("GET", "/leads/z")[0] for _ in range(3)]
    assert statuses == [200, 200, 429], statuses
    # Redis refused nothing, and sluice never lost it.
    assert tls_redis.cli("ACL", "LOG") == ""
    log = sl.read_log()
    assert "unreachable" not in log and "NOPERM" not in log, log
    # Nothing outside the prefix.
    assert all(k.startswith("acl:") for k in tls_redis.cli("KEYS", "*").split())


def test_check_reads_the_tls_files(upstream, certs):
    rules = [{"name": "w", "limit": 3, "window": "1m"}]
    url = "rediss://:Pw-never-shown-9q@127.0.0.1:6380"
    good = conf(upstream, url, certs, rules, tls={
        "cert_file": os.path.join(certs, "client.crt"),
        "key_file": os.path.join(certs, "client.key")})
    assert check(good) == (0, "")
    missing = conf(upstream, url, certs, rules, ca="no-such-ca.crt")
    code, err = check(missing)
    assert code == 1
    assert "store_tls.ca_file: cannot read" in err and "no-such-ca.crt" in err, err
    assert "No such file or directory" in err and "Pw-never-shown-9q" not in err
    # A key that is not the certificate's.
    wrong_key = conf(upstream, url, certs, rules, tls={
        "cert_file": os.path.join(certs, "client.crt"),
        "key_file": os.path.join(certs, "server.key")})
    code, err = check(wrong_key)
    assert code == 1 and "is not the key of" in err, err
    half = conf(upstream, url, certs, rules,
                tls={"cert_file": os.path.join(certs, "client.crt")})
    code, err = check(half)
    assert code == 1 and "cert_file and key_file go together" in err, err
    # store_tls with a plain redis:// store is a mistake, not ignored.
    plain = conf(upstream, "redis://127.0.0.1:6379", certs, rules)
    code, err = check(plain)
    assert code == 1 and "store_tls: applies to a rediss:// store only" in err, err


def test_the_token_broker_reaches_redis_over_tls_too(upstream, tls_redis, certs):
    """The broker's own connection (a blocking client on its thread) is the
    same link as the store's: TLS with the private CA, a client
    certificate.  Three instances, thirty calls, one login for the fleet,
    the token sealed in Redis, and no plain connection from sluice."""
    from harness import Sluice, parallel
    from test_auth import CLIENT_SECRET, FakeProvider, config, get
    p = FakeProvider()
    fleet = []
    try:
        for _ in range(3):
            c = config(p, admin_port=free_port())
            c["store"] = tls_redis.tls_url()
            c["store_tls"] = {"ca_file": os.path.join(certs, "ca.crt"),
                              "cert_file": os.path.join(certs, "client.crt"),
                              "key_file": os.path.join(certs, "client.key")}
            fleet.append(Sluice(c, workers=1, env={"TEST_CLIENT_SECRET": CLIENT_SECRET}))
        res = parallel(30, lambda i: get(fleet[i % 3], "/crm/x/%d" % i))
        assert [r[0] for r in res] == [200] * 30, [r[2] for r in res if r[0] != 200][:3]
        assert p.nlogins() == 1
        assert "auth:crm:token" in tls_redis.cli("KEYS", "*")
        # Every connection from sluice is on the TLS port (the test's own
        # redis-cli, on the plain port, is the only other client).
        plain = [c for c in tls_redis.cli("CLIENT", "LIST").splitlines()
                 if "laddr=127.0.0.1:%d " % tls_redis.port in c and "cmd=client" not in c]
        assert plain == [], plain
        assert len(tls_redis.tls_clients()) >= 3
    finally:
        for sl in fleet:
            sl.stop()
        p.close()
