"""The typed changes between desired and current state, and the comparisons that make
them (:func:`_compare` for models, :func:`post_changes` and :func:`media_changes` for
frames of posts and media), which :mod:`reconciler.engine` runs a batch of models at a
time. Pure: no I/O.

A change is plain data (create / update / move / delete of a model, post or media
item, named by its natural key); the plan file is a list of them. ``create`` and
``delete`` carry every managed field (plus the parent's key: a post names its
``model``, a media item its ``post``); ``update`` carries only the fields that change;
``move`` (a renamed folder, see :mod:`reconciler.moves`) names the old key in ``from``
and carries the key columns, the parent and the fields that change.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Iterable, Iterator

from .desired import MEDIA_FIELDS, MODEL_FIELDS, POST_FIELDS, split_post_key

KINDS = ("model", "post", "media")
# Moves sort between updates and deletes: apply runs creates, moves and updates
# parents first, then deletes children first, and a reader meets a rename before the
# deletions it did not need.
ACTIONS = ("create", "update", "move", "delete")
KIND_ORDER = {k: i for i, k in enumerate(KINDS)}
ACTION_ORDER = {a: i for i, a in enumerate(ACTIONS)}
FIELDS = {"model": MODEL_FIELDS, "post": POST_FIELDS, "media": MEDIA_FIELDS}


class Change:
    """One typed change. ``before``/``after`` are dicts (or None).

    A create or delete may be built from the row tuple itself (``before_row`` /
    ``after_row``) and turns it into a dict only when asked: a million creates then
    cost a million small objects, not a million dicts.
    """

    __slots__ = ("action", "kind", "key", "_before", "_after", "from_key")

    def __init__(self, action: str, kind: str, key: str, before, after, from_key: str | None = None) -> None:
        self.action, self.kind, self.key = action, kind, key
        self._before, self._after = before, after
        self.from_key = from_key  # a move's old key (``"from"`` in the plan file)

    @property
    def before(self) -> dict | None:
        b = self._before
        return full_image(self.kind, self.key, b) if isinstance(b, tuple) else b

    @property
    def after(self) -> dict | None:
        a = self._after
        return full_image(self.kind, self.key, a) if isinstance(a, tuple) else a

    @property
    def sort_key(self) -> tuple[int, int, str]:
        return KIND_ORDER[self.kind], ACTION_ORDER[self.action], self.key

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


def full_image(kind: str, key: str, row: tuple) -> dict:
    """Every managed field of a row, named as its column, plus the parent's key."""
    if kind == "model":
        image = {"folder_name": key}
    elif kind == "post":
        model, post = split_post_key(key)
        image = {"model": model, "folder_name": post}
    else:
        image = {"s3_key": key}
    image.update(zip(FIELDS[kind], row))
    return image


def _compare(kind: str, fields: tuple[str, ...], desired: dict, current: Iterable, out: list[Change]) -> int:
    """Append the changes of one kind; consume ``desired`` entries; return the current row count."""
    n = 0
    pop = desired.pop
    for key, have in current:
        n += 1
        want = pop(key, None)
        if want is None:
            out.append(Change("delete", kind, key, tuple(have), None))
        elif want != have:
            before, after = {}, {}
            for name, w, h in zip(fields, want, have):
                if w != h or type(w) is not type(h):
                    before[name], after[name] = h, w
            if before:
                out.append(Change("update", kind, key, before, after))
    for key, want in desired.items():
        out.append(Change("create", kind, key, None, want))
    return n


class Lines:
    """Changes of one kind and action — the creates, or a post's updates, which carry
    whole URL lists — as canonical JSON lines, in key order, in parts of (``key``,
    ``line``, …) frames (see :class:`reconciler.spill.Parts`), less the keys in ``skip``
    (creates that became moves or updates): no Python object per change until one is
    asked for."""

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


class ChangeList(Sequence):
    """The changes of a plan in plan order, as segments: lists of :class:`Change` and
    :class:`Lines` (the creates of posts and media — a million of them in a first
    plan — stay canonical lines, spilled to disk when large, until they are written).
    Reads like a list of :class:`Change` (a create comes out as an
    :class:`EncodedChange` when asked for)."""

    def __init__(self, segments: list, spill=None) -> None:
        self.segments = [s for s in segments if len(s)]
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
        counts = summarize([])
        for segment in self.segments:
            if isinstance(segment, Lines):
                counts[segment.kind][segment.action] += len(segment)
            else:
                for c in segment:
                    counts[c.kind][c.action] += 1
        return counts


