"""Make ``tests/golden/plans.jsonl.gz``: plans made by the hand-written creators engine
(before catalogues), kept so that the catalogue-driven engine can be held to them byte
for byte (``tests/test_golden.py``).

Run once, from the repository root, on the commit before the catalogue engine:

    python -m tests.golden.generate

Each line of the file holds one plan's inputs — the listing, the database rows (full
images, by kind), the options — and what the engine made of them: the text of the plan
file's ``changes`` (one canonical change per line, as written), its ``summary`` and its
``source``. Inputs are stored, not regenerated, so the test depends on nothing here.

The inputs: every case file against an empty database and against one holding it, and
derandomized examples of the engine's own property-test strategies (awkward names,
roots, edited and misfiled rows, renamed folders, scopes and shards).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from reconciler import ObjectInfo, plan_from_rows
from reconciler.current import CurrentState
from reconciler.planfile import Plan, write_plan
from reconciler.shards import Shard

from ..conftest import database_holding, desired_state, images
from ..test_cases import CASES, load_case, objects_of, options
from ..test_frames import _roots, _scopes, databases, plan_listings

HERE = Path(__file__).parent
OUT = HERE / "plans.jsonl.gz"
CDN = "https://cdn.example.test/"


def plan_text(result) -> dict:
    """The plan file's changes (their lines as written) and summary."""
    plan = Plan(changes=result.changes, source={"url": "s3://b/", "object_count": 0, "skipped": {}},
                target={"database": "db", "scope": None, "state_digest": "0" * 64}, tool_version="t",
                created_at="2026-11-21T10:00:00Z")
    with tempfile.TemporaryDirectory() as folder:
        path = write_plan(plan, os.path.join(folder, "p.json"))
        text = Path(path).read_text("utf-8")
    data = json.loads(text)
    start = text.index('"changes": [') + len('"changes": [')
    end = text.index("\n  ],\n") if data["changes"] else start
    lines = [line.strip().rstrip(",") for line in text[start:end].splitlines() if line.strip()]
    return {"changes": lines, "summary": data["summary"]}


def scoped(current: CurrentState, scope) -> CurrentState:
    """The rows a scoped plan reads: those of the models in scope."""
    if scope is None:
        return current
    keep = (lambda m: m in scope)
    return CurrentState(
        models=[(k, r) for k, r in current.models if keep(k)],
        posts=[(k, r) for k, r in current.posts if keep(k.partition("/")[0])],
        media=[(k, r) for k, r in current.media if keep(r[0].partition("/")[0])],
    )


def record(name: str, objects, current: CurrentState, *, cdn: str, root: str, scope, moves: bool) -> dict:
    result = plan_from_rows(objects, current, cdn_base_url=cdn, root=root, models=scope, moves=moves)
    listing = desired_state(objects, cdn_base_url=cdn, root=root, models=scope)
    return {
        "name": name,
        "cdn_base_url": cdn,
        "root": root,
        "scope": (None if scope is None else {"shard": str(scope)} if isinstance(scope, Shard) else sorted(scope)),
        "moves": moves,
        "objects": [list(o) for o in objects],
        "current": {kind: sorted(rows.items()) for kind, rows in images(current).items()},
        "source": {"object_count": listing.object_count, "skipped": dict(sorted(listing.skipped.items())),
                   "skipped_examples": dict(sorted(listing.skipped_examples.items()))},
        "current_counts": result.current_counts,
        **plan_text(result),
    }


def from_cases() -> list[dict]:
    out = []
    for path in CASES:
        case = load_case(path)
        objects = objects_of(case)
        opts = options(case)
        scope = opts["models"]
        out.append(record(f"case:{path.stem}:empty", objects, CurrentState(), cdn=opts["cdn_base_url"],
                          root=opts["root"], scope=scope, moves=True))
        holding = database_holding(desired_state(objects, **opts))
        out.append(record(f"case:{path.stem}:holding", objects, holding, cdn=opts["cdn_base_url"],
                          root=opts["root"], scope=scope, moves=True))
    return out


def from_strategies(n: int) -> list[dict]:
    out: list[dict] = []

    @settings(derandomize=True, max_examples=n, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data(), _roots, st.booleans(), _scopes)
    def collect(data, root, moves, scope):
        objects = data.draw(plan_listings(root), label="listing")
        current = data.draw(databases(objects, root), label="database")
        out.append(record(f"generated:{len(out)}", objects, scoped(current, scope), cdn=CDN, root=root,
                          scope=scope, moves=moves))

    collect()
    return out


NAMES = ["Alice", "Alice Smith", "alice", "Bob", "Zo\u00eb", "Zoe\u0308", "A&B", "a+b", "100%", "Q&A #1", "x?y=1",
         "\u65e5\u672c", "\U0001f600", 'quo"te', "back\\slash", "tab\there", "nl\nx", "semi;colon", "profile", "raw"]
FILES = ["1.jpg", "2.JPG", "3.mp4", "x.mov", "\u00e9.heic", "a.b.jpeg", "notes.txt", "clip.webm", "p.PNG", ".jpg",
         "noext", "sub/4.jpg", "deep/er/5.gif", "v.M4V"]
PROFILE = ["icon.png", "avatar.JPG", "banner.webp", "cover.gif", "Icon.jpeg", "other.png", "icon.txt", "x/icon.png"]


