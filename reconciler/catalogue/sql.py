"""The SQL of a catalogue, derived from its descriptor: reading the current rows, the
row hash and the kept state digest, the triggers that keep it, and the tables ``init``
creates. Pure: it writes SQL text and runs nothing (see :mod:`reconciler.store.current`,
:mod:`reconciler.store.execute` and :mod:`reconciler.store.install` for the statements' use).

Names from the spec are quoted as written (``"whitelabel_models"``): a table the
platform created without quotes has a lower-case name, and the spec names it so.

**The row hash.** Each owned row's terms in the state digest are the md5 of
``row(parts…, managed columns…)::text``, where the parts name the row as its plan key
does — its parents' key columns then its own for a row keyed within its parent, its own
then its parent's for a row keyed on its own — and a platform-owned parent stands in by
its id (the column that holds it). For creators that is ``row(folder_name, …)`` for a
model, ``row(model's folder_name, folder_name, title, media_cdns::text)`` for a post and
``row(s3_key, model's, post's folder_name, url, type, size_bytes, etag)`` for a media
item: the terms the hand-written triggers kept, so digests — and plans — made before
catalogues stay valid.

**The anchor.** Terms are kept per *anchor* row: the top row, when every row between
is owned (a model, for creators); else the nearest platform-owned ancestor (a product
image's variant), whose id the owned row holds itself, so a cascade from the platform's
tables needs no trigger on them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .descriptor import Catalogue, Entity


def q(name: str) -> str:
    """A quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


def lit(text: str) -> str:
    """A quoted string literal (catalogue names, kinds: no secrets, no user data)."""
    return "'" + text.replace("'", "''") + "'"


# --------------------------------------------------------------------------- aliases and joins


@dataclass
class Query:
    """A FROM clause grown one join at a time, with the alias of each entity's table."""

    catalogue: Catalogue
    aliases: dict[str, str] = field(default_factory=dict)
    joins: list[str] = field(default_factory=list)

    def base(self, entity: str, source: str | None = None, alias: str | None = None) -> "Query":
        e = self.catalogue.entity(entity)
        alias = alias or "_" + entity
        self.aliases[entity] = alias
        self.joins.append(f"{source or q(e.table)} {alias}")
        return self

    def a(self, entity: str) -> str:
        return self.aliases[entity]

    def up(self, entity: str, to: str | None = None, *, owned_only: bool = False) -> None:
        """Join the ancestors of ``entity`` (already joined) up to ``to`` (or the top);
        with ``owned_only``, stop below the first one the tool does not own."""
        e = self.catalogue.entity(entity)
        while e.parent is not None and e.name != to:
            p = self.catalogue.entity(e.parent)
            if owned_only and not p.owned:
                return
            if p.name not in self.aliases:
                alias = "_" + p.name
                self.aliases[p.name] = alias
                self.joins.append(f"JOIN {q(p.table)} {alias} ON {alias}.{q(p.id_column)} = {self.a(e.name)}.{q(e.fk)}")
            e = p

    def down(self, entity: str, target: str) -> None:
        """Join the entities from ``entity`` (already joined) down to ``target``."""
        path = [self.catalogue.entity(target)]
        while path[-1].parent != entity:
            path.append(self.catalogue.entity(path[-1].parent))
        parent = self.catalogue.entity(entity)
        for e in reversed(path):
            alias = "_" + e.name
            self.aliases[e.name] = alias
            self.joins.append(f"JOIN {q(e.table)} {alias} ON {alias}.{q(e.fk)} = {self.a(parent.name)}.{q(parent.id_column)}")
            parent = e

    @property
    def sql(self) -> str:
        return " ".join(self.joins)


# --------------------------------------------------------------------------- keys


def _text(expr: str) -> str:
    return f"{expr}::text"


def own_key(query: Query, e: Entity) -> str:
    cols = [_text(f"{query.a(e.name)}.{q(c)}") for c in e.key_columns]
    return " || '/' || ".join(cols)


def plan_key_sql(query: Query, entity: str) -> str:
    """An entity's plan key (every ancestor it needs joined)."""
    e = query.catalogue.entity(entity)
    own = own_key(query, e)
    if e.unique == "parent" and e.parent:
        return f"{plan_key_sql(query, e.parent)} || '/' || {own}"
    return own


