"""Issue 3: GRIP core through the proxy, with django-grip holds in a real gunicorn app and gripcontrol
publishing to the control port (wire-formats.md §8, §9; grip-reference §1, §3)."""
import json
import socket
import threading
import time

import pytest
import requests
from gripcontrol import HttpResponseFormat, HttpStreamFormat
from pubcontrol import Item

from support import RawStream, unique

LONGPOLL_WAIT = 15.0  # long-poll answers come within the hold timeout (5 s here) + the 1 s retry


def grip_headers(headers):
    return sorted(k for k in headers if k.lower().startswith("grip-"))


# --- pass-through ---------------------------------------------------------------------------------


def test_plain_response_passes_through_and_origin_verifies_grip_sig(proxy):
    r = requests.get(
        proxy.proxy_url + "/plain/?a=1&b=%20x",
        headers={"X-E2E": "hello", "Last-Event-ID": "abc:7"},
        timeout=10,
    )
    assert r.status_code == 200
    assert r.headers["X-Plain"] == "yes"
    assert r.headers["Content-Type"] == "application/json"
    seen = r.json()
    assert seen["path"] == "/plain/"
    assert seen["query"] == "a=1&b=%20x"
    # django-grip verified the proxy's Grip-Sig with the shared key (GRIP_URL ?verify-key=...).
    assert seen["proxied"] is True, seen
    assert seen["signed"] is True, seen
    assert seen["headers"]["HTTP_X_E2E"] == "hello"
    assert seen["headers"]["HTTP_LAST_EVENT_ID"] == "abc:7"


def test_post_body_reaches_origin(proxy):
    r = requests.post(proxy.proxy_url + "/plain/", data=b"x" * 5000, timeout=10)
    assert r.status_code == 200
    assert r.json()["body"] == "x" * 5000


# --- stream holds ----------------------------------------------------------------------------------


def test_gripcontrol_publish_reaches_held_stream_and_close_ends_it(proxy):
    ch = unique("st")
    pub = proxy.grip_pub()
    with RawStream(proxy.proxy_url + "/stream/%s/" % ch) as s:
        assert s.resp.status_code == 200
        assert s.resp.headers["X-Stream"] == "open"
        assert s.resp.headers["Content-Type"].startswith("text/plain")
        assert grip_headers(s.resp.headers) == []
        assert s.read_until(b"stream-open\n", 10) == b"stream-open\n"

        pub.publish_http_stream(ch, "chunk-1\n", blocking=True)
        assert s.read_until(b"chunk-1\n", 10) == b"stream-open\nchunk-1\n"

        pub.publish(ch, Item(HttpStreamFormat(close=True)), blocking=True)
        body = s.wait_end(10)
        assert body == b"stream-open\nchunk-1\n"
        assert s.error is None, "stream did not end cleanly: %r" % (s.error,)


def test_two_streams_on_one_channel_both_receive_in_order(proxy):
    ch = unique("st2")
    pub = proxy.grip_pub()
    with RawStream(proxy.proxy_url + "/stream/%s/" % ch) as a, RawStream(
        proxy.proxy_url + "/stream/%s/" % ch
    ) as b:
        a.read_until(b"stream-open\n", 10)
        b.read_until(b"stream-open\n", 10)
        expected = b"stream-open\n"
        for i in range(20):
            pub.publish_http_stream(ch, "m%02d\n" % i, blocking=True)
            expected += b"m%02d\n" % i
        assert a.read_until(b"m19\n", 10) == expected
        assert b.read_until(b"m19\n", 10) == expected


def test_keep_alive_data_arrives_on_idle_stream(proxy):
    ch = unique("ka")
    with RawStream(proxy.proxy_url + "/stream/%s/?ka=2" % ch) as s:
        s.read_until(b"stream-open\n", 10)
        start = time.monotonic()
        gaps = []
        prev = start
        for _ in range(2):
            t, chunk = s.next_chunk_timed(5)
            assert chunk == b"ka\n"
            gaps.append(t - prev)
            prev = t
        # Idle keep-alive after `timeout` s, minus Pushpin's random 0-1 s jitter.
        for gap in gaps:
            assert 0.8 <= gap <= 2.8, gaps


# --- long-poll holds -----------------------------------------------------------------------------


def _longpoll_in_thread(url):
    result = {}

    def run():
        t0 = time.monotonic()
        try:
            result["resp"] = requests.get(url, timeout=(5, 30))
        except Exception as e:  # noqa: BLE001
            result["error"] = e
        result["elapsed"] = time.monotonic() - t0

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th, result


