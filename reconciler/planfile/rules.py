"""The rules a plan's changes follow under a catalogue, derived from its descriptor:
the fields of each kind's images and their types, the checks ``validate`` and ``apply``
run on every change (:meth:`PlanRules.check`), the plan's JSON Schema (:meth:`PlanRules.schema`),
and the fast path's patterns (:attr:`PlanRules.fast_shapes`). Pure: no I/O.

An image names its row by its key columns and its parent's plan key (under the parent
entity's name), then carries the managed columns; a create made by a rollback may also
carry the row's id and the platform's columns, to restore them. An update carries the
fields that change; a move, the identity and the fields that change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from ..catalogue.descriptor import Catalogue, Entity

ACTIONS = ("create", "update", "move", "delete")
_INT_MAX = {"integer": 2**31 - 1, "bigint": 2**63 - 1}
_ATTR_NON_NULL = ("url", "key", "rel")


@dataclass(frozen=True)
class FieldRule:
    name: str
    types: tuple  # Python types of the value (bool never counts as int)
    non_empty: bool = False
    min_length: int = 0
    enum: tuple[str, ...] = ()
    int_max: int | None = None
    min_int: int = 0
    members: dict | None = None  # an object's members: name -> FieldRule

    @property
    def nullable(self) -> bool:
        return type(None) in self.types

    def schema(self) -> dict:
        if self.enum:
            return {"enum": list(self.enum)}
        names = {str: "string", int: "integer", dict: "object", list: "array", bool: "boolean", type(None): "null"}
        if self.types == (object,):
            return {}
        types = [names[t] for t in self.types]
        out: dict = {"type": types[0] if len(types) == 1 else types}
        if self.non_empty or self.min_length:
            out["minLength"] = max(1 if self.non_empty else 0, self.min_length)
        if self.name == "id":
            out["minimum"] = 1
        return out


def _parts(catalogue: Catalogue, e: Entity) -> int:
    """How many ``/``-separated names make an entity's plan key."""
    own = len(e.key_columns)
    if e.unique == "parent" and e.parent:
        return _parts(catalogue, catalogue.entity(e.parent)) + own
    return own


def _free_form(e: Entity) -> bool:
    """A key made of the object itself (``{key}``): any text at all."""
    return any(n in ("key", "rel") for _, t in e.key for n in t.names)


def _value_rule(name: str, value, column_type: str | None = None) -> FieldRule:
    if value.template is not None:
        single = value.template.single
        if single == "class":
            return FieldRule(name, (str,))  # narrowed to the class names by PlanRules
        if single == "size" or value.type in ("integer", "bigint"):
            return FieldRule(name, (int, type(None)), int_max=_INT_MAX.get(value.type, 2**63 - 1))
        if single in _ATTR_NON_NULL:
            return FieldRule(name, (str,))
        return FieldRule(name, (str, type(None)))
    if value.count is not None:
        return FieldRule(name, (int, type(None)), int_max=_INT_MAX.get(value.type, 2**63 - 1))
    if value.object:
        members = {n: _value_rule(n, v) for n, v in value.object}
        return FieldRule(name, (dict, type(None)), members=members)
    if value.list is not None:
        return FieldRule(name, (list, type(None)))
    source = value.first[0]
    if source.value.single == "size":
        return FieldRule(name, (int, type(None)), int_max=2**63 - 1)
    return FieldRule(name, (str, type(None)))


def _platform_rule(name: str, definition: str) -> FieldRule:
    t = definition.strip().lower()
    if t.startswith(("integer", "int", "smallint", "bigint", "serial")):
        return FieldRule(name, (int, type(None)), int_max=_INT_MAX["bigint" if t.startswith("bigint") else "integer"],
                         min_int=-(2**63 if t.startswith("bigint") else 2**31))
    if t.startswith("boolean") or t.startswith("bool"):
        return FieldRule(name, (bool, type(None)))
    if t.startswith(("json", "jsonb")):
        return FieldRule(name, (object,))
    return FieldRule(name, (str, type(None)))


