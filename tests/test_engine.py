"""The engine against a real database: a plan made a batch of models at a time (the
listing and the current media spilled to files) is the plan made in one batch, byte for
byte, whatever the database holds — renames across batches, rows filed under another
model than their key names, keys outside the root, values COPY escapes."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from reconciler import commands
from reconciler.store.current import RangeCopies
from reconciler.objects import ObjectInfo
from reconciler.planfile import write_plan

from .conftest import fresh_example, sql_on
from .test_apply import bucket_strategy, listing, renamed

ODD_ROWS = [
    # A row whose key names another model than the one it is filed under.
    "INSERT INTO whitelabel_media (whitelabel_post_id, s3_key, url, type) "
    "SELECT min(id), 'Zoë/Trip 2/a.jpg', 'u', 'image' FROM whitelabel_posts HAVING count(*) > 0 "
    "ON CONFLICT DO NOTHING",
    # A key outside the root, and one with characters COPY escapes.
    "INSERT INTO whitelabel_media (whitelabel_post_id, s3_key, url, type, etag) "
    "SELECT max(id), 'elsewhere\\tx.jpg', 'u\\\\v', 'image', '' FROM whitelabel_posts HAVING count(*) > 0 "
    "ON CONFLICT DO NOTHING",
]


def changes_text(settings, tmp_path, objects, name, **kwargs) -> str:
    """The plan file's changes (its envelope holds the time, so the whole file differs)."""
    path = write_plan(commands.make_plan(settings, objects=objects, **kwargs), str(tmp_path / name))
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return text[: text.index("\n  ],\n") if "\n  ],\n" in text else text.index('"changes": []')]


@pytest.mark.parametrize("copied", ["a query per range", "one scan, divided"])
@hsettings(max_examples=25)
@given(first=bucket_strategy(), second=bucket_strategy(), odd=st.booleans(), batch_rows=st.sampled_from([1, 4]))
def test_a_plan_in_batches_is_the_plan_in_one(examples_database_url, tmp_path_factory, copied, first, second, odd,
                                              batch_rows):
    """The database's rows are copied a range of models at a time, by a query per range
    or (past RangeCopies.RANGED_UP_TO ranges) in one scan divided by the client."""
    with fresh_example(examples_database_url, tmp_path_factory) as example, pytest.MonkeyPatch.context() as mp:
        settings, tmp_path = example.settings, example.tmp_path
        mp.setattr(RangeCopies, "RANGED_UP_TO", 10**6 if copied == "a query per range" else 1)
        commands.apply(settings, write_plan(commands.make_plan(settings, objects=listing(first)), str(tmp_path / "1.json")))
        if odd:
            with sql_on(examples_database_url) as sql:
                for statement in ODD_ROWS:
                    sql(statement)
        whole = changes_text(settings, tmp_path, listing(second), "whole.json")
        batched = changes_text(settings, tmp_path, listing(second), "batched.json", batch_rows=batch_rows)
        assert batched == whole


def test_a_model_renamed_into_another_batch_is_still_a_move(settings, sql, tmp_path):
    files = {f"{m}/Set {p}/{i}.jpg": f"{m}{p}{i}" for m in ("Ann", "Bob", "Cid", "Dee") for p in (1, 2) for i in (1, 2)}

    def objects(bucket):
        return [ObjectInfo(k, len(v), f'"{v}"', None) for k, v in bucket.items()]

    commands.apply(settings, write_plan(commands.make_plan(settings, objects=objects(files)), str(tmp_path / "1.json")))
    after = renamed(files, "Ann", "Zed")  # "Ann/" opens the first batch, "Zed/" is in the last
    plan = commands.make_plan(settings, objects=objects(after), batch_rows=4)
    assert plan.summary["model"]["move"] == 1 and plan.summary["media"]["move"] == 4
    assert plan.summary["model"]["create"] == plan.summary["media"]["create"] == 0
    assert changes_text(settings, tmp_path, objects(after), "b.json", batch_rows=4) == changes_text(
        settings, tmp_path, objects(after), "w.json"
    )


def test_the_spill_folder_is_gone_with_the_plan(settings, tmp_path, monkeypatch):
    import gc
    import tempfile

    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    os.makedirs(tmp_path / "tmp")
    monkeypatch.setattr(tempfile, "tempdir", None)
    objects = [ObjectInfo(f"M{i % 3}/P{i % 5}/{i}.jpg", i, f"e{i}", None) for i in range(60)]
    plan = commands.make_plan(settings, objects=objects, batch_rows=10)
    assert os.listdir(tmp_path / "tmp")  # the plan's lines wait there until written
    write_plan(plan, str(tmp_path / "p.json"))
    del plan
    gc.collect()
    assert os.listdir(tmp_path / "tmp") == []


def test_media_cdns_are_compared_as_values_not_as_the_text_someone_wrote(settings, sql, tmp_path):
    """media_cdns is a json column, kept as written: key order, spacing and escapes
    another writer chose are no drift; a value that differs is."""
    objects = [ObjectInfo("Zoë/Été/1.jpg", 1, "e1", None), ObjectInfo("Zoë/Été/2.mp4", 2, "e2", None),
               ObjectInfo("Ann/P/1.jpg", 3, "e3", None)]
    commands.apply(settings, write_plan(commands.make_plan(settings, objects=objects), str(tmp_path / "1.json")))
    ((images, videos),) = sql("SELECT media_cdns->>'images', media_cdns->>'videos' FROM whitelabel_posts "
                              "WHERE folder_name = 'Été'")
    rewritten = '{ "videos" : %s,"images":%s }' % (videos, images.replace("/", "\\/").replace("h", "\\u0068"))
    sql(f"UPDATE whitelabel_posts SET media_cdns = '{rewritten}' WHERE folder_name = 'Été'")
    assert commands.make_plan(settings, objects=objects).changes == []
    sql("""UPDATE whitelabel_posts SET media_cdns = '{"images": [], "videos": [], "extra": 1}', title = NULL
           WHERE folder_name = 'P'""")
    (change,) = commands.make_plan(settings, objects=objects).changes
    assert (change.action, change.key) == ("update", "Ann/P")
    assert change.before == {"title": None, "media_cdns": {"images": [], "videos": [], "extra": 1}}
    assert change.after == {"title": "P", "media_cdns": {"images": [f"{settings.cdn_base_url}/Ann/P/1.jpg"], "videos": []}}
