"""Executing a reviewed plan (``apply``): all or nothing, in one transaction.

Order (docs/design.md, "Apply"): the file is verified first (schema, plan_id,
signature, catalogue: :func:`reconciler.planfile.verify_plan`, which hands the changes
to a :class:`Stage`), then, in one transaction: advisory lock (one apply at a time) →
table locks that keep other writers out until commit → refuse an applied plan → refuse
a plan made for another database → refuse a stale plan (state digest) → re-check the delete and URL
limits → execute in bulk → audit → commit.

:func:`apply_file` (what ``reconciler apply`` runs) opens that transaction before
verifying, to stream the verified changes, and the compressed file for the audit, into
temporary tables of its own while the rest of the file is still being read
(:class:`StreamStage`): temporary tables take no lock another session waits for, and
nothing else is read or written until verification has passed, so the order above
holds for everything that touches the catalogue. A plan that fails verification is
refused as such (a database error the stream met is reported only after it passed),
and its transaction is rolled back.

Execution is set-based and derived from the catalogue: the changes of each owned
entity are ``COPY``-ed into a temporary staging table (:class:`StageLayout`) and applied
with one ``INSERT … SELECT`` / ``UPDATE … FROM`` / ``DELETE … USING`` per kind and
action. A row is found by its plan key's names (``M/P``: the model named ``M``, its post
named ``P``), through the indexes on the natural keys. The ids of the rows to update,
move or delete are resolved first, before anything changes (a moved model's posts are
found by the model's old name); then moves, creates and updates run parents first, and
deletes children first (a post is deleted after its media moved out). The audit is
written in the same transaction, so the change and its record commit together or not at
all: the plan file itself, compressed, on the ``reconciler_applies`` row, plus full
before images (ids included) of the rows updated, moved or deleted and after images of
those updated or moved. Created rows get no audit row: their images are in the stored
plan and their ids are found by key (see :mod:`reconciler.store.audit`), so a first apply of
a million rows does not write them twice.
"""

from __future__ import annotations

import getpass
import json
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

from ..catalogue import Catalogue, Entity
from ..catalogue.sql import Query, plan_key_sql, q
from ..engine.safety import Limits, check_delete_limits, check_url_rewrites, url_columns
from ..errors import (
    AlreadyAppliedError,
    DatabaseError,
    LockTimeoutError,
    PlanFileError,
    ReconcilerError,
    StalePlanError,
    WrongDatabaseError,
)
from ..planfile import Plan
from ..planfile.rules import plan_rules
from ..version import __version__
from .current import database_identity, state_digest
from .db import LOCK_KEY, Database

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

_STAGE_TYPES = {"text": "text", "integer": "bigint", "bigint": "bigint", "boolean": "boolean", "json": "text",
                "jsonb": "text", "timestamp": "text", "timestamptz": "text"}
# The first columns of every staging table, which the fast path leaves null. row_id: the
# id to restore (a rollback's create), else the live row's id, resolved inside the
# transaction; restore: the platform's columns a rollback brings back (JSON); from_key: a
# move's old key. seq: the plan's order, numbered by the server as rows arrive.
_HEAD = ("row_id int", "fields text[]", "restore text", "from_key text")
_FAST_PREFIX = "null,null,null,null,"


def _parts(catalogue: Catalogue, e: Entity) -> int:
    own = len(e.key_columns)
    if e.unique == "parent" and e.parent:
        return _parts(catalogue, catalogue.entity(e.parent)) + own
    return own


def _split(column: str, n: int) -> list[str]:
    """A plan key's ``n`` names, as SQL over ``column``: the first ``n - 1`` hold no
    ``/``; the last is the rest (a name may hold ``/`` only there)."""
    if n == 1:
        return [column]
    out = [f"split_part({column}, '/', {i})" for i in range(1, n)]
    out.append(f"substring({column} from '^(?:[^/]*/){{{n - 1}}}(.*)$')")
    return out


