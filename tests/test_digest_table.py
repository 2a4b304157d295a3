"""The state digest kept per model by triggers (issue 11, item 5): after any write —
reconciler's applies or the platform's own statements — the kept digest equals the
full scan's, for every scope; renames re-hash the children; a migration adopts a
database that holds rows already; another writer still makes a plan stale."""

from __future__ import annotations

import psycopg2
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from reconciler import commands
from reconciler.catalogue.sql import scan_digest_sql, scan_query, scope_sql, where
from reconciler.store.current import StateDigest, digest_of_terms, state_digest
from reconciler.store.migrations import migrate
from reconciler.store.db import open_database
from reconciler.errors import StalePlanError

from .conftest import CREATORS, fresh_example, sql_on
from .test_apply import STUDIO, apply_files, renamed


# The digest's terms computed from every row in scope (one query per kind), written out
# by hand for creators: what the terms the triggers keep must always add up to, and what
# the catalogue's own full scan (scan_digest_sql) must give. Per kind, the row count and
# the sums of the two halves of each row's md5 over the managed columns and natural keys
# (the hand-written engine's row hash, which the catalogue keeps).
_HALVES = """count(*), coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::bigint), 0),
       coalesce(sum(('x' || substr(h, 17, 16))::bit(64)::bigint), 0)"""
_SCAN = {
    "model": f"""SELECT {_HALVES} FROM (
        SELECT md5(row(m.folder_name, m.thumbnail_url, m.icon_url, m.banner_url, m.post_count)::text) AS h
        FROM whitelabel_models m {{where}}) d""",
    "post": f"""SELECT {_HALVES} FROM (
        SELECT md5(row(m.folder_name, p.folder_name, p.title, p.media_cdns::text)::text) AS h
        FROM whitelabel_posts p JOIN whitelabel_models m ON m.id = p.whitelabel_model_id {{where}}) d""",
    "media": f"""SELECT {_HALVES} FROM (
        SELECT md5(row(x.s3_key, m.folder_name, p.folder_name, x.url, x.type, x.size_bytes, x.etag)::text) AS h
        FROM whitelabel_media x
        JOIN whitelabel_posts p ON p.id = x.whitelabel_post_id
        JOIN whitelabel_models m ON m.id = p.whitelabel_model_id {{where}}) d""",
}


def scan_digest(conn, models=None) -> StateDigest:
    """The digest of the hand-written full scan (every query's models aliased ``m``)."""
    condition, params = ("", ()) if models is None else ("WHERE m.folder_name = ANY(%s)", (list(models),))
    terms = {}
    with conn.cursor() as cur:
        for kind, query in _SCAN.items():
            cur.execute(query.format(where=condition), params)
            terms[kind] = cur.fetchone()
    return digest_of_terms(CREATORS.kinds, terms)


def catalogue_scan_digest(conn, models=None) -> StateDigest:
    """The digest of the catalogue's own full scan, scoped as the planner scopes."""
    terms = {}
    with conn.cursor() as cur:
        for kind in CREATORS.kinds:
            condition, params = scope_sql(scan_query(CREATORS, kind), models)
            cur.execute(scan_digest_sql(CREATORS, kind).format(where=where([condition])), params)
            terms[kind] = cur.fetchone()
    return digest_of_terms(CREATORS.kinds, terms)


def assert_kept_equals_scan(url: str) -> None:
    conn = psycopg2.connect(url)
    try:
        with conn:
            names = [r[0] for r in _rows(conn, "SELECT folder_name FROM whitelabel_models ORDER BY id")]
            for scope in (None, names[:1], names[1:], ["nobody"]):
                kept = state_digest(conn, CREATORS, scope)
                assert kept == scan_digest(conn, scope), scope
                assert kept == catalogue_scan_digest(conn, scope), scope
    finally:
        conn.close()


def _rows(conn, q):
    with conn.cursor() as cur:
        cur.execute(q)
        return cur.fetchall()


