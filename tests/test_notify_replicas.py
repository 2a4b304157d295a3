"""Notifications across replicas (reconciler/controller/notify.py): two ``reconciler
serve`` processes on one database, a receiver on loopback, the leader killed with
``kill -9`` — every event is delivered once, whichever replica leads."""

from __future__ import annotations

import collections
import signal

import pytest

from .conftest import folder_bucket
from .serving import serve  # noqa: F401 — the fixture
from .test_notify import SECRET, verify
from .test_serve_replicas import KEYS, leaders

pytestmark = pytest.mark.slow


def test_one_delivery_per_event_across_two_replicas_and_a_leader_kill(serve, receiver, tmp_path, sql):
    src = folder_bucket(tmp_path / "bucket", *KEYS)
    notify = [{"type": "webhook", "name": "audit", "url": receiver.url, "secret_env": "HOOK_SECRET"}]
    a = serve(src, notify=notify, env={"HOOK_SECRET": SECRET})
    b = serve(src, notify=notify, env={"HOOK_SECRET": SECRET})
    a.wait_for(lambda: len(leaders([a, b])) == 1, what="one leader")
    [leader] = leaders([a, b])
    follower = b if leader is a else a

    def delivered(*events: str) -> bool:
        rows = sql("SELECT event, status FROM reconciler_deliveries")
        return all(any(e == event and s == "delivered" for e, s in rows) for event in events)

    a.wait_for(lambda: delivered("leader_changed", "drift_found", "approval_needed"), what="the first notifications")
    run = follower.runs()[-1]
    applied = follower.client().post(f"/api/runs/{run['id']}/apply")  # approved on the follower
    assert applied.status_code == 200 and applied.json()["status"] == "applied"
    a.wait_for(lambda: delivered("applied"), what="the applied notification")

    leader.proc.send_signal(signal.SIGKILL)
    leader.proc.wait(10)
    follower.wait_for(lambda: leaders([follower]), timeout=30, what="the follower to lead")
    folder_bucket(src, "Carol/new.jpg")
    follower.wait_run(follower.client().post("/api/runs").json()["id"])
    follower.wait_for(lambda: len(receiver.got()) == 7 and sql(
        "SELECT count(*) FROM reconciler_deliveries WHERE status <> 'delivered'")[0][0] == 0,
        what="the new leader's notifications")

    got = [verify(r) for r in receiver.got()]
    counts = collections.Counter(g["event"] for g in got)
    assert counts == {"leader_changed": 2, "drift_found": 2, "approval_needed": 2, "applied": 1}, counts
    assert len({g["key"] for g in got}) == 7  # each event once
    assert len({r.headers["X-Reconciler-Delivery"] for r in receiver.got()}) == 7
    assert [g["leader"] for g in got if g["event"] == "leader_changed"][-1].endswith(f":{follower.proc.pid}")
    assert sql("SELECT count(*) FROM reconciler_deliveries")[0][0] == 7
    assert SECRET not in follower.output() and SECRET not in leader.output()
