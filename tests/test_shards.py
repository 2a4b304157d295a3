"""--shard K/N: disjoint shard plans whose union is the unsharded plan, applied in any order."""

from __future__ import annotations

import hashlib
import itertools
import random
import uuid

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from reconciler import Settings, commands, plan_from_rows
from reconciler.errors import ConfigError
from reconciler.objects import ObjectInfo
from reconciler.engine.shards import Shard, parse_shard, shard_index

from .conftest import CDN, CREATORS, PRODUCTS, database_holding, desired_state, folder_bucket, sql_on
from .inventory_reports import put_report, rows_from_listing

# --------------------------------------------------------------------------- the hash


def test_the_documented_hash():
    for name in ("Alice", "Zoë Ortiz", "", "a/b"):
        want = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")
        for n in range(1, 8):
            assert shard_index(name, n) == want % n
            assert (name in Shard(want % n + 1, n)) is True
    assert shard_index("Alice", 1) == 0
    # Pinned: a change of the hash would move every model to another shard.
    assert [shard_index(name, 4) for name in ("Alice", "Bob", "Zoë Ortiz")] == [
        int.from_bytes(hashlib.sha256(n.encode()).digest()[:8], "big") % 4 for n in ("Alice", "Bob", "Zoë Ortiz")
    ]


@pytest.mark.parametrize("text, want", [("1/1", (1, 1)), ("3/7", (3, 7)), (" 2 / 4 ", (2, 4))])
def test_parse(text, want):
    s = parse_shard(text)
    assert (s.number, s.count) == want and str(s) == f"{want[0]}/{want[1]}"


@pytest.mark.parametrize("text, message", [
    ("0/4", "does not exist: K counts from 1"), ("5/4", "does not exist"), ("1/0", "out of range"),
    ("x", "is not K/N"), ("1-4", "is not K/N"), ("", "is not K/N"),
])
def test_parse_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_shard(text)


def test_cli_refuses_a_bad_shard(cli):
    r = cli("plan", "--shard", "0/3", "--source", "x")
    assert r.code == 1 and r.err.startswith("error: argument --shard: shard 0/3 does not exist: K counts from 1"), r.err


# --------------------------------------------------------------------------- pure: union and disjointness

MODELS = ["Alice", "Bob", "Carol", "Dan", "Eve", "Zoë", "M 1", "M+2", "x"]
keys = st.builds(
    lambda m, p, f, ext: f"{m}/{p}/{f}.{ext}" if p else f"{m}/{f}.{ext}",
    st.sampled_from(MODELS), st.sampled_from(["", "P", "Q", "profile"]), st.sampled_from(["1", "2", "icon", "banner"]),
    st.sampled_from(["jpg", "mp4", "txt"]),
)
buckets = st.dictionaries(keys, st.tuples(st.integers(1, 3), st.sampled_from(["a", "b", "c"])), max_size=25)


def objects_of(bucket: dict) -> list[ObjectInfo]:
    return [ObjectInfo(k, size, etag, None) for k, (size, etag) in sorted(bucket.items())]


def current_from(bucket: dict, shard: Shard | None = None) -> dict:
    """The database after applying ``bucket``, restricted to ``shard`` as the SQL scope is."""
    return database_holding(desired_state(objects_of(bucket)), shard)


def model_of(change) -> str:
    return change.key.partition("/")[0]


@hsettings(max_examples=60)
@given(before=buckets, after=buckets, n=st.integers(1, 7))
def test_shard_plans_are_disjoint_and_their_union_is_the_unsharded_plan(before, after, n):
    """Compared with moves off: with moves, a rename across shards is a move unsharded
    but a delete and a create sharded (see test_rename_across_shards below)."""
    whole = plan_from_rows(objects_of(after), current_from(before), CREATORS, cdn_base_url=CDN, moves=False).changes
    union = []
    for k in range(1, n + 1):
        shard = Shard(k, n)
        part = list(plan_from_rows(objects_of(after), current_from(before, shard), CREATORS, cdn_base_url=CDN,
                                   scope=shard, moves=False).changes)
        assert all(model_of(c) in shard for c in part)
        union += part
    assert sorted(c.to_dict().__repr__() for c in union) == sorted(c.to_dict().__repr__() for c in whole)
    assert len(union) == len(whole)


# --------------------------------------------------------------------------- on a database


