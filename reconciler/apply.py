"""Apply a reviewed plan: all or nothing, in one transaction.

Order (DESIGN.md, "Apply"): signature → advisory lock (one apply at a time) → table
locks that keep other writers out until commit → refuse an applied plan → refuse a
stale plan (state digest) → re-check delete limits → execute in bulk → audit → commit.

Execution is set-based: the changes are ``COPY``-ed into temporary staging tables and
applied with one ``INSERT … SELECT`` / ``UPDATE … FROM`` / ``DELETE … USING`` per kind
and action; ids are resolved from natural keys inside the transaction. The audit rows
(full before and after images, ids included) are written the same way, in the same
transaction, so the change and its record commit together or not at all.
"""

from __future__ import annotations

import getpass
import json
import os
from dataclasses import dataclass
from typing import Callable

import psycopg2
import psycopg2.errors

from .version import __version__
from .current import read_state
from .db import LOCK_KEY, Database
from .errors import AlreadyAppliedError, DatabaseError, LockTimeoutError, ReconcilerError, StalePlanError
from .planfile import VerifiedPlan
from .safety import Limits, check_delete_limits

Progress = Callable[[str], None]


@dataclass
class ApplyResult:
    apply_id: int | None
    plan_id: str
    summary: dict[str, dict[str, int]]
    database: str = ""

    @property
    def total(self) -> int:
        return sum(sum(v.values()) for v in self.summary.values())


# --------------------------------------------------------------------------- staging

# The verified plan's canonical change lines go to PostgreSQL as they are (COPY into a
# jsonb column) and are unpacked there: no per-change work in Python. In CSV mode with
# quote and delimiter set to control characters, which JSON text never holds raw, a
# line is one field, byte for byte.
_COPY_RAW = "COPY rc_raw (j) FROM STDIN WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')"

_IMAGE = "rc_raw, LATERAL (SELECT CASE WHEN j->>'action' = 'delete' THEN j->'before' ELSE j->'after' END) AS x(i)"
_COMMON = """seq, j->>'action' AS action, j->>'key' AS key,
    CASE WHEN j->>'action' = 'create' THEN (i->>'id')::int END AS row_id,
    CASE WHEN j->>'action' = 'update' THEN ARRAY(SELECT jsonb_object_keys(j->'after')) END AS fields,
    CASE WHEN j->>'action' = 'create' THEN (i->>'created_at')::timestamp END AS created_at"""
_UNPACK = {
    "model": """i->>'thumbnail_url' AS thumbnail_url, i->>'icon_url' AS icon_url, i->>'banner_url' AS banner_url,
        (i->>'post_count')::int AS post_count,
        CASE WHEN j->>'action' = 'create' THEN i->>'status' END AS status""",
    "post": """split_part(j->>'key', '/', 1) AS model_key, substr(j->>'key', strpos(j->>'key', '/') + 1) AS post_folder,
        i->>'title' AS title, nullif((i->'media_cdns')::text, 'null') AS media_cdns""",
    "media": """split_part(i->>'post', '/', 1) AS post_model, substr(i->>'post', strpos(i->>'post', '/') + 1) AS post_folder,
        i->>'url' AS url, i->>'type' AS type, (i->>'size_bytes')::bigint AS size_bytes, i->>'etag' AS etag""",
}


def _stage(cur, spool) -> None:
    """Load the canonical change lines and unpack them into one typed table per kind."""
    cur.execute("CREATE TEMP TABLE rc_raw (seq bigint GENERATED ALWAYS AS IDENTITY, j jsonb NOT NULL) ON COMMIT DROP")
    cur.copy_expert(_COPY_RAW, spool, size=1 << 20)
    for kind in ("model", "post", "media"):
        cur.execute(
            f"""CREATE TEMP TABLE rc_stage_{kind} ON COMMIT DROP AS
                SELECT {_COMMON}, {_UNPACK[kind]} FROM {_IMAGE} WHERE j->>'kind' = %s""",
            (kind,),
        )
        cur.execute(f"CREATE INDEX ON rc_stage_{kind} (key)")
        cur.execute(f"ANALYZE rc_stage_{kind}")


