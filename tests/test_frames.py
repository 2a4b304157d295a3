"""The planner's engine on its own terms (reconciler.engine.frames, reconciler.engine.plan).

The desired state a listing gives follows the creators catalogue's reading
(:func:`reconciler.catalogue.read_key`) key by key, whatever the keys hold (lone
surrogates, NUL, control characters), the root and the scope; and a plan made a batch
of models at a time — in memory or spilled to files — is the plan made in one batch,
byte for byte, over generated listings and database states."""

from __future__ import annotations

import bisect
import random
from collections import Counter
from typing import NamedTuple
from urllib.parse import quote

import polars as pl
from hypothesis import example, given, settings, strategies as st

from reconciler import ObjectInfo, plan_from_rows
from reconciler.catalogue import compile_checked, read_key
from reconciler.engine import frames
from reconciler.engine.diff import change_order
from reconciler.engine.plan import Current, Rows, batch_bounds, current_of_rows, plan_changes
from reconciler.engine.frames import OUTSIDE_ROOT, SKIPPED_EXAMPLES, build_desired, classify_listing, plan_key
from reconciler.planfile import Plan, write_plan
from reconciler.engine.shards import Shard
from reconciler.engine.spill import Spill

from .conftest import CREATORS, PRODUCTS, database_holding, desired_state, images, patch, reordered

CDN = "https://cdn.example.test/"  # with its trailing "/": URLs have one "/" after the base

_segments = st.sampled_from(["Alice", "alice", "Bob", "Zo\u00eb", "Zoe\u0308", "A&B", "", "profile", "a b",
                             "100%+", "x\\y", "tab\there", "nl\nx", "cr\rx", "ctl\x01\x7f", "nul\x00", "lone\ud800",
                             "Ω", "raw", "#1", "\U0001f600"])
_files = st.sampled_from(["1.jpg", "2.JPG", "3.mp4", "icon.png", "avatar.jpg", "banner.webp", "cover.gif",
                          "Icon.PNG", "notes.txt", "x.mov", "é.heic", "", ".jpg", "noext", "a.b.jpeg", "Thumbs.db",
                          "\udcff.jpg"])
_keys = st.one_of(
    st.builds(lambda m, f: f"{m}/{f}", _segments, _files),
    st.builds(lambda m, p, f: f"{m}/{p}/{f}", _segments, _segments, _files),
    st.builds(lambda m, p, f: f"{m}/{p}/deep/{f}", _segments, _segments, _files),
    st.builds(lambda m, p: f"{m}/{p}/", _segments, _segments),
    _files,
)
_roots = st.sampled_from(["", "media/", "Alice/"])
listings = st.lists(
    st.builds(ObjectInfo, st.one_of(_keys, _roots.flatmap(lambda r: _keys.map(lambda k: r + k))),
              st.none() | st.integers(0, 3), st.none() | st.sampled_from(["e1", "e2", "e3"])),
    max_size=30,
    unique_by=lambda o: o.key,
)
_shards = st.integers(1, 3).flatmap(lambda n: st.integers(1, n).map(lambda k: Shard(k, n)))
_scopes = (st.none() | st.lists(st.sampled_from(["Alice", "Bob", "Zo\u00eb", "A&B", "nul\x00", "nope"]), min_size=1,
                                max_size=3) | _shards)


# --------------------------------------------------------------------------- the desired state


class Item(NamedTuple):
    """What a recognised key gives: a model's ``image``, ``icon`` or ``banner``, or a
    ``media`` item of a post, of type ``image`` or ``video``."""

    model: str
    what: str
    post: str | None = None
    type: str | None = None


def item_of(o: ObjectInfo, rel: str) -> Item | str:
    """The creators catalogue's reading of a key below the root: an item, or the reason it is skipped."""
    reading = read_key(CREATORS, rel)
    if reading.reason is not None:
        return reading.reason
    model, rule = reading.captures["model"], reading.rule
    if rule.action == "facet":
        return Item(model, rule.facet)
    ext = o.key.rpartition(".")[2].lower()
    return Item(model, "media", reading.captures["post"], "image" if ext in CREATORS.classes["image"] else "video")


