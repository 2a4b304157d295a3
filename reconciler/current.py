"""The current state: the managed columns of the rows in scope, read from the database.

Rows stream through server-side cursors as plain tuples (no ORM objects), in key order
(``COLLATE "C"``, which is Python's string order), and are hashed as they pass: the
digest of the managed state in scope is what makes a plan stale when the database
moves. Planning only reads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

from .desired import MediaRow, ModelRow, PostRow  # the shapes of the rows, as plain tuples

ITERSIZE = 20_000

_MODELS = """
SELECT m.folder_name, m.thumbnail_url, m.icon_url, m.banner_url, m.post_count
FROM whitelabel_models m {where}
ORDER BY m.folder_name COLLATE "C" """

_POSTS = """
SELECT m.folder_name || '/' || p.folder_name, p.title, p.media_cdns
FROM whitelabel_posts p JOIN whitelabel_models m ON m.id = p.whitelabel_model_id {where}
ORDER BY m.folder_name COLLATE "C", p.folder_name COLLATE "C" """

_MEDIA = """
SELECT x.s3_key, m.folder_name || '/' || p.folder_name, x.url, x.type, x.size_bytes, x.etag
FROM whitelabel_media x
JOIN whitelabel_posts p ON p.id = x.whitelabel_post_id
JOIN whitelabel_models m ON m.id = p.whitelabel_model_id {where}
ORDER BY x.s3_key COLLATE "C" """


def scope_clause(models: Sequence[str] | None) -> tuple[str, tuple]:
    """The WHERE clause (on alias ``m``) and parameters for a scope."""
    if models is None:
        return "", ()
    return "WHERE m.folder_name = ANY(%s)", (list(models),)


class Hasher:
    """SHA-256 over the managed rows in the order they stream past."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.rows = 0

    def wrap(self, kind: str, rows: Iterable[tuple[str, tuple]]) -> Iterator[tuple[str, tuple]]:
        update = self._h.update
        buf: list[tuple] = []
        update(kind.encode() + b"\x00")
        for item in rows:
            buf.append(item)
            if len(buf) >= 4096:
                update(repr(buf).encode("utf-8", "surrogatepass"))
                self.rows += len(buf)
                buf.clear()
            yield item
        if buf:
            update(repr(buf).encode("utf-8", "surrogatepass"))
            self.rows += len(buf)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


@dataclass
class CurrentState:
    """The current rows in scope, each kind an iterable of ``(key, row)``.

    Built by :func:`read_state` from the database, or directly from lists in tests.
    Iterate ``models``, then ``posts``, then ``media``, once each.
    """

    models: Iterable[tuple[str, ModelRow]] = ()
    posts: Iterable[tuple[str, PostRow]] = ()
    media: Iterable[tuple[str, MediaRow]] = ()
    hasher: Hasher = field(default_factory=Hasher)

    def digest(self) -> str:
        """The state digest; valid once every kind was iterated to the end."""
        return self.hasher.hexdigest()


def _stream(conn, sql: str, params: tuple, name: str) -> Iterator[tuple]:
    with conn.cursor(name=name) as cur:
        cur.itersize = ITERSIZE
        cur.execute(sql, params)
        yield from cur


def _rows(conn, sql: str, where: str, params: tuple, name: str) -> Iterator[tuple[str, tuple]]:
    # Plain tuples: a row (key, *managed fields) compares equal to the desired NamedTuple.
    for row in _stream(conn, sql.format(where=where), params, name):
        yield row[0], row[1:]


def read_state(conn, models: Sequence[str] | None = None) -> CurrentState:
    """Stream the managed state in scope from ``conn`` (inside a transaction)."""
    where, params = scope_clause(models)
    hasher = Hasher()
    return CurrentState(
        models=hasher.wrap("model", _rows(conn, _MODELS, where, params, "rc_models")),
        posts=hasher.wrap("post", _rows(conn, _POSTS, where, params, "rc_posts")),
        media=hasher.wrap("media", _rows(conn, _MEDIA, where, params, "rc_media")),
        hasher=hasher,
    )


def state_digest(conn, models: Sequence[str] | None = None) -> str:
    """The digest of the managed state in scope, reading every row once."""
    state = read_state(conn, models)
    for rows in (state.models, state.posts, state.media):
        for _ in rows:
            pass
    return state.digest()
