"""Crashes and database faults during apply: all or nothing, for real.

``python -m reconciler apply`` runs in a subprocess on a plan of 20k objects (made by
``python -m reconciler plan`` from a generated folder) and is killed with SIGKILL at
several points: as soon as it connects, while a lock the test holds keeps it inside its
transaction (the apply lock; the audit log, with the content tables locked), as soon as
its transaction holds the content tables' locks, at fractions of the transaction's
measured duration, while a statement writes ``whitelabel_media``, and while it commits —
all seen from outside in ``pg_stat_activity`` / ``pg_locks``. Afterwards the database is
in exactly one of two states: untouched (no content rows, no audit row) or fully applied
(the reference rows, one audit row, the next plan empty), and untouched after the kills
held inside the transaction; applying the plan again either succeeds or says it was
already applied. Where the timed kills land depends on the machine's load, so nothing
is asserted about that. A backend terminated by ``pg_terminate_backend`` mid-apply gives
one clean error line, exit 1, and changes nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg2
import pytest

from reconciler.store.db import LOCK_KEY

from .conftest import CDN

MODELS, POSTS, MEDIA = 40, 10, 50  # 20,000 media, 400 posts, 40 models
TOTAL = MODELS + MODELS * POSTS + MODELS * POSTS * MEDIA
APP = "rc-crash-test"

FINGERPRINT = """
SELECT (SELECT count(*) FROM whitelabel_models),
       (SELECT count(*) FROM whitelabel_posts),
       (SELECT count(*) FROM whitelabel_media),
       (SELECT count(*) FROM reconciler_applies),
       (SELECT count(*) FROM reconciler_changes) + (SELECT count(plan_file) FROM reconciler_applies),
       (SELECT md5(string_agg(folder_name || '|' || coalesce(thumbnail_url, '') || '|' || coalesce(icon_url, '')
                              || '|' || coalesce(post_count::text, ''), ',' ORDER BY folder_name))
          FROM whitelabel_models),
       (SELECT md5(string_agg(m.folder_name || '/' || p.folder_name || '|' || coalesce(p.title, '') || '|'
                              || coalesce(p.media_cdns::text, ''), ',' ORDER BY m.folder_name, p.folder_name))
          FROM whitelabel_posts p JOIN whitelabel_models m ON m.id = p.whitelabel_model_id),
       (SELECT md5(string_agg(x.s3_key || '|' || x.url || '|' || x.type || '|' || coalesce(x.size_bytes::text, '')
                              || '|' || p.folder_name, ',' ORDER BY x.s3_key))
          FROM whitelabel_media x JOIN whitelabel_posts p ON p.id = x.whitelabel_post_id)
"""
UNTOUCHED = (0, 0, 0, 0, 0, None, None, None)
RESET = (
    "TRUNCATE whitelabel_media, whitelabel_posts, whitelabel_models, reconciler_changes, reconciler_applies "
    "RESTART IDENTITY CASCADE"
)


def with_app_name(url: str, name: str) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query) + [("application_name", name)]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def child_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(("RECONCILER_", "DATABASE_URL"))}


def start_apply(plan: str, url: str, cwd) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler", "apply", plan, "--database", url],
        cwd=cwd,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class Watcher:
    """Watches the backend of an apply (found by its application_name) in pg_stat_activity
    and pg_locks. Its transaction is "in progress" while it holds a lock on
    whitelabel_media: that does not depend on which statements the apply runs."""

    QUERY = """
        SELECT a.pid, a.state, a.query,
               EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.granted
                         AND l.relation = 'whitelabel_media'::regclass),
               CASE WHEN a.wait_event_type = 'Lock' THEN a.wait_event END
        FROM pg_stat_activity a WHERE a.application_name = %s"""

    def __init__(self, sql, app: str) -> None:
        self.sql, self.app = sql, app
        self.locked_at: float | None = None  # when the transaction was first seen

    def backend(self):
        rows = self.sql(self.QUERY, (self.app,))
        return rows[0] if rows else None

    def wait_until(self, proc: subprocess.Popen, predicate, timeout: float = 60):
        """Poll until ``predicate(row, seconds_in_transaction)`` holds; return the row,
        or None when the apply ended first."""
        self.locked_at = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return None
            row = self.backend()
            now = time.monotonic()
            if row and row[3] and self.locked_at is None:
                self.locked_at = now
            inside = None if self.locked_at is None else now - self.locked_at
            if row and predicate(row, inside):
                return row
            time.sleep(0.004)
        raise AssertionError("the apply never reached the point to interrupt it")

    def wait_gone(self, timeout: float = 20) -> None:
        """A killed client's backend lives on until it notices; wait for it to end."""
        deadline = time.monotonic() + timeout
        while self.backend() is not None:
            assert time.monotonic() < deadline, "the killed apply's backend did not go away"
            time.sleep(0.02)


