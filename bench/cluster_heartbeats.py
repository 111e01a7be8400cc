#!/usr/bin/python3
"""What the fleet's heartbeats cost a Redis Cluster, with and without
tenant groups.

One idle sluice (build/sluice, or SLUICE_BIN) with UPSTREAMS upstreams of
one rule each counting per a header, WORKERS workers, on three primaries
(no replicas): once with tenant groups (16 units an upstream), once with
`"tenant_groups": false` (one).  No call is made: every script run in the
measured 10 s is a heartbeat.  Prints the runs a second, the primaries'
CPU a second (Redis's own cluster upkeep included) and per run.

    bench/cluster_heartbeats.py [UPSTREAMS [WORKERS]]   (default 20, 2)
"""
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
os.environ.setdefault("SLUICE_BIN", os.path.join(ROOT, "build", "sluice"))

import harness  # noqa: E402
import test_redis_cluster as t  # noqa: E402


def counters(nodes):
    cpu = runs = 0.0
    for n in nodes:
        info = n.cli("INFO", "everything")
        cpu += float(re.search(r"used_cpu_user:([\d.]+)", info).group(1))
        cpu += float(re.search(r"used_cpu_sys:([\d.]+)", info).group(1))
        m = re.search(r"cmdstat_evalsha:calls=(\d+)", info)
        runs += int(m.group(1)) if m else 0
    return cpu, runs


def main():
    nups = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    up, c = harness.Upstream(), t.Cluster(primaries=3, replicas=0, node_timeout=15000)
    try:
        for groups in (True, False):
            rules = [{"name": "tenant", "per": "header:X-Tenant", "limit": 100,
                      "window": "1m"}]
            conf = t.cfg(up, c.url(), rules=rules, names=["u%d" % i for i in range(nups)],
                         workers=workers, options={"tenant_groups": groups})
            sl = harness.Sluice(conf)
            try:
                assert harness.wait_for(lambda: t.store_up(sl), 15)
                time.sleep(3)
                c0, r0 = counters(c.primaries())
                time.sleep(10)
                c1, r1 = counters(c.primaries())
                print("%d upstreams, %d workers, tenant groups %s: %.0f heartbeats/s, "
                      "primaries' CPU %.4f s/s, %.1f us a heartbeat" % (
                          nups, workers, "on" if groups else "off", (r1 - r0) / 10,
                          (c1 - c0) / 10, (c1 - c0) * 1e6 / max(r1 - r0, 1)), flush=True)
            finally:
                sl.stop()
    finally:
        c.stop()
        up.close()
        harness.release_ports()


if __name__ == "__main__":
    main()
