"""The layout rules as column expressions: a listing becomes the desired media as one
Polars frame, and the few posts and models as rows. Pure: no I/O, no database.

Each rule is one expression over the whole listing, not a Python object and a few
dict operations per key: only posts (tens of thousands) and models (hundreds) become
Python rows. The rules themselves are :func:`reconciler.layout.classify`, run once per
distinct (folder, extension type), so they stay readable as one module. The listing
may come in any order: every "first by key order" rule is a minimum over keys, so a
parallel listing gives the same rows as a sequential one.

Keys that are not valid UTF-8 (a folder source's undecodable file names) cannot enter
a frame: they are classified one by one, as before, and are always skipped.
"""

from __future__ import annotations

import itertools
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

import polars as pl

from . import layout as L
from .desired import PLAIN_KEY, SKIPPED_EXAMPLES, DesiredState, MediaRow, ModelRow, PostRow, media_url, quote_key, url_base
from .shards import Shard

if TYPE_CHECKING:
    from .spill import Parts, Spill

INVALID_UTF8 = "invalid_utf8_key"
INVALID_KEY = "invalid_key"

# Item kinds, as small integers in the frame.
SKIP, MODEL_IMAGE, ICON, BANNER, MEDIA = 0, 1, 2, 3, 4

MEDIA_SCHEMA = {"s3_key": pl.String, "post": pl.String, "url": pl.String, "type": pl.String,
                "size_bytes": pl.Int64, "etag": pl.String}
# Desired posts: media_cdns as its two lists of URLs.
POSTS_SCHEMA = {"key": pl.String, "title": pl.String, "images": pl.List(pl.String), "videos": pl.List(pl.String)}


@dataclass
class DesiredFrames:
    """The desired state with its media as a frame (columns as the database's)."""

    models: dict[str, ModelRow] = field(default_factory=dict)
    post_frame: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=POSTS_SCHEMA))
    media: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=MEDIA_SCHEMA))
    object_count: int = 0
    skipped: Counter = field(default_factory=Counter)
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def posts(self) -> dict[str, PostRow]:
        """The posts as rows (Python lists of URLs: for tests and small scopes)."""
        return {
            key: PostRow(title=title, media_cdns={"images": images, "videos": videos})
            for key, title, images, videos in self.post_frame.iter_rows()
        }

    def to_state(self) -> DesiredState:
        """The plain form: dicts of rows keyed by natural key (for reading, and for tests)."""
        rows = self.media.iter_rows()
        return DesiredState(
            models=dict(self.models),
            posts=dict(self.posts),
            media={k: MediaRow(p, u, t, s, e) for k, p, u, t, s, e in rows},
            object_count=self.object_count,
            skipped=Counter(self.skipped),
            skipped_examples={k: list(v) for k, v in self.skipped_examples.items()},
        )


def _columns(objects: list[L.ObjectInfo]) -> tuple[list, list, list, list[tuple[int, str]]]:
    """Keys, sizes and etags as lists; keys that are not valid UTF-8 set apart, with
    their place in the listing."""
    if not objects:
        return [], [], [], []
    keys, sizes, etags, _ = map(list, zip(*objects))  # ObjectInfo is a tuple: transposed in C
    try:
        "\n".join(keys).encode("utf-8")
        return keys, sizes, etags, []
    except UnicodeEncodeError:
        pass
    keys, sizes, etags = [], [], []
    bad: list[tuple[int, str]] = []
    for o in objects:
        key = o.key
        if not key.isascii():
            try:
                key.encode("utf-8")
            except UnicodeEncodeError:
                bad.append((len(keys) + len(bad), key))
                continue
        keys.append(key)
        sizes.append(o.size)
        etags.append(o.etag)
    return keys, sizes, etags, bad


