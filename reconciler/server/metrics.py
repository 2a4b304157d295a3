"""Prometheus metrics, in a registry of the app's own (two apps in one process do not
clash). Names as in docs/design.md. The gauges that describe the catalogue (in sync,
drift, rows, objects listed and skipped, last check, last apply) are read from the
database at every scrape, so every replica reports the same; counters and histograms
count what this replica did.

The ``kind`` label is the catalogue's entity name (``model``, ``post``, ``media`` for
creators; ``image`` for product-images): every kind the tool writes has its series
from the start, at 0 until there is drift, so an alert on a kind never sees it vanish.
"""

from __future__ import annotations

import calendar
import time
from typing import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

from ..engine.diff import ACTIONS

disable_created_metrics()  # the *_created series only add noise here

_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class Metrics:
    """The controller's :class:`~reconciler.runs.Observer`, and the scrape's data."""

    def __init__(self, kinds: Sequence[str]) -> None:
        self.kinds = tuple(kinds)
        r = self.registry = CollectorRegistry()
        self.in_sync = Gauge("reconciler_in_sync", "1 when the last check found the catalogue in line with the bucket", registry=r)
        self.drift = Gauge("reconciler_drift_changes", "Pending changes by kind and action", ["kind", "action"], registry=r)
        self.leader = Gauge("reconciler_leader", "1 when this replica leads", registry=r)
        self.runs = Counter("reconciler_runs", "Run outcomes reached by this replica", ["trigger", "status"], registry=r)
        self.plan_seconds = Histogram("reconciler_plan_duration_seconds", "Time to make a run's plan", buckets=_BUCKETS, registry=r)
        self.apply_seconds = Histogram("reconciler_apply_duration_seconds", "Time to apply a run's plan", buckets=_BUCKETS, registry=r)
        self.last_check = Gauge("reconciler_last_check_timestamp_seconds", "When a run last finished planning", registry=r)
        self.last_apply = Gauge("reconciler_last_apply_timestamp_seconds", "When a plan was last applied", registry=r)
        self.objects = Gauge("reconciler_objects_listed", "Objects listed by the last full check", registry=r)
        self.skipped = Gauge("reconciler_objects_skipped", "Objects the last full check skipped, by reason",
                             ["reason"], registry=r)
        self.rows = Gauge("reconciler_rows", "Rows in the database by kind", ["kind"], registry=r)
        for kind in self.kinds:
            self.rows.labels(kind).set(0)
            for action in ACTIONS:
                self.drift.labels(kind, action).set(0)
        self.events = Counter("reconciler_events_received", "S3 event records received", ["via"], registry=r)
        self.ignored_events = Counter("reconciler_events_ignored", "S3 event records ignored, by reason (another "
                                      "bucket, outside the prefix, a key naming no top key)", ["via", "reason"],
                                      registry=r)

    # Observer
    def run_finished(self, run: dict) -> None:
        self.runs.labels(run["trigger"], run["status"]).inc()
        if run.get("plan_seconds") is not None and run["trigger"] != "rollback":
            self.plan_seconds.observe(run["plan_seconds"])

    def applied(self, run: dict) -> None:
        self.runs.labels(run["trigger"], run["status"]).inc()
        if run.get("apply_seconds") is not None:
            self.apply_seconds.observe(run["apply_seconds"])

    def leader_changed(self, leading: bool) -> None:
        self.leader.set(1 if leading else 0)

    def events_received(self, via: str, n: int) -> None:
        self.events.labels(via).inc(n)

    def events_ignored(self, via: str, by_reason: dict[str, int]) -> None:
        for reason, n in by_reason.items():
            self.ignored_events.labels(via, reason).inc(n)

    # scrape
    def refresh(self, status: dict) -> None:
        self.in_sync.set(1 if status.get("in_sync") else 0)
        self.leader.set(1 if status.get("leader") else 0)
        drift = status.get("drift") or {}
        for kind in (*self.kinds, *(k for k in drift if k not in self.kinds)):
            for action in ACTIONS:
                self.drift.labels(kind, action).set((drift.get(kind) or {}).get(action, 0))
        for kind, n in (status.get("rows_by_kind") or {}).items():
            self.rows.labels(kind).set(n)
        self.skipped.clear()  # a reason the last check did not meet is no series, not a 0
        for reason, n in (status.get("skipped") or {}).items():
            self.skipped.labels(reason).set(n)
        for gauge, key in ((self.last_check, "last_check_at"), (self.last_apply, "last_apply_at")):
            if status.get(key):
                gauge.set(calendar.timegm(time.strptime(status[key], "%Y-%m-%dT%H:%M:%SZ")))
        if status.get("objects_listed") is not None:
            self.objects.set(status["objects_listed"])

    def render(self) -> bytes:
        return generate_latest(self.registry)
