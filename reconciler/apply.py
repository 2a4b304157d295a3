"""Apply a reviewed plan: all or nothing, in one transaction.

Order (DESIGN.md, "Apply"): the file is verified first (schema, plan_id, signature:
:func:`reconciler.planfile.verify_plan`, which hands the changes to a :class:`Stage`),
then, in one transaction: advisory lock (one apply at a time) → table locks that keep
other writers out until commit → refuse an applied plan → refuse a plan made for
another database → refuse a stale plan (state digest) → re-check the delete and URL
limits → execute in bulk → audit → commit.

:func:`apply_file` (what ``reconciler apply`` runs) opens that transaction before
verifying, to stream the verified changes, and the compressed file for the audit, into
temporary tables of its own while the rest of the file is still being read
(:class:`StreamStage`): temporary tables take no lock another session waits for, and
nothing else is read or written until verification has passed, so the order above
holds for everything that touches the catalogue. A plan that fails verification is
refused as such (a database error the stream met is reported only after it passed),
and its transaction is rolled back.

Execution is set-based: the changes are ``COPY``-ed into temporary staging tables and
applied with one ``INSERT … SELECT`` / ``UPDATE … FROM`` / ``DELETE … USING`` per kind
and action. The ids of the rows to update, move or delete are resolved from their
natural keys first, before anything changes (a moved model's posts are found by the
model's old name); then moves, creates and updates run parents first, and deletes
children first (a post is deleted after its media moved out). The audit is written in
the same transaction, so the change and its record commit together or not at all: the
plan file itself, compressed, on the ``reconciler_applies`` row, plus full before images
(ids included) of the rows updated, moved or deleted and after images of those updated
or moved. Created rows get no audit row: their images are in the stored plan and their
ids are found by key (see :mod:`reconciler.audit`), so a first apply of a million rows
does not write them twice.
"""

from __future__ import annotations

import getpass
import json
import operator
import os
import queue
import stat
import struct
import tempfile
import threading
import zlib
from dataclasses import dataclass
from typing import Callable

import psycopg2
import psycopg2.errors

from .version import __version__
from .current import database_identity, state_digest
from .db import LOCK_KEY, Database
from .errors import (
    AlreadyAppliedError,
    DatabaseError,
    LockTimeoutError,
    PlanFileError,
    ReconcilerError,
    StalePlanError,
    WrongDatabaseError,
)
from .planfile import Plan
from .safety import Limits, check_delete_limits, check_url_rewrites

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

# row_id: the id to restore (a rollback's create), else the live row's id, resolved
# inside the transaction. from_*: a move's old key. seq: the plan's order, numbered by
# the server as the rows arrive (rows are written in plan order).
_STAGE = {
    "model": (
        "action text, key text, row_id int, fields text[], thumbnail_url text, icon_url text, "
        "banner_url text, post_count int, status text, created_at timestamp, from_key text"
    ),
    "post": (
        "action text, key text, model_key text, post_folder text, row_id int, fields text[], "
        "title text, media_cdns text, created_at timestamp, from_model text, from_folder text"
    ),
    # Columns in the order of planfile.FAST_COLUMNS, after those the fast path leaves null.
    "media": (
        "row_id int, fields text[], created_at timestamp, from_key text, "
        "action text, etag text, post text, key text, size_bytes bigint, type text, url text"
    ),
}
_COLUMNS = {kind: ", ".join(c.split()[0] for c in cols.split(", ")) for kind, cols in _STAGE.items()}
_GENERATED = {
    "media": ", post_model text GENERATED ALWAYS AS (split_part(post, '/', 1)) STORED"
    ", post_folder text GENERATED ALWAYS AS (substr(post, strpos(post, '/') + 1)) STORED",
}
# The rows are CSV with NULL written as an unquoted null and every string quoted (a
# quoted "null" is the text). A JSON string without escapes or control characters is
# thereby its own CSV text: the fast path's rows (planfile.FAST_COLUMNS, the JSON
# text of each value) are staged as they come, never parsed.
_FAST_PREFIX = "null,null,null,null,"
_POST_TEXT = operator.itemgetter(2)  # planfile.FAST_COLUMNS["media"].index("post")


