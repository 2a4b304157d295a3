"""Write S3 Inventory reports in Amazon S3's own layout, for the tests and the bench.

``manifest.json`` (sourceBucket, destinationBucket, fileFormat, fileSchema,
creationTimestamp in ms, files[] with key/size/MD5checksum), ``manifest.checksum``,
and data files: CSV gzipped with URL-encoded keys (form encoding, as S3 writes them),
Parquet and ORC with plain keys and snake_case columns.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import time
import uuid
from urllib.parse import quote_plus

CSV_SCHEMA = "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag, StorageClass"
PARQUET_SCHEMA = (
    "message s3.inventory { required binary bucket (UTF8); required binary key (UTF8); "
    "optional binary version_id (UTF8); optional boolean is_latest; optional boolean is_delete_marker; "
    "optional int64 size; optional int64 last_modified_date (TIMESTAMP_MILLIS); optional binary e_tag (UTF8); "
    "optional binary storage_class (UTF8);}"
)


def row(key, size=3, etag="e", *, latest=True, marker=False, version="v1", modified="2026-11-01T12:00:00.000Z"):
    return {"key": key, "size": None if marker else size, "e_tag": None if marker else etag, "is_latest": latest,
            "is_delete_marker": marker, "version_id": version, "last_modified_date": modified}


def rows_from_listing(objects) -> list[dict]:
    """Inventory rows for a listing's ObjectInfos (ETags unquoted, as inventory has them)."""
    return [row(o.key, o.size, o.etag, modified=(o.last_modified or "2026-11-01T12:00:00Z")[:19] + ".000Z")
            for o in objects]


def csv_bytes(bucket: str, rows: list[dict]) -> bytes:
    text = io.StringIO()
    w = csv.writer(text, quoting=csv.QUOTE_ALL, lineterminator="\n")
    for r in rows:
        w.writerow([bucket, quote_plus(r["key"]), r["version_id"] or "", str(r["is_latest"]).lower(),
                    str(r["is_delete_marker"]).lower(), "" if r["size"] is None else r["size"],
                    r["last_modified_date"], r["e_tag"] or "", "STANDARD"])
    return gzip.compress(text.getvalue().encode("utf-8"), mtime=0)


def arrow_table(bucket: str, rows: list[dict]):
    import pyarrow as pa
    from datetime import datetime, timezone

    def ts(text):
        return datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)

    return pa.table({
        "bucket": pa.array([bucket] * len(rows), pa.string()),
        "key": pa.array([r["key"] for r in rows], pa.string()),
        "version_id": pa.array([r["version_id"] for r in rows], pa.string()),
        "is_latest": pa.array([r["is_latest"] for r in rows], pa.bool_()),
        "is_delete_marker": pa.array([r["is_delete_marker"] for r in rows], pa.bool_()),
        "size": pa.array([r["size"] for r in rows], pa.int64()),
        "last_modified_date": pa.array([ts(r["last_modified_date"]) for r in rows], pa.timestamp("ms", tz="UTC")),
        "e_tag": pa.array([r["e_tag"] for r in rows], pa.string()),
        "storage_class": pa.array(["STANDARD"] * len(rows), pa.string()),
    })


def data_bytes(fmt: str, bucket: str, rows: list[dict]) -> bytes:
    if fmt == "CSV":
        return csv_bytes(bucket, rows)
    out = io.BytesIO()
    if fmt == "Parquet":
        import pyarrow.parquet as pq

        pq.write_table(arrow_table(bucket, rows), out)
    else:
        import pyarrow.orc as po

        po.write_table(arrow_table(bucket, rows), out)
    return out.getvalue()


def put_report(client, dest: str, config_prefix: str, source_bucket: str, rows: list[dict], *, fmt: str = "CSV",
               stamp: str = "2026-11-20T01-00Z", created: float | None = None, files: int = 2,
               corrupt: bool = False, with_manifest: bool = True) -> str:
    """Write a report under ``s3://dest/config_prefix/stamp/`` (data under ``…/data/``);
    return the manifest's URL. ``created``: seconds since the epoch (default: now)."""
    config_prefix = config_prefix.rstrip("/") + "/"
    ext = {"CSV": "csv.gz", "Parquet": "parquet", "ORC": "orc"}[fmt]
    entries = []
    per = max(1, -(-len(rows) // files)) if rows else 1
    chunks = [rows[i : i + per] for i in range(0, len(rows), per)] or [[]]
    for i, chunk in enumerate(chunks):
        body = data_bytes(fmt, source_bucket, chunk)
        key = f"{config_prefix}data/{uuid.uuid4()}.{ext}"
        md5 = hashlib.md5(body).hexdigest()
        if corrupt and i == len(chunks) - 1:
            body = body[:-1] + bytes([body[-1] ^ 1])
        client.put_object(Bucket=dest, Key=key, Body=body)
        entries.append({"key": key, "size": len(body), "MD5checksum": md5})
    manifest = {
        "sourceBucket": source_bucket,
        "destinationBucket": f"arn:aws:s3:::{dest}",
        "version": "2016-11-30",
        "creationTimestamp": str(int((time.time() if created is None else created) * 1000)),
        "fileFormat": fmt,
        "fileSchema": CSV_SCHEMA if fmt == "CSV" else PARQUET_SCHEMA,
        "files": entries,
    }
    raw = json.dumps(manifest).encode()
    key = f"{config_prefix}{stamp}/manifest.json"
    if with_manifest:
        client.put_object(Bucket=dest, Key=key, Body=raw)
        client.put_object(Bucket=dest, Key=f"{config_prefix}{stamp}/manifest.checksum", Body=hashlib.md5(raw).hexdigest().encode())
    return f"s3://{dest}/{key}"
