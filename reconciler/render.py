"""Human and machine views of plans and history: table, markdown (PR comments), json.

Pure: takes plans and entries, returns text.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from typing import Callable, Iterable

from tabulate import tabulate

from .catalogue import Catalogue, Entity
from .catalogue.keys import scope_segment
from .engine.diff import ACTIONS, Change
from .planfile import Plan

MARKDOWN_LIMIT = 65_000  # GitHub refuses comments over 65,536 characters
WIDTH = 160  # no line of a change's details is longer (long values wrap)
SYMBOL = {"create": "+", "update": "~", "move": ">", "delete": "-"}


def catalogue_of(plan: Plan) -> Catalogue:
    """The catalogue a plan was read or made under (creators for a plan of old)."""
    if plan.descriptor is not None:
        return plan.descriptor
    from .catalogue import default_catalogue

    return default_catalogue()


def kinds_of(plan: Plan) -> tuple[str, ...]:
    return plan.kinds or catalogue_of(plan).kinds


def value_text(v) -> str:
    """A value as a reviewer reads it: text as it is, ``null``, ``""``, JSON for objects."""
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True, ensure_ascii=False)
    if v is None:
        return "null"
    if isinstance(v, str):
        return v if v and v.strip() == v else json.dumps(v, ensure_ascii=False)
    return str(v)


def _wrap(line: str, indent: int, width: int | None = WIDTH) -> list[str]:
    """``line`` cut into pieces of at most ``width`` characters; the rest indented."""
    if width is None or len(line) <= width:
        return [line]
    pad = " " * indent
    out, rest = [line[:width]], line[width:]
    while rest:
        out.append(pad + rest[: width - indent])
        rest = rest[width - indent :]
    return out


def _field_lines(name: str, old, new, width: int | None) -> list[str]:
    """One field's change: ``name: old → new``, or two lines when that is too long."""
    head = f"    {name}: "
    one = f"{head}{value_text(old)} → {value_text(new)}"
    if width is None or len(one) <= width:
        return [one]
    return _wrap(f"{head}{value_text(old)}", len(head), width) + _wrap(" " * (len(head) - 2) + f"→ {value_text(new)}", len(head), width)


def _list_lines(name: str, old: dict | None, new: dict | None, width: int | None) -> list[str]:
    """A JSON object of lists (a post's ``media_cdns``) as the items removed and added,
    each in full, one per line."""
    out = []
    for part in sorted(set(old or {}) | set(new or {})):
        before = (old or {}).get(part) or []
        after = (new or {}).get(part) or []
        gone, came = set(before) - set(after), set(after) - set(before)
        head = f"    {name}.{part}: "
        for sign, items, order in (("-", gone, before), ("+", came, after)):
            for item in (u for u in order if u in items):
                out += _wrap(f"{head}{sign} {value_text(item)}", len(head) + 2, width)
                head = " " * len(head)
        if before != after and not gone and not came:
            out.append(f"{head}(same items, new order)")
    return out


def _lists(e: Entity | None, name: str) -> bool:
    """Whether a column is a JSON object of lists (shown as items added and removed)."""
    if e is None:
        return False
    for c in e.columns:
        if c.name == name:
            return bool(c.value.object) and all(v.list is not None for _, v in c.value.object)
    return False


def _entity(c: Change, catalogue: Catalogue | None) -> Entity | None:
    if catalogue is None:
        from .catalogue import default_catalogue

        catalogue = default_catalogue()
    try:
        return catalogue.entity(c.kind)
    except KeyError:
        return None


def change_head(c: Change) -> str:
    """``+ create media KEY``; a move reads ``> move post OLD → NEW``."""
    key = f"{c.from_key} → {c.key}" if c.action == "move" else c.key
    return f"{SYMBOL[c.action]} {c.action} {c.kind} {key}"


def change_lines(c: Change, width: int | None = WIDTH, catalogue: Catalogue | None = None) -> list[str]:
    """What a reviewer must see of a change, a line per field, none over ``width``
    characters (None: no wrapping): updated and moved fields as before → after (an
    object of lists, like ``media_cdns``, as the items removed and added, each in full),
    the values a create writes — one line each, but the object's own attributes (class,
    size, ETag, time) on one line together. A delete names its row only."""
    lines: list[str] = []
    e = _entity(c, catalogue)

    def line(text: str, indent: int = 4) -> None:
        lines.extend(_wrap(text, indent, width))

    if c.action in ("update", "move"):
        before, after = c.before, c.after
        identity = set(e.identity) if e is not None else set()
        for name in sorted(after):
            if c.action == "move" and name in identity:
                continue
            if _lists(e, name):
                lines.extend(_list_lines(name, before.get(name), after.get(name), width))
            else:
                lines.extend(_field_lines(name, before.get(name), after.get(name), width))
    elif c.action == "create":
        a = c.after
        together = []
        for col in (e.columns if e is not None else ()):
            t = col.value.template
            if t is not None and t.single in ("class", "size", "etag", "last_modified"):
                together.append(f"{col.name}: {value_text(a.get(col.name))}")
            elif _lists(e, col.name):
                value = a.get(col.name) or {}
                counts = ", ".join(f"{len(value.get(m) or [])} {m[:-1] if m.endswith('s') else m}(s)"
                                   for m, _ in col.value.object)
                line(f"    {col.name}: {counts}")
            else:
                line(f"    {col.name}: {value_text(a.get(col.name))}", len(col.name) + 6)
        if together:
            line("    " + ", ".join(together))
        if e is not None and e.id_column in a:  # a rollback restores the row with its old id
            line(f"    {e.id_column}: {a[e.id_column]} (restored)")
    return lines


