"""The current state: the managed rows in scope, read from the database, and the digest
that makes a plan stale when they change. Planning only reads.

Everything is read as the catalogue's descriptor says (:mod:`reconciler.catalogue.sql`):
each owned entity's rows with their plan keys, their top row's key and their fields, in
ranges of top keys, by ``COPY`` (no Python object per row); the plan keys of the
platform's rows, for lookups; and the state digest, from the terms the triggers keep per
anchor row (:func:`state_digest`), which equals the digest of a full scan
(:func:`reconciler.catalogue.sql.scan_digest_sql`; tests/test_digest_table.py holds the two together).
"""

from __future__ import annotations

import bisect
import hashlib
import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Sequence

from ..catalogue import Catalogue
from ..catalogue.sql import counts_sql, current_select, kept_digest_sql, known_select, range_sql, scope_sql, where


@dataclass(frozen=True)
class StateDigest:
    digest: str
    counts: dict[str, int]

    @property
    def rows(self) -> int:
        return sum(self.counts.values())


def digest_of_terms(kinds: Sequence[str], terms: dict) -> StateDigest:
    """The digest of the terms per kind (row count, the two sums; a kind without rows
    may be left out), kinds in the catalogue's order."""
    h = hashlib.sha256()
    counts = {}
    for kind in kinds:
        n, a, b = terms.get(kind, (0, 0, 0))
        counts[kind] = n
        h.update(f"{kind}:{n}:{a}:{b}\n".encode())
    return StateDigest(h.hexdigest(), counts)


def state_digest(conn, catalogue: Catalogue, scope: Sequence[str] | None = None) -> StateDigest:
    """The digest and row counts of the managed state in scope, from the terms the
    triggers keep (``reconciler_digest``), without reading the rows (the terms of a
    full scan, :func:`reconciler.catalogue.sql.scan_digest_sql`, are what they must
    always equal: tests/test_digest_table.py)."""
    terms: dict = {}
    with conn.cursor() as cur:
        for sql, query, kinds in kept_digest_sql(catalogue):
            condition, params = scope_sql(query, scope)
            cur.execute(sql.format(where=where([condition, *kinds])), params)
            for kind, n, a, b in cur.fetchall():
                terms[kind] = (n, a, b)
    return digest_of_terms(catalogue.kinds, terms)


def top_counts(conn, catalogue: Catalogue, scope: Sequence[str] | None = None) -> dict[str, int]:
    """Rows per top key in scope, from the kept terms."""
    sql, query = counts_sql(catalogue)
    condition, params = scope_sql(query, scope)
    n_parts = sql.count("{where}")
    with conn.cursor() as cur:
        cur.execute(f"SELECT top, sum(n)::bigint FROM ({sql.format(where=where([condition]))}) c GROUP BY top",
                    params * n_parts)
        return dict(cur.fetchall())


