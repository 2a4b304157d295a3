"""Renamed folders as moves, not delete + create. Pure: no I/O.

A plain diff sees a renamed folder as deletions at the old keys and creations at the
new ones. Applied that way the rows get new ids, unmanaged columns (a creator's
``status``) fall back to their defaults, and whatever the platform keeps pointing at
those ids (likes, purchases) is lost or blocks the apply. :func:`find_moves` turns such
pairs into moves, which apply as updates in place (same ids). The catalogue says which
entities move (``moves:``):

- ``content``: a row deleted at key A and created at key B with the same ETag and
  size, when the match is unambiguous — exactly one deleted and one created row hold
  that content. Copies of the same content are never guessed: they stay delete +
  create. Objects without an ETag (folder sources) have no identity and never move.
- ``children``: a deleted row all of whose children (of the entity below it that moves,
  at least one) moved into one created row. A row keyed within its parent moves to
  another parent only as part of its parent's move (a post across models only when
  its model moved).

A move carries the identity (key columns and parent) and the fields that change.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from ..catalogue import Catalogue, Entity
from .diff import Change, content_columns


def move_images(e: Entity, old: dict, new: dict) -> tuple[dict, dict]:
    """``before``/``after`` of a move between two full images: the identity, and
    every other field whose value differs."""
    names = list(e.identity)
    names += [f for f in e.fields if f not in names
              and (old.get(f) != new.get(f) or type(old.get(f)) is not type(new.get(f)))]
    return {f: old.get(f) for f in names}, {f: new.get(f) for f in names}


def make_move(e: Entity, old_key: str, old: dict, new_key: str, new: dict) -> Change:
    before, after = move_images(e, old, new)
    return Change("move", e.name, new_key, before, after, old_key)


def _unique(pairs: dict[str, str]) -> dict[str, str]:
    """Keep only old → new pairs whose new key no other old key claims."""
    claims = Counter(pairs.values())
    return {old: new for old, new in pairs.items() if claims[new] == 1}


def moving_chain(catalogue: Catalogue) -> list[Entity]:
    """The entity that moves by content, then the ancestors that move with it, bottom up."""
    leaves = [e for e in catalogue.owned if e.moves == "content"]
    if not leaves:
        return []
    chain = [leaves[0]]
    while chain[-1].parent is not None:
        parent = catalogue.entity(chain[-1].parent)
        if not parent.owned or parent.moves != "children":
            break
        chain.append(parent)
    return chain


Moved = dict[str, dict[str, str]]  # entity → old key → new key
ByKey = dict[str, dict[str, Change]]  # entity → key → its delete (or its create)


def find_moves(changes: list[Change], catalogue: Catalogue) -> list[Change]:
    """``changes`` with the deletes and creates that are renames replaced by moves
    (unordered: the caller sorts). Returns ``changes`` itself when nothing moved."""
    chain = moving_chain(catalogue)
    if not chain:
        return changes
    kinds = {e.name for e in chain}
    deletes: ByKey = {k: {} for k in kinds}
    creates: ByKey = {k: {} for k in kinds}
    for c in changes:
        if c.kind in kinds and c.action in ("delete", "create"):
            (deletes if c.action == "delete" else creates)[c.kind][c.key] = c
    leaf = chain[0]
    if not deletes[leaf.name] or not creates[leaf.name]:
        return changes  # every move starts with a move by content
    moved: Moved = {leaf.name: _moved_by_content(leaf, deletes[leaf.name], creates[leaf.name])}
    if not moved[leaf.name]:
        return changes
    _moved_up_the_chain(chain, changes, deletes, creates, moved)
    replaced: set[tuple[str, str]] = set()  # (kind, key) of the deletes and creates that became moves
    moves: list[Change] = []
    for e in reversed(chain):
        for old, new in moved[e.name].items():
            create = creates[e.name][new]
            moves.append(make_move(e, old, deletes[e.name][old].before, new, create.after))
            replaced.add((e.name, old))
            replaced.add((e.name, new))
    return [c for c in changes if c.action not in ("create", "delete") or (c.kind, c.key) not in replaced] + moves


def _moved_by_content(leaf: Entity, deletes: dict[str, Change], creates: dict[str, Change]) -> dict[str, str]:
    """The leaf rows moved: the same (etag, size) deleted once and created once."""
    ids = content_columns(leaf)
    etag, size = ids["etag"], ids["size_bytes"]
    gone: dict[tuple, list[str]] = defaultdict(list)
    for key, c in deletes.items():
        b = c.before
        if b[etag]:
            gone[(b[etag], b[size])].append(key)
    if not gone:
        return {}
    came: dict[tuple, list[Change]] = defaultdict(list)
    for c in creates.values():
        a = c.after
        ident = (a[etag], a[size])
        if a[etag] and ident in gone:
            came[ident].append(c)
    return {gone[ident][0]: news[0].key for ident, news in came.items()
            if len(gone[ident]) == 1 and len(news) == 1}


def _moved_up_the_chain(chain: list[Entity], changes: list[Change], deletes: ByKey, creates: ByKey,
                        moved: Moved) -> None:
    """Fill ``moved`` for the parents of the chain: a row moved when every child of it
    that was deleted moved, all into one created row. A child updated away from its row
    (not deleted) means the row did not move whole. Then a row keyed within its parent
    keeps only the moves whose parent moved there too."""
    for child, parent in zip(chain, chain[1:]):
        field = child.parent  # the child's field naming its parent
        children_of: dict[str, list[str]] = defaultdict(list)
        for key, c in deletes[child.name].items():
            children_of[c.before[field]].append(key)
        kept = {c.before[field] for c in changes
                if c.kind == child.name and c.action == "update" and field in c.before}
        to: dict[str, str] = {}
        for pkey in deletes[parent.name]:
            keys = children_of.get(pkey)
            if not keys or pkey in kept or not all(k in moved[child.name] for k in keys):
                continue
            targets = {creates[child.name][moved[child.name][k]].after[field] for k in keys}
            if len(targets) == 1:
                (target,) = targets
                if target in creates[parent.name]:
                    to[pkey] = target
        moved[parent.name] = _unique(to)

    for child, parent in zip(chain, chain[1:]):
        if child.unique != "parent":
            continue
        field = child.parent
        moved[child.name] = {
            old: new for old, new in moved[child.name].items()
            if (deletes[child.name][old].before[field] == creates[child.name][new].after[field]
                or moved[parent.name].get(deletes[child.name][old].before[field]) == creates[child.name][new].after[field])
        }