def _post_update_row(row: tuple[str, str, str]) -> str:
    """A fast-path post update (media_cdns alone) as :meth:`Stage.add_batch` stages it:
    media_cdns as ``json.dumps(value, sort_keys=True, ensure_ascii=False)`` writes it,
    which is its canonical text re-spaced (planfile._CDNS admits only strings for which
    '":' and ',"' are the separators)."""
    action, cdns, key = row
    model, _, folder = key[1:-1].partition("/")
    spaced = cdns.replace('":', '": ').replace(',"', ', "').replace('"', '""')
    return f'{action[1:-1]},{key},"{model}","{folder}",null,"{{media_cdns}}",null,"{spaced}",null,null,null\n'


def _csv(v) -> str:
    if v is None:
        return "null"
    if type(v) is str:
        return '"' + v.replace('"', '""') + '"' if '"' in v else '"' + v + '"'
    if type(v) is dict:
        return _csv(json.dumps(v, sort_keys=True, ensure_ascii=False))
    return str(v)


class Stage:
    """Verified changes, written as typed rows to one temporary file per kind, then
    ``COPY``-ed into temporary tables inside the apply's transaction. A
    :class:`~reconciler.planfile.ChangeSink`: ``verify_plan(path, sink=Stage())``.

    :class:`StreamStage` formats the same rows and streams them into the tables while
    the file is verified."""

    def __init__(self) -> None:
        self.files = {k: tempfile.TemporaryFile("w+", encoding="utf-8", newline="") for k in _STAGE}  # "\r" as it is
        self._clear()

    def _clear(self) -> None:
        # What later statements need not scan the staging tables for: the creates that
        # restore an id (a rollback's), and the posts the media rows name (as JSON text
        # from the fast path, else as values), whose models are touched.
        self.restores = {k: 0 for k in _STAGE}
        self.post_texts: set[str] = set()
        self.posts: set[str] = set()

    def touched_models(self) -> list[str]:
        posts = self.posts | {p[1:-1] for p in self.post_texts}  # fast-path strings hold no escapes
        return sorted({p.partition("/")[0] for p in posts})

    def _write(self, kind: str, text: str) -> None:
        self.files[kind].write(text)

    def reset(self) -> None:
        self._clear()
        for f in self.files.values():
            f.seek(0)
            f.truncate()

    def add_rows(self, kind: str, rows: list[tuple[str, ...]]) -> None:
        if kind == "post":
            self._write(kind, "".join(map(_post_update_row, rows)))
            return
        if kind == "media":
            self.post_texts.update(map(_POST_TEXT, rows))
        self._write(kind, _FAST_PREFIX + ("\n" + _FAST_PREFIX).join(map(",".join, rows)) + "\n")

    def add_batch(self, changes: list[dict]) -> None:
        rows: dict[str, list[str]] = {k: [] for k in _STAGE}
        t = _csv
        for c in changes:
            action, kind, key = c["action"], c["kind"], c["key"]
            create = action == "create"
            image = c["before"] if action == "delete" else c["after"]
            g = image.get
            fields = '"{' + ",".join(sorted(image)) + '}"' if action in ("update", "move") else "null"
            source = c.get("from")
            row_id = t(g("id")) if create else "null"
            if row_id != "null":
                self.restores[kind] += 1
            created_at = t(g("created_at")) if create else "null"
            head = f"{action},{t(key)}"
            if kind == "media":
                if g("post") is not None:
                    self.posts.add(g("post"))
                rows[kind].append(
                    f"{row_id},{fields},{created_at},{t(source)},{t(action)},{t(g('etag'))},{t(g('post'))},{t(key)},"
                    f"{t(g('size_bytes'))},{t(g('type'))},{t(g('url'))}"
                )
            elif kind == "post":
                model, _, folder = key.partition("/")
                if source is None:
                    fm = ff = "null"
                else:
                    fm, _, ff = source.partition("/")
                    fm, ff = t(fm), t(ff)
                rows[kind].append(
                    f"{head},{t(model)},{t(folder)},{row_id},{fields},{t(g('title'))},"
                    f"{t(g('media_cdns'))},{created_at},{fm},{ff}"
                )
            else:
                status = t(g("status")) if create else "null"
                rows[kind].append(
                    f"{head},{row_id},{fields},{t(g('thumbnail_url'))},{t(g('icon_url'))},"
                    f"{t(g('banner_url'))},{t(g('post_count'))},{status},{created_at},{t(source)}"
                )
        # Kinds in plan order: a batch that spans kinds is staged in the order it lists them.
        for kind in ("model", "post", "media"):
            lines = rows[kind]
            if lines:
                lines.append("")
                self._write(kind, "\n".join(lines))

    def load(self, cur) -> None:
        """Create the staging tables and ``COPY`` the rows in (inside the transaction)."""
        for kind, f in self.files.items():
            f.flush()
            f.seek(0)
            _create_stage_table(cur, kind)
            cur.copy_expert(_copy_sql(kind), f, size=1 << 20)
        _index_stage(cur)

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def _create_stage_table(cur, kind: str) -> None:
    cur.execute(
        f"CREATE TEMP TABLE rc_stage_{kind} (seq int GENERATED ALWAYS AS IDENTITY, {_STAGE[kind]}"
        f"{_GENERATED.get(kind, '')}) ON COMMIT DROP"
    )


