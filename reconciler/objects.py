"""An object of a listing, as every source yields it."""

from __future__ import annotations

from typing import NamedTuple


class ObjectInfo(NamedTuple):
    """One object: its full key, size in bytes, ETag and last-modified time (ISO 8601),
    the last three None where the source does not say."""

    key: str
    size: int | None = None
    etag: str | None = None
    last_modified: str | None = None
