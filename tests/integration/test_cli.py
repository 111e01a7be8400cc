"""The command line: --check, errors, environment overrides, signals."""
import glob
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time

from harness import ROOT, SLUICE_BIN, Sluice, free_port, wait_for


def run(args, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([SLUICE_BIN] + args, capture_output=True, text=True,
                          env=e, timeout=30)


def write(text):
    fd, path = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def test_version_and_help():
    r = run(["--version"])
    assert r.returncode == 0 and r.stdout.startswith("sluice ")
    r = run(["--help"])
    assert r.returncode == 0 and "--check" in r.stdout
    r = run([])
    assert r.returncode == 2 and "usage" in r.stderr


def test_help_lists_every_environment_variable_read():
    # The overrides come from the configuration's tables (the same rows the
    # reference prints); the rest are the literal getenv() calls.
    r = run(["--help"])
    assert r.returncode == 0
    listed = set(re.findall(r"^  ([A-Z][A-Z0-9_]+) ", r.stdout, re.M))
    overrides = dict(re.findall(r'^  (SLUICE_[A-Z_]+) +overrides "([a-z_.]+)"$',
                                r.stdout, re.M))
    assert overrides == {"SLUICE_LISTEN": "listen", "SLUICE_STORE": "store",
                         "SLUICE_ADMIN_LISTEN": "admin.listen",
                         "SLUICE_ADMIN_TOKEN": "admin.token",
                         "SLUICE_PRESETS_DIR": "presets_dir"}
    read = set()
    for d in ("proxy", "limits", "common"):
        for path in glob.glob(os.path.join(ROOT, d, "*.c")):
            with open(path) as f:
                read |= set(re.findall(r'getenv\("([A-Z0-9_]+)"\)', f.read()))
    assert read and read <= listed, read - listed
    ref = run(["--print-reference"])
    assert ref.returncode == 0
    for name, key in overrides.items():
        row = re.search(r"^\| `%s` \|.*\| `%s` \|" % (key.split(".")[-1], name),
                        ref.stdout, re.M)
        assert row, (name, key)


def test_example_configs_are_valid():
    examples = glob.glob(os.path.join(ROOT, "deploy", "examples", "*.json"))
    assert len(examples) >= 3
    for path in examples:
        r = run(["--check", "-c", path])
        assert r.returncode == 0, (path, r.stderr)
        assert "valid" in r.stdout


def test_check_lists_every_error_with_its_json_path():
    path = write(json.dumps({
        "listen": "nowhere",
        "colour": "blue",
        "upstreams": [{
            "name": "leads", "prefix": "leads", "url": "ftp://x",
            "on_limit": "explode",
            "rules": [
                {"name": "a", "limit": 10, "window": "5m"},
                {"name": "b", "limit": 0, "window": "1s"},
                {"name": "c", "limit": 5, "window": "5x"},
                {"name": "d", "path": "/a/{x", "limit": 1, "window": "1s"},
                {"name": "e", "per": "{nope}", "limit": 1, "window": "1s"},
                {"name": "a", "concurrency": 2, "limt": 3},
                {"name": "g", "methods": "GET", "limit": 1, "window": "1s"},
            ],
        }],
    }))
    r = run(["--check", "-c", path])
    assert r.returncode == 1
    err = r.stderr
    for expected in [
        'listen: "nowhere" is not HOST:PORT',
        "colour: unknown key",
        'upstreams[0].prefix: "leads" must start with "/"',
        'upstreams[0].url: "ftp://x" must be an http:// or https:// URL',
        'upstreams[0].on_limit: "explode" must be "reject" or "queue"',
        "upstreams[0].rules[1].limit: 0 must be between 1 and",
        'upstreams[0].rules[2].window: "5x" is not a duration',
        'upstreams[0].rules[3].path: "/a/{x" has a "{" without a closing "}"',
        'upstreams[0].rules[4].per: "{nope}" names no capture',
        'upstreams[0].rules[5].name: "a" is already the name of rules[0]',
        "upstreams[0].rules[5].limt: unknown key",
        "upstreams[0].rules[6].methods: must be a non-empty array",
    ]:
        assert expected in err, (expected, err)


def test_syntax_error_names_line_and_column():
    path = write('{\n  "upstreams": [\n    {"name": "x",, }\n  ]\n}\n')
    r = run(["--check", "-c", path])
    assert r.returncode == 1
    assert "%s:3:" % path in r.stderr


def test_missing_file_and_duplicate_keys():
    r = run(["--check", "-c", "/nonexistent/sluice.json"])
    assert r.returncode == 1 and "cannot open" in r.stderr
    path = write('{"upstreams": [], "upstreams": []}')
    r = run(["--check", "-c", path])
    assert r.returncode == 1 and "duplicate" in r.stderr


def test_environment_overrides(upstream):
    port = free_port()
    cfg = {"listen": "127.0.0.1:1", "upstreams": [
        {"name": "up", "prefix": "/up", "url": upstream.url}]}
    s = Sluice(cfg, env={"SLUICE_LISTEN": "127.0.0.1:%d" % port}, port=port)
    try:
        status, h, body = s.request("GET", "/up/x")
        assert status == 200
    finally:
        s.stop()
    r = run(["--check", "-c", write(json.dumps(cfg))],
            env={"SLUICE_STORE": "bogus://x"})
    assert r.returncode == 1 and "SLUICE_STORE" in r.stderr


def test_port_in_use_is_a_clear_error(upstream):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    path = write(json.dumps({"listen": "127.0.0.1:%d" % port, "upstreams": [
        {"name": "up", "prefix": "/up", "url": upstream.url}]}))
    try:
        r = subprocess.run([SLUICE_BIN, "-c", path], capture_output=True, text=True,
                           timeout=10)
    finally:
        holder.close()
    assert r.returncode == 1
    assert "Address already in use" in r.stderr


def test_sigterm_finishes_calls_in_flight(upstream):
    s = Sluice({"upstreams": [{"name": "up", "prefix": "/up", "url": upstream.url}]})
    result = {}

    def slow():
        result["r"] = s.request("GET", "/up/slow", headers={"X-Test-Delay": "1"})

    t = threading.Thread(target=slow)
    t.start()
    assert wait_for(lambda: upstream.active == 1)  # the slow call is upstream
    s.proc.send_signal(signal.SIGTERM)
    t.join()
    assert result["r"][0] == 200
    assert s.stop() == 0
    # No new connections after the stop.
    try:
        socket.create_connection(("127.0.0.1", s.port), 0.5).close()
        refused = False
    except OSError:
        refused = True
    assert refused


def test_shutdown_timeout_bounds_the_drain(upstream):
    s = Sluice({"shutdown_timeout": "500ms",
                "upstreams": [{"name": "up", "prefix": "/up", "url": upstream.url}]})
    result = {}

    def slow():
        try:
            result["r"] = s.request("GET", "/up/slow", headers={"X-Test-Delay": "5"})
        except Exception as e:  # the connection is closed on us
            result["e"] = e

    t = threading.Thread(target=slow)
    t.start()
    assert wait_for(lambda: upstream.active == 1)  # the slow call is upstream
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    assert s.stop() == 0
    assert time.monotonic() - t0 < 3
    t.join()
    assert "e" in result


def test_check_reads_cluster_urls_and_refuses_a_database(upstream):
    # Seeds are read (any number, TLS or not); a database other than 0,
    # which a Cluster does not have, is refused, saying why, the password
    # unechoed.
    for url in ("redis-cluster://:Pw-never-shown-9q@n1:7000,n2:7001",
                "rediss-cluster://:Pw-never-shown-9q@n1:7000",
                "redis-cluster://n1,n2,n3/0"):
        ok = write(json.dumps({"store": url, "upstreams": [
            {"name": "up", "prefix": "/up", "url": upstream.url}]}))
        r = run(["--check", "-c", ok])
        assert r.returncode == 0, r.stderr
        assert "Pw-never-shown-9q" not in r.stdout + r.stderr
    bad = write(json.dumps({"store": "redis-cluster://:Pw-never-shown-9q@n1:7000/2",
                            "upstreams": [{"name": "up", "prefix": "/up", "url": upstream.url}]}))
    r = run(["--check", "-c", bad])
    assert r.returncode == 1
    assert "a database other than 0, which Redis Cluster does not have" in r.stderr
    assert "Pw-never-shown-9q" not in r.stderr
    for url in ("redis://127.0.0.1:6379/1", "redis-sentinel://s1:26379,s2/mymaster/2"):
        ok = write(json.dumps({"store": url, "upstreams": [
            {"name": "up", "prefix": "/up", "url": upstream.url}]}))
        assert run(["--check", "-c", ok]).returncode == 0
