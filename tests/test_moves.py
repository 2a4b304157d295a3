"""Renamed folders as moves (reconciler.engine.moves): pure, listings in memory, no database."""

from __future__ import annotations

from reconciler import ObjectInfo, plan_from_rows
from reconciler.engine.diff import Change
from reconciler.engine.moves import find_moves
from reconciler.planfile import check_identity

from .conftest import CDN, CREATORS, database_holding, desired_state


def obj(key: str, etag: str | None = None, size: int = 10) -> ObjectInfo:
    return ObjectInfo(key, size, etag if etag is not None else "etag-" + key.rsplit("/", 1)[-1], None)


def plan_between(old: list[ObjectInfo], new: list[ObjectInfo], moves: bool = True):
    """The changes that take a database holding ``old`` to ``new``."""
    current = database_holding(desired_state(old))
    return plan_from_rows(new, current, CREATORS, cdn_base_url=CDN, moves=moves).changes


def actions(changes) -> list[tuple]:
    return [(c.kind, c.action, c.from_key, c.key) if c.action == "move" else (c.kind, c.action, c.key)
            for c in changes]


BEACH = [obj("Alice/a.jpg"), obj("Alice/Beach Dya/1.jpg"), obj("Alice/Beach Dya/2.mp4")]


def test_a_renamed_post_folder_is_a_post_move_with_its_media():
    renamed = [obj("Alice/a.jpg"), obj("Alice/Beach Day/1.jpg"), obj("Alice/Beach Day/2.mp4")]
    changes = plan_between(BEACH, renamed)
    assert actions(changes) == [
        ("post", "move", "Alice/Beach Dya", "Alice/Beach Day"),
        ("media", "move", "Alice/Beach Dya/1.jpg", "Alice/Beach Day/1.jpg"),
        ("media", "move", "Alice/Beach Dya/2.mp4", "Alice/Beach Day/2.mp4"),
    ]
    post, media = changes[0], changes[1]
    assert post.before == {"model": "Alice", "folder_name": "Beach Dya", "title": "Beach Dya",
                           "media_cdns": {"images": [f"{CDN}/Alice/Beach%20Dya/1.jpg"],
                                          "videos": [f"{CDN}/Alice/Beach%20Dya/2.mp4"]}}
    assert post.after["folder_name"] == "Beach Day" and post.after["title"] == "Beach Day"
    # Key columns and parent always; size, etag and type are equal, so they are left out.
    assert media.before == {"s3_key": "Alice/Beach Dya/1.jpg", "post": "Alice/Beach Dya",
                            "url": f"{CDN}/Alice/Beach%20Dya/1.jpg"}
    assert media.after == {"s3_key": "Alice/Beach Day/1.jpg", "post": "Alice/Beach Day",
                           "url": f"{CDN}/Alice/Beach%20Day/1.jpg"}
    assert media.to_dict()["from"] == "Alice/Beach Dya/1.jpg"


def test_a_renamed_model_folder_moves_the_model_its_posts_and_media():
    old = BEACH + [obj("Alice/profile/icon.png"), obj("Alice/Trip/x.jpg")]
    new = [obj("Alicia/" + o.key.partition("/")[2], o.etag) for o in old]
    changes = plan_between(old, new)
    assert actions(changes) == [
        ("model", "move", "Alice", "Alicia"),
        ("post", "move", "Alice/Beach Dya", "Alicia/Beach Dya"),
        ("post", "move", "Alice/Trip", "Alicia/Trip"),
        ("media", "move", "Alice/Beach Dya/1.jpg", "Alicia/Beach Dya/1.jpg"),
        ("media", "move", "Alice/Beach Dya/2.mp4", "Alicia/Beach Dya/2.mp4"),
        ("media", "move", "Alice/Trip/x.jpg", "Alicia/Trip/x.jpg"),
    ]
    model = changes[0]
    assert model.before == {"folder_name": "Alice", "thumbnail_url": f"{CDN}/Alice/a.jpg",
                            "icon_url": f"{CDN}/Alice/profile/icon.png"}
    assert model.after == {"folder_name": "Alicia", "thumbnail_url": f"{CDN}/Alicia/a.jpg",
                           "icon_url": f"{CDN}/Alicia/profile/icon.png"}
    post = changes[1]
    assert post.before["model"] == "Alice" and post.after["model"] == "Alicia"
    assert "title" not in post.after  # the post folder kept its name


