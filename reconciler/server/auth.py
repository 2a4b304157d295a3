"""Tokens: ``RECONCILER_API_TOKENS`` (``name:token,name:token``; the name is recorded as
who approved), ``RECONCILER_WEBHOOK_TOKEN`` and ``RECONCILER_METRICS_TOKEN``. Compared
in constant time; never logged, never shown.

Without ``RECONCILER_API_TOKENS`` the server still asks for a token: ``serve`` mints one
for the process (:meth:`Tokens.minted_for_local`), named ``local``, and writes it to a
file only its user can read. Loopback is not a boundary between the users of a machine
(nor between the containers of a pod), and a database that a plan changes deserves a
credential even on a laptop.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field, replace

from ..config import API_TOKENS_ENV, METRICS_TOKEN_ENV, WEBHOOK_TOKEN_ENV  # noqa: F401  (re-exported for the server)
from ..errors import ConfigError

LOCAL_USER = "local"  # the name of the token minted when none is configured (loopback only)
MIN_LENGTH = 16


@dataclass(frozen=True)
class Tokens:
    api: tuple[tuple[str, str], ...] = ()
    webhook: str | None = None
    metrics: str | None = None
    minted: bool = False  # the API token was made by this process, not configured
    secrets: tuple[str, ...] = field(default=(), repr=False)

    @property
    def configured(self) -> bool:
        """API tokens were set by the operator (the server may listen beyond loopback)."""
        return bool(self.api) and not self.minted

    def minted_for_local(self) -> "Tokens":
        """These tokens, with a random API token named ``local`` when none is configured."""
        if self.api:
            return self
        token = secrets.token_urlsafe(32)
        return replace(self, api=((LOCAL_USER, token),), minted=True, secrets=(*self.secrets, token))

    def who(self, authorization: str | None) -> str | None:
        """The name of the API token in a ``Bearer`` header, or None. Every token is
        compared (in constant time), so the time taken does not tell which matched."""
        given = _bearer(authorization)
        if given is None:
            return None
        found = None
        for name, token in self.api:
            if _same(given, token):
                found = found or name
        return found

    def webhook_ok(self, authorization: str | None) -> bool:
        """Without a webhook token the hook is open only on the loopback-only server
        (no API token configured): events are hints, and a local MinIO has no way to
        learn a token minted at each start."""
        if self.webhook is None:
            return self.minted
        given = _bearer(authorization)
        return given is not None and _same(given, self.webhook)

    def metrics_ok(self, authorization: str | None) -> bool:
        """The metrics token (Prometheus' ``authorization``) or any API token."""
        given = _bearer(authorization)
        if given is not None and self.metrics is not None and _same(given, self.metrics):
            return True
        return self.who(authorization) is not None

    def __repr__(self) -> str:
        return (f"Tokens(api={[n for n, _ in self.api]}, minted={self.minted}, "
                f"webhook={'set' if self.webhook else 'unset'}, metrics={'set' if self.metrics else 'unset'})")


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def parse_tokens(api: str | None, webhook: str | None, metrics: str | None = None) -> Tokens:
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
        if len(token) < MIN_LENGTH:
            raise ConfigError(f"{API_TOKENS_ENV}: the token of {name!r} is shorter than {MIN_LENGTH} characters; "
                              "use a long random one")
        pairs.append((name, token))
    webhook = (webhook or "").strip() or None
    metrics = (metrics or "").strip() or None
    if metrics is not None and len(metrics) < MIN_LENGTH:
        raise ConfigError(f"{METRICS_TOKEN_ENV} is shorter than {MIN_LENGTH} characters; use a long random one")
    secrets_ = tuple(t for _, t in pairs) + tuple(t for t in (webhook, metrics) if t)
    return Tokens(tuple(pairs), webhook, metrics, secrets=secrets_)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
