"""The catalogue spec: compiling it, its errors, its patterns, and the columnar
classifier held to the per-key reading (``read_key``), the reference."""

from __future__ import annotations

import copy
import json

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from reconciler.catalogue import compile_checked, load_catalogue, read_key, shipped_names
from reconciler.catalogue.patterns import parse
from reconciler.catalogue.spec import shipped_spec
from reconciler.errors import CatalogueError
from reconciler.engine.frames import Classifier, classify_listing
from reconciler.objects import ObjectInfo

from .conftest import CREATORS, PRODUCTS

CLASSES = {"image": frozenset({"jpg", "png"}), "doc": frozenset({"pdf"})}


# --------------------------------------------------------------------------- shipped catalogues


def test_the_shipped_catalogues_compile():
    assert shipped_names() == ["creators", "product-images"]
    assert CREATORS.kinds == ("model", "post", "media")
    assert PRODUCTS.kinds == ("image",)  # products and variants are the platform's
    assert [e.name for e in PRODUCTS.entities] == ["product", "variant", "image"]
    assert load_catalogue() == CREATORS  # the default


def test_the_fingerprint_follows_the_meaning_not_the_layout():
    spec = shipped_spec("creators")
    # Another YAML text of the same data: flow style, other quoting, no comments.
    relaid = yaml.safe_load(yaml.safe_dump(spec, sort_keys=False, default_flow_style=True, default_style='"'))
    assert compile_checked(relaid, "x").fingerprint == CREATORS.fingerprint
    changed = copy.deepcopy(spec)
    changed["rules"][1]["match"] = "{model}/{file:video}"
    assert compile_checked(changed, "x").fingerprint != CREATORS.fingerprint
    reordered = copy.deepcopy(spec)
    reordered["rules"][0], reordered["rules"][1] = reordered["rules"][1], reordered["rules"][0]
    assert compile_checked(reordered, "x").fingerprint != CREATORS.fingerprint  # first match wins: order matters


def test_layout_settings_adjust_the_creators_catalogue():
    c = load_catalogue(None, None, {"images": [".TIF", "png"], "profile_folder": "_meta", "icon_names": ["Logo"]})
    assert c.classes["image"] == frozenset({"tif", "png"})
    assert read_key(c, "M/_meta/logo.TIF").rule.facet == "icon"
    assert read_key(c, "M/profile/icon.png").rule.name == "post-media"  # "profile" is a post folder now
    assert c.fingerprint != CREATORS.fingerprint
    with pytest.raises(CatalogueError, match="creators catalogue only"):
        load_catalogue("product-images", None, {"images": ["jpg"]})


# --------------------------------------------------------------------------- errors


def spec(**over):
    base = {
        "name": "docs",
        "classes": {"doc": ["pdf"]},
        "entities": {
            "tenant": {"table": "tenants", "key": {"name": "{tenant}"}},
            "doc": {"table": "docs", "parent": {"entity": "tenant", "column": "tenant_id"}, "unique": "global",
                    "key": {"path": "{key}"}, "columns": {"url": "{url}"}},
        },
        "rules": [{"match": "{tenant}/{name}.{ext:doc}", "row": "doc"}],
    }
    base.update(over)
    return base


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["entities"]["doc"]["parent"].update(entity="variant"),
     "catalogue.entities.doc.parent.entity: unknown entity 'variant'"),
    (lambda s: s["entities"]["doc"].update(table=7), "catalogue.entities.doc.table: must be string"),
    (lambda s: s["entities"]["doc"].update(colour="red"), "catalogue.entities.doc: unknown key 'colour'"),
    (lambda s: s.update(rules=[{"match": "{tenant}/{name:}", "row": "doc"}]), "catalogue.rules[0].match"),
    (lambda s: s.update(rules=[{"match": "{tenant}/{{x}", "row": "doc"}]), "catalogue.rules[0].match"),
    (lambda s: s.update(rules=[{"match": "{name}.{ext:doc}", "row": "doc"}]), "captures no {tenant}"),
    (lambda s: s.update(rules=[{"match": "{tenant}/{x}", "row": "nope"}]), "unknown entity 'nope'"),
    (lambda s: s["entities"]["doc"]["columns"].update(n={"count": "tenant"}), "count: 'tenant' is not an entity below doc"),
    (lambda s: s["entities"]["tenant"].update(parent={"entity": "doc", "column": "d"}), "exactly one entity has no parent"),
    (lambda s: s["entities"]["doc"].update(key={"path": "{key}", "other": "{key}"}, unique="parent"),
     "a key unique within its parent is made of captures"),
])
def test_a_malformed_spec_is_one_line_that_names_the_place(edit, message):
    bad = spec()
    edit(bad)
    with pytest.raises(CatalogueError) as e:
        compile_checked(bad, "docs.yaml")
    assert message in str(e.value)
    assert "\n" not in str(e.value) and str(e.value).startswith("catalogue spec docs.yaml")


