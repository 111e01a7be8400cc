#!/usr/bin/env python3
"""Benchmark: how fast a freed concurrency slot starts the next held call.

Starts a fast upstream (an asyncio server in its own process answering a
small fixed body at once), then sluice in queue mode with one rule,
`concurrency` C, and drives it closed-loop: CONNS keep-alive connections
(split over two client processes, asyncio), each sending its next call as
soon as the last one is answered.  With more callers than slots, every
call but the first C is held and started by a slot freed by another, so
calls/s through the proxy is hand-overs/s.  Each case runs with the
memory store and the Redis store (a real redis-server on a free loopback
port).  Also timed: bursts of 40 calls at once, each on its own
connection (the figure issue 19 reported for concurrency 1: 1.15 s);
the median and the worst of BURSTS bursts.  A hand-over whose wake-up was
lost waits for the 50 ms safety poll, so it shows in the worst burst,
and in the stalls: 4 connections in a closed loop, where a call takes a
millisecond or two unless it waited for the poll (40 ms or more).

Usage: bench/handover.py [--seconds S] [--conns N] [--workers W]
                         [--conc 1,10] [--stores memory,redis]
  env: SLUICE_BIN (default build/sluice)
"""
import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLUICE = os.environ.get("SLUICE_BIN", os.path.join(ROOT, "build", "sluice"))
BODY = b"hello from the upstream\n"
SLOW = 0.040  # a call this slow with 4 callers waited for a poll


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port):
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("port %d never opened" % port)


# ---- the upstream: answers every request at once ----

def upstream_main(port):
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))

    async def serve(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                n = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        n = int(line.split(b":", 1)[1])
                if n:
                    await reader.readexactly(n)
                writer.write(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=512)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# ---- the clients: closed loop over keep-alive connections ----

async def one_conn(port, until, counts, slow=None):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    req = b"GET /u/x HTTP/1.1\r\nHost: bench\r\n\r\n"
    try:
        while time.monotonic() < until:
            t0 = time.monotonic()
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            n = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    n = int(line.split(b":", 1)[1])
            await reader.readexactly(n)
            counts[status] = counts.get(status, 0) + 1
            if slow is not None and time.monotonic() - t0 >= SLOW:
                slow.append(time.monotonic() - t0)
    finally:
        writer.close()


def client_main(port, conns, seconds, start_at, out):
    async def main():
        counts = {}
        while time.time() < start_at:
            await asyncio.sleep(0.005)
        until = time.monotonic() + seconds
        await asyncio.gather(*(one_conn(port, until, counts) for _ in range(conns)))
        out.put(counts)

    asyncio.run(main())


def stalls(port, conns, seconds):
    """CONNS connections in one process, closed loop: (calls, calls that
    took SLOW or more).  With few callers a call waits for at most CONNS - 1
    others, a millisecond or two; one whose wake-up was lost waits for the
    50 ms safety poll."""
    async def main():
        counts, slow = {}, []
        until = time.monotonic() + seconds
        await asyncio.gather(*(one_conn(port, until, counts, slow) for _ in range(conns)))
        return sum(counts.values()), slow
    return asyncio.run(main())


def closed_loop(port, conns, seconds):
    """Calls answered per second, and the statuses seen."""
    q = multiprocessing.Queue()
    start_at = time.time() + 0.3
    split = [conns - conns // 2, conns // 2]
    procs = [multiprocessing.Process(target=client_main,
                                     args=(port, n, seconds, start_at, q))
             for n in split if n > 0]
    for p in procs:
        p.start()
    counts = {}
    for _ in procs:
        for k, v in q.get().items():
            counts[k] = counts.get(k, 0) + v
    for p in procs:
        p.join()
    return sum(counts.values()) / seconds, counts


async def burst(port, n):
    async def call():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /u/x HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        data = await reader.read()
        writer.close()
        return int(data.split(b" ", 2)[1])
    t0 = time.monotonic()
    st = await asyncio.gather(*(call() for _ in range(n)))
    return time.monotonic() - t0, st


# ---- sluice and redis ----

class Proc:
    def __init__(self, argv, port):
        self.p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def start_sluice(tmp, up_port, conc, store, workers):
    port = free_port()
    cfg = {"listen": "127.0.0.1:%d" % port, "access_log": False,
           "upstreams": [{"name": "u", "prefix": "/u", "url": "http://127.0.0.1:%d" % up_port,
                          "on_limit": "queue", "max_wait": "60s", "max_queue": 100000,
                          "rules": [{"name": "c", "concurrency": conc}]}]}
    if workers:
        cfg["workers"] = workers
    if store:
        cfg["store"] = store
    path = os.path.join(tmp, "sluice-%d.json" % port)
    with open(path, "w") as f:
        json.dump(cfg, f)
    return Proc([SLUICE, "-c", path], port), port


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--conns", type=int, default=40)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--conc", default="1,10")
    ap.add_argument("--stores", default="memory,redis")
    ap.add_argument("--bursts", type=int, default=10)
    a = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="sluice-handover-")
    up_port = free_port()
    up = multiprocessing.Process(target=upstream_main, args=(up_port,), daemon=True)
    up.start()
    wait_port(up_port)
    redis = None
    try:
        print("%-8s %5s %6s %14s %16s %16s %14s %s" % (
            "store", "conc", "conns", "hand-overs/s", "40-burst p50 s", "40-burst max s",
            "4-conn stalls", "statuses"))
        for store_name in a.stores.split(","):
            store = None
            if store_name == "redis":
                rport = free_port()
                redis = Proc(["redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no"], rport)
                store = "redis://127.0.0.1:%d" % rport
            for conc in [int(c) for c in a.conc.split(",")]:
                sl, port = start_sluice(tmp, up_port, conc, store, a.workers)
                try:
                    # Warm up: connections to the upstream and the store.
                    closed_loop(port, conc, 0.3)
                    bursts = [asyncio.run(burst(port, 40)) for _ in range(a.bursts)]
                    rate, counts = closed_loop(port, a.conns, a.seconds)
                    calls4, slow4 = stalls(port, 4, a.seconds)
                finally:
                    sl.stop()
                times = sorted(t for t, st in bursts)
                bad = sum(1 for t, st in bursts for s in st if s != 200)
                print("%-8s %5d %6d %14.0f %16.3f %16.3f %14s %s%s" % (
                    store_name, conc, a.conns, rate, times[len(times) // 2], times[-1],
                    "%d/%d" % (len(slow4), calls4), counts,
                    "" if not bad else " (burst: %d not 200)" % bad))
                sys.stdout.flush()
            if redis is not None:
                redis.stop()
                redis = None
    finally:
        if redis is not None:
            redis.stop()
        up.terminate()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
