#!/usr/bin/env python3
"""Benchmark: what a reload costs while calls flow.

Starts sluice (memory store, or Redis with --redis) with a `per` rule
holding BUCKETS live buckets and a global rule, then runs a steady load
(wrk, keep-alive) twice for the same duration: once quiet, once with a
POST /reload every 100 ms (each one a new generation: the per rule's limit
alternates, so every bucket is renumbered and every worker moves).  Prints
requests/s and p50/p99 for both runs, the /reload answer times, and any
error wrk saw (a reload must drop nothing).

Usage: bench/reload.py [--redis] [--buckets N] [--seconds S]
  env: SLUICE_BIN (default build/sluice)
"""
import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLUICE = os.environ.get("SLUICE_BIN", os.path.join(ROOT, "build", "sluice"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("port %d never opened" % port)


def config(up_port, admin_port, listen_port, limit, store):
    cfg = {"listen": "127.0.0.1:%d" % listen_port, "access_log": False,
           "admin": {"listen": "127.0.0.1:%d" % admin_port},
           "upstreams": [{"name": "u", "prefix": "/", "url": "http://127.0.0.1:%d" % up_port,
                          "rules": [{"name": "per", "path": "/k/{k}", "per": "{k}",
                                     "limit": limit, "window": "1h"},
                                    {"name": "all", "limit": 100000000, "window": "1s"}]}]}
    if store:
        cfg["store"] = store
    return cfg


def wrk(port, seconds):
    out = subprocess.run(["wrk", "-t2", "-c32", "-d%ds" % seconds, "--latency",
                          "http://127.0.0.1:%d/x" % port],
                         capture_output=True, text=True).stdout
    rps = float(next(l.split()[1] for l in out.splitlines() if l.startswith("Requests/sec")))
    lat = {l.split()[0]: l.split()[1] for l in out.splitlines()
           if l.strip().startswith(("50%", "99%"))}
    errors = [l.strip() for l in out.splitlines() if "errors" in l or "Non-2xx" in l]
    return rps, lat.get("50%"), lat.get("99%"), errors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis", action="store_true")
    ap.add_argument("--buckets", type=int, default=20000)
    ap.add_argument("--seconds", type=int, default=10)
    args = ap.parse_args()
    d = tempfile.mkdtemp()
    procs = []
    up_port, admin_port, port = free_port(), free_port(), free_port()
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write("daemon off; worker_processes 1; pid %s/nginx.pid; error_log stderr;"
                "events {} http { access_log off; server { listen 127.0.0.1:%d;"
                "location / { return 200 'ok'; } } }" % (d, up_port))
    procs.append(subprocess.Popen(["nginx", "-c", conf, "-p", d], stderr=subprocess.DEVNULL))
    store = None
    if args.redis:
        rport = free_port()
        procs.append(subprocess.Popen(["redis-server", "--port", str(rport), "--save", "",
                                       "--appendonly", "no"], stdout=subprocess.DEVNULL))
        wait_port(rport)
        store = "redis://127.0.0.1:%d" % rport
    path = os.path.join(d, "sluice.json")
    with open(path, "w") as f:
        json.dump(config(up_port, admin_port, port, 5, store), f)
    sl = subprocess.Popen([SLUICE, "-c", path], stderr=subprocess.DEVNULL)
    procs.append(sl)
    wait_port(port)
    wait_port(up_port)
    # Fill the per rule: BUCKETS buckets with a call each.
    c = http.client.HTTPConnection("127.0.0.1", port)
    for i in range(args.buckets):
        c.request("GET", "/k/%d" % i)
        c.getresponse().read()
    c.close()

    quiet = wrk(port, args.seconds)
    stop = threading.Event()
    answers = []

    def reloader():
        limit = 6
        while not stop.is_set():
            with open(path, "w") as f:
                json.dump(config(up_port, admin_port, port, limit, store), f)
            limit = 11 - limit
            a = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
            t0 = time.monotonic()
            a.request("POST", "/reload", headers={"X-Sluice-Admin": "1"})
            r = a.getresponse()
            r.read()
            answers.append((r.status, time.monotonic() - t0))
            a.close()
            time.sleep(0.1)

    t = threading.Thread(target=reloader)
    t.start()
    busy = wrk(port, args.seconds)
    stop.set()
    t.join()
    for p in procs:
        p.terminate()
        p.wait()
    ms = sorted(x[1] * 1000 for x in answers)
    print("store: %s, %d buckets in the per rule, %d s per run"
          % ("redis" if args.redis else "memory", args.buckets, args.seconds))
    print("%-22s %10s %8s %8s  %s" % ("run", "req/s", "p50", "p99", "wrk errors"))
    for name, r in (("no reload", quiet), ("reload every 100 ms", busy)):
        print("%-22s %10.0f %8s %8s  %s" % (name, r[0], r[1], r[2], "; ".join(r[3]) or "none"))
    print("reloads: %d, all answered 200: %s; POST /reload took p50 %.1f ms, max %.1f ms"
          % (len(answers), all(a[0] == 200 for a in answers), statistics.median(ms), ms[-1]))


if __name__ == "__main__":
    sys.exit(main())