class StageLayout:
    """The staging table of one owned entity: its columns in the order the rows are
    written (the fast path's own, :class:`~reconciler.catalogue.planrules.PlanRules`),
    and the generated columns that split plan keys into names."""

    def __init__(self, catalogue: Catalogue, e: Entity) -> None:
        self.catalogue, self.e = catalogue, e
        self.fields = sorted(e.fields)
        # A row keyed on its own by one column: that column is the stage's "key" (the
        # fast path writes it once).
        self.self_keyed = e.unique == "global" and len(e.key_columns) == 1
        types = {c: "text" for c in e.key_columns}
        if e.parent:
            types[e.parent] = "text"
        types.update({c.name: _STAGE_TYPES[c.type] for c in e.columns})
        self.types = types
        self.columns = ["action"] + ["key" if self.self_keyed and f == e.key_columns[0] else f for f in self.fields]
        if not self.self_keyed:
            self.columns.append("key")
        self.n = _parts(catalogue, e)
        self.parent_n = _parts(catalogue, catalogue.entity(e.parent)) if e.parent else 0

    @property
    def table(self) -> str:
        return f"rc_stage_{self.e.name}"

    def col(self, field: str) -> str:
        """The stage column holding a field."""
        return "key" if self.self_keyed and field == self.e.key_columns[0] else q(field)

    def ddl(self) -> str:
        cols = list(_HEAD) + ["action text"]
        for c in self.columns[1:]:
            cols.append("key text" if c == "key" else f"{q(c)} {self.types[c]}")
        gen = []
        for i, expr in enumerate(_split("key", self.n), 1):
            gen.append(f"_k{i} text GENERATED ALWAYS AS ({expr}) STORED")
        for i, expr in enumerate(_split("from_key", self.n), 1):
            gen.append(f"_f{i} text GENERATED ALWAYS AS ({expr}) STORED")
        if self.e.parent and self.e.unique == "global":
            for i, expr in enumerate(_split(q(self.e.parent), self.parent_n), 1):
                gen.append(f"_p{i} text GENERATED ALWAYS AS ({expr}) STORED")
        return (f"CREATE TEMP TABLE {self.table} (seq int GENERATED ALWAYS AS IDENTITY, "
                + ", ".join(cols + gen) + ") ON COMMIT DROP")

    def copy_sql(self) -> str:
        names = [c.split()[0] for c in _HEAD] + [("key" if c == "key" else q(c)) for c in self.columns]
        return f"COPY {self.table} ({', '.join(names)}) FROM STDIN (FORMAT csv, NULL 'null')"

    def key_parts(self, old: bool = False) -> list[str]:
        """The names of the row's plan key (``old``: a move's from key, else the key)."""
        if old:
            return [f"coalesce(s._f{i}, s._k{i})" for i in range(1, self.n + 1)]
        return [f"s._k{i}" for i in range(1, self.n + 1)]

    def parent_parts(self) -> list[str]:
        """The names of the parent's plan key, as the staged row gives it."""
        if self.e.unique == "parent":
            return [f"s._k{i}" for i in range(1, self.parent_n + 1)]
        return [f"s._p{i}" for i in range(1, self.parent_n + 1)]

    # ---- rows

    def row(self, c: dict) -> str:
        """A change as a CSV row of this table (the general path)."""
        action, key = c["action"], c["key"]
        image = c["before"] if action == "delete" else c["after"]
        fields = '"{' + ",".join(sorted(image)) + '}"' if action in ("update", "move") else "null"
        row_id = restore = "null"
        if action == "create":
            e = self.e
            if e.id_column in image:
                row_id = _csv(image[e.id_column])
            restored = {f: image[f] for f in e.restore_fields if f in image and f != e.id_column}
            if restored:
                restore = _csv(json.dumps(restored, ensure_ascii=False))
        head = f"{row_id},{fields},{restore},{_csv(c.get('from'))},{_csv(action)}"
        values = [_csv(image.get(f)) if not (self.self_keyed and f == self.e.key_columns[0]) else _csv(key)
                  for f in self.fields]
        if not self.self_keyed:
            values.append(_csv(key))
        return head + "," + ",".join(values)


def _csv(v) -> str:
    """A value as CSV text: NULL unquoted, every string quoted (so a quoted "null" is
    text), JSON values as ``json.dumps(value, sort_keys=True, ensure_ascii=False)``."""
    if v is None:
        return "null"
    if type(v) is str:
        return '"' + v.replace('"', '""') + '"' if '"' in v else '"' + v + '"'
    if type(v) in (dict, list):
        return _csv(json.dumps(v, sort_keys=True, ensure_ascii=False))
    if type(v) is bool:
        return "true" if v else "false"
    return str(v)


def _json_update_row(layout: StageLayout, row: tuple[str, str, str]) -> str:
    """A fast-path update of one JSON column (``PlanRules.fast_columns``: action, the
    value's canonical text, key) as :meth:`StageLayout.row` writes it: the value as
    ``json.dumps(value, sort_keys=True, ensure_ascii=False)`` writes it, which is its
    canonical text re-spaced (the fast path admits only strings for which '":' and ',"'
    are the separators)."""
    action, value, key = row
    column = plan_rules(layout.catalogue).fast_columns[layout.e.name][1]
    spaced = value.replace('":', '": ').replace(',"', ', "').replace('"', '""')
    values = [f'"{spaced}"' if f == column else "null" for f in layout.fields]
    return f'null,"{{{column}}}",null,null,{action},' + ",".join(values) + f",{key}\n"


