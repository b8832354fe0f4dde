"""Issue 5: ZeroMQ publish inputs and the publish CLIs, through the proxy with django-grip holds
(grip-reference §3.4-3.6, §3.9; wire-formats.md "ZMQ formats" and "pushpin-publish CLI").

Publishers: gripcontrol/pubcontrol's ZeroMQ client (command-socket discovery, then PUSH), raw pyzmq
(PUSH with J/T/bare encodings, XPUB -> SUB, REQ -> command socket), Debian's `pushpin-publish` and
`gripd publish` (HTTP and ZeroMQ specs). Every wait is bounded.
"""
import json
import shutil
import subprocess
import threading
import time

import pytest
import tnetstring
import zmq
from gripcontrol import GripPubControl

from conftest import gripd_binary
from support import RawStream, unique

ZMQ_TIMEOUT_MS = 10000
LONGPOLL_WAIT = 15.0
CLI_TIMEOUT = 30


def stream_item(ch, content):
    return {"channel": ch, "formats": {"http-stream": {"content": content}}}


def tn(value):
    """tnetstring-encode JSON-like data (text as UTF-8 bytes, as pubcontrol sends it)."""

    def conv(v):
        if isinstance(v, str):
            return v.encode()
        if isinstance(v, dict):
            return {conv(k): conv(x) for k, x in v.items()}
        if isinstance(v, list):
            return [conv(x) for x in v]
        return v

    return tnetstring.dumps(conv(value))


@pytest.fixture
def zctx():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def zsock(ctx, kind, linger=ZMQ_TIMEOUT_MS):
    s = ctx.socket(kind)
    s.linger = linger
    s.rcvtimeo = ZMQ_TIMEOUT_MS
    s.sndtimeo = ZMQ_TIMEOUT_MS
    return s


def open_stream(proxy, ch):
    s = RawStream(proxy.proxy_url + "/stream/%s/" % ch)
    assert s.resp.status_code == 200
    s.read_until(b"stream-open\n", 10)
    return s


# --- ZeroMQ publishers ---------------------------------------------------------------------------


def test_gripcontrol_zmq_publisher_reaches_held_stream(proxy):
    ch = unique("zgc")
    # Discovers the PULL endpoint with get-zmq-uris on the command socket, then PUSHes tnetstrings.
    pub = GripPubControl({"control_zmq_uri": proxy.zmq_command_uri})
    try:
        with open_stream(proxy, ch) as s:
            pub.publish_http_stream(ch, "via-gripcontrol-zmq\n", blocking=True)
            body = s.read_until(b"via-gripcontrol-zmq\n", 10)
            assert body == b"stream-open\nvia-gripcontrol-zmq\n"
    finally:
        pub.close()


def test_pyzmq_push_json_tnetstring_and_bare(proxy, zctx):
    ch = unique("zpush")
    push = zsock(zctx, zmq.PUSH)
    push.connect(proxy.zmq_pull_uri)
    with open_stream(proxy, ch) as s:
        push.send(b"J" + json.dumps(stream_item(ch, "j\n")).encode())
        push.send(b"T" + tn(stream_item(ch, "t\n")))
        push.send(tn(stream_item(ch, "bare\n")))
        assert s.read_until(b"bare\n", 10) == b"stream-open\nj\nt\nbare\n"
    push.close()


@pytest.mark.pushpin_difference(
    "Pushpin 1.36's handler exits on a truncated tnetstring (T3:abc), taking the stack down"
)
def test_pyzmq_push_malformed_frames_are_skipped(proxy, zctx):
    if proxy.is_pushpin:
        pytest.skip("would kill Pushpin 1.36's handler and every later test")
    ch = unique("zbad")
    push = zsock(zctx, zmq.PUSH)
    push.connect(proxy.zmq_pull_uri)
    with open_stream(proxy, ch) as s:
        for bad in (b"T3:abc", b"5:abc,", b'J{"channel": oops', b"J[1]"):
            push.send(bad)
        push.send_multipart([b"J" + json.dumps(stream_item(ch, "leak\n")).encode(), b"x"])
        push.send(b"J" + json.dumps({"http-stream": {"content": "leak\n"}}).encode())
        push.send(b"J" + json.dumps(stream_item(ch, "after\n")).encode())
        assert s.read_until(b"after\n", 10) == b"stream-open\nafter\n"
    push.close()


def wait_subscription(xpub, ch, timeout=10.0):
    """Reads XPUB subscription messages until `\\x01<ch>` (other tests' channels are ignored)."""
    want = b"\x01" + ch.encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if xpub.poll(int(max(0.0, deadline - time.monotonic()) * 1000), zmq.POLLIN):
            if xpub.recv() == want:
                return
    raise AssertionError("no subscription to %r seen on the XPUB within %.0f s" % (ch, timeout))


