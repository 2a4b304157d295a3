"""The audit's shape since the plan file is stored (issue 11, item 4): the plan file
once, compressed, on the apply; before images of updated, moved and deleted rows (after
images of updated and moved ones); no row per create. Rollback works from that shape
and from the old one (a row per create, no stored plan). And the fast canonical form
is ``json.dumps``' byte for byte."""

from __future__ import annotations

import json
import zlib

import pytest
from hypothesis import given, strategies as st

from reconciler import commands
from reconciler.errors import StalePlanError
from reconciler.canonical import canonical_checked
from reconciler.planfile import load_plan

from .test_apply import STUDIO, apply_files, content, renamed, snapshot

# --------------------------------------------------------------------------- canonical form

_text = st.text(
    alphabet=st.one_of(
        st.characters(min_codepoint=0, max_codepoint=0x7F),  # control characters, quotes, backslash
        st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),  # lone surrogates
        st.characters(),
    ),
    max_size=12,
)
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), _text)
_value = st.recursive(
    _scalar, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_text, inner, max_size=4)), max_leaves=12
)


@given(st.lists(st.dictionaries(_text, _value, max_size=6), max_size=4))
def test_fast_canonical_form_is_json_dumps(objs):
    assert canonical_checked(objs) == json.dumps(objs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# --------------------------------------------------------------------------- audit shape


def _audit(sql, apply_id):
    return sorted(sql("SELECT kind, action, key FROM reconciler_changes WHERE apply_id = %s", (apply_id,)))


def test_creates_have_no_audit_rows_and_the_plan_file_is_stored(settings, database_url, sql, tmp_path):
    plan, result = apply_files(settings, tmp_path, STUDIO, "p0.json")
    assert result.summary["media"]["create"] == 4
    assert _audit(sql, result.apply_id) == []
    stored = sql("SELECT plan_file FROM reconciler_applies WHERE id = %s", (result.apply_id,))[0][0]
    assert zlib.decompress(bytes(stored)) == (tmp_path / "p0.json").read_bytes()


def test_rollback_from_the_new_shape_restores_creates_updates_moves_and_deletes(settings, database_url, sql, tmp_path):
    empty = snapshot(database_url)
    apply_files(settings, tmp_path, STUDIO, "p0.json")
    first = snapshot(database_url)
    # A move (Bob → Bobby), an update (Carol's post loses a file), a delete, a create.
    files = renamed(STUDIO, "Bob", "Bobby")
    files.pop("Carol/Home/1.jpg")
    files["Carol/Home/2.jpg"] = "window"
    files["Dan/Walk/1.jpg"] = "dog"
    plan, result = apply_files(settings, tmp_path, files, "p1.json")
    actions = {(c.kind, c.action) for c in plan.changes}
    assert {("model", "move"), ("media", "delete"), ("media", "create"), ("model", "create")} <= actions
    audited = _audit(sql, result.apply_id)
    assert all(action in ("update", "move", "delete") for _, action, _ in audited)
    assert ("media", "delete", "Carol/Home/1.jpg") in audited and ("model", "move", "Bobby") in audited

    commands.rollback(settings, result.apply_id, str(tmp_path / "rb1.json"))
    back = load_plan(str(tmp_path / "rb1.json"))
    assert ("model", "delete", "Dan") in {(c.kind, c.action, c.key) for c in back.changes}
    commands.apply(settings, str(tmp_path / "rb1.json"))
    assert snapshot(database_url)["models"] == first["models"]  # ids and status too
    assert content(snapshot(database_url)) == content(first)

    commands.rollback(settings, 1, str(tmp_path / "rb0.json"))
    commands.apply(settings, str(tmp_path / "rb0.json"))
    assert content(snapshot(database_url)) == content(empty)


def test_rollback_of_creates_is_refused_when_a_created_row_changed(settings, sql, tmp_path):
    apply_files(settings, tmp_path, STUDIO, "p0.json")
    sql("UPDATE whitelabel_media SET url = 'https://elsewhere/x' WHERE s3_key = 'Bob/Trip/x.png'")
    with pytest.raises(StalePlanError, match="'Bob/Trip/x.png' changed since"):
        commands.rollback(settings, 1, str(tmp_path / "rb.json"))


def _to_old_shape(sql, apply_id):
    """Rewrite an apply's audit as applies before the plan file was stored kept it:
    a full after image per created row (parent keys beside), no plan file."""
    sql(
        """INSERT INTO reconciler_changes (apply_id, kind, action, row_id, key, after_parent, after)
           SELECT %(a)s, 'model', 'create', m.id, m.folder_name, NULL, row_to_json(m) FROM whitelabel_models m
           UNION ALL
           SELECT %(a)s, 'post', 'create', p.id, m.folder_name || '/' || p.folder_name, m.folder_name, row_to_json(p)
           FROM whitelabel_posts p JOIN whitelabel_models m ON m.id = p.whitelabel_model_id
           UNION ALL
           SELECT %(a)s, 'media', 'create', x.id, x.s3_key, m.folder_name || '/' || p.folder_name, row_to_json(x)
           FROM whitelabel_media x JOIN whitelabel_posts p ON p.id = x.whitelabel_post_id
           JOIN whitelabel_models m ON m.id = p.whitelabel_model_id""",
        {"a": apply_id},
    )
    sql("UPDATE reconciler_applies SET plan_file = NULL WHERE id = %s", (apply_id,))


def test_an_apply_audited_the_old_way_still_rolls_back(settings, database_url, sql, tmp_path):
    empty = snapshot(database_url)
    apply_files(settings, tmp_path, STUDIO, "p0.json")
    rows = sum(sql(f"SELECT count(*) FROM {t}")[0][0] for t in ("whitelabel_models", "whitelabel_posts", "whitelabel_media"))
    _to_old_shape(sql, 1)
    commands.rollback(settings, 1, str(tmp_path / "rb.json"))
    back = load_plan(str(tmp_path / "rb.json"))
    assert {c.action for c in back.changes} == {"delete"} and len(back.changes) == rows == 9
    commands.apply(settings, str(tmp_path / "rb.json"))
    assert content(snapshot(database_url)) == content(empty)
