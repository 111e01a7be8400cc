"""The Kubernetes examples (deploy/kubernetes/), checked as far as can be
without a cluster, and then run: the manifests hold together (selectors,
volumes, probes, a native sidecar, the ConfigMap mounted as a directory,
the admin listener on loopback or behind a token and a NetworkPolicy);
each ConfigMap's configuration passes `sluice --check`; the shared service
runs from its own ConfigMap as two instances on the Redis of redis.yaml,
sharing one quota, probes answering; and a ConfigMap update, made the way
the kubelet makes it (a new timestamped directory and the "..data" link
swapped by a rename), is reloaded by --watch-config with counts kept."""
import json
import os
import subprocess
import tempfile
import time

import yaml

from harness import ROOT, SLUICE_BIN, RedisServer, Upstream, admin_request, free_port, wait_for

K8S = os.path.join(ROOT, "deploy", "kubernetes")
TOKEN = "k8s-test-token-0123456789abcdef"


def docs(name):
    with open(os.path.join(K8S, name)) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def kind(ds, k, name=None):
    found = [d for d in ds if d["kind"] == k and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (k, name)
    return found[0]


def pod_spec(ds):
    for d in ds:
        if d["kind"] in ("Deployment", "StatefulSet"):
            tmpl = d["spec"]["template"]
            # A selector must select its own pods.
            labels = tmpl["metadata"]["labels"]
            for k, v in d["spec"]["selector"]["matchLabels"].items():
                assert labels[k] == v, d["metadata"]["name"]
            yield d, tmpl["spec"]


def test_manifests_hold_together():
    every = {n: docs(n) for n in ("redis.yaml", "sidecar.yaml", "shared.yaml")}
    for name, ds in every.items():
        for d in ds:
            assert d["apiVersion"] and d["kind"] and d["metadata"]["name"], name
        for d, spec in pod_spec(ds):
            vols = {v["name"] for v in spec.get("volumes", [])}
            claims = {c["metadata"]["name"] for c in d["spec"].get("volumeClaimTemplates", [])}
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                for m in c.get("volumeMounts", []):
                    assert m["name"] in vols | claims, (name, c["name"], m["name"])
                    # A subPath mount never sees a ConfigMap update.
                    assert "subPath" not in m, (name, c["name"])
                ports = {p["name"] for p in c.get("ports", [])}
                for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                    pr = c.get(probe)
                    if pr and "httpGet" in pr:
                        assert pr["httpGet"]["port"] in ports, (name, probe)
        # Every Service selects pods that some workload here makes.
        for svc in [d for d in ds if d["kind"] == "Service"]:
            sel = svc["spec"]["selector"]
            assert any(all(spec_d["spec"]["template"]["metadata"]["labels"].get(k) == v
                           for k, v in sel.items()) for spec_d, _ in pod_spec(ds)), svc

    # The sidecar: native (an init container that keeps running), started
    # and probed by `sluice health`, admin on loopback only.
    side_docs = every["sidecar.yaml"]
    _, spec = next(pod_spec(side_docs))
    sl = next(c for c in spec["initContainers"] if c["name"] == "sluice")
    assert sl["restartPolicy"] == "Always"
    assert "--watch-config" in sl["args"]
    assert sl["startupProbe"]["exec"]["command"][1:] == ["health"]
    assert sl["readinessProbe"]["exec"]["command"][1:] == ["health", "--ready"]
    assert "ports" not in sl  # nothing on the pod network
    cfg = json.loads(kind(side_docs, "ConfigMap")["data"]["sluice.json"])
    assert cfg["admin"]["listen"].startswith("127.0.0.1:")
    assert cfg["store"].startswith("redis://sluice-redis:")
    mount = next(m for m in sl["volumeMounts"] if m["mountPath"] == "/etc/sluice")
    assert mount["readOnly"] is True

    # The shared service: admin behind the Secret's token and a policy.
    shared = every["shared.yaml"]
    _, spec = next(pod_spec(shared))
    sl = spec["containers"][0]
    assert "--watch-config" in sl["args"]
    env = {e["name"]: e for e in sl["env"]}
    assert env["SLUICE_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "sluice-admin"
    pol = kind(shared, "NetworkPolicy")
    admin_rules = [r for r in pol["spec"]["ingress"] if {"port": 9901} in r["ports"]]
    assert admin_rules and all(r.get("from") for r in admin_rules)
    assert kind(shared, "Service")["spec"]["ports"][0]["port"] == 8080
    redis = kind(every["redis.yaml"], "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    assert "noeviction" in redis["args"] and "--appendonly" in redis["args"]


def check(cfg, env=None):
    d = tempfile.mkdtemp()
    p = os.path.join(d, "sluice.json")
    with open(p, "w") as f:
        json.dump(cfg, f)
    return subprocess.run([SLUICE_BIN, "--check", "-c", p], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=20)


def test_configmaps_pass_check():
    for name in ("sidecar.yaml", "shared.yaml"):
        cfg = json.loads(kind(docs(name), "ConfigMap")["data"]["sluice.json"])
        r = check(cfg, {"SLUICE_ADMIN_TOKEN": TOKEN})
        assert r.returncode == 0, (name, r.stderr)
    # Without its token the shared service's admin listener (on the pod
    # network) refuses to start, as it should.
    cfg = json.loads(kind(docs("shared.yaml"), "ConfigMap")["data"]["sluice.json"])
    env = {k: v for k, v in os.environ.items() if k != "SLUICE_ADMIN_TOKEN"}
    p = os.path.join(tempfile.mkdtemp(), "sluice.json")
    with open(p, "w") as f:
        json.dump(cfg, f)
    r = subprocess.run([SLUICE_BIN, "--check", "-c", p], capture_output=True, text=True,
                       env=env, timeout=20)
    assert r.returncode == 1 and "token" in r.stderr


class ConfigMapDir:
    """A directory laid out as the kubelet mounts a ConfigMap: NAME is a
    link to ..data/NAME, ..data a link to a timestamped directory; update()
    writes a new directory and swaps ..data with one rename."""

    def __init__(self, files):
        self.root = tempfile.mkdtemp(prefix="configmap-")
        self.current = None
        self.update(files)
        for name in files:
            os.symlink(os.path.join("..data", name), os.path.join(self.root, name))

    def update(self, files):
        ts = os.path.join(self.root, "..%s.%d" % (time.strftime("%Y_%m_%d_%H_%M_%S"),
                                                  time.monotonic_ns()))
        os.mkdir(ts)
        for name, text in files.items():
            with open(os.path.join(ts, name), "w") as f:
                f.write(text)
        tmp = os.path.join(self.root, "..data_tmp")
        os.symlink(os.path.basename(ts), tmp)
        os.rename(tmp, os.path.join(self.root, "..data"))
        if self.current:
            for name in os.listdir(self.current):
                os.unlink(os.path.join(self.current, name))
            os.rmdir(self.current)
        self.current = ts


def get(port, path, headers=None):
    status, _, body = admin_request(port, "GET", path, headers=headers)
    return status, body


def test_shared_service_runs_and_reloads_a_swapped_configmap():
    shared = docs("shared.yaml")
    text = kind(shared, "ConfigMap")["data"]["sluice.json"]
    redis_args = kind(docs("redis.yaml"), "StatefulSet")["spec"]["template"]["spec"][
        "containers"][0]["args"]

    class ManifestRedis(RedisServer):
        EXTRA_ARGS = tuple(redis_args) + ("--dir", tempfile.mkdtemp())

    redis = ManifestRedis()
    up = Upstream()
    procs, logs = [], []
    try:
        def local(limit):
            cfg = json.loads(text.replace("sluice-redis:6379", "127.0.0.1:%d" % redis.port))
            cfg["upstreams"][0]["url"] = up.url
            for r in cfg["upstreams"][0]["rules"]:
                if r["name"] == "daily-api-calls":
                    r["limit"] = limit
            return json.dumps(cfg)

        cm = ConfigMapDir({"sluice.json": local(3)})
        path = os.path.join(cm.root, "sluice.json")
        instances = []
        for i in range(2):
            port, admin = free_port(), free_port()
            env = dict(os.environ, SLUICE_ADMIN_TOKEN=TOKEN, SLUICE_CONFIG=path,
                       SLUICE_LISTEN="127.0.0.1:%d" % port,
                       SLUICE_ADMIN_LISTEN="127.0.0.1:%d" % admin)
            log = tempfile.NamedTemporaryFile("w+", prefix="sluice-k8s-", delete=False)
            logs.append(log)
            args = kind(shared, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
            procs.append(subprocess.Popen([SLUICE_BIN, "-c", path] + args, env=env,
                                          stdout=log, stderr=subprocess.STDOUT))
            instances.append((port, admin, env))
        # The probes: httpGet /healthz and /readyz on the admin port, no token.
        for port, admin, env in instances:
            assert wait_for(lambda: _answers(admin, "/readyz"), 10)
            assert get(admin, "/healthz")[0] == 200
            assert get(admin, "/status")[0] == 401
            # And the sidecar's exec probes, on the same configuration.
            for cmd in (["health"], ["health", "--ready"]):
                r = subprocess.run([SLUICE_BIN] + cmd, env=env, capture_output=True,
                                   text=True, timeout=10)
                assert r.returncode == 0, (cmd, r.stderr)

        # One quota for both instances: 3 forwarded, then 429 from either.
        got = [get(instances[i % 2][0], "/crm/x")[0] for i in range(6)]
        assert got.count(200) == 3 and got.count(429) == 3, got

        # The kubelet's update: a new directory, ..data swapped.
        cm.update({"sluice.json": local(5)})
        for log in logs:
            assert wait_for(lambda: "config file changed: configuration reloaded"
                            in open(log.name).read(), 10), open(log.name).read()
        # Counts kept: exactly two more now, on either instance.
        got = [get(instances[i % 2][0], "/crm/x")[0] for i in range(4)]
        assert got == [200, 200, 429, 429], got
        assert up.count() == 5

        # A broken update changes nothing and is said.
        cm.update({"sluice.json": "{broken"})
        for log in logs:
            assert wait_for(lambda: "the running configuration (generation 2) keeps serving"
                            in open(log.name).read(), 10), open(log.name).read()
        assert get(instances[0][0], "/crm/x")[0] == 429
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            assert p.wait(30) == 0
        up.close()
        redis.stop()


def _answers(port, path):
    try:
        return get(port, path)[0] == 200
    except OSError:
        return False
