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

The current media come in ranges of models (copied a range at a time, while the
listing is read) and a current row goes to the batch of the model it is filed under: a
key that the database files under another model than the one its key names is then
deleted in one batch and created in another, and made one update again at the end.
"""

from __future__ import annotations

import bisect
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

import polars as pl

from .desired import MEDIA_FIELDS, MODEL_FIELDS, ModelRow, PostRow
from .diff import KINDS, Change, ChangeList, Lines, EncodedChange, _compare, media_changes, post_changes
from .frames import MEDIA_SCHEMA, Listing, desired_of
from .planfile import canonical
from .spill import Parts, Spill, by_model

from .config import BATCH_ROWS  # items (or current media rows) per batch, unless one model has more

LINES_SCHEMA = {"key": pl.String, "line": pl.String}
MEDIA_LINES_SCHEMA = {"key": pl.String, "line": pl.String, "etag": pl.String, "size_bytes": pl.Int64}


# The current posts as the engine compares them: media_cdns as ``jsonb::text``.
POSTS_TEXT_SCHEMA = {"key": pl.String, "title": pl.String, "media_cdns": pl.String}


@dataclass
class Current:
    """The current state in scope, as the engine reads it.

    ``models`` are the model rows. ``ranges`` hold the posts and media rows in ranges of
    models: ``[(lo, rows), …]``, the first ``lo`` being ``""``, each range holding the
    rows of the models whose key order (``name + "/"``) is from its ``lo`` to the next
    one's; ``rows.posts()`` (``POSTS_TEXT_SCHEMA``) and ``rows.media()``
    (``MEDIA_SCHEMA``) give them as stored, and ``rows.discard()`` is called once they
    are read. ``media_counts`` are the media rows per model (to size batches;
    need not be exact).
    """

    models: list[tuple[str, ModelRow]]
    ranges: list[tuple[str, object]]
    media_counts: dict[str, int] = field(default_factory=dict)


@dataclass
class Rows:
    """A range of current rows held in memory."""

    post_frame: pl.DataFrame
    media_frame: pl.DataFrame

    @classmethod
    def of(cls, posts: Iterable[tuple[str, PostRow]], media: Iterable[tuple[str, tuple]]) -> "Rows":
        """From rows as :class:`reconciler.current.CurrentState` holds them."""
        post_rows = [(k, r[0], None if r[1] is None else json.dumps(r[1], ensure_ascii=False)) for k, r in posts]
        return cls(
            pl.DataFrame(post_rows, orient="row", schema=POSTS_TEXT_SCHEMA),
            pl.DataFrame([(k, *r) for k, r in media], orient="row", schema=MEDIA_SCHEMA),
        )

    def posts(self) -> pl.DataFrame:
        return self.post_frame

    def media(self) -> pl.DataFrame:
        return self.media_frame


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


def plan_changes(
    listing: Listing,
    current: Current,
    *,
    cdn_base_url: str,
    moves: bool = True,
    batch_rows: int = BATCH_ROWS,
    spill: Spill | None = None,
) -> Result:
    """The changes that make ``current`` what ``listing`` says, in plan order (the
    listing was classified below its root already)."""
    counts = dict(listing.counts)
    for name, n in current.media_counts.items():
        counts[name] = max(counts.get(name, 0), n)
    for name, _ in current.models:
        counts.setdefault(name, 0)
    ranges = [lo for lo, _ in current.ranges]
    bounds = sorted(set(batch_bounds(counts, batch_rows)) | set(ranges[1:]))
    n = len(bounds) + 1

    def batch_of(name: str) -> int:
        return bisect.bisect_right(bounds, _order(name))

    if n == 1:
        desired_parts = [listing.items]
    else:
        mapping = {name: batch_of(name) for name in counts}
        by_model = pl.col("model").replace_strict(mapping, default=0, return_dtype=pl.Int32)
        desired_parts = listing.items.split(by_model, n)
        listing.items.discard()
    current_of = _ByBatch(current, bounds, batch_of)

    want_models: dict[str, ModelRow] = {}
    post_creates = Parts(LINES_SCHEMA, spill)
    post_updates = Parts(LINES_SCHEMA, spill)
    media_creates = Parts(MEDIA_LINES_SCHEMA, spill)
    others: list[Change] = []  # post and media updates and deletes
    post_rows = media_rows = 0
    for b in range(n):
        desired = desired_of(desired_parts[b].frame(), cdn_base_url)
        desired_parts[b].discard()
        want_models.update(desired.models)
        have_posts, have_media = current_of(b)
        post_rows += have_posts.height
        creates, rest = post_changes(desired.post_frame, have_posts)
        post_creates.add(creates)
        # A post's update carries both URL lists whole: a 1 % delta of 10M objects
        # updates 100k posts, ten million strings as objects. They wait as lines too.
        updates = sorted((c.key, canonical(c.to_dict())) for c in rest if c.action == "update")
        post_updates.add(pl.DataFrame(updates, orient="row", schema=LINES_SCHEMA))
        others += [c for c in rest if c.action != "update"]
        del have_posts, creates, rest, updates
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
    changes = _same_key(changes, media_creates, moved["media"])
    if moves:
        changes = _find_moves(changes, post_creates, media_creates, moved)
    changes.sort(key=lambda c: c.sort_key)
    by_kind: dict[str, list[Change]] = {k: [] for k in KINDS}
    for c in changes:
        by_kind[c.kind].append(c)
    segments = [
        by_kind["model"],
        Lines("post", post_creates, moved["post"]),
        Lines("post", post_updates, action="update"),
        by_kind["post"],
        Lines("media", media_creates, moved["media"]),
        by_kind["media"],
    ]
    counts_now = {"model": len(current.models), "post": post_rows, "media": media_rows}
    return Result(ChangeList(segments, spill=spill), counts_now, n)


class _ByBatch:
    """The current posts and media of batch ``b``, batches asked for in order: each
    range of ``current.ranges`` is read once, and split among the batches within it by
    the model each row is filed under."""

    def __init__(self, current: Current, bounds: list[str], batch_of: Callable[[str], int]) -> None:
        self.current, self.bounds, self.batch_of = current, bounds, batch_of
        self.ranges = [lo for lo, _ in current.ranges]
        self.read = -1
        self.held: dict[int, tuple[pl.DataFrame, pl.DataFrame]] = {}

    def __call__(self, b: int) -> tuple[pl.DataFrame, pl.DataFrame]:
        i = bisect.bisect_right(self.ranges, self.bounds[b - 1] if b else "") - 1
        if i != self.read:
            self.read = i
            rows = self.current.ranges[i][1]
            posts = by_model(rows.posts(), "key", self.batch_of)
            media = by_model(rows.media(), "post", self.batch_of)
            if hasattr(rows, "discard"):
                rows.discard()
            self.held = {k: (posts.get(k), media.get(k)) for k in posts.keys() | media.keys()}
        posts, media = self.held.pop(b, (None, None))
        return (
            posts if posts is not None else pl.DataFrame(schema=POSTS_TEXT_SCHEMA),
            media if media is not None else pl.DataFrame(schema=MEDIA_SCHEMA),
        )


def _same_key(changes: list[Change], media_creates: Parts, skip: set[str]) -> list[Change]:
    """A key deleted in one batch and created in another — a row the database files
    under another model than the one its key names — is one update, as it is when both
    meet in one batch. Adds the keys of those creates to ``skip``."""
    deleted = {c.key: c for c in changes if c.kind == "media" and c.action == "delete"}
    if not deleted:
        return changes
    found = media_creates.lazy().filter(pl.col("key").is_in(sorted(deleted))).select("key", "line").collect()
    if not found.height:
        return changes
    updates: dict[str, Change] = {}
    for key, line in found.iter_rows():
        want, have = json.loads(line)["after"], deleted[key].before
        before, after = {}, {}
        for name in MEDIA_FIELDS:
            w, h = want[name], have[name]
            if w != h or type(w) is not type(h):
                before[name], after[name] = h, w
        updates[key] = Change("update", "media", key, before, after)
        skip.add(key)
    return [updates.get(c.key, c) if c.kind == "media" and c.action == "delete" else c for c in changes]


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
    if moved["media"]:  # creates already taken (made updates by _same_key)
        found = found.filter(~pl.col("key").is_in(sorted(moved["media"])))
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
    from .frames import classify_listing

    listing = classify_listing(objects, root=root, layout=layout, models=models)
    media = list(current.media)
    counts = Counter(row[0].partition("/")[0] for _, row in media)  # rows per model, as the database's kept counts
    state = Current(models=list(current.models), ranges=[("", Rows.of(current.posts, media))], media_counts=counts)
    return plan_changes(listing, state, cdn_base_url=cdn_base_url, moves=moves, batch_rows=batch_rows)
