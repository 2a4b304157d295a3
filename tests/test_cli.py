"""The command line, through ``main(argv)``: exit codes, stdout, one-line errors."""

from __future__ import annotations

import json
import os

import pytest

from reconciler.cli import build_parser
from reconciler.version import __version__

from .conftest import CDN, folder_bucket


def test_version(cli):
    r = cli("--version")
    assert r.code == 0
    assert r.out.strip() == f"reconciler {__version__}"


def test_every_command_has_help(cli):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {"init", "plan", "show", "validate", "apply", "history", "rollback", "serve"}
    for name, sub in commands.items():
        assert sub.description, f"{name} lacks help text"
        r = cli(name, "--help")
        assert r.code == 0 and "usage: reconciler " + name in r.out


def test_usage_error_is_one_line_exit_1(cli):
    r = cli("plan", "--max-delete", "lots")
    assert r.code == 1
    assert r.err.startswith("error: ") and r.err.count("\n") == 1
    assert "Traceback" not in r.err


def test_unknown_command(cli):
    r = cli("frobnicate")
    assert r.code == 1 and r.err.startswith("error: ")


def test_init_is_idempotent_and_adopts(cli, empty_database_url):
    r = cli("init", "--database", empty_database_url)
    assert r.code == 0, r.err
    assert "0001_platform_tables.sql" in r.out
    r = cli("init", "--database", empty_database_url)
    assert r.code == 0 and "up to date" in r.out


def test_plan_apply_history_rollback_from_s3(cli, database_url, bucket, tmp_path):
    bucket.put("Alice/a.jpg", "Alice/Beach/1.jpg", "Alice/Beach/2.mp4", "Bob/Trip/x.png")
    common = ["--database", database_url, "--cdn-base-url", CDN]
    r = cli("plan", "--source", bucket.url, "-o", "p1.json", "--detailed-exitcode", *common)
    assert r.code == 2, r.err
    assert "Plan " in r.out and "p1.json" in r.out
    plan = json.loads((tmp_path / "p1.json").read_text())
    assert plan["summary"]["media"]["create"] == 3
    assert plan["source"]["url"] == f"s3://{bucket.name}/"

    r = cli("validate", "p1.json")
    assert r.code == 0 and "valid plan" in r.out

    r = cli("apply", "p1.json", *common)
    assert r.code == 0, r.err
    assert "as apply 1" in r.out

    r = cli("plan", "--source", bucket.url, "-o", "p2.json", "--detailed-exitcode", *common)
    assert r.code == 0, r.err
    assert "No changes" in r.out

    r = cli("history", "--format", "json", *common)
    entries = json.loads(r.out)
    assert [e["apply_id"] for e in entries] == [1]
    assert {"apply_id", "plan_id", "applied_at", "applied_by", "summary", "rolls_back"} <= set(entries[0])

    r = cli("rollback", "1", "-o", "rb.json", *common)
    assert r.code == 0, r.err
    r = cli("apply", "rb.json", *common)
    assert r.code == 0, r.err
    r = cli("history", *common)
    assert r.code == 0 and "rolls back" in r.out


def test_apply_twice_is_refused(cli, database_url, tmp_path):
    folder_bucket(tmp_path / "bucket", "M/P/1.jpg")
    common = ["--database", database_url, "--cdn-base-url", CDN]
    assert cli("plan", "--source", "bucket", "-o", "p.json", *common).code == 0
    assert cli("apply", "p.json", *common).code == 0
    r = cli("apply", "p.json", *common)
    assert r.code == 1 and "already applied" in r.err


def test_missing_bucket_is_clean_and_writes_nothing(cli, database_url, s3_env, tmp_path):
    r = cli("plan", "--source", "s3://no-such-bucket-here", "-o", "p.json", "--database", database_url,
            "--cdn-base-url", CDN)
    assert r.code == 1
    assert r.err.startswith("error: cannot list s3://no-such-bucket-here/: NoSuchBucket")
    assert r.err.count("\n") == 1
    assert not os.path.exists(tmp_path / "p.json")
    assert os.listdir(tmp_path) == []