def media_changes(want, have) -> tuple:
    """The media changes between two frames of (s3_key, post, url, type, size_bytes,
    etag) — a batch's — by one full join on the key, presence flags, and a comparison
    per column. Returns the creates as a frame of their canonical text (``s3_key``,
    ``line``, ``etag``, ``size_bytes``; made by Polars in one pass, in key order) and the
    updates and deletes as changes."""
    import polars as pl

    fields = list(MEDIA_FIELDS)
    db = [f + "_db" for f in fields]
    joined = want.with_columns(pl.lit(True).alias("_want")).join(
        have.with_columns(pl.lit(True).alias("_have")), on="s3_key", how="full", suffix="_db", coalesce=True
    )
    both = pl.col("_want").is_not_null() & pl.col("_have").is_not_null()
    differs = pl.any_horizontal([pl.col(f).ne_missing(pl.col(f + "_db")) for f in fields])
    updated = joined.filter(both & differs).sort("s3_key")
    deleted = joined.filter(pl.col("_want").is_null()).sort("s3_key")

    after = pl.struct(*sorted(["s3_key", *fields])).alias("after")
    line = pl.struct(
        pl.lit("create").alias("action"), after, pl.lit(None).alias("before"),
        pl.col("s3_key").alias("key"), pl.lit("media").alias("kind"),
    ).struct.json_encode()
    creates = (
        joined.filter(pl.col("_have").is_null()).sort("s3_key")
        .select("s3_key", line.alias("line"), "etag", "size_bytes")
    )
    del joined
    out: list[Change] = []
    for row in updated.select("s3_key", *fields, *db).iter_rows():
        key, want_row, have_row = row[0], row[1 : len(fields) + 1], row[len(fields) + 1 :]
        before, after_ = {}, {}
        for name, w, h in zip(fields, want_row, have_row):
            if w != h:
                before[name], after_[name] = h, w
        if before:
            out.append(Change("update", "media", key, before, after_))
    out += [Change("delete", "media", r[0], r[1:], None) for r in deleted.select("s3_key", *db).iter_rows()]
    return creates, out


def _json_list(column: str):
    """A list of strings that need no escaping as JSON text, as PostgreSQL writes it."""
    import polars as pl

    items = pl.col(column)
    return pl.when(items.list.len() == 0).then(pl.lit("[]")).otherwise(
        pl.lit('["') + items.list.join('", "') + pl.lit('"]')
    )


def cdns_text(want):
    """``media_cdns`` of desired posts as ``jsonb::text`` writes it — ``{"images": […],
    "videos": […]}`` with ``", "`` and ``": "`` — so that two values are equal exactly
    when their texts are (what ``json.dumps(value, ensure_ascii=False)`` writes too)."""
    import polars as pl

    urls = want.select(pl.concat_list("images", "videos").explode().drop_nulls())
    if urls.select(pl.first().str.contains(r'["\\\x00-\x1f]').any()).item():  # a CDN base that needs escaping
        return pl.struct("images", "videos").map_elements(
            lambda v: json.dumps({"images": v["images"], "videos": v["videos"]}, ensure_ascii=False),
            return_dtype=pl.String,
        )
    return pl.lit('{"images": ') + _json_list("images") + pl.lit(', "videos": ') + _json_list("videos") + pl.lit("}")


def post_changes(want, have) -> tuple:
    """The post changes between the desired posts (``key``, ``title``, ``images``,
    ``videos``) and the current ones (``key``, ``title``, ``media_cdns`` as
    ``jsonb::text``), by one full join: media_cdns compared as text. Returns the
    creates as a frame of their canonical text (``key``, ``line``, in key order) and the
    updates and deletes as changes."""
    import polars as pl

    joined = want.with_columns(cdns_text(want).alias("_text"), pl.lit(True).alias("_want")).join(
        have.with_columns(pl.lit(True).alias("_have")), on="key", how="full", suffix="_db", coalesce=True
    )
    both = pl.col("_want").is_not_null() & pl.col("_have").is_not_null()
    differs = pl.col("title").ne_missing(pl.col("title_db")) | pl.col("_text").ne_missing(pl.col("media_cdns"))
    after = pl.struct(
        pl.col("title").alias("folder_name"),
        pl.struct("images", "videos").alias("media_cdns"),
        pl.col("key").str.splitn("/", 2).struct.field("field_0").alias("model"),
        "title",
    ).alias("after")
    line = pl.struct(
        pl.lit("create").alias("action"), after, pl.lit(None).alias("before"), "key", pl.lit("post").alias("kind"),
    ).struct.json_encode()
    creates = joined.filter(pl.col("_have").is_null()).sort("key").select("key", line.alias("line"))

    def loads(text):
        return None if text is None else json.loads(text)

    out: list[Change] = []
    changed = joined.filter(both & differs).select("key", "title", "images", "videos", "_text", "title_db", "media_cdns")
    for key, title, images, videos, text, title_db, text_db in changed.iter_rows():
        before, after_ = {}, {}
        if title != title_db:
            before["title"], after_["title"] = title_db, title
        if text != text_db:
            before["media_cdns"], after_["media_cdns"] = loads(text_db), {"images": images, "videos": videos}
        out.append(Change("update", "post", key, before, after_))
    gone = joined.filter(pl.col("_want").is_null()).select("key", "title_db", "media_cdns")
    out += [Change("delete", "post", key, (title, loads(text)), None) for key, title, text in gone.iter_rows()]
    return creates, out


def summarize(changes: Iterable[Change]) -> dict[str, dict[str, int]]:
    if isinstance(changes, ChangeList):
        return changes.summary()
    summary = {k: {a: 0 for a in ACTIONS} for k in KINDS}
    for c in changes:
        summary[c.kind][c.action] += 1
    return summary
