"""The typed diff between desired and current state. Pure: no I/O.

A change is plain data (create / update / move / delete of a model, post or media
item, named by its natural key); the plan file is a list of them. ``create`` and
``delete`` carry every managed field (plus the parent's key: a post names its
``model``, a media item its ``post``); ``update`` carries only the fields that change;
``move`` (a renamed folder, see :mod:`reconciler.moves`) names the old key in ``from``
and carries the key columns, the parent and the fields that change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .current import CurrentState
from .desired import MEDIA_FIELDS, MODEL_FIELDS, POST_FIELDS, DesiredState, split_post_key

KINDS = ("model", "post", "media")
# Moves sort between updates and deletes: apply runs creates, moves and updates
# parents first, then deletes children first, and a reader meets a rename before the
# deletions it did not need.
ACTIONS = ("create", "update", "move", "delete")
KIND_ORDER = {k: i for i, k in enumerate(KINDS)}
ACTION_ORDER = {a: i for i, a in enumerate(ACTIONS)}
FIELDS = {"model": MODEL_FIELDS, "post": POST_FIELDS, "media": MEDIA_FIELDS}


class Change:
    """One typed change. ``before``/``after`` are dicts (or None).

    A create or delete may be built from the row tuple itself (``before_row`` /
    ``after_row``) and turns it into a dict only when asked: a million creates then
    cost a million small objects, not a million dicts.
    """

    __slots__ = ("action", "kind", "key", "_before", "_after", "from_key")

    def __init__(self, action: str, kind: str, key: str, before, after, from_key: str | None = None) -> None:
        self.action, self.kind, self.key = action, kind, key
        self._before, self._after = before, after
        self.from_key = from_key  # a move's old key (``"from"`` in the plan file)

    @property
    def before(self) -> dict | None:
        b = self._before
        return full_image(self.kind, self.key, b) if isinstance(b, tuple) else b

    @property
    def after(self) -> dict | None:
        a = self._after
        return full_image(self.kind, self.key, a) if isinstance(a, tuple) else a

    @property
    def sort_key(self) -> tuple[int, int, str]:
        return KIND_ORDER[self.kind], ACTION_ORDER[self.action], self.key

    def to_dict(self) -> dict:
        d = {"action": self.action, "after": self.after, "before": self.before, "key": self.key, "kind": self.kind}
        if self.action == "move":
            d["from"] = self.from_key
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Change":
        return cls(d["action"], d["kind"], d["key"], d.get("before"), d.get("after"), d.get("from"))

    def inverse(self) -> "Change":
        """The change that undoes this one (rollback)."""
        if self.action == "move":
            return Change("move", self.kind, self.from_key, self.after, self.before, self.key)
        action = {"create": "delete", "delete": "create", "update": "update"}[self.action]
        return Change(action, self.kind, self.key, self.after, self.before)

    def __eq__(self, other) -> bool:
        return isinstance(other, Change) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.action, self.kind, self.key))

    def __repr__(self) -> str:
        moved = f", from_key={self.from_key!r}" if self.action == "move" else ""
        return f"Change({self.action!r}, {self.kind!r}, {self.key!r}, {self.before!r}, {self.after!r}{moved})"


def full_image(kind: str, key: str, row: tuple) -> dict:
    """Every managed field of a row, named as its column, plus the parent's key."""
    if kind == "model":
        image = {"folder_name": key}
    elif kind == "post":
        model, post = split_post_key(key)
        image = {"model": model, "folder_name": post}
    else:
        image = {"s3_key": key}
    image.update(zip(FIELDS[kind], row))
    return image


def _compare(kind: str, fields: tuple[str, ...], desired: dict, current: Iterable, out: list[Change]) -> int:
    """Append the changes of one kind; consume ``desired`` entries; return the current row count."""
    n = 0
    pop = desired.pop
    for key, have in current:
        n += 1
        want = pop(key, None)
        if want is None:
            out.append(Change("delete", kind, key, tuple(have), None))
        elif want != have:
            before, after = {}, {}
            for name, w, h in zip(fields, want, have):
                if w != h or type(w) is not type(h):
                    before[name], after[name] = h, w
            if before:
                out.append(Change("update", kind, key, before, after))
    for key, want in desired.items():
        out.append(Change("create", kind, key, None, want))
    return n


@dataclass
class Diff:
    changes: list[Change]
    current_counts: dict[str, int]


def diff(desired: DesiredState, current: CurrentState, *, moves: bool = True) -> Diff:
    """Compare; the changes come out ordered by (kind, action, key).

    With ``moves`` (the default), renamed folders become moves instead of a delete
    and a create (:func:`reconciler.moves.find_moves`). ``desired`` is left
    untouched; ``current`` is consumed once.
    """
    changes: list[Change] = []
    counts = {
        "model": _compare("model", MODEL_FIELDS, dict(desired.models), current.models, changes),
        "post": _compare("post", POST_FIELDS, dict(desired.posts), current.posts, changes),
        "media": _compare("media", MEDIA_FIELDS, dict(desired.media), current.media, changes),
    }
    if moves:
        from .moves import find_moves

        changes = find_moves(changes)
    changes.sort(key=lambda c: c.sort_key)
    return Diff(changes, counts)


def summarize(changes: Iterable[Change]) -> dict[str, dict[str, int]]:
    summary = {k: {a: 0 for a in ACTIONS} for k in KINDS}
    for c in changes:
        summary[c.kind][c.action] += 1
    return summary
