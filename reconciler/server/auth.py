"""Tokens: ``RECONCILER_API_TOKENS`` (``name:token,name:token``; the name is recorded as
who approved) and ``RECONCILER_WEBHOOK_TOKEN``. Compared in constant time; never
logged, never shown.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass, field

from ..config import API_TOKENS_ENV, WEBHOOK_TOKEN_ENV  # noqa: F401  (re-exported for the server)
from ..errors import ConfigError

LOCAL_USER = "local"  # who approves when the server runs without tokens (loopback only)


@dataclass(frozen=True)
class Tokens:
    api: tuple[tuple[str, str], ...] = ()
    webhook: str | None = None
    secrets: tuple[str, ...] = field(default=(), repr=False)

    @property
    def required(self) -> bool:
        return bool(self.api)

    def who(self, authorization: str | None) -> str | None:
        """The name of the API token in a ``Bearer`` header, or None. Every token is
        compared (in constant time), so the time taken does not tell which matched."""
        given = _bearer(authorization)
        if given is None:
            return None
        found = None
        for name, token in self.api:
            if hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
                found = found or name
        return found

    def webhook_ok(self, authorization: str | None) -> bool:
        """Without a webhook token the hook is open only when no API token is set
        (the server then listens on loopback alone)."""
        if self.webhook is None:
            return not self.required
        given = _bearer(authorization)
        return given is not None and hmac.compare_digest(given.encode("utf-8"), self.webhook.encode("utf-8"))

    def __repr__(self) -> str:
        return f"Tokens(api={[n for n, _ in self.api]}, webhook={'set' if self.webhook else 'unset'})"


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def parse_tokens(api: str | None, webhook: str | None) -> Tokens:
    """Parse the environment's tokens; a malformed list is a ConfigError that shows
    no token."""
    pairs = []
    for i, item in enumerate((api or "").split(",")):
        item = item.strip()
        if not item:
            continue
        name, sep, token = item.partition(":")
        name, token = name.strip(), token.strip()
        if not sep or not name or not token:
            raise ConfigError(f"{API_TOKENS_ENV}: entry {i + 1} is not name:token; write name:token,name:token")
        if len(token) < 16:
            raise ConfigError(f"{API_TOKENS_ENV}: the token of {name!r} is shorter than 16 characters; use a long random one")
        pairs.append((name, token))
    webhook = (webhook or "").strip() or None
    secrets = tuple(t for _, t in pairs) + ((webhook,) if webhook else ())
    return Tokens(tuple(pairs), webhook, secrets)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