def names_in_shards(n: int, per: int = 2, stem: str = "model") -> list[str]:
    """Top keys (model names, ``stem`` and a number) such that every shard of ``n``
    holds ``per`` of them."""
    found: dict[int, list[str]] = {i: [] for i in range(n)}
    for i in itertools.count():
        name = f"{stem}{i}"
        if len(found[shard_index(name, n)]) < per:
            found[shard_index(name, n)].append(name)
        if all(len(v) == per for v in found.values()):
            return sorted(sum(found.values(), []))


def bucket_keys(models: list[str], variant: int) -> list[str]:
    rng = random.Random(variant)
    out = []
    for m in models:
        out.append(f"{m}/thumb.jpg")
        for p in range(rng.randint(1, 2)):
            out += [f"{m}/post{p}/{i}.{rng.choice(['jpg', 'mp4'])}" for i in range(rng.randint(1, 3))]
    return out


def test_shard_plans_on_s3_union_and_any_order(bucket, settings, tmp_path, sql):
    n = 3
    models = names_in_shards(n)
    bucket.put(*bucket_keys(models, 1))
    settings.source = bucket.url
    commands.plan(settings, str(tmp_path / "seed.json"))
    commands.apply(settings, str(tmp_path / "seed.json"))
    sql("UPDATE whitelabel_models SET status = 'live'")  # unmanaged: survives every apply
    # A day later: one model gone, one new, posts and media changed everywhere.
    gone, new = models[0], "newcomer"
    bucket.delete(*[k for k in bucket_keys(models, 1) if k.startswith(gone + "/")])
    bucket.delete(*[k for k in bucket_keys(models, 1) if k.endswith("/0.jpg")])
    bucket.put(*bucket_keys(models[1:], 2), f"{new}/p/1.jpg", "stray.txt")
    settings.detect_moves = False
    whole = commands.make_plan(settings)
    assert whole.changes

    plans = []
    for k in range(1, n + 1):
        p, path = commands.plan(settings, str(tmp_path / f"shard{k}.json"), shard=Shard(k, n))
        assert p.target["shard"] == f"{k}/{n}"
        assert p.scope == sorted(m for m in set(models) | {new} if m in Shard(k, n))
        assert all(model_of(c) in p.scope for c in p.changes)
        plans.append((p, path))
    assert sorted(repr(c.to_dict()) for p, _ in plans for c in p.changes) == sorted(repr(c.to_dict()) for c in whole.changes)

    for p, path in reversed(plans):  # any order: none makes another stale
        result = commands.apply(settings, path)
        assert result.total == len(p.changes)
    assert commands.make_plan(settings).changes == []
    settings.detect_moves = True
    assert commands.make_plan(settings).changes == []
    assert sql("SELECT DISTINCT status FROM whitelabel_models WHERE folder_name <> %s", (new,)) == [("live",)]


def test_shard_plans_from_an_inventory_equal_those_from_the_listing(bucket, settings):
    from reconciler.sources import S3Source

    models = names_in_shards(2, per=2)
    bucket.put(*bucket_keys(models, 3))
    dest = "inv-" + uuid.uuid4().hex[:10]
    bucket.client.create_bucket(Bucket=dest)
    url = put_report(bucket.client, dest, f"i/{bucket.name}/c", bucket.name,
                     rows_from_listing(S3Source(bucket.name).list()), fmt="Parquet")
    settings.source = bucket.url
    for k in (1, 2):
        listed = commands.make_plan(settings, shard=Shard(k, 2))
        settings.inventory = url
        reported = commands.make_plan(settings, shard=Shard(k, 2))
        settings.inventory = None
        assert [c.to_dict() for c in reported.changes] == [c.to_dict() for c in listed.changes]
        assert reported.scope == listed.scope and reported.target["shard"] == f"{k}/2"


def test_rename_across_shards_is_a_delete_in_one_and_a_create_in_the_other(tmp_path, settings):
    old = "model0"
    new = next(f"renamed{i}" for i in itertools.count() if shard_index(f"renamed{i}", 2) != shard_index(old, 2))
    root = folder_bucket(tmp_path / "b", f"{old}/p/1.jpg", "keep/p/1.jpg")
    settings.source = str(root)
    commands.plan(settings, str(tmp_path / "a.json"))
    commands.apply(settings, str(tmp_path / "a.json"))
    (root / old).rename(root / new)
    by_shard = {}
    for k in (1, 2):
        p = commands.make_plan(settings, shard=Shard(k, 2))
        by_shard[k] = {(c.action, c.kind, c.key) for c in p.changes}
    old_k, new_k = shard_index(old, 2) + 1, shard_index(new, 2) + 1
    assert ("delete", "model", old) in by_shard[old_k]
    assert ("create", "model", new) in by_shard[new_k]
    assert not any(action == "move" for changes in by_shard.values() for action, _, _ in changes)