def at_fraction(fraction: float, duration: float):
    """In the transaction, ``fraction`` of its (reference) duration after it began."""
    return lambda row, inside: inside is not None and row[3] and inside >= fraction * duration


def writing_media(row, inside) -> bool:
    """A statement that writes whitelabel_media runs."""
    return bool(inside is not None and row[1] == "active" and re.search(
        r"\b(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+whitelabel_media\b", row[2], re.I))


def committing(row, inside) -> bool:
    return inside is not None and row[2].strip().rstrip(";").upper() in ("COMMIT", "END")


def waiting_for(lock: str):
    """Blocked on a heavyweight lock of that type (``advisory``, ``relation``)."""
    return lambda row, inside: row[4] == lock


def holding_and_waiting(row, inside) -> bool:
    """Holding the content tables' locks, and blocked on another table's."""
    return bool(row[3]) and row[4] == "relation"


# Locks the test holds to stop an apply inside its transaction, by the order in docs/design.md: it
# takes the apply lock (an advisory lock) first, then the content tables, then reads the
# audit log to refuse a plan applied before.
APPLY_LOCK = f"SELECT pg_advisory_lock({LOCK_KEY})"
AUDIT_LOCK = "LOCK TABLE reconciler_applies IN ACCESS EXCLUSIVE MODE"


@contextlib.contextmanager
def held(url: str, statement: str | None) -> Iterator[None]:
    """Hold the lock ``statement`` takes (in a transaction of the test's own) for the block."""
    if statement is None:
        yield
        return
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
        yield
    finally:
        conn.rollback()
        conn.close()  # ends the session: its advisory lock goes with it


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory):
    """A folder source of 20k objects (on tmpfs when there is one: creating 20k files
    on a busy disk takes seconds)."""
    shm = "/dev/shm"
    base = tempfile.mkdtemp(prefix="rc-crash-", dir=shm) if os.access(shm, os.W_OK) else str(tmp_path_factory.mktemp("crash"))
    root = os.path.join(base, "bucket")
    try:
        for m in range(MODELS):
            for p in range(POSTS):
                folder = os.path.join(root, f"Model{m:02d}", f"Post{p:02d}")
                os.makedirs(folder)
                for i in range(MEDIA):
                    os.close(os.open(os.path.join(folder, f"{i:03d}.{'mp4' if i % 10 == 9 else 'jpg'}"), os.O_CREAT | os.O_WRONLY))
        yield root
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def big_plan(big_folder, database_url, tmp_path):
    """The plan of the big folder against the empty database, made by
    ``python -m reconciler plan`` in a subprocess."""
    root = big_folder
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "plan", "--source", str(root), "-o", "big.json",
         "--database", database_url, "--cdn-base-url", CDN],
        cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return str(tmp_path / "big.json"), str(root)


@pytest.fixture
def reference(cli, sql, database_url, big_plan, tmp_path):
    """The fully applied state, and how long the apply's transaction lasts: apply once
    in a subprocess (watched), check that the next plan is empty, then reset."""
    plan, root = big_plan
    watcher = Watcher(sql, APP)
    proc = start_apply(plan, with_app_name(database_url, APP), tmp_path)
    began = ended = None
    while proc.poll() is None:
        row = watcher.backend()
        now = time.monotonic()
        if row and row[3]:
            began = began or now
            ended = now
        time.sleep(0.001)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert began is not None, "the apply's transaction was never seen holding its locks"
    r = cli("plan", "--source", root, "-o", "again.json", "--detailed-exitcode", "--database", database_url,
            "--cdn-base-url", CDN)
    assert r.code == 0 and "No changes" in r.out, r.err
    state = tuple(sql(FINGERPRINT)[0])
    # A plan of creates only: its audit is the stored plan file alone.
    assert state[:5] == (MODELS, MODELS * POSTS, MODELS * POSTS * MEDIA, 1, 1)
    sql(RESET)
    assert tuple(sql(FINGERPRINT)[0]) == UNTOUCHED
    return state, max(ended - began, 0.05)


