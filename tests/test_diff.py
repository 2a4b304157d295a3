"""The typed diff between desired and current state. Pure: in-memory rows, no database."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from reconciler.current import CurrentState
from reconciler.desired import DesiredState, MediaRow, ModelRow, PostRow, build_desired
from reconciler.diff import Change, diff, full_image, summarize
from reconciler.layout import ObjectInfo

CDN = "https://cdn.example.test"

ALICE = ModelRow(thumbnail_url=f"{CDN}/Alice/a.jpg", icon_url=None, banner_url=None, post_count=1)
BEACH = PostRow(title="Beach", media_cdns={"images": [f"{CDN}/Alice/Beach/1.jpg"], "videos": []})
ONE = MediaRow(post="Alice/Beach", url=f"{CDN}/Alice/Beach/1.jpg", type="image", size_bytes=10, etag="e1")


def desired_of(models=None, posts=None, media=None) -> DesiredState:
    return DesiredState(models=dict(models or {}), posts=dict(posts or {}), media=dict(media or {}))


def current_of(models=(), posts=(), media=()) -> CurrentState:
    """Current rows as the database would stream them: (key, row) pairs in key order."""
    return CurrentState(models=sorted(dict(models).items()), posts=sorted(dict(posts).items()),
                        media=sorted(dict(media).items()))


def current_equal_to(state: DesiredState) -> CurrentState:
    return current_of(state.models, state.posts, state.media)


# --------------------------------------------------------------------------- create / update / delete


def test_nothing_to_do():
    assert diff(desired_of(), current_of()).changes == []


def test_create_carries_every_managed_field_and_the_parent_key():
    result = diff(
        desired_of({"Alice": ALICE}, {"Alice/Beach": BEACH}, {"Alice/Beach/1.jpg": ONE}),
        current_of(),
    )
    assert result.changes == [
        Change("create", "model", "Alice", None, {
            "folder_name": "Alice",
            "thumbnail_url": f"{CDN}/Alice/a.jpg",
            "icon_url": None,
            "banner_url": None,
            "post_count": 1,
        }),
        Change("create", "post", "Alice/Beach", None, {
            "model": "Alice",
            "folder_name": "Beach",
            "title": "Beach",
            "media_cdns": {"images": [f"{CDN}/Alice/Beach/1.jpg"], "videos": []},
        }),
        Change("create", "media", "Alice/Beach/1.jpg", None, {
            "s3_key": "Alice/Beach/1.jpg",
            "post": "Alice/Beach",
            "url": f"{CDN}/Alice/Beach/1.jpg",
            "type": "image",
            "size_bytes": 10,
            "etag": "e1",
        }),
    ]
    assert result.current_counts == {"model": 0, "post": 0, "media": 0}


def test_delete_carries_the_full_before_image():
    result = diff(
        desired_of(),
        current_of({"Alice": ALICE}, {"Alice/Beach": BEACH}, {"Alice/Beach/1.jpg": ONE}),
    )
    assert [(c.action, c.kind, c.key) for c in result.changes] == [
        ("delete", "model", "Alice"),
        ("delete", "post", "Alice/Beach"),
        ("delete", "media", "Alice/Beach/1.jpg"),
    ]
    assert result.changes[0].before == full_image("model", "Alice", ALICE)
    assert result.changes[1].before == {"model": "Alice", "folder_name": "Beach", **BEACH._asdict()}
    assert result.changes[2].before == {"s3_key": "Alice/Beach/1.jpg", **ONE._asdict()}
    assert all(c.after is None for c in result.changes)
    assert result.current_counts == {"model": 1, "post": 1, "media": 1}


def test_update_carries_only_the_changed_fields():
    new_alice = ALICE._replace(icon_url=f"{CDN}/Alice/profile/icon.png", post_count=2)
    new_beach = BEACH._replace(media_cdns={"images": [], "videos": []})
    new_one = ONE._replace(etag="e2", size_bytes=11)
    result = diff(
        desired_of({"Alice": new_alice}, {"Alice/Beach": new_beach}, {"Alice/Beach/1.jpg": new_one}),
        current_of({"Alice": ALICE}, {"Alice/Beach": BEACH}, {"Alice/Beach/1.jpg": ONE}),
    )
    assert result.changes == [
        Change("update", "model", "Alice",
               {"icon_url": None, "post_count": 1},
               {"icon_url": f"{CDN}/Alice/profile/icon.png", "post_count": 2}),
        Change("update", "post", "Alice/Beach",
               {"media_cdns": {"images": [f"{CDN}/Alice/Beach/1.jpg"], "videos": []}},
               {"media_cdns": {"images": [], "videos": []}}),
        Change("update", "media", "Alice/Beach/1.jpg",
               {"size_bytes": 10, "etag": "e1"},
               {"size_bytes": 11, "etag": "e2"}),
    ]


def test_equal_rows_make_no_change_even_as_plain_tuples():
    # The database hands back plain tuples; equal values are no change.
    result = diff(
        desired_of({"Alice": ALICE}, {"Alice/Beach": BEACH}, {"Alice/Beach/1.jpg": ONE}),
        current_of({"Alice": tuple(ALICE)}, {"Alice/Beach": tuple(BEACH)}, {"Alice/Beach/1.jpg": tuple(ONE)}),
    )
    assert result.changes == []


def test_diff_leaves_the_desired_state_untouched():
    state = desired_of({"Alice": ALICE}, {"Alice/Beach": BEACH}, {"Alice/Beach/1.jpg": ONE})
    diff(state, current_of({"Bob": ALICE}))
    assert list(state.models) == ["Alice"] and list(state.posts) == ["Alice/Beach"]
    assert list(state.media) == ["Alice/Beach/1.jpg"]


def test_changes_are_ordered_by_kind_then_action_then_key():
    # Alphabetically "media" < "model" < "post" and "create" < "delete" < "update":
    # the order is the design's instead (parents first; create, update, delete).
    desired = desired_of(
        {"b": ALICE, "c": ALICE._replace(post_count=9)},
        {"b/x": BEACH},
        {"b/x/2.jpg": ONE, "b/x/1.jpg": ONE._replace(etag="new")},
    )
    current = current_of(
        {"a": ALICE, "c": ALICE},
        {"a/x": BEACH},
        {"a/x/1.jpg": ONE, "b/x/1.jpg": ONE},
    )
    assert [(c.kind, c.action, c.key) for c in diff(desired, current, moves=False).changes] == [
        ("model", "create", "b"),
        ("model", "update", "c"),
        ("model", "delete", "a"),
        ("post", "create", "b/x"),
        ("post", "delete", "a/x"),
        ("media", "create", "b/x/2.jpg"),
        ("media", "update", "b/x/1.jpg"),
        ("media", "delete", "a/x/1.jpg"),
    ]


def test_keys_order_as_python_strings():
    desired = desired_of({"b": ALICE, "B": ALICE, "é": ALICE, "a": ALICE, "Zoe\u0308": ALICE, "Zo\u00eb": ALICE})
    keys = [c.key for c in diff(desired, current_of()).changes]
    assert keys == sorted(keys) == ["B", "Zoe\u0308", "Zo\u00eb", "a", "b", "é"]


# --------------------------------------------------------------------------- Change as data


def test_inverse_swaps_create_and_delete_and_reverses_updates():
    create = Change("create", "model", "Alice", None, full_image("model", "Alice", ALICE))
    update = Change("update", "media", "A/B/1.jpg", {"etag": "old"}, {"etag": "new"})
    assert create.inverse() == Change("delete", "model", "Alice", full_image("model", "Alice", ALICE), None)
    assert update.inverse() == Change("update", "media", "A/B/1.jpg", {"etag": "new"}, {"etag": "old"})
    for change in (create, update, create.inverse()):
        assert change.inverse().inverse() == change


def test_change_round_trips_through_a_dict():
    change = Change("update", "post", "Alice/Beach", {"title": "old"}, {"title": "Beach"})
    assert change.to_dict() == {
        "action": "update", "kind": "post", "key": "Alice/Beach", "before": {"title": "old"}, "after": {"title": "Beach"},
    }
    assert Change.from_dict(change.to_dict()) == change


def test_summarize_counts_every_kind_and_action():
    changes = [
        Change("create", "model", "A", None, {}),
        Change("create", "media", "A/P/1.jpg", None, {}),
        Change("create", "media", "A/P/2.jpg", None, {}),
        Change("delete", "media", "A/P/3.jpg", {}, None),
        Change("update", "post", "A/P", {}, {}),
    ]
    changes.append(Change("move", "post", "A/Q", {}, {}, "A/R"))
    assert summarize(changes) == {
        "model": {"create": 1, "update": 0, "move": 0, "delete": 0},
        "post": {"create": 0, "update": 1, "move": 1, "delete": 0},
        "media": {"create": 2, "update": 0, "move": 0, "delete": 1},
    }
    assert summarize([]) == {k: {"create": 0, "update": 0, "move": 0, "delete": 0} for k in ("model", "post", "media")}


# --------------------------------------------------------------------------- properties over generated listings

_models = st.sampled_from(["Alice", "alice", "Bob", "Zo\u00eb", "Zoe\u0308", "A&B", ""])
_posts = st.sampled_from(["Beach", "Trip", "profile", "a b", "#1", ""])
_files = st.sampled_from(["1.jpg", "2.JPG", "3.mp4", "icon.png", "avatar.jpg", "banner.webp", "cover.gif",
                          "notes.txt", "x.mov", "é.heic", ""])
_keys = st.one_of(
    st.builds(lambda m, f: f"{m}/{f}", _models, _files),
    st.builds(lambda m, p, f: f"{m}/{p}/{f}", _models, _posts, _files),
    st.builds(lambda m, p, f: f"{m}/{p}/raw/{f}", _models, _posts, _files),
    _files,
)
listings = st.lists(
    st.builds(ObjectInfo, _keys, st.none() | st.integers(0, 3), st.none() | st.sampled_from(["e1", "e2"])),
    max_size=25,
    unique_by=lambda o: o.key,
)


def build(objects) -> DesiredState:
    return build_desired(objects, cdn_base_url=CDN)


def as_tables(models, posts, media) -> dict:
    return {"model": dict(models), "post": dict(posts), "media": dict(media)}


def patch(tables: dict, changes: list[Change]) -> dict:
    """Apply changes to in-memory tables of full images, as apply does to the database."""
    tables = {kind: dict(rows) for kind, rows in tables.items()}
    for c in changes:
        rows = tables[c.kind]
        if c.action == "create":
            assert c.key not in rows
            rows[c.key] = c.after
        elif c.action == "delete":
            assert rows.pop(c.key) == c.before
        elif c.action == "move":
            assert c.key not in rows
            row = rows.pop(c.from_key)
            assert {name: row[name] for name in c.before} == c.before
            rows[c.key] = {**row, **c.after}
        else:
            row = rows[c.key]
            assert {name: row[name] for name in c.before} == c.before
            rows[c.key] = {**row, **c.after}
    return tables


def images(state: DesiredState) -> dict:
    return {
        "model": {k: full_image("model", k, r) for k, r in state.models.items()},
        "post": {k: full_image("post", k, r) for k, r in state.posts.items()},
        "media": {k: full_image("media", k, r) for k, r in state.media.items()},
    }


@settings(max_examples=100)
@given(listings)
def test_against_an_empty_database_diff_creates_exactly_the_desired_rows(objects):
    state = build(objects)
    changes = diff(state, CurrentState()).changes
    assert all(c.action == "create" and c.before is None for c in changes)
    created = {(c.kind, c.key): c.after for c in changes}
    expected = {(kind, key): image for kind, rows in images(state).items() for key, image in rows.items()}
    assert created == expected
    assert [c.sort_key for c in changes] == sorted(c.sort_key for c in changes)


@settings(max_examples=100)
@given(listings)
def test_against_a_database_equal_to_desired_diff_is_empty(objects):
    state = build(objects)
    result = diff(state, current_equal_to(state))
    assert result.changes == []
    assert result.current_counts == {"model": len(state.models), "post": len(state.posts), "media": len(state.media)}


@settings(max_examples=100)
@given(listings, listings)
def test_diff_is_a_patch_from_current_to_desired(old_objects, new_objects):
    old, new = build(old_objects), build(new_objects)
    changes = diff(new, current_equal_to(old)).changes
    assert patch(images(old), changes) == images(new)
    # ... and the inverse changes, in reverse, take it back.
    assert patch(images(new), [c.inverse() for c in reversed(changes)]) == images(old)
    assert len({(c.kind, c.key) for c in changes}) == len(changes)
    assert [c.sort_key for c in changes] == sorted(c.sort_key for c in changes)