@dataclass
class KindRules:
    entity: Entity
    fields: dict[str, FieldRule]  # every field an image may hold (restore fields included)
    image: tuple[str, ...]  # required in a full image
    updatable: frozenset[str]
    movable: frozenset[str]
    identity: tuple[str, ...]
    restore: tuple[str, ...]
    parent_parts: int  # names in the parent's plan key (0: no parent)
    key_parts: int
    key_free: bool  # the key is the object's own (any text)


@dataclass
class PlanRules:
    """The plan's rules under one catalogue."""

    catalogue: Catalogue
    kinds: tuple[str, ...]
    kind_order: dict[str, int]
    rules: dict[str, KindRules]
    fast_shapes: dict = field(default_factory=dict)  # (kind, action) -> compiled pattern
    fast_columns: dict = field(default_factory=dict)  # kind -> the JSON texts a fast row holds, in order
    fast_key: dict = field(default_factory=dict)  # kind -> where a fast row holds the change's key

    # ---- checks (the JSON Schema's rules, in plain Python; a property test holds them together)

    def _check_fields(self, kind: str, image: dict, allowed) -> str | None:
        fields = self.rules[kind].fields
        for name, value in image.items():
            if name not in allowed:
                return f"{name!r} is not a field of a {kind} here"
            rule = fields[name]
            if rule.types != (object,) and ((type(value) is bool and bool not in rule.types)
                                            or not isinstance(value, rule.types)):
                return f"{name!r} has the wrong type"
            if rule.non_empty and value == "":
                return f"{name!r} is empty"
            if rule.min_length and isinstance(value, str) and len(value) < rule.min_length:
                return f"{name!r} is too short"
            if rule.enum and value not in rule.enum:
                return f"{name!r} is not one of {', '.join(repr(x) for x in rule.enum)}"
            if name == "id" and value < 1:
                return "'id' is less than the minimum of 1"
        return None

    def check_change(self, c) -> str | None:
        """The plan schema's rules for one change; None when valid. Integers must be
        JSON integers, where the schema also accepts whole floats such as ``3.0``."""
        if not isinstance(c, dict):
            return "a change is not an object"
        top = _MOVE_TOP if c.get("action") == "move" else _TOP
        if set(c) != top:
            extra = set(c) - top
            if extra:
                return f"unknown field {sorted(extra)[0]!r}"
            return "a change lacks one of action, kind, key, before, after" + (", from" if top is _MOVE_TOP else "")
        action, kind, key, before, after = c["action"], c["kind"], c["key"], c["before"], c["after"]
        if action not in ACTIONS:
            return f"unknown action {action!r:.60}"
        if type(kind) is not str or kind not in self.kind_order:  # a list or dict is unhashable
            return f"unknown kind {kind!r:.60}"
        if type(key) is not str or not key:
            return "'key' must be a non-empty string"
        for name, value in (("before", before), ("after", after)):
            if value is not None and type(value) is not dict:
                return f"{name!r} must be an object or null"
        k = self.rules[kind]
        if action == "create":
            if before is not None or after is None:
                return "a create has 'before' null and 'after' an object"
            images = [after]
        elif action == "delete":
            if after is not None or before is None:
                return "a delete has 'before' an object and 'after' null"
            images = [before]
        else:  # an update names the fields that change; a move also its key columns and parent
            if action == "move" and (type(c["from"]) is not str or not c["from"]):
                return "'from' must be a non-empty string"
            if before is None or after is None:
                return f"{'a move' if action == 'move' else 'an update'} has 'before' and 'after' objects"
            required, allowed = (k.identity, k.movable) if action == "move" else ((), k.updatable)
            for image in (before, after):
                if not image and action == "update":
                    return "an update changes at least one field"
                missing = set(required) - set(image)
                if missing:
                    return f"{sorted(missing)[0]!r} is a required property"
                problem = self._check_fields(kind, image, allowed)
                if problem:
                    return problem
            return None
        for image in images:
            missing = set(k.image) - set(image)
            if missing:
                return f"{sorted(missing)[0]!r} is a required property"
            problem = self._check_fields(kind, image, k.fields)
            if problem:
                return problem
        return None

    def key_ok(self, kind: str, key: str) -> bool:
        """A plan key of the kind's shape: a row keyed within its parent has its parents'
        names before its own (``M/P``); one keyed by captures alone holds no ``/``."""
        k = self.rules[kind]
        if k.key_free:
            return True
        if k.key_parts == 1:
            return "/" not in key
        return key.strip("/").count("/") >= k.key_parts - 1 and "/" in key.strip("/")

    def _parent_ok(self, kind: str, value: str) -> bool:
        parent = self.rules[kind].entity.parent
        return self.key_ok(parent, value) if parent in self.rules else True

    def check_identity(self, c: dict) -> str | None:
        """A change's images must name the row its key names (beyond the schema)."""
        kind, key = c["kind"], c["key"]
        k = self.rules[kind]
        e = k.entity
        if not self.key_ok(kind, key):
            return f"has {kind} key {key!r}; {self._key_shape(kind)}"
        if c["action"] == "move":
            return self._check_move_identity(c)
        for image in (c["before"], c["after"]):
            if not image or c["action"] == "update":
                continue
            named = self._named(e, image)
            if named is None or named != key:
                if e.unique == "parent" and e.parent:
                    return f"names {self._naming(e)} that do not make its key {key!r:.200}"
                return f"names {self._naming(e)} {named!r:.200} under key {key!r:.200}"
        if e.parent and e.unique == "global":
            for image in (c["before"], c["after"]):
                if image and e.parent in image and not self._parent_ok(kind, image[e.parent]):
                    return f"names {e.parent} {image[e.parent]!r}; {self._key_shape(e.parent)}"
        return None

    def _key_shape(self, kind: str) -> str:
        k = self.rules[kind]
        if k.key_parts == 1:
            return f"a {kind} key holds no '/'"
        chain = [x.name.upper() for x in self.catalogue.chain(kind) if x.unique == "parent" or x.parent is None]
        return f"a {kind} key is {'/'.join(chain)}"

    def _named(self, e: Entity, image: dict) -> str | None:
        """The plan key an image names, or None when its parent is malformed."""
        own = "/".join(str(image[c]) for c in e.key_columns)
        if e.unique == "parent" and e.parent:
            parent = image[e.parent]
            ok = (self.key_ok(e.parent, parent) if e.parent in self.rules
                  else _parent_key_ok(self.catalogue, e.parent, parent))
            return parent + "/" + own if ok else None
        return own

    def _naming(self, e: Entity) -> str:
        """How an image names its row, for messages: ``folder_name``, ``model/folder_name``."""
        own = "/".join(e.key_columns)
        return f"{e.parent}/{own}" if e.unique == "parent" and e.parent else own

    def _check_move_identity(self, c: dict) -> str | None:
        """``after`` must name ``key`` and ``before`` must name ``from``; they differ."""
        kind = c["kind"]
        e = self.rules[kind].entity
        for side, name in (("after", "key"), ("before", "from")):
            image, want = c[side], c[name]
            if not self.key_ok(kind, want):
                return f"has {kind} {name} {want!r}; {self._key_shape(kind)}"
            if e.parent and e.unique == "global" and not self._parent_ok(kind, image[e.parent]):
                return f"names {e.parent} {image[e.parent]!r}; {self._key_shape(e.parent)}"
            have = self._named(e, image)
            if have is None:
                return f"names a parent that is not a {e.parent} key"
            if have != want:
                return f"'{side}' names {have!r:.200}, not its {name} {want!r:.200}"
        if c["key"] == c["from"]:
            return "moves a row onto its own key"
        return None

    def check_values(self, c: dict) -> str | None:
        """Values the database would refuse (beyond the schema): NUL characters,
        integers out of their column's range, a malformed JSON value. ``validate``
        refuses them, so that a plan that validates also applies."""
        if "\x00" in c["key"] or "\x00" in (c.get("from") or ""):
            return "'key' holds a NUL character, which PostgreSQL text cannot store"
        fields = self.rules[c["kind"]].fields
        for image in (c["before"], c["after"]):
            if not image:
                continue
            for name, value in image.items():
                kind = type(value)
                if kind is str:
                    if "\x00" in value:
                        return f"{name!r} holds a NUL character, which PostgreSQL text cannot store"
                elif kind is int:
                    rule = fields[name]
                    limit = rule.int_max if rule.int_max is not None else (2**31 - 1 if name == "id" else None)
                    if limit is not None and not rule.min_int <= value <= limit:
                        return f"{name!r} is out of range for its column ({rule.min_int} to {limit})"
                elif kind is dict and fields[name].members is not None and _bad_object(fields[name], value):
                    shape = ", ".join(f'"{m}": …' for m in fields[name].members)
                    return f"{name!r} must be {{{shape}}}"
        return None

    def check(self, c) -> str | None:
        return self.check_change(c) or self.check_identity(c) or self.check_values(c)

    # ---- the JSON Schema of a change

    def schema_defs(self) -> dict:
        defs: dict = {}
        conditions = []
        for kind, k in self.rules.items():
            props = {n: r.schema() for n, r in k.fields.items()}
            defs[f"{kind}Image"] = {"type": "object", "additionalProperties": False, "properties": props,
                                    "required": list(k.image)}
            defs[f"{kind}Update"] = {"type": "object", "additionalProperties": False, "minProperties": 1,
                                     "properties": {n: props[n] for n in k.updatable}}
            defs[f"{kind}Move"] = {"type": "object", "additionalProperties": False,
                                   "properties": {n: props[n] for n in k.movable}, "required": list(k.identity)}
            for action, before, after in (("create", {"type": "null"}, f"{kind}Image"),
                                          ("update", f"{kind}Update", f"{kind}Update"),
                                          ("move", f"{kind}Move", f"{kind}Move"),
                                          ("delete", f"{kind}Image", {"type": "null"})):
                ref = (lambda x: {"$ref": f"#/$defs/{x}"} if isinstance(x, str) else x)
                conditions.append({
                    "if": {"properties": {"action": {"const": action}, "kind": {"const": kind}}},
                    "then": {"properties": {"before": ref(before), "after": ref(after)}},
                })
        conditions.append({"if": {"properties": {"action": {"const": "move"}}},
                           "then": {"required": ["from"]}, "else": {"not": {"required": ["from"]}}})
        defs["change"] = {
            "type": "object",
            "required": ["action", "kind", "key", "before", "after"],
            "additionalProperties": False,
            "properties": {
                "action": {"enum": list(ACTIONS)},
                "kind": {"enum": list(self.kinds)},
                "key": {"type": "string", "minLength": 1},
                "from": {"type": "string", "minLength": 1},
                "before": {"type": ["object", "null"]},
                "after": {"type": ["object", "null"]},
            },
            "allOf": conditions,
        }
        return defs

    def summary_schema(self) -> dict:
        counts = {"type": "object", "additionalProperties": False, "required": ["create", "update", "delete"],
                  "properties": {a: {"type": "integer", "minimum": 0} for a in ACTIONS}}
        return {"type": "object", "additionalProperties": False, "required": list(self.kinds),
                "properties": {k: counts for k in self.kinds}}


