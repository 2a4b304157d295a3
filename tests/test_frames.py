"""The planner's engine on its own terms (reconciler.frames, reconciler.engine).

The desired state a listing gives follows the layout rules key by key, whatever the
keys hold (lone surrogates, NUL, control characters), the root and the scope; and a
plan made a batch of models at a time — in memory or spilled to files — is the plan
made in one batch, byte for byte, over generated listings and database states."""

from __future__ import annotations

import bisect
import random
from collections import Counter
from urllib.parse import quote

from hypothesis import given, settings, strategies as st

from reconciler import plan_from_rows
from reconciler.current import CurrentState
from reconciler.desired import SKIPPED_EXAMPLES, MediaRow, ModelRow, PostRow
from reconciler.engine import Current, Rows, batch_bounds, plan_changes
from reconciler.frames import classify_listing
from reconciler.layout import OUTSIDE_ROOT, Banner, Icon, Layout, Media, ModelImage, ObjectInfo, Skip, classify
from reconciler.planfile import Plan, write_plan
from reconciler.shards import Shard
from reconciler.spill import Spill

from .conftest import desired_state, images, patch

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


def by_the_rules(objects, root: str, scope, layout: Layout):
    """Each object in scope, one key at a time, as the layout rules and the database
    take it: ``(object, item)`` if recognised, ``(key, reason)`` if skipped."""
    recognised, skipped = [], []
    for o in objects:
        if not o.key.startswith(root):
            skipped.append((o.key, OUTSIDE_ROOT))
            continue
        rel = o.key[len(root):]
        if scope is not None and rel.partition("/")[0] not in scope:
            continue  # another model's: not counted at all
        item = classify(rel, layout)
        if type(item) is Skip:
            skipped.append((o.key, item.reason))
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


def first_key(recognised, model: str, kind, media_type: str | None = None) -> str | None:
    """The first key (sorted) of a kind of item of ``model``, or None."""
    return min((o.key for o, i in recognised
                if i.model == model and type(i) is kind and (media_type is None or i.type == media_type)),
               default=None)


def shown(key: str, reason: str) -> str:
    """A skipped key as its example shows it: valid text, NUL spelled out."""
    text = key.encode("utf-8", "replace").decode("utf-8")
    return text.replace("\x00", "\\0") if reason == "invalid_key" else text


def url(key: str | None) -> str | None:
    return None if key is None else CDN.rstrip("/") + "/" + quote(key, safe="/")


@settings(max_examples=300)
@given(listings, _roots, _scopes)
def test_the_desired_state_follows_the_layout_rules_key_by_key(objects, root, scope):
    layout = Layout()
    state = desired_state(objects, cdn_base_url=CDN, root=root, layout=layout, models=scope)
    recognised, skipped = by_the_rules(objects, root, scope, layout)

    # Every object in scope is counted once: recognised, or skipped for its reason.
    assert state.object_count == len(recognised) + len(skipped)
    assert state.recognised == len(recognised)
    assert state.skipped == Counter(reason for _, reason in skipped)
    assert state.skipped_examples == {
        reason: [shown(k, r) for k, r in skipped if r == reason][:SKIPPED_EXAMPLES] for reason in state.skipped
    }

    # Every recognised media key is one media row, its URL the key quoted ...
    media = [(o, i) for o, i in recognised if type(i) is Media]
    assert state.media == {
        o.key: MediaRow(f"{i.model}/{i.post}", url(o.key), i.type, o.size, o.etag) for o, i in media
    }
    # ... listed exactly once, in its own post, by type, in key order.
    assert set(state.posts) == {row.post for row in state.media.values()}
    for pkey, post in state.posts.items():
        mine = sorted((k, row) for k, row in state.media.items() if row.post == pkey)
        assert post == PostRow(pkey.partition("/")[2], {
            "images": [row.url for _, row in mine if row.type == "image"],
            "videos": [row.url for _, row in mine if row.type == "video"],
        })

    # A model for every model folder with a recognised key, in name order; the first
    # key (sorted) of each kind wins; the thumbnail falls back to the first post image.
    assert list(state.models) == sorted({i.model for _, i in recognised})
    for name, row in state.models.items():
        thumbnail = first_key(recognised, name, ModelImage) or first_key(recognised, name, Media, "image")
        posts = {i.post for _, i in media if i.model == name}
        assert row == ModelRow(url(thumbnail), url(first_key(recognised, name, Icon)),
                               url(first_key(recognised, name, Banner)), len(posts))


