"""Verifying a plan file: every change checked, ``plan_id`` and signature recomputed,
the catalogue compared; the fast path checks runs of canonical lines at once."""

from __future__ import annotations

import bisect
import functools
from itertools import repeat

from ..canonical import canonical_checked
from ..catalogue import Catalogue, default_catalogue
from ..engine.diff import ACTION_ORDER, ACTIONS, Change, summarize
from ..errors import PlanFileError, SignatureError, WrongCatalogueError
from .digest import BATCH, BodyHasher, signature_problem
from .plan import Plan
from .reader import (
    ChangeSink,
    Layout,
    NotLines,
    check_top,
    chunk_lines,
    fast_loads,
    line_chunks,
    line_layout,
    loads,
    read_whole,
    short,
)
from .rules import PlanRules, plan_rules

# --------------------------------------------------------------------------- the fast path
#
# Most lines of a large plan are creates and deletes of one kind in the canonical form
# this tool writes. A run of lines of such a shape is checked by one regular expression
# in one C call (see reconciler.planfile.rules, which derives them from the
# catalogue), instead of each line being parsed into a dict and checked field by field:
# the expression admits only lines that the general checks accept. It admits no escape
# sequence and no control character in strings, so the JSON text of a string is its
# value in quotes (and also its CSV text); integers are short enough to be in range; the
# order of the fields is the canonical one. Anything else (an escape, an id or
# created_at in an image, a line out of order, a duplicate) makes the run's match fall
# short, and the run is checked by the general path, which gives the verdict and the
# error message. A property test holds the two paths together.


def _shape(rules: PlanRules, line: str) -> tuple[int, int]:
    """(kind, action) order of a line as this tool writes it; only a guide to where a
    run of one shape ends (each line of a run is matched in full)."""
    end = line.find('"', 15)
    at = line.rfind(',"kind":"')
    none = (len(rules.kinds), len(ACTIONS))
    if end < 0 or at < 0:
        return none
    kind = line[at + 9 : line.find('"', at + 9)]
    action = line[15:end]
    if kind not in rules.kind_order or action not in ACTION_ORDER:
        return none
    return rules.kind_order[kind], ACTION_ORDER[action]


class _Mismatch(Exception):
    pass


def verify_plan(
    path: str,
    catalogue: Catalogue | None = None,
    *,
    keep_changes: bool = True,
    sink: ChangeSink | None = None,
    signing_key: str | None = None,
    require_signature: bool = False,
    _whole: bool = False,
) -> Plan:
    """Read and check a plan file, without a database, streaming its changes.

    ``catalogue`` is the one configured (default: creators): a plan made under another
    spec is refused (:class:`WrongCatalogueError`), and a plan made before catalogues is
    read as a creators plan.

    Checks: the JSON Schema (envelope by jsonschema, each change by the catalogue's
    :class:`~reconciler.catalogue.planrules.PlanRules`), keys consistent with images, values the database can hold,
    order, no duplicates, the summary, ``plan_id`` (refusing a plan edited after it
    was made) and the signature. With ``keep_changes=False`` the changes are not held
    in memory; a ``sink`` receives them batch by batch as they pass the checks (it must
    discard them if this raises).

    A file in this tool's one-change-per-line layout is hashed from its lines as they
    are (they are the canonical text itself), and runs of lines of the common shapes
    are checked without parsing them (see ``PlanRules.fast_shapes``); only when that does
    not give ``plan_id`` (a re-formatted file, say) are the changes re-encoded and
    hashed again.
    """
    layout = None if _whole else line_layout(path)
    data = None if layout is not None else read_whole(path)
    top = layout.top if layout is not None else _whole_top(data, path)
    check_top(top, path)
    catalogue = catalogue or default_catalogue()
    check_catalogue(top["target"], catalogue, path)
    rules = plan_rules(catalogue)
    plan = _plan_head(top, rules, catalogue)

    def run(raw: bool) -> str | None:
        plan.changes = []
        if sink is not None:
            sink.reset()
        v = _Verifier(plan, rules, path, sink, keep_changes, signing_key, fast=raw)
        if data is not None:
            v.whole(data["changes"])
        else:
            v.lines(layout, raw)
        return v.finish(top, raw)

    try:
        mac = run(layout is not None)
    except NotLines:
        from_end = layout.from_end
        layout, data = None, read_whole(path)
        if _whole_top(data, path) != top:
            if from_end:  # the list ended earlier than its last closing line: read it whole
                return verify_plan(path, catalogue, keep_changes=keep_changes, sink=sink, signing_key=signing_key,
                                   require_signature=require_signature, _whole=True)
            raise PlanFileError(f"plan file {path} changed while it was being read") from None
        mac = run(False)
    except _Mismatch:
        mac = run(False)
    problem = signature_problem(plan.signature, mac, signing_key, require_signature)
    if problem:
        raise SignatureError(problem)
    if keep_changes and plan.summary_override == summarize(plan.changes, rules.kinds):
        plan.summary_override = None
    return plan