def by_the_rules(objects, root: str, scope):
    """Each object in scope, one key at a time, as the catalogue's rules and the database
    take it: ``(object, item)`` if recognised, ``(key, reason)`` if skipped."""
    recognised, skipped = [], []
    for o in objects:
        if not o.key.startswith(root):
            skipped.append((o.key, OUTSIDE_ROOT))
            continue
        rel = o.key[len(root):]
        if scope is not None and rel.partition("/")[0] not in scope:
            continue  # another model's: not counted at all
        item = item_of(o, rel)
        if isinstance(item, str):
            skipped.append((o.key, item))
        elif not is_text(o.key):
            skipped.append((o.key, "invalid_utf8_key"))  # a folder's undecodable file name
        elif "\x00" in o.key:
            skipped.append((o.key, "invalid_key"))  # PostgreSQL text cannot hold NUL
        else:
            recognised.append((o, item))
    return recognised, skipped


def is_text(key: str) -> bool:
    try:
        key.encode("utf-8")
        return True
    except UnicodeEncodeError:  # lone surrogates
        return False


def first_key(recognised, model: str, what: str, media_type: str | None = None) -> str | None:
    """The first key (sorted) of a kind of item of ``model``, or None."""
    return min((o.key for o, i in recognised
                if i.model == model and i.what == what and (media_type is None or i.type == media_type)),
               default=None)


def shown(key: str, reason: str) -> str:
    """A skipped key as its example shows it: valid text, NUL spelled out."""
    text = key.encode("utf-8", "replace").decode("utf-8")
    return text.replace("\x00", "\\0") if reason == "invalid_key" else text


def url(key: str | None) -> str | None:
    return None if key is None else CDN.rstrip("/") + "/" + quote(key, safe="/")


@settings(max_examples=300)
@given(listings, _roots, _scopes)
def test_the_desired_state_follows_the_catalogue_key_by_key(objects, root, scope):
    state = desired_state(objects, cdn_base_url=CDN, root=root, models=scope)
    recognised, skipped = by_the_rules(objects, root, scope)

    # Every object in scope is counted once: recognised, or skipped for its reason.
    assert state.object_count == len(recognised) + len(skipped)
    assert state.recognised == len(recognised)
    assert state.skipped == Counter(reason for _, reason in skipped)
    assert state.skipped_examples == {
        reason: [shown(k, r) for k, r in skipped if r == reason][:SKIPPED_EXAMPLES] for reason in state.skipped
    }

    # Every recognised media key is one media row, its URL the key quoted ...
    media = [(o, i) for o, i in recognised if i.what == "media"]
    assert state["media"] == {
        o.key: {"s3_key": o.key, "post": f"{i.model}/{i.post}", "url": url(o.key), "type": i.type,
                "size_bytes": o.size, "etag": o.etag}
        for o, i in media
    }
    # ... listed exactly once, in its own post, by type, in key order.
    assert set(state["post"]) == {row["post"] for row in state["media"].values()}
    for pkey, post in state["post"].items():
        mine = sorted((k, row) for k, row in state["media"].items() if row["post"] == pkey)
        model, _, folder = pkey.partition("/")
        assert post == {"model": model, "folder_name": folder, "title": folder, "media_cdns": {
            "images": [row["url"] for _, row in mine if row["type"] == "image"],
            "videos": [row["url"] for _, row in mine if row["type"] == "video"],
        }}

    # A model for every model folder with a recognised key; the first key (sorted) of
    # each kind wins; the thumbnail falls back to the first post image.
    assert sorted(state["model"]) == sorted({i.model for _, i in recognised})
    for name, row in state["model"].items():
        thumbnail = first_key(recognised, name, "image") or first_key(recognised, name, "media", "image")
        posts = {i.post for _, i in media if i.model == name}
        assert row == {"folder_name": name, "thumbnail_url": url(thumbnail),
                       "icon_url": url(first_key(recognised, name, "icon")),
                       "banner_url": url(first_key(recognised, name, "banner")), "post_count": len(posts)}


