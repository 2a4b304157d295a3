"""The plan: a typed diff with its source, target and summary, as a value."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from ..catalogue import Catalogue, default_catalogue
from ..engine.diff import Change, summarize
from .digest import hash_body

FORMAT_VERSION = 1
MAX_PLAN_BYTES = 4 * 1024**3

@dataclass
class Plan:
    """A plan: what to change, against which state, made from which listing."""

    changes: list[Change]
    source: dict
    target: dict
    tool_version: str
    created_at: str = field(default_factory=lambda: utc_now())
    extra: dict = field(default_factory=dict)  # optional fields: kind, rolls_back, limits
    plan_id: str | None = None
    signature: str | None = None
    summary_override: dict | None = field(default=None, repr=False)  # set when changes are streamed
    notes: list[str] = field(default_factory=list, repr=False)  # for the person running plan; not in the file
    kinds: tuple[str, ...] | None = field(default=None, repr=False)  # the catalogue's, for the summary's lines
    descriptor: Catalogue | None = field(default=None, repr=False)  # the catalogue read or made under
    # Per top key, the listing's objects and skips (Listing.tallies): for the controller's
    # status cards; not in the file (a plan for review holds changes, not a census).
    tops: dict | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kinds is None and self.catalogue is None:
            # A plan naming no catalogue is read as a creators plan, whose summary has
            # a line for every creators kind: written so, it reads back.
            self.kinds = default_catalogue().kinds

    @property
    def summary(self) -> dict[str, dict[str, int]]:
        if self.summary_override is not None:
            return self.summary_override
        return summarize(self.changes, self.kinds)

    @property
    def catalogue(self) -> dict | None:
        """The catalogue the plan was made under (``name``, ``fingerprint``); None for a
        plan made before catalogues (a creators plan)."""
        return self.target.get("catalogue")

    @property
    def scope(self) -> list[str] | None:
        return self.target.get("scope")

    def envelope(self) -> dict:
        """Every body field except ``changes``."""
        body = {
            "format_version": FORMAT_VERSION,
            "created_at": self.created_at,
            "tool_version": self.tool_version,
            "source": self.source,
            "target": self.target,
            "summary": self.summary,
            **self.extra,
        }
        assert all(k > "changes" for k in body), "changes must sort first in the body"
        return body

    def top(self) -> dict:
        """The envelope plus plan_id and signature: the file without ``changes``."""
        top = self.envelope()
        if self.plan_id is not None:
            top["plan_id"] = self.plan_id
        if self.signature is not None:
            top["signature"] = self.signature
        return top

    def to_dict(self) -> dict:
        return {**self.top(), "changes": [c.to_dict() for c in self.changes]}

    def seal(self, signing_key: str | None = None) -> "Plan":
        """Compute ``plan_id`` (and the signature when a key is given)."""
        self.plan_id, mac = hash_body(self.changes, self.envelope(), signing_key)
        self.signature = f"hmac-sha256:{mac}" if mac else None
        return self


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
