"""Settlement ("settle" on a rule): a call is admitted on its estimated
cost, and once the provider's answer says what it really cost, the
difference is given back or charged, once, on every instance's count.
The provider here is a fake GraphQL API that reports each query's actual
cost in extensions.cost.actualQueryCost, or a plain API with a header."""
import json

from harness import upstream_config

REQ = "X-Query-Cost"


def graphql_answer(actual, requested, pad=0, extensions_first=False):
    """A GraphQL response as Shopify's Admin API shapes it."""
    ext = {"cost": {"requestedQueryCost": requested, "actualQueryCost": actual,
                    "throttleStatus": {"maximumAvailable": 100.0,
                                       "currentlyAvailable": 50, "restoreRate": 1.0}}}
    data = {"products": {"edges": [{"node": {"title": "x" * pad}}]}}
    body = {"extensions": ext, "data": data} if extensions_first else {"data": data,
                                                                       "extensions": ext}
    return {"status": 200, "headers": ["Content-Type: application/json"],
            "body": json.dumps(body).encode()}


def query(sl, cost):
    return sl.request("POST", "/leads/graphql.json", body=b'{"query": "{ products }"}',
                      headers={REQ: str(cost), "Content-Type": "application/json"})[0]


def graphql_conf(upstream, store, **rule):
    r = {"name": "points", "bucket": 100, "leak": "1/m", "cost": "header:" + REQ,
         "settle": "graphql-cost"}
    r.update(rule)
    return upstream_config(upstream, [r], store, margin="0ms")


def test_graphql_cost_refunds_what_a_query_did_not_use(upstream, sluice, store):
    sl = sluice(graphql_conf(upstream, store))
    # Asked for 50, used 10: 40 come back; the bucket holds 10.
    upstream.script = [graphql_answer(10, 50)]
    assert query(sl, 50) == 200
    upstream.script = [graphql_answer(90, 90)]
    assert query(sl, 90) == 200          # 10 + 90 = 100: fits exactly
    assert query(sl, 1) == 429
    assert upstream.count() == 2


def test_graphql_cost_charges_what_a_query_used_beyond_its_estimate(upstream, sluice, store):
    sl = sluice(graphql_conf(upstream, store))
    # Asked for 10, used 30: 20 more are charged; 70 left.
    upstream.script = [graphql_answer(30, 10)]
    assert query(sl, 10) == 200
    assert query(sl, 71) == 429
    upstream.script = [graphql_answer(70, 70)]
    assert query(sl, 70) == 200
    assert query(sl, 1) == 429


def test_a_long_body_is_read_as_it_streams(upstream, sluice, store):
    # 200 KiB of data after the extensions: read from the first 64 KiB,
    # and the client gets every byte.
    sl = sluice(graphql_conf(upstream, store))
    upstream.script = [graphql_answer(5, 60, pad=200 * 1024, extensions_first=True)]
    st, _, body = sl.request("POST", "/leads/graphql.json", body=b"{}",
                             headers={REQ: "60", "Content-Type": "application/json"})
    assert st == 200 and len(body) > 200 * 1024
    assert json.loads(body)["extensions"]["cost"]["actualQueryCost"] == 5
    upstream.script = [graphql_answer(95, 95)]
    assert query(sl, 95) == 200          # 5 + 95
    assert query(sl, 1) == 429


def test_an_answer_that_says_nothing_leaves_the_estimate(upstream, sluice, store):
    sl = sluice(graphql_conf(upstream, store))
    upstream.script = [{"status": 200, "body": b'{"data": {}}'},
                       {"status": 200, "body": b'{"extensions": {"cost": {"actualQueryCost": "x"}}}'}]
    assert query(sl, 40) == 200
    assert query(sl, 40) == 200
    assert query(sl, 21) == 429          # 80 of 100 used, as estimated


def test_a_cost_header_settles_a_window(upstream, sluice, store):
    sl = sluice(upstream_config(upstream, [
        {"name": "points", "limit": 10, "window": "1h", "cost": "header:X-Cost",
         "settle": "header:X-Actual-Cost"}], store, margin="0ms"))
    upstream.script = [{"status": 200, "headers": ["X-Actual-Cost: 2"]}]
    assert sl.request("GET", "/leads/x", headers={"X-Cost": "5"})[0] == 200
    upstream.script = [{"status": 200, "headers": ["X-Actual-Cost: 8"]}]
    assert sl.request("GET", "/leads/x", headers={"X-Cost": "8"})[0] == 200   # 2 + 8
    assert sl.request("GET", "/leads/x", headers={"X-Cost": "1"})[0] == 429


def test_settlement_across_instances(upstream, redis, sluice):
    # Two instances, one Redis: what one instance's query gave back is room
    # for the other's, once.
    conf = graphql_conf(upstream, redis.url)
    a, b = sluice(conf), sluice(conf)
    upstream.script = [graphql_answer(20, 100)]
    assert query(a, 100) == 200          # 100 reserved, 20 used
    upstream.script = [graphql_answer(80, 80)]
    assert query(b, 80) == 200           # the other instance sees 80 free
    assert query(b, 1) == 429
    assert query(a, 1) == 429
    upstream.script = [graphql_answer(1, 1)]


def test_settle_on_a_concurrency_rule_is_refused(upstream, tmp_path):
    import subprocess
    from harness import SLUICE_BIN
    path = tmp_path / "c.json"
    path.write_text(json.dumps(upstream_config(upstream, [
        {"name": "r", "concurrency": 2, "settle": "graphql-cost"}])))
    r = subprocess.run([SLUICE_BIN, "--check", "-c", str(path)], capture_output=True,
                       text=True)
    assert r.returncode != 0 and "only a rate rule or a bucket settles" in r.stderr
