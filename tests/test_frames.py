"""The columnar planner (reconciler.frames, reconciler.engine) against the per-key one,
which is the oracle until it is gone: the same rows, the same changes, the same bytes."""

from __future__ import annotations

import polars as pl
from hypothesis import given, settings, strategies as st

from reconciler.current import CurrentState
from reconciler.desired import build_desired
from reconciler.diff import diff, summarize
from reconciler.engine import Current, Rows, batch_bounds, plan_changes
from reconciler.frames import MEDIA_SCHEMA, build_desired_frames, classify_listing
from reconciler.layout import Layout, ObjectInfo
from reconciler.planfile import Plan, write_plan
from reconciler.shards import Shard
from reconciler.spill import Parts, Spill

CDN = "https://cdn.example.test/"

_segments = st.sampled_from(["Alice", "alice", "Bob", "Zo\u00eb", "Zoe\u0308", "A&B", "", "profile", "a b",
                             "100%+", "x\\y", "tab\there", "nl\nx", "nul\x00", "lone\ud800", "Ω", "raw", "#1"])
_files = st.sampled_from(["1.jpg", "2.JPG", "3.mp4", "icon.png", "avatar.jpg", "banner.webp", "cover.gif",
                          "Icon.PNG", "notes.txt", "x.mov", "é.heic", "", ".jpg", "noext", "a.b.jpeg", "Thumbs.db"])
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
_scopes = st.none() | st.lists(st.sampled_from(["Alice", "Bob", "Zo\u00eb", "A&B", "nope"]), min_size=1, max_size=3)


@settings(max_examples=300)
@given(listings, _roots, _scopes)
def test_the_columnar_desired_state_equals_the_per_key_one(objects, root, scope):
    layout = Layout()
    old = build_desired(objects, cdn_base_url=CDN, root=root, layout=layout, models=scope)
    new = build_desired_frames(objects, cdn_base_url=CDN, root=root, layout=layout, models=scope).to_state()
    assert new.models == old.models
    assert list(new.models) == list(old.models)
    assert new.posts == old.posts
    assert new.media == old.media
    assert (new.object_count, new.skipped, new.skipped_examples) == (old.object_count, old.skipped,
                                                                     old.skipped_examples)


@settings(max_examples=50)
@given(listings, st.integers(1, 3))
def test_a_shard_scope_is_the_same_in_both(objects, n):
    shard_old, shard_new = Shard(1, n), Shard(1, n)
    old = build_desired(objects, cdn_base_url=CDN, models=shard_old)
    new = build_desired_frames(objects, cdn_base_url=CDN, models=shard_new).to_state()
    assert (new.models, new.posts, new.media, new.object_count) == (old.models, old.posts, old.media, old.object_count)


def _current(state, spill=None) -> Current:
    """A database holding ``state`` exactly, as the engine reads one."""
    return Current(models=list(state.models.items()),
                   ranges=[("", Rows.of(list(state.posts.items()), list(state.media.items())))])


def _rows(state) -> CurrentState:
    return CurrentState(models=list(state.models.items()), posts=list(state.posts.items()),
                        media=list(state.media.items()))


def _plan_bytes(changes, path) -> bytes:
    plan = Plan(changes=changes, source={"url": "s3://b/", "object_count": 0, "skipped": {}},
                target={"database": "db", "scope": None, "state_digest": "0" * 64}, tool_version="t",
                created_at="2026-11-21T10:00:00Z")
    with open(write_plan(plan, str(path)), "rb") as f:
        return f.read()


@settings(max_examples=200)
@given(listings, listings, st.booleans(), _roots, st.sampled_from([1, 3, 1000]), st.booleans())
def test_the_engine_makes_the_same_plan_file_byte_for_byte(tmp_path_factory, before, after, moves, root,
                                                             batch_rows, spilled):
    """In one batch or in many, in memory or spilled to files, the engine's plan is the
    per-key diff's, byte for byte."""
    old_db = build_desired(before, cdn_base_url=CDN, root=root)
    expected = diff(build_desired(after, cdn_base_url=CDN, root=root), _rows(old_db), moves=moves)
    spill = Spill(rows=2) if spilled else None
    listing = classify_listing(after, root=root, spill=spill)
    got = plan_changes(listing, _current(old_db, spill), cdn_base_url=CDN, root=root, moves=moves,
                       batch_rows=batch_rows, spill=spill)
    assert [c.to_dict() for c in got.changes] == [c.to_dict() for c in expected.changes]
    assert got.changes.summary() == summarize(expected.changes)
    assert got.current_counts == expected.current_counts
    folder = tmp_path_factory.mktemp("plans")
    assert _plan_bytes(got.changes, folder / "new.json") == _plan_bytes(expected.changes, folder / "old.json")
    if spill is not None:
        spill.close()


def test_batches_are_ranges_of_models_in_key_order():
    counts = {"Alice": 2, "Alice Smith": 2, "Bob": 5, "Carol": 1}
    # In key order "Alice Smith/" sorts before "Alice/".
    assert batch_bounds(counts, 4) == ["Bob/", "Carol/"]
    assert batch_bounds(counts, 3) == ["Alice/", "Bob/", "Carol/"]
    assert batch_bounds(counts, 100) == []
    assert batch_bounds({"Huge": 10, "Small": 1}, 2) == ["Small/"]


@settings(max_examples=100)
@given(listings, _roots, _scopes, st.integers(1, 4))
def test_chunks_of_the_listing_give_the_same_state(objects, root, scope, chunk):
    from reconciler import frames

    whole = build_desired_frames(objects, cdn_base_url=CDN, root=root, models=scope).to_state()
    saved, frames.CHUNK = frames.CHUNK, chunk
    try:
        chunked = build_desired_frames(objects, cdn_base_url=CDN, root=root, models=scope).to_state()
    finally:
        frames.CHUNK = saved
    assert chunked == whole


def test_the_current_media_read_back_exactly_as_stored(settings, sql, tmp_path):
    """Values COPY escapes (backslash, tab, line breaks, a literal \\N) and the empty
    string come back from the frame as they are, NULL as None: the oracle agrees."""
    import psycopg2

    from reconciler import commands
    from reconciler.current import read_media_frame, read_state

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
            frame = read_media_frame(conn)
            rows = dict(read_state(conn).media)
    finally:
        conn.close()
    assert {k: tuple(r) for k, *r in frame.iter_rows()} == {k: tuple(r) for k, r in rows.items()}
    got = dict((k, e) for k, e in frame.select("s3_key", "etag").iter_rows())
    assert got["A/P/plain.jpg"] == "" and got["A/P/nl\nx.jpg"] is None and set(got) == set(keys)
    # The planner sees the edited ETags as drift, as the per-key diff does.
    changes = commands.make_plan(settings, objects=objects).changes
    assert sorted(c.key for c in changes if c.kind == "media") == ["A/P/nl\nx.jpg", "A/P/plain.jpg"]
