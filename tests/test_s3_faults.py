"""S3 faults between boto3 and the bucket: throttling, 5xx answers, dropped connections.

A fault-injecting proxy of our own (tests/faultproxy.py, loopback only) sits between
boto3 and the moto server. Retries are botocore's, configured in
``reconciler.sources.S3Source``; these tests show that faults that retries absorb do
not change the plan at all, and that faults that outlast the retries give one clean
error line and no plan file.
"""

from __future__ import annotations

import json
import logging
import os
import time

import pytest

from reconciler.errors import SourceError
from reconciler.sources import S3Source, open_source
from reconciler.sources.s3 import S3_MAX_ATTEMPTS

from .conftest import CDN
from .faultproxy import FaultProxy, always, first_attempt_fails, in_key_order, prefixes_first, reorder_listing, seeded

# A listing of several model folders (listed concurrently), top-level objects, skipped
# keys, and one post of 1,100 objects so that its listing takes two pages.
KEYS = (
    ["readme.txt", "top.jpg"]
    + [f"M{m}/cover{m}.jpg" for m in range(6)]
    + [f"M{m}/profile/icon.png" for m in range(0, 6, 2)]
    + [f"M{m}/P{p}/{i:02d}.{ext}" for m in range(6) for p in range(3) for i, ext in enumerate(["jpg", "mp4", "png", "webp"])]
    + [f"M{m}/P0/notes.txt" for m in range(6)]
    + [f"Big/Album/{i:04d}.jpg" for i in range(1100)]
)


def seed(bucket, keys) -> None:
    """Put objects into the moto bucket. Large listings go straight into moto's
    in-process backend (an HTTP PUT costs ~10 ms here); listing them is still HTTP."""
    try:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        for key in keys:
            backend.put_object(bucket.name, key, b"xyz")
    except Exception:  # another moto layout: the slow, public way
        bucket.put(*keys)


@pytest.fixture
def listing(bucket):
    seed(bucket, KEYS)
    return bucket


def _plan(cli, tmp_path, name, database_url, bucket, *extra) -> dict:
    r = cli("plan", "--source", bucket.url, "-o", name, "--database", database_url, "--cdn-base-url", CDN, *extra)
    assert r.code == 0, r.err
    return json.loads((tmp_path / name).read_text())


def _comparable(plan: dict) -> dict:
    """Everything but what depends on the moment: plan_id differs only by created_at."""
    return {k: v for k, v in plan.items() if k not in ("plan_id", "created_at", "signature")}


def test_default_retry_configuration(monkeypatch):
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    source = open_source("s3://some-bucket/media")
    assert isinstance(source, S3Source)
    config = source.client().meta.config
    assert S3_MAX_ATTEMPTS >= 8
    assert config.retries == {"total_max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"}
    assert 0 < config.connect_timeout <= 60 and 0 < config.read_timeout <= 300
    # AWS_MAX_ATTEMPTS, the AWS SDKs' own variable, changes the default; nonsense is ignored.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    assert open_source("s3://b").client().meta.config.retries["total_max_attempts"] == 3
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "lots")
    assert open_source("s3://b").client().meta.config.retries["total_max_attempts"] == S3_MAX_ATTEMPTS
    # A source built in code says exactly what it wants.
    assert S3Source("b", max_attempts=2).client().meta.config.retries["total_max_attempts"] == 2


def test_every_page_faulted_once_gives_the_same_plan(cli, database_url, listing, s3_env, tmp_path, monkeypatch):
    """The first attempt of every request fails (503 SlowDown, a dropped connection, or
    500 InternalError in turn); the CLI's default retries give the fault-free plan."""
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    clean = _plan(cli, tmp_path, "clean.json", database_url, listing)
    assert clean["summary"]["media"]["create"] == 6 * 3 * 4 + 1100
    assert clean["source"]["skipped"]

    with FaultProxy(s3_env, first_attempt_fails(("slowdown", "drop", "internal"))) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        faulty = _plan(cli, tmp_path, "faulty.json", database_url, listing)
    distinct = {(m, p) for _, m, p in proxy.log}
    assert any("continuation-token" in p for _, p in distinct), "the big post should take two pages"
    assert proxy.faults == len(distinct) and proxy.counts["pass"] == len(distinct)
    assert proxy.counts["slowdown"] and proxy.counts["drop"] and proxy.counts["internal"]
    assert _comparable(faulty) == _comparable(clean)
    assert faulty["changes"] == clean["changes"]


def test_random_faults_give_the_same_listing(listing, s3_env, monkeypatch):
    """A source built in code, through a proxy that fails ~30% of all requests (the
    seed makes 6 of the first 11 requests fail, with all three kinds of fault)."""
    direct = list(S3Source(listing.name).list())
    assert len(direct) == len(KEYS)
    with FaultProxy(s3_env, seeded(42, {"slowdown": 0.1, "internal": 0.1, "drop": 0.1})) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        faulty = list(S3Source(listing.name, max_attempts=10).list())
        scoped = list(S3Source(listing.name, max_attempts=10).list(["M1", "Big"]))
    assert proxy.faults >= 3 and proxy.counts["drop"] and proxy.counts["slowdown"]
    assert faulty == direct
    assert scoped == [o for o in direct if o.key.startswith(("Big/", "M1/"))]