def _publish_until_answered(th, publish, timeout=LONGPOLL_WAIT):
    """Publish repeatedly until the held long-poll answers: a hold is invisible to the client until
    then, and Pushpin drops publishes that arrive while it re-sends a fresh hold to the origin."""
    deadline = time.monotonic() + timeout
    while th.is_alive() and time.monotonic() < deadline:
        publish()
        th.join(0.25)
    th.join(max(0.0, deadline - time.monotonic()))
    assert not th.is_alive(), "long-poll not answered within %.0f s of publishing" % timeout


def test_gripcontrol_publish_answers_held_longpoll_with_inherited_headers(proxy):
    ch = unique("lp")
    pub = proxy.grip_pub()
    th, result = _longpoll_in_thread(proxy.proxy_url + "/longpoll/%s/?timeout=20" % ch)
    _publish_until_answered(
        th,
        lambda: pub.publish_http_response(
            ch, HttpResponseFormat(body="done\n", headers={"X-Pub": "1"}), blocking=True
        ),
    )
    assert "error" not in result, result
    r = result["resp"]
    assert r.status_code == 200
    assert r.text == "done\n"
    # The published response inherits the hold response's headers...
    assert r.headers["X-Longpoll"] == "timeout"
    assert r.headers["Content-Type"].startswith("text/plain")
    assert r.headers["X-Pub"] == "1"
    assert grip_headers(r.headers) == []
    assert r.elapsed.total_seconds() < 15


def test_published_longpoll_headers_override_origin_headers(proxy):
    ch = unique("lpo")
    pub = proxy.grip_pub()
    th, result = _longpoll_in_thread(proxy.proxy_url + "/longpoll/%s/?timeout=20" % ch)
    fmt = HttpResponseFormat(
        code=202,
        headers={"X-Longpoll": "published", "Content-Type": "application/json"},
        body='{"ok": true}\n',
    )
    _publish_until_answered(th, lambda: pub.publish_http_response(ch, fmt, blocking=True))
    r = result["resp"]
    assert r.status_code == 202
    assert r.headers["X-Longpoll"] == "published"
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {"ok": True}
    assert grip_headers(r.headers) == []


def test_longpoll_times_out_with_origin_response(proxy):
    ch = unique("lpt")
    t0 = time.monotonic()
    r = requests.get(proxy.proxy_url + "/longpoll/%s/?timeout=5" % ch, timeout=(5, 30))
    elapsed = time.monotonic() - t0
    assert r.status_code == 200
    assert r.text == "longpoll-timeout channel=%s\n" % ch
    assert r.headers["X-Longpoll"] == "timeout"
    assert r.headers["Content-Type"].startswith("text/plain")
    assert grip_headers(r.headers) == []
    # Grip-Timeout: 5 (Pushpin's minimum); Pushpin re-sends a fresh hold ~1 s after the channel's
    # first subscription, which restarts the timer: ~6.1 s measured.
    assert 4.5 <= elapsed <= 8.5, elapsed


# --- slow readers --------------------------------------------------------------------------------