def _plan_head(top: dict, rules: PlanRules, catalogue: Catalogue) -> Plan:
    """The plan as its envelope says, its changes still to be read."""
    return Plan(
        changes=[],
        source=top["source"],
        target=top["target"],
        tool_version=top["tool_version"],
        created_at=top["created_at"],
        extra={k: top[k] for k in ("kind", "rolls_back", "limits", "held") if k in top},
        plan_id=top["plan_id"],
        signature=top.get("signature"),
        kinds=rules.kinds,
        descriptor=catalogue,
    )


def check_catalogue(target: dict, catalogue: Catalogue, path: str) -> None:
    """Refuse a plan made under another catalogue spec than ``catalogue``. A plan that
    names none was made before catalogues existed: a creators plan (whose rows,
    digest and changes are what the creators catalogue makes)."""
    named = target.get("catalogue")
    if named is None:
        if catalogue.name != "creators":
            raise WrongCatalogueError(
                f"{path} was made before catalogues, for the creators catalogue, and catalogue {catalogue.name} "
                "is configured; make a new plan"
            )
        return
    if not isinstance(named, dict) or named.get("name") != catalogue.name:
        raise WrongCatalogueError(
            f"{path} was made under catalogue {short(repr(named.get('name') if isinstance(named, dict) else named), 60)}"
            f", and catalogue {catalogue.name} is configured; apply it where that catalogue is configured, or make a "
            "new plan"
        )
    if named.get("fingerprint") != catalogue.fingerprint:
        have = str(named.get("fingerprint"))[:12]
        raise WrongCatalogueError(
            f"{path} was made under another version of catalogue {catalogue.name} (fingerprint {have}, now "
            f"{catalogue.fingerprint[:12]}): its rules or columns changed since; make a new plan"
        )


def _whole_top(data: dict, path: str) -> dict:
    top = {k: v for k, v in data.items() if k != "changes"}
    if "changes" not in data:
        check_top(top, path)
        raise PlanFileError(f"{path} does not match the plan schema at (top level): 'changes' is a required property")
    if not isinstance(data["changes"], list):
        check_top(top, path)
        raise PlanFileError(f"{path} does not match the plan schema at changes: it is not of type 'array'")
    return top


