"""The reconciler's promises over generated catalogues, on a real PostgreSQL.

Hypothesis writes catalogue specs — one to four levels, the top ones possibly the
platform's (looked up, never written), facets, literal folders, classes, alternatives
and ``**`` — then buckets and databases for them, and holds, for every one:

- a plan made a row at a time (``batch_rows=1``) is the plan made at once;
- a failed apply changes nothing;
- applying a plan makes the next plan empty;
- rolling that apply back restores the database exactly (ids and platform columns too).
"""

from __future__ import annotations

import contextlib
import json
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from reconciler import ObjectInfo, Settings
from reconciler.catalogue import compile_checked
from reconciler.commands import apply, make_plan, write_rollback
from reconciler.store.migrations import migrate
from reconciler.store.db import open_database
from reconciler.errors import DatabaseError
from reconciler.planfile import write_plan

from .conftest import CDN, new_database, sql_on

CLASSES = {"img": ["jpg", "png"], "doc": ["pdf"]}
VALUES = ["a", "b", "a b", "Zo\u00eb", "x.y", "c"]
FILES = ["1.jpg", "2.PNG", "r.pdf", "n.txt", "p.png", "q.JPG"]


@st.composite
def catalogues(draw) -> dict:
    """A spec, and what the platform holds for it: ``{"spec": …, "platform": [levels]}``."""
    n = draw(st.integers(1, 4))
    platform = draw(st.integers(0, n - 1))  # the top `platform` levels are the platform's
    literal = draw(st.booleans())  # keys begin with a literal folder
    leaf_by_key = draw(st.booleans()) or n == 1  # the leaf keyed by the object's key (else by its file name)
    deep = leaf_by_key and draw(st.booleans())  # "**" before the file
    entities: dict = {}
    for i in range(n):
        name = f"l{i}"
        e: dict = {"table": f"t_l{i}", "key": {"name": f"{{c{i}}}"}}
        if i > 0:
            e["parent"] = {"entity": f"l{i - 1}", "column": "parent_id"}
        if i < platform:
            e["owned"] = False
        entities[name] = e
    leaf = entities[f"l{n - 1}"]
    leaf["key"] = {"path": "{key}"} if leaf_by_key else {"name": "{f}"}
    if leaf_by_key and n > 1:
        leaf["unique"] = "global"
    leaf["columns"] = {"url": "{url}", "cls": "{class}", "size": "{size}", "etag": "{etag}"}
    leaf["moves"] = "content"
    leaf["platform_columns"] = {"made": "timestamptz DEFAULT now()"}
    for i in range(platform, n - 1):  # owned levels above the leaf
        e = entities[f"l{i}"]
        e["columns"] = {
            "title": f"{{c{i}}}",
            "n": {"count": f"l{n - 1}"},
            "first_url": {"first": {"rows": f"l{n - 1}", "class": "img"}},
            "urls": {"object": {"img": {"list": {"rows": f"l{n - 1}", "class": "img"}},
                                "doc": {"list": {"rows": f"l{n - 1}", "class": "doc"}}}},
        }
        e["platform_columns"] = {"made": "timestamptz DEFAULT now()"}
        if draw(st.booleans()):
            e["moves"] = "children"
    prefix = "L/" if literal else ""
    folders = "/".join(f"{{c{i}}}" for i in range(n - 1))
    folders = prefix + (folders + "/" if folders else "")
    file = draw(st.sampled_from(["{f:img|doc}", "{stem}.{ext:img|doc}"])) if leaf_by_key else "{f:img|doc}"
    rules = []
    if platform == 0 and n > 1 and draw(st.booleans()):  # a facet of the top, owned
        rules.append({"match": f"{prefix}{{c0}}/{{pic:img}}", "facet": "l0.pic"})
        entities["l0"].setdefault("columns", {})["pic"] = {"first": {"facet": "pic"}}
    rules.append({"name": "row", "match": folders + ("**/" if deep else "") + file, "row": f"l{n - 1}"})
    if n > 1:
        rules.append({"match": f"{prefix}{{c0}}/**", "skip": "other_file"})
    return {"spec": {"name": "gen", "classes": CLASSES, "entities": entities, "rules": rules},
            "n": n, "platform": platform, "literal": literal, "deep": deep}


def keys_for(shape: dict, rng: random.Random, count: int) -> list[str]:
    n, prefix = shape["n"], "L/" if shape["literal"] else ""
    out = set()
    for _ in range(count):
        folders = [rng.choice(VALUES) for _ in range(n - 1)]
        if shape["deep"] and rng.random() < 0.3:
            folders.append("sub")
        out.add(prefix + "/".join(folders + [rng.choice(FILES)]))
    out.add(prefix + "junk.bin")
    if shape["n"] > 1:
        out.add(prefix + rng.choice(VALUES) + "/" + rng.choice(["p.jpg", "q.png"]))  # a facet (or a skip)
    return sorted(out)


def listing(keys: list[str], rng: random.Random, content: dict[str, str]) -> list[ObjectInfo]:
    """Objects with their own content (ETag), or the content ``content`` gives a key."""
    return [ObjectInfo(k, len(content.get(k, k)), content.get(k, "e" + str(abs(hash(k)) % 10**8)) if rng.random() > .1
                       else None) for k in keys]


