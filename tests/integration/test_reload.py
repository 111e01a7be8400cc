"""Hot reload: SIGHUP and POST /reload change the configuration of a
running sluice without dropping a call and without losing a count, with
the memory store and with Redis."""
import json
import signal
import threading
import time

from harness import Sluice, free_port, max_in_window, wait_for


def cfg_for(up, rules, store=None, admin_port=None, extra_upstreams=(), margin="50ms",
            **top):
    cfg = {"upstreams": [{"name": "crm", "prefix": "/crm", "url": up.url,
                          "margin": margin, "rules": rules}] + list(extra_upstreams)}
    if store is not None:
        cfg["store"] = store
    if admin_port is not None:
        cfg["admin"] = {"listen": "127.0.0.1:%d" % admin_port}
    cfg.update(top)
    return cfg


def start(up, rules, store=None, **kw):
    port = free_port()
    sl = Sluice(cfg_for(up, rules, store=store, admin_port=port, **kw))
    sl.base_cfg = dict(store=store, admin_port=port, **kw)
    return sl


def rewrite(sl, up, rules, **kw):
    """Write a new configuration file for SL (same listeners)."""
    args = dict(sl.base_cfg)
    args.update(kw)
    cfg = cfg_for(up, rules, **args)
    cfg["listen"] = "127.0.0.1:%d" % sl.port
    with open(sl.config_path, "w") as f:
        json.dump(cfg, f)


def admin(sl, method, path):
    # A POST must say it is no cross-site form (the admin listener
    # refuses simple requests).
    code, _, body = sl.admin(method, path,
                             headers={"X-Sluice-Admin": "1"} if method == "POST" else {})
    return code, body


def reload_http(sl):
    code, body = admin(sl, "POST", "/reload")
    return code, json.loads(body)


def sighup(sl, generation):
    """SIGHUP, then wait until /status shows GENERATION served by every
    worker (a call accepted by one still on the older generation would be
    decided under it)."""
    sl.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 5
    while time.time() < deadline:
        cf = status(sl)["config"]
        if cf["generation"] == generation and cf["serving"] == generation:
            return
        time.sleep(0.02)
    raise AssertionError("generation %d never came:\n%s" % (generation, sl.read_log()))


def status(sl):
    code, body = admin(sl, "GET", "/status")
    assert code == 200, body
    return json.loads(body)


def codes(sl, n, path="/crm/x"):
    return [sl.request("GET", path)[0] for _ in range(n)]


def test_limit_raised_and_lowered_keeps_counts(upstream, store):
    rate = lambda n: [{"name": "daily", "limit": n, "window": "1h"}]  # noqa: E731
    sl = start(upstream, rate(6), store)
    try:
        assert codes(sl, 6) == [200] * 6
        assert codes(sl, 1) == [429]
        # Raised to 8: exactly the difference, at once.
        rewrite(sl, upstream, rate(8))
        sighup(sl, 2)
        assert codes(sl, 3) == [200, 200, 429]
        # Lowered to 4: full (8 in the window) until calls age out.
        rewrite(sl, upstream, rate(4))
        code, body = reload_http(sl)
        # Answered once every worker serves it: the next call, whichever
        # worker takes it, is decided under the new limit.
        assert (code, body["result"], body["generation"], body["serving"]) == (200, "ok", 3, 3)
        assert codes(sl, 2) == [429, 429]
        assert upstream.count() == 8
        st = status(sl)
        r = st["upstreams"][0]["rules"][0]
        assert (r["limit"], r["used"], r["remaining"]) == (4, 8, 0)
        assert st["config"]["generation"] == 3
        assert st["config"]["reloads"] == {"ok": 2, "invalid": 0, "refused": 0}
        assert "SIGHUP: configuration reloaded" in sl.read_log()
    finally:
        sl.stop()


def test_window_change_keeps_the_calls(upstream, store):
    """A longer window counts the calls already recorded (the ones still
    in it); a new rule starts empty; a removed one is forgotten."""
    sl = start(upstream, [{"name": "w", "limit": 3, "window": "2s"},
                          {"name": "old", "limit": 100, "window": "1h"}], store)
    try:
        assert codes(sl, 3) == [200] * 3
        rewrite(sl, upstream, [{"name": "w", "limit": 3, "window": "1h"},
                               {"name": "new", "limit": 5, "window": "1h"}])
        assert reload_http(sl)[0] == 200
        time.sleep(2.5)   # past the old 2 s window, well inside the new 1 h
        assert codes(sl, 1) == [429]
        st = status(sl)
        names = [r["name"] for r in st["upstreams"][0]["rules"]]
        assert names == ["w", "new"]
        assert st["upstreams"][0]["rules"][1]["used"] == 0
    finally:
        sl.stop()


