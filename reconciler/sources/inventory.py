"""S3 Inventory reports as a source: the bucket's objects as Amazon S3 last reported them.

Listing 100M objects takes 100,000 ``ListObjectsV2`` requests; S3 Inventory writes the
same facts once a day (or week) as a report in another bucket::

    s3://DEST/PREFIX/SOURCE-BUCKET/CONFIG-ID/2026-11-20T01-00Z/manifest.json
                                              …/manifest.checksum   (MD5 of manifest.json)
    s3://DEST/PREFIX/SOURCE-BUCKET/CONFIG-ID/data/<uuid>.csv.gz | .parquet | .orc

``--inventory`` names either the configuration's prefix (``…/CONFIG-ID/``: the newest
``YYYY-MM-DDTHH-MMZ/manifest.json`` under it is used) or one ``manifest.json``. The
manifest gives ``sourceBucket``, ``fileFormat`` (CSV, Parquet or ORC), ``fileSchema``
(CSV's column order), ``creationTimestamp`` (milliseconds since the epoch) and
``files[]`` (``key``, ``size``, ``MD5checksum``).

Rules:

- A report of another bucket is refused; so is one older than ``max_age`` (its age is
  in the message), and a data file whose size or MD5 differs from the manifest's.
- Only current objects: rows with ``IsLatest`` false or ``IsDeleteMarker`` true (a
  versioned bucket's report has those columns) are dropped.
- Only keys under the source prefix; keys come URL-encoded in CSV (form encoding:
  ``+`` for a space, ``%2B`` for a plus, so ``unquote_plus``) and plain in Parquet and
  ORC. ETags come without quotes, as the listing's are after ``_s3_object``.
- Streaming: one data file at a time is downloaded to a temporary file (hashed as it
  arrives, so nothing is parsed before its MD5 is known to be right), then read in
  batches; a whole report is never in memory.

Reading needs ``s3:GetObject`` on the inventory bucket (and ``s3:ListBucket`` on it to
find the newest report); the source bucket itself is not listed. Parquet and ORC need
``pyarrow`` (the ``[inventory]`` extra).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable, Iterator
from urllib.parse import unquote_plus, urlparse

from ..engine.shards import Shard
from ..errors import ConfigError, SourceError
from ..objects import ObjectInfo
from .s3 import S3Source, _botocore_message

DEFAULT_MAX_AGE = 48 * 3600.0  # seconds; --max-inventory-age, source.max_inventory_age
BATCH_ROWS = 65_536
_REPORT_FOLDER = re.compile(r"\d{4}-\d\d-\d\dT\d\d-\d\dZ\Z")
# CSV column names (the manifest's fileSchema) → the snake_case names Parquet and ORC use.
_CSV_COLUMNS = {
    "Bucket": "bucket",
    "Key": "key",
    "VersionId": "version_id",
    "IsLatest": "is_latest",
    "IsDeleteMarker": "is_delete_marker",
    "Size": "size",
    "LastModifiedDate": "last_modified_date",
    "ETag": "e_tag",
}
_WANTED = ("key", "size", "e_tag", "last_modified_date", "is_latest", "is_delete_marker")


@dataclass(frozen=True)
class Report:
    """A report's manifest, checked: its URL, when S3 made it, its files and format."""

    url: str  # s3://DEST/…/manifest.json
    source_bucket: str
    file_format: str  # "CSV", "Parquet" or "ORC"
    columns: tuple[str, ...]  # snake_case; CSV's column order
    files: tuple[dict, ...]
    created_at: datetime

    @property
    def created_at_text(self) -> str:
        return self.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")

    def to_dict(self) -> dict:
        """What a plan records in ``source.inventory``."""
        return {"manifest": self.url, "created_at": self.created_at_text, "format": self.file_format}


def format_age(seconds: float) -> str:
    """``2d 3h``, ``5h 12m``, ``7m``: an age a reviewer reads at a glance."""
    s = int(max(0, seconds))
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m}m"
    return f"{m}m"