def _parent_key_ok(catalogue: Catalogue, kind: str, key: str) -> bool:
    """A platform-owned parent's plan key (no rules of its own): of its shape."""
    e = catalogue.entity(kind)
    n = _parts(catalogue, e)
    if _free_form(e):
        return True
    return key.count("/") == n - 1 and all(key.split("/"))


def _bad_object(rule: FieldRule, value: dict) -> bool:
    if set(value) - set(rule.members):
        return True
    for name, member in value.items():
        m = rule.members[name]
        if m.types == (list, type(None)) or list in m.types:
            if not isinstance(member, list):
                return True
            try:  # one C call checks every item is a string; then one search for NUL
                joined = "".join(member)
            except TypeError:
                return True
            if "\x00" in joined:
                return True
        elif member is not None and not isinstance(member, m.types):
            return True
    return False


_TOP = frozenset({"action", "kind", "key", "before", "after"})
_MOVE_TOP = _TOP | {"from"}


# --------------------------------------------------------------------------- building the rules


def _kind_rules(catalogue: Catalogue, e: Entity) -> KindRules:
    fields: dict[str, FieldRule] = {}
    for c in e.key_columns:
        fields[c] = FieldRule(c, (str,), non_empty=True)
    parent_parts = 0
    if e.parent:
        parent = catalogue.entity(e.parent)
        parent_parts = _parts(catalogue, parent)
        fields[e.parent] = FieldRule(e.parent, (str,), non_empty=True, min_length=2 * parent_parts - 1)
    classes = tuple(catalogue.classes)
    for c in e.columns:
        rule = _value_rule(c.name, c.value)
        if c.value.template is not None and c.value.template.single == "class":
            rule = FieldRule(c.name, (str,), enum=_classes_made(catalogue, e) or classes)
        fields[c.name] = rule
    restore = e.restore_fields
    fields[e.id_column] = FieldRule(e.id_column, (int,), int_max=2**31 - 1, min_int=1)
    for c, definition in e.platform_columns:
        if c in restore:
            fields[c] = _platform_rule(c, definition)
    return KindRules(
        entity=e, fields=fields, image=e.fields, updatable=frozenset(e.updatable),
        movable=frozenset(e.updatable) | frozenset(e.identity), identity=e.identity, restore=restore,
        parent_parts=parent_parts, key_parts=_parts(catalogue, e), key_free=_free_form(e),
    )


