"""``reconciler serve``: the JSON API, run states, approval, auto-apply, tokens and metrics,
against the real server (a subprocess on a loopback port) and a real PostgreSQL."""

from __future__ import annotations

import json
import unicodedata
import zlib

import psycopg2
import pytest

from reconciler.planfile import verify_plan

from .conftest import folder_bucket
from .serving import serve  # noqa: F401 — the fixture

pytestmark = pytest.mark.slow

API_TOKEN = "alice-token-0123456789abcdef"
OTHER_TOKEN = "bob-token-0123456789abcdef00"
HOOK_TOKEN = "hook-token-0123456789abcdef"
METRICS_TOKEN = "prometheus-token-0123456789ab"
TOKENS_ENV = {"RECONCILER_API_TOKENS": f"alice:{API_TOKEN}, bob:{OTHER_TOKEN}", "RECONCILER_WEBHOOK_TOKEN": HOOK_TOKEN,
              "RECONCILER_METRICS_TOKEN": METRICS_TOKEN}

KEYS = ("Alice/cover.jpg", "Alice/Beach/1.jpg", "Alice/Beach/2.mp4", "Bob/Hike/a.jpg", "Bob/profile/icon.png")


def first_run(server) -> dict:
    """The run the leader starts at once (schedule), planned."""
    server.wait_for(lambda: server.runs(), what="the first scheduled run")
    return server.wait_run(server.runs()[-1]["id"])


def total(summary) -> int:
    return sum(sum(a.values()) for a in summary.values())


def test_plan_approve_in_sync(serve, tmp_path, sql):
    """The newcomer's path: drift in /api/status and /metrics, approve, in_sync."""
    src = folder_bucket(tmp_path / "bucket", *KEYS)
    s = serve(src)
    c = s.client()
    run = first_run(s)
    assert run["trigger"] == "schedule" and run["status"] == "planned" and run["scope"] is None
    assert run["summary"]["media"]["create"] == 3 and run["change_count"] == 7
    assert run["phase"] == "done" and run["progress"] == {"objects_listed": 5, "rows_read": 0}
    st = c.get("/api/status").json()
    assert st["in_sync"] is False and st["leader"] is True and st["pending_run"] == run["id"]
    assert st["rows_in_database"] == 0
    assert st["drift"]["model"] == {"create": 2, "update": 0, "move": 0, "delete": 0}
    assert st["source"] == str(src) and "password" not in json.dumps(st) and st["version"]
    metrics = c.get("/metrics").text
    assert "reconciler_in_sync 0.0" in metrics and "reconciler_leader 1.0" in metrics
    assert 'reconciler_drift_changes{action="create",kind="media"} 3.0' in metrics
    assert 'reconciler_runs_total{status="planned",trigger="schedule"} 1.0' in metrics
    assert "reconciler_objects_listed 5.0" in metrics and "reconciler_plan_duration_seconds_count 1.0" in metrics

    # The stored plan file is a plan file like any other; the run shows its changes, paged.
    plan_bytes = c.get(f"/api/runs/{run['id']}/plan").content
    (tmp_path / "p.json").write_bytes(plan_bytes)
    p = verify_plan(str(tmp_path / "p.json"))
    assert p.plan_id == run["plan_id"] and len(p.changes) == 7
    stored = sql("SELECT plan_file FROM reconciler_runs WHERE id = %s", (run["id"],))[0][0]
    assert zlib.decompress(bytes(stored)) == plan_bytes
    page = c.get(f"/api/runs/{run['id']}", params={"offset": 2, "limit": 3}).json()
    assert page["total_changes"] == 7 and [ch["key"] for ch in page["changes"]] == [ch.key for ch in p.changes[2:5]]

    applied = c.post(f"/api/runs/{run['id']}/apply")
    assert applied.status_code == 200, applied.text
    a = applied.json()
    assert a["status"] == "applied" and a["apply_id"] and a["decided_by"] == "local"
    assert a["progress"]["rows_applied"] == 7 and a["progress"]["changes_staged"] == 7
    assert sql("SELECT count(*) FROM whitelabel_media")[0][0] == 3
    st = c.get("/api/status").json()
    assert st["in_sync"] is True and st["pending_run"] is None and total(st["drift"]) == 0
    assert st["last_apply_at"] and st["rows_in_database"] == 7  # live, not the count the plan saw
    history = c.get("/api/history").json()
    assert history[0]["apply_id"] == a["apply_id"] and history[0]["plan_id"] == run["plan_id"]
    assert history[0]["os_user"].startswith("local")
    metrics = c.get("/metrics").text
    assert "reconciler_in_sync 1.0" in metrics and "reconciler_apply_duration_seconds_count 1.0" in metrics
    assert "reconciler_last_apply_timestamp_seconds" in metrics

    # A second approval of the same run is refused; a new check finds nothing.
    again = c.post(f"/api/runs/{run['id']}/apply")
    assert again.status_code == 409 and "applied, not planned" in again.json()["error"]
    r = c.post("/api/runs")
    assert r.status_code == 202
    assert s.wait_run(r.json()["id"])["status"] == "no_changes"
    assert c.get("/api/status").json()["in_sync"] is True


