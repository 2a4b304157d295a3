"""The audit log: history of applies, and rollback plans built from it.

Every apply records, in its own transaction, one ``reconciler_applies`` row holding the
plan file itself (zlib-compressed, ``plan_file``) and one ``reconciler_changes`` row per
updated, moved or deleted row with its full before image (ids included, and the
parent's natural key) and, for updates and moves, its after image. A created row needs
no row of its own: its image is the plan's ``after``, and the inverse of a create is a
delete by key. Applies made before the plan was stored (``plan_file`` null) have a
``reconciler_changes`` row per create too; both shapes roll back. A rollback turns the
images into an inverse plan, which is reviewed and applied like any other plan.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from dataclasses import dataclass

import psycopg2

from ..catalogue import Catalogue, Entity
from ..engine.diff import Change, change_order
from ..engine.moves import make_move
from ..errors import ReconcilerError, StalePlanError, WrongCatalogueError
from ..planfile import Plan, verify_plan
from ..version import __version__
from .current import database_identity, read_rows, state_digest
from .db import Database


@dataclass
class HistoryEntry:
    apply_id: int
    plan_id: str
    applied_at: str
    applied_by: str
    db_user: str
    os_user: str | None
    source: str | None
    scope: list[str] | None
    summary: dict
    rolls_back: int | None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def history(db: Database, limit: int | None = 20) -> list[HistoryEntry]:
    """Applies, newest first."""
    try:
        with db.transaction() as conn, conn.cursor() as cur:
            cur.execute(
                """SELECT id, plan_id, to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                          db_user, os_user, source, scope, summary, rolls_back
                   FROM reconciler_applies ORDER BY id DESC LIMIT %s""",
                (limit,),
            )
            rows = cur.fetchall()
    except psycopg2.Error as e:
        raise db.error(e, "cannot read the audit log") from None
    return [
        HistoryEntry(
            apply_id=r[0],
            plan_id=r[1],
            applied_at=r[2],
            applied_by=f"{r[4]} (db: {r[3]})" if r[4] else r[3],
            db_user=r[3],
            os_user=r[4],
            source=r[5],
            scope=r[6],
            summary=r[7],
            rolls_back=r[8],
        )
        for r in rows
    ]


def _timestamp(value):
    """A timestamp as plans write them (``YYYY-MM-DDTHH:MM:SSZ``), from ``row_to_json``'s text."""
    from datetime import datetime, timezone

    if not isinstance(value, str):
        return value
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _compared(e: Entity, image: dict) -> tuple:
    """The values a rollback checks against the live row: what an update may change."""
    return tuple(image.get(f) for f in e.updatable)


def _fields_match(e: Entity, row: tuple, image: dict) -> bool:
    """The live row holds the values ``image`` names (its key columns aside)."""
    fields = e.updatable
    return all(row[fields.index(f)] == v for f, v in image.items() if f in fields)


def _plan_image(e: Entity, full: dict, parent: str | None, restore: bool) -> dict:
    """The plan's view of an audited row (``row_to_json``): key columns, parent key,
    managed fields (and, to restore it, the id and the platform's columns)."""
    image = {c: full[c] for c in e.key_columns}
    if e.parent:
        image[e.parent] = parent
    for c in e.columns:
        value = full.get(c.name)
        image[c.name] = _timestamp(value) if c.type in ("timestamp", "timestamptz") else value
    if restore:
        for f in e.restore_fields:
            image[f] = full.get(f)
    return image