def platform_sql(shape: dict, rng: random.Random) -> list[str]:
    """The platform's tables and some of their rows (objects under the others are unknown_parent)."""
    out = []
    for i in range(shape["platform"]):
        if i == 0:
            out.append("CREATE TABLE t_l0 (id serial PRIMARY KEY, name text NOT NULL UNIQUE)")
            out += [f"INSERT INTO t_l0 (name) VALUES ('{v.replace(chr(39), chr(39) * 2)}')"
                    for v in VALUES if rng.random() < 0.8]
        else:
            out.append(f"CREATE TABLE t_l{i} (id serial PRIMARY KEY, parent_id int NOT NULL REFERENCES t_l{i - 1}(id) "
                       f"ON DELETE CASCADE, name text NOT NULL, UNIQUE (parent_id, name))")
            out += [f"INSERT INTO t_l{i} (parent_id, name) SELECT id, '{v.replace(chr(39), chr(39) * 2)}' "
                    f"FROM t_l{i - 1}" for v in VALUES if rng.random() < 0.8]
    return out


def dump(url: str, shape: dict) -> dict:
    with sql_on(url) as run:
        return {f"t_l{i}": run(f"SELECT row_to_json(t)::text FROM t_l{i} t ORDER BY id")
                for i in range(shape["platform"], shape["n"])}


def renamed(keys: list[str], shape: dict, rng: random.Random) -> tuple[list[str], dict[str, str]]:
    """An earlier bucket: one folder under another name (same content), some objects not there yet."""
    level = rng.randrange(shape["n"])
    at = level + (1 if shape["literal"] else 0)
    old = rng.choice(VALUES)
    content = {}
    earlier = []
    for k in keys:
        parts = k.split("/")
        if len(parts) > at + 1 and parts[at] == old and rng.random() < 0.9:
            parts[at] = "old"
            content["/".join(parts)] = k  # the same content as the key it becomes
            k = "/".join(parts)
        if rng.random() < 0.85:
            earlier.append(k)
    return earlier, content


@contextlib.contextmanager
def failing(url: str, table: str):
    """Every write to ``table`` fails (a statement-level trigger that raises)."""
    with sql_on(url) as run:
        run("CREATE FUNCTION rc_test_fail() RETURNS trigger LANGUAGE plpgsql AS "
            "$$BEGIN RAISE EXCEPTION 'injected failure'; END$$")
        run(f"CREATE TRIGGER rc_test_fail AFTER INSERT OR UPDATE OR DELETE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION rc_test_fail()")
        try:
            yield
        finally:
            run(f"DROP TRIGGER rc_test_fail ON {table}")
            run("DROP FUNCTION rc_test_fail()")


def body(path: str) -> dict:
    data = json.loads(open(path, encoding="utf-8").read())
    data.pop("created_at")
    data.pop("plan_id")
    return data


@pytest.mark.slow
@settings(max_examples=int(os.environ.get("RECONCILER_CATALOGUE_EXAMPLES", "25")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(catalogues(), st.randoms(use_true_random=False))
def test_any_catalogue_keeps_the_promises(pg_admin_url, tmp_path_factory, shape, rng):
    catalogue = compile_checked(shape["spec"], "generated")
    folder = tmp_path_factory.mktemp("plans")
    keys = keys_for(shape, rng, rng.randint(3, 25))
    earlier, content = renamed(keys, shape, rng)
    with new_database(pg_admin_url, schema=False) as url:
        with sql_on(url) as run:
            for statement in platform_sql(shape, rng):
                run(statement)
        with open_database(url) as db:
            migrate(db, catalogue)
        s = Settings(database=url, cdn_base_url=CDN, catalogue=catalogue, allow_empty_source=True,
                     max_delete_percent=100, max_url_rewrite_percent=100)
        first = make_plan(s, objects=listing(earlier, rng, content))
        apply(s, write_plan(first, str(folder / "first.json")))
        before = dump(url, shape)

        objects = listing(keys, random.Random(1), {})
        one = write_plan(make_plan(s, objects=objects), str(folder / "one.json"))
        rows = write_plan(make_plan(s, objects=objects, batch_rows=1), str(folder / "rows.json"))
        assert body(rows) == body(one), "a plan a row at a time is the plan at once"

        summary = json.loads(open(one, encoding="utf-8").read())["summary"]
        changed = [kind for kind, counts in summary.items() if sum(counts.values())]
        if changed:
            # A table the plan writes fails (its last kind with changes): nothing else may stay written.
            table = catalogue.entity(changed[-1]).table
            with failing(url, table), pytest.raises(DatabaseError, match="injected failure"):
                apply(s, one)
            assert dump(url, shape) == before, "a failed apply changes nothing"

        result = apply(s, one)
        again = make_plan(s, objects=objects)
        assert len(again.changes) == 0, [c.to_dict() for c in again.changes][:3]

        if result.apply_id is not None:
            _, path = write_rollback(s, result.apply_id, str(folder / "rollback.json"))
            apply(s, path)
            assert dump(url, shape) == before, "a rollback restores the database exactly"
