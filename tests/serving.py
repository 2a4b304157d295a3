"""Start ``reconciler serve`` as a user would — ``python -m reconciler … serve`` in a
subprocess — and talk to it with httpx.

The server binds port 0 (the system picks a free one, which no other process can take
in between) and prints the address it listens on; ``start_server`` reads that line, and
without configured tokens the token the server made for itself from the file that line
names, then polls ``/healthz`` until the server answers. It fails with the server's
output if the server exits first. :func:`stop_all` terminates, then kills, every server
a test started.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from reconciler.store.db import open_database
from reconciler.store.migrations import migrate

from .conftest import CDN, PRODUCTS, new_database, sql_on, wait_until

ROOT = Path(__file__).resolve().parent.parent


LISTENING = re.compile(r"^listening on (http://\S+) \((.*)\)$", re.M)
TOKEN_FILE = re.compile(r"this process's token is in (\S+)$")


@dataclass
class Server:
    proc: subprocess.Popen
    log: Path
    cwd: Path
    token: str | None = None
    url: str = ""
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
        return wait_until(check, timeout, what, detail=lambda: "\n" + self.output(), every=0.1)

    def runs(self, **params) -> list[dict]:
        r = self.client().get("/api/runs", params={"limit": 1000, **params})
        assert r.status_code == 200, r.text
        return r.json()["runs"]

    def wait_listening(self, timeout: float = 30) -> None:
        """The address from the server's "listening on" line, and its minted token
        when no token was configured."""
        deadline = time.monotonic() + timeout
        while not (m := LISTENING.search(self.output())):
            if self.proc.poll() is not None:
                raise AssertionError(f"reconciler serve exited with {self.proc.returncode}:\n{self.output()}")
            assert time.monotonic() < deadline, f"reconciler serve did not start listening:\n{self.output()}"
            time.sleep(0.05)
        self.url = m.group(1)
        minted = TOKEN_FILE.search(m.group(2))
        if self.token is None and minted:
            self.token = (self.cwd / minted.group(1)).read_text("ascii").strip()

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
_numbers = itertools.count(1)


def write_config(path: Path, source: str, serve: dict | None = None, safety: dict | None = None,
                 notify: list | None = None, catalogue: str | None = None) -> Path:
    data = {"source": {"url": source}, "cdn_base_url": CDN,
            "serve": {"interval": 3600, "debounce": 0.5, "leader_retry": 0.5, **(serve or {})}}
    if safety:
        data["safety"] = safety
    if notify:
        data["notify"] = notify
    if catalogue:
        data["catalogue"] = catalogue
    path.write_text(yaml.safe_dump(data), "utf-8")
    return path


def start_server(
    tmp_path: Path,
    database_url: str,
    source: str,
    *args: str,
    serve: dict | None = None,
    safety: dict | None = None,
    notify: list | None = None,
    env: dict | None = None,
    token: str | None = None,
    listen: str = "127.0.0.1:0",
    catalogue: str | None = None,
) -> Server:
    n = next(_numbers)
    config = write_config(tmp_path / f"serve-{n}.yaml", source, serve, safety, notify, catalogue)
    log = tmp_path / f"serve-{n}.log"
    full_env = {**os.environ, "DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1", **(env or {})}
    for name in ("RECONCILER_CONFIG", "RECONCILER_SOURCE", "RECONCILER_CDN_BASE_URL"):
        full_env.pop(name, None)
    if not env or "RECONCILER_API_TOKENS" not in env:
        full_env.pop("RECONCILER_API_TOKENS", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "--config", str(config), "serve", "--listen", listen, *args],
            stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=tmp_path,
        )
    server = Server(proc, log, tmp_path, token)
    _started.append(server)
    server.wait_listening()
    server.wait_for(lambda: _healthy(server.url), what="/healthz")
    return server


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def stop_all() -> None:
    while _started:
        _started.pop().stop()


@pytest.fixture
def serve(tmp_path, database_url):
    """``serve(source, *flags, serve={...}, safety={...}, notify=[...], env={...}, token=...)`` → a
    running Server on the test's creators database; ``database=URL, catalogue=NAME`` for another
    (:func:`shop_database_url`)."""

    def start(source, *args, database: str | None = None, **kwargs) -> Server:
        return start_server(tmp_path, database or database_url, str(source), *args, **kwargs)

    try:
        yield start
    finally:
        stop_all()


SHOP = ROOT / "examples" / "catalogues" / "product-images"
OLD = "products/p7/250g/hero-card/old.jpg"  # an image row the example bucket has no file for


@pytest.fixture
def shop_database_url(pg_admin_url):
    """A database as the shop platform made it — its tables and rows, from the example's
    ``platform.sql`` (products p42 and p7, variants p42/500g, p42/1kg and p7/250g) —
    with the product-images catalogue installed (``reconciler init``)."""
    with new_database(pg_admin_url, schema=False) as url:
        with sql_on(url) as run:
            run((SHOP / "platform.sql").read_text("utf-8"))
        with open_database(url) as db:
            migrate(db, PRODUCTS)
        yield url


def shop_bucket(folder: Path) -> Path:
    """A copy of the product-images example's bucket folder (tests change theirs)."""
    shutil.copytree(SHOP / "bucket", folder)
    return folder


def image_row(url: str, key: str) -> None:
    """A product image row at ``key`` (``products/{product}/{weight}/{type}/{file}``)."""
    product, weight, kind = key.split("/")[1:4]
    with sql_on(url) as sql:
        sql("INSERT INTO product_images (variant_id, product_id, variant_weight, image_type, file_name, image_url) "
            "SELECT id, product_id, weight, %s, %s, 'https://cdn.example.test/' || %s FROM product_variants "
            "WHERE product_id = %s AND weight = %s", (kind, key, key, product, weight))