def inverse_changes(catalogue: Catalogue, rows: list[tuple]) -> list[Change]:
    """The changes that undo an apply, from its audit rows
    ``(kind, action, key, before, after, before_parent, after_parent)``.

    Created rows are deleted, deleted rows re-created with their original ids,
    updated fields set back, and moved rows moved back (same ids). Pure.
    """
    out = []
    for kind, action, key, before, after, before_parent, after_parent in rows:
        e = catalogue.entity(kind)
        if action == "move":
            b = _plan_image(e, before, before_parent, False)
            a = _plan_image(e, after, after_parent, False)
            out.append(make_move(e, key, a, _named(e, b), b))
        elif action == "create":
            out.append(Change("delete", kind, key, _plan_image(e, after, after_parent, False), None))
        elif action == "delete":
            out.append(Change("create", kind, key, None, _plan_image(e, before, before_parent, True)))
        else:
            b = _plan_image(e, before, before_parent, False)
            a = _plan_image(e, after, after_parent, False)
            names = [f for f in e.updatable if a[f] != b[f]]
            if names:
                out.append(Change("update", kind, key, {f: a[f] for f in names}, {f: b[f] for f in names}))
    out.sort(key=change_order(catalogue.kinds))
    return out


def _named(e: Entity, image: dict) -> str:
    own = "/".join(str(image[c]) for c in e.key_columns)
    return own if e.unique == "global" or not e.parent else image[e.parent] + "/" + own


