"""Hostile input through the command line: plan files, config files, object keys, and
folder sources with symbolic links.

Every bad plan or config file gives exit code 1 and one line ``error: …`` on stderr
(no traceback), and writes nothing: not to the database, not to the working folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from urllib.parse import quote, unquote

import pytest

from reconciler.engine.diff import ACTION_ORDER

from .conftest import CAFE_NFC, CAFE_NFD, CDN, CREATORS, LONG_KEY, ODD_KEYS

KIND_ORDER = {kind: i for i, kind in enumerate(CREATORS.kinds)}

# --------------------------------------------------------------------------- helpers

SNAPSHOT = """
SELECT (SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY t.id)), '') FROM whitelabel_models t),
       (SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY t.id)), '') FROM whitelabel_posts t),
       (SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY t.id)), '') FROM whitelabel_media t),
       (SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY t.id)), '') FROM reconciler_applies t),
       (SELECT count(*) FROM reconciler_changes)
"""


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def summarize(changes) -> dict:
    summary = {k: {a: 0 for a in ("create", "update", "delete")} for k in CREATORS.kinds}
    for c in changes:
        if isinstance(c, dict) and c.get("kind") in summary and c.get("action") in summary["model"]:
            summary[c["kind"]][c["action"]] += 1
    return summary


def reseal(plan: dict, *, summary: bool = True) -> dict:
    """Recompute summary and plan_id as anyone can (docs/design.md), so that a mutated plan
    is refused for what is wrong with it, not for a stale plan_id."""
    plan = dict(plan)
    plan.pop("signature", None)
    if summary and isinstance(plan.get("changes"), list):
        plan["summary"] = summarize(plan["changes"])
    body = {k: v for k, v in plan.items() if k != "plan_id"}
    plan["plan_id"] = hashlib.sha256(canonical(body).encode("utf-8", "surrogatepass")).hexdigest()
    return plan


def as_tool_writes(plan: dict) -> str:
    """The layout `reconciler plan` writes: one canonical change per line."""
    top = json.dumps({k: v for k, v in plan.items() if k != "changes"}, indent=2, sort_keys=True, ensure_ascii=False)
    lines = [canonical(c) for c in plan["changes"]]
    if not lines:
        return '{\n  "changes": [],\n' + top[2:] + "\n"
    return '{\n  "changes": [\n    ' + ",\n    ".join(lines) + "\n  ],\n" + top[2:] + "\n"


def one_error_line(r) -> None:
    assert r.code == 1, (r.code, r.out, r.err)
    assert r.err.startswith("error: "), r.err
    assert r.err.count("\n") == 1, r.err
    assert "Traceback" not in r.err and r.out == ""


@pytest.fixture
def world(cli, sql, database_url, tmp_path):
    """A database holding an applied plan, and a second, valid plan against it
    (``base``, as a dict) to be mutated into hostile ones."""
    common = ["--database", database_url, "--cdn-base-url", CDN]
    b = tmp_path / "bucket"
    for key in ["M/a.jpg", "M/P/1.jpg", "M/P/2.mp4", "N/Q/x.png", "N/Q/y.png", "Old/R/z.jpg"]:
        (b / key).parent.mkdir(parents=True, exist_ok=True)
        (b / key).write_bytes(b"abc")
    assert cli("plan", "--source", b, "-o", "first.json", *common).code == 0
    assert cli("apply", "first.json", *common).code == 0
    (b / "Old" / "R" / "z.jpg").unlink()
    (b / "N" / "Q" / "y.png").write_bytes(b"longer now")
    for key in ["M/P/3.webp", "New/S/1.jpg"]:
        (b / key).parent.mkdir(parents=True, exist_ok=True)
        (b / key).write_bytes(b"abc")
    assert cli("plan", "--source", b, "-o", "second.json", *common).code == 0
    base = json.loads((tmp_path / "second.json").read_text())
    actions = {(c["kind"], c["action"]) for c in base["changes"]}
    assert {("media", "create"), ("media", "update"), ("media", "delete"), ("model", "create")} <= actions
    for name in ("first.json", "second.json"):
        (tmp_path / name).unlink()

    class World:
        pass

    w = World()
    w.base, w.common, w.tmp, w.sql, w.database_url = base, common, tmp_path, sql, database_url
    w.snapshot = lambda: tuple(sql(SNAPSHOT)[0])
    w.files = lambda: sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    w.before = w.snapshot()
    return w


def refused_everywhere(cli, world, path: str, *extra: str) -> list:
    """validate and apply both refuse ``path`` with one clean line; nothing is written."""
    files = world.files()
    results = []
    for argv in (["validate", path, *extra], ["apply", path, *extra, "--database", world.database_url],
                 ["show", path, *extra]):
        r = cli(*argv)
        one_error_line(r)
        results.append(r)
    assert world.snapshot() == world.before
    assert world.files() == files
    return results


# --------------------------------------------------------------------------- plan files


def _mutated(world, mutate, *, summary=True, layout="tool") -> str:
    plan = json.loads(json.dumps(world.base))
    mutate(plan)
    plan = reseal(plan, summary=summary)
    return as_tool_writes(plan) if layout == "tool" else json.dumps(plan, indent=2, sort_keys=True, ensure_ascii=False)


def _media(plan, action="create"):
    return next(c for c in plan["changes"] if c["kind"] == "media" and c["action"] == action)


def _model(plan):
    return next(c for c in plan["changes"] if c["kind"] == "model" and c["action"] == "create")


def _dup_same_key_other_action(plan):
    """A create and an update of the same media item, each in its place in the order."""
    c = _media(plan, "update")
    plan["changes"].append({"action": "create", "kind": "media", "key": c["key"], "before": None,
                            "after": dict(_media(plan)["after"], s3_key=c["key"])})
    plan["changes"].sort(key=lambda c: (KIND_ORDER[c["kind"]], ACTION_ORDER[c["action"]], c["key"]))


def _escaped_surrogate(w) -> str:
    plan = json.loads(json.dumps(w.base))
    c = _media(plan)
    c["key"] = c["after"]["s3_key"] = c["key"] + "@SURROGATE@"
    return as_tool_writes(reseal(plan)).replace("@SURROGATE@", "\\ud800")


HOSTILE_PLANS = {
    # bytes that are not a plan at all
    "empty": lambda w: b"",
    "whitespace": lambda w: b"  \n\t\n",
    "not json": lambda w: b"this is not a plan\n",
    "truncated": lambda w: as_tool_writes(reseal(w.base))[:-40].encode(),
    "100k nested brackets": lambda w: b"[" * 100_000,
    "100k nested, closed": lambda w: b"[" * 100_000 + b"]" * 100_000,
    "100k nested objects": lambda w: b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "binary": lambda w: bytes(range(256)) * 64,
    "utf-16": lambda w: json.dumps(w.base).encode("utf-16"),
    "json array": lambda w: b"[]",
    "json null": lambda w: b"null",
    "json string": lambda w: b'"plan"',
    "5000-digit number": lambda w: as_tool_writes(reseal(w.base)).replace('"size_bytes":3', '"size_bytes":' + "9" * 5000, 1).encode(),
    # the envelope
    "format_version 2": lambda w: _mutated(w, lambda p: p.update(format_version=2)),
    "format_version '1'": lambda w: _mutated(w, lambda p: p.update(format_version="1")),
    "format_version true": lambda w: _mutated(w, lambda p: p.update(format_version=True)),
    "no format_version": lambda w: _mutated(w, lambda p: p.pop("format_version")),
    "no changes": lambda w: _mutated(w, lambda p: p.pop("changes"), layout="pretty"),
    "changes an object": lambda w: _mutated(w, lambda p: p.update(changes={}), layout="pretty"),
    "source a string": lambda w: _mutated(w, lambda p: p.update(source="s3://x")),
    "state_digest a number": lambda w: _mutated(w, lambda p: p["target"].update(state_digest=5)),
    "plan_id wrong": lambda w: as_tool_writes(dict(reseal(w.base), plan_id="0" * 64)),
    "summary wrong": lambda w: _mutated(w, lambda p: p["summary"]["media"].update(create=99), summary=False),
    "signature garbage": lambda w: as_tool_writes(dict(reseal(w.base), signature="hmac-sha256:nope")),
    # changes
    "unknown action": lambda w: _mutated(w, lambda p: _media(p).update(action="upsert")),
    "unknown kind": lambda w: _mutated(w, lambda p: _media(p).update(kind="user")),
    "extra field in change": lambda w: _mutated(w, lambda p: _media(p).update(sql="DROP TABLE x")),
    "missing field in change": lambda w: _mutated(w, lambda p: _media(p).pop("before")),
    "change a list": lambda w: _mutated(w, lambda p: p["changes"].__setitem__(0, ["create"])),
    "key a number": lambda w: _mutated(w, lambda p: _model(p).update(key=7)),
    "key empty": lambda w: _mutated(w, lambda p: _model(p).update(key="")),
    "after a list": lambda w: _mutated(w, lambda p: _media(p).update(after=[1])),
    "post_count a string": lambda w: _mutated(w, lambda p: _model(p)["after"].update(post_count="1")),
    "post_count a bool": lambda w: _mutated(w, lambda p: _model(p)["after"].update(post_count=True)),
    "size_bytes a float": lambda w: _mutated(w, lambda p: _media(p)["after"].update(size_bytes=1.5)),
    "size_bytes NaN": lambda w: as_tool_writes(reseal(w.base)).replace('"size_bytes":3', '"size_bytes":NaN', 1),
    "type audio": lambda w: _mutated(w, lambda p: _media(p)["after"].update(type="audio")),
    "media_cdns a list": lambda w: _mutated(w, lambda p: next(c for c in p["changes"] if c["kind"] == "post")["after"].update(media_cdns=[])),
    "s3_key not the key": lambda w: _mutated(w, lambda p: _media(p)["after"].update(s3_key="Other/X/evil.jpg")),
    "id zero": lambda w: _mutated(w, lambda p: _media(p)["after"].update(id=0)),
    "lone surrogate in key, raw": lambda w: _mutated(w, lambda p: (_media(p).update(key=_media(p)["key"] + "\ud800"),
                                                              _media(p)["after"].update(s3_key=_media(p)["key"]))),
    "lone surrogate in key, escaped": _escaped_surrogate,
    "duplicate change": lambda w: _mutated(w, lambda p: p["changes"].insert(0, p["changes"][0])),
    "duplicate key, two actions": lambda w: _mutated(w, _dup_same_key_other_action),
    "changes out of order": lambda w: _mutated(w, lambda p: p["changes"].reverse()),
    "two changes on one line": lambda w: as_tool_writes(reseal(w.base)).replace("},\n    {", "}, {", 1),
}


def _check_all(cases: dict, check) -> None:
    """Run ``check(name)`` for every case (one database for all: a test each would
    spend most of its time making the database); report every failing case."""
    failures = {}
    for name in cases:
        try:
            check(name)
        except AssertionError as e:
            failures[name] = " ".join(str(e).split())[:300]
    assert not failures, "\n".join(f"{k}: {v}" for k, v in failures.items())


def test_hostile_plan_files(cli, world):
    def check(name):
        content = HOSTILE_PLANS[name](world)
        path = world.tmp / "hostile.json"
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8", errors="surrogatepass")
        else:
            path.write_bytes(content)
        results = refused_everywhere(cli, world, "hostile.json")
        assert all(len(r.err) < 600 for r in results), results[0].err
        path.unlink()

    _check_all(HOSTILE_PLANS, check)


def test_the_unmutated_plan_is_accepted(cli, world):
    """The hostile plans above differ from a good one only by what the test names."""
    (world.tmp / "good.json").write_text(as_tool_writes(reseal(world.base)))
    assert cli("validate", "good.json").code == 0
    (world.tmp / "good2.json").write_text(json.dumps(reseal(world.base), indent=1))
    assert cli("validate", "good2.json").code == 0
    r = cli("apply", "good.json", "--database", world.database_url)
    assert r.code == 0, r.err


def test_plan_path_not_a_plan_file(cli, world):
    (world.tmp / "folder.json").mkdir()
    refused_everywhere(cli, world, "folder.json")
    refused_everywhere(cli, world, "missing.json")
    refused_everywhere(cli, world, "/dev/zero")  # a device: never read into memory
    if hasattr(os, "mkfifo"):
        os.mkfifo(world.tmp / "pipe.json")  # a pipe: never waited on
        refused_everywhere(cli, world, "pipe.json")


@pytest.mark.parametrize(
    "name, mutate",
    [
        ("post_count beyond integer", lambda p: _model(p)["after"].update(post_count=10**30)),
        ("size_bytes beyond bigint", lambda p: _media(p)["after"].update(size_bytes=10**20)),
        ("NUL in a key", lambda p: (_media(p).update(key=_media(p)["key"] + "\x00"),
                                   _media(p)["after"].update(s3_key=_media(p)["key"]))),
    ],
)
def test_valid_json_the_database_refuses_changes_nothing(cli, world, name, mutate):
    """Plans that pass validation but hold values PostgreSQL cannot store."""
    (world.tmp / "p.json").write_text(_mutated(world, mutate))
    r = cli("apply", "p.json", "--database", world.database_url)
    one_error_line(r)
    assert world.snapshot() == world.before


def test_carriage_return_inside_a_change_line_changes_nothing(cli, world):
    text = as_tool_writes(reseal(world.base))
    first = text.index('{"action":"create"')
    text = text[:first] + '{"action":"create",\r' + text[first + len('{"action":"create",'):]
    (world.tmp / "p.json").write_text(text, newline="")
    r = cli("apply", "p.json", "--database", world.database_url)
    if r.code == 0:  # read as JSON whitespace, and applied exactly
        assert "as apply" in r.out
    else:
        one_error_line(r)
        assert world.snapshot() == world.before


# --------------------------------------------------------------------------- config files

HOSTILE_CONFIGS = {
    "invalid yaml": "source: [unclosed\n",
    "tab indentation": "source:\n\turl: x\n",
    "unknown top-level key": "sorce:\n  url: bucket\n",
    "unknown nested key": "source:\n  url: bucket\n  bucket_name: x\n",
    "source a number": "source: 5\n",
    "max_delete a word": "safety:\n  max_delete: ten\n",
    "max_delete negative": "safety:\n  max_delete: -1\n",
    "max_delete a bool": "safety:\n  max_delete: true\n",
    "lock_timeout a word": "apply:\n  lock_timeout: soon\n",
    "lock_timeout infinite": "apply:\n  lock_timeout: .inf\n",
    "database url a number": "database:\n  url: 5\n",
    "cdn_base_url a list": "cdn_base_url: [a]\n",
    "a list": "- source\n- database\n",
    "a scalar": "just words\n",
    "python tag": "source: !!python/object/apply:os.system ['echo pwned > pwned.txt']\n",
    "billion laughs": "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 10) if p else ', '.join(['lol'] * 10)}]\n"
        for p, n in zip([""] + list("abcdefgh"), "abcdefghi")
    ),
    "billion laughs in a known key": "layout:\n  images: &a [x, x, x, x, x, x, x, x, x, x]\n"
    "  videos: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n",
    "10k nested brackets": "source: " + "[" * 10_000 + "\n",
    "binary": None,
}


def test_hostile_config_files(cli, world):
    (world.tmp / "good.json").write_text(as_tool_writes(reseal(world.base)))

    def check(name):
        text = HOSTILE_CONFIGS[name]
        path = world.tmp / "bad.yaml"
        if text is None:
            path.write_bytes(bytes(range(256)) * 8)
        else:
            path.write_text(text)
        files = world.files()
        for argv in (["validate", "good.json"], ["apply", "good.json", "--database", world.database_url],
                     ["plan", "--source", "bucket", "-o", "new.json", "--database", world.database_url,
                      "--cdn-base-url", CDN]):
            r = cli(*argv, "--config", "bad.yaml")
            one_error_line(r)
            assert "bad.yaml" in r.err, r.err
        assert world.files() == files  # no plan written, nothing else (no pwned.txt)
        assert world.snapshot() == world.before

    _check_all(HOSTILE_CONFIGS, check)


def test_config_path_not_a_config_file(cli, world):
    (world.tmp / "good.json").write_text(as_tool_writes(reseal(world.base)))
    (world.tmp / "conf.d").mkdir()
    for config in ("conf.d", "missing.yaml", "/dev/zero"):
        r = cli("validate", "good.json", "--config", config)
        one_error_line(r)
        assert config in r.err


# --------------------------------------------------------------------------- object keys


def test_odd_keys_round_trip_from_s3_to_the_database(cli, database_url, bucket, sql, tmp_path):
    keys = ODD_KEYS + [LONG_KEY]
    assert len(set(keys)) == len(keys)
    bucket.put(*keys)
    common = ["--database", database_url, "--cdn-base-url", CDN]
    r = cli("plan", "--source", bucket.url, "-o", "p.json", *common)
    assert r.code == 0, r.err
    plan = json.loads((tmp_path / "p.json").read_text(encoding="utf-8"))
    assert plan["source"]["skipped"] == {}, plan["source"]
    assert {c["key"] for c in plan["changes"] if c["kind"] == "media"} == set(keys)
    r = cli("apply", "p.json", *common)
    assert r.code == 0, r.err

    rows = dict(sql("SELECT s3_key, url FROM whitelabel_media"))
    assert set(rows) == set(keys)  # byte for byte: no normalisation, no decoding
    for key, url in rows.items():
        assert url == CDN + "/" + quote(key, safe="/")
        path = url[len(CDN) + 1:]
        assert re.fullmatch(r"[A-Za-z0-9\-._~/%]*", path), url  # nothing left unescaped
        assert unquote(path) == key
    assert len(max(rows, key=lambda k: len(k.encode())).encode("utf-8")) == 1024

    models = {r[0] for r in sql("SELECT folder_name FROM whitelabel_models")}
    assert {CAFE_NFC, CAFE_NFD, "Spaces Model", "Trail ", "Back\\slash", "Long"} <= models
    assert CAFE_NFC != CAFE_NFD and len({m for m in models if m.startswith("Caf")}) == 2
    posts = {r[0] for r in sql("SELECT m.folder_name || '/' || p.folder_name FROM whitelabel_posts p "
                               "JOIN whitelabel_models m ON m.id = p.whitelabel_model_id")}
    assert {"Percent/100%", "Ask/why?", "Hash/#1", "Amp/R&D", "Spaces Model/Post  Two", "Trail /Post "} <= posts

    r = cli("plan", "--source", bucket.url, "-o", "again.json", "--detailed-exitcode", *common)
    assert r.code == 0, r.err  # converged: the keys read back equal the keys listed


# --------------------------------------------------------------------------- symlinks


def test_folder_source_never_leaves_its_root(cli, database_url, tmp_path):
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.jpg").write_bytes(b"secret")
    (outside / "dir" / "a.jpg").write_bytes(b"secret")
    (outside / "dir" / "P").mkdir()
    (outside / "dir" / "P" / "b.jpg").write_bytes(b"secret")
    root = tmp_path / "root"
    (root / "M" / "P").mkdir(parents=True)
    (root / "M" / "P" / "1.jpg").write_bytes(b"ok")
    links = {
        "M/P/out.jpg": outside / "secret.jpg",  # a file outside
        "M/P/rel.jpg": "../../../outside/secret.jpg",  # the same, relative
        "M/P/in.jpg": root / "M" / "P" / "1.jpg",  # a file inside: followed
        "M/P/dangling.jpg": tmp_path / "nothing-here.jpg",
        "M/linked": outside / "dir",  # a folder outside
        "M/P2": root / "M" / "P",  # a folder inside: not entered either
        "M/P/loop": root / "M",  # a loop
        "Evil": outside / "dir",  # a whole model folder outside
    }
    for name, target in links.items():
        os.symlink(target, root / name)
    common = ["--database", database_url, "--cdn-base-url", CDN]

    r = cli("plan", "--source", root, "-o", "p.json", *common)
    assert r.code == 0, r.err
    text = (tmp_path / "p.json").read_text()
    media = {c["key"] for c in json.loads(text)["changes"] if c["kind"] == "media"}
    assert media == {"M/P/1.jpg", "M/P/in.jpg"}
    assert "secret" not in text and "outside" not in text and "Evil" not in text

    # A model folder that is a link is not entered: as a --model it is unknown, an error.
    r = cli("plan", "--source", root, "--model", "Evil", "--model", "M", "-o", "scoped.json", *common)
    assert r.code == 1 and "model 'Evil' is neither in the source nor in the database" in r.err
    assert not (tmp_path / "scoped.json").exists()
    r = cli("plan", "--source", root, "--model", "M", "-o", "scoped.json", *common)
    assert r.code == 0, r.err
    media = {c["key"] for c in json.loads((tmp_path / "scoped.json").read_text())["changes"] if c["kind"] == "media"}
    assert media == {"M/P/1.jpg", "M/P/in.jpg"}

    # The source folder itself may be a link: its target is the root.
    os.symlink(root, tmp_path / "root-link")
    r = cli("plan", "--source", tmp_path / "root-link", "-o", "via-link.json", *common)
    assert r.code == 0, r.err
    media = {c["key"] for c in json.loads((tmp_path / "via-link.json").read_text())["changes"] if c["kind"] == "media"}
    assert media == {"M/P/1.jpg", "M/P/in.jpg"}
