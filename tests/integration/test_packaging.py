"""What can be tested of the container without a Docker engine: the entry
point script, the Dockerfile's references, and the shipped configs."""
import json
import os
import re
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from harness import ROOT, SLUICE_BIN, free_port

ENTRY = os.path.join(ROOT, "docker", "entrypoint.sh")


def test_entrypoint_runs_sluice_on_the_mounted_config(upstream):
    port = free_port()
    d = tempfile.mkdtemp()
    cfg = os.path.join(d, "sluice.json")
    with open(cfg, "w") as f:
        json.dump({"upstreams": [{"name": "up", "prefix": "/up", "url": upstream.url}]}, f)
    env = dict(os.environ, SLUICE_BIN=SLUICE_BIN, SLUICE_CONFIG=cfg,
               SLUICE_LISTEN="127.0.0.1:%d" % port)
    p = subprocess.Popen(["sh", ENTRY], env=env, stderr=subprocess.PIPE)
    try:
        body = None
        for _ in range(100):
            try:
                body = urllib.request.urlopen("http://127.0.0.1:%d/up/x" % port).read()
                break
            except OSError:
                time.sleep(0.05)
        assert body is not None and json.loads(body)["target"] == "/x"
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0  # exec: the signal reached sluice itself


def test_entrypoint_without_config_explains_and_fails():
    env = dict(os.environ, SLUICE_BIN=SLUICE_BIN, SLUICE_CONFIG="/nonexistent/sluice.json")
    r = subprocess.run(["sh", ENTRY], env=env, capture_output=True, text=True, timeout=10)
    assert r.returncode == 78
    assert "no readable configuration at /nonexistent/sluice.json" in r.stderr
    assert "mount one" in r.stderr


