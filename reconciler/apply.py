"""Apply a reviewed plan: all or nothing, in one transaction.

Order (DESIGN.md, "Apply"): the file is verified first (schema, plan_id, signature:
:func:`reconciler.planfile.verify_plan`, which hands the changes to a :class:`Stage`),
then, in one transaction: advisory lock (one apply at a time) → table locks that keep
other writers out until commit → refuse an applied plan → refuse a stale plan (state
digest) → re-check delete limits → execute in bulk → audit → commit.

Execution is set-based: the changes are ``COPY``-ed into temporary staging tables and
applied with one ``INSERT … SELECT`` / ``UPDATE … FROM`` / ``DELETE … USING`` per kind
and action; ids are resolved from natural keys inside the transaction. The audit rows
(full before and after images, ids included) are written the same way, in the same
transaction (created rows by the very statement that inserts them), so the change and
its record commit together or not at all.
"""

from __future__ import annotations

import getpass
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Callable

import psycopg2
import psycopg2.errors

from .version import __version__
from .current import state_digest
from .db import LOCK_KEY, Database
from .errors import AlreadyAppliedError, DatabaseError, LockTimeoutError, ReconcilerError, StalePlanError
from .planfile import Plan
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

_STAGE = {
    "model": (
        "seq int, action text, key text, row_id int, fields text[], thumbnail_url text, icon_url text, "
        "banner_url text, post_count int, status text, created_at timestamp"
    ),
    "post": (
        "seq int, action text, key text, model_key text, post_folder text, row_id int, fields text[], "
        "title text, media_cdns text, created_at timestamp"
    ),
    "media": (
        "seq int, action text, key text, post_model text, post_folder text, row_id int, fields text[], "
        "url text, type text, size_bytes bigint, etag text, created_at timestamp"
    ),
}
# COPY's text format: backslash, tab and line breaks escaped; NULL is \N.
_ESCAPE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _text(v) -> str:
    if v is None:
        return "\\N"
    if type(v) is str:
        # Nearly every value is printable and has no backslash: then it needs no escaping.
        return v if v.isprintable() and "\\" not in v else v.translate(_ESCAPE)
    if type(v) is dict:
        return json.dumps(v, sort_keys=True, ensure_ascii=False).translate(_ESCAPE)
    return str(v)


class Stage:
    """Verified changes, written as typed rows to one temporary file per kind, then
    ``COPY``-ed into temporary tables inside the apply's transaction. A
    :class:`~reconciler.planfile.ChangeSink`: ``verify_plan(path, sink=Stage())``."""

    def __init__(self) -> None:
        self.files = {k: tempfile.TemporaryFile("w+", encoding="utf-8") for k in _STAGE}
        self.seq = 0

    def reset(self) -> None:
        for f in self.files.values():
            f.seek(0)
            f.truncate()
        self.seq = 0

    def add_batch(self, changes: list[dict]) -> None:
        rows: dict[str, list[str]] = {k: [] for k in _STAGE}
        t = _text
        for c in changes:
            self.seq += 1
            action, kind, key = c["action"], c["kind"], c["key"]
            create = action == "create"
            image = c["before"] if action == "delete" else c["after"]
            g = image.get
            fields = "{" + ",".join(sorted(image)) + "}" if action == "update" else "\\N"
            row_id = t(g("id")) if create else "\\N"
            created_at = t(g("created_at")) if create else "\\N"
            head = f"{self.seq}\t{action}\t{t(key)}"
            if kind == "media":
                post = g("post")
                if post is None:
                    pm = pp = "\\N"
                else:
                    model, _, folder = post.partition("/")
                    pm, pp = t(model), t(folder)
                rows[kind].append(
                    f"{head}\t{pm}\t{pp}\t{row_id}\t{fields}\t{t(g('url'))}\t{t(g('type'))}\t"
                    f"{t(g('size_bytes'))}\t{t(g('etag'))}\t{created_at}"
                )
            elif kind == "post":
                model, _, folder = key.partition("/")
                rows[kind].append(
                    f"{head}\t{t(model)}\t{t(folder)}\t{row_id}\t{fields}\t{t(g('title'))}\t"
                    f"{t(g('media_cdns'))}\t{created_at}"
                )
            else:
                status = t(g("status")) if create else "\\N"
                rows[kind].append(
                    f"{head}\t{row_id}\t{fields}\t{t(g('thumbnail_url'))}\t{t(g('icon_url'))}\t"
                    f"{t(g('banner_url'))}\t{t(g('post_count'))}\t{status}\t{created_at}"
                )
        for kind, lines in rows.items():
            if lines:
                self.files[kind].write("\n".join(lines))
                self.files[kind].write("\n")

    def load(self, cur) -> None:
        """Create the staging tables and ``COPY`` the rows in (inside the transaction)."""
        for kind, f in self.files.items():
            f.flush()
            f.seek(0)
            cur.execute(f"CREATE TEMP TABLE rc_stage_{kind} ({_STAGE[kind]}) ON COMMIT DROP")
            cur.copy_expert(f"COPY rc_stage_{kind} FROM STDIN", f, size=1 << 20)
            cur.execute(f"CREATE INDEX ON rc_stage_{kind} (key)")
            cur.execute(f"ANALYZE rc_stage_{kind}")

    def close(self) -> None:
        for f in self.files.values():
            f.close()


# --------------------------------------------------------------------------- SQL