def classify_frame(frame: pl.DataFrame, layout: L.Layout, meanings: dict | None = None) -> pl.DataFrame:
    """The layout rules (:func:`reconciler.layout.classify`) over a ``rel`` column of
    keys below the root: adds ``kind`` (SKIP, MODEL_IMAGE, ICON, BANNER, MEDIA),
    ``reason``, ``model``, ``post_folder`` and ``type``.

    What a key means depends only on its folder and its extension — except in a
    model's profile folder, where the file's stem matters, and for keys without a
    folder — so each distinct (folder, extension) is classified once, by the same
    ``classify`` the rules are written in, and joined back: a million keys in twenty
    thousand folders cost twenty thousand classifications.
    """
    rel = pl.col("rel")
    # Folder and extension once each (an expression used twice is computed twice).
    frame = frame.with_columns(
        pl.when(rel.str.contains("/", literal=True)).then(rel.str.replace(r"/[^/]*$", "")).alias("_folder"),
        rel.str.extract(r"\.([^./]*)$", 1).str.to_lowercase().alias("_ext"),
    )
    folder, ext = pl.col("_folder"), pl.col("_ext")
    # Only the extension's type matters: image, video, or neither.
    ext_type = (
        pl.when(ext.is_in(sorted(layout._images))).then(pl.lit("i"))
        .when(ext.is_in(sorted(layout._videos))).then(pl.lit("v"))
        .otherwise(pl.lit("n"))
    )
    in_profile = rel.str.contains("^[^/]*/" + _literal(layout.profile_folder) + "(?:/|$)")
    by_key = folder.is_null() | rel.str.ends_with("/") | in_profile
    ident = pl.when(by_key).then(pl.lit("k\x00") + rel).otherwise(pl.lit("f\x00") + folder + pl.lit("\x00") + ext_type)
    frame = frame.with_columns(ident.alias("ident")).drop("_folder", "_ext")
    kinds = {L.ModelImage: MODEL_IMAGE, L.Icon: ICON, L.Banner: BANNER, L.Media: MEDIA}
    meanings = {} if meanings is None else meanings
    rows = []
    for ident_value, example in frame.group_by("ident").agg(pl.col("rel").first()).iter_rows():
        row = meanings.get(ident_value)
        if row is None:
            item = L.classify(example, layout)
            if type(item) is L.Skip:
                row = (ident_value, SKIP, item.reason, None, None, None)
            else:
                post, kind = (item.post, item.type) if type(item) is L.Media else (None, None)
                row = (ident_value, kinds[type(item)], None, item.model, post, kind)
            if ident_value.startswith("f"):  # keyed by folder: the same for every chunk
                meanings[ident_value] = row
        rows.append(row)
    meaning = pl.DataFrame(
        rows, orient="row",
        schema={"ident": pl.String, "kind": pl.Int8, "reason": pl.String, "model": pl.String,
                "post_folder": pl.String, "type": pl.String},
    )
    return frame.join(meaning, on="ident", how="left", maintain_order="left").drop("ident")


def _literal(text: str) -> str:
    """``text`` as a Polars (Rust) regex that matches it literally: every character by
    its code point, so no character is special."""
    return "".join(f"\\x{{{ord(c):X}}}" for c in text)


CHUNK = 50_000  # objects classified at a time, while the next are read: memory follows the chunk


def _chunks(objects: Iterable[L.ObjectInfo]):
    it = iter(objects)
    while batch := list(itertools.islice(it, CHUNK)):
        yield batch


@dataclass
class Listing:
    """A listing, classified: the recognised items (``ITEMS_SCHEMA``) in parts — in
    memory or spilled — with their count per model, and the skipped objects counted."""

    items: "Parts"
    counts: dict[str, int] = field(default_factory=dict)  # recognised items per model
    object_count: int = 0
    skipped: Counter = field(default_factory=Counter)
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)


def classify_listing(
    objects: Iterable[L.ObjectInfo],
    *,
    root: str = "",
    layout: L.Layout | None = None,
    models: Iterable[str] | None = None,
    spill: "Spill | None" = None,
) -> Listing:
    """Classify a listing a chunk at a time; the items go to ``spill`` once they
    outgrow it. Reads nothing but ``objects``."""
    from .spill import Parts

    layout = layout or L.Layout()
    scope = models if models is None or isinstance(models, Shard) else frozenset(models)
    listing = Listing(Parts(ITEMS_SCHEMA, spill))
    examples: dict[str, list[tuple[int, str]]] = {}
    meanings: dict[str, tuple] = {}  # (folder, extension type) → what it means, across chunks

    def take(chunk: list[L.ObjectInfo], place: int) -> None:
        items = _classify_chunk(chunk, place, root, scope, layout, meanings, listing, examples)
        if items.height:
            for model, n in items.group_by("model").len().iter_rows():
                listing.counts[model] = listing.counts.get(model, 0) + n
            listing.items.add(items)

    # A chunk is classified (mostly Polars, which lets go of the interpreter) while the
    # next one is read from the source (mostly Python): two cores at work, not one.
    # One chunk at a time in the worker, so nothing else touches what it fills.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="classify") as pool:
        pending = None
        place = 0
        for chunk in _chunks(objects):
            if pending is not None:
                pending.result()
            pending = pool.submit(take, chunk, place)
            place += len(chunk)
        if pending is not None:
            pending.result()
    listing.skipped_examples = {
        r: [k for _, k in sorted(found)[:SKIPPED_EXAMPLES]] for r, found in examples.items()
    }
    return listing


