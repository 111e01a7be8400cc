"""Weighted calls ("cost" on a rule): a call is admitted only when its
whole cost fits in every rule it matches; asserted at the upstream's
arrival times with the cost each call carried."""
import json
import random
import threading
import time

import pytest

from harness import upstream_config

COST = "X-Cost"


def cost_of(rec):
    for k, v in rec.headers:
        if k.lower() == COST.lower():
            return int(v)
    return 1


def weighted_load(sl, seconds, threads=6, most=5, seed=1):
    """Clients sending calls of random cost 1..MOST as fast as they can; a
    refused client tries again 5 ms later with a new call (a new cost), as
    a worker with a queue of jobs would."""
    stop = time.monotonic() + seconds
    statuses = []
    lock = threading.Lock()

    def run(k):
        rnd = random.Random(seed * 100 + k)
        c = sl.conn()
        while time.monotonic() < stop:
            c.request("GET", "/leads/x", headers={COST: str(rnd.randint(1, most))})
            r = c.getresponse()
            r.read()
            with lock:
                statuses.append(r.status)
            if r.status != 200:
                time.sleep(0.005)
        c.close()

    ts = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return statuses


def test_weighted_calls_fill_a_window_and_never_exceed_it(upstream, sluice, store):
    limit, window, margin = 100, 2.0, 0.05
    sl = sluice(upstream_config(upstream, [
        {"name": "points", "limit": limit, "window": "2s", "cost": "header:" + COST}],
        store, margin="50ms"))
    statuses = weighted_load(sl, 6.5)
    with upstream.lock:
        arr = sorted((r.t, cost_of(r)) for r in upstream.records)
    # Never more than 100 units in any 2 s at the upstream.  The margin
    # (50 ms) is what admission adds to the window, and covers the spread
    # of the delay between a send and its arrival on this loopback path;
    # no allowance beyond it.
    worst = 0
    for i, (t, _) in enumerate(arr):
        worst = max(worst, sum(c for u, c in arr[i:] if u < t + window))
    assert worst <= limit, worst
    # Demand never stopped: every period of the rule's span (window +
    # margin) from the first arrival was used, each at least 99%.
    t0, span = arr[0][0], window + margin
    periods = int((arr[-1][0] - t0) / span)
    assert periods >= 2
    used = sum(c for u, c in arr if u < t0 + periods * span)
    assert used >= 0.99 * limit * periods, (used, periods)
    assert statuses.count(200) == len(arr)


def test_weighted_calls_in_a_bucket(upstream, sluice, store):
    # A bucket of 100 points leaking 50 a second (Shopify's GraphQL
    # Admin API on a standard plan, scaled down): at most 100 + 50 t.
    sl = sluice(upstream_config(upstream, [
        {"name": "graphql", "bucket": 100, "leak": "50/s", "cost": "header:" + COST}],
        store, margin="20ms"))
    statuses = weighted_load(sl, 5.0)
    with upstream.lock:
        arr = sorted((r.t, cost_of(r)) for r in upstream.records)
    worst = float("-inf")
    for i in range(len(arr)):
        units = 0
        for j in range(i, len(arr)):
            units += arr[j][1]
            worst = max(worst, units - (100 + 50 * (arr[j][0] - arr[i][0])))
    assert worst <= 0, worst
    # And used: the bucket (less the margin's 1 point) and the leak up to
    # the last arrival, less one call of at most 5 points not yet fitting.
    total = sum(c for _, c in arr)
    span = arr[-1][0] - arr[0][0]
    assert total >= 0.99 * (99 + 50 * span) - 5, (total, span)
    assert statuses.count(200) == len(arr)


@pytest.mark.parametrize("value", [None, "", "0", "101", "abc", "1.5", "-3", "1e2"])
def test_a_bad_cost_header_is_a_400_and_never_forwarded(upstream, sluice, value):
    sl = sluice(upstream_config(upstream, [
        {"name": "points", "limit": 100, "window": "1m", "cost": "header:" + COST}]))
    headers = {} if value is None else {COST: value}
    st, _, body = sl.request("GET", "/leads/x", headers=headers)
    assert st == 400, (value, st)
    b = json.loads(body)
    assert b["error"] == "bad_cost"
    assert "X-Cost" in b["message"] and "from 1 to 100" in b["message"]
    assert upstream.count() == 0


def test_costs_per_method_and_all_or_nothing(upstream, sluice, store):
    sl = sluice(upstream_config(upstream, [
        {"name": "writes", "bucket": 10, "leak": "1/m", "cost": {"POST": 5, "*": 1}},
        {"name": "all", "limit": 20, "window": "1h", "cost": 2}], store, margin="0ms"))
    assert sl.request("POST", "/leads/x", body=b"")[0] == 200   # 5 of 10, 2 of 20
    assert sl.request("POST", "/leads/x", body=b"")[0] == 200   # 10 of 10, 4 of 20
    # The bucket is full: a POST is refused, and takes nothing from "all".
    assert sl.request("POST", "/leads/x", body=b"")[0] == 429
    for _ in range(8):   # GETs cost 1 in the bucket... which is full
        assert sl.request("GET", "/leads/x")[0] == 429
    assert upstream.count() == 2


def test_cost_on_a_rule_with_shares_is_refused(upstream, tmp_path):
    import subprocess
    from harness import SLUICE_BIN
    path = tmp_path / "c.json"
    path.write_text(json.dumps(upstream_config(upstream, [
        {"name": "r", "limit": 10, "window": "1m", "cost": 2, "apps": {"a": {"max": 5}}}])))
    r = subprocess.run([SLUICE_BIN, "--check", "-c", str(path)], capture_output=True,
                       text=True)
    assert r.returncode != 0
    assert "shares count calls" in r.stderr + r.stdout