class Stage:
    """Verified changes, written as typed rows to one temporary file per kind, then
    ``COPY``-ed into temporary tables inside the apply's transaction. A
    :class:`~reconciler.planfile.ChangeSink`: ``verify_plan(path, catalogue, sink=Stage(catalogue))``.

    :class:`StreamStage` formats the same rows and streams them into the tables while
    the file is verified."""

    def __init__(self, catalogue: Catalogue) -> None:
        self._setup(catalogue)
        self.files = {k: tempfile.TemporaryFile("w+", encoding="utf-8", newline="") for k in self.layouts}  # "\r" kept

    def _setup(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self.layouts = {e.name: StageLayout(catalogue, e) for e in catalogue.owned}
        rules = plan_rules(catalogue)
        # Where a fast row holds its parent's key (to find the rows whose synced-at
        # stamp the apply touches without scanning the staged rows).
        self._parent_at = {}
        for kind, cols in rules.fast_columns.items():
            e = catalogue.entity(kind)
            if e.parent and e.parent in cols:
                self._parent_at[kind] = cols.index(e.parent)
        self._clear()

    def _clear(self) -> None:
        # What later statements need not scan the staging tables for: the creates that
        # restore an id (a rollback's), and the parents the rows name (as JSON text
        # from the fast path, else as values).
        self.restores = {k: 0 for k in self.layouts}
        self.parent_texts: dict[str, set[str]] = {k: set() for k in self.layouts}
        self.parents: dict[str, set[str]] = {k: set() for k in self.layouts}

    def named_parents(self, kind: str) -> set[str]:
        return self.parents[kind] | {p[1:-1] for p in self.parent_texts[kind]}  # fast-path strings hold no escapes

    def _write(self, kind: str, text: str) -> None:
        self.files[kind].write(text)

    def reset(self) -> None:
        self._clear()
        for f in self.files.values():
            f.seek(0)
            f.truncate()

    def add_rows(self, kind: str, rows: list[tuple[str, ...]]) -> None:
        layout = self.layouts[kind]
        if not layout.self_keyed:  # an entity keyed within its parent: its fast rows are JSON updates
            self._write(kind, "".join(_json_update_row(layout, r) for r in rows))
            return
        at = self._parent_at.get(kind)
        if at is not None:
            self.parent_texts[kind].update(r[at] for r in rows)
        self._write(kind, _FAST_PREFIX + ("\n" + _FAST_PREFIX).join(map(",".join, rows)) + "\n")

    def add_batch(self, changes: list[dict]) -> None:
        rows: dict[str, list[str]] = {k: [] for k in self.layouts}
        for c in changes:
            kind = c["kind"]
            layout = self.layouts[kind]
            rows[kind].append(layout.row(c))
            image = c["before"] if c["action"] == "delete" else c["after"]
            if c["action"] == "create" and layout.e.id_column in image:
                self.restores[kind] += 1
            parent = layout.e.parent
            if parent and image.get(parent) is not None:
                self.parents[kind].add(image[parent])
        # Kinds in plan order: a batch that spans kinds is staged in the order it lists them.
        for kind in self.layouts:
            lines = rows[kind]
            if lines:
                lines.append("")
                self._write(kind, "\n".join(lines))

    def load(self, cur) -> None:
        """Create the staging tables and ``COPY`` the rows in (inside the transaction)."""
        for kind, f in self.files.items():
            f.flush()
            f.seek(0)
            cur.execute(self.layouts[kind].ddl())
            cur.copy_expert(self.layouts[kind].copy_sql(), f, size=1 << 20)
        _analyze(cur, self.layouts)

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def _analyze(cur, layouts: dict) -> None:
    """Statistics for the planner. No index: every statement joins the staging tables
    as a whole (hash joins on the content tables' own keys)."""
    for layout in layouts.values():
        cur.execute(f"ANALYZE {layout.table}")


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
    waits for, so this precedes the locks, as docs/design.md orders it). A database error
    is held back: :meth:`finish` raises it, which the caller does only once
    verification passed (a plan that fails verification is refused as such).
    :meth:`abort` ends the stream without a verdict (the transaction is then rolled
    back)."""

    def __init__(self, conn, catalogue: Catalogue, plan_file: "PlanFileCopy | None" = None) -> None:
        self.conn = conn
        self.plan_file = plan_file
        self._parts_sent = 0
        self._setup(catalogue)
        self.error: BaseException | None = None
        self._buf: list[str] = []
        self._buf_kind: str | None = None
        self._buf_chars = 0
        self._finished = False
        with conn.cursor() as cur:
            for layout in self.layouts.values():
                cur.execute(layout.ddl())
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
            _analyze(cur, self.layouts)
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
                        cur.execute("TRUNCATE " + ", ".join(x.table for x in self.layouts.values()) + " RESTART IDENTITY")
                        continue
                    kind, data = item
                    feed = _Feed(q, kind, data)
                    item = None
                    sql = ("COPY rc_plan_file (data) FROM STDIN (FORMAT binary)" if kind == _PLAN_FILE
                           else self.layouts[kind].copy_sql())
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


@dataclass
class Lookup:
    """FROM items and conditions that find a row of an entity by its plan key's names."""

    items: list[str]
    conditions: list[str]
    alias: str


