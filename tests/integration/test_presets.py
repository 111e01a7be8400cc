"""Provider presets (presets/*.json): "preset" and "preset_params" on an
upstream, --check's account of what a preset added, --print-preset, and a
preset's figures enforced against a fake provider speaking its headers."""
import json
import os
import re
import signal
import subprocess
import tempfile

import pytest

from harness import ROOT, SLUICE_BIN, parallel, upstream_config, wait_for

PRESETS = os.path.join(ROOT, "presets")

# Every preset whose rules are of kinds sluice has, with valid parameters.
LOADABLE = {
    "salesforce": {"org_type": "production", "daily_allocation": 115000},
    "hubspot": {"tier": "professional", "timezone": "Europe/Berlin"},
    "zendesk": {"plan": "enterprise"},
    "slack": {"distribution": "marketplace"},
    "leadplatform": {},
    # leaky buckets, weighted costs and settlement
    "github": {"token_kind": "user"},
    "shopify-rest": {"plan": "standard"},
    "shopify-graphql": {"plan": "plus", "bucket": 20000},
}


def run(args, env=None, drop=()):
    e = dict(os.environ)
    for k in drop:
        e.pop(k, None)
    e.update(env or {})
    return subprocess.run([SLUICE_BIN] + args, capture_output=True, text=True,
                          env=e, timeout=30)


def check(upstream_keys, top=None, env=None, drop=()):
    u = {"name": "p", "prefix": "/p", "url": "https://provider.example"}
    u.update(upstream_keys)
    cfg = {"upstreams": [u]}
    cfg.update(top or {})
    fd, path = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(cfg, f)
    try:
        return run(["--check", "-c", path], env=env, drop=drop)
    finally:
        os.unlink(path)


def test_every_preset_is_tested_here():
    names = sorted(f[:-5] for f in os.listdir(PRESETS) if f.endswith(".json"))
    assert names == sorted(LOADABLE)


@pytest.mark.parametrize("name", sorted(LOADABLE))
def test_loadable_presets_pass_check(name):
    # No SLUICE_PRESETS_DIR: a binary in the build tree finds presets/.
    r = check({"preset": name, "preset_params": LOADABLE[name]},
              drop=["SLUICE_PRESETS_DIR"])
    assert r.returncode == 0, r.stderr
    assert "configuration is valid" in r.stdout
    assert 'upstream p: preset "%s" (%s)' % (name, os.path.join(PRESETS, name + ".json")) \
        in r.stdout
    preset = json.load(open(os.path.join(PRESETS, name + ".json")))
    for rule in preset["upstream"]["rules"]:
        assert "  added rule %s: " % rule["name"] in r.stdout
    assert "overridden by you: nothing" in r.stdout


def test_check_names_parameters_and_figures():
    r = check({"preset": "salesforce",
               "preset_params": {"org_type": "developer", "daily_allocation": 15000}})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert 'parameters: org_type="developer", daily_allocation=15000' in out
    assert ('added rule daily-api-requests: {"path": "/services/**", "limit": 15000, '
            '"window": "24h", "sync": "sforce-limit-info", "sync_probe": "5m"}') in out
    assert 'added rule long-running: {"concurrency": 5}' in out
    assert ('added limit_signals: [{"status": 403, "body_contains": '
            '"REQUEST_LIMIT_EXCEEDED", "pause": "15m"}]') in out


