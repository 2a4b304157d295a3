"""Case files as data: each ``tests/cases/*.json`` is a small bucket listing with the
desired rows it must give, through the planner's engine (``build_desired_frames``, and
``plan_from_rows`` for the plans). Add a case by adding a file; no code.

A case file holds::

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
from reconciler.current import CurrentState

from .conftest import database_holding, desired_state

CASES = sorted((Path(__file__).parent / "cases").glob("*.json"))


def load_case(path: Path) -> dict:
    return json.loads(path.read_text("utf-8"))


def objects_of(case: dict) -> list[ObjectInfo]:
    return [ObjectInfo(o) if isinstance(o, str) else ObjectInfo(**o) for o in case["objects"]]


def rows_of(state) -> dict:
    """The desired state as plain JSON-like data, in the case files' shape."""
    return {
        "models": {k: row._asdict() for k, row in state.models.items()},
        "posts": {k: row._asdict() for k, row in state.posts.items()},
        "media": {k: row._asdict() for k, row in state.media.items()},
        "object_count": state.object_count,
        "skipped": dict(state.skipped),
    }


def options(case: dict) -> dict:
    """The planner's options a case file sets."""
    return {"cdn_base_url": case["cdn_base_url"], "root": case.get("root", ""), "models": case.get("models")}


def build(case: dict, objects: list[ObjectInfo]):
    return desired_state(objects, **options(case))


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
    changes = plan_from_rows(objects_of(case), CurrentState(), **options(case)).changes
    assert {(c.kind, c.key) for c in changes} == (
        {("model", k) for k in expected["models"]}
        | {("post", k) for k in expected["posts"]}
        | {("media", k) for k in expected["media"]}
    )
    assert all(c.action == "create" for c in changes)
    created = {(c.kind, c.key): c.after for c in changes}
    for key, row in expected["media"].items():
        assert created["media", key] == {"s3_key": key, **row}


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case_against_a_database_that_holds_it_plans_nothing(path):
    case = load_case(path)
    objects = objects_of(case)
    current = database_holding(build(case, objects))
    expected = case["expected"]
    for batch_rows in (1, 100_000):  # a model at a time, or all at once
        result = plan_from_rows(objects, current, **options(case), batch_rows=batch_rows)
        assert list(result.changes) == []
        assert result.current_counts == {
            "model": len(expected["models"]), "post": len(expected["posts"]), "media": len(expected["media"]),
        }
