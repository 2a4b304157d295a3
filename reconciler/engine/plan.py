"""Planning a batch of whole top-entity rows at a time: memory follows the largest
batch, not the bucket. Pure but for the spill folder: the database is read through
:class:`Current`.

Rows under different top-entity rows are independent — a post and its media belong to
one model — so the classified listing and the current rows are divided into batches of
whole top rows and each batch is compared on its own. A batch is a range of top keys in
*key order*: top key ``M`` owns the keys that start with ``M/``, and those keys sort
together, in the order of ``M/`` (``"Alice Smith/…"`` before ``"Alice/…"``, as ``" "``
sorts before ``"/"``). So a batch's creates, sorted by key, all follow the previous
batch's, and the plan's creates are the batches' runs one after the other: no merge.
Updates and deletes (few) stay in memory; moves are found once every batch is done,
over those deletes and the creates that hold the same content, read back from the runs.

The current rows come in ranges of top keys (copied a range at a time, while the
listing is read) and a current row goes to the batch of the top row it is filed under:
a key that the database files under another top row than the one its key names is then
deleted in one batch and created in another, and made one update again at the end.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from typing import Callable

import polars as pl

from ..canonical import canonical
from ..catalogue import Catalogue, Entity
from ..catalogue.keys import scope_segment
from . import BATCH_ROWS  # items (or current rows) per batch, unless one top row has more
from .diff import Change, ChangeList, EncodedChange, Lines, change_order, content_columns, entity_changes, json_columns
from .frames import UNKNOWN_PARENT, Listing, desired_of, plan_key, top_key_expr
from .spill import Parts, Spill, by_top

LINES_SCHEMA = {"key": pl.String, "line": pl.String}
CONTENT_LINES_SCHEMA = {"key": pl.String, "line": pl.String, "etag": pl.String, "size_bytes": pl.Int64}

_POLARS = {"text": pl.String, "integer": pl.Int64, "bigint": pl.Int64, "boolean": pl.Boolean, "json": pl.String,
           "jsonb": pl.String, "timestamp": pl.String, "timestamptz": pl.String}


def current_schema(catalogue: Catalogue, e: Entity) -> dict:
    """The columns of an entity's current rows as the engine compares them: its plan
    key, its top row's key, its fields (JSON columns as ``jsonb::text``)."""
    schema = {plan_key(e.name): pl.String, plan_key(catalogue.top.name): pl.String}  # one column for the top
    for c in e.key_columns:
        schema[c] = pl.String
    if e.parent:
        schema[e.parent] = pl.String
    for c in e.columns:
        schema[c.name] = _POLARS[c.type]
    return schema


def repeated(catalogue: Catalogue, e: Entity) -> dict[str, str]:
    """The columns of an entity's current rows that repeat another (column: the one it
    repeats): a key column that is the whole plan key, the top row's key when it is the
    parent's. The database sends each value once (:func:`copied_schema`)."""
    out = {}
    if e.key_is_plan_key:
        out[e.key_columns[0]] = plan_key(e.name)
    if e.parent is not None and e.parent == catalogue.top.name:
        out[plan_key(e.parent)] = e.parent
    return out


def copied_schema(catalogue: Catalogue, e: Entity) -> dict:
    """The columns of an entity's current rows as the database copies them:
    :func:`current_schema` less the :func:`repeated` ones."""
    again = repeated(catalogue, e)
    return {c: t for c, t in current_schema(catalogue, e).items() if c not in again}


def with_repeated(catalogue: Catalogue, e: Entity, frame: pl.DataFrame) -> pl.DataFrame:
    """Copied rows (:func:`copied_schema`) with every column of :func:`current_schema`."""
    again = repeated(catalogue, e)
    return frame.select([pl.col(again[c]).alias(c) if c in again else pl.col(c) for c in current_schema(catalogue, e)])


