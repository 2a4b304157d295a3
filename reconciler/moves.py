"""Renamed folders as moves, not delete + create. Pure: no I/O.

A plain diff sees a renamed folder as deletions at the old keys and creations at the
new ones. Applied that way the rows get new ids, unmanaged columns (a creator's
``status``) fall back to their defaults, and whatever the platform keeps pointing at
those ids (likes, purchases) is lost or blocks the apply. :func:`find_moves` turns
such pairs into moves, which apply as updates in place (same ids):

- **media**: deleted at key A and created at key B with the same ETag and size, when
  the match is unambiguous — exactly one deleted and one created object hold that
  content. Copies of the same content are never guessed: they stay delete + create.
  Objects without an ETag (folder sources) have no identity and never move.
- **post**: a deleted post all of whose media moved into one created post. Within one
  model; across models only as part of a model move.
- **model**: a deleted model all of whose posts (at least one) moved to one created
  model. Its profile images are not rows; their URLs change with the move.

A move carries the key columns and the parent (``folder_name``; ``model`` and
``folder_name``; ``s3_key`` and ``post``) and the managed fields that change.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from .diff import FIELDS, KINDS, Change

# The columns that name a row (its natural key) and its parent, always in a move.
KEY_FIELDS = {"model": ("folder_name",), "post": ("model", "folder_name"), "media": ("s3_key", "post")}


def natural_key(kind: str, image: dict) -> str:
    """The key a change image names: ``folder_name``, ``model/folder_name`` or ``s3_key``."""
    if kind == "model":
        return image["folder_name"]
    if kind == "post":
        return image["model"] + "/" + image["folder_name"]
    return image["s3_key"]


def move_images(kind: str, old: dict, new: dict) -> tuple[dict, dict]:
    """``before``/``after`` of a move between two full images: the key columns, the
    parent, and every other managed field whose value differs."""
    names = list(KEY_FIELDS[kind])
    names += [f for f in FIELDS[kind] if f not in names and (old.get(f) != new.get(f) or type(old.get(f)) is not type(new.get(f)))]
    return {f: old.get(f) for f in names}, {f: new.get(f) for f in names}


def make_move(kind: str, old: dict, new: dict) -> Change:
    before, after = move_images(kind, old, new)
    return Change("move", kind, natural_key(kind, new), before, after, natural_key(kind, old))


def _unique(pairs: dict[str, str]) -> dict[str, str]:
    """Keep only old → new pairs whose new key no other old key claims."""
    claims = Counter(pairs.values())
    return {old: new for old, new in pairs.items() if claims[new] == 1}


def find_moves(changes: list[Change]) -> list[Change]:
    """``changes`` with the deletes and creates that are renames replaced by moves
    (unordered: the caller sorts). Returns ``changes`` itself when nothing moved."""
    deletes: dict[str, dict[str, Change]] = {k: {} for k in KINDS}
    media_creates: list[Change] = []
    for c in changes:
        if c.action == "delete":
            deletes[c.kind][c.key] = c
        elif c.action == "create" and c.kind == "media":
            media_creates.append(c)
    if not deletes["media"] or not media_creates:
        return changes  # every move starts with a media move

    # Media: the same (etag, size) deleted once and created once.
    gone: dict[tuple, list[str]] = defaultdict(list)
    for key, c in deletes["media"].items():
        b = c.before
        if b["etag"]:
            gone[(b["etag"], b["size_bytes"])].append(key)
    if not gone:
        return changes
    came: dict[tuple, list[Change]] = defaultdict(list)
    for c in media_creates:
        a = c.after
        ident = (a["etag"], a["size_bytes"])
        if a["etag"] and ident in gone:
            came[ident].append(c)
    media_to: dict[str, Change] = {}  # old key → the create it pairs with
    for ident, news in came.items():
        olds = gone[ident]
        if len(olds) == 1 and len(news) == 1:
            media_to[olds[0]] = news[0]
    if not media_to:
        return changes

    creates: dict[str, dict[str, Change]] = {k: {} for k in KINDS}
    for c in changes:
        if c.action == "create" and c.kind != "media":
            creates[c.kind][c.key] = c

    # Posts: every medium of a deleted post moved, all into one created post. A medium
    # updated away from the post (not deleted) means the post did not move whole.
    media_of: dict[str, list[str]] = defaultdict(list)
    for key, c in deletes["media"].items():
        media_of[c.before["post"]].append(key)
    kept = {c.before["post"] for c in changes if c.kind == "media" and c.action == "update" and "post" in c.before}
    post_to: dict[str, str] = {}
    for pkey in deletes["post"]:
        keys = media_of.get(pkey)
        if not keys or pkey in kept or not all(k in media_to for k in keys):
            continue
        targets = {media_to[k].after["post"] for k in keys}
        if len(targets) == 1:
            (target,) = targets
            if target in creates["post"]:
                post_to[pkey] = target
    post_to = _unique(post_to)

    # Models: every post of a deleted model moved, all into one created model.
    posts_of: dict[str, list[str]] = defaultdict(list)
    for pkey, c in deletes["post"].items():
        posts_of[c.before["model"]].append(pkey)
    model_to: dict[str, str] = {}
    for model in deletes["model"]:
        pkeys = posts_of.get(model)
        if not pkeys or not all(p in post_to for p in pkeys):
            continue
        targets = {post_to[p].partition("/")[0] for p in pkeys}
        if len(targets) == 1:
            (target,) = targets
            if target in creates["model"]:
                model_to[model] = target
    model_to = _unique(model_to)
    post_to = {
        old: new for old, new in post_to.items()
        if old.partition("/")[0] == new.partition("/")[0] or model_to.get(old.partition("/")[0]) == new.partition("/")[0]
    }

    replaced: set[tuple[str, str]] = set()  # (kind, key) of the deletes and creates that became moves
    moves: list[Change] = []
    for kind, pairs, new_of in (
        ("model", model_to, lambda new: creates["model"][new]),
        ("post", post_to, lambda new: creates["post"][new]),
        ("media", media_to, lambda new: new),
    ):
        for old, new in pairs.items():
            create = new_of(new)
            moves.append(make_move(kind, deletes[kind][old].before, create.after))
            replaced.add((kind, old))
            replaced.add((kind, create.key))
    return [c for c in changes if c.action not in ("create", "delete") or (c.kind, c.key) not in replaced] + moves