@settings(max_examples=100)
@given(listings, _roots, _scopes, st.randoms(use_true_random=False))
def test_the_order_of_the_listing_does_not_matter(objects, root, scope, rng: random.Random):
    def rows(listing):
        state = desired_state(listing, cdn_base_url=CDN, root=root, models=scope)
        return state.images, state.object_count, state.skipped

    shuffled = list(objects)
    rng.shuffle(shuffled)
    assert rows(shuffled) == rows(objects) == rows(objects[::-1])


@settings(max_examples=200)
@given(listings, _roots, _scopes)
def test_the_tallies_count_each_object_once_under_its_models_folder(objects, root, scope):
    """A status card's numbers (``Listing.tallies``): every object in scope in a model's
    folder counts under that model, recognised or skipped (with its reason); a file at
    the root, or in a folder no database text can name, is no model's."""
    recognised, skipped = by_the_rules(objects, root, scope)
    expected: dict = {}
    for key, reason in [(o.key, None) for o, _ in recognised] + skipped:
        folder, slash, _ = key[len(root):].partition("/")
        if reason == OUTSIDE_ROOT or not slash or not folder or not is_text(folder) or "\x00" in folder:
            continue
        tally = expected.setdefault(folder, {"objects": 0})
        tally["objects"] += 1
        if reason:
            tally.setdefault("skipped", Counter())[reason] += 1
    for tally in expected.values():
        if "skipped" in tally:
            tally["skipped"] = dict(sorted(tally["skipped"].items()))
    assert classify_listing(objects, CREATORS, root=root, scope=scope).tallies() == expected


def test_a_products_tally_counts_an_image_under_a_missing_variant_once_as_skipped():
    objects = [ObjectInfo(k, 1, "e") for k in (
        "products/p42/500g/hero-card/a.jpg", "products/p42/2kg/hero-card/b.jpg", "products/p42/500g/banner/c.jpg",
        "products/p99/1kg/hero-card/d.jpg", "README.txt")]
    known = {"product": {"p42"}, "variant": {"p42/500g"}}
    _, listing = build_desired(objects, PRODUCTS, cdn_base_url=CDN, known=known)
    assert listing.tallies() == {
        "p42": {"objects": 3, "skipped": {"unknown_image_type": 1, "unknown_parent": 1}},
        "p99": {"objects": 1, "skipped": {"unknown_parent": 1}},
    }


@settings(max_examples=50)
@given(listings, _roots, st.integers(1, 4))
def test_shard_scopes_divide_the_desired_state(objects, root, n):
    whole = desired_state(objects, cdn_base_url=CDN, root=root)
    parts = [desired_state(objects, cdn_base_url=CDN, root=root, models=Shard(k, n)) for k in range(1, n + 1)]
    for k, part in enumerate(parts, 1):
        assert all(name in Shard(k, n) for name in part["model"])
    for kind in CREATORS.kinds:
        union = [item for part in parts for item in part[kind].items()]
        assert len(union) == len(whole[kind]) and dict(union) == whole[kind]
    # Keys outside the root belong to no model: every shard counts them.
    assert sum(p.object_count for p in parts) == whole.object_count + (n - 1) * whole.skipped.get(OUTSIDE_ROOT, 0)


@settings(max_examples=100)
@given(listings, _roots, _scopes, st.integers(1, 4))
def test_chunks_of_the_listing_give_the_same_state(objects, root, scope, chunk):
    from reconciler.engine import frames

    whole = desired_state(objects, cdn_base_url=CDN, root=root, models=scope)
    saved, frames.CHUNK = frames.CHUNK, chunk
    try:
        chunked = desired_state(objects, cdn_base_url=CDN, root=root, models=scope)
    finally:
        frames.CHUNK = saved
    assert chunked == whole