def build_desired_frames(
    objects: Iterable[L.ObjectInfo],
    *,
    cdn_base_url: str,
    root: str = "",
    layout: L.Layout | None = None,
    models: Iterable[str] | None = None,
) -> DesiredFrames:
    """Derive the whole desired state from a listing, in memory, the media as a frame."""
    listing = classify_listing(objects, root=root, layout=layout, models=models)
    state = desired_of(listing.items.frame(), cdn_base_url)
    state.object_count = listing.object_count
    state.skipped = listing.skipped
    state.skipped_examples = listing.skipped_examples
    return state


def desired_of(items: pl.DataFrame, cdn_base_url: str) -> DesiredFrames:
    """The desired rows of classified items (``ITEMS_SCHEMA``): whole models, as a
    batch holds them."""
    state = DesiredFrames()

    # Models: "the first such key (sorted) wins"; the thumbnail falls back to the first
    # post image; post_count counts the posts.
    def first_key(kind_code: int, name: str, extra: pl.Expr = pl.lit(True)) -> pl.Expr:
        return pl.col("key").filter((pl.col("kind") == kind_code) & extra).min().alias(name)

    per_model = items.group_by("model").agg(
        first_key(MODEL_IMAGE, "image"),
        first_key(MEDIA, "post_image", pl.col("type") == "image"),
        first_key(ICON, "icon"),
        first_key(BANNER, "banner"),
        pl.col("post_folder").filter(pl.col("kind") == MEDIA).n_unique().alias("post_count"),
    )

    def url(key: str | None) -> str | None:
        return None if key is None else media_url(cdn_base_url, key)

    for name, image, post_image, icon, banner, post_count in sorted(per_model.iter_rows()):
        state.models[name] = ModelRow(
            thumbnail_url=url(image if image is not None else post_image),
            icon_url=url(icon),
            banner_url=url(banner),
            post_count=post_count,
        )

    media = items.filter(pl.col("kind") == MEDIA)
    state.media = media.select(
        pl.col("key").alias("s3_key"),
        (pl.col("model") + "/" + pl.col("post_folder")).alias("post"),
        _urls(media["key"], url_base(cdn_base_url)),
        "type", "size_bytes", "etag",
    )
    del media
    # Posts: title is the folder's name; media_cdns the URLs by key, images and videos.
    image, video = pl.col("type") == "image", pl.col("type") == "video"
    state.post_frame = state.media.group_by("post").agg(
        pl.col("url").filter(image).sort_by(pl.col("s3_key").filter(image)).alias("images"),
        pl.col("url").filter(video).sort_by(pl.col("s3_key").filter(video)).alias("videos"),
    ).select(
        pl.col("post").alias("key"), pl.col("post").str.splitn("/", 2).struct.field("field_1").alias("title"), "images", "videos",
    ).sort("key")
    return state


ITEMS_SCHEMA = {
    "key": pl.String, "size_bytes": pl.Int64, "etag": pl.String, "kind": pl.Int8, "model": pl.String,
    "post_folder": pl.String, "type": pl.String,
}