class _Verifier:
    """The checks of the changes, fed in plan order: parsed changes (:meth:`changes`)
    or lines of the file (:meth:`lines`), which take the fast path where they can."""

    def __init__(self, plan: Plan, rules: PlanRules, path: str, sink, keep_changes: bool, signing_key: str | None,
                 fast: bool) -> None:
        self.plan, self.rules, self.path, self.sink, self.keep_changes = plan, rules, path, sink, keep_changes
        self.hasher = BodyHasher(signing_key if plan.signature else None)
        self.summary = {k: {a: 0 for a in ACTIONS} for k in rules.kinds}
        # Same-action duplicates break the strict order; across actions a set of key
        # hashes finds them in a fraction of the memory of the keys themselves.
        self.seen: set[int] = set()
        self.last: tuple | None = None
        self.count = 0  # changes checked so far
        # The fast path hands the sink rows, not dicts: with changes kept, or a sink
        # that takes only dicts, every change is parsed.
        self.fast = fast and not keep_changes and (sink is None or hasattr(sink, "add_rows"))

    # ---- input

    def whole(self, changes: list) -> None:
        for i in range(0, len(changes), BATCH):
            objs = changes[i : i + BATCH]
            self.changes(objs, None)
            self.hasher.joined(canonical_checked(objs)[1:-1], len(objs))

    def lines(self, layout: Layout, raw: bool) -> None:
        """The file's change lines; hashed as they are with ``raw``, else re-encoded."""
        chunks = line_chunks(self.path, layout)
        chunk = next(chunks, None)
        while chunk is not None:
            following = next(chunks, None)
            text, lines, body = chunk_lines(chunk, following is None, self.path)
            i, n, pos = 0, len(lines), 0
            while i < n:
                j = min(n, i + BATCH)
                shape = _shape(self.rules, lines[i])
                if self.fast:
                    # The run of lines of this shape (the file is ordered by kind and action).
                    j = bisect.bisect_right(lines, shape, i, j, key=functools.partial(_shape, self.rules))
                run = lines[i:j]
                end = pos + sum(map(len, run)) + len(run)  # where the run's text ends in the chunk's
                if not (raw and self._fast(shape, run, text, pos, end)):
                    self._slow(run, raw)
                i, pos = j, end
            if raw:
                self.hasher.joined_bytes(body, n)
            chunk = following

    def _slow(self, lines: list[str], raw: bool) -> None:
        for k, line in enumerate(lines):
            if not line.startswith("    {"):
                raise NotLines()
            if not line.endswith("},"):
                raise PlanFileError(f"plan file {self.path} is not valid JSON (change {self.count + k} is not one complete line)")
        bodies = [line[4:-1] for line in lines]
        objs = fast_loads("[" + ",".join(bodies) + "]", self.path)
        if len(objs) != len(bodies):  # a line holding two changes
            raise PlanFileError(f"plan file {self.path} is not valid JSON (a line holds more than one change)")
        self.changes(objs, bodies)
        if not raw:
            # One C call encodes the batch: "[a,b,…]" is exactly the canonical changes, joined.
            self.hasher.joined(canonical_checked(objs)[1:-1], len(objs))

    def _fast(self, shape: tuple[int, int], lines: list[str], text: str, pos: int, end: int) -> bool:
        """Check a run of lines of one shape (``text[pos:end]``) by its pattern; False
        (and nothing recorded) when any line needs the general path."""
        rules = self.rules
        if shape[0] == len(rules.kinds) or not self.fast:
            return False
        kind, action = rules.kinds[shape[0]], ACTIONS[shape[1]]
        pattern = rules.fast_shapes.get((kind, action))
        if pattern is None:
            return False
        rows = pattern.findall(text, pos, end)
        n = len(rows)
        if n != len(lines):
            return False
        at = rules.fast_key[kind]
        keys = [row[at][1:-1] for row in rows]
        if self.last is not None and (*shape, keys[0]) <= self.last:
            return False
        if not all(map(str.__lt__, keys, keys[1:])):
            return False
        new = set(map(hash, zip(repeat(kind), keys)))
        if len(new) != n or not self.seen.isdisjoint(new):
            return False
        self.seen |= new
        self.last = (*shape, keys[-1])
        self.count += n
        self.summary[kind][action] += n
        if self.sink is not None:
            self.sink.add_rows(kind, rows)
        return True

    def changes(self, objs: list, raws: list[str] | None) -> None:
        """Parsed changes (with their lines as written, or None): every rule, one by one."""
        path, seen, summary = self.path, self.seen, self.summary
        check, kind_order = self.rules.check, self.rules.kind_order
        last = self.last
        i = first = self.count
        for c in objs:
            problem = check(c)
            if problem and raws is not None:
                # Parsed by orjson: judge the line as json reads it (the same but for
                # integers beyond 64 bits), for json's verdict and message.
                c = objs[i - first] = loads(raws[i - first], path)
                problem = check(c)
            if problem:
                raise PlanFileError(f"{path} does not match the plan schema at changes/{i}: {problem}")
            kind, action, ckey = c["kind"], c["action"], c["key"]
            ident = hash((kind, ckey))
            if ident in seen:
                raise PlanFileError(f"{path} has two changes for {kind} {ckey!r:.200} (changes/{i})")
            seen.add(ident)
            if action == "move":
                # The old key is taken too: no other change may touch it.
                ident = hash((kind, c["from"]))
                if ident in seen:
                    raise PlanFileError(f"{path} has two changes for {kind} {c['from']!r:.200} (changes/{i})")
                seen.add(ident)
            order = (kind_order[kind], ACTION_ORDER[action], ckey)
            if last is not None and order <= last:
                if order == last:
                    raise PlanFileError(f"{path} has two changes for {kind} {ckey!r:.200} (changes/{i})")
                raise PlanFileError(
                    f"{path} lists its changes out of order at changes/{i}; plans are ordered by kind, action, key"
                )
            last = order
            summary[kind][action] += 1
            if self.keep_changes:
                self.plan.changes.append(Change.from_dict(c))
            i += 1
        self.last, self.count = last, i
        if self.sink is not None:
            self.sink.add_batch(objs)

    # ---- end

    def finish(self, top: dict, raw: bool) -> str | None:
        path, plan = self.path, self.plan
        # Plans made before moves existed have no "move" counts: read as 0.
        if self.summary != {k: {"move": 0, **v} for k, v in top["summary"].items()}:
            raise PlanFileError(f"{path}: the summary does not count the changes it lists (edited by hand?); make a new plan")
        plan.summary_override = top["summary"]
        plan_id, mac = self.hasher.finish(plan.envelope())
        if plan_id != plan.plan_id:
            if raw:
                raise _Mismatch()
            raise PlanFileError(f"{path}: plan_id does not match the content; the plan was edited after it was made. Make a new plan")
        return mac


def load_plan(path: str, catalogue: Catalogue | None = None) -> Plan:
    """Read, validate and verify a plan file (no database needed); keeps the changes.
    ``catalogue``: the one configured (default: creators)."""
    return verify_plan(path, catalogue)
