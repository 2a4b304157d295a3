"""A PostgreSQL URL naming another database on the same server (bench's databases are
made per run next to the admin database)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def with_dbname(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