def test_kill_9_leaves_untouched_or_fully_applied(cli, sql, database_url, big_plan, reference, tmp_path):
    """Killed at any moment, an apply changes nothing, or everything. Two kills land inside
    its transaction by construction — the apply is held at a lock of the test's (the apply
    lock; then, with the content tables locked, the audit log) — and must change nothing;
    the others land where the timing of the moment puts them (no count of them is asserted:
    a busy machine moves them), and may change nothing or everything."""
    plan, _ = big_plan
    applied_state, duration = reference
    kill_points = [
        ("as soon as it connects", None, lambda row, inside: True),
        ("while it waits for the apply lock", APPLY_LOCK, waiting_for("advisory")),
        ("holding the content tables, waiting for the audit log", AUDIT_LOCK, holding_and_waiting),
        ("as soon as it holds the locks", None, at_fraction(0, duration)),
        ("at 20% of the transaction", None, at_fraction(0.2, duration)),
        ("at 45% of the transaction", None, at_fraction(0.45, duration)),
        ("while it writes whitelabel_media", None, writing_media),
        ("at 90% of the transaction", None, at_fraction(0.9, duration)),
        ("while committing", None, committing),
    ]
    url = with_app_name(database_url, APP)
    watcher = Watcher(sql, APP)
    for label, lock, predicate in kill_points:
        with held(database_url, lock):
            proc = start_apply(plan, url, tmp_path)
            row = watcher.wait_until(proc, predicate)
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # it finished first
                pass
            proc.communicate(timeout=30)
        watcher.wait_gone()  # a backend held at the lock goes on once it is free, and finds its client gone
        state = tuple(sql(FINGERPRINT)[0])
        assert state in (UNTOUCHED, applied_state), f"kill {label!r} left a partial state: {state[:5]}"
        if lock is not None:
            assert row is not None and state == UNTOUCHED, f"kill {label!r} inside the transaction changed something"
        applied = state == applied_state

        r = cli("apply", plan, "--database", database_url)
        if applied:
            assert r.code == 1 and r.err.startswith("error: ") and "already applied" in r.err, (label, r.err)
        else:
            assert r.code == 0 and "as apply" in r.out, (label, r.err)
        assert tuple(sql(FINGERPRINT)[0]) == applied_state, label
        sql(RESET)


def test_terminated_backend_is_a_clean_error_and_changes_nothing(sql, database_url, big_plan, reference, tmp_path):
    """``pg_terminate_backend`` mid-apply: one clean error line, exit 1, nothing changed —
    at two points inside the transaction by construction, and while it writes media (if
    that moment is caught; an apply that finished first applied the plan)."""
    plan, _ = big_plan
    applied_state, _ = reference
    app = f"{APP}-term"
    for label, lock, predicate in [("waiting for the apply lock", APPLY_LOCK, waiting_for("advisory")),
                                   ("holding the content tables", AUDIT_LOCK, holding_and_waiting),
                                   ("while it writes whitelabel_media", None, writing_media)]:
        watcher = Watcher(sql, app)
        with held(database_url, lock):
            proc = start_apply(plan, with_app_name(database_url, app), tmp_path)
            row = watcher.wait_until(proc, predicate)
            assert row is not None or lock is None, f"{label}: the apply ended before it could be interrupted"
            terminated = row is not None and sql("SELECT pg_terminate_backend(%s)", (row[0],))[0][0]
            out, err = proc.communicate(timeout=60)
        watcher.wait_gone()
        state = tuple(sql(FINGERPRINT)[0])
        if not terminated:  # it finished before the moment came
            assert proc.returncode == 0 and state == applied_state, (label, err)
            sql(RESET)
            continue
        assert proc.returncode == 1, (label, out, err)
        assert err.startswith("error: ") and err.count("\n") == 1, (label, err)
        assert "Traceback" not in err and "connection" in err, (label, err)
        assert out == ""
        assert state == UNTOUCHED, label
    # The same plan still applies.
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "apply", plan, "--database", database_url],
        cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert tuple(sql(FINGERPRINT)[0])[:4] == (MODELS, MODELS * POSTS, MODELS * POSTS * MEDIA, 1)
