"""Start ``reconciler serve`` as a user would — ``python -m reconciler … serve`` in a
subprocess on a free loopback port — and talk to it with httpx.

``start_server`` polls ``/healthz`` until the server answers and fails with the
server's output if it exits first; :func:`stop_all` terminates, then kills, every
server a test started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from .conftest import CDN

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path
    token: str | None = None
    clients: list = field(default_factory=list)

    def client(self, token: str | None = "default", timeout: float = 60) -> httpx.Client:
        token = self.token if token == "default" else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        c = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self.clients.append(c)
        return c

    def output(self) -> str:
        return self.log.read_text("utf-8", errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_run(self, run_id: int, timeout: float = 30, until=lambda r: r["status"] != "planning") -> dict:
        c = self.client()
        deadline = time.monotonic() + timeout
        while True:
            r = c.get(f"/api/runs/{run_id}")
            assert r.status_code == 200, r.text
            run = r.json()
            if until(run):
                return run
            assert time.monotonic() < deadline, f"run {run_id} still {run['status']}\n{self.output()}"
            time.sleep(0.1)

    def wait_for(self, check, timeout: float = 30, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {what}\n{self.output()}"
            time.sleep(0.1)

    def runs(self, **params) -> list[dict]:
        r = self.client().get("/api/runs", params={"limit": 1000, **params})
        assert r.status_code == 200, r.text
        return r.json()["runs"]

    def stop(self, sig=signal.SIGTERM, timeout: float = 20) -> int:
        for c in self.clients:
            c.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


_started: list[Server] = []


def write_config(path: Path, source: str, serve: dict | None = None, safety: dict | None = None) -> Path:
    data = {"source": {"url": source}, "cdn_base_url": CDN,
            "serve": {"interval": 3600, "debounce": 0.5, "leader_retry": 0.5, **(serve or {})}}
    if safety:
        data["safety"] = safety
    path.write_text(yaml.safe_dump(data), "utf-8")
    return path


def start_server(
    tmp_path: Path,
    database_url: str,
    source: str,
    *args: str,
    serve: dict | None = None,
    safety: dict | None = None,
    env: dict | None = None,
    token: str | None = None,
    wait: bool = True,
) -> Server:
    port = free_port()
    config = write_config(tmp_path / f"serve-{port}.yaml", source, serve, safety)
    log = tmp_path / f"serve-{port}.log"
    full_env = {**os.environ, "DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1", **(env or {})}
    for name in ("RECONCILER_CONFIG", "RECONCILER_SOURCE", "RECONCILER_CDN_BASE_URL"):
        full_env.pop(name, None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "--config", str(config), "serve", "--listen", f"127.0.0.1:{port}", *args],
            stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=tmp_path,
        )
    server = Server(proc, f"http://127.0.0.1:{port}", log, token)
    _started.append(server)
    if wait:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"reconciler serve exited with {proc.returncode}:\n{server.output()}")
            try:
                if httpx.get(server.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"reconciler serve did not answer:\n{server.output()}"
            time.sleep(0.1)
    return server


def stop_all() -> None:
    while _started:
        _started.pop().stop()


@pytest.fixture
def serve(tmp_path, database_url):
    """``serve(source, *flags, serve={...}, safety={...}, env={...}, token=...)`` → a running Server."""

    def start(source, *args, **kwargs) -> Server:
        return start_server(tmp_path, database_url, str(source), *args, **kwargs)

    try:
        yield start
    finally:
        stop_all()
