"""Headless Chromium for tests of the admin page (stdlib only).

    dom = dump_dom("http://127.0.0.1:PORT/", wait_ms=3000, auth=("admin", "pw"))
    root = parse(dom)
    rule = root.find(cls="rule", data_rule="daily")
    assert rule["data-band"] == "warn"
    assert rule.find(cls="fill").style == {"width": "85.0%", "background": "#ef6c00"}
    assert rule.find(cls="figures").text == "17 / 20 (85.0%)"
    assert [li.text for li in rule.find_all("li", cls="app")] == ["billing: 15", "-: 2"]
    screenshot("http://127.0.0.1:PORT/", "/tmp/page.png")

How long the page runs before the dump: virtual time
----------------------------------------------------
Chromium is run as (Debian 12's chromium 156, /usr/bin/chromium)

    chromium --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage
             --user-data-dir=<temp dir> --window-size=1280,900 --hide-scrollbars
             --no-first-run --no-default-browser-check --disable-extensions
             --disable-background-networking --disable-component-update --disable-sync
             --no-proxy-server --host-resolver-rules="MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"
             --virtual-time-budget=WAIT_MS  (--dump-dom | --screenshot=PATH) URL

--virtual-time-budget=N runs the page on a virtual clock for N ms, then
dumps. Timers (setInterval/setTimeout, Date.now) run on that clock, and the
clock is *paused while a network fetch is pending*, so every fetch the page
starts completes before the clock moves on, however slow the server is
(checked: with a server answering /status after 0.4 s, wait_ms=3000 gives
exactly 4 polls -- at virtual 0, 1, 2 and 3 s -- in about 2.5 s of real time;
with a prompt server the same 4 polls take about 0.2 s). So for a page that
polls once per second, wait_ms=3000 means "first poll plus three more",
deterministically; use wait_ms >= 1000 (wait_ms=0 stalls Chromium until the timeout).
A fetch that never completes stalls virtual time: the real-time `timeout`
(default 30 s + 2 x wait_ms) then kills Chromium and ChromiumError is raised.

Real-time waiting does not work with this Chromium: --timeout=N only caps
the load (the DOM is dumped at the load event, before the first poll has
answered), also with --run-all-compositor-stages-before-draw.

HTTP Basic auth
---------------
auth=(user, password) opens http://user:password@127.0.0.1:PORT/ (both
percent-encoded). Chromium first asks without credentials, gets the 401 with
WWW-Authenticate: Basic, retries with them and caches them for the origin;
the page's fetch of /status then carries the Authorization header
pre-emptively. Caveat: the document's URL keeps user:password@, and fetch()
throws ("Request cannot be constructed from a URL that includes
credentials") for a URL that does, which includes a relative URL resolved
against it; the admin page therefore strips them (new URL('status',
location.href), username/password cleared) before fetching.

Only 127.0.0.1 is reached: every host name fails to resolve
(--host-resolver-rules), there is no proxy, and background networking,
component updates and sync are off. The profile is a temporary directory,
removed afterwards. Chromium's stderr (D-Bus complaints and the like) is
kept only for the error message. CHROMIUM in the environment overrides the
binary.
"""
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.parse
from html.parser import HTMLParser

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]


class ChromiumError(RuntimeError):
    pass


