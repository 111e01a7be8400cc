"""Provider presets (presets/*.json): "preset" and "preset_params" on an
upstream, --check's account of what a preset added, --print-preset, and a
preset's figures enforced against a fake provider speaking its headers."""
import json
import os
import re
import signal
import subprocess
import tempfile
import time

import pytest

from harness import ROOT, SLUICE_BIN, parallel, upstream_config

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


# ---- every other provider's figures, against a fake provider speaking its
# headers ----

def provider(upstream, preset, params, store=None, **options):
    return upstream_config(upstream, store=store, name="p", prefix="/p", preset=preset,
                           preset_params=params, **options)


def rule_of(response):
    return json.loads(response[2])["rule"]


def test_hubspot_search_burst_and_daily_signal(upstream, sluice):
    """CRM search: 4 per second (5th refused, by that rule); the 10-second
    burst figure (overridden to 6 here: the tier's 100 is the preset's);
    a 429 whose body says DAILY pauses the upstream for 15 minutes."""
    sl = sluice(provider(upstream, "hubspot", {"tier": "starter", "timezone": "UTC",
                                               "burst_limit": 6}, retry_on_limit=False))
    search = [sl.request("POST", "/p/crm/v3/objects/contacts/search", body=b"{}")
              for _ in range(5)]
    assert [r[0] for r in search] == [200] * 4 + [429]
    assert rule_of(search[4]) == "crm-search"
    more = [sl.request("GET", "/p/crm/v3/objects/contacts/%d" % i) for i in range(3)]
    # 4 searches + 2 reads fill the burst of 6.
    assert [r[0] for r in more] == [200, 200, 429] and rule_of(more[2]) == "burst"
    assert upstream.count() == 6

    sl2 = sluice(provider(upstream, "hubspot", {"tier": "professional", "timezone": "UTC"},
                          retry_on_limit=False))
    upstream.script = [{"status": 429, "body": b'{"status":"error","policyName":"DAILY"}'}]
    assert sl2.request("GET", "/p/crm/v3/objects/contacts")[0] == 429
    status, headers, body = sl2.request("GET", "/p/crm/v3/objects/contacts")
    assert json.loads(body)["rule"] == "upstream-pause"
    assert 850 <= int(headers["retry-after"]) <= 900
    assert upstream.count() == 7


def test_zendesk_follows_the_ratelimit_field(upstream, sluice, store):
    """The account rule reads RateLimit-Remaining (sync ratelimit): the
    provider says 3 calls are left, so exactly 3 more go through."""
    sl = sluice(provider(upstream, "zendesk", {"plan": "team"}, store=store))
    upstream.script = [{"headers": ["RateLimit-Limit: 200", "RateLimit-Remaining: 3",
                                    "RateLimit-Reset: 50"]}]
    assert sl.request("GET", "/p/api/v2/tickets.json")[0] == 200
    got = [sl.request("GET", "/p/api/v2/users/%d.json" % i) for i in range(4)]
    assert [r[0] for r in got] == [200] * 3 + [429] and rule_of(got[3]) == "account"
    assert upstream.count() == 4


def test_zendesk_ticket_updates_per_minute(upstream, sluice):
    sl = sluice(provider(upstream, "zendesk", {"plan": "enterprise"},
                         rules=[{"name": "update-ticket", "limit": 3}]))
    got = [sl.request("PUT", "/p/api/v2/tickets/%d" % (i % 2), body=b"{}") for i in range(4)]
    assert [r[0] for r in got] == [200] * 3 + [429] and rule_of(got[3]) == "update-ticket"
    assert int(got[3][1]["retry-after"]) > 50  # the preset's minute


def test_slack_tiers_by_method(upstream, sluice):
    """An unlisted app: conversations.history at 1 per minute; the
    Tier 2 list method at 20 per minute; each method its own count."""
    sl = sluice(provider(upstream, "slack", {"distribution": "unlisted"}))
    hist = [sl.request("GET", "/p/conversations.history?channel=C1") for _ in range(2)]
    assert [r[0] for r in hist] == [200, 429] and rule_of(hist[1]) == "conversations.history"
    lists = [sl.request("GET", "/p/conversations.list")[0] for _ in range(21)]
    assert lists == [200] * 20 + [429]
    assert sl.request("POST", "/p/chat.update", body=b"{}")[0] == 200
    assert upstream.count() == 22


def test_github_primary_limit_follows_x_ratelimit(upstream, sluice, store):
    sl = sluice(provider(upstream, "github", {"token_kind": "user"}, store=store))
    upstream.script = [{"headers": ["X-RateLimit-Limit: 5000", "X-RateLimit-Remaining: 2",
                                    "X-RateLimit-Used: 4998",
                                    "X-RateLimit-Reset: %d" % (int(time.time()) + 3000)]}]
    assert sl.request("GET", "/p/repos/o/r")[0] == 200
    got = [sl.request("GET", "/p/repos/o/r/issues/%d" % i) for i in range(3)]
    assert [r[0] for r in got] == [200, 200, 429] and rule_of(got[2]) == "primary"
    assert upstream.count() == 3


