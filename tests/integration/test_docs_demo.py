"""The two-instance demo of docs/guides/redis.md, run as written: the shell
block is taken from the page, only its fixed ports (Redis's, the stand-in
provider's, the proxies' and admin listeners') moved to free ones and
./build/sluice pointed at the binary under test, and what it prints must
be what the page says it prints (100 forwarded, 20 refused)."""
import json
import os
import re
import socket
import subprocess
import tempfile

from harness import ROOT, SLUICE_BIN, free_port

PAGE = os.path.join(ROOT, "docs", "guides", "redis.md")
CONFIG = os.path.join(ROOT, "deploy", "examples", "two-instances-redis.json")


def demo_block():
    text = open(PAGE).read()
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        if "two-instances-redis.json" in block and "uniq -c" in block:
            return block
    raise AssertionError("no two-instance demo in " + PAGE)


def test_two_instance_demo_prints_what_the_page_says():
    block = demo_block()
    expected = [line[1:].strip() for line in block.splitlines()
                if re.match(r"#\s+\d+ \d{3}$", line)]
    assert expected == ["100 200", "20 429"], expected

    d = tempfile.mkdtemp(prefix="sluice-demo-")
    redis, up = free_port(), free_port()
    # Two proxies on consecutive ports, as the page's loop spells them.
    while True:
        base = free_port()
        try:
            for p in (base + 1, base + 2):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            break
        except OSError:
            continue
    admin1, admin2 = free_port(), free_port()
    cfg = open(CONFIG).read()
    assert "127.0.0.1:6379" in cfg and "127.0.0.1:9000" in cfg
    cfg = cfg.replace("127.0.0.1:6379", "127.0.0.1:%d" % redis)
    cfg = cfg.replace("127.0.0.1:9000", "127.0.0.1:%d" % up)
    local_cfg = os.path.join(d, "two-instances-redis.json")
    with open(local_cfg, "w") as f:
        f.write(cfg)

    script = block
    for old, new in [
            ("--port 6379", "--port %d" % redis),
            ("--daemonize yes", "--daemonize yes --pidfile %s/redis.pid --dir %s" % (d, d)),
            ("scripts/demo-upstream.py 9000", "scripts/demo-upstream.py %d" % up),
            ("127.0.0.1:8081", "127.0.0.1:%d" % (base + 1)),
            ("127.0.0.1:8082", "127.0.0.1:%d" % (base + 2)),
            ("127.0.0.1:9911", "127.0.0.1:%d" % admin1),
            ("127.0.0.1:9912", "127.0.0.1:%d" % admin2),
            ("localhost:9000/", "localhost:%d/" % up),
            ("localhost:9911/", "localhost:%d/" % admin1),
            ("localhost:9912/", "localhost:%d/" % admin2),
            ("localhost:808$((i % 2 + 1))", "localhost:$((%d + i %% 2 + 1))" % base),
            ("./build/sluice", SLUICE_BIN),
            ("deploy/examples/two-instances-redis.json", local_cfg),
            # Kept for the failure message instead of thrown away.
            ("2>/dev/null", "2>>%s/sluice.log" % d)]:
        assert old in script, old
        script = script.replace(old, new)
    # Everything the block starts is stopped when it ends.
    script = ("trap 'kill $(jobs -p) 2>/dev/null; kill $(cat %s/redis.pid) 2>/dev/null' EXIT\n"
              % d) + script
    p = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    got = [line.strip() for line in p.stdout.splitlines() if line.strip()]
    log = open(os.path.join(d, "sluice.log")).read()
    assert got == expected, (p.stdout, p.stderr, [l for l in log.splitlines()
                                                  if "status=200" not in l])


