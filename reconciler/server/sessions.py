"""Dashboard sessions and CSRF tokens: a signed cookie, HMAC-SHA256, standard library
only, and a row per logged-in session in ``reconciler_sessions``.

The cookie holds ``{user, sid, expires}`` (base64url JSON) and an HMAC of it; nothing
secret is in it, and it is ``HttpOnly``, ``SameSite=Strict`` and ``Secure`` when the
dashboard is served over HTTPS. The CSRF token of a form is ``HMAC(key, "csrf" | sid)``:
a page can only be posted back by someone who could read it.

The key is derived from the API tokens, ``HMAC-SHA256("reconciler dashboard session
v1", the sorted name:token list)``: every replica configured with the same tokens
accepts the same cookies (a load balancer needs no stickiness), a restart keeps people
logged in, and changing or revoking any token ends every session (with a token minted
per process, a restart does). The tokens themselves are never in the cookie and cannot
be recovered from it.

A signed cookie alone would outlive *Log out* until it expires. So a login also stores
the session (the SHA-256 of its id) in the database that every replica shares, a
logged-in cookie counts only while its row is there, and *Log out* deletes the row.
The login form's anonymous sessions (they only carry a CSRF secret) are not stored:
no request without a token writes to the database.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from .auth import Tokens

COOKIE = "reconciler_session"
MAX_AGE = 12 * 3600  # a session lasts a working day, then the token is asked for again


@dataclass(frozen=True)
class Session:
    user: str | None  # None: not logged in (the login form's session)
    sid: str
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Store:
    """The logged-in sessions, in the database (through :class:`reconciler.runs.Runs`'s
    pool). Blocking: call it in the thread pool."""

    def __init__(self, runs) -> None:
        self.runs = runs

    @staticmethod
    def _key(sid: str) -> bytes:
        return hashlib.sha256(sid.encode("utf-8")).digest()

    def add(self, s: Session) -> None:
        with self.runs.session("cannot record the login"), self.runs.db.atomic():
            self.runs.db.execute_sql("DELETE FROM reconciler_sessions WHERE expires_at < now()")
            self.runs.db.execute_sql(
                "INSERT INTO reconciler_sessions (sid_hash, user_name, expires_at) VALUES (%s, %s, to_timestamp(%s))",
                (self._key(s.sid), s.user, s.expires))

    def alive(self, s: Session) -> bool:
        with self.runs.session("cannot check the session"):
            return self.runs.db.execute_sql(
                "SELECT 1 FROM reconciler_sessions WHERE sid_hash = %s AND expires_at > now()",
                (self._key(s.sid),)).fetchone() is not None

    def end(self, s: Session) -> None:
        with self.runs.session("cannot record the logout"):
            self.runs.db.execute_sql("DELETE FROM reconciler_sessions WHERE sid_hash = %s", (self._key(s.sid),))


class Sessions:
    def __init__(self, tokens: Tokens, store: Store) -> None:
        self.tokens, self.store = tokens, store
        material = "\n".join(f"{n}:{t}" for n, t in sorted(tokens.api)).encode("utf-8")
        self._key = hmac.new(b"reconciler dashboard session v1", material, hashlib.sha256).digest()
        self._names = {n for n, _ in tokens.api}

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest())

    @staticmethod
    def new(user: str | None) -> Session:
        return Session(user, secrets.token_urlsafe(16), int(time.time()) + MAX_AGE)

    def dump(self, s: Session) -> str:
        body = _b64(json.dumps({"u": s.user, "s": s.sid, "e": s.expires}, separators=(",", ":")).encode("utf-8"))
        return f"{body}.{self._sign(body)}"

    def load(self, value: str | None) -> Session | None:
        """The session in a cookie value, or None when it is missing, forged, expired,
        or names a token that is no longer configured. (Whether a logged-in session
        was ended since is :meth:`Store.alive`'s question.)"""
        if not value or value.count(".") != 1 or len(value) > 4096:
            return None
        body, sig = value.split(".")
        if not hmac.compare_digest(sig.encode("ascii", "replace"), self._sign(body).encode("ascii")):
            return None
        try:
            data = json.loads(_unb64(body))
            s = Session(data["u"], str(data["s"]), int(data["e"]))
        except (ValueError, KeyError, TypeError):
            return None
        if s.expires < time.time():
            return None
        if s.user is not None and s.user not in self._names:
            return None
        return s

    def csrf(self, s: Session) -> str:
        return _b64(hmac.new(self._key, f"csrf|{s.sid}".encode("utf-8"), hashlib.sha256).digest())

    def csrf_ok(self, s: Session | None, given: str | None) -> bool:
        if s is None or not given:
            return False
        return hmac.compare_digest(given.encode("utf-8", "replace"), self.csrf(s).encode("ascii"))

    def login(self, token: str) -> str | None:
        """The name of the API token typed into the login form, or None (constant time)."""
        return self.tokens.who(f"Bearer {token.strip()}") if token and token.strip() else None