def counts_by_top(conn, catalogue: Catalogue, scope: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
    """Rows per top key in scope and kind, from the kept terms (no scan of the rows)."""
    sql, query = counts_sql(catalogue)
    condition, params = scope_sql(query, scope)
    n_parts = sql.count("{where}")
    out: dict[str, dict[str, int]] = {}
    with conn.cursor() as cur:
        cur.execute(f"SELECT top, kind, sum(n)::bigint FROM ({sql.format(where=where([condition]))}) c "
                    "GROUP BY top, kind", params * n_parts)
        for top, kind, n in cur.fetchall():
            out.setdefault(top, {})[kind] = n
    return out


def database_identity(conn) -> str:
    """Which database this is: the cluster's ``system_identifier`` (chosen by initdb,
    kept across restarts) and the database's name, as ``"<id>/<name>"``. A plan
    records it, and apply refuses a plan made for another database."""
    with conn.cursor() as cur:
        cur.execute("SELECT system_identifier::text, current_database() FROM pg_control_system()")
        ident, name = cur.fetchone()
    return f"{ident}/{name}"


def read_known(conn, catalogue: Catalogue, scope: Sequence[str] | None = None) -> dict[str, set[str]]:
    """The plan keys of the platform-owned rows in scope, by entity (for lookups)."""
    out = {}
    with conn.cursor() as cur:
        for e in catalogue.entities:
            if e.owned:
                continue
            sql, query = known_select(catalogue, e.name)
            condition, params = scope_sql(query, scope)
            cur.execute(sql.format(where=where([condition])), params)
            out[e.name] = {row[0] for row in cur}
    return out


def top_keys(conn, catalogue: Catalogue, scope: Sequence[str] | None = None) -> list[str]:
    """The top rows' keys in the database (every one; or those named in ``scope``)."""
    sql, query = known_select(catalogue, catalogue.top.name)
    condition, params = scope_sql(query, scope)
    with conn.cursor() as cur:
        cur.execute(sql.format(where=where([condition])), params)
        return [row[0] for row in cur]


# --------------------------------------------------------------------------- copying rows

_COPY_ESCAPES = {"\\": "\\", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _unescape(text: str | None) -> str | None:
    """A field of COPY's text format as it was (COPY TO writes only these escapes)."""
    if text is None or "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(_COPY_ESCAPES.get(text[i + 1], text[i + 1]))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _copy(conn, sql: str, params: tuple, path: str) -> None:
    with open(path, "wb") as f, conn.cursor() as cur:
        query = cur.mogrify(sql, params).decode("utf-8")
        cur.copy_expert(f"COPY ({query}) TO STDOUT", f)


def _select(catalogue: Catalogue, entity: str, scope, lo: str = "", hi: str | None = None) -> tuple[str, tuple]:
    sql, query = current_select(catalogue, entity)
    condition, params = scope_sql(query, scope)
    conditions, more = range_sql(query, lo, hi)
    return sql.format(where=where([condition, *conditions])), params + more


def read_rows(conn, catalogue: Catalogue, entity: str, scope: Sequence[str] | None = None):
    """An owned entity's current rows in scope as a frame (through ``COPY`` and a
    temporary file), as the engine compares them."""
    import tempfile

    from ..engine.plan import copied_schema, with_repeated

    e = catalogue.entity(entity)
    with tempfile.TemporaryDirectory(prefix="reconciler-rows-") as folder:
        path = os.path.join(folder, "rows.tsv")
        _copy(conn, *_select(catalogue, entity, scope), path)
        return with_repeated(catalogue, e, decode_copied(read_copied(path, copied_schema(catalogue, e))))


class RangeCopies:
    """The current rows in scope, copied a range of top rows (of about ``batch_rows``
    rows, by the counts the triggers keep) at a time, each to files of its own.
    :meth:`run` does it on the planner's second connection while the listing is read;
    :meth:`ranges` gives ``[(lo, rows), …]``, each range running from its ``lo`` to the
    next one's, as soon as the starts are known — a range's rows wait for their copy, so
    the planner compares one batch while the next is copied. Every row is in exactly one
    range, whatever the counts say.

    Up to ``ranged_up_to`` ranges, a query per range and entity (through the indexes)
    hands each range over as soon as it is copied. Past that, each table is copied in
    one scan and divided here, 32 MB at a time, by the top row each row is filed under:
    an index scan per row cost the server several times the listing's time at ten
    million rows, while at a million a query per range is faster (3.3 s for a no-op plan
    against 4.2 s)."""

    RANGED_UP_TO = 16

    def __init__(self, catalogue: Catalogue, batch_rows: int, path: Callable[[str], str],
                 ranged_up_to: int | None = None) -> None:
        self.catalogue = catalogue
        self.batch_rows, self.path = batch_rows, path  # path(suffix) names a new file
        self.ranged_up_to = self.RANGED_UP_TO if ranged_up_to is None else ranged_up_to
        self._los: Future = Future()
        self._rows: list[Future] = []
        self._stop = threading.Event()
        self.counts: dict[str, int] = {}  # rows per top key, read with the ranges
        self.known: dict[str, set[str]] = {}

    def run(self, conn, scope: Sequence[str] | None) -> None:
        from ..engine.plan import batch_bounds

        kinds = self.catalogue.kinds
        try:
            self.counts = top_counts(conn, self.catalogue, scope)
            los = ["", *batch_bounds(self.counts, self.batch_rows)]
            self._rows = [Future() for _ in los]
            self._los.set_result(los)
            if 1 < len(los) <= self.ranged_up_to:
                for i, lo in enumerate(los):
                    files = {}
                    for kind in kinds:
                        if self._stop.is_set():
                            raise RuntimeError("the plan was abandoned")
                        files[kind] = [self.path(f".{kind}.tsv")]
                        _copy(conn, *_select(self.catalogue, kind, scope, lo, los[i + 1] if i + 1 < len(los) else None),
                              files[kind][0])
                    self._rows[i].set_result(CopiedRange(self.catalogue, files))
                return
            whole = {}
            for kind in kinds:
                if self._stop.is_set():
                    raise RuntimeError("the plan was abandoned")
                whole[kind] = self.path(f".{kind}.tsv")
                _copy(conn, *_select(self.catalogue, kind, scope), whole[kind])
            if len(los) == 1:
                self._rows[0].set_result(CopiedRange(self.catalogue, {k: [f] for k, f in whole.items()}))
                return
            divided = {kind: _divide(self.catalogue, kind, whole[kind], los, self.path) for kind in kinds}
            for i, future in enumerate(self._rows):
                future.set_result(CopiedRange(self.catalogue, {kind: divided[kind][i] for kind in kinds}))
        except BaseException as e:
            for future in (self._los, *self._rows):
                if not future.done():
                    future.set_exception(e)
            raise

    def ranges(self) -> list[tuple[str, "_Copying"]]:
        """The ranges, once their starts are known (``counts`` then too)."""
        return [(lo, _Copying(rows)) for lo, rows in zip(self._los.result(), self._rows)]

    def stop(self) -> None:
        """Copy no further range (the plan failed elsewhere)."""
        self._stop.set()


def _divide(catalogue: Catalogue, kind: str, tsv: str, los: list[str], path) -> list[list[str]]:
    """A copied table's rows divided among the ranges starting at ``los`` by the top row
    each is filed under, decoded, as Arrow IPC files; the copy is removed."""
    from ..engine.frames import plan_key
    from ..engine.plan import copied_schema, repeated
    from ..engine.spill import by_top

    out: list[list[str]] = [[] for _ in los]
    e = catalogue.entity(kind)
    schema = copied_schema(catalogue, e)
    top = plan_key(catalogue.top.name)
    top = repeated(catalogue, e).get(top, top)  # the column that holds it

    def range_of(name: str) -> int:
        return bisect.bisect_right(los, name + "/") - 1

    with open(tsv, "rb") as f:
        while data := f.read(32 * 1024 * 1024):
            # A row ends at a line break (COPY escapes those inside values): finish it.
            block = decode_copied(read_copied(data + f.readline(), schema))
            for r, piece in by_top(block, top, range_of).items():
                file = path(".ipc")
                piece.write_ipc(file, compression="uncompressed")
                out[r].append(file)
    os.unlink(tsv)
    return out


class _Copying:
    """A range's rows once its copy is done."""

    def __init__(self, rows: Future) -> None:
        self._rows = rows

    def frame(self, entity: str):
        return self._rows.result().frame(entity)

    def discard(self) -> None:
        self._rows.result().discard()


def read_copied(source, schema: dict):
    """COPY's text format (a file's path or bytes) as a frame, escapes not yet decoded."""
    import polars as pl

    if isinstance(source, str) and os.path.getsize(source) == 0:
        return pl.DataFrame(schema=schema)
    return pl.read_csv(
        source, separator="\t", has_header=False, quote_char=None, null_values=["\\N"],
        empty_string_is_null=False,  # COPY writes NULL as \N; an empty field is ''
        new_columns=list(schema), schema_overrides=schema,
    )


class CopiedRange:
    """The current rows of a range of top rows as :class:`RangeCopies` left them, by
    entity: COPY's own file (``.tsv``, decoded as it is read) or divided ones (``.ipc``,
    decoded already)."""

    def __init__(self, catalogue: Catalogue, files: dict[str, list[str]]) -> None:
        self.catalogue, self.files = catalogue, files

    def frame(self, entity: str):
        import polars as pl

        from ..engine.plan import copied_schema, current_schema, with_repeated

        e = self.catalogue.entity(entity)
        schema = copied_schema(self.catalogue, e)
        frames = [decode_copied(read_copied(f, schema)) if f.endswith(".tsv") else pl.read_ipc(f)
                  for f in self.files.get(entity, ())]
        if not frames:
            return pl.DataFrame(schema=current_schema(self.catalogue, e))
        return with_repeated(self.catalogue, e, pl.concat(frames) if len(frames) > 1 else frames[0])

    def discard(self) -> None:
        for paths in self.files.values():
            for path in paths:
                try:
                    os.unlink(path)
                except OSError:
                    pass


def decode_copied(frame):
    """Rows as COPY wrote them, decoded: values with a backslash, tab or line break
    (escaped by COPY) are decoded one by one."""
    import polars as pl

    text = [c for c, t in frame.schema.items() if t == pl.String]
    if not text:
        return frame
    escaped = pl.any_horizontal(pl.col(c).str.contains("\\", literal=True) for c in text)
    odd = frame.with_row_index("_i").filter(escaped)
    if odd.height:
        fixed = odd.with_columns(pl.col(c).map_elements(_unescape, return_dtype=pl.String) for c in text)
        frame = frame.with_row_index("_i").update(fixed, on="_i").drop("_i")
    return frame
