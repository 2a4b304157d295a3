"""Several replicas on one database, failover after ``kill -9``, SIGTERM during an
apply, and the database going away and coming back — real processes, real PostgreSQL."""

from __future__ import annotations

import signal
import threading
import time
from urllib.parse import urlsplit

import psycopg2
import pytest

from reconciler.store.db import LOCK_KEY

from .conftest import admin_exec, folder_bucket
from .serving import serve  # noqa: F401 — the fixture

pytestmark = pytest.mark.slow

KEYS = ("Alice/cover.jpg", "Alice/Beach/1.jpg", "Bob/Hike/a.jpg")


def leaders(servers) -> list:
    """The live replicas that say they lead."""
    out = []
    for s in servers:
        if s.alive():
            r = s.client().get("/api/status")
            assert r.status_code == 200, r.text
            if r.json()["leader"]:
                out.append(s)
    return out


def failed_attempts(sql) -> dict:
    """For each election connection whose last statement was a try for the lead, when
    that statement started (by backend). A replica that leads runs ``SELECT 1`` from its
    next round on, so a backend seen trying at several moments tried and failed."""
    rows = sql("SELECT pid, query_start FROM pg_stat_activity WHERE application_name = %s "
               "AND query LIKE 'SELECT pg_try_advisory_lock%%'", ("reconciler serve (leader election)",))
    return dict(rows)


def test_two_replicas_one_leader_and_failover_after_kill_9(serve, tmp_path, sql):
    src = folder_bucket(tmp_path / "bucket", *KEYS)
    a = serve(src)
    b = serve(src)
    a.wait_for(lambda: len(leaders([a, b])) == 1, what="one leader")
    # Several election rounds of the follower, each seen in PostgreSQL: still exactly one leader.
    tries: dict = {}

    def rounds() -> bool:
        assert len(leaders([a, b])) == 1
        for pid, started in failed_attempts(sql).items():
            tries.setdefault(pid, set()).add(started)
        return any(len(t) >= 3 for t in tries.values())

    a.wait_for(rounds, what="three election rounds of the follower")
    [leader] = leaders([a, b])
    follower = b if leader is a else a
    assert 'reconciler_leader 1.0' in leader.client().get("/metrics").text
    assert 'reconciler_leader 0.0' in follower.client().get("/metrics").text
    # Only the leader ran the schedule; the follower serves the same runs.
    runs = follower.runs()
    assert [r["trigger"] for r in runs] == ["schedule"]
    r = follower.client().post(f"/api/runs/{runs[0]['id']}/apply")
    assert r.status_code == 200 and r.json()["status"] == "applied"

    killed = time.monotonic()
    leader.proc.send_signal(signal.SIGKILL)
    leader.proc.wait(10)
    follower.wait_for(lambda: leaders([follower]), timeout=30, what="the follower to lead within 30 s")
    print(f"failover after kill -9: {time.monotonic() - killed:.2f}s")
    # The new leader checks at once.
    follower.wait_for(lambda: len([r for r in follower.runs() if r["trigger"] == "schedule"]) == 2,
                      what="a check by the new leader")
    st = follower.client().get("/api/status").json()
    assert st["leader"] is True and st["leader_name"].endswith(f":{follower.proc.pid}")


def test_orphaned_runs_are_reaped(serve, tmp_path, sql):
    """A run left 'planning' or 'applying' by a replica that died is settled by the leader."""
    src = folder_bucket(tmp_path / "bucket", *KEYS)
    sql("INSERT INTO reconciler_runs (status, trigger, owner) VALUES ('planning', 'manual', 12345), "
        "('applying', 'manual', 12346)")
    s = serve(src)
    s.wait_for(lambda: {r["status"] for r in s.runs() if r["trigger"] == "manual"} == {"errored", "apply_errored"},
               what="the orphans settled")
    assert all("stopped" in r["error"] for r in s.runs() if r["trigger"] == "manual")


def test_sigterm_during_an_apply_lets_it_commit_and_exits_0(serve, tmp_path, sql, database_url):
    src = folder_bucket(tmp_path / "bucket", *KEYS)
    s = serve(src)
    run = s.wait_run(s.wait_for(lambda: s.runs(), what="the first run")[-1]["id"])
    # Hold apply's lock, so the apply is in progress (waiting) when SIGTERM arrives.
    blocker = psycopg2.connect(database_url)
    blocker.autocommit = True
    with blocker.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    answer = {}
    t = threading.Thread(target=lambda: answer.update(r=s.client().post(f"/api/runs/{run['id']}/apply")))
    t.start()
    s.wait_run(run["id"], until=lambda r: r["status"] == "applying")
    s.wait_for(lambda: sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")[0][0] == 1,
               what="the apply waiting for the lock")
    s.proc.send_signal(signal.SIGTERM)
    # uvicorn says it waits for the open request; it cannot end while the lock is held.
    s.wait_for(lambda: "Waiting for connections to close" in s.output(), what="the shutdown to wait")
    assert s.alive(), "the server must wait for the apply in progress"
    assert sql("SELECT status FROM reconciler_runs WHERE id = %s", (run["id"],))[0][0] == "applying"
    blocker.close()  # the lock goes; the apply runs and commits
    assert s.proc.wait(30) == 0, s.output()
    t.join(30)
    assert answer["r"].status_code == 200 and answer["r"].json()["status"] == "applied"
    assert sql("SELECT count(*) FROM whitelabel_media")[0][0] == 2
    assert sql("SELECT status FROM reconciler_runs WHERE id = %s", (run["id"],))[0][0] == "applied"


def test_readyz_when_the_database_goes_away_and_comes_back(serve, tmp_path, database_url, pg_admin_url):
    src = folder_bucket(tmp_path / "bucket", *KEYS)
    s = serve(src)
    c = s.client()
    s.wait_run(s.wait_for(lambda: s.runs(), what="the first run")[-1]["id"])
    assert c.get("/readyz").status_code == 200
    name = urlsplit(database_url).path.lstrip("/")
    admin_exec(pg_admin_url, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    admin_exec(pg_admin_url, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
    try:
        r = s.wait_for(lambda: (r := c.get("/readyz")).status_code == 503 and r, what="/readyz 503")
        assert "error" in r.json() and "password" not in r.text
        assert c.get("/healthz").status_code == 200
        assert c.get("/api/status").status_code == 503
        assert c.post("/api/runs").status_code == 503
        assert c.get("/metrics").status_code == 200
        s.wait_for(lambda: not c.get("/api/status").status_code == 200 and
                   "reconciler_leader 0.0" in c.get("/metrics").text, what="leadership lost")
    finally:
        admin_exec(pg_admin_url, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    s.wait_for(lambda: c.get("/readyz").status_code == 200, what="/readyz 200 again")
    s.wait_for(lambda: c.get("/api/status").status_code == 200 and c.get("/api/status").json()["leader"],
               what="leading again")
    run = s.wait_run(c.post("/api/runs").json()["id"])
    assert run["status"] == "planned"
    assert s.stop() == 0
