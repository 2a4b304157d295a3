"""``init`` for a catalogue: create what the database lacks, adopt what it has, check
the rest, and install the digest triggers — inside ``init``'s transaction.

For each entity of the spec, from the top down:

- a table the tool owns that is missing is created from the spec (an id, the parent's
  column, key columns, managed columns, the platform columns as declared, a unique
  index on the natural key);
- an existing table is adopted as it is: missing managed columns are added (nullable,
  and ``init`` says so), nothing is dropped, renamed or retyped;
- every declared table and column is checked against the database — a missing table of
  the platform's, a missing key or parent column, a type of another family, a natural
  key without a unique index — and each problem is an error that names table and column.

Then the digest triggers derived from the spec (:func:`reconciler.catalogue.sql.trigger_sql`)
replace whatever triggers an earlier spec installed, the kept terms are rebuilt from the
rows, and the catalogue's name, fingerprint and spec are recorded: plan and apply
refuse to run under a spec the database was not initialised for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..catalogue import Catalogue
from ..catalogue.descriptor import FAMILIES
from ..catalogue.sql import anchor_of, create_table_sql, digest_table_sql, natural_key_columns, q, trigger_sql
from ..errors import CatalogueError, DatabaseError


@dataclass
class InstallReport:
    """What ``init`` did to the catalogue's tables."""

    created: list[str] = field(default_factory=list)  # tables
    added: list[str] = field(default_factory=list)  # "table.column"
    indexed: list[str] = field(default_factory=list)  # "table.column"

    def lines(self) -> list[str]:
        out = [f"created table {t}" for t in self.created]
        out += [f"added column {c} (nullable; the tool fills it)" for c in self.added]
        out += [f"added an index on {c}" for c in self.indexed]
        return out


def _family(sql_type: str) -> str | None:
    t = sql_type.lower()
    if t in ("text", "name") or t.startswith(("character varying", "character", "varchar", "char")):
        return "text"
    if t in ("integer", "bigint", "smallint"):
        return "integer"
    if t in ("json", "jsonb"):
        return "json"
    if t.startswith("timestamp"):
        return "timestamp"
    if t == "boolean":
        return "boolean"
    return None