def test_github_content_creation_and_code_search(upstream, sluice):
    """80 content-creating requests per minute (the 81st refused by that
    rule, though its 5 points each fit the 900); code search 9 per minute."""
    sl = sluice(provider(upstream, "github", {"token_kind": "enterprise_cloud"}))
    posts = parallel(81, lambda i: sl.request("POST", "/p/repos/o/r/issues", body=b"{}"))
    codes = sorted(r[0] for r in posts)
    assert codes == [200] * 80 + [429]
    assert [rule_of(r) for r in posts if r[0] == 429] == ["content-per-minute"]
    search = [sl.request("GET", "/p/search/code?q=x") for _ in range(10)]
    assert [r[0] for r in search] == [200] * 9 + [429] and rule_of(search[9]) == "search-code"
    assert upstream.count() == 89


def test_shopify_rest_bucket_and_call_limit_header(upstream, sluice, store):
    """A standard store: 40 at once, then refused with an honest Retry-After
    (half a second leaks one call; rounded up).  Then the provider's
    X-Shopify-Shop-Api-Call-Limit says the bucket is at 38/40: the calls
    after it fit in what is left of 40 (less the margin), never more."""
    sl = sluice(provider(upstream, "shopify-rest", {"plan": "standard"}, store=store))
    burst = parallel(41, lambda i: sl.request("GET", "/p/admin/api/2024-10/products/%d.json" % i))
    assert sorted(r[0] for r in burst) == [200] * 40 + [429]
    refused = [r for r in burst if r[0] == 429][0]
    assert rule_of(refused) == "rest-bucket" and int(refused[1]["retry-after"]) == 1
    assert upstream.count() == 40


def test_shopify_rest_level_from_the_provider(upstream, sluice):
    sl = sluice(provider(upstream, "shopify-rest", {"plan": "standard"}))
    upstream.script = [{"headers": ["X-Shopify-Shop-Api-Call-Limit: 38/40"]}]
    assert sl.request("GET", "/p/admin/api/2024-10/shop.json")[0] == 200
    after = [sl.request("GET", "/p/admin/api/2024-10/orders/%d.json" % i)[0] for i in range(4)]
    # 38 of 40 used at the report: at most 2 more (less the 0.2 the margin
    # takes off the bucket, plus what leaks meanwhile at 2/s: the four
    # calls take well under half a second here, so 1 or 2).
    assert after[0] == 200 and after.count(200) <= 2 and after[-1] == 429, after


GRAPHQL = "/p/admin/api/2024-10/graphql.json"


def graphql_answer(actual):
    return json.dumps({"data": {}, "extensions": {"cost": {
        "requestedQueryCost": 1000, "actualQueryCost": actual,
        "throttleStatus": {"maximumAvailable": 1000.0, "currentlyAvailable": 1000 - actual,
                           "restoreRate": 100.0}}}}).encode()


def test_shopify_graphql_reserves_the_estimate_and_settles_the_actual_cost(upstream, sluice,
                                                                           store):
    """A 1,000-point bucket leaking 100/s; each query reserves the preset's
    estimate (999: the whole bucket less the margin's share) and is settled
    to the actualQueryCost the provider reports: a query that cost 10
    leaves room for the next at once, one that cost 1,000 does not (it
    takes about 10 s to leak)."""
    sl = sluice(provider(upstream, "shopify-graphql", {"plan": "standard", "bucket": 1000},
                         store=store))
    upstream.script = [{"headers": ["Content-Type: application/json"],
                        "body": graphql_answer(10)},
                       {"headers": ["Content-Type: application/json"],
                        "body": graphql_answer(1000)}]
    first = sl.request("POST", GRAPHQL, body=b'{"query":"{shop{name}}"}')
    assert first[0] == 200
    # Settled to 10 when its answer ended (the answer waits for it): 999
    # more fit once those 10 have leaked to under 1 (0.1 s at 100/s);
    # unsettled, its 999 would take 10 s.  0.3 s leaves room for a slow
    # machine and is far from 10 s.
    time.sleep(0.3)
    second = sl.request("POST", GRAPHQL, body=b'{"query":"{products(first:250){edges{node{id}}}}"}')
    assert second[0] == 200
    third = sl.request("POST", GRAPHQL, body=b'{"query":"{shop{name}}"}')
    assert third[0] == 429 and rule_of(third) == "query-cost"
    # 1,000 actual points leave room for 999 after about 10 s.
    assert 9 <= int(third[1]["retry-after"]) <= 11
    assert upstream.count() == 2


def test_a_cost_no_bucket_could_admit_is_refused(upstream, sluice, tmp_path):
    """A cost equal to the whole bucket never fits beside the margin: the
    configuration is refused, saying so, rather than the call waiting
    forever; a request header asking for it is answered 400."""
    cfg = provider(upstream, "shopify-graphql", {"plan": "standard", "bucket": 1000,
                                                 "cost_estimate": 1000})
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    r = run(["--check", "-c", str(path)])
    assert r.returncode == 1
    assert "rules[0].cost: 1000 is more than the rule can ever admit (999" in r.stderr
    sl = sluice(upstream_config(upstream, rules=[
        {"name": "q", "bucket": 10, "leak": "1/s", "cost": "header:X-Cost"}]))
    assert sl.request("GET", "/leads/x", headers={"X-Cost": "9"})[0] == 200
    status, _, body = sl.request("GET", "/leads/x", headers={"X-Cost": "10"})
    assert status == 400 and "1 to 9" in json.loads(body)["message"]
    assert upstream.count() == 1
