"""Runs: planning attempts stored in the database, and what people do with them.

A run is one planning attempt of the controller (``reconciler serve``), a row of
``reconciler_runs`` holding its plan file — zlib-compressed, byte for byte what
``reconciler plan -o`` writes — so that any replica can show, serve and apply it.
States, after HCP Terraform's::

    planning → no_changes | planned | refused | errored
    planned  → applying → applied | apply_errored
    planned  → discarded | superseded | stale

Everything here goes through the same library functions as the command line:
planning is :func:`reconciler.commands.plan` writing a plan file, applying is
:func:`reconciler.commands.apply` on that very file, so every guarantee of
``reconciler apply`` holds (schema, plan_id, signature, lock, stale check, delete
limits, one transaction, audit). A status transition is one conditional ``UPDATE``
(``… WHERE status = 'planned'``): two people approving the same run at once get one
apply and one 409.

The API and the dashboard call :class:`Runs`; nothing here knows about HTTP.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import tempfile
import threading
import time
import zlib
from typing import Any, Callable, Iterator, Protocol, TypeVar

import peewee as pw
import psycopg2
import psycopg2.extensions
from playhouse.pool import PooledPostgresqlDatabase

from .. import commands
from ..catalogue.sql import known_select, where
from ..config import Settings
from ..engine.safety import Limits, check_delete_limits
from ..planfile.digest import hash_body
from ..errors import (
    AlreadyAppliedError,
    ConfigError,
    DatabaseError,
    LockTimeoutError,
    ReconcilerError,
    SafetyError,
    StalePlanError,
)
from ..store.current import counts_by_top, state_digest, top_keys
from ..store.db import describe_pg_error
from ..store.migrations import migration_files
from ..store.models import CONTROLLER_MODELS, Apply, ControllerState, Run
from .tops import SETTLED, Check, Counts, TopStatus, changes_by_top, covering, pending_keys, status_of

log = logging.getLogger("reconciler.controller.runs")

STATUSES = (
    "planning", "no_changes", "planned", "refused", "errored",
    "applying", "applied", "apply_errored", "discarded", "superseded", "stale",
)
TRIGGERS = ("schedule", "event", "manual", "rollback")
FINAL = {"no_changes", "refused", "errored", "applied", "apply_errored", "discarded", "superseded", "stale"}
# Runs whose plan describes drift a person has not resolved yet.
OPEN = ("planned", "applying", "apply_errored", "discarded", "stale")
POLICIES = ("off", "creates", "within-limits")
T = TypeVar("T")


def _made():
    """Runs that made a plan of the bucket (rollback runs list nothing)."""
    return Run.status.not_in(["planning", "errored", "refused"]) & (Run.trigger != "rollback")


class RunError(ReconcilerError):
    """A request about a run that cannot be done; ``status`` is the HTTP status to answer."""

    status = 409


class RunNotFound(RunError):
    status = 404


class RunConflict(RunError):
    status = 409


class BadRequest(RunError):
    status = 400


class Observer(Protocol):
    """Told what happens (the server's metrics implement it); every method optional."""

    def run_finished(self, run: dict) -> None: ...
    def applied(self, run: dict) -> None: ...


def total(summary: dict | None) -> int:
    return sum(sum(actions.values()) for actions in (summary or {}).values())


def zeroed(summary: dict) -> dict:
    return {kind: {action: 0 for action in actions} for kind, actions in summary.items()}


def only_creates(summary: dict) -> bool:
    """Every count but ``create`` is 0 — whatever actions the plan format holds."""
    return all(n == 0 for actions in summary.values() for action, n in actions.items() if action != "create")


def auto_apply_allowed(policy: str, summary: dict, current_rows: int, limits: Limits) -> bool:
    """Whether ``policy`` applies a plan with this summary without a person.

    ``creates``: the plan only creates. ``within-limits``: its deletions are within the
    configured delete limits (the plan was refused already if they were not; this
    checks again with the limits the server runs with). ``off``: never.
    """
    if total(summary) == 0:
        return False
    if policy == "creates":
        return only_creates(summary)
    if policy == "within-limits":
        if limits.max_delete is None and limits.max_delete_percent is None:
            return False
        deletes = sum(actions.get("delete", 0) for actions in summary.values())
        try:
            check_delete_limits(deletes, current_rows, limits)
        except SafetyError:
            return False
        return True
    return False


def one_line(text: str, limit: int = 500) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Cache:
    """A few derived views of runs, by key: a run's plan and tallies never change, so
    what is made of them once serves every later request."""

    def __init__(self, size: int = 8) -> None:
        self.size, self.items, self.lock = size, collections.OrderedDict(), threading.Lock()

    def get(self, key, make: Callable[[], T]) -> T:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        value = make()
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return value


class _Progress:
    """The ``progress(str)`` hook of plan and apply, recorded on the run at most once a
    second: the phase (the message) and the counts it names."""

    def __init__(self, store: "Runs", run_id: int) -> None:
        self.store, self.run_id = store, run_id
        self.counts: dict[str, int] = {}
        self.phase = ""
        self.last = 0.0

    def __call__(self, msg: str) -> None:
        self.phase = msg
        words = msg.split()
        for i, w in enumerate(words[:-1]):
            if w in ("listed", "staging") and words[i + 1].isdigit():
                self.counts["objects_listed" if w == "listed" else "changes_staged"] = int(words[i + 1])
        now = time.monotonic()
        if now - self.last >= 1.0:
            self.last = now
            with contextlib.suppress(Exception):  # progress is a courtesy; the run goes on
                self.store.set_progress(self.run_id, self.phase, dict(self.counts))


class Runs:
    """Runs of one database: create, execute, list, apply, discard, roll back.

    ``settings.database`` must be a URL (the server resolves the embedded default to
    one before it starts). Row-at-a-time work goes through peewee on a small pool;
    plan and apply open their own connections, as on the command line.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        display: str | None = None,
        owner: int = 0,
        observer: Observer | None = None,
    ) -> None:
        if not settings.database:
            raise ValueError("Runs needs settings.database (a URL)")
        self.settings = settings
        self.display = display or settings.database
        self.owner = owner
        self.observer = observer
        self.db = PooledPostgresqlDatabase(
            settings.database, max_connections=16, stale_timeout=300, timeout=10, autoconnect=True,
            connect_timeout=5,
        )
        self.db.bind(CONTROLLER_MODELS, bind_refs=False, bind_backrefs=False)
        self._password = psycopg2.extensions.parse_dsn(settings.database).get("password")
        self.derived = Cache(16)

    # ------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def session(self, doing: str = "cannot reach the database") -> Iterator[pw.Database]:
        """A pooled connection for a few statements; a lost connection is dropped from
        the pool and reported as a DatabaseError (the caller retries later)."""
        try:
            with self.db.connection_context():
                yield self.db
        except (pw.OperationalError, pw.InterfaceError, psycopg2.OperationalError, psycopg2.InterfaceError) as e:
            with contextlib.suppress(Exception):
                self.db.manual_close()
            with contextlib.suppress(Exception):
                self.db.close_idle()
            cause = e.__cause__ or e
            raise DatabaseError(f"{doing}: {describe_pg_error(cause, self._password)}") from None
        except pw.PeeweeException as e:
            cause = e.__cause__ or e
            raise DatabaseError(f"{doing}: {describe_pg_error(cause, self._password)}") from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.db.close_all()

    def _notify(self, method: str, run: dict) -> None:
        fn = getattr(self.observer, method, None)
        if fn:
            with contextlib.suppress(Exception):
                fn(run)

    # ------------------------------------------------------------------ reading

    @staticmethod
    def to_dict(r: Run) -> dict:
        return {
            "id": r.id,
            "status": r.status,
            "trigger": r.trigger,
            "scope": r.scope,
            "created_at": _utc(r.created_at),
            "planned_at": _utc(r.planned_at),
            "finished_at": _utc(r.finished_at),
            "phase": r.phase,
            "progress": r.progress,
            "plan_id": r.plan_id,
            "summary": r.summary,
            "change_count": r.change_count,
            "current_rows": r.current_rows,
            "object_count": r.object_count,
            "decided_by": r.decided_by,
            "decided_at": _utc(r.decided_at),
            "apply_id": r.apply_id,
            "rolls_back": r.rolls_back,
            "plan_seconds": r.plan_seconds,
            "apply_seconds": r.apply_seconds,
            "error": r.error,
            "triggered_by": r.triggered_by,
            "fingerprint": r.fingerprint,
            "override_reason": r.override_reason,
            "skipped": r.skipped,
        }

    _LIST_FIELDS = [f for f in Run._meta.sorted_fields if f.name not in ("plan_file", "tops")]

    def list_runs(self, status: str | None = None, limit: int = 50, offset: int = 0) -> list[dict]:
        """Runs, newest first (without their plan files)."""
        with self.session():
            q = Run.select(*self._LIST_FIELDS).order_by(Run.id.desc()).limit(limit).offset(offset)
            if status:
                q = q.where(Run.status << [s for s in status.split(",") if s])
            return [self.to_dict(r) for r in q]

    def get_run(self, run_id: int) -> dict:
        with self.session():
            r = Run.select(*self._LIST_FIELDS).where(Run.id == run_id).first()
        if r is None:
            raise RunNotFound(f"there is no run {run_id}")
        return self.to_dict(r)

    def plan_file(self, run_id: int) -> bytes:
        """The run's plan file, byte for byte what ``reconciler plan -o`` wrote."""
        with self.session():
            r = Run.select(Run.id, Run.plan_file).where(Run.id == run_id).first()
        if r is None:
            raise RunNotFound(f"there is no run {run_id}")
        if r.plan_file is None:
            raise RunNotFound(f"run {run_id} has no plan file (it was refused, errored, or is still planning)")
        return zlib.decompress(bytes(r.plan_file))

    @contextlib.contextmanager
    def plan_path(self, run_id: int) -> Iterator[str]:
        """The run's plan file as a temporary file, for :mod:`reconciler.planfile`."""
        data = self.plan_file(run_id)
        with tempfile.TemporaryDirectory(prefix="reconciler-run-") as d:
            path = os.path.join(d, f"run-{run_id}.json")
            with open(path, "wb") as f:
                f.write(data)
            yield path

    def run_changes(self, run_id: int, offset: int = 0, limit: int = 100) -> tuple[list[dict], int]:
        """A page of the run's changes (verified as ``reconciler show`` does) and their count."""
        from ..planfile import load_plan

        with self.plan_path(run_id) as path:
            p = load_plan(path, self.settings.catalogue)
        return [c.to_dict() for c in p.changes[offset : offset + limit]], len(p.changes)

    def status(self) -> dict:
        """The drift summary the API's ``/api/status`` and the overview page show.

        The baseline is the newest full-scope run that made a plan (rollback runs
        aside). While its plan is open (planned, discarded, stale, …) the drift is its
        summary; once it found no changes or was applied, the drift is what the scoped
        runs made since that are still open found. ``drift_runs`` are those runs (with
        their state and who decided: the drift of a discarded plan is still drift, and
        the overview says where it comes from). ``in_sync`` is true when the drift is
        zero and no run since the baseline was refused (``refused_run``). ``skipped`` is
        what the baseline's listing skipped, by reason; ``rows_by_kind`` the rows now;
        ``rows_in_sync`` those of them the drift leaves as they are (no update, move or
        delete pending).
        """
        made = _made()
        with self.session() as db:
            base = Run.select(*self._LIST_FIELDS).where(made & Run.scope.is_null()).order_by(Run.id.desc()).first()
            since = base.id if base else 0
            if base is not None and base.status not in ("no_changes", "applied") and total(base.summary):
                sources = [base]
            else:
                sources = [r for r in Run.select(*self._LIST_FIELDS).where(
                    (Run.id > since) & made & Run.scope.is_null(False) & Run.status.in_(OPEN)).order_by(Run.id)
                    if total(r.summary)]
            refused = (Run.select(Run.id).where((Run.id > since) & (Run.status == "refused"))
                       .order_by(Run.id.desc()).first())
            pending = Run.select(Run.id).where(Run.status == "planned").order_by(Run.id.desc()).first()
            last_check = Run.select(pw.fn.MAX(Run.planned_at)).where(Run.planned_at.is_null(False)).scalar()
            last_apply = Apply.select(pw.fn.MAX(Apply.applied_at)).scalar()
            state = ControllerState.get_or_none(ControllerState.id == 1)
            # Live, from the terms the triggers keep per anchor row: no scan of the rows.
            rows_now = state_digest(db.connection(), self.settings.catalogue).counts
        drift: dict = zeroed(base.summary) if base is not None and base.summary is not None else {}
        for r in sources:
            for kind, actions in r.summary.items():
                for action, n in actions.items():
                    drift.setdefault(kind, {}).setdefault(action, 0)
                    drift[kind][action] += n
        return {
            "in_sync": base is not None and total(drift) == 0 and refused is None,
            "last_check_at": _utc(last_check),
            "last_apply_at": _utc(last_apply),
            "next_check_at": _utc(state.next_check_at) if state else None,
            "leader_name": state.leader if state else None,
            "pending_run": pending.id if pending else None,
            "drift": drift,
            "drift_runs": [{"id": r.id, "status": r.status, "decided_by": r.decided_by,
                            "decided_at": _utc(r.decided_at)} for r in sources],
            "refused_run": refused.id if refused else None,
            "objects_listed": base.object_count if base else None,
            "skipped": base.skipped if base else None,
            "rows_in_database": sum(rows_now.values()),
            "rows_by_kind": rows_now,
            "rows_in_sync": max(0, sum(rows_now.values()) - sum(
                n for actions in drift.values() for action, n in actions.items() if action != "create")),
            "last_full_run": base.id if base else None,
        }

    def load_plan(self, run_id: int):
        """The run's plan as a :class:`reconciler.planfile.Plan`, verified as ``show`` does."""
        from ..planfile import load_plan

        with self.plan_path(run_id) as path:
            return load_plan(path, self.settings.catalogue)

    # ------------------------------------------------------------------ per top key

    def checks(self) -> list[Check]:
        """The checks a key's status is read from, newest first: the newest full check
        that made a plan, and the scoped runs that made one since."""
        made = _made()
        with self.session():
            base = Run.select(Run.id).where(made & Run.scope.is_null()).order_by(Run.id.desc()).first()
            rows = (Run.select(Run.id, Run.status, Run.scope, Run.planned_at)
                    .where(made & (Run.id >= (base.id if base else 0))).order_by(Run.id.desc()))
            return [Check(r.id, r.status, None if r.scope is None else tuple(r.scope), _utc(r.planned_at))
                    for r in rows]

    def changes_by_top(self, run_id: int) -> dict[str, Counts]:
        """The run's changes counted per top key, kind and action (read once per run)."""
        return self.derived.get(("changes", run_id), lambda: changes_by_top(self.load_plan(run_id)))

    def tallies(self, run_id: int) -> dict[str, dict] | None:
        """The run's listing tallies per top key (None: the run kept none)."""
        def make():
            with self.session():
                r = Run.select(Run.tops).where(Run.id == run_id).first()
            return None if r is None else r.tops
        return self.derived.get(("tallies", run_id), make)

    def _skipped_keys(self, run_id: int) -> set[str]:
        return self.derived.get(("skipped", run_id),
                                lambda: {k for k, t in (self.tallies(run_id) or {}).items() if t.get("skipped")})

    def _statuses(self, keys: list[str], checks: list[Check]) -> list[TopStatus]:
        catalogue = self.settings.catalogue
        with self.session("cannot read the database") as db:
            conn = db.connection()
            present = set(top_keys(conn, catalogue, keys))
            records = counts_by_top(conn, catalogue, keys)
        out = []
        for key in keys:
            check = covering(checks, key)
            tally = changes = None
            if check is not None:
                kept = self.tallies(check.id)
                tally = None if kept is None else kept.get(key, {})
                if check.status not in SETTLED:
                    changes = self.changes_by_top(check.id).get(key)
            out.append(status_of(key, catalogue.kinds, in_database=key in present, records=records.get(key, {}),
                                 check=check, tally=tally, changes=changes))
        return out

    def top_status(self, key: str) -> TopStatus:
        """One key's status card (``GET /api/status/{key}``), from the newest check that
        covered it and the database now. :class:`RunNotFound` for a key that is neither
        in the database nor under anything that check listed."""
        checks = self.checks()
        st = self._statuses([key], checks)[0]
        if not (st.in_database or st.objects or st.skipped or st.changes):
            top = self.settings.catalogue.top
            seen = (f"the bucket held nothing under it at the newest check (run {st.check.id})" if st.check
                    else "no check has run yet")
            raise RunNotFound(f"there is no {top.name} {key!r}: it is not in the database, and {seen}")
        return st

    def tops_page(self, search: str = "", only: bool = False, offset: int = 0,
                  limit: int = 50) -> tuple[list[TopStatus], int]:
        """A page of top keys, by key, with their status cards: the top table's rows,
        and the keys a check found something under that are not rows (a model a plan
        would create, a product whose images were skipped), filtered by a
        case-insensitive substring ``search``; ``only`` keeps the keys with changes not
        applied. Paged in SQL however many rows the top table holds. Returns the page
        and the total."""
        checks = self.checks()
        pending = pending_keys(checks, self.changes_by_top)
        extra = pending if only else pending.union(*(self._skipped_keys(c.id) for c in checks),
                                                   *(c.scope for c in checks if c.scope))
        keys, count = self._key_page(search, sorted(extra), only, offset, limit)
        return self._statuses(keys, checks), count

    def _key_page(self, search: str, extra: list[str], only: bool, offset: int, limit: int) -> tuple[list[str], int]:
        catalogue = self.settings.catalogue
        pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        select, _ = known_select(catalogue, catalogue.top.name)
        universe = "SELECT unnest(%s::text[])" if only else \
            f"{select.format(where=where([]))} UNION SELECT unnest(%s::text[])"
        named = (f"WITH names(name) AS ({universe}) "
                 "SELECT name, count(*) OVER () FROM names WHERE name ILIKE %s ESCAPE '\\'")
        with self.session("cannot read the database"):
            rows = self.db.execute_sql(f"{named} ORDER BY name LIMIT %s OFFSET %s",
                                       (extra, pattern, limit, offset)).fetchall()
            count = rows[0][1] if rows else self.db.execute_sql(
                f"SELECT count(*) FROM ({named}) page", (extra, pattern)).fetchone()[0]
        return [r[0] for r in rows], count

    def timeline(self, days: int = 30, limit: int = 500) -> list[dict]:
        """Runs of the last ``days`` days that made a plan or applied one, oldest first
        (for the dashboard's charts): when, trigger, status, change count, durations."""
        with self.session():
            q = (Run.select(Run.id, Run.status, Run.trigger, Run.created_at, Run.planned_at, Run.finished_at,
                            Run.change_count, Run.plan_seconds, Run.apply_seconds, Run.scope)
                 .where((Run.created_at > pw.SQL(f"now() - interval '{int(days)} days'"))
                        & Run.status.not_in(["planning"]))
                 .order_by(Run.id.desc()).limit(limit))
            rows = list(q)
        return [dict(id=r.id, status=r.status, trigger=r.trigger, scope=r.scope, at=_utc(r.planned_at or r.created_at),
                     finished_at=_utc(r.finished_at), change_count=r.change_count or 0,
                     plan_seconds=r.plan_seconds, apply_seconds=r.apply_seconds) for r in reversed(rows)]

    def get_apply(self, apply_id: int) -> dict:
        """One apply of the audit log: the history entry, the run that applied it (None
        when it came from the command line) and the runs that roll it back."""
        entry = self._apply_entry(apply_id)
        with self.session():
            run = Run.select(Run.id).where(Run.apply_id == apply_id).first()
            rollbacks = [r.id for r in Run.select(Run.id).where(Run.rolls_back == apply_id).order_by(Run.id)]
        entry.update(run_id=run.id if run else None, rollback_runs=rollbacks)
        return entry

    def apply_runs(self, apply_ids: list[int]) -> dict[int, dict]:
        """For each apply: the run that applied it and who approved it (none for an
        apply made on the command line), the rollback runs made of it, and the apply
        that rolled it back (from the audit log: on the command line too), if any."""
        out: dict[int, dict] = {a: {"run_id": None, "decided_by": None, "rollbacks": [], "rolled_back_by": None}
                                for a in apply_ids}
        if not apply_ids:
            return out
        with self.session():
            for r in Run.select(Run.id, Run.apply_id, Run.decided_by).where(Run.apply_id << apply_ids):
                out[r.apply_id].update(run_id=r.id, decided_by=r.decided_by)
            for r in Run.select(Run.id, Run.rolls_back, Run.status).where(Run.rolls_back << apply_ids).order_by(Run.id):
                out[r.rolls_back]["rollbacks"].append({"id": r.id, "status": r.status})
            for a in Apply.select(Apply.id, Apply.rolls_back).where(Apply.rolls_back << apply_ids).order_by(Apply.id.desc()):
                out[a.rolls_back]["rolled_back_by"] = a.id
        return out

    def _apply_entry(self, apply_id: int) -> dict:
        with self.session():
            row = self.db.execute_sql(
                """SELECT id, plan_id, to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                          db_user, os_user, source, scope, summary, rolls_back
                   FROM reconciler_applies WHERE id = %s""", (apply_id,)).fetchone()
        if row is None:
            raise RunNotFound(f"there is no apply {apply_id}")
        return dict(apply_id=row[0], plan_id=row[1], applied_at=row[2], db_user=row[3], os_user=row[4],
                    applied_by=f"{row[4]} (db: {row[3]})" if row[4] else row[3], source=row[5], scope=row[6],
                    summary=row[7], rolls_back=row[8])

    def apply_changes(self, apply_id: int, offset: int = 0, limit: int = 100) -> tuple[list[dict], int]:
        """A page of an apply's audited changes (kind, action, key, row id) and their count."""
        with self.session():
            n = self.db.execute_sql("SELECT count(*) FROM reconciler_changes WHERE apply_id = %s",
                                    (apply_id,)).fetchone()[0]
            rows = self.db.execute_sql(
                "SELECT kind, action, key, row_id FROM reconciler_changes WHERE apply_id = %s ORDER BY key, kind "
                "LIMIT %s OFFSET %s", (apply_id, limit, offset)).fetchall()
        return [dict(kind=r[0], action=r[1], key=r[2], row_id=r[3]) for r in rows], n

    # ------------------------------------------------------------------ writing

    def create_run(self, trigger: str, scope: list[str] | None = None, by: str | None = None) -> int:
        """A new run in ``planning``; :meth:`execute` makes its plan. ``by``: the person
        who asked for it (a policy may refuse them as its only approver)."""
        if trigger not in TRIGGERS:
            raise ValueError(trigger)
        scope = sorted(set(scope)) if scope else None
        with self.session("cannot record the run"):
            return Run.insert(
                status="planning", trigger=trigger, scope=scope, created_at=pw.SQL("now()"), owner=self.owner,
                phase="queued", triggered_by=by,
            ).execute()

    def set_progress(self, run_id: int, phase: str, counts: dict) -> None:
        with self.session():
            Run.update(phase=phase, progress=counts).where(Run.id == run_id).execute()

    def execute(self, run_id: int) -> dict:
        """Make the plan of a run in ``planning``: list, read, diff, write the plan file
        (through :func:`reconciler.commands.plan`), store it, and record the outcome:
        ``no_changes``, ``planned`` (superseding older planned runs of the same or a
        narrower scope), ``refused`` (a safety guard) or ``errored``. Planning never
        writes to the content tables."""
        run = self.get_run(run_id)
        progress = _Progress(self, run_id)
        started = time.monotonic()
        outcome: dict[str, Any]
        try:
            with tempfile.TemporaryDirectory(prefix="reconciler-plan-") as d:
                path = os.path.join(d, "plan.json")
                # An event's top keys came from the bucket: one whose objects came and went is nothing to do.
                plan, _ = commands.plan(self.settings, path, scope=run["scope"], require_known=run["trigger"] != "event",
                                        progress=progress)
                with open(path, "rb") as f:
                    data = f.read()
            summary = plan.summary
            n = total(summary)
            outcome = dict(
                status="planned" if n else "no_changes",
                plan_id=plan.plan_id,
                fingerprint=changes_fingerprint(plan),
                summary=summary,
                change_count=n,
                current_rows=sum((plan.target.get("current_counts") or {}).values()),
                object_count=plan.source.get("object_count"),
                plan_file=zlib.compress(data, 6),
                planned_at=pw.SQL("now()"),
                error=None,
                skipped=plan.source.get("skipped") or {},
                tops=plan.tops,
            )
        except SafetyError as e:
            outcome = dict(status="refused", error=one_line(e))
        except ReconcilerError as e:
            outcome = dict(status="errored", error=one_line(e))
        except Exception as e:  # a bug must not kill the loop; the run says what happened
            log.exception("run %s failed", run_id)
            outcome = dict(status="errored", error=one_line(f"unexpected {type(e).__name__}: {e}"))
        outcome["plan_seconds"] = time.monotonic() - started
        outcome["phase"] = "done"
        outcome["progress"] = dict(progress.counts, rows_read=outcome.get("current_rows") or 0)
        if outcome["status"] != "planned":
            outcome["finished_at"] = pw.SQL("now()")
        with self.session("cannot record the run's plan"), self.db.atomic():
            Run.update(**outcome).where((Run.id == run_id) & Run.status.in_(["planning", "errored"])).execute()
            if outcome["status"] in ("planned", "no_changes"):
                self._supersede(run_id, run["scope"])
                if run["scope"] is None:
                    # No key's status is read from a run before a full check again: their
                    # tallies (an entry per top key each) would only take room.
                    Run.update(tops=None).where((Run.id < run_id) & Run.tops.is_null(False)).execute()
        result = self.get_run(run_id)
        self._notify("run_finished", result)
        return result

    def _supersede(self, run_id: int, scope: list[str] | None) -> None:
        """Older planned runs of the same or a narrower scope are superseded (rollback
        runs only by nothing: a person asked for them)."""
        self.db.execute_sql(
            """UPDATE reconciler_runs SET status = 'superseded', finished_at = now(), phase = 'done'
               WHERE status = 'planned' AND id < %s AND trigger <> 'rollback'
                 AND (%s::jsonb IS NULL OR scope <@ %s::jsonb)""",
            (run_id, _json(scope), _json(scope)),
        )

    def plan_now(self, trigger: str, scope: list[str] | None = None) -> dict:
        """Create a run and make its plan (blocking)."""
        return self.execute(self.create_run(trigger, scope))

    def apply(self, run_id: int, by: str, override_reason: str | None = None) -> dict:
        """Approve and apply a ``planned`` run, through :func:`reconciler.commands.apply`
        on its stored plan file; ``by`` is recorded as who decided, ``override_reason``
        (applied inside a closed change window) in the run and the audit. Whether a run
        may be applied is :class:`reconciler.controller.approvals.Approvals`' to say.

        Raises :class:`RunConflict` (the run stays as it was) when it is not
        ``planned``, already applied, refused by a delete limit or the lock is busy;
        a stale plan turns the run ``stale`` and raises :class:`RunConflict`. Any other
        failure turns it ``apply_errored`` and raises the error.
        """
        with self.session("cannot record the approval"):
            claimed = (
                Run.update(status="applying", decided_by=by, decided_at=pw.SQL("now()"), owner=self.owner,
                           phase="applying", error=None, override_reason=override_reason)
                .where((Run.id == run_id) & (Run.status == "planned"))
                .execute()
            )
        if not claimed:
            run = self.get_run(run_id)  # 404 when there is none
            raise RunConflict(f"run {run_id} is {run['status']}, not planned; only a planned run can be applied")
        progress = _Progress(self, run_id)
        started = time.monotonic()
        try:
            with self.plan_path(run_id) as path:
                result = commands.apply(self.settings, path, progress=progress, actor=by,
                                        override_reason=override_reason)
        except StalePlanError as e:
            self._end_apply(run_id, status="stale", error=one_line(e), finished=True, started=started)
            self._notify("applied", self.get_run(run_id))
            raise RunConflict(str(e)) from None
        except (AlreadyAppliedError, SafetyError, LockTimeoutError) as e:
            self._end_apply(run_id, status="planned", error=one_line(e), finished=False, started=started,
                            undecide=True)
            raise RunConflict(str(e)) from None
        except BaseException as e:
            msg = one_line(e) if isinstance(e, ReconcilerError) else one_line(f"unexpected {type(e).__name__}: {e}")
            with contextlib.suppress(Exception):
                self._end_apply(run_id, status="apply_errored", error=msg, finished=True, started=started)
                self._notify("applied", self.get_run(run_id))
            raise
        self._end_apply(run_id, status="applied", error=None, finished=True, started=started,
                        apply_id=result.apply_id, progress=dict(progress.counts, rows_applied=result.total))
        run = self.get_run(run_id)
        self._notify("applied", run)
        return run

    def _end_apply(self, run_id, *, status, error, finished, started, apply_id=None, undecide=False,
                   progress=None) -> None:
        values: dict[str, Any] = dict(status=status, error=error, phase="done",
                                      apply_seconds=time.monotonic() - started)
        if progress is not None:
            values["progress"] = progress
        if finished:
            values["finished_at"] = pw.SQL("now()")
        if apply_id is not None:
            values["apply_id"] = apply_id
        if undecide:
            values.update(decided_by=None, decided_at=None, phase="planned", override_reason=None)
        with self.session("cannot record the apply's outcome"):
            # apply_errored too: a reaper that took this replica for dead is corrected.
            Run.update(**values).where((Run.id == run_id) & Run.status.in_(["applying", "apply_errored"])).execute()

    def discard(self, run_id: int, by: str) -> dict:
        """A person discards a ``planned`` run."""
        with self.session("cannot record the discard"):
            n = (
                Run.update(status="discarded", decided_by=by, decided_at=pw.SQL("now()"),
                           finished_at=pw.SQL("now()"), phase="done")
                .where((Run.id == run_id) & (Run.status == "planned"))
                .execute()
            )
        run = self.get_run(run_id)
        if not n:
            raise RunConflict(f"run {run_id} is {run['status']}, not planned; only a planned run can be discarded")
        return run

    def rollback(self, apply_id: int, by: str) -> dict:
        """A new ``planned`` run (trigger ``rollback``) holding the inverse plan of an
        apply, made by :func:`reconciler.commands.rollback`; it is applied like any run."""
        self._not_rolled_back(apply_id)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="reconciler-rollback-") as d:
            path = os.path.join(d, "rollback.json")
            try:
                plan = commands.rollback(self.settings, apply_id, path)
            except DatabaseError:
                raise
            except ReconcilerError as e:  # rows changed since, or rolled back a moment ago
                self._not_rolled_back(apply_id)
                raise RunConflict(str(e)) from None
            with open(path, "rb") as f:
                data = f.read()
        summary = plan.summary
        with self.session("cannot record the run"):
            run_id = Run.insert(
                status="planned", trigger="rollback", scope=plan.scope, created_at=pw.SQL("now()"),
                planned_at=pw.SQL("now()"), owner=self.owner, phase="planned", plan_id=plan.plan_id,
                summary=summary, change_count=total(summary),
                current_rows=sum((plan.target.get("current_counts") or {}).values()), object_count=0,
                plan_file=zlib.compress(data, 6), rolls_back=apply_id, decided_by=None, triggered_by=by,
                fingerprint=changes_fingerprint(plan),
                plan_seconds=time.monotonic() - started, progress={},
            ).execute()
        run = self.get_run(run_id)
        self._notify("run_finished", run)
        return run

    def _not_rolled_back(self, apply_id: int) -> None:
        """Refuse an apply that is not there or was rolled back already, in words that
        fit the API and the dashboard alike (the library's name a command to run)."""
        with self.session():
            if Apply.get_or_none(Apply.id == apply_id) is None:
                raise RunNotFound(f"there is no apply {apply_id}")
            undone = Apply.select(Apply.id).where(Apply.rolls_back == apply_id).order_by(Apply.id).first()
        if undone is not None:
            raise RunConflict(f"apply {apply_id} was rolled back already, by apply {undone.id}")

    def check_scope(self, keys: list[str]) -> None:
        """Refuse, before a run is made, top keys that are neither in the source nor in
        the database — the check ``plan --scope`` makes (:func:`reconciler.commands.check_scope`)."""
        try:
            commands.check_scope(self.settings, keys, hint=f"check the {self.settings.catalogue.top.name} keys")
        except ConfigError as e:
            raise BadRequest(str(e)) from None

    def history(self, limit: int = 20) -> list[dict]:
        """Applies, as ``reconciler history --format json``."""
        return [e.to_dict() for e in commands.history(self.settings, limit)]

    # ------------------------------------------------------------------ health

    def ready(self) -> str | None:
        """None when the database answers and its schema is current; else why not.
        A fresh connection with a short timeout: a probe must not hang."""
        latest = max(f.version for f in migration_files())
        try:
            conn = psycopg2.connect(self.settings.database, connect_timeout=3)
        except psycopg2.Error as e:
            return one_line(f"cannot connect to {self.display}: {describe_pg_error(e, self._password)}")
        try:
            with conn.cursor() as cur:
                cur.execute("SET statement_timeout = '3s'")
                cur.execute("SELECT to_regclass('reconciler_migrations') IS NOT NULL")
                if not cur.fetchone()[0]:
                    return f"{self.display} is not initialised; run `reconciler init`"
                cur.execute("SELECT coalesce(max(version), 0) FROM reconciler_migrations")
                current = cur.fetchone()[0]
        except psycopg2.Error as e:
            return one_line(f"cannot read the schema version: {describe_pg_error(e, self._password)}")
        finally:
            conn.close()
        if current < latest:
            return f"the schema is behind (version {current} of {latest}); run `reconciler init`"
        return None


def changes_fingerprint(plan) -> str:
    """SHA-256 of the plan's changes alone: unlike plan_id, no time, source or target
    is in it, so the same drift found by every check has the same fingerprint."""
    return hash_body(plan.changes, {}, None)[0]


def _utc(v) -> str | None:
    if v is None:
        return None
    if getattr(v, "tzinfo", None) is not None:
        from datetime import timezone

        v = v.astimezone(timezone.utc)
    return v.strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(v) -> str | None:
    import json

    return None if v is None else json.dumps(v)

