"""The fast path of plan verification (the creators catalogue's ``plan_rules(…).fast_shapes``)
against the general path:
every line the fast path admits is one the general path accepts, and it is staged as
the same text; whole files verify to the same plan and the same staged rows either way."""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, given, settings, strategies as st

from reconciler.planfile.rules import plan_rules
from reconciler.engine.diff import Change, change_order
from reconciler.errors import PlanFileError
from reconciler.store.execute import Stage
from reconciler.canonical import canonical
from reconciler.planfile import Plan, check_change, check_identity, check_values, verify_plan, write_plan

from .conftest import CREATORS

FAST_SHAPES = plan_rules(CREATORS).fast_shapes

_odd = st.text(
    alphabet=st.one_of(
        st.characters(min_codepoint=0, max_codepoint=0x7F),  # control characters, quotes, backslash, '/'
        st.characters(min_codepoint=0x80),  # non-ASCII, lone surrogates included
        st.sampled_from('/"\\ ,'),
    ),
    max_size=8,
)
_name = st.one_of(st.sampled_from(["Alice", "Bob Smith", "Zoë", "a,b", "x", "日本", "a/b"]), _odd)
_int = st.one_of(st.none(), st.integers(0, 10**6), st.integers(-(2**70), 2**70), st.sampled_from([2**63 - 1, 2**63, 10**17, 10**18]))


def _or(draw, valid, odd):
    """Mostly the valid value, sometimes an odd one."""
    return draw(odd) if draw(st.integers(0, 3)) == 0 else valid


@st.composite
def media_images(draw):
    model, post, leaf = draw(_name), draw(_name), draw(_name)
    key = _or(draw, f"{model}/{post}/{leaf}", _name)
    image = {
        "s3_key": _or(draw, key, _name),
        "post": _or(draw, f"{model}/{post}", _name),
        "url": _or(draw, "https://cdn.example.test/" + key, st.one_of(_name, st.none())),
        "type": _or(draw, "image", st.sampled_from(["video", "audio", None])),
        "size_bytes": _or(draw, draw(st.integers(0, 10**6)), st.one_of(_int, st.just(True), st.just(1.0))),
        "etag": draw(st.one_of(st.none(), _name)),
    }
    if draw(st.integers(0, 3)) == 0:
        for extra in draw(st.sets(st.sampled_from(["id", "created_at", "title", "-s3_key", "-etag"]), max_size=2)):
            if extra.startswith("-"):
                image.pop(extra[1:], None)
            else:
                image[extra] = draw(st.one_of(st.integers(-1, 5), _name))
    return key, image


@st.composite
def media_changes(draw):
    key, image = draw(media_images())
    action = draw(st.sampled_from(["create", "delete"]))
    c = {"action": action, "kind": "media", "key": key,
         "before": image if action == "delete" else None, "after": image if action == "create" else None}
    return c


def _general(c: dict) -> str | None:
    return check_change(c) or check_identity(c) or check_values(c)


def assert_fast_path_agrees(c: dict) -> None:
    """If the fast path admits the change's line, the general path accepts the change,
    and the two stage it as the same text."""
    text = canonical(c)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return  # a lone surrogate: never in text decoded from a file
    assert json.loads(text) == c
    rows = FAST_SHAPES[(c["kind"], c["action"])].findall("    " + text + ",")
    if not rows:
        return
    assert _general(c) is None
    fast, slow = Stage(CREATORS), Stage(CREATORS)
    try:
        fast.add_rows(c["kind"], rows)
        slow.add_batch([c])
        for f in (fast.files[c["kind"]], slow.files[c["kind"]]):
            f.seek(0)
        assert fast.files[c["kind"]].read() == slow.files[c["kind"]].read()
    finally:
        fast.close()
        slow.close()


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(media_changes())
def test_a_line_the_fast_path_admits_is_accepted_and_staged_as_the_general_path_does(c):
    assert_fast_path_agrees(c)


