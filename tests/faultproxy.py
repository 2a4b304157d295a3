"""A small fault-injecting HTTP proxy for tests: boto3 → proxy → moto.

It listens on 127.0.0.1 only, forwards every request unchanged to an upstream HTTP
endpoint (the moto server) and returns the upstream's answer — unless its *policy*
decides to inject a fault for that request:

``"pass"``      forward the request and relay the answer
``"slowdown"``  answer ``503 Slow Down`` with S3's XML error body (code ``SlowDown``)
``"internal"``  answer ``500 Internal Server Error`` (code ``InternalError``)
``"drop"``      close the connection without any answer

A policy is a callable ``policy(n, method, path) -> action`` where ``n`` counts the
requests the proxy has seen (from 0). Helpers build the usual ones: :func:`always`,
:func:`cycle`, :func:`first_attempt_fails`, :func:`seeded`. The proxy counts what it
did in ``proxy.counts`` (a Counter of actions) so a test can show faults happened.

A *rewrite* ``rewrite(method, path, body) -> body`` changes the upstream's successful
answers on their way back, as another server might have written them:
:func:`reorder_listing` writes a ``ListObjectsV2`` page's elements in another order. The
paths of the answers it changed are in ``proxy.rewritten``.

Plain standard library: ``http.server.ThreadingHTTPServer`` and ``http.client``.
"""

from __future__ import annotations

import http.client
import itertools
import random
import re
import socket
import threading
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Sequence
from urllib.parse import urlsplit

Policy = Callable[[int, str, str], str]
Rewrite = Callable[[str, str, bytes], bytes]
ACTIONS = ("pass", "slowdown", "internal", "drop")

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
}

_ERRORS = {
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "internal": (500, "Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
}


def s3_error_body(code: str, message: str) -> bytes:
    request_id = uuid.uuid4().hex[:16].upper()
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{request_id}</RequestId><HostId>faultproxy</HostId></Error>"
    ).encode()


# --------------------------------------------------------------------------- policies


def always(action: str) -> Policy:
    """Every request gets ``action``."""
    assert action in ACTIONS
    return lambda n, method, path: action


def cycle(actions: Sequence[str]) -> Policy:
    """Request ``n`` gets ``actions[n % len(actions)]``."""
    assert all(a in ACTIONS for a in actions)
    actions = list(actions)
    return lambda n, method, path: actions[n % len(actions)]


def first_attempt_fails(faults: Sequence[str] = ("slowdown", "drop")) -> Policy:
    """The first attempt of every distinct request (method + path with query) fails,
    with the faults taken in turn; its retry passes. Deterministic whatever the order
    in which concurrent requests arrive: every page of a listing is faulted once."""
    assert all(a in ACTIONS and a != "pass" for a in faults)
    seen: set[tuple[str, str]] = set()
    turn = itertools.cycle(faults)
    lock = threading.Lock()

    def policy(n: int, method: str, path: str) -> str:
        with lock:
            if (method, path) in seen:
                return "pass"
            seen.add((method, path))
            return next(turn)

    return policy


def seeded(seed: int, rates: dict[str, float]) -> Policy:
    """Each request gets a fault with the given probabilities (a seeded RNG)."""
    assert all(a in ACTIONS and a != "pass" for a in rates) and sum(rates.values()) < 1
    rng = random.Random(seed)
    lock = threading.Lock()

    def policy(n: int, method: str, path: str) -> str:
        with lock:
            x = rng.random()
        for action, rate in rates.items():
            if x < rate:
                return action
            x -= rate
        return "pass"

    return policy


# --------------------------------------------------------------------------- rewrites

# One element of a page: self-closing, or up to its own end tag (S3's elements do not
# nest in one of the same name).
_ELEMENT = re.compile(rb"<(\w+)/>|<(\w+)>.*?</\2>", re.S)


def reorder_listing(order: Callable[[list[bytes]], list[bytes]]) -> Rewrite:
    """A rewrite that writes the top-level elements of every ``ListBucketResult`` in the
    order ``order`` gives them (a list of the elements' texts in, a list out)."""

    def rewrite(method: str, path: str, body: bytes) -> bytes:
        if method != "GET" or b"<ListBucketResult" not in body[:512]:
            return body
        start = body.index(b">", body.index(b"<ListBucketResult")) + 1
        end = body.rindex(b"</ListBucketResult>")
        elements = [m.group(0) for m in _ELEMENT.finditer(body, start, end)]
        assert b"".join(elements) == body[start:end], "a page with text between its elements"
        return body[:start] + b"".join(order(elements)) + body[end:]

    return rewrite


def prefixes_first(elements: list[bytes]) -> list[bytes]:
    return sorted(elements, key=lambda e: not e.startswith(b"<CommonPrefixes>"))


def in_key_order(elements: list[bytes]) -> list[bytes]:
    """Objects and prefixes merged in key order, as a server that walks one sorted
    namespace writes them; the other fields first."""

    def listed(e: bytes) -> bool:
        return e.startswith((b"<Contents>", b"<CommonPrefixes>"))

    def name(e: bytes) -> bytes:
        return re.search(rb"<(?:Key|Prefix)>([^<]*)<", e).group(1)

    return [e for e in elements if not listed(e)] + sorted(filter(listed, elements), key=name)


# --------------------------------------------------------------------------- proxy


class FaultProxy:
    """``with FaultProxy(upstream, policy) as proxy: ... proxy.url ...``"""

    def __init__(self, upstream: str, policy: Policy | None = None, rewrite: Rewrite | None = None) -> None:
        parts = urlsplit(upstream)
        assert parts.scheme == "http" and parts.hostname, upstream
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.policy: Policy = policy or always("pass")
        self.rewrite = rewrite
        self.rewritten: list[str] = []  # paths of the answers the rewrite changed
        self.counts: Counter = Counter()
        self.log: list[tuple[str, str, str]] = []  # (action, method, path)
        self._n = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> "FaultProxy":
        proxy = self

        class Handler(_Handler):
            owner = proxy

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the proxy first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> int:
        return sum(self.counts.values())

    @property
    def faults(self) -> int:
        return self.requests - self.counts["pass"]

    # -- per request

    def _decide(self, method: str, path: str) -> str:
        with self._lock:
            n = self._n
            self._n += 1
        action = self.policy(n, method, path)
        assert action in ACTIONS, action
        with self._lock:
            self.counts[action] += 1
            self.log.append((action, method, path))
        return action


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as boto3's connection pool expects

    def log_message(self, format, *args) -> None:  # quiet
        pass

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        action = self.owner._decide(self.command, self.path)
        if action == "drop":
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if action in _ERRORS:
            status, reason, code, message = _ERRORS[action]
            payload = s3_error_body(code, message)
            self.send_response(status, reason)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(self.owner.upstream_host, self.owner.upstream_port, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            resp = upstream.getresponse()
            payload = resp.read()
            if self.owner.rewrite is not None and resp.status == 200:
                original, payload = payload, self.owner.rewrite(self.command, self.path, payload)
                if payload != original:
                    with self.owner._lock:
                        self.owner.rewritten.append(self.path)
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in _HOP_BY_HOP and k.lower() not in ("content-length", "date", "server"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
        finally:
            upstream.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle
