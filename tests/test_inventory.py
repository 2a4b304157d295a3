"""--inventory: S3 Inventory reports as the source, on moto (S3) and a real PostgreSQL.

Reports are written in Amazon S3's layout by ``tests/inventory_reports.py``.
"""

from __future__ import annotations

import dataclasses
import time
import uuid

import pytest

from reconciler import Settings, commands
from reconciler.engine.shards import Shard
from reconciler.errors import SourceError
from reconciler.sources import S3Source

from .conftest import CDN, PRODUCTS
from .inventory_reports import put_report, row, rows_from_listing

KEYS = [
    "Alice/a.jpg",
    "Alice/profile/icon.png",
    "Alice/Beach/1.jpg",
    "Alice/Beach/2.mp4",
    "Bob/Gym/x.jpg",
    "Zoë Ortiz/Beach day/1+1 (final).jpg",
    "Zoë Ortiz/Beach day/100%.webp",
    "stray.txt",
]


@pytest.fixture
def dest(bucket):
    """A second bucket on the same moto server that receives the inventory reports."""
    name = "inv-" + uuid.uuid4().hex[:12]
    bucket.client.create_bucket(Bucket=name)
    return name


def listing(bucket, prefix=""):
    return list(S3Source(bucket.name, prefix).list())


def changes(plan):
    return [c.to_dict() for c in plan.changes]


@pytest.mark.parametrize("fmt", ["CSV", "Parquet", "ORC"])
def test_plan_from_inventory_equals_plan_from_listing(bucket, dest, settings, fmt, tmp_path):
    bucket.put(*KEYS)
    bucket.put("Bob/Gym/y.jpg", size=7)
    bucket.client.put_object(Bucket=bucket.name, Key="Bob/Gym/x.jpg", Body=b"unique content")
    # An applied first state, so that the plans below hold updates, moves and deletes too.
    settings.source = bucket.url
    commands.plan(settings, str(tmp_path / "first.json"))
    commands.apply(settings, str(tmp_path / "first.json"))
    bucket.delete("Alice/Beach/2.mp4", "Bob/Gym/y.jpg")
    bucket.put("Alice/Beach/3.jpg", "Carol/Post/z.jpg")
    bucket.client.copy_object(Bucket=bucket.name, Key="Bob/Gym2/x.jpg", CopySource=f"{bucket.name}/Bob/Gym/x.jpg")
    bucket.delete("Bob/Gym/x.jpg")
    url = put_report(bucket.client, dest, f"inv/{bucket.name}/daily", bucket.name, rows_from_listing(listing(bucket)), fmt=fmt)

    by_listing = commands.make_plan(settings)
    settings.inventory = url
    by_inventory = commands.make_plan(settings)
    assert changes(by_inventory) == changes(by_listing)
    assert any(c.action == "move" for c in by_listing.changes)
    assert by_inventory.source["url"] == by_listing.source["url"]
    assert by_inventory.source["object_count"] == by_listing.source["object_count"]
    assert by_inventory.source["inventory"]["manifest"] == url
    assert by_inventory.source["inventory"]["format"] == fmt
    assert by_inventory.target["state_digest"] == by_listing.target["state_digest"]


def test_newest_report_is_chosen_and_a_folder_without_manifest_is_passed_over(bucket, dest, settings):
    config = f"inv/{bucket.name}/daily/"
    put_report(bucket.client, dest, config, bucket.name, [row("Old/P/1.jpg")], stamp="2026-11-18T01-00Z")
    newest = put_report(bucket.client, dest, config, bucket.name, [row("New/P/1.jpg")], stamp="2026-11-19T01-00Z")
    # Being written: data files, but no manifest yet.
    put_report(bucket.client, dest, config, bucket.name, [row("Partial/P/1.jpg")], stamp="2026-11-20T01-00Z",
               with_manifest=False)
    bucket.client.put_object(Bucket=dest, Key=config + "hive/dt=2026-11-19-01-00/symlink.txt", Body=b"x")
    settings.source, settings.inventory = bucket.url, f"s3://{dest}/{config}"
    p = commands.make_plan(settings)
    assert p.source["inventory"]["manifest"] == newest
    assert [c.key for c in p.changes if c.kind == "model"] == ["New"]