# A catalogue of the shapes a rule takes: a word among alternatives in a folder before
# any file name (a folder of another word is not that rule's), a stem among words (file
# names matter there), "**" before a name of some classes, a literal folder, a skip of
# everything else below a folder.
SHAPES = compile_checked({
    "name": "shapes",
    "classes": {"image": ["jpg", "png"], "doc": ["pdf"]},
    "entities": {
        "group": {"table": "groups", "key": {"name": "{g}"},
                  "columns": {"pic": {"first": {"facet": "pic"}}, "logo": {"first": {"facet": "logo"}}}},
        "item": {"table": "items", "parent": {"entity": "group", "column": "group_id"}, "unique": "global",
                 "key": {"path": "{key}"}, "columns": {"where": "{w}", "file": "{file}", "cls": "{class}"}},
    },
    "rules": [
        {"match": "{g:alpha|Beta}/{file}", "facet": "group.pic"},
        {"match": "{g:alpha|Beta}/{w}/{file}", "row": "item"},
        {"match": "{g}/{stem:logo|icon}.{ext:image}", "facet": "group.logo"},
        {"match": "{g}/{w}/**/{file:image|doc}", "row": "item"},
        {"match": "lit/{g}/{w}/{file:doc}", "row": "item"},
        {"match": "{g}/**", "skip": "other"},
    ],
}, "shapes")
_shape_segments = st.sampled_from(["alpha", "ALPHA", "Beta", "gamma", "", "lit", "x y", "Zo\u00eb"])
_shape_files = st.sampled_from(["a.jpg", "B.PNG", "r.pdf", "n.txt", "logo.png", "Icon.JPG", "noext", ".jpg", "x."])


@settings(max_examples=150)
@given(st.lists(st.builds(lambda parts, f, marker: "/".join(parts + [f]) + ("/" if marker else ""),
                          st.lists(_shape_segments, max_size=4), _shape_files, st.integers(0, 9).map(lambda i: i == 0)),
                max_size=40, unique=True),
       st.sampled_from([CREATORS, PRODUCTS, SHAPES]))
@example(["gamma/logo.png", "gamma/a.jpg"], SHAPES)  # "{g:alpha|Beta}/{file}" is not gamma's: the stem matters
def test_classified_items_carry_the_rule_and_captures_read_key_gives(keys, catalogue):
    """Folders are matched once and read per extension class (keys where a file name
    matters one by one): each item has the rule and the captures read_key gives its key."""
    listing = classify_listing([ObjectInfo(k) for k in keys], catalogue)
    items = {row["key"]: row for row in listing.items.frame().to_dicts()}
    skipped: Counter = Counter()
    for k in keys:
        reading = read_key(catalogue, k)
        if not reading.recognised:
            skipped[reading.reason] += 1
            continue
        item = items.pop(k)
        assert item["rule"] == reading.rule.index, k
        assert {n: v for n, v in item.items() if n.startswith("c.")} == {
            "c." + n: reading.captures[n] for n in frames.reads(catalogue).captures if n in reading.captures
        } | {n: None for n in item if n.startswith("c.") and n[2:] not in reading.captures}, k
    assert not items
    assert listing.skipped == skipped


# --------------------------------------------------------------------------- plans in batches


_names = st.sampled_from(["Alice", "Alice Smith", "alice", "Bob", "Zo\u00eb", "Zoe\u0308", "A&B", "tab\there",
                          "\U0001f600"])
_media_keys = st.builds(lambda m, p, f: f"{m}/{p}/{f}", _names, st.sampled_from(["Beach", "Trip", "raw", "a b", "#1"]),
                        st.sampled_from(["1.jpg", "2.JPG", "3.mp4", "x.mov", "é.heic", "a.b.jpeg"]))


def plan_listings(root: str):
    """Listings for plans: mostly media of a few models below ``root`` (so that plans
    have many rows, in many batches), and any key at all."""
    keys = st.one_of(_media_keys.map(lambda k: root + k), _media_keys.map(lambda k: root + k), _keys,
                     _keys.map(lambda k: root + k))
    etags = st.none() | st.sampled_from(["e1", "e2"]) | st.integers(3, 99).map("e{}".format)  # some unique: moves
    return st.lists(st.builds(ObjectInfo, keys, st.none() | st.integers(0, 3), etags), max_size=30,
                    unique_by=lambda o: o.key)


_old_names = st.sampled_from(["Old", "Alice", "Alice Smith", "Zo\u00eb", "a b", "zzz"])


