"""The state file under hostile conditions: crash loops, kill -9 in the
middle of a burst, a file size limit, planted symbolic links, a wall clock
stepped across a restart, a window shrunk and grown back by reloads.  Each
test counts what arrives at the upstream: in any window, never more than
the limit."""
import json
import os
import resource
import signal
import subprocess
import threading
import time

from harness import SLUICE_BIN, Sluice, max_in_window, upstream_config


def cfg(up, path, limit, window, interval="1s", **top):
    return upstream_config(up, [{"name": "w", "limit": limit, "window": window}],
                           name="crm", prefix="/crm",
                           top=dict({"state_file": path, "state_interval": interval}, **top))


def codes(sl, n, path="/crm/x"):
    return [sl.request("GET", path)[0] for _ in range(n)]


def kill9(sl):
    sl.proc.send_signal(signal.SIGKILL)
    sl.proc.wait()
    sl.log.close()


def test_a_crash_loop_never_multiplies_the_quota(upstream, tmp_path):
    # The hostile trial: 10 per 30 s, a state write every second, 8 rounds
    # of start, 4 calls, kill -9 at once (well inside the interval, so the
    # snapshot alone would miss them).  Before the journal: 32 arrivals.
    # The rounds take a few seconds in all, far less than 30 s, so every
    # arrival is inside one window: exactly 10 may arrive.
    path = str(tmp_path / "state")
    got = []
    for _ in range(8):
        sl = Sluice(cfg(upstream, path, 10, "30s"))
        got += codes(sl, 4)
        kill9(sl)
    assert got.count(200) == 10
    assert upstream.count() == 10
    assert max_in_window(upstream.times(), 30.0) <= 10


def test_kill_9_right_after_a_call_and_with_two_workers(upstream, tmp_path):
    # One call per life, killed the instant its answer came back: the
    # record was written before the call was sent.
    path = str(tmp_path / "state")
    got = []
    for _ in range(6):
        sl = Sluice(cfg(upstream, path, 3, "30s"), workers=2)
        got += codes(sl, 1)
        kill9(sl)
    assert got == [200, 200, 200, 429, 429, 429]
    assert upstream.count() == 3


def test_sigkill_during_a_burst(upstream, tmp_path):
    # Eight clients call as fast as they can while sluice is killed under
    # them, three times over; whatever reached the upstream before a kill
    # is counted after it.  Calls cut by the kill fail on the client side;
    # the upstream's count is what matters.
    path = str(tmp_path / "state")
    limit = 40
    for _ in range(3):
        sl = Sluice(cfg(upstream, path, limit, "60s"), workers=2)
        stop = threading.Event()

        def client():
            while not stop.is_set():
                try:
                    sl.request("GET", "/crm/x", timeout=2)
                except OSError:
                    return

        ts = [threading.Thread(target=client) for _ in range(8)]
        for t in ts:
            t.start()
        time.sleep(0.3)
        kill9(sl)
        stop.set()
        for t in ts:
            t.join()
    sl = Sluice(cfg(upstream, path, limit, "60s"))
    try:
        # Whatever is left of the limit, and not one more.
        left = limit - upstream.count()
        assert left >= 0
        assert codes(sl, left + 2).count(200) == left
    finally:
        sl.stop()
    # Everything happened within a few seconds: one 60 s window.
    assert upstream.count() == limit
    assert max_in_window(upstream.times(), 60.0) <= limit


def test_a_crash_between_snapshot_and_journal_fold(upstream, tmp_path):
    # The files a crash between two steps of a state write leaves, made
    # exactly: the snapshot already has the calls, and so has the journal
    # (STATE.journal.old, not yet removed).  Loading must count each call
    # once: double counting would show as fewer than 2 calls left.
    path = str(tmp_path / "state")
    sl = Sluice(cfg(upstream, path, 5, "1h", interval="1h"))
    assert codes(sl, 3) == [200] * 3
    # No state write runs for an hour: the journal holds the 3 calls
    # (written as they were sent).  The clean stop then writes a snapshot
    # of them and empties the journal.
    journal = open(path + ".journal", "rb").read()
    sl.stop()
    assert len(journal) > 0 and os.path.getsize(path + ".journal") == 0
    with open(path + ".journal.old", "wb") as f:
        f.write(journal)
    with open(path + ".journal", "ab") as f:
        f.write(journal)  # and once more in the live one
    sl = Sluice(cfg(upstream, path, 5, "1h"))
    try:
        assert "restored 3 calls" in sl.read_log()
        assert codes(sl, 3) == [200, 200, 429]
        assert upstream.count() == 5
    finally:
        sl.stop()
    # A clean stop leaves no journal to replay: the next start restores
    # exactly the snapshot.
    assert not os.path.exists(path + ".journal.old")
    assert os.path.getsize(path + ".journal") == 0


def test_a_torn_journal_record_costs_only_itself(upstream, tmp_path):
    path = str(tmp_path / "state")
    sl = Sluice(cfg(upstream, path, 5, "1h", interval="1h"))
    assert codes(sl, 2) == [200, 200]
    kill9(sl)
    # A half-written record at the end, as a write cut by a full disk
    # leaves: skipped and said, the two whole records still count.
    with open(path + ".journal", "ab") as f:
        f.write(b"SLJ1\x40\x00\x00\x00garbage")
    sl = Sluice(cfg(upstream, path, 5, "1h"))
    try:
        log = sl.read_log()
        assert "restored 2 calls" in log and "were no record" in log
        assert codes(sl, 4) == [200, 200, 200, 429]
    finally:
        sl.stop()