def _copy_sql(kind: str) -> str:
    return f"COPY rc_stage_{kind} ({_COLUMNS[kind]}) FROM STDIN (FORMAT csv, NULL 'null')"


def _index_stage(cur) -> None:
    """Statistics for the planner. No index: every statement joins the staging tables
    as a whole (hash joins on the content tables' own keys)."""
    for kind in _STAGE:
        cur.execute(f"ANALYZE rc_stage_{kind}")


_PLAN_FILE = "plan_file"  # the compressed plan file's parts, rows of rc_plan_file
_BINARY_HEAD = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_BINARY_TAIL = struct.pack("!h", -1)
_PLAN_FILE_TABLE = "CREATE TEMP TABLE rc_plan_file (seq int GENERATED ALWAYS AS IDENTITY, data bytea) ON COMMIT DROP"
_END = object()  # the end of a stream
_RESET = object()  # staged rows dropped (verification starts again)
_CHUNK_CHARS = 1 << 20


class _Feed:
    """What ``copy_expert`` reads for one ``COPY`` of one kind: the queued chunks of that
    kind; the first item of anything else ends it and is kept for the next."""

    def __init__(self, q: queue.Queue, kind: str, first) -> None:
        self.q, self.kind = q, kind
        self.binary = kind == _PLAN_FILE  # rows of COPY's binary format, framed here
        self.first = _BINARY_HEAD + first if self.binary else first
        self.next = None

    def read(self, size: int = -1):
        if self.first is not None:
            data, self.first = self.first, None
            return data
        if self.next is not None:
            return ""
        item = self.q.get()
        if type(item) is tuple and item[0] == self.kind:
            return item[1]
        self.next = item
        return _BINARY_TAIL if self.binary else ""

    readline = read


