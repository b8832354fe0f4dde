"""Fixtures for the end-to-end suite: a real gunicorn (sync workers) serving the Django app in app/,
and the proxy under test in front of it, both on 127.0.0.1 with free ports.

E2E_PROXY   gripd (default) or pushpin
GRIPD_BIN   gripd binary (default <repo>/target/debug/gripd)
E2E_WORKERS gunicorn sync workers (default 2)
"""
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
APP_DIR = HERE / "app"
SIG_KEY = "e2e-shared-sig-key"
STARTUP_TIMEOUT = 30.0

sys.path.insert(0, str(HERE))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~15 s (deselect with -m 'not slow')")
    config.addinivalue_line(
        "markers", "pushpin_difference(reason): known, documented difference of Pushpin 1.36"
    )


def pytest_report_header(config):
    return "e2e proxy under test: %s" % proxy_kind()


def proxy_kind():
    kind = os.environ.get("E2E_PROXY", "gripd")
    if kind not in ("gripd", "pushpin"):
        raise pytest.UsageError("E2E_PROXY must be gripd or pushpin, not %r" % kind)
    return kind


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ports_free(ports):
    socks = []
    try:
        for p in ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", p))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def pushpin_offset():
    """A port offset whose Pushpin publish ports (5560..5563 + offset) are all free."""
    rng = random.Random()
    for _ in range(200):
        off = rng.randrange(20000, 55000)
        if ports_free([5560 + off + i for i in range(4)]):
            return off
    raise RuntimeError("no free port block for Pushpin")


def gripd_binary():
    return Path(os.environ.get("GRIPD_BIN") or REPO / "target" / "debug" / "gripd")


class Proc:
    """A subprocess in its own process group, logging to a file; killed (group) at stop()."""

    def __init__(self, name, argv, log_path, env=None, cwd=None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )

    def alive(self):
        return self.popen.poll() is None

    def log_tail(self, n=40):
        try:
            lines = Path(self.log_path).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self):
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        # The group may still hold children (Pushpin's services, gunicorn workers).
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


def wait_http(url, procs, timeout=STARTUP_TIMEOUT, ok=lambda r: r.status_code < 500):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for p in procs:
            if not p.alive():
                raise RuntimeError(
                    "%s exited with %s while waiting for %s\n--- %s ---\n%s"
                    % (p.name, p.popen.returncode, url, p.log_path, p.log_tail())
                )
        try:
            r = requests.get(url, timeout=2)
            if ok(r):
                return r
            last = "HTTP %s %r" % (r.status_code, r.text[:200])
        except requests.RequestException as e:
            last = repr(e)
        time.sleep(0.1)
    tails = "\n".join("--- %s ---\n%s" % (p.log_path, p.log_tail()) for p in procs)
    raise RuntimeError("%s did not answer within %.0f s (last: %s)\n%s" % (url, timeout, last, tails))


