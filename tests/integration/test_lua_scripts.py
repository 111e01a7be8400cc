"""The Redis store's scripts (limits/lua/*.lua), each run on a real
redis-server with known arguments and checked against known answers: what
the script replies and what it leaves in Redis.  The scripts are read as
the build embeds them (a line "--! include FILE" replaced by FILE), and
the embedded copy next to the binary is checked to be the same bytes."""

import os
import re
import socket
import time

import pytest

from harness import (ROOT, SLUICE_BIN, RedisServer, RedisError, fill_until_evicted,
                     resp_encode, resp_read)

LUA = os.path.join(ROOT, "limits", "lua")
SCRIPTS = ["decide", "commit", "release", "renew", "pause", "sync", "snapshot",
           "hist_add", "hist_read", "set_pause", "settle", "fleet", "repair"]
AUTH_SCRIPTS = ["auth_put", "auth_drop", "auth_fail", "auth_get"]
S = 1000000  # µs


def script(name):
    text = open(os.path.join(LUA, name + ".lua")).read()
    while True:
        m = re.search(r"--! include ([a-z_]+\.lua)\n", text)
        if not m:
            return text
        inc = open(os.path.join(LUA, m.group(1))).read()
        text = text.replace(m.group(0), inc)


@pytest.fixture(scope="module")
def redis():
    r = RedisServer()
    yield r
    r.stop()


@pytest.fixture(autouse=True)
def clean(redis):
    redis.command("FLUSHALL")


def run(redis, name, keys, args):
    if name == "decide" and keys[-1] != "{u}m":
        # decide.lua's last key is the fleet's marker (fleet.lua): set as
        # a fleet that lost nothing keeps it
        if not redis.command("EXISTS", "{u}m"):
            redis.command("SET", "{u}m", "o|0|-|0|0|0")
        keys = list(keys) + ["{u}m"]
    return redis.command("EVAL", script(name), len(keys), *keys, *args)


def now_us(redis):
    t = redis.command("TIME")
    return int(t[0]) * S + int(t[1])


def test_every_script_loads_and_opens_with_its_contract(redis):
    for name in SCRIPTS + AUTH_SCRIPTS:
        text = open(os.path.join(LUA, name + ".lua")).read()
        assert text.startswith("-- "), name
        head = text.split("\n\n")[0]
        assert "KEYS" in head or "ARGV" in head or name == "commit", (name, head)
        sha = redis.command("SCRIPT", "LOAD", script(name)).decode()
        assert re.fullmatch(r"[0-9a-f]{40}", sha)


def test_the_binary_embeds_the_same_scripts():
    gen = os.path.join(os.path.dirname(SLUICE_BIN), "sl_redis_lua.c")
    if not os.path.exists(gen):
        pytest.skip("no build tree next to %s (an installed binary)" % SLUICE_BIN)
    for table, names in (("sl_redis_lua.c", SCRIPTS), ("sl_auth_lua.c", AUTH_SCRIPTS)):
        c = open(os.path.join(os.path.dirname(SLUICE_BIN), table)).read()
        for name in names:
            m = re.search(r"sl_lua_%s\[\] = \{\n(.*?)0x00\};" % name, c, re.S)
            assert m, name
            data = bytes(int(x, 16) for x in re.findall(r"0x([0-9a-f]{2})", m.group(1)))
            assert data.decode() == script(name), name


# ---- decide ----

def decide_args(ncalls, rules, calls, base="b", lease=S, reserve=5 * S, deadline=0):
    """ARGV of a decision with no commits: RULES a list of (kind, limit,
    span_us, probe_us) (rate rules without shares), CALLS a list of (app,
    [(rule number, first key index[, cost]), ...])."""
    a = [base, lease, reserve, deadline, 0, len(rules)]
    for kind, limit, span, probe in rules:
        a += [kind, limit, span, probe]
        if kind.lower() == "r":
            a += [0]
    a += [ncalls]
    for app, rs in calls:
        a += [app, len(rs)]
        for r in rs:
            a += [r[0], r[1], r[2] if len(r) > 2 else 1]
    return a


def test_decide_admits_up_to_the_limit_and_says_how_long_to_wait(redis):
    keys = ["{u}r", "{u}v", "{u}a"]
    out = run(redis, "decide", keys,
              decide_args(3, [("r", 2, 10 * S, -1)], [("x", [(1, 1)])] * 3))
    assert out[1] == 1  # decided (not past its deadline)
    first, second, third = out[2:]
    # allowed, by rule 1, with 1 then 0 left; resets after the span
    assert first[:3] == [1, 1, 1] and first[3] == 10 * S
    assert second[:3] == [1, 1, 0]
    # refused by rule 1, for the whole span (two reservations, no entries)
    assert third[:4] == [0, 1, 10 * S, 0]
    # two reservations, nothing logged yet (a call is logged when sent)
    assert redis.command("ZRANGE", "{u}v", 0, -1) == [b"b:1|x", b"b:2|x"]
    assert redis.command("LLEN", "{u}r") == 0


def test_decide_past_its_deadline_writes_nothing(redis):
    keys = ["{u}r", "{u}v", "{u}a"]
    out = run(redis, "decide", keys,
              decide_args(1, [("r", 2, 10 * S, -1)], [("x", [(1, 1)])], deadline=1))
    assert out[1] == 0 and len(out) == 2
    assert redis.command("EXISTS", "{u}v") == 0