def scope_sql(query: Query, scope) -> tuple[str, tuple]:
    """The condition (and parameters) that limits rows to the top keys of ``scope``."""
    top = query.catalogue.top
    if scope is None:
        return "", ()
    names = [m for m in scope if "\x00" not in m]  # NUL cannot be in the database, nor be sent
    if len(top.key_columns) == 1:
        column = f"{query.a(top.name)}.{q(top.key_columns[0])}"
        return f"{column}::text = ANY(%s)" if _needs_cast(top) else f"{column} = ANY(%s)", (names,)
    return f"({plan_key_sql(query, top.name)}) = ANY(%s)", (names,)


def _needs_cast(e: Entity) -> bool:
    """Whether the top's key column may not be text (its id): compared as text then."""
    return e.key_columns == (e.id_column,)


def range_sql(query: Query, lo: str, hi: str | None) -> tuple[list[str], tuple]:
    """Rows whose top key's order (``key + "/"``, compared by code point as Python
    does: ``COLLATE "C"`` on UTF-8) is from ``lo`` and before ``hi``."""
    order = f"({plan_key_sql(query, query.catalogue.top.name)} || '/') COLLATE \"C\""
    conditions, params = [], ()
    if lo:
        conditions.append(f"{order} >= %s")
        params += (lo,)
    if hi is not None:
        conditions.append(f"{order} < %s")
        params += (hi,)
    return conditions, params


def where(conditions: list[str]) -> str:
    conditions = [c for c in conditions if c]
    return ("WHERE " + " AND ".join(conditions)) if conditions else ""


# --------------------------------------------------------------------------- the current rows


def _managed_sql(query: Query, e: Entity, c) -> str:
    col = f"{query.a(e.name)}.{q(c.name)}"
    if c.value.is_json:
        return f"{col}::jsonb::text"
    if c.type in ("timestamp", "timestamptz"):
        zone = " AT TIME ZONE 'UTC'" if c.type == "timestamptz" else ""
        return f"to_char({col}{zone}, 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
    return col


def current_select(catalogue: Catalogue, entity: str) -> tuple[str, Query]:
    """``SELECT`` of an owned entity's current rows as the engine compares them
    (:func:`reconciler.engine.current_schema`), and its FROM clause; a ``{where}``
    placeholder stands for the conditions. A value is selected once: not the top
    row's key when it is the parent's, nor a key column that is the whole plan key
    (the engine names those columns twice: :func:`reconciler.engine.copied_schema`)."""
    e = catalogue.entity(entity)
    query = Query(catalogue).base(entity)
    query.up(entity)
    cols = [plan_key_sql(query, entity)]
    if e is not catalogue.top and e.parent != catalogue.top.name:
        cols.append(plan_key_sql(query, catalogue.top.name))
    if not e.key_is_plan_key:
        cols += [_text(f"{query.a(entity)}.{q(c)}") for c in e.key_columns]
    if e.parent:
        cols.append(plan_key_sql(query, e.parent))
    cols += [_managed_sql(query, e, c) for c in e.columns]
    return f"SELECT {', '.join(cols)} FROM {query.sql} {{where}}", query


def known_select(catalogue: Catalogue, entity: str) -> tuple[str, Query]:
    """The plan keys of a platform-owned entity's rows ({where}: the conditions)."""
    query = Query(catalogue).base(entity)
    query.up(entity)
    return f"SELECT {plan_key_sql(query, entity)} FROM {query.sql} {{where}}", query


# --------------------------------------------------------------------------- the row hash


def _key_parts(query: Query, y: Entity, child: Entity) -> list[str]:
    """The parts that name ``y`` in the hash of its descendant, reached from ``child``."""
    if not y.owned:
        return [f"{query.a(child.name)}.{q(child.fk)}"]
    own = [f"{query.a(y.name)}.{q(c)}" for c in y.key_columns]
    if y.unique == "parent" and y.parent:
        return _key_parts(query, query.catalogue.entity(y.parent), y) + own
    return own


def hash_parts(query: Query, e: Entity) -> list[str]:
    own = [f"{query.a(e.name)}.{q(c)}" for c in e.key_columns]
    if e.parent is None:
        parts = own
    else:
        parent = query.catalogue.entity(e.parent)
        above = _key_parts(query, parent, e)
        parts = above + own if e.unique == "parent" else own + above
    for c in e.columns:
        col = f"{query.a(e.name)}.{q(c.name)}"
        parts.append(f"{col}::text" if c.value.is_json else col)
    return parts


def row_hash(query: Query, e: Entity) -> str:
    return f"md5(row({', '.join(hash_parts(query, e))})::text)"


