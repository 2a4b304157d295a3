"""The creators catalogue plans exactly what the hand-written engine planned.

``tests/golden/plans.jsonl.gz`` holds 374 plans made before catalogues existed (see
``tests/golden/generate.py``): case files, generated buckets with awkward names, edited
and misfiled rows, renamed folders, scopes and shards — each with its inputs. Every one
must come out of today's engine byte for byte: the plan file's change lines, its
summary, what the listing skipped, and the rows counted. A subset goes through a real
database too (rows written as the platform would), so the SQL that reads the current rows is held to them as well.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from reconciler import ObjectInfo, Settings, load_catalogue, plan_from_rows
from reconciler.commands import make_plan
from reconciler.errors import ConfigError
from reconciler.planfile import Plan, write_plan
from reconciler.engine.shards import Shard

GOLDEN = Path(__file__).parent / "golden" / "plans.jsonl.gz"


def golden_plans() -> list[dict]:
    with gzip.open(GOLDEN, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


PLANS = golden_plans()
CREATORS = load_catalogue("creators")


def objects_of(plan: dict) -> list[ObjectInfo]:
    return [ObjectInfo(*o) for o in plan["objects"]]


def scope_of(plan: dict):
    scope = plan["scope"]
    if isinstance(scope, dict):
        k, n = scope["shard"].split("/")
        return Shard(int(k), int(n))
    return scope


def current_of(plan: dict) -> dict[str, list[dict]]:
    """The database rows of a golden plan (full images by kind), as the engine takes them."""
    return {kind: [image for _, image in rows] for kind, rows in plan["current"].items()}


def plan_text(result) -> dict:
    """The plan file's changes (their lines as written) and summary."""
    import os
    import tempfile

    plan = Plan(changes=result.changes, source={"url": "s3://b/", "object_count": 0, "skipped": {}},
                target={"database": "db", "scope": None, "state_digest": "0" * 64}, tool_version="t",
                created_at="2026-11-21T10:00:00Z")
    with tempfile.TemporaryDirectory() as folder:
        path = write_plan(plan, os.path.join(folder, "p.json"))
        text = Path(path).read_text("utf-8")
    data = json.loads(text)
    start = text.index('"changes": [') + len('"changes": [')
    end = text.index("\n  ],\n") if data["changes"] else start
    lines = [line.strip().rstrip(",") for line in text[start:end].splitlines() if line.strip()]
    return {"changes": lines, "summary": data["summary"]}


def test_there_are_golden_plans_of_every_kind_and_action():
    seen = {(json.loads(line)["kind"], json.loads(line)["action"]) for p in PLANS for line in p["changes"]}
    assert seen == {(k, a) for k in ("model", "post", "media") for a in ("create", "update", "move", "delete")}


@pytest.mark.parametrize("plan", PLANS, ids=[p["name"] for p in PLANS])
def test_the_engine_makes_the_golden_plan(plan):
    objects = objects_of(plan)
    for batch_rows in (100_000, 2):
        result = plan_from_rows(objects, current_of(plan), CREATORS, cdn_base_url=plan["cdn_base_url"],
                                root=plan["root"], scope=scope_of(plan), moves=plan["moves"], batch_rows=batch_rows)
        assert plan_text(result) == {"changes": plan["changes"], "summary": plan["summary"]}
        assert result.current_counts == plan["current_counts"]


def insert_rows(sql, plan: dict) -> None:
    """The golden plan's database rows, written as the platform would."""
    rows = plan["current"]
    for key, r in rows["model"]:
        sql("INSERT INTO whitelabel_models (folder_name, thumbnail_url, icon_url, banner_url, post_count) "
            "VALUES (%s, %s, %s, %s, %s)", (key, r["thumbnail_url"], r["icon_url"], r["banner_url"], r["post_count"]))
    for key, r in rows["post"]:
        sql("INSERT INTO whitelabel_posts (whitelabel_model_id, folder_name, title, media_cdns) "
            "SELECT id, %s, %s, %s FROM whitelabel_models WHERE folder_name = %s",
            (r["folder_name"], r["title"], json.dumps(r["media_cdns"]), r["model"]))
    for key, r in rows["media"]:
        model, _, post = r["post"].partition("/")
        sql("INSERT INTO whitelabel_media (whitelabel_post_id, s3_key, url, type, size_bytes, etag) "
            "SELECT p.id, %s, %s, %s, %s, %s FROM whitelabel_posts p JOIN whitelabel_models m "
            "ON m.id = p.whitelabel_model_id WHERE m.folder_name = %s AND p.folder_name = %s",
            (key, r["url"], r["type"], r["size_bytes"], r["etag"], model, post))


def unknown_models(plan: dict) -> list[str]:
    """Names in a plan's scope that are neither in its database nor made by it."""
    if not isinstance(plan["scope"], list):
        return []
    known = {k for k, _ in plan["current"]["model"]}
    known |= {json.loads(line)["key"] for line in plan["changes"] if '"kind":"model"' in line}
    return [name for name in plan["scope"] if name not in known]


THROUGH_THE_DATABASE = [p for p in PLANS if p["name"].startswith(("case:", "random:"))][::3]


@pytest.mark.parametrize("plan", THROUGH_THE_DATABASE, ids=[p["name"] for p in THROUGH_THE_DATABASE])
def test_a_database_holding_the_rows_gives_the_golden_plan(plan, database_url, sql):
    insert_rows(sql, plan)
    # The guards are not what this test is about (they refuse some of these plans by design).
    settings = Settings(database=database_url, cdn_base_url=plan["cdn_base_url"], allow_empty_source=True,
                        max_delete_percent=100, max_url_rewrite_percent=100, detect_moves=plan["moves"])
    scope = scope_of(plan)
    kwargs = {"shard": scope} if isinstance(scope, Shard) else {"models": scope}
    if unknown_models(plan):  # the command refuses a scope naming models that are nowhere
        with pytest.raises(ConfigError, match="neither in the source nor in the database"):
            make_plan(settings, objects=objects_of(plan), root=plan["root"], **kwargs)
        return
    made = make_plan(settings, objects=objects_of(plan), root=plan["root"], **kwargs)
    assert plan_text(made) == {"changes": plan["changes"], "summary": plan["summary"]}
    assert {k: made.source[k] for k in ("object_count", "skipped", "skipped_examples")} == plan["source"]