def test_a_post_of_a_name_and_slashes_is_refused_by_both_paths():
    """'M//' is no post key ('/'s at its ends do not count): the fast path must not take
    the line the general path refuses (found by the property above)."""
    image = {"s3_key": "M///a.jpg", "post": "M//", "url": "https://cdn.example.test/M///a.jpg", "type": "image",
             "size_bytes": 0, "etag": None}
    c = {"action": "create", "kind": "media", "key": "M///a.jpg", "before": None, "after": image}
    assert _general(c) == "names post 'M//'; a post key is MODEL/POST"
    assert not FAST_SHAPES[("media", "create")].findall("    " + canonical(c) + ",")
    assert _general({**c, "after": {**image, "post": "M//P"}}) is None
    assert FAST_SHAPES[("media", "create")].findall("    " + canonical({**c, "after": {**image, "post": "M//P"}}) + ",")


@st.composite
def model_changes(draw):
    name = draw(_name)
    image = {
        "folder_name": _or(draw, name, _name),
        "thumbnail_url": draw(st.one_of(st.none(), _name)),
        "icon_url": draw(st.one_of(st.none(), _name)),
        "banner_url": draw(st.one_of(st.none(), _name)),
        "post_count": _or(draw, draw(st.integers(0, 10**4)), st.one_of(_int, st.just(True), st.just(1.0))),
    }
    if draw(st.integers(0, 3)) == 0:
        for extra in draw(st.sets(st.sampled_from(["id", "status", "title", "-folder_name", "-icon_url"]), max_size=2)):
            if extra.startswith("-"):
                image.pop(extra[1:], None)
            else:
                image[extra] = draw(st.one_of(st.integers(-1, 5), _name))
    action = draw(st.sampled_from(["create", "delete"]))
    return {"action": action, "kind": "model", "key": name,
            "before": image if action == "delete" else None, "after": image if action == "create" else None}


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(model_changes())
def test_a_model_line_the_fast_path_admits_is_accepted_and_staged_as_the_general_path_does(c):
    """The catalogue's fast path also takes a model's creates and deletes (a row keyed
    on its own by one column, with text and integer fields)."""
    assert_fast_path_agrees(c)


_cdn_text = st.one_of(_odd, st.sampled_from([":a", "a,", ",", ":", "", "a\":b", "x,\"y", "https://c/a%20b.jpg"]))


@st.composite
def post_updates(draw):
    model, post = draw(_name), draw(_name)
    key = _or(draw, f"{model}/{post}", _name)

    def cdns():
        value = {k: draw(st.lists(_cdn_text, max_size=4)) for k in draw(st.sets(st.sampled_from(["images", "videos"])))}
        if draw(st.integers(0, 5)) == 0:
            value[draw(st.sampled_from(["images", "videos", "other"]))] = draw(st.one_of(st.none(), _odd, st.lists(st.integers(0, 2), max_size=2)))
        return value

    before, after = {"media_cdns": cdns()}, {"media_cdns": cdns()}
    if draw(st.integers(0, 4)) == 0:
        after["title"] = draw(_name)
    return {"action": "update", "kind": "post", "key": key, "before": before, "after": after}


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(post_updates())
def test_a_post_update_the_fast_path_admits_is_accepted_and_staged_as_the_general_path_does(c):
    assert_fast_path_agrees(c)


def test_plain_post_updates_take_the_fast_path():
    urls = ["https://cdn.example.test/A/B/1.jpg", "https://cdn.example.test/A/B/2,:x.jpg"]
    c = {"action": "update", "after": {"media_cdns": {"images": urls, "videos": []}},
         "before": {"media_cdns": {"images": urls[:1]}}, "key": "Alice/Beach", "kind": "post"}
    assert FAST_SHAPES[("post", "update")].findall("    " + canonical(c) + ",")


def test_plain_model_lines_take_the_fast_path():
    image = {"banner_url": None, "folder_name": "Alice", "icon_url": "https://cdn.example.test/Alice/profile/icon.png",
             "post_count": 2, "thumbnail_url": "https://cdn.example.test/Alice/a.jpg"}
    for action in ("create", "delete"):
        c = {"action": action, "after": image if action == "create" else None,
             "before": image if action == "delete" else None, "key": "Alice", "kind": "model"}
        assert FAST_SHAPES[("model", action)].findall("    " + canonical(c) + ",")


