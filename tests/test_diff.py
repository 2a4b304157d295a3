"""The changes between a listing and a database, as the planner makes them
(``plan_from_rows``: the engine over rows in memory), and a change as data. Pure: no
database."""

from __future__ import annotations

import copy

from hypothesis import given, settings, strategies as st

from reconciler import ObjectInfo, plan_from_rows
from reconciler.engine.diff import Change, change_order, summarize

from .conftest import CDN, CREATORS, database_holding, desired_state, images, patch, reordered

# Rows as full images: what a create carries and a delete's before holds.
ALICE = {"folder_name": "Alice", "thumbnail_url": f"{CDN}/Alice/a.jpg", "icon_url": None, "banner_url": None,
         "post_count": 1}
BEACH = {"model": "Alice", "folder_name": "Beach", "title": "Beach",
         "media_cdns": {"images": [f"{CDN}/Alice/Beach/1.jpg"], "videos": []}}
ONE = {"s3_key": "Alice/Beach/1.jpg", "post": "Alice/Beach", "url": f"{CDN}/Alice/Beach/1.jpg", "type": "image",
       "size_bytes": 10, "etag": "e1"}
# The listing that gives exactly those three rows.
ALICE_LISTING = [ObjectInfo("Alice/a.jpg"), ObjectInfo("Alice/Beach/1.jpg", 10, "e1")]
ORDER = change_order(CREATORS.kinds)


def current_of(models=(), posts=(), media=()) -> dict:
    """A database holding these rows (full images), by kind."""
    return {"model": list(models), "post": list(posts), "media": list(media)}


def plan(objects, current: dict | None = None, **kwargs):
    """The changes from ``current`` (an empty database by default) to ``objects``."""
    return plan_from_rows(objects, current or {}, CREATORS, cdn_base_url=CDN, **kwargs)


# --------------------------------------------------------------------------- create / update / delete


def test_nothing_to_do():
    result = plan([])
    assert result.changes == [] and result.current_counts == {"model": 0, "post": 0, "media": 0}


def test_the_listing_gives_the_rows_the_examples_use():
    state = desired_state(ALICE_LISTING)
    assert (state["model"], state["post"], state["media"]) == (
        {"Alice": ALICE}, {"Alice/Beach": BEACH}, {"Alice/Beach/1.jpg": ONE})


def test_create_carries_every_managed_field_and_the_parent_key():
    result = plan(ALICE_LISTING)
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
    result = plan([], current_of([ALICE], [BEACH], [ONE]))
    changes = list(result.changes)
    assert [(c.action, c.kind, c.key) for c in changes] == [
        ("delete", "model", "Alice"),
        ("delete", "post", "Alice/Beach"),
        ("delete", "media", "Alice/Beach/1.jpg"),
    ]
    assert changes[0].before == ALICE
    assert changes[1].before == BEACH
    assert changes[2].before == ONE
    assert all(c.after is None for c in changes)
    assert result.current_counts == {"model": 1, "post": 1, "media": 1}


def test_update_carries_only_the_changed_fields():
    # The database's rows: Alice with a second post counted, Beach without its image.
    old_alice = {**ALICE, "post_count": 2}
    old_beach = {**BEACH, "media_cdns": {"images": [], "videos": []}}
    # The bucket: an icon added, the image re-sized and edited.
    listing = [ObjectInfo("Alice/a.jpg"), ObjectInfo("Alice/profile/icon.png"),
               ObjectInfo("Alice/Beach/1.jpg", 11, "e2")]
    result = plan(listing, current_of([old_alice], [old_beach], [ONE]))
    assert result.changes == [
        Change("update", "model", "Alice",
               {"icon_url": None, "post_count": 2},
               {"icon_url": f"{CDN}/Alice/profile/icon.png", "post_count": 1}),
        Change("update", "post", "Alice/Beach",
               {"media_cdns": {"images": [], "videos": []}},
               {"media_cdns": {"images": [f"{CDN}/Alice/Beach/1.jpg"], "videos": []}}),
        Change("update", "media", "Alice/Beach/1.jpg",
               {"size_bytes": 10, "etag": "e1"},
               {"size_bytes": 11, "etag": "e2"}),
    ]


def test_equal_rows_make_no_change_whatever_the_order_of_their_fields():
    # Equal values are no change: fields, and the keys of a JSON value, in another order
    # (jsonb hands back its own) are the same row.
    result = plan(ALICE_LISTING, current_of([reordered(ALICE)], [reordered(BEACH)], [reordered(ONE)]))
    assert list(reordered(BEACH)["media_cdns"]) == ["videos", "images"]
    assert result.changes == []


