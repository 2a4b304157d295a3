"""Planning a batch of whole models at a time: memory follows the largest batch, not
the bucket. Pure but for the spill folder: the database is read through :class:`Current`.

Models are independent — a post and its media belong to one model — so the classified
listing and the current media are divided into batches of whole models and each batch
is compared on its own. A batch is a range of model names in *key order*: model ``M``
owns the keys that start with ``M/``, and those keys sort together, in the order of
``M/`` (``"Alice Smith/…"`` before ``"Alice/…"``, as ``" "`` sorts before ``"/"``). So a
batch's creates, sorted by key, all follow the previous batch's, and the plan's creates
are the batches' runs one after the other: no merge. Updates and deletes (few) stay in
memory; moves are found once every batch is done, over those deletes and the creates
that hold the same content, read back from the runs.

A current row is put in the batch of the model its key names (its ``s3_key`` below the
root), so a key in both listing and database is compared in one batch even when the
database files it under another model; a key outside the root goes with its row's model.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Callable, Iterable

import polars as pl

from .desired import MEDIA_FIELDS, MODEL_FIELDS, POST_FIELDS, ModelRow, PostRow
from .diff import KINDS, Change, ChangeList, CreateLines, EncodedChange, _compare, media_changes
from .frames import Listing, desired_of
from .planfile import canonical
from .spill import Parts, Spill

BATCH_ROWS = 100_000  # items (or current media rows) per batch, unless one model has more: ~400-500 MB at peak

LINES_SCHEMA = {"key": pl.String, "line": pl.String}
MEDIA_LINES_SCHEMA = {"key": pl.String, "line": pl.String, "etag": pl.String, "size_bytes": pl.Int64}


@dataclass
class Current:
    """The current state in scope, as the engine reads it.

    ``models`` are the model rows; ``posts(names)`` gives the post rows of those models;
    ``media`` the media rows (``MEDIA_SCHEMA``, ``decode``-d after reading);
    ``media_counts`` the rows per model (to size batches; need not be exact).
    """

    models: list[tuple[str, ModelRow]]
    posts: Callable[[list[str]], Iterable[tuple[str, PostRow]]]
    media: object  # Parts, or anything with .lazy(), .frame(), .split(batch, n)
    media_counts: dict[str, int] = field(default_factory=dict)
    decode: Callable[[pl.DataFrame], pl.DataFrame] = lambda frame: frame


@dataclass
class Result:
    changes: ChangeList
    current_counts: dict[str, int]
    batches: int


def _order(name: str) -> str:
    return name + "/"


def batch_bounds(counts: dict[str, int], size: int) -> list[str]:
    """Where each batch after the first begins (the key order of its first model):
    models in key order, a batch closed when the next model would take it past ``size``."""
    bounds: list[str] = []
    total = 0
    for name in sorted(counts, key=_order):
        n = counts[name]
        if total and total + n > size:
            bounds.append(_order(name))
            total = 0
        total += n
    return bounds


def key_model(root: str) -> pl.Expr:
    """The model a current media row's key names; its row's model when the key is
    outside the root or names none."""
    rel = pl.col("s3_key").str.slice(len(root))
    named = pl.col("s3_key").str.starts_with(root) & rel.str.contains("/", literal=True)
    return pl.when(named).then(rel.str.split("/").list.first()).otherwise(
        pl.col("post").str.split("/").list.first()
    )


def plan_changes(
    listing: Listing,
    current: Current,
    *,
    cdn_base_url: str,
    root: str = "",
    moves: bool = True,
    batch_rows: int = BATCH_ROWS,
    spill: Spill | None = None,
) -> Result:
    """The changes that make ``current`` what ``listing`` says, in plan order."""
    counts = dict(listing.counts)
    for name, n in current.media_counts.items():
        counts[name] = max(counts.get(name, 0), n)
    for name, _ in current.models:
        counts.setdefault(name, 0)
    bounds = batch_bounds(counts, batch_rows)
    n = len(bounds) + 1

    def batch_of(name: str) -> int:
        return bisect.bisect_right(bounds, _order(name))

    if n == 1:
        desired_parts, media_parts = [listing.items], [current.media]
    else:
        mapping = {name: batch_of(name) for name in counts}
        to_batch = {"default": 0, "return_dtype": pl.Int32}
        desired_parts = listing.items.split(pl.col("model").replace_strict(mapping, **to_batch), n)
        media_parts = current.media.split(key_model(root).replace_strict(mapping, **to_batch), n)
        listing.items.discard()
    in_database: list[list[str]] = [[] for _ in range(n)]
    for name, _ in current.models:
        in_database[batch_of(name)].append(name)

    want_models: dict[str, ModelRow] = {}
    post_creates = Parts(LINES_SCHEMA, spill)
    media_creates = Parts(MEDIA_LINES_SCHEMA, spill)
    others: list[Change] = []  # post and media updates and deletes
    post_rows = media_rows = 0
    for b in range(n):
        desired = desired_of(desired_parts[b].frame(), cdn_base_url)
        desired_parts[b].discard()
        want_models.update(desired.models)
        posts: list[Change] = []
        if in_database[b] or desired.posts:
            have = current.posts(in_database[b]) if in_database[b] else ()
            post_rows += _compare("post", POST_FIELDS, dict(desired.posts), have, posts)
        lines = sorted((c.key, canonical(c.to_dict())) for c in posts if c.action == "create")
        post_creates.add(pl.DataFrame(lines, orient="row", schema=LINES_SCHEMA))
        others += [c for c in posts if c.action != "create"]
        del posts, lines
        have_media = current.decode(media_parts[b].frame())
        if isinstance(media_parts[b], Parts):
            media_parts[b].discard()
        media_rows += have_media.height
        creates, rest = media_changes(desired.media, have_media)
        del desired, have_media
        media_creates.add(creates.rename({"s3_key": "key"}))
        others += rest
        del creates, rest

    changes: list[Change] = []
    _compare("model", MODEL_FIELDS, want_models, current.models, changes)
    changes += others
    del others
    moved: dict[str, set[str]] = {"post": set(), "media": set()}
    if moves:
        changes = _find_moves(changes, post_creates, media_creates, moved)
    changes.sort(key=lambda c: c.sort_key)
    by_kind: dict[str, list[Change]] = {k: [] for k in KINDS}
    for c in changes:
        by_kind[c.kind].append(c)
    segments = [
        by_kind["model"],
        CreateLines("post", post_creates, moved["post"]),
        by_kind["post"],
        CreateLines("media", media_creates, moved["media"]),
        by_kind["media"],
    ]
    counts_now = {"model": len(current.models), "post": post_rows, "media": media_rows}
    return Result(ChangeList(segments, spill=spill), counts_now, n)


def _find_moves(changes: list[Change], post_creates: Parts, media_creates: Parts, moved: dict) -> list[Change]:
    """:func:`reconciler.moves.find_moves` over the changes in memory and the creates
    that can be moves: the media creates holding the content (ETag and size) of a
    deleted medium, and the created posts they would move into. Records the keys of the
    creates that became moves in ``moved``."""
    from .moves import find_moves

    gone = [(c.before["etag"], c.before["size_bytes"]) for c in changes
            if c.kind == "media" and c.action == "delete" and c.before["etag"]]
    if not gone:
        return changes
    ids = pl.LazyFrame(gone, orient="row", schema={"etag": pl.String, "size_bytes": pl.Int64}).unique()
    found = media_creates.lazy().join(ids, on=["etag", "size_bytes"], how="semi", nulls_equal=True)
    media = [EncodedChange("create", "media", k, t) for k, t in found.select("key", "line").collect().iter_rows()]
    if not media:
        return changes
    targets = sorted({c.after["post"] for c in media})
    posts = post_creates.lazy().filter(pl.col("key").is_in(targets)).collect()
    candidates = media + [EncodedChange("create", "post", k, t) for k, t in posts.iter_rows()]
    result = find_moves(changes + candidates)
    for c in result:
        if c.action == "move" and c.kind in moved:
            moved[c.kind].add(c.key)
    return [c for c in result if not isinstance(c, EncodedChange)]


def plan_from_rows(
    objects,
    current,
    *,
    cdn_base_url: str,
    root: str = "",
    layout=None,
    models=None,
    moves: bool = True,
    batch_rows: int = BATCH_ROWS,
) -> Result:
    """The changes from a listing to a database given as rows — a
    :class:`reconciler.current.CurrentState` of lists of ``(key, row)`` — in memory: the
    engine without a database, for tests and for use from Python."""
    from .frames import MEDIA_SCHEMA, classify_listing

    listing = classify_listing(objects, root=root, layout=layout, models=models)
    posts = list(current.posts)
    media = pl.DataFrame([(k, *row) for k, row in current.media], orient="row", schema=MEDIA_SCHEMA)
    state = Current(
        models=list(current.models),
        posts=lambda names: [(k, r) for k, r in posts if k.partition("/")[0] in set(names)],
        media=Parts.of(media),
    )
    return plan_changes(listing, state, cdn_base_url=cdn_base_url, root=root, moves=moves, batch_rows=batch_rows)
