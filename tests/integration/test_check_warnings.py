"""--check (and start, and reload) warn about rules that parse but would
never match what they seem to say: a path that repeats the upstream's
prefix (removed before matching), and patterns copied from regular
expressions or routers, which sluice reads literally."""
import json
import os
import subprocess

import pytest

from harness import SLUICE_BIN


def check(tmp_path, prefix, path):
    cfg = {"upstreams": [{"name": "leads", "prefix": prefix, "url": "http://127.0.0.1:9",
                          "rules": [{"name": "r", "path": path, "limit": 1,
                                     "window": "1m"}]}]}
    p = os.path.join(str(tmp_path), "sluice.json")
    with open(p, "w") as f:
        json.dump(cfg, f)
    return subprocess.run([SLUICE_BIN, "--check", "-c", p], capture_output=True,
                          text=True, timeout=30)


@pytest.mark.parametrize("prefix,path,says", [
    ("/leads", "/leads/oauth/token", 'matches /leads/leads/oauth/token'),
    ("/leads", "/LEADS/oauth/token", "prefix"),
    ("/leads", "/leads", "prefix"),
    ("/api", "/api/v2.*/publisher/{p}/lead-result/{l}", "prefix"),
    ("/x", "/api/v2.*/publisher/{p}/lead-result/{l}",
     'write "/api/v2*" for the prefix and anything after it'),
    ("/x", "/api/v2.+/x", "regular expression"),
    ("/x", "/lead-result/:lead", 'written "{lead}" here'),
    ("/x", "/api/(v1|v2)/x", "regular expression"),
    ("/x", "/api/v[0-9]/x", "regular expression"),
    ("/x", "/^api/x", "regular expression"),
    ("/x", "/api/x$", "regular expression"),
])
def test_warns_about_rules_that_would_not_match_as_meant(tmp_path, prefix, path, says):
    r = check(tmp_path, prefix, path)
    assert r.returncode == 0, r.stderr
    assert "see the warnings above" in r.stdout
    warnings = [l for l in r.stderr.splitlines() if l.startswith("warning: ")]
    assert len(warnings) >= 1 and "upstreams[0].rules[0].path" in warnings[0]
    assert any(says in w for w in warnings), warnings


@pytest.mark.parametrize("path", ["/api/v2*/publisher/{p}/lead-result/{l}",
                                  "/leads-archive/x", "/files/**", "/a/b.json",
                                  "/users/{id}/emails", "/v1/x:batchGet"])
def test_plain_patterns_draw_no_warning(tmp_path, path):
    r = check(tmp_path, "/leads", path)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_the_warning_is_logged_at_start(upstream, sluice):
    sl = sluice({"upstreams": [{"name": "leads", "prefix": "/leads", "url": upstream.url,
                                "rules": [{"name": "token", "path": "/leads/oauth/token",
                                           "limit": 1, "window": "1m"}]}]})
    sl.wait_log("starts with the upstream's prefix")