def test_decide_turns_a_lapsed_reservation_into_an_entry(redis):
    keys = ["{u}r", "{u}v", "{u}a"]
    run(redis, "decide", keys,
        decide_args(1, [("r", 5, 10 * S, -1)], [("x", [(1, 1)])], reserve=0))
    time.sleep(0.01)
    out = run(redis, "decide", keys,
              decide_args(1, [("r", 5, 10 * S, -1)], [("x", [(1, 1)])], base="c"))
    # the lapsed one counts as sent (the safe side): 5 - 1 logged - 1 now
    assert out[2][:3] == [1, 1, 3]
    assert redis.command("LLEN", "{u}r") == 1
    assert redis.command("ZRANGE", "{u}v", 0, -1) == [b"c:1|x"]


def test_decide_is_all_or_nothing_across_rules(redis):
    # rule 1: rate 5 per 10 s; rule 2: concurrency 1.  The second call
    # fits the rate but not the concurrency: it takes nothing from either.
    keys = ["{u}r", "{u}v", "{u}a", "{u}c"]
    out = run(redis, "decide", keys, decide_args(
        2, [("r", 5, 10 * S, -1), ("c", 1, 0, -1)],
        [("x", [(1, 1), (2, 4)])] * 2))
    assert out[2][0] == 1
    assert out[3][:3] == [0, 2, S]
    assert redis.command("ZCARD", "{u}v") == 1
    assert redis.command("ZRANGE", "{u}c", 0, -1) == [b"b:1|x"]


def test_a_shadow_rule_reports_but_denies_nothing(redis):
    keys = ["{u}r", "{u}v", "{u}a"]
    out = run(redis, "decide", keys,
              decide_args(2, [("R", 1, 10 * S, -1)], [("x", [(1, 1)])] * 2))
    assert out[2][0] == 1 and out[3][0] == 1
    # the second would have been denied by rule 1, for 10 s
    assert out[3][4:7] == [1, 10 * S, [1]]
    assert redis.command("ZCARD", "{u}v") == 1


def test_decide_honours_a_pause(redis):
    redis.command("SET", "{u}p", now_us(redis) + 3 * S)
    out = run(redis, "decide", ["{u}p"], decide_args(1, [("p", 0, 0, -1)], [("x", [(1, 1)])]))
    assert out[2][:2] == [0, 1] and 2 * S < out[2][2] <= 3 * S


# ---- commit ----

def commit_args(calls):
    """CALLS: (member, delay_us, app), each to one rate rule (limit 5, 10 s)."""
    a = [len(calls)]
    for member, delay, app in calls:
        a += [member, delay, app, 1, 5, 10 * S, 0]
    return a


def test_commit_logs_a_reserved_call_once_and_an_outage_call_always(redis):
    keys = ["{u}r", "{u}v", "{u}a"]
    run(redis, "decide", keys, decide_args(2, [("r", 5, 10 * S, -1)], [("x", [(1, 1)])] * 2))
    t0 = now_us(redis)
    run(redis, "commit", keys, commit_args([("b:1|x", 2000, "x")]))
    assert redis.command("ZRANGE", "{u}v", 0, -1) == [b"b:2|x"]
    stamps = [int(x) for x in redis.command("LRANGE", "{u}r", 0, -1)]
    # stamped at its send: the script's time less the delay
    assert len(stamps) == 1 and t0 - 2000 <= stamps[0] < t0 + S
    # committed again (a resend of the commit): nothing more
    run(redis, "commit", keys, commit_args([("b:1|x", 0, "x")]))
    assert redis.command("LLEN", "{u}r") == 1
    # a call decided locally during an outage ("" member): logged
    run(redis, "commit", keys, commit_args([("", 0, "y")]))
    assert redis.command("LLEN", "{u}r") == 2
    assert redis.command("LRANGE", "{u}a", 0, -1) == [b"y", b"x"]
    # a stamp older than the newest entry is written as that entry (ordered)
    run(redis, "commit", keys, commit_args([("", 1000000, "z")]))
    s = [int(x) for x in redis.command("LRANGE", "{u}r", 0, -1)]
    assert s == sorted(s, reverse=True)


# ---- release, renew ----

def test_release_frees_a_slot_and_announces_room_when_the_bucket_was_full(redis):
    keys = ["{u}c"]
    redis.command("ZADD", "{u}c", now_us(redis) + 10 * S, "m1")
    sub = socket.create_connection(("127.0.0.1", redis.port), timeout=5)
    f = sub.makefile("rb")
    sub.sendall(resp_encode("SUBSCRIBE", "room"))
    assert resp_read(f)[0] == b"subscribe"
    run(redis, "release", keys, ["room", "m1", 1])
    assert redis.command("ZCARD", "{u}c") == 0
    assert resp_read(f) == [b"message", b"room", b"{u}c"]
    # a member not there: nothing removed, nothing announced
    run(redis, "release", keys, ["room", "m1", 1])
    sub.settimeout(0.3)
    with pytest.raises(socket.timeout):
        resp_read(f)
    sub.close()


def test_renew_extends_a_live_lease_and_never_revives_a_lapsed_one(redis):
    n = now_us(redis)
    redis.command("ZADD", "{u}c", n + S, "m1")
    run(redis, "renew", ["{u}c"], ["m1", 30 * S])
    assert int(redis.command("ZSCORE", "{u}c", "m1")) >= n + 30 * S
    run(redis, "renew", ["{u}c"], ["gone", 30 * S])
    assert redis.command("ZSCORE", "{u}c", "gone") is None


# ---- pause, set_pause ----