class StreamStage(Stage):
    """A :class:`Stage` that streams its rows into the staging tables as they come,
    on the apply's connection (in its transaction), from a thread: the server parses
    and stores them while the client goes on verifying the file.

    The tables are created first (temporary tables take no lock another session
    waits for, so this precedes the locks, as DESIGN.md orders it). A database error
    is held back: :meth:`finish` raises it, which the caller does only once
    verification passed (a plan that fails verification is refused as such).
    :meth:`abort` ends the stream without a verdict (the transaction is then rolled
    back)."""

    def __init__(self, conn, plan_file: "PlanFileCopy | None" = None) -> None:
        self.conn = conn
        self.plan_file = plan_file
        self._parts_sent = 0
        self._clear()
        self.error: BaseException | None = None
        self._buf: list[str] = []
        self._buf_kind: str | None = None
        self._buf_chars = 0
        self._finished = False
        with conn.cursor() as cur:
            for kind in _STAGE:
                _create_stage_table(cur, kind)
            if plan_file is not None:
                cur.execute(_PLAN_FILE_TABLE)
        self._q: queue.Queue = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._run, name="apply-stage", daemon=True)
        self._thread.start()

    # ---- producer (the verifying thread)

    def _write(self, kind: str, text: str) -> None:
        if kind != self._buf_kind:
            self._flush()
            self._buf_kind = kind
        self._buf.append(text)
        self._buf_chars += len(text)
        if self._buf_chars >= _CHUNK_CHARS:
            self._flush()

    def _flush(self) -> None:
        if self._buf:
            self._q.put((self._buf_kind, "".join(self._buf)))
            self._buf, self._buf_chars = [], 0
        self._send_plan_file()

    def _send_plan_file(self) -> None:
        """The parts of the compressed plan file made so far, as rows of rc_plan_file
        (the audit's copy of the file is thereby stored while the file is verified)."""
        if self.plan_file is None:
            return
        parts = self.plan_file.parts
        while self._parts_sent < len(parts):
            part = parts[self._parts_sent]
            parts[self._parts_sent] = b""  # sent: not held twice (a 10M-object plan compresses to ~600 MB)
            self._parts_sent += 1
            if part:
                self._q.put((_PLAN_FILE, struct.pack("!hi", 1, len(part)) + part))

    def reset(self) -> None:
        self._clear()
        self._buf, self._buf_chars = [], 0
        self._q.put(_RESET)

    def finish(self) -> None:
        """Wait for every row to be stored, then analyze the tables; raise a held-back
        database error."""
        if not self._thread.is_alive() and self._finished:
            return
        self._stop()
        if self.error is not None:
            raise self.error
        with self.conn.cursor() as cur:
            _index_stage(cur)
        self._finished = True

    def abort(self) -> None:
        self._buf = []
        self.plan_file = None  # not waited for
        self._stop()

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._flush()
            if self.plan_file is not None and self.error is None:
                self.plan_file.wait()
                self._send_plan_file()
            self._q.put(_END)
            self._thread.join()

    def load(self, cur) -> None:
        self.finish()

    def close(self) -> None:
        if self._thread.is_alive():
            self.abort()

    # ---- consumer (the stream's thread)

    def _run(self) -> None:
        q = self._q
        item = None
        with self.conn.cursor() as cur:
            while True:
                if item is None:
                    item = q.get()
                if item is _END:
                    return
                if self.error is not None:  # drained, so that the producer never blocks
                    item = None
                    continue
                feed = None
                try:
                    if item is _RESET:
                        item = None
                        cur.execute("TRUNCATE " + ", ".join(f"rc_stage_{k}" for k in _STAGE) + " RESTART IDENTITY")
                        continue
                    kind, data = item
                    feed = _Feed(q, kind, data)
                    item = None
                    sql = "COPY rc_plan_file (data) FROM STDIN (FORMAT binary)" if kind == _PLAN_FILE else _copy_sql(kind)
                    cur.copy_expert(sql, feed, size=_CHUNK_CHARS)
                    item = feed.next
                except BaseException as e:  # held back for finish()
                    self.error = e
                    item = feed.next if feed is not None else None


class PlanFileCopy:
    """The plan file, zlib-compressed for the audit entry, made in a thread while the
    file is verified (zlib releases the GIL, so it costs the apply almost no time).

    :meth:`result` refuses a file that changed while it was read: the bytes stored are
    then the bytes verified. A path that is not a regular file is left to
    ``verify_plan`` to refuse.
    """

    def __init__(self, path: str, level: int = 1) -> None:
        self.path = path
        self.parts: list[bytes] = []  # compressed so far (StreamStage sends them as they come)
        self._error: BaseException | None = None
        self._seen = None
        self._thread = None
        try:
            st = os.stat(path)
        except OSError:
            return
        if stat.S_ISREG(st.st_mode):
            self._thread = threading.Thread(target=self._run, args=(level,), name="plan-file-copy", daemon=True)
            self._thread.start()

    @staticmethod
    def _identity(st) -> tuple:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def _run(self, level: int) -> None:
        try:
            z = zlib.compressobj(level)
            parts = self.parts
            with open(self.path, "rb") as f:
                self._seen = self._identity(os.fstat(f.fileno()))
                while chunk := f.read(4 << 20):
                    parts.append(z.compress(chunk))
            parts.append(z.flush())
        except BaseException as e:  # reported by result()
            self._error = e

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def result(self) -> bytes:
        """The compressed file; refused if it could not be read or changed since."""
        self.check()
        return b"".join(self.parts)

    def check(self) -> None:
        if self._thread is None:
            raise PlanFileError(f"cannot read plan file {self.path}")
        self._thread.join()
        if self._error is not None:
            raise PlanFileError(f"cannot read plan file {self.path}: {self._error}")
        try:
            now = self._identity(os.stat(self.path))
        except OSError:
            now = None
        if now != self._seen:
            raise PlanFileError(f"plan file {self.path} changed while it was being applied; apply it again")

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
        self.parts = []


# --------------------------------------------------------------------------- SQL

