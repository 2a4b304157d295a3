"""Human and machine views of plans and history: table, markdown (PR comments), json.

Pure: takes plans and entries, returns text.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from typing import Iterable

from tabulate import tabulate

from .diff import ACTIONS, KINDS, Change
from .planfile import Plan

MARKDOWN_LIMIT = 65_000  # GitHub refuses comments over 65,536 characters
SYMBOL = {"create": "+", "update": "~", "delete": "-"}


def _value(v) -> str:
    if isinstance(v, dict):
        v = json.dumps(v, sort_keys=True, ensure_ascii=False)
        return v if len(v) <= 80 else v[:77] + "…"
    return repr(v) if isinstance(v, str) or v is None else str(v)


def change_details(c: Change) -> str:
    if c.action == "update":
        return ", ".join(f"{f}: {_value(c.before[f])} → {_value(c.after[f])}" for f in sorted(c.after))
    return ""


def summary_rows(summary: dict) -> list[list]:
    return [[k] + [summary[k][a] for a in ACTIONS] for k in KINDS]


def summary_table(summary: dict) -> str:
    return tabulate(summary_rows(summary), headers=["kind", *ACTIONS], tablefmt="simple")


def _scope(plan: Plan) -> str:
    return "all models" if plan.scope is None else "models " + ", ".join(plan.scope)


def plan_header(plan: Plan) -> list[str]:
    lines = [
        f"plan {plan.plan_id}",
        f"made {plan.created_at} by reconciler {plan.tool_version}"
        + (" (signed)" if plan.signature else "")
        + (f", rolls back apply {plan.extra['rolls_back']}" if plan.extra.get("rolls_back") else ""),
        f"source: {plan.source.get('url')} ({plan.source.get('object_count', 0)} objects)",
        f"target: {plan.target.get('database')}, {_scope(plan)}",
    ]
    skipped = plan.source.get("skipped") or {}
    if skipped:
        lines.append("skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())))
    return lines


def table(plan: Plan) -> str:
    """``show``'s default: header, counts per kind and action, then every change."""
    out = plan_header(plan)
    out.append("")
    out.append(summary_table(plan.summary))
    out.append("")
    if not plan.changes:
        out.append("No changes. The database matches the source.")
    else:
        rows = [[SYMBOL[c.action], c.action, c.kind, c.key, change_details(c)] for c in plan.changes]
        out.append(tabulate(rows, headers=["", "action", "kind", "key", "changes"], tablefmt="simple", disable_numparse=True))
    return "\n".join(out)


def summary_line(summary: dict) -> str:
    parts = []
    for k in KINDS:
        counts = summary[k]
        parts.append(f"{k} +{counts['create']} ~{counts['update']} -{counts['delete']}")
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


def model_of(c: Change, root: str = "") -> str:
    """The model a change belongs to (for grouping)."""
    if c.kind == "model":
        return c.key
    if c.kind == "post":
        return c.key.partition("/")[0]
    image = c.after if c.action == "create" else c.before
    if image and "post" in image:
        return image["post"].partition("/")[0]
    key = c.key[len(root):] if c.key.startswith(root) else c.key
    return key.partition("/")[0]


def _md_change(c: Change) -> str:
    line = f"- `{SYMBOL[c.action]}` {c.action} {c.kind} <code>{html.escape(c.key)}</code>"
    details = change_details(c)
    if details:
        line += f" — {html.escape(details)}"
    return line


def markdown(plan: Plan, limit: int = MARKDOWN_LIMIT) -> str:
    """A pull-request comment: summary, a warning when anything is deleted, and the
    changes grouped by model in ``<details>`` sections, kept under ``limit`` characters
    by showing fewer changes per model (every count is always stated)."""
    summary = plan.summary
    head = [f"### reconciler plan `{plan.plan_id[:12]}`", ""]
    head += [f"- {line}" for line in plan_header(plan)[1:]]
    head += ["", "| kind | create | update | delete |", "| --- | ---: | ---: | ---: |"]
    head += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |" for r in summary_rows(summary)]
    head.append("")
    deletes = {k: summary[k]["delete"] for k in KINDS if summary[k]["delete"]}
    if deletes:
        what = ", ".join(f"{n} {k}{'' if n == 1 else ('s' if k != 'media' else '')}" for k, n in deletes.items())
        head += [
            "> [!WARNING]",
            f"> **This plan deletes {sum(deletes.values())} row(s): {what}.** "
            "Check that the source listing is complete before you merge.",
            "",
        ]
    if not plan.changes:
        head.append("No changes. The database matches the source.")
        return "\n".join(head) + "\n"
    root = _root(plan)
    groups: dict[str, list[Change]] = defaultdict(list)
    for c in plan.changes:
        groups[model_of(c, root)].append(c)
    names = sorted(groups)
    header_text = "\n".join(head) + "\n"
    for per_group in (50, 20, 10, 5, 2, 1, 0):
        body = _md_groups(groups, names, per_group, limit - len(header_text) - 200)
        if body is not None:
            return header_text + body
    raise AssertionError("unreachable: the last attempt always fits")


def _md_group(name: str, changes: list[Change], per_group: int) -> str:
    counts = defaultdict(int)
    for c in changes:
        counts[c.action] += 1
    label = ", ".join(f"{SYMBOL[a]}{counts[a]}" for a in ACTIONS if counts[a])
    lines = [f"<details><summary><code>{html.escape(name)}</code>: {len(changes)} change(s) ({label})</summary>", ""]
    lines += [_md_change(c) for c in changes[:per_group]]
    if len(changes) > per_group:
        lines.append(f"- … and {len(changes) - per_group} more")
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def _md_groups(groups: dict, names: list[str], per_group: int, budget: int) -> str | None:
    parts, used = [], 0
    for i, name in enumerate(names):
        part = _md_group(name, groups[name], per_group)
        if used + len(part) > budget:
            if per_group > 0:
                return None  # try again with fewer changes per model
            rest = names[i:]
            n = sum(len(groups[r]) for r in rest)
            parts.append(f"… and {len(rest)} more model(s) with {n} change(s); see the plan file for all of them.\n")
            break
        parts.append(part)
        used += len(part)
    return "".join(parts)


# --------------------------------------------------------------------------- history


def history_table(entries: Iterable) -> str:
    rows = [
        [e.apply_id, e.applied_at, e.applied_by, e.plan_id[:12], summary_line(e.summary), e.rolls_back or ""]
        for e in entries
    ]
    if not rows:
        return "No applies yet."
    return tabulate(rows, headers=["apply", "applied at (UTC)", "by", "plan", "changes", "rolls back"], tablefmt="simple")


def history_json(entries: Iterable) -> str:
    return json.dumps([e.to_dict() for e in entries], indent=2, sort_keys=True, ensure_ascii=False)
