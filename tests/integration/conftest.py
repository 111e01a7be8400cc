import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import RedisServer, Sluice, Upstream, release_ports  # noqa: E402


@pytest.fixture(autouse=True)
def _ports():
    """The ports free_port() held for this test are let go after it (its
    processes are stopped by then: fixtures finish after the test's own)."""
    yield
    release_ports()


@pytest.fixture
def upstream():
    up = Upstream()
    yield up
    up.close()


@pytest.fixture
def sluice():
    """Factory: sluice(config) starts one; all are stopped (and must exit 0)."""
    started = []

    def start(config, **kw):
        s = Sluice(config, **kw)
        started.append(s)
        return s

    yield start
    errors = []
    for s in started:
        try:
            s.stop()
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n".join(errors))


@pytest.fixture
def redis():
    r = RedisServer()
    yield r
    r.stop()


@pytest.fixture(params=["memory", "redis"])
def store(request):
    """The same test with each store: None (the memory store), or the URL of
    a real redis-server started for it."""
    if request.param == "memory":
        yield None
        return
    r = RedisServer()
    yield r.url
    r.stop()