def test_invalid_reload_changes_nothing(upstream):
    sl = start(upstream, [{"name": "r", "limit": 2, "window": "1h"}])
    try:
        assert codes(sl, 2) == [200, 200]
        good = open(sl.config_path).read()
        # Semantic errors: every one reported with its JSON path.
        rewrite(sl, upstream, [{"name": "r", "limit": -1, "window": "1h"},
                               {"name": "s", "limit": 1, "window": "soon"}])
        code, body = reload_http(sl)
        assert code == 400 and body["result"] == "invalid"
        assert body["generation"] == 1
        assert any(e.startswith("upstreams[0].rules[0].limit") for e in body["errors"])
        assert any(e.startswith("upstreams[0].rules[1].window") for e in body["errors"])
        # A syntax error, by SIGHUP: logged, nothing changes.
        with open(sl.config_path, "w") as f:
            f.write(good[:-5])
        sl.proc.send_signal(signal.SIGHUP)
        log = sl.wait_log("SIGHUP: %s has 1 error" % sl.config_path)
        assert "the running configuration (generation 1) keeps serving" in log
        assert codes(sl, 1) == [429]          # the old limit still holds
        assert upstream.count() == 2
        code, text = admin(sl, "GET", "/metrics")
        text = text.decode()
        assert 'sluice_config_reloads_total{result="invalid"} 2' in text
        assert 'sluice_config_reloads_total{result="ok"} 0' in text
        assert "sluice_config_generation 1" in text
    finally:
        sl.stop()


def test_restart_only_settings_are_refused(upstream):
    sl = start(upstream, [{"name": "r", "limit": 5, "window": "1h"}])
    try:
        cfg = json.load(open(sl.config_path))
        cfg["listen"] = "127.0.0.1:%d" % free_port()
        cfg["workers"] = 3
        cfg["upstreams"][0]["rules"][0]["limit"] = 50
        with open(sl.config_path, "w") as f:
            json.dump(cfg, f)
        code, body = reload_http(sl)
        assert code == 409 and body["result"] == "refused"
        assert any(e.startswith("listen: changed from 127.0.0.1:%d" % sl.port)
                   and "needs a restart" in e for e in body["errors"])
        assert any(e.startswith("workers: changed") for e in body["errors"])
        # Nothing applied, not even the limit; the old listener serves.
        assert codes(sl, 6) == [200] * 5 + [429]
        code, text = admin(sl, "GET", "/metrics")
        assert 'sluice_config_reloads_total{result="refused"} 1' in text.decode()
    finally:
        sl.stop()


