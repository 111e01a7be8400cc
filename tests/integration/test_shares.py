"""Fair sharing between apps through the binary: "apps" shares on a rule
(max, reserve, lend, "*"), the 429 that names the share, priority lanes in
queue mode, and three instances sharing one Redis.  Every figure is read
at the upstream (what the provider would count), or from what a client
sees (status, headers, body)."""
import http.client
import json
import subprocess
import threading
import time

import pytest

from harness import SLUICE_BIN, free_port, max_in_window


def conf(up, rule, store=None, upstream=None, **top):
    # The margin absorbs the jitter between a call's send (when sluice
    # stamps it) and its arrival (when the upstream counts it): 50 ms is
    # the documented allowance on loopback (docs/guides/rules.md, "The
    # margin"); the assertions on arrival times hold as long as the
    # jitter stays below.
    u = {"name": "crm", "prefix": "/crm", "url": up.url, "app": "header:X-App",
         "margin": "50ms", "rules": [dict({"name": "quota"}, **rule)]}
    u.update(upstream or {})
    c = {"upstreams": [u]}
    if store is not None:
        c["store"] = store
    c.update(top)
    return c


def call(sl, app, path="/crm/x", headers=None):
    h = {"X-App": app}
    h.update(headers or {})
    return sl.request("GET", "%s/%s" % (path, app), headers=h)


def app_of(rec):
    """The app a call at the upstream came from (its path's last part)."""
    return rec.target.split("?")[0].rsplit("/", 1)[-1]


def by_app(up, app):
    return up.count(lambda r: app_of(r) == app)


def test_max_caps_a_bursting_app_while_another_gets_all(upstream, store, sluice):
    # 10 per minute; "sync" may use at most half.  The whole test takes well
    # under a minute, so no call leaves the window while it runs.
    sl = sluice(conf(upstream, {"limit": 10, "window": "1m",
                                "apps": {"sync": {"max": 0.5}}}, store))
    got = [call(sl, "sync") for _ in range(12)]
    assert [g[0] for g in got] == [200] * 5 + [429] * 7
    body = json.loads(got[5][2])
    assert body["rule"] == "quota" and body["app"] == "sync"
    assert body["share"] == "max" and body["app_max"] == 5
    assert "sync" in body["message"] and "at most 5" in body["message"]
    # Room comes back when sync's oldest call leaves: about a minute
    # (60 s plus the 50 ms margin, rounded up: 61.)
    assert 55 <= int(got[5][1]["retry-after"]) <= 61
    assert got[5][1]["ratelimit"].startswith('"quota";r=0;')
    # Another app gets everything it asks for: the other half.
    assert [call(sl, "ui")[0] for _ in range(5)] == [200] * 5
    assert by_app(upstream, "sync") == 5 and by_app(upstream, "ui") == 5
    # The rule itself is now full, for everyone.
    r = call(sl, "ui")
    assert r[0] == 429 and "share" not in json.loads(r[2])


def test_ratelimit_remaining_is_what_the_app_has_left(upstream, sluice):
    sl = sluice(conf(upstream, {"limit": 10, "window": "1m",
                                "apps": {"sync": {"max": 4}}}))
    left = [call(sl, "sync")[1]["ratelimit"] for _ in range(3)]
    assert [l.split(";")[1] for l in left] == ["r=3", "r=2", "r=1"]
    # An app without a cap sees the rule's room.
    assert call(sl, "ui")[1]["ratelimit"].split(";")[1] == "r=6"


@pytest.mark.parametrize("lend", [False, True], ids=["kept", "lent"])
def test_reservation_holds_against_a_burst(upstream, store, sluice, lend):
    sl = sluice(conf(upstream, {"limit": 10, "window": "1m",
                                "apps": {"ui": {"reserve": 4, "lend": lend}}}, store))
    # The owner is active: one call of its 4.
    assert call(sl, "ui")[0] == 200
    # A burst from another app gets the rest, not the owner's unused 3.
    got = [call(sl, "mkt") for _ in range(8)]
    assert [g[0] for g in got] == [200] * 6 + [429] * 2
    body = json.loads(got[6][2])
    assert body["share"] == "reserved" and body["app"] == "mkt"
    assert "reserved for other apps" in body["message"]
    # The owner still gets its 3.
    assert [call(sl, "ui")[0] for _ in range(3)] == [200] * 3
    assert by_app(upstream, "ui") == 4 and by_app(upstream, "mkt") == 6