def lookup(catalogue: Catalogue, entity: str, parts: list[str], alias: str) -> Lookup:
    """Find ``entity``'s row named by ``parts`` (SQL expressions): its parent's row by the
    names before its own, then the row itself — through the natural keys' indexes."""
    e = catalogue.entity(entity)
    own = len(e.key_columns)
    items, conditions = [f"{q(e.table)} {alias}"], []
    if e.unique == "parent" and e.parent:
        up = lookup(catalogue, e.parent, parts[:-own], alias + "p")
        items = up.items + items
        conditions = up.conditions + [f"{alias}.{q(e.fk)} = {up.alias}.{q(catalogue.entity(e.parent).id_column)}"]
    for c, part in zip(e.key_columns, parts[-own:]):
        conditions.append(f"{alias}.{q(c)} = {part}")
    return Lookup(items, conditions, alias)


def _where(conditions: list[str]) -> str:
    return " AND ".join(conditions)


def _resolve(cur, layout: StageLayout, expected: int) -> None:
    """Find the ids of the rows to update, move or delete; refuse if any is missing,
    and refuse a move onto a key that is taken."""
    if expected == 0:
        return
    e, cat, table = layout.e, layout.catalogue, layout.table
    found = lookup(cat, e.name, layout.key_parts(old=True), "t")
    cur.execute(f"UPDATE {table} s SET row_id = t.{q(e.id_column)} FROM {', '.join(found.items)} "
                f"WHERE s.action <> 'create' AND {_where(found.conditions)}")
    if cur.rowcount != expected:
        cur.execute(
            f"""SELECT s.action, s.key, coalesce(s.from_key, s.key) FROM {table} s
                WHERE s.action <> 'create' AND s.row_id IS NULL ORDER BY s.seq LIMIT 1"""
        )
        action, key, old = cur.fetchone()
        if action == "move":
            raise StalePlanError(
                f"the plan moves {e.name} {old!r} to {key!r}, but {old!r} is not in the database; make a new plan"
            )
        raise StalePlanError(f"the plan changes {e.name} {key!r}, which is not in the database; make a new plan")
    taken = lookup(cat, e.name, layout.key_parts(), "t")
    cur.execute(f"SELECT s.key FROM {table} s, {', '.join(taken.items)} WHERE s.action = 'move' "
                f"AND {_where(taken.conditions)} ORDER BY s.seq LIMIT 1")
    row = cur.fetchone()
    if row:
        raise StalePlanError(f"the plan moves a {e.name} onto {row[0]!r}, which is in the database already; make a new plan")


def _row_with_parent(catalogue: Catalogue, e: Entity) -> tuple[str, str]:
    """A live row ``t`` with its ancestors joined, and its parent's plan key (which the
    audit keeps beside the row's image: a rollback needs it after the parent is gone)."""
    if not e.parent:
        return f"{q(e.table)} t", "NULL"
    query = Query(catalogue).base(e.name, alias="t")
    query.up(e.name)
    return query.sql, plan_key_sql(query, e.parent)


def _audit_before(cur, layout: StageLayout, apply_id: int) -> None:
    """Record before images of the rows to update, move or delete (ids resolved)."""
    e = layout.e
    tables, parent = _row_with_parent(layout.catalogue, e)
    cur.execute(
        f"""INSERT INTO reconciler_changes (apply_id, kind, action, key, row_id, before_parent, before)
            SELECT %s, %s, s.action, s.key, t.{q(e.id_column)}, {parent}, row_to_json(t)
            FROM {layout.table} s JOIN {tables} ON t.{q(e.id_column)} = s.row_id
            WHERE s.action IN ('update', 'move', 'delete')""",
        (apply_id, e.name),
    )


def _children(catalogue: Catalogue, e: Entity) -> list[Entity]:
    return list(catalogue.children(e.name))


