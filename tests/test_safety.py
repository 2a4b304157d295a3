"""Safety guards against the real PostgreSQL: no accidental wipe, delete limits."""

from __future__ import annotations

import json

import pytest

from reconciler import commands
from reconciler.errors import SafetyError
from reconciler.layout import ObjectInfo
from reconciler.planfile import write_plan
from reconciler.safety import Limits, check_delete_limits

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


def test_delete_limit_messages_name_what_can_be_changed():
    # At plan time the flags work; at apply time only the config file does (apply has no such flags).
    with pytest.raises(SafetyError, match=r"\(--max-delete or safety\.max_delete\)"):
        check_delete_limits(4, 9, Limits(max_delete=3))
    for limits, key in ((Limits(max_delete=3), "max_delete"), (Limits(max_delete_percent=10), "max_delete_percent")):
        with pytest.raises(SafetyError) as e:
            check_delete_limits(4, 9, limits, when="plan being applied")
        assert f"(safety.{key} in the config file given with --config or RECONCILER_CONFIG)" in str(e.value)
        assert "--max-delete" not in str(e.value)


def test_apply_time_limit_error_on_the_command_line(cli, database_url, tmp_path):
    folder_bucket(tmp_path / "b", "M/P/1.jpg", "M/P/2.jpg")
    common = ["--database", database_url, "--cdn-base-url", CDN]
    assert cli("plan", "--source", "b", "-o", "p.json", *common).code == 0
    assert cli("apply", "p.json", *common).code == 0
    (tmp_path / "b" / "M" / "P" / "2.jpg").unlink()
    assert cli("plan", "--source", "b", "-o", "d.json", *common).code == 0
    (tmp_path / "cfg.yaml").write_text("safety:\n  max_delete: 0\n")
    r = cli("apply", "d.json", "--config", "cfg.yaml", *common)
    assert r.code == 1
    assert r.err == (
        "error: the plan being applied deletes 1 row(s), more than max-delete 0 (safety.max_delete in the config "
        "file given with --config or RECONCILER_CONFIG); check the source, or raise the limit if the deletion is "
        "intended\n"
    )