def random_bucket(rng, root: str) -> list[ObjectInfo]:
    """A bucket of a few models, posts and media, with mostly unique ETags (so that
    renamed folders are moves), model images, profile files, folder markers and strays."""
    objects: dict[str, ObjectInfo] = {}

    def put(rel: str) -> None:
        etag = rng.choice([None, "e1", f"u{rng.randrange(10**6)}", f"u{rng.randrange(10**6)}"])
        objects[root + rel] = ObjectInfo(root + rel, rng.choice([None, 0, rng.randrange(1, 10**9)]), etag)

    for model in rng.sample(NAMES, rng.randint(1, 6)):
        for _ in range(rng.randint(0, 2)):
            put(f"{model}/{rng.choice(FILES)}")
        for _ in range(rng.randint(0, 2)):
            put(f"{model}/profile/{rng.choice(PROFILE)}")
        for post in rng.sample(NAMES, rng.randint(0, 4)):
            for _ in range(rng.randint(1, 6)):
                put(f"{model}/{post}/{rng.choice(FILES)}")
            if rng.random() < 0.2:
                objects[f"{root}{model}/{post}/"] = ObjectInfo(f"{root}{model}/{post}/", 0, None)
    for stray in rng.sample(["x.jpg", "/y.jpg", "M//z.jpg", "outside/a/b.jpg", "nul\x00/P/1.jpg"], 2):
        objects.setdefault(stray if stray.startswith("outside") else root + stray, ObjectInfo(
            stray if stray.startswith("outside") else root + stray, 1, "s"))
    keys = list(objects)
    rng.shuffle(keys)
    return [objects[k] for k in keys]


def renamed(rng, objects: list[ObjectInfo], root: str) -> list[ObjectInfo]:
    """An earlier bucket: a model folder and a post folder under other names, some
    objects with other content, some not there yet, one there no longer."""
    rels = [o.key[len(root):] for o in objects if o.key.startswith(root) and o.key[len(root):].count("/") >= 2]
    renames: dict[str, str] = {}
    if rels and rng.random() < 0.7:
        model = rng.choice(rels).partition("/")[0]
        renames[model + "/"] = rng.choice(["Old", "Alice", "zzz", "Zo\u00eb"]) + "/"
    if rels and rng.random() < 0.7:
        post = "/".join(rng.choice(rels).split("/")[:2]) + "/"
        renames.setdefault(post, post.partition("/")[0] + "/" + rng.choice(["Old", "Trip", "zzz"]) + "/")
    earlier = []
    for o in objects:
        if rng.random() < 0.1:
            continue
        if rng.random() < 0.1:
            o = o._replace(etag=rng.choice([None, "e1", "changed"]), size=rng.choice([None, 5]))
        rel = o.key[len(root):]
        for new, old in sorted(renames.items(), key=lambda item: -len(item[0])):
            if o.key.startswith(root) and rel.startswith(new):
                o = o._replace(key=root + old + rel[len(new):])
                break
        earlier.append(o)
    earlier.append(ObjectInfo(root + "Gone/P/1.jpg", 3, "g1"))
    return earlier


def edited(rng, state) -> CurrentState:
    """The rows of ``state``, some edited by another writer."""
    from reconciler.desired import MediaRow, ModelRow, PostRow

    models = {k: (r._replace(post_count=r.post_count + 1) if rng.random() < 0.1 else r) for k, r in state.models.items()}
    posts = {k: (r._replace(title="T") if rng.random() < 0.1 else r) for k, r in state.posts.items()}
    media = {}
    for k, r in state.media.items():
        roll = rng.random()
        if roll < 0.05:
            r = r._replace(url="u\\v")
        elif roll < 0.1:
            r = r._replace(etag=None)
        elif roll < 0.13 and posts:
            r = r._replace(post=rng.choice(sorted(posts)))
        media[k] = r
    assert all(isinstance(r, (ModelRow, PostRow, MediaRow)) for r in (*models.values(), *posts.values(), *media.values()))
    return CurrentState(models=sorted(models.items()), posts=sorted(posts.items()), media=sorted(media.items()))


def from_random(n: int) -> list[dict]:
    import random

    out = []
    for i in range(n):
        rng = random.Random(i)
        root = rng.choice(["", "", "media/"])
        objects = random_bucket(rng, root)
        state = desired_state(renamed(rng, objects, root), cdn_base_url=CDN, root=root)
        current = edited(rng, state)
        scope = None
        if rng.random() < 0.15:
            names = sorted({k for k, _ in current.models} | {o.key[len(root):].partition("/")[0] for o in objects})
            scope = rng.sample(names, min(len(names), 2))
        out.append(record(f"random:{i}", objects, scoped(current, scope), cdn=CDN, root=root, scope=scope,
                          moves=rng.random() < 0.85))
    return out


def main() -> None:
    plans = from_cases() + from_strategies(240) + from_random(120)
    import gzip

    with gzip.open(OUT, "wt", encoding="utf-8", compresslevel=9) as f:
        for p in plans:
            # ASCII: the listings hold lone surrogates (undecodable file names), which
            # only JSON's escapes can carry.
            f.write(json.dumps(p, ensure_ascii=True, sort_keys=True) + "\n")
    changes = sum(len(p["changes"]) for p in plans)
    print(f"wrote {len(plans)} plans, {changes} changes, to {OUT}")


if __name__ == "__main__":
    main()