def test_stale_report_is_refused_with_its_age(bucket, dest, settings, cli, database_url):
    url = put_report(bucket.client, dest, "inv/x", bucket.name, [row("A/P/1.jpg")], created=time.time() - 3 * 86400 - 7200)
    r = cli("plan", "--source", bucket.url, "--database", database_url, "--cdn-base-url", CDN, "--inventory", url, "-o", "p.json")
    assert r.code == 1
    assert r.err.startswith("error: the inventory report s3://") and "is 3d 2h old" in r.err
    assert "--max-inventory-age 2d 0h" in r.err and r.err.count("\n") == 1
    r = cli("plan", "--source", bucket.url, "--database", database_url, "--cdn-base-url", CDN, "--inventory", url,
            "--max-inventory-age", "4d", "-o", "p.json")
    assert r.code == 0, r.err
    assert "Source: S3 Inventory report " + url in r.out
    shown = cli("show", "p.json")
    assert f"listing: S3 Inventory report {url} made " in shown.out


def test_report_of_another_bucket_is_refused(bucket, dest, settings):
    url = put_report(bucket.client, dest, "inv/other", "some-other-bucket", [row("A/P/1.jpg")])
    settings.source, settings.inventory = bucket.url, url
    with pytest.raises(SourceError, match="lists bucket 'some-other-bucket', not the source's"):
        commands.make_plan(settings)


def test_corrupted_data_file_is_a_clean_error_and_writes_no_plan(bucket, dest, cli, database_url, tmp_path):
    url = put_report(bucket.client, dest, "inv/c", bucket.name, [row(f"A/P/{i}.jpg") for i in range(20)], corrupt=True)
    r = cli("plan", "--source", bucket.url, "--database", database_url, "--cdn-base-url", CDN, "--inventory", url,
            "-o", "p.json")
    assert r.code == 1
    assert r.err.startswith("error: the inventory data file s3://") and "is corrupted: its MD5 is" in r.err
    assert "Traceback" not in r.err
    assert not (tmp_path / "p.json").exists()


@pytest.mark.parametrize("fmt", ["CSV", "Parquet"])
def test_only_current_versions_are_kept(bucket, dest, settings, fmt):
    rows = [
        row("A/P/1.jpg", 5, "new", version="v2"),
        row("A/P/1.jpg", 4, "old", latest=False, version="v1"),
        row("A/P/gone.jpg", latest=True, marker=True, version="v3"),  # deleted: a delete marker is the latest
        row("A/P/gone.jpg", 9, "was", latest=False, version="v2"),
    ]
    settings.source = bucket.url
    settings.inventory = put_report(bucket.client, dest, "inv/v", bucket.name, rows, fmt=fmt, files=1)
    p = commands.make_plan(settings)
    media = {c.key: c.after for c in p.changes if c.kind == "media"}
    assert list(media) == ["A/P/1.jpg"]
    assert (media["A/P/1.jpg"]["size_bytes"], media["A/P/1.jpg"]["etag"]) == (5, "new")
    assert p.source["object_count"] == 1


def test_only_keys_under_the_source_prefix(bucket, dest, settings):
    rows = [row("media/A/P/1.jpg"), row("media/A/P/2.jpg"), row("other/B/P/1.jpg"), row("mediaX/C/P/1.jpg")]
    settings.source = f"s3://{bucket.name}/media"
    settings.inventory = put_report(bucket.client, dest, "inv/p", bucket.name, rows, fmt="Parquet")
    p = commands.make_plan(settings)
    assert sorted(c.key for c in p.changes if c.kind == "media") == ["media/A/P/1.jpg", "media/A/P/2.jpg"]
    assert p.source["object_count"] == 2
    assert p.source["url"] == f"s3://{bucket.name}/media/"


def test_csv_keys_are_url_decoded(bucket, dest, settings):
    keys = ["Zoë Ortiz/Beach day/1+1 (final).jpg", "A/P/100%.jpg", "A/P/a%20b.jpg"]
    settings.source = bucket.url
    settings.inventory = put_report(bucket.client, dest, "inv/k", bucket.name, [row(k) for k in keys])
    p = commands.make_plan(settings)
    assert sorted(c.key for c in p.changes if c.kind == "media") == sorted(keys)