def anchor_of(catalogue: Catalogue, entity: str) -> Entity:
    """The entity whose rows hold a row's terms: the top, when the rows between are
    owned; else the nearest platform-owned ancestor."""
    e = catalogue.entity(entity)
    while e.parent is not None:
        p = catalogue.entity(e.parent)
        if not p.owned:
            return p
        e = p
    return e


def anchor_sql(query: Query, entity: str) -> str:
    """The anchor row's id, over the owned ancestors joined (``Query.up(owned_only=True)``)."""
    e = query.catalogue.entity(entity)
    while e.parent is not None:
        p = query.catalogue.entity(e.parent)
        if not p.owned:
            return f"{query.a(e.name)}.{q(e.fk)}"
        e = p
    return f"{query.a(e.name)}.{q(e.id_column)}"


def _hash_select(catalogue: Catalogue, entity: str, sign: int, *, base: str | None = None, source: str | None = None,
                 alias: str | None = None, extra: str = "") -> str:
    """``SELECT anchor id, kind, sign, md5`` over ``entity``'s rows: its table, or
    ``source`` (a transition table) as the rows of ``base`` with rows of ``entity`` below."""
    query = Query(catalogue)
    if base is None or base == entity:
        query.base(entity, source, alias)
    else:
        query.base(base, source, alias)
        query.down(base, entity)
    query.up(base or entity, owned_only=True)
    query.up(entity, owned_only=True)
    return (f"SELECT {anchor_sql(query, entity)}, {lit(entity)}, {sign}, {row_hash(query, catalogue.entity(entity))} "
            f"FROM {query.sql}{extra}")


# --------------------------------------------------------------------------- the digest, by scan and kept

HALVES = """count(*), coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::bigint), 0),
       coalesce(sum(('x' || substr(h, 17, 16))::bit(64)::bigint), 0)"""


def scan_digest_sql(catalogue: Catalogue, entity: str) -> str:
    """One kind's terms from every row in scope (``{where}``: the scope's condition)."""
    e = catalogue.entity(entity)
    query = Query(catalogue).base(entity)
    query.up(entity)
    return f"SELECT {HALVES} FROM (SELECT {row_hash(query, e)} AS h FROM {query.sql} {{where}}) d"


def scan_query(catalogue: Catalogue, entity: str) -> Query:
    query = Query(catalogue).base(entity)
    query.up(entity)
    return query


def kept_digest_sql(catalogue: Catalogue) -> list[tuple[str, Query, list[str]]]:
    """The kept terms summed per kind: one query per anchor entity (``{where}``: the
    scope's condition over its joins), with the kinds it sums."""
    out = []
    anchors: dict[str, list[str]] = {}
    for e in catalogue.owned:
        anchors.setdefault(anchor_of(catalogue, e.name).name, []).append(e.name)
    for anchor, kinds in anchors.items():
        a = catalogue.entity(anchor)
        query = Query(catalogue).base(anchor)
        query.up(anchor)
        kind_list = ", ".join(lit(k) for k in kinds)
        sql = (f"SELECT d.kind, sum(d.n)::bigint, sum(d.a), sum(d.b) FROM reconciler_digest d "
               f"JOIN {query.sql} ON {query.a(anchor)}.{q(a.id_column)} = d.model_id "
               f"{{where}} GROUP BY d.kind")
        out.append((sql, query, [f"d.kind IN ({kind_list})"]))
    return out


def counts_sql(catalogue: Catalogue) -> tuple[str, Query]:
    """Rows per top key and kind, from the kept terms ({where}: the scope's condition)."""
    top = catalogue.top
    anchors = {anchor_of(catalogue, e.name).name for e in catalogue.owned}
    parts = []
    query = None
    for anchor in sorted(anchors):
        a = catalogue.entity(anchor)
        query = Query(catalogue).base(anchor)
        query.up(anchor)
        parts.append(f"SELECT {plan_key_sql(query, top.name)} AS top, d.kind, d.n FROM reconciler_digest d "
                     f"JOIN {query.sql} ON {query.a(anchor)}.{q(a.id_column)} = d.model_id {{where}}")
    return " UNION ALL ".join(parts), query


# --------------------------------------------------------------------------- triggers