def _classify_chunk(chunk, place, root, scope, layout, meanings, state, examples) -> pl.DataFrame:
    """One chunk of the listing: skips counted (with examples by their place in the
    listing), the recognised items returned as (key, size_bytes, etag, kind, model,
    post_folder, type)."""
    keys, sizes, etags, bad = _columns(chunk)
    frame = pl.DataFrame(
        {"key": keys, "size_bytes": sizes, "etag": etags},
        schema={"key": pl.String, "size_bytes": pl.Int64, "etag": pl.String},
    ).with_row_index("i", offset=place)
    del keys, sizes, etags
    bad = [(place + p, k) for p, k in bad]
    if bad:  # "i" is the place in the listing, for the order of skipped examples
        taken = {p for p, _ in bad}
        places = [i for i in range(place, place + frame.height + len(bad)) if i not in taken]
        frame = frame.with_columns(pl.Series("i", places, dtype=pl.UInt32))
    inside = pl.col("key").str.starts_with(root) if root else pl.lit(True)
    frame = frame.with_columns(inside.alias("inside"), pl.col("key").str.slice(len(root)).alias("rel"))
    if scope is not None:
        # Objects of other models are not in the plan at all (not counted either).
        first = pl.col("rel").str.split("/").list.get(0)
        names = frame.filter(pl.col("inside")).select(first.unique()).to_series().to_list()
        frame = frame.filter(~pl.col("inside") | first.is_in([n for n in names if n in scope]))
    frame = classify_frame(frame, layout, meanings).with_columns(
        pl.when(pl.col("inside")).then(pl.col("kind")).otherwise(pl.lit(SKIP, pl.Int8)).alias("kind"),
        pl.when(pl.col("inside")).then(pl.col("reason")).otherwise(pl.lit(L.OUTSIDE_ROOT)).alias("reason"),
    )
    # "PostgreSQL text cannot hold NUL": a recognised key with one is skipped.
    nul = (pl.col("kind") != SKIP) & pl.col("key").str.contains("\x00", literal=True)
    frame = frame.with_columns(
        pl.when(nul).then(pl.lit(SKIP, pl.Int8)).otherwise(pl.col("kind")).alias("kind"),
        pl.when(nul).then(pl.lit(INVALID_KEY)).otherwise(pl.col("reason")).alias("reason"),
    )
    state.object_count += frame.height + len(bad)

    skipped = frame.filter(pl.col("kind") == SKIP).select("i", "key", "reason")
    for reason_name, count in skipped.group_by("reason").len().iter_rows():
        state.skipped[reason_name] += count
    firsts = skipped.group_by("reason").agg(pl.col("i").head(SKIPPED_EXAMPLES), pl.col("key").head(SKIPPED_EXAMPLES))
    for reason_name, idx, ks in firsts.iter_rows():
        shown = [k.replace("\x00", "\\0") if reason_name == INVALID_KEY else k for k in ks]
        found = examples.setdefault(reason_name, [])
        if len(found) < SKIPPED_EXAMPLES:
            found.extend(zip(idx, shown))
    _skip_undecodable(bad, root, scope, layout, state, examples)
    return frame.filter(pl.col("kind") != SKIP).select(list(ITEMS_SCHEMA))


def _urls(keys: pl.Series, base: str) -> pl.Series:
    """``base + quote_key(key)`` for a column of keys, exactly: every character that
    :func:`~reconciler.desired.quote_key` escapes (found among the keys) is replaced by
    its escape in one pass."""
    odd = keys.filter(~keys.str.contains(f"^{PLAIN_KEY}$"))
    if odd.is_empty():
        return (base + keys).alias("url")
    escapes = {c: e for c in sorted(set("".join(odd.to_list()))) if (e := quote_key(c)) != c}
    return (base + keys.str.replace_many(list(escapes), list(escapes.values()))).alias("url")


def _skip_undecodable(bad, root, scope, layout, state, examples) -> None:
    """Keys that are not valid UTF-8: counted as their layout rule says, else as
    ``invalid_utf8_key``; examples keep the listing's order."""
    for place, key in bad:
        if not key.startswith(root):
            reason = L.OUTSIDE_ROOT
        else:
            rel = key[len(root):]
            if scope is not None and rel.partition("/")[0] not in scope:
                state.object_count -= 1
                continue
            item = L.classify(rel, layout)
            reason = item.reason if type(item) is L.Skip else INVALID_UTF8
        state.skipped[reason] += 1
        examples.setdefault(reason, []).append((place, key.encode("utf-8", "replace").decode("utf-8")))