@dataclass
class Current:
    """The current state in scope, as the engine reads it.

    ``ranges`` hold the owned entities' rows in ranges of top keys: ``[(lo, rows), …]``,
    the first ``lo`` being ``""``, each range holding the rows filed under the top rows
    whose key order (``key + "/"``) is from its ``lo`` to the next one's;
    ``rows.frame(entity)`` gives them (:func:`current_schema`), and ``rows.discard()``
    is called once they are read. ``counts`` are the rows per top key (to size batches;
    need not be exact). ``known`` holds the plan keys of the platform-owned rows in
    scope, by entity.
    """

    ranges: list[tuple[str, object]]
    counts: dict[str, int] = field(default_factory=dict)
    known: dict[str, set[str]] = field(default_factory=dict)


@dataclass
class Rows:
    """A range of current rows held in memory: a frame per owned entity."""

    frames: dict[str, pl.DataFrame]

    def frame(self, entity: str) -> pl.DataFrame:
        return self.frames[entity]


@dataclass
class Result:
    changes: ChangeList
    current_counts: dict[str, int]
    batches: int
    held: dict[str, list[str]] = field(default_factory=dict)  # rows kept as they are (their objects' parent is missing)


def _order(name: str) -> str:
    return name + "/"


def batch_bounds(counts: dict[str, int], size: int) -> list[str]:
    """Where each batch after the first begins (the key order of its first top row):
    top keys in key order, a batch closed when the next would take it past ``size``."""
    bounds: list[str] = []
    total = 0
    for name in sorted(counts, key=_order):
        n = counts[name]
        if total and total + n > size:
            bounds.append(_order(name))
            total = 0
        total += n
    return bounds


def _top_ordered(catalogue: Catalogue, e: Entity) -> bool:
    """Whether the entity's plan keys sort as their batches do (then the batches'
    creates follow one another): keys within their parent begin with the top key and a
    "/", as batches are ordered (``key + "/"``); a key that is the object's own begins
    with the scope's folders. The top rows' own keys do not: ``"a"`` sorts before
    ``"a b"``, but ``"a b/"`` before ``"a/"``."""
    if e is catalogue.top:
        return False
    if e.unique == "parent":
        return True
    segment = scope_segment(catalogue)
    names = [t.single for _, t in e.key]
    return segment is not None and len(names) == 1 and names[0] in ("key", "rel")


def plan_changes(
    listing: Listing,
    current: Current,
    catalogue: Catalogue,
    *,
    cdn_base_url: str,
    root: str = "",
    moves: bool = True,
    batch_rows: int = BATCH_ROWS,
    spill: Spill | None = None,
) -> Result:
    """The changes that make ``current`` what ``listing`` says, in plan order (the
    listing was classified below ``root`` already)."""
    desired_parts, current_of = _batches(listing, current, catalogue, batch_rows)
    diffs = _Diffs(catalogue.owned, spill)
    for b, part in enumerate(desired_parts):
        desired = desired_of(part.frame(), catalogue, cdn_base_url, root=root, known=current.known)
        part.discard()
        diffs.add(desired, current_of(b))
        del desired
    if diffs.unknown:
        listing.skip(UNKNOWN_PARENT, diffs.unknown)
    others, kept = _keep_held(diffs.others, diffs.held)
    skip: dict[str, set[str]] = {e.name: set() for e in catalogue.owned}
    for e in catalogue.owned:
        if e.unique == "global" and e.parent is not None:
            others = _same_key(e, others, diffs.creates[e.name], skip[e.name], diffs.update_lines.get(e.name))
    if moves:
        others = _find_moves(catalogue, others, diffs.creates, skip)
    changes = _change_list(catalogue, diffs, others, skip, spill)
    return Result(changes, diffs.rows_read, len(desired_parts), kept)