# --------------------------------------------------------------------------- SQL

# How each kind's staging rows find their live row, and the full image the audit keeps
# (the row itself plus its parent's natural key, which a rollback needs after the
# parent itself may be gone).
_JOIN = {
    "model": ("whitelabel_models t", "t.folder_name = s.key", "to_jsonb(t)"),
    "post": (
        "whitelabel_posts t JOIN whitelabel_models pm ON pm.id = t.whitelabel_model_id",
        "pm.folder_name = s.model_key AND t.folder_name = s.post_folder",
        "to_jsonb(t) || jsonb_build_object('model', pm.folder_name)",
    ),
    "media": (
        "whitelabel_media t JOIN whitelabel_posts pp ON pp.id = t.whitelabel_post_id "
        "JOIN whitelabel_models pm ON pm.id = pp.whitelabel_model_id",
        "t.s3_key = s.key",
        "to_jsonb(t) || jsonb_build_object('post', pm.folder_name || '/' || pp.folder_name)",
    ),
}
_SYNCED = "(now() AT TIME ZONE 'UTC')"  # last_synced_at is a timestamp without time zone
_TABLE = {"model": "whitelabel_models", "post": "whitelabel_posts", "media": "whitelabel_media"}
_MANAGED = {
    "model": ("thumbnail_url", "icon_url", "banner_url", "post_count"),
    "post": ("title", "media_cdns"),
    "media": ("url", "type", "size_bytes", "etag"),
}


def _audit_before(cur, apply_id: int, kind: str, expected: int) -> None:
    """Record before images of the rows to update or delete; refuse if any is missing."""
    tables, on, image = _JOIN[kind]
    cur.execute(
        f"""INSERT INTO reconciler_changes (apply_id, kind, action, key, row_id, before)
            SELECT %s, %s, s.action, s.key, t.id, {image}
            FROM rc_stage_{kind} s JOIN {tables} ON {on}
            WHERE s.action IN ('update', 'delete')""",
        (apply_id, kind),
    )
    if cur.rowcount == expected:
        return
    cur.execute(
        f"""SELECT s.key FROM rc_stage_{kind} s
            WHERE s.action IN ('update', 'delete') AND NOT EXISTS (
              SELECT 1 FROM reconciler_changes c WHERE c.apply_id = %s AND c.kind = %s AND c.key = s.key)
            ORDER BY s.seq LIMIT 1""",
        (apply_id, kind),
    )
    missing = cur.fetchone()[0]
    raise StalePlanError(f"the plan changes {kind} {missing!r}, which is not in the database; make a new plan")


def _delete(cur, kind: str) -> None:
    if kind == "media":
        cur.execute("DELETE FROM whitelabel_media t USING rc_stage_media s WHERE s.action = 'delete' AND t.s3_key = s.key")
        return
    if kind == "post":
        # A post's media must be deleted by the plan itself, or they would vanish
        # through ON DELETE CASCADE without an audit record.
        cur.execute(
            """SELECT pm.folder_name || '/' || t.folder_name FROM rc_stage_post s
               JOIN whitelabel_models pm ON pm.folder_name = s.model_key
               JOIN whitelabel_posts t ON t.whitelabel_model_id = pm.id AND t.folder_name = s.post_folder
               WHERE s.action = 'delete' AND EXISTS (SELECT 1 FROM whitelabel_media x WHERE x.whitelabel_post_id = t.id)
               LIMIT 1"""
        )
        row = cur.fetchone()
        if row:
            raise StalePlanError(f"the plan deletes post {row[0]!r} but not all of its media; make a new plan")
        cur.execute(
            """DELETE FROM whitelabel_posts t USING rc_stage_post s, whitelabel_models pm
               WHERE s.action = 'delete' AND pm.folder_name = s.model_key
                 AND t.whitelabel_model_id = pm.id AND t.folder_name = s.post_folder"""
        )
        return
    cur.execute(
        """SELECT t.folder_name FROM rc_stage_model s JOIN whitelabel_models t ON t.folder_name = s.key
           WHERE s.action = 'delete' AND EXISTS (SELECT 1 FROM whitelabel_posts p WHERE p.whitelabel_model_id = t.id)
           LIMIT 1"""
    )
    row = cur.fetchone()
    if row:
        raise StalePlanError(f"the plan deletes model {row[0]!r} but not all of its posts; make a new plan")
    cur.execute("DELETE FROM whitelabel_models t USING rc_stage_model s WHERE s.action = 'delete' AND t.folder_name = s.key")


