"""A loopback HTTP forwarder that adds a fixed latency to every request.

It stands between boto3 and an S3 endpoint (moto's server in the benchmark) to model
the round trip of a real object store: every request waits ``latency`` seconds, then
is forwarded over a kept-alive connection (one per client connection) and the answer
is passed back unchanged.

Record / replay: moto lists a prefix by scanning and sorting *every* key of the bucket
under one interpreter lock (~50 ms of CPU per ``ListObjectsV2`` at 20k keys), so a
benchmark against it measures moto, not the client. With ``record=True`` the proxy
remembers each answer by method and path+query (the signature headers are not part of
the key); with ``replay=True`` it answers a remembered request from memory, after the
same fixed latency, without asking the upstream. A recorded listing then replays as a
server whose only cost is the latency (see bench/run.py).
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}


class LatencyProxy:
    def __init__(self, upstream: str, latency: float = 0.02, host: str = "127.0.0.1", port: int = 0) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.latency = latency
        self.record = False
        self.replay = False
        self.cache: dict[tuple[str, str], tuple[int, list[tuple[str, str]], bytes]] = {}
        self.requests = 0
        self.forwarded = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's
                # algorithm and the client's delayed ACK add ~40 ms to every answer.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _upstream(self) -> http.client.HTTPConnection:
                conn = getattr(self, "_conn", None)
                if conn is None:
                    conn = self._conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=120)
                    conn.connect()
                    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return conn

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    proxy.requests += 1
                if proxy.latency > 0:
                    time.sleep(proxy.latency)
                key = (self.command, self.path)
                hit = proxy.cache.get(key) if proxy.replay and self.command in ("GET", "HEAD") else None
                if hit is None:
                    status, headers, data = self._forward(body)
                    if proxy.record and self.command in ("GET", "HEAD") and status == 200:
                        proxy.cache[key] = (status, headers, data)
                else:
                    status, headers, data = hit
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _forward(self, body: bytes):
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                for attempt in (1, 2):
                    conn = self._upstream()
                    try:
                        conn.request(self.command, self.path, body=body or None, headers=headers)
                        resp = conn.getresponse()
                        data = resp.read()
                        break
                    except (http.client.HTTPException, OSError):
                        conn.close()
                        self._conn = None
                        if attempt == 2:
                            raise
                with proxy._lock:
                    proxy.forwarded += 1
                out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP]
                return resp.status, out, data

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="latency-proxy", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "LatencyProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset_counters(self) -> None:
        with self._lock:
            self.requests = 0
            self.forwarded = 0
