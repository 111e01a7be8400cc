"""A redis-sentinel:// store against real Sentinels: three redis-sentinel
processes watching a primary and its replica, all on loopback ports.
Sluice asks the Sentinels for the primary, confirms it with ROLE, follows
a failover (SENTINEL FAILOVER, and kill -9 of the primary), and the
quota stays one count, checked at the upstream."""

import os
import re
import shutil
import subprocess
import tempfile
import time

import pytest

from harness import (RedisServer, RedisError, free_port, resp_command, upstream_config,
                     wait_for)

MASTER = "mymaster"


class DataServer(RedisServer):
    """A primary (REPLICAOF None) or a replica of it, with PASSWORD as its
    requirepass and masterauth."""

    def __init__(self, replicaof=None, password=None):
        self.password = password
        extra = []
        if replicaof:
            extra += ["--replicaof", "127.0.0.1", str(replicaof)]
        if password:
            extra += ["--masterauth", password, "--requirepass", password]
        self.EXTRA_ARGS = tuple(extra)
        super().__init__()

    def cli(self, *args):
        auth = ["--no-auth-warning", "-a", self.password] if self.password else []
        out = subprocess.run(["redis-cli", "-p", str(self.port)] + auth + [str(a) for a in args],
                             capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()


class Sentinels:
    """A primary, a replica and N Sentinels (quorum 2) watching them: the
    primary is seen down after 1 s without an answer."""

    def __init__(self, n=3, password=None, data_password=None):
        self.dir = tempfile.mkdtemp(prefix="sluice-sentinel-")
        self.password = password
        self.data_password = data_password
        self.primary = DataServer(password=data_password)
        self.replica = DataServer(replicaof=self.primary.port, password=data_password)
        self.procs, self.ports = [], []
        assert wait_for(lambda: "master_link_status:up" in self.replica.cli(
            "INFO", "replication"), 10)
        for i in range(n):
            port = free_port()
            path = os.path.join(self.dir, "sentinel%d.conf" % i)
            lines = ["port %d" % port, "bind 127.0.0.1", "dir %s" % self.dir,
                     "sentinel monitor %s 127.0.0.1 %d 2" % (MASTER, self.primary.port),
                     "sentinel down-after-milliseconds %s 1000" % MASTER,
                     "sentinel failover-timeout %s 5000" % MASTER,
                     "sentinel parallel-syncs %s 1" % MASTER]
            if data_password:
                lines.append("sentinel auth-pass %s %s" % (MASTER, data_password))
            if password:
                lines.append("requirepass %s" % password)
            with open(path, "w") as f:
                f.write("\n".join(lines) + "\n")
            self.procs.append(subprocess.Popen(["redis-sentinel", path],
                                               stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL))
            self.ports.append(port)
        # Ready when every Sentinel knows the replica and the other
        # Sentinels (they find each other through the primary's hello
        # channel, every 2 s): only then can they agree on a failover.
        assert wait_for(self._ready, 20), "the Sentinels did not find each other"

    def ask(self, i, *args):
        cmd = [*args]
        if self.password:
            return self._sentinel_auth_command(self.ports[i], cmd)
        return resp_command(self.ports[i], *cmd)

    def _sentinel_auth_command(self, port, cmd):
        import socket
        from harness import resp_encode, resp_read
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(resp_encode("AUTH", self.password) + resp_encode(*cmd))
            f = s.makefile("rb")
            resp_read(f)
            return resp_read(f)

    def _ready(self):
        try:
            for i in range(len(self.ports)):
                info = self.ask(i, "SENTINEL", "MASTER", MASTER)
                d = dict(zip(info[0::2], info[1::2]))
                if int(d[b"num-slaves"]) < 1 or int(d[b"num-other-sentinels"]) < len(self.ports) - 1:
                    return False
            return True
        except (OSError, RedisError):
            return False

    def primary_port(self, i=0):
        try:
            return int(self.ask(i, "SENTINEL", "get-master-addr-by-name", MASTER)[1])
        except (OSError, RedisError, TypeError):
            return None

    def url(self, scheme="redis-sentinel", master=MASTER):
        auth = ":%s@" % self.data_password if self.data_password else ""
        return "%s://%s%s/%s" % (scheme, auth, ",".join("127.0.0.1:%d" % p for p in self.ports),
                                 master)

    def server(self, port):
        return self.primary if self.primary.port == port else self.replica

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.primary.stop()
        self.replica.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def sentinels():
    s = Sentinels()
    yield s
    s.stop()


def cfg(up, url, rules, **top):
    """One worker unless the test says otherwise: a failover is followed by
    each worker on its own, and /status says "up" once every worker of the
    process is, so with one worker "up" means the calls go to the primary."""
    top.setdefault("workers", 1)
    return upstream_config(up, rules, url, admin=True, top=top)


def calls(instances, n, path="/leads/x"):
    return [instances[i % len(instances)].request("GET", path)[0] for i in range(n)]


def heartbeat_past_the_calls(primary):
    """Wait until a fleet heartbeat, written on PRIMARY after the calls made
    so far, is far enough past them that a failover puts none of them back
    twice: repair (limits/sl_redis_repair.c) puts back the calls sent from
    the surviving heartbeat less store_timeout, the commit's hold and 50 ms
    (about 0.26 s here); 0.4 s past the calls is past that margin."""
    sec, usec = primary.cli("TIME").split()
    after = int(sec) * 1000000 + int(usec) + 400000

    def beat():
        m = primary.command("GET", "sluice:{leads}:m") or b""
        return int(m.split(b"|")[-1] or 0) > after if m.count(b"|") == 5 else False

    assert wait_for(beat, 10)


def store_up(sl):
    return sl.status()["store"]["state"] == "up"


def test_two_instances_share_one_count_through_the_sentinels_primary(upstream, sentinels,
                                                                      sluice):
    conf = lambda: cfg(upstream, sentinels.url(), [{"name": "all", "limit": 10, "window": "1m"}],
                       workers=2)
    a, b = sluice(conf()), sluice(conf())
    assert wait_for(lambda: store_up(a) and store_up(b), 10)
    assert calls([a, b], 14) == [200] * 10 + [429] * 4
    assert len(upstream.times()) == 10
    # The count is on the primary the Sentinels name, and reached the replica.
    key = "sluice:{leads}:r:3:all:"
    assert int(sentinels.primary.cli("LLEN", key)) == 10
    assert wait_for(lambda: sentinels.replica.cli("LLEN", key) == "10", 5)
    st = a.status()["store"]
    assert st["address"].startswith("%s via Sentinel 127.0.0.1:%d," % (MASTER, sentinels.ports[0]))
    assert "the Sentinels name 127.0.0.1:%d as the primary" % sentinels.primary.port in a.read_log()


def test_a_failover_moves_every_instance_to_the_new_primary_and_keeps_the_count(
        upstream, sentinels, sluice):
    conf = lambda: cfg(upstream, sentinels.url(), [{"name": "all", "limit": 10, "window": "1m"}],
               on_store_error="deny")
    a, b = sluice(conf()), sluice(conf())
    assert wait_for(lambda: store_up(a) and store_up(b), 10)
    assert calls([a, b], 8) == [200] * 8
    old, new = sentinels.primary, sentinels.replica
    assert wait_for(lambda: new.cli("LLEN", "sluice:{leads}:r:3:all:") == "8", 5)
    # The new primary has another run_id: the instances put back the calls
    # it may lack (limits/sl_redis_repair.c), those sent from the last
    # heartbeat it has less store_timeout and a little: a call sent just
    # before the switch counts twice.  A heartbeat past the calls (every
    # 0.5 s) says every call is there, and the count below stays exact.
    heartbeat_past_the_calls(old)
    assert sentinels.ask(0, "SENTINEL", "FAILOVER", MASTER) == b"OK"
    assert wait_for(lambda: sentinels.primary_port() == new.port, 15)
    # Both instances follow +switch-master (or their closed link) to the
    # new primary: the log names it, and the store is up again.
    for sl in (a, b):
        assert wait_for(lambda sl=sl: "as the primary \"%s\"" % MASTER in sl.read_log()
                        and "127.0.0.1:%d as the primary" % new.port in sl.read_log(), 15)
    assert wait_for(lambda: store_up(a) and store_up(b), 15)
    # The 8 calls made through the old primary still count: 2 more, then 429.
    got = calls([a, b], 6)
    assert got.count(200) == 2 and set(got) <= {200, 429, 503}, got
    assert len(upstream.times()) == 10
    # Decisions went to the new primary; the Sentinels make the old one a
    # replica of it (a moment after the switch).
    assert int(new.cli("LLEN", "sluice:{leads}:r:3:all:")) == 10
    assert wait_for(lambda: "role:slave" in old.cli("INFO", "replication"), 15)


def test_kill_9_of_the_primary_service_resumes_on_the_replica(upstream, sentinels, sluice):
    """The primary dies.  The Sentinels see it down after 1 s
    (down-after-milliseconds) and promote the replica, which takes a few
    seconds more (an election among them); meanwhile the instances ask
    them again and again.  Calls are refused (on_store_error deny) until
    the replica is the primary, then decided there, with the calls made
    before the crash still counted (the replica had them)."""
    conf = lambda: cfg(upstream, sentinels.url(), [{"name": "all", "limit": 10, "window": "1m"}],
               on_store_error="deny")
    a, b = sluice(conf()), sluice(conf())
    assert wait_for(lambda: store_up(a) and store_up(b), 10)
    assert calls([a, b], 6) == [200] * 6
    new = sentinels.replica
    assert wait_for(lambda: new.cli("LLEN", "sluice:{leads}:r:3:all:") == "6", 5)
    # (A heartbeat past the calls: see the test above.)
    heartbeat_past_the_calls(sentinels.primary)
    t0 = time.monotonic()
    sentinels.primary.kill()
    # Resumes within 15 s: 1 s to be seen down, the Sentinels' election and
    # the promotion (2-5 s here), and the instances' next ask (at most 1 s
    # of backoff); the rest is room for a loaded machine.
    assert wait_for(lambda: store_up(a) and store_up(b) and
                    sentinels.primary_port() == new.port, 20)
    resumed = time.monotonic() - t0
    assert resumed < 15, resumed
    got = calls([a, b], 6)
    assert got.count(200) == 4 and got.count(429) == 2, got
    assert len(upstream.times()) == 10


def test_an_unknown_master_name_is_one_clear_line_and_on_store_error_decides(
        upstream, sentinels, sluice):
    sl = sluice(cfg(upstream, sentinels.url(master="nosuch"),
                    [{"name": "all", "limit": 10, "window": "1m"}], on_store_error="deny"))
    assert wait_for(lambda: "no Sentinel gave the primary \"nosuch\"" in sl.read_log(), 10)
    log = sl.read_log()
    assert "127.0.0.1:%d does not know it" % sentinels.ports[0] in log
    assert sl.request("GET", "/leads/x")[0] == 503
    assert sl.status()["store"]["state"] == "down"
    assert upstream.times() == []


def test_sentinels_with_a_password_of_their_own(upstream, sluice):
    s = Sentinels(password="Sentinel-pw-7f", data_password="Data-pw-3k")
    try:
        rules = [{"name": "all", "limit": 3, "window": "1m"}]
        # Without the Sentinels' password: they refuse the question.
        sl = sluice(cfg(upstream, s.url(), rules, on_store_error="deny"))
        assert wait_for(lambda: "no Sentinel gave the primary" in sl.read_log(), 10)
        assert "NOAUTH" in sl.read_log() or "Authentication required" in sl.read_log()
        assert "Sentinel-pw-7f" not in sl.read_log() and "Data-pw-3k" not in sl.read_log()
        assert sl.request("GET", "/leads/x")[0] == 503
        # With it (from the environment), and the primary's in the URL.
        good = sluice(cfg(upstream, s.url(), rules, on_store_error="deny",
                          store_sentinel={"password": "env:SENTINEL_PW"}),
                      env={"SENTINEL_PW": "Sentinel-pw-7f"})
        assert wait_for(lambda: store_up(good), 10)
        assert calls([good], 4) == [200] * 3 + [429]
        assert "Sentinel-pw-7f" not in good.read_log()
    finally:
        s.stop()


def test_check_reads_sentinel_urls_and_store_sentinel(upstream, tmp_path):
    from harness import SLUICE_BIN
    import json

    def check(conf):
        p = tmp_path / "c.json"
        p.write_text(json.dumps(conf))
        r = subprocess.run([SLUICE_BIN, "--check", "-c", str(p)], capture_output=True,
                           text=True, env={"PATH": os.environ["PATH"]})
        return r.returncode, r.stdout + r.stderr

    url = "redis-sentinel://:Pw-never-shown-9q@127.0.0.1:1,127.0.0.1:2/m1/3"
    code, out = check(upstream_config(upstream, [], url))
    assert code == 0, out
    code, out = check(upstream_config(upstream, [], url,
                                      top={"store_sentinel": {"user": "u"}}))
    assert code == 1 and "store_sentinel: user needs a password" in out
    code, out = check(upstream_config(upstream, [], "redis://127.0.0.1:6379",
                                      top={"store_sentinel": {"password": "x"}}))
    assert code == 1 and "applies to a redis-sentinel:// store only" in out
    assert "Pw-never-shown-9q" not in out


class FakeSentinel:
    """A Sentinel whose view is stale: it names ADDRS in turn (one per
    question), e.g. a replica first.  Speaks just enough RESP."""

    def __init__(self, addrs):
        import socket
        import threading
        self.addrs = list(addrs)
        self.asked = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        import threading
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(c,), daemon=True).start()

    def _client(self, c):
        from harness import resp_read
        f = c.makefile("rb")
        try:
            while True:
                cmd = [x.decode().upper() if i < 2 else x.decode()
                       for i, x in enumerate(resp_read(f))]
                if cmd[:2] == ["SENTINEL", "GET-MASTER-ADDR-BY-NAME"]:
                    host, port = self.addrs[min(self.asked, len(self.addrs) - 1)]
                    self.asked += 1
                    out = b"*2\r\n$%d\r\n%s\r\n$%d\r\n%d\r\n" % (
                        len(host), host.encode(), len(str(port)), port)
                elif cmd[0] == "SUBSCRIBE":
                    out = b"*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:1\r\n" % (
                        len(cmd[1]), cmd[1].encode())
                else:
                    out = b"+OK\r\n"
                c.sendall(out)
        except (OSError, AttributeError, TypeError):
            c.close()

    def close(self):
        self.sock.close()


