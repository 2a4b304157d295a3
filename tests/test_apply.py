"""Apply, against the real PostgreSQL: the properties a reconciler lives by.

- applying a plan makes the next plan empty (idempotence);
- rolling back the last apply restores the managed state exactly, ids included;
- a plan is applied at most once; a stale plan is refused; a failed apply changes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys

import psycopg2
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from reconciler import commands
from reconciler.errors import AlreadyAppliedError, DatabaseError, SignatureError, StalePlanError
from reconciler.objects import ObjectInfo
from reconciler.planfile import load_plan, write_plan

from .conftest import CDN, CREATORS, fresh_example

# --------------------------------------------------------------------------- helpers

MODELS = ["Alice", "alice", "Bob", "Zoë", "Zoe\u0308", "Q&A #1"]
POSTS = ["Beach", "beach", "Trip 2", "profile", "100%+"]
FILES = ["a.jpg", "b.PNG", "c.mp4", "d.txt", "e.webm", "icon.png", "banner.jpg", "avatar.gif"]


def keys_strategy():
    model_image = st.tuples(st.sampled_from(MODELS), st.sampled_from(FILES)).map("/".join)
    media = st.tuples(st.sampled_from(MODELS), st.sampled_from(POSTS), st.sampled_from(FILES)).map("/".join)
    deep = st.tuples(st.sampled_from(MODELS), st.sampled_from(POSTS), st.just("raw"), st.sampled_from(FILES)).map("/".join)
    return st.sets(st.one_of(model_image, media, deep), max_size=25)


def bucket_strategy():
    return keys_strategy().flatmap(
        lambda keys: st.fixed_dictionaries({k: st.integers(0, 3) for k in sorted(keys)})
    )


def listing(bucket: dict[str, int]) -> list[ObjectInfo]:
    return [ObjectInfo(k, size, f"etag{size}", None) for k, size in bucket.items()]


def snapshot(url: str) -> dict:
    """Every managed column and id of the content tables, plus status (hand-set)."""
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT id, folder_name, thumbnail_url, icon_url, banner_url, post_count, status "
                "FROM whitelabel_models ORDER BY id"
            )
            models = cur.fetchall()
            cur.execute(
                "SELECT id, whitelabel_model_id, folder_name, title, media_cdns::text FROM whitelabel_posts ORDER BY id"
            )
            posts = cur.fetchall()
            cur.execute(
                "SELECT id, whitelabel_post_id, s3_key, url, type, size_bytes, etag FROM whitelabel_media ORDER BY id"
            )
            media = cur.fetchall()
            cur.execute("SELECT count(*) FROM reconciler_applies")
            applies = cur.fetchone()[0]
            cur.execute("SELECT count(*) FROM reconciler_changes")
            changes = cur.fetchone()[0]
    finally:
        conn.close()
    return {"models": models, "posts": posts, "media": media, "applies": applies, "changes": changes}


def content(snap: dict) -> dict:
    return {k: snap[k] for k in ("models", "posts", "media")}


def plan_to(settings, tmp_path, bucket: dict[str, int], name: str, **kwargs) -> str:
    plan = commands.make_plan(settings, objects=listing(bucket), **kwargs)
    return write_plan(plan, str(tmp_path / name))


# --------------------------------------------------------------------------- properties


@hsettings(max_examples=30)
@given(first=bucket_strategy(), second=bucket_strategy())
def test_apply_converges_and_rollback_restores(examples_database_url, tmp_path_factory, first, second):
    with fresh_example(examples_database_url, tmp_path_factory) as example:
        settings, tmp_path = example.settings, example.tmp_path
        p1 = plan_to(settings, tmp_path, first, "p1.json")
        commands.apply(settings, p1)
        assert commands.make_plan(settings, objects=listing(first)).changes == []

        before = snapshot(examples_database_url)
        p2 = plan_to(settings, tmp_path, second, "p2.json")
        result = commands.apply(settings, p2)
        assert commands.make_plan(settings, objects=listing(second)).changes == []

        if result.apply_id is not None:
            with pytest.raises(AlreadyAppliedError):
                commands.apply(settings, p2)
            commands.rollback(settings, result.apply_id, str(tmp_path / "rb.json"))
            commands.apply(settings, str(tmp_path / "rb.json"))
            assert content(snapshot(examples_database_url)) == content(before)
            assert commands.make_plan(settings, objects=listing(first)).changes == []


@hsettings(max_examples=15)
@given(bucket=bucket_strategy())
def test_plan_against_empty_database_creates_exactly_the_desired_rows(examples_database_url, tmp_path_factory, bucket):
    with fresh_example(examples_database_url, tmp_path_factory) as example:
        plan = commands.make_plan(example.settings, objects=listing(bucket))
        assert {c.action for c in plan.changes} <= {"create"}
        again = commands.make_plan(example.settings, objects=listing(bucket))
        again.created_at = plan.created_at
        assert again.seal().plan_id == plan.plan_id


# --------------------------------------------------------------------------- examples

BUCKET = {"Alice/a.jpg": 1, "Alice/Beach/1.jpg": 2, "Alice/Beach/2.mp4": 3, "Bob/Trip/x.png": 4}


def test_failure_inside_the_transaction_changes_nothing(settings, database_url, sql, tmp_path):
    commands.apply(settings, plan_to(settings, tmp_path, BUCKET, "p0.json"))
    sql(
        """CREATE FUNCTION boom() RETURNS trigger AS $$
           BEGIN IF NEW.s3_key = 'Bob/Trip/bad.jpg' THEN RAISE EXCEPTION 'injected fault'; END IF; RETURN NEW; END
           $$ LANGUAGE plpgsql"""
    )
    sql("CREATE TRIGGER boom BEFORE INSERT OR UPDATE ON whitelabel_media FOR EACH ROW EXECUTE FUNCTION boom()")
    changed = {**BUCKET, "Bob/Trip/bad.jpg": 1, "Carol/New/1.jpg": 1}
    del changed["Alice/Beach/1.jpg"]
    path = plan_to(settings, tmp_path, changed, "p1.json")
    before = snapshot(database_url)
    with pytest.raises(DatabaseError, match="injected fault"):
        commands.apply(settings, path)
    assert snapshot(database_url) == before
    sql("DROP TRIGGER boom ON whitelabel_media")
    result = commands.apply(settings, path)
    assert result.summary["media"] == {"create": 2, "update": 0, "move": 0, "delete": 1}


def test_stale_plan_is_refused(settings, database_url, tmp_path):
    a = plan_to(settings, tmp_path, BUCKET, "a.json")
    b = plan_to(settings, tmp_path, {"Other/P/1.jpg": 1}, "b.json")
    commands.apply(settings, a)
    before = snapshot(database_url)
    with pytest.raises(StalePlanError, match="stale"):
        commands.apply(settings, b)
    assert snapshot(database_url) == before


def test_first_plan_applied_twice_against_empty_database(settings, tmp_path):
    a = plan_to(settings, tmp_path, BUCKET, "a.json")
    same = commands.make_plan(settings, objects=listing(BUCKET))
    same.created_at = "2000-01-01T00:00:00Z"  # same changes, made at another time: another plan_id
    a2 = write_plan(same.seal(), str(tmp_path / "a2.json"))
    commands.apply(settings, a)
    with pytest.raises(AlreadyAppliedError):
        commands.apply(settings, a)
    with pytest.raises(StalePlanError):
        commands.apply(settings, a2)


def test_hand_set_status_survives_replans_and_applies(settings, sql, tmp_path):
    commands.apply(settings, plan_to(settings, tmp_path, BUCKET, "p0.json"))
    sql("UPDATE whitelabel_models SET status = 'live' WHERE folder_name = 'Alice'")
    assert commands.make_plan(settings, objects=listing(BUCKET)).changes == []
    commands.apply(settings, plan_to(settings, tmp_path, {**BUCKET, "Alice/b.jpg": 1, "Alice/Beach/3.jpg": 5}, "p1.json"))
    assert sql("SELECT status FROM whitelabel_models WHERE folder_name = 'Alice'") == [("live",)]
    assert sql("SELECT status FROM whitelabel_models WHERE folder_name = 'Bob'") == [("pending",)]


def test_new_models_take_the_platforms_default_status_and_extra_columns_survive(settings, sql, tmp_path):
    sql("ALTER TABLE whitelabel_models ALTER COLUMN status SET DEFAULT 'review'")
    sql("ALTER TABLE whitelabel_models ADD COLUMN featured boolean DEFAULT false")
    commands.apply(settings, plan_to(settings, tmp_path, BUCKET, "p0.json"))
    sql("UPDATE whitelabel_models SET featured = true WHERE folder_name = 'Alice'")
    commands.apply(settings, plan_to(settings, tmp_path, {**BUCKET, "Alice/0.jpg": 1}, "p1.json"))
    assert sql("SELECT status, featured FROM whitelabel_models WHERE folder_name = 'Alice'") == [("review", True)]


def test_last_synced_at_is_set_on_touched_models(settings, sql, tmp_path):
    commands.apply(settings, plan_to(settings, tmp_path, BUCKET, "p0.json"))
    sql("UPDATE whitelabel_models SET last_synced_at = NULL")
    commands.apply(settings, plan_to(settings, tmp_path, {**BUCKET, "Bob/Trip/y.jpg": 1}, "p1.json"))
    assert sql("SELECT folder_name, last_synced_at IS NOT NULL FROM whitelabel_models ORDER BY 1") == [
        ("Alice", False),
        ("Bob", True),
    ]


def test_audit_keeps_full_images_with_ids(settings, sql, tmp_path):
    commands.apply(settings, plan_to(settings, tmp_path, BUCKET, "p0.json"))
    commands.apply(settings, plan_to(settings, tmp_path, {"Alice/a.jpg": 1}, "p1.json"))
    rows = sql(
        "SELECT kind, action, key, row_id, before->>'id', before_parent FROM reconciler_changes "
        "WHERE apply_id = 2 AND kind = 'media' ORDER BY key"
    )
    assert rows == [
        ("media", "delete", "Alice/Beach/1.jpg", 1, "1", "Alice/Beach"),
        ("media", "delete", "Alice/Beach/2.mp4", 2, "2", "Alice/Beach"),
        ("media", "delete", "Bob/Trip/x.png", 3, "3", "Bob/Trip"),
    ]


def test_rollback_is_refused_when_its_rows_changed(settings, sql, tmp_path):
    commands.apply(settings, plan_to(settings, tmp_path, BUCKET, "p0.json"))
    sql("UPDATE whitelabel_media SET url = 'https://elsewhere/x' WHERE s3_key = 'Bob/Trip/x.png'")
    with pytest.raises(StalePlanError, match="changed since"):
        commands.rollback(settings, 1, str(tmp_path / "rb.json"))
    assert not (tmp_path / "rb.json").exists()


def test_rollback_plan_turns_stale_when_scope_changes(settings, sql, tmp_path):
    commands.apply(settings, plan_to(settings, tmp_path, BUCKET, "p0.json"))
    commands.rollback(settings, 1, str(tmp_path / "rb.json"))
    sql("UPDATE whitelabel_posts SET title = 'renamed' WHERE folder_name = 'Trip'")
    with pytest.raises(StalePlanError):
        commands.apply(settings, str(tmp_path / "rb.json"))


def test_signed_plans(settings, tmp_path, monkeypatch):
    unsigned = plan_to(settings, tmp_path, BUCKET, "unsigned.json")
    with pytest.raises(SignatureError, match="not signed"):
        commands.apply(settings, unsigned, require_signature=True)
    monkeypatch.setenv("RECONCILER_SIGNING_KEY", "team-key-1")
    signed = plan_to(settings, tmp_path, BUCKET, "signed.json", sign=True)
    assert "team-key-1" not in open(signed).read()
    monkeypatch.setenv("RECONCILER_SIGNING_KEY", "another-key")
    with pytest.raises(SignatureError, match="does not match"):
        commands.apply(settings, signed, require_signature=True)
    monkeypatch.setenv("RECONCILER_SIGNING_KEY", "team-key-1")
    assert commands.apply(settings, signed, require_signature=True).apply_id == 1


def test_model_scope_only_deletes_inside_it(settings, sql, tmp_path):
    commands.apply(settings, plan_to(settings, tmp_path, BUCKET, "p0.json"))
    # Bob's objects are gone from this listing, but the plan is scoped to Alice.
    plan = commands.make_plan(settings, objects=listing({"Alice/a.jpg": 1}), models=["Alice"])
    assert {c.key.split("/")[0] for c in plan.changes} == {"Alice"}
    assert plan.target["scope"] == ["Alice"]
    commands.apply(settings, write_plan(plan, str(tmp_path / "scoped.json")))
    assert sql("SELECT folder_name FROM whitelabel_models ORDER BY 1") == [("Alice",), ("Bob",)]


def test_two_concurrent_applies_exactly_one_lands(database_url, tmp_path):
    from reconciler import Settings

    settings = Settings(database=database_url, cdn_base_url=CDN)
    bucket_a = {f"A{i}/P/{j}.jpg": 1 for i in range(20) for j in range(50)}
    bucket_b = {f"B{i}/P/{j}.jpg": 1 for i in range(20) for j in range(50)}
    a = plan_to(settings, tmp_path, bucket_a, "a.json")
    b = plan_to(settings, tmp_path, bucket_b, "b.json")
    env = {**os.environ, "DATABASE_URL": database_url}
    procs = [
        subprocess.Popen([sys.executable, "-m", "reconciler", "apply", p, "--quiet"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for p in (a, b)
    ]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    loser = next(err for code, err in results if code == 1)
    assert loser.startswith("error: the plan is stale")
    assert snapshot(database_url)["applies"] == 1


@pytest.mark.parametrize("timeout", [0, 0.3])
def test_lock_timeout_is_a_clean_error(settings, database_url, tmp_path, timeout):
    from reconciler.store.db import LOCK_KEY
    from reconciler.errors import LockTimeoutError

    path = plan_to(settings, tmp_path, BUCKET, "p.json")
    holder = psycopg2.connect(database_url)
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        settings.lock_timeout = timeout
        with pytest.raises(LockTimeoutError, match="held the lock"):
            commands.apply(settings, path)
    finally:
        holder.close()
    assert commands.apply(settings, path).apply_id == 1


def test_rollback_twice_says_it_was_rolled_back(settings, tmp_path):
    from reconciler.errors import ReconcilerError

    commands.apply(settings, plan_to(settings, tmp_path, BUCKET, "p0.json"))
    commands.rollback(settings, 1, str(tmp_path / "rb.json"))
    commands.apply(settings, str(tmp_path / "rb.json"))
    with pytest.raises(ReconcilerError, match="apply 1 was already rolled back by apply 2"):
        commands.rollback(settings, 1, str(tmp_path / "rb2.json"))


def test_actor_is_recorded(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTOR", "octocat")
    commands.apply(settings, plan_to(settings, tmp_path, BUCKET, "p0.json"))
    assert commands.history(settings)[0].os_user.startswith("octocat")


def test_a_reformatted_line_is_verified_by_its_content(settings, sql, tmp_path):
    path = plan_to(settings, tmp_path, BUCKET, "p.json")
    lines = open(path, encoding="utf-8").read().split("\n")
    i = next(n for n, line in enumerate(lines) if '"kind":"media"' in line)
    lines[i] = lines[i].replace('":', '": ')  # same JSON, not the canonical text
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    result = commands.apply(settings, path)
    assert result.summary["media"]["create"] == 3
    assert sql("SELECT count(*) FROM whitelabel_media") == [(3,)]


@pytest.mark.parametrize(
    "statement, stale",
    [
        ("UPDATE whitelabel_models SET status = 'live'", False),
        ("UPDATE whitelabel_models SET last_synced_at = now()", False),
        ("UPDATE whitelabel_media SET url = url || '?v=2' WHERE s3_key = 'Bob/Trip/x.png'", True),
        ("UPDATE whitelabel_media SET etag = NULL WHERE s3_key = 'Bob/Trip/x.png'", True),
        ("UPDATE whitelabel_posts SET title = '' WHERE folder_name = 'Trip'", True),
        ("UPDATE whitelabel_models SET post_count = NULL WHERE folder_name = 'Bob'", True),
    ],
)
def test_only_managed_columns_make_a_plan_stale(settings, sql, tmp_path, statement, stale):
    commands.apply(settings, plan_to(settings, tmp_path, BUCKET, "p0.json"))
    path = plan_to(settings, tmp_path, {**BUCKET, "Carol/P/1.jpg": 1}, "p1.json")
    sql(statement)
    if stale:
        with pytest.raises(StalePlanError):
            commands.apply(settings, path)
    else:
        assert commands.apply(settings, path).apply_id == 2


def test_media_attached_to_the_wrong_post_is_moved_and_rollback_moves_it_back(settings, database_url, sql, tmp_path):
    commands.apply(settings, plan_to(settings, tmp_path, {"A/P/1.jpg": 1, "A/Q/2.jpg": 1}, "p0.json"))
    # An adopted database may hold a media row under another post than its key says.
    sql("UPDATE whitelabel_media SET whitelabel_post_id = (SELECT id FROM whitelabel_posts WHERE folder_name = 'Q') "
        "WHERE s3_key = 'A/P/1.jpg'")
    before = snapshot(database_url)
    plan = commands.make_plan(settings, objects=listing({"A/P/1.jpg": 1, "A/Q/2.jpg": 1}))
    media = [c for c in plan.changes if c.kind == "media"]
    assert [(c.action, c.before, c.after) for c in media] == [("update", {"post": "A/Q"}, {"post": "A/P"})]
    result = commands.apply(settings, write_plan(plan, str(tmp_path / "p1.json")))
    assert commands.make_plan(settings, objects=listing({"A/P/1.jpg": 1, "A/Q/2.jpg": 1})).changes == []
    commands.rollback(settings, result.apply_id, str(tmp_path / "rb.json"))
    commands.apply(settings, str(tmp_path / "rb.json"))
    assert content(snapshot(database_url)) == content(before)


# --------------------------------------------------------------------------- renames are moves


def files_listing(files: dict[str, str]) -> list[ObjectInfo]:
    """A listing whose ETags are the md5 of each file's content, as S3's are."""
    return [ObjectInfo(k, len(c), hashlib.md5(c.encode()).hexdigest(), None) for k, c in files.items()]


def apply_files(settings, tmp_path, files: dict[str, str], name: str, **kwargs):
    plan = commands.make_plan(settings, objects=files_listing(files), **kwargs)
    return plan, commands.apply(settings, write_plan(plan, str(tmp_path / name)))


def renamed(files: dict[str, str], old: str, new: str) -> dict[str, str]:
    """The bucket after the folder ``old`` (``M`` or ``M/P``) was renamed to ``new``."""
    return {(new + k[len(old):] if k.startswith(old + "/") else k): c for k, c in files.items()}


STUDIO = {
    "Bob/b.jpg": "bob thumb",
    "Bob/profile/icon.png": "bob icon",
    "Bob/Beach Dya/1.jpg": "sand",
    "Bob/Beach Dya/2.mp4": "waves",
    "Bob/Trip/x.png": "map",
    "Carol/Home/1.jpg": "door",
}


def ids(sql) -> dict:
    return {
        "models": dict(sql("SELECT folder_name, id FROM whitelabel_models")),
        "posts": sorted(sql("SELECT id, whitelabel_model_id FROM whitelabel_posts")),
        "media": sorted(sql("SELECT id, whitelabel_post_id FROM whitelabel_media")),
    }


def test_a_renamed_post_keeps_its_ids_and_rollback_moves_it_back(settings, database_url, sql, tmp_path):
    apply_files(settings, tmp_path, STUDIO, "p0.json")
    before = snapshot(database_url)
    media_ids = dict(sql("SELECT s3_key, id FROM whitelabel_media"))
    post_id = sql("SELECT id FROM whitelabel_posts WHERE folder_name = 'Beach Dya'")[0][0]
    new = renamed(STUDIO, "Bob/Beach Dya", "Bob/Beach Day")
    plan, result = apply_files(settings, tmp_path, new, "p1.json")
    assert {(c.kind, c.action) for c in plan.changes} == {("post", "move"), ("media", "move")}
    assert result.summary["post"] == {"create": 0, "update": 0, "move": 1, "delete": 0}
    assert sql("SELECT id, title FROM whitelabel_posts WHERE folder_name = 'Beach Day'") == [(post_id, "Beach Day")]
    assert dict(sql("SELECT s3_key, id FROM whitelabel_media")) == renamed(media_ids, "Bob/Beach Dya", "Bob/Beach Day")
    assert commands.make_plan(settings, objects=files_listing(new)).changes == []
    # The audit holds the move; its rollback moves the rows back, ids and keys as before.
    assert sql("SELECT action, key FROM reconciler_changes WHERE apply_id = 2 AND kind = 'post'") == [
        ("move", "Bob/Beach Day")
    ]
    commands.rollback(settings, result.apply_id, str(tmp_path / "rb.json"))
    back = load_plan(str(tmp_path / "rb.json"))
    assert [(c.action, c.from_key, c.key) for c in back.changes if c.kind == "post"] == [
        ("move", "Bob/Beach Day", "Bob/Beach Dya")
    ]
    commands.apply(settings, str(tmp_path / "rb.json"))
    assert content(snapshot(database_url)) == content(before)


def test_a_renamed_model_keeps_status_ids_and_the_rows_that_point_at_it(settings, database_url, sql, tmp_path):
    apply_files(settings, tmp_path, STUDIO, "p0.json")
    # The platform's own table points at media rows, without ON DELETE CASCADE.
    sql("CREATE TABLE likes (id serial PRIMARY KEY, media_id integer NOT NULL REFERENCES whitelabel_media(id))")
    sql("INSERT INTO likes (media_id) SELECT id FROM whitelabel_media")
    sql("UPDATE whitelabel_models SET status = 'live' WHERE folder_name = 'Bob'")
    before_ids = ids(sql)
    new = renamed(STUDIO, "Bob", "Bobby")
    plan, result = apply_files(settings, tmp_path, new, "p1.json")
    assert [(c.kind, c.action, c.from_key, c.key) for c in plan.changes if c.kind != "media"] == [
        ("model", "move", "Bob", "Bobby"),
        ("post", "move", "Bob/Beach Dya", "Bobby/Beach Dya"),
        ("post", "move", "Bob/Trip", "Bobby/Trip"),
    ]
    assert sql("SELECT id, status, icon_url FROM whitelabel_models WHERE folder_name = 'Bobby'") == [
        (before_ids["models"]["Bob"], "live", f"{CDN}/Bobby/profile/icon.png")
    ]
    after_ids = ids(sql)
    assert after_ids["posts"] == before_ids["posts"] and after_ids["media"] == before_ids["media"]
    assert sql("SELECT count(*) FROM likes") == [(4,)]
    assert commands.make_plan(settings, objects=files_listing(new)).changes == []

    commands.rollback(settings, result.apply_id, str(tmp_path / "rb.json"))
    commands.apply(settings, str(tmp_path / "rb.json"))
    assert ids(sql) == before_ids
    assert sql("SELECT status FROM whitelabel_models WHERE folder_name = 'Bob'") == [("live",)]


def test_without_moves_a_rename_is_delete_and_create_and_a_foreign_key_stops_it(settings, database_url, sql, tmp_path):
    apply_files(settings, tmp_path, STUDIO, "p0.json")
    sql("CREATE TABLE likes (id serial PRIMARY KEY, media_id integer NOT NULL REFERENCES whitelabel_media(id))")
    sql("INSERT INTO likes (media_id) SELECT id FROM whitelabel_media")
    settings.detect_moves = False
    plan = commands.make_plan(settings, objects=files_listing(renamed(STUDIO, "Bob", "Bobby")))
    assert "move" not in {c.action for c in plan.changes}
    before = snapshot(database_url)
    with pytest.raises(DatabaseError, match="apply failed and changed nothing"):
        commands.apply(settings, write_plan(plan, str(tmp_path / "p1.json")))
    assert snapshot(database_url) == before


def test_a_rename_with_changed_content_is_not_a_move(settings, sql, tmp_path):
    apply_files(settings, tmp_path, STUDIO, "p0.json")
    new = renamed(STUDIO, "Bob/Trip", "Bob/Journey")
    new["Bob/Journey/x.png"] = "a new map"
    plan, _ = apply_files(settings, tmp_path, new, "p1.json")
    assert "move" not in {c.action for c in plan.changes}
    assert sql("SELECT s3_key FROM whitelabel_media WHERE s3_key LIKE 'Bob/J%'") == [("Bob/Journey/x.png",)]


@pytest.mark.parametrize("writer", [
    # Someone created the target post first: the move would land on a key that exists.
    "INSERT INTO whitelabel_posts (whitelabel_model_id, folder_name, title) "
    "SELECT id, 'Beach Day', 'x' FROM whitelabel_models WHERE folder_name = 'Bob'",
    # Someone deleted the rows the move starts from.
    "DELETE FROM whitelabel_media WHERE s3_key LIKE 'Bob/Beach Dya/%'",
])
def test_a_move_onto_a_taken_key_or_away_from_a_gone_one_is_stale(settings, database_url, sql, tmp_path, writer):
    apply_files(settings, tmp_path, STUDIO, "p0.json")
    plan = commands.make_plan(settings, objects=files_listing(renamed(STUDIO, "Bob/Beach Dya", "Bob/Beach Day")))
    path = write_plan(plan, str(tmp_path / "p1.json"))
    sql(writer)
    before = snapshot(database_url)
    with pytest.raises(StalePlanError):
        commands.apply(settings, path)
    assert snapshot(database_url) == before


def test_a_plan_for_another_database_is_refused(settings, pg_admin_url, database_url, tmp_path):
    from reconciler import Settings
    from reconciler.store.migrations import migrate
    from reconciler.store.db import open_database
    from reconciler.errors import WrongDatabaseError

    from .conftest import admin_exec, with_dbname

    plan = commands.make_plan(settings, objects=listing(BUCKET))
    from urllib.parse import urlsplit

    assert plan.target["database_id"].endswith("/" + urlsplit(database_url).path.lstrip("/"))
    path = write_plan(plan, str(tmp_path / "p.json"))
    other = "rt_other_" + os.urandom(4).hex()
    admin_exec(pg_admin_url, f'CREATE DATABASE "{other}"')
    try:
        other_url = with_dbname(pg_admin_url, other)
        with open_database(other_url) as db:
            migrate(db, CREATORS)
        # Both are empty: the state digests are equal, only the identity tells them apart.
        with pytest.raises(WrongDatabaseError, match="this plan was made for another database"):
            commands.apply(Settings(database=other_url, cdn_base_url=CDN), path)
    finally:
        admin_exec(pg_admin_url, f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)')
    assert commands.apply(settings, path).apply_id == 1


_NAMES = st.sampled_from(["Alice", "Bob", "Bobby", "Zoë", "Q&A #1"])
_POST_NAMES = st.sampled_from(["Beach", "Beach Day", "Trip", "100%+"])


@st.composite
def rename_cases(draw):
    """A bucket of distinct contents, and the same bucket after renaming one model or
    post folder (sometimes onto an existing one, sometimes with an edit besides)."""
    keys = draw(st.sets(st.one_of(
        st.tuples(_NAMES, st.sampled_from(["a.jpg", "profile/icon.png"])).map("/".join),
        st.tuples(_NAMES, _POST_NAMES, st.sampled_from(["1.jpg", "2.mp4", "3.png"])).map("/".join),
    ), min_size=1, max_size=14))
    first = {k: f"content of {k}" for k in sorted(keys)}
    # An existing folder, mostly: renaming one that is not there changes nothing.
    folders = sorted({k.partition("/")[0] for k in keys} | {k.rpartition("/")[0] for k in keys if k.count("/") == 2})
    old = draw(st.sampled_from(folders))
    if "/" in old:
        new = old.partition("/")[0] + "/" + draw(_POST_NAMES)
    else:
        new = draw(_NAMES)
    second = renamed(first, old, new)
    if draw(st.booleans()) and second:
        edited = draw(st.sampled_from(sorted(second)))
        second[edited] = "edited"
    return first, second


@hsettings(max_examples=25)
@given(case=rename_cases())
def test_renames_converge_and_rollback_restores_ids(examples_database_url, tmp_path_factory, case):
    first, second = case
    with fresh_example(examples_database_url, tmp_path_factory) as example:
        settings, tmp_path = example.settings, example.tmp_path
        apply_files(settings, tmp_path, first, "p1.json")
        before = snapshot(examples_database_url)
        _, result = apply_files(settings, tmp_path, second, "p2.json")
        assert commands.make_plan(settings, objects=files_listing(second)).changes == []
        if result.apply_id is not None:
            commands.rollback(settings, result.apply_id, str(tmp_path / "rb.json"))
            commands.apply(settings, str(tmp_path / "rb.json"))
            assert content(snapshot(examples_database_url)) == content(before)


# --------------------------------------------------------------------------- staging streamed while verifying


def test_a_staging_error_waits_for_the_verdict_and_never_blocks_the_verifier(database_url):
    from reconciler.store.execute import StreamStage
    from reconciler.store.db import open_database

    good = ('"create"', "null", '"A/B"', '"A/B/1.jpg"', "1", '"image"', '"u"')
    bad = ('"create"', "null", '"A/B"', '"A/B/2.jpg"', '"not a number"', '"image"', '"u"')
    with open_database(database_url) as db:
        for end in ("abort", "finish"):
            with pytest.raises(psycopg2.Error) if end == "finish" else contextlib.nullcontext():
                with db.transaction() as conn:
                    stage = StreamStage(conn, CREATORS)
                    stage.add_rows("media", [bad])
                    # Far more than the stream's queue holds: the failed stream keeps draining it.
                    for _ in range(40):
                        stage.add_rows("media", [good] * 20000)
                    if end == "abort":
                        stage.abort()  # a verification error: the database's is not raised
                    else:
                        stage.finish()
        with db.transaction() as conn:  # the connection is usable after both
            stage = StreamStage(conn, CREATORS)
            stage.add_rows("media", [good])
            stage.reset()
            stage.add_rows("media", [good, good])
            stage.add_batch([{"action": "create", "kind": "post", "key": "A/B", "before": None,
                              "after": {"model": "A", "title": "B", "media_cdns": []}}])
            stage.finish()
            with conn.cursor() as cur:
                cur.execute("SELECT seq, size_bytes FROM rc_stage_media ORDER BY seq")
                assert cur.fetchall() == [(1, 1), (2, 1)]
                cur.execute("SELECT key, media_cdns FROM rc_stage_post")
                assert cur.fetchall() == [("A/B", "[]")]
            conn.rollback()


def test_without_a_database_an_edited_plan_is_refused_as_edited(settings, tmp_path):
    from reconciler import Settings
    from reconciler.errors import PlanFileError

    path = plan_to(settings, tmp_path, BUCKET, "p.json")
    nowhere = Settings(database="postgresql://nobody@127.0.0.1:9/none?connect_timeout=2", cdn_base_url=CDN)
    with pytest.raises(DatabaseError):
        commands.apply(nowhere, path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace('"size_bytes":2', '"size_bytes":5'))
    with pytest.raises(PlanFileError, match="plan_id does not match"):
        commands.apply(nowhere, path)


def test_the_stored_plan_file_is_the_file_applied(settings, database_url, tmp_path, monkeypatch):
    import zlib

    import importlib

    apply_module = importlib.import_module("reconciler.store.execute")

    monkeypatch.setattr(apply_module, "_CHUNK_CHARS", 64)  # many parts, interleaved with the changes
    bucket = {f"M{i % 3}/P{i % 5}/{i}.jpg": i for i in range(300)}
    path = plan_to(settings, tmp_path, bucket, "p.json")
    original = apply_module.PlanFileCopy

    def small_reads(p):
        copy = original.__new__(original)
        copy.path, copy.parts, copy._error, copy._seen = p, [], None, None
        with open(p, "rb") as f:
            data = f.read()
        z = zlib.compressobj(1)
        copy.parts += [z.compress(data[i : i + 999]) for i in range(0, len(data), 999)] + [z.flush()]
        copy._seen = copy._identity(os.stat(p))
        copy._thread = None
        copy.wait = lambda: None
        copy.check = lambda: None
        return copy

    monkeypatch.setattr(commands, "PlanFileCopy", small_reads)
    result = commands.apply(settings, path)
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT plan_file FROM reconciler_applies WHERE id = %s", (result.apply_id,))
            stored = bytes(cur.fetchone()[0])
    finally:
        conn.close()
    with open(path, "rb") as f:
        assert zlib.decompress(stored) == f.read()
