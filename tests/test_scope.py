"""A scope is a list of keys of the catalogue's top entity (docs/design.md: "scope is over
the top entity"): models of creators, products of product-images — which the platform
owns, and which still scope — tenants of the documents example. What follows a scope:
the folders listed, the rows read and digested (so the stale check), the rows the delete
limits count, and the plan file's name. On a real PostgreSQL; the CLI's ``--scope`` and
``--model`` are in tests/test_cli.py, events in tests/test_serve_events.py, shards in
tests/test_shards.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from reconciler import Settings
from reconciler.catalogue.keys import ScopeSegment, require_scope_segment, scope_segment
from reconciler.commands import apply, check_scope, default_file_name, make_plan, plan
from reconciler.engine.shards import Shard
from reconciler.errors import ConfigError, SafetyError, StalePlanError
from reconciler.planfile import Plan

from .conftest import CDN, CREATORS, DOCUMENTS, PRODUCTS, SITES, folder_bucket, sql_on


# --------------------------------------------------------------------------- pure


def test_a_scope_lists_the_top_entitys_folder_after_the_literal_ones():
    assert scope_segment(CREATORS) == ScopeSegment((), 0)  # Alice/…
    assert scope_segment(PRODUCTS) == ScopeSegment(("products",), 1)  # products/p42/…
    assert scope_segment(DOCUMENTS) == ScopeSegment((), 0)  # acme/…
    assert scope_segment(PRODUCTS).of("products/p42/500g/hero-card/a.jpg") == "p42"
    assert scope_segment(PRODUCTS).of("other/p42/500g/hero-card/a.jpg") is None


def test_a_catalogue_whose_top_key_is_not_one_folder_cannot_be_scoped():
    assert scope_segment(SITES) is None
    with pytest.raises(ConfigError, match="^catalogue sites cannot be scoped: its top entity 'site' is not one "
                                          "folder of every key; plan it whole, without --scope or --shard$"):
        require_scope_segment(SITES)


def plan_with_scope(scope: list[str] | None, shard: str | None = None) -> Plan:
    target = {"scope": scope, "catalogue": PRODUCTS.describe(), **({"shard": shard} if shard else {})}
    return Plan(changes=[], source={}, target=target, tool_version="0", created_at="2026-11-21T10:00:00Z",
                plan_id="ab" * 32, descriptor=PRODUCTS)


def test_plan_file_names_tell_the_scope():
    assert default_file_name("plan", plan_with_scope(["p42", "p7"])) == "plan-20261121T100000Z-abababababab-p42+p7.json"
    assert default_file_name("plan", plan_with_scope(["eu/acme"])) == "plan-20261121T100000Z-abababababab-eu_acme.json"
    assert default_file_name("plan", plan_with_scope(None)) == "plan-20261121T100000Z-abababababab.json"
    shard = plan_with_scope(["p42"], shard="2/4")
    assert default_file_name("plan", shard) == "plan-20261121T100000Z-abababababab-shard-2-of-4.json"


@given(st.lists(st.text(min_size=0, max_size=80), min_size=1, max_size=8))
def test_a_plan_file_name_is_one_file_name_whatever_the_scope_holds(keys):
    """Keys may hold "/" (a top key of several columns), dots, NUL, lone surrogates (a
    folder source's undecodable names) and characters of four UTF-8 bytes."""
    name = default_file_name("plan", plan_with_scope(keys))
    encoded = name.encode("utf-8")  # strict: no lone surrogate left
    assert "/" not in name and "\x00" not in name and not name.startswith(".")
    assert len(encoded) <= 36 + 60 + len(".json") < 255
    assert name.startswith("plan-20261121T100000Z-abababababab-") and name.endswith(".json")


# --------------------------------------------------------------------------- on a database

HERO = "products/p42/500g/hero-card/front.jpg"
INFO = "products/p42/500g/info-card/back.png"
SIDE = "products/p42/1kg/other-images/side.webp"
COFFEE = "products/p7/250g/hero-card/jar.jpg"


def shop_settings(shop: str, folder: Path) -> Settings:
    return Settings(database=shop, source=str(folder), cdn_base_url=CDN, catalogue=PRODUCTS)


def apply_whole(settings: Settings, tmp_path: Path, name: str = "whole.json") -> None:
    _, path = plan(settings, str(tmp_path / name))
    apply(settings, path)


def test_scope_and_its_creators_spelling_plan_the_same(settings, tmp_path):
    settings.source = str(folder_bucket(tmp_path / "b", "Alice/P/1.jpg", "Bob/P/1.jpg"))
    by_scope, by_models = make_plan(settings, scope=["Alice"]), make_plan(settings, models=["Alice"])
    assert [c.to_dict() for c in by_scope.changes] == [c.to_dict() for c in by_models.changes]
    assert by_scope.scope == by_models.scope == ["Alice"]
    with pytest.raises(TypeError, match="scope= or its creators' spelling models=, not both"):
        make_plan(settings, scope=["Alice"], models=["Alice"])


def test_a_scoped_plan_is_stale_only_when_rows_in_its_scope_change(installed_shop, tmp_path):
    folder = folder_bucket(tmp_path / "bucket", HERO, COFFEE)
    settings = shop_settings(installed_shop, folder)
    apply_whole(settings, tmp_path)
    folder_bucket(folder, INFO)
    _, path = plan(settings, str(tmp_path / "p42.json"), scope=["p42"])
    with sql_on(installed_shop) as run:
        run("UPDATE product_images SET image_url = 'https://elsewhere/jar.jpg' WHERE product_id = 'p7'")  # another scope
        assert apply(settings, path).total == 1

        folder_bucket(folder, SIDE)
        _, path = plan(settings, str(tmp_path / "p42-again.json"), scope=["p42"])
        run("UPDATE product_images SET image_url = 'https://elsewhere/front.jpg' WHERE file_name = %s", (HERO,))
    with pytest.raises(StalePlanError):
        apply(settings, path)


def test_delete_limits_count_the_rows_in_scope_at_plan_and_at_apply(installed_shop, tmp_path):
    p42 = [f"products/p42/500g/hero-card/{i}.jpg" for i in range(4)]
    p7 = [f"products/p7/250g/hero-card/{i}.jpg" for i in range(6)]
    folder = folder_bucket(tmp_path / "bucket", *p42, *p7)
    settings = shop_settings(installed_shop, folder)
    apply_whole(settings, tmp_path)
    for key in p42[:3]:
        (folder / key).unlink()
    settings.max_delete_percent = 50
    assert len(make_plan(settings).changes) == 3  # 3 of the 10 images: 30%
    with pytest.raises(SafetyError, match=r"^the plan deletes 3 of 4 row\(s\) in scope \(75.0%\), more than "
                                          "max-delete-percent 50"):
        make_plan(settings, scope=["p42"])
    lifted = dataclasses.replace(settings, max_delete_percent=100)
    _, path = plan(lifted, str(tmp_path / "p42.json"), scope=["p42"])
    with pytest.raises(SafetyError, match=r"^the plan being applied deletes 3 of 4 row\(s\) in scope"):
        apply(settings, path)


def test_a_scope_names_keys_in_the_catalogues_words(installed_shop, tmp_path):
    settings = shop_settings(installed_shop, folder_bucket(tmp_path / "bucket", HERO))
    check_scope(settings, ["p42", "p7"])  # p42 in the bucket and the platform's; p7 the platform's only
    with pytest.raises(ConfigError, match=r"^products 'p1', 'p2' are neither in the source nor in the database: "
                                          "check the product ids$"):
        check_scope(settings, ["p1", "p42", "p2"], hint="check the product ids")
    with pytest.raises(ConfigError, match="^catalogue sites cannot be scoped"):
        check_scope(dataclasses.replace(settings, catalogue=SITES), ["eu/acme"])  # before anything is read
    with pytest.raises(ConfigError, match="^--shard and --scope cannot be combined: a shard already chooses its "
                                          "products$"):
        make_plan(settings, scope=["p42"], shard=Shard(1, 2))