def _count(summary: dict, kind: str, action: str) -> int:
    return summary[kind].get(action, 0)  # plans made before moves have no "move" counts


def _kinds(summary: dict, kinds=None) -> list[str]:
    return list(kinds) if kinds else list(summary)


def summary_rows(summary: dict, kinds=None) -> list[list]:
    return [[k] + [_count(summary, k, a) for a in ACTIONS] for k in _kinds(summary, kinds)]


def summary_table(summary: dict, kinds=None) -> str:
    return tabulate(summary_rows(summary, kinds), headers=["kind", *ACTIONS], tablefmt="simple")


Name = Callable[[str], str]  # how a view writes a name or value it did not make (a bucket's, a config's)


def _plain(text: str) -> str:
    return text


def _plural(e: Entity) -> str:
    return e.plural.lower()


def scope_text(plan: Plan, name: Name = _plain) -> str:
    """``all models``, ``models A, B``, or ``shard 2/4 (3 models)`` (a shard's list is
    long): in the words of the catalogue's top entity."""
    top = catalogue_of(plan).top
    shard = plan.target.get("shard")
    if shard:
        n = len(plan.scope or ())
        return f"shard {name(shard)} ({n} {top.name if n == 1 else _plural(top)})"
    return f"all {_plural(top)}" if plan.scope is None else f"{_plural(top)} " + ", ".join(map(name, plan.scope))


def inventory_text(inventory: dict, name: Name = _plain) -> str:
    """Where an inventory plan's objects came from, and how old that report was."""
    fmt = f", {name(inventory['format'])}" if inventory.get("format") else ""
    return f"S3 Inventory report {name(inventory['manifest'])} made {name(inventory['created_at'])}{fmt}"


def plan_header(plan: Plan, name: Name = _plain) -> list[str]:
    """The plan's identity, source and target, a line each; ``name`` writes every text
    that came from the bucket, the config or the file (markdown escapes them; the file's
    schema holds the rest to numbers, hex and a time)."""
    lines = [
        f"plan {plan.plan_id}",
        f"made {plan.created_at} by reconciler {name(str(plan.tool_version))}"
        + (" (signed)" if plan.signature else "")
        + (f", rolls back apply {plan.extra['rolls_back']}" if plan.extra.get("rolls_back") else ""),
        f"source: {name(str(plan.source.get('url')))} ({plan.source.get('object_count', 0)} objects)",
    ]
    if plan.source.get("inventory"):
        lines.append(f"listing: {inventory_text(plan.source['inventory'], name)}")
    lines += [
        f"target: {name(str(plan.target.get('database')))}, {scope_text(plan, name)}",
    ]
    skipped = plan.source.get("skipped") or {}
    if skipped:
        lines.append("skipped: " + ", ".join(f"{name(k)} {v}" for k, v in sorted(skipped.items())))
    held = plan.extra.get("held") or {}
    if held:
        lines.append("kept: " + ", ".join(f"{name(k)} {v.get('count', 0)}" for k, v in sorted(held.items()))
                     + " (rows whose objects are under a platform row that is missing: left as they are)")
    return lines


def _deleted(summary: dict, kinds=None, catalogue: Catalogue | None = None) -> tuple[int, str] | None:
    """How many rows the plan deletes, and ``1 model, 2 media``; None without deletions."""
    deletes = {k: _count(summary, k, "delete") for k in _kinds(summary, kinds) if _count(summary, k, "delete")}
    if not deletes:
        return None

    def named(kind: str, n: int) -> str:
        if n == 1:
            return kind
        try:
            return _plural((catalogue or _default()).entity(kind))
        except KeyError:
            return kind + "s"

    return sum(deletes.values()), ", ".join(f"{n} {named(k, n)}" for k, n in deletes.items())


def _default() -> Catalogue:
    from .catalogue import default_catalogue

    return default_catalogue()


