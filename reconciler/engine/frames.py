"""A catalogue's rules over a whole listing, as column expressions, and the desired rows
they make. Pure: no I/O, no database.

Classification (:class:`Classifier`) reads a chunk of the listing at a time. A key is
split into its folders (``M/P/``) and its file name; each rule's folder pattern is
matched once per distinct folder — a million keys live in tens of thousands of folders
— by the same regular expressions :func:`reconciler.catalogue.read_key` uses, and its
file-name pattern is tested by column expressions (an extension in a class, a stem among
words). The first rule that takes a key wins, as the spec reads; the property tests hold
this path to ``read_key`` key by key.

The desired rows (:func:`desired_of`) of each owned entity are then a few group-bys over
the classified objects, from the bottom up: a row is made by its objects (a media item
by its object; a post by its media's), its templates read from its first object by key,
its aggregates (``count``, ``first``, ``list``, ``object``) over its facets and the rows
below it. Every "first by key order" is a minimum over keys, so the listing may come in
any order, and in chunks.

Keys that are not valid UTF-8 (a folder source's undecodable file names) cannot enter a
frame: they are read one by one and always skipped.
"""

from __future__ import annotations

import itertools
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

import polars as pl

from ..catalogue import Catalogue, Entity, read_key
from ..catalogue.descriptor import Source, Template, Value
from ..catalogue.keys import PLAIN_KEY, quote_key, require_scope_segment, scope_segment, url_base
from ..objects import ObjectInfo
from .shards import Shard

if TYPE_CHECKING:
    from .spill import Parts, Spill

SKIPPED_EXAMPLES = 5
INVALID_UTF8 = "invalid_utf8_key"
INVALID_KEY = "invalid_key"
OUTSIDE_ROOT = "outside_root"
FOLDER_MARKER = "folder_marker"
EMPTY_SEGMENT = "empty_segment"
UNMATCHED = "unmatched"
UNKNOWN_PARENT = "unknown_parent"

_MARKER, _UNMATCHED = -2, -1  # rule numbers of keys no rule reads


def capture(name: str) -> str:
    """The column of a capture in the classified items."""
    return "c." + name


def plan_key(entity: str) -> str:
    """The column of an entity's plan key in the classified items and in rows."""
    return "k." + entity


# --------------------------------------------------------------------------- classifying


def _literal(text: str) -> str:
    """``text`` as a Polars (Rust) regex that matches it literally."""
    return "".join(f"\\x{{{ord(c):X}}}" for c in text)


def _ext(value: pl.Expr) -> pl.Expr:
    """The text after the value's last dot, lowercased (null without a dot)."""
    return value.str.extract(r"\.([^.]*)$", 1).str.to_lowercase()