def test_every_problem_is_reported_at_once():
    bad = spec()
    bad["entities"]["doc"]["parent"]["entity"] = "variant"
    bad["rules"].append({"match": "{a}/{b}", "row": "ghost"})
    with pytest.raises(CatalogueError) as e:
        compile_checked(bad, "docs.yaml")
    assert "2 problems" in str(e.value)
    assert "unknown entity 'variant'" in str(e.value) and "unknown entity 'ghost'" in str(e.value)


_yamlish = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["name", "entities", "rules", "table", "key", "match", "row", "parent", "columns", "entity",
                         "column", "count", "first", "facet", "rows", "unique", "owned", "x"]), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300)
@given(_yamlish, st.data())
def test_fuzzed_specs_give_one_error_line_never_a_traceback(junk, data):
    base = spec()
    where = data.draw(st.sampled_from(["top", "entity", "rule", "column", "whole"]))
    if where == "whole":
        candidate = junk
    elif where == "top":
        candidate = {**base, data.draw(st.sampled_from(["entities", "rules", "classes", "name"])): junk}
    elif where == "entity":
        candidate = copy.deepcopy(base)
        candidate["entities"]["doc"][data.draw(st.sampled_from(["key", "parent", "columns", "unique", "owned"]))] = junk
    elif where == "rule":
        candidate = copy.deepcopy(base)
        candidate["rules"][0][data.draw(st.sampled_from(["match", "row", "facet", "skip"]))] = junk
    else:
        candidate = copy.deepcopy(base)
        candidate["entities"]["doc"]["columns"]["url"] = junk
    try:
        compile_checked(candidate, "fuzz.yaml")
    except CatalogueError as e:
        assert "\n" not in str(e)


# --------------------------------------------------------------------------- patterns


@pytest.mark.parametrize("pattern, key, captures", [
    ("{a}/{b}", "x/y", {"a": "x", "b": "y"}),
    ("{a}/{b}", "x/y/z", None),
    ("{stem}.{ext}", "a.b.jpg", {"stem": "a.b", "ext": "jpg"}),  # the last dot
    ("{file:image}", "x.JPG", {"file": "x.JPG"}),  # classes regardless of case
    ("{file:image}", "x.gif", None),
    ("{stem}.{ext:image}", "x.PNG", {"stem": "x", "ext": "PNG"}),
    ("{s:icon|avatar}.{e:image}", "AVATAR.jpg", {"s": "AVATAR", "e": "jpg"}),
    ("{m}/**/{f}", "m/f", {"m": "m", "f": "f"}),  # ** is zero or more folders
    ("{m}/**/{f}", "m/a/b/f", {"m": "m", "f": "f"}),
    ("{m}/**", "m/a/b", {"m": "m"}),  # last: everything below
    ("{m}/**", "m", None),
    ("products/{id}/{f}", "Products/1/x", None),  # literals exactly
    ("{m}/{p}", "/p", {"m": "", "p": "p"}),  # an empty capture matches: read_key skips it as empty_segment
    ("{t}/{f:image|doc}", "t/x.pdf", {"t": "t", "f": "x.pdf"}),
])
def test_patterns_read_keys(pattern, key, captures):
    assert parse(pattern, CLASSES).match(key) == captures