def test_readme_quick_start_shows_a_429(sluice):
    """README's quick start, after its command 1 (sluice on the quick-start
    config): the second block, run as written with its two ports moved,
    prints 20 forwarded calls, then refusals, and a 429 with Retry-After
    and RateLimit."""
    text = open(os.path.join(ROOT, "README.md")).read()
    block = next(b for b in re.findall(r"```sh\n(.*?)```", text, re.S)
                 if "demo-upstream.py" in b and "seq 22" in b)
    up = free_port()
    cfg = json.load(open(os.path.join(ROOT, "deploy", "examples", "quickstart.json")))
    assert cfg["listen"] == "127.0.0.1:8080"
    assert cfg["upstreams"][0]["url"] == "http://127.0.0.1:9000"
    cfg["upstreams"][0]["url"] = "http://127.0.0.1:%d" % up
    del cfg["listen"]
    sl = sluice(cfg)
    script = (block.replace("demo-upstream.py 9000", "demo-upstream.py %d" % up)
                   .replace("localhost:9000/", "localhost:%d/" % up)
                   .replace("localhost:8080/", "localhost:%d/" % sl.port))
    script = "trap 'kill $(jobs -p) 2>/dev/null' EXIT\n" + script
    p = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["200"] * 20 + ["429"] * 2, p.stdout
    head = "\n".join(lines[1:]).lower()
    assert "http/1.1 429 too many requests" in head
    m = re.search(r"retry-after: (\d+)", head)
    assert m and 1 <= int(m.group(1)) <= 10, head
    assert re.search(r'ratelimit: "all";r=0;t=%s' % m.group(1), head), head


def test_readme_login_examples_pass_check(tmp_path):
    """README's "Logging in for every app": both configurations pass
    --check as written (the CRM's key file moved to a test key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## Logging in for every app", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```json\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "crm-jwt.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    for i, b in enumerate(blocks):
        assert json.loads(b)["upstreams"][0]["auth"]
        cfg = tmp_path / ("readme%d.json" % i)
        cfg.write_text(b.replace("/etc/sluice/crm-jwt.pem", str(pem)))
        r = subprocess.run([SLUICE_BIN, "--check", "-c", str(cfg)], capture_output=True,
                           text=True, env={"PATH": os.environ["PATH"],
                                           "LEADS_CLIENT_SECRET": "x"})
        assert r.returncode == 0, r.stdout + r.stderr
        assert "warning" not in r.stdout + r.stderr


def test_readme_store_urls_pass_check(tmp_path):
    """README's "Sharing one quota through Redis": each store line, as
    written, in a configuration that passes --check (the CA file moved to
    a test certificate)."""
    from harness import make_cert
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## Sharing one quota through Redis", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```text\n(.*?)```", section, re.S)[0]
    lines = [ln for ln in block.splitlines() if ln.strip()]
    assert [json.loads("{%s}" % ln)["store"].split("://")[0] for ln in lines] == \
        ["redis", "rediss", "redis-sentinel", "redis-cluster"]
    cert, _ = make_cert(str(tmp_path))
    for i, ln in enumerate(lines):
        conf = json.loads("{%s}" % ln.replace("/etc/sluice/ca.pem", cert))
        conf["upstreams"] = [{"name": "up", "prefix": "/up", "url": "http://127.0.0.1:9"}]
        path = tmp_path / ("store%d.json" % i)
        path.write_text(json.dumps(conf))
        r = subprocess.run([SLUICE_BIN, "--check", "-c", str(path)], capture_output=True,
                           text=True)
        assert r.returncode == 0, ln + "\n" + r.stdout + r.stderr


def test_readme_acl_is_the_one_the_tests_use():
    """README's ACL line grants exactly what test_redis_tls.py's least user
    has (every script run as that user, ACL LOG empty), plus +incr for the
    token broker; and the cluster's additions are those test_redis_cluster.py
    grants."""
    from test_redis_tls import ACL_COMMANDS
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## Sharing one quota through Redis", 1)[1].split("\n## ", 1)[0]
    line = next(ln for ln in section.splitlines() if ln.startswith("ACL SETUSER"))
    grants = {w for w in line.split() if w.startswith("+")}
    assert grants == set(ACL_COMMANDS) | {"+incr"}, grants ^ (set(ACL_COMMANDS) | {"+incr"})
    extra = re.search(r"on a cluster, on every node, also `([^`]*)`", section).group(1).split()
    src = open(os.path.join(ROOT, "tests", "integration", "test_redis_cluster.py")).read()
    assert 'extra = %r' % extra in src.replace('"', "'")