@pytest.mark.parametrize("lend", [False, True], ids=["kept", "lent"])
def test_idle_owner(upstream, store, sluice, lend):
    """With "lend": true an idle owner's reservation (no call of it in the
    window) is lent to a burst; by default it is kept."""
    sl = sluice(conf(upstream, {"limit": 10, "window": "1m",
                                "apps": {"ui": {"reserve": 4, "lend": lend}}}, store))
    got = [call(sl, "mkt")[0] for _ in range(12)]
    if lend:
        assert got == [200] * 10 + [429] * 2
        assert call(sl, "ui")[0] == 429  # lent out: it comes back with the window
    else:
        assert got == [200] * 6 + [429] * 6
        assert [call(sl, "ui")[0] for _ in range(4)] == [200] * 4


def test_every_other_app_star(upstream, store, sluice):
    # "*": each app not named may use at most 3; together they keep 2 for
    # themselves against "sync", which may use everything else.
    sl = sluice(conf(upstream, {"limit": 12, "window": "1m",
                                "apps": {"sync": {"max": 1.0},
                                         "*": {"max": 3, "reserve": 2}}}, store))
    for app in ("a", "b"):
        got = [call(sl, app) for _ in range(4)]
        assert [g[0] for g in got] == [200, 200, 200, 429]
        assert json.loads(got[3][2])["share"] == "max"
    # a and b used 6 (more than the pooled 2): sync may take all 6 left.
    assert [call(sl, "sync")[0] for _ in range(7)] == [200] * 6 + [429]
    assert upstream.count() == 12


def test_pool_is_kept_for_unnamed_apps(upstream, sluice):
    sl = sluice(conf(upstream, {"limit": 10, "window": "1m",
                                "apps": {"sync": {"max": 1.0}, "*": {"reserve": 0.3}}}))
    assert [call(sl, "sync")[0] for _ in range(9)] == [200] * 7 + [429] * 2
    # Three unnamed apps share the pooled 3.
    assert [call(sl, a)[0] for a in ("p", "q", "r", "s")] == [200, 200, 200, 429]


def test_upstream_default_shares_and_rule_override(upstream, sluice):
    c = conf(upstream, {"limit": 4, "window": "1m"},
             upstream={"apps": {"sync": {"max": 0.5}}})
    c["upstreams"][0]["rules"].append(
        {"name": "writes", "methods": ["POST"], "limit": 100, "window": "1m",
         "apps": {"sync": {"max": 1}}})
    sl = sluice(c)
    assert [call(sl, "sync")[0] for _ in range(3)] == [200, 200, 429]
    # POST counts in both rules: its own override caps sync at 1 there.
    r = sl.request("POST", "/crm/y/sync", body=b"{}", headers={"X-App": "sync"})
    assert r[0] == 429
    assert json.loads(r[2])["rule"] == "quota"


def test_reject_template_names_app_and_share(upstream, sluice):
    sl = sluice(conf(upstream, {"limit": 4, "window": "1m",
                                "apps": {"sync": {"max": 0.5}}},
                     upstream={"reject": {"status": 429, "body":
                               '{"err": "{rule}", "who": "{app}", "why": "{share}"}'}}))
    assert [call(sl, "sync")[0] for _ in range(2)] == [200, 200]
    r = call(sl, "sync")
    assert r[0] == 429
    assert json.loads(r[2]) == {"err": "quota", "who": "sync", "why": "max"}