# The parent's natural key as the audit keeps it next to a created row.
_PARENT_KEY = {"model": "'{}'::jsonb", "post": "jsonb_build_object('model', s.model_key)",
               "media": "jsonb_build_object('post', s.post_model || '/' || s.post_folder)"}


def _insert(cur, apply_id: int, kind: str, expected: int) -> None:
    """Create rows and audit them in the same statement (``RETURNING``).

    Rows restored by a rollback keep their original id (and created_at, status); new
    rows take the columns' own defaults. New ids follow the plan's key order, so the
    same plan gives the same ids.
    """
    if expected == 0:
        return
    managed = _MANAGED[kind]
    cols = ", ".join(managed)
    vals = ", ".join(f"s.{c}" for c in managed).replace("s.media_cdns", "s.media_cdns::json")
    if kind == "model":
        # last_synced_at is set here, so that the audited image is the final row.
        parent_col, parent_val, source = "folder_name, last_synced_at", f"s.key, {_SYNCED}", "rc_stage_model s"
        restore_cols, restore_vals = "id, status, created_at", "s.row_id, s.status, coalesce(s.created_at, now())"
        key_col = "folder_name"
    elif kind == "post":
        parent_col, parent_val = "whitelabel_model_id, folder_name", "pm.id, s.post_folder"
        source = "rc_stage_post s JOIN whitelabel_models pm ON pm.folder_name = s.model_key"
        restore_cols, restore_vals = "id, created_at", "s.row_id, coalesce(s.created_at, now())"
        key_col = "whitelabel_model_id"  # joined back through the model below
    else:
        parent_col, parent_val = "whitelabel_post_id, s3_key", "pp.id, s.key"
        source = (
            "rc_stage_media s JOIN whitelabel_models pm ON pm.folder_name = s.post_model "
            "JOIN whitelabel_posts pp ON pp.whitelabel_model_id = pm.id AND pp.folder_name = s.post_folder"
        )
        restore_cols, restore_vals = "id, created_at", "s.row_id, coalesce(s.created_at, now())"
        key_col = "s3_key"
    table = _TABLE[kind]
    if kind == "post":
        back = ("JOIN whitelabel_models bm ON bm.id = ins.whitelabel_model_id "
                "JOIN rc_stage_post s ON s.action = 'create' AND s.model_key = bm.folder_name "
                "AND s.post_folder = ins.folder_name")
    else:
        back = f"JOIN rc_stage_{kind} s ON s.action = 'create' AND s.key = ins.{key_col}"
    inserted = 0
    for restore in (False, True):
        insert_cols = f"{restore_cols}, {parent_col}, {cols}" if restore else f"{parent_col}, {cols}"
        select = f"{restore_vals}, {parent_val}, {vals}" if restore else f"{parent_val}, {vals}"
        cur.execute(
            f"""WITH ins AS (
                  INSERT INTO {table} ({insert_cols})
                  SELECT {select} FROM {source}
                  WHERE s.action = 'create' AND s.row_id IS {'NOT ' if restore else ''}NULL ORDER BY s.seq
                  RETURNING *)
                INSERT INTO reconciler_changes (apply_id, kind, action, key, row_id, after)
                SELECT %s, %s, 'create', s.key, ins.id, to_jsonb(ins) || {_PARENT_KEY[kind]} FROM ins {back}""",
            (apply_id, kind),
        )
        inserted += cur.rowcount
        if restore and cur.rowcount > 0:
            # Restored ids may lie above the sequence: move it past them.
            sequence = _sequence(cur, table)
            cur.execute(
                f"SELECT setval(%s, greatest((SELECT max(id) FROM {table}), (SELECT last_value FROM {sequence})))",
                (sequence,),
            )
    if inserted != expected:
        parent = {"model": "id", "post": "model", "media": "post"}[kind]
        raise StalePlanError(f"the plan creates {kind} rows whose {parent} is not in the database; make a new plan")


