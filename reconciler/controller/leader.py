"""Leader election: one replica per database leads, by a PostgreSQL session advisory
lock held on a connection of its own (see :mod:`reconciler.controller`)."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import threading

import psycopg2

from ..store.db import LOCK_KEY, describe_pg_error

log = logging.getLogger("reconciler.controller")

LEADER_KEY = 0x7265636F6E4C  # "reconL": distinct from db.LOCK_KEY (apply and init)
assert LEADER_KEY != LOCK_KEY
OWNER_CLASS = 0x72756E73  # "runs": two-key advisory locks (OWNER_CLASS, replica) prove a replica lives


def replica_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# --------------------------------------------------------------------------- leadership


class LeaderElector:
    """Holds ``pg_try_advisory_lock(LEADER_KEY)`` on a dedicated connection.

    Every ``retry`` seconds (± 20 %) a follower tries to take the lock and a leader
    proves its session is alive (``SELECT 1``); a failed statement or a lost
    connection ends leadership at once. The same connection holds the replica's
    owner lock, by which the leader tells live runs from orphans.
    """

    def __init__(self, url: str, owner: int, retry: float, on_change) -> None:
        self.url, self.owner, self.retry, self.on_change = url, owner, retry, on_change
        self.leading = False
        self._conn = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leader-elector", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            with contextlib.suppress(Exception):
                self.on_change(leading)

    def _connect(self):
        conn = psycopg2.connect(
            self.url, connect_timeout=5, application_name="reconciler serve (leader election)",
            keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
        )
        conn.autocommit = True
        with conn.cursor() as cur:
            # Statements here are tiny; one that hangs means the server is gone.
            cur.execute("SET statement_timeout = '5s'")
            cur.execute("SELECT pg_advisory_lock(%s, %s)", (OWNER_CLASS, self.owner))
        return conn

    def step(self) -> None:
        try:
            if self._conn is None:
                self._conn = self._connect()
            with self._conn.cursor() as cur:
                if self.leading:
                    cur.execute("SELECT 1")
                else:
                    cur.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_KEY,))
                    if cur.fetchone()[0]:
                        self._set(True)
        except psycopg2.Error as e:
            if self.leading:
                log.warning("lost the leader connection: %s", describe_pg_error(e))
            self._set(False)
            self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step()
            self._stop.wait(self.retry * random.uniform(0.8, 1.2))

    def stop(self) -> None:
        """Resign: release the lock (closing the session does) so a follower takes over
        at its next attempt."""
        self._stop.set()
        self._thread.join(timeout=10)
        self._set(False)
        self._drop()
