"""The current state: the managed columns of the rows in scope, read from the database.

Rows stream through server-side cursors as plain tuples (no ORM objects), in no
particular order: the diff looks them up by key and sorts its changes, and the digest
does not depend on order, so sorting a million rows would be work for nothing. The digest of the managed state in
scope, which makes a plan stale when the database moves, is computed by the server
(:func:`state_digest`). Planning only reads.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

from .desired import MediaRow, ModelRow, PostRow  # the shapes of the rows, as plain tuples

ITERSIZE = 20_000

_MODELS = """
SELECT m.folder_name, m.thumbnail_url, m.icon_url, m.banner_url, m.post_count
FROM whitelabel_models m {where}"""

_POSTS = """
SELECT m.folder_name || '/' || p.folder_name, p.title, p.media_cdns
FROM whitelabel_posts p JOIN whitelabel_models m ON m.id = p.whitelabel_model_id {where}"""

# The posts as the engine compares them: media_cdns (a json column, kept as written) as
# jsonb's text, which is the same for equal values.
_POSTS_TEXT = """
SELECT m.folder_name || '/' || p.folder_name, p.title, p.media_cdns::jsonb::text
FROM whitelabel_posts p JOIN whitelabel_models m ON m.id = p.whitelabel_model_id {where}"""

_MEDIA = """
SELECT x.s3_key, m.folder_name || '/' || p.folder_name, x.url, x.type, x.size_bytes, x.etag
FROM whitelabel_media x
JOIN whitelabel_posts p ON p.id = x.whitelabel_post_id
JOIN whitelabel_models m ON m.id = p.whitelabel_model_id {where}"""


def scope_clause(models: Sequence[str] | None) -> tuple[str, tuple]:
    """The WHERE clause (on alias ``m``) and parameters for a scope."""
    if models is None:
        return "", ()
    # A name holding NUL cannot be in the database (PostgreSQL text cannot hold it), nor
    # be sent as a parameter: it matches nothing, so it is left out.
    return "WHERE m.folder_name = ANY(%s)", ([m for m in models if "\x00" not in m],)


# The digest of the managed state in scope: per kind, the row count and the sums of the
# two halves of each row's md5 (an order-free multiset hash, so no sort), then SHA-256
# over the three. It covers exactly the managed columns and natural keys that a plan
# reads, so hand-set ``status`` and the like never make a plan stale. The terms are
# kept per model by triggers on the content tables (migration 0004, in the transaction
# of every write, reconciler's or the platform's): a scope's digest is a sum over its
# models' rows in reconciler_digest, whatever the tables hold, and the server adds them
# up on its own core while the listing is being read. (tests/test_digest_table.py
# computes the same from the rows themselves, and checks that the two agree.)


@dataclass(frozen=True)
class StateDigest:
    digest: str
    counts: dict[str, int]

    @property
    def rows(self) -> int:
        return sum(self.counts.values())


_KEPT = """SELECT d.kind, sum(d.n)::bigint, sum(d.a), sum(d.b)
FROM reconciler_digest d JOIN whitelabel_models m ON m.id = d.model_id {where} GROUP BY d.kind"""


def state_digest(conn, models: Sequence[str] | None = None) -> StateDigest:
    """The digest and row counts of the managed state in scope, from the per-model terms
    the triggers keep (``reconciler_digest``), without reading the rows."""
    where, params = scope_clause(models)
    with conn.cursor() as cur:
        cur.execute(_KEPT.format(where=where), params)
        return digest_of_terms({kind: (n, a, b) for kind, n, a, b in cur.fetchall()})


def digest_of_terms(terms: dict[str, tuple[int, int, int]]) -> StateDigest:
    """The digest of the terms per kind (row count, the two sums; a kind without rows
    may be left out)."""
    h = hashlib.sha256()
    counts = {}
    for kind in ("model", "post", "media"):
        n, a, b = terms.get(kind, (0, 0, 0))
        counts[kind] = n
        h.update(f"{kind}:{n}:{a}:{b}\n".encode())
    return StateDigest(h.hexdigest(), counts)


def database_identity(conn) -> str:
    """Which database this is: the cluster's ``system_identifier`` (chosen by initdb,
    kept across restarts) and the database's name, as ``"<id>/<name>"``. A plan
    records it, and apply refuses a plan made for another database."""
    with conn.cursor() as cur:
        cur.execute("SELECT system_identifier::text, current_database() FROM pg_control_system()")
        ident, name = cur.fetchone()
    return f"{ident}/{name}"


@dataclass
class CurrentState:
    """The current rows in scope, each kind an iterable of ``(key, row)``.

    Built by :func:`read_state` from the database, or directly from lists in tests.
    Iterate ``models``, then ``posts``, then ``media``, once each.
    """

    models: Iterable[tuple[str, ModelRow]] = ()
    posts: Iterable[tuple[str, PostRow]] = ()
    media: Iterable[tuple[str, MediaRow]] = ()


def _stream(conn, sql: str, params: tuple, name: str) -> Iterator[tuple]:
    with conn.cursor(name=name) as cur:
        cur.itersize = ITERSIZE
        cur.execute(sql, params)
        yield from cur


def _rows(conn, sql: str, where: str, params: tuple, name: str) -> Iterator[tuple[str, tuple]]:
    # Plain tuples: a row (key, *managed fields) compares equal to the desired NamedTuple.
    for row in _stream(conn, sql.format(where=where), params, name):
        yield row[0], row[1:]


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


def _copy(conn, sql: str, where: str, params: tuple, path: str) -> None:
    with open(path, "wb") as f, conn.cursor() as cur:
        query = cur.mogrify(sql.format(where=where), params).decode("utf-8")
        cur.copy_expert(f"COPY ({query}) TO STDOUT", f)


def _range_clause(models: Sequence[str] | None, lo: str, hi: str | None) -> tuple[str, tuple]:
    """The scope, and the range of models whose ``name + "/"`` sorts (by code point, as
    Python compares: ``COLLATE "C"`` on UTF-8) from ``lo`` and before ``hi``."""
    where, params = scope_clause(models)
    conditions = [where[len("WHERE "):]] if where else []
    order = "(m.folder_name || '/') COLLATE \"C\""
    if lo:
        conditions.append(f"{order} >= %s")
        params += (lo,)
    if hi is not None:
        conditions.append(f"{order} < %s")
        params += (hi,)
    return ("WHERE " + " AND ".join(conditions) if conditions else ""), params


class RangeCopies:
    """The current posts and media in scope, copied a range of models (of about
    ``batch_rows`` media rows, by the counts the triggers keep) at a time, each to files
    of its own. :meth:`run` does it on the planner's second connection while the listing
    is read; :meth:`ranges` gives ``[(lo, rows), …]``, each range running from its ``lo``
    to the next one's, as soon as the starts are known — a range's rows wait for their
    copy, so the planner compares one batch while the next is copied. Every row is in
    exactly one range, whatever the counts say.

    Up to ``ranged_up_to`` ranges, a query per range (through the indexes on a model's
    posts and a post's media) hands each range over as soon as it is copied. Past that,
    each table is copied in one scan and divided here, 32 MB at a time, by the model each
    row is filed under: an index scan per post cost the server several times the
    listing's time at ten million rows, while at a million a query per range is faster
    (3.3 s for a no-op plan against 4.2 s)."""

    RANGED_UP_TO = 16

    def __init__(self, batch_rows: int, path: Callable[[str], str], ranged_up_to: int | None = None) -> None:
        self.batch_rows, self.path = batch_rows, path  # path(suffix) names a new file
        self.ranged_up_to = self.RANGED_UP_TO if ranged_up_to is None else ranged_up_to
        self._los: Future = Future()
        self._rows: list[Future] = []
        self._stop = threading.Event()
        self.counts: dict[str, int] = {}  # media rows per model, read with the ranges

    def run(self, conn, models: Sequence[str] | None) -> None:
        from .engine import POSTS_TEXT_SCHEMA, batch_bounds
        from .frames import MEDIA_SCHEMA

        try:
            self.counts = media_counts(conn, models)
            los = ["", *batch_bounds(self.counts, self.batch_rows)]
            self._rows = [Future() for _ in los]
            self._los.set_result(los)
            if 1 < len(los) <= self.ranged_up_to:
                for i, lo in enumerate(los):
                    if self._stop.is_set():
                        raise RuntimeError("the plan was abandoned")
                    where, params = _range_clause(models, lo, los[i + 1] if i + 1 < len(los) else None)
                    rows = CopiedRange([self.path(".posts.tsv")], [self.path(".media.tsv")])
                    _copy(conn, _POSTS_TEXT, where, params, rows.post_files[0])
                    _copy(conn, _MEDIA, where, params, rows.media_files[0])
                    self._rows[i].set_result(rows)
                return
            where, params = scope_clause(models)
            posts, media = self.path(".posts.tsv"), self.path(".media.tsv")
            _copy(conn, _POSTS_TEXT, where, params, posts)
            if self._stop.is_set():
                raise RuntimeError("the plan was abandoned")
            _copy(conn, _MEDIA, where, params, media)
            if len(los) == 1:
                self._rows[0].set_result(CopiedRange([posts], [media]))
                return
            by_range = zip(_divide(posts, POSTS_TEXT_SCHEMA, "key", los, self.path),
                           _divide(media, MEDIA_SCHEMA, "post", los, self.path))
            for future, (post_files, media_files) in zip(self._rows, by_range):
                future.set_result(CopiedRange(post_files, media_files))
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


def _divide(tsv: str, schema: dict, column: str, los: list[str], path) -> list[list[str]]:
    """A copied table's rows divided among the ranges starting at ``los`` by the model
    named in ``column`` (``M/P``), decoded, as Arrow IPC files; the copy is removed."""
    import bisect

    from .spill import by_model

    out: list[list[str]] = [[] for _ in los]

    def range_of(name: str) -> int:
        return bisect.bisect_right(los, name + "/") - 1

    with open(tsv, "rb") as f:
        while data := f.read(32 * 1024 * 1024):
            # A row ends at a line break (COPY escapes those inside values): finish it.
            block = decode_copied(_read_copied(data + f.readline(), schema))
            for r, piece in by_model(block, column, range_of).items():
                file = path(".ipc")
                piece.write_ipc(file, compression="uncompressed")
                out[r].append(file)
    os.unlink(tsv)
    return out


class _Copying:
    """A range's rows once its copy is done."""

    def __init__(self, rows: Future) -> None:
        self._rows = rows

    def posts(self):
        return self._rows.result().posts()

    def media(self):
        return self._rows.result().media()

    def discard(self) -> None:
        self._rows.result().discard()


def _read_copied(source, schema: dict):
    """COPY's text format (a file's path or bytes) as a frame, escapes not yet decoded."""
    import os

    import polars as pl

    if isinstance(source, str) and os.path.getsize(source) == 0:
        return pl.DataFrame(schema=schema)
    return pl.read_csv(
        source, separator="\t", has_header=False, quote_char=None, null_values=["\\N"],
        empty_string_is_null=False,  # COPY writes NULL as \N; an empty field is ''
        new_columns=list(schema), schema_overrides=schema,
    )


class CopiedRange:
    """The current posts and media of a range of models as :class:`RangeCopies` left
    them: COPY's own file (``.tsv``, decoded as it is read) or divided ones (``.ipc``,
    decoded already)."""

    def __init__(self, posts: list[str], media: list[str]) -> None:
        self.post_files, self.media_files = posts, media

    @staticmethod
    def _read(files: list[str], schema: dict):
        import polars as pl

        frames = [decode_copied(_read_copied(f, schema)) if f.endswith(".tsv") else pl.read_ipc(f) for f in files]
        if not frames:
            return pl.DataFrame(schema=schema)
        return pl.concat(frames) if len(frames) > 1 else frames[0]

    def posts(self):
        """``key``, ``title``, ``media_cdns`` (as ``jsonb::text``)."""
        from .engine import POSTS_TEXT_SCHEMA

        return self._read(self.post_files, POSTS_TEXT_SCHEMA)

    def media(self):
        from .frames import MEDIA_SCHEMA

        return self._read(self.media_files, MEDIA_SCHEMA)

    def discard(self) -> None:
        import os

        for path in (*self.post_files, *self.media_files):
            try:
                os.unlink(path)
            except OSError:
                pass


def decode_copied(frame):
    """Rows of :class:`CopiedMedia` as they are stored: values with a backslash, tab or
    line break (escaped by COPY) are decoded one by one."""
    import polars as pl

    text = [c for c, t in frame.schema.items() if t == pl.String]
    escaped = pl.any_horizontal(pl.col(c).str.contains("\\", literal=True) for c in text)
    odd = frame.with_row_index("_i").filter(escaped)
    if odd.height:
        fixed = odd.with_columns(pl.col(c).map_elements(_unescape, return_dtype=pl.String) for c in text)
        frame = frame.with_row_index("_i").update(fixed, on="_i").drop("_i")
    return frame


def media_counts(conn, models: Sequence[str] | None = None) -> dict[str, int]:
    """The media rows per model in scope, from the digest terms the triggers keep."""
    where, params = scope_clause(models)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT m.folder_name, sum(d.n)::bigint FROM reconciler_digest d "
            f"JOIN whitelabel_models m ON m.id = d.model_id {where}{' AND' if where else ' WHERE'} d.kind = 'media' "
            "GROUP BY m.folder_name",
            params,
        )
        return dict(cur.fetchall())


def read_state(conn, models: Sequence[str] | None = None) -> CurrentState:
    """Stream the managed state in scope from ``conn`` (inside a transaction)."""
    where, params = scope_clause(models)
    return CurrentState(
        models=_rows(conn, _MODELS, where, params, "rc_models"),
        posts=_rows(conn, _POSTS, where, params, "rc_posts"),
        media=_rows(conn, _MEDIA, where, params, "rc_media"),
    )