def _sequence(cur, table: str) -> str:
    cur.execute("SELECT pg_get_serial_sequence(%s, 'id')", (table,))
    return cur.fetchone()[0]


def _update(cur, kind: str) -> None:
    sets = [f"{c} = CASE WHEN '{c}' = ANY(s.fields) THEN s.{c} ELSE t.{c} END" for c in _MANAGED[kind]]
    sets = [x.replace("THEN s.media_cdns", "THEN s.media_cdns::json") for x in sets]
    tables, on, _ = _JOIN[kind]
    if kind == "model":
        cur.execute(f"UPDATE whitelabel_models t SET {', '.join(sets)} FROM rc_stage_model s WHERE s.action = 'update' AND {on}")
    elif kind == "post":
        cur.execute(
            f"""UPDATE whitelabel_posts t SET {', '.join(sets)} FROM rc_stage_post s, whitelabel_models pm
                WHERE s.action = 'update' AND pm.id = t.whitelabel_model_id AND {on}"""
        )
    else:
        cur.execute(f"UPDATE whitelabel_media t SET {', '.join(sets)} FROM rc_stage_media s WHERE s.action = 'update' AND {on}")
        # A media item moved to another post (its key's folders changed meaning).
        cur.execute(
            """UPDATE whitelabel_media t SET whitelabel_post_id = pp.id
               FROM rc_stage_media s, whitelabel_models pm, whitelabel_posts pp
               WHERE s.action = 'update' AND 'post' = ANY(s.fields) AND t.s3_key = s.key
                 AND pm.folder_name = s.post_model AND pp.whitelabel_model_id = pm.id AND pp.folder_name = s.post_folder"""
        )


def _audit_after(cur, apply_id: int, kind: str) -> None:
    """After images of updated rows (created rows were audited as they were inserted)."""
    tables, on, image = _JOIN[kind]
    cur.execute(
        f"""UPDATE reconciler_changes c SET after = x.image FROM (
              SELECT s.key, {image} AS image FROM rc_stage_{kind} s JOIN {tables} ON {on} WHERE s.action = 'update'
            ) x WHERE c.apply_id = %s AND c.kind = %s AND c.key = x.key""",
        (apply_id, kind),
    )


def _touch_models(cur) -> None:
    """``last_synced_at`` on every surviving model the plan touched."""
    cur.execute(
        f"""UPDATE whitelabel_models SET last_synced_at = {_SYNCED} WHERE folder_name IN (
             SELECT key FROM rc_stage_model WHERE action = 'update'
             UNION SELECT model_key FROM rc_stage_post
             UNION SELECT post_model FROM rc_stage_media WHERE post_model IS NOT NULL
             UNION SELECT pm.folder_name FROM rc_stage_media s
               JOIN whitelabel_media x ON x.s3_key = s.key
               JOIN whitelabel_posts pp ON pp.id = x.whitelabel_post_id
               JOIN whitelabel_models pm ON pm.id = pp.whitelabel_model_id)"""
    )


# --------------------------------------------------------------------------- apply