_SQL_FN = """CREATE OR REPLACE FUNCTION rc_digest_sql(q text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT format($f$
    INSERT INTO reconciler_digest AS d (model_id, kind, n, a, b)
    SELECT model_id, kind,
           sum(sign),
           coalesce(sum(ha) FILTER (WHERE sign > 0), 0) - coalesce(sum(ha) FILTER (WHERE sign < 0), 0),
           coalesce(sum(hb) FILTER (WHERE sign > 0), 0) - coalesce(sum(hb) FILTER (WHERE sign < 0), 0)
    FROM (SELECT model_id, kind, sign,
                 ('x' || substr(h, 1, 16))::bit(64)::bigint AS ha,
                 ('x' || substr(h, 17, 16))::bit(64)::bigint AS hb
          FROM (%s) c (model_id, kind, sign, h)) x
    GROUP BY model_id, kind
    ON CONFLICT (model_id, kind) DO UPDATE SET n = d.n + excluded.n, a = d.a + excluded.a, b = d.b + excluded.b
  $f$, q)
$$"""


def digest_table_sql(id_type: str) -> str:
    return f"""CREATE TABLE IF NOT EXISTS reconciler_digest (
  model_id {id_type} NOT NULL,       -- the anchor row's id (a model's, for creators)
  kind     text NOT NULL,             -- the entity
  n        bigint NOT NULL DEFAULT 0,
  a        numeric NOT NULL DEFAULT 0,
  b        numeric NOT NULL DEFAULT 0,
  PRIMARY KEY (model_id, kind)
)"""


def _fn(name: str, body: str, returns: str = "trigger") -> str:
    return (f"CREATE OR REPLACE FUNCTION {name}() RETURNS {returns} LANGUAGE plpgsql\n"
            f"SECURITY DEFINER SET search_path FROM CURRENT AS $body$\nBEGIN\n{body}\nEND $body$")


def _execute(selects: list[str]) -> str:
    return "  EXECUTE rc_digest_sql($q$\n    " + "\n    UNION ALL\n    ".join(selects) + " $q$);"


def _changed(e: Entity, old: str, new: str) -> str:
    """Whether a row's name (key columns) or parent changed between two aliases."""
    cols = list(e.key_columns) + ([e.fk] if e.fk else [])
    olds = ", ".join(f"{old}.{q(c)}" for c in cols)
    news = ", ".join(f"{new}.{q(c)}" for c in cols)
    return f"({news}) IS DISTINCT FROM ({olds})"


def _rehashed(catalogue: Catalogue, e: Entity) -> list[Entity]:
    """The owned descendants whose terms hold ``e``'s name or anchor: re-hashed when a
    row of ``e`` is renamed or moves to another parent."""
    return [d for d in catalogue.descendants(e.name) if d.owned]