@pytest.mark.parametrize("order", [prefixes_first, in_key_order])
def test_pages_in_another_element_order_plan_nothing_against_an_in_sync_database(
        cli, database_url, bucket, s3_env, tmp_path, monkeypatch, caplog, order):
    """XML does not fix the order of a page's elements. Models whose prefixes a server
    writes before (or between) the top-level files are still listed: the plan against a
    database in sync with the bucket is empty, and the fast reader read every page."""
    bucket.put("Ann/cover.jpg", "Ann/Beach/1.jpg", "Bea.jpg", "Cid/Gym/2.mp4", "Dan.txt", "Eve/Trip/3.png")
    synced = _plan(cli, tmp_path, "sync.json", database_url, bucket)
    assert synced["summary"]["model"]["create"] == 3
    assert cli("apply", "sync.json", "--database", database_url).code == 0
    caplog.set_level(logging.DEBUG, logger="reconciler.s3pages")
    with FaultProxy(s3_env, rewrite=reorder_listing(order)) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        again = _plan(cli, tmp_path, "again.json", database_url, bucket)
    assert any("delimiter=" in path for path in proxy.rewritten), "the top-level page was not reordered"
    assert again["changes"] == [], again["summary"]
    assert [r.getMessage() for r in caplog.records if r.name == "reconciler.s3pages"] == []


def test_seven_failures_in_a_row_are_retried_by_default(cli, database_url, listing, s3_env, tmp_path, monkeypatch):
    """The CLI's default keeps retrying: the first seven requests fail, the plan is right."""
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    clean = _plan(cli, tmp_path, "clean.json", database_url, listing, "--model", "M2")
    policy = lambda n, method, path: "internal" if n < 7 else "pass"  # noqa: E731
    with FaultProxy(s3_env, policy) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        faulty = _plan(cli, tmp_path, "faulty.json", database_url, listing, "--model", "M2")
    assert proxy.faults == 7
    assert _comparable(faulty) == _comparable(clean)


@pytest.mark.parametrize(
    "fault, expected",
    [
        ("slowdown", "SlowDown"),
        ("internal", "InternalError"),
        ("drop", "closed the connection without an answer"),
    ],
)
def test_every_request_failing_is_one_clean_line(cli, database_url, listing, s3_env, tmp_path, monkeypatch, fault, expected):
    # Fewer attempts than the CLI default (10), through the SDKs' variable, so that the
    # backoff (up to 20 s per retry for throttling) fits a test.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    with FaultProxy(s3_env, always(fault)) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        started = time.monotonic()
        r = cli("plan", "--source", listing.url, "--database", database_url, "--cdn-base-url", CDN)
        elapsed = time.monotonic() - started
    assert r.code == 1
    assert r.err.startswith(f"error: cannot list s3://{listing.name}/")
    assert expected in r.err
    assert r.err.count("\n") == 1 and "Traceback" not in r.err
    assert r.out == ""
    assert proxy.requests == 3, proxy.log  # every attempt was made, then it gave up
    assert elapsed < 30
    assert os.listdir(tmp_path) == []  # no plan file, not even plans/


def test_every_request_failing_with_an_output_file_writes_nothing(cli, database_url, listing, s3_env, tmp_path, monkeypatch):
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "old.json").write_text("{}")  # an existing file is left alone
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    with FaultProxy(s3_env, always("slowdown")) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        r = cli("plan", "--source", listing.url, "-o", "plans/old.json", "--database", database_url, "--cdn-base-url", CDN)
    assert r.code == 1 and "SlowDown" in r.err and listing.name in r.err
    assert sorted(os.listdir(tmp_path / "plans")) == ["old.json"]
    assert (tmp_path / "plans" / "old.json").read_text() == "{}"


def test_retries_are_reported_as_they_happen(s3_env, monkeypatch):
    """An unreachable endpoint: each retry botocore decides on is reported, with the
    attempts left; the last failure is the error, not a retry."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    heard: list[str] = []
    source = S3Source("some-bucket", max_attempts=3, progress=heard.append)
    with pytest.raises(SourceError, match="cannot reach the S3 endpoint"):
        list(source.list())
    assert heard == [
        "S3 request failed (cannot reach the endpoint); retrying, 2 of 3 attempts left",
        "S3 request failed (cannot reach the endpoint); retrying, 1 of 3 attempts left",
    ]


def test_the_cli_reports_retries_on_a_terminal_only(cli, database_url, listing, s3_env, tmp_path, monkeypatch):
    import sys

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    common = ["--source", listing.url, "--model", "M1", "--database", database_url, "--cdn-base-url", CDN]
    with FaultProxy(s3_env, always("internal")) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
        r = cli("plan", *common)
        assert r.code == 1
        assert "… S3 request failed (HTTP 500 InternalError); retrying, 1 of 2 attempts left\n" in r.err
        assert r.err.splitlines()[-1].startswith("error: cannot list")
        r = cli("plan", *common, "--quiet")
        assert r.code == 1 and r.err.count("\n") == 1 and "retrying" not in r.err
