"""What systemd sees of sluice under the shipped unit (deploy/sluice.service,
Type=notify): readiness only once calls are served, reloads, stopping, and
the watchdog; and a state file sluice cannot write is an error at start.

The service manager's side is played by a real AF_UNIX datagram socket
named by $NOTIFY_SOCKET, as systemd passes it."""
import json
import os
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from harness import SLUICE_BIN


class Manager:
    """The service manager's notify socket: every datagram sluice sends."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="sl-notify-")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def next(self, timeout=10):
        """The next message as a dict of its KEY=VALUE lines."""
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n") if line)

    def until(self, key, timeout=10):
        """Messages up to and including the first one carrying KEY."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            m = self.next(max(0.01, deadline - time.monotonic()))
            seen.append(m)
            if key in m:
                return seen

    def close(self):
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


def conf(upstream, **extra):
    c = {"store": "memory",
         "upstreams": [{"name": "api", "prefix": "/api", "url": upstream.url,
                        "rules": [{"name": "all", "limit": 100, "window": "10s"}]}]}
    c.update(extra)
    return c


def test_ready_reloading_stopping(upstream, sluice):
    mgr = Manager()
    try:
        sl = sluice(conf(upstream), env={"NOTIFY_SOCKET": mgr.path})
        ready = mgr.until("READY")[-1]
        assert ready["READY"] == "1"
        assert "serving on 127.0.0.1:%d" % sl.port in ready["STATUS"]
        # READY=1 means calls are served: the listener is open by then.
        assert sl.request("GET", "/api/x")[0] == 200

        sl.proc.send_signal(signal.SIGHUP)
        msgs = mgr.until("READY")
        assert msgs[0]["RELOADING"] == "1"
        assert int(msgs[0]["MONOTONIC_USEC"]) > 0
        assert "generation 2" in msgs[-1]["STATUS"]

        # A file that no longer parses: still READY, saying so.
        with open(sl.config_path, "w") as f:
            f.write("{not json")
        sl.proc.send_signal(signal.SIGHUP)
        msgs = mgr.until("READY")
        assert msgs[0]["RELOADING"] == "1"
        assert "generation 2; the last reload was refused" in msgs[-1]["STATUS"]
        assert sl.request("GET", "/api/x")[0] == 200

        sl.proc.send_signal(signal.SIGTERM)
        assert mgr.until("STOPPING")[-1]["STOPPING"] == "1"
        assert sl.proc.wait(10) == 0
    finally:
        mgr.close()


def test_no_manager_no_messages_and_no_harm(upstream, sluice):
    """Outside systemd nothing changes (NOTIFY_SOCKET unset, or naming a
    socket nobody listens on)."""
    sl = sluice(conf(upstream), env={"NOTIFY_SOCKET": "/tmp/sl-nobody-listens-here"})
    assert sl.request("GET", "/api/x")[0] == 200


def test_unwritable_state_file_is_an_error_at_start(upstream, tmp_path):
    """A state file sluice cannot keep (its directory missing, or a file
    where the directory should be: as root, permissions stop nothing) ends
    the start with exit 1 and a sentence saying why and what to do, before
    READY=1: systemd shows the unit failed instead of serving without the
    windows a restart needs."""
    mgr = Manager()
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    try:
        for state in (str(tmp_path / "missing" / "state"), str(blocker / "state")):
            cfg = conf(upstream, listen="127.0.0.1:1", state_file=state)
            path = tmp_path / "sluice.json"
            path.write_text(json.dumps(cfg))
            p = subprocess.run([SLUICE_BIN, "-c", str(path)], capture_output=True, text=True,
                               timeout=20, env=dict(os.environ, NOTIFY_SOCKET=mgr.path))
            assert p.returncode == 1, p.stderr
            assert "state_file %s: cannot" % state in p.stderr
            assert "refusing to start" in p.stderr
            assert "StateDirectory=" in p.stderr
            mgr.sock.setblocking(False)
            try:
                assert mgr.sock.recv(4096) is None, "nothing may be announced"
            except BlockingIOError:
                pass
    finally:
        mgr.close()


def test_watchdog_is_fed_while_the_workers_turn(upstream, sluice):
    """With WatchdogSec= systemd sets WATCHDOG_USEC: sluice pings at half of
    it, each ping after every worker's loop has made a pass (idle workers
    are woken for it), and keeps serving meanwhile."""
    mgr = Manager()
    try:
        # 400 ms: pings every 200 ms.
        sl = sluice(conf(upstream), workers=2,
                    env={"NOTIFY_SOCKET": mgr.path, "WATCHDOG_USEC": "400000"})
        mgr.until("READY")
        assert "systemd watchdog: pinged every 200 ms" in sl.wait_log("systemd watchdog")
        pings = []
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            m = mgr.next(timeout=2.0)
            if m.get("WATCHDOG") == "1":
                pings.append(time.monotonic())
            assert sl.request("GET", "/api/x")[0] == 200
        # Every 200 ms for 2 s: 10, give or take the first and the last;
        # at least 5 even if this machine is busy (a ping late by up to the
        # interval is still a ping before systemd's 400 ms are up).
        assert len(pings) >= 5, pings
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        assert max(gaps) < 1.0, gaps
    finally:
        mgr.close()


def test_watchdog_meant_for_another_process_is_ignored(upstream, sluice):
    mgr = Manager()
    try:
        sl = sluice(conf(upstream), env={"NOTIFY_SOCKET": mgr.path, "WATCHDOG_USEC": "400000",
                                         "WATCHDOG_PID": "1"})
        mgr.until("READY")
        with pytest.raises(socket.timeout):
            while True:
                assert "WATCHDOG" not in mgr.next(timeout=1.0)
        assert "systemd watchdog" not in sl.read_log()
    finally:
        mgr.close()