def test_a_stale_sentinel_naming_a_replica_is_caught_by_role(upstream, sentinels, sluice):
    """The first Sentinel listed always names the replica (its view is
    stale, as a Sentinel cut off from the others would keep it): ROLE says
    "slave", sluice drops that link, and asks another Sentinel first next
    time, which names the primary.  No decision is ever written to the
    replica."""
    fake = FakeSentinel([("127.0.0.1", sentinels.replica.port)])
    try:
        url = "redis-sentinel://127.0.0.1:%d,127.0.0.1:%d/%s" % (
            fake.port, sentinels.ports[0], MASTER)
        sl = sluice(cfg(upstream, url, [{"name": "all", "limit": 5, "window": "1m"}],
                        on_store_error="deny"))
        # Dropped as a replica (an outage, logged), then found on the primary.
        assert wait_for(lambda: "is back" in sl.read_log(), 10)
        assert store_up(sl) and fake.asked >= 1
        assert calls([sl], 6) == [200] * 5 + [429]
        assert int(sentinels.primary.cli("LLEN", "sluice:{leads}:r:3:all:")) == 5
        log = sl.read_log()
        assert "127.0.0.1:%d as the primary" % sentinels.replica.port in log
        assert "a replica, not the primary" in log
        # The replica ran no script of sluice's (SCRIPT LOAD at connect is
        # no write; a decision would be an EVALSHA or EVAL).
        stats = sentinels.replica.cli("INFO", "commandstats")
        assert "cmdstat_evalsha" not in stats and "cmdstat_eval:" not in stats, stats
    finally:
        fake.close()