def _delete_early(cur, layout: StageLayout) -> None:
    """Delete, before any move or create, the rows that have no children left: a
    deleted row may free the key that a move or a create takes (a rollback moves a
    post back onto the name of a post it deletes). The rest go after the moves, and
    give up their keys here."""
    e, table = layout.e, q(layout.e.table)
    kids = _children(layout.catalogue, e)
    free = " ".join(f"AND NOT EXISTS (SELECT 1 FROM {q(k.table)} x WHERE x.{q(k.fk)} = t.{q(e.id_column)})"
                    for k in kids)
    cur.execute(f"DELETE FROM {table} t USING {layout.table} s WHERE s.action = 'delete' "
                f"AND t.{q(e.id_column)} = s.row_id {free}")
    if kids:
        # Those that wait for their children to move out give up their name now.
        first = q(e.key_columns[0])
        cur.execute(f"""UPDATE {table} t SET {first} = chr(1) || 'reconciler-delete-' || t.{q(e.id_column)}
                        FROM {layout.table} s WHERE s.action = 'delete' AND t.{q(e.id_column)} = s.row_id""")


def _delete(cur, layout: StageLayout) -> None:
    e, table = layout.e, q(layout.e.table)
    # A row's children must be deleted or moved by the plan itself, or they would
    # vanish through ON DELETE CASCADE without an audit record.
    for k in _children(layout.catalogue, e):
        cur.execute(
            f"""SELECT s.key FROM {layout.table} s WHERE s.action = 'delete'
                AND EXISTS (SELECT 1 FROM {q(k.table)} x WHERE x.{q(k.fk)} = s.row_id) ORDER BY s.seq LIMIT 1"""
        )
        row = cur.fetchone()
        if row:
            raise StalePlanError(f"the plan deletes {e.name} {row[0]!r} but not all of its {k.plural.lower()}; "
                                 "make a new plan")
    cur.execute(f"DELETE FROM {table} t USING {layout.table} s WHERE s.action = 'delete' AND t.{q(e.id_column)} = s.row_id")


def _synced(catalogue: Catalogue, e: Entity) -> str:
    """What a synced-at column is set to: now, in UTC for a column without a time zone."""
    definition = dict(e.platform_columns)[e.synced_at].lower()
    return "now()" if "with time zone" in definition or "timestamptz" in definition else "(now() AT TIME ZONE 'UTC')"


def _value(layout: StageLayout, field: str) -> str:
    """A staged field's value as its column takes it."""
    e = layout.e
    col = f"s.{layout.col(field)}"
    for c in e.columns:
        if c.name == field and (c.value.is_json or c.type in ("timestamp", "timestamptz")):
            return f"{col}::{c.type}"
    return col


def _insert(cur, layout: StageLayout, expected: int, restores: int | None = None) -> None:
    """Create rows. They get no audit rows of their own: their images are in the plan
    file, which the apply stores (see :mod:`reconciler.store.audit`).

    Rows restored by a rollback keep their original id (and their platform columns);
    new rows take the columns' own defaults. New ids follow the plan's key order, so
    the same plan gives the same ids.
    """
    if expected == 0:
        return
    e, cat = layout.e, layout.catalogue
    cols = [q(c) for c in e.key_columns] + [q(c.name) for c in e.columns]
    vals = [_value(layout, c) for c in e.key_columns] + [_value(layout, c.name) for c in e.columns]
    source = f"{layout.table} s"
    if e.parent:
        parent = lookup(cat, e.parent, layout.parent_parts(), "p")
        cols.insert(0, q(e.fk))
        vals.insert(0, f"p.{q(cat.entity(e.parent).id_column)}")
        source += " JOIN " + " JOIN ".join(f"{item} ON true" for item in parent.items)
        condition = " AND " + _where(parent.conditions)
    else:
        condition = ""
    if e.synced_at:
        cols.append(q(e.synced_at))
        vals.append(_synced(cat, e))
    restored = [c for c in e.restore_fields if c != e.id_column]
    inserted = 0
    for restore in (False, True) if restores != 0 else (False,):  # restores: how many, when known
        insert_cols, select = list(cols), list(vals)
        from_ = source
        if restore:
            insert_cols = [q(e.id_column)] + [q(c) for c in restored] + insert_cols
            select = ["s.row_id"] + [f"r.{q(c)}" for c in restored] + select
            from_ += f" CROSS JOIN LATERAL jsonb_populate_record(NULL::{q(e.table)}, coalesce(s.restore, '{{}}')::jsonb) r"
        cur.execute(
            f"""INSERT INTO {q(e.table)} ({', '.join(insert_cols)})
                SELECT {', '.join(select)} FROM {from_}
                WHERE s.action = 'create' AND s.row_id IS {'NOT ' if restore else ''}NULL{condition} ORDER BY s.seq"""
        )
        inserted += cur.rowcount
        if restore and cur.rowcount > 0:
            # Restored ids may lie above the sequence: move it past them.
            sequence = _sequence(cur, e)
            if sequence:
                cur.execute(
                    f"SELECT setval(%s, greatest((SELECT max({q(e.id_column)}) FROM {q(e.table)}), "
                    f"(SELECT last_value FROM {sequence})))",
                    (sequence,),
                )
    if inserted != expected:
        raise StalePlanError(f"the plan creates {e.name} rows whose {e.parent or 'key'} is not in the database; "
                             "make a new plan")