def _classes_made(catalogue: Catalogue, e: Entity) -> tuple[str, ...]:
    """The classes an entity's objects may have: those its row rules' file names allow."""
    found: list[str] = []
    for r in catalogue.rules:
        if r.entity != e.name or r.action != "row":
            continue
        last = r.pattern.file.placeholders
        classes = [c for p in last for c in p.classes]
        if not classes:
            return ()
        found += [c for c in classes if c not in found]
    return tuple(c for c in catalogue.classes if c in found)


# The fast path (see reconciler.planfile): lines of the common shapes in the canonical
# form this tool writes, matched a run at a time. A string is admitted only without
# escapes or control characters, so its JSON text is its value in quotes (and also its
# CSV text); integers are short enough to be in range; fields in canonical order.
_S = r'[^"\\\x00-\x1f]'  # a character a string holds as itself
_STR = rf'"{_S}*"'
_NAME = r'[^"\\/\x00-\x1f]'  # a character of a name within a key
# A JSON object of lists of strings whose items neither begin with ':' nor end with ',',
# so that in its canonical text '":' is only ever a key's end and ',"' only ever a
# separator (the stage re-spaces it by those two).
_ITEM = r'"(?!:)[^"\\\x00-\x1f]*(?<!,)"'
_LIST = rf"\[(?:{_ITEM}(?:,{_ITEM})*)?\]"
# A key of two names: a '/' with a character other than '/' before and after it.
_TWO = r'"[^"\\/\x00-\x1f][^"\\\x00-\x1f]*?/[^"\\\x00-\x1f]*?[^"\\/\x00-\x1f][^"\\\x00-\x1f]*"'