def test_entrypoint_passes_options_and_commands():
    cfg = os.path.join(ROOT, "deploy", "examples", "quickstart.json")
    env = dict(os.environ, SLUICE_BIN=SLUICE_BIN, SLUICE_CONFIG=cfg)
    r = subprocess.run(["sh", ENTRY, "--check"], env=env, capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 0 and "valid" in r.stdout
    r = subprocess.run(["sh", ENTRY, "echo", "hello"], env=env, capture_output=True,
                       text=True, timeout=10)
    assert r.stdout.strip() == "hello"


def test_dockerfile_copies_what_exists_and_runs_unprivileged():
    text = open(os.path.join(ROOT, "docker", "Dockerfile")).read()
    for src in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert os.path.exists(os.path.join(ROOT, src)), src
    assert re.search(r"^USER sluice$", text, re.M)
    assert "FROM debian:bookworm AS build" in text
    assert "SLUICE_CONFIG=/etc/sluice/sluice.json" in text
    # Everything the build reads (but the tests, which it skips) is copied
    # into the build stage: sources, the page, cmake/ helpers.
    copied = set(re.findall(r"^COPY (?!--from)(\S+)", text, re.M))
    cmake = open(os.path.join(ROOT, "CMakeLists.txt")).read()
    # Every source the image's build reads, whether listed on its own line
    # or beside the target's name, except what the image turns off.
    image_off = set(re.findall(r"-D(SLUICE_\w+)=OFF", text))
    cmake = re.sub(r"^if\((%s)\)\n.*?^endif\(\)" % "|".join(image_off), "", cmake,
                   flags=re.M | re.S)
    used = set(re.findall(r"[\s(](\w+)/[\w./-]+\.c\b", cmake))
    used |= set(re.findall(r"\$\{CMAKE_SOURCE_DIR\}/(\w+)/", cmake))
    used -= {"tests", "CMAKE_BINARY_DIR"}
    assert used <= {c.rstrip("/") for c in copied}, used - copied
    # The state file's directory is a volume the unprivileged user owns.
    assert re.search(r"^VOLUME /var/lib/sluice$", text, re.M)
    assert "chown sluice /var/lib/sluice" in text


def test_container_and_systemd_reload_with_sighup(upstream):
    """`docker kill -s HUP` reaches sluice itself (the entry point execs
    it) and reloads the mounted file, with the environment overrides kept;
    the systemd unit's reload sends the same signal."""
    port = free_port()
    d = tempfile.mkdtemp()
    cfg = os.path.join(d, "sluice.json")

    def write(limit):
        with open(cfg, "w") as f:
            json.dump({"upstreams": [{"name": "up", "prefix": "/up", "url": upstream.url,
                                      "rules": [{"name": "r", "limit": limit,
                                                 "window": "1h"}]}]}, f)

    def get():
        try:
            return urllib.request.urlopen("http://127.0.0.1:%d/up/x" % port).status
        except urllib.error.HTTPError as e:
            return e.code

    write(1)
    env = dict(os.environ, SLUICE_BIN=SLUICE_BIN, SLUICE_CONFIG=cfg,
               SLUICE_LISTEN="127.0.0.1:%d" % port)
    p = subprocess.Popen(["sh", ENTRY], env=env, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):
            try:
                assert get() == 200
                break
            except OSError:
                time.sleep(0.05)
        assert get() == 429
        write(2)
        p.send_signal(signal.SIGHUP)
        deadline = time.time() + 5
        while get() != 200 and time.time() < deadline:
            time.sleep(0.05)
        assert get() == 429            # exactly one more: the count was kept
        assert upstream.count() == 2
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0
    assert "SIGHUP: configuration reloaded" in p.stderr.read()
    unit = open(os.path.join(ROOT, "deploy", "sluice.service")).read()
    assert re.search(r"^ExecReload=/bin/kill -HUP \$MAINPID$", unit, re.M)


def test_health_subcommand(upstream, tmp_path):
    """`sluice health` (the image's HEALTHCHECK): 0 while the configured
    sluice answers, 1 with a reason when it does not."""
    from harness import Sluice
    port, admin = free_port(), free_port()
    cfg = {"listen": "127.0.0.1:%d" % port,
           "admin": {"listen": "127.0.0.1:%d" % admin},
           "upstreams": [{"name": "up", "prefix": "/up", "url": upstream.url}]}
    path = os.path.join(str(tmp_path), "sluice.json")
    with open(path, "w") as f:
        json.dump(cfg, f)

    def health(**env):
        e = dict(os.environ, **env)
        return subprocess.run([SLUICE_BIN, "health", "-c", path], capture_output=True,
                              text=True, timeout=20, env=e)

    r = health()
    assert r.returncode == 1 and "/healthz" in r.stderr and "connect" in r.stderr
    sl = Sluice(cfg, port=port)
    try:
        r = health()
        assert r.returncode == 0 and "ok" in r.stdout, r.stderr
        # From the environment, as in the image (SLUICE_CONFIG).
        r = subprocess.run([SLUICE_BIN, "health"], capture_output=True, text=True,
                           timeout=20, env=dict(os.environ, SLUICE_CONFIG=path))
        assert r.returncode == 0, r.stderr
    finally:
        sl.stop()
    # Without an admin listener: the proxy's port.
    del cfg["admin"]
    with open(path, "w") as f:
        json.dump(cfg, f)
    sl = Sluice(cfg, port=port)
    try:
        r = health()
        assert r.returncode == 0 and "accepts connections" in r.stdout, r.stderr
    finally:
        sl.stop()
    r = health()
    assert r.returncode == 1


def test_dockerfile_has_a_healthcheck_without_extra_tools():
    text = open(os.path.join(ROOT, "docker", "Dockerfile")).read()
    assert re.search(r'^\s+CMD \["/usr/local/bin/sluice", "health"\]$', text, re.M)
    # No curl or wget installed in the runtime stage (libcurl4 is a library).
    runtime = "\n".join(l for l in text.split("FROM debian:bookworm-slim")[1].splitlines()
                        if not l.lstrip().startswith("#"))
    assert not re.search(r"\s(curl|wget)\s", runtime), runtime
