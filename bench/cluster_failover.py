#!/usr/bin/env python3
"""How long calls are refused when a Redis Cluster primary fails over.

A cluster of three primaries and three replicas (cluster-node-timeout
1000 ms, as tests/integration/test_redis_cluster.py makes it), one sluice
on it (build/sluice, or SLUICE_BIN) with on_store_error "deny", calls one
after the other; then the primary serving the upstream is killed (kill -9)
or its replica takes over with CLUSTER FAILOVER.  Prints, per round, how
long after the event the first call was decided on the new primary again,
and when the first call was refused.

    bench/cluster_failover.py [ROUNDS]        (default 3 of each)
"""
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
os.environ.setdefault("SLUICE_BIN", os.path.join(ROOT, "build", "sluice"))

import harness  # noqa: E402
import test_redis_cluster as t  # noqa: E402


def round_of(kind):
    up, c = harness.Upstream(), t.Cluster()
    sl = harness.Sluice(t.cfg(up, c.url(), limit=100000, on_store_error="deny"))
    try:
        assert harness.wait_for(lambda: t.store_up(sl), 15)
        t.calls([sl], 3)
        old = c.owner("leads")
        new = c.replica_of(old)
        assert c.synced(old, new)
        t0 = time.monotonic()
        if kind == "kill -9":
            old.kill()
        else:
            new.cli("CLUSTER", "FAILOVER")
        refused = None
        while time.monotonic() - t0 < 60:
            status = t.calls([sl], 1)[0]
            if status != 200 and refused is None:
                refused = time.monotonic() - t0
            # Back: a 200 after a refusal, or a second and a half of 200s
            # (a manual failover may refuse nothing).
            if status == 200 and (refused is not None or time.monotonic() - t0 > 1.5):
                break
            time.sleep(0.02)
        back = time.monotonic() - t0
        print("%-17s decided again after %.2f s; first refusal %s" % (
            kind, back, "at %.3f s" % refused if refused is not None else "none"), flush=True)
    finally:
        sl.stop()
        c.stop()
        up.close()
        harness.release_ports()


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    for kind in ("kill -9", "CLUSTER FAILOVER"):
        for _ in range(rounds):
            round_of(kind)


if __name__ == "__main__":
    main()
