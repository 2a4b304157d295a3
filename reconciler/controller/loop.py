"""The controller's loop: the schedule, stored events turned into runs, the SQS
consumer, auto-apply, and the runs people ask for (see :mod:`reconciler.controller`)."""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import peewee as pw

from ..config import Settings
from ..errors import ReconcilerError
from ..sources import S3Source, open_source
from ..store.models import ControllerState, Event, Run
from ..version import __version__
from .approvals import Approvals
from .events import S3Event, parse_body, run_scope, scope_of
from .leader import OWNER_CLASS, LeaderElector, replica_name
from .notify import Notifier
from .options import ServeOptions
from .runs import Observer, Runs, one_line

log = logging.getLogger("reconciler.controller")


@dataclass
class Controller:
    settings: Settings  # database: a URL
    options: ServeOptions
    display: str = ""
    observer: Observer | None = None
    name: str = field(default_factory=replica_name)
    # The clock of change windows (tests pass their own: no waiting for a window).
    now: Callable[[], datetime] = field(default=lambda: datetime.now(timezone.utc))
    notify_backoff: float = 5.0  # seconds before a failed notification is retried, doubling

    def __post_init__(self) -> None:
        self.owner = random.randint(1, 2**31 - 1)
        self.runs = Runs(self.settings, display=self.display, owner=self.owner, observer=self.observer)
        o, s = self.options, self.settings
        self.approvals = Approvals(self.runs, o.approvals, o.windows, o.auto_apply, s.catalogue, s.limits,
                                   now=self.now, leading=lambda: self.leader)
        self.notifier = Notifier(self.runs, o.notify, self.approvals, s.catalogue, o.public_url,
                                 leading=lambda: self.leader, tick=o.tick, backoff=self.notify_backoff)
        self.elector = LeaderElector(self.settings.database, self.owner, self.options.leader_retry, self._leadership)
        self.stopping = threading.Event()
        self.workers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="run")
        self._busy = threading.Lock()  # one planning run of the loop at a time
        self._loop = threading.Thread(target=self._run_loop, name="controller-loop", daemon=True)
        self._sqs = threading.Thread(target=self._run_sqs, name="sqs-consumer", daemon=True)
        self.next_check = time.time()  # a new leader checks at once
        self.last_error: str | None = None
        self.bucket, self.prefix = self._event_source()

    def _event_source(self) -> tuple[str | None, str]:
        """The bucket and prefix whose events matter (None for a folder source)."""
        if not self.settings.source:
            return None, ""
        try:
            src = open_source(self.settings.source)
        except ReconcilerError:
            return None, ""
        return (src.bucket, src.prefix) if isinstance(src, S3Source) else (None, "")

    # ------------------------------------------------------------------ life

    @property
    def leader(self) -> bool:
        return self.elector.leading and not self.stopping.is_set()

    def start(self) -> None:
        self.elector.start()
        self._loop.start()
        self.notifier.start()
        if self.options.sqs_queue_url:
            self._sqs.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking work; let a run in progress finish (an apply commits or rolls
        back), then resign leadership. This replica's runs still ``planning`` are
        marked errored (planning never writes, so abandoning one is safe)."""
        self.stopping.set()
        if self._loop.is_alive():
            self._loop.join(timeout=timeout)
        self.workers.shutdown(wait=True, cancel_futures=True)
        self.notifier.stop(timeout=timeout)
        with contextlib.suppress(Exception):
            with self.runs.session():
                Run.update(status="errored", error="interrupted: the server stopped while planning",
                           finished_at=pw.SQL("now()"), phase="done").where(
                    (Run.owner == self.owner) & (Run.status == "planning")).execute()
        self.elector.stop()
        self.runs.close()

    def _leadership(self, leading: bool) -> None:
        log.info("%s leadership", "took" if leading else "lost")
        if leading:
            self.next_check = time.time()
            previous = None
            with contextlib.suppress(Exception), self.runs.session():
                state = ControllerState.get_or_none(ControllerState.id == 1)
                previous = state.leader if state else None
                ControllerState.update(leader=self.name, leader_since=pw.SQL("now()"),
                                       updated_at=pw.SQL("now()")).where(ControllerState.id == 1).execute()
            try:
                self.notifier.took_lead(self.name, previous)
            except ReconcilerError as e:  # the database away as leadership came: the event is lost, said so
                log.warning("cannot queue the leader_changed notification: %s", e)
        if self.observer is not None and hasattr(self.observer, "leader_changed"):
            self.observer.leader_changed(leading)

    # ------------------------------------------------------------------ the loop

    def _run_loop(self) -> None:
        last_reap = 0.0
        while not self.stopping.is_set():
            try:
                if self.leader:
                    if time.monotonic() - last_reap > 10:
                        self.reap()
                        last_reap = time.monotonic()
                    self.step()
                self.last_error = None
            except ReconcilerError as e:  # the database went away: try again next tick
                if self.last_error != str(e):
                    log.warning("controller loop: %s", e)
                self.last_error = one_line(e)
            except Exception as e:  # a bug must not stop the loop
                log.exception("controller loop")
                self.last_error = one_line(f"unexpected {type(e).__name__}: {e}")
            self.stopping.wait(self.options.tick)

    def step(self) -> None:
        """One look at the leader's work: events due, the schedule, then the planned
        runs whose approval policy is met, if the change window lets them be applied."""
        run_id = self.take_events()
        if run_id is not None:
            self._execute(run_id)
        if self.stopping.is_set() or not self.leader:
            return
        if time.time() >= self.next_check:
            run_id = self.runs.create_run("schedule")  # the database away: the check stays due
            self.next_check = time.time() + self.options.interval * random.uniform(0.9, 1.1)
            self._publish_next_check()
            self._execute(run_id)
        self.approvals.apply_ready()

    def _publish_next_check(self) -> None:
        with contextlib.suppress(Exception), self.runs.session():
            ControllerState.update(next_check_at=pw.SQL(f"to_timestamp({float(self.next_check)})"),
                                   leader=self.name, updated_at=pw.SQL("now()")).where(
                ControllerState.id == 1).execute()

    def _execute(self, run_id: int) -> dict:
        """Plan the run; give it the approvals of the run it superseded with the same
        changes; then apply what the policy (auto-apply included) and the window allow."""
        with self._busy:
            run = self.runs.execute(run_id)
            self.approvals.carry_over(run)
        self.approvals.apply_ready()
        return run

    def take_events(self) -> int | None:
        """When the oldest pending event is ``debounce`` seconds old, claim every
        pending event for one new run scoped to the top keys they name (the whole
        catalogue when it cannot be scoped: :func:`.events.run_scope`).

        The window starts at the first event, not the last: a steady stream still
        gets a run every ``debounce`` seconds. Claiming is one statement, so two
        leaders for a moment cannot take the same events twice.
        """
        with self.runs.session("cannot read the events"):
            oldest = (Event.select(pw.fn.EXTRACT(pw.SQL("EPOCH FROM now() - min(received_at)")))
                      .where(Event.handled_at.is_null()).scalar())
            if oldest is None or float(oldest) < self.options.debounce:
                return None
            with self.runs.db.atomic():
                cur = self.runs.db.execute_sql(
                    """WITH taken AS (
                         SELECT id FROM reconciler_events WHERE handled_at IS NULL
                         ORDER BY id FOR UPDATE SKIP LOCKED)
                       UPDATE reconciler_events e SET handled_at = now() FROM taken
                       WHERE e.id = taken.id RETURNING e.id, e.model"""
                )
                rows = cur.fetchall()
                if not rows:
                    return None
                keys = sorted({top for _, top in rows})
                run_id = Run.insert(status="planning", trigger="event", scope=run_scope(self.settings.catalogue, keys),
                                    created_at=pw.SQL("now()"), owner=self.owner, phase="queued").execute()
                Event.update(run_id=run_id).where(Event.id << [i for i, _ in rows]).execute()
        log.info("run %s for %d event(s) about %d %s", run_id, len(rows), len(keys),
                 self.settings.catalogue.top.name if len(keys) == 1 else self.settings.catalogue.top.plural.lower())
        return run_id

    def reap(self) -> None:
        """Runs left ``planning`` or ``applying`` by a replica that is gone (its owner
        lock is free): an apply that committed becomes ``applied``, any other
        ``apply_errored``; planning becomes ``errored``."""
        dead = """status IN ('planning', 'applying') AND NOT EXISTS (
                    SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.classid = %s
                      AND l.objid = reconciler_runs.owner::oid AND l.objsubid = 2 AND l.granted)"""
        with self.runs.session("cannot reap orphaned runs"), self.runs.db.atomic():
            db = self.runs.db
            db.execute_sql(
                f"""UPDATE reconciler_runs SET status = 'applied', apply_id = a.id, finished_at = now(),
                          phase = 'done', error = NULL
                    FROM reconciler_applies a WHERE a.plan_id = reconciler_runs.plan_id
                      AND reconciler_runs.status = 'applying' AND {dead}""",
                (OWNER_CLASS,),
            )
            db.execute_sql(
                f"""UPDATE reconciler_runs SET finished_at = now(), phase = 'done',
                          status = CASE status WHEN 'planning' THEN 'errored' ELSE 'apply_errored' END,
                          error = 'the replica working on it stopped; nothing was applied'
                    WHERE {dead}""",
                (OWNER_CLASS,),
            )
            # Handled events are kept a week: the window in which a redelivery is a duplicate.
            db.execute_sql("DELETE FROM reconciler_events WHERE handled_at < now() - interval '7 days'")

    # ------------------------------------------------------------------ what people ask for

    def start_run(self, scope: list[str] | None = None, trigger: str = "manual", by: str | None = None) -> int:
        """A run now, planned in the background on this replica; returns its id. Top
        keys (models, products) that are neither in the source nor in the database are
        refused at once (:class:`reconciler.controller.runs.BadRequest`), as ``plan
        --scope`` refuses them. ``by``: the person who asks."""
        if self.stopping.is_set():
            raise ReconcilerError("the server is shutting down; try another replica")
        if scope:
            self.runs.check_scope(scope)
        run_id = self.runs.create_run(trigger, scope, by)
        self.workers.submit(self._execute_quietly, run_id)
        return run_id

    def _execute_quietly(self, run_id: int) -> None:
        try:
            self._execute(run_id)
        except Exception:
            log.exception("run %s", run_id)

    def status(self) -> dict:
        s = self.runs.status()
        s.update(
            leader=self.leader,
            source=self.settings.source,
            database=self.display,
            version=__version__,
            auto_apply=self.options.auto_apply,
            window=self.approvals.gate().to_dict(),
        )
        if self.leader:
            s["next_check_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.next_check))
        return s

    # ------------------------------------------------------------------ events

    def ingest(self, events: list[S3Event], via: str) -> dict:
        """Store the events that concern the source (its bucket, under its prefix, a
        key that names a top key of the catalogue: :func:`.events.scope_of`); the rest
        are ignored, counted by reason. Duplicates (same bucket, key, sequencer) are
        stored once. Returns the counts."""
        wanted, ignored = [], Counter()
        for e in events:
            about = scope_of(e, self.settings.catalogue, self.bucket, self.prefix)
            if about.top_key is None:
                ignored[about.ignored] += 1
            else:
                wanted.append((e, about.top_key))
        stored = 0
        if wanted:
            with self.runs.session("cannot store the events"), self.runs.db.atomic():
                for i in range(0, len(wanted), 500):
                    # The column is named in the creators' words; it holds the top key.
                    rows = [dict(via=via, bucket=e.bucket, key=e.key, event_name=e.event_name, sequencer=e.sequencer,
                                 model=top, dedup=e.dedup, received_at=pw.SQL("now()")) for e, top in wanted[i:i + 500]]
                    cur = self.runs.db.execute(
                        Event.insert_many(rows).on_conflict_ignore().returning(Event.id)
                    )
                    stored += len(list(cur))
        counts = {"received": len(events), "stored": stored, "duplicates": len(wanted) - stored,
                  "ignored": len(events) - len(wanted), "ignored_by_reason": dict(sorted(ignored.items()))}
        if self.observer is not None and hasattr(self.observer, "events_received"):
            self.observer.events_received(via, len(events))
        if ignored and self.observer is not None and hasattr(self.observer, "events_ignored"):
            self.observer.events_ignored(via, ignored)
        return counts

    def _run_sqs(self) -> None:
        """Long-poll the queue while leading; delete each message once its events are
        stored (or once it proved not to be an S3 event: it would come back forever)."""
        import boto3

        url = self.options.sqs_queue_url
        # The endpoint comes from boto3's own chain (AWS_ENDPOINT_URL_SQS, AWS_ENDPOINT_URL);
        # the region from the settings, else the queue URL (sqs.REGION.amazonaws.com).
        host = url.split("/")[2] if url.count("/") >= 2 else ""
        region = self.settings.region or (host.split(".")[1] if host.startswith("sqs.") else None)
        client = boto3.client("sqs", region_name=region)
        while not self.stopping.is_set():
            if not self.leader:
                self.stopping.wait(self.options.tick)
                continue
            try:
                got = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                             WaitTimeSeconds=self.options.sqs_wait)
                for m in got.get("Messages", []):
                    try:
                        events = parse_body(m.get("Body") or "")
                    except ReconcilerError as e:
                        log.warning("SQS message %s is not an S3 event (%s); deleting it", m.get("MessageId"), e)
                        events = []
                    self.ingest(events, "sqs")
                    client.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
            except Exception as e:  # botocore errors, the database: wait and try again
                log.warning("SQS: %s", one_line(e))
                self.stopping.wait(max(self.options.tick, 2.0))