class _Creates:
    """A :class:`~reconciler.planfile.ChangeSink` that keeps a stored plan's creates as
    audit rows ``(kind, action, key, before, after, before_parent, after_parent)``."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self.rows: list[tuple] = []

    def add_batch(self, changes: list[dict]) -> None:
        for c in changes:
            if c["action"] == "create":
                e = self.catalogue.entity(c["kind"])
                restore = set(e.restore_fields)
                after = {k: v for k, v in c["after"].items() if k not in restore}
                parent = after.get(e.parent) if e.parent else None
                self.rows.append((e.name, "create", c["key"], None, after, None, parent))

    def reset(self) -> None:
        self.rows = []


def stored_creates(catalogue: Catalogue, plan_file: bytes, plan_id: str, apply_id: int) -> list[tuple]:
    """The creates of an apply's stored plan file, as audit rows. The file is verified
    again (schema, rules, catalogue, ``plan_id``) and must be the plan that apply recorded."""
    fd, path = tempfile.mkstemp(prefix=".rollback-", suffix=".json")
    try:
        with os.fdopen(fd, "wb") as f:
            z = zlib.decompressobj()
            for i in range(0, len(plan_file), 4 << 20):
                f.write(z.decompress(plan_file[i : i + (4 << 20)]))
            f.write(z.flush())
        sink = _Creates(catalogue)
        stored = verify_plan(path, catalogue, keep_changes=False, sink=sink)
    except WrongCatalogueError:
        raise ReconcilerError(f"cannot roll back apply {apply_id}: it was applied under another catalogue spec; "
                              "make a new plan from the bucket instead") from None
    except (ReconcilerError, zlib.error) as e:
        raise ReconcilerError(f"cannot roll back apply {apply_id}: its stored plan file is damaged ({e})") from None
    finally:
        os.unlink(path)
    if stored.plan_id != plan_id:
        raise ReconcilerError(f"cannot roll back apply {apply_id}: its stored plan file is not plan {plan_id[:12]}")
    return sink.rows


def _live(conn, catalogue: Catalogue, scope, touched: set[tuple[str, str]]) -> dict[tuple[str, str], tuple]:
    """The live values (what an update may change) of the rows an apply touched, only
    those: memory follows the apply, not the scope."""
    import polars as pl

    from ..engine.frames import plan_key

    out = {}
    for e in catalogue.owned:
        keys = sorted(k for kind, k in touched if kind == e.name)
        if not keys:
            continue
        frame = read_rows(conn, catalogue, e.name, scope).filter(pl.col(plan_key(e.name)).is_in(keys))
        jsons = {c.name for c in e.columns if c.value.is_json}
        for row in frame.select(plan_key(e.name), *e.updatable).iter_rows():
            values = tuple(json.loads(v) if f in jsons and v is not None else v for f, v in zip(e.updatable, row[1:]))
            out[(e.name, row[0])] = values
    return out


def rollback_plan(db: Database, catalogue: Catalogue, apply_id: int) -> Plan:
    """The inverse plan of apply ``apply_id``. Reads only.

    Refused when the rows that apply touched changed since (the inverse would then
    not restore what it claims). The plan carries the current digest of the apply's
    scope, so it turns stale if anything in scope changes before it is applied.
    """
    try:
        with db.transaction() as conn, conn.cursor() as cur:
            cur.execute("SELECT plan_id, source, scope, plan_file FROM reconciler_applies WHERE id = %s", (apply_id,))
            head = cur.fetchone()
            if head is None:
                raise ReconcilerError(f"there is no apply {apply_id}; see `reconciler history`")
            plan_id, source, scope, plan_file = head
            cur.execute("SELECT id FROM reconciler_applies WHERE rolls_back = %s ORDER BY id LIMIT 1", (apply_id,))
            undone = cur.fetchone()
            if undone:
                raise ReconcilerError(f"apply {apply_id} was already rolled back by apply {undone[0]}; see `reconciler history`")
            rows = _audited(cur, catalogue, apply_id, plan_id, plan_file)
            unknown = sorted({r[0] for r in rows} - set(catalogue.kinds))
            if unknown:
                raise ReconcilerError(f"cannot roll back apply {apply_id}: it changed {unknown[0]} rows, which catalogue "
                                      f"{catalogue.name} does not have")
            changes = inverse_changes(catalogue, rows)
            touched = {(c.kind, c.key) for c in changes} | {(c.kind, c.from_key) for c in changes if c.from_key}
            live = _live(conn, catalogue, scope, touched)
            current = state_digest(conn, catalogue, scope)
            database_id = database_identity(conn)
    except psycopg2.Error as e:
        raise db.error(e, "cannot read the audit log") from None
    _check_unchanged(catalogue, apply_id, changes, live)
    return Plan(
        changes=changes,
        source={"url": f"audit log of apply {apply_id} (made from {source})", "object_count": 0, "skipped": {}},
        target={
            "database": db.display,
            "database_id": database_id,
            "catalogue": catalogue.describe(),
            "scope": scope,
            "state_digest": current.digest,
            "current_counts": current.counts,
        },
        tool_version=__version__,
        extra={"kind": "rollback", "rolls_back": apply_id},
        kinds=catalogue.kinds,
        descriptor=catalogue,
    )


def _audited(cur, catalogue: Catalogue, apply_id: int, plan_id: str, plan_file) -> list[tuple]:
    """The apply's changes as the audit log holds them, a row each."""
    cur.execute(
        "SELECT kind, action, key, before, after, before_parent, after_parent "
        "FROM reconciler_changes WHERE apply_id = %s",
        (apply_id,),
    )
    rows = cur.fetchall()
    if plan_file is not None:
        # Audited since the plan file is stored: its creates have no rows here.
        rows += stored_creates(catalogue, bytes(plan_file), plan_id, apply_id)
    return rows


def _check_unchanged(catalogue: Catalogue, apply_id: int, changes: list[Change], live: dict) -> None:
    """Refuse the inverse of an apply whose rows changed since: it would not restore
    what it claims."""
    for c in changes:
        e = catalogue.entity(c.kind)
        have = live.get((c.kind, c.key))
        if c.action == "create":
            ok = have is None
        elif c.action == "delete":
            ok = have == _compared(e, c.before)
        elif c.action == "move":
            moved = live.get((c.kind, c.from_key))
            ok = have is None and moved is not None and _fields_match(e, moved, c.before)
        else:
            ok = have is not None and _fields_match(e, have, c.before)
        if not ok:
            name = c.from_key if c.action == "move" else c.key
            raise StalePlanError(
                f"cannot roll back apply {apply_id}: {c.kind} {name!r} changed since; "
                "make a new plan from the bucket instead"
            )