class Classifier:
    """The rules of a catalogue over chunks of a listing below ``root``, limited to a
    ``scope`` of top-entity names (a set, or a :class:`~reconciler.shards.Shard`).

    What a key means depends only on its folders and its extension — unless a rule
    that could take it reads the file name itself (a stem among words, a literal
    name): so each distinct (folder, extension) is read once, by :func:`read_key` (the
    reference), and joined back to its keys; keys in folders where a file name matters
    are read one by one. A million keys in twenty thousand folders cost some forty
    thousand readings; the file-name captures (``{file}``) come from the key itself."""

    def __init__(self, catalogue: Catalogue, root: str = "", scope=None) -> None:
        self.catalogue, self.root = catalogue, root
        self.scope = scope if scope is None or isinstance(scope, Shard) else frozenset(scope)
        # The top's folder also names the top key that a skipped object is tallied under.
        self.segment = require_scope_segment(catalogue) if self.scope is not None else scope_segment(catalogue)
        self.rules = catalogue.rules
        # Captures the desired rows read (those of rules that make rows or facets).
        self.kept = sorted({n for r in self.rules if r.action != "skip" for n in r.pattern.names})
        # A folder's reading (per distinct folder and extension), across chunks; a
        # folder's kind: where file names matter ("k") or not ("d").
        self.meanings: dict[tuple, tuple] = {}
        self.dirs: dict[str, bool] = {}
        self.needs_place = any(not e.owned for e in catalogue.entities)
        self.top_key = top_key_expr(catalogue)
        self.schema = {"_d": pl.String, "_s": pl.UInt8, "rule": pl.Int16, "reason": pl.String, "_fcap": pl.String,
                       **{capture(n): pl.String for n in self.kept}}

    def _by_name(self, d: str) -> bool:
        """Whether keys in folder ``d`` (with its trailing "/") are read one by one: a
        rule that may take one of them tests more of the file name than its extension."""
        for r in self.rules:
            m = r.pattern.dir_regex.match(d)
            if m is None:
                continue
            fm = r.pattern.file
            if fm.how == "any":
                return False  # this rule takes every key its folders' constraints allow
            if fm.how != "whole" or fm.placeholders[0].words:
                return True
        return False

    def _reading(self, d: str, bits: int, rel: str) -> tuple:
        reading = read_key(self.catalogue, rel)
        rule = reading.rule.index if reading.rule is not None else (_MARKER if reading.reason == FOLDER_MARKER
                                                                     else _UNMATCHED)
        fcap = None
        captures = dict(reading.captures)
        if bits != 255 and reading.rule is not None:
            # Keys of this folder and extension differ only in their file name: a
            # capture of the whole file name is each key's own.
            holders = reading.rule.pattern.file.placeholders
            if reading.rule.pattern.file.how in ("any", "whole") and holders:
                fcap = holders[0].name
                captures.pop(fcap, None)
        return (d, bits, rule, reading.reason, fcap, *[captures.get(n) for n in self.kept])

    def readings(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The reading of each distinct (``_d``, ``_s``) of ``frame``: a folder and the
        extension's class bits, or a key read on its own (``_s`` 255)."""
        rows = []
        for d, bits, rel in frame.group_by("_d", "_s").agg(pl.col("rel").first()).iter_rows():
            row = self.meanings.get((d, bits))
            if row is None:
                row = self._reading(d, bits, rel)
                if bits != 255:  # a folder and extension: the same for every chunk
                    self.meanings[(d, bits)] = row
            rows.append(row)
        return pl.DataFrame(rows, orient="row", schema=self.schema)

    def classify(self, frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, int]:
        """A chunk (``key``, ``size_bytes``, ``etag``, ``last_modified``, ``i`` its
        place in the listing) → the recognised items, the skipped (``i``, ``key``,
        ``reason``, ``top``: the top entity's folder it is in, if any), and how many
        objects of the chunk are in scope."""
        root = self.root
        inside = pl.col("key").str.starts_with(root) if root else pl.lit(True)
        frame = frame.with_columns(inside.alias("_inside"), pl.col("key").str.slice(len(root)).alias("rel"))
        if self.scope is not None:
            # Objects of names out of scope are not in the plan at all (not counted either).
            seg = self.segment
            part = pl.col("rel").str.split("/").list.get(seg.index, null_on_oob=True)
            if seg.prefix:
                part = pl.when(pl.col("rel").str.starts_with("".join(s + "/" for s in seg.prefix))).then(part)
            names = frame.filter(pl.col("_inside")).select(part.unique()).to_series().drop_nulls().to_list()
            frame = frame.filter(~pl.col("_inside") | part.is_in([n for n in names if n in self.scope]))
        rel = pl.col("rel")
        # Folders and the file name once each (an expression used twice is computed twice).
        frame = frame.with_columns(
            pl.when(rel.str.contains("/", literal=True)).then(rel.str.replace(r"[^/]*$", "")).otherwise(pl.lit(""))
            .alias("_dir"),
            rel.str.extract(r"([^/]*)$", 1).alias("_file"),
        )
        dirs = frame.select(pl.col("_dir").unique()).to_series().to_list()
        by_name = []
        for d in dirs:
            hit = self.dirs.get(d)
            if hit is None:
                hit = self.dirs[d] = self._by_name(d)
            if hit:
                by_name.append(d)
        # Only which classes the extension is in matters (image, video, neither): a bit each.
        ext = pl.col("_file").str.extract(r"\.([^.]*)$", 1).str.to_lowercase()
        bits = pl.lit(0, pl.UInt8)
        for i, exts in enumerate(self.catalogue.classes.values()):
            bits = bits + ext.is_in(sorted(exts)).fill_null(False).cast(pl.UInt8) * (1 << i)
        one_by_one = ((rel == "") | rel.str.ends_with("/")) | pl.col("_dir").is_in(by_name)
        frame = frame.with_columns(
            pl.when(one_by_one).then(pl.lit("k\x00") + rel).otherwise(pl.col("_dir")).alias("_d"),
            pl.when(one_by_one).then(pl.lit(255, pl.UInt8)).otherwise(bits).alias("_s"),
        )
        frame = frame.join(self.readings(frame.select("_d", "_s", "rel")), on=["_d", "_s"], how="left",
                           maintain_order="left")
        file_capture = pl.col("_fcap")
        captures = [pl.when(file_capture == n).then(pl.col("_file")).otherwise(pl.col(capture(n))).alias(capture(n))
                    for n in self.kept]
        reason = pl.when(~pl.col("_inside")).then(pl.lit(OUTSIDE_ROOT)).otherwise(pl.col("reason"))
        # PostgreSQL text cannot hold NUL: a recognised key with one is skipped.
        reason = pl.when(reason.is_null() & pl.col("key").str.contains("\x00", literal=True)).then(
            pl.lit(INVALID_KEY)).otherwise(reason)
        frame = frame.with_columns(*captures, reason.alias("reason"))
        skipped = frame.filter(pl.col("reason").is_not_null())
        top = self.segment.folder_expr(rel) if self.segment is not None else pl.lit(None, pl.String)
        skipped = skipped.select("i", "key", "reason", pl.when(pl.col("_inside")).then(top).alias("top"))
        items = frame.filter(pl.col("reason").is_null())
        items = items.with_columns(self.top_key.alias(plan_key(self.catalogue.top.name)))
        return items.select(item_columns(self.catalogue, self.needs_place)), skipped, frame.height

    def top_of(self, key: str) -> str | None:
        """The top entity's folder a key is in (None: in none, or no such folder)."""
        if self.segment is None or not key.startswith(self.root):
            return None
        return self.segment.folder_of(key[len(self.root):])

    def read_undecodable(self, key: str) -> str | None:
        """The skip reason of a key that is not valid UTF-8 (None: out of scope)."""
        if not key.startswith(self.root):
            return OUTSIDE_ROOT
        rel = key[len(self.root):]
        if self.scope is not None:
            part = self.segment.of(rel)
            if part is None or part not in self.scope:
                return None
        reading = read_key(self.catalogue, rel)
        return reading.reason or INVALID_UTF8


def item_columns(catalogue: Catalogue, place: bool = False) -> list[str]:
    cols = ["key", "size_bytes", "etag", "last_modified", "rule"]
    cols += [capture(n) for n in sorted({n for r in catalogue.rules if r.action != "skip" for n in r.pattern.names})]
    cols.append(plan_key(catalogue.top.name))
    if place:
        cols.append("i")
    return cols


def items_schema(catalogue: Catalogue, place: bool = False) -> dict:
    types = {"key": pl.String, "size_bytes": pl.Int64, "etag": pl.String, "last_modified": pl.String,
             "rule": pl.Int16, "i": pl.UInt32}
    return {c: types.get(c, pl.String) for c in item_columns(catalogue, place)}


# --------------------------------------------------------------------------- templates as columns


def top_key_expr(catalogue: Catalogue) -> pl.Expr:
    return key_expr(catalogue, catalogue.top.name)


def key_expr(catalogue: Catalogue, entity: str) -> pl.Expr:
    """An entity's plan key over classified items (captures as columns)."""
    e = catalogue.entity(entity)
    own = [render(t) for _, t in e.key]
    parts = own if len(own) == 1 else [pl.concat_str(own, separator="/")]
    if e.unique == "parent" and e.parent:
        return pl.concat_str([key_expr(catalogue, e.parent), parts[0]], separator="/")
    return parts[0]


def attribute(name: str) -> pl.Expr:
    return {
        "key": pl.col("key"), "rel": pl.col("rel"), "url": pl.col("_url"), "size": pl.col("size_bytes"),
        "etag": pl.col("etag"), "last_modified": pl.col("last_modified"), "class": pl.col("_class"),
    }[name]


def render(t: Template) -> pl.Expr:
    from ..catalogue.patterns import ATTRIBUTES

    def one(name: str) -> pl.Expr:
        return attribute(name) if name in ATTRIBUTES else pl.col(capture(name))

    if t.single is not None:
        return one(t.single)
    return pl.concat_str([pl.lit(p) if isinstance(p, str) else one(p[0]).cast(pl.String) for p in t.parts])


def _uses(catalogue: Catalogue, attr: str) -> bool:
    names = set()
    for e in catalogue.entities:
        for _, t in e.key:
            names.update(t.names)
        for c in e.columns:
            if c.value.template is not None:
                names.update(c.value.template.names)
            for s in c.value.sources():
                names.update(s.value.names)
    return attr in names


def urls(keys: pl.Series, base: str) -> pl.Series:
    """``base + quote_key(key)`` for a column of keys, exactly: every character that
    :func:`~reconciler.catalogue.keys.quote_key` escapes (found among the keys) is
    replaced by its escape in one pass."""
    odd = keys.filter(~keys.str.contains(f"^{PLAIN_KEY}$"))
    if odd.is_empty():
        return (base + keys).alias("_url")
    escapes = {c: e for c in sorted(set("".join(odd.to_list()))) if (e := quote_key(c)) != c}
    return (base + keys.str.replace_many(list(escapes), list(escapes.values()))).alias("_url")


def class_expr(catalogue: Catalogue) -> pl.Expr:
    """The first declared class holding the key's extension (after its last dot, in
    its file name), or null."""
    ext = pl.col("key").str.extract(r"\.([^./]*)$", 1).str.to_lowercase()
    out = pl.lit(None, pl.String)
    for name, exts in reversed(list(catalogue.classes.items())):
        out = pl.when(ext.is_in(sorted(exts))).then(pl.lit(name)).otherwise(out)
    return out


# --------------------------------------------------------------------------- the listing


CHUNK = 50_000  # objects classified at a time, while the next are read: memory follows the chunk


def _chunks(objects: Iterable[ObjectInfo]):
    it = iter(objects)
    while batch := list(itertools.islice(it, CHUNK)):
        yield batch


@dataclass
class Listing:
    """A listing, classified: the recognised items in parts — in memory or spilled —
    with their count per top-entity key, and the skipped objects counted (per top key
    too, when the top entity is one folder of every key: see :meth:`tallies`)."""

    items: "Parts"
    counts: dict[str, int] = field(default_factory=dict)  # recognised items per top key
    object_count: int = 0
    skipped: Counter = field(default_factory=Counter)
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)
    examples: dict[str, list[tuple[int, str]]] = field(default_factory=dict, repr=False)  # with places
    skipped_by_top: dict[str, Counter] = field(default_factory=dict, repr=False)
    top_of: Callable[[str], str | None] = field(default=lambda key: None, repr=False)

    def skip(self, reason: str, found: list[tuple[int, str]]) -> None:
        """Objects skipped after classification (an unknown parent), with their places."""
        self.skipped[reason] += len(found)
        for _, key in found:
            top = self.top_of(key)
            if top is not None:
                self.skipped_by_top.setdefault(top, Counter())[reason] += 1
        have = self.examples.setdefault(reason, [])
        have.extend(found)
        have.sort()
        del have[SKIPPED_EXAMPLES:]
        self.skipped_examples[reason] = [k for _, k in have]

    def tallies(self) -> dict[str, dict]:
        """Per top key, what the listing holds under it: ``objects`` (every object in
        its folder) and, when some were skipped, ``skipped`` by reason — the terms of a
        status card (``GET /api/status/{key}``). An object under a platform row that is
        missing was recognised first and skipped after (``unknown_parent``): counted once.
        A folder whose name no database text can hold (NUL, not UTF-8) is no top's: its
        objects are only in the listing's counts."""
        out = {}
        for top in sorted(set(self.counts) | set(self.skipped_by_top)):
            if not _storable(top):
                continue
            skipped = self.skipped_by_top.get(top, {})
            later = skipped.get(UNKNOWN_PARENT, 0)
            tally: dict = {"objects": self.counts.get(top, 0) + sum(skipped.values()) - later}
            if skipped:
                tally["skipped"] = dict(sorted(skipped.items()))
            out[top] = tally
        return out