def test_held_calls_are_decided_again(upstream, store):
    """Calls held in queue mode survive a reload and are decided under the
    new rules at once: a raised limit releases them."""
    # Held only if their turn can come within max_wait: 1 per 30 s, three
    # waiting, the last one's turn in about 90 s.
    rules = lambda n: [{"name": "r", "limit": n, "window": "30s",  # noqa: E731
                        "on_limit": "queue", "max_wait": "120s"}]
    sl = start(upstream, rules(1), store)
    try:
        assert codes(sl, 1) == [200]
        results = {}

        def held(i):
            t0 = time.monotonic()
            results[i] = (sl.request("GET", "/crm/h%d" % i)[0], time.monotonic() - t0)

        threads = [threading.Thread(target=held, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        deadline = time.time() + 5
        while status(sl)["upstreams"][0]["queue"]["depth"] < 3 and time.time() < deadline:
            time.sleep(0.05)
        assert status(sl)["upstreams"][0]["queue"]["depth"] == 3
        assert upstream.count() == 1
        rewrite(sl, upstream, rules(4))
        t0 = time.monotonic()
        assert reload_http(sl)[0] == 200
        for t in threads:
            t.join(10)
        # All three released by the reload, far sooner than their turns
        # (30 s and more): 5 s covers a loaded CI machine.
        assert [results[i][0] for i in range(3)] == [200, 200, 200]
        assert time.monotonic() - t0 < 5
        assert upstream.count() == 4
    finally:
        sl.stop()


def test_held_calls_keep_waiting_under_an_unchanged_rule(upstream):
    """A reload that leaves the rule alone keeps held calls held (same
    place in line) and releases them when the window has room."""
    rules = [{"name": "r", "limit": 1, "window": "3s", "on_limit": "queue",
              "max_wait": "20s"}]
    sl = start(upstream, rules)
    try:
        assert codes(sl, 1) == [200]
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("r", sl.request("GET", "/crm/y")))
        t.start()
        assert wait_for(lambda: sl.held() == 1)
        rewrite(sl, upstream, rules, access_log=False)
        assert reload_http(sl)[0] == 200
        t.join(10)
        assert out["r"][0] == 200
        times = upstream.times()
        assert len(times) == 2
        # Released when the first call left its 3 s window, not before.
        assert times[1] - times[0] >= 3.0
    finally:
        sl.stop()


def test_concurrency_slots_in_use_stay_counted(upstream, store):
    rules = lambda n: [{"name": "c", "concurrency": n}]  # noqa: E731
    sl = start(upstream, rules(1), store)
    try:
        slow = {}
        t = threading.Thread(target=lambda: slow.setdefault(
            "r", sl.request("GET", "/crm/slow", headers={"X-Test-Delay": "2"})))
        t.start()
        assert wait_for(lambda: upstream.active == 1)  # it holds the slot
        rewrite(sl, upstream, rules(1), access_log=False)
        assert reload_http(sl)[0] == 200
        # The slot taken before the reload is still in use.
        assert codes(sl, 1) == [429]
        t.join(10)
        assert slow["r"][0] == 200
        assert codes(sl, 1) == [200]
        assert upstream.max_active == 1
    finally:
        sl.stop()


def test_upstreams_added_and_removed(upstream, store):
    sl = start(upstream, [{"name": "r", "limit": 2, "window": "1h"}], store)
    try:
        assert sl.request("GET", "/leads/x")[0] == 404
        extra = [{"name": "leads", "prefix": "/leads", "url": upstream.url,
                  "rules": [{"name": "r", "limit": 1, "window": "1h"}]}]
        rewrite(sl, upstream, [{"name": "r", "limit": 2, "window": "1h"}],
                extra_upstreams=extra)
        assert reload_http(sl)[0] == 200
        assert [sl.request("GET", "/leads/x")[0] for _ in range(2)] == [200, 429]
        rewrite(sl, upstream, [{"name": "r", "limit": 2, "window": "1h"}])
        assert reload_http(sl)[0] == 200
        assert sl.request("GET", "/leads/x")[0] == 404
        st = status(sl)
        assert [u["name"] for u in st["upstreams"]] == ["crm"]
    finally:
        sl.stop()


def test_reload_under_load(upstream, store):
    """Clients hammer throughout (new connections and keep-alive) while the
    configuration is reloaded again and again: every call is answered (200
    or 429, never a connection error), and the upstream never sees more
    than the limit in any window -- before, during and after."""
    limit, window = 10, 1.0
    rules = [{"name": "r", "limit": limit, "window": "1s"}]
    # The upstream stamps arrivals in a busy Python thread: its clock lags
    # sluice's by a few ms to tens of ms under this load, and by over 50 ms
    # now and then when the machine is busy besides (two cores, the
    # sanitizer build or stress-ng beside the suite: 50 ms failed about one
    # run in three there).  The margin is the documented allowance for that
    # gap between sluice's clock and the provider's (docs/guides/rules.md,
    # "The margin"): 250 ms, several times the lags seen there, so the assertion
    # below, made at the upstream's arrival times, tests sluice and not
    # the scheduler.
    sl = start(upstream, rules, store, workers=2, margin="250ms")
    stop = threading.Event()
    errors, answers = [], []

    def client(i):
        keep = i % 2 == 0
        c = sl.conn(10) if keep else None
        while not stop.is_set():
            try:
                if not keep:
                    c = sl.conn(10)
                c.request("GET", "/crm/load%d" % i)
                r = c.getresponse()
                r.read()
                answers.append(r.status)
                if not keep:
                    c.close()
            except Exception as e:  # noqa: BLE001 -- any failure is the finding
                errors.append(repr(e))
                c = sl.conn(10)
        c.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        extra = [{"name": "leads", "prefix": "/leads", "url": upstream.url,
                  "rules": [{"name": "q", "limit": 1, "window": "1h"}]}]
        for i in range(8):
            # Alternate: an upstream added and removed, the access log
            # toggled; the rule under load stays the same.
            rewrite(sl, upstream, rules, extra_upstreams=extra if i % 2 == 0 else (),
                    access_log=i % 3 == 0)
            if i % 2:
                sl.proc.send_signal(signal.SIGHUP)
            else:
                assert reload_http(sl)[0] == 200
            time.sleep(0.4)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    try:
        assert errors == []
        assert set(answers) <= {200, 429} and 200 in answers and 429 in answers
        times = upstream.times()
        assert max_in_window(times, window) <= limit, [round(t - times[0], 3) for t in times]
        assert status(sl)["config"]["generation"] >= 8
    finally:
        sl.stop()


def test_unnamed_rules_that_move_are_refused(upstream):
    """A rule without a name is known by its position: a reload that moves
    one would carry one rule's counts into another, so it is refused."""
    rules = [{"path": "/x", "limit": 1, "window": "1h"},
             {"path": "/y", "limit": 1, "window": "1h"}]
    sl = start(upstream, rules)
    try:
        assert sl.request("GET", "/crm/y")[0] == 200
        rewrite(sl, upstream, list(reversed(rules)))
        code, body = reload_http(sl)
        assert code == 409 and body["result"] == "refused"
        assert any("known by its position (rule-0)" in e for e in body["errors"])
        assert sl.request("GET", "/crm/y")[0] == 429     # still counted
        # Named, the same move is applied and the counts follow the names.
        named = [dict(rules[0], name="x"), dict(rules[1], name="y")]
        sl.stop()
        sl = start(upstream, named)
        assert sl.request("GET", "/crm/y")[0] == 200
        rewrite(sl, upstream, list(reversed(named)))
        assert reload_http(sl)[0] == 200
        assert sl.request("GET", "/crm/y")[0] == 429
        assert sl.request("GET", "/crm/x")[0] == 200
    finally:
        sl.stop()