def _sequence(cur, e: Entity) -> str | None:
    cur.execute("SELECT pg_get_serial_sequence(%s, %s)", (q(e.table), e.id_column))
    return cur.fetchone()[0]


def _sets(layout: StageLayout) -> str:
    """SET clauses for the managed columns a staged update or move names."""
    return ", ".join(
        f"{q(c.name)} = CASE WHEN '{c.name}' = ANY(s.fields) THEN {_value(layout, c.name)} ELSE t.{q(c.name)} END"
        for c in layout.e.columns
    )


def _update(cur, layout: StageLayout) -> None:
    e, cat = layout.e, layout.catalogue
    if e.columns:
        cur.execute(f"UPDATE {q(e.table)} t SET {_sets(layout)} FROM {layout.table} s "
                    f"WHERE s.action = 'update' AND t.{q(e.id_column)} = s.row_id")
    if e.parent and e.unique == "global":
        # A row filed under another parent (its key's folders changed meaning).
        parent = lookup(cat, e.parent, layout.parent_parts(), "p")
        cur.execute(
            f"""UPDATE {q(e.table)} t SET {q(e.fk)} = p.{q(cat.entity(e.parent).id_column)}
                FROM {layout.table} s, {', '.join(parent.items)}
                WHERE s.action = 'update' AND '{e.parent}' = ANY(s.fields) AND t.{q(e.id_column)} = s.row_id
                  AND {_where(parent.conditions)}"""
        )


def _move(cur, layout: StageLayout, expected: int) -> None:
    """Rename rows in place: same id, unmanaged columns untouched, re-parented by the
    parent's new key (which parents' creates and moves have made by now)."""
    if expected == 0:
        return
    e, cat = layout.e, layout.catalogue
    # Two steps: first every moving row to a name of its own, so that moves that swap
    # or chain names (a post moving onto the name another moving post leaves) never
    # meet the unique keys half done, which PostgreSQL checks row by row.
    first = q(e.key_columns[0])
    cur.execute(f"""UPDATE {q(e.table)} t SET {first} = chr(1) || 'reconciler-move-' || t.{q(e.id_column)}
                    FROM {layout.table} s WHERE s.action = 'move' AND t.{q(e.id_column)} = s.row_id""")
    own = len(e.key_columns)
    names = layout.key_parts()[-own:] if not layout.self_keyed else ["s.key"]
    sets = [f"{q(c)} = {v}" for c, v in zip(e.key_columns, names)]
    items, conditions = [f"{layout.table} s"], []
    if e.parent:
        parent = lookup(cat, e.parent, layout.parent_parts(), "p")
        sets.append(f"{q(e.fk)} = p.{q(cat.entity(e.parent).id_column)}")
        items += parent.items
        conditions += parent.conditions
    if e.columns:
        sets.append(_sets(layout))
    cur.execute(f"UPDATE {q(e.table)} t SET {', '.join(sets)} FROM {', '.join(items)} "
                f"WHERE s.action = 'move' AND t.{q(e.id_column)} = s.row_id"
                + ("".join(f" AND {c}" for c in conditions)))
    if cur.rowcount != expected:
        raise StalePlanError(f"the plan moves {e.name} rows into a {e.parent} that is not in the database; "
                             "make a new plan")


def _audit_after(cur, layout: StageLayout, apply_id: int) -> None:
    """After images of updated and moved rows (created rows were audited as they were inserted)."""
    e = layout.e
    tables, parent = _row_with_parent(layout.catalogue, e)
    cur.execute(
        f"""UPDATE reconciler_changes c SET after = x.image, after_parent = x.parent FROM (
              SELECT s.key, row_to_json(t) AS image, {parent} AS parent
              FROM {layout.table} s JOIN {tables} ON t.{q(e.id_column)} = s.row_id WHERE s.action IN ('update', 'move')
            ) x WHERE c.apply_id = %s AND c.kind = %s AND c.key = x.key""",
        (apply_id, e.name),
    )


def _prefix(expr: str, n: int) -> str:
    """The first ``n`` names of a plan key."""
    return expr if n == 0 else f"array_to_string((string_to_array({expr}, '/'))[1:{n}], '/')"