def test_a_model_renamed_into_another_batch_is_still_a_move():
    # Planned a few rows at a time, models in key order: "Alice" and "Bob" in the first
    # batch, "Zed" in the next. The moves are found over every batch.
    old = BEACH + [obj("Bob/Trip/1.jpg"), obj("Bob/Trip/2.jpg")]
    new = [obj("Zed/" + o.key.partition("/")[2], o.etag) for o in BEACH] + old[3:]
    current = database_holding(desired_state(old))
    batched = plan_from_rows(new, current, CREATORS, cdn_base_url=CDN, batch_rows=2)
    assert batched.batches > 1
    assert actions(batched.changes) == [
        ("model", "move", "Alice", "Zed"),
        ("post", "move", "Alice/Beach Dya", "Zed/Beach Dya"),
        ("media", "move", "Alice/Beach Dya/1.jpg", "Zed/Beach Dya/1.jpg"),
        ("media", "move", "Alice/Beach Dya/2.mp4", "Zed/Beach Dya/2.mp4"),
    ]
    assert batched.changes == plan_between(old, new)


def test_content_changed_during_the_rename_is_not_a_move():
    renamed = [obj("Alice/a.jpg"), obj("Alice/Beach Day/1.jpg", "edited"), obj("Alice/Beach Day/2.mp4")]
    changes = plan_between(BEACH, renamed)
    # The video moved; the edited image did not, so the post did not move whole.
    assert actions(changes) == [
        ("post", "create", "Alice/Beach Day"),
        ("post", "delete", "Alice/Beach Dya"),
        ("media", "create", "Alice/Beach Day/1.jpg"),
        ("media", "move", "Alice/Beach Dya/2.mp4", "Alice/Beach Day/2.mp4"),
        ("media", "delete", "Alice/Beach Dya/1.jpg"),
    ]


def test_a_new_file_beside_the_moved_ones_keeps_the_post_move():
    renamed = [obj("Alice/a.jpg"), obj("Alice/Beach Day/1.jpg"), obj("Alice/Beach Day/2.mp4"),
               obj("Alice/Beach Day/3.jpg")]
    assert actions(plan_between(BEACH, renamed)) == [
        ("post", "move", "Alice/Beach Dya", "Alice/Beach Day"),
        ("media", "create", "Alice/Beach Day/3.jpg"),
        ("media", "move", "Alice/Beach Dya/1.jpg", "Alice/Beach Day/1.jpg"),
        ("media", "move", "Alice/Beach Dya/2.mp4", "Alice/Beach Day/2.mp4"),
    ]


def test_duplicated_content_is_never_a_guessed_move():
    old = [obj("A/P/1.jpg", "same"), obj("A/P/2.jpg", "same"), obj("A/Q/k.jpg")]
    new = [obj("A/R/1.jpg", "same"), obj("A/R/2.jpg", "same"), obj("A/Q/k.jpg")]
    changes = plan_between(old, new)
    assert not [c for c in changes if c.action == "move"]
    # One deleted copy and two new copies are ambiguous too.
    old = [obj("A/P/1.jpg", "same"), obj("A/Q/k.jpg")]
    new = [obj("A/R/1.jpg", "same"), obj("A/S/1.jpg", "same"), obj("A/Q/k.jpg")]
    assert not [c for c in plan_between(old, new) if c.action == "move"]