def _batches(listing: Listing, current: Current, catalogue: Catalogue,
             batch_rows: int) -> tuple[list[Parts], "_ByBatch"]:
    """The listing's items cut into batches of top keys (about ``batch_rows`` rows
    each, desired or current), and the current rows of each batch."""
    counts = dict(listing.counts)
    for name, n in current.counts.items():
        counts[name] = max(counts.get(name, 0), n)
    ranges = [lo for lo, _ in current.ranges]
    bounds = sorted(set(batch_bounds(counts, batch_rows)) | set(ranges[1:]))
    n = len(bounds) + 1

    def batch_of(name: str) -> int:
        return bisect.bisect_right(bounds, _order(name))

    if n == 1:
        desired_parts = [listing.items]
    else:
        mapping = {name: batch_of(name) for name in counts}
        which = top_key_expr(catalogue).replace_strict(mapping, default=0, return_dtype=pl.Int32)
        desired_parts = listing.items.split(which, n)
        listing.items.discard()
    return desired_parts, _ByBatch(current, bounds, batch_of, catalogue)


class _Diffs:
    """The changes of every batch, gathered per owned entity: creates (and updates of
    entities with JSON columns) as lines, the other updates and the deletes as changes;
    the rows read, the keys held by objects under missing platform rows, and those
    objects."""

    def __init__(self, owned, spill: Spill | None) -> None:
        self.owned = owned
        self.creates = {e.name: Parts(CONTENT_LINES_SCHEMA if content_columns(e) else LINES_SCHEMA, spill)
                        for e in owned}
        self.update_lines = {e.name: Parts(LINES_SCHEMA, spill) for e in owned if json_columns(e)}
        self.others: list[Change] = []  # updates (of entities without JSON columns), and deletes
        self.rows_read = {e.name: 0 for e in owned}
        self.held: dict[str, set[str]] = {}
        self.unknown: list[tuple[int, str]] = []

    def add(self, desired, have: dict[str, pl.DataFrame]) -> None:
        """One batch: its desired rows against the rows the database ``have``."""
        if desired.unknown is not None:
            self.unknown += desired.unknown.iter_rows()
        for name, keys in desired.held.items():
            self.held.setdefault(name, set()).update(keys)
        for e in self.owned:
            h = have[e.name]
            self.rows_read[e.name] += h.height
            as_lines = e.name in self.update_lines
            made, updates, deletes = entity_changes(e, desired.rows[e.name], h, update_lines=as_lines)
            self.creates[e.name].add(made)
            if as_lines:
                self.update_lines[e.name].add(updates)
            else:
                self.others += updates
            self.others += deletes


def _keep_held(others: list[Change], held: dict[str, set[str]]) -> tuple[list[Change], dict[str, list[str]]]:
    """The changes without the deletes of held rows — an object under a missing
    platform row is still in the bucket, so its row stays — and those rows' keys."""
    if not held:
        return others, {}
    kept: dict[str, list[str]] = {}
    rest = []
    for c in others:
        if c.action == "delete" and c.key in held.get(c.kind, ()):
            kept.setdefault(c.kind, []).append(c.key)
        else:
            rest.append(c)
    return rest, {k: sorted(v) for k, v in kept.items()}


def _change_list(catalogue: Catalogue, diffs: _Diffs, others: list[Change], skip: dict[str, set[str]],
                 spill: Spill | None) -> ChangeList:
    """The plan's changes in plan order: per owned entity its creates, its updates
    (lines or changes), its moves and deletes."""
    others.sort(key=change_order(catalogue.kinds))
    by_kind: dict[str, list[Change]] = {e.name: [] for e in catalogue.owned}
    for c in others:
        by_kind[c.kind].append(c)
    segments: list = []
    for e in catalogue.owned:
        made = diffs.creates[e.name]
        if not _top_ordered(catalogue, e):
            made = _sorted(made, spill)
        segments.append(Lines(e.name, made, skip[e.name]))
        if e.name in diffs.update_lines:
            updates = diffs.update_lines[e.name]
            # Each batch's updates come in key order, and so do the batches for an entity
            # whose keys sort as they do; only _same_key's come apart. Left as they are,
            # they stay spilled: 100k post updates of a 10M bucket are a gigabyte of text.
            if not _top_ordered(catalogue, e) or (e.unique == "global" and e.parent is not None):
                updates = _sorted(updates, spill)
            segments.append(Lines(e.name, updates, action="update"))
        segments.append(by_kind[e.name])
    return ChangeList(segments, catalogue.kinds, spill=spill)