def _touch(cur, catalogue: Catalogue, layouts: dict[str, StageLayout], stage, summary: dict) -> None:
    """The synced-at stamp on every surviving row the plan touched: rows updated or
    moved, and the rows above every row created, changed or deleted (their keys from the
    staged keys and parents, and — for rows updated or moved without naming their
    parent — from the live row)."""
    cat = catalogue
    for e in cat.owned:
        if not e.synced_at:
            continue
        n = _parts(cat, e)
        selects = [f"SELECT key FROM {layouts[e.name].table} WHERE action IN ('update', 'move')"]
        params: list = []
        for d in cat.descendants(e.name):
            if not d.owned:
                continue
            layout = layouts[d.name]
            if d.unique == "parent":
                selects.append(f"SELECT {_prefix('key', n)} FROM {layout.table}")
                continue
            named = sorted(stage.named_parents(d.name)) if hasattr(stage, "named_parents") else None
            if named is not None:
                selects.append(f"SELECT {_prefix('p', n)} FROM unnest(%s::text[]) p")
                params.append(named)
            else:
                selects.append(f"SELECT {_prefix(q(d.parent), n)} FROM {layout.table} WHERE {q(d.parent)} IS NOT NULL")
            if summary[d.name]["update"] or summary[d.name].get("move", 0):
                query = Query(cat).base(d.name, alias="x")
                query.up(d.name)
                selects.append(f"SELECT {plan_key_sql(query, e.name)} FROM {layout.table} s JOIN {query.sql} "
                               f"ON s.action IN ('update', 'move') AND x.{q(d.id_column)} = s.row_id")
        query = Query(cat).base(e.name, alias="t")
        query.up(e.name)
        key = plan_key_sql(query, e.name)
        cur.execute(
            f"""UPDATE {q(e.table)} SET {q(e.synced_at)} = {_synced(cat, e)} WHERE {q(e.id_column)} IN (
                 SELECT t.{q(e.id_column)} FROM {query.sql} WHERE {key} IN ({' UNION '.join(selects)}))""",
            params or None,
        )


# --------------------------------------------------------------------------- apply


def apply_file(
    db: Database,
    catalogue: Catalogue,
    verify: Callable[[Stage], Plan],
    *,
    lock_timeout: float = 60.0,
    limits: Limits = Limits(),
    progress: Progress = lambda msg: None,
    actor: str | None = None,
    plan_file: "PlanFileCopy",
    override_reason: str | None = None,
) -> ApplyResult:
    """Verify a plan file and apply it: ``verify(sink)`` is ``verify_plan(path,
    catalogue, keep_changes=False, sink=sink, …)``; its changes stream into the staging
    tables of the apply's transaction while it runs (:class:`StreamStage`). Only then,
    once the file passed every check, does the apply take its locks. A plan that fails
    verification is refused as such, before any database error the staging met; either
    way nothing changes. ``plan_file`` compresses the file for the audit entry; its
    parts are stored as they come, with the changes.
    """

    def staged(conn):
        stage = StreamStage(conn, catalogue, plan_file)
        try:
            plan = verify(stage)
        except BaseException:
            stage.abort()
            raise
        stage.finish()
        return plan, stage

    return _apply(db, catalogue, staged, lock_timeout=lock_timeout, limits=limits, progress=progress, actor=actor,
                  check_file=plan_file.check, override_reason=override_reason)


def _url_rewrites(cur, catalogue: Catalogue, layouts: dict, summary: dict, counts: dict) -> tuple[int, int]:
    """The staged updates that give a row a new URL under the same key, and the rows in
    scope that hold URLs (see :func:`reconciler.safety.url_rewrites`)."""
    rewrites = rows = 0
    for e, columns in url_columns(catalogue).items():
        rows += counts.get(e, 0)
        if summary[e]["update"]:
            named = " OR ".join(f"'{c}' = ANY(fields)" for c in columns)
            cur.execute(f"SELECT count(*) FROM {layouts[e].table} WHERE action = 'update' AND ({named})")
            rewrites += cur.fetchone()[0]
    return rewrites, rows


def _lock(cur, catalogue: Catalogue, lock_timeout: float) -> None:
    """One apply at a time, and no other writer of the catalogue's tables until commit
    (readers are not blocked): the state verified is the state changed."""
    tables = ", ".join(q(e.table) for e in catalogue.owned)
    try:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        cur.execute(f"LOCK TABLE {tables} IN SHARE ROW EXCLUSIVE MODE")
    except psycopg2.errors.LockNotAvailable:
        raise LockTimeoutError(
            f"another apply (or a writer of the catalogue's tables) held the lock for more than {lock_timeout:g}s; "
            "wait for it to finish, or raise --lock-timeout"
        ) from None


