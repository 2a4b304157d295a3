"""Migrations: the numbered SQL files of ``sql/`` (the package's ``reconciler.sql``),
applied in one transaction under the apply lock, each recorded with its checksum, and the
catalogue installed after them (:mod:`.install`)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import psycopg2

from ..errors import DatabaseError
from .db import LOCK_KEY, Database


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

        return Path(__file__).resolve().parents[2] / "sql"


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
    """Apply pending migrations and install the catalogue (:func:`reconciler.store.install.install`)
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
                f"reconciler version that applied it (see \"A changed migration\" in docs/troubleshooting.md)"
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