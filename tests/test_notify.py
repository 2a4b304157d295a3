"""Notifications (reconciler/controller/notify.py): messages and signatures, pure; then a
controller in process on a real PostgreSQL telling a local receiver what happens —
signed, deduplicated, retried, never held up by a receiver that hangs; and bad
configuration refused at start in one line (docs/design.md, "Approvals, change
windows and notifications")."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time

import pytest

from reconciler import Settings
from reconciler.catalogue import load_catalogue
from reconciler.controller.approvals import Policy, evaluate
from reconciler.controller.loop import Controller
from reconciler.controller.notify import body, events_of, parse_destinations, run_event, sign
from reconciler.controller.options import ServeOptions, policy_rows
from reconciler.errors import ConfigError

from .conftest import CDN, Receiver, folder_bucket, wait_until
from .test_dashboard import KEYS, seed_gone

SECRET = "webhook-secret-0123456789abcdef"
SLACK_TOKEN_URL_PATH = "/services/T000/B000/slack-token-never-shown"
PUBLIC = "https://reconciler.example.test"
CREATORS = load_catalogue("creators")


def verify(received, secret: str = SECRET) -> dict:
    """What a receiver does: recompute the signature over timestamp + "." + body,
    refuse an old timestamp, then read the body."""
    stamp = received.headers["X-Reconciler-Timestamp"]
    expected = "sha256=" + hmac.new(secret.encode(), stamp.encode() + b"." + received.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(received.headers["X-Reconciler-Signature"], expected)
    assert abs(time.time() - int(stamp)) < 300
    return received.json()


# --------------------------------------------------------------------------- messages


RUN = {"id": 7, "status": "planned", "trigger": "manual", "triggered_by": "alice", "scope": None,
       "summary": {"model": {"create": 1, "update": 0, "move": 0, "delete": 1},
                   "post": {"create": 0, "update": 0, "move": 0, "delete": 1},
                   "media": {"create": 0, "update": 0, "move": 0, "delete": 0}},
       "change_count": 3, "plan_id": "p" * 64, "decided_by": None, "apply_id": None, "override_reason": None,
       "error": None, "fingerprint": "f" * 64}


def test_a_message_says_what_a_reviewer_needs():
    verdict = evaluate(Policy(2), RUN["summary"], "model", ["bob"])
    e = run_event("approval_needed", RUN, verdict, CREATORS, PUBLIC, "k")
    assert e.text.splitlines() == [
        "[creators] Approval needed: run 7 (every model; manual by alice)",
        "3 change(s): model: 1 create, 1 delete; post: 1 delete",
        "This plan deletes 2 row(s): 1 model, 1 post.",
        "Approvals: needs 2, has 1 (bob)",
        f"Review: {PUBLIC}/runs/7",
    ]
    slack = json.loads(body(parse_destinations([{"type": "slack", "url_env": "SLACK_URL"}],
                                               {"SLACK_URL": "https://hooks.example.test/x"})[0], e, CREATORS))
    assert slack["text"].startswith("*[creators] Approval needed: run 7")
    assert slack["text"].endswith(f"<{PUBLIC}/runs/7|Review run 7>")


def test_a_run_is_news_once_per_status():
    needs = evaluate(Policy(), RUN["summary"], "model", [])
    assert events_of(RUN, None, needs) == ["drift_found", "approval_needed"]
    assert events_of(dict(RUN, status="applied"), None, needs) == ["drift_found", "applied"]  # auto-applied at once
    assert events_of(dict(RUN, status="applied"), "planned", needs) == ["applied"]
    assert events_of(dict(RUN, status="apply_errored"), "planned", needs) == ["apply_failed"]
    assert events_of(dict(RUN, status="stale"), "planned", needs) == ["stale"]
    assert events_of(dict(RUN, status="superseded"), "planned", needs) == []
    refused = dict(RUN, status="refused", change_count=None, plan_id=None)
    assert events_of(refused, None, None) == ["refused"]
    assert events_of(dict(RUN, trigger="rollback"), None, needs) == ["approval_needed"]  # asked for, not drift


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body():
    data = b'{"event": "applied"}'
    assert sign(SECRET, "1700000000", data) == "sha256=" + hmac.new(
        SECRET.encode(), b"1700000000." + data, hashlib.sha256).hexdigest()


@pytest.mark.parametrize("item, env, message", [
    ({"type": "webhook", "url": "https://h.example.test/x", "secret_env": "S", "events": ["drift", "applied"]},
     {"S": SECRET}, "notify[0] (webhook-1): unknown event 'drift'; events are drift_found, approval_needed, applied, "
                    "apply_failed, refused, stale, leader_changed"),
    ({"type": "webhook", "url": "https://h.example.test/x", "secret_env": "HOOK_SECRET", "name": "audit"}, {},
     "notify[0] (audit): secret_env: $HOOK_SECRET is not set; set it in the server's environment"),
    ({"type": "webhook", "url": "https://h.example.test/x"}, {},
     "notify[0] (webhook-1): a webhook is signed; name the environment variable that holds the secret with secret_env"),
    ({"type": "slack", "url": "https://hooks.slack.com/services/T/B/token"}, {},
     "notify[0] (slack-1): a Slack webhook URL holds a token; put it in an environment variable and name it with url_env"),
    ({"type": "slack", "url_env": "SLACK_URL"}, {"SLACK_URL": "hooks.slack.com/services/T/B/token"},
     "notify[0] (slack-1): the URL in $SLACK_URL 'hooks.slack.com/services/T/B/token' is not a URL: write it with "
     "its scheme, e.g. https://hooks.slack.com/services/T/B/token or http://hooks.slack.com/services/T/B/token"),
])
def test_bad_destinations_are_refused_by_name(item, env, message):
    with pytest.raises(ConfigError) as e:
        parse_destinations([item], env)
    assert str(e.value) == message


@pytest.mark.parametrize("config, message", [
    ({"notify": [{"type": "webhook", "url": "https://h.example.test/x", "secret_env": "HOOK_SECRET",
                  "events": ["applied", "drift"]}]},
     "error: notify[0] (webhook-1): unknown event 'drift'; events are drift_found, approval_needed, applied, "
     "apply_failed, refused, stale, leader_changed\n"),
    ({"serve": {"windows": [{"kind": "deny", "schedule": "0 25 * * *", "duration": "1h"}]}},
     "error: serve.windows[0]: schedule '0 25 * * *' is not a cron expression (Bad hour); write five fields like "
     "'0 18 * * FRI' (minute hour day-of-month month day-of-week)\n"),
    ({"notify": [{"type": "webhook", "url": "https://h.example.test/x", "secret_env": "MISSING_SECRET"}]},
     "error: notify[0] (webhook-1): secret_env: $MISSING_SECRET is not set; set it in the server's environment\n"),
])
def test_bad_configuration_is_one_error_line_at_start(cli, tmp_path, database_url, monkeypatch, config, message):
    import yaml

    monkeypatch.setenv("HOOK_SECRET", SECRET)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"source": {"url": str(folder_bucket(tmp_path / "b", *KEYS))},
                                    "cdn_base_url": CDN, **config}), "utf-8")
    r = cli("--config", path, "serve", "--database", database_url, "--listen", "127.0.0.1:0")
    assert (r.code, r.out, r.err) == (1, "", message)


# --------------------------------------------------------------------------- a controller telling a receiver


@pytest.fixture
def controller(database_url, tmp_path, monkeypatch):
    """``controller(notify=[…], **serve_options)`` → a started in-process Controller
    (leading within a moment) over a folder bucket holding KEYS; stopped at the end."""
    started: list[Controller] = []
    monkeypatch.setenv("HOOK_SECRET", SECRET)

    def start(notify, *, interval: float = 3600, source=None, **options) -> Controller:
        src = source or folder_bucket(tmp_path / "bucket", *KEYS)
        settings = Settings(database=database_url, source=str(src), cdn_base_url=CDN, allow_empty_source=True)
        o = ServeOptions(interval=interval, leader_retry=0.1, tick=0.05, public_url=PUBLIC,
                         notify=parse_destinations(notify, os.environ), **options)
        c = Controller(settings, o, notify_backoff=0.05)
        started.append(c)
        c.start()
        return c

    yield start
    for c in started:
        c.stop(timeout=60)


def webhook(receiver, path: str = "/hook", **extra) -> dict:
    return {"type": "webhook", "url": receiver.url.replace("/hook", path), "secret_env": "HOOK_SECRET", **extra}


def outbox_done(sql) -> bool:
    """Every run's notifications are queued (its status is the one notified)."""
    return not sql("SELECT id FROM reconciler_runs WHERE notified_status IS DISTINCT FROM status")


def test_signed_notifications_from_plan_to_apply(controller, receiver, sql):
    seed_gone(sql)
    c = controller([webhook(receiver, name="audit")])
    wait_until(lambda: {"leader_changed", "drift_found", "approval_needed"} <= set(receiver.events()),
               what="the first check's notifications")
    got = {r.headers["X-Reconciler-Event"]: verify(r) for r in receiver.got()}
    run_id = got["drift_found"]["run"]["id"]
    assert got["drift_found"]["deletes"] == {"model": 1, "post": 1}
    assert got["drift_found"]["url"] == f"{PUBLIC}/runs/{run_id}"
    assert got["approval_needed"]["approval"]["text"] == "needs 1, has 0"
    assert "This plan deletes 2 row(s): 1 model, 1 post." in got["approval_needed"]["text"]
    assert got["leader_changed"]["leader"] == c.name

    c.approvals.approve(run_id, "alice")
    applied = wait_until(lambda: [r for r in receiver.got() if r.headers["X-Reconciler-Event"] == "applied"],
                         what="the applied notification")
    assert verify(applied[0])["run"]["decided_by"] == "alice" and "Approved by alice" in verify(applied[0])["text"]
    wait_until(lambda: all(d["status"] == "delivered" for d in c.notifier.deliveries()), what="all delivered")
    assert len({r.headers["X-Reconciler-Delivery"] for r in receiver.got()}) == len(receiver.got()) == 4
    assert all(d["last_error"] is None and d["attempts"] == 1 for d in c.notifier.deliveries())


def test_slack_gets_the_events_it_asks_for_and_its_url_stays_secret(controller, receiver, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("SLACK_URL", receiver.url + SLACK_TOKEN_URL_PATH)
    c = controller([{"type": "slack", "url_env": "SLACK_URL", "name": "ops", "events": ["approval_needed"]}])
    [r] = wait_until(receiver.got, what="the Slack message")
    assert r.path.endswith(SLACK_TOKEN_URL_PATH) and "X-Reconciler-Signature" not in r.headers
    text = r.json()["text"]
    assert text.startswith("*[creators] Approval needed: run ") and "|Review run " in text
    settings = "\n".join(" ".join(row) for row in policy_rows(c.options))
    assert "$SLACK_URL (set, hidden)" in settings and SLACK_TOKEN_URL_PATH not in settings
    assert SLACK_TOKEN_URL_PATH not in caplog.text


def test_the_same_drift_is_one_notification_until_it_changes_or_is_resolved(controller, receiver, sql, tmp_path):
    src = folder_bucket(tmp_path / "bucket", *KEYS)
    c = controller([webhook(receiver, events=["drift_found"])], interval=0.2, source=src)

    def drift_found() -> list[int]:
        return [r.json()["run"]["id"] for r in receiver.got()]

    def checks() -> int:
        return sql("SELECT count(*) FROM reconciler_runs WHERE trigger = 'schedule' AND status <> 'planning'")[0][0]

    wait_until(lambda: checks() >= 3 and outbox_done(sql), what="three checks, notified")
    assert len(drift_found()) == 1
    assert len({f for (f,) in sql("SELECT fingerprint FROM reconciler_runs WHERE fingerprint IS NOT NULL")}) == 1

    folder_bucket(src, "Carol/new.jpg")  # the drift changes: news
    wait_until(lambda: len(drift_found()) == 2, what="the changed drift")
    seen = checks()
    wait_until(lambda: checks() >= seen + 2 and outbox_done(sql), what="two more checks")
    assert len(drift_found()) == 2

    moved = tmp_path / "away"
    src.rename(moved)
    src.mkdir()  # the bucket empties: the database (empty) is in sync, the drift resolved
    wait_until(lambda: sql("SELECT count(*) FROM reconciler_runs WHERE status = 'no_changes'")[0][0], what="no changes")
    src.rmdir()
    moved.rename(src)  # the same drift as before comes back: news again
    wait_until(lambda: len(drift_found()) == 3, what="the drift found again")
    assert sql("SELECT count(DISTINCT dedup_key) FROM reconciler_deliveries")[0][0] == 3
    assert c.notifier.deliveries()[0]["status"] == "delivered"


def test_a_receiver_answering_500_then_200_gets_it_again(controller, receiver):
    receiver.status = 500
    c = controller([webhook(receiver, name="audit", events=["drift_found"])])
    failing = wait_until(lambda: [d for d in c.notifier.deliveries() if d["last_error"]], what="a failed attempt")
    assert failing[0]["status"] == "pending" and failing[0]["last_error"] == "HTTP 500 from audit: ok"
    receiver.status = 200
    done = wait_until(lambda: [d for d in c.notifier.deliveries() if d["status"] == "delivered"], what="delivered")
    assert done[0]["attempts"] >= 2 and done[0]["last_error"] is None
    bodies = {r.body for r in receiver.got()}
    assert len(bodies) == 1  # the same body, every time
    assert len({r.headers["X-Reconciler-Delivery"] for r in receiver.got()}) == 1


def test_a_receiver_that_refuses_fails_at_once_with_the_reason(controller, receiver):
    receiver.status = 404
    c = controller([webhook(receiver, name="audit", events=["drift_found"])])
    [failed] = wait_until(lambda: [d for d in c.notifier.deliveries() if d["status"] == "failed"], what="failed")
    assert failed["attempts"] == 1 and failed["last_error"] == "HTTP 404 from audit: ok"


def test_a_receiver_that_hangs_holds_up_neither_the_loop_nor_the_others(controller, receiver, sql):
    stuck = Receiver()
    try:
        stuck.hanging.set()
        c = controller([webhook(stuck, name="stuck", timeout=60), webhook(receiver, name="fine")], interval=0.2)
        wait_until(stuck.got, what="the stuck receiver to hold a request")
        checks = sql("SELECT count(*) FROM reconciler_runs WHERE status <> 'planning'")[0][0]
        # While it hangs: the loop checks again and again, and the other receiver is told.
        wait_until(lambda: sql("SELECT count(*) FROM reconciler_runs WHERE status <> 'planning'")[0][0] >= checks + 3,
                   what="three more checks")
        wait_until(lambda: {"leader_changed", "drift_found", "approval_needed"} <= set(receiver.events()),
                   what="the other receiver told")
        assert len(stuck.got()) == 1 and stuck.hanging.is_set()  # one sender held, one request
        assert c.leader
        stuck.release()
        wait_until(lambda: {d["event"] for d in c.notifier.deliveries() if d["destination"] == "stuck"
                            and d["status"] == "delivered"} == {"leader_changed", "drift_found", "approval_needed"},
                   what="the stuck receiver served once released")
    finally:
        stuck.close()


def test_deliveries_done_are_forgotten_after_30_days(controller, sql):
    c = controller([])
    sql("""INSERT INTO reconciler_deliveries (destination, event, dedup_key, body, status, created_at) VALUES
           ('audit', 'applied', 'old-done', '{}', 'delivered', now() - interval '31 days'),
           ('audit', 'applied', 'old-waiting', '{}', 'pending', now() - interval '31 days'),
           ('audit', 'applied', 'recent', '{}', 'failed', now() - interval '29 days')""")
    assert c.notifier.purge() == 1
    assert sorted(k for (k,) in sql("SELECT dedup_key FROM reconciler_deliveries")) == ["old-waiting", "recent"]
