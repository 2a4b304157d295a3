"""Dashboard sessions and CSRF tokens: a signed cookie, HMAC-SHA256, standard library only.

The cookie holds ``{user, sid, expires}`` (base64url JSON) and an HMAC of it; nothing
secret is in it, and it is ``HttpOnly``, ``SameSite=Strict`` and ``Secure`` when the
page was served over HTTPS. The CSRF token of a form is ``HMAC(key, "csrf" | sid)``: a
page can only be posted back by someone who could read it.

The key. With API tokens it is derived from them, ``HMAC-SHA256("reconciler dashboard
session v1", the sorted name:token list)``: every replica configured with the same
tokens accepts the same sessions (a load balancer needs no stickiness), a restart
keeps people logged in, and changing or revoking any token ends every session. The
tokens themselves are never in the cookie and cannot be recovered from it. Without
tokens (loopback, nobody logs in) the key is random per process: a session only
carries the CSRF secret, and a restart merely asks to reload the page.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass

from .auth import LOCAL_USER, Tokens

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


class Sessions:
    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens
        if tokens.required:
            material = "\n".join(f"{n}:{t}" for n, t in sorted(tokens.api)).encode("utf-8")
            self._key = hmac.new(b"reconciler dashboard session v1", material, hashlib.sha256).digest()
        else:
            self._key = os.urandom(32)
        self._names = {n for n, _ in tokens.api}

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest())

    def new(self, user: str | None) -> Session:
        if not self.tokens.required:
            user = LOCAL_USER
        return Session(user, secrets.token_urlsafe(16), int(time.time()) + MAX_AGE)

    def dump(self, s: Session) -> str:
        body = _b64(json.dumps({"u": s.user, "s": s.sid, "e": s.expires}, separators=(",", ":")).encode("utf-8"))
        return f"{body}.{self._sign(body)}"

    def load(self, value: str | None) -> Session | None:
        """The session in a cookie value, or None when it is missing, forged, expired,
        or names a token that is no longer configured."""
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
        if self.tokens.required and s.user is not None and s.user not in self._names:
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
