"""Notifications (config ``notify:``): a Slack incoming webhook or a JSON webhook
signed with HMAC-SHA256, told what a reviewer needs to know about runs.

Events: ``drift_found`` (a run planned with changes), ``approval_needed`` (a planned
run waits for people), ``applied``, ``apply_failed``, ``refused`` (by a guard),
``stale`` and ``leader_changed``; each destination takes the events it names.

**The outbox.** Run events are not sent from the code that changes a run: they are
derived from the run's stored state. Each run carries ``notified_status``, the status
whose notifications were queued; the leader takes the runs whose status moved past it
(``FOR UPDATE SKIP LOCKED``), queues one delivery per event and destination in
``reconciler_deliveries`` and moves ``notified_status`` on, in one transaction. So
every path that changes a run — a person, auto-apply, the reaper of a dead replica —
notifies, exactly once, whichever replica leads and however it stops: a transaction
cut short by a ``kill -9`` is queued again by the next leader, one that committed is
not. Each event has a key, unique per destination, so it is queued once even when
two leaders overlap for a moment.

**Deduplication.** ``drift_found`` and ``approval_needed`` are keyed on the plan's
fingerprint (its changes alone: see :func:`.runs.changes_fingerprint`) and the last
run that resolved the drift: the same drift found by every scheduled check is one
notification, until its content changes or it is resolved (applied, or a full check
finds nothing) and comes back.

**Delivery.** A thread of the leader claims due deliveries (a lease: a replica that
dies while sending leaves them to be sent again when the lease ends) and sends them
from a small pool, one at a time per destination and each with a timeout, so a
receiver that hangs holds its own sender, never another destination's or the loop. A failure is retried with exponential backoff (5 s, doubling, at most 10
minutes apart) up to ten attempts; a 4xx answer other than 408 and 429 fails at once
(the destination is wrong, and retrying will not fix it). Every delivery, with its
attempts and last error, is on the dashboard and in the API. Delivery is at least
once: ``X-Reconciler-Delivery`` names the delivery, for receivers that must not act
twice.

**Signing.** A webhook's body is signed with the secret in the environment variable
its ``secret_env`` names: ``X-Reconciler-Timestamp: <unix seconds>`` and
``X-Reconciler-Signature: sha256=<hex of HMAC-SHA256(secret, timestamp + "." + body)>``
over the exact bytes of the body. A receiver recomputes it and refuses a timestamp
more than a few minutes old (a replay). A Slack webhook URL holds its token: it comes
from the environment too (``url_env``). No secret is logged, shown or stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Mapping

import peewee as pw

from ..catalogue import Catalogue
from ..config import check_url, register_secret_env
from ..errors import ConfigError
from ..render import deletion_note
from ..store.db import scrub
from ..store.models import Delivery, Run
from ..version import __version__
from .approvals import RESOLVED_BEFORE, Approvals, Verdict, approvers_of
from .runs import Runs, _utc, one_line

log = logging.getLogger("reconciler.controller.notify")

EVENTS = ("drift_found", "approval_needed", "applied", "apply_failed", "refused", "stale", "leader_changed")
KINDS = ("slack", "webhook")
TITLES = {"drift_found": "Drift found", "approval_needed": "Approval needed", "applied": "Applied",
          "apply_failed": "Apply failed", "refused": "Refused by a guard", "stale": "Stale plan",
          "leader_changed": "Leader changed"}
# The run statuses that are news, and the event each one is.
OUTCOMES = {"applied": "applied", "apply_errored": "apply_failed", "refused": "refused", "stale": "stale"}
# Statuses a run passes through: nothing is queued for them, and the outbox waits.
PASSING = ("planning", "applying")

SIGNATURE_HEADER = "X-Reconciler-Signature"
TIMESTAMP_HEADER = "X-Reconciler-Timestamp"
DELIVERY_HEADER = "X-Reconciler-Delivery"
EVENT_HEADER = "X-Reconciler-Event"

MAX_ATTEMPTS = 10
MAX_BACKOFF = 600.0
KEEP_DAYS = 30  # deliveries done are kept this long (the dashboard's record, and the drift's dedup)


@dataclass(frozen=True)
class Destination:
    """Where notifications go. ``url`` and ``secret`` come from the environment and
    never appear in a repr, a page or a message: the destination is named by ``name``."""

    name: str
    kind: str  # slack | webhook
    events: frozenset[str]
    url: str = field(repr=False)
    secret: str | None = field(default=None, repr=False)
    url_env: str | None = None
    secret_env: str | None = None
    timeout: float = 10.0

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.url if self.url_env else None, self.secret) if s)

    def settings_rows(self) -> list[tuple[str, str, str]]:
        """(section, key, value) rows for the settings page: names of variables, never values."""
        where = f"notify {self.name}"
        rows = [(where, "type", self.kind), (where, "events", ", ".join(e for e in EVENTS if e in self.events)),
                (where, "url", f"${self.url_env} (set, hidden)" if self.url_env else self.url),
                (where, "timeout", f"{self.timeout:g} s")]
        if self.secret_env:
            rows.append((where, "secret_env", f"${self.secret_env} (set, hidden)"))
        return rows


def parse_destinations(items: list[dict] | None, environ: Mapping[str, str]) -> tuple[Destination, ...]:
    """The ``notify:`` list of the config file, each checked now: an unknown event, a
    variable that is not set, a URL that is not one is a ConfigError naming the
    destination (never the variable's value). The variables named are registered as
    secrets (scrubbed from logs and errors)."""
    out: list[Destination] = []
    for i, item in enumerate(items or ()):
        kind = item.get("type")
        name = item.get("name") or f"{kind}-{i + 1}"
        said = f"notify[{i}] ({name})"
        if any(d.name == name for d in out):
            raise ConfigError(f"{said}: another destination has the name {name!r}; give each its own")
        events = item.get("events") or list(EVENTS)
        unknown = [e for e in events if e not in EVENTS]
        if unknown:
            raise ConfigError(f"{said}: unknown event {unknown[0]!r}; events are {', '.join(EVENTS)}")
        url_env, secret_env = item.get("url_env"), item.get("secret_env")
        register_secret_env(*(n for n in (url_env, secret_env) if n))
        if kind == "slack" and item.get("url"):
            raise ConfigError(f"{said}: a Slack webhook URL holds a token; put it in an environment variable "
                              "and name it with url_env")
        if bool(item.get("url")) == bool(url_env):
            raise ConfigError(f"{said}: give the receiver's address as url or as url_env (an environment variable)")
        url = item.get("url") or _from_env(environ, url_env, f"{said}: url_env")
        check_url(url, f"{said}: the URL" + (f" in ${url_env}" if url_env else ""), schemes=("https", "http"))
        secret = None
        if kind == "webhook":
            if not secret_env:
                raise ConfigError(f"{said}: a webhook is signed; name the environment variable that holds the "
                                  "secret with secret_env")
            secret = _from_env(environ, secret_env, f"{said}: secret_env")
            if len(secret) < 16:
                raise ConfigError(f"{said}: ${secret_env} is shorter than 16 characters; use a long random secret")
        elif secret_env:
            raise ConfigError(f"{said}: a Slack webhook is not signed; remove secret_env")
        out.append(Destination(name, kind, frozenset(events), url, secret, url_env, secret_env,
                               float(item.get("timeout", 10))))
    return tuple(out)


def _from_env(environ: Mapping[str, str], name: str, said: str) -> str:
    value = (environ.get(name) or "").strip()
    if not value:
        raise ConfigError(f"{said}: ${name} is not set; set it in the server's environment")
    return value


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Event:
    """One thing to tell, before it is addressed: its name, its key (unique per
    destination), the message in words and the facts for machines."""

    name: str
    key: str
    text: str
    facts: dict
    run_id: int | None = None


def run_event(name: str, run: dict, verdict: Verdict | None, catalogue: Catalogue, public_url: str | None,
              key: str) -> Event:
    """What a reviewer needs: what happened to which run, counts per kind and action,
    deletions called out, who asked and who approved, and a link to the run's page."""
    summary = run["summary"] or {}
    counts = []
    for kind in catalogue.kinds:
        actions = summary.get(kind) or {}
        said = ", ".join(f"{n} {a}" for a, n in actions.items() if n)
        if said:
            counts.append(f"{kind}: {said}")
    scope = ", ".join(run["scope"]) if run["scope"] else "every " + catalogue.entity(catalogue.kinds[0]).label.lower()
    lines = [f"[{catalogue.name}] {TITLES[name]}: run {run['id']} ({scope}; {run['trigger']}"
             + (f" by {run['triggered_by']}" if run.get("triggered_by") else "") + ")"]
    if run["change_count"]:
        lines.append(f"{run['change_count']} change(s): " + "; ".join(counts))
    note = deletion_note(summary, catalogue.kinds, catalogue)
    if note:
        lines.append(note)
    if name == "approval_needed" and verdict is not None:
        lines.append(f"Approvals: {verdict.text}" + (f"; because {', '.join(verdict.because)}" if verdict.because
                                                     else ""))
    if run.get("decided_by") and name in ("applied", "apply_failed", "stale"):
        lines.append(f"Approved by {run['decided_by']}")
    if run.get("override_reason"):
        lines.append(f"Applied inside a closed change window: {run['override_reason']}")
    if run.get("error") and name != "applied":
        lines.append(f"Why: {run['error']}")
    url = f"{public_url}/runs/{run['id']}" if public_url else None
    lines.append(f"Review: {url}" if url else f"Run page: /runs/{run['id']} (set serve.public_url for a link)")
    facts = {
        "run": {k: run.get(k) for k in ("id", "status", "trigger", "triggered_by", "scope", "summary", "change_count",
                                        "plan_id", "decided_by", "apply_id", "override_reason", "error")},
        "deletes": {k: v.get("delete", 0) for k, v in summary.items() if v.get("delete")},
        "approval": verdict.to_dict() if verdict is not None else None,
        "url": url,
    }
    return Event(name, key, "\n".join(lines), facts, run["id"])


def leader_event(name: str, previous: str | None, key: str, catalogue: Catalogue) -> Event:
    text = f"[{catalogue.name}] {TITLES['leader_changed']}: {name} leads the controller now" + (
        f" (before: {previous})" if previous and previous != name else " (no leader before)" if not previous else "")
    return Event("leader_changed", key, text, {"leader": name, "previous": previous})


def body(dest: Destination, event: Event, catalogue: Catalogue) -> str:
    """The exact body sent to ``dest``: Slack's ``{"text": …}`` (its markup escaped,
    the link made one), or the webhook's JSON."""
    if dest.kind == "slack":
        text = event.text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        url = event.facts.get("url")
        if url:
            text = text.replace(f"Review: {url}", f"<{url}|Review run {event.run_id}>")
        title, _, rest = text.partition("\n")
        return json.dumps({"text": f"*{title}*" + (f"\n{rest}" if rest else "")}, ensure_ascii=False)
    return json.dumps({"event": event.name, "key": event.key, "catalogue": catalogue.name, "text": event.text,
                       **event.facts}, ensure_ascii=False, sort_keys=True)


def sign(secret: str, timestamp: str, data: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 with ``secret`` over ``timestamp + "." + body``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + data,
                                hashlib.sha256).hexdigest()


def events_of(run: dict, previous: str | None, verdict: Verdict | None) -> list[str]:
    """The events a run's move from status ``previous`` (None: never notified) to its
    status is. A run seen for the first time after it planned is drift found, however
    far it went since (auto-apply may have applied it before the outbox looked)."""
    status, out = run["status"], []
    first = previous is None
    if first and run["change_count"] and run["trigger"] != "rollback" and run["plan_id"]:
        out.append("drift_found")
    if first and status == "planned" and verdict is not None and not verdict.met:
        out.append("approval_needed")
    if status in OUTCOMES and status != previous:
        out.append(OUTCOMES[status])
    return out


# --------------------------------------------------------------------------- sending


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A signed body goes where it was configured to, or nowhere."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_opener = urllib.request.build_opener(_NoRedirect)


@dataclass(frozen=True)
class Outcome:
    ok: bool
    error: str | None = None
    final: bool = False  # retrying will not help


def send(dest: Destination, delivery_id: int, event: str, data: bytes, now: float | None = None) -> Outcome:
    """POST one delivery; never raises. The error names the destination, never its URL."""
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": f"reconciler/{__version__}",
               EVENT_HEADER: event, DELIVERY_HEADER: str(delivery_id)}
    if dest.secret:
        stamp = str(int(now if now is not None else time.time()))
        headers[TIMESTAMP_HEADER] = stamp
        headers[SIGNATURE_HEADER] = sign(dest.secret, stamp, data)
    request = urllib.request.Request(dest.url, data=data, headers=headers, method="POST")
    try:
        with _opener.open(request, timeout=dest.timeout) as r:
            r.read(4096)
        return Outcome(True)
    except urllib.error.HTTPError as e:
        said = _snippet(e)
        error = f"HTTP {e.code} from {dest.name}" + (f": {said}" if said else "")
        if 300 <= e.code < 400:
            return Outcome(False, error + " (a redirect: configure the final address)", True)
        return Outcome(False, error, 400 <= e.code < 500 and e.code not in (408, 429))
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        return Outcome(False, f"cannot reach {dest.name}: {reason}")