def test_pause_counts_from_its_deadline_when_late(redis):
    n = run(redis, "pause", ["{u}p", "{u}w"], [2 * S, 0, "429"])
    assert n + 2 * S - 1000 <= int(redis.command("GET", "{u}p")) <= n + 2 * S
    assert redis.command("GET", "{u}w") == b"429"
    redis.command("DEL", "{u}p", "{u}w")
    # it arrived 1.5 s after its deadline: a 1 s pause is already over
    n = now_us(redis)
    run(redis, "pause", ["{u}p", "{u}w"], [S, n - 3 * S // 2, "late"])
    assert redis.command("EXISTS", "{u}p") == 0


def test_set_pause_sets_shortens_and_clears(redis):
    keys = ["{u}p", "{u}w", "{u}x"]
    out = run(redis, "set_pause", keys, ["set", 5 * S, "maintenance", "room"])
    assert out[1:4] == [0, b"", 1] and out[4] == out[0] + 5 * S
    out = run(redis, "set_pause", keys, ["shorten", S, "", "room"])
    assert out[2] == b"maintenance" and out[3] == 1 and out[4] == out[0] + S
    out = run(redis, "set_pause", keys, ["shorten", 3 * S, "", "room"])
    assert out[3] == 0  # not sooner: unchanged
    out = run(redis, "set_pause", keys, ["clear", 0, "", "room"])
    assert out[3] == 1 and out[4] == 0
    assert redis.command("EXISTS", "{u}p") == 0


# ---- sync ----

def sync_args(remaining, age=0, span=10 * S, limit=10, probe=0, cutoff=0):
    return [remaining, age, 0, span, limit, probe, 0, "room", cutoff]


def test_sync_keeps_the_providers_word_minus_calls_sent_after_it(redis):
    keys = ["{u}r", "{u}v", "{u}s"]
    run(redis, "sync", keys, sync_args(3))
    assert redis.command("HGET", "{u}s", "left") == b"3"
    # more than the limit: clipped to the limit
    run(redis, "sync", keys, sync_args(50))
    assert redis.command("HGET", "{u}s", "left") == b"10"
    # two calls logged after the cutoff: the reporting call's own is one
    # of them, so one is taken off the report
    n = now_us(redis)
    redis.command("LPUSH", "{u}r", n - 1000, n - 500)
    run(redis, "sync", keys, sync_args(6, cutoff=n - 2000))
    assert redis.command("HGET", "{u}s", "left") == b"5"
    # a report older than its span: forgotten
    run(redis, "sync", keys, sync_args(1, age=11 * S))
    assert redis.command("EXISTS", "{u}s") == 0


def test_decide_refuses_on_the_providers_word(redis):
    keys = ["{u}r", "{u}v", "{u}a", "{u}s"]
    run(redis, "sync", ["{u}r", "{u}v", "{u}s"], sync_args(1))
    out = run(redis, "decide", keys,
              decide_args(2, [("r", 10, 10 * S, 0)], [("x", [(1, 1)])] * 2))
    assert out[2][:3] == [1, 1, 0]
    # refused by the report, though the log holds one call of ten; the
    # reply says what the provider said (1 left)
    assert out[3][:2] == [0, 1] and out[3][4] == 1


# ---- snapshot ----

def test_snapshot_shows_a_rate_bucket_and_its_apps(redis):
    keys = ["{u}r", "{u}v", "{u}a"]
    run(redis, "decide", keys, decide_args(3, [("r", 5, 10 * S, -1)],
                                          [("x", [(1, 1)]), ("x", [(1, 1)]), ("y", [(1, 1)])]))
    # each call names its rule's keys
    run(redis, "commit", keys * 2, commit_args([("b:1|x", 0, "x"), ("b:3|y", 0, "y")]))
    args = [0, 5, 5, 60000, 1,
            "r", 0, 5, 10 * S, 0, "calls", 0, 0, "{u}r", "{u}v", "{u}a", "{u}s", "{u}c"]
    out = run(redis, "snapshot", ["{u}x", "{u}p", "{u}w"] + keys, args)
    assert out[1] == 0  # not paused
    nb, buckets = out[4]
    assert nb == 1
    key, used, res, rem = buckets[0][:4]
    assert (used, res, rem) == (3, 1, 2)  # 2 sent + 1 reserved, of 5
    apps = buckets[0][8]
    assert dict(zip(apps[0::2], apps[1::2])) == {b"x": 1, b"y": 1}


# ---- costs ----

def test_a_weighted_call_fits_only_whole(redis):
    keys = ["{u}r", "{u}v", "{u}a"]
    # limit 10 (negative: the rule has costs); calls of cost 4, 4, 4: the
    # third would need 12
    out = run(redis, "decide", keys,
              decide_args(3, [("r", -10, 10 * S, -1)], [("x", [(1, 1, 4)])] * 3))
    assert [c[0] for c in out[2:5]] == [1, 1, 0]
    assert out[2][2] == 6 and out[3][2] == 2
    # one weighed member per call
    assert redis.command("ZRANGE", "{u}v", 0, -1) == [b"b:1*4|x", b"b:2*4|x"]
    # a call of cost 2 still fits
    out = run(redis, "decide", keys,
              decide_args(1, [("r", -10, 10 * S, -1)], [("x", [(1, 1, 2)])], base="c"))
    assert out[2][:3] == [1, 1, 0]
    # sent: four entries, then the others lapse into entries by weight
    a = [1, "b:1|x", 0, "x", 1, 10, 10 * S, 16, 4]
    run(redis, "commit", keys, a)
    assert redis.command("LLEN", "{u}r") == 4
    assert redis.command("ZRANGE", "{u}v", 0, -1) == [b"b:2*4|x", b"c:1*2|x"]


def test_a_weighted_call_in_a_bucket(redis):
    # bucket 3, 1 call a second: a call of cost 3 fits an empty bucket,
    # the next of cost 2 waits until two calls have leaked... after the
    # first is sent; while it is reserved, as long as its drain at least
    out = run(redis, "decide", BKEYS, [
        "b", S, 5 * S, 0, 0, 1, "b", -3, 3 * S, -1, 1, S, 3 * S, 0,
        2, "x", 1, 1, 1, 3, "x", 1, 1, 1, 2])
    assert out[2][:3] == [1, 1, 0]
    assert out[3][0] == 0
    run(redis, "commit", BKEYS, [1, "b:1|x", 0, "x", 1, 3, 3 * S, 8 + 16, 1, S, 3])
    assert int(redis.command("HGET", "{u}b", "l")) == 3 * S
    out = run(redis, "decide", BKEYS, [
        "c", S, 5 * S, 0, 0, 1, "b", -3, 3 * S, -1, 1, S, 3 * S, 0,
        1, "x", 1, 1, 1, 2])
    assert out[2][0] == 0 and 2 * S - 100000 < out[2][2] <= 2 * S


# ---- leaky buckets ----

BKEYS = ["{u}r", "{u}v", "{u}a", "{u}b"]


def bucket_decide_args(ncalls, bucket=3, n=1, p=S, cap=None, base="b", reserve=5 * S):
    """A decision on one leaky bucket of BUCKET calls leaking N per P µs
    (capacity CAP level units: BUCKET x P unless given)."""
    cap = bucket * p if cap is None else cap
    return [base, S, reserve, 0, 0, 1, "b", bucket, bucket * p // n, -1, n, p, cap, 0,
            ncalls] + ["x", 1, 1, 1, 1] * ncalls


def bucket_commit_args(members, n=1, p=S):
    a = [len(members)]
    for m in members:
        a += [m, 0, "x", 1, 3, 3 * S, 8, n, p]
    return a


def test_a_bucket_admits_its_size_then_waits_for_one_call_to_leak(redis):
    out = run(redis, "decide", BKEYS, bucket_decide_args(4))
    # three fit (reservations count), with 2, 1, 0 left; the fourth cannot
    # fit until the three are sent and one of them leaks: one call's leak
    # (1 s) at least
    assert [c[:3] for c in out[2:5]] == [[1, 1, 2], [1, 1, 1], [1, 1, 0]]
    assert out[5][:3] == [0, 1, S]
    # sent: the level holds three calls (3 x p), the reservations are gone
    t0 = now_us(redis)
    run(redis, "commit", BKEYS * 3, bucket_commit_args(["b:1|x", "b:2|x", "b:3|x"]))
    assert redis.command("ZCARD", "{u}v") == 0
    assert int(redis.command("HGET", "{u}b", "l")) == 3 * S
    # committed again: nothing more
    run(redis, "commit", BKEYS, bucket_commit_args(["b:1|x"]))
    assert int(redis.command("HGET", "{u}b", "l")) == 3 * S
    # full: the next call waits until one call has leaked, exactly (from
    # the commit, which happened after T0)
    out = run(redis, "decide", BKEYS, bucket_decide_args(1, base="c"))
    assert out[2][:2] == [0, 1]
    waited = now_us(redis) - t0
    assert S - waited <= out[2][2] <= S


def test_a_bucket_leaks_and_a_lapsed_reservation_fills_it(redis):
    # two calls' worth, written 1.5 s ago at 1 per second: half a call left
    redis.command("HSET", "{u}b", "l", 2 * S, "at", now_us(redis) - 1500000,
                  "n", 1, "p", S)
    out = run(redis, "decide", BKEYS, bucket_decide_args(3, reserve=0))
    # 0.5 call in it: two fit (2.5 of 3), the third waits 0.5 s
    assert [c[0] for c in out[2:5]] == [1, 1, 0]
    assert 400000 < out[4][2] <= 500000
    time.sleep(0.01)
    # the two reservations lapsed uncommitted: sent, as far as anyone knows
    out = run(redis, "decide", BKEYS, bucket_decide_args(1, base="c"))
    assert out[2][0] == 0
    assert redis.command("ZCARD", "{u}v") == 0
    assert int(redis.command("HGET", "{u}b", "l")) > 2 * S
    assert redis.command("LLEN", "{u}r") == 2


def test_a_bucket_written_with_another_leak_is_rescaled(redis):
    # one call at 1 per 2 s (units of 2,000,000), read at 1 per second
    redis.command("HSET", "{u}b", "l", 2 * S, "at", now_us(redis), "n", 1, "p", 2 * S)
    out = run(redis, "decide", BKEYS, bucket_decide_args(3))
    assert [c[0] for c in out[2:5]] == [1, 1, 0]


def test_sync_sets_a_buckets_level_from_the_providers_word(redis):
    keys = ["{u}r", "{u}v", "{u}s", "{u}b"]
    n = now_us(redis)
    # "2 left of 3" (1 used) about the reporting call just sent, one more
    # call sent after it: 1 + 1 calls in the bucket, whatever it held
    redis.command("HSET", "{u}b", "l", 3 * S, "at", n, "n", 1, "p", S)
    redis.command("LPUSH", "{u}r", n - 1000, n - 500)
    run(redis, "sync", keys, [2, 0, 200000, 4 * S, 3, 60 * S, 0, "room", n - 2000, 1, S])
    lvl = int(redis.command("HGET", "{u}b", "l"))
    assert 2 * S - 100000 <= lvl <= 2 * S
    assert redis.command("EXISTS", "{u}s") == 0  # a bucket keeps no report


def test_snapshot_shows_a_buckets_level(redis):
    redis.command("HSET", "{u}b", "l", 2 * S, "at", now_us(redis), "n", 1, "p", S)
    redis.command("ZADD", "{u}v", now_us(redis) + 5 * S, "m|x")
    args = [0, 5, 5, 60000, 1,
            "b", 0, 3, 3 * S, 0, "rest", 0, 0, "{u}r", "{u}v", "{u}a", "{u}s", "{u}c",
            1, S, 3 * S, "{u}b"]
    out = run(redis, "snapshot", ["{u}x", "{u}p", "{u}w"] + BKEYS, args)
    key, used, res, rem, resets = out[4][1][0][:5]
    # two calls in the level and one reserved: full; empty in about 3 s
    assert (used, res, rem) == (3, 1, 0)
    assert 2 * S < resets <= 3 * S


# ---- settlement ----

def test_settle_refunds_the_calls_own_entries_once_and_charges(redis):
    keys = ["{u}r", "{u}v", "{u}a"]
    zkeys = keys + ["{u}z"]
    run(redis, "decide", keys, decide_args(2, [("r", -10, 10 * S, -1)],
                                           [("x", [(1, 1, 5)]), ("y", [(1, 1, 1)])]))
    # the first (cost 5) is sent, then the second: the commit notes the
    # first's stamp in z (flags 16 + 32)
    run(redis, "commit", zkeys, [1, "b:1|x", 0, "x", 1, 10, 10 * S, 48, 5])
    run(redis, "commit", keys, commit_args([("b:2|y", 0, "y")]))
    assert redis.command("LLEN", "{u}r") == 6
    stamp = int(redis.command("HGET", "{u}z", "b:1|x"))
    # it cost 2: three of its own entries go, the later call's stays
    args = ["b:1|x", 5, 2, 10, 10 * S, "x", 0]
    run(redis, "settle", zkeys, args)
    left = [int(x) for x in redis.command("LRANGE", "{u}r", 0, -1)]
    assert len(left) == 3 and left[1:] == [stamp, stamp] and left[0] >= stamp
    assert redis.command("LRANGE", "{u}a", 0, -1) == [b"y", b"x", b"x"]
    # settled once: the same word again changes nothing
    run(redis, "settle", zkeys, args)
    assert redis.command("LLEN", "{u}r") == 3
    # the second call cost 4 (estimated 1): 3 more, logged now
    run(redis, "settle", zkeys, ["b:2|y", 1, 4, 10, 10 * S, "y", 0])
    assert redis.command("LLEN", "{u}r") == 6
    assert redis.command("LRANGE", "{u}a", 0, 2) == [b"y", b"y", b"y"]


def test_settle_lowers_a_buckets_level_by_what_its_log_owes(redis):
    run(redis, "decide", BKEYS, bucket_decide_args(1))
    run(redis, "commit", ["{u}r", "{u}v", "{u}a", "{u}b", "{u}z"],
        [1, "b:1|x", 0, "x", 1, 3, 3 * S, 8 + 32, 1, S])
    # one call of 1 in the level; it cost... 0 (the provider's word): the
    # level drops by the call's worth, less what leaked since
    run(redis, "settle", ["{u}r", "{u}v", "{u}a", "{u}z", "{u}b"],
        ["b:1|x", 1, 0, 3, 3 * S, "x", 0, 1, S])
    assert redis.command("EXISTS", "{u}b") == 0   # empty: deleted
    assert redis.command("LLEN", "{u}r") == 0


# ---- the usage history ----

def test_history_adds_up_and_caps_the_apps_it_names(redis):
    run(redis, "hist_add", ["{u}y100"], [60000, 2, 2, "a", 2, "b", 3])
    run(redis, "hist_add", ["{u}y100"], [60000, 2, 2, "a", 1, "c", 4])
    out = run(redis, "hist_read", ["{u}y"], [99, 3])
    assert out[1] == 100 and len(out) == 3
    got = dict(zip(out[2][0::2], out[2][1::2]))
    # a third app past the 2 named ones counts under "other"
    assert got == {b"a": b"3", b"b": b"3", b"other": b"4"}
    assert 0 < redis.command("PTTL", "{u}y100") <= 60000


def test_a_script_error_is_an_error_not_a_wrong_answer(redis):
    with pytest.raises(RedisError):
        run(redis, "decide", ["{u}r"], ["b", "not-a-number"])


# ---- fleet and repair (sl_redis_repair.c) ----

FLEET_KEYS = ["{u}m", "{u}f", "{u}k", "{u}p"]


def fleet(redis, member, pmin=0, pmax=10 * S, expiry=3 * S):
    return run(redis, "fleet", FLEET_KEYS, [member, expiry, pmin, pmax, "room", S // 4])


def test_decide_answers_lost_without_its_marker_and_during_a_phase(redis):
    keys = ["{u}r", "{u}v", "{u}a", "{u}m"]
    args = decide_args(1, [("r", 2, 10 * S, -1)], [("x", [(1, 1)])])
    assert run(redis, "decide", keys, args)[1] == 2      # no marker
    redis.command("SET", "{u}m", "r|0|-|1|0|0")
    assert run(redis, "decide", keys, args)[1] == 2      # a repair phase
    assert redis.command("EXISTS", "{u}v") == 0          # nothing decided
    redis.command("SET", "{u}m", "o|0|-|1|0|0")
    assert run(redis, "decide", keys, args)[1] == 1


def test_a_lost_marker_starts_a_phase_that_waits_for_every_live_member(redis):
    rid = re.search(r"run_id:(\w+)", redis.command("INFO", "server").decode()).group(1)
    out = fleet(redis, "A")
    assert out[1] == 1 and out[3] == 0 and out[4] == 1   # started, not acked
    since = out[2]
    # all lost: the cutoff is 0, every call is put back
    assert redis.command("GET", "{u}m").startswith(("r|0|%s|" % rid).encode() + since + b"|0|")
    assert fleet(redis, "B")[1:5] == [1, since, 0, 0]    # joined, not started
    # A puts its calls back; B has not: the phase goes on
    assert run(redis, "repair", ["{u}m", "{u}k"], ["A", since, 0, 0, 0, 0])[2] == 1
    assert fleet(redis, "A")[1:4] == [1, since, 1]
    run(redis, "repair", ["{u}m", "{u}k"], ["B", since, 0, 0, 0, 0])
    out = fleet(redis, "A")
    assert out[1] == 0                                   # over: decisions run
    assert redis.command("GET", "{u}m").startswith(b"o|0|" + rid.encode())
    # a marker naming another run_id (a restart that kept a snapshot, a
    # failover) starts a new phase
    redis.command("SET", "{u}m", "o|0|0123abcd|1|0|%d" % (10 * S))
    assert fleet(redis, "A")[4] == 1
    # ... and the marker survived: the writes before its last heartbeat
    # did too; calls from the heartbeat less the margin are put back
    assert redis.command("GET", "{u}m").split(b"|")[4] == str(10 * S - S // 4).encode()


def test_a_marker_no_member_beat_for_a_while_starts_a_phase_from_its_last_beat(redis):
    """The member registry f outlives the last heartbeat by 2 x expiry:
    when it is gone but the marker is not, no instance kept these keys
    for that long (the fleet was stopped, or decided under other keys: a
    reload that moved an upstream into or out of tenant groups), so the
    calls sent since the marker's last heartbeat are put back."""
    since = fleet(redis, "A")[2]
    run(redis, "repair", ["{u}m", "{u}k"], ["A", since, 0, 0, 0, 0])
    assert fleet(redis, "A", pmin=0)[1] == 0              # decisions run
    assert fleet(redis, "A")[1:5] == [0, since, 0, 0]     # a beat: nothing new
    beat = int(redis.command("GET", "{u}m").split(b"|")[5])
    redis.command("DEL", "{u}f")                          # (expired)
    out = fleet(redis, "A")
    assert out[1] == 1 and out[4] == 2                    # a phase, told why
    # from the last heartbeat, less the margin: what came before is there
    assert redis.command("GET", "{u}m").split(b"|")[4] == str(beat - S // 4).encode()


def test_a_phase_ends_at_its_bound_without_a_member_that_never_answers(redis):
    fleet(redis, "A")
    fleet(redis, "B")
    assert fleet(redis, "A", pmax=10 * S)[1] == 1
    assert fleet(redis, "A", pmax=0)[1] == 0


def test_repair_puts_a_call_back_once_and_in_order(redis):
    redis.command("SET", "{u}m", "r|0|-|7|0|0")
    t = now_us(redis)
    # an entry logged since the loss, 1 s ago
    redis.command("RPUSH", "{u}r", str(t - S))
    redis.command("RPUSH", "{u}a", "app")
    keys = ["{u}m", "{u}k", "{u}r", "{u}a", "{u}x", "{u}v"]
    # two calls sent 3 s and 0.5 s ago, one 20 s ago (out of the span),
    # and a reservation to hold again
    args = ["A", "7", 1, 5, 10 * S, 0, 3, "p:1:0", 3 * S, "x", "p:2:0", S // 2, "y",
            "p:3:0", 20 * S, "x", 1, "b:1|x", 5 * S, 0, 0]
    out = run(redis, "repair", keys, args)
    assert out[1:] == [2, 1]                     # two put back, acknowledged
    stamps = [int(x) for x in redis.command("LRANGE", "{u}r", 0, -1)]
    assert len(stamps) == 3 and stamps == sorted(stamps, reverse=True)
    # never earlier than the send: now - delay, with now no earlier than t
    assert stamps[0] >= t - S // 2 and stamps[2] >= t - 3 * S
    # each with its app
    assert redis.command("LRANGE", "{u}a", 0, -1) == [b"y", b"app", b"x"]
    assert redis.command("ZRANGE", "{u}v", 0, -1) == [b"b:1|x"]
    assert redis.command("SMEMBERS", "{u}k") == [b"A"]
    # sent again (another worker of the process, a resend): nothing added
    keys2 = ["{u}m", "{u}k", "{u}r", "{u}a", "{u}x", "{u}v"]
    assert run(redis, "repair", keys2, args)[1] == 0
    assert redis.command("LLEN", "{u}r") == 3
    assert redis.command("ZCARD", "{u}v") == 1
    # a repair for another phase writes, but acknowledges nothing
    redis.command("DEL", "{u}k")
    args[1] = "8"
    assert run(redis, "repair", keys2, args)[2] == 0


def test_repair_puts_back_only_calls_from_the_cutoff(redis):
    t = now_us(redis)
    redis.command("SET", "{u}m", "r|0|-|7|%d|0" % (t - 2 * S))
    keys = ["{u}m", "{u}k", "{u}r", "{u}a", "{u}x"]
    # sent 3 s ago (before the cutoff: it survived) and 1 s ago
    args = ["A", "7", 1, 5, 10 * S, 0, 2, "p:1:0", 3 * S, "-", "p:2:0", S, "-", 0, 0, 0]
    assert run(redis, "repair", keys, args)[1:] == [1, 1]
    assert redis.command("LLEN", "{u}r") == 1


def test_repair_refills_a_leaky_buckets_level(redis):
    """A bucket of 4 draining 1/s (span 4 s): its level is replayed from
    the merged log, plus what the bucket may have held at the span's
    start (sl_bucket_refill's arithmetic)."""
    redis.command("SET", "{u}m", "r|0|-|7|0|0")
    keys = ["{u}m", "{u}k", "{u}r", "{u}a", "{u}x", "{u}b"]
    head = ["A", "7", 1, 4, 4 * S, 2, 1, S]     # limit, span, flags (leaky), n, p
    # four calls 1 s apart (the leak rate) over the span: the replay
    # leaves half a call; the bucket may have been full just after the
    # first (3.5 s ago), which leaves 4 - 3.5 + 3 = 3.5
    args = head + [4, "p:1:0", 3 * S + S // 2, "-", "p:2:0", 2 * S + S // 2, "-",
                   "p:3:0", S + S // 2, "-", "p:4:0", S // 2, "-", 0, 0, 0]
    assert run(redis, "repair", keys, args)[1] == 4
    assert int(redis.command("HGET", "{u}b", "l")) == 3 * S + S // 2
    # one call 0.5 s ago: a bucket full at the span's start (4 s ago) has
    # drained 4 calls' worth and taken this one: 1 (the replay: 0.5)
    redis.command("DEL", "{u}r", "{u}a", "{u}x", "{u}b")
    args = head + [1, "p:9:0", S // 2, "-", 0, 0, 0]
    assert run(redis, "repair", keys, args)[1] == 1
    assert int(redis.command("HGET", "{u}b", "l")) == S
    # a level already higher (a commit since) is not lowered
    redis.command("HSET", "{u}b", "l", 3 * S)
    args = head + [1, "p:10:0", S // 2, "-", 0, 0, 0]
    run(redis, "repair", keys, args)
    assert int(redis.command("HGET", "{u}b", "l")) >= 3 * S - S // 1000


def test_decide_answers_lost_for_a_bucket_whose_level_was_evicted(redis):
    """A leaky bucket's level missing beside its log, after Redis evicted
    keys since the marker was set: no decision ({now, 2})."""
    # real evictions first (junk keys under allkeys-random), then none
    def evicted():
        return int(redis.command("INFO", "stats").decode().split("evicted_keys:")[1].split()[0])
    ev0 = evicted()
    fill_until_evicted(redis, "allkeys-random", 1024 * 1024, lambda: evicted() > ev0)
    redis.command("FLUSHALL")
    ev = evicted()
    assert ev > ev0
    t = now_us(redis)
    redis.command("LPUSH", "{u}r", str(t - S))
    keys = ["{u}r", "{u}v", "{u}a", "{u}b", "{u}m"]
    args = ["base", S, S, 0, 0, 1, "b", 4, 4 * S, -1, 1, S, 4 * S, 0,
            1, "app", 1, 1, 1, 1]
    # no eviction since the marker was set: a missing level is drained
    redis.command("SET", "{u}m", "o|%d|-|0|0|0" % ev)
    assert run(redis, "decide", keys, args)[1] == 1
    redis.command("DEL", "{u}b")
    redis.command("ZREM", "{u}v", "base:1|app")
    # evictions since the marker: the missing level was lost, not drained
    redis.command("SET", "{u}m", "o|0|-|0|0|0")
    assert run(redis, "decide", keys, args)[1] == 2
    # a level that exists is read as it is, evictions or not (the steady
    # state asks INFO nothing)
    redis.command("HSET", "{u}b", "l", 0, "at", t, "n", 1, "p", S)
    assert run(redis, "decide", keys, args)[1] == 1


def test_repair_puts_a_usage_report_back_and_counts_later_calls_once(redis):
    """A report put back is written from the merged log (sync.lua's
    arithmetic); calls another member puts back later that were sent from
    its cutoff on go to its `sent`; an older report never replaces a
    newer one."""
    redis.command("SET", "{u}m", "r|0|-|7|0|0")
    t = now_us(redis)
    for ago in (3, 2, 1):
        redis.command("LPUSH", "{u}r", str(t - ago * S))
    keys = ["{u}m", "{u}k", "{u}r", "{u}s"]
    # 5 left when the reporting call was sent, 2.5 s ago: the two calls
    # logged after it are not in the report, but for the reporting call's
    # own (one of them): 4 left
    # (leaky 0, remaining 5, sent 2.5 s ago, no clock bound known, no
    # allowance, span 10 s, limit 100, probe 1 s)
    report = [1, 0, 5, 2 * S + S // 2, 0, 0, 10 * S, 100, S]
    run(redis, "repair", keys, ["A", "7", 0, 0] + report + [0])
    assert int(redis.command("HGET", "{u}s", "left")) == 4
    assert int(redis.command("HGET", "{u}s", "sent")) == 0
    # another member puts back a call sent 1.5 s ago (after the report)
    # and one 3.5 s ago (before it): one more against the report
    keys = ["{u}m", "{u}k", "{u}r", "{u}a", "{u}x", "{u}s"]
    run(redis, "repair", keys, ["B", "7", 1, 100, 10 * S, 4, 2, "q:1:0", S + S // 2, "-",
                                "q:2:0", 3 * S + S // 2, "-", 0, 0, 0])
    assert redis.command("LLEN", "{u}r") == 5
    assert int(redis.command("HGET", "{u}s", "sent")) == 1
    # an older report (sent 5 s ago) leaves the newer one as it is
    keys = ["{u}m", "{u}k", "{u}r", "{u}s"]
    run(redis, "repair", keys, ["C", "7", 0, 0, 1, 0, 50, 5 * S, 0, 0, 10 * S, 100, S, 0])
    assert int(redis.command("HGET", "{u}s", "left")) == 4
    # a known bound of the send on Redis's clock is the cutoff: sent 0.5 s
    # ago, known to be no earlier than 2.5 s ago (the log's calls 2, 1.5
    # and 1 s ago count as after it, the reporting call's own taken off)
    redis.command("DEL", "{u}s")
    run(redis, "repair", keys, ["D", "7", 0, 0, 1, 0, 5, S // 2, now_us(redis) - 2 * S - S // 2,
                                0, 10 * S, 100, S, 0])
    assert int(redis.command("HGET", "{u}s", "left")) == 5 - (3 - 1)
    # a report sync.lua writes keeps its cutoff and its call's send, so a
    # report put back later replaces it only if sent later, and calls put
    # back later are counted against it
    run(redis, "sync", ["{u}r", "{u}v", "{u}s"], [9, 0, 0, 10 * S, 100, S, 0, "ch", 0])
    sat = int(redis.command("HGET", "{u}s", "sat"))
    assert sat >= t and int(redis.command("HGET", "{u}s", "cut")) <= sat
    run(redis, "repair", keys, ["E", "7", 0, 0, 1, 0, 50, S, 0, 0, 10 * S, 100, S, 0])
    assert int(redis.command("HGET", "{u}s", "rv")) == 9


def test_repair_puts_a_leaky_buckets_report_into_its_level(redis):
    """A bucket's report (Shopify's X-Shopify-Shop-Api-Call-Limit) lives in
    its level: put back, the provider's level drained from the reporting
    call's send, plus the calls logged after it, raises the level."""
    redis.command("SET", "{u}m", "r|0|-|7|0|0")
    t = now_us(redis)
    redis.command("LPUSH", "{u}r", str(t - 2 * S), str(t - S))
    keys = ["{u}m", "{u}k", "{u}r", "{u}b"]
    # a bucket of 40 draining 2/s (n 1, p 500 ms): 5 left when the call
    # sent 2.05 s ago was answered (35 used), 4.1 calls' worth drained
    # since; of the two calls logged from then on, one is the reporting
    # call's own (as sync.lua counts): 35 - 4.1 + 1 = 31.9 calls
    report = [1, 1, 5, 2 * S + S // 20, 0, 0, 20 * S, 40, 0, 1, S // 2]
    run(redis, "repair", keys, ["A", "7", 0, 0] + report + [0])
    assert int(redis.command("HGET", "{u}b", "l")) == 35 * (S // 2) - (2 * S + S // 20) + S // 2
    # a level already higher is not lowered
    redis.command("HSET", "{u}b", "l", 39 * (S // 2), "at", now_us(redis))
    run(redis, "repair", keys, ["B", "7", 0, 0] + report + [0])
    assert int(redis.command("HGET", "{u}b", "l")) >= 39 * (S // 2) - S // 100


# ---- the token broker's ----

def test_the_broker_stores_a_token_only_under_its_own_lease(redis):
    keys = ["t", "l", "f", "b"]
    redis.command("SET", "l", "7")
    redis.command("SET", "f", "old failure")
    assert run(redis, "auth_put", keys, ["6", "sealed", 60000, "ch"]) == 0
    assert redis.command("EXISTS", "t") == 0  # another lease: nothing
    assert run(redis, "auth_put", keys, ["7", "sealed", 60000, "ch"]) == 1
    assert redis.command("GET", "t") == b"sealed"
    # the lease, the failure and the back-off are gone with a good login
    assert redis.command("EXISTS", "l", "f", "b") == 0
    v, ttl = run(redis, "auth_get", ["t"], [])
    assert v == b"sealed" and 59000 < ttl <= 60000
    assert run(redis, "auth_get", ["none"], []) is None


def test_the_broker_drops_only_its_own_lease(redis):
    redis.command("SET", "l", "7")
    assert run(redis, "auth_drop", ["l"], ["6", "ch"]) == 1
    assert redis.command("GET", "l") == b"7"
    assert run(redis, "auth_drop", ["l"], ["7", "ch"]) == 1
    assert redis.command("EXISTS", "l") == 0


def test_a_failed_login_doubles_the_fleets_back_off_up_to_its_most(redis):
    keys = ["l", "f", "b"]
    waits = []
    for fence in ("1", "2", "3", "4", "5", "6", "7"):
        redis.command("SET", "l", fence)
        waits.append(run(redis, "auth_fail", keys, [fence, "500\nboom", "ch", 1000, 8000]))
        assert redis.command("EXISTS", "l") == 0
        assert redis.command("GET", "f") == b"500\nboom"
    assert waits == [1000, 2000, 4000, 8000, 8000, 8000, 8000]
    # a lease lost meanwhile: nothing written
    redis.command("SET", "l", "9")
    assert run(redis, "auth_fail", keys, ["8", "x", "ch", 1000, 8000]) == 0
    assert redis.command("GET", "l") == b"9"
