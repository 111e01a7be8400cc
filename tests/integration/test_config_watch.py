"""`sluice --watch-config`: every way a deployment replaces the
configuration file is noticed and reloaded (counts kept), and nothing else
reloads: a write in place, a new file renamed over it (editors, config
management), a Kubernetes ConfigMap's "..data" swap (test_kubernetes.py),
the file removed and brought back; a touch that changes no byte does not
reload; without the option nothing is watched."""
import json
import os
import subprocess
import tempfile
import time

import pytest

from harness import SLUICE_BIN, free_port, wait_for


def config(upstream, limit):
    return json.dumps({"upstreams": [{"name": "api", "prefix": "/api", "url": upstream.url,
                                      "rules": [{"name": "r", "limit": limit,
                                                 "window": "1h"}]}]})


class Watched:
    def __init__(self, upstream, watch=True):
        self.dir = tempfile.mkdtemp(prefix="sluice-watch-")
        self.path = os.path.join(self.dir, "sluice.json")
        with open(self.path, "w") as f:
            f.write(config(upstream, 1))
        self.port = free_port()
        self.log = os.path.join(self.dir, "log")
        args = [SLUICE_BIN, "-c", self.path] + (["--watch-config"] if watch else [])
        self.proc = subprocess.Popen(args, env=dict(os.environ,
                                                    SLUICE_LISTEN="127.0.0.1:%d" % self.port),
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        assert wait_for(lambda: "listening on" in self.text(), 10), self.text()

    def text(self):
        return open(self.log).read()

    def reloads(self):
        return self.text().count("config file changed: configuration reloaded")

    def get(self):
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.request("GET", "/api/x")
        s = c.getresponse().status
        c.close()
        return s

    def stop(self):
        self.proc.terminate()
        assert self.proc.wait(20) == 0


def in_place(path, text):
    with open(path, "w") as f:  # truncate, then write: briefly empty
        f.write(text)


def renamed_over(path, text):
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def removed_and_back(path, text):
    os.unlink(path)
    time.sleep(0.5)  # longer than the settle time: a separate change
    with open(path, "w") as f:
        f.write(text)


@pytest.mark.parametrize("change", [in_place, renamed_over, removed_and_back])
def test_each_way_of_replacing_the_file_reloads_it(upstream, change):
    w = Watched(upstream)
    try:
        assert w.get() == 200 and w.get() == 429
        change(w.path, config(upstream, 3))
        assert wait_for(lambda: w.reloads() == 1, 10), w.text()
        # Counts kept: two more, not three.
        assert [w.get() for _ in range(3)] == [200, 200, 429]
        assert upstream.count() == 3
    finally:
        w.stop()


def test_a_touch_or_an_identical_write_does_not_reload(upstream):
    w = Watched(upstream)
    try:
        with open(w.path) as f:
            same = f.read()
        # Each step, then longer than the settle time (200 ms) plus a loop
        # pass: a reload it caused would be in the log by then.
        for step in (lambda: os.utime(w.path), lambda: renamed_over(w.path, same),
                     lambda: in_place(w.path, same)):
            step()
            time.sleep(0.6)
            assert w.reloads() == 0, w.text()
        in_place(w.path, config(upstream, 2))
        assert wait_for(lambda: w.reloads() == 1, 10), w.text()
        assert [w.get() for _ in range(3)] == [200, 200, 429]
    finally:
        w.stop()


def test_without_the_option_nothing_is_watched(upstream):
    w = Watched(upstream, watch=False)
    try:
        assert w.get() == 200 and w.get() == 429
        in_place(w.path, config(upstream, 3))
        # Twice the watcher's settle time and more: nobody looked.
        time.sleep(1.0)
        assert w.get() == 429
        assert "watched" not in w.text()
    finally:
        w.stop()