def _stalled_stream_socket(proxy, path):
    """A client with a tiny receive buffer that reads the response head and initial body (so its hold
    is known to be set up) and then never reads again."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    s.settimeout(10)
    s.connect(("127.0.0.1", proxy.client_port))
    s.sendall(
        ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (path, proxy.client_port)).encode()
    )
    got = b""
    while b"stream-open\n" not in got:
        chunk = s.recv(4096)
        assert chunk, "stalled client's stream ended early: %r" % got
        got += chunk
    assert got.startswith(b"HTTP/1.1 200"), got[:200]
    return s


def test_client_that_never_reads_does_not_delay_others(proxy):
    ch = unique("slow")
    pub = proxy.grip_pub()
    stalled = [_stalled_stream_socket(proxy, "/stream/%s/" % ch) for _ in range(3)]
    try:
        with RawStream(proxy.proxy_url + "/stream/%s/" % ch) as fast:
            fast.read_until(b"stream-open\n", 10)
            pub.publish_http_stream(ch, "warmup\n", blocking=True)
            fast.read_until(b"warmup\n", 10)

            payload = "x" * 65536
            n = 60  # ~4 MB per stalled client, far beyond socket buffers
            t0 = time.monotonic()
            for i in range(n):
                pub.publish_http_stream(ch, "%s %04d\n" % (payload, i), blocking=True)
                # Every message reaches the reading client promptly, whatever the others do.
                fast.read_until(b"%s %04d\n" % (payload.encode(), i), 5)
            total = time.monotonic() - t0
            assert total < 20, "delivery to the reading client took %.1f s" % total

            # And the proxy still serves new requests.
            r = requests.get(proxy.proxy_url + "/plain/", timeout=10)
            assert r.status_code == 200
    finally:
        for s in stalled:
            s.close()


# --- bad publish input ---------------------------------------------------------------------------


def _bad_bodies(ch):
    good_item = {"channel": ch, "http-stream": {"content": "BAD-good-item-in-bad-batch\n"}}
    return {
        "invalid-json": (b'{"items": [', ["json"]),
        "not-an-object": (json.dumps([1, 2]).encode(), ["format"]),
        "no-items": (json.dumps({"foo": 1}).encode(), ["items"]),
        "items-wrong-type": (json.dumps({"items": "nope"}).encode(), ["items"]),
        "channel-wrong-type": (
            json.dumps({"items": [{"channel": 5, "http-stream": {"content": "BAD\n"}}]}).encode(),
            ["channel"],
        ),
        "content-wrong-type": (
            json.dumps({"items": [{"channel": ch, "http-stream": {"content": 5}}]}).encode(),
            ["content"],
        ),
        "meta-not-string": (
            json.dumps(
                {"items": [{"channel": ch, "meta": {"a": 1}, "http-stream": {"content": "BAD\n"}}]}
            ).encode(),
            ["meta"],
        ),
        "unknown-format-only": (
            json.dumps({"items": [{"channel": ch, "bogus-format": {"content": "BAD\n"}}]}).encode(),
            ["format"],
        ),
        "one-bad-item-in-batch": (
            json.dumps(
                {"items": [good_item, {"channel": ch, "http-stream": {"content": ["BAD"]}}]}
            ).encode(),
            ["content"],
        ),
        "oversized": (
            json.dumps(
                {"items": [{"channel": ch, "http-stream": {"content": "B" * 1_100_000}}]}
            ).encode(),
            ["large"],
        ),
    }


@pytest.fixture
def held_stream_channel(proxy):
    ch = unique("bad")
    with RawStream(proxy.proxy_url + "/stream/%s/" % ch) as s:
        s.read_until(b"stream-open\n", 10)
        yield ch, s


def _assert_nothing_delivered_then_good(proxy, ch, s):
    proxy.grip_pub().publish_http_stream(ch, "GOOD\n", blocking=True)
    assert s.read_until(b"GOOD\n", 10) == b"stream-open\nGOOD\n"
    r = requests.get(proxy.proxy_url + "/plain/", timeout=10)
    assert r.status_code == 200


@pytest.mark.parametrize(
    "case",
    [
        "invalid-json",
        "not-an-object",
        "no-items",
        "items-wrong-type",
        "channel-wrong-type",
        "content-wrong-type",
        "meta-not-string",
        "unknown-format-only",
        "one-bad-item-in-batch",
        "oversized",
    ],
)
def test_bad_publish_is_rejected_and_nothing_is_delivered(proxy, held_stream_channel, case):
    ch, s = held_stream_channel
    body, words = _bad_bodies(ch)[case]
    r = proxy.publish_raw(body)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    text = r.text.strip()
    assert text, "empty error message"
    assert any(w in text.lower() for w in words), "message %r does not mention %r" % (text, words)
    _assert_nothing_delivered_then_good(proxy, ch, s)


@pytest.mark.pushpin_difference(
    "Pushpin 1.36 answers an unknown action with 400 'Invalid format: ' and no detail"
)
def test_unknown_action_is_rejected_with_a_clear_message(proxy, held_stream_channel):
    ch, s = held_stream_channel
    body = json.dumps({"items": [{"channel": ch, "http-stream": {"action": "explode"}}]}).encode()
    r = proxy.publish_raw(body)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    if proxy.is_pushpin:
        pytest.xfail("Pushpin 1.36: %r" % r.text)
    assert "action" in r.text.lower(), r.text
    _assert_nothing_delivered_then_good(proxy, ch, s)


def test_control_port_answers_get_and_rejects_get_publish(proxy):
    r = requests.get(proxy.control_url + "/", timeout=10)
    assert r.status_code == 200
    r = requests.get(proxy.control_url + "/publish/", timeout=10)
    assert r.status_code == 405
    assert "POST" in r.headers.get("Allow", "")
    r = proxy.publish_raw(
        json.dumps({"items": [{"channel": unique("nobody"), "http-stream": {"content": "x"}}]}),
        headers={"Accept": "application/json"},
    )
    assert r.status_code == 200
    assert r.json() == {"message": "Published"}