def test_a_scope_reads_only_its_top_folders(bucket, dest, settings):
    settings.source = bucket.url
    settings.inventory = put_report(bucket.client, dest, "inv/m", bucket.name, [row("A/P/1.jpg"), row("B/P/1.jpg"), row("A.jpg")])
    p = commands.make_plan(settings, scope=["A"])
    assert [c.key for c in p.changes] == ["A", "A/P", "A/P/1.jpg"]


PRODUCT_KEYS = [
    "media/products/p42/500g/hero-card/front.jpg",
    "media/products/p42/500g/info-card/back.png",
    "media/products/p42/1kg/other-images/side.webp",
    "media/products/p7/250g/hero-card/jar.jpg",
    "media/products/p7/250g/banner/promo.jpg",  # not an image type of the catalogue: skipped
    "media/products/p99/100g/hero-card/new.jpg",  # not a product of the platform: skipped, held
    "media/README.txt",
    "elsewhere/products/p7/250g/hero-card/jar.jpg",  # outside the source's prefix
]


@pytest.mark.parametrize("fmt", ["CSV", "Parquet"])
def test_product_images_from_an_inventory_equal_those_from_the_listing(installed_shop, bucket, dest, fmt, tmp_path):
    """Any catalogue reads a report as it reads a listing: below the source's prefix
    and the catalogue's literal folder (``products/``), whole, scoped to a product, or
    one shard of the products."""
    for key in PRODUCT_KEYS:
        bucket.client.put_object(Bucket=bucket.name, Key=key, Body=key.encode())  # an ETag of its own
    settings = Settings(database=installed_shop, source=f"s3://{bucket.name}/media", cdn_base_url=CDN,
                        catalogue=PRODUCTS)
    commands.plan(settings, str(tmp_path / "first.json"))
    commands.apply(settings, str(tmp_path / "first.json"))
    bucket.delete("media/products/p42/500g/info-card/back.png")
    bucket.put("media/products/p7/250g/hero-card/lid.jpg")
    url = put_report(bucket.client, dest, f"inv/{bucket.name}/daily", bucket.name, rows_from_listing(listing(bucket)),
                     fmt=fmt)

    for scope in ({}, {"scope": ["p42"]}, {"shard": Shard(1, 2)}, {"shard": Shard(2, 2)}):
        by_listing = commands.make_plan(settings, **scope)
        by_inventory = commands.make_plan(dataclasses.replace(settings, inventory=url), **scope)
        assert changes(by_inventory) == changes(by_listing), scope
        assert by_inventory.scope == by_listing.scope
        assert by_inventory.source["object_count"] == by_listing.source["object_count"]
        assert by_inventory.source["skipped"] == by_listing.source["skipped"]
        assert by_inventory.target["state_digest"] == by_listing.target["state_digest"]
    whole = commands.make_plan(dataclasses.replace(settings, inventory=url))
    assert {(c.action, c.key) for c in whole.changes} == {("delete", "media/products/p42/500g/info-card/back.png"),
                                                         ("create", "media/products/p7/250g/hero-card/lid.jpg")}


def test_no_report_under_the_prefix(bucket, dest, settings):
    settings.source, settings.inventory = bucket.url, f"s3://{dest}/nothing/here/"
    with pytest.raises(SourceError, match="no inventory report under"):
        commands.make_plan(settings)


def test_inventory_needs_an_s3_source(tmp_path, settings):
    from reconciler.errors import ConfigError

    settings.source, settings.inventory = str(tmp_path), "s3://x/y/manifest.json"
    with pytest.raises(ConfigError, match="not s3://BUCKET"):
        commands.make_plan(settings)


def test_config_keys(tmp_path):
    from reconciler.config import load_settings

    path = tmp_path / "c.yaml"
    path.write_text("source:\n  url: s3://b\n  inventory: s3://d/inv/b/daily/\n  max_inventory_age: 3d\n")
    s = load_settings({}, env={}, config_path=str(path))
    assert (s.inventory, s.max_inventory_age) == ("s3://d/inv/b/daily/", 3 * 86400)
    s = load_settings({"max_inventory_age": "90m"}, env={"RECONCILER_INVENTORY": "s3://e/m.json"}, config_path=str(path))
    assert (s.inventory, s.max_inventory_age) == ("s3://e/m.json", 5400)
