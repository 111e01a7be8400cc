"""deploy/compose.yaml, as a user runs it: Debian's docker-compose accepts
it (and refuses it without the admin token it needs), and the topology it
describes, run from the same files with real processes on loopback (the
same redis-server command, the same stand-in provider, two sluice
instances on the same mounted config and environment, their health
checks), shares one quota exactly: 100 forwarded, 20 refused."""
import json
import os
import socket
import subprocess
import tempfile

import yaml

from harness import ROOT, SLUICE_BIN, RedisServer, admin_request, free_port, wait_for

COMPOSE = os.path.join(ROOT, "deploy", "compose.yaml")
TOKEN = "compose-test-token-0123456789"


def compose_config(env):
    return subprocess.run(["docker-compose", "-f", COMPOSE, "config"], capture_output=True,
                          text=True, timeout=60, env=env, cwd=os.path.dirname(COMPOSE))


def test_compose_file_needs_the_admin_token():
    env = {k: v for k, v in os.environ.items() if k != "SLUICE_ADMIN_TOKEN"}
    p = compose_config(env)
    assert p.returncode != 0
    assert "SLUICE_ADMIN_TOKEN" in p.stderr


def mount(service, target):
    """The host path SERVICE mounts at TARGET."""
    for v in service["volumes"]:
        src, dst = v.split(":")[:2]
        if dst == target:
            return src
    raise AssertionError("%s is not mounted" % target)


def test_compose_topology_runs_and_shares_one_quota():
    p = compose_config(dict(os.environ, SLUICE_ADMIN_TOKEN=TOKEN))
    assert p.returncode == 0, p.stderr
    services = yaml.safe_load(p.stdout)["services"]
    assert set(services) == {"redis", "upstream", "sluice-a", "sluice-b"}
    for name in ("sluice-a", "sluice-b"):
        s = services[name]
        # Published on the host's loopback only, admin included.
        assert s["ports"] and all(port.startswith("127.0.0.1:") for port in s["ports"])
        assert s["environment"]["SLUICE_ADMIN_TOKEN"] == TOKEN
        assert {"redis", "upstream"} <= set(s["depends_on"])
        assert s["healthcheck"]["test"][:2] == ["CMD", "/usr/local/bin/sluice"]
    r = services["redis"]
    assert r["command"][0] == "redis-server"
    assert "noeviction" in r["command"]

    class ComposeRedis(RedisServer):
        # The service's own options (persistence, no eviction), on loopback.
        EXTRA_ARGS = tuple(r["command"][1:]) + ("--dir", tempfile.mkdtemp())

    redis = ComposeRedis()
    procs = []
    try:
        # The stand-in provider, from the file the service mounts.
        up = services["upstream"]
        script = mount(up, up["command"][1])
        up_port = free_port()
        procs.append(subprocess.Popen(["/usr/bin/python3", script, str(up_port), "127.0.0.1"]))

        def listening(port):
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                return True
            except OSError:
                return False
        assert wait_for(lambda: listening(up_port), 10)

        # Both instances mount the same config; compose's service names are
        # this host's loopback ports.
        cfg_path = mount(services["sluice-a"], "/etc/sluice/sluice.json")
        assert cfg_path == mount(services["sluice-b"], "/etc/sluice/sluice.json")
        text = open(cfg_path).read()
        assert "redis:6379" in text and "upstream:9000" in text
        text = text.replace("redis:6379", "127.0.0.1:%d" % redis.port)
        text = text.replace("upstream:9000", "127.0.0.1:%d" % up_port)
        cfg = json.loads(text)
        d = tempfile.mkdtemp()
        local_cfg = os.path.join(d, "sluice.json")
        with open(local_cfg, "w") as f:
            f.write(text)
        instances = []
        for name in ("sluice-a", "sluice-b"):
            port, admin = free_port(), free_port()
            env = dict(os.environ, **services[name]["environment"],
                       SLUICE_CONFIG=local_cfg, SLUICE_LISTEN="127.0.0.1:%d" % port,
                       SLUICE_ADMIN_LISTEN="127.0.0.1:%d" % admin)
            log = open(os.path.join(d, name + ".log"), "w")
            procs.append(subprocess.Popen([SLUICE_BIN, "-c", local_cfg], env=env,
                                          stdout=log, stderr=subprocess.STDOUT))
            instances.append((name, port, admin, env))

        def call(port, path, headers=None):
            status, _, body = admin_request(port, "GET", path, headers=headers)
            return status, body

        # Each service's health check, as compose runs it, turns healthy.
        for name, port, admin, env in instances:
            test = services[name]["healthcheck"]["test"][1:]
            cmd = [SLUICE_BIN] + test[1:]

            def healthy():
                return subprocess.run(cmd, env=env, capture_output=True,
                                      timeout=10).returncode == 0
            assert wait_for(healthy, 10), name

        limit = next(r["limit"] for r in cfg["upstreams"][0]["rules"] if r["name"] == "all")
        statuses = []
        for i in range(60):
            for name, port, admin, env in instances:
                statuses.append(call(port, "/leads/x?i=%d" % i)[0])
        assert statuses.count(200) == limit
        assert statuses.count(429) == 120 - limit

        # The admin listener: health without a token, the rest with it.
        name, port, admin, env = instances[0]
        assert call(admin, "/healthz")[0] == 200
        assert call(admin, "/status")[0] == 401
        status, body = call(admin, "/status", {"Authorization": "Bearer " + TOKEN})
        assert status == 200
        assert json.loads(body)["upstreams"][0]["name"] == "leads"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            assert p.wait(30) in (0, -15)
        redis.stop()
