"""Schema migrations on the real PostgreSQL, and adoption of a platform database."""

from __future__ import annotations

from pathlib import Path

import psycopg2
import pytest

from reconciler import commands
from reconciler.store import migrations as migrations_module
from reconciler.store.current import database_identity
from reconciler.store.migrations import check_schema, migrate, migration_files
from reconciler.store.db import open_database, redact_url
from reconciler.errors import DatabaseError
from reconciler.objects import ObjectInfo

from .conftest import CDN, CREATORS, folder_bucket

PLATFORM_SCHEMA = (Path(__file__).parent / "data" / "platform-schema.sql").read_text()


def test_migrations_are_numbered_and_shipped():
    files = migration_files()
    assert [f.version for f in files] == list(range(1, len(files) + 1))
    assert files[0].name == "0001_platform_tables.sql"


def test_init_adopts_an_existing_platform_database_without_losing_a_row(empty_database_url, sql_on):
    run = sql_on(empty_database_url)
    run(PLATFORM_SCHEMA)
    run("INSERT INTO whitelabel_models (folder_name, status) VALUES ('Alice', 'live'), ('Legacy', 'archived')")
    run("INSERT INTO whitelabel_posts (whitelabel_model_id, folder_name, title, media_cdns) "
        "VALUES (1, 'Beach', 'Beach', '{\"images\": [], \"videos\": []}')")
    run("INSERT INTO whitelabel_media (whitelabel_post_id, s3_key, url, type) "
        "VALUES (1, 'Alice/Beach/1.jpg', 'https://old/Alice/Beach/1.jpg', 'image')")
    before = run("SELECT * FROM whitelabel_models ORDER BY id"), run("SELECT * FROM whitelabel_media ORDER BY id")

    for _ in range(2):  # idempotent
        with open_database(empty_database_url) as db:
            migrate(db, CREATORS)
            check_schema(db, CREATORS)

    assert run("SELECT * FROM whitelabel_models ORDER BY id") == before[0]
    media = run("SELECT id, s3_key, url, type, size_bytes, etag FROM whitelabel_media ORDER BY id")
    assert media == [(1, "Alice/Beach/1.jpg", "https://old/Alice/Beach/1.jpg", "image", None, None)]
    assert run("SELECT version FROM reconciler_migrations ORDER BY 1") == [(f.version,) for f in migration_files()]


def test_adopted_database_plans_updates_not_recreations(empty_database_url, sql_on):
    run = sql_on(empty_database_url)
    run(PLATFORM_SCHEMA)
    run("INSERT INTO whitelabel_models (folder_name, post_count) VALUES ('Alice', 1)")
    run("INSERT INTO whitelabel_posts (whitelabel_model_id, folder_name, title) VALUES (1, 'Beach', 'Beach')")
    run("INSERT INTO whitelabel_media (whitelabel_post_id, s3_key, url, type) "
        f"VALUES (1, 'Alice/Beach/1.jpg', '{CDN}/Alice/Beach/1.jpg', 'image')")
    with open_database(empty_database_url) as db:
        migrate(db, CREATORS)
    from reconciler import Settings

    plan = commands.make_plan(
        Settings(database=empty_database_url, cdn_base_url=CDN), objects=[ObjectInfo("Alice/Beach/1.jpg", 10, "e", None)]
    )
    assert {(c.action, c.kind) for c in plan.changes} == {("update", "model"), ("update", "post"), ("update", "media")}
    media = next(c for c in plan.changes if c.kind == "media")
    assert media.before == {"size_bytes": None, "etag": None} and media.after == {"size_bytes": 10, "etag": "e"}


