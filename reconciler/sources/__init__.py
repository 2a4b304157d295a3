"""Bucket listing backends: an S3-compatible bucket or a local folder.

A source yields ``ObjectInfo(key, size, etag, last_modified)`` for every object under
its root; ``root`` is the part of the key above the layout (``"media/"`` for
``s3://bucket/media``). Sources only list: they never read or write object bodies, so
the S3 source needs nothing but ``s3:ListBucket``.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Protocol
from urllib.parse import unquote, urlparse

from ..engine.shards import Shard
from ..errors import ConfigError
from ..objects import ObjectInfo
from .folder import FolderSource
from .s3 import S3Source

__all__ = ["ObjectInfo", "Source", "S3Source", "FolderSource", "open_source"]

Progress = Callable[[int], None]


class Source(Protocol):
    url: str
    root: str
    public_url: str  # the default base of media URLs

    def list(self, scope: Iterable[str] | Shard | None = None, under: str = "") -> Iterator[ObjectInfo]:
        """Every object under the root; with a ``scope`` (top keys, or a :class:`Shard`)
        only the objects in those top folders, which stand below ``under`` (the
        catalogue's literal folders before its top entity's: ``products/``; "" for
        creators' models). A key that cannot be one folder ("", or holding a "/") lists
        nothing."""
        ...


def open_source(
    url: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    addressing_style: str | None = None,
    max_workers: int = 8,
    progress: Callable[[str], None] | None = None,
    inventory: str | None = None,
    max_inventory_age: float | None = None,
) -> Source:
    """A source for ``s3://BUCKET[/PREFIX]``, ``file://PATH`` or a plain folder path.

    ``progress`` hears about S3 retries (see :class:`S3Source`). With ``inventory`` (an
    S3 Inventory report's URL; see :mod:`reconciler.sources.inventory`) the bucket's objects are
    read from that report instead of being listed."""
    if inventory:
        if not url.startswith("s3://"):
            raise ConfigError(f"--inventory reads a report of an S3 bucket, but the source {url!r} is not s3://BUCKET[/PREFIX]")
        from .inventory import DEFAULT_MAX_AGE, InventorySource  # pyarrow and friends, when asked for

        s3 = open_source(url, endpoint_url=endpoint_url, region=region, addressing_style=addressing_style,
                         max_workers=max_workers, progress=progress)
        return InventorySource(s3, inventory, DEFAULT_MAX_AGE if max_inventory_age is None else max_inventory_age)
    if url.startswith("s3://"):
        parsed = urlparse(url)
        bucket = parsed.netloc
        if not bucket:
            raise ConfigError(f"source URL {url!r} names no bucket; use s3://BUCKET[/PREFIX]")
        prefix = parsed.path.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return S3Source(bucket, prefix, endpoint_url, region, addressing_style, max_workers, progress=progress)
    if url.startswith("file://"):
        return FolderSource(unquote(url[len("file://") :]))
    if "://" in url:
        raise ConfigError(f"unsupported source URL {url!r}; use s3://BUCKET[/PREFIX] or a folder path")
    return FolderSource(url)