def apply_plan(
    db: Database,
    verified: VerifiedPlan,
    *,
    lock_timeout: float = 60.0,
    limits: Limits = Limits(),
    progress: Progress = lambda msg: None,
) -> ApplyResult:
    """Execute a verified plan (see :func:`reconciler.planfile.verify_plan`, with
    ``spool=True``: its signature was checked there) exactly.

    Raises a :class:`ReconcilerError` and changes nothing when any check or
    statement fails.
    """
    plan = verified.plan
    summary = plan.summary
    total = sum(sum(v.values()) for v in summary.values())
    if total == 0:
        return ApplyResult(None, plan.plan_id, summary, db.display)
    if verified.spool is None:
        raise ValueError("apply_plan needs the plan's changes spooled: verify_plan(path, spool=True)")
    deletes = sum(v["delete"] for v in summary.values())
    try:
        with db.transaction() as conn, conn.cursor() as cur:
            # PostgreSQL reads lock_timeout 0 as "wait forever": 0 here means "do not wait".
            cur.execute("SET LOCAL lock_timeout = %s", (f"{max(1, int(lock_timeout * 1000))}ms",))
            progress("waiting for the apply lock")
            try:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
                cur.execute(
                    "LOCK TABLE whitelabel_models, whitelabel_posts, whitelabel_media IN SHARE ROW EXCLUSIVE MODE"
                )
            except psycopg2.errors.LockNotAvailable:
                raise LockTimeoutError(
                    f"another apply (or a writer of the content tables) held the lock for more than {lock_timeout:g}s; "
                    "wait for it to finish, or raise --lock-timeout"
                ) from None
            cur.execute("SELECT id, applied_at FROM reconciler_applies WHERE plan_id = %s", (plan.plan_id,))
            row = cur.fetchone()
            if row:
                raise AlreadyAppliedError(
                    f"plan {plan.plan_id[:12]} was already applied (apply {row[0]}, {row[1]:%Y-%m-%d %H:%M:%S %Z}); "
                    "make a new plan to apply further changes"
                )
            progress("checking that the database has not changed since the plan")
            state = read_state(conn, plan.scope)
            current_rows = sum(sum(1 for _ in rows) for rows in (state.models, state.posts, state.media))
            if state.digest() != plan.target["state_digest"]:
                raise StalePlanError(
                    "the plan is stale: the database changed since the plan was made "
                    f"(at {plan.created_at}); make a new plan and review it"
                )
            check_delete_limits(deletes, current_rows, limits, when="plan being applied")
            cur.execute(
                """INSERT INTO reconciler_applies
                     (plan_id, os_user, tool_version, source, scope, summary, plan_created_at, rolls_back)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
                (
                    plan.plan_id,
                    _os_user(),
                    __version__,
                    plan.source.get("url"),
                    json.dumps(plan.scope),
                    json.dumps(summary),
                    plan.created_at,
                    plan.extra.get("rolls_back"),
                ),
            )
            apply_id = cur.fetchone()[0]
            progress(f"staging {total} changes")
            _stage(cur, verified.spool)
            for kind in ("model", "post", "media"):
                _audit_before(cur, apply_id, kind, summary[kind]["update"] + summary[kind]["delete"])
            progress("deleting")
            for kind in ("media", "post", "model"):
                if summary[kind]["delete"]:
                    _delete(cur, kind)
            progress("creating and updating")
            for kind in ("model", "post", "media"):
                _insert(cur, apply_id, kind, summary[kind]["create"])
                if summary[kind]["update"]:
                    _update(cur, kind)
            _touch_models(cur)
            progress("writing the audit log")
            for kind in ("model", "post", "media"):
                if summary[kind]["update"]:
                    _audit_after(cur, apply_id, kind)
            progress("committing")
    except ReconcilerError:
        raise
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as e:
        raise DatabaseError(
            "lost the connection to the database during apply; an interrupted transaction is rolled back by the "
            "server, so run apply again: it applies the plan, or says it was already applied "
            f"({db.error(e, 'detail').args[0]})"
        ) from None
    except psycopg2.Error as e:
        raise db.error(e, "apply failed and changed nothing") from None
    return ApplyResult(apply_id, plan.plan_id, summary, db.display)


def _os_user() -> str | None:
    """Who applies: ``RECONCILER_ACTOR`` or ``GITHUB_ACTOR`` (the person behind a CI
    run), with the OS user; else the OS user alone."""
    try:
        user = getpass.getuser()
    except Exception:
        user = None
    actor = os.environ.get("RECONCILER_ACTOR") or os.environ.get("GITHUB_ACTOR")
    if actor:
        return f"{actor} (as {user})" if user and user != actor else actor
    return user