@settings(max_examples=100)
@given(listings, _roots, _scopes, st.randoms(use_true_random=False))
def test_the_order_of_the_listing_does_not_matter(objects, root, scope, rng: random.Random):
    def rows(listing):
        state = desired_state(listing, cdn_base_url=CDN, root=root, models=scope)
        return state.models, state.posts, state.media, state.object_count, state.skipped

    shuffled = list(objects)
    rng.shuffle(shuffled)
    assert rows(shuffled) == rows(objects) == rows(objects[::-1])


@settings(max_examples=50)
@given(listings, _roots, st.integers(1, 4))
def test_shard_scopes_divide_the_desired_state(objects, root, n):
    whole = desired_state(objects, cdn_base_url=CDN, root=root)
    parts = [desired_state(objects, cdn_base_url=CDN, root=root, models=Shard(k, n)) for k in range(1, n + 1)]
    for k, part in enumerate(parts, 1):
        assert all(name in Shard(k, n) for name in part.models)
    for kind in ("models", "posts", "media"):
        union = [item for part in parts for item in getattr(part, kind).items()]
        assert len(union) == len(getattr(whole, kind)) and dict(union) == getattr(whole, kind)
    # Keys outside the root belong to no model: every shard counts them.
    assert sum(p.object_count for p in parts) == whole.object_count + (n - 1) * whole.skipped[OUTSIDE_ROOT]


@settings(max_examples=100)
@given(listings, _roots, _scopes, st.integers(1, 4))
def test_chunks_of_the_listing_give_the_same_state(objects, root, scope, chunk):
    from reconciler import frames

    whole = desired_state(objects, cdn_base_url=CDN, root=root, models=scope)
    saved, frames.CHUNK = frames.CHUNK, chunk
    try:
        chunked = desired_state(objects, cdn_base_url=CDN, root=root, models=scope)
    finally:
        frames.CHUNK = saved
    assert chunked == whole


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
def databases(draw, objects: list[ObjectInfo], root: str) -> CurrentState:
    """A database as a plan for ``objects`` finds it: the rows an earlier listing gave
    (:func:`earlier_listings`), then changed by other writers — fields edited, rows
    gone, rows as plain tuples, a row whose key names another model than the post it
    is filed under, a key outside the root, a model the bucket no longer has."""
    state = desired_state(earlier_listings(draw, objects, root), cdn_base_url=CDN, root=root)
    models, posts, media = dict(state.models), dict(state.posts), dict(state.media)

    if draw(st.booleans()):  # a model the bucket no longer has
        models["Gone"] = ModelRow(None, None, None, 1)
        posts["Gone/P"] = PostRow("P", {"images": ["u"], "videos": []})
        media[root + "Gone/P/1.jpg"] = MediaRow("Gone/P", "u", "image", 3, "e3")

    def edit(rows: dict, edits: dict) -> None:
        """Some rows dropped or replaced by one of ``edits`` (name → new row from old)."""
        for key in sorted(draw(st.sets(st.sampled_from(sorted(rows)), max_size=4))) if rows else ():
            how = draw(st.sampled_from(["drop", "tuple", *edits]))
            row = rows.pop(key)
            if how == "tuple":
                rows[key] = tuple(row)
            elif how != "drop":
                rows[key] = edits[how](row)

    # The database's foreign keys hold: a dropped model takes its posts, a post its media.
    edit(models, {
        "post_count": lambda row: row._replace(post_count=row.post_count + 1),
        "thumbnail_url": lambda row: row._replace(thumbnail_url=draw(st.sampled_from([None, "u"]))),
    })
    posts = {k: row for k, row in posts.items() if k.partition("/")[0] in models}
    edit(posts, {
        "title": lambda row: row._replace(title="T"),
        "media_cdns": lambda row: row._replace(media_cdns={"images": [], "videos": []}),
    })
    media = {k: row for k, row in media.items() if row[0] in posts}
    edit(media, {
        "etag": lambda row: row._replace(etag=draw(st.sampled_from([None, "", "e1", "e2"]))),
        "size_bytes": lambda row: row._replace(size_bytes=draw(st.sampled_from([None, 0, 7]))),
        "url": lambda row: row._replace(url="u\\v"),
        "type": lambda row: row._replace(type="video" if row.type == "image" else "image"),
        "post": lambda row: row._replace(post=draw(st.sampled_from(sorted(posts)))),  # filed under another
    })
    if posts and draw(st.booleans()):  # a key filed under a post of another model than the key names
        keys = sorted(o.key for o in objects if o.key.startswith(root) and is_text(o.key) and "\x00" not in o.key)
        key = draw(st.sampled_from(keys)) if keys and draw(st.booleans()) else root + "Zo\u00eb/raw/1.jpg"
        media[key] = MediaRow(draw(st.sampled_from(sorted(posts))), "u", "image", 1, "e1")
    if posts and draw(st.booleans()):  # a key outside the root, with characters COPY escapes
        media["elsewhere\tx.jpg"] = MediaRow(draw(st.sampled_from(sorted(posts))), "u", "image", None, "")
    return CurrentState(models=sorted(models.items()), posts=sorted(posts.items()), media=sorted(media.items()))


