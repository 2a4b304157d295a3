"""The product-images catalogue, end to end from configuration alone, on the platform's
own schema (tests/data/platform-schema-products.sql, as the platform created it) and a
real S3 endpoint: ``init`` adopting it, plan, show, apply, an image under a product or
variant the platform does not have, a variant folder renamed after the platform renamed
the variant (the image rows move, keeping their ids), and rollback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler import Settings
from reconciler.commands import apply, init, make_plan, write_rollback
from reconciler.errors import CatalogueError, WrongCatalogueError
from reconciler.planfile import write_plan
from reconciler.render import plan_header

from .conftest import CDN, PRODUCTS, sql_on

@pytest.fixture
def shop_settings(shop, bucket) -> Settings:
    return Settings(database=shop, source=bucket.url, cdn_base_url=CDN, catalogue=PRODUCTS)


def put(bucket, key: str, body: str | None = None) -> None:
    """An object whose content (and so ETag) is its own: a copy elsewhere is the same content."""
    bucket.client.put_object(Bucket=bucket.name, Key=key, Body=(body or key).encode())


def rename(bucket, old: str, new: str) -> None:
    """A folder renamed the way S3 does it: every object copied (same ETag), then deleted."""
    listed = bucket.client.list_objects_v2(Bucket=bucket.name, Prefix=old)
    for o in listed.get("Contents", []):
        bucket.client.copy_object(Bucket=bucket.name, Key=new + o["Key"][len(old):],
                                  CopySource={"Bucket": bucket.name, "Key": o["Key"]})
        bucket.client.delete_object(Bucket=bucket.name, Key=o["Key"])


def run_sql(url: str, statement: str):
    with sql_on(url) as run:
        return run(statement)


def images(url) -> list[tuple]:
    return run_sql(url, 
        "SELECT i.id, v.product_id, v.weight, i.product_id, i.variant_weight, i.image_type, i.file_name, i.image_url, "
        "i.size_bytes, i.sort_order FROM product_images i JOIN product_variants v ON v.id = i.variant_id ORDER BY i.id"
    )


def plan_and_apply(settings, tmp_path, name: str):
    path = write_plan(make_plan(settings), str(tmp_path / f"{name}.json"))
    return json.loads(Path(path).read_text("utf-8")), apply(settings, path)


HERO = "products/p42/500g/hero-card/front.jpg"
INFO = "products/p42/500g/info-card/back.png"
OTHER = "products/p42/1kg/other-images/a.webp"
COFFEE = "products/p7/250g/hero-card/x.jpg"


def test_init_adopts_the_platform_schema_and_says_what_it_added(cli, shop):
    r = cli("init", "--database", shop, "--catalogue", "product-images")
    assert r.code == 0, r.err
    assert "added column product_images.size_bytes (nullable; the tool fills it)" in r.out
    assert "added column product_images.etag (nullable; the tool fills it)" in r.out
    columns = run_sql(shop, "SELECT column_name, is_nullable FROM information_schema.columns "
                           "WHERE table_name = 'product_images' ORDER BY ordinal_position")
    assert [c for c, _ in columns] == ["id", "variant_id", "product_id", "variant_weight", "image_type", "file_name",
                                       "image_url", "sort_order", "created_at", "size_bytes", "etag"]
    assert dict(columns)["size_bytes"] == "YES"
    again = cli("init", "--database", shop, "--catalogue", "product-images")
    assert again.code == 0 and "added" not in again.out and "installed" in again.out


@pytest.mark.parametrize("damage, message", [
    ("DROP TABLE product_images; DROP TABLE product_variants",
     "table product_variants (variant) does not exist; it is the platform's"),
    ("ALTER TABLE product_variants DROP CONSTRAINT product_variants_product_id_weight_key",
     "product_variants has no unique index on its natural key (product_id, weight)"),
    ("ALTER TABLE product_images DROP COLUMN file_name", "product_images.file_name (a key column) does not exist"),
    ("ALTER TABLE product_images ALTER COLUMN image_url TYPE integer USING 0",
     "product_images.image_url is integer, which does not hold text values"),
])
def test_init_refuses_a_database_that_does_not_fit_and_names_table_and_column(cli, shop, damage, message):
    run_sql(shop, damage)
    r = cli("init", "--database", shop, "--catalogue", "product-images")
    assert r.code == 1 and message in r.err, r.err
    assert r.err.startswith("error: ") and r.err.count("\n") == 1
    assert run_sql(shop, "SELECT to_regclass('reconciler_catalogue')") == [(None,)]  # nothing was done


def test_plan_show_apply_and_an_empty_replan(cli, shop, bucket, tmp_path):
    for key in (HERO, INFO, OTHER, COFFEE, "products/p42/500g/hero-card/notes.txt", "products/p42/500g/banner/q.jpg",
                "readme.md"):
        put(bucket, key)
    common = ["--database", shop, "--source", bucket.url, "--cdn-base-url", CDN, "--catalogue", "product-images"]
    assert cli("init", *common).code == 0
    r = cli("plan", "-o", "p.json", *common)
    assert r.code == 0, r.err
    assert "image          4" in r.out and "all products" in r.out
    shown = cli("show", "p.json", *common).out
    assert "+ create image products/p42/500g/hero-card/front.jpg" in shown
    assert "image_url: https://cdn.example.test/products/p42/500g/hero-card/front.jpg" in shown
    assert "skipped: unknown_image_type 1, unmatched 1, unsupported_extension 1" in shown
    assert cli("apply", "p.json", *common).code == 0
    assert [r[1:7] for r in images(shop)] == [
        ("p42", "1kg", "p42", "1kg", "other-images", OTHER),
        ("p42", "500g", "p42", "500g", "hero-card", HERO),  # ids in key order
        ("p42", "500g", "p42", "500g", "info-card", INFO),
        ("p7", "250g", "p7", "250g", "hero-card", COFFEE),
    ]
    again = cli("plan", "-o", "p2.json", "--detailed-exitcode", *common)
    assert again.code == 0, again.out + again.err


def test_an_image_under_a_missing_product_or_variant_is_skipped_counted_and_held(shop_settings, shop, bucket,
                                                                                 tmp_path):
    init(shop_settings)
    put(bucket, HERO)
    put(bucket, "products/p99/500g/hero-card/z.jpg")  # no such product
    put(bucket, "products/p7/999g/hero-card/y.jpg")  # no such variant
    plan, _ = plan_and_apply(shop_settings, tmp_path, "p1")
    assert plan["source"]["skipped"] == {"unknown_parent": 2}
    assert plan["source"]["skipped_examples"]["unknown_parent"] == [
        "products/p7/999g/hero-card/y.jpg", "products/p99/500g/hero-card/z.jpg"]
    assert [r[6] for r in images(shop)] == [HERO]
    # The platform renames the variant before the bucket's folder is renamed: a plan made
    # in between must not delete the image rows whose objects are still in the bucket.
    run_sql(shop, "UPDATE product_variants SET weight = '750g' WHERE product_id = 'p42' AND weight = '500g'")
    between = make_plan(shop_settings)
    assert between.summary == {"image": {"create": 0, "update": 0, "move": 0, "delete": 0}}
    assert between.extra["held"] == {"image": {"count": 1, "examples": [HERO]}}
    assert between.source["skipped"]["unknown_parent"] == 3
    assert ("kept: image 1 (rows whose objects are under a platform row that is missing: left as they are)"
            in plan_header(between))


def test_a_renamed_variant_folder_moves_the_image_rows_and_keeps_their_ids(shop_settings, shop, bucket, tmp_path):
    init(shop_settings)
    for key in (HERO, INFO, OTHER):
        put(bucket, key)
    plan_and_apply(shop_settings, tmp_path, "p1")
    run_sql(shop, f"UPDATE product_images SET sort_order = 7 WHERE file_name = '{INFO}'")  # the platform's column
    before = {r[6]: r for r in images(shop)}
    run_sql(shop, "UPDATE product_variants SET weight = '750g' WHERE product_id = 'p42' AND weight = '500g'")
    rename(bucket, "products/p42/500g/", "products/p42/750g/")
    plan, result = plan_and_apply(shop_settings, tmp_path, "p2")
    assert plan["summary"]["image"] == {"create": 0, "update": 0, "move": 2, "delete": 0}
    move = next(c for c in plan["changes"] if c["from"] == HERO)
    assert move["key"] == HERO.replace("500g", "750g")
    assert move["after"]["variant"] == "p42/750g" and move["after"]["variant_weight"] == "750g"
    after = {r[6]: r for r in images(shop)}
    for old in (HERO, INFO):
        new = old.replace("500g", "750g")
        assert after[new][0] == before[old][0]  # the same row, the same id
        assert after[new][1:5] == ("p42", "750g", "p42", "750g")
        assert after[new][7] == CDN + "/" + new
    assert after[INFO.replace("500g", "750g")][9] == 7  # the platform's column untouched
    assert after[OTHER] == before[OTHER]
    assert make_plan(shop_settings).summary["image"] == {"create": 0, "update": 0, "move": 0, "delete": 0}


def test_rollback_restores_the_images_exactly(shop_settings, shop, bucket, tmp_path):
    init(shop_settings)
    for key in (HERO, INFO, OTHER, COFFEE):
        put(bucket, key)
    plan_and_apply(shop_settings, tmp_path, "p1")
    run_sql(shop, f"UPDATE product_images SET sort_order = 3 WHERE file_name = '{COFFEE}'")
    state = run_sql(shop, "SELECT * FROM product_images ORDER BY id")
    bucket.delete(COFFEE, OTHER)
    put(bucket, "products/p7/250g/info-card/new.png")
    _, result = plan_and_apply(shop_settings, tmp_path, "p2")
    assert result.summary["image"] == {"create": 1, "update": 0, "move": 0, "delete": 2}
    rollback, path = write_rollback(shop_settings, result.apply_id, str(tmp_path / "rb.json"))
    apply(shop_settings, path)
    assert run_sql(shop, "SELECT * FROM product_images ORDER BY id") == state  # ids, sort_order, created_at


def test_a_plan_made_under_another_catalogue_is_refused_before_anything(shop_settings, shop, bucket, tmp_path,
                                                                       database_url):
    init(shop_settings)
    put(bucket, HERO)
    path = write_plan(make_plan(shop_settings), str(tmp_path / "p.json"))
    creators = Settings(database=database_url, cdn_base_url=CDN)
    with pytest.raises(WrongCatalogueError, match="made under catalogue 'product-images'"):
        apply(creators, path)
    data = json.loads(Path(path).read_text("utf-8"))
    data["target"]["catalogue"]["fingerprint"] = "0" * 64
    Path(path).write_text(json.dumps(data))
    with pytest.raises(WrongCatalogueError, match="another version of catalogue product-images"):
        apply(shop_settings, path)
    assert images(shop) == []


def test_a_changed_spec_needs_init_before_plans(shop_settings, shop, tmp_path):
    init(shop_settings)
    spec = tmp_path / "shop.yaml"
    text = Path(__file__).parent.parent.joinpath("reconciler/catalogue/shipped/product-images.yaml").read_text()
    spec.write_text(text.replace("[jpg, jpeg, png, gif, webp, avif]", "[jpg, png]"))
    from reconciler.catalogue import load_catalogue

    changed = Settings(database=shop, source=shop_settings.source, cdn_base_url=CDN, catalogue=load_catalogue(str(spec)))
    from reconciler.errors import DatabaseError

    with pytest.raises(DatabaseError, match="changed since .* was initialised .* run `reconciler init`"):
        make_plan(changed)
    init(changed)
    make_plan(changed)


def test_one_database_holds_one_catalogue(shop, database_url):
    with pytest.raises(CatalogueError, match="holds catalogue 'creators'"):
        init(Settings(database=database_url, catalogue=PRODUCTS))


@pytest.mark.parametrize("where", ["s3", "folder"])
def test_a_scoped_plan_lists_only_its_products_folders(shop_settings, shop, bucket, tmp_path, where):
    """``--scope p42``: the listing goes to products/p42/ (the spec's literal folder first),
    and nothing of another product is planned or deleted."""
    from .conftest import folder_bucket

    keys = (HERO, INFO, COFFEE)
    if where == "s3":
        for key in keys:
            put(bucket, key)
        settings = shop_settings
    else:
        settings = Settings(database=shop, source=str(folder_bucket(tmp_path / "bucket", *keys)), cdn_base_url=CDN,
                            catalogue=PRODUCTS)
    init(settings)
    plan_and_apply(settings, tmp_path, "all")
    if where == "s3":
        bucket.delete(COFFEE, HERO)
    else:
        (tmp_path / "bucket" / COFFEE).unlink()
        (tmp_path / "bucket" / HERO).unlink()
    scoped = make_plan(settings, scope=["p42"])
    assert scoped.scope == ["p42"] and scoped.source["object_count"] == 1
    assert [(c.action, c.key) for c in scoped.changes] == [("delete", HERO)]
    from reconciler.errors import SafetyError

    with pytest.raises(SafetyError, match="the source under product[(]s[)] p7 holds no recognised object"):
        make_plan(settings, scope=["p7"])  # its one object gone: the empty-source guard, as for a model
