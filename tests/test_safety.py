"""Safety guards against the real PostgreSQL: no accidental wipe, delete limits."""

from __future__ import annotations

import json

import pytest

from reconciler import commands
from reconciler.errors import SafetyError
from reconciler.layout import ObjectInfo
from reconciler.planfile import write_plan

from .conftest import CDN, folder_bucket

BUCKET = [ObjectInfo(k, 1, "e", None) for k in
          ["Alice/a.jpg", "Alice/Beach/1.jpg", "Alice/Beach/2.jpg", "Bob/Trip/1.jpg", "Bob/Trip/2.jpg"]]


@pytest.fixture
def populated(settings, tmp_path):
    commands.apply(settings, write_plan(commands.make_plan(settings, objects=BUCKET), str(tmp_path / "p0.json")))
    return settings


@pytest.mark.parametrize("listing", [[], [ObjectInfo("README.txt", 1, None, None)], [ObjectInfo("x/", 0, None, None)]])
def test_empty_listing_against_rows_is_refused(populated, listing):
    with pytest.raises(SafetyError, match="no recognised object.*--allow-empty-source"):
        commands.make_plan(populated, objects=listing)


def test_model_whose_prefix_lists_nothing_is_refused(populated):
    alice_only = [o for o in BUCKET if o.key.startswith("Alice/")]  # e.g. a wrong prefix for Bob
    with pytest.raises(SafetyError, match="under model\\(s\\) Bob"):
        commands.make_plan(populated, objects=alice_only, models=["Bob"])


def test_allow_empty_source_plans_the_deletion(populated):
    populated.allow_empty_source = True
    plan = commands.make_plan(populated, objects=[])
    assert plan.summary["model"]["delete"] == 2 and plan.summary["media"]["delete"] == 4


def test_empty_listing_against_empty_database_is_fine(settings):
    assert commands.make_plan(settings, objects=[]).changes == []


def test_max_delete(populated):
    listing = BUCKET[:3]  # Bob's model, post and 2 media go: 4 rows
    populated.max_delete = 3
    with pytest.raises(SafetyError, match="deletes 4 row.*max-delete 3"):
        commands.make_plan(populated, objects=listing)
    populated.max_delete = 4
    assert commands.make_plan(populated, objects=listing).summary["model"]["delete"] == 1


def test_max_delete_percent(populated):
    listing = BUCKET[:3]  # 4 of 9 rows in scope (2 models, 2 posts, 5-1 media... ) are deleted
    populated.max_delete_percent = 10
    with pytest.raises(SafetyError, match="max-delete-percent 10"):
        commands.make_plan(populated, objects=listing)


def test_apply_rechecks_limits_from_config(populated, tmp_path, sql):
    path = write_plan(commands.make_plan(populated, objects=BUCKET[:3]), str(tmp_path / "p1.json"))
    populated.max_delete = 1
    before = sql("SELECT count(*) FROM whitelabel_media")
    with pytest.raises(SafetyError, match="plan being applied deletes 4"):
        commands.apply(populated, path)
    assert sql("SELECT count(*) FROM whitelabel_media") == before


def test_cli_guard_writes_no_plan_file(cli, database_url, tmp_path):
    folder_bucket(tmp_path / "b", "M/P/1.jpg")
    common = ["--database", database_url, "--cdn-base-url", CDN]
    assert cli("plan", "--source", "b", "-o", "p.json", *common).code == 0
    assert cli("apply", "p.json", *common).code == 0
    (tmp_path / "empty").mkdir()
    r = cli("plan", "--source", "empty", "-o", "wipe.json", *common)
    assert r.code == 1 and r.err.startswith("error: the source holds no recognised object")
    assert not (tmp_path / "wipe.json").exists()
    r = cli("plan", "--source", "empty", "-o", "wipe.json", "--allow-empty-source", *common)
    assert r.code == 0
    assert json.loads((tmp_path / "wipe.json").read_text())["summary"]["model"]["delete"] == 1
    r = cli("plan", "--source", "empty", "-o", "wipe2.json", "--allow-empty-source", "--max-delete", "2", *common)
    assert r.code == 1 and "max-delete 2" in r.err and not (tmp_path / "wipe2.json").exists()