def _sorted(parts: Parts, spill: Spill | None) -> Parts:
    """Lines in key order (updates come per batch, and some in a batch of their own)."""
    if parts.rows <= 1:
        return parts
    frame = parts.frame()
    if frame["key"].is_sorted():
        return parts
    out = Parts.of(frame.sort("key"), spill)
    parts.discard()
    return out


class _ByBatch:
    """The current rows of batch ``b``, batches asked for in order: each range of
    ``current.ranges`` is read once, and split among the batches within it by the top
    row each row is filed under."""

    def __init__(self, current: Current, bounds: list[str], batch_of: Callable[[str], int], catalogue: Catalogue) -> None:
        self.current, self.bounds, self.batch_of, self.catalogue = current, bounds, batch_of, catalogue
        self.ranges = [lo for lo, _ in current.ranges]
        self.read = -1
        self.held: dict[int, dict[str, pl.DataFrame]] = {}

    def __call__(self, b: int) -> dict[str, pl.DataFrame]:
        i = bisect.bisect_right(self.ranges, self.bounds[b - 1] if b else "") - 1
        top = plan_key(self.catalogue.top.name)
        if i != self.read:
            self.read = i
            rows = self.current.ranges[i][1]
            self.held = {}
            for e in self.catalogue.owned:
                for index, part in by_top(rows.frame(e.name), top, self.batch_of).items():
                    self.held.setdefault(index, {})[e.name] = part
            if hasattr(rows, "discard"):
                rows.discard()
        mine = self.held.pop(b, {})
        return {e.name: mine.get(e.name, pl.DataFrame(schema=current_schema(self.catalogue, e)))
                for e in self.catalogue.owned}


def _same_key(e: Entity, changes: list[Change], creates: Parts, skip: set[str], update_lines: Parts | None) -> list[Change]:
    """A key deleted in one batch and created in another — a row the database files
    under another top row than the one its key names — is one update, as it is when
    both meet in one batch. Adds the keys of those creates to ``skip``."""
    deleted = {c.key: c for c in changes if c.kind == e.name and c.action == "delete"}
    if not deleted:
        return changes
    found = creates.lazy().filter(pl.col("key").is_in(sorted(deleted))).select("key", "line").collect()
    if not found.height:
        return changes
    updates: dict[str, Change] = {}
    for key, line in found.iter_rows():
        want, have = json.loads(line)["after"], deleted[key].before
        before, after = {}, {}
        for name in e.updatable:
            w, h = want[name], have[name]
            if w != h or type(w) is not type(h):
                before[name], after[name] = h, w
        updates[key] = Change("update", e.name, key, before, after)
        skip.add(key)
    if update_lines is not None:  # its updates are lines: these join them
        update_lines.add(pl.DataFrame([(k, canonical(c.to_dict())) for k, c in sorted(updates.items())],
                                      orient="row", schema=LINES_SCHEMA))
        return [c for c in changes if not (c.kind == e.name and c.action == "delete" and c.key in updates)]
    return [updates.get(c.key, c) if c.kind == e.name and c.action == "delete" else c for c in changes]


