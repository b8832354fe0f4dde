"""Helpers for the end-to-end suite: an SSE client with bounded waits, a raw HTTP stream reader, and
small utilities. Every wait here has an explicit timeout."""
import queue
import socket
import threading
import time
import uuid

import requests
import sseclient

CONNECT_TIMEOUT = 5.0
# Per-read socket timeout for held responses: longer than any idle gap a test allows (keep-alives are
# 20 s). Tests bound their own waits with queue timeouts; this only stops a forgotten reader thread.
READ_TIMEOUT = 60.0

CLOSED = object()


def unique(prefix):
    """A channel or user name no other test (or earlier run against the same proxy) uses."""
    return "%s-%s" % (prefix, uuid.uuid4().hex[:10])


def _socket_of(resp):
    """The socket under a streamed requests response (to shut it down from another thread)."""
    try:
        return resp.raw.connection.sock
    except AttributeError:
        return None


class _HeldResponse:
    """A streamed GET read on a background thread by the subclass's `_run`; `close` ends it
    from the client side (shutting the socket down so the reader wakes)."""

    def __init__(self, url, headers=None, cookies=None, params=None):
        self.url = url
        self.error = None
        self._closing = False
        self.session = requests.Session()
        if cookies:
            self.session.cookies.update(cookies)
        self.resp = self.session.get(
            url,
            headers=headers or {},
            params=params,
            stream=True,
            timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
        )
        self._sock = _socket_of(self.resp)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        raise NotImplementedError

    def close(self):
        self._closing = True
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            self.resp.close()
        except Exception:  # noqa: BLE001
            pass
        self.session.close()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SSEStream(_HeldResponse):
    """An SSE connection read by sseclient-py on a background thread.

    Events land in a queue; `next_event(timeout)` and `collect(n, timeout)` wait with explicit bounds.
    When the server ends the response, a CLOSED marker is queued (`wait_closed`).
    """

    def __init__(self, url, headers=None, cookies=None, params=None):
        self.events = queue.Queue()
        self.closed_by_server = threading.Event()
        super().__init__(url, headers=headers, cookies=cookies, params=params)
        self._thread.start()

    @property
    def status_code(self):
        return self.resp.status_code

    @property
    def headers(self):
        return self.resp.headers

    def _run(self):
        try:
            client = sseclient.SSEClient(self.resp.iter_content(chunk_size=None))
            for ev in client.events():
                self.events.put((time.monotonic(), ev))
        except Exception as e:  # noqa: BLE001 - reported to the test through wait_closed/next_event
            if not self._closing:
                self.error = e
        finally:
            self.closed_by_server.set()
            self.events.put((time.monotonic(), CLOSED))

    def next_event(self, timeout, skip_keepalive=True):
        """The next event (sseclient Event), or AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("no SSE event within %.1f s from %s" % (timeout, self.url))
            try:
                _, ev = self.events.get(timeout=remaining)
            except queue.Empty:
                raise AssertionError(
                    "no SSE event within %.1f s from %s" % (timeout, self.url)
                ) from None
            if ev is CLOSED:
                self.events.put((time.monotonic(), CLOSED))
                raise AssertionError("stream %s closed (error: %r)" % (self.url, self.error))
            if skip_keepalive and ev.event == "keep-alive":
                continue
            return ev

    def next_timed(self, timeout):
        """(monotonic arrival time, event) including keep-alives."""
        try:
            t, ev = self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no SSE event within %.1f s from %s" % (timeout, self.url)) from None
        if ev is CLOSED:
            self.events.put((time.monotonic(), CLOSED))
            raise AssertionError("stream %s closed (error: %r)" % (self.url, self.error))
        return t, ev

    def expect_open(self, timeout=10):
        assert self.status_code == 200, "SSE %s answered %s: %r" % (
            self.url,
            self.status_code,
            self.resp.content[:500] if not self.resp.headers.get("Grip-Hold") else "",
        )
        ev = self.next_event(timeout)
        assert ev.event == "stream-open", "first event is %s %r, not stream-open" % (
            ev.event,
            ev.data,
        )
        return ev

    def collect(self, n, timeout):
        """Exactly the next `n` non-keep-alive events, all within `timeout` seconds overall."""
        deadline = time.monotonic() + timeout
        out = []
        while len(out) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    "got %d of %d SSE events within %.1f s from %s: last ids %r"
                    % (len(out), n, timeout, self.url, [e.id for e in out[-5:]])
                )
            out.append(self.next_event(remaining))
        return out

    def expect_quiet(self, seconds):
        """Assert no non-keep-alive event arrives for `seconds` (measuring an absence)."""
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                _, ev = self.events.get(timeout=remaining)
            except queue.Empty:
                return
            if ev is CLOSED:
                self.events.put((time.monotonic(), CLOSED))
                return
            if ev.event == "keep-alive":
                continue
            raise AssertionError("unexpected SSE event %s id=%s data=%r" % (ev.event, ev.id, ev.data))

    def wait_closed(self, timeout):
        if not self.closed_by_server.wait(timeout):
            raise AssertionError("stream %s still open after %.1f s" % (self.url, timeout))


class RawStream(_HeldResponse):
    """A held HTTP response read as raw bytes on a background thread (for django-grip stream holds)."""

    def __init__(self, url, headers=None):
        self.chunks = queue.Queue()
        self.buf = b""
        self.ended = threading.Event()
        super().__init__(url, headers=headers)
        self._thread.start()

    def _run(self):
        try:
            for chunk in self.resp.iter_content(chunk_size=None):
                self.chunks.put((time.monotonic(), chunk))
        except Exception as e:  # noqa: BLE001
            if not self._closing:
                self.error = e
        finally:
            self.ended.set()
            self.chunks.put((time.monotonic(), None))

    def read_until(self, needle, timeout):
        """Wait until the accumulated body contains `needle`; returns the whole body so far."""
        deadline = time.monotonic() + timeout
        while needle not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    "%r not received within %.1f s from %s; got %r"
                    % (needle, timeout, self.url, self.buf[-300:])
                )
            try:
                _, chunk = self.chunks.get(timeout=remaining)
            except queue.Empty:
                continue
            if chunk is None:
                self.chunks.put((time.monotonic(), None))
                raise AssertionError(
                    "stream %s ended before %r; got %r (error %r)"
                    % (self.url, needle, self.buf[-300:], self.error)
                )
            self.buf += chunk
        return self.buf

    def next_chunk_timed(self, timeout):
        try:
            t, chunk = self.chunks.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no data within %.1f s from %s" % (timeout, self.url)) from None
        if chunk is None:
            self.chunks.put((time.monotonic(), None))
            raise AssertionError("stream %s ended" % self.url)
        self.buf += chunk
        return t, chunk

    def wait_end(self, timeout):
        """Wait for the response to end; returns the full body."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("stream %s still open after %.1f s" % (self.url, timeout))
            try:
                _, chunk = self.chunks.get(timeout=remaining)
            except queue.Empty:
                continue
            if chunk is None:
                self.chunks.put((time.monotonic(), None))
                return self.buf
            self.buf += chunk


def parse_es_id(event_id):
    """django-eventstream's composite id `a:1,b:2` → {"a": "1", "b": "2"}."""
    out = {}
    for part in event_id.split(","):
        ch, _, n = part.rpartition(":")
        out[ch] = n
    return out