STATEMENTS = [
    "INSERT INTO whitelabel_models (folder_name, post_count) VALUES ('New' || md5(random()::text), 1)",
    "UPDATE whitelabel_models SET folder_name = folder_name || 'x' WHERE id = (SELECT min(id) FROM whitelabel_models)",
    "UPDATE whitelabel_models SET thumbnail_url = 'https://t/' || id, status = 'live'",
    "DELETE FROM whitelabel_models WHERE id = (SELECT max(id) FROM whitelabel_models)",
    "INSERT INTO whitelabel_posts (whitelabel_model_id, folder_name, title) "
    "SELECT min(id), 'P' || md5(random()::text), 't' FROM whitelabel_models HAVING count(*) > 0",
    "UPDATE whitelabel_posts SET folder_name = folder_name || 'y' WHERE id = (SELECT min(id) FROM whitelabel_posts)",
    "UPDATE whitelabel_posts SET whitelabel_model_id = (SELECT max(id) FROM whitelabel_models) "
    "WHERE id = (SELECT max(id) FROM whitelabel_posts) AND NOT EXISTS (SELECT 1 FROM whitelabel_posts q, whitelabel_posts r "
    "WHERE r.id = (SELECT max(id) FROM whitelabel_posts) AND q.whitelabel_model_id = (SELECT max(id) FROM whitelabel_models) "
    "AND q.folder_name = r.folder_name)",
    "UPDATE whitelabel_posts SET media_cdns = '{\"images\": [], \"videos\": []}'",
    "DELETE FROM whitelabel_posts WHERE id = (SELECT min(id) FROM whitelabel_posts)",
    "INSERT INTO whitelabel_media (whitelabel_post_id, s3_key, url, type) "
    "SELECT max(id), 'k' || md5(random()::text), 'u', 'image' "
    "FROM whitelabel_posts HAVING count(*) > 0",
    "UPDATE whitelabel_media SET size_bytes = coalesce(size_bytes, 0) + 1, etag = NULL",
    "UPDATE whitelabel_media SET whitelabel_post_id = (SELECT min(id) FROM whitelabel_posts) "
    "WHERE id = (SELECT max(id) FROM whitelabel_media)",
    "DELETE FROM whitelabel_media WHERE id = (SELECT min(id) FROM whitelabel_media)",
    "TRUNCATE whitelabel_media",
]


@hsettings(max_examples=25)
@given(st.lists(st.sampled_from(range(len(STATEMENTS))), max_size=8))
def test_kept_digest_equals_the_scan_after_platform_writes(examples_database_url, tmp_path_factory, picks):
    with fresh_example(examples_database_url, tmp_path_factory) as example, sql_on(examples_database_url) as sql:
        apply_files(example.settings, example.tmp_path, STUDIO, "p0.json")
        for i in picks:
            sql(STATEMENTS[i])
            assert_kept_equals_scan(examples_database_url)


def test_kept_digest_follows_applies_moves_and_rollbacks(settings, database_url, sql, tmp_path):
    apply_files(settings, tmp_path, STUDIO, "p0.json")
    assert_kept_equals_scan(database_url)
    files = renamed(renamed(STUDIO, "Bob", "Bobby"), "Bobby/Trip", "Bobby/Journey")
    files.pop("Carol/Home/1.jpg")
    files["Carol/Home/2.jpg"] = "window"
    _, result = apply_files(settings, tmp_path, files, "p1.json")
    assert sql("SELECT count(*) FROM reconciler_changes WHERE apply_id = 2 AND action = 'move'")[0][0] >= 3
    assert_kept_equals_scan(database_url)
    commands.rollback(settings, result.apply_id, str(tmp_path / "rb.json"))
    commands.apply(settings, str(tmp_path / "rb.json"))
    assert_kept_equals_scan(database_url)


def test_a_platform_rename_of_a_model_rehashes_its_posts_and_media(settings, database_url, sql, tmp_path):
    apply_files(settings, tmp_path, STUDIO, "p0.json")
    sql("UPDATE whitelabel_models SET folder_name = 'Robert' WHERE folder_name = 'Bob'")
    assert_kept_equals_scan(database_url)
    sql("UPDATE whitelabel_posts SET folder_name = 'Tour' WHERE folder_name = 'Trip'")
    assert_kept_equals_scan(database_url)


def test_migration_adopts_a_database_with_rows(empty_database_url):
    conn = psycopg2.connect(empty_database_url)
    conn.autocommit = True
    with open(__import__("reconciler.store.migrations", fromlist=["x"])._migrations_folder().joinpath("0001_platform_tables.sql")) as f:
        platform = f.read()
    with conn.cursor() as cur:
        cur.execute(platform)
        cur.execute("INSERT INTO whitelabel_models (folder_name, post_count) VALUES ('A', 1), ('B', NULL)")
        cur.execute("INSERT INTO whitelabel_posts (whitelabel_model_id, folder_name, title) VALUES (1, 'P', 'P')")
        cur.execute("INSERT INTO whitelabel_media (whitelabel_post_id, s3_key, url, type) VALUES (1, 'A/P/x.jpg', 'u', 'image')")
    conn.close()
    with open_database(empty_database_url) as db:
        migrate(db, CREATORS)
    assert_kept_equals_scan(empty_database_url)


def test_another_writers_change_makes_the_plan_stale(settings, database_url, sql, tmp_path):
    apply_files(settings, tmp_path, STUDIO, "p0.json")
    files = dict(STUDIO, **{"Carol/Home/2.jpg": "window"})
    plan = commands.make_plan(settings, objects=__import__("tests.test_apply", fromlist=["x"]).files_listing(files))
    path = __import__("reconciler.planfile", fromlist=["x"]).write_plan(plan, str(tmp_path / "p1.json"))
    # A writer elsewhere in scope (another model than the plan changes), committed.
    sql("UPDATE whitelabel_media SET etag = 'other' WHERE s3_key = 'Bob/Trip/x.png'")
    with pytest.raises(StalePlanError, match="stale"):
        commands.apply(settings, path)