def columns_of(cur, table: str) -> dict[str, str] | None:
    """A table's columns and their types (``format_type``), or None when it does not exist."""
    cur.execute("SELECT to_regclass(%s)", (q(table),))
    if cur.fetchone()[0] is None:
        return None
    cur.execute(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
           WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped""",
        (q(table),),
    )
    return dict(cur.fetchall())


def unique_keys(cur, table: str) -> list[set[str]]:
    """The column sets of a table's unique indexes (constraints included), partial ones aside."""
    cur.execute(
        """SELECT array_agg(a.attname::text) FROM pg_index i
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
           WHERE i.indrelid = to_regclass(%s) AND i.indisunique AND i.indpred IS NULL
           GROUP BY i.indexrelid""",
        (q(table),),
    )
    return [set(cols) for (cols,) in cur.fetchall()]


def _indexed(cur, table: str, column: str) -> bool:
    cur.execute(
        """SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
           WHERE i.indrelid = to_regclass(%s) AND a.attname = %s""",
        (q(table), column),
    )
    return cur.fetchone() is not None


def installed(cur) -> tuple[str, str] | None:
    """The name and fingerprint of the catalogue the database holds, if any."""
    cur.execute("SELECT to_regclass('reconciler_catalogue') IS NOT NULL")
    if not cur.fetchone()[0]:
        return None
    cur.execute("SELECT name, fingerprint FROM reconciler_catalogue WHERE id = 1")
    row = cur.fetchone()
    return (row[0], row[1]) if row else None


def install(cur, catalogue: Catalogue) -> InstallReport:
    """Create, adopt and check the catalogue's tables and install its triggers (inside
    the caller's transaction, which holds init's advisory lock)."""
    held = installed(cur)
    if held is not None and held[0] != catalogue.name:
        raise CatalogueError(
            f"this database holds catalogue {held[0]!r}; one database holds one catalogue. Configure "
            f"catalogue: {held[0]} for it, or give catalogue {catalogue.name!r} a database of its own"
        )
    report = InstallReport()
    # Everything is checked before anything is done: a database that does not fit is
    # left as it was (init's transaction would roll it back anyway; this says why first).
    problems: list[str] = []
    found: dict[str, dict[str, str] | None] = {e.name: columns_of(cur, e.table) for e in catalogue.entities}
    for e in catalogue.entities:
        cols = found[e.name]
        if cols is None:
            if not e.owned:
                problems.append(f"table {e.table} ({e.name}) does not exist; it is the platform's: create it first, "
                                "or check the spec's table name")
            continue
        problems += _check(cur, e, cols)
    if problems:
        raise CatalogueError(f"catalogue {catalogue.name} does not fit the database: " + "; ".join(problems))
    ids: dict[str, str] = {}  # entity → its id column's type
    for e in catalogue.entities:
        cols = found[e.name]
        if cols is None:
            for statement in create_table_sql(catalogue, e, ids.get(e.parent) if e.parent else None):
                cur.execute(statement)
            report.created.append(e.table)
            cols = columns_of(cur, e.table)
        ids[e.name] = cols.get(e.id_column, "integer")
        for c in e.columns:
            if c.name not in cols:
                cur.execute(f"ALTER TABLE {q(e.table)} ADD COLUMN {q(c.name)} {c.type}")
                report.added.append(f"{e.table}.{c.name}")
    for e in catalogue.owned:
        if e.fk and not _indexed(cur, e.table, e.fk):
            # Joins from a child to its parent need it; the platform indexes only unique columns.
            cur.execute(f"CREATE INDEX {q(e.table + '_' + e.fk + '_idx')} ON {q(e.table)} ({q(e.fk)})")
            report.indexed.append(f"{e.table}.{e.fk}")
    _install_digest(cur, catalogue, ids)
    cur.execute(
        """INSERT INTO reconciler_catalogue (id, name, fingerprint, spec) VALUES (1, %s, %s, %s)
           ON CONFLICT (id) DO UPDATE SET name = excluded.name, fingerprint = excluded.fingerprint,
             spec = excluded.spec, installed_at = now()""",
        (catalogue.name, catalogue.fingerprint, json.dumps(catalogue.spec)),
    )
    return report


def _check(cur, e, cols: dict[str, str]) -> list[str]:
    """What does not fit in an existing table (a managed column it lacks is added, not
    a problem: the tool fills it)."""
    problems = []
    where = f"{e.table}"
    if e.id_column not in cols:
        problems.append(f"{where}.{e.id_column} (the id) does not exist; set id: in the spec")
    elif e.owned and _family(cols[e.id_column]) != "integer":
        problems.append(f"{where}.{e.id_column} is {cols[e.id_column]}; the tool's rows have integer ids")
    for c in e.key_columns:
        if c not in cols:
            problems.append(f"{where}.{c} (a key column) does not exist")
        elif e.owned and _family(cols[c]) != "text":
            problems.append(f"{where}.{c} (a key column) is {cols[c]}; the tool writes keys as text")
    if e.fk and e.fk not in cols:
        problems.append(f"{where}.{e.fk} (the parent's id) does not exist")
    for c in e.columns:
        if c.name not in cols:
            if not e.owned:
                problems.append(f"{where}.{c.name} does not exist")
        elif _family(cols[c.name]) != FAMILIES[c.type]:
            problems.append(f"{where}.{c.name} is {cols[c.name]}, which does not hold {c.type} values; "
                            f"declare type: {_family(cols[c.name]) or cols[c.name]} or change the column")
    for c, _ in e.platform_columns:
        if c not in cols:
            problems.append(f"{where}.{c} (a platform column the spec declares) does not exist")
    need = set(natural_key_columns(e))
    if all(c in cols for c in need) and need not in unique_keys(cur, e.table):
        columns = ", ".join(natural_key_columns(e))
        problems.append(f"{where} has no unique index on its natural key ({columns}); "
                        f"add one: CREATE UNIQUE INDEX ON {e.table} ({columns})")
    return problems


def _install_digest(cur, catalogue: Catalogue, ids: dict[str, str]) -> None:
    anchors = {anchor_of(catalogue, e.name).name for e in catalogue.owned}
    types = {"integer" if _family(ids.get(a, "integer")) == "integer" else "text" for a in anchors}
    id_type = "bigint" if types == {"integer"} else "text"
    cur.execute("SELECT to_regclass('reconciler_digest') IS NOT NULL")
    if cur.fetchone()[0]:
        cur.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = 'reconciler_digest'::regclass AND attname = 'model_id'")
        have = cur.fetchone()[0]
        if (_family(have) == "integer") != (id_type == "bigint"):
            cur.execute("DROP TABLE reconciler_digest")  # the tool's own; rebuilt below
    cur.execute(digest_table_sql(id_type))
    for statement in trigger_sql(catalogue):
        cur.execute(statement)
    cur.execute("SELECT rc_digest_rebuild()")


def check_installed(cur, catalogue: Catalogue, display: str) -> None:
    """Refuse to plan or apply under a spec the database was not initialised for."""
    held = installed(cur)
    if held is None:
        raise DatabaseError(f"{display} holds no catalogue yet; run `reconciler init`")
    name, fingerprint = held
    if name != catalogue.name:
        raise DatabaseError(
            f"{display} holds catalogue {name!r}, not {catalogue.name!r}; check catalogue: in the config "
            "(one database holds one catalogue)"
        )
    if fingerprint != catalogue.fingerprint:
        raise DatabaseError(
            f"catalogue {name} changed since {display} was initialised (fingerprint {fingerprint[:12]}, now "
            f"{catalogue.fingerprint[:12]}); run `reconciler init` to install it"
        )