def _apply(
    db: Database,
    catalogue: Catalogue,
    staged: Callable,
    *,
    lock_timeout: float,
    limits: Limits,
    progress: Progress,
    actor: str | None,
    check_file: Callable[[], None],
    override_reason: str | None = None,
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
            check_file()
            progress("waiting for the apply lock")
            _lock(cur, catalogue, lock_timeout)
            state = _check_applicable(cur, conn, catalogue, plan, db.display, progress)
            progress(f"staging {total} changes")
            stage.load(cur)
            _check_guards(cur, catalogue, plan, stage, state, limits)
            apply_id = _record_apply(cur, plan, actor, override_reason)
            _write_changes(cur, catalogue, stage, summary, apply_id, progress)
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


def _check_applicable(cur, conn, catalogue: Catalogue, plan: Plan, display: str, progress: Progress):
    """Refuse a plan applied before, made on another database, or stale (the database
    changed since it was made); return the state the plan was checked against."""
    cur.execute("SELECT id, applied_at FROM reconciler_applies WHERE plan_id = %s", (plan.plan_id,))
    row = cur.fetchone()
    if row:
        raise AlreadyAppliedError(
            f"plan {plan.plan_id[:12]} was already applied (apply {row[0]}, {row[1]:%Y-%m-%d %H:%M:%S %Z}); "
            "make a new plan to apply further changes"
        )
    check_database_identity(conn, plan, display)
    progress("checking that the database has not changed since the plan")
    state = state_digest(conn, catalogue, plan.scope)
    if state.digest != plan.target["state_digest"]:
        raise StalePlanError(
            "the plan is stale: the database changed since the plan was made "
            f"(at {plan.created_at}); make a new plan and review it"
        )
    return state


def _check_guards(cur, catalogue: Catalogue, plan: Plan, stage, state, limits: Limits) -> None:
    """The guards once more, on the plan being applied (the config file's limits)."""
    # The default guards watch for a listing that missed objects and a wrong
    # cdn_base_url; a rollback is made from the audit log, so only set limits apply.
    defaults = plan.extra.get("kind") != "rollback"
    when = "plan being applied"
    deletes = sum(v["delete"] for v in plan.summary.values())
    check_delete_limits(deletes, state.rows, limits, when=when, defaults=defaults)
    rewrites, url_rows = _url_rewrites(cur, catalogue, stage.layouts, plan.summary, state.counts)
    check_url_rewrites(rewrites, url_rows, limits, when=when, defaults=defaults,
                       what="/".join(url_columns(catalogue)))


def _record_apply(cur, plan: Plan, actor: str | None, override_reason: str | None = None) -> int:
    """The apply's row in reconciler_applies, with the plan file as it was read and,
    for a run of ``reconciler serve`` applied inside a closed change window, why."""
    cur.execute(
        """INSERT INTO reconciler_applies
             (plan_id, os_user, tool_version, source, scope, summary, plan_created_at, rolls_back, override_reason,
              plan_file)
           SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, string_agg(data, ''::bytea ORDER BY seq) FROM rc_plan_file
           RETURNING id""",
        (
            plan.plan_id,
            _os_user(actor),
            __version__,
            plan.source.get("url"),
            json.dumps(plan.scope),
            json.dumps(plan.summary),
            plan.created_at,
            plan.extra.get("rolls_back"),
            override_reason,
        ),
    )
    return cur.fetchone()[0]


def _write_changes(cur, catalogue: Catalogue, stage, summary: dict, apply_id: int, progress: Progress) -> None:
    """The staged changes, kind by kind in an order no constraint objects to, with the
    audit's images of the rows before and after."""
    layouts = stage.layouts
    kinds = catalogue.kinds
    for kind in kinds:
        counts = summary[kind]
        changing = counts["update"] + counts.get("move", 0) + counts["delete"]
        _resolve(cur, layouts[kind], changing)
        if changing:
            _audit_before(cur, layouts[kind], apply_id)
    for kind in reversed(kinds):
        if summary[kind]["delete"]:
            _delete_early(cur, layouts[kind])
    progress("creating, moving and updating")
    for kind in kinds:
        # Moves before creates: a move may free the key a create takes (a
        # model's rename leaves its post's old name to a new post).
        _move(cur, layouts[kind], summary[kind].get("move", 0))
        _insert(cur, layouts[kind], summary[kind]["create"], getattr(stage, "restores", {}).get(kind))
        if summary[kind]["update"]:
            _update(cur, layouts[kind])
    progress("deleting")
    for kind in reversed(kinds):
        if summary[kind]["delete"]:
            _delete(cur, layouts[kind])
    _touch(cur, catalogue, layouts, stage, summary)
    progress("writing the audit log")
    for kind in kinds:
        if summary[kind]["update"] or summary[kind].get("move", 0):
            _audit_after(cur, layouts[kind], apply_id)


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