@pytest.mark.parametrize("pattern, problem", [
    ("/a", "neither begins nor ends with '/'"), ("a//b", "an empty segment"), ("a/**x", "stands alone"),
    ("{a}{b}", "side by side"), ("{a}/{a}", "captured twice"), ("{key}", "object attribute"),
    ("{a", "without its"), ("**/x/**", "at most one '**'"),
])
def test_bad_patterns_say_why(pattern, problem):
    import re

    from reconciler.catalogue.errors import SpecError

    with pytest.raises(SpecError, match=re.escape(problem)):
        parse(pattern, CLASSES)


def test_empty_captures_and_unmatched_keys_are_skipped_with_reasons():
    c = compile_checked(spec(), "x")
    assert read_key(c, "acme/report.pdf").recognised
    assert read_key(c, "/report.pdf").reason == "empty_segment"
    assert read_key(c, "acme/notes.txt").reason == "unmatched"
    assert read_key(c, "acme/").reason == "folder_marker"


# --------------------------------------------------------------------------- the columnar classifier


_names = st.sampled_from(["Alice", "a b", "Zo\u00eb", "", "profile", "products", "p1", "x.y", "%", "nl\nx",
                          "hero-card", "500g", "HERO-CARD"])
_files = st.sampled_from(["1.jpg", "2.JPG", "icon.png", "Avatar.Jpeg", "banner.webp", "x.mp4", "n.txt", ".jpg",
                          "noext", "a.b.png", "f.avif"])


@st.composite
def keys(draw):
    depth = draw(st.integers(0, 5))
    parts = [draw(_names) for _ in range(depth)] + [draw(_files)]
    key = "/".join(parts)
    return key + ("/" if draw(st.integers(0, 9)) == 0 else "")


@settings(max_examples=150)
@given(st.lists(keys(), max_size=40, unique=True), st.sampled_from([CREATORS, PRODUCTS]))
def test_the_columnar_classifier_reads_every_key_as_read_key_does(listing, catalogue):
    found = classify_listing([ObjectInfo(k) for k in listing], catalogue)
    recognised = {k: rule for k, rule in found.items.frame().select("key", "rule").iter_rows()}
    skipped = {}
    for k in listing:
        r = read_key(catalogue, k)
        if r.reason is None and "\x00" in k:
            r = r.__class__(r.rule, r.captures, "invalid_key")
        if r.recognised:
            assert recognised[k] == r.rule.index, k
        else:
            skipped[r.reason] = skipped.get(r.reason, 0) + 1
    assert set(recognised) == {k for k in listing if read_key(catalogue, k).recognised}
    assert dict(found.skipped) == skipped


def test_each_folder_and_class_of_extension_is_read_once():
    """Keys of one folder whose extensions are of one class mean the same: read once,
    across chunks; keys in a folder where file names matter are read one by one."""
    import polars as pl

    classifier = Classifier(CREATORS)
    keys = [f"M/P/{i}.jpg" for i in range(1000)] + [f"M/P/{i}.png" for i in range(5)] + ["M/P/v.mp4",
                                                                                      "M/profile/icon.png"]
    frame = pl.DataFrame({"key": keys, "size_bytes": [1] * len(keys), "etag": ["e"] * len(keys),
                          "last_modified": [None] * len(keys)}, schema_overrides={"last_modified": pl.String})
    for _ in range(2):  # two chunks
        classifier.classify(frame.with_row_index("i"))
    assert sorted(classifier.meanings) == [("M/P/", 1), ("M/P/", 2)]  # images, videos; the profile key on its own


# --------------------------------------------------------------------------- authoring commands


def test_explain_says_which_rule_takes_a_key_and_what_it_makes(cli):
    r = cli("explain", "Alice/Beach Day/01.jpg", "Alice/profile/ICON.png", "Alice/notes.txt", "stray.jpg",
            "--cdn-base-url", "https://cdn.example.test")
    assert r.code == 0, r.err
    assert r.out.split("\n\n")[0].splitlines() == [
        "Alice/Beach Day/01.jpg",
        "  rule 7 post-media: {model}/{post}/**/{file:image|video}",
        "  captures: model='Alice', post='Beach Day', file='01.jpg'",
        "  row of media 'Alice/Beach Day/01.jpg'",
        "    under post 'Alice/Beach Day'",
        "    under model 'Alice'",
        "  url: https://cdn.example.test/Alice/Beach%20Day/01.jpg",
        "  type: image",
        "  size_bytes: null",
        "  etag: null",
        "Alice/profile/ICON.png",
        "  rule 4 profile-icon: {model}/profile/{stem:icon|avatar}.{ext:image}",
        "  captures: model='Alice', stem='ICON', ext='png'",
        "  facet icon of model 'Alice'",
        "Alice/notes.txt",
        "  rule 3 model-other-file: {model}/{file}",
        "  captures: model='Alice', file='notes.txt'",
        "  skipped: unsupported_extension",
        "stray.jpg",
        "  rule 1 not-in-a-folder: {file}",
        "  captures: file='stray.jpg'",
        "  skipped: not_in_model_folder",
    ]


