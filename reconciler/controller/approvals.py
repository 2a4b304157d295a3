"""Approval policies (``serve.approvals``) and the one place that decides whether a
planned run is applied: the dashboard's button, the API and auto-apply all ask
:class:`Approvals`, which asks :func:`evaluate`.

A policy is a number of distinct approvers (``required``, default 1), raised by rules
that match what the plan does (``deletes``, ``deletes_top``, ``{deletes_over: N}``,
``{changes_over: N}``), and optionally ``self_approval: false``: the person who asked
for a run may approve it, but not alone. A token's name is the person. Approvals are
rows of ``reconciler_approvals``, one per person; a run that supersedes one with the
same changes (the same fingerprint, in the same episode of drift) is given its
approvals, so the schedule's next check does not wipe out half a review.

An auto-apply policy (``serve.auto_apply``) stands in for the people the base
``required`` asks for, never for a stricter rule: a plan that deletes a top-level row
under ``{when: deletes_top, required: 2}`` waits for two people whatever auto-apply says.

When the policy is met the run is applied, unless the change window is closed
(:mod:`.windows`): then it waits, and the leader applies it when the window opens. A
person may apply inside a closed window with an override and a reason, recorded in the
run and in the audit (``reconciler_applies.override_reason``). An override never
stands in for an approval.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

import peewee as pw

from ..catalogue import Catalogue
from ..engine.safety import Limits
from ..errors import ConfigError, ReconcilerError
from ..store.models import Approval, Run
from .runs import BadRequest, RunConflict, Runs, auto_apply_allowed, one_line
from .windows import Gate, Window, gate

log = logging.getLogger("reconciler.controller.approvals")

WHENS = ("deletes", "deletes_top", "deletes_over", "changes_over")


@dataclass(frozen=True)
class Rule:
    """``required`` approvers for a plan that ``when`` matches (``over``: the threshold
    of ``deletes_over`` and ``changes_over``)."""

    when: str
    required: int
    over: int | None = None

    def matches(self, summary: dict, top_kind: str) -> bool:
        deletes = sum(actions.get("delete", 0) for actions in summary.values())
        if self.when == "deletes":
            return deletes > 0
        if self.when == "deletes_top":
            return summary.get(top_kind, {}).get("delete", 0) > 0
        if self.when == "deletes_over":
            return deletes > (self.over or 0)
        return sum(sum(actions.values()) for actions in summary.values()) > (self.over or 0)

    def describe(self, top_label: str) -> str:
        return {"deletes": "it deletes rows", "deletes_top": f"it deletes a {top_label}",
                "deletes_over": f"it deletes more than {self.over} rows",
                "changes_over": f"it makes more than {self.over} changes"}[self.when]


@dataclass(frozen=True)
class Policy:
    required: int = 1
    rules: tuple[Rule, ...] = ()
    self_approval: bool = True


@dataclass(frozen=True)
class Verdict:
    """What the policy asks of one run, and whether it is met."""

    required: int
    approvers: tuple[str, ...]
    because: tuple[str, ...] = ()  # the rules that raised ``required``
    met: bool = False
    missing: str | None = None  # what is still missing, in words
    auto: str | None = None  # the auto-apply policy that meets it, if one does

    @property
    def text(self) -> str:
        """``needs 2, has 1 (alice)``, or the auto-apply policy that stands in for people."""
        if self.auto:
            return f"{self.auto} applies it without a person"
        who = f" ({', '.join(self.approvers)})" if self.approvers else ""
        return f"needs {self.required}, has {len(self.approvers)}{who}"

    @property
    def decided_by(self) -> str:
        return self.auto if self.auto else ", ".join(self.approvers)

    def to_dict(self) -> dict:
        return {"required": self.required, "approvers": list(self.approvers), "met": self.met, "text": self.text,
                "because": list(self.because), "missing": self.missing, "auto_apply": self.auto}


def evaluate(policy: Policy, summary: dict, top_kind: str, approvers: list[str] | tuple[str, ...],
             triggered_by: str | None = None, *, auto: str | None = None, top_label: str = "") -> Verdict:
    """The verdict of ``policy`` on a plan with ``summary`` that ``approvers`` approved
    (distinct names, in the order they approved). ``auto`` names the auto-apply policy
    that would apply this plan, if one would."""
    approvers = tuple(dict.fromkeys(approvers))
    stricter = [r for r in policy.rules if r.matches(summary, top_kind) and r.required > policy.required]
    required = max([policy.required, *(r.required for r in stricter)])
    because = tuple(r.describe(top_label or top_kind) for r in stricter)
    if auto and not stricter:
        return Verdict(required, approvers, because, True, None, auto)
    if len(approvers) < required:
        more = required - len(approvers)
        return Verdict(required, approvers, because, False, f"{more} more approval{'s' if more > 1 else ''}")
    if not policy.self_approval and triggered_by and set(approvers) == {triggered_by}:
        return Verdict(required, approvers, because, False,
                       f"an approval by someone other than {triggered_by}, who asked for this run")
    return Verdict(required, approvers, because, True)


def parse_policy(data: dict | None, where: str = "serve.approvals") -> Policy:
    """``serve.approvals`` of the config file (its shape is checked by the schema)."""
    data = data or {}
    rules = []
    for i, raw in enumerate(data.get("rules") or ()):
        when, over = raw.get("when"), None
        if isinstance(when, dict):
            if len(when) != 1:
                raise ConfigError(f"{where}.rules[{i}].when: name one condition, like {{deletes_over: 100}}")
            (when, over), = when.items()
            if when not in ("deletes_over", "changes_over"):
                raise ConfigError(f"{where}.rules[{i}].when: {when!r} takes no number; "
                                  "deletes_over and changes_over do")
        elif when in ("deletes_over", "changes_over"):
            raise ConfigError(f"{where}.rules[{i}].when: {when} needs a number, like {{{when}: 100}}")
        if when not in WHENS:
            raise ConfigError(f"{where}.rules[{i}].when: unknown condition {when!r}; conditions are "
                              + ", ".join(WHENS))
        rules.append(Rule(when, int(raw["required"]), over))
    return Policy(int(data.get("required", 1)), tuple(rules), bool(data.get("self_approval", True)))


@dataclass
class Approvals:
    """Approvals, the change window and the applies they allow, for one controller.

    ``now`` is the clock (an aware datetime): tests pass their own, so windows are
    tested without waiting for them.
    """

    runs: Runs
    policy: Policy
    windows: tuple[Window, ...]
    auto_apply: str
    catalogue: Catalogue
    limits: Limits
    now: Callable[[], datetime]
    leading: Callable[[], bool] = field(default=lambda: True)

    # ------------------------------------------------------------------ reading

    def gate(self) -> Gate:
        return gate(self.windows, self.now())

    def approvers(self, run_ids: list[int]) -> dict[int, list[str]]:
        with self.runs.session("cannot read the approvals"):
            return approvers_of(run_ids)

    def verdict(self, run: dict, approvers: list[str] | None = None) -> Verdict:
        if approvers is None:
            approvers = self.approvers([run["id"]])[run["id"]]
        auto = None
        if run["trigger"] != "rollback" and auto_apply_allowed(self.auto_apply, run["summary"] or {},
                                                               run["current_rows"] or 0, self.limits):
            auto = f"auto-apply ({self.auto_apply})"
        top = self.catalogue.entity(self.catalogue.kinds[0])
        return evaluate(self.policy, run["summary"] or {}, top.name, approvers, run.get("triggered_by"),
                        auto=auto, top_label=top.label.lower())

    def describe(self, run: dict, person: str | None = None) -> dict:
        """The run's approvals and the window, for its page and the API; with
        ``person``, whether they approved it and whether their approval would meet
        the policy (the page's button says what it will do)."""
        approvers = self.approvers([run["id"]])[run["id"]]
        verdict = self.verdict(run, approvers) if run["change_count"] else None
        out: dict = {"approval": verdict.to_dict() if verdict else None, "window": self.gate().to_dict()}
        if person is not None and verdict is not None:
            out.update(you_approved=person in approvers, completes=self.verdict(run, [*approvers, person]).met)
        return out

    # ------------------------------------------------------------------ deciding

    def approve(self, run_id: int, person: str, override: str | None = None) -> dict:
        """``person`` approves a planned run. The run is applied when this meets the
        policy and the window is open (or ``override`` gives the reason to apply in a
        closed one); else it stays planned, the approval recorded. Returns the run with
        ``approval`` and ``window``; ``applied`` says whether it was applied now."""
        if override is not None and not override.strip():
            raise BadRequest("an override of the change window needs a reason")
        run = self.runs.get_run(run_id)
        if run["status"] != "planned":
            raise RunConflict(f"run {run_id} is {run['status']}, not planned; only a planned run can be approved")
        with self.runs.session("cannot record the approval"):
            Approval.insert(run_id=run_id, person=person, approved_at=pw.SQL("now()")).on_conflict_ignore().execute()
        verdict = self.verdict(run)
        now = self.gate()
        if verdict.met and (now.open or override):
            reason = one_line(override, 300) if override and not now.open else None
            run = self.runs.apply(run_id, by=", ".join(verdict.approvers), override_reason=reason)
            return dict(run, applied=True, **self.describe(run))
        return dict(run, applied=False, **self.describe(run))

    def apply_ready(self) -> list[int]:
        """The leader's part: while the window is open, apply each planned run whose
        policy is met — approved while the window was closed, or what auto-apply may
        apply — oldest first. A run whose apply was refused (its error says why: a
        limit, the lock) waits for a person. Returns the runs applied."""
        if not self.leading() or not self.gate().open:
            return []
        with self.runs.session("cannot read the planned runs"):
            ids = [r.id for r in Run.select(Run.id).where((Run.status == "planned") & Run.error.is_null())
                   .order_by(Run.id)]
        applied = []
        approvers = self.approvers(ids)
        for run_id in ids:
            run = self.runs.get_run(run_id)
            verdict = self.verdict(run, approvers[run_id])
            if run["status"] != "planned" or not verdict.met or not self.leading():
                continue
            try:
                self.runs.apply(run_id, by=verdict.decided_by)
                applied.append(run_id)
            except ReconcilerError as e:
                log.info("apply of run %s (%s): %s", run_id, verdict.decided_by, e)
        return applied

    def carry_over(self, run: dict) -> int:
        """Give a newly planned run the approvals of the runs it superseded with the
        same changes, in the same episode of drift (since the drift was last resolved);
        returns how many were given."""
        if run["status"] != "planned" or not run.get("fingerprint"):
            return 0
        with self.runs.session("cannot carry the approvals over"):
            cur = self.runs.db.execute_sql(
                f"""INSERT INTO reconciler_approvals (run_id, person, approved_at, carried_from)
                    SELECT %s, a.person, min(a.approved_at), min(a.run_id)
                    FROM reconciler_approvals a JOIN reconciler_runs r ON r.id = a.run_id
                    WHERE r.fingerprint = %s AND r.status = 'superseded' AND r.id < %s
                      AND r.trigger <> 'rollback' AND r.id > ({RESOLVED_BEFORE})
                    GROUP BY a.person
                    ON CONFLICT DO NOTHING""",
                (run["id"], run["fingerprint"], run["id"], run["id"]))
            return cur.rowcount


def approvers_of(run_ids: list[int]) -> dict[int, list[str]]:
    """Each run's approvers, in the order they approved (on the connection in use)."""
    out: dict[int, list[str]] = {i: [] for i in run_ids}
    if run_ids:
        for a in Approval.select().where(Approval.run_id << run_ids).order_by(Approval.approved_at, Approval.person):
            out[a.run_id].append(a.person)
    return out


# The last run before run %s that resolved the drift: a full check that found nothing,
# or an apply. Drift found again after it is news again (and its approvals start anew).
RESOLVED_BEFORE = """SELECT coalesce(max(id), 0) FROM reconciler_runs
                     WHERE id < %s AND ((status = 'no_changes' AND scope IS NULL) OR status = 'applied')"""