def test_same_etag_but_another_size_is_not_a_move():
    old = [obj("A/P/1.jpg", "e", 1)]
    new = [obj("A/R/1.jpg", "e", 2)]
    assert not [c for c in plan_between(old, new) if c.action == "move"]


def test_objects_without_an_etag_never_move():
    old = [ObjectInfo("A/P/1.jpg", 5, None, None)]
    new = [ObjectInfo("A/R/1.jpg", 5, None, None)]
    assert not [c for c in plan_between(old, new) if c.action == "move"]


def test_posts_moved_into_another_existing_model_are_not_post_moves():
    # Bob's post went under Alice, who exists: the media keep their rows, the post
    # folder is re-created under Alice (a post moves across models only with its model).
    old = [obj("Alice/a.jpg"), obj("Bob/Trip/1.jpg"), obj("Bob/b.jpg")]
    new = [obj("Alice/a.jpg"), obj("Alice/Trip/1.jpg"), obj("Bob/b.jpg")]
    assert actions(plan_between(old, new)) == [
        ("model", "update", "Alice"),
        ("model", "update", "Bob"),
        ("post", "create", "Alice/Trip"),
        ("post", "delete", "Bob/Trip"),
        ("media", "move", "Bob/Trip/1.jpg", "Alice/Trip/1.jpg"),
    ]


def test_two_posts_merged_into_one_are_not_post_moves():
    old = [obj("A/P/1.jpg"), obj("A/Q/2.jpg")]
    new = [obj("A/R/1.jpg"), obj("A/R/2.jpg")]
    assert [a for a in actions(plan_between(old, new)) if a[0] == "post"] == [
        ("post", "create", "A/R"),
        ("post", "delete", "A/P"),
        ("post", "delete", "A/Q"),
    ]


def test_a_model_split_in_two_is_not_a_model_move():
    old = [obj("A/P/1.jpg"), obj("A/Q/2.jpg")]
    new = [obj("B/P/1.jpg"), obj("C/Q/2.jpg")]
    changes = plan_between(old, new)
    assert [a for a in actions(changes) if a[0] != "media"] == [
        ("model", "create", "B"),
        ("model", "create", "C"),
        ("model", "delete", "A"),
        ("post", "create", "B/P"),
        ("post", "create", "C/Q"),
        ("post", "delete", "A/P"),
        ("post", "delete", "A/Q"),
    ]


def test_no_moves_plans_renames_as_delete_and_create():
    renamed = [obj("Alice/a.jpg"), obj("Alice/Beach Day/1.jpg"), obj("Alice/Beach Day/2.mp4")]
    assert {c.action for c in plan_between(BEACH, renamed, moves=False)} == {"create", "delete"}


def test_find_moves_leaves_plans_without_deletes_alone():
    changes = [Change("create", "media", "A/P/1.jpg", None, {"s3_key": "A/P/1.jpg", "post": "A/P", "url": "u",
                                                             "type": "image", "size_bytes": 1, "etag": "e"})]
    assert find_moves(changes, CREATORS) is changes


def test_a_move_inverts_to_the_move_back():
    renamed = [obj("Alice/a.jpg"), obj("Alice/Beach Day/1.jpg"), obj("Alice/Beach Day/2.mp4")]
    move = plan_between(BEACH, renamed)[1]
    back = move.inverse()
    assert (back.action, back.key, back.from_key) == ("move", move.from_key, move.key)
    assert back.before == move.after and back.after == move.before
    # Its images name its keys: the new one after, the old one before.
    assert (back.after["s3_key"], back.before["s3_key"]) == (back.key, back.from_key)
    assert check_identity(back.to_dict(), CREATORS) is None


def test_a_move_round_trips_through_a_dict():
    renamed = [obj("Alice/a.jpg"), obj("Alice/Beach Day/1.jpg"), obj("Alice/Beach Day/2.mp4")]
    for c in plan_between(BEACH, renamed):
        assert Change.from_dict(c.to_dict()) == c