def test_states_discard_supersede_stale_rollback(serve, tmp_path, sql):
    src = folder_bucket(tmp_path / "bucket", *KEYS)
    s = serve(src)
    c = s.client()
    first = first_run(s)

    # A scoped run does not supersede the full one; a newer full run does.
    alice = s.wait_run(c.post("/api/runs", json={"models": ["Alice"]}).json()["id"])
    assert alice["scope"] == ["Alice"] and alice["status"] == "planned" and alice["trigger"] == "manual"
    assert c.get(f"/api/runs/{first['id']}").json()["status"] == "planned"
    full = s.wait_run(c.post("/api/runs", json={}).json()["id"])
    assert full["status"] == "planned"
    assert c.get(f"/api/runs/{first['id']}").json()["status"] == "superseded"
    assert c.get(f"/api/runs/{alice['id']}").json()["status"] == "superseded"
    assert [r["id"] for r in s.runs(status="planned")] == [full["id"]]

    # Discard; a discarded run cannot be applied.
    d = c.post(f"/api/runs/{full['id']}/discard")
    assert d.status_code == 200 and d.json()["status"] == "discarded" and d.json()["decided_by"] == "local"
    assert c.post(f"/api/runs/{full['id']}/apply").status_code == 409
    assert c.post(f"/api/runs/{full['id']}/discard").status_code == 409

    # Stale: the database moves between plan and apply.
    run = s.wait_run(c.post("/api/runs").json()["id"])
    sql("INSERT INTO whitelabel_models (folder_name) VALUES ('Zed')")
    r = c.post(f"/api/runs/{run['id']}/apply")
    assert r.status_code == 409 and "stale" in r.json()["error"]
    assert c.get(f"/api/runs/{run['id']}").json()["status"] == "stale"
    assert sql("SELECT count(*) FROM whitelabel_media")[0][0] == 0
    sql("DELETE FROM whitelabel_models WHERE folder_name = 'Zed'")

    # Apply, then roll back as a run: a planned run with the inverse plan.
    run = s.wait_run(c.post("/api/runs").json()["id"])
    apply_id = c.post(f"/api/runs/{run['id']}/apply").json()["apply_id"]
    rb = c.post(f"/api/applies/{apply_id}/rollback")
    assert rb.status_code == 201, rb.text
    rb = rb.json()
    assert rb["status"] == "planned" and rb["trigger"] == "rollback" and rb["rolls_back"] == apply_id
    assert rb["summary"]["media"]["delete"] == 3
    # A newer full run does not supersede a rollback a person asked for.
    newer = s.wait_run(c.post("/api/runs").json()["id"])
    assert newer["status"] == "no_changes"
    assert c.get(f"/api/runs/{rb['id']}").json()["status"] == "planned"
    done = c.post(f"/api/runs/{rb['id']}/apply")
    assert done.status_code == 200 and done.json()["status"] == "applied"
    assert sql("SELECT count(*) FROM whitelabel_models")[0][0] == 0
    assert c.post(f"/api/applies/{apply_id}/rollback").status_code == 409  # rolled back already
    assert c.get("/api/history").json()[0]["rolls_back"] == apply_id

    # Not found and bad requests are JSON errors.
    for method, path in (("GET", "/api/runs/999999"), ("POST", "/api/runs/999999/apply"),
                         ("GET", "/api/runs/abc"), ("POST", "/api/applies/424242/rollback"), ("GET", "/nope")):
        r = c.request(method, path)
        assert r.status_code == 404 and "error" in r.json(), (path, r.text)
    for body in (b"[1]", b"{", b'{"models": "Alice"}', b'{"models": ["a/b"]}', b'{"model": ["A"]}'):
        r = c.post("/api/runs", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"], body
    assert c.get("/api/runs", params={"status": "bogus"}).status_code == 400
    assert c.get("/api/runs", params={"limit": "x"}).status_code == 400
    assert c.get(f"/api/runs/{newer['id']}/plan").status_code == 200
    assert [r["status"] for r in s.runs(status="superseded,discarded")] == ["discarded", "superseded", "superseded"]


def test_unknown_models_are_refused_at_once(serve, tmp_path, sql):
    """As ``plan --model`` refuses them (the same check): a name neither in the source
    nor in the database is a 400, and no run is made."""
    src = folder_bucket(tmp_path / "bucket", *KEYS, "Zoë Ortiz/Beach/1.jpg")  # written in NFC
    sql("INSERT INTO whitelabel_models (folder_name) VALUES ('Gone')")
    s = serve(src)
    c = s.client()
    first_run(s)
    before = s.runs()
    r = c.post("/api/runs", json={"models": ["Alice", "Nobody", "Typo"]})
    assert r.status_code == 400
    assert r.json()["error"] == "models 'Nobody', 'Typo' are neither in the source nor in the database: check the model keys"
    # Typed in NFD, the name looks the same as the folder's: the message says the forms differ.
    r = c.post("/api/runs", json={"models": [unicodedata.normalize("NFD", "Zoë Ortiz")]})
    assert r.status_code == 400
    assert r.json()["error"].endswith(": check the model keys (in another Unicode normal form: "
                                      "'Zoe\\u0308 Ortiz' is NFD, 'Zo\\xeb Ortiz' (NFC) is there)")
    assert s.runs() == before
    for models in (["Gone"], ["Zoë Ortiz"], ["Alice", "Gone"]):  # in the database only, in the source only
        assert c.post("/api/runs", json={"models": models}).status_code == 202, models


def test_refused_plans_and_delete_limits(serve, tmp_path, sql):
    src = folder_bucket(tmp_path / "bucket", *KEYS)
    s = serve(src, safety={"max_delete": 1})
    c = s.client()
    run = first_run(s)
    assert c.post(f"/api/runs/{run['id']}/apply").json()["status"] == "applied"
    for key in KEYS[1:4]:
        (src / key).unlink()
    refused = s.wait_run(c.post("/api/runs").json()["id"])
    assert refused["status"] == "refused" and "max-delete 1" in refused["error"]
    assert c.get("/api/status").json()["in_sync"] is False
    r = c.post(f"/api/runs/{refused['id']}/apply")
    assert r.status_code == 409 and "refused, not planned" in r.json()["error"]
    assert c.get(f"/api/runs/{refused['id']}/plan").status_code == 404


def test_auto_apply_creates(serve, tmp_path, sql):
    src = folder_bucket(tmp_path / "bucket", *KEYS)
    s = serve(src, "--auto-apply", "creates")
    c = s.client()
    run = s.wait_run(s.wait_for(lambda: s.runs(), what="a run")[-1]["id"], until=lambda r: r["status"] not in ("planning", "planned", "applying"))
    assert run["status"] == "applied" and run["decided_by"] == "auto-apply (creates)"
    assert c.get("/api/status").json()["in_sync"] is True
    (src / "Bob/Hike/a.jpg").unlink()
    folder_bucket(src, "Carol/new.jpg")
    mixed = s.wait_run(c.post("/api/runs").json()["id"])
    assert mixed["status"] == "planned"  # it deletes: waits for a person (the API's runs are not auto-applied either way)
    assert mixed["decided_by"] is None


def test_auto_apply_within_limits(serve, tmp_path, sql, cli, database_url):
    src = folder_bucket(tmp_path / "bucket", *KEYS)
    # Without a delete limit, within-limits would apply anything: refused at start.
    r = cli("serve", "--source", str(src), "--database", database_url, "--auto-apply", "within-limits",
            "--cdn-base-url", "https://cdn.example.test", "--listen", "127.0.0.1:1")
    assert r.code == 1 and r.err.startswith("error: --auto-apply within-limits needs a delete limit")
    s = serve(src, "--auto-apply", "within-limits", "--interval", "1", safety={"max_delete": 2})
    c = s.client()
    s.wait_for(lambda: any(r["status"] == "applied" for r in s.runs()), what="an auto-applied run")
    (src / "Bob/Hike/a.jpg").unlink()  # deletes a media item and a post: within 2
    s.wait_for(lambda: sql("SELECT count(*) FROM whitelabel_media")[0][0] == 2, what="the delete auto-applied")
    applied = [r for r in s.runs(status="applied")]
    assert all(r["decided_by"] == "auto-apply (within-limits)" and r["trigger"] == "schedule" for r in applied)
    for key in KEYS[:3]:
        (src / key).unlink()  # deletes more than 2 rows: refused at plan time
    s.wait_for(lambda: any(r["status"] == "refused" for r in s.runs()), what="a refused run")
    assert sql("SELECT count(*) FROM whitelabel_models")[0][0] == 2


def test_tokens(serve, tmp_path, sql, s3_env):
    src = folder_bucket(tmp_path / "bucket", *KEYS)
    s = serve(src, env=TOKENS_ENV, token=API_TOKEN)
    anon, wrong, alice, bob = s.client(None), s.client("x" * 30), s.client(API_TOKEN), s.client(OTHER_TOKEN)
    for path in ("/api/status", "/api/runs", "/api/runs/1", "/api/history"):
        for c in (anon, wrong):
            r = c.get(path)
            assert r.status_code == 401 and r.json()["error"].startswith("a valid API token"), path
            assert r.headers["www-authenticate"].startswith("Bearer")
    assert anon.post("/api/runs").status_code == 401
    assert s.client(f"{API_TOKEN}x").get("/api/status").status_code == 401
    for path in ("/healthz", "/readyz"):
        assert anon.get(path).status_code == 200, path
    # /metrics: the metrics token (Prometheus' authorization) or an API token; it opens nothing else.
    prometheus = s.client(METRICS_TOKEN)
    for c in (anon, wrong, s.client(HOOK_TOKEN)):
        r = c.get("/metrics")
        assert r.status_code == 401 and "metrics token" in r.json()["error"]
    assert prometheus.get("/metrics").status_code == 200 and alice.get("/metrics").status_code == 200
    assert prometheus.get("/api/status").status_code == 401 and prometheus.post("/hooks/s3", json={}).status_code == 401
    assert alice.get("/api/status").status_code == 200
    run = first_run(s)
    r = bob.post(f"/api/runs/{run['id']}/apply")
    assert r.status_code == 200 and r.json()["decided_by"] == "bob"
    assert alice.get("/api/history").json()[0]["os_user"].startswith("bob")
    # The webhook takes its own token, not an API token.
    body = {"Records": []}
    assert anon.post("/hooks/s3", json=body).status_code == 401
    assert alice.post("/hooks/s3", json=body).status_code == 401
    assert s.client(HOOK_TOKEN).post("/hooks/s3", json=body).status_code == 200
    assert anon.head("/hooks/s3").status_code == 200
    # No secret in any answer or in the log.
    answers = "".join(alice.get(p).text for p in ("/api/status", "/api/runs", "/api/history", "/metrics"))
    for secret in (API_TOKEN, OTHER_TOKEN, HOOK_TOKEN, METRICS_TOKEN, "testing-secret-key-do-not-print"):
        assert secret not in answers and secret not in s.output()
    assert s.stop() == 0


def test_listen_refusals(cli, tmp_path, database_url):
    src = folder_bucket(tmp_path / "bucket", *KEYS)
    base = ("serve", "--source", str(src), "--database", database_url, "--cdn-base-url", "https://cdn.example.test")
    r = cli(*base, "--listen", "0.0.0.0:8080")
    assert r.code == 1 and r.out == ""
    assert r.err == (
        "error: refusing to listen on 0.0.0.0:8080 without RECONCILER_API_TOKENS: anyone who reaches it could "
        "apply plans; set RECONCILER_API_TOKENS=name:token,… or listen on 127.0.0.1\n"
    )
    assert cli(*base, "--listen", "nonsense").err == "error: --listen 'nonsense' is not HOST:PORT\n"
    r = cli("serve", "--database", database_url, "--cdn-base-url", "https://cdn.example.test")
    assert r.code == 1 and r.err.startswith("error: no source: pass --source")


def test_malformed_tokens_are_refused_without_showing_them(cli, tmp_path, database_url, monkeypatch):
    src = folder_bucket(tmp_path / "bucket", *KEYS)
    monkeypatch.setenv("RECONCILER_API_TOKENS", "alice:short-secret,broken")
    r = cli("serve", "--source", str(src), "--database", database_url, "--cdn-base-url", "https://cdn.example.test")
    assert r.code == 1 and "short-secret" not in r.err
    assert r.err.startswith("error: RECONCILER_API_TOKENS: the token of 'alice' is shorter than 16 characters")


def test_not_initialised_database_is_refused(cli, tmp_path, empty_database_url):
    src = folder_bucket(tmp_path / "bucket", *KEYS)
    r = cli("serve", "--source", str(src), "--database", empty_database_url, "--cdn-base-url", "https://cdn.example.test",
            "--listen", "127.0.0.1:0")
    assert r.code == 1 and "is not initialised; run `reconciler init` first" in r.err
    with psycopg2.connect(empty_database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('reconciler_runs')")
        assert cur.fetchone()[0] is None
