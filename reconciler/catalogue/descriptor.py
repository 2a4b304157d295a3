"""The compiled catalogue: one descriptor that every part of the tool reads. Pure: no I/O.

A spec (YAML, see ``docs/catalogues.md``) says which keys make which rows of which
tables; :func:`compile_spec` checks it whole — every problem at once, each at its path
(``catalogue.entities.image.parent.entity: unknown entity 'variant'``) — and gives a
:class:`Catalogue`: the entities from the top down, the rules in order, each managed
column as a template or an aggregate, and the fingerprint plans record. The engine's
columns, the plan's checks, the SQL that reads and writes the tables, the digest and
the audit images are all derived from it (:mod:`reconciler.catalogue.sql`).

Vocabulary:

- an **entity** is a table's rows: a natural *key* (columns from templates over a
  rule's captures), an optional *parent* (an entity, and the column holding its id),
  whether the tool **owns** the rows (writes them) or only looks them up;
- a row's **plan key** names it in plans: its key values joined by ``/``, after its
  parent's plan key when the key is unique within its parent (a post ``M/P``), alone
  when it is unique on its own (a media item's ``s3_key``);
- a **rule** maps a key to a row of an entity, to a **facet** of one (a value an object
  gives a row without a row of its own: a model's icon), or to a skip reason;
- a **managed column** is a template (``{url}``, ``{post}``) or an aggregate over the
  row's facets and descendants (``count``, ``first``, ``list``, ``object``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import SpecError
from .patterns import ATTRIBUTES, Pattern, parse

# Skip reasons the tool gives itself, whatever the rules say.
BUILTIN_REASONS = ("folder_marker", "empty_segment", "outside_root", "invalid_key", "invalid_utf8_key",
                   "unknown_parent", "unmatched")
TYPES = ("text", "integer", "bigint", "boolean", "json", "jsonb", "timestamp", "timestamptz")
# Families of types that hold the same values: a declared column fits a database column of its family.
FAMILIES = {"text": "text", "integer": "integer", "bigint": "integer", "boolean": "boolean", "json": "json",
            "jsonb": "json", "timestamp": "timestamp", "timestamptz": "timestamp"}
_TEMPLATE_PART = re.compile(r"\{([^{}]*)\}")


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Template:
    """Text with ``{name}`` placeholders: captures of the rule, or object attributes."""

    text: str
    parts: tuple  # literal strings and ("name",) tuples, in order

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p[0] for p in self.parts if isinstance(p, tuple))

    @property
    def single(self) -> str | None:
        """The one name when the template is exactly ``{name}``."""
        return self.parts[0][0] if len(self.parts) == 1 and isinstance(self.parts[0], tuple) else None

    def render(self, values: dict) -> Any:
        if self.single is not None:
            return values[self.single]
        return "".join(p if isinstance(p, str) else str(values[p[0]]) for p in self.parts)


def template(text: str, where: str) -> Template:
    parts: list = []
    pos = 0
    for m in _TEMPLATE_PART.finditer(text):
        if m.start() > pos:
            parts.append(text[pos : m.start()])
        name = m.group(1)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise SpecError(where, f"{text!r}: {{{name}}} is not a name")
        parts.append((name,))
        pos = m.end()
    if pos < len(text):
        parts.append(text[pos:])
    if any(isinstance(p, str) and ("{" in p or "}" in p) for p in parts):
        raise SpecError(where, f"{text!r}: unbalanced braces")
    return Template(text, tuple(parts))


@dataclass(frozen=True)
class Source:
    """Where an aggregate takes its values: the row's facets named ``facet``, or the
    rows of the descendant entity ``rows`` (of the given classes); ``value`` is read
    from the first object of each (by key)."""

    facet: str | None
    rows: str | None
    classes: tuple[str, ...]
    value: Template


@dataclass(frozen=True)
class Value:
    """A managed column's value: exactly one of ``template``, ``count`` (an entity),
    ``first`` (sources, in order of preference), ``list`` (a source), ``object``
    (named values)."""

    type: str
    template: Template | None = None
    count: str | None = None
    first: tuple[Source, ...] = ()
    list: Source | None = None
    object: tuple[tuple[str, "Value"], ...] = ()

    @property
    def is_json(self) -> bool:
        return FAMILIES[self.type] == "json"

    def sources(self) -> list[Source]:
        out = list(self.first) + ([self.list] if self.list else [])
        for _, v in self.object:
            out += v.sources()
        return out

    def counts(self) -> list[str]:
        out = [self.count] if self.count else []
        for _, v in self.object:
            out += v.counts()
        return out


@dataclass(frozen=True)
class Column:
    name: str
    value: Value

    @property
    def type(self) -> str:
        return self.value.type


# --------------------------------------------------------------------------- entities and rules


@dataclass(frozen=True)
class Entity:
    name: str
    table: str
    label: str
    plural: str
    owned: bool
    id_column: str
    key: tuple[tuple[str, Template], ...]  # (column, template), in order
    parent: str | None
    fk: str | None  # the column holding the parent's id
    unique: str  # "parent" (key unique within its parent) or "global"
    columns: tuple[Column, ...]
    platform_columns: tuple[tuple[str, str], ...]  # (column, SQL type and default), for init and restores
    synced_at: str | None
    moves: str  # "content", "children", "none"
    depth: int = 0
    ancestors: tuple[str, ...] = ()  # parent first, top last
    facets: tuple[str, ...] = ()

    @property
    def key_columns(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.key)

    @property
    def key_is_plan_key(self) -> bool:
        """Whether its one key column holds its whole plan key (a media item's
        ``s3_key``, a model's ``folder_name``): a row read or compared needs it once."""
        return len(self.key) == 1 and self.unique == "global"

    @property
    def managed(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def parent_field(self) -> str | None:
        """The name of the field that holds the parent's plan key in plan images (the
        parent entity's name: a post's ``model``, a media item's ``post``)."""
        return self.parent

    @property
    def fields(self) -> tuple[str, ...]:
        """Every field of a full image, as plans write them: key columns, the parent,
        the managed columns."""
        return self.key_columns + ((self.parent,) if self.parent else ()) + self.managed

    @property
    def identity(self) -> tuple[str, ...]:
        """The fields that name a row (always in a move): key columns and parent."""
        return self.key_columns + ((self.parent,) if self.parent else ())

    @property
    def updatable(self) -> tuple[str, ...]:
        """What an update may change: the managed columns, and the parent of a row whose
        key is unique on its own (a media item filed under another post)."""
        return ((self.parent,) if self.parent and self.unique == "global" else ()) + self.managed

    @property
    def restore_fields(self) -> tuple[str, ...]:
        """What a rollback's create brings back besides the managed values: the id and
        the platform's columns (the synced-at stamp is set anew)."""
        return (self.id_column,) + tuple(c for c, _ in self.platform_columns if c != self.synced_at)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


@dataclass(frozen=True)
class Rule:
    index: int
    name: str
    pattern: Pattern
    action: str  # "row", "facet", "skip"
    entity: str | None = None  # the row's or the facet's entity
    facet: str | None = None
    reason: str | None = None

    @property
    def target(self) -> str:
        if self.action == "skip":
            return f"skip: {self.reason}"
        return f"{self.action}: {self.entity}" + (f".{self.facet}" if self.facet else "")


@dataclass(frozen=True, eq=False)
class Catalogue:
    """A compiled catalogue spec. Entities are in order from the top down (a parent
    before its children, as the spec lists them otherwise)."""

    name: str
    description: str
    classes: dict  # name -> frozenset of lower-case extensions, in declaration order
    entities: tuple[Entity, ...]
    rules: tuple[Rule, ...]
    spec: dict = field(repr=False)  # the normalized spec (what the fingerprint hashes)
    fingerprint: str = ""
    source: dict = field(default_factory=dict, repr=False)  # the spec as written (resolved): what to copy and edit

    def __eq__(self, other) -> bool:
        return isinstance(other, Catalogue) and other.fingerprint == self.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def entity(self, name: str) -> Entity:
        for e in self.entities:
            if e.name == name:
                return e
        raise KeyError(name)

    @property
    def top(self) -> Entity:
        return self.entities[0]

    @property
    def owned(self) -> tuple[Entity, ...]:
        return tuple(e for e in self.entities if e.owned)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The entities plans change, in plan order."""
        return tuple(e.name for e in self.owned)

    def children(self, name: str) -> tuple[Entity, ...]:
        return tuple(e for e in self.entities if e.parent == name)

    def descendants(self, name: str) -> tuple[Entity, ...]:
        return tuple(e for e in self.entities if name in e.ancestors)

    def chain(self, name: str) -> tuple[Entity, ...]:
        """The entity and its ancestors, from the top down."""
        e = self.entity(name)
        return tuple(self.entity(a) for a in reversed(e.ancestors)) + (e,)

    def rules_implying(self, name: str) -> tuple[Rule, ...]:
        """The rules whose objects make or imply a row of the entity: rows and facets of
        it and of its descendants."""
        below = {name} | {e.name for e in self.descendants(name)}
        return tuple(r for r in self.rules if r.action != "skip" and r.entity in below)

    def scope_names(self, name: str) -> tuple[str, ...]:
        """The captures that make a plan key of ``name``."""
        out: list[str] = []
        for e in self.chain(name) if self.entity(name).unique == "parent" else (self.entity(name),):
            for _, t in e.key:
                out += t.names
        return tuple(out)

    @property
    def short_fingerprint(self) -> str:
        return self.fingerprint[:12]

    def describe(self) -> dict:
        """What a plan records of its catalogue."""
        return {"name": self.name, "fingerprint": self.fingerprint}


# --------------------------------------------------------------------------- compiling


class _Problems:
    def __init__(self) -> None:
        self.found: list[SpecError] = []

    def add(self, where: str, message: str) -> None:
        self.found.append(SpecError(where, message))

    def attempt(self, fn, *args):
        try:
            return fn(*args)
        except SpecError as e:
            self.found.append(e)
            return None


def fingerprint_of(spec: dict) -> str:
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def normalize(spec: dict) -> dict:
    """The spec as data whose order matters only where the spec's does: mappings whose
    order means something (entities, keys, columns, classes) become lists of pairs, so
    that the fingerprint is the same for the same catalogue however its YAML is laid out."""

    def value(v):
        if isinstance(v, str):
            return {"template": v}
        out = {}
        for k, x in v.items():
            if k == "object":
                out[k] = [[name, value(sub)] for name, sub in x.items()]
            elif k == "first":
                out[k] = x if isinstance(x, list) else [x]
            else:
                out[k] = x
        return out

    entities = []
    for name, e in spec["entities"].items():
        entity = {k: v for k, v in e.items() if k not in ("key", "columns", "platform_columns")}
        entity["name"] = name
        entity["key"] = [[c, t] for c, t in e["key"].items()]
        entity["columns"] = [[c, value(v)] for c, v in (e.get("columns") or {}).items()]
        entity["platform_columns"] = [[c, t] for c, t in (e.get("platform_columns") or {}).items()]
        entities.append(entity)
    return {
        "name": spec["name"],
        "classes": [[c, [x.lower() for x in exts]] for c, exts in (spec.get("classes") or {}).items()],
        "entities": entities,
        "rules": [dict(r) for r in spec["rules"]],
    }


def compile_spec(spec: dict, where: str = "catalogue") -> Catalogue:
    """Check a spec (already valid against ``catalogue.schema.json``) and compile it.
    Raises :class:`SpecErrors` with every problem found."""
    problems = _Problems()
    classes = {c: frozenset(x.lower() for x in exts) for c, exts in (spec.get("classes") or {}).items()}
    raw = spec["entities"]

    names = list(raw)
    ancestors = _entity_tree(raw, problems, where)
    broken = bool(problems.found)  # the tree: entities are checked only once it holds
    order = sorted(names, key=lambda n: (len(ancestors[n]), names.index(n)))

    # Rules first: entities' checks need to know which captures reach them.
    rules, facets = _rules(spec["rules"], raw, classes, problems, where)

    if broken:
        raise SpecErrors(problems.found)
    entities: dict[str, Entity] = {}
    for n in order:
        e = problems.attempt(_entity, n, raw[n], ancestors[n], tuple(facets[n]), raw, classes, f"{where}.entities.{n}")
        if e is not None:
            entities[n] = e
    if problems.found:
        raise SpecErrors(problems.found)
    catalogue = Catalogue(spec["name"], spec.get("description", ""), classes, tuple(entities[n] for n in order),
                          tuple(rules), spec=normalize(spec))
    _check_rules_reach(catalogue, problems, where)
    _check_columns(catalogue, problems, where)
    if problems.found:
        raise SpecErrors(problems.found)
    return Catalogue(catalogue.name, catalogue.description, classes, catalogue.entities, catalogue.rules,
                     spec=catalogue.spec, fingerprint=fingerprint_of(catalogue.spec), source=spec)


def _entity_tree(raw: dict, problems: "_Problems", where: str) -> dict[str, tuple[str, ...]]:
    """Each entity's ancestors, nearest first, once the tree is checked: one top,
    parents that exist, no cycles."""
    names = list(raw)
    parents = {n: (raw[n].get("parent") or {}).get("entity") for n in names}
    for n, p in parents.items():
        if p is not None and p not in raw:
            problems.add(f"{where}.entities.{n}.parent.entity", f"unknown entity {p!r} (entities: {', '.join(names)})")
        elif p == n:
            problems.add(f"{where}.entities.{n}.parent.entity", "an entity cannot be its own parent")
    tops = [n for n in names if parents[n] is None]
    if len(tops) != 1:
        problems.add(f"{where}.entities", f"exactly one entity has no parent (the top); found {len(tops)}: "
                     f"{', '.join(tops) or 'none'}")
    ancestors: dict[str, tuple[str, ...]] = {}
    for n in names:
        chain, p = [], parents[n]
        while p is not None and p in raw and p not in chain and p != n:
            chain.append(p)
            p = parents[p]
        if p == n or (p is not None and p in chain):
            problems.add(f"{where}.entities.{n}.parent.entity", "parents form a cycle")
        ancestors[n] = tuple(chain)
    return ancestors


def _rules(specs: list, raw: dict, classes: dict, problems: "_Problems", where: str
           ) -> tuple[list[Rule], dict[str, list[str]]]:
    """The rules, compiled, and the facets they give each entity."""
    names = list(raw)
    rules: list[Rule] = []
    facets: dict[str, list[str]] = {n: [] for n in names}
    for i, r in enumerate(specs):
        at = f"{where}.rules[{i}]"
        actions = [a for a in ("row", "facet", "skip") if a in r]
        if len(actions) != 1:
            problems.add(at, "a rule says exactly one of row, facet, skip")
            continue
        pattern = problems.attempt(parse, r["match"], classes, f"{at}.match")
        if pattern is None:
            continue
        action = actions[0]
        name = r.get("name") or f"rule-{i + 1}"
        if action == "skip":
            rules.append(Rule(i, name, pattern, "skip", reason=r["skip"]))
            continue
        entity, _, facet = r[action].partition(".")
        if action == "row" and facet:
            problems.add(f"{at}.row", f"{r['row']!r}: a row rule names an entity; a facet rule says facet: ENTITY.NAME")
            continue
        if entity not in raw:
            problems.add(f"{at}.{action}", f"unknown entity {entity!r} (entities: {', '.join(names)})")
            continue
        if not raw[entity].get("owned", True):
            problems.add(f"{at}.{action}", f"{entity!r} is not owned: the tool never writes its rows; rules make "
                         "rows and facets of owned entities, whose parents may be the platform's")
            continue
        if action == "facet" and facet not in facets[entity]:
            facets[entity].append(facet)
        rules.append(Rule(i, name, pattern, action, entity=entity, facet=facet or None))
    return rules, facets



class SpecErrors(Exception):
    def __init__(self, errors: list[SpecError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


def _entity(name, raw: dict, ancestors, facets, entities: dict, classes: dict, at: str) -> Entity:
    owned = raw.get("owned", True)
    parent = (raw.get("parent") or {}).get("entity")
    if not owned and parent and entities[parent].get("owned", True):
        raise SpecError(f"{at}.owned", f"the platform's rows are under the platform's rows: {name!r} is not owned, "
                        f"so its parent {parent!r} cannot be either")
    if not owned and (raw.get("columns") or raw.get("moves") not in (None, "none") or raw.get("synced_at")):
        raise SpecError(at, "an entity that is not owned has no managed columns, moves or synced_at: the tool "
                        "only looks its rows up")
    unique = raw.get("unique") or ("parent" if parent else "global")
    if unique == "parent" and not parent:
        raise SpecError(f"{at}.unique", "'parent' needs a parent; the top entity's key is unique on its own")
    key = []
    for col, text in raw["key"].items():
        t = template(text, f"{at}.key.{col}")
        attrs = [x for x in t.names if x in ATTRIBUTES]
        if attrs and unique == "parent":
            raise SpecError(f"{at}.key.{col}", f"{text!r}: a key unique within its parent is made of captures "
                            f"(folder names), not object attributes like {{{attrs[0]}}}")
        key.append((col, t))
    columns = []
    for col, value in (raw.get("columns") or {}).items():
        columns.append(Column(col, _value(value, f"{at}.columns.{col}", classes)))
    fk = (raw.get("parent") or {}).get("column")
    taken = [c for c, _ in key] + ([fk] if fk else []) + [parent or ""]
    for c in columns:
        if c.name in taken:
            raise SpecError(f"{at}.columns.{c.name}", "a managed column cannot also be a key column, the parent's "
                            "column, or named as the parent entity")
    platform = tuple((raw.get("platform_columns") or {}).items())
    for c, _ in platform:
        if c in taken or c in [x.name for x in columns]:
            raise SpecError(f"{at}.platform_columns.{c}", "a platform column is neither a key nor a managed column")
    synced = raw.get("synced_at")
    if synced and synced not in [c for c, _ in platform]:
        raise SpecError(f"{at}.synced_at", f"{synced!r} must be one of the platform_columns (the tool stamps it, "
                        "the platform owns it)")
    moves = raw.get("moves") or "none"
    return Entity(
        name=name, table=raw["table"], label=raw.get("label") or name.replace("_", " ").capitalize(),
        plural=raw.get("plural") or (raw.get("label") or name.replace("_", " ").capitalize()) + "s",
        owned=owned, id_column=raw.get("id") or "id", key=tuple(key), parent=parent, fk=fk, unique=unique,
        columns=tuple(columns), platform_columns=platform, synced_at=synced, moves=moves,
        depth=len(ancestors), ancestors=tuple(ancestors), facets=facets,
    )


def _source(raw: dict, at: str, classes: dict) -> Source:
    if ("facet" in raw) == ("rows" in raw):
        raise SpecError(at, "a source names either facet: NAME or rows: ENTITY")
    cls = raw.get("class") or ()
    cls = (cls,) if isinstance(cls, str) else tuple(cls)
    for c in cls:
        if c not in classes:
            raise SpecError(f"{at}.class", f"unknown class {c!r} (classes: {', '.join(classes) or 'none'})")
    return Source(raw.get("facet"), raw.get("rows"), cls, template(raw.get("value") or "{url}", f"{at}.value"))


def _value(raw, at: str, classes: dict) -> Value:
    if isinstance(raw, str):
        raw = {"template": raw}
    kinds = [k for k in ("template", "count", "first", "list", "object") if k in raw]
    if len(kinds) != 1:
        raise SpecError(at, "a value is exactly one of a template, count, first, list, object")
    kind = kinds[0]
    declared = raw.get("type")
    if kind == "template":
        t = template(raw["template"], at)
        inferred = {"size": "bigint", "last_modified": "timestamptz"}.get(t.single or "", "text")
        return Value(declared or inferred, template=t)
    if kind == "count":
        return Value(declared or "bigint", count=raw["count"])
    if kind == "first":
        items = raw["first"] if isinstance(raw["first"], list) else [raw["first"]]
        return Value(declared or "text", first=tuple(_source(s, f"{at}.first[{i}]", classes) for i, s in enumerate(items)))
    if kind == "list":
        return Value(declared or "jsonb", list=_source(raw["list"], f"{at}.list", classes))
    members = tuple((k, _value(v, f"{at}.object.{k}", classes)) for k, v in raw["object"].items())
    return Value(declared or "jsonb", object=members)


def _captures_reaching(catalogue: Catalogue, entity: str) -> list[tuple[Rule, set[str]]]:
    return [(r, set(r.pattern.names)) for r in catalogue.rules_implying(entity)]


def _check_rules_reach(catalogue: Catalogue, problems: _Problems, where: str) -> None:
    """Every rule that makes or implies a row gives every capture the row's key (and its
    ancestors' keys, and its templates) name."""
    for e in catalogue.entities:
        needed = [(f"key.{c}", t) for c, t in e.key] + [
            (f"columns.{c.name}", c.value.template) for c in e.columns if c.value.template is not None
        ]
        for r, captured in _captures_reaching(catalogue, e.name):
            direct = r.entity == e.name
            for what, t in needed:
                missing = [x for x in t.names if x not in captured and x not in ATTRIBUTES]
                if missing:
                    problems.add(f"{where}.rules[{r.index}]", f"{r.pattern.text!r} makes {e.name} rows but captures "
                                 f"no {{{missing[0]}}}, which {e.name}.{what} needs")
                    break
                attrs = [x for x in t.names if x in ATTRIBUTES]
                if attrs and not direct and what.startswith("key"):
                    problems.add(f"{where}.entities.{e.name}.{what}", f"{{{attrs[0]}}} names an object, but "
                                 f"{e.name} rows are also implied by rule {r.name!r} of another entity")
                    break
    if not any(r.action == "row" for r in catalogue.rules):
        problems.add(f"{where}.rules", "no rule makes a row (row: ENTITY)")


def _check_columns(catalogue: Catalogue, problems: _Problems, where: str) -> None:
    for e in catalogue.entities:
        below = {d.name for d in catalogue.descendants(e.name)}
        for c in e.columns:
            at = f"{where}.entities.{e.name}.columns.{c.name}"
            for name in c.value.counts():
                if name not in below:
                    problems.add(at, f"count: {name!r} is not an entity below {e.name} "
                                 f"({', '.join(sorted(below)) or 'it has none'})")
            for s in c.value.sources():
                if s.facet is not None and s.facet not in e.facets:
                    problems.add(at, f"facet {s.facet!r}: no rule makes facet {e.name}.{s.facet} "
                                 f"(facets of {e.name}: {', '.join(e.facets) or 'none'})")
                if s.rows is not None and s.rows not in below:
                    problems.add(at, f"rows: {s.rows!r} is not an entity below {e.name} "
                                 f"({', '.join(sorted(below)) or 'it has none'})")
            if c.value.type not in TYPES:
                problems.add(f"{at}.type", f"unknown type {c.value.type!r}")
