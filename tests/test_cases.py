"""Case files as data: each ``tests/cases/*.json`` is a small bucket listing with the
desired rows it must give under the creators catalogue, through the planner's engine
(``build_desired``, and ``plan_from_rows`` for the plans). Add a case by adding a file; no code.

A case file holds (each row without the fields its plan key spells: a model's
``folder_name``, a post's ``model`` and ``folder_name``, a media item's ``s3_key``)::

    {
      "description": "what the case shows",
      "cdn_base_url": "https://cdn.example.test",
      "root": "media/",              (optional, default "")
      "models": ["Alice"],           (optional: the --model filter)
      "objects": ["Alice/a.jpg", {"key": "Alice/P/1.jpg", "size": 3, "etag": "x"}, ...],
      "expected": {
        "models": {"Alice": {"thumbnail_url": ..., "icon_url": ..., "banner_url": ..., "post_count": 1}},
        "posts":  {"Alice/P": {"title": "P", "media_cdns": {"images": [...], "videos": [...]}}},
        "media":  {"Alice/P/1.jpg": {"post": "Alice/P", "url": ..., "type": "image", "size_bytes": 3, "etag": "x"}},
        "object_count": 2,
        "skipped": {"reason": count},
        "skipped_examples": {"reason": [keys]}      (optional)
      }
    }
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler import ObjectInfo, plan_from_rows
from reconciler.engine.plan import _plan_key_of

from .conftest import CREATORS, database_holding, desired_state

CASES = sorted((Path(__file__).parent / "cases").glob("*.json"))


def load_case(path: Path) -> dict:
    return json.loads(path.read_text("utf-8"))


def objects_of(case: dict) -> list[ObjectInfo]:
    return [ObjectInfo(o) if isinstance(o, str) else ObjectInfo(**o) for o in case["objects"]]


SECTIONS = {"model": "models", "post": "posts", "media": "media"}


def case_row(kind: str, key: str, image: dict) -> dict:
    """A row's full image in the case files' shape: without the fields its plan key
    spells — its key columns, and its parent when the key is unique within the parent
    (``Alice/Beach``: model and folder_name) — which must spell it."""
    e = CREATORS.entity(kind)
    assert _plan_key_of(e, image) == key
    spelled = e.key_columns + ((e.parent,) if e.unique == "parent" else ())
    return {f: v for f, v in image.items() if f not in spelled}


def rows_of(state) -> dict:
    """The desired state as plain JSON-like data, in the case files' shape."""
    rows = {section: {key: case_row(kind, key, image) for key, image in state[kind].items()}
            for kind, section in SECTIONS.items()}
    return {**rows, "object_count": state.object_count, "skipped": dict(state.skipped)}


def options(case: dict) -> dict:
    """The planner's options a case file sets."""
    return {"cdn_base_url": case["cdn_base_url"], "root": case.get("root", "")}


def build(case: dict, objects: list[ObjectInfo]):
    return desired_state(objects, models=case.get("models"), **options(case))


def plan(case: dict, objects: list[ObjectInfo], current: dict, **kwargs):
    return plan_from_rows(objects, current, CREATORS, scope=case.get("models"), **options(case), **kwargs)


def test_there_are_case_files():
    assert len(CASES) >= 5


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case(path):
    case = load_case(path)
    expected = case["expected"]
    state = build(case, objects_of(case))
    assert rows_of(state) == {k: expected[k] for k in ("models", "posts", "media", "object_count", "skipped")}, case[
        "description"
    ]
    if "skipped_examples" in expected:
        assert state.skipped_examples == expected["skipped_examples"]


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case_does_not_depend_on_listing_order(path):
    case = load_case(path)
    objects = objects_of(case)
    forward = rows_of(build(case, objects))
    assert rows_of(build(case, objects[::-1])) == forward
    assert rows_of(build(case, sorted(objects))) == forward


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case_against_an_empty_database_creates_every_row(path):
    case = load_case(path)
    expected = case["expected"]
    changes = plan(case, objects_of(case), {}).changes
    assert {(c.kind, c.key) for c in changes} == {(kind, k) for kind, s in SECTIONS.items() for k in expected[s]}
    assert all(c.action == "create" for c in changes)
    created = {(c.kind, c.key): c.after for c in changes}
    for kind, section in SECTIONS.items():
        for key, row in expected[section].items():
            assert case_row(kind, key, created[kind, key]) == row


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case_against_a_database_that_holds_it_plans_nothing(path):
    case = load_case(path)
    objects = objects_of(case)
    current = database_holding(build(case, objects))
    expected = case["expected"]
    for batch_rows in (1, 100_000):  # a model at a time, or all at once
        result = plan(case, objects, current, batch_rows=batch_rows)
        assert list(result.changes) == []
        assert result.current_counts == {
            "model": len(expected["models"]), "post": len(expected["posts"]), "media": len(expected["media"]),
        }