def _storable(text: str) -> bool:
    """Whether PostgreSQL text (and jsonb) can hold ``text``: UTF-8, without NUL."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def _columns(objects: list[ObjectInfo]) -> tuple[list, list, list, list, list[tuple[int, str]]]:
    """Keys, sizes, etags and times as lists; keys that are not valid UTF-8 set apart,
    with their place in the listing."""
    if not objects:
        return [], [], [], [], []
    keys, sizes, etags, times = map(list, zip(*objects))  # ObjectInfo is a tuple: transposed in C
    try:
        "\n".join(keys).encode("utf-8")
        return keys, sizes, etags, times, []
    except UnicodeEncodeError:
        pass
    keys, sizes, etags, times = [], [], [], []
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
        times.append(o.last_modified)
    return keys, sizes, etags, times, bad


def classify_listing(
    objects: Iterable[ObjectInfo],
    catalogue: Catalogue,
    *,
    root: str = "",
    scope: Iterable[str] | Shard | None = None,
    spill: "Spill | None" = None,
) -> Listing:
    """Classify a listing a chunk at a time; the items go to ``spill`` once they
    outgrow it. Reads nothing but ``objects``."""
    from .spill import Parts

    classifier = Classifier(catalogue, root, scope)
    listing = Listing(Parts(items_schema(catalogue, classifier.needs_place), spill), top_of=classifier.top_of)
    examples = listing.examples
    top = plan_key(catalogue.top.name)

    def take(chunk: list[ObjectInfo], place: int) -> None:
        keys, sizes, etags, times, bad = _columns(chunk)
        frame = pl.DataFrame(
            {"key": keys, "size_bytes": sizes, "etag": etags, "last_modified": times},
            schema={"key": pl.String, "size_bytes": pl.Int64, "etag": pl.String, "last_modified": pl.String},
        ).with_row_index("i", offset=place)
        del keys, sizes, etags, times
        bad = [(place + p, k) for p, k in bad]
        if bad:  # "i" is the place in the listing, for the order of skipped examples
            taken = {p for p, _ in bad}
            places = [i for i in range(place, place + frame.height + len(bad)) if i not in taken]
            frame = frame.with_columns(pl.Series("i", places, dtype=pl.UInt32))
        items, skipped, counted = classifier.classify(frame)
        listing.object_count += counted + len(bad)
        for reason, count in skipped.group_by("reason").len().iter_rows():
            listing.skipped[reason] += count
        for name, reason, count in skipped.drop_nulls("top").group_by("top", "reason").len().iter_rows():
            listing.skipped_by_top.setdefault(name, Counter())[reason] += count
        firsts = skipped.group_by("reason").agg(pl.col("i").head(SKIPPED_EXAMPLES), pl.col("key").head(SKIPPED_EXAMPLES))
        for reason, idx, ks in firsts.iter_rows():
            shown = [k.replace("\x00", "\\0") if reason == INVALID_KEY else k for k in ks]
            found = examples.setdefault(reason, [])
            if len(found) < SKIPPED_EXAMPLES:
                found.extend(zip(idx, shown))
        for p, key in bad:
            reason = classifier.read_undecodable(key)
            if reason is None:
                listing.object_count -= 1
                continue
            listing.skipped[reason] += 1
            name = classifier.top_of(key)
            if name is not None:
                listing.skipped_by_top.setdefault(name, Counter())[reason] += 1
            examples.setdefault(reason, []).append((p, key.encode("utf-8", "replace").decode("utf-8")))
        if items.height:
            for name, n in items.group_by(top).len().iter_rows():
                listing.counts[name] = listing.counts.get(name, 0) + n
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
    for reason, found in examples.items():
        found.sort()
        del found[SKIPPED_EXAMPLES:]
    listing.skipped_examples = {r: [k for _, k in found] for r, found in examples.items()}
    return listing


# --------------------------------------------------------------------------- desired rows


@dataclass
class Desired:
    """The desired rows of a batch: a frame per owned entity (``k.<entity>`` its plan
    key, then its fields as plans name them), the objects whose platform-owned parent is
    missing (``i``, ``key``), and the owned rows those objects hold (plan keys by entity:
    rows in the database there are neither changed nor deleted)."""

    rows: dict[str, pl.DataFrame]
    unknown: pl.DataFrame | None = None
    held: dict[str, set[str]] = field(default_factory=dict)


def desired_of(
    items: pl.DataFrame,
    catalogue: Catalogue,
    cdn_base_url: str,
    *,
    root: str = "",
    known: dict[str, set[str]] | None = None,
) -> Desired:
    """The desired rows of classified items (:func:`item_columns`): whole top-entity
    rows, as a batch holds them. ``known`` holds the plan keys of the platform-owned
    rows in scope (an object under a missing one is skipped as ``unknown_parent``)."""
    entities = catalogue.entities
    items = items.with_columns(*[key_expr(catalogue, e.name).alias(plan_key(e.name))
                                 for e in entities if e is not catalogue.top])
    unknown = None
    held: dict[str, set[str]] = {}
    lookups = [e for e in entities if not e.owned]
    if lookups:
        implies = {e.name: [r.index for r in catalogue.rules_implying(e.name)] for e in lookups}
        checked = pl.lit(True)
        for e in lookups:
            checked = checked & (~pl.col("rule").is_in(implies[e.name]) | pl.col(plan_key(e.name)).is_in(
                sorted((known or {}).get(e.name, ()))))
        flagged = items.with_columns(checked.alias("_ok"))
        gone = flagged.filter(~pl.col("_ok"))
        items = flagged.filter(pl.col("_ok")).drop("_ok")
        if gone.height:
            unknown = gone.select("i", "key")
            for e in catalogue.owned:
                rules = [r.index for r in catalogue.rules_implying(e.name)]
                keys = gone.filter(pl.col("rule").is_in(rules)).select(plan_key(e.name)).to_series().to_list()
                if keys:
                    held[e.name] = set(keys)
    if _uses(catalogue, "url"):
        items = items.with_columns(urls(items["key"], url_base(cdn_base_url)))
    if _uses(catalogue, "class"):
        items = items.with_columns(class_expr(catalogue).alias("_class"))
    if _uses(catalogue, "rel"):
        items = items.with_columns(pl.col("key").str.slice(len(root)).alias("rel"))
    rows: dict[str, pl.DataFrame] = {}
    built: dict[str, pl.DataFrame] = {}  # every entity's rows, with what its ancestors' aggregates read
    for e in reversed(entities):
        if not e.owned:
            continue
        built[e.name] = _rows(items, catalogue, e, built)
        rows[e.name] = built[e.name].select(plan_key(e.name), *_field_columns(e))
    return Desired(rows, unknown, held)


def _field_columns(e: Entity) -> list[str]:
    return list(e.key_columns) + ([e.parent] if e.parent else []) + list(e.managed)


def _object_keyed(catalogue: Catalogue, e: Entity) -> bool:
    """One row per object: the entity's key names the object, and only its own row
    rules make its rows."""
    names = {n for _, t in e.key for n in t.names}
    return bool(names & {"key", "rel"}) and all(r.entity == e.name and r.action == "row"
                                               for r in catalogue.rules_implying(e.name))


def _source_values(catalogue: Catalogue, e: Entity) -> list[tuple[str, Source]]:
    """The sources of e's ancestors' aggregates over rows of e: each needs the value
    (and class) of e's rows' first objects."""
    out = []
    for a in catalogue.entities:
        for c in a.columns:
            for j, s in enumerate(c.value.sources()):
                if s.rows == e.name:
                    out.append((f"v.{a.name}.{c.name}.{j}", s))
    return out


def _rows(items: pl.DataFrame, catalogue: Catalogue, e: Entity, built: dict[str, pl.DataFrame]) -> pl.DataFrame:
    rule_ids = [r.index for r in catalogue.rules_implying(e.name)]
    objs = items.filter(pl.col("rule").is_in(rule_ids))
    k = plan_key(e.name)
    ancestors = [plan_key(a) for a in e.ancestors]
    per_object: list[pl.Expr] = [render(t).alias(col) for col, t in e.key]
    per_object += [render(c.value.template).alias(c.name) for c in e.columns if c.value.template is not None]
    sources = _source_values(catalogue, e)
    per_object += [render(s.value).alias(name) for name, s in sources]
    if any(s.classes for _, s in sources):
        per_object.append(pl.col("_class").alias("_row_class"))
    objs = objs.with_columns(per_object)
    carried = [col for col, _ in e.key] + [c.name for c in e.columns if c.value.template is not None]
    carried += [name for name, _ in sources] + (["_row_class"] if any(s.classes for _, s in sources) else [])
    if _object_keyed(catalogue, e):
        frame = objs.select(k, pl.col("key").alias("_first"), *ancestors, *carried)
    else:
        at_first = pl.col("key").arg_min()
        frame = objs.group_by(k).agg(
            pl.col("key").min().alias("_first"),
            *[pl.col(a).first() for a in ancestors],
            *[pl.col(c).get(at_first) for c in carried],
        )
    if e.parent:
        frame = frame.with_columns(pl.col(plan_key(e.parent)).alias(e.parent))
    for c in e.columns:
        if c.value.template is None:
            frame = frame.with_columns(_aggregate(c.value, items, catalogue, e, built, frame, f"{c.name}").alias(c.name))
    return frame


def _aggregate(value: Value, items: pl.DataFrame, catalogue: Catalogue, e: Entity, built: dict,
               frame: pl.DataFrame, path: str) -> pl.Expr:
    """An aggregate column's values, in the order of ``frame``'s rows."""
    k = plan_key(e.name)
    keys = frame.select(k)
    if value.count is not None:
        counted = built[value.count].group_by(plan_key(e.name)).len().rename({"len": "_n"})
        got = keys.join(counted, left_on=k, right_on=plan_key(e.name), how="left", maintain_order="left")
        return pl.lit(got["_n"].fill_null(0).cast(pl.Int64 if value.type == "bigint" else pl.Int64))
    if value.object:
        members = [
            _aggregate(v, items, catalogue, e, built, frame, f"{path}.{name}").alias(name)
            for name, v in sorted(value.object, key=lambda m: m[0])
        ]
        return pl.struct(members)
    source_list = value.first if value.first else (value.list,)
    found = []
    column = path.split(".")[0]
    all_sources = e.column(column).value.sources()
    for s in source_list:
        j = next(i for i, x in enumerate(all_sources) if x is s)
        name = f"v.{e.name}.{column}.{j}"
        if s.facet is not None:
            rules = [r.index for r in catalogue.rules if r.action == "facet" and r.entity == e.name and r.facet == s.facet]
            src = items.filter(pl.col("rule").is_in(rules)).select(
                pl.col(k), pl.col("key").alias("_order"), render(s.value).alias("_v"))
        else:
            rows = built[s.rows]
            if s.classes:
                rows = rows.filter(pl.col("_row_class").is_in(list(s.classes)))
            src = rows.select(pl.col(k), pl.col("_first").alias("_order"), pl.col(name).alias("_v"))
        found.append(src)
    if value.first:  # the first source that has a value, in the order the spec gives them
        result = has = None
        for src in found:
            best = src.group_by(k).agg(pl.col("_v").get(pl.col("_order").arg_min()), pl.lit(True).alias("_has"))
            got = keys.join(best, on=k, how="left", maintain_order="left")
            v, h = got["_v"], got["_has"].fill_null(False)
            if result is None:
                result, has = v, h
            else:
                result = pl.select(pl.when(pl.lit(has)).then(pl.lit(result)).otherwise(pl.lit(v))).to_series()
                has = has | h
        return pl.lit(result)
    src = found[0]
    lists = src.group_by(k).agg(pl.col("_v").sort_by("_order"))
    got = keys.join(lists, on=k, how="left", maintain_order="left")
    dtype = got.schema["_v"]
    return pl.lit(got["_v"].fill_null(pl.lit([], dtype=dtype)) if got.height else pl.Series("_v", [], dtype=dtype))


def build_desired(
    objects: Iterable[ObjectInfo],
    catalogue: Catalogue,
    *,
    cdn_base_url: str,
    root: str = "",
    scope=None,
    known: dict[str, set[str]] | None = None,
) -> tuple[Desired, Listing]:
    """The whole desired state of a listing, in memory (for tests and small scopes)."""
    listing = classify_listing(objects, catalogue, root=root, scope=scope)
    desired = desired_of(listing.items.frame(), catalogue, cdn_base_url, root=root, known=known)
    if desired.unknown is not None and desired.unknown.height:
        listing.skip(UNKNOWN_PARENT, list(desired.unknown.iter_rows()))
    return desired, listing
