"""Requests that are not for this server, or that come from another site, are refused
before anything else looks at them.

*Host.* A page that rebinds its own name to 127.0.0.1 (DNS rebinding) reaches the
server with its own name in ``Host``; it is refused (``421``). The server answers for
loopback names, its listen address (any IP address when it listens on all of them),
the host of ``serve.public_url`` and the names in ``serve.allowed_hosts``
(``.example.com`` for a domain and its subdomains, ``*`` for any name).

*Cross-site.* A request that changes something (any method but GET, HEAD, OPTIONS)
is refused (``403``) when the browser says it comes from another site or origin:
``Sec-Fetch-Site`` other than ``same-origin`` or ``none``, or an ``Origin`` that is not
this server's (its ``Host`` with the request's scheme, or ``serve.public_url``). Note
that another port of the same host is the *same site* for cookies and
``Sec-Fetch-Site``, but another origin. Clients that are not browsers send neither
header, webhook senders included.

*Content type.* The JSON API takes a body only as ``application/json`` (``415``
otherwise): an HTML form or a ``fetch`` without a preflight can only send
form, multipart or text bodies.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from .auth import is_loopback
from .http import error

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
WILDCARD_LISTEN = ("0.0.0.0", "::", "")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def split_host(value: str) -> tuple[str, int | None] | None:
    """``Host`` as (name or address, port): lower case, an IPv6 address without its
    brackets, an IP address in its canonical form; None when it is not a host."""
    value = value.strip().lower()
    if value.startswith("["):
        inside, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        host, port = inside, rest[1:] if rest else None
        try:
            host = ipaddress.IPv6Address(host).compressed
        except ValueError:
            return None
    else:
        host, sep, port = value.partition(":")
        port = port if sep else None
        try:
            host = ipaddress.IPv4Address(host).compressed
        except ValueError:
            pass
    if not host or any(c in host for c in "/\\@ ") or (port is not None and not (port.isdigit() and len(port) <= 5)):
        return None
    return host, int(port) if port is not None else None


def _name(entry: str) -> str | None:
    """A configured host (a name, an address, an IPv6 address with or without brackets,
    perhaps a port) as :func:`split_host` gives it, without the port."""
    entry = entry.strip().lower()
    parsed = split_host(f"[{entry}]" if entry.count(":") > 1 and not entry.startswith("[") else entry)
    return parsed[0] if parsed else None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class Site:
    """Who this server is: the names it answers for and its public origin."""

    names: frozenset[str]  # exact names and addresses
    domains: tuple[str, ...] = ()  # ".example.com": the domain and its subdomains
    any_ip: bool = False  # listening on every address: reached by any of them
    any_name: bool = False  # serve.allowed_hosts: ["*"]
    public: str | None = None  # serve.public_url, as an origin

    @classmethod
    def of(cls, listen_host: str, allowed_hosts=(), public_url: str | None = None) -> "Site":
        any_ip = listen_host.strip("[]") in WILDCARD_LISTEN
        names = {"localhost", *([] if any_ip else [listen_host])}
        domains, any_name = [], False
        for entry in allowed_hosts:
            if entry.strip() == "*":
                any_name = True
            elif entry.strip().startswith("."):
                domains.append(entry.strip().lower())
            else:
                names.add(entry)
        if public_url:
            names.add(urlsplit(public_url).netloc)
        found = frozenset(n for n in map(_name, names) if n)
        return cls(found, tuple(domains), any_ip, any_name, public_url)

    def answers_for(self, host_header: str | None) -> bool:
        parsed = split_host(host_header or "")
        if parsed is None:
            return False
        host = parsed[0]
        if host in self.names or self.any_name or is_loopback(host):
            return True
        if _is_ip(host):
            return self.any_ip
        return any(host == d[1:] or host.endswith(d) for d in self.domains)

    def same_origin(self, origin: str, host_header: str, scheme: str) -> bool:
        """Whether ``Origin`` is this server: the public URL's origin, or the ``Host``
        the request was sent to with the scheme it came over."""
        if self.public is not None and origin == self.public:
            return True
        parts = urlsplit(origin)
        mine, theirs = split_host(host_header), split_host(parts.netloc)
        if parts.scheme not in _DEFAULT_PORTS or mine is None or theirs is None or parts.scheme != scheme:
            return False
        default = _DEFAULT_PORTS[scheme]
        return (mine[0], mine[1] or default) == (theirs[0], theirs[1] or default)


def _header(scope, name: bytes) -> str | None:
    for k, v in scope.get("headers") or ():
        if k == name:
            return v.decode("latin-1")
    return None


def cross_site(scope, site: Site) -> str | None:
    """Why a state-changing request looks cross-site, or None."""
    fetch_site = _header(scope, b"sec-fetch-site")
    if fetch_site is not None and fetch_site.lower() not in ("same-origin", "none"):
        return f"the browser says this request comes from another site (Sec-Fetch-Site: {fetch_site[:40]})"
    origin = _header(scope, b"origin")
    if origin is not None and not site.same_origin(origin, _header(scope, b"host") or "", scope.get("scheme", "http")):
        hint = "" if site.public else "; behind a proxy, set serve.public_url to the address browsers use"
        return f"the request comes from another origin ({origin[:100]!r}){hint}"
    return None


def has_body(scope) -> bool:
    length = _header(scope, b"content-length")
    return _header(scope, b"transfer-encoding") is not None or (length is not None and length.strip() not in ("", "0"))


def is_json(content_type: str | None) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() == "application/json"


class Guard:
    """Pure ASGI middleware, outside every other: the Host, cross-site and API
    content-type checks above. Dashboard paths get an HTML page, others JSON."""

    def __init__(self, app, site: Site, is_page, page_error) -> None:
        self.app, self.site, self.is_page, self.page_error = app, site, is_page, page_error

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        problem = None
        host = _header(scope, b"host")
        if not self.site.answers_for(host):
            shown = repr(host[:100]) if host else "none"
            problem = 421, (f"this server does not answer for the host {shown}; reach it by an address it listens "
                            "on, or add the name to serve.allowed_hosts")
        elif scope.get("method", "GET") not in SAFE_METHODS:
            why = cross_site(scope, self.site)
            if why is not None:
                problem = 403, f"refused: {why}"
            elif path.startswith("/api/") and has_body(scope) and not is_json(_header(scope, b"content-type")):
                problem = 415, ("the API takes JSON bodies only: send Content-Type: application/json "
                                "(curl: --json, or -H 'Content-Type: application/json')")
        if problem is None:
            return await self.app(scope, receive, send)
        status, message = problem
        response = self.page_error(status, message) if self.is_page(path) else error(status, message)
        return await response(scope, receive, send)
