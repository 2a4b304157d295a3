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

import functools
import itertools
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

import polars as pl

from ..catalogue import Catalogue, Entity, read_key
from ..catalogue.descriptor import Rule, Source, Template, Value
from ..catalogue.keys import PLAIN_KEY, quote_key, require_scope_segment, scope_segment, url_base
from ..catalogue.patterns import satisfies
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
# A reading's number: a folder's number times _GROUPS plus an extension group; a key read
# on its own, _ALONE plus its place in the listing.
_GROUPS, _ALONE = 1 << 32, 1 << 62


def capture(name: str) -> str:
    """The column of a capture in the classified items."""
    return "c." + name


def plan_key(entity: str) -> str:
    """The column of an entity's plan key in the classified items and in rows."""
    return "k." + entity


# --------------------------------------------------------------------------- classifying


@dataclass(frozen=True)
class _Folder:
    """A folder of a listing as the classifier reads it (see :class:`Classifier`)."""

    number: int
    by_name: bool  # keys in it are read one by one
    rules: tuple[tuple[Rule, dict], ...]  # the rules that can take its keys, with their captures of it


class Classifier:
    """The rules of a catalogue over chunks of a listing below ``root``, limited to a
    ``scope`` of top-entity names (a set, or a :class:`~reconciler.shards.Shard`).

    A rule can take a key only if its folders match the key's folder (the folder part
    of its pattern, :attr:`Pattern.dir_regex`, constraints included): each distinct
    folder is matched once, keeping those rules and their captures. Then what a key
    means depends only on its folder and which classes its extension is in — unless one
    of those rules reads the file name itself (a stem among words, a literal name): so
    each distinct (folder, extension group) is read once from its folder's rules and
    joined back to its keys; keys in folders where a file name matters are read one by
    one, by :func:`read_key` (the reference; property tests hold the two together). A
    million keys in twenty thousand folders cost twenty thousand folder matches; the
    file-name captures (``{file}``) come from the key itself. Folders and readings are
    numbered, so that the joins are on one integer column, not on strings."""

    def __init__(self, catalogue: Catalogue, root: str = "", scope=None) -> None:
        self.catalogue, self.root = catalogue, root
        self.scope = scope if scope is None or isinstance(scope, Shard) else frozenset(scope)
        # The top's folder also names the top key that a skipped object is tallied under.
        self.segment = require_scope_segment(catalogue) if self.scope is not None else scope_segment(catalogue)
        self.rules = catalogue.rules
        self.reads = reads(catalogue)
        self.kept = list(self.reads.captures)
        # Kept captures that a rule takes as a whole file name: each key's own.
        self.by_file = sorted({r.pattern.file.placeholders[0].name for r in self.rules
                               if r.action != "skip" and r.pattern.file.how in ("any", "whole")
                               and r.pattern.file.placeholders} & set(self.kept))
        # An extension's group: which classes hold it (0: none), numbered in order.
        combos = {ext: tuple(i for i, exts in enumerate(catalogue.classes.values()) if ext in exts)
                  for ext in sorted(set().union(*catalogue.classes.values()))}
        numbers = {c: n for n, c in enumerate(sorted(set(combos.values())), 1)}
        self.groups = {ext: numbers[c] for ext, c in combos.items()}
        names = list(catalogue.classes)
        self.class_of_group = {n: names[c[0]] for c, n in numbers.items()}
        # Per rule: its constrained folder placeholders; for a whole-name placeholder
        # (``{file:image}``), the extension groups it takes.
        self.dir_constraints = {r.index: [p for p in r.pattern.constrained if p.name in r.pattern.dir_names]
                                for r in self.rules}
        self.takes = {r.index: {n for c, n in numbers.items()
                                if {names[i] for i in c} & set(r.pattern.file.placeholders[0].classes)}
                      for r in self.rules if r.pattern.file.how == "whole"}
        # A folder's reading per extension group, across chunks; the folders met.
        self.meanings: dict[tuple[str, int], tuple] = {}
        self.folders: dict[str, _Folder] = {}
        self.folder_names: list[str] = []
        self.needs_place = any(not e.owned for e in catalogue.entities)
        self.schema = {"_ident": pl.UInt64, "rule": pl.Int16, "reason": pl.String,
                       **({"_fcap": pl.String} if self.by_file else {}), **{capture(n): pl.String for n in self.kept}}

    def _folder(self, d: str) -> _Folder:
        """Folder ``d`` (with its trailing "/"; "" for keys without one), numbered: the
        rules that can take its keys, and whether those are read one by one (a rule
        that may take one tests more of the file name than its extension)."""
        found = self.folders.get(d)
        if found is None:
            rules = []
            for r in self.rules:
                m = r.pattern.dir_regex.match(d)
                if m is None:
                    continue
                captures = m.groupdict()
                if all(satisfies(p, captures[p.name], self.catalogue.classes) for p in self.dir_constraints[r.index]):
                    rules.append((r, captures))
            by_name = False
            for r, _ in rules:
                fm = r.pattern.file
                if fm.how == "any":
                    break  # this rule takes every key of the folder
                if fm.how != "whole" or fm.placeholders[0].words:
                    by_name = True
                    break
            found = self.folders[d] = _Folder(len(self.folder_names), by_name, tuple(rules))
            self.folder_names.append(d)
        return found

    def _folder_reading(self, folder: _Folder, group: int) -> tuple:
        """What the keys of a folder whose file names do not matter mean, by extension
        group: the first of its rules that takes that group (a whole-name placeholder
        takes the groups of its classes; any other rule, every key); a capture of the
        whole file name is each key's own (``_fcap`` names it)."""
        for r, captures in folder.rules:
            if r.index in self.takes and group not in self.takes[r.index]:
                continue
            reason = EMPTY_SEGMENT if "" in captures.values() else r.reason
            holders = r.pattern.file.placeholders
            fcap = holders[0].name if holders else None
            return (r.index, reason, *([fcap] if self.by_file else []), *[captures.get(n) for n in self.kept])
        return (_UNMATCHED, UNMATCHED, *([None] if self.by_file else []), *[None] * len(self.kept))

    def _reading(self, rel: str) -> tuple:
        """What a key read on its own means: :func:`read_key`, over its folder's rules."""
        reading = read_key(self.catalogue, rel, tuple(r for r, _ in self._folder(rel[: rel.rfind("/") + 1]).rules))
        rule = reading.rule.index if reading.rule is not None else (_MARKER if reading.reason == FOLDER_MARKER
                                                                     else _UNMATCHED)
        return (rule, reading.reason, *([None] if self.by_file else []),
                *[reading.captures.get(n) for n in self.kept])

    def _numbered(self, dirs: pl.Series) -> pl.DataFrame:
        """The number of each folder of ``dirs`` (distinct), and whether keys in it are
        read one by one."""
        folders = [self._folder(d) for d in dirs.to_list()]
        return pl.DataFrame({"_dir": dirs, "_n": pl.Series([f.number for f in folders], dtype=pl.UInt64),
                             "_by_name": pl.Series([f.by_name for f in folders], dtype=pl.Boolean)})

    def readings(self, firsts: pl.DataFrame) -> pl.DataFrame:
        """The reading of each ``_ident`` of ``firsts`` (with an example key below the
        root): a folder's number and an extension group, or a key read on its own."""
        rows = []
        for ident, rel in firsts.iter_rows():
            if ident >= _ALONE:
                row = self._reading(rel)
            else:
                at = (self.folder_names[ident // _GROUPS], ident % _GROUPS)
                row = self.meanings.get(at)
                if row is None:
                    row = self.meanings[at] = self._folder_reading(self.folders[at[0]], at[1])
            rows.append((ident, *row))
        return pl.DataFrame(rows, orient="row", schema=self.schema)

    def classify(self, frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, int]:
        """A chunk (``key``, the attributes the catalogue reads — ``size_bytes``,
        ``etag``, ``last_modified`` — and ``i`` its place in the listing) → the
        recognised items (:func:`item_columns`), the skipped (``i``, ``key``,
        ``reason``, ``top``: the top entity's folder it is in, if any), and how many
        objects of the chunk are in scope.

        Three passes of Polars over the chunk, each a query: folders and extension
        groups; the readings' numbers (and an example of each); the readings joined
        and the items and skipped keys taken apart."""
        root = self.root
        key = pl.col("key")
        inside = key.str.starts_with(root) if root else None
        if root:
            frame = frame.with_columns(key.str.slice(len(root)).alias("rel"))
        rel_name = "rel" if root else "key"  # without a root a key is its own rel
        rel = pl.col(rel_name)
        if self.scope is not None:
            # Objects of names out of scope are not in the plan at all (not counted either).
            part = self.segment.of_expr(rel)
            names = (frame if inside is None else frame.filter(inside)).select(part.unique()).to_series()
            taken = part.is_in([n for n in names.drop_nulls().to_list() if n in self.scope])
            frame = frame.filter(taken if inside is None else ~inside | taken)
        frame = frame.with_columns(
            rel.str.replace(r"[^/]*$", "").alias("_dir"),
            rel.str.extract(r"\.([^./]*)$", 1).str.to_lowercase()
            .replace_strict(self.groups, default=0, return_dtype=pl.UInt64).alias("_group"),
        )
        # A key in a folder where file names matter, or a folder marker (no file name), is read alone.
        alone = pl.col("_by_name") | (pl.col("_dir") == rel)
        ident = pl.when(alone).then(pl.col("i").cast(pl.UInt64) + _ALONE).otherwise(
            pl.col("_n") * _GROUPS + pl.col("_group"))
        frame = frame.join(self._numbered(frame.get_column("_dir").unique()), on="_dir", how="left",
                           maintain_order="left").with_columns(ident.alias("_ident"))
        firsts = frame.group_by("_ident").agg(rel.first())
        file_name = rel.str.extract(r"([^/]*)$", 1)
        captures = [pl.when(pl.col("_fcap") == n).then(file_name).otherwise(pl.col(capture(n))).alias(capture(n))
                    for n in self.by_file]
        reason = pl.col("reason") if inside is None else pl.when(inside).then(pl.col("reason")).otherwise(
            pl.lit(OUTSIDE_ROOT))
        # PostgreSQL text cannot hold NUL: a recognised key with one is skipped.
        reason = pl.when(reason.is_null() & key.str.contains("\x00", literal=True)).then(
            pl.lit(INVALID_KEY)).otherwise(reason)
        frame = frame.join(self.readings(firsts), on="_ident", how="left", maintain_order="left")
        read = frame.lazy().with_columns(*captures, reason.alias("reason"))
        if self.reads.classes:
            read = read.with_columns(pl.col("_group").replace_strict(self.class_of_group, default=None,
                                                                     return_dtype=pl.String).alias("_class"))
        top = self.segment.folder_expr(rel) if self.segment is not None else pl.lit(None, pl.String)
        if inside is not None:
            top = pl.when(inside).then(top)
        skipped, items = pl.collect_all([
            read.filter(pl.col("reason").is_not_null()).select("i", "key", "reason", top.alias("top")),
            read.filter(pl.col("reason").is_null()).select(item_columns(self.catalogue, self.needs_place)),
        ])
        return items, skipped, frame.height

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


@dataclass(frozen=True)
class Reads:
    """What a catalogue's rows read of an object: the captures and the object's
    attributes that its keys, templates and aggregates name. Classified items carry
    those and no more (a file name, a modification time no column holds are never
    built)."""

    captures: tuple[str, ...]
    attributes: frozenset[str]

    @property
    def classes(self) -> bool:
        return "class" in self.attributes


@functools.lru_cache(maxsize=64)
def reads(catalogue: Catalogue) -> Reads:
    from ..catalogue.patterns import ATTRIBUTES

    names: set[str] = set()
    for e in catalogue.entities:
        for _, t in e.key:
            names.update(t.names)
        for c in e.columns:
            if c.value.template is not None:
                names.update(c.value.template.names)
            for s in c.value.sources():
                names.update(s.value.names)
    captured = {n for r in catalogue.rules if r.action != "skip" for n in r.pattern.names}
    return Reads(tuple(sorted(names & captured)), frozenset(names & set(ATTRIBUTES)))


# The item columns of the object attributes a catalogue may read ({key}, {url} and {rel} come from the key).
_ATTRIBUTE_COLUMNS = {"size": "size_bytes", "etag": "etag", "last_modified": "last_modified", "class": "_class"}


def item_columns(catalogue: Catalogue, place: bool = False) -> list[str]:
    used = reads(catalogue)
    cols = ["key", *[c for a, c in _ATTRIBUTE_COLUMNS.items() if a in used.attributes], "rule"]
    cols += [capture(n) for n in used.captures]
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


def urls(keys: pl.Series, base: str) -> pl.Series:
    """``base + quote_key(key)`` for a column of keys, exactly: every character that
    :func:`~reconciler.catalogue.keys.quote_key` escapes (found among the keys) is
    replaced by its escape in one pass."""
    odd = keys.filter(~keys.str.contains(f"^{PLAIN_KEY}$"))
    if odd.is_empty():
        return (base + keys).alias("_url")
    escapes = {c: e for c in sorted(set("".join(odd.to_list()))) if (e := quote_key(c)) != c}
    return (base + keys.str.replace_many(list(escapes), list(escapes.values()))).alias("_url")


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

    def add_skipped(self, skipped: pl.DataFrame) -> None:
        """A chunk's skipped objects (``i``, ``key``, ``reason``, ``top``): counted, by
        reason and per top key, and the first of each reason kept as examples."""
        for name, reason, count in skipped.drop_nulls("top").group_by("top", "reason").len().iter_rows():
            self.skipped_by_top.setdefault(name, Counter())[reason] += count
        firsts = skipped.group_by("reason").agg(pl.len(), pl.col("i").head(SKIPPED_EXAMPLES),
                                                pl.col("key").head(SKIPPED_EXAMPLES))
        for reason, count, idx, ks in firsts.iter_rows():
            self.skipped[reason] += count
            shown = [k.replace("\x00", "\\0") if reason == INVALID_KEY else k for k in ks]
            found = self.examples.setdefault(reason, [])
            if len(found) < SKIPPED_EXAMPLES:
                found.extend(zip(idx, shown))

    def add_undecodable(self, place: int, key: str, reason: str, top: str | None) -> None:
        """A key that is not valid UTF-8, skipped for ``reason`` (shown with U+FFFD)."""
        self.skipped[reason] += 1
        if top is not None:
            self.skipped_by_top.setdefault(top, Counter())[reason] += 1
        self.examples.setdefault(reason, []).append((place, key.encode("utf-8", "replace").decode("utf-8")))

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
    top = top_key_expr(catalogue)
    schema = {c: t for c, t in items_schema(catalogue).items() if c in ("key", "size_bytes", "etag", "last_modified")}

    def take(chunk: list[ObjectInfo], place: int) -> None:
        frame, bad = _frame(chunk, place, schema)
        items, skipped, counted = classifier.classify(frame)
        listing.object_count += counted + len(bad)
        listing.add_skipped(skipped)
        for p, key in bad:
            reason = classifier.read_undecodable(key)
            if reason is None:
                listing.object_count -= 1
                continue
            listing.add_undecodable(p, key, reason, classifier.top_of(key))
        if items.height:
            for name, n in items.group_by(top.alias("top")).len().iter_rows():
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
    for reason, found in listing.examples.items():
        found.sort()
        del found[SKIPPED_EXAMPLES:]
    listing.skipped_examples = {r: [k for _, k in found] for r, found in listing.examples.items()}
    return listing


def _frame(chunk: list[ObjectInfo], place: int, schema: dict) -> tuple[pl.DataFrame, list[tuple[int, str]]]:
    """A chunk as a frame of the attributes the catalogue reads (``schema``) and ``i``,
    each object's place in the listing; the keys that are not valid UTF-8 apart, with
    their places."""
    keys, sizes, etags, times, bad = _columns(chunk)
    values = {"key": keys, "size_bytes": sizes, "etag": etags, "last_modified": times}
    frame = pl.DataFrame({c: values[c] for c in schema}, schema=schema).with_row_index("i", offset=place)
    del keys, sizes, etags, times, values
    bad = [(place + p, k) for p, k in bad]
    if bad:  # "i" is the place in the listing, for the order of skipped examples
        taken = {p for p, _ in bad}
        places = [i for i in range(place, place + frame.height + len(bad)) if i not in taken]
        frame = frame.with_columns(pl.Series("i", places, dtype=pl.UInt32))
    return frame, bad


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
    used = reads(catalogue).attributes
    if not items.get_column("key").is_sorted():
        # In key order, every "first by key" below is a group's first row and every
        # list is in order as it comes (a listing is mostly in key order already).
        items = items.sort("key", maintain_order=True)
    items = items.with_columns(*[key_expr(catalogue, e.name).alias(plan_key(e.name)) for e in entities])
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
    if "url" in used:
        items = items.with_columns(urls(items["key"], url_base(cdn_base_url)))
    if "rel" in used:
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
    """The rows of ``e`` from items in key order: its key, its ancestors' keys and its
    templates from its first object, then its aggregates. Rows that an ancestor's
    aggregates read (``sources``) stay in the order of their first objects."""
    rule_ids = [r.index for r in catalogue.rules_implying(e.name)]
    k = plan_key(e.name)
    ancestors = [plan_key(a) for a in e.ancestors]
    per_object: list[pl.Expr] = [render(t).alias(col) for col, t in e.key]
    per_object += [render(c.value.template).alias(c.name) for c in e.columns if c.value.template is not None]
    sources = _source_values(catalogue, e)
    per_object += [render(s.value).alias(name) for name, s in sources]
    if any(s.classes for _, s in sources):
        per_object.append(pl.col("_class").alias("_row_class"))
    # Lazily: only the columns these rows need are filtered.
    objs = items.lazy().filter(pl.col("rule").is_in(rule_ids)).select(k, *ancestors, *per_object)
    if not _object_keyed(catalogue, e):
        objs = objs.group_by(k, maintain_order=bool(sources)).agg(pl.all().first())
    frame = objs.collect()
    if e.parent:
        frame = frame.with_columns(pl.col(plan_key(e.parent)).alias(e.parent))
    keys = frame.select(k)
    aggregates = [_aggregate(c.value, items, catalogue, e, built, keys, c.name).alias(c.name)
                  for c in e.columns if c.value.template is None]
    return frame.with_columns(aggregates) if aggregates else frame


def _aggregate(value: Value, items: pl.DataFrame, catalogue: Catalogue, e: Entity, built: dict,
               keys: pl.DataFrame, column: str) -> pl.Expr:
    """An aggregate of column ``column``'s value, in the order of ``keys`` (the rows'
    plan keys)."""
    k = plan_key(e.name)
    if value.count is not None:
        counted = built[value.count].group_by(k).len().rename({"len": "_n"})
        got = keys.join(counted, on=k, how="left", maintain_order="left")
        return pl.lit(got["_n"].fill_null(0).cast(pl.Int64))
    if value.object:
        return pl.struct([_aggregate(v, items, catalogue, e, built, keys, column).alias(name)
                          for name, v in sorted(value.object, key=lambda m: m[0])])
    all_sources = e.column(column).value.sources()
    found = []
    for s in value.first if value.first else (value.list,):
        if s.facet is not None:
            rules = [r.index for r in catalogue.rules if r.action == "facet" and r.entity == e.name and r.facet == s.facet]
            src = items.lazy().filter(pl.col("rule").is_in(rules)).select(k, render(s.value).alias("_v"))
        else:
            j = next(i for i, x in enumerate(all_sources) if x is s)
            src = built[s.rows].lazy()
            if s.classes:
                src = src.filter(pl.col("_row_class").is_in(list(s.classes)))
            src = src.select(k, pl.col(f"v.{e.name}.{column}.{j}").alias("_v"))
        found.append(src)
    # Sources come in key order: a group's first value is its first object's.
    if value.first:  # the first source that has a value, in the order the spec gives them
        result = has = None
        for src in found:
            best = src.group_by(k).agg(pl.col("_v").first(), pl.lit(True).alias("_has")).collect()
            got = keys.join(best, on=k, how="left", maintain_order="left")
            v, h = got["_v"], got["_has"].fill_null(False)
            if result is None:
                result, has = v, h
            else:
                result = pl.select(pl.when(pl.lit(has)).then(pl.lit(result)).otherwise(pl.lit(v))).to_series()
                has = has | h
        return pl.lit(result)
    lists = found[0].group_by(k).agg(pl.col("_v")).collect()
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