def test_planning_leaves_its_inputs_untouched():
    # The same listing and rows planned twice give the same changes: nothing is consumed.
    listing = ALICE_LISTING + [ObjectInfo("Alice/Trip/2.jpg", 1, "e9")]
    current = current_of([{**ALICE, "folder_name": "Bob"}], [{**BEACH, "model": "Bob"}],
                         [{**ONE, "s3_key": "Bob/Beach/1.jpg", "post": "Bob/Beach"}])
    kept = copy.deepcopy(current)
    first = [c.to_dict() for c in plan(listing, current).changes]
    assert [c.to_dict() for c in plan(listing, current).changes] == first
    assert current == kept
    assert [o.key for o in listing] == ["Alice/a.jpg", "Alice/Beach/1.jpg", "Alice/Trip/2.jpg"]


def test_changes_are_ordered_by_kind_then_action_then_key():
    # Alphabetically "media" < "model" < "post" and "create" < "delete" < "update":
    # the order is the design's instead (parents first; create, update, delete).
    listing = [ObjectInfo("b/x/2.jpg", 10, "e1"), ObjectInfo("b/x/1.jpg", 10, "new"), ObjectInfo("c/y.jpg")]
    current = current_of(
        [{**ALICE, "folder_name": "a"}, {**ALICE, "folder_name": "c"}],
        [{**BEACH, "model": "a", "folder_name": "x"}],
        [{**ONE, "s3_key": "a/x/1.jpg", "post": "a/x", "url": f"{CDN}/a/x/1.jpg"},
         {**ONE, "s3_key": "b/x/1.jpg", "post": "b/x", "url": f"{CDN}/b/x/1.jpg"}],
    )
    assert [(c.kind, c.action, c.key) for c in plan(listing, current, moves=False).changes] == [
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
    names = ["b", "B", "é", "a", "Zoe\u0308", "Zo\u00eb", "\U0001f600", "\uffff"]
    changes = plan([ObjectInfo(f"{m}/P/1.jpg") for m in names]).changes
    for kind in ("model", "post", "media"):
        keys = [c.key for c in changes if c.kind == kind]
        assert keys == sorted(keys) and len(keys) == len(names)
    assert [c.key for c in changes if c.kind == "model"] == [
        "B", "Zoe\u0308", "Zo\u00eb", "a", "b", "é", "\uffff", "\U0001f600"]


# --------------------------------------------------------------------------- Change as data


def test_inverse_swaps_create_and_delete_and_reverses_updates():
    create = Change("create", "model", "Alice", None, ALICE)
    update = Change("update", "media", "A/B/1.jpg", {"etag": "old"}, {"etag": "new"})
    assert create.inverse() == Change("delete", "model", "Alice", ALICE, None)
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
    assert summarize(changes, CREATORS.kinds) == {
        "model": {"create": 1, "update": 0, "move": 0, "delete": 0},
        "post": {"create": 0, "update": 1, "move": 1, "delete": 0},
        "media": {"create": 2, "update": 0, "move": 0, "delete": 1},
    }
    assert summarize([], CREATORS.kinds) == {
        k: {"create": 0, "update": 0, "move": 0, "delete": 0} for k in ("model", "post", "media")}


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


@settings(max_examples=100)
@given(listings)
def test_against_an_empty_database_the_plan_creates_exactly_the_desired_rows(objects):
    state = desired_state(objects)
    changes = list(plan(objects).changes)
    assert all(c.action == "create" and c.before is None for c in changes)
    created = {(c.kind, c.key): c.after for c in changes}
    expected = {(kind, key): image for kind, rows in images(state).items() for key, image in rows.items()}
    assert created == expected
    assert changes == sorted(changes, key=ORDER)


@settings(max_examples=100)
@given(listings, st.sampled_from([1, 3, 100_000]))
def test_against_a_database_equal_to_desired_the_plan_is_empty(objects, batch_rows):
    state = desired_state(objects)
    result = plan(objects, database_holding(state), batch_rows=batch_rows)
    assert result.changes == []
    assert result.current_counts == {kind: len(state[kind]) for kind in ("model", "post", "media")}


@settings(max_examples=100)
@given(listings, listings, st.booleans())
def test_the_plan_is_a_patch_from_current_to_desired(old_objects, new_objects, moves):
    old, new = desired_state(old_objects), desired_state(new_objects)
    result = plan(new_objects, database_holding(old), moves=moves)
    changes = list(result.changes)
    assert patch(images(old), changes) == images(new)
    # ... and the inverse changes, in reverse, take it back.
    assert patch(images(new), [c.inverse() for c in reversed(changes)]) == images(old)
    assert len({(c.kind, c.key) for c in changes}) == len(changes)
    assert changes == sorted(changes, key=ORDER)
    assert result.changes.summary() == summarize(changes, CREATORS.kinds)
    assert result.current_counts == {kind: len(old[kind]) for kind in ("model", "post", "media")}