def earlier_listings(draw, objects: list[ObjectInfo], root: str) -> list[ObjectInfo]:
    """What the bucket held before it became ``objects``: some of the same objects, some
    with other content, a model folder and a post folder under their old names (so the
    plan has updates and moves, not only creates and deletes), and others."""
    below = [o for o in objects if o.key.startswith(root) and "/" in o.key[len(root):]]
    renamed: dict[str, str] = {}  # a new folder (below the root) → its old name
    if below and draw(st.booleans()):
        model = draw(st.sampled_from(sorted({o.key[len(root):].partition("/")[0] for o in below})))
        renamed[model + "/"] = draw(_old_names) + "/"
    posts = sorted({"/".join(o.key[len(root):].split("/")[:2]) + "/" for o in below
                    if o.key[len(root):].count("/") >= 2})
    if posts and draw(st.booleans()):
        post = draw(st.sampled_from(posts))
        renamed[post] = post.partition("/")[0] + "/" + draw(_old_names) + "/"
    earlier = {}
    added = draw(st.sets(st.sampled_from([o.key for o in objects]), max_size=5)) if objects else set()
    for o in objects:
        if o.key in added:
            continue
        how = draw(st.sampled_from(["same", "same", "content"]))
        if how == "content":
            o = o._replace(size=draw(st.none() | st.integers(0, 3)), etag=draw(st.sampled_from([None, "e1", "e4"])))
        rel = o.key[len(root):]
        for new, old in sorted(renamed.items(), key=lambda item: -len(item[0])):
            if o.key.startswith(root) and rel.startswith(new):
                o = o._replace(key=root + old + rel[len(new):])
                break
        earlier[o.key] = o
    for o in draw(plan_listings(root)):
        earlier.setdefault(o.key, o)
    return list(earlier.values())


@st.composite
def databases(draw, objects: list[ObjectInfo], root: str) -> dict:
    """A database as a plan for ``objects`` finds it: the rows an earlier listing gave
    (:func:`earlier_listings`), then changed by other writers — fields edited, rows
    gone, rows handed back with their fields (and JSON keys) in another order, a row
    whose key names another model than the post it is filed under, a key outside the
    root, a model the bucket no longer has."""
    state = desired_state(earlier_listings(draw, objects, root), cdn_base_url=CDN, root=root)
    models, posts, media = dict(state["model"]), dict(state["post"]), dict(state["media"])

    if draw(st.booleans()):  # a model the bucket no longer has
        models["Gone"] = {"folder_name": "Gone", "thumbnail_url": None, "icon_url": None, "banner_url": None,
                          "post_count": 1}
        posts["Gone/P"] = {"model": "Gone", "folder_name": "P", "title": "P",
                           "media_cdns": {"images": ["u"], "videos": []}}
        media[root + "Gone/P/1.jpg"] = media_row(root + "Gone/P/1.jpg", "Gone/P", size_bytes=3, etag="e3")

    def edit(rows: dict, edits: dict) -> None:
        """Some rows dropped or replaced by one of ``edits`` (name → the fields it changes)."""
        for key in sorted(draw(st.sets(st.sampled_from(sorted(rows)), max_size=4))) if rows else ():
            how = draw(st.sampled_from(["drop", "reordered", *edits]))
            row = rows.pop(key)
            if how == "reordered":
                rows[key] = reordered(row)
            elif how != "drop":
                rows[key] = {**row, **edits[how](row)}

    # The database's foreign keys hold: a dropped model takes its posts, a post its media.
    edit(models, {
        "post_count": lambda row: {"post_count": row["post_count"] + 1},
        "thumbnail_url": lambda row: {"thumbnail_url": draw(st.sampled_from([None, "u"]))},
    })
    posts = {k: row for k, row in posts.items() if row["model"] in models}
    edit(posts, {
        "title": lambda row: {"title": "T"},
        "media_cdns": lambda row: {"media_cdns": {"images": [], "videos": []}},
    })
    media = {k: row for k, row in media.items() if row["post"] in posts}
    edit(media, {
        "etag": lambda row: {"etag": draw(st.sampled_from([None, "", "e1", "e2"]))},
        "size_bytes": lambda row: {"size_bytes": draw(st.sampled_from([None, 0, 7]))},
        "url": lambda row: {"url": "u\\v"},
        "type": lambda row: {"type": "video" if row["type"] == "image" else "image"},
        "post": lambda row: {"post": draw(st.sampled_from(sorted(posts)))},  # filed under another
    })
    if posts and draw(st.booleans()):  # a key filed under a post of another model than the key names
        keys = sorted(o.key for o in objects if o.key.startswith(root) and is_text(o.key) and "\x00" not in o.key)
        key = draw(st.sampled_from(keys)) if keys and draw(st.booleans()) else root + "Zo\u00eb/raw/1.jpg"
        media[key] = media_row(key, draw(st.sampled_from(sorted(posts))), size_bytes=1, etag="e1")
    if posts and draw(st.booleans()):  # a key outside the root, with characters COPY escapes
        media["elsewhere\tx.jpg"] = media_row("elsewhere\tx.jpg", draw(st.sampled_from(sorted(posts))), etag="")
    return database_holding({"model": models, "post": posts, "media": media})


