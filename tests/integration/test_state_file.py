"""The memory store's state file: windows and pauses survive a restart, a
crash (losing at most one interval) and a redeploy; a damaged or foreign
file is refused with a clear message."""
import json
import os
import signal
import subprocess
import time

import pytest

from harness import SLUICE_BIN, Sluice, max_in_window


def state_cfg(up, path, limit=10, window="1h", **top):
    cfg = {"state_file": path, "state_interval": "1s",
           "upstreams": [{"name": "crm", "prefix": "/crm", "url": up.url,
                          "rules": [{"name": "w", "limit": limit, "window": window},
                                    {"name": "per", "path": "/p/{k}/*", "per": "{k}",
                                     "limit": 2, "window": "1h"}]}]}
    cfg.update(top)
    return cfg


def codes(sl, n, path="/crm/x"):
    return [sl.request("GET", path)[0] for _ in range(n)]


def test_restart_keeps_the_window(upstream, tmp_path):
    path = str(tmp_path / "state")
    sl = Sluice(state_cfg(upstream, path, limit=10, window="6s"))
    assert codes(sl, 6) == [200] * 6
    assert codes(sl, 2, "/crm/p/a/x") == [200, 200]
    sl.stop()
    assert os.path.getsize(path) > 0
    sl = Sluice(state_cfg(upstream, path, limit=10, window="6s"))
    try:
        # 8 in the rule "w" and 2 in the per bucket "a".
        assert "restored 10 calls" in sl.read_log()
        # 8 of 10 spent before the restart: 2 more, then 429.
        assert codes(sl, 4) == [200, 200, 429, 429]
        assert sl.request("GET", "/crm/p/a/x")[0] == 429   # per bucket kept too
        # At the upstream, across the restart: never more than the limit
        # in any 6 s.
        assert max_in_window(upstream.times(), 6.0) <= 10
        assert upstream.count() == 10
    finally:
        sl.stop()


def test_a_crash_loses_at_most_one_interval(upstream, tmp_path):
    path = str(tmp_path / "state")
    sl = Sluice(state_cfg(upstream, path, limit=5))
    assert codes(sl, 4) == [200] * 4
    # The state is written every second: after 2.5 s it holds all four.
    time.sleep(2.5)
    sl.proc.send_signal(signal.SIGKILL)
    sl.proc.wait()
    sl.log.close()
    sl = Sluice(state_cfg(upstream, path, limit=5))
    try:
        assert codes(sl, 3) == [200, 429, 429]
        assert upstream.count() == 5
    finally:
        sl.stop()


def test_a_lowered_limit_and_a_removed_rule(upstream, tmp_path):
    path = str(tmp_path / "state")
    sl = Sluice(state_cfg(upstream, path, limit=10))
    assert codes(sl, 7) == [200] * 7
    sl.stop()
    cfg = state_cfg(upstream, path, limit=4)
    cfg["upstreams"][0]["rules"] = [cfg["upstreams"][0]["rules"][0],
                                    {"name": "brand-new", "limit": 1, "window": "1h"}]
    sl = Sluice(cfg)
    try:
        # The newest 4 of the 7 are kept: the lowered limit is full.
        assert "restored 4 calls" in sl.read_log()
        assert codes(sl, 1) == [429]
    finally:
        sl.stop()


def test_a_provider_pause_survives_a_restart(upstream, tmp_path):
    path = str(tmp_path / "state")
    sl = Sluice(state_cfg(upstream, path))
    assert sl.request("GET", "/crm/x", headers={
        "X-Test-Status": "429", "X-Test-Resp-Header": "Retry-After: 60"})[0] == 429
    sl.stop()
    sl = Sluice(state_cfg(upstream, path))
    try:
        code, h, body = sl.request("GET", "/crm/x")
        assert code == 429 and 55 <= int(h["retry-after"]) <= 60
        assert upstream.count() == 1
    finally:
        sl.stop()


@pytest.mark.parametrize("damage", ["truncated", "flipped", "foreign", "empty",
                                    "directory"])
def test_a_damaged_state_file_is_refused(upstream, tmp_path, damage):
    path = str(tmp_path / "state")
    sl = Sluice(state_cfg(upstream, path))
    assert codes(sl, 3) == [200] * 3
    sl.stop()
    data = open(path, "rb").read()
    if damage == "truncated":
        open(path, "wb").write(data[:len(data) - 5])
    elif damage == "flipped":
        b = bytearray(data)
        b[-3] ^= 0x40
        open(path, "wb").write(bytes(b))
    elif damage == "foreign":
        open(path, "wb").write(b'{"this": "is not a state file"}\n')
    elif damage == "empty":
        open(path, "wb").write(b"")
    else:
        os.unlink(path)
        os.mkdir(path)
    cfg_path = str(tmp_path / "c.json")
    with open(cfg_path, "w") as f:
        json.dump(state_cfg(upstream, path, listen="127.0.0.1:1"), f)
    r = subprocess.run([SLUICE_BIN, "-c", cfg_path], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 1
    assert "state_file %s:" % path in r.stderr
    assert "refusing to start with unknown counts" in r.stderr
    assert "move the file aside" in r.stderr
    assert upstream.count() == 3


def test_a_missing_state_file_starts_empty_and_redis_refuses_it(upstream, tmp_path):
    path = str(tmp_path / "no" / "state")
    os.makedirs(os.path.dirname(path))
    sl = Sluice(state_cfg(upstream, path))
    try:
        assert "none yet; starting with empty windows" in sl.read_log()
        assert codes(sl, 2) == [200, 200]
    finally:
        sl.stop()
    assert os.path.exists(path)
    cfg_path = str(tmp_path / "c.json")
    with open(cfg_path, "w") as f:
        json.dump(state_cfg(upstream, path, store="redis://127.0.0.1:1"), f)
    r = subprocess.run([SLUICE_BIN, "--check", "-c", cfg_path], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 1 and "state_file: keeps the memory store's windows" in r.stderr