def _field_pattern(rules: PlanRules, k: KindRules, name: str, key_col: str | None) -> str | None:
    if name == key_col:
        return rf'(?P<key>"{_S}+")' if k.key_free else rf'(?P<key>"{_NAME}+")'
    if name == k.entity.parent:
        parent = rules.catalogue.entity(name)
        if _free_form(parent):
            return rf'("{_S}+")'
        if rules.rules.get(name) is None:  # the platform's: exactly its names
            return '("' + "/".join([f"{_NAME}+"] * k.parent_parts) + '")'
        if k.parent_parts == 1:
            return rf'("{_NAME}+")'
        if k.parent_parts == 2:
            # A name, '/', and a rest that is not only '/' (key_ok strips the key's '/'s
            # at its ends: 'M//' is no post key).
            return rf'("{_NAME}+/+{_NAME}{_S}*")'
        return None
    r = k.fields[name]
    if r.enum:
        return "(" + "|".join(f'"{re.escape(x)}"' for x in r.enum) + ")"
    if r.types in ((str,), (str, type(None))):
        return rf"({_STR}|null)" if r.nullable else rf"({_STR})"
    if int in r.types and bool not in r.types:
        digits = 8 if (r.int_max or 0) < 2**32 else 17
        number = rf"0|[1-9][0-9]{{0,{digits}}}"
        return rf"({number}|null)" if r.nullable else rf"({number})"
    return None


