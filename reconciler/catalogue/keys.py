"""Reading one key the catalogue's way: the reference. Pure: no I/O.

:func:`read_key` is the rules applied to a single key below the source root, first
match wins, as the spec reads: what ``reconciler explain`` prints, and what the
columnar classifier (:mod:`reconciler.engine.frames`) is held to, key by key, by property tests.
:func:`scope_segment` is where a key holds its top entity's key, when every key that
makes rows holds it in the same folder: what a scope lists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote

from ..errors import ConfigError
from .descriptor import Catalogue, Entity, Rule
from .patterns import Placeholder, class_of

if TYPE_CHECKING:
    import polars as pl


@dataclass(frozen=True)
class Reading:
    """What a key means: the rule that took it and its captures, and the skip reason
    when it makes no row (``None`` when it does)."""

    rule: Rule | None
    captures: dict = field(default_factory=dict)
    reason: str | None = None

    @property
    def recognised(self) -> bool:
        return self.reason is None


def read_key(catalogue: Catalogue, rel: str, rules: tuple[Rule, ...] | None = None) -> Reading:
    """The first rule that matches ``rel`` (a key below the root); folder markers,
    empty captures and keys no rule takes are skipped with the tool's own reasons.
    ``rules`` (default: the catalogue's) are the rules to try, in order: a caller that
    knows which rules can take keys of a folder (:attr:`Pattern.dir_regex`) passes those."""
    if not rel or rel.endswith("/"):  # "" is the root's own marker ("media/")
        return Reading(None, {}, "folder_marker")
    for rule in catalogue.rules if rules is None else rules:
        captures = rule.pattern.match(rel)
        if captures is None:
            continue
        if any(v == "" for v in captures.values()):
            return Reading(rule, captures, "empty_segment")
        return Reading(rule, captures, rule.reason if rule.action == "skip" else None)
    return Reading(None, {}, "unmatched")


# An object's URL is the CDN base without trailing "/", then "/" and the key quoted by
# urllib.parse.quote(key, safe="/"). PLAIN_KEY matches the keys quote leaves as they
# are (letters, digits, "_.-~/"): most keys, which skip urllib's per-byte work.
PLAIN_KEY = r"[A-Za-z0-9_.~/-]*"
_plain = re.compile(PLAIN_KEY + r"\Z").match


def url_base(cdn_base_url: str) -> str:
    return cdn_base_url.rstrip("/") + "/"


def quote_key(key: str) -> str:
    """A key (or any text) as it stands in an object's URL."""
    return key if _plain(key) else quote(key, safe="/")


def url_of(cdn_base_url: str, key: str) -> str:
    """An object's public URL (``{url}`` in a template)."""
    return url_base(cdn_base_url) + quote_key(key)


def attributes(catalogue: Catalogue, key: str, rel: str, *, size=None, etag=None, last_modified=None,
               cdn_base_url: str = "") -> dict:
    """The values templates may name besides captures."""
    return {"key": key, "rel": rel, "url": url_of(cdn_base_url, key), "size": size, "etag": etag,
            "last_modified": last_modified, "class": class_of(key, catalogue.classes)}


def own_key(entity: Entity, values: dict) -> str:
    return "/".join(str(t.render(values)) for _, t in entity.key)


def plan_keys(catalogue: Catalogue, entity: str, values: dict) -> dict[str, str]:
    """The plan keys of the row an object makes of ``entity`` and of its ancestors,
    top first: ``{"model": "M", "post": "M/P", "media": "M/P/1.jpg"}``."""
    keys: dict[str, str] = {}
    for e in catalogue.chain(entity):
        own = own_key(e, values)
        keys[e.name] = own if e.unique == "global" or e.parent is None else keys[e.parent] + "/" + own
    return keys


# --------------------------------------------------------------------------- scope


@dataclass(frozen=True)
class ScopeSegment:
    """Where the top entity's key stands in every key that makes a row: the segment at
    ``index``, after the literal segments ``prefix`` (``products/{product_id}/…``:
    ``("products",)`` and 1). A scope (``--scope``, ``--shard``) lists and plans only
    the keys whose segment there is one of its top keys."""

    prefix: tuple[str, ...]
    index: int

    def of(self, rel: str) -> str | None:
        parts = rel.split("/", self.index + 1)
        if len(parts) <= self.index or tuple(parts[: self.index]) != self.prefix:
            return None
        return parts[self.index]

    def folder_of(self, rel: str) -> str | None:
        """The top's name when the segment is a folder of ``rel`` (a file at the
        segment's place, like a ``README`` at the root, or an empty folder name, is
        under no top)."""
        parts = rel.split("/", self.index + 1)
        return (self.of(rel) or None) if len(parts) > self.index + 1 else None

    def of_expr(self, rel: pl.Expr) -> pl.Expr:
        """:meth:`of` as a column expression."""
        import polars as pl

        part = rel.str.split("/").list.get(self.index, null_on_oob=True)
        if self.prefix:
            part = pl.when(rel.str.starts_with("".join(s + "/" for s in self.prefix))).then(part)
        return part

    def folder_expr(self, rel: pl.Expr) -> pl.Expr:
        """:meth:`folder_of` as a column expression."""
        import polars as pl

        part = self.of_expr(rel)
        return pl.when((rel.str.split("/").list.len() > self.index + 1) & (part != "")).then(part)


def scope_segment(catalogue: Catalogue) -> ScopeSegment | None:
    """The top entity's segment, when every rule that makes rows puts its key's one
    capture as a whole segment at the same place after the same literal segments; None
    when the catalogue cannot be scoped (a top key of several columns, or not a folder)."""
    top = catalogue.top
    if len(top.key) != 1 or top.key[0][1].single is None:
        return None
    name = top.key[0][1].single
    found: set[ScopeSegment] = set()
    for r in catalogue.rules_implying(top.name):
        prefix: list[str] = []
        at = None
        for i, seg in enumerate(r.pattern.segments):
            if len(seg) == 1 and isinstance(seg[0], Placeholder) and seg[0].name == name:
                at = i
                break
            if seg == ("**",) or not all(isinstance(p, str) for p in seg):
                break
            prefix.append("".join(seg))
        if at is None:
            return None
        found.add(ScopeSegment(tuple(prefix), at))
    return found.pop() if len(found) == 1 else None


def require_scope_segment(catalogue: Catalogue) -> ScopeSegment:
    """The top entity's segment, for a scope; a ConfigError says why there is none."""
    segment = scope_segment(catalogue)
    if segment is None:
        raise ConfigError(f"catalogue {catalogue.name} cannot be scoped: its top entity {catalogue.top.name!r} "
                          "is not one folder of every key; plan it whole, without --scope or --shard")
    return segment