def media_row(key: str, post: str, *, size_bytes=None, etag=None) -> dict:
    return {"s3_key": key, "post": post, "url": "u", "type": "image", "size_bytes": size_bytes, "etag": etag}


def engine_reading(rows: dict, starts: list[str]) -> Current:
    """The database ``rows`` as the engine reads one: every row in the range of the
    model it is filed under, a range from each of ``starts`` (a model's key order,
    ``name + "/"``) to the next, as the database is copied a range at a time."""
    los = ["", *sorted(set(starts) - {""})]
    whole = current_of_rows(CREATORS, rows)
    [(_, held)] = whole.ranges
    top = plan_key(CREATORS.top.name)

    def in_range(frame: pl.DataFrame, i: int) -> pl.DataFrame:
        where = [bisect.bisect_right(los, name + "/") - 1 == i for name in frame[top]]
        return frame.filter(pl.Series(where, dtype=pl.Boolean))

    ranges = [(lo, Rows({kind: in_range(held.frame(kind), i) for kind in CREATORS.kinds})) for i, lo in enumerate(los)]
    return Current(ranges=ranges, counts=whole.counts)


def plan_file(changes, path) -> bytes:
    """The bytes of a plan file holding ``changes`` (the rest of it fixed)."""
    plan = Plan(changes=changes, source={"url": "s3://b/", "object_count": 0, "skipped": {}},
                target={"database": "db", "scope": None, "state_digest": "0" * 64}, tool_version="t",
                created_at="2026-11-21T10:00:00Z")
    with open(write_plan(plan, str(path)), "rb") as f:
        return f.read()


@settings(max_examples=120)  # 200 took a third of a minute; the golden plans and the catalogue property hold batching too
@given(st.data(), _roots, st.booleans(), st.sampled_from([1, 3]))
def test_a_plan_in_batches_is_the_plan_in_one_byte_for_byte(tmp_path_factory, data, root, moves, batch_rows):
    """A model at a time or a few, in memory or spilled to files, the database read in
    one range of models or in several: the same plan file."""
    objects = data.draw(plan_listings(root), label="listing")
    current = data.draw(databases(objects, root), label="database")
    one = plan_from_rows(objects, current, CREATORS, cdn_base_url=CDN, root=root, moves=moves)
    assert one.batches == 1
    expected = [c.to_dict() for c in one.changes]
    folder = tmp_path_factory.mktemp("plans")
    reference = plan_file(one.changes, folder / "one.json")

    batched = plan_from_rows(objects, current, CREATORS, cdn_base_url=CDN, root=root, moves=moves,
                             batch_rows=batch_rows)
    if batch_rows == 1:  # every model with a recognised key is a batch of its own
        assert batched.batches >= len(desired_state(objects, cdn_base_url=CDN, root=root)["model"])
    filed_under = sorted({post["model"] + "/" for post in current["post"]})
    starts = data.draw(st.lists(st.sampled_from(filed_under)), label="ranges") if filed_under else []
    spill = Spill(rows=2)
    try:
        spilled = plan_changes(classify_listing(objects, CREATORS, root=root, spill=spill),
                               engine_reading(current, starts), CREATORS, cdn_base_url=CDN, root=root, moves=moves,
                               batch_rows=batch_rows, spill=spill)
        for name, got in (("batched", batched), ("spilled", spilled)):
            assert [c.to_dict() for c in got.changes] == expected
            assert got.changes.summary() == one.changes.summary()
            assert got.current_counts == one.current_counts
            assert plan_file(got.changes, folder / f"{name}.json") == reference
    finally:
        spill.close()


