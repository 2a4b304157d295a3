"""The command line, through ``main(argv)``: exit codes, stdout, one-line errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import psycopg2
import pytest

from reconciler.cli import build_parser
from reconciler.version import __version__

from .conftest import CDN, EXAMPLES, SITES_SPEC, folder_bucket


def test_version(cli):
    r = cli("--version")
    assert r.code == 0
    assert r.out.strip() == f"reconciler {__version__}"


def test_every_command_has_help(cli):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {"init", "plan", "show", "validate", "apply", "history", "rollback", "db-url", "serve",
                             "explain", "catalogue"}
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


def test_unknown_model_is_an_error_and_writes_no_plan(cli, database_url, tmp_path):
    folder_bucket(tmp_path / "b", "M/P/1.jpg")
    common = ["--source", "b", "--database", database_url, "--cdn-base-url", CDN, "--detailed-exitcode"]
    r = cli("plan", "--model", "Nobody", "--model", "M", "--model", "Typo", "-o", "p.json", *common)
    assert r.code == 1 and r.out == ""
    assert r.err == "error: models 'Nobody', 'Typo' are neither in the source nor in the database: check --model\n"
    assert not (tmp_path / "p.json").exists()
    r = cli("plan", "--model", "Nobody", *common)
    assert r.code == 1 and not (tmp_path / "plans").exists()
    assert r.err == "error: model 'Nobody' is neither in the source nor in the database: check --model\n"
    assert cli("plan", "--model", "M", "-o", "p.json", *common).code == 2
    # A name typed in another Unicode normal form looks the same: the message says the forms differ.
    nfc, nfd = "Zo\u00eb", "Zoe\u0308"
    folder_bucket(tmp_path / "b", f"{nfc}/P/1.jpg")
    r = cli("plan", "--model", nfd, *common)
    assert r.code == 1 and r.err == (
        f"error: model {nfd!r} is neither in the source nor in the database: check --model "
        "(in another Unicode normal form: 'Zoe\\u0308' is NFD, 'Zo\\xeb' (NFC) is there)\n")


def test_model_and_scope_are_one_flag_given_once(cli, database_url, tmp_path):
    folder_bucket(tmp_path / "b", "M/P/1.jpg")
    common = ["--source", "b", "--database", database_url, "--cdn-base-url", CDN]
    r = cli("plan", "--scope", "M", "-o", "p.json", *common)
    assert r.code == 0 and "Target: " in r.out and ", models M." in r.out
    r = cli("plan", "--model", "M", "--scope", "M", "-o", "q.json", *common)
    assert r.code == 1 and r.err == ("error: --model and --scope cannot be combined: --model is the creators' "
                                     "spelling of --scope; give every key with one of them\n")
    assert cli("plan", "--scope", "Typo", *common).err == (
        "error: model 'Typo' is neither in the source nor in the database: check --scope\n")


PRODUCT_KEYS = ["products/p42/500g/hero-card/front.jpg", "products/p42/1kg/other-images/side.webp",
                "products/p7/250g/hero-card/jar.jpg", "README.txt"]


def test_scope_on_product_images_names_products(cli, shop, tmp_path):
    """Products are the platform's, and still scope; ``--model`` is the creators' word
    only, and says what to type instead."""
    folder_bucket(tmp_path / "b", *PRODUCT_KEYS)
    common = ["--catalogue", "product-images", "--source", "b", "--database", shop, "--cdn-base-url", CDN]
    assert cli("init", "--catalogue", "product-images", "--database", shop).code == 0
    r = cli("plan", "--scope", "p42", *common)
    assert r.code == 0, r.err
    assert "Target: " in r.out and ", products p42." in r.out
    [path] = [line.split(" written to ")[1].rstrip(".") for line in r.out.splitlines() if " written to " in line]
    assert re.fullmatch(r"plans/plan-\d{8}T\d{6}Z-[0-9a-f]{12}-p42\.json", path)
    written = json.loads((tmp_path / path).read_text("utf-8"))
    assert written["target"]["scope"] == ["p42"] and written["source"]["object_count"] == 2
    assert {c["key"] for c in written["changes"]} == set(PRODUCT_KEYS[:2])

    r = cli("plan", "--model", "p42", *common)
    assert r.code == 1 and r.err == ("error: --model names models, but catalogue product-images is scoped by its "
                                     "products: use --scope p42\n")
    r = cli("plan", "--scope", "p9", "--scope", "p42", *common)
    assert r.code == 1 and r.err == "error: product 'p9' is neither in the source nor in the database: check --scope\n"
    r = cli("plan", "--scope", "p42", "--shard", "1/2", *common)
    assert r.code == 1 and r.err == ("error: --shard and --scope cannot be combined: a shard already chooses its "
                                     "products\n")


def test_scope_on_documents_names_tenants(cli, empty_database_url, tmp_path):
    """The documents example: a spec file whose tables ``init`` creates; its top entity is
    the tenant, the first folder."""
    spec, bucket = EXAMPLES / "documents" / "catalogue.yaml", EXAMPLES / "documents" / "bucket"
    common = ["--catalogue", spec, "--database", empty_database_url]
    assert cli("init", *common).code == 0
    plan = ["plan", *common, "--source", bucket, "--cdn-base-url", CDN]
    r = cli(*plan, "--scope", "acme", "-o", "acme.json")
    assert r.code == 0, r.err
    assert ", tenants acme." in r.out
    written = json.loads((tmp_path / "acme.json").read_text("utf-8"))
    assert {(c["kind"], c["key"]) for c in written["changes"]} == {
        ("tenant", "acme"), ("collection", "acme/invoices"), ("collection", "acme/contracts"),
        ("document", "acme/invoices/2026-11.pdf"), ("document", "acme/contracts/nda.docx"),
        ("document", "acme/contracts/msa-2024.pdf")}
    assert cli("apply", "acme.json", *common).code == 0
    r = cli(*plan, "--scope", "globex", "--detailed-exitcode", "-o", "globex.json")
    assert r.code == 2 and ", tenants globex." in r.out
    assert {c["key"] for c in json.loads((tmp_path / "globex.json").read_text("utf-8"))["changes"]} == {
        "globex", "globex/handbook", "globex/handbook/employee-handbook.pdf"}
    r = cli(*plan, "--scope", "initech")
    assert r.err == "error: tenant 'initech' is neither in the source nor in the database: check --scope\n"


def test_a_catalogue_that_cannot_be_scoped_says_so_before_reading_anything(cli, tmp_path):
    (tmp_path / "sites.yaml").write_text(SITES_SPEC, "utf-8")
    folder_bucket(tmp_path / "b", "eu/acme/index.html")
    for flags in (["--scope", "eu/acme"], ["--shard", "1/2"]):
        r = cli("plan", "--catalogue", "sites.yaml", "--source", "b", "--database", "postgresql://nowhere.invalid/x",
                *flags)
        assert r.code == 1 and r.err == ("error: catalogue sites cannot be scoped: its top entity 'site' is not one "
                                         "folder of every key; plan it whole, without --scope or --shard\n")


def test_secret_scrubbing_keeps_words_whole():
    from reconciler.store.db import scrub

    assert scrub("signed with another key", "other") == "signed with another key"
    assert scrub("password 'other' rejected for app:other@db", "other") == "password '***' rejected for app:***@db"


@pytest.mark.parametrize("text", ['{}', '{"name": "package.json", "version": "1.0"}', '{"changes": []}'])
def test_show_on_json_that_is_not_a_plan(cli, tmp_path, text):
    (tmp_path / "x.json").write_text(text)
    r = cli("show", "x.json")
    assert r.code == 1
    assert r.err == "error: x.json is not a reconciler plan file (it has no format_version)\n"


def test_history_limit_0_means_every_apply(cli, database_url, tmp_path):
    common = ["--database", database_url, "--cdn-base-url", CDN]
    for i in range(3):
        folder_bucket(tmp_path / "b", f"M/P/{i}.jpg")
        assert cli("plan", "--source", "b", "-o", f"p{i}.json", *common).code == 0
        assert cli("apply", f"p{i}.json", *common).code == 0
    for limit, expected in (("0", [3, 2, 1]), ("2", [3, 2]), ("1", [3])):
        r = cli("history", "--limit", limit, "--format", "json", *common)
        assert r.code == 0, r.err
        assert [e["apply_id"] for e in json.loads(r.out)] == expected
    r = cli("history", "--limit", "0", *common)
    assert r.code == 0 and "No applies yet" not in r.out and len(r.out.splitlines()) == 2 + 3


@pytest.mark.parametrize("command", [["plan", "-o", "p.json"], ["plan"], ["history"], ["rollback", "1"]])
def test_an_uninitialised_state_dir_is_refused_before_anything_is_created(cli, tmp_path, command):
    folder_bucket(tmp_path / "b", "M/P/1.jpg")
    r = cli(*command, "--source", "b", "--cdn-base-url", CDN, "--state-dir", "st")
    assert r.code == 1
    assert r.err == "error: embedded PostgreSQL in st/pgdata is not initialised; run `reconciler init` first\n"
    assert not (tmp_path / "st" / "pgdata").exists()
    assert not (tmp_path / "plans").exists()


def test_plan_without_output_never_overwrites(cli, database_url, tmp_path):
    folder_bucket(tmp_path / "b", "M/P/1.jpg", "Zoë Ortiz/Q&A/1.jpg")
    common = ["--source", "b", "--database", database_url, "--cdn-base-url", CDN]
    paths = []
    for argv in ([], [], ["--model", "Zoë Ortiz", "--model", "M"]):  # the first two in the same second, mostly
        r = cli("plan", *common, *argv)
        assert r.code == 0, r.err
        paths.append(r.out.split(" written to ")[1].split(".json")[0] + ".json")
    assert len(set(paths)) == 3 and all(os.path.exists(tmp_path / p) for p in paths)
    plan_id = json.loads((tmp_path / paths[0]).read_text())["plan_id"]
    assert re.fullmatch(rf"plans/plan-\d{{8}}T\d{{6}}Z-{plan_id[:12]}\.json", paths[0])
    assert re.fullmatch(r"plans/plan-\d{8}T\d{6}Z-[0-9a-f]{12}(-2)?\.json", paths[1])
    assert re.fullmatch(r"plans/plan-\d{8}T\d{6}Z-[0-9a-f]{12}-M\+Zoë_Ortiz\.json", paths[2])


def test_a_default_name_that_is_taken_gets_a_counter(tmp_path):
    from reconciler.planfile import Plan, load_plan, write_plan

    def make():
        return Plan(changes=[], source={"url": "b", "object_count": 0, "skipped": {}},
                    target={"database": "x", "scope": None, "state_digest": "0" * 64}, tool_version=__version__)

    (tmp_path / "taken.json").write_text("keep me")
    first = write_plan(make(), str(tmp_path), name=lambda p: "taken.json")
    second = write_plan(make(), str(tmp_path), name=lambda p: "taken.json")
    assert (first, second) == (str(tmp_path / "taken-2.json"), str(tmp_path / "taken-3.json"))
    assert (tmp_path / "taken.json").read_text() == "keep me"
    assert load_plan(first).plan_id and load_plan(second).plan_id
    assert sorted(os.listdir(tmp_path)) == ["taken-2.json", "taken-3.json", "taken.json"]  # no temporary file left


def test_rollback_without_output_writes_a_default_file(cli, database_url, tmp_path):
    folder_bucket(tmp_path / "b", "M/P/1.jpg")
    common = ["--database", database_url, "--cdn-base-url", CDN]
    assert cli("plan", "--source", "b", "-o", "p.json", *common).code == 0
    assert cli("apply", "p.json", *common).code == 0
    paths = []
    for _ in range(2):
        r = cli("rollback", "1", *common)
        assert r.code == 0, r.err
        path = r.out.split(" written to ")[1].split(".json")[0] + ".json"
        assert re.fullmatch(r"plans/rollback-1-\d{8}T\d{6}Z-[0-9a-f]{12}(-2)?\.json", path)
        assert f"reconciler apply {path}`" in r.out
        paths.append(path)
    assert paths[0] != paths[1]
    r = cli("apply", paths[0], *common)
    assert r.code == 0, r.err


def test_without_cdn_base_url_media_urls_are_the_folders_file_url(cli, database_url, tmp_path):
    folder_bucket(tmp_path / "my bucket", "M/P/1.jpg")
    r = cli("plan", "--source", "my bucket", "-o", "p.json", "--database", database_url)
    assert r.code == 0, r.err
    base = (tmp_path / "my bucket").as_uri()
    assert base.startswith("file:///") and "my%20bucket" in base
    assert f"URLs: {base}/<key> (default: the source's own URL; set --cdn-base-url to change).\n" in r.out
    plan = json.loads((tmp_path / "p.json").read_text())
    assert plan["changes"][-1]["after"]["url"] == f"{base}/M/P/1.jpg"
    # the same inputs give the same plan
    assert cli("plan", "--source", "my bucket", "-o", "p2.json", "--database", database_url).code == 0
    assert json.loads((tmp_path / "p2.json").read_text())["changes"] == plan["changes"]
    # the flag still wins, and the output says which base was used
    r = cli("plan", "--source", "my bucket", "-o", "p3.json", "--database", database_url, "--cdn-base-url", CDN)
    assert r.code == 0 and f"URLs: {CDN}/<key>.\n" in r.out


def test_without_cdn_base_url_media_urls_are_the_buckets_url(cli, database_url, bucket, s3_env, tmp_path):
    bucket.put("media/M/P/1.jpg")
    r = cli("plan", "--source", f"{bucket.url}/media", "-o", "p.json", "--database", database_url)
    assert r.code == 0, r.err
    base = f"{s3_env}/{bucket.name}"  # a custom endpoint: path-style
    assert f"URLs: {base}/<key> (default: the source's own URL; set --cdn-base-url to change).\n" in r.out
    plan = json.loads((tmp_path / "p.json").read_text())
    assert plan["changes"][-1]["after"]["url"] == f"{base}/media/M/P/1.jpg"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_db_url_serves_the_embedded_database_until_interrupted(tmp_path, sig):
    from reconciler import Settings, commands

    state = tmp_path / "state"
    commands.init(Settings(state_dir=str(state)))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "RECONCILER_CONFIG")}
    p = subprocess.Popen([sys.executable, "-m", "reconciler", "db-url", "--state-dir", str(state)], cwd=tmp_path,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = p.stdout.readline().strip()
        assert url.startswith("postgresql://"), p.stderr.read() if p.poll() is not None else url
        conn = psycopg2.connect(url)
        with conn, conn.cursor() as cur:
            cur.execute("SELECT current_database(), to_regclass('reconciler_migrations') IS NOT NULL")
            assert cur.fetchone() == ("reconciler", True)
        conn.close()
        assert p.poll() is None  # still serving
        p.send_signal(sig)
        assert p.wait(timeout=60) == 0, p.stderr.read()
        assert p.stderr.read() == ""  # stderr is not a terminal: no progress line
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(url, connect_timeout=3).close()  # the server was stopped
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_db_url_of_a_configured_database_hides_the_password(cli):
    r = cli("db-url", "--database", "postgresql://app:s3cretpass@db.internal:5432/prod")
    assert r.code == 0 and r.out == "postgresql://app@db.internal:5432/prod\n"


def test_a_renamed_folder_in_s3_plans_moves_unless_no_moves(cli, database_url, bucket, tmp_path):
    for i, key in enumerate(["Bob/b.jpg", "Bob/Trip/1.jpg", "Bob/Trip/2.mp4"]):
        bucket.put(key, size=10 + i)  # distinct contents, distinct ETags
    common = ["--source", bucket.url, "--database", database_url, "--cdn-base-url", CDN]
    assert cli("plan", "-o", "p0.json", *common).code == 0
    assert cli("apply", "p0.json", *common).code == 0
    for key in ["Bob/b.jpg", "Bob/Trip/1.jpg", "Bob/Trip/2.mp4"]:
        bucket.client.copy_object(Bucket=bucket.name, Key="Robert/" + key[4:], CopySource={"Bucket": bucket.name, "Key": key})
        bucket.delete(key)
    r = cli("plan", "-o", "moves.json", *common)
    assert r.code == 0, r.err
    assert "model          0         0       1         0" in r.out
    shown = cli("show", "moves.json").out
    assert "> move model Bob → Robert\n" in shown and "> move post Bob/Trip → Robert/Trip\n" in shown
    r = cli("plan", "-o", "nomoves.json", "--no-moves", *common)
    assert "model          1         0       0         1" in r.out
    r = cli("apply", "moves.json", *common)
    assert r.code == 0 and "6 change(s)" not in r.out and "4 change(s)" in r.out, r.out


def test_a_plan_that_deletes_says_so_on_stderr_unless_quiet(cli, database_url, tmp_path):
    folder_bucket(tmp_path / "b", "M/P/1.jpg", "M/P/2.jpg", "M/Q/1.jpg")
    common = ["--source", "b", "--database", database_url, "--cdn-base-url", CDN]
    r = cli("plan", "-o", "p.json", *common)
    assert r.code == 0 and r.err == ""  # creates only: nothing to warn about
    assert cli("apply", "p.json", *common).code == 0
    (tmp_path / "b" / "M" / "Q" / "1.jpg").unlink()
    # Not a terminal (pytest captures stderr): a warning is printed all the same, for CI logs.
    r = cli("plan", "-o", "d.json", *common)
    assert r.code == 0
    assert r.err == ("warning: the plan deletes 2 of 6 row(s) in scope: 1 post, 1 media; review them with "
                     "`reconciler show d.json` before applying\n")
    r = cli("plan", "-o", "d2.json", "--quiet", *common)
    assert r.code == 0 and r.err == "" and "change(s) written to d2.json" in r.out


@pytest.mark.parametrize(
    "args, env, config, error",
    [
        (["--cdn-base-url", "media.example.internal"], {}, "",
         "error: --cdn-base-url 'media.example.internal' is not a URL: write it with its scheme, e.g. "
         "https://media.example.internal or http://media.example.internal\n"),
        ([], {"RECONCILER_CDN_BASE_URL": "cdn.example.com/media"}, "",
         "error: RECONCILER_CDN_BASE_URL 'cdn.example.com/media' is not a URL: write it with its scheme, e.g. "
         "https://cdn.example.com/media or http://cdn.example.com/media\n"),
        ([], {}, "cdn_base_url: s3://media\n",
         "error: config file cfg.yaml: cdn_base_url 's3://media' must start with https:// or http:// or file://\n"),
        (["--endpoint-url", "127.0.0.1:18333"], {}, "",
         "error: --endpoint-url '127.0.0.1:18333' is not a URL: write it with its scheme, e.g. "
         "https://127.0.0.1:18333 or http://127.0.0.1:18333\n"),
        ([], {"AWS_ENDPOINT_URL": "localhost:9000"}, "",
         "error: AWS_ENDPOINT_URL 'localhost:9000' is not a URL: write it with its scheme, e.g. "
         "https://localhost:9000 or http://localhost:9000\n"),
        ([], {}, "source:\n  endpoint_url: http://minio:nine\n",
         "error: config file cfg.yaml: source.endpoint_url 'http://minio:nine' has an invalid port; write HOST:PORT "
         "with a PORT from 1 to 65535\n"),
        (["--cdn-base-url", "https://deploy:hunter2-secret@cdn.example.com"], {}, "",
         "error: --cdn-base-url 'https://***@cdn.example.com' must not hold a user name or password; remove them "
         "from the URL\n"),
    ],
)
def test_url_settings_are_checked_when_read(cli, monkeypatch, tmp_path, args, env, config, error):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if config:
        (tmp_path / "cfg.yaml").write_text(config)
        args = [*args, "--config", "cfg.yaml"]
    folder_bucket(tmp_path / "b", "M/P/1.jpg")
    r = cli("plan", "--source", "b", "-o", "p.json", *args)
    assert (r.code, r.out, r.err) == (1, "", error)
    assert not (tmp_path / "p.json").exists()


def test_plans_made_by_serve_name_the_embedded_database_as_the_command_line_does(cli, tmp_path):
    from .serving import start_server, stop_all

    folder_bucket(tmp_path / "b", "M/P/1.jpg")
    assert cli("init", "--state-dir", "state").code == 0
    assert cli("plan", "--source", "b", "--state-dir", "state", "-o", "p.json", "--cdn-base-url", CDN).code == 0
    by_cli = json.loads((tmp_path / "p.json").read_text())["target"]["database"]
    assert by_cli == "embedded PostgreSQL in state/pgdata"
    try:
        server = start_server(tmp_path, "", str(tmp_path / "b"), "--state-dir", "state")
        run = server.client().post("/api/runs", json={}).json()
        assert server.wait_run(run["id"], timeout=60)["status"] == "planned"
        plan = server.client().get(f"/api/runs/{run['id']}/plan").json()
    finally:
        stop_all()
    assert plan["target"]["database"] == by_cli