def _snippet(e: urllib.error.HTTPError) -> str:
    with contextlib.suppress(Exception):
        return one_line(e.read(300).decode("utf-8", "replace"), 200)
    return ""


def backoff(attempts: int, base: float) -> float:
    """Seconds before attempt ``attempts + 1``: ``base`` doubling, at most MAX_BACKOFF,
    with ±10 % jitter so that deliveries failed together do not retry together."""
    return min(MAX_BACKOFF, base * 2 ** max(0, attempts - 1)) * random.uniform(0.9, 1.1)


# --------------------------------------------------------------------------- the notifier


class Notifier:
    """Queues and delivers notifications for one controller (see the module's doc)."""

    def __init__(self, runs: Runs, destinations: tuple[Destination, ...], approvals: Approvals, catalogue: Catalogue,
                 public_url: str | None, *, leading: Callable[[], bool], tick: float = 0.5,
                 backoff: float = 5.0) -> None:
        self.runs, self.destinations, self.approvals = runs, destinations, approvals
        self.catalogue, self.public_url, self.leading = catalogue, public_url, leading
        self.tick, self.backoff = tick, backoff
        self.by_name = {d.name: d for d in destinations}
        self.secrets = sorted({s for d in destinations for s in d.secrets}, key=len, reverse=True)
        self.stopping = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=max(1, len(destinations)), thread_name_prefix="notify")
        self._busy: set[str] = set()  # destinations with a sender at work
        self._lock = threading.Lock()
        self._leads = 0
        self._thread = threading.Thread(target=self._run, name="notifier", daemon=True)

    # ------------------------------------------------------------------ life

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop claiming; deliveries in flight finish or time out (a claimed one not
        recorded is sent again when its lease ends)."""
        self.stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _run(self) -> None:
        last_purge = 0.0
        while not self.stopping.is_set():
            try:
                if self.leading():
                    self.queue_run_events()
                    self.deliver_due()
                    if time.monotonic() - last_purge > 3600:
                        self.purge()
                        last_purge = time.monotonic()
            except Exception as e:  # the database away, or a bug: neither may stop the thread
                log.warning("notifications: %s", scrub(one_line(e), *self.secrets))
            self.stopping.wait(self.tick)

    # ------------------------------------------------------------------ queueing

    def queue_run_events(self, batch: int = 50) -> int:
        """The outbox: queue the events of runs whose status moved since they were last
        looked at, and mark them, in one transaction. Returns the deliveries queued."""
        queued = 0
        with self.runs.session("cannot queue notifications"), self.runs.db.atomic():
            rows = list(Run.select(*self.runs._LIST_FIELDS, Run.notified_status)
                        .where(pw.Expression(Run.notified_status, "IS DISTINCT FROM", Run.status)
                               & Run.status.not_in(PASSING))
                        .order_by(Run.id).limit(batch).for_update(skip_locked=True))
            if not rows:
                return 0
            runs = {r.id: dict(self.runs.to_dict(r), notified=r.notified_status) for r in rows}
            approvers = approvers_of(list(runs))
            for run_id, run in runs.items():
                verdict = self.approvals.verdict(run, approvers[run_id]) if run["change_count"] else None
                for name in events_of(run, run["notified"], verdict):
                    queued += self._queue(run_event(name, run, verdict, self.catalogue, self.public_url,
                                                    self._run_key(name, run)))
            Run.update(notified_status=Run.status).where(Run.id << list(runs)).execute()
        return queued

    def _run_key(self, name: str, run: dict) -> str:
        if name in ("drift_found", "approval_needed") and run.get("fingerprint"):
            resolved = self.runs.db.execute_sql(RESOLVED_BEFORE, (run["id"],)).fetchone()[0]
            return f"{name}:{run['fingerprint']}:{resolved}"
        return f"{name}:run:{run['id']}"

    def took_lead(self, name: str, previous: str | None) -> None:
        """This replica leads now: ``leader_changed``, once per leadership taken (the
        key holds the replica's owner number and how often it took the lead)."""
        self._leads += 1
        event = leader_event(name, previous, f"leader_changed:{self.runs.owner}:{self._leads}", self.catalogue)
        with self.runs.session("cannot queue notifications"), self.runs.db.atomic():
            self._queue(event)

    def _queue(self, event: Event) -> int:
        wanted = [d for d in self.destinations if event.name in d.events]
        if not wanted:
            return 0
        rows = [dict(destination=d.name, event=event.name, dedup_key=event.key, run_id=event.run_id,
                     body=body(d, event, self.catalogue), status="pending", attempts=0,
                     created_at=pw.SQL("now()"), next_attempt_at=pw.SQL("now()")) for d in wanted]
        cur = self.runs.db.execute(Delivery.insert_many(rows).on_conflict_ignore().returning(Delivery.id))
        return len(list(cur))

    # ------------------------------------------------------------------ delivering

    def deliver_due(self) -> int:
        """Start a sender for each destination that has due deliveries and none in
        flight: one at a time per destination, so a receiver that hangs holds its own
        sender and no other's; returns how many senders were started."""
        with self._lock:
            idle = [d for d in self.destinations if d.name not in self._busy]
            self._busy.update(d.name for d in idle)
        started = 0
        for d in idle:
            row = self._claim(d)
            if row is None:
                self._release(d)
                continue
            self.pool.submit(self._drain, d, row)
            started += 1
        return started

    def _claim(self, dest: Destination) -> tuple | None:
        """The destination's next due delivery, leased for twice its timeout and a
        minute (a replica that dies while sending leaves it to the next leader)."""
        with self.runs.session("cannot claim notifications"), self.runs.db.atomic():
            return self.runs.db.execute_sql(
                """UPDATE reconciler_deliveries d SET attempts = d.attempts + 1,
                          next_attempt_at = now() + make_interval(secs => %s)
                   WHERE d.id = (SELECT id FROM reconciler_deliveries
                                 WHERE status = 'pending' AND destination = %s AND next_attempt_at <= now()
                                 ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
                   RETURNING d.id, d.event, d.body, d.attempts""",
                (dest.timeout * 2 + 60, dest.name)).fetchone()

    def _drain(self, dest: Destination, row: tuple) -> None:
        """Send the destination's due deliveries one after another, then let it go."""
        try:
            while row is not None and not self.stopping.is_set():
                delivery_id, event, data, attempts = row
                self._record(delivery_id, attempts, send(dest, delivery_id, event, data.encode("utf-8")))
                row = self._claim(dest) if self.leading() else None
        except Exception as e:  # the database away: the lease ends and the next round sends it
            log.warning("notifications to %s: %s", dest.name, scrub(one_line(e), *self.secrets))
        finally:
            self._release(dest)

    def _release(self, dest: Destination) -> None:
        with self._lock:
            self._busy.discard(dest.name)

    def _record(self, delivery_id: int, attempts: int, outcome: Outcome) -> None:
        error = scrub(outcome.error, *self.secrets) if outcome.error else None
        with self.runs.session("cannot record a notification"):
            if outcome.ok:
                Delivery.update(status="delivered", delivered_at=pw.SQL("now()"), last_error=None).where(
                    Delivery.id == delivery_id).execute()
            elif outcome.final or attempts >= MAX_ATTEMPTS:
                Delivery.update(status="failed", last_error=error).where(Delivery.id == delivery_id).execute()
                log.warning("notification %s failed for good after %d attempt(s): %s", delivery_id, attempts, error)
            else:
                wait = backoff(attempts, self.backoff)
                Delivery.update(last_error=error, next_attempt_at=pw.SQL(f"now() + interval '{wait:.3f} seconds'")
                                ).where(Delivery.id == delivery_id).execute()
                log.info("notification %s: %s; retrying in %.0fs", delivery_id, error, wait)

    def purge(self, days: int = KEEP_DAYS) -> int:
        """Forget deliveries done (delivered or failed) more than ``days`` ago. A drift
        unchanged for that long is then told again: a reminder, not a duplicate."""
        with self.runs.session("cannot purge old notifications"):
            return (Delivery.delete().where((Delivery.status != "pending")
                                            & (Delivery.created_at < pw.SQL(f"now() - interval '{int(days)} days'")))
                    .execute())

    # ------------------------------------------------------------------ reading

    def deliveries(self, status: str | None = None, run_id: int | None = None, limit: int = 50) -> list[dict]:
        """Deliveries, newest first, with their attempts and last error (for the
        dashboard and the API; bodies are not shown)."""
        with self.runs.session("cannot read the notifications"):
            q = Delivery.select(Delivery.id, Delivery.destination, Delivery.event, Delivery.run_id, Delivery.status,
                                Delivery.attempts, Delivery.created_at, Delivery.next_attempt_at,
                                Delivery.delivered_at, Delivery.last_error).order_by(Delivery.id.desc()).limit(limit)
            if status:
                q = q.where(Delivery.status == status)
            if run_id is not None:
                q = q.where(Delivery.run_id == run_id)
            return [{"id": d.id, "destination": d.destination, "event": d.event, "run_id": d.run_id,
                     "status": d.status, "attempts": d.attempts, "created_at": _utc(d.created_at),
                     "next_attempt_at": _utc(d.next_attempt_at) if d.status == "pending" else None,
                     "delivered_at": _utc(d.delivered_at), "last_error": d.last_error} for d in q]
