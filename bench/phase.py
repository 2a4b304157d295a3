"""One benchmark phase, run as a whole process (bench/run.py measures its wall time and
peak RSS from the outside). Prints one JSON line with what it did and in-process
timings of its steps.

    python bench/phase.py plan       --database URL --objects N [--delta] --out FILE
    python bench/phase.py apply      --database URL --plan FILE
    python bench/phase.py read-state --database URL
    python bench/phase.py copy       --database URL --objects N      (raw COPY reference)
    python bench/phase.py desired    --objects N [--delta]           (listing -> desired rows, no DB)
    python bench/phase.py gen        --objects N [--delta]           (the synthetic listing alone)
    python bench/phase.py list       --bucket B [--workers W]        (S3Source; endpoint from AWS_ENDPOINT_URL)
    python bench/phase.py import                                     (interpreter + import baseline)
    python bench/phase.py createdb   --database ADMIN_URL --name NAME (then run `reconciler init`)
    python bench/phase.py platform   --database URL --objects N --catalogue product-images  (the shop's own rows)

Every phase takes ``--catalogue creators|product-images`` (creators by default): the
synthetic bucket (``synth.synthetic_bucket`` or ``synth.synthetic_products``) and the
settings follow it. A checkout from before catalogues ignores it (it has only creators).
    python bench/phase.py dropdb     --database ADMIN_URL --name NAME

``plan`` and ``apply`` go through the library's own entry points
(``reconciler.commands.make_plan`` + ``write_plan``, ``reconciler.commands.apply``);
plan step timings come from wrapping ``commands.classify_listing`` /
``commands.plan_changes`` in this process only, apply step timings from apply's own progress messages.
Profile a phase with ``python -m cProfile -s cumtime bench/phase.py …``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

CDN = "https://cdn.example.test/media"
T0 = time.perf_counter()


def _timed(store: dict, name: str, fn):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            store[name] = round(store.get(name, 0.0) + time.perf_counter() - t, 3)

    return wrapper


def _catalogue(args):
    from reconciler.catalogue import load_catalogue

    return load_catalogue(args.catalogue)


def _bucket(args, delta: bool | None = None):
    from synth import synthetic_bucket, synthetic_products

    make = synthetic_products if args.catalogue == "product-images" else synthetic_bucket
    return make(args.objects, args.seed, args.delta if delta is None else delta)


def _settings(args):
    from reconciler import Settings

    settings = Settings(database=args.database, cdn_base_url=CDN, source=f"synthetic://{args.objects}", state_dir=args.workdir,
                        catalogue=_catalogue(args), max_delete_percent=100, max_url_rewrite_percent=100)
    if os.environ.get("RECONCILER_BENCH_BATCH_ROWS"):  # to try other batch sizes (plan.batch_rows)
        settings.batch_rows = int(os.environ["RECONCILER_BENCH_BATCH_ROWS"])
    return settings


def phase_plan(args) -> dict:
    from reconciler import commands, planfile

    steps: dict[str, float] = {}
    # Step timings: wrap the module attributes make_plan calls (in this process only).
    for attr, label in (("classify_listing", "list+classify"), ("plan_changes", "batches+diff")):
        if hasattr(commands, attr):
            setattr(commands, attr, _timed(steps, label, getattr(commands, attr)))
    settings = _settings(args)
    objects = _bucket(args)
    t = time.perf_counter()
    # What `reconciler plan` does: make_plan leaves the sealing to write_plan, which
    # hashes the changes as it writes them.
    plan = commands.make_plan(settings, objects=objects, seal=False)
    steps["make_plan"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    planfile.write_plan(plan, args.out)
    steps["write_plan"] = round(time.perf_counter() - t, 3)
    return {
        "changes": len(plan.changes),
        "summary": plan.summary,
        "object_count": plan.source["object_count"],
        "current_rows": sum(plan.target["current_counts"].values()),
        "plan_mb": round(os.path.getsize(args.out) / 2**20, 1),
        "steps": steps,
    }


# The progress messages of commands.apply, by first word, and what runs
# until the next one (the library is the clock; nothing of it is wrapped).
_APPLY_STAGES = {
    "verifying": "verify_plan+connect",
    "waiting": "locks",
    "checking": "digest_check",
    "staging": "stage+audit_before",
    "deleting": "delete",
    "creating": "insert+update",
    "writing": "audit_after",
    "committing": "commit+close",
}


def phase_apply(args) -> dict:
    from reconciler import commands

    steps: dict[str, float] = {}
    marks: list[tuple[str, float]] = []
    settings = _settings(args)
    t = time.perf_counter()
    result = commands.apply(settings, args.plan, progress=lambda msg: marks.append((msg, time.perf_counter())))
    end = time.perf_counter()
    steps["apply"] = round(end - t, 3)
    if marks and marks[0][1] - t > 0.001:
        steps["before_first_progress"] = round(marks[0][1] - t, 3)
    for (msg, at), nxt in zip(marks, [m[1] for m in marks[1:]] + [end]):
        label = _APPLY_STAGES.get(msg.split(" ")[0], msg.split(" ")[0])
        steps[label] = round(steps.get(label, 0.0) + nxt - at, 3)
    return {"apply_id": result.apply_id, "changes": result.total, "steps": steps}


def phase_read_state(args) -> dict:
    from reconciler.store.current import read_rows, state_digest
    from reconciler.store.db import open_database

    catalogue = _catalogue(args)
    with open_database(args.database) as db, db.transaction() as conn:
        conn.cursor().execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        t = time.perf_counter()
        counts = {kind: read_rows(conn, catalogue, kind).height for kind in catalogue.kinds}
        took = time.perf_counter() - t
        t = time.perf_counter()
        digest = state_digest(conn, catalogue).digest
        took_digest = time.perf_counter() - t
    return {"rows": counts, "digest": digest[:12],
            "steps": {"read_rows": round(took, 3), "state_digest (server)": round(took_digest, 3)}}


def _esc(v) -> str:
    if v is None:
        return "\\N"
    s = str(v)
    if "\\" in s or "\t" in s or "\n" in s or "\r" in s:
        s = s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return s


def phase_copy(args) -> dict:
    """COPY the rows a cold apply creates straight into the content tables.

    The rows (ids and foreign keys included) are prepared in memory first, so the timed
    part is PostgreSQL's ingest of the same rows into the same tables with the same
    indexes and constraints: the physical limit of apply.
    """
    import psycopg2

    from reconciler.engine.frames import build_desired

    if args.catalogue != "creators":
        return {"rows": {}, "steps": {}, "skipped": "the raw COPY reference is written for creators"}
    steps: dict[str, float] = {}
    t = time.perf_counter()
    d, _ = build_desired(_bucket(args, delta=False), _catalogue(args), cdn_base_url=CDN)
    model_rows = d.rows["model"].sort("k.model")
    model_id = {name: i for i, name in enumerate(model_rows["k.model"].to_list(), 1)}
    models = io.StringIO()
    for name, thumb, icon, banner, count in model_rows.select(
            "k.model", "thumbnail_url", "icon_url", "banner_url", "post_count").iter_rows():
        models.write("\t".join(map(_esc, (model_id[name], name, thumb, icon, banner, count))) + "\n")
    post_id = {}
    posts = io.StringIO()
    for i, (key, model, folder, title, cdns) in enumerate(
            d.rows["post"].sort("k.post").select("k.post", "model", "folder_name", "title", "media_cdns").iter_rows(), 1):
        post_id[key] = i
        posts.write("\t".join(map(_esc, (i, model_id[model], folder, title,
                                           json.dumps(cdns, sort_keys=True, ensure_ascii=False)))) + "\n")
    media = io.StringIO()
    rows = d.rows["media"].sort("k.media").select("s3_key", "post", "url", "type", "size_bytes", "etag").iter_rows()
    for i, (key, post, url, kind, size, etag) in enumerate(rows, 1):
        media.write("\t".join(map(_esc, (i, post_id[post], key, url, kind, size, etag))) + "\n")
    steps["prepare_rows"] = round(time.perf_counter() - t, 3)
    rows = {"model": len(model_id), "post": len(post_id), "media": d.rows["media"].height}
    del d
    conn = psycopg2.connect(args.database)
    try:
        with conn.cursor() as cur:
            t = time.perf_counter()
            for table, cols, buf in (
                ("whitelabel_models", "id, folder_name, thumbnail_url, icon_url, banner_url, post_count", models),
                ("whitelabel_posts", "id, whitelabel_model_id, folder_name, title, media_cdns", posts),
                ("whitelabel_media", "id, whitelabel_post_id, s3_key, url, type, size_bytes, etag", media),
            ):
                buf.seek(0)
                cur.copy_expert(f"COPY {table} ({cols}) FROM STDIN", buf, size=1 << 20)
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
            conn.commit()
            steps["copy+commit"] = round(time.perf_counter() - t, 3)
    finally:
        conn.close()
    return {"rows": rows, "steps": steps}


def phase_desired(args) -> dict:
    """The engine's pure part, as make_plan runs it: the listing classified
    (``classify_listing``), then the desired rows of its items (``desired_of``)."""
    from reconciler.engine.frames import classify_listing, desired_of

    catalogue = _catalogue(args)
    t = time.perf_counter()
    listing = classify_listing(_bucket(args), catalogue)
    classified = time.perf_counter()
    known = None
    if args.catalogue == "product-images":  # every product and variant of the synthetic shop exists
        from synth import PRODUCT_WEIGHTS, product_ids

        ids = product_ids(args.objects)
        known = {"product": set(ids), "variant": {f"{p}/{w}" for p in ids for w in PRODUCT_WEIGHTS}}
    d = desired_of(listing.items.frame(), catalogue, CDN, known=known)
    done = time.perf_counter()
    return {
        "rows": {kind: frame.height for kind, frame in d.rows.items()},
        "steps": {"classify_listing": round(classified - t, 3), "desired_of": round(done - classified, 3),
                  "total": round(done - t, 3)},
    }


def phase_gen(args) -> dict:
    t = time.perf_counter()
    n = sum(1 for _ in _bucket(args))
    return {"objects": n, "steps": {"generate": round(time.perf_counter() - t, 3)}}


def phase_list(args) -> dict:
    from reconciler.sources import S3Source

    kwargs = {"max_workers": args.workers} if args.workers else {}
    source = S3Source(args.bucket, args.prefix, **kwargs)
    # boto3's import, client set-up and first call (loading the operation's model and
    # handlers) are not part of the listing.
    source.client().list_objects_v2(Bucket=args.bucket, Prefix=args.prefix, MaxKeys=1)
    t, cpu = time.perf_counter(), time.process_time()
    n = sum(1 for _ in source.list())
    took, cpu = time.perf_counter() - t, time.process_time() - cpu
    return {"objects": n, "max_workers": source.max_workers, "steps": {"list": round(took, 3)},
            "objects_per_s": round(n / took) if took else None,
            "cpu_us_per_key": round(cpu / n * 1e6, 2) if n else None}


def phase_import(args) -> dict:
    import reconciler.commands  # noqa: F401

    return {"steps": {}}


def _admin(url: str, sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def phase_createdb(args) -> dict:
    _admin(args.database, f'CREATE DATABASE "{args.name}"')
    return {"created": args.name}


def phase_platform(args) -> dict:
    """The product platform's own tables and rows for the synthetic shop (its products
    and their variants), as the platform made them, before ``reconciler init``."""
    import psycopg2

    from synth import PRODUCT_WEIGHTS, product_ids

    schema = os.path.join(HERE, "..", "tests", "data", "platform-schema-products.sql")
    ids = product_ids(args.objects)
    t = time.perf_counter()
    conn = psycopg2.connect(args.database)
    try:
        with conn.cursor() as cur:
            cur.execute(open(schema, encoding="utf-8").read())
            cur.copy_expert("COPY products (id, name) FROM STDIN", io.StringIO("".join(f"{p}\t{p}\n" for p in ids)))
            rows = "".join(f"{p}\t{w}\n" for p in ids for w in PRODUCT_WEIGHTS)
            cur.copy_expert("COPY product_variants (product_id, weight) FROM STDIN", io.StringIO(rows))
        conn.commit()
    finally:
        conn.close()
    return {"products": len(ids), "steps": {"platform": round(time.perf_counter() - t, 3)}}


def phase_dropdb(args) -> dict:
    _admin(args.database, f'DROP DATABASE IF EXISTS "{args.name}" WITH (FORCE)')
    return {"dropped": args.name}


PHASES = {
    "plan": phase_plan,
    "apply": phase_apply,
    "read-state": phase_read_state,
    "copy": phase_copy,
    "desired": phase_desired,
    "gen": phase_gen,
    "list": phase_list,
    "import": phase_import,
    "createdb": phase_createdb,
    "platform": phase_platform,
    "dropdb": phase_dropdb,
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=sorted(PHASES))
    ap.add_argument("--database", metavar="URL")
    ap.add_argument("--objects", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--catalogue", default="creators", choices=["creators", "product-images"])
    ap.add_argument("--delta", action="store_true")
    ap.add_argument("--out", metavar="FILE")
    ap.add_argument("--plan", metavar="FILE")
    ap.add_argument("--name")
    ap.add_argument("--bucket", default="bench")
    ap.add_argument("--prefix", default="")
    ap.add_argument("--workers", type=int, default=None, help="S3Source max_workers (default: the library's)")
    ap.add_argument("--workdir", default=os.getcwd())
    args = ap.parse_args(argv)
    result = PHASES[args.phase](args)
    result["phase"] = args.phase
    result["in_process_s"] = round(time.perf_counter() - T0, 3)
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