def deletion_note(summary: dict, kinds=None, catalogue: Catalogue | None = None) -> str | None:
    """``This plan deletes 3 row(s): 1 model, 2 media.``, or None."""
    deleted = _deleted(summary, kinds, catalogue)
    return None if deleted is None else f"This plan deletes {deleted[0]} row(s): {deleted[1]}."


def deletion_warning(plan: Plan) -> str | None:
    """``the plan deletes 3 of 40 row(s) in scope: 1 model, 2 media``, or None."""
    deleted = _deleted(plan.summary, kinds_of(plan), catalogue_of(plan))
    if deleted is None:
        return None
    rows = sum((plan.target.get("current_counts") or {}).values())
    return f"the plan deletes {deleted[0]} of {rows} row(s) in scope: {deleted[1]}"


def table(plan: Plan) -> str:
    """``show``'s default: header, counts per kind and action, deletions called out,
    then every change with its details (no line longer than WIDTH)."""
    out = plan_header(plan)
    out.append("")
    catalogue = catalogue_of(plan)
    out.append(summary_table(plan.summary, kinds_of(plan)))
    out.append("")
    note = deletion_note(plan.summary, kinds_of(plan), catalogue)
    if note:
        out += [note, ""]
    if not plan.changes:
        out.append("No changes. The database matches the source.")
    for c in plan.changes:
        out += _wrap(change_head(c), 4, WIDTH)
        out += change_lines(c, catalogue=catalogue)
    return "\n".join(out)


def summary_line(summary: dict, kinds=None) -> str:
    parts = []
    for k in _kinds(summary, kinds):
        parts.append(" ".join([k] + [f"{SYMBOL[a]}{_count(summary, k, a)}" for a in ACTIONS]))
    return ", ".join(parts)


def json_view(plan: Plan) -> str:
    return json.dumps(plan.to_dict(), indent=2, sort_keys=True, ensure_ascii=False)


# --------------------------------------------------------------------------- markdown


def _root(plan: Plan) -> str:
    url = plan.source.get("url") or ""
    if url.startswith("s3://"):
        path = url[5:].partition("/")[2]
        return path if not path or path.endswith("/") else path + "/"
    return ""


def top_of(c: Change, catalogue: Catalogue, root: str = "") -> str:
    """The top row a change belongs to (for grouping: a creator's model); a move's new one."""
    from .planfile.rules import _parts

    e = catalogue.entity(c.kind)
    key = c.key
    while e.parent is not None:
        if e.unique == "parent":  # the names before its own are its parent's (they hold no "/")
            key = "/".join(key.split("/")[: _parts(catalogue, catalogue.entity(e.parent))])
        else:
            image = c.before if c.action == "delete" else c.after
            if not image or e.parent not in image:
                segment = scope_segment(catalogue)
                rel = key[len(root):] if key.startswith(root) else key
                return (segment.of(rel) if segment else None) or rel.partition("/")[0]
            key = image[e.parent]
        e = catalogue.entity(e.parent)
        c = Change(c.action, e.name, key, None, None)
    return key


def changes_by_model(plan: Plan) -> dict[str, list[Change]]:
    """The plan's changes grouped by their top row (as the markdown view groups them),
    sorted by name, each group in the plan's order."""
    root = _root(plan)
    catalogue = catalogue_of(plan)
    groups: dict[str, list[Change]] = defaultdict(list)
    for c in plan.changes:
        groups[top_of(c, catalogue, root)].append(c)
    return {name: groups[name] for name in sorted(groups)}


MD_DETAIL_LINES = 20  # per change; a post's hundred URLs would crowd out every other change
# What means something to HTML or, inside a line, to GitHub's markdown: tags and
# entities, escapes, code, emphasis, links and images, table cells, strikethrough, math.
# Line breaks too (below): a name never starts a line, so "#", "-" or "1." cannot mean
# anything. (An e-mail address still becomes a link, showing where it goes: GitHub finds
# those in the text as read, whatever is escaped.)
_MD_SPECIAL = frozenset("&<>\\`*[]|~$")
# Special only in some places: "_" where it can open or close emphasis (not inside a
# word: snake_case stays as it is), and the ":" of "://" and the "." of "www." that
# GitHub looks for in the text as written to make links.
_MD_CONTEXT = re.compile(r"(?<![^\W_])_|_(?![^\W_])|:(?=//)|(?<=[wW]{3})\.")