def engine_reading(rows: CurrentState, starts: list[str]) -> Current:
    """The database ``rows`` as the engine reads one: posts and media in ranges of the
    models they are filed under, a range from each of ``starts`` (a model's key order,
    ``name + "/"``) to the next, as the database is copied a range at a time."""
    los = ["", *sorted(set(starts) - {""})]
    posts: list[list] = [[] for _ in los]
    media: list[list] = [[] for _ in los]
    for key, row in rows.posts:
        posts[bisect.bisect_right(los, key.partition("/")[0] + "/") - 1].append((key, row))
    for key, row in rows.media:
        media[bisect.bisect_right(los, row[0].partition("/")[0] + "/") - 1].append((key, row))
    return Current(models=list(rows.models), ranges=[(lo, Rows.of(p, m)) for lo, p, m in zip(los, posts, media)])


def plan_file(changes, path) -> bytes:
    """The bytes of a plan file holding ``changes`` (the rest of it fixed)."""
    plan = Plan(changes=changes, source={"url": "s3://b/", "object_count": 0, "skipped": {}},
                target={"database": "db", "scope": None, "state_digest": "0" * 64}, tool_version="t",
                created_at="2026-11-21T10:00:00Z")
    with open(write_plan(plan, str(path)), "rb") as f:
        return f.read()


@settings(max_examples=200)
@given(st.data(), _roots, st.booleans(), st.sampled_from([1, 3]))
def test_a_plan_in_batches_is_the_plan_in_one_byte_for_byte(tmp_path_factory, data, root, moves, batch_rows):
    """A model at a time or a few, in memory or spilled to files, the database read in
    one range of models or in several: the same plan file."""
    objects = data.draw(plan_listings(root), label="listing")
    current = data.draw(databases(objects, root), label="database")
    one = plan_from_rows(objects, current, cdn_base_url=CDN, root=root, moves=moves)
    assert one.batches == 1
    expected = [c.to_dict() for c in one.changes]
    folder = tmp_path_factory.mktemp("plans")
    reference = plan_file(one.changes, folder / "one.json")

    batched = plan_from_rows(objects, current, cdn_base_url=CDN, root=root, moves=moves, batch_rows=batch_rows)
    if batch_rows == 1:  # every model with a recognised key is a batch of its own
        assert batched.batches >= len(desired_state(objects, cdn_base_url=CDN, root=root).models)
    filed_under = sorted({key.partition("/")[0] + "/" for key, _ in current.posts})
    starts = data.draw(st.lists(st.sampled_from(filed_under)), label="ranges") if filed_under else []
    spill = Spill(rows=2)
    try:
        spilled = plan_changes(classify_listing(objects, root=root, spill=spill), engine_reading(current, starts),
                               cdn_base_url=CDN, moves=moves, batch_rows=batch_rows, spill=spill)
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
    result = plan_from_rows(objects, current, cdn_base_url=CDN, root=root, moves=moves)
    changes = list(result.changes)
    assert patch(images(current), changes) == images(desired_state(objects, cdn_base_url=CDN, root=root))
    assert [c.sort_key for c in changes] == sorted(c.sort_key for c in changes)
    assert result.current_counts == {"model": len(current.models), "post": len(current.posts),
                                     "media": len(current.media)}


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
    string come back from the planner's copy as they are, NULL as None: the row reader
    agrees."""
    import itertools

    import psycopg2

    from reconciler import commands
    from reconciler.current import RangeCopies, read_state

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
            copies = RangeCopies(batch_rows=10**6, path=lambda suffix: str(tmp_path / f"{next(names)}{suffix}"))
            copies.run(conn, None)
            [(_, copied)] = copies.ranges()
            frame = copied.media()
            rows = dict(read_state(conn).media)
    finally:
        conn.close()
    assert {k: tuple(r) for k, *r in frame.iter_rows()} == {k: tuple(r) for k, r in rows.items()}
    got = dict((k, e) for k, e in frame.select("s3_key", "etag").iter_rows())
    assert got["A/P/plain.jpg"] == "" and got["A/P/nl\nx.jpg"] is None and set(got) == set(keys)
    # The planner sees the edited ETags as drift: two updates, nothing else.
    changes = commands.make_plan(settings, objects=objects).changes
    assert sorted(c.key for c in changes if c.kind == "media") == ["A/P/nl\nx.jpg", "A/P/plain.jpg"]
