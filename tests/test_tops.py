"""Status cards per top key (reconciler/controller/tops.py), without I/O: which check a
key's status is read from, which keys have changes not applied, and a card's numbers."""

from __future__ import annotations

from hypothesis import given, strategies as st

from reconciler import ObjectInfo, plan_from_rows
from reconciler.controller.tops import Check, TopStatus, changes_by_top, covering, pending_keys, status_of
from reconciler.engine.diff import ACTIONS
from reconciler.planfile import Plan

from .conftest import CDN, CREATORS, PRODUCTS, database_holding, desired_state

KINDS = CREATORS.kinds

_keys = st.builds(lambda m, p, f: f"{m}/{p}/{f}", st.sampled_from(["Alice", "Bob", "Zoë"]),
                  st.sampled_from(["Beach", "Hike"]), st.sampled_from(["1.jpg", "2.mp4", "notes.txt"]))
_listings = st.lists(st.builds(ObjectInfo, st.one_of(_keys, st.sampled_from(["Alice/cover.jpg", "Bob/profile/icon.png",
                                                                           "readme.md"])),
                               st.integers(0, 3), st.sampled_from(["e1", "e2"])),
                     max_size=12, unique_by=lambda o: o.key)


def plan_of(changes, catalogue=CREATORS) -> Plan:
    return Plan(changes=changes, source={"url": "s3://media"}, target={}, tool_version="test",
                kinds=catalogue.kinds, descriptor=catalogue)


@given(_listings, _listings)
def test_the_changes_per_top_key_add_up_to_the_plans_summary(before, now):
    """However a plan's changes fall to models, each is counted once, under one model."""
    rows = database_holding(desired_state(before))
    plan = plan_of(plan_from_rows(now, rows, CREATORS, cdn_base_url=CDN).changes)
    added: dict = {k: dict.fromkeys(ACTIONS, 0) for k in KINDS}
    for counts in changes_by_top(plan).values():
        for kind, actions in counts.items():
            for action, n in actions.items():
                added[kind][action] += n
    assert added == plan.summary


def test_a_product_images_changes_fall_to_their_product():
    objects = [ObjectInfo("products/p42/500g/hero-card/a.jpg", 1, "e1"), ObjectInfo("products/p7/250g/info-card/b.png", 1, "e2")]
    known = {"product": {"p42", "p7"}, "variant": {"p42/500g", "p7/250g"}}
    plan = plan_of(plan_from_rows(objects, {}, PRODUCTS, cdn_base_url=CDN, known=known).changes, PRODUCTS)
    assert changes_by_top(plan) == {"p42": {"image": {"create": 1, "update": 0, "move": 0, "delete": 0}},
                                    "p7": {"image": {"create": 1, "update": 0, "move": 0, "delete": 0}}}


FULL = Check(1, "planned", None, "2026-01-01T00:00:00Z")
ALICE = Check(2, "applied", ("Alice",), "2026-01-01T00:05:00Z")
BOB = Check(3, "discarded", ("Bob",), "2026-01-01T00:06:00Z")
CHECKS = [BOB, ALICE, FULL]  # newest first


def test_a_key_is_read_from_the_newest_check_that_covered_it():
    assert covering(CHECKS, "Alice") is ALICE and covering(CHECKS, "Bob") is BOB and covering(CHECKS, "Zoë") is FULL
    assert covering([ALICE], "Zoë") is None


def test_changes_are_pending_under_the_newest_open_check_of_each_key():
    """The full check found work for Alice, Bob and Zoë; Alice's own check since was
    applied (nothing pending), Bob's discarded (its changes still are)."""
    changes = {1: {"Alice": {}, "Bob": {}, "Zoë": {}}, 2: {"Alice": {}}, 3: {"Bob": {}}}
    assert pending_keys(CHECKS, changes.__getitem__) == {"Bob", "Zoë"}


def test_a_card_in_the_terms_of_the_product_image_system():
    card = status_of("p7", ("image",), in_database=True, records={"image": 3}, check=FULL,
                     tally={"objects": 4, "skipped": {"unknown_image_type": 1}},
                     changes={"image": {"create": 1, "update": 1, "move": 0, "delete": 1}})
    assert card.to_dict() == {
        "key": "p7", "state": "out_of_sync", "in_sync": False, "in_database": True,
        "checked": {"run": 1, "status": "planned", "planned_at": "2026-01-01T00:00:00Z", "scope": None},
        "objects": 4, "skipped": {"unknown_image_type": 1}, "skipped_total": 1,
        "records": 3, "records_in_sync": 1,
        "to_create": 1, "to_update": 1, "to_move": 0, "to_delete": 1,
        "kinds": {"image": {"records": 3, "records_in_sync": 1, "create": 1, "update": 1, "move": 0, "delete": 1}},
    }


def test_an_applied_check_leaves_nothing_pending_and_no_check_says_so():
    applied = status_of("Alice", KINDS, in_database=True, records={"model": 1, "post": 1, "media": 2}, check=ALICE,
                        tally={"objects": 3}, changes={"media": {"create": 2}})
    assert applied.state == "in_sync" and applied.total(*ACTIONS) == 0 and applied.in_sync() == 4
    unchecked = status_of("Alice", KINDS, in_database=True, records={"model": 1}, check=None, tally=None, changes=None)
    assert unchecked.state == "not_checked" and unchecked.to_dict()["checked"] is None
    assert unchecked.objects is None and unchecked.to_dict()["records"] == 1
    # A run from before tallies were kept: its objects are unknown, not 0.
    assert status_of("Bob", KINDS, in_database=True, records={}, check=FULL, tally=None, changes=None).objects is None


@given(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5), st.integers(0, 5))
def test_records_in_sync_are_those_no_change_touches(records, updates, moves, deletes):
    card = TopStatus("p42", ("image",), True, {"image": records}, FULL, 0, {},
                     {"image": {"create": 0, "update": updates, "move": moves, "delete": deletes}})
    assert card.in_sync() == max(0, records - updates - moves - deletes)
    assert card.state == ("in_sync" if updates + moves + deletes == 0 else "out_of_sync")