# How each kind's staging rows find their live row by natural key (a move's by its old
# key), before anything changes.
_FIND = {
    "model": ("whitelabel_models t", "t.folder_name = coalesce(s.from_key, s.key)", "coalesce(s.from_key, s.key)"),
    "post": (
        "whitelabel_posts t JOIN whitelabel_models pm ON pm.id = t.whitelabel_model_id",
        "pm.folder_name = coalesce(s.from_model, s.model_key) AND t.folder_name = coalesce(s.from_folder, s.post_folder)",
        "coalesce(s.from_model || '/' || s.from_folder, s.key)",
    ),
    "media": ("whitelabel_media t", "t.s3_key = coalesce(s.from_key, s.key)", "coalesce(s.from_key, s.key)"),
}
# A live row (by id) with its parents, and the full image the audit keeps: the row
# itself plus its parent's natural key, which a rollback needs after the parent itself
# may be gone.
_ROW = {
    "model": ("whitelabel_models t", "NULL"),
    "post": ("whitelabel_posts t JOIN whitelabel_models pm ON pm.id = t.whitelabel_model_id", "pm.folder_name"),
    "media": (
        "whitelabel_media t JOIN whitelabel_posts pp ON pp.id = t.whitelabel_post_id "
        "JOIN whitelabel_models pm ON pm.id = pp.whitelabel_model_id",
        "pm.folder_name || '/' || pp.folder_name",
    ),
}
# Is a move's new key taken already?
_TAKEN = {
    "model": "whitelabel_models t ON t.folder_name = s.key",
    "post": "whitelabel_models pm ON pm.folder_name = s.model_key "
    "JOIN whitelabel_posts t ON t.whitelabel_model_id = pm.id AND t.folder_name = s.post_folder",
    "media": "whitelabel_media t ON t.s3_key = s.key",
}
_SYNCED = "(now() AT TIME ZONE 'UTC')"  # last_synced_at is a timestamp without time zone
_TABLE = {"model": "whitelabel_models", "post": "whitelabel_posts", "media": "whitelabel_media"}
_MANAGED = {
    "model": ("thumbnail_url", "icon_url", "banner_url", "post_count"),
    "post": ("title", "media_cdns"),
    "media": ("url", "type", "size_bytes", "etag"),
}


def _resolve(cur, kind: str, expected: int) -> None:
    """Find the ids of the rows to update, move or delete; refuse if any is missing,
    and refuse a move onto a key that is taken."""
    if expected == 0:
        return
    tables, on, old_key = _FIND[kind]
    cur.execute(f"UPDATE rc_stage_{kind} s SET row_id = t.id FROM {tables} WHERE s.action <> 'create' AND {on}")
    if cur.rowcount != expected:
        cur.execute(
            f"""SELECT s.action, s.key, {old_key} FROM rc_stage_{kind} s
                WHERE s.action <> 'create' AND s.row_id IS NULL ORDER BY s.seq LIMIT 1"""
        )
        action, key, old = cur.fetchone()
        if action == "move":
            raise StalePlanError(
                f"the plan moves {kind} {old!r} to {key!r}, but {old!r} is not in the database; make a new plan"
            )
        raise StalePlanError(f"the plan changes {kind} {key!r}, which is not in the database; make a new plan")
    cur.execute(f"SELECT s.key FROM rc_stage_{kind} s JOIN {_TAKEN[kind]} WHERE s.action = 'move' ORDER BY s.seq LIMIT 1")
    row = cur.fetchone()
    if row:
        raise StalePlanError(f"the plan moves a {kind} onto {row[0]!r}, which is in the database already; make a new plan")


def _audit_before(cur, apply_id: int, kind: str) -> None:
    """Record before images of the rows to update, move or delete (ids resolved)."""
    tables, parent = _ROW[kind]
    cur.execute(
        f"""INSERT INTO reconciler_changes (apply_id, kind, action, key, row_id, before_parent, before)
            SELECT %s, %s, s.action, s.key, t.id, {parent}, row_to_json(t)
            FROM rc_stage_{kind} s JOIN {tables} ON t.id = s.row_id
            WHERE s.action IN ('update', 'move', 'delete')""",
        (apply_id, kind),
    )


