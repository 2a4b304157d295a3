"""Safety guards against the real PostgreSQL: no accidental wipe, delete limits, the default
guards against a partial listing and a wrong cdn_base_url."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from reconciler import commands
from reconciler.engine.diff import Change, ChangeList
from reconciler.errors import SafetyError
from reconciler.objects import ObjectInfo
from reconciler.planfile import write_plan
from reconciler.engine.safety import DEFAULT_PERCENT, GUARDED_FROM, Limits, check_delete_limits, check_url_rewrites, url_rewrites

from .conftest import CDN, CREATORS, folder_bucket

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
    listing = BUCKET[:3]  # Bob's model, post and 2 media go: 4 of the 8 rows in scope (50%)
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


# --------------------------------------------------------------------------- default guards

# Eleven creators, a post and two media each: 44 rows. A listing that saw only two of
# them (a reader that dropped pages) plans the deletion of the other nine, and
# everything under them: 36 of 44 rows.
ELEVEN = [ObjectInfo(f"Model{m:02d}/Post/{i}.jpg", 1, "e", None) for m in range(11) for i in (1, 2)]
TWO_OF_ELEVEN = ELEVEN[:4]


@pytest.fixture
def eleven(settings, tmp_path):
    commands.apply(settings, write_plan(commands.make_plan(settings, objects=ELEVEN), str(tmp_path / "p0.json")))
    return settings


def test_a_partial_listing_is_refused_by_default(eleven):
    with pytest.raises(SafetyError) as e:
        commands.make_plan(eleven, objects=TWO_OF_ELEVEN)
    assert str(e.value) == (
        "the plan deletes 36 of 44 row(s) in scope (81.8%), more than the default max-delete-percent 50: a listing "
        "that missed objects plans exactly this. Check the source; if the deletion is intended, set the limit to "
        "100 (--max-delete-percent or safety.max_delete_percent)"
    )


def test_the_default_delete_guard_is_lifted_by_a_limit(eleven):
    eleven.max_delete_percent = 100
    assert commands.make_plan(eleven, objects=TWO_OF_ELEVEN).summary["model"]["delete"] == 9
    eleven.max_delete_percent = 90  # any limit set replaces the default
    assert commands.make_plan(eleven, objects=TWO_OF_ELEVEN).summary["model"]["delete"] == 9


def test_half_of_the_rows_may_go_without_a_limit(eleven):
    # Five of eleven models go: 20 of 44 rows.
    assert commands.make_plan(eleven, objects=ELEVEN[:12]).summary["model"]["delete"] == 5


def test_a_small_catalogue_is_not_guarded_by_default(populated):
    # Bob, and Alice's post, go: 7 of 8 rows, in a catalogue read whole in review.
    assert commands.make_plan(populated, objects=BUCKET[:1]).summary["media"]["delete"] == 4


def test_apply_checks_the_default_delete_guard_again(eleven, tmp_path, sql):
    eleven.max_delete_percent = 100  # lifted on the command line, at plan time only
    path = write_plan(commands.make_plan(eleven, objects=TWO_OF_ELEVEN), str(tmp_path / "p1.json"))
    eleven.max_delete_percent = None  # apply reads the config file, which does not lift it
    with pytest.raises(SafetyError) as e:
        commands.apply(eleven, path)
    assert str(e.value).startswith("the plan being applied deletes 36 of 44 row(s) in scope (81.8%), more than "
                                   "the default max-delete-percent 50")
    assert str(e.value).endswith("set the limit to 100 (safety.max_delete_percent in the config file given with "
                                 "--config or RECONCILER_CONFIG)")
    assert sql("SELECT count(*) FROM whitelabel_models") == [(11,)]
    eleven.max_delete_percent = 100
    commands.apply(eleven, path)
    assert sql("SELECT count(*) FROM whitelabel_models") == [(2,)]


def test_a_rollback_is_not_held_to_the_default_guards(populated, tmp_path, sql):
    """A rollback is made from the audit log, not from a listing: undoing an import of
    44 rows into a catalogue of 8 deletes most of it, and is what was asked for. A
    limit that is set still holds."""
    result = commands.apply(populated, write_plan(commands.make_plan(populated, objects=BUCKET + ELEVEN),
                                                  str(tmp_path / "p1.json")))
    commands.rollback(populated, result.apply_id, str(tmp_path / "rb.json"))
    populated.max_delete_percent = 80
    with pytest.raises(SafetyError, match=r"deletes 44 of 52 row\(s\) in scope \(84\.6%\), more than max-delete-percent 80"):
        commands.apply(populated, str(tmp_path / "rb.json"))
    populated.max_delete_percent = None
    commands.apply(populated, str(tmp_path / "rb.json"))
    assert sql("SELECT count(*) FROM whitelabel_media") == [(4,)]


def test_a_new_cdn_base_url_is_refused_by_default(eleven, tmp_path, sql):
    eleven.cdn_base_url = "https://media.example.internal"
    with pytest.raises(SafetyError) as e:
        commands.make_plan(eleven, objects=ELEVEN)
    assert str(e.value) == (
        "the plan rewrites the URL of 22 of 22 media row(s) in scope to https://media.example.internal/<key> "
        "(100.0%), more than the default max-url-rewrite-percent 50. Check cdn_base_url (--cdn-base-url, "
        "RECONCILER_CDN_BASE_URL); if the new URLs are intended, set the limit to 100 (--max-url-rewrite-percent "
        "or safety.max_url_rewrite_percent)"
    )
    eleven.max_url_rewrite_percent = 100
    path = write_plan(commands.make_plan(eleven, objects=ELEVEN), str(tmp_path / "p1.json"))
    eleven.max_url_rewrite_percent = None
    with pytest.raises(SafetyError, match=r"^the plan being applied rewrites the URL of 22 of 22 media row\(s\) in "
                                          r"scope \(100\.0%\).*safety\.max_url_rewrite_percent in the config file"):
        commands.apply(eleven, path)
    assert sql("SELECT count(*) FROM whitelabel_media WHERE url LIKE 'https://media.%'") == [(0,)]
    eleven.max_url_rewrite_percent = 100
    commands.apply(eleven, path)
    assert sql("SELECT count(*) FROM whitelabel_media WHERE url LIKE 'https://media.%'") == [(22,)]


def test_a_changed_object_keeps_its_url_and_is_no_rewrite(eleven):
    changed = [ObjectInfo(o.key, 2, "f", None) for o in ELEVEN]  # every object replaced: new size and etag
    plan = commands.make_plan(eleven, objects=changed)
    assert plan.summary["media"]["update"] == 22


def test_a_small_catalogue_may_change_its_urls(populated):
    populated.cdn_base_url = "https://media.example.internal"
    assert commands.make_plan(populated, objects=BUCKET).summary["media"]["update"] == 4


# --------------------------------------------------------------------------- the guards' arithmetic


def test_default_guard_thresholds():
    for rows, deletes, refused in ((19, 19, False), (20, 10, False), (20, 11, True), (1000, 501, True)):
        if refused:
            with pytest.raises(SafetyError, match="default max-delete-percent 50"):
                check_delete_limits(deletes, rows, Limits())
            with pytest.raises(SafetyError, match="default max-url-rewrite-percent 50"):
                check_url_rewrites(deletes, rows, Limits())
        else:
            check_delete_limits(deletes, rows, Limits())
            check_url_rewrites(deletes, rows, Limits())
        check_delete_limits(deletes, rows, Limits(), defaults=False)
        check_url_rewrites(deletes, rows, Limits(), defaults=False)
        check_delete_limits(deletes, rows, Limits(max_delete_percent=100))
        check_url_rewrites(deletes, rows, Limits(max_url_rewrite_percent=100))


@given(rows=st.integers(0, 10**7), share=st.floats(0, 1), limit=st.none() | st.floats(0, 100), defaults=st.booleans())
def test_a_percentage_guard_refuses_exactly_above_its_limit(rows, share, limit, defaults):
    count = int(rows * share)
    in_force = limit if limit is not None else (DEFAULT_PERCENT if defaults and rows >= GUARDED_FROM else None)
    refused = in_force is not None and rows > 0 and 100.0 * count / rows > in_force
    for check, limits in ((check_delete_limits, Limits(max_delete_percent=limit)),
                          (check_url_rewrites, Limits(max_url_rewrite_percent=limit))):
        try:
            check(count, rows, limits, defaults=defaults)
        except SafetyError:
            assert refused
        else:
            assert not refused


def test_url_rewrites_counts_media_whose_url_changes_under_the_same_key():
    url = {"url": "https://a/M/P/1.jpg"}, {"url": "https://b/M/P/1.jpg"}
    changes = [
        Change("update", "media", "M/P/1.jpg", *url),
        Change("update", "media", "M/P/2.jpg", {"etag": "a"}, {"etag": "b"}),
        Change("move", "media", "N/P/1.jpg", {"s3_key": "M/P/3.jpg", **url[0]}, {"s3_key": "N/P/1.jpg", **url[1]},
               from_key="M/P/3.jpg"),
        Change("update", "model", "M", {"icon_url": "https://a/i"}, {"icon_url": "https://b/i"}),
    ]
    # Of the creators catalogue's rows, media alone hold an object's URL ({url}).
    assert url_rewrites(changes, CREATORS) == (1, ["media"])
    assert url_rewrites(ChangeList([changes[:2], changes[2:]], CREATORS.kinds), CREATORS) == (1, ["media"])