def test_a_shard_whose_models_all_left_is_not_an_empty_source(tmp_path, settings):
    models = names_in_shards(2, per=1)
    root = folder_bucket(tmp_path / "b", *[f"{m}/p/1.jpg" for m in models])
    settings.source = str(root)
    commands.plan(settings, str(tmp_path / "a.json"))
    commands.apply(settings, str(tmp_path / "a.json"))
    gone = models[0]
    (root / gone / "p" / "1.jpg").unlink()
    k = shard_index(gone, 2) + 1
    p = commands.make_plan(settings, shard=Shard(k, 2))
    assert {(c.action, c.kind, c.key) for c in p.changes} == {
        ("delete", "model", gone), ("delete", "post", f"{gone}/p"), ("delete", "media", f"{gone}/p/1.jpg")}
    assert p.scope == [gone]


def test_an_empty_shard_plans_nothing_and_applies(tmp_path, settings):
    root = folder_bucket(tmp_path / "b", "model0/p/1.jpg")
    settings.source = str(root)
    other = 2 if shard_index("model0", 2) == 0 else 1
    p, path = commands.plan(settings, str(tmp_path / "e.json"), shard=Shard(other, 2))
    assert p.changes == [] and p.scope == []
    assert commands.apply(settings, path).apply_id is None


def test_cli_shard_and_show(cli, tmp_path, database_url):
    root = folder_bucket(tmp_path / "b", *[f"{m}/p/1.jpg" for m in names_in_shards(2, per=2)])
    base = ["--source", str(root), "--database", database_url, "--cdn-base-url", CDN]
    r = cli("plan", *base, "--shard", "2/2")
    assert r.code == 0, r.err
    assert "Target: " in r.out and "shard 2/2 (2 models)." in r.out
    assert "-shard-2-of-2.json" in r.out
    path = r.out.split("written to ")[1].split(".json")[0] + ".json"
    shown = cli("show", path)
    assert "shard 2/2 (2 models)" in shown.out
    r = cli("plan", *base, "--shard", "1/2", "--model", "x")
    assert r.code == 1 and "--shard and --model cannot be combined" in r.err


# --------------------------------------------------------------------------- product-images


@pytest.mark.parametrize("where", ["s3", "folder"])
def test_product_images_shards_hash_the_product_id(cli, installed_shop, bucket, tmp_path, where):
    """A product's id (its plan key, ``p42``) is hashed, not the literal folder
    ``products`` before it. The shard plans split the whole plan; a shard's scope holds
    the platform's products of the shard, with images or not (p42 and p7 have none)."""
    products = names_in_shards(2, per=2, stem="p")
    with sql_on(installed_shop) as run:
        for p in products:
            run("INSERT INTO products (id, name) VALUES (%s, %s)", (p, p))
            run("INSERT INTO product_variants (product_id, weight) VALUES (%s, '500g')", (p,))
    keys = [f"products/{p}/500g/hero-card/{i}.jpg" for p in products for i in range(2)]
    if where == "s3":
        bucket.put(*keys)
        source = bucket.url
    else:
        source = str(folder_bucket(tmp_path / "b", *keys))
    settings = Settings(database=installed_shop, source=source, cdn_base_url=CDN, catalogue=PRODUCTS)
    union = []
    for k in (1, 2):
        shard = Shard(k, 2)
        p = commands.make_plan(settings, shard=shard)
        assert p.scope == sorted(name for name in [*products, "p42", "p7"] if shard_index(name, 2) == k - 1)
        assert {c.after["product_id"] for c in p.changes} == {name for name in products if name in shard}
        union += p.changes
    assert sorted(repr(c.to_dict()) for c in union) == sorted(
        repr(c.to_dict()) for c in commands.make_plan(settings).changes)

    r = cli("plan", "--catalogue", "product-images", "--source", source, "--database", installed_shop,
            "--cdn-base-url", CDN, "--shard", "2/2")
    assert r.code == 0, r.err
    n = len([name for name in [*products, "p42", "p7"] if shard_index(name, 2) == 1])
    assert f"shard 2/2 ({n} products)." in r.out and "-shard-2-of-2.json" in r.out