def _delete_early(cur, kind: str) -> None:
    """Delete, before any move or create, the rows that have no children left: a
    deleted row may free the key that a move or a create takes (a rollback moves a
    post back onto the name of a post it deletes). The rest go after the moves, and
    give up their keys here."""
    child = {"post": "whitelabel_media x WHERE x.whitelabel_post_id", "model": "whitelabel_posts x WHERE x.whitelabel_model_id"}
    free = f"AND NOT EXISTS (SELECT 1 FROM {child[kind]} = t.id)" if kind in child else ""
    cur.execute(f"DELETE FROM {_TABLE[kind]} t USING rc_stage_{kind} s WHERE s.action = 'delete' AND t.id = s.row_id {free}")
    if kind in child:
        # Those that wait for their children to move out give up their name now.
        cur.execute(
            f"""UPDATE {_TABLE[kind]} t SET folder_name = chr(1) || 'reconciler-delete-' || t.id
                FROM rc_stage_{kind} s WHERE s.action = 'delete' AND t.id = s.row_id"""
        )


def _delete(cur, kind: str) -> None:
    table = _TABLE[kind]
    # A post's media (a model's posts) must be deleted or moved by the plan itself, or
    # they would vanish through ON DELETE CASCADE without an audit record.
    child = {"post": ("whitelabel_media", "whitelabel_post_id", "media"), "model": ("whitelabel_posts", "whitelabel_model_id", "posts")}
    if kind in child:
        ctable, fk, what = child[kind]
        cur.execute(
            f"""SELECT s.key FROM rc_stage_{kind} s WHERE s.action = 'delete'
                AND EXISTS (SELECT 1 FROM {ctable} x WHERE x.{fk} = s.row_id) ORDER BY s.seq LIMIT 1"""
        )
        row = cur.fetchone()
        if row:
            raise StalePlanError(f"the plan deletes {kind} {row[0]!r} but not all of its {what}; make a new plan")
    cur.execute(f"DELETE FROM {table} t USING rc_stage_{kind} s WHERE s.action = 'delete' AND t.id = s.row_id")