def test_validate_refuses_hand_edited_plan(cli, database_url, tmp_path):
    folder_bucket(tmp_path / "b", "M/P/1.jpg")
    assert cli("plan", "--source", "b", "-o", "p.json", "--database", database_url, "--cdn-base-url", CDN).code == 0
    data = json.loads((tmp_path / "p.json").read_text())
    data["changes"][0]["after"]["thumbnail_url"] = "https://evil.example/x.jpg"
    (tmp_path / "p.json").write_text(json.dumps(data, indent=2, sort_keys=True))
    r = cli("validate", "p.json")
    assert r.code == 1
    assert "plan_id does not match" in r.err and "Traceback" not in r.err


def test_plan_without_init_says_what_to_do(cli, empty_database_url, tmp_path):
    (tmp_path / "b").mkdir()
    r = cli("plan", "--source", "b", "--database", empty_database_url, "--cdn-base-url", CDN, "-o", "p.json")
    assert r.code == 1 and "reconciler init" in r.err


def test_unreachable_database_hides_password(cli, tmp_path):
    r = cli("init", "--database", "postgresql://app:s3cretpass@127.0.0.1:1/prod")
    assert r.code == 1
    assert r.err.startswith("error: cannot connect to postgresql://app@127.0.0.1:1/prod")
    assert "s3cretpass" not in r.err


@pytest.mark.parametrize("fmt", ["table", "markdown", "json"])
def test_show_formats(cli, database_url, tmp_path, fmt):
    folder_bucket(tmp_path / "b", "M/P/1.jpg")
    assert cli("plan", "--source", "b", "-o", "p.json", "--database", database_url, "--cdn-base-url", CDN).code == 0
    r = cli("show", "p.json", "--format", fmt)
    assert r.code == 0
    if fmt == "json":
        assert json.loads(r.out)["summary"]["media"]["create"] == 1
    else:
        assert "M/P/1.jpg" in r.out


def test_detailed_exitcode_0_2_1(cli, database_url, tmp_path):
    folder_bucket(tmp_path / "b", "M/P/1.jpg")
    common = ["--database", database_url, "--cdn-base-url", CDN, "--detailed-exitcode"]
    r = cli("plan", "--source", "b", "-o", "p.json", *common)
    assert r.code == 2 and "\r" not in r.out and r.err == ""
    assert cli("apply", "p.json", "--database", database_url).code == 0
    assert cli("plan", "--source", "b", "-o", "p2.json", *common).code == 0
    assert cli("plan", "--source", "missing-folder", "-o", "p3.json", *common).code == 1


def test_options_after_the_subcommand_and_precedence(cli, database_url, tmp_path, monkeypatch):
    folder_bucket(tmp_path / "b", "M/P/1.jpg")
    (tmp_path / "cfg.yaml").write_text("source:\n  url: nowhere\ncdn_base_url: https://from-config\n")
    monkeypatch.setenv("RECONCILER_CDN_BASE_URL", "https://from-env")
    r = cli("--config", "cfg.yaml", "plan", "--source", "b", "--database", database_url, "-o", "p.json")
    assert r.code == 0, r.err
    plan = json.loads((tmp_path / "p.json").read_text())
    assert plan["changes"][-1]["after"]["url"] == "https://from-env/M/P/1.jpg"


def test_unknown_model_gets_a_note(cli, database_url, tmp_path):
    folder_bucket(tmp_path / "b", "M/P/1.jpg")
    r = cli("plan", "--source", "b", "--model", "Nobody", "-o", "p.json", "--database", database_url,
            "--cdn-base-url", CDN)
    assert r.code == 0 and "Note: model 'Nobody' is neither in the source nor in the database" in r.out


def test_secret_scrubbing_keeps_words_whole():
    from reconciler.db import scrub

    assert scrub("signed with another key", "other") == "signed with another key"
    assert scrub("password 'other' rejected for app:other@db", "other") == "password '***' rejected for app:***@db"