# How each kind's staging rows find their live row, and the full image the audit keeps
# (the row itself plus its parent's natural key, which a rollback needs after the
# parent itself may be gone).
_JOIN = {
    "model": ("whitelabel_models t", "t.folder_name = s.key", "NULL"),
    "post": (
        "whitelabel_posts t JOIN whitelabel_models pm ON pm.id = t.whitelabel_model_id",
        "pm.folder_name = s.model_key AND t.folder_name = s.post_folder",
        "pm.folder_name",
    ),
    "media": (
        "whitelabel_media t JOIN whitelabel_posts pp ON pp.id = t.whitelabel_post_id "
        "JOIN whitelabel_models pm ON pm.id = pp.whitelabel_model_id",
        "t.s3_key = s.key",
        "pm.folder_name || '/' || pp.folder_name",
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
    tables, on, parent = _JOIN[kind]
    cur.execute(
        f"""INSERT INTO reconciler_changes (apply_id, kind, action, key, row_id, before_parent, before)
            SELECT %s, %s, s.action, s.key, t.id, {parent}, row_to_json(t)
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
    elif kind == "post":
        parent_col, parent_val = "whitelabel_model_id, folder_name", "pm.id, s.post_folder"
        source = "rc_stage_post s JOIN whitelabel_models pm ON pm.folder_name = s.model_key"
        restore_cols, restore_vals = "id, created_at", "s.row_id, coalesce(s.created_at, now())"
    else:
        parent_col, parent_val = "whitelabel_post_id, s3_key", "pp.id, s.key"
        source = (
            "rc_stage_media s JOIN whitelabel_models pm ON pm.folder_name = s.post_model "
            "JOIN whitelabel_posts pp ON pp.whitelabel_model_id = pm.id AND pp.folder_name = s.post_folder"
        )
        restore_cols, restore_vals = "id, created_at", "s.row_id, coalesce(s.created_at, now())"
    table = _TABLE[kind]
    # The audit's key and parent key come from the new row's (few) parents, not from a
    # join of a million new rows back to the staging table.
    if kind == "model":
        audit = "ins.folder_name, NULL, row_to_json(ins) FROM ins"
    elif kind == "post":
        audit = ("bm.folder_name || '/' || ins.folder_name, bm.folder_name, row_to_json(ins) "
                 "FROM ins JOIN whitelabel_models bm ON bm.id = ins.whitelabel_model_id")
    else:
        audit = ("ins.s3_key, bm.folder_name || '/' || bp.folder_name, row_to_json(ins) "
                 "FROM ins JOIN whitelabel_posts bp ON bp.id = ins.whitelabel_post_id "
                 "JOIN whitelabel_models bm ON bm.id = bp.whitelabel_model_id")
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
                INSERT INTO reconciler_changes (apply_id, kind, action, row_id, key, after_parent, after)
                SELECT %s, %s, 'create', ins.id, {audit}""",
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
    tables, on, parent = _JOIN[kind]
    cur.execute(
        f"""UPDATE reconciler_changes c SET after = x.image, after_parent = x.parent FROM (
              SELECT s.key, row_to_json(t) AS image, {parent} AS parent
              FROM rc_stage_{kind} s JOIN {tables} ON {on} WHERE s.action = 'update'
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
               JOIN whitelabel_media x ON s.action = 'update' AND x.s3_key = s.key
               JOIN whitelabel_posts pp ON pp.id = x.whitelabel_post_id
               JOIN whitelabel_models pm ON pm.id = pp.whitelabel_model_id)"""
    )


# --------------------------------------------------------------------------- apply


def apply_plan(
    db: Database,
    plan: Plan,
    stage: Stage,
    *,
    lock_timeout: float = 60.0,
    limits: Limits = Limits(),
    progress: Progress = lambda msg: None,
    actor: str | None = None,
) -> ApplyResult:
    """Execute a verified plan exactly: ``plan`` and its changes in ``stage`` come from
    ``verify_plan(path, keep_changes=False, sink=stage)``, which checked the schema,
    plan_id and signature.

    Raises a :class:`ReconcilerError` and changes nothing when any check or
    statement fails.
    """
    summary = plan.summary
    total = sum(sum(v.values()) for v in summary.values())
    if total == 0:
        return ApplyResult(None, plan.plan_id, summary, db.display)
    deletes = sum(v["delete"] for v in summary.values())
    try:
        with db.transaction() as conn, conn.cursor() as cur:
            # PostgreSQL reads lock_timeout 0 as "wait forever": 0 here means "do not wait".
            cur.execute("SET LOCAL lock_timeout = %s", (f"{max(1, int(lock_timeout * 1000))}ms",))
            # Bulk statements sort and hash a million rows: let them do it in memory.
            cur.execute("SET LOCAL work_mem = '256MB'")
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
            state = state_digest(conn, plan.scope)
            current_rows = state.rows
            if state.digest != plan.target["state_digest"]:
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
                    _os_user(actor),
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
            stage.load(cur)
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


def _os_user(actor: str | None = None) -> str | None:
    """Who applies: ``actor`` (who approved a run of ``reconciler serve``), else
    ``RECONCILER_ACTOR`` or ``GITHUB_ACTOR`` (the person behind a CI run), with the OS
    user; else the OS user alone."""
    try:
        user = getpass.getuser()
    except Exception:
        user = None
    actor = actor or os.environ.get("RECONCILER_ACTOR") or os.environ.get("GITHUB_ACTOR")
    if actor:
        return f"{actor} (as {user})" if user and user != actor else actor
    return user
