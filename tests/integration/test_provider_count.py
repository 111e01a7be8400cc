"""The provider's count is the truth: a provider that counts the whole
account (most of whose calls do not go through sluice) reports its usage in
every answer, and exactly its remaining calls go through -- with the memory
store, and with Redis shared by one or three instances -- and what the
operator sees is the provider's figure."""
import json

import pytest

from harness import RedisServer


def conf(up, store=None, fmt="sforce-limit-info", limit=15000, window="24h"):
    c = {"upstreams": [{"name": "crm", "prefix": "/crm", "url": up.url,
                        "rules": [{"name": "daily", "limit": limit, "window": window,
                                   "sync": fmt}]}]}
    if store:
        c["store"] = store
    return c


@pytest.mark.parametrize("store_kind,ninst", [("memory", 1), ("redis", 1), ("redis", 3)])
def test_exactly_the_providers_remaining_calls_go_through(upstream, sluice, store_kind,
                                                         ninst):
    redis = RedisServer() if store_kind == "redis" else None
    try:
        # 14,986 of 15,000 used by the account's other tools: 14 left.
        upstream.account = {"used": 14986, "max": 15000, "format": "sforce"}
        c = conf(upstream, redis.url if redis else None)
        insts = [sluice(c) for _ in range(ninst)]
        codes = [insts[i % ninst].request("GET", "/crm/x%d" % i)[0] for i in range(20)]
        # Each call waits for the previous answer: the report of one is known
        # before the next is decided.  Every one of the 14 passes, none more.
        assert codes == [200] * 14 + [429] * 6, codes
        assert upstream.count() == 14
        assert upstream.account["used"] == 15000
    finally:
        if redis:
            redis.stop()