def test_plain_media_lines_take_the_fast_path():
    image = {"etag": "e", "post": "Alice/Beach", "s3_key": "Alice/Beach/1.jpg", "size_bytes": 3, "type": "image",
             "url": "https://cdn.example.test/Alice/Beach/1.jpg"}
    for action in ("create", "delete"):
        c = {"action": action, "after": image if action == "create" else None,
             "before": image if action == "delete" else None, "key": "Alice/Beach/1.jpg", "kind": "media"}
        assert FAST_SHAPES[("media", action)].findall("    " + canonical(c) + ",")


class _DictsOnly:
    """A sink that takes only dicts: every change goes the general path."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage

    def add_batch(self, changes):
        self.stage.add_batch(changes)

    def reset(self):
        self.stage.reset()


def _staged(path: str, fast: bool):
    stage = Stage(CREATORS)
    try:
        plan = verify_plan(path, keep_changes=False, sink=stage if fast else _DictsOnly(stage))
        out = {}
        for kind, f in stage.files.items():
            f.seek(0)
            out[kind] = f.read()
        return plan.plan_id, plan.summary, out
    finally:
        stage.close()


def _media(action, key, post, **extra):
    image = {"s3_key": key, "post": post, "url": "https://cdn.example.test/" + key, "type": "image", "size_bytes": 1,
             "etag": None, **extra}
    before, after = (None, image) if action == "create" else (image, None)
    return Change(action, "media", key, before, after)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["create", "delete"]), _name, st.booleans()), min_size=1, max_size=40))
def test_whole_files_stage_the_same_rows_either_way(tmp_path_factory, specs):
    changes, seen = [], set()
    for action, leaf, with_id in specs:
        key = f"Alice/Beach/{leaf}"
        if key in seen:
            continue
        seen.add(key)
        extra = {"id": 7} if with_id and action == "create" else {}
        changes.append(_media(action, key, "Alice/Beach", **extra))
    changes.sort(key=change_order(CREATORS.kinds))
    folder = tmp_path_factory.mktemp("fast")
    plan = Plan(changes=changes, source={"url": "s3://b/", "object_count": 0, "skipped": {}},
                target={"database": "x", "scope": None, "state_digest": "0" * 64}, tool_version="0",
                kinds=CREATORS.kinds)
    try:
        path = write_plan(plan, os.path.join(folder, "p.json"))
    except PlanFileError:
        return  # a lone surrogate cannot be written
    try:
        slow = _staged(path, fast=False)
    except PlanFileError as e:
        try:
            _staged(path, fast=True)
        except PlanFileError as f:
            assert str(f) == str(e)
        else:
            raise AssertionError("the fast path accepted what the general path refuses")
        return
    assert _staged(path, fast=True) == slow


def test_a_list_closing_after_the_changes_is_not_taken_for_their_end(tmp_path):
    """The end of the changes is looked for from the end of the file: a top-level list
    after them, closed on a line like theirs, makes the file be read as a whole, with
    the verdict the whole file gets."""
    plan = Plan(changes=[_media("create", "Alice/Beach/1.jpg", "Alice/Beach")], source={"url": "s3://b/", "object_count": 0, "skipped": {}},
                target={"database": "x", "scope": None, "state_digest": "0" * 64}, tool_version="0",
                kinds=CREATORS.kinds)
    path = write_plan(plan, str(tmp_path / "p.json"))
    assert verify_plan(path).plan_id == plan.plan_id
    with open(path, encoding="utf-8") as f:
        text = f.read()
    edited = text.replace('\n  ],\n', '\n  ],\n  "extra": [\n    {"a": 1}\n  ],\n', 1)
    assert edited != text
    with open(path, "w", encoding="utf-8") as f:
        f.write(edited)
    whole = json.loads(edited)
    assert whole["extra"] == [{"a": 1}] and len(whole["changes"]) == 1
    try:
        verify_plan(path)
    except PlanFileError as e:
        assert "not valid JSON" not in str(e)
        assert "extra" in str(e) or "plan_id" in str(e)
    else:
        raise AssertionError("a plan with a field added was accepted")
