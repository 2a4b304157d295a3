"""Status cards through ``reconciler serve``'s API — ``GET /api/status/{key}`` (check one
product) and ``GET /api/status?by=top`` (check all) — over the newest check, for
product-images (on the shop's own tables) and creators; metrics labelled by the
catalogue's entities."""

from __future__ import annotations

import shutil

import pytest

from .conftest import folder_bucket, sql_on
from .serving import OLD, SHOP, image_row, serve, shop_database_url  # noqa: F401 — fixtures

pytestmark = pytest.mark.slow

def test_check_one_product_and_check_all_over_the_newest_check(serve, shop_database_url, tmp_path):
    image_row(shop_database_url, OLD)
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    s = serve(bucket, database=shop_database_url, catalogue="product-images")
    c = s.client()

    # The first check finds an empty bucket against a row, and is refused: no check has made a plan yet.
    first = s.wait_run(s.wait_for(lambda: s.runs(), what="the first run")[-1]["id"])
    assert first["status"] == "refused"
    p7 = c.get("/api/status/p7")
    assert p7.status_code == 200
    assert p7.json()["state"] == "not_checked" and p7.json()["checked"] is None and p7.json()["objects"] is None
    assert p7.json()["records"] == 1 and p7.json()["entity"] == "product"
    missing = c.get("/api/status/p1")
    assert missing.status_code == 404
    assert missing.json()["error"] == "there is no product 'p1': it is not in the database, and no check has run yet"
    every = c.get("/api/status", params={"by": "top"}).json()
    assert [(t["key"], t["state"]) for t in every["tops"]] == [("p42", "not_checked"), ("p7", "not_checked")]

    # The example bucket arrives; a check plans it.
    shutil.copytree(SHOP / "bucket", bucket, dirs_exist_ok=True)
    full = s.wait_run(c.post("/api/runs").json()["id"])
    assert full["status"] == "planned" and full["skipped"] == {"unknown_image_type": 1, "unknown_parent": 1,
                                                               "unmatched": 1}
    card = c.get("/api/status/p7").json()
    assert card["checked"] == {"run": full["id"], "status": "planned", "planned_at": full["planned_at"], "scope": None}
    assert {k: card[k] for k in ("state", "in_sync", "objects", "records", "records_in_sync", "to_create",
                                 "to_delete", "skipped")} == {
        "state": "out_of_sync", "in_sync": False, "objects": 2, "records": 1, "records_in_sync": 0,
        "to_create": 1, "to_delete": 1, "skipped": {"unknown_image_type": 1}}
    unknown = c.get("/api/status/p99").json()  # the platform has no product p99: its image is skipped
    assert unknown["in_database"] is False and unknown["objects"] == 1
    assert unknown["skipped"] == {"unknown_parent": 1} and unknown["to_create"] == 0
    assert c.get("/api/status/p1").json()["error"].endswith(
        f"the bucket held nothing under it at the newest check (run {full['id']})")

    every = c.get("/api/status", params={"by": "top"}).json()
    assert every["total_tops"] == 3 and every["in_sync"] is False and every["rows_by_kind"] == {"image": 1}
    assert [(t["key"], t["objects"], t["to_create"], t["to_delete"]) for t in every["tops"]] == [
        ("p42", 3, 3, 0), ("p7", 2, 1, 1), ("p99", 1, 0, 0)]
    assert [t["key"] for t in c.get("/api/status", params={"by": "top", "drift": "1"}).json()["tops"]] == ["p42", "p7"]
    paged = c.get("/api/status", params={"by": "top", "q": "P", "offset": 1, "limit": 1}).json()
    assert [t["key"] for t in paged["tops"]] == ["p7"] and paged["total_tops"] == 3
    assert c.get("/api/status", params={"by": "model"}).status_code == 400

    # Check one product (a run scoped to it), approve it: that product is in sync; the others still wait.
    scoped = s.wait_run(c.post("/api/runs", json={"scope": ["p7"]}).json()["id"])
    assert scoped["scope"] == ["p7"] and scoped["summary"]["image"] == {"create": 1, "update": 0, "move": 0, "delete": 1}
    assert c.post(f"/api/runs/{scoped['id']}/apply").json()["status"] == "applied"
    card = c.get("/api/status/p7").json()
    assert card["state"] == "in_sync" and card["checked"]["run"] == scoped["id"]
    assert card["checked"]["status"] == "applied" and card["records"] == card["records_in_sync"] == 1
    assert c.get("/api/status/p42").json()["checked"]["run"] == full["id"]

    # Metrics: the kind label is the catalogue's entity; rows and skips as the status says.
    metrics = c.get("/metrics").text
    assert 'reconciler_drift_changes{action="create",kind="image"} 4.0' in metrics
    assert 'reconciler_rows{kind="image"} 1.0' in metrics
    assert 'reconciler_objects_skipped{reason="unknown_parent"} 1.0' in metrics
    assert 'kind="model"' not in metrics

    # A new full check: the runs before it keep no tallies (one census per catalogue, not per run).
    newest = s.wait_run(c.post("/api/runs").json()["id"])
    with sql_on(shop_database_url) as sql:
        assert sql("SELECT id FROM reconciler_runs WHERE tops IS NOT NULL") == [(newest["id"],)]
    assert c.get("/api/status/p7").json()["checked"]["run"] == newest["id"]


def test_creators_cards_scope_alias_and_every_kind_in_the_metrics(serve, tmp_path):
    keys = ("Alice/cover.jpg", "Alice/Beach/1.jpg", "Alice/Beach/notes.txt", "Bob/Hike/a.jpg", "readme.md")
    s = serve(folder_bucket(tmp_path / "bucket", *keys))
    c = s.client()
    run = s.wait_run(s.wait_for(lambda: s.runs(), what="the first run")[-1]["id"])
    alice = c.get("/api/status/Alice").json()
    assert alice["objects"] == 3 and alice["skipped"] == {"unsupported_extension": 1}
    assert alice["kinds"]["media"]["create"] == 1 and alice["to_create"] == 3  # the model, its post, the post's image
    nested = c.get("/api/status/Alice/Beach")
    assert nested.status_code == 400 and nested.json()["error"] == \
        "'Alice/Beach' is not a model key (a folder name, without '/')"
    every = c.get("/api/status", params={"by": "top"}).json()
    assert every["entity"] == "model" and [t["key"] for t in every["tops"]] == ["Alice", "Bob"]
    assert every["skipped"] == {"not_in_model_folder": 1, "unsupported_extension": 1}

    metrics = c.get("/metrics").text
    for kind in ("model", "post", "media"):
        assert f'reconciler_rows{{kind="{kind}"}} 0.0' in metrics
        assert f'reconciler_drift_changes{{action="move",kind="{kind}"}} 0.0' in metrics

    # "models" is the creators' spelling of "scope"; one of them, not both.
    assert c.post("/api/runs", json={"models": ["Bob"]}).status_code == 202
    assert c.post("/api/runs", json={"scope": ["Bob"]}).status_code == 202
    both = c.post("/api/runs", json={"scope": ["Bob"], "models": ["Bob"]})
    assert both.status_code == 400 and "not both" in both.json()["error"]
    assert run["status"] == "planned"