def _fsize_limit(nbytes):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return apply


def test_a_file_size_limit_is_logged_and_served_around(upstream, tmp_path):
    # ulimit -f of 600 bytes.  With no state write for an hour, the journal
    # (~60 bytes a call) passes it within 60 calls, and the snapshot at
    # stop (~10 bytes a call) too.  Without SIGXFSZ ignored, the first write
    # past the limit ended the process (signal 25), at every start.
    path = str(tmp_path / "state")
    sl = Sluice(cfg(upstream, path, 100, "1h", interval="1h"),
                preexec_fn=_fsize_limit(600))
    try:
        assert codes(sl, 60) == [200] * 60
        assert sl.proc.poll() is None
        log = sl.read_log()
        assert "state_file journal %s.journal: cannot append (File too large)" % path \
            in log and "calls are still served" in log
    finally:
        # The snapshot at stop fails too: said, and the exit is clean.
        sl.stop()
    assert "cannot write" in sl.read_log() and "File too large" in sl.read_log()
    # A restart under the same limit starts, restores what the files hold
    # (the journal's records up to the limit: fewer than were sent, which
    # is the loss the log warned of), and serves; a state write every
    # second keeps failing (the snapshot of the 60 calls does not fit)
    # without ending it.
    sl = Sluice(cfg(upstream, path, 100, "1h"), preexec_fn=_fsize_limit(600))
    try:
        assert "restored" in sl.read_log()
        assert codes(sl, 50) == [200] * 50
        time.sleep(1.5)
        assert sl.proc.poll() is None
        assert codes(sl, 1) == [200]
        assert "state_file: cannot write" in sl.wait_log("state_file: cannot write")
    finally:
        sl.stop()


def test_planted_symbolic_links_are_never_followed(upstream, tmp_path):
    path = str(tmp_path / "state")
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    # The old fixed temporary name: no longer used at all.
    os.symlink(str(victim), path + ".tmp")
    sl = Sluice(cfg(upstream, path, 5, "1h"))
    try:
        assert codes(sl, 2) == [200, 200]
        time.sleep(1.5)  # a state write or two
    finally:
        sl.stop()
    assert victim.read_bytes() == b"precious\n"
    assert os.path.islink(path + ".tmp")
    assert not os.path.islink(path) and os.path.getsize(path) > 0
    # A link where the journal lives: refused, not followed, not written.
    os.unlink(path + ".journal")
    for name in (".journal", ".journal.old"):
        os.symlink(str(victim), path + name)
        c = str(tmp_path / "c.json")
        with open(c, "w") as f:
            json.dump(cfg(upstream, path, 5, "1h", listen="127.0.0.1:1"), f)
        r = subprocess.run([SLUICE_BIN, "-c", c], capture_output=True, text=True,
                           timeout=10)
        assert r.returncode == 1
        assert "is a symbolic link" in r.stderr and "refusing to start" in r.stderr
        assert victim.read_bytes() == b"precious\n"
        os.unlink(path + name)


def test_a_wall_clock_step_across_a_restart_grants_nothing(upstream, tmp_path):
    # 3 per 20 s, 3 calls, then restarts on a wall clock stepped 50 s
    # forward (after a kill -9, then after a clean stop), then 50 s back.
    # Same boot: the monotonic stamps count, whatever the wall clock says.
    path = str(tmp_path / "state")
    sl = Sluice(cfg(upstream, path, 3, "20s"))
    assert codes(sl, 3) == [200] * 3
    kill9(sl)
    for offset, clean in (("50000", True), ("-50000", True), ("50000", False)):
        sl = Sluice(cfg(upstream, path, 3, "20s"),
                    env={"SLUICE_TEST_WALL_OFFSET_MS": offset})
        assert "the wall clock is shifted" in sl.read_log()
        assert codes(sl, 2) == [429, 429]
        if clean:
            sl.stop()
        else:
            kill9(sl)
    assert upstream.count() == 3
    assert max_in_window(upstream.times(), 20.0) <= 3


def _reload(sl, up, path, window):
    with open(sl.config_path, "w") as f:
        json.dump(cfg(up, path, 5, window, listen="127.0.0.1:%d" % sl.port), f)
    sl.proc.send_signal(signal.SIGHUP)
    sl.wait_log("generation %d" % _reload.gen)
    _reload.gen += 1


def test_a_window_shrunk_and_grown_back_forgets_nothing(upstream, tmp_path):
    # 5 per 20 s, 5 calls; reload to 5 per 2 s; 3 s later (the calls have
    # left the short window), back to 20 s.  The 5 calls are still inside
    # 20 s: nothing more may go until they leave it.  Before: 7 arrivals.
    path = str(tmp_path / "state")
    sl = Sluice(cfg(upstream, path, 5, "20s"))
    try:
        _reload.gen = 2
        assert codes(sl, 5) == [200] * 5
        _reload(sl, upstream, path, "2s")
        time.sleep(3)
        _reload(sl, upstream, path, "20s")
        assert codes(sl, 2) == [429, 429]
    finally:
        sl.stop()
    assert upstream.count() == 5
    assert max_in_window(upstream.times(), 20.0) <= 5