def _find_moves(catalogue: Catalogue, changes: list[Change], creates: dict[str, Parts], skip: dict[str, set[str]]) -> list[Change]:
    """:func:`reconciler.moves.find_moves` over the changes in memory and the creates
    that can be moves: the creates holding the content (ETag and size) of a deleted
    row, and the created rows above them they would move into. Records the keys of the
    creates that became moves in ``skip``."""
    from .moves import find_moves, moving_chain

    chain = moving_chain(catalogue)
    if not chain:
        return changes
    leaf = chain[0]
    ids = content_columns(leaf)
    gone = [(c.before[ids["etag"]], c.before[ids["size_bytes"]]) for c in changes
            if c.kind == leaf.name and c.action == "delete" and c.before[ids["etag"]]]
    if not gone:
        return changes
    wanted = pl.LazyFrame(gone, orient="row", schema={"etag": pl.String, "size_bytes": pl.Int64}).unique()
    found = creates[leaf.name].lazy().join(wanted, on=["etag", "size_bytes"], how="semi", nulls_equal=True)
    if skip[leaf.name]:  # creates already taken (made updates by _same_key)
        found = found.filter(~pl.col("key").is_in(sorted(skip[leaf.name])))
    candidates = [EncodedChange("create", leaf.name, k, t) for k, t in found.select("key", "line").collect().iter_rows()]
    if not candidates:
        return changes
    below = candidates
    for child, parent in zip(chain, chain[1:]):
        targets = sorted({c.after[child.parent] for c in below})
        rows = creates[parent.name].lazy().filter(pl.col("key").is_in(targets)).select("key", "line").collect()
        below = [EncodedChange("create", parent.name, k, t) for k, t in rows.iter_rows()]
        candidates += below
    result = find_moves(changes + candidates, catalogue)
    for c in result:
        if c.action == "move" and c.kind in skip:
            skip[c.kind].add(c.key)
    return [c for c in result if not isinstance(c, EncodedChange)]


def current_of_rows(catalogue: Catalogue, rows: dict[str, list[dict]]) -> Current:
    """A database given as rows — full images by entity, ``{"media": [{"s3_key": …,
    "post": …, …}], …}`` — as the engine reads one: in one range."""
    frames = {}
    counts: dict[str, int] = {}
    for e in catalogue.owned:
        schema = current_schema(catalogue, e)
        out = []
        for image in rows.get(e.name, ()):
            key = _plan_key_of(e, image)
            top_key = _top_key_of(catalogue, e, image)
            values = [key] + ([top_key] if e is not catalogue.top else []) + [image[c] for c in e.key_columns] + ([image[e.parent]] if e.parent else [])
            values += [_stored(c, image[c.name]) for c in e.columns]
            out.append(values)
            counts[top_key] = counts.get(top_key, 0) + 1
        frames[e.name] = pl.DataFrame(out, orient="row", schema=schema)
    return Current(ranges=[("", Rows(frames))], counts=counts)


def _stored(column, value):
    """A value as the database hands it to the engine (JSON as ``jsonb::text``)."""
    from .diff import jsonb_text

    if column.value.is_json:
        return None if value is None else jsonb_text(value)
    return value


def _plan_key_of(e: Entity, image: dict) -> str:
    own = "/".join(str(image[c]) for c in e.key_columns)
    return own if e.unique == "global" or e.parent is None else image[e.parent] + "/" + own


def _top_key_of(catalogue: Catalogue, e: Entity, image: dict) -> str:
    """The top row a row is filed under: its parent's plan key, less the parts of every
    level keyed within its parent, up to the top."""
    if e.parent is None:
        return _plan_key_of(e, image)
    key = image[e.parent]
    p = catalogue.entity(e.parent)
    while p.parent is not None:
        if p.unique != "parent":
            raise ValueError(f"the top row of a {e.name} is not in its image: {p.name} is keyed on its own")
        key = key.rsplit("/", len(p.key_columns))[0]
        p = catalogue.entity(p.parent)
    return key


def plan_from_rows(objects, current_rows: dict[str, list[dict]], catalogue: Catalogue, *, cdn_base_url: str,
                   root: str = "", scope=None, moves: bool = True, batch_rows: int = BATCH_ROWS,
                   known: dict[str, set[str]] | None = None) -> Result:
    """The changes from a listing to a database given as rows (full images by entity, see
    :func:`current_of_rows`), in memory: the engine without a database, for tests and for
    use from Python."""
    from .frames import classify_listing

    listing = classify_listing(objects, catalogue, root=root, scope=scope)
    current = current_of_rows(catalogue, current_rows)
    current.known = known or {}
    return plan_changes(listing, current, catalogue, cdn_base_url=cdn_base_url, root=root, moves=moves,
                        batch_rows=batch_rows)