def test_missing_unknown_and_bad_parameters():
    r = check({"preset": "hubspot"})
    assert r.returncode == 1
    assert ('upstreams[0].preset_params.tier: is required by preset "hubspot": one of '
            '"free", "starter", "professional", "enterprise"') in r.stderr
    assert ('upstreams[0].preset_params.timezone: is required by preset "hubspot": '
            'a time zone') in r.stderr
    r = check({"preset": "zendesk", "preset_params": {"plan": "gold", "rpm": 5}})
    assert r.returncode == 1
    assert ('upstreams[0].preset_params.plan: "gold" is not one of "team", "growth", '
            '"professional", "enterprise", "high_volume"') in r.stderr
    assert ('upstreams[0].preset_params.rpm: unknown parameter of preset "zendesk" '
            '(it takes plan, requests_per_minute)') in r.stderr
    r = check({"preset": "salesforce",
               "preset_params": {"org_type": "production", "daily_allocation": "100k"}})
    assert r.returncode == 1
    assert 'preset_params.daily_allocation: "100k" is not a whole number' in r.stderr
    # A figure a plan does not publish must be given.
    r = check({"preset": "github", "preset_params": {"token_kind": "app_installation"}})
    assert r.returncode == 1
    assert ('upstreams[0].preset_params.hourly_limit: is required by preset "github" '
            'with token_kind "app_installation"') in r.stderr
    r = check({"preset": "hubspot",
               "preset_params": {"tier": "free", "timezone": "Moon/Base"}})
    assert r.returncode == 1 and "Moon/Base" in r.stderr and "time zone" in r.stderr
    r = check({"preset_params": {"plan": "team"}})
    assert r.returncode == 1 and 'preset_params: given without "preset"' in r.stderr


@pytest.mark.parametrize("name", ["../presets/salesforce", "/etc/passwd", "..", "a..b",
                                  ".salesforce", ""])
def test_preset_names_are_plain(name):
    r = check({"preset": name})
    assert r.returncode == 1
    assert "is not a preset name" in r.stderr


def test_unknown_preset_lists_the_known(tmp_path):
    r = check({"preset": "salesforse"})
    assert r.returncode == 1
    assert 'no preset "salesforse" in %s (there: github, hubspot, leadplatform, ' \
        'salesforce, shopify-graphql, shopify-rest, slack, zendesk)' % PRESETS in r.stderr


def test_presets_dir_and_environment(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "tiny.json").write_text(json.dumps({
        "name": "tiny", "parameters": {"n": {"description": "calls", "required": True,
                                             "type": "integer"}},
        "upstream": {"rules": [{"name": "r", "limit": "$n", "window": "1s"}]}}))
    r = check({"preset": "tiny", "preset_params": {"n": 3}},
              top={"presets_dir": str(mine)}, drop=["SLUICE_PRESETS_DIR"])
    assert r.returncode == 0, r.stderr
    assert 'added rule r: {"limit": 3, "window": "1s"}' in r.stdout
    # The environment wins over the file.
    r = check({"preset": "tiny", "preset_params": {"n": 3}},
              top={"presets_dir": PRESETS}, env={"SLUICE_PRESETS_DIR": str(mine)})
    assert r.returncode == 0, r.stderr
    r = check({"preset": "leadplatform"}, env={"SLUICE_PRESETS_DIR": str(mine)})
    assert r.returncode == 1 and 'no preset "leadplatform" in %s (there: tiny)' % mine \
        in r.stderr
    r = check({"preset": "leadplatform"}, top={"presets_dir": str(tmp_path / "none")},
              drop=["SLUICE_PRESETS_DIR"])
    assert r.returncode == 1 and "presets_dir: " in r.stderr and "is not a directory" \
        in r.stderr


def expanded(stdout):
    marker = 'expanded upstream (add "name", "prefix" and "url"):\n'
    assert marker in stdout, stdout
    return json.JSONDecoder().raw_decode(stdout.split(marker, 1)[1])[0]