def with_auth(url, auth):
    """url with user:password@ in it (percent-encoded); url itself if auth is None."""
    if auth is None:
        return url
    user, password = auth
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = "%s:%s@%s" % (urllib.parse.quote(user, safe=""), urllib.parse.quote(password, safe=""), host)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _run(url, action, size, wait_ms, auth, timeout, env):
    if timeout is None:
        timeout = 30 + 2 * wait_ms / 1000.0
    tmp = tempfile.mkdtemp(prefix="sluice-chromium-")
    run_env = dict(os.environ, XDG_CONFIG_HOME=tmp, XDG_CACHE_HOME=tmp)
    run_env.update(env or {})
    cmd = [CHROMIUM] + FLAGS + [
        "--user-data-dir=" + os.path.join(tmp, "profile"),
        "--window-size=%d,%d" % tuple(size),
        "--virtual-time-budget=%d" % int(wait_ms),
    ] + action + [with_auth(url, auth)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=run_env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise ChromiumError("chromium still running after %.0f s: %s\n%s" % (timeout, url, _tail(err)))
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # helpers left behind, if any
        except ProcessLookupError:
            pass
        shutil.rmtree(tmp, ignore_errors=True)
    if proc.returncode != 0:
        raise ChromiumError("chromium exited %d for %s\n%s" % (proc.returncode, url, _tail(err)))
    return out, err


def _tail(err, lines=15):
    text = err.decode("utf-8", "replace").splitlines()
    text = [l for l in text if "dbus" not in l.lower()]
    return "\n".join(text[-lines:])


def dump_dom(url, wait_ms=3000, auth=None, size=(1280, 900), timeout=None, env=None):
    """The serialized DOM of url after wait_ms of virtual time (see module doc).

    env: extra environment for Chromium, e.g. {"TZ": "UTC"} to fix the local
    time the page shows."""
    out, err = _run(url, ["--dump-dom"], size, wait_ms, auth, timeout, env)
    dom = out.decode("utf-8", "replace")
    if "<html" not in dom.lower():
        raise ChromiumError("chromium printed no DOM for %s\n%s" % (url, _tail(err)))
    return dom


def screenshot(url, path, size=(1280, 900), wait_ms=3000, auth=None, timeout=None, env=None):
    """Write a PNG of the viewport (size = width, height) to path; returns path."""
    path = os.path.abspath(path)
    if os.path.exists(path):
        os.unlink(path)
    _, err = _run(url, ["--screenshot=" + path], size, wait_ms, auth, timeout, env)
    with open(path, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            raise ChromiumError("no PNG written for %s\n%s" % (url, _tail(err)))
    return path


# ---------------------------------------------------------------- DOM queries

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
        "source", "track", "wbr"}


class Element(dict):
    """One element: a dict of its attributes (values unescaped; valueless
    attributes are ""), plus .tag, .children, .parent, .text, .style,
    .classes, .find() and .find_all()."""

    def __init__(self, tag, attrs=(), parent=None):
        super().__init__((k, "" if v is None else v) for k, v in attrs)
        self.tag = tag
        self.parent = parent
        self.children = []  # Elements and str

    def __repr__(self):
        return "<%s %s>" % (self.tag, dict.__repr__(self))

    __hash__ = object.__hash__

    def __eq__(self, other):
        return self is other

    @property
    def classes(self):
        return self.get("class", "").split()

    @property
    def style(self):
        """The style attribute as a dict: "width: 4.0%; background: #c62828"
        -> {"width": "4.0%", "background": "#c62828"}."""
        out = {}
        for decl in self.get("style", "").split(";"):
            name, sep, value = decl.partition(":")
            if sep:
                out[name.strip().lower()] = value.strip()
        return out

    @property
    def raw_text(self):
        parts = []
        for c in self.children:
            if isinstance(c, str):
                parts.append(c)
            elif c.tag not in ("script", "style"):
                parts.append(c.raw_text)
        return "".join(parts)

    @property
    def text(self):
        """Text content without script/style, whitespace runs collapsed to one space."""
        return " ".join(self.raw_text.split())

    def iter(self):
        for c in self.children:
            if isinstance(c, Element):
                yield c
                yield from c.iter()

    def find_all(self, tag=None, cls=None, attrs=None, **kw):
        """Descendants matching all of: tag name; cls (one class or several,
        space-separated, all required); attributes, given as attrs={"data-band":
        "warn"} or keywords with "_" for "-" (data_band="warn"); a value of
        True only asks that the attribute be present."""
        want = dict(attrs or {})
        want.update((k.replace("_", "-"), v) for k, v in kw.items())
        need = cls.split() if cls else []
        found = []
        for e in self.iter():
            if tag is not None and e.tag != tag:
                continue
            if need and not all(c in e.classes for c in need):
                continue
            if any(k not in e or (v is not True and e[k] != v) for k, v in want.items()):
                continue
            found.append(e)
        return found

    def find(self, tag=None, cls=None, attrs=None, **kw):
        """The first match of find_all, or None."""
        found = self.find_all(tag, cls, attrs, **kw)
        return found[0] if found else None


class _TreeBuilder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Element("#document")
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        e = Element(tag, attrs, self.stack[-1])
        self.stack[-1].children.append(e)
        if tag not in VOID:
            self.stack.append(e)

    def handle_startendtag(self, tag, attrs):
        e = Element(tag, attrs, self.stack[-1])
        self.stack[-1].children.append(e)

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse(dom):
    """The document tree of dom (a string from dump_dom): an Element "#document"."""
    if isinstance(dom, Element):
        return dom
    b = _TreeBuilder()
    b.feed(dom)
    b.close()
    return b.root


def find_all(dom, tag=None, cls=None, attrs=None, **kw):
    """parse(dom).find_all(...): e.g. find_all(dom, cls="rule", data_band="warn")."""
    return parse(dom).find_all(tag, cls, attrs, **kw)


def find(dom, tag=None, cls=None, attrs=None, **kw):
    """parse(dom).find(...): the first match or None."""
    return parse(dom).find(tag, cls, attrs, **kw)