def trigger_sql(catalogue: Catalogue) -> list[str]:
    """The functions and triggers that keep the digest terms of every owned table, in
    the transaction of every write — the tool's and the platform's."""
    out = [_SQL_FN]
    rebuild = []
    for e in catalogue.owned:
        rebuild.append(_hash_select(catalogue, e.name, 1))
    out.append(_fn("rc_digest_rebuild", "  DELETE FROM reconciler_digest;\n" + _execute(rebuild) + "\n  RETURN;",
                   returns="void"))
    out.append(_fn("rc_digest_truncated", "  PERFORM rc_digest_rebuild();\n  RETURN NULL;"))
    for e in catalogue.owned:
        fn = "rc_digest_" + re.sub(r"\W", "_", e.table)
        below = _rehashed(catalogue, e)
        ins = [_hash_select(catalogue, e.name, 1, source="rc_new", alias="n")]
        upd = [_hash_select(catalogue, e.name, -1, source="rc_old", alias="o"),
               _hash_select(catalogue, e.name, 1, source="rc_new", alias="n")]
        renamed = []
        for d in below:
            # The old terms: the descendants under the old name, joined from the old row.
            renamed.append(_hash_select(catalogue, d.name, -1, base=e.name, source="rc_old", alias="o",
                                        extra=f" JOIN rc_new n ON n.{q(e.id_column)} = o.{q(e.id_column)} AND {_changed(e, 'o', 'n')}"))
            renamed.append(_hash_select(catalogue, d.name, 1, base=e.name, source="rc_new", alias="n",
                                        extra=f" JOIN rc_old o ON o.{q(e.id_column)} = n.{q(e.id_column)} AND {_changed(e, 'o', 'n')}"))
        updated = _execute(upd)
        if renamed:
            # Only when a row was renamed or re-parented: the planner cannot know that the
            # transition tables hold none, and joined them to every descendant row (two
            # scans of ten million media for an update of 100k posts' URL lists).
            # EXCEPT, not a join: an EXISTS over a join of the two transition tables is
            # planned as a nested loop that hopes to stop early (100k × 100k comparisons
            # when nothing was renamed); a set difference is one hashing pass.
            named = ", ".join(q(c) for c in [e.id_column, *e.key_columns, *([e.fk] if e.fk else [])])
            updated += (f"\n  IF EXISTS (SELECT {named} FROM rc_old EXCEPT SELECT {named} FROM rc_new) THEN"
                        f"\n{_execute(renamed)}\n  END IF;")
        body = (f"  IF TG_OP = 'INSERT' THEN\n{_execute(ins)}\n  ELSE  -- UPDATE\n{updated}\n  END IF;\n"
                "  RETURN NULL;")
        out.append(_fn(fn, body))
        table = q(e.table)
        deleted = ""
        if below:
            # A deleted row takes the rows below it with it (ON DELETE CASCADE): their
            # terms go before it does, while its name can still be read; the cascaded
            # rows then find no parent and subtract nothing.
            if anchor_of(catalogue, e.name) is e:
                row_body = f"  DELETE FROM reconciler_digest WHERE model_id = OLD.{q(e.id_column)};\n  RETURN OLD;"
            else:
                selects = [_hash_select(catalogue, e.name, -1, extra=f" WHERE _{e.name}.{q(e.id_column)} = %1$L")]
                selects += [_hash_select(catalogue, d.name, -1, base=e.name,
                                         extra=f" WHERE _{e.name}.{q(e.id_column)} = %1$L") for d in below]
                row_body = ("  EXECUTE rc_digest_sql(format($q$\n    " + "\n    UNION ALL\n    ".join(selects)
                            + f" $q$, OLD.{q(e.id_column)}));\n  RETURN OLD;")
            out.append(_fn(f"{fn}_deleted", row_body))
            deleted = (f"CREATE TRIGGER rc_digest_del BEFORE DELETE ON {table} FOR EACH ROW "
                       f"EXECUTE FUNCTION {fn}_deleted()")
        else:
            dele = [_hash_select(catalogue, e.name, -1, source="rc_old", alias="o")]
            out.append(_fn(f"{fn}_deleted", f"{_execute(dele)}\n  RETURN NULL;"))
            deleted = (f"CREATE TRIGGER rc_digest_del AFTER DELETE ON {table} REFERENCING OLD TABLE AS rc_old "
                       f"FOR EACH STATEMENT EXECUTE FUNCTION {fn}_deleted()")
        for name in ("rc_digest_ins", "rc_digest_upd", "rc_digest_del", "rc_digest_trunc"):
            out.append(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        out += [
            f"CREATE TRIGGER rc_digest_ins AFTER INSERT ON {table} REFERENCING NEW TABLE AS rc_new "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {fn}()",
            f"CREATE TRIGGER rc_digest_upd AFTER UPDATE ON {table} REFERENCING OLD TABLE AS rc_old NEW TABLE AS rc_new "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {fn}()",
            deleted,
            f"CREATE TRIGGER rc_digest_trunc AFTER TRUNCATE ON {table} FOR EACH STATEMENT "
            "EXECUTE FUNCTION rc_digest_truncated()",
        ]
    return out


# --------------------------------------------------------------------------- tables


def create_table_sql(catalogue: Catalogue, e: Entity, parent_id_type: str | None) -> list[str]:
    """``CREATE TABLE`` for an owned entity the database lacks: an id, the parent's
    column, key columns, managed columns (nullable), the platform's columns as declared,
    and a unique index on the natural key."""
    cols = [f"{q(e.id_column)} serial PRIMARY KEY"]
    if e.parent:
        p = catalogue.entity(e.parent)
        cols.append(f"{q(e.fk)} {parent_id_type or 'integer'} NOT NULL REFERENCES {q(p.table)}({q(p.id_column)}) "
                    "ON DELETE CASCADE")
    cols += [f"{q(c)} text NOT NULL" for c in e.key_columns]
    cols += [f"{q(c.name)} {c.type}" for c in e.columns]
    cols += [f"{q(c)} {definition}" for c, definition in e.platform_columns]
    return [f"CREATE TABLE {q(e.table)} (\n  " + ",\n  ".join(cols) + "\n)", unique_index_sql(e)]


def unique_index_sql(e: Entity) -> str:
    cols = ([e.fk] if e.unique == "parent" and e.fk else []) + list(e.key_columns)
    return (f"CREATE UNIQUE INDEX IF NOT EXISTS {q(e.table + '_natural_key')} ON {q(e.table)} "
            f"({', '.join(q(c) for c in cols)})")


def natural_key_columns(e: Entity) -> list[str]:
    return ([e.fk] if e.unique == "parent" and e.fk else []) + list(e.key_columns)