@pytest.mark.parametrize("apps,needle", [
    ({"a": {"reserve": 6}, "b": {"reserve": 5}}, "reservations add up to 11 calls, more than the rule's limit of 10"),
    ({"a": {"max": 0.01}}, "less than one call"),
    ({"a": {"max": 1.5}}, "must be a count of calls"),
    ({"a": {"max": -1}}, "must be a count of calls"),
    ({"a": {"max": "half"}}, "must be a count of calls"),
    ({"a": {"reserve": 5, "max": 3}}, "reserve (5 calls) is more than max (3 calls)"),
    ({"a b": {"max": 3}}, "is not an app name"),
    ({"a": {"priority": 3}}, "is set in the upstream's \"apps\""),
    ({"a": {"maxx": 3}}, "maxx"),
    ({"a": 3}, "must be an object"),
    ([1], "must be an object mapping app names"),
])
def test_check_refuses_bad_shares(upstream, tmp_path, apps, needle):
    c = conf(upstream, {"limit": 10, "window": "1m", "apps": apps})
    c["listen"] = "127.0.0.1:%d" % free_port()
    path = tmp_path / "c.json"
    path.write_text(json.dumps(c))
    p = subprocess.run([SLUICE_BIN, "--check", "-c", str(path)],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode != 0
    assert "upstreams[0].rules[0].apps" in p.stderr and needle in p.stderr, p.stderr


@pytest.mark.parametrize("bad,needle", [
    ({"apps": {"a": {"priority": 10}}}, "upstreams[0].apps.a.priority"),
    ({"priority": "X-Prio"}, "must be \"header:NAME\""),
    ({"rules": [{"name": "c", "concurrency": 2, "apps": {"a": {"max": 1}}}]},
     "shares apply to rate rules"),
    ({"apps": {"a": {"reserve": 20}}, "rules": [{"name": "q", "limit": 10, "window": "1m"}]},
     "(the upstream's \"apps\"): reservations add up to 20 calls"),
])
def test_check_refuses_bad_upstream_shares(upstream, tmp_path, bad, needle):
    c = conf(upstream, {"limit": 10, "window": "1m"}, upstream=bad)
    c["listen"] = "127.0.0.1:%d" % free_port()
    path = tmp_path / "c.json"
    path.write_text(json.dumps(c))
    p = subprocess.run([SLUICE_BIN, "--check", "-c", str(path)],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode != 0 and needle in p.stderr, p.stderr


# ---- priority lanes (queue mode) ----

def held_burst(sl, first, then, gap=0.3):
    """Send FIRST's calls, then THEN's GAP seconds later, each on its own
    client, all held; returns their statuses once all are answered."""
    out = {}

    def one(key, app, headers):
        out[key] = call(sl, app, headers=headers)[0]

    threads = []
    for i, (app, h) in enumerate(first):
        threads.append(threading.Thread(target=one, args=(("a", i), app, h)))
    for t in threads:
        t.start()
    time.sleep(gap)
    more = []
    for i, (app, h) in enumerate(then):
        more.append(threading.Thread(target=one, args=(("b", i), app, h)))
    for t in more:
        t.start()
    for t in threads + more:
        t.join(60)
    return out


@pytest.mark.parametrize("how", ["app", "header"])
def test_high_priority_calls_go_first(upstream, store, sluice, how):
    # 4 calls per 2 s, queue mode.  The window is filled, then 8 "sync"
    # calls are held, then 4 "ui" calls arrive 0.3 s later (still held:
    # room comes back 2 s after the fill).  When room comes back, the 4
    # high-priority calls go first.
    up = {"on_limit": "queue", "max_wait": "30s"}
    if how == "app":
        up["apps"] = {"ui": {"priority": 9}, "sync": {"priority": 1}}
        sync_h, ui_h = None, None
    else:
        up["priority"] = "header:X-Priority"
        sync_h, ui_h = {"X-Priority": "1"}, {"X-Priority": "8"}
    sl = sluice(conf(upstream, {"limit": 4, "window": "2s"}, store, upstream=up))
    assert [call(sl, "warm")[0] for _ in range(4)] == [200] * 4
    got = held_burst(sl, [("sync", sync_h)] * 8, [("ui", ui_h)] * 4)
    assert set(got.values()) == {200}
    recs = sorted((r for r in upstream.records if app_of(r) in ("sync", "ui")),
                  key=lambda r: r.t)
    order = [app_of(r) for r in recs]
    assert order[:4] == ["ui"] * 4, order
    assert order[4:] == ["sync"] * 8
    # Never more than the limit in any window at the upstream.
    assert max_in_window(upstream.times(), 2.0) <= 4


def test_aging_lifts_a_long_waiting_call(upstream, sluice):
    # With one level per second of waiting, a priority-1 call held 2.5 s
    # before a priority-2 call goes first (1 + 2.5 > 2 + 0).  Without
    # aging it would go second.
    up = {"on_limit": "queue", "max_wait": "30s", "priority": "header:X-Priority",
          "priority_aging": "1s"}
    sl = sluice(conf(upstream, {"limit": 1, "window": "4s"}, upstream=up))
    assert call(sl, "warm")[0] == 200
    got = held_burst(sl, [("old", {"X-Priority": "1"})], [("new", {"X-Priority": "2"})],
                     gap=2.5)
    assert set(got.values()) == {200}
    order = [app_of(r) for r in sorted(upstream.records, key=lambda r: r.t)]
    assert order == ["warm", "old", "new"]


def test_a_capped_app_does_not_hold_up_other_apps(upstream, store, sluice):
    """In queue mode, calls of an app waiting for its own share never
    block another app's calls behind them: they wait in the same line but
    the others go when the rule has room for them."""
    sl = sluice(conf(upstream, {"limit": 10, "window": "4s",
                                "apps": {"sync": {"max": 0.3}}}, store,
                     upstream={"on_limit": "queue", "max_wait": "30s"}))
    statuses = {}

    def sync_call(i):
        statuses[i] = call(sl, "sync")[0]

    threads = [threading.Thread(target=sync_call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    # 3 sync calls went, 3 wait for sync's share (4 s).  ui goes at once.
    t0 = time.monotonic()
    assert [call(sl, "ui")[0] for _ in range(5)] == [200] * 5
    assert time.monotonic() - t0 < 1.5
    for t in threads:
        t.join(30)
    assert sorted(statuses.values()) == [200] * 6
    sync_times = upstream.times(lambda r: app_of(r) == "sync")
    assert max_in_window(sync_times, 4.0) <= 3


# ---- three instances, one Redis ----

def test_three_instances_share_one_quota_fairly(upstream, redis, sluice):
    """sync (max 0.5) and an unnamed app ("bulk") burst through three
    instances while ui (reserve 0.2) calls steadily below its reservation:
    ui gets every call, sync never more than half of any window at the
    upstream, and the whole never more than the limit."""
    rule = {"limit": 30, "window": "3s",
            "apps": {"sync": {"max": 0.5}, "ui": {"reserve": 0.2}}}
    inst = [sluice(conf(upstream, rule, redis.url)) for _ in range(3)]
    stop = time.monotonic() + 7.0
    seen = {"sync": [], "bulk": [], "ui": []}
    lock = threading.Lock()

    def burst(app, k):
        i = k
        while time.monotonic() < stop:
            r = call(inst[i % 3], app)
            i += 1
            with lock:
                seen[app].append((r[0], r[2]))
            if r[0] == 429:
                time.sleep(0.02)

    def steady():
        # 5 calls per 3 s: fewer than its reservation of 6.
        i = 0
        while time.monotonic() < stop:
            r = call(inst[i % 3], "ui")
            i += 1
            with lock:
                seen["ui"].append((r[0], r[2]))
            time.sleep(0.6)

    threads = [threading.Thread(target=burst, args=("sync", k)) for k in range(2)]
    threads.append(threading.Thread(target=burst, args=("bulk", 0)))
    threads.append(threading.Thread(target=steady))
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert [s for s, _ in seen["ui"]] == [200] * len(seen["ui"])
    # 7 s at one call per 0.6 s plus the call itself: 12 on an idle
    # machine; at least 8 even when each call takes 0.25 s under load.
    assert len(seen["ui"]) >= 8
    sync_t = upstream.times(lambda r: app_of(r) == "sync")
    all_t = upstream.times()
    assert max_in_window(sync_t, 3.0) <= 15
    assert max_in_window(all_t, 3.0) <= 30
    # Both bursts were refused, each for its own reason.
    sync_no = [json.loads(b) for s, b in seen["sync"] if s == 429]
    bulk_no = [json.loads(b) for s, b in seen["bulk"] if s == 429]
    assert sync_no and bulk_no
    assert any(b.get("share") == "max" and b.get("app") == "sync" for b in sync_no)
    assert all(b.get("share") in (None, "reserved") for b in bulk_no)
    # And the quota was used: sync got its half, bulk the rest of the
    # bursts' part, in a busy window.
    assert max_in_window(sync_t, 3.0) >= 12
    assert max_in_window(all_t, 3.0) >= 24


# ---- reload ----

def test_shares_added_by_a_reload_count_calls_already_made(upstream, store, sluice):
    """A reload that adds shares counts the calls already in the window:
    an app that already used its new max is capped at once, and a new
    reservation is kept from the room left."""
    port = free_port()
    c = conf(upstream, {"limit": 10, "window": "1m"}, store,
             admin={"listen": "127.0.0.1:%d" % port})
    sl = sluice(c)
    assert [call(sl, "sync")[0] for _ in range(4)] == [200] * 4
    c2 = conf(upstream, {"limit": 10, "window": "1m",
                         "apps": {"sync": {"max": 4}, "ui": {"reserve": 3}}}, store,
              admin={"listen": "127.0.0.1:%d" % port})
    c2["listen"] = "127.0.0.1:%d" % sl.port
    with open(sl.config_path, "w") as f:
        json.dump(c2, f)
    h = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    h.request("POST", "/reload", headers={"X-Sluice-Admin": "1"})
    r = h.getresponse()
    assert r.status == 200, r.read()
    h.close()
    r = call(sl, "sync")
    assert r[0] == 429 and json.loads(r[2])["share"] == "max"
    # 10 - 4 (sync) - 3 (ui's reserve) = 3 for another app.
    assert [call(sl, "mkt")[0] for _ in range(4)] == [200, 200, 200, 429]
    assert [call(sl, "ui")[0] for _ in range(3)] == [200] * 3
    assert upstream.count() == 10


def test_denials_deep_in_a_long_log(upstream, store, sluice):
    """The wait of a share denial is found past the first entries of a
    long log (Redis reads it in chunks of 128 from the oldest end)."""
    sl = sluice(conf(upstream, {"limit": 400, "window": "1m",
                                "apps": {"sync": {"max": 20}, "ui": {"reserve": 200}}},
                     store))
    # 150 of ui's calls first: leaving, each gives back nothing to others
    # (ui's reservation stays unused by as much).
    assert {call(sl, "ui")[0] for _ in range(150)} == {200}
    # sync's max: its first call is 151 entries in from the oldest.
    assert {call(sl, "sync")[0] for _ in range(20)} == {200}
    r = call(sl, "sync")
    assert r[0] == 429 and json.loads(r[2])["share"] == "max"
    assert 55 <= int(r[1]["retry-after"]) <= 61
    # mkt gets 400 - 150 - 20 - 50 kept for ui = 180; then room comes only
    # when sync's first call leaves, past ui's 150.
    assert {call(sl, "mkt")[0] for _ in range(180)} == {200}
    r = call(sl, "mkt")
    assert r[0] == 429 and json.loads(r[2])["share"] == "reserved"
    assert 55 <= int(r[1]["retry-after"]) <= 61
    assert upstream.count() == 350


@pytest.mark.parametrize("damage", ["deleted", "shorter", "longer"])
def test_an_app_list_out_of_step_with_its_log_loses_no_count(upstream, redis, sluice,
                                                             damage):
    """With Redis, each rate log (r) has an app list (a) beside it, the app
    of each entry, index for index.  When the two fall out of step (the
    app list expired or was evicted on its own, or was written by another
    version), the log still counts every call: the limit holds at the
    upstream, the entries whose app is no longer known count as nobody's,
    and the two lists are in step again from the next write."""
    sl = sluice(conf(upstream, {"limit": 10, "window": "1m",
                                "apps": {"sync": {"max": 6}}}, redis.url))
    assert [call(sl, "sync")[0] for _ in range(4)] == [200] * 4
    [r] = [k for k in redis.cli("KEYS", "*:r:*").split()]
    a = r.replace(":r:", ":a:", 1)
    assert redis.cli("LLEN", a) == "4"
    if damage == "deleted":
        redis.cli("DEL", a)
    elif damage == "shorter":
        redis.cli("LTRIM", a, 0, 1)
    else:
        redis.cli("RPUSH", a, "ghost", "ghost", "ghost")
    if damage == "longer":
        # Every app is still known: sync has 2 calls left of its max...
        assert [call(sl, "sync")[0] for _ in range(3)] == [200, 200, 429]
        assert [call(sl, "mkt")[0] for _ in range(5)] == [200] * 4 + [429]
    else:
        # ...else its first calls count as nobody's: the limit still holds.
        assert [call(sl, "sync")[0] for _ in range(7)] == [200] * 6 + [429]
    assert upstream.count() == 10
    assert redis.cli("LLEN", r) == redis.cli("LLEN", a) == "10"
    apps = redis.cli("LRANGE", a, 0, -1).split()
    assert apps.count("ghost") == 0
    if damage == "shorter":
        # The two it kept of sync's first calls are dropped with the rest:
        # an out-of-step list is not trusted index for index.
        assert apps.count("-") == 4


def test_an_app_list_lost_under_a_long_log_is_rebuilt_in_chunks(upstream, redis, sluice):
    """The same with a log longer than one command writes at once (the app
    list is rebuilt 1,000 entries a command): every entry is still counted
    and the two lists end in step."""
    sl = sluice(conf(upstream, {"limit": 2600, "window": "1m",
                                "apps": {"sync": {"max": 2500}}}, redis.url))
    assert {call(sl, "sync")[0] for _ in range(2500)} == {200}
    [r] = redis.cli("KEYS", "*:r:*").split()
    a = r.replace(":r:", ":a:", 1)
    redis.cli("DEL", a)
    # Another app's first call finds the app list gone and rebuilds it:
    # sync's 2,500 calls are nobody's there, but the log counts them all.
    assert [call(sl, "mkt")[0] for _ in range(101)] == [200] * 100 + [429]
    assert upstream.count() == 2600
    assert redis.cli("LLEN", r) == redis.cli("LLEN", a) == "2600"
    apps = redis.cli("LRANGE", a, 0, -1).split()
    assert apps.count("-") == 2500 and apps.count("mkt") == 100