def test_a_plain_url_naming_a_replica_is_refused_not_written(upstream, sentinels, sluice):
    # ROLE says "slave": the link is dropped (and tried again no faster than
    # the backoff), calls decided by on_store_error, never counted there.
    replica = sentinels.replica
    before = int(re.search(r"total_connections_received:(\d+)",
                           replica.cli("INFO", "stats")).group(1))
    sl = sluice(cfg(upstream, "redis://127.0.0.1:%d" % replica.port,
                    [{"name": "all", "limit": 5, "window": "1m"}], on_store_error="deny"))
    assert wait_for(lambda: "a replica, not the primary" in sl.read_log(), 10)
    assert sl.request("GET", "/leads/x")[0] == 503
    time.sleep(2)
    after = int(re.search(r"total_connections_received:(\d+)",
                          replica.cli("INFO", "stats")).group(1))
    # The backoff doubles from 50 ms to 1 s: about 7 tries in 2 s, not 40
    # (the test's own redis-cli calls are 2 more, and the harness's look at
    # the server's role, harness.Sluice._wait_fleet, one).
    assert after - before <= 15, after - before
    assert upstream.times() == []


def test_readonly_catches_a_replica_when_role_is_not_allowed(upstream, sentinels, sluice):
    """An ACL user without +role: ROLE is refused (an answer that tells
    nothing), and the first decision's READONLY drops the link."""
    replica = sentinels.replica
    replica.cli("ACL", "SETUSER", "norole", "reset", "on", ">pw", "~*", "&*", "+@all", "-role")
    sl = sluice(cfg(upstream, "redis://norole:pw@127.0.0.1:%d" % replica.port,
                    [{"name": "all", "limit": 5, "window": "1m"}], on_store_error="deny"))
    codes = [sl.request("GET", "/leads/x")[0] for _ in range(3)]
    assert wait_for(lambda: "a replica, not the primary" in sl.read_log(), 10)
    assert 200 not in codes and upstream.times() == []


def test_the_token_broker_finds_the_primary_through_the_sentinels(sentinels):
    """The broker's own Redis connection (a blocking client on its thread)
    asks the Sentinels too: three instances, one login for the fleet, the
    token sealed on the primary."""
    from test_auth import FakeProvider, get, start
    from harness import parallel
    p = FakeProvider()
    fleet = []
    try:
        for _ in range(3):
            fleet.append(start(p, store=sentinels.url(), workers=1))
        res = parallel(30, lambda i: get(fleet[i % 3], "/crm/x/%d" % i))
        assert [r[0] for r in res] == [200] * 30, [r[2] for r in res if r[0] != 200][:3]
        assert p.nlogins() == 1
        assert "auth:crm:token" in sentinels.primary.cli("KEYS", "*")
    finally:
        for sl in fleet:
            sl.stop()
        p.close()
