"""The changes between a listing and a database, as the planner makes them
(``plan_from_rows``: the engine over rows in memory), and a change as data. Pure: no
database."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from reconciler import ObjectInfo, plan_from_rows
from reconciler.current import CurrentState
from reconciler.desired import MediaRow, ModelRow, PostRow
from reconciler.diff import Change, full_image, summarize

from .conftest import CDN, database_holding, desired_state, images, patch

ALICE = ModelRow(thumbnail_url=f"{CDN}/Alice/a.jpg", icon_url=None, banner_url=None, post_count=1)
BEACH = PostRow(title="Beach", media_cdns={"images": [f"{CDN}/Alice/Beach/1.jpg"], "videos": []})
ONE = MediaRow(post="Alice/Beach", url=f"{CDN}/Alice/Beach/1.jpg", type="image", size_bytes=10, etag="e1")
# The listing that gives exactly those three rows.
ALICE_LISTING = [ObjectInfo("Alice/a.jpg"), ObjectInfo("Alice/Beach/1.jpg", 10, "e1")]


def current_of(models=(), posts=(), media=()) -> CurrentState:
    """Current rows as the database would stream them: (key, row) pairs in key order."""
    return CurrentState(models=sorted(dict(models).items()), posts=sorted(dict(posts).items()),
                        media=sorted(dict(media).items()))


def plan(objects, current: CurrentState | None = None, **kwargs):
    """The changes from ``current`` (an empty database by default) to ``objects``."""
    return plan_from_rows(objects, current or CurrentState(), cdn_base_url=CDN, **kwargs)


# --------------------------------------------------------------------------- create / update / delete


def test_nothing_to_do():
    result = plan([])
    assert result.changes == [] and result.current_counts == {"model": 0, "post": 0, "media": 0}


def test_the_listing_gives_the_rows_the_examples_use():
    state = desired_state(ALICE_LISTING)
    assert (state.models, state.posts, state.media) == (
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
    result = plan([], current_of({"Alice": ALICE}, {"Alice/Beach": BEACH}, {"Alice/Beach/1.jpg": ONE}))
    changes = list(result.changes)
    assert [(c.action, c.kind, c.key) for c in changes] == [
        ("delete", "model", "Alice"),
        ("delete", "post", "Alice/Beach"),
        ("delete", "media", "Alice/Beach/1.jpg"),
    ]
    assert changes[0].before == full_image("model", "Alice", ALICE)
    assert changes[1].before == {"model": "Alice", "folder_name": "Beach", **BEACH._asdict()}
    assert changes[2].before == {"s3_key": "Alice/Beach/1.jpg", **ONE._asdict()}
    assert all(c.after is None for c in changes)
    assert result.current_counts == {"model": 1, "post": 1, "media": 1}


def test_update_carries_only_the_changed_fields():
    # The database's rows: Alice with a second post counted, Beach without its image.
    old_alice = ALICE._replace(post_count=2)
    old_beach = BEACH._replace(media_cdns={"images": [], "videos": []})
    # The bucket: an icon added, the image re-sized and edited.
    listing = [ObjectInfo("Alice/a.jpg"), ObjectInfo("Alice/profile/icon.png"),
               ObjectInfo("Alice/Beach/1.jpg", 11, "e2")]
    result = plan(listing, current_of({"Alice": old_alice}, {"Alice/Beach": old_beach}, {"Alice/Beach/1.jpg": ONE}))
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


def test_equal_rows_make_no_change_even_as_plain_tuples():
    # The database hands back plain tuples; equal values are no change.
    result = plan(
        ALICE_LISTING,
        current_of({"Alice": tuple(ALICE)}, {"Alice/Beach": tuple(BEACH)}, {"Alice/Beach/1.jpg": tuple(ONE)}),
    )
    assert result.changes == []


def test_planning_leaves_its_inputs_untouched():
    # The same listing and rows planned twice give the same changes: nothing is consumed.
    listing = ALICE_LISTING + [ObjectInfo("Alice/Trip/2.jpg", 1, "e9")]
    current = current_of({"Bob": ALICE}, {"Bob/Beach": BEACH}, {"Bob/Beach/1.jpg": ONE._replace(post="Bob/Beach")})
    first = [c.to_dict() for c in plan(listing, current).changes]
    assert [c.to_dict() for c in plan(listing, current).changes] == first
    assert [k for k, _ in current.models] == ["Bob"] and [k for k, _ in current.media] == ["Bob/Beach/1.jpg"]
    assert [o.key for o in listing] == ["Alice/a.jpg", "Alice/Beach/1.jpg", "Alice/Trip/2.jpg"]


def test_changes_are_ordered_by_kind_then_action_then_key():
    # Alphabetically "media" < "model" < "post" and "create" < "delete" < "update":
    # the order is the design's instead (parents first; create, update, delete).
    listing = [ObjectInfo("b/x/2.jpg", 10, "e1"), ObjectInfo("b/x/1.jpg", 10, "new"), ObjectInfo("c/y.jpg")]
    current = current_of(
        {"a": ALICE, "c": ALICE},
        {"a/x": BEACH},
        {"a/x/1.jpg": ONE._replace(post="a/x", url=f"{CDN}/a/x/1.jpg"),
         "b/x/1.jpg": ONE._replace(post="b/x", url=f"{CDN}/b/x/1.jpg")},
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


@settings(max_examples=100)
@given(listings)
def test_against_an_empty_database_the_plan_creates_exactly_the_desired_rows(objects):
    state = desired_state(objects)
    changes = list(plan(objects).changes)
    assert all(c.action == "create" and c.before is None for c in changes)
    created = {(c.kind, c.key): c.after for c in changes}
    expected = {(kind, key): image for kind, rows in images(state).items() for key, image in rows.items()}
    assert created == expected
    assert [c.sort_key for c in changes] == sorted(c.sort_key for c in changes)


@settings(max_examples=100)
@given(listings, st.sampled_from([1, 3, 100_000]))
def test_against_a_database_equal_to_desired_the_plan_is_empty(objects, batch_rows):
    state = desired_state(objects)
    result = plan(objects, database_holding(state), batch_rows=batch_rows)
    assert result.changes == []
    assert result.current_counts == {"model": len(state.models), "post": len(state.posts), "media": len(state.media)}


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
    assert [c.sort_key for c in changes] == sorted(c.sort_key for c in changes)
    assert result.changes.summary() == summarize(changes)
    assert result.current_counts == {"model": len(old.models), "post": len(old.posts), "media": len(old.media)}