def _insert(cur, kind: str, expected: int, restores: int | None = None) -> None:
    """Create rows. They get no audit rows of their own: their images are in the plan
    file, which the apply stores (see :mod:`reconciler.audit`).

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
        # last_synced_at is stamped as the rows are inserted (one write per row).
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
    inserted = 0
    for restore in (False, True) if restores != 0 else (False,):  # restores: how many, when known
        insert_cols = f"{restore_cols}, {parent_col}, {cols}" if restore else f"{parent_col}, {cols}"
        select = f"{restore_vals}, {parent_val}, {vals}" if restore else f"{parent_val}, {vals}"
        cur.execute(
            f"""INSERT INTO {table} ({insert_cols})
                SELECT {select} FROM {source}
                WHERE s.action = 'create' AND s.row_id IS {'NOT ' if restore else ''}NULL ORDER BY s.seq"""
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


def _sets(kind: str) -> str:
    """SET clauses for the managed columns a staged update or move names."""
    sets = [f"{c} = CASE WHEN '{c}' = ANY(s.fields) THEN s.{c} ELSE t.{c} END" for c in _MANAGED[kind]]
    return ", ".join(x.replace("THEN s.media_cdns", "THEN s.media_cdns::json") for x in sets)


def _update(cur, kind: str) -> None:
    table = _TABLE[kind]
    cur.execute(f"UPDATE {table} t SET {_sets(kind)} FROM rc_stage_{kind} s WHERE s.action = 'update' AND t.id = s.row_id")
    if kind == "media":
        # A media item moved to another post (its key's folders changed meaning).
        cur.execute(
            """UPDATE whitelabel_media t SET whitelabel_post_id = pp.id
               FROM rc_stage_media s, whitelabel_models pm, whitelabel_posts pp
               WHERE s.action = 'update' AND 'post' = ANY(s.fields) AND t.id = s.row_id
                 AND pm.folder_name = s.post_model AND pp.whitelabel_model_id = pm.id AND pp.folder_name = s.post_folder"""
        )


def _move(cur, kind: str, expected: int) -> None:
    """Rename rows in place: same id, unmanaged columns untouched, re-parented by the
    parent's new key (which parents' creates and moves have made by now)."""
    if expected == 0:
        return
    # Two steps: first every moving row to a name of its own, so that moves that swap
    # or chain names (a post moving onto the name another moving post leaves) never
    # meet the unique keys half done, which PostgreSQL checks row by row.
    column = {"model": "folder_name", "post": "folder_name", "media": "s3_key"}[kind]
    cur.execute(
        f"""UPDATE {_TABLE[kind]} t SET {column} = chr(1) || 'reconciler-move-' || t.id
            FROM rc_stage_{kind} s WHERE s.action = 'move' AND t.id = s.row_id"""
    )
    if kind == "model":
        cur.execute(
            f"""UPDATE whitelabel_models t SET folder_name = s.key, {_sets(kind)}
                FROM rc_stage_model s WHERE s.action = 'move' AND t.id = s.row_id"""
        )
    elif kind == "post":
        cur.execute(
            f"""UPDATE whitelabel_posts t SET whitelabel_model_id = pm.id, folder_name = s.post_folder, {_sets(kind)}
                FROM rc_stage_post s JOIN whitelabel_models pm ON pm.folder_name = s.model_key
                WHERE s.action = 'move' AND t.id = s.row_id"""
        )
    else:
        cur.execute(
            f"""UPDATE whitelabel_media t SET s3_key = s.key, whitelabel_post_id = pp.id, {_sets(kind)}
                FROM rc_stage_media s JOIN whitelabel_models pm ON pm.folder_name = s.post_model
                JOIN whitelabel_posts pp ON pp.whitelabel_model_id = pm.id AND pp.folder_name = s.post_folder
                WHERE s.action = 'move' AND t.id = s.row_id"""
        )
    if cur.rowcount != expected:
        parent = {"post": "model", "media": "post"}[kind]
        raise StalePlanError(f"the plan moves {kind} rows into a {parent} that is not in the database; make a new plan")


def _audit_after(cur, apply_id: int, kind: str) -> None:
    """After images of updated and moved rows (created rows were audited as they were inserted)."""
    tables, parent = _ROW[kind]
    cur.execute(
        f"""UPDATE reconciler_changes c SET after = x.image, after_parent = x.parent FROM (
              SELECT s.key, row_to_json(t) AS image, {parent} AS parent
              FROM rc_stage_{kind} s JOIN {tables} ON t.id = s.row_id WHERE s.action IN ('update', 'move')
            ) x WHERE c.apply_id = %s AND c.kind = %s AND c.key = x.key""",
        (apply_id, kind),
    )


def _touch_models(cur, media_models: list[str] | None = None, media_moves: bool = True) -> None:
    """``last_synced_at`` on every surviving model the plan touched. ``media_models``:
    the models of the posts the media rows name, when the stage collected them (else
    the staged media are scanned for them); ``media_moves``: whether any media item is
    updated or moved (whose old post's model is touched too)."""
    media = "SELECT unnest(%s::text[])" if media_models is not None else (
        "SELECT post_model FROM rc_stage_media WHERE post_model IS NOT NULL"
    )
    moved = "" if media_moves else " AND false"
    cur.execute(
        f"""UPDATE whitelabel_models SET last_synced_at = {_SYNCED} WHERE folder_name IN (
             SELECT key FROM rc_stage_model WHERE action IN ('update', 'move')
             UNION SELECT model_key FROM rc_stage_post
             UNION {media}
             UNION SELECT pm.folder_name FROM rc_stage_media s
               JOIN whitelabel_media x ON s.action IN ('update', 'move') AND x.id = s.row_id{moved}
               JOIN whitelabel_posts pp ON pp.id = x.whitelabel_post_id
               JOIN whitelabel_models pm ON pm.id = pp.whitelabel_model_id)""",
        (media_models,) if media_models is not None else None,
    )


# --------------------------------------------------------------------------- apply


def apply_file(
    db: Database,
    verify: Callable[[Stage], Plan],
    *,
    lock_timeout: float = 60.0,
    limits: Limits = Limits(),
    progress: Progress = lambda msg: None,
    actor: str | None = None,
    plan_file: PlanFileCopy,
) -> ApplyResult:
    """Verify a plan file and apply it: ``verify(sink)`` is ``verify_plan(path,
    keep_changes=False, sink=sink, …)``; its changes stream into the staging tables of
    the apply's transaction while it runs (:class:`StreamStage`). Only then, once the
    file passed every check, does the apply take its locks. A plan that fails
    verification is refused as such, before any database error the staging met; either
    way nothing changes. ``plan_file`` compresses the file for the audit entry; its
    parts are stored as they come, with the changes.
    """

    def staged(conn):
        stage = StreamStage(conn, plan_file)
        try:
            plan = verify(stage)
        except BaseException:
            stage.abort()
            raise
        stage.finish()
        return plan, stage

    return _apply(db, staged, lock_timeout=lock_timeout, limits=limits, progress=progress, actor=actor,
                  check_file=plan_file.check)


def _apply(
    db: Database,
    staged: Callable,
    *,
    lock_timeout: float,
    limits: Limits,
    progress: Progress,
    actor: str | None,
    check_file: Callable[[], None],
) -> ApplyResult:
    """``check_file()`` refuses a plan file that changed while it was read (its
    compressed copy is in rc_plan_file by then, stored as the stage streamed)."""
    try:
        with db.transaction() as conn, conn.cursor() as cur:
            # PostgreSQL reads lock_timeout 0 as "wait forever": 0 here means "do not wait".
            cur.execute("SET LOCAL lock_timeout = %s", (f"{max(1, int(lock_timeout * 1000))}ms",))
            # Bulk statements sort and hash a million rows: let them do it in memory.
            cur.execute("SET LOCAL work_mem = '256MB'")
            plan, stage = staged(conn)
            summary = plan.summary
            total = sum(sum(v.values()) for v in summary.values())
            if total == 0:
                return ApplyResult(None, plan.plan_id, summary, db.display)
            deletes = sum(v["delete"] for v in summary.values())
            check_file()
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
            check_database_identity(conn, plan, db.display)
            progress("checking that the database has not changed since the plan")
            state = state_digest(conn, plan.scope)
            if state.digest != plan.target["state_digest"]:
                raise StalePlanError(
                    "the plan is stale: the database changed since the plan was made "
                    f"(at {plan.created_at}); make a new plan and review it"
                )
            progress(f"staging {total} changes")
            stage.load(cur)
            # The default guards watch for a listing that missed objects and a wrong
            # cdn_base_url; a rollback is made from the audit log, so only set limits apply.
            defaults = plan.extra.get("kind") != "rollback"
            when = "plan being applied"
            check_delete_limits(deletes, state.rows, limits, when=when, defaults=defaults)
            if summary["media"]["update"]:
                cur.execute("SELECT count(*) FROM rc_stage_media WHERE action = 'update' AND 'url' = ANY(fields)")
                check_url_rewrites(cur.fetchone()[0], state.counts["media"], limits, when=when, defaults=defaults)
            cur.execute(
                """INSERT INTO reconciler_applies
                     (plan_id, os_user, tool_version, source, scope, summary, plan_created_at, rolls_back, plan_file)
                   SELECT %s, %s, %s, %s, %s, %s, %s, %s, string_agg(data, ''::bytea ORDER BY seq) FROM rc_plan_file
                   RETURNING id""",
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
            for kind in ("model", "post", "media"):
                counts = summary[kind]
                _resolve(cur, kind, counts["update"] + counts.get("move", 0) + counts["delete"])
                if counts["update"] + counts.get("move", 0) + counts["delete"]:
                    _audit_before(cur, apply_id, kind)
            for kind in ("media", "post", "model"):
                if summary[kind]["delete"]:
                    _delete_early(cur, kind)
            progress("creating, moving and updating")
            for kind in ("model", "post", "media"):
                # Moves before creates: a move may free the key a create takes (a
                # model's rename leaves its post's old name to a new post).
                _move(cur, kind, summary[kind].get("move", 0))
                _insert(cur, kind, summary[kind]["create"], getattr(stage, "restores", {}).get(kind))
                if summary[kind]["update"]:
                    _update(cur, kind)
            progress("deleting")
            for kind in ("media", "post", "model"):
                if summary[kind]["delete"]:
                    _delete(cur, kind)
            _touch_models(
                cur,
                stage.touched_models() if hasattr(stage, "touched_models") else None,
                bool(summary["media"]["update"] or summary["media"].get("move", 0)),
            )
            progress("writing the audit log")
            for kind in ("model", "post", "media"):
                if summary[kind]["update"] or summary[kind].get("move", 0):
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


def check_database_identity(conn, plan: Plan, display: str) -> None:
    """Refuse a plan made for another database (``target.database_id``)."""
    want = plan.target.get("database_id")
    if not want:
        return  # a plan made before database ids were recorded
    have = database_identity(conn)
    if have != want:
        raise WrongDatabaseError(
            f"this plan was made for another database: it names {want}, but {display} is {have}; "
            "make a new plan against this database (check --database / DATABASE_URL)"
        )


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