def _split_s3(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ConfigError(f"inventory URL {url!r} is not s3://BUCKET/PREFIX/ or s3://BUCKET/…/manifest.json")
    return parsed.netloc, parsed.path.lstrip("/")


@dataclass
class InventorySource:
    """The objects of ``s3``'s bucket and prefix, read from an S3 Inventory report.

    ``url``, ``root`` and ``public_url`` are the bucket's own (the plan names the
    bucket, not the report); :attr:`report` is the manifest used, read and checked once.
    The client is ``s3``'s: the same credentials chain, endpoint and retries.
    """

    s3: S3Source
    inventory: str
    max_age: float = DEFAULT_MAX_AGE
    now: Callable[[], float] = time.time
    batch_rows: int = BATCH_ROWS
    _report: Report | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return self.s3.url

    @property
    def root(self) -> str:
        return self.s3.root

    @property
    def public_url(self) -> str:
        return self.s3.public_url

    # ------------------------------------------------------------------ the manifest

    @property
    def report(self) -> Report:
        """The manifest in use, checked (bucket, age); fetched on first use."""
        if self._report is None:
            bucket, key = _split_s3(self.inventory)
            if not key.endswith("manifest.json"):
                key = self._newest_manifest(bucket, key)
            report = self._read_manifest(bucket, key)
            if report.source_bucket != self.s3.bucket:
                raise SourceError(
                    f"the inventory report {report.url} lists bucket {report.source_bucket!r}, not the source's "
                    f"{self.s3.bucket!r}: check --inventory and --source"
                )
            age = self.now() - report.created_at.timestamp()
            if age > self.max_age:
                raise SourceError(
                    f"the inventory report {report.url} is {format_age(age)} old (made {report.created_at_text}), "
                    f"older than --max-inventory-age {format_age(self.max_age)}: wait for a newer report, "
                    "list the bucket instead (drop --inventory), or raise --max-inventory-age"
                )
            self._report = report
        return self._report

    def _newest_manifest(self, bucket: str, prefix: str) -> str:
        """The newest ``YYYY-MM-DDTHH-MMZ/manifest.json`` under a configuration prefix.
        A report folder without its manifest (S3 writes it last) is passed over."""
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        folders = []
        try:
            pages = self.s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
            for page in pages:
                for p in page.get("CommonPrefixes", ()):
                    name = p["Prefix"][len(prefix) : -1]
                    if _REPORT_FOLDER.match(name):
                        folders.append(name)
        except Exception as e:
            raise self._error(e, f"cannot list the inventory reports under s3://{bucket}/{prefix}", "s3:ListBucket") from None
        for name in sorted(folders, reverse=True):
            key = f"{prefix}{name}/manifest.json"
            if self._exists(bucket, key):
                return key
        raise SourceError(
            f"no inventory report under s3://{bucket}/{prefix}: expected YYYY-MM-DDTHH-MMZ/manifest.json there; "
            "check --inventory (the inventory configuration's prefix: DEST-PREFIX/SOURCE-BUCKET/CONFIG-ID/)"
        )

    def _exists(self, bucket: str, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.s3.client().head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._error(e, f"cannot read s3://{bucket}/{key}", "s3:GetObject") from None
        except Exception as e:
            raise self._error(e, f"cannot read s3://{bucket}/{key}", "s3:GetObject") from None

    def _get(self, bucket: str, key: str) -> bytes:
        try:
            return self.s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as e:
            raise self._error(e, f"cannot read s3://{bucket}/{key}", "s3:GetObject") from None

    def _read_manifest(self, bucket: str, key: str) -> Report:
        url = f"s3://{bucket}/{key}"
        raw = self._get(bucket, key)
        checksum_key = key[: -len("manifest.json")] + "manifest.checksum"
        if self._exists(bucket, checksum_key):
            expected = self._get(bucket, checksum_key).decode("ascii", "replace").split()
            if expected and expected[0].lower() != hashlib.md5(raw).hexdigest():
                raise SourceError(f"the inventory manifest {url} does not match its manifest.checksum: it is corrupted")
        try:
            m = json.loads(raw)
            file_format = str(m["fileFormat"])
            created = datetime.fromtimestamp(int(m["creationTimestamp"]) / 1000, timezone.utc)
            files = tuple({"key": f["key"], "size": int(f["size"]), "md5": str(f["MD5checksum"]).lower()} for f in m["files"])
            source_bucket = str(m["sourceBucket"])
            schema = str(m.get("fileSchema") or "")
        except (ValueError, KeyError, TypeError) as e:
            raise SourceError(f"{url} is not an S3 Inventory manifest ({type(e).__name__}: {e}); check --inventory") from None
        fmt = {"csv": "CSV", "parquet": "Parquet", "orc": "ORC"}.get(file_format.lower())
        if fmt is None:
            raise SourceError(f"the inventory report {url} has format {file_format!r}; CSV, Parquet and ORC are read")
        columns: tuple[str, ...] = ()
        if fmt == "CSV":
            columns = tuple(_CSV_COLUMNS.get(c.strip(), c.strip()) for c in schema.split(","))
            if "key" not in columns:
                raise SourceError(f"the inventory report {url} has no Key column in its fileSchema")
        return Report(url, source_bucket, fmt, columns, files, created)

    # ------------------------------------------------------------------ the rows

    def list(self, scope: Iterable[str] | Shard | None = None, under: str = "") -> Iterator[ObjectInfo]:
        """The report's current objects under the root (with a ``scope``: in those top
        folders only, below ``under``), a data file at a time, in the report's order."""
        report = self.report
        dest, _ = _split_s3(report.url)
        root = self.s3.prefix + (under if scope is not None else "")
        keys = scope if scope is None or isinstance(scope, Shard) else frozenset(scope)
        with tempfile.TemporaryDirectory(prefix="reconciler-inventory-") as tmp:
            for f in report.files:
                path = os.path.join(tmp, "data")
                self._download(dest, f, path)
                rows = _read_csv(path, report.columns) if report.file_format == "CSV" else _read_arrow(
                    path, report.file_format, self.batch_rows
                )
                for o in rows:
                    key = o.key
                    if not key.startswith(root):
                        continue
                    if keys is not None:
                        top, slash, _ = key[len(root) :].partition("/")
                        if not slash or top not in keys:
                            continue
                    yield o
                os.unlink(path)

    def _download(self, bucket: str, f: dict, path: str) -> None:
        """Download one data file to ``path``, checking its size and MD5 as it arrives."""
        url = f"s3://{bucket}/{f['key']}"
        md5, size = hashlib.md5(), 0
        try:
            body = self.s3.client().get_object(Bucket=bucket, Key=f["key"])["Body"]
            with open(path, "wb") as out:
                for chunk in body.iter_chunks(1 << 20):
                    md5.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
        except OSError as e:
            raise SourceError(f"cannot store {url} in a temporary file: {e.strerror}; check TMPDIR's free space") from None
        except Exception as e:
            raise self._error(e, f"cannot read {url}", "s3:GetObject") from None
        if size != f["size"] or md5.hexdigest() != f["md5"]:
            raise SourceError(
                f"the inventory data file {url} is corrupted: its MD5 is {md5.hexdigest()} ({size} bytes), the manifest "
                f"says {f['md5']} ({f['size']} bytes); wait for the next report or list the bucket instead"
            )

    def _error(self, e: Exception, what: str, permission: str) -> SourceError:
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(e, SourceError):
            return e
        if isinstance(e, ClientError):
            code = e.response.get("Error", {}).get("Code", "Unknown")
            hints = {
                "NoSuchBucket": "the inventory bucket does not exist at this endpoint; check --inventory",
                "NoSuchKey": "no such object; check --inventory",
                "AccessDenied": f"the credentials lack {permission} on the inventory bucket",
                "403": f"the credentials lack {permission} on the inventory bucket",
            }
            return SourceError(f"{what}: {code}: {hints.get(code, 'check the inventory URL, endpoint and credentials')}")
        if isinstance(e, BotoCoreError):
            return SourceError(f"{what}: {_botocore_message(e)}")
        return SourceError(f"{what}: {type(e).__name__}: {e}")


def _is_true(value) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _read_csv(path: str, columns: tuple[str, ...]) -> Iterator[ObjectInfo]:
    """Rows of a gzipped CSV data file (no header; columns as the manifest's fileSchema)."""
    at = {name: i for i, name in enumerate(columns)}
    k = at["key"]
    size, etag, lm = at.get("size"), at.get("e_tag"), at.get("last_modified_date")
    latest, marker = at.get("is_latest"), at.get("is_delete_marker")
    try:
        with gzip.open(path, "rt", encoding="utf-8", newline="") as text:
            for row in csv.reader(text):
                if not row:
                    continue
                if latest is not None and not _is_true(row[latest]):
                    continue
                if marker is not None and _is_true(row[marker]):
                    continue
                s = row[size] if size is not None else ""
                e = row[etag].strip('"') if etag is not None else ""
                t = row[lm] if lm is not None else ""
                yield ObjectInfo(unquote_plus(row[k]), int(s) if s else None, e or None, (t[:19] + "Z") if t else None)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error, IndexError, ValueError) as e:
        raise SourceError(f"an inventory data file is not a gzipped CSV report ({type(e).__name__}: {e})") from None


def _read_arrow(path: str, fmt: str, batch_rows: int) -> Iterator[ObjectInfo]:
    """Rows of a Parquet or ORC data file, in record batches (pyarrow)."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
    except ImportError:
        raise ConfigError(f"reading a {fmt} inventory report needs pyarrow: pip install 'reconciler[inventory]'") from None
    try:
        if fmt == "Parquet":
            import pyarrow.parquet as pq

            f = pq.ParquetFile(path)
            names = set(f.schema_arrow.names)
            batches = f.iter_batches(batch_size=batch_rows, columns=[c for c in _WANTED if c in names])
        else:
            import pyarrow.orc as po

            f = po.ORCFile(path)
            names = set(f.schema.names)
            wanted = [c for c in _WANTED if c in names]
            batches = (
                b for i in range(f.nstripes)
                for b in pa.Table.from_batches([f.read_stripe(i, columns=wanted)]).to_batches(batch_rows)
            )
        if "key" not in names:
            raise SourceError(f"an inventory {fmt} data file has no 'key' column")
        for batch in batches:
            keep = None
            if "is_latest" in names:
                keep = pc.fill_null(batch.column("is_latest"), False)
            if "is_delete_marker" in names:
                live = pc.invert(pc.fill_null(batch.column("is_delete_marker"), False))
                keep = live if keep is None else pc.and_(keep, live)
            if keep is not None:
                batch = batch.filter(keep)
            n = batch.num_rows
            keys = batch.column("key").to_pylist()
            sizes = batch.column("size").to_pylist() if "size" in names else [None] * n
            etags = batch.column("e_tag").to_pylist() if "e_tag" in names else [None] * n
            if "last_modified_date" in names:
                col = batch.column("last_modified_date")
                if pa.types.is_timestamp(col.type):
                    col = pc.strftime(col, format="%Y-%m-%dT%H:%M:%SZ")
                times = col.to_pylist()
            else:
                times = [None] * n
            for key, size, etag, t in zip(keys, sizes, etags, times):
                yield ObjectInfo(key, size, etag.strip('"') or None if etag else None, t[:19] + "Z" if t else None)
    except (OSError, pa.ArrowException) as e:
        raise SourceError(f"an inventory {fmt} data file cannot be read ({type(e).__name__}: {e})") from None
