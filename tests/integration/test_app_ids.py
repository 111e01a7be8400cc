"""Configured apps always have an id of their own.

App names come from a header any client sets, and the set of names is
bounded (max_apps).  Made-up names must never take the id a configured
app needs, or its reservation would go to "other" -- that is, to the
made-up names.
"""
import json
import os
import signal
import subprocess

from harness import SLUICE_BIN


def run_check(cfg, tmp_path):
    path = os.path.join(str(tmp_path), "sluice.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    return subprocess.run([SLUICE_BIN, "--check", "-c", path], capture_output=True,
                          text=True, timeout=30)


def conf(up, apps=None, max_apps=4):
    rule = {"name": "quota", "limit": 10, "window": "1m"}
    if apps:
        rule["apps"] = apps
    return {"max_apps": max_apps, "app": "header:X-App",
            "upstreams": [{"name": "crm", "prefix": "/crm", "url": up.url,
                           "rules": [rule]}]}


def call(sl, app):
    return sl.request("GET", "/crm/%s" % app, headers={"X-App": app})[0]


def reload(sl, cfg):
    with open(sl.config_path, "w") as f:
        json.dump(dict(cfg, listen="127.0.0.1:%d" % sl.port), f)
    sl.proc.send_signal(signal.SIGHUP)
    sl.wait_log("configuration reloaded")


def test_made_up_names_cannot_take_a_configured_apps_reservation(upstream, sluice):
    sl = sluice(conf(upstream))
    # Six made-up names fill max_apps (4); the last two count as "other".
    assert [call(sl, "junk%d" % i) for i in range(6)] == [200] * 6
    # A reload reserves 4 of the 10 for "vip".
    reload(sl, conf(upstream, {"vip": {"reserve": 4}}))
    # The 4 left are vip's: neither a known junk name nor a new one
    # ("other") gets them.
    for app in ("junk0", "junk5", "junk9"):
        assert call(sl, app) == 429, app
    assert [call(sl, "vip") for _ in range(4)] == [200] * 4
    assert call(sl, "vip") == 429
    assert sum(1 for r in upstream.records if r.target == "/vip") == 4


def test_check_refuses_more_named_apps_than_max_apps(upstream, tmp_path):
    cfg = conf(upstream, {"a": {"max": 1}, "b": {"max": 1}, "c": {"max": 1}}, max_apps=2)
    r = run_check(cfg, tmp_path)
    assert r.returncode != 0
    assert "max_apps" in r.stderr and "3 distinct apps" in r.stderr
    cfg["max_apps"] = 3
    assert run_check(cfg, tmp_path).returncode == 0