def test_print_preset():
    r = run(["--print-preset", "zendesk", "--preset-param", "plan=team",
             "--preset-param", "requests_per_minute=150"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("preset zendesk: Zendesk Support API")
    assert "  plan (required): one of \"team\", \"growth\"" in r.stdout
    assert "  requests_per_minute (optional): a whole number" in r.stdout
    assert "(checked 2026-12-06)" in r.stdout and "notes:" in r.stdout
    up = expanded(r.stdout)
    # A number stays a number.
    assert up["rules"][0] == {"name": "account", "path": "/api/v2/**", "limit": 150,
                              "window": "1m", "sync": "ratelimit", "sync_probe": "10s"}
    assert up["rules"][1]["limit"] == 100
    assert "sluice loads it as it stands." in r.stdout
    r = run(["--print-preset", "leadplatform"])
    assert r.returncode == 0 and "  none\n" in r.stdout
    assert [x["name"] for x in expanded(r.stdout)["rules"]] == \
        ["logins", "lead-results", "all", "in-flight"]


def test_print_preset_names_what_is_missing_or_wrong():
    r = run(["--print-preset", "salesforce"])
    assert r.returncode == 1
    assert "daily_allocation (required): a whole number" in r.stdout
    assert "expanded upstream" not in r.stdout
    assert "--preset-param org_type: is required by preset \"salesforce\": one of " \
        "\"production\", \"sandbox\", \"developer\", \"trial\"" in r.stderr
    assert "--preset-param daily_allocation: is required" in r.stderr
    r = run(["--print-preset", "salesforce", "--preset-param", "org_type=prod",
             "--preset-param", "daily_allocation=5"])
    assert r.returncode == 1 and '"prod" is not one of' in r.stderr
    r = run(["--print-preset", "salesforce", "--preset-param", "org_type"])
    assert r.returncode == 1 and "must be NAME=VALUE" in r.stderr
    r = run(["--print-preset", "../etc/x"])
    assert r.returncode == 1 and "is not a preset name" in r.stderr
    r = run(["--preset-param", "a=b", "-c", "x.json"])
    assert r.returncode == 2 and "--print-preset" in r.stderr


def test_print_preset_of_a_leaky_bucket():
    r = run(["--print-preset", "shopify-rest", "--preset-param", "plan=advanced"])
    assert r.returncode == 0, r.stderr
    rule = expanded(r.stdout)["rules"][0]
    assert rule["bucket"] == 80 and rule["leak"] == "4/s"
    assert "cannot load" not in r.stdout


# ---- the figures, enforced ----

def lead_result(sl, version="v2", lead="l1"):
    return sl.request("GET", "/leads/api/%s/publisher/p1/lead-result/%s" % (version, lead))


def test_leadplatform_override_takes_and_the_rest_holds(upstream, sluice):
    """1,400 lead results per 5 minutes is too many to exhaust here: the
    rule's limit is overridden by name, and its path and window are the
    preset's."""
    cfg = upstream_config(upstream, preset="leadplatform",
                          rules=[{"name": "lead-results", "limit": 5}])
    sl = sluice(cfg)
    fd, path = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(cfg, f)
    r = run(["--check", "-c", path])
    os.unlink(path)
    assert r.returncode == 0
    assert "overridden by you: rules.lead-results.limit (preset: 1400, yours: 5)" in r.stdout
    # "/api/v2*/": v2 and v2.1 count in the same rule.
    got = [lead_result(sl, v, "l%d" % i)[0] for i, v in
           enumerate(["v2", "v2.1", "v2", "v2.1", "v2", "v2.1", "v2"])]
    assert got == [200] * 5 + [429] * 2
    status, headers, body = lead_result(sl)
    assert status == 429 and json.loads(body)["rule"] == "lead-results"
    assert json.loads(body)["limit"] == 5
    assert int(headers["retry-after"]) > 250      # the preset's 5-minute window
    assert upstream.count(lambda r: "/lead-result/" in r.target) == 5
    # Calls outside the rule's path are still served (rule "all": 3,000).
    assert sl.request("GET", "/leads/api/v2/publisher/p1/leads")[0] == 200


def test_leadplatform_concurrency_nine_holds_at_the_upstream(upstream, sluice):
    sl = sluice(upstream_config(upstream, preset="leadplatform", on_limit="queue"))
    res = parallel(24, lambda i: sl.request("GET", "/leads/api/v2/publisher/p/leads",
                                            headers={"X-Test-Delay": "0.4"}))
    assert [s for s, h, b in res] == [200] * 24
    assert upstream.max_active == 9
    assert upstream.count() == 24


def crm(upstream, store=None, **options):
    params = {"org_type": "developer", "daily_allocation": 15000}
    return upstream_config(upstream, store=store, name="crm", prefix="/crm",
                           preset="salesforce", preset_params=params, **options)


def test_salesforce_follows_sforce_limit_info(upstream, sluice, store):
    """The preset's daily rule reads Sforce-Limit-Info (sync
    sforce-limit-info): the provider says 14,990 of 15,000 are used, so
    exactly 10 more calls go through."""
    sl = sluice(crm(upstream, store=store))
    upstream.script = [{"headers": ["Sforce-Limit-Info: api-usage=14990/15000"]}]
    assert sl.request("GET", "/crm/services/data/v60.0/limits")[0] == 200
    got = [sl.request("GET", "/crm/services/data/v60.0/sobjects/Lead/%d" % i)[0]
           for i in range(11)]
    assert got == [200] * 10 + [429]
    status, headers, body = sl.request("GET", "/crm/services/data/v60.0/query")
    assert status == 429 and json.loads(body)["rule"] == "daily-api-requests"
    assert upstream.count(lambda r: r.target.startswith("/services/")) == 11
    # The daily rule counts /services/** only.
    assert sl.request("GET", "/crm/other")[0] == 200


def test_salesforce_limit_signal_pauses(upstream, sluice):
    """403 REQUEST_LIMIT_EXCEEDED (no Retry-After) pauses the upstream for
    the preset's 15 minutes; retry_on_limit is overridden off here, so the
    client sees the provider's 403 and the next call sluice's 429."""
    sl = sluice(crm(upstream, retry_on_limit=False))
    upstream.script = [{"status": 403, "body":
                        b'[{"errorCode":"REQUEST_LIMIT_EXCEEDED","message":"Total"}]'}]
    assert sl.request("GET", "/crm/services/data/v60.0/limits")[0] == 403
    status, headers, body = sl.request("GET", "/crm/services/data/v60.0/limits")
    assert status == 429 and json.loads(body)["rule"] == "upstream-pause"
    assert 850 <= int(headers["retry-after"]) <= 900
    assert upstream.count() == 1


def test_salesforce_concurrency_of_the_org_type(upstream, sluice):
    sl = sluice(crm(upstream, on_limit="queue"))
    res = parallel(12, lambda i: sl.request("GET", "/crm/services/data/v60.0/x",
                                            headers={"X-Test-Delay": "0.4"}))
    assert [s for s, h, b in res] == [200] * 12
    assert upstream.max_active == 5   # developer org: 5


def test_readme_preset_example_passes_check(tmp_path):
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## Provider presets", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```json\n(.*?)```", section, re.S)
    assert len(blocks) == 1
    cfg = tmp_path / "readme.json"
    cfg.write_text(blocks[0])
    r = run(["--check", "-c", str(cfg)])
    assert r.returncode == 0, r.stderr
    assert "overridden by you: rules.long-running.concurrency (preset: 25, yours: 10)" \
        in r.stdout


def test_presets_readme_override_example_passes_check(tmp_path):
    text = open(os.path.join(PRESETS, "README.md")).read()
    section = text.split("### Overriding", 1)[1]
    blocks = re.findall(r"```json\n(.*?)```", section, re.S)
    assert len(blocks) == 1
    cfg = tmp_path / "hubspot.json"
    cfg.write_text('{"upstreams": [%s]}' % blocks[0])
    r = run(["--check", "-c", str(cfg)])
    assert r.returncode == 0, r.stderr
    assert "overridden by you: rules.crm-search.limit (preset: 4, yours: 1000)" in r.stdout
    # Every preset is in the README's table.
    for name in LOADABLE:
        assert "| [`%s`](%s.json) |" % (name, name) in text


def test_reload_reads_the_preset_again_and_keeps_counts(upstream, sluice, tmp_path):
    """A preset is expanded at every load: a corrected figure in its file
    takes effect on SIGHUP, and the calls already counted stay counted."""
    d = tmp_path / "presets"
    d.mkdir()

    def write(limit):
        (d / "tiny.json").write_text(json.dumps({
            "name": "tiny",
            "upstream": {"rules": [{"name": "r", "limit": limit, "window": "1h"}]}}))

    write(2)
    sl = sluice(upstream_config(upstream, preset="tiny", top={"presets_dir": str(d)}),
                env={"SLUICE_PRESETS_DIR": ""})
    assert [sl.request("GET", "/leads/x")[0] for _ in range(3)] == [200, 200, 429]
    write(3)
    sl.proc.send_signal(signal.SIGHUP)
    sl.wait_log("SIGHUP: configuration reloaded")
    assert [sl.request("GET", "/leads/x")[0] for _ in range(2)] == [200, 429]
    assert upstream.count() == 3