def test_pyzmq_pub_to_sub_once_subscribed(proxy, zctx):
    ch = unique("zsub")
    xpub = zsock(zctx, zmq.XPUB)
    xpub.connect(proxy.zmq_sub_uri)
    with open_stream(proxy, ch) as s:
        wait_subscription(xpub, ch)
        # The topic frame names the channel; a `channel` inside the payload is ignored.
        payload = {"channel": "ignored", "formats": {"http-stream": {"content": "via-sub\n"}}}
        xpub.send_multipart([ch.encode(), b"J" + json.dumps(payload).encode()])
        assert s.read_until(b"via-sub\n", 10) == b"stream-open\nvia-sub\n"
    xpub.close()


def zrpc(ctx, uri, method, args=None):
    req = zsock(ctx, zmq.REQ, linger=0)
    req.connect(uri)
    try:
        msg = {b"id": b"e2e", b"method": method.encode()}
        if args is not None:
            msg[b"args"] = args
        req.send(tnetstring.dumps(msg))
        return tnetstring.loads(req.recv())
    finally:
        req.close()


def test_command_socket_publish_uris_and_unknown_method(proxy, zctx):
    ch = unique("zcmd")
    uris = zrpc(zctx, proxy.zmq_command_uri, "get-zmq-uris")
    assert uris[b"success"] is True, uris
    assert uris[b"value"][b"publish-pull"].decode() == proxy.zmq_pull_uri
    with open_stream(proxy, ch) as s:
        item = {b"channel": ch.encode(), b"formats": {b"http-stream": {b"content": b"cmd\n"}}}
        r = zrpc(zctx, proxy.zmq_command_uri, "publish", {b"items": [item]})
        assert r[b"success"] is True, r
        assert r[b"id"] == b"e2e"
        assert s.read_until(b"cmd\n", 10) == b"stream-open\ncmd\n"
    r = zrpc(zctx, proxy.zmq_command_uri, "no-such-method", {})
    assert r[b"success"] is False
    assert r[b"condition"] == b"method-not-found"


# --- publish CLIs ----------------------------------------------------------------------------------

CLIS = ["pushpin-publish", "gripd-publish"]
SPECS = ["http", "zmq"]


def cli_argv(proxy, tool, spec):
    if tool == "pushpin-publish":
        exe = shutil.which("pushpin-publish")
        if not exe:
            pytest.skip("pushpin-publish not installed (scripts/e2e installs Debian's pushpin)")
        argv = [exe]
    else:
        binary = gripd_binary()
        if not binary.is_file():
            pytest.skip("no gripd binary at %s (cargo build --bin gripd)" % binary)
        argv = [str(binary), "publish"]
    target = proxy.control_url if spec == "http" else proxy.zmq_pull_uri
    return argv, target


def run_cli(argv, target, *args):
    # --spec goes before the channel: -H takes several values, so it comes last.
    p = subprocess.run(
        argv + ["--spec", target] + list(args),
        capture_output=True,
        timeout=CLI_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 0, "%s failed (%s): %s %s" % (argv, p.returncode, p.stdout, p.stderr)
    assert b"Published" in p.stdout, p.stdout


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("tool", CLIS)
def test_cli_publishes_to_held_stream(proxy, tool, spec):
    argv, target = cli_argv(proxy, tool, spec)
    ch = unique("cli")
    with open_stream(proxy, ch) as s:
        run_cli(argv, target, ch, "hello")
        assert s.read_until(b"hello\n", 10) == b"stream-open\nhello\n"
        run_cli(argv, target, ch, "raw", "--no-eol")
        run_cli(argv, target, ch, "next")
        assert s.read_until(b"next\n", 10) == b"stream-open\nhello\nrawnext\n"
        run_cli(argv, target, ch, "--close")
        assert s.wait_end(10) == b"stream-open\nhello\nrawnext\n"


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("tool", CLIS)
def test_cli_answers_held_longpoll(proxy, tool, spec):
    argv, target = cli_argv(proxy, tool, spec)
    ch = unique("clilp")
    result = {}

    def run():
        import requests

        try:
            result["resp"] = requests.get(
                proxy.proxy_url + "/longpoll/%s/?timeout=20" % ch, timeout=(5, 30)
            )
        except Exception as e:  # noqa: BLE001
            result["error"] = e

    th = threading.Thread(target=run, daemon=True)
    th.start()
    # A hold is invisible to the client until answered: publish until it is.
    deadline = time.monotonic() + LONGPOLL_WAIT
    while th.is_alive() and time.monotonic() < deadline:
        run_cli(argv, target, ch, "lp-body", "--no-eol", "--code", "202", "-H", "X-Cli: yes")
        th.join(0.25)
    th.join(max(0.0, deadline - time.monotonic()))
    assert not th.is_alive(), "long-poll not answered within %.0f s" % LONGPOLL_WAIT
    assert "error" not in result, result
    r = result["resp"]
    assert r.status_code == 202
    assert r.text == "lp-body"
    assert r.headers["X-Cli"] == "yes"