def _fast(rules: PlanRules) -> None:
    for kind, k in rules.rules.items():
        e = k.entity
        # Creates and deletes of a row keyed on its own by one column, with text and
        # integer fields: the bulk of a large plan.
        if e.unique == "global" and len(e.key_columns) == 1 and not any(c.value.is_json for c in e.columns):
            key_col = e.key_columns[0]
            names = sorted(e.fields)
            parts = [_field_pattern(rules, k, n, key_col) for n in names]
            if all(p is not None for p in parts):
                image = r"\{" + ",".join(f'"{n}":{p}' for n, p in zip(names, parts)) + r"\}"
                rules.fast_columns[kind] = ("action", *names)
                rules.fast_key[kind] = 1 + names.index(key_col)
                kind_text = re.escape(kind)
                rules.fast_shapes[(kind, "create")] = re.compile(
                    rf'^    \{{"action":("create"),"after":{image},"before":null,"key":(?P=key),"kind":"{kind_text}"\}},$',
                    re.M)
                rules.fast_shapes[(kind, "delete")] = re.compile(
                    rf'^    \{{"action":("delete"),"after":null,"before":{image},"key":(?P=key),"kind":"{kind_text}"\}},$',
                    re.M)
        # Updates of one JSON column that is an object of lists of strings (a post's
        # media_cdns): most of a delta plan's bytes.
        objects = [c for c in e.columns if c.value.object and all(v.list is not None for _, v in c.value.object)]
        if (len(objects) == 1 and e.unique == "parent" and k.key_parts == 2
                and kind not in rules.fast_columns):
            c = objects[0]
            members = sorted(n for n, _ in c.value.object)
            alternatives = []
            for i in range(len(members)):
                rest = "".join(f'(?:,"{re.escape(m)}":{_LIST})?' for m in members[i + 1:])
                alternatives.append(f'"{re.escape(members[i])}":{_LIST}{rest}')
            value = r"\{(?:" + "|".join(alternatives) + r")?\}"
            name = re.escape(c.name)
            rules.fast_columns[kind] = ("action", c.name, "key")
            rules.fast_key[kind] = 2
            rules.fast_shapes[(kind, "update")] = re.compile(
                rf'^    \{{"action":("update"),"after":\{{"{name}":({value})\}},"before":\{{"{name}":{value}\}},'
                rf'"key":({_TWO}),"kind":"{re.escape(kind)}"\}},$', re.M)


@lru_cache(maxsize=16)
def _rules(catalogue: Catalogue) -> PlanRules:
    kinds = catalogue.kinds
    rules = PlanRules(catalogue, kinds, {k: i for i, k in enumerate(kinds)},
                      {e.name: _kind_rules(catalogue, e) for e in catalogue.owned})
    _fast(rules)
    return rules


def plan_rules(catalogue: Catalogue) -> PlanRules:
    return _rules(catalogue)


# --------------------------------------------------------------------------- one change, for callers without rules at hand


def _rules_or_default(catalogue: Catalogue | None) -> PlanRules:
    from ..catalogue.spec import default_catalogue

    return plan_rules(catalogue or default_catalogue())


def check_change(c, catalogue: Catalogue | None = None) -> str | None:
    """The plan schema's rules for one change (see :class:`PlanRules`); None when valid."""
    return _rules_or_default(catalogue).check_change(c)


def check_identity(c: dict, catalogue: Catalogue | None = None) -> str | None:
    """A change's images must name the row its key names (beyond the schema)."""
    return _rules_or_default(catalogue).check_identity(c)


def check_values(c: dict, catalogue: Catalogue | None = None) -> str | None:
    """Values the database would refuse (beyond the schema)."""
    return _rules_or_default(catalogue).check_values(c)
