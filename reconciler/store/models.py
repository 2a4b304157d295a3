"""The tool's own tables as Peewee models: small, row-at-a-time (applies, the
controller's runs, events and state). Bulk work on the catalogue's tables goes through
raw SQL (:mod:`.current`, :mod:`.execute`)."""

from __future__ import annotations

import json

import peewee as pw

proxy = pw.DatabaseProxy()  # bound by Database.connect


class _Base(pw.Model):
    class Meta:
        database = proxy


class Apply(_Base):
    id = pw.BigAutoField()
    plan_id = pw.TextField(unique=True)
    applied_at = pw.DateTimeField()
    db_user = pw.TextField()
    os_user = pw.TextField(null=True)
    tool_version = pw.TextField()
    source = pw.TextField(null=True)
    scope = pw.TextField(null=True)  # jsonb
    summary = pw.TextField()  # jsonb
    plan_created_at = pw.DateTimeField(null=True)
    rolls_back = pw.BigIntegerField(null=True)
    override_reason = pw.TextField(null=True)  # applied inside a closed change window, and why

    class Meta:
        table_name = "reconciler_applies"


class JSONField(pw.Field):
    """A jsonb column: Python values in, Python values out (psycopg2 parses jsonb)."""

    field_type = "JSONB"

    def db_value(self, value):
        return None if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False)

    def python_value(self, value):
        return json.loads(value) if isinstance(value, str) else value


class Run(_Base):
    """A planning attempt of ``reconciler serve`` (see :mod:`reconciler.controller.runs`)."""

    id = pw.BigAutoField()
    status = pw.TextField()
    trigger = pw.TextField()
    scope = JSONField(null=True)
    created_at = pw.DateTimeField()
    planned_at = pw.DateTimeField(null=True)
    finished_at = pw.DateTimeField(null=True)
    owner = pw.IntegerField(null=True)
    phase = pw.TextField(null=True)
    progress = JSONField(null=True)
    plan_id = pw.TextField(null=True)
    summary = JSONField(null=True)
    change_count = pw.IntegerField(null=True)
    current_rows = pw.IntegerField(null=True)
    object_count = pw.IntegerField(null=True)
    plan_file = pw.BlobField(null=True)  # zlib of the plan file
    decided_by = pw.TextField(null=True)
    decided_at = pw.DateTimeField(null=True)
    apply_id = pw.BigIntegerField(null=True)
    rolls_back = pw.BigIntegerField(null=True)
    plan_seconds = pw.DoubleField(null=True)
    apply_seconds = pw.DoubleField(null=True)
    error = pw.TextField(null=True)
    triggered_by = pw.TextField(null=True)  # the person who asked for a manual or rollback run
    fingerprint = pw.TextField(null=True)  # SHA-256 of the plan's changes alone (no time in it)
    override_reason = pw.TextField(null=True)  # applied inside a closed change window, and why
    notified_status = pw.TextField(null=True)  # the status whose notifications are queued
    skipped = JSONField(null=True)  # the listing's skipped objects by reason
    tops = JSONField(null=True)  # per top key: the listing's objects and skips (Listing.tallies)

    class Meta:
        table_name = "reconciler_runs"


class Event(_Base):
    """An S3 event notification, stored until the leader turns it into a run."""

    id = pw.BigAutoField()
    received_at = pw.DateTimeField()
    via = pw.TextField()
    bucket = pw.TextField()
    key = pw.TextField()
    event_name = pw.TextField(null=True)
    sequencer = pw.TextField(null=True)
    model = pw.TextField()
    dedup = pw.TextField(unique=True)
    run_id = pw.BigIntegerField(null=True)
    handled_at = pw.DateTimeField(null=True)

    class Meta:
        table_name = "reconciler_events"


class ControllerState(_Base):
    """The one row every replica reads to show who leads and when the next check is."""

    id = pw.IntegerField(primary_key=True)
    leader = pw.TextField(null=True)
    leader_since = pw.DateTimeField(null=True)
    next_check_at = pw.DateTimeField(null=True)
    updated_at = pw.DateTimeField()

    class Meta:
        table_name = "reconciler_controller"


class Approval(_Base):
    """One person's approval of a run (see :mod:`reconciler.controller.approvals`)."""

    run_id = pw.BigIntegerField()
    person = pw.TextField()
    approved_at = pw.DateTimeField()
    carried_from = pw.BigIntegerField(null=True)  # the superseded run with the same changes it was given to

    class Meta:
        table_name = "reconciler_approvals"
        primary_key = pw.CompositeKey("run_id", "person")


class Delivery(_Base):
    """A notification to one destination, queued until it is delivered (see
    :mod:`reconciler.controller.notify`)."""

    id = pw.BigAutoField()
    destination = pw.TextField()
    event = pw.TextField()
    dedup_key = pw.TextField()
    run_id = pw.BigIntegerField(null=True)
    body = pw.TextField()  # the exact bytes sent (UTF-8), fixed when queued
    status = pw.TextField()  # pending | delivered | failed
    attempts = pw.IntegerField()
    created_at = pw.DateTimeField()
    next_attempt_at = pw.DateTimeField()
    delivered_at = pw.DateTimeField(null=True)
    last_error = pw.TextField(null=True)

    class Meta:
        table_name = "reconciler_deliveries"


CONTROLLER_MODELS = (Run, Event, ControllerState, Apply, Approval, Delivery)