def test_a_migration_changed_after_it_was_applied_is_refused(cli, database_url, sql, tmp_path, monkeypatch):
    """The migrations shipped are a copy of sql/, one edited after a database applied
    it: init refuses before it applies anything (not even the new 0005), and so does
    every command that reads the schema; one error line names the file."""
    shipped = tmp_path / "sql"
    shipped.mkdir()
    for f in migration_files():
        (shipped / f.name).write_text(f.sql, encoding="utf-8")
    monkeypatch.setattr(migrations_module, "_migrations_folder", lambda: shipped)
    folder_bucket(tmp_path / "bucket", "M/P/1.jpg")
    assert cli("init", "--database", database_url).code == 0  # the files as applied: nothing to do
    recorded = sql("SELECT * FROM reconciler_migrations ORDER BY version")

    changed = shipped / "0002_reconciler.sql"
    changed.write_text(changed.read_text(encoding="utf-8") + "\n-- edited after release\n", encoding="utf-8")
    (shipped / "0005_next.sql").write_text("CREATE TABLE reconciler_next (id int);", encoding="utf-8")
    for command in (["init"], ["history"], ["plan", "--source", "bucket", "--cdn-base-url", CDN, "-o", "p.json"]):
        r = cli(*command, "--database", database_url)
        assert r.code == 1, r
        assert r.err.startswith(f"error: migration 0002_reconciler.sql has changed since it was applied to "
                                f"{redact_url(database_url)} "), r.err
        assert r.err.count("\n") == 1 and r.out == ""
    assert sql("SELECT * FROM reconciler_migrations ORDER BY version") == recorded
    assert sql("SELECT to_regclass('reconciler_next')") == [(None,)]
    assert not (tmp_path / "p.json").exists()


def test_check_schema_on_an_empty_database(empty_database_url):
    with open_database(empty_database_url) as db, pytest.raises(DatabaseError, match="reconciler init"):
        check_schema(db, CREATORS)


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql://app:pw@db:5432/prod", "postgresql://app@db:5432/prod"),
        ("postgresql://app@db/prod?password=pw&sslmode=require", "postgresql://app@db/prod?sslmode=require"),
        ("postgresql://:pw@db/prod", "postgresql://db/prod"),
        ("postgresql://db/prod", "postgresql://db/prod"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_embedded_default_starts_and_stops_and_keeps_its_identity(tmp_path):
    state = tmp_path / "state"
    with pytest.raises(DatabaseError, match=r"is not initialised; run `reconciler init` first"):
        with open_database(None, str(state)):
            pass
    assert not state.exists()  # refused before anything was created
    with open_database(None, str(state), create=True) as db:
        migrate(db, CREATORS)
        assert "embedded PostgreSQL" in db.display
        pid = db.embedded.get_pid()
        identity = database_identity(db.conn)
    assert (state / "pgdata" / "PG_VERSION").exists()
    import psutil

    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    # A plan of the embedded default still applies after the server restarted.
    with open_database(None, str(state)) as db:
        assert database_identity(db.conn) == identity
    assert identity.endswith("/reconciler") and not identity.startswith("unknown")


@pytest.fixture
def sql_on():
    conns = []

    def factory(url):
        conn = psycopg2.connect(url)
        conn.autocommit = True
        conns.append(conn)

        def run(statement, params=None):
            with conn.cursor() as cur:
                cur.execute(statement, params)
                return cur.fetchall() if cur.description else None

        return run

    yield factory
    for c in conns:
        c.close()


def test_python_m_reconciler_from_a_checkout_without_an_editable_install(tmp_path, empty_database_url):
    """``python -m reconciler`` in the repository's root after a plain ``pip install .``:
    the local reconciler/ shadows the installed package, which alone has reconciler.sql.
    The checkout is copied, and the editable install's finder (which would map
    reconciler.sql to sql/) is taken away, as in a plain install."""
    import shutil
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    shutil.copytree(root / "reconciler", tmp_path / "reconciler", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(root / "sql", tmp_path / "sql", ignore=shutil.ignore_patterns("__pycache__"))
    code = (
        "import runpy, sys;"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in getattr(f, '__module__', '')];"
        "sys.path.insert(0, '');"
        "import reconciler; assert reconciler.__file__.startswith(sys.argv[1]), reconciler.__file__;"
        "sys.argv[1:2] = [];"
        "runpy.run_module('reconciler', run_name='__main__', alter_sys=True)"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path), "init", "--database", empty_database_url],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    names = ", ".join(f.name for f in migration_files())
    assert r.stdout == (f"Schema created or upgraded: applied {names}.\n"
                        f"Catalogue creators ({CREATORS.short_fingerprint}) is installed: "
                        "whitelabel_models, whitelabel_posts, whitelabel_media.\n")