def md_text(text: str) -> str:
    """``text`` as markdown that shows it as it is: each special character written as a
    numeric character reference (``*`` → ``&#42;``), which reads as the character itself
    in a paragraph, a table cell (a pipe splits no cell) and an HTML block (``<details>``)
    alike — where a backslash escape would show. Names and values from the bucket or the
    plan file go through this: in a pull-request comment a post title is not markup, and
    a URL in it is no link."""
    def ref(ch: str) -> str:
        return f"&#{ord(ch)};"

    text = "".join(ref(ch) if ch in _MD_SPECIAL or not ch.isprintable() else ch for ch in text)
    return _MD_CONTEXT.sub(lambda m: ref(m.group()), text)


def _md_code(text: str) -> str:
    """A name or value as code, escaped: GitHub mentions no one (``@team``) and links no
    issue (``#1``) inside it."""
    return f"<code>{md_text(text)}</code>"


def _md_change(c: Change, catalogue: Catalogue) -> str:
    key = f"{_md_code(c.from_key)} → " if c.action == "move" else ""
    line = f"- `{SYMBOL[c.action]}` {c.action} {c.kind} {key}{_md_code(c.key)}"
    details = [d.strip() for d in change_lines(c, width=None, catalogue=catalogue)]
    shown = [_md_code(d) for d in details[:MD_DETAIL_LINES]]
    if len(details) > MD_DETAIL_LINES:
        shown.append(f"… and {len(details) - MD_DETAIL_LINES} more line(s); see the plan file")
    return "\n".join([line] + [f"  - {d}" for d in shown])


def markdown(plan: Plan, limit: int = MARKDOWN_LIMIT) -> str:
    """A pull-request comment: summary, a warning when anything is deleted, and the
    changes grouped by model in ``<details>`` sections, kept under ``limit`` characters
    by showing fewer changes per model (every count is always stated)."""
    summary = plan.summary
    head = [f"### reconciler plan `{plan.plan_id[:12]}`", ""]
    head += [f"- {line}" for line in plan_header(plan, _md_code)[1:]]
    head += ["", "| kind | " + " | ".join(ACTIONS) + " |", "| --- |" + " ---: |" * len(ACTIONS)]
    catalogue = catalogue_of(plan)
    head += ["| " + " | ".join(map(str, r)) + " |" for r in summary_rows(summary, kinds_of(plan))]
    head.append("")
    note = deletion_note(summary, kinds_of(plan), catalogue)
    if note:
        head += [
            "> [!WARNING]",
            f"> **{note}** Check that the source listing is complete before you merge.",
            "",
        ]
    if not plan.changes:
        head.append("No changes. The database matches the source.")
        return "\n".join(head) + "\n"
    root = _root(plan)
    groups: dict[str, list[Change]] = defaultdict(list)
    for c in plan.changes:
        groups[top_of(c, catalogue, root)].append(c)
    names = sorted(groups)
    header_text = "\n".join(head) + "\n"
    for per_group in (50, 20, 10, 5, 2, 1, 0):
        body = _md_groups(groups, names, per_group, limit - len(header_text) - 200, catalogue)
        if body is not None:
            return header_text + body
    raise AssertionError("unreachable: the last attempt always fits")


def _md_group(name: str, changes: list[Change], per_group: int, catalogue: Catalogue) -> str:
    counts = defaultdict(int)
    for c in changes:
        counts[c.action] += 1
    label = ", ".join(f"{SYMBOL[a]}{counts[a]}" for a in ACTIONS if counts[a])
    lines = [f"<details><summary>{_md_code(name)}: {len(changes)} change(s) ({label})</summary>", ""]
    lines += [_md_change(c, catalogue) for c in changes[:per_group]]
    if len(changes) > per_group:
        lines.append(f"- … and {len(changes) - per_group} more")
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def _md_groups(groups: dict, names: list[str], per_group: int, budget: int, catalogue: Catalogue) -> str | None:
    parts, used = [], 0
    for i, name in enumerate(names):
        part = _md_group(name, groups[name], per_group, catalogue)
        if used + len(part) > budget:
            if per_group > 0:
                return None  # try again with fewer changes per model
            rest = names[i:]
            n = sum(len(groups[r]) for r in rest)
            parts.append(f"… and {len(rest)} more {catalogue.top.name}(s) with {n} change(s); "
                         "see the plan file for all of them.\n")
            break
        parts.append(part)
        used += len(part)
    return "".join(parts)


# --------------------------------------------------------------------------- history


def history_table(entries: Iterable, kinds=None) -> str:
    rows = [
        [e.apply_id, e.applied_at, e.applied_by, e.plan_id[:12], summary_line(e.summary, kinds), e.rolls_back or ""]
        for e in entries
    ]
    if not rows:
        return "No applies yet."
    return tabulate(rows, headers=["apply", "applied at (UTC)", "by", "plan", "changes", "rolls back"], tablefmt="simple")


def history_json(entries: Iterable) -> str:
    return json.dumps([e.to_dict() for e in entries], indent=2, sort_keys=True, ensure_ascii=False)
