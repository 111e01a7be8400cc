#!/usr/bin/python3
"""Decisions for one tenant-keyed upstream, on one Redis and on a Redis
Cluster of three primaries (no replicas), alternating in one sitting.

The workload is bench/redis_decide's "per": one upstream, one rate rule
per header value, 10,000 values in turn, batches of BATCH with 12 in
flight (one Redis also with 4: what each of the three primaries sees of
the 12, for a Redis's CPU per command falls as its pipeline deepens).  On a cluster that upstream is split into tenant groups (its
rules all count per one value: limits/sl_redis_groups.h), so its
decisions spread over the primaries; the cluster sustains what its
busiest primary does at one full core (`capacity`), set against what
one Redis sustains on one core (`per_core`).

    bench/cluster_tenants.py [ROUNDS [BATCH [REDIS_DECIDE...]]]

ROUNDS defaults to 3, BATCH to 8; REDIS_DECIDE (default
build/redis_decide) may be given more than once, to set two builds side
by side in the same rounds.  Prints each run's redis_decide lines.
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import harness  # noqa: E402
import test_redis_cluster as t  # noqa: E402


def run(binary, target, batch, inflight):
    host, port = target
    out = subprocess.run([binary, host, port, str(batch), "5", str(inflight), "per", "1"],
                         check=True, capture_output=True, text=True, timeout=120)
    return out.stdout.strip()


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    binaries = sys.argv[3:] or [os.path.join(ROOT, "build", "redis_decide")]
    cluster = t.Cluster(primaries=3, replicas=0, node_timeout=15000)
    plain = harness.RedisServer()
    try:
        for r in range(1, rounds + 1):
            for b in binaries:
                for name, target, inflight in (
                        ("one Redis", ("127.0.0.1", str(plain.port)), 12),
                        ("one Redis", ("127.0.0.1", str(plain.port)), 4),
                        ("cluster", (cluster.url(), "-"), 12)):
                    print("round %d, %s, %s, %d in flight:" % (r, b, name, inflight),
                          flush=True)
                    print("  " + run(b, target, batch, inflight).replace("\n", "\n  "),
                          flush=True)
    finally:
        plain.stop()
        cluster.stop()
        harness.release_ports()


if __name__ == "__main__":
    main()