def test_explain_reads_keys_below_the_sources_prefix_and_other_catalogues(cli):
    r = cli("explain", "media/products/p1/500g/hero-card/a.JPG", "products/p1/500g/banner/b.jpg", "--catalogue",
            "product-images", "--source", "s3://shop/media", "--cdn-base-url", "https://img.test")
    assert r.code == 0, r.err
    assert "  row of image 'media/products/p1/500g/hero-card/a.JPG'" in r.out
    assert "    under variant 'p1/500g' (the platform's: looked up, never written)" in r.out
    assert "    under product 'p1' (the platform's: looked up, never written)" in r.out
    assert "  image_url: https://img.test/media/products/p1/500g/hero-card/a.JPG" in r.out
    assert "  skipped: unknown_image_type" in r.out


def test_catalogue_prints_the_resolved_spec_and_its_fingerprint(cli, tmp_path):
    r = cli("catalogue")
    assert r.code == 0 and r.out.startswith(f"# catalogue creators, fingerprint {CREATORS.fingerprint}\n")
    assert yaml.safe_load(r.out)["name"] == "creators"
    spec = tmp_path / "mine.yaml"
    spec.write_text(r.out.replace("name: creators", "name: mine"))
    mine = cli("catalogue", "--catalogue", str(spec), "--format", "json")
    assert mine.code == 0 and '"name": "mine"' in mine.out
    schema = json.loads(cli("catalogue", "--catalogue", "product-images", "--plan-schema").out)
    assert schema["$defs"]["change"]["properties"]["kind"] == {"enum": ["image"]}
    assert schema["$defs"]["imageImage"]["required"] == ["file_name", "variant", "product_id", "variant_weight",
                                                          "image_type", "image_url", "size_bytes", "etag"]


def test_a_bad_catalogue_is_one_error_line(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nentities: {}\nrules: []\n")
    r = cli("plan", "--catalogue", str(bad), "--source", str(tmp_path))
    assert r.code == 1 and r.err.startswith("error: catalogue spec ") and r.err.count("\n") == 1
    missing = cli("plan", "--catalogue", "no-such-catalogue", "--source", str(tmp_path))
    assert "there is no shipped catalogue 'no-such-catalogue' (shipped: creators, product-images)" in missing.err
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [x\n")
    r = cli("plan", "--catalogue", str(broken), "--source", str(tmp_path))
    assert "is not valid YAML at line" in r.err and r.err.count("\n") == 1


# --------------------------------------------------------------------------- plans made before catalogues


def test_a_plan_made_before_catalogues_applies_as_a_creators_plan(database_url, tmp_path):
    """A plan file without ``target.catalogue`` was made by the hand-written engine,
    whose rows, digest and changes the creators catalogue makes too: it verifies and
    applies as a creators plan, and is refused under any other catalogue."""
    from reconciler import Settings
    from reconciler.commands import apply, make_plan
    from reconciler.errors import WrongCatalogueError
    from reconciler.planfile import load_plan, write_plan

    from .conftest import CDN

    settings = Settings(database=database_url, cdn_base_url=CDN)
    plan = make_plan(settings, objects=[ObjectInfo("Alice/Beach/1.jpg", 3, "e1")], seal=False)
    del plan.target["catalogue"]  # as plans were written before catalogues
    path = write_plan(plan, str(tmp_path / "old.json"))
    assert "catalogue" not in json.loads(open(path).read())["target"]
    with pytest.raises(WrongCatalogueError, match="made before catalogues, for the creators catalogue"):
        load_plan(path, PRODUCTS)
    assert apply(settings, path).summary["media"]["create"] == 1