@settings(max_examples=100)
@given(st.data(), _roots, st.booleans())
def test_the_plan_takes_any_database_to_the_desired_state(data, root, moves):
    """Applied to the rows it was made from, the plan gives the desired rows: every
    ``before`` is what the row held, and nothing is left over."""
    objects = data.draw(plan_listings(root), label="listing")
    current = data.draw(databases(objects, root), label="database")
    result = plan_from_rows(objects, current, CREATORS, cdn_base_url=CDN, root=root, moves=moves)
    changes = list(result.changes)
    assert patch(images(current), changes) == images(desired_state(objects, cdn_base_url=CDN, root=root))
    assert changes == sorted(changes, key=change_order(CREATORS.kinds))
    assert result.current_counts == {kind: len(current[kind]) for kind in CREATORS.kinds}


def test_batches_are_ranges_of_models_in_key_order():
    counts = {"Alice": 2, "Alice Smith": 2, "Bob": 5, "Carol": 1}
    # In key order "Alice Smith/" sorts before "Alice/".
    assert batch_bounds(counts, 4) == ["Bob/", "Carol/"]
    assert batch_bounds(counts, 3) == ["Alice/", "Bob/", "Carol/"]
    assert batch_bounds(counts, 100) == []
    assert batch_bounds({"Huge": 10, "Small": 1}, 2) == ["Small/"]


# --------------------------------------------------------------------------- the current media, read back


def test_the_current_media_read_back_exactly_as_stored(settings, sql, tmp_path):
    """Values COPY escapes (backslash, tab, line breaks, a literal \\N) and the empty
    string come back from the planner's copy as they are, NULL as None: a plain query
    of the table agrees."""
    import itertools

    import psycopg2

    from reconciler import commands
    from reconciler.store.current import RangeCopies

    keys = ["A/P/back\\slash.jpg", "A/P/tab\there.jpg", "A/P/nl\nx.jpg", "A/P/cr\rx.jpg", "A/P/\\N.jpg",
            "A/P/plain.jpg"]
    objects = [ObjectInfo(k, i, f"e{i}", None) for i, k in enumerate(keys)]
    settings.allow_empty_source = True
    commands.apply(settings, write_plan(commands.make_plan(settings, objects=objects), str(tmp_path / "p.json")))
    sql("UPDATE whitelabel_media SET etag = '' WHERE s3_key = 'A/P/plain.jpg'")
    sql("UPDATE whitelabel_media SET etag = NULL WHERE s3_key = 'A/P/nl\nx.jpg'")
    conn = psycopg2.connect(settings.database)
    try:
        with conn:
            names = itertools.count()
            copies = RangeCopies(CREATORS, batch_rows=10**6,
                                 path=lambda suffix: str(tmp_path / f"{next(names)}{suffix}"))
            copies.run(conn, None)
            [(_, copied)] = copies.ranges()
            frame = copied.frame("media")
    finally:
        conn.close()
    stored = sql("SELECT m.s3_key, mo.folder_name || '/' || p.folder_name, m.url, m.type, m.size_bytes, m.etag "
                 "FROM whitelabel_media m JOIN whitelabel_posts p ON p.id = m.whitelabel_post_id "
                 "JOIN whitelabel_models mo ON mo.id = p.whitelabel_model_id")
    fields = CREATORS.entity("media").fields
    assert sorted(frame.select(fields).iter_rows()) == sorted(stored)
    got = dict((k, e) for k, e in frame.select("s3_key", "etag").iter_rows())
    assert got["A/P/plain.jpg"] == "" and got["A/P/nl\nx.jpg"] is None and set(got) == set(keys)
    # The planner sees the edited ETags as drift: two updates, nothing else.
    changes = commands.make_plan(settings, objects=objects).changes
    assert sorted(c.key for c in changes if c.kind == "media") == ["A/P/nl\nx.jpg", "A/P/plain.jpg"]
