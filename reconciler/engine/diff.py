"""The typed changes between desired and current rows, and the column comparison that
makes them (:func:`entity_changes`), which :mod:`reconciler.engine.plan` runs a batch at a
time for every owned entity of the catalogue. Pure: no I/O.

A change is plain data (create / update / move / delete of a row of an entity, named by
its plan key); the plan file is a list of them. ``create`` and ``delete`` carry every
field of the row (its key columns, its parent's plan key under the parent entity's
name, its managed columns); ``update`` carries only the fields that change; ``move`` (a
renamed folder, see :mod:`reconciler.engine.moves`) names the old key in ``from`` and carries
the key columns, the parent and the fields that change.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Callable, Iterable, Iterator

from ..catalogue import Entity

# Moves sort between updates and deletes: apply runs creates, moves and updates
# parents first, then deletes children first, and a reader meets a rename before the
# deletions it did not need.
ACTIONS = ("create", "update", "move", "delete")
ACTION_ORDER = {a: i for i, a in enumerate(ACTIONS)}


class Change:
    """One typed change. ``before``/``after`` are dicts (or None).

    A delete may be built from the row's values as a tuple (``before`` a tuple, and
    ``fields`` their names), turned into a dict only when asked: a wiped catalogue's
    million deletes then cost a million small objects, not a million dicts.
    """

    __slots__ = ("action", "kind", "key", "_before", "_after", "from_key", "fields")

    def __init__(self, action: str, kind: str, key: str, before, after, from_key: str | None = None,
                 fields: tuple[str, ...] | None = None) -> None:
        self.action, self.kind, self.key = action, kind, key
        self._before, self._after = before, after
        self.from_key = from_key  # a move's old key (``"from"`` in the plan file)
        self.fields = fields

    @property
    def before(self) -> dict | None:
        b = self._before
        return dict(zip(self.fields, b)) if isinstance(b, tuple) else b

    @property
    def after(self) -> dict | None:
        a = self._after
        return dict(zip(self.fields, a)) if isinstance(a, tuple) else a

    def to_dict(self) -> dict:
        d = {"action": self.action, "after": self.after, "before": self.before, "key": self.key, "kind": self.kind}
        if self.action == "move":
            d["from"] = self.from_key
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Change":
        return cls(d["action"], d["kind"], d["key"], d.get("before"), d.get("after"), d.get("from"))

    def inverse(self) -> "Change":
        """The change that undoes this one (rollback)."""
        if self.action == "move":
            return Change("move", self.kind, self.from_key, self.after, self.before, self.key)
        action = {"create": "delete", "delete": "create", "update": "update"}[self.action]
        return Change(action, self.kind, self.key, self.after, self.before)

    def __eq__(self, other) -> bool:
        return isinstance(other, Change) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.action, self.kind, self.key))

    def __repr__(self) -> str:
        moved = f", from_key={self.from_key!r}" if self.action == "move" else ""
        return f"Change({self.action!r}, {self.kind!r}, {self.key!r}, {self.before!r}, {self.after!r}{moved})"


class EncodedChange(Change):
    """A change made as its canonical JSON text (by the columnar diff): written to the
    plan file as it is, turned into dicts only if someone asks."""

    __slots__ = ("line",)

    def __init__(self, action: str, kind: str, key: str, line: str) -> None:
        super().__init__(action, kind, key, None, None)
        self.line = line

    def to_dict(self) -> dict:
        return json.loads(self.line)

    @property
    def before(self) -> dict | None:
        return self.to_dict()["before"]

    @property
    def after(self) -> dict | None:
        return self.to_dict()["after"]


def change_order(kinds: Sequence[str]) -> Callable[[Change], tuple]:
    """The plan's order of changes: by kind (the catalogue's, parents first), action,
    then key."""
    order = {k: i for i, k in enumerate(kinds)}
    return lambda c: (order[c.kind], ACTION_ORDER[c.action], c.key)


class Lines:
    """Changes of one kind and action — the creates, or updates that carry JSON values —
    as canonical JSON lines, in key order, in parts of (``key``, ``line``, …) frames (see
    :class:`reconciler.spill.Parts`), less the keys in ``skip`` (creates that became
    moves or updates): no Python object per change until one is asked for."""

    def __init__(self, kind: str, parts, skip: set[str] | frozenset = frozenset(), action: str = "create") -> None:
        self.kind, self.parts, self.skip, self.action = kind, parts, skip, action

    def __len__(self) -> int:
        return self.parts.rows - len(self.skip)

    def batches(self, size: int, max_bytes: int = 8 << 20) -> Iterator[tuple[str, int]]:
        """The lines, ``size`` at a time but no more than about ``max_bytes`` of them (a
        post's update holds two lists of URLs: ~7 KB), joined by commas."""
        import polars as pl

        skip = sorted(self.skip)
        for frame in self.parts.slices(size):
            if skip:
                frame = frame.filter(~pl.col("key").is_in(skip))
            if not frame.height:
                continue
            lengths = frame["line"].str.len_bytes()
            if lengths.sum() > max_bytes:
                pieces = frame.with_columns((lengths.cum_sum() // max_bytes).alias("_piece"))
                pieces = [p.drop("_piece") for p in pieces.partition_by("_piece", maintain_order=True)]
            else:
                pieces = [frame]
            for piece in pieces:  # joined by Polars: no Python string per line
                yield piece["line"].str.join(",").item(), piece.height

    def __iter__(self) -> Iterator[Change]:
        for frame in self.parts.slices(4096):
            for key, line in frame.select("key", "line").iter_rows():
                if key not in self.skip:
                    yield EncodedChange(self.action, self.kind, key, line)


def empty_summary(kinds: Sequence[str]) -> dict[str, dict[str, int]]:
    return {k: {a: 0 for a in ACTIONS} for k in kinds}


class ChangeList(Sequence):
    """The changes of a plan in plan order, as segments: lists of :class:`Change` and
    :class:`Lines` (the creates — a million of them in a first plan — stay canonical
    lines, spilled to disk when large, until they are written). Reads like a list of
    :class:`Change` (a create comes out as an :class:`EncodedChange` when asked for)."""

    def __init__(self, segments: list, kinds: Sequence[str], spill=None) -> None:
        self.segments = [s for s in segments if len(s)]
        self.kinds = tuple(kinds)
        self.spill = spill  # the folder the lines are in lives as long as the plan

    def __len__(self) -> int:
        return sum(len(s) for s in self.segments)

    def __iter__(self) -> Iterator[Change]:
        for segment in self.segments:
            yield from segment

    def __getitem__(self, index):
        if isinstance(index, slice):
            return list(itertools.islice(iter(self), *index.indices(len(self))))
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(index)
        return next(itertools.islice(iter(self), index, None))

    def __eq__(self, other) -> bool:
        return isinstance(other, (list, ChangeList)) and len(self) == len(other) and all(
            a == b for a, b in zip(self, other)
        )

    def __repr__(self) -> str:
        return f"ChangeList({len(self)} changes)"

    def summary(self) -> dict[str, dict[str, int]]:
        counts = empty_summary(self.kinds)
        for segment in self.segments:
            if isinstance(segment, Lines):
                counts[segment.kind][segment.action] += len(segment)
            else:
                for c in segment:
                    counts[c.kind][c.action] += 1
        return counts


def summarize(changes: Iterable[Change], kinds: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
    """Counts per kind and action. ``kinds`` (the catalogue's) gives every kind a line,
    zero or not; without it, the kinds the changes hold, in the order they come."""
    if isinstance(changes, ChangeList):
        return changes.summary()
    changes = list(changes)
    if kinds is None:
        kinds = list(dict.fromkeys(c.kind for c in changes))
    summary = empty_summary(kinds)
    for c in changes:
        summary[c.kind][c.action] += 1
    return summary


# --------------------------------------------------------------------------- comparing rows


def json_columns(e: Entity) -> list[str]:
    return [c.name for c in e.columns if c.value.is_json]


def _jsonb_key(name: str) -> tuple[int, bytes]:
    data = name.encode("utf-8")
    return len(data), data


def jsonb_text(value) -> str:
    """A value's text as PostgreSQL's ``jsonb::text`` writes it: object keys shorter
    first, then by bytes; ``", "`` and ``": "`` between items (what ``json.dumps`` with
    ``ensure_ascii=False`` writes for a value whose keys are in that order)."""
    def order(v):
        if isinstance(v, dict):
            return {k: order(v[k]) for k in sorted(v, key=_jsonb_key)}
        if isinstance(v, list):
            return [order(x) for x in v]
        return v

    return json.dumps(order(value), ensure_ascii=False)


def jsonb_text_expr(column: str, dtype):
    """``jsonb_text`` of a desired JSON column (a struct of lists of strings and the
    like), made by Polars where no string needs escaping, else by Python."""
    import polars as pl

    def plain(expr, dt) -> pl.Expr | None:
        if isinstance(dt, pl.Struct):
            fields = sorted((f.name for f in dt.fields), key=_jsonb_key)
            types = {f.name: f.dtype for f in dt.fields}
            parts = []
            for i, name in enumerate(fields):
                inner = plain(expr.struct.field(name), types[name])
                if inner is None:
                    return None
                parts += [pl.lit(("{" if i == 0 else ", ") + json.dumps(name, ensure_ascii=False) + ": "), inner]
            return pl.concat_str(parts + [pl.lit("}")]) if parts else pl.lit("{}")
        if isinstance(dt, pl.List) and dt.inner == pl.String:
            return pl.when(expr.list.len() == 0).then(pl.lit("[]")).otherwise(
                pl.lit('["') + expr.list.join('", "') + pl.lit('"]'))
        if dt == pl.String:
            return pl.when(expr.is_null()).then(pl.lit("null")).otherwise(pl.lit('"') + expr + pl.lit('"'))
        if dt in (pl.Int64, pl.Int32, pl.UInt32):
            return pl.when(expr.is_null()).then(pl.lit("null")).otherwise(expr.cast(pl.String))
        return None

    fast = plain(pl.col(column), dtype)
    slow = pl.col(column).map_elements(lambda v: None if v is None else jsonb_text(v), return_dtype=pl.String)
    return fast, slow


def _strings(dtype) -> bool:
    import polars as pl

    if isinstance(dtype, pl.Struct):
        return any(_strings(f.dtype) for f in dtype.fields)
    if isinstance(dtype, pl.List):
        return _strings(dtype.inner)
    return dtype == pl.String


def json_texts(frame, columns: list[str]):
    """The desired JSON columns of ``frame`` as ``jsonb::text`` (``_t.<column>``), so
    that two values are equal exactly when their texts are."""
    out = []
    for col in columns:
        fast, slow = jsonb_text_expr(col, frame.schema[col])
        out.append((slow if fast is None or _has_escapes(frame, col) else fast).alias("_t." + col))
    return frame.with_columns(out) if out else frame


def _has_escapes(frame, col: str) -> bool:
    """Whether any string inside the column needs escaping as JSON text."""
    import polars as pl

    expr = pl.col(col)
    dtype = frame.schema[col]
    strings = []

    def walk(e, dt):
        if isinstance(dt, pl.Struct):
            for f in dt.fields:
                walk(e.struct.field(f.name), f.dtype)
        elif isinstance(dt, pl.List):
            strings.append(("list", e, dt.inner))
        elif dt == pl.String:
            strings.append(("str", e, dt))

    walk(expr, dtype)
    if any(how == "list" and inner != pl.String for how, _, inner in strings):
        return True
    if not strings:
        return False
    # One query for every string of the column: Polars runs the parts side by side.
    escaped = r'["\\\x00-\x1f]'
    found = [(e.explode() if how == "list" else e).drop_nulls().str.contains(escaped).any()
             for how, e, _ in strings]
    return bool(frame.select(pl.any_horizontal(*found)).item())


def entity_changes(e: Entity, want, have, *, update_lines: bool = False):
    """The changes of one entity between the desired rows (``k.<entity>`` and the
    fields; JSON columns as structs) and the current ones (the same, JSON columns as
    ``jsonb::text``), by one full join on the plan key and a comparison per column.
    Returns the creates as a frame of their canonical text (``key``, ``line`` and, for
    an entity that moves by content, its ``etag`` and ``size_bytes``; in key order),
    the updates as such a frame too when ``update_lines`` (else as changes), and the
    other changes."""
    import polars as pl

    from ..canonical import canonical

    k = "k." + e.name
    fields = list(e.fields)
    jsons = json_columns(e)
    compared = list(e.updatable)
    # Only the fields go through the join (a key column that is the plan key not at all),
    # each in one piece: a join over the pieces of a spill and of a copy is slower.
    same = e.key_columns[0] if e.key_is_plan_key else None
    joined_fields = [f for f in fields if f != same]
    want = json_texts(want.select(k, *joined_fields).rechunk(), jsons)
    joined = want.with_columns(pl.lit(True).alias("_want")).join(
        have.select(k, *joined_fields, pl.lit(True).alias("_have")).rechunk(), on=k, how="full", suffix="_db",
        coalesce=True,
    )
    both = pl.col("_want").is_not_null() & pl.col("_have").is_not_null()

    def desired(f: str) -> str:
        return "_t." + f if f in jsons else f

    differs = pl.lit(False)
    for f in compared:
        differs = differs | pl.col(desired(f)).ne_missing(pl.col(f + "_db"))
    after = pl.struct(*[pl.col(k).alias(f) if f == same else pl.col(f) for f in sorted(fields)]).alias("after")
    line = pl.struct(
        pl.lit("create").alias("action"), after, pl.lit(None).alias("before"),
        pl.col(k).alias("key"), pl.lit(e.name).alias("kind"),
    ).struct.json_encode()
    extra = content_columns(e)
    creates = (
        joined.filter(pl.col("_have").is_null()).sort(k)
        .select(pl.col(k).alias("key"), line.alias("line"), *[pl.col(c).alias(a) for a, c in extra.items()])
    )

    updates = _updates(e, joined.filter(both & differs).sort(k), compared, desired)
    deletes = _deletes(e, joined.filter(pl.col("_want").is_null()).sort(k), same)
    if update_lines:
        lines = pl.DataFrame([(c.key, canonical(c.to_dict())) for c in updates], orient="row",
                             schema={"key": pl.String, "line": pl.String})
        return creates, lines, deletes
    return creates, updates, deletes


def _loads(text):
    return None if text is None else json.loads(text)


def _updates(e: Entity, changed, compared: list[str], desired) -> list[Change]:
    """The updates of the joined rows that differ: per row, the compared fields that
    changed, before (JSON columns parsed from their text) and after."""
    import polars as pl

    k = "k." + e.name
    jsons = json_columns(e)
    n = len(compared)
    changed = changed.select(
        k,
        *[pl.col(desired(f)).alias(f"_w{i}") for i, f in enumerate(compared)],
        *[pl.col(f).alias(f"_v{i}") for i, f in enumerate(compared)],
        *[pl.col(f + "_db").alias(f"_h{i}") for i, f in enumerate(compared)],
    )
    updates: list[Change] = []
    for row in changed.iter_rows():
        key, texts, values, olds = row[0], row[1 : n + 1], row[n + 1 : 2 * n + 1], row[2 * n + 1 :]
        before, after_ = {}, {}
        for name, t, v, h in zip(compared, texts, values, olds):
            if t != h:
                before[name], after_[name] = (_loads(h), v) if name in jsons else (h, v)
        updates.append(Change("update", e.name, key, before, after_))
    return updates


def _deletes(e: Entity, gone, same: str | None) -> list[Change]:
    """The deletes of the joined rows no longer wanted, with every field as it is."""
    import polars as pl

    k = "k." + e.name
    fields = list(e.fields)
    jsons = json_columns(e)
    gone = gone.select(k, *[pl.col(k).alias(f) if f == same else f + "_db" for f in fields])
    json_at = [i for i, f in enumerate(fields) if f in jsons]
    names = tuple(fields)
    deletes = []
    for row in gone.iter_rows():
        values = list(row[1:])
        for i in json_at:
            values[i] = _loads(values[i])
        deletes.append(Change("delete", e.name, row[0], tuple(values), None, fields=names))
    return deletes


def content_columns(e: Entity) -> dict[str, str]:
    """For an entity that moves by content: its ``etag`` and ``size_bytes`` as the
    columns holding the object's ETag and size."""
    if e.moves != "content":
        return {}
    found = {}
    for c in e.columns:
        t = c.value.template
        if t is not None and t.single == "etag":
            found["etag"] = c.name
        if t is not None and t.single == "size":
            found["size_bytes"] = c.name
    return found


