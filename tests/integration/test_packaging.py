"""What can be tested of the container without a Docker engine: the entry
point script, the Dockerfile's references, and the shipped configs."""
import json
import os
import re
import signal
import subprocess
import tempfile
import time
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
