"""Status per top-entity key — a creator's model, a shop's product — in the terms of the
status card the product-image system showed: the objects in the bucket under the key,
the records in sync, files without records (to create), records without files (to
delete), and the objects skipped, with their reasons.

A key's status is read from the newest check that covered it (:func:`covering`): the
newest full check, or a scoped run made since that names the key (*Plan p42*). Its
objects and skips are that run's listing tallies (:meth:`reconciler.engine.frames.Listing.tallies`);
its pending changes are the run's changes under the key — none once that run was applied
or found nothing to do; its records are the rows in the database now. Nothing here lists
the bucket or reads the database: :class:`reconciler.controller.runs.Runs` hands the
pieces in. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from .. import render
from ..engine.diff import ACTIONS
from ..planfile import Plan

# A check whose changes are no longer pending: applied, or there were none.
SETTLED = ("applied", "no_changes")

Counts = dict[str, dict[str, int]]  # kind -> action -> n


@dataclass(frozen=True)
class Check:
    """A run that made a plan, as far as a key's status needs it."""

    id: int
    status: str
    scope: tuple[str, ...] | None  # None: every key
    planned_at: str | None

    def covers(self, key: str) -> bool:
        return self.scope is None or key in self.scope

    def to_dict(self) -> dict:
        return {"run": self.id, "status": self.status, "planned_at": self.planned_at,
                "scope": list(self.scope) if self.scope is not None else None}


def covering(checks: Sequence[Check], key: str) -> Check | None:
    """The newest of ``checks`` (newest first) that covered ``key``."""
    return next((c for c in checks if c.covers(key)), None)


def changes_by_top(plan: Plan) -> dict[str, Counts]:
    """Per top key, the plan's changes counted by kind and action."""
    out: dict[str, Counts] = {}
    for top, changes in render.changes_by_model(plan).items():
        kinds = out.setdefault(top, {})
        for c in changes:
            kinds.setdefault(c.kind, dict.fromkeys(ACTIONS, 0))[c.action] += 1
    return out


def pending_keys(checks: Sequence[Check], changes_of) -> set[str]:
    """The keys with changes not applied: those of each open check that is the newest
    to cover them (``changes_of(run_id)`` gives a check's :func:`changes_by_top`)."""
    out: set[str] = set()
    for check in checks:
        if check.status in SETTLED:
            continue
        out |= {key for key in changes_of(check.id) if covering(checks, key) is check}
    return out


@dataclass(frozen=True)
class TopStatus:
    """One key's status card."""

    key: str
    kinds: tuple[str, ...]  # the entities the tool writes, in plan order
    in_database: bool  # the top row is in its table now
    records: dict[str, int]  # rows in the database now under the key, by kind
    check: Check | None = None  # the newest check that covered the key (None: not checked yet)
    objects: int | None = None  # objects under the key in that check's listing
    skipped: dict[str, int] = field(default_factory=dict)  # of those, skipped, by reason
    changes: Counts = field(default_factory=dict)  # pending, by kind and action

    @property
    def state(self) -> str:
        if self.check is None:
            return "not_checked"
        return "out_of_sync" if self.total("create", "update", "move", "delete") else "in_sync"

    def total(self, *actions: str) -> int:
        return sum(n for by in self.changes.values() for a, n in by.items() if a in actions)

    def in_sync(self, kind: str | None = None) -> int:
        """Records the check leaves as they are: those in the database but the ones it
        updates, moves or deletes."""
        kinds = (kind,) if kind else self.kinds
        out = 0
        for k in kinds:
            by = self.changes.get(k, {})
            out += max(0, self.records.get(k, 0) - by.get("update", 0) - by.get("move", 0) - by.get("delete", 0))
        return out

    def to_dict(self) -> dict:
        """The API's form (``GET /api/status/{key}``)."""
        return {
            "key": self.key,
            "state": self.state,
            "in_sync": self.state == "in_sync",
            "in_database": self.in_database,
            "checked": self.check.to_dict() if self.check else None,
            "objects": self.objects,
            "skipped": dict(sorted(self.skipped.items())),
            "skipped_total": sum(self.skipped.values()),
            "records": sum(self.records.get(k, 0) for k in self.kinds),
            "records_in_sync": self.in_sync(),
            **{f"to_{a}": self.total(a) for a in ACTIONS},
            "kinds": {k: {"records": self.records.get(k, 0), "records_in_sync": self.in_sync(k),
                          **{a: self.changes.get(k, {}).get(a, 0) for a in ACTIONS}} for k in self.kinds},
        }


def status_of(key: str, kinds: tuple[str, ...], *, in_database: bool, records: dict[str, int],
              check: Check | None, tally: dict | None, changes: Counts | None) -> TopStatus:
    """A key's card from its newest check — ``tally``: the check's listing tally of the
    key (``{}``: nothing under it; None: the run kept no tallies), ``changes``: its
    changes under the key — and the database now. A settled check leaves nothing pending."""
    if check is None:
        return TopStatus(key, kinds, in_database, records)
    return TopStatus(key, kinds, in_database, records, check,
                     objects=None if tally is None else tally.get("objects", 0),
                     skipped=dict((tally or {}).get("skipped", {})),
                     changes={} if check.status in SETTLED else (changes or {}))