class Stack:
    """The running system: proxy (client + control ports) in front of gunicorn."""

    def __init__(self, kind, workdir):
        self.kind = kind
        self.workdir = workdir
        self.procs = []
        self.origin_port = free_port()
        self.origin_url = "http://127.0.0.1:%d" % self.origin_port
        self.sig_key = SIG_KEY
        if kind == "pushpin":
            self.offset = pushpin_offset()
            self.client_port = free_port()
            self.control_port = 5561 + self.offset
            # ZeroMQ PULL, SUB (bound) and command sockets: Pushpin's defaults plus the offset.
            self.zmq_ports = (5560 + self.offset, 5562 + self.offset, 5563 + self.offset)
        else:
            ports = set()
            while len(ports) < 5:
                ports.add(free_port())
            self.client_port, self.control_port, *zmq = sorted(ports)
            self.zmq_ports = tuple(zmq)
        self.zmq_pull_uri, self.zmq_sub_uri, self.zmq_command_uri = (
            "tcp://127.0.0.1:%d" % p for p in self.zmq_ports
        )
        # A plain WebSocket origin (tests/e2e/test_ws.py) listens here while its tests run.
        self.ws_origin_port = free_port()
        while self.ws_origin_port in (self.client_port, self.control_port, self.origin_port, *self.zmq_ports):
            self.ws_origin_port = free_port()
        self.proxy_url = "http://127.0.0.1:%d" % self.client_port
        self.ws_url = "ws://127.0.0.1:%d" % self.client_port
        self.control_url = "http://127.0.0.1:%d" % self.control_port

    @property
    def is_pushpin(self):
        return self.kind == "pushpin"

    # --- origin -------------------------------------------------------------------------------

    def origin_env(self):
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE="e2eapp.settings",
            E2E_DB_PATH=str(self.workdir / "db.sqlite3"),
            E2E_CONTROL_URL=self.control_url,
            E2E_SIG_KEY=self.sig_key,
            PYTHONUNBUFFERED="1",
        )
        return env

    def start_origin(self):
        env = self.origin_env()
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=APP_DIR,
            env=env,
            check=True,
            timeout=120,
        )
        workers = os.environ.get("E2E_WORKERS", "2")
        gunicorn = Proc(
            "gunicorn",
            [
                sys.executable, "-m", "gunicorn",
                "--worker-class", "sync",
                "--workers", workers,
                "--bind", "127.0.0.1:%d" % self.origin_port,
                "--timeout", "60",
                "--graceful-timeout", "2",
                "--no-control-socket",
                "--access-logfile", "-",
                "e2eapp.wsgi:application",
            ],
            self.workdir / "gunicorn.log",
            env=env,
            cwd=APP_DIR,
        )
        self.procs.append(gunicorn)
        wait_http(self.origin_url + "/plain/", [gunicorn], ok=lambda r: r.status_code == 200)

    # --- proxy --------------------------------------------------------------------------------

    def routes(self):
        return [
            "* 127.0.0.1:%d" % self.origin_port,
            # django-grip's wscontext view: WebSocket-over-HTTP.
            "*,path_beg=/ws/ 127.0.0.1:%d,over_http" % self.origin_port,
            # A plain WebSocket origin (Python websockets), started by the tests that use it.
            "*,path_beg=/wsplain/ 127.0.0.1:%d" % self.ws_origin_port,
        ]

    def start_gripd(self):
        binary = gripd_binary()
        if not binary.is_file() or not os.access(binary, os.X_OK):
            raise FileNotFoundError(
                "gripd binary not found at %s: build it (cargo build --bin gripd) or set GRIPD_BIN"
                % binary
            )
        conf = self.workdir / "gripd.toml"
        conf.write_text(
            "[server]\n"
            'http_addrs = ["127.0.0.1:%d"]\n'
            "[proxy]\n"
            'sig_key = "%s"\n'
            "[publish]\n"
            'http_addr = "127.0.0.1:%d"\n'
            'zmq_pull = "%s"\n'
            'zmq_sub = ["%s"]\n'
            'zmq_command = "%s"\n'
            % (
                self.client_port,
                self.sig_key,
                self.control_port,
                self.zmq_pull_uri,
                self.zmq_sub_uri,
                self.zmq_command_uri,
            )
        )
        return Proc(
            "gripd",
            [str(binary), "--config", str(conf)] + [a for r in self.routes() for a in ("--route", r)],
            self.workdir / "gripd.log",
        )

    def start_pushpin(self):
        if not shutil.which("pushpin"):
            raise FileNotFoundError("pushpin not installed: apt-get install -y pushpin (scripts/e2e does it)")
        return Proc(
            "pushpin",
            [
                str(REPO / "scripts" / "run-pushpin"),
                "--rundir", str(self.workdir / "pushpin"),
                "--offset", str(self.offset),
                "--http-port", "127.0.0.1:%d" % self.client_port,
                "--sig-key", self.sig_key,
            ] + [a for r in self.routes() for a in ("--route", r)],
            self.workdir / "pushpin.log",
        )

    def start_proxy(self):
        proc = self.start_pushpin() if self.is_pushpin else self.start_gripd()
        self.procs.append(proc)
        self.proxy_proc = proc
        wait_http(self.control_url + "/", self.procs, ok=lambda r: r.status_code == 200)
        wait_http(self.proxy_url + "/plain/", self.procs, ok=lambda r: r.status_code == 200)

    def stop(self):
        for p in reversed(self.procs):
            p.stop()

    def logs(self):
        return "\n".join("--- %s (%s) ---\n%s" % (p.name, p.log_path, p.log_tail(60)) for p in self.procs)

    # --- helpers used by tests ----------------------------------------------------------------

    def send(self, ch, data=None, event_type="message", count=1, json_encode=True,
             skip_user_ids=None, async_publish=False, session=None):
        """django-eventstream send_event() in a gunicorn worker (blocking publish unless async)."""
        body = {
            "type": event_type,
            "data": {} if data is None else data,
            "count": count,
            "json_encode": json_encode,
            "skip_user_ids": skip_user_ids or [],
            "async": async_publish,
        }
        r = (session or requests).post(self.origin_url + "/send/%s/" % ch, json=body, timeout=60)
        assert r.status_code == 200, "send_event failed: %s %s" % (r.status_code, r.text[:500])
        return r.json()

    def store(self, ch, data=None, event_type="message", count=1):
        """Store event(s) in django-eventstream's storage without publishing them."""
        body = {"type": event_type, "data": {} if data is None else data, "count": count}
        r = requests.post(self.origin_url + "/store/%s/" % ch, json=body, timeout=60)
        assert r.status_code == 200, "store failed: %s %s" % (r.status_code, r.text[:500])
        return r.json()["id"]

    def login(self, username):
        """A requests.Session logged in (through the proxy) as a fresh user; returns (session, user id)."""
        s = requests.Session()
        r = s.post(self.proxy_url + "/login/", json={"username": username}, timeout=10)
        assert r.status_code == 200, "login failed: %s %s" % (r.status_code, r.text[:300])
        return s, r.json()["id"]

    def grip_pub(self):
        from gripcontrol import GripPubControl

        return GripPubControl({"control_uri": self.control_url})

    def publish_raw(self, body, content_type="application/json", headers=None):
        h = {"Content-Type": content_type}
        h.update(headers or {})
        return requests.post(self.control_url + "/publish/", data=body, headers=h, timeout=10)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    kind = proxy_kind()
    st = Stack(kind, tmp_path_factory.mktemp("e2e-" + kind))
    try:
        st.start_origin()
        problem = None
        try:
            st.start_proxy()
        except FileNotFoundError as e:
            problem = "cannot start %s: %s" % (kind, e)
        except RuntimeError as e:
            problem = "%s did not start: %s" % (kind, e)
        if problem:
            pytest.fail(problem, pytrace=False)
        yield st
    finally:
        st.stop()


@pytest.fixture
def proxy(stack):
    """The stack, checked alive before and after each test (a crash names the test that caused it)."""
    for p in stack.procs:
        assert p.alive(), "%s is not running:\n%s" % (p.name, p.log_tail())
    yield stack
    for p in stack.procs:
        assert p.alive(), "%s died during the test:\n%s" % (p.name, p.log_tail())
