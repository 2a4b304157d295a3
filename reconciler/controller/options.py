"""The ``serve:`` section of the config file and the flags of ``reconciler serve``,
read and checked once at start."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlsplit

from ..config import read_config_file
from ..errors import ConfigError
from .approvals import Policy, parse_policy
from .notify import Destination, parse_destinations
from .runs import POLICIES
from .windows import Window, parse_windows


@dataclass
class ServeOptions:
    """The ``serve:`` section of the config file, and the flags of ``reconciler serve``."""

    listen: str = "127.0.0.1:8080"
    interval: float = 600.0  # seconds between full-scope runs (± 10 % jitter)
    auto_apply: str = "off"  # off | creates | within-limits
    debounce: float = 5.0  # seconds events wait to be gathered into one run
    sqs_queue_url: str | None = None
    leader_retry: float = 2.0  # seconds between leadership attempts (± 20 % jitter)
    tick: float = 0.5  # seconds the loop sleeps between looks at its work
    sqs_wait: int = 10  # SQS long-poll seconds
    # Behind a proxy (see reconciler/server/guard.py): the names the server answers for
    # beyond loopback and the listen address, its address as browsers see it, and the
    # proxies whose X-Forwarded-Proto / -For are believed.
    allowed_hosts: list[str] = field(default_factory=list)
    public_url: str | None = None
    trusted_proxies: list[str] = field(default_factory=list)
    public_metrics: bool = False  # /metrics without a token
    approvals: Policy = field(default_factory=Policy)  # serve.approvals
    windows: tuple[Window, ...] = ()  # serve.windows
    notify: tuple[Destination, ...] = ()  # notify: (top level: the destinations)

    @property
    def host_port(self) -> tuple[str, int]:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ConfigError(f"--listen {self.listen!r} is not HOST:PORT")
        return host.strip("[]"), int(port)


def load_serve_options(config_path: str | None, flags: dict, environ: Mapping[str, str] | None = None) -> ServeOptions:
    """Flags, then the config file's ``serve:`` section (and ``notify:``, whose secrets
    come from ``environ``), then defaults."""
    config = (read_config_file(config_path) or {}) if config_path else {}
    data = config.get("serve") or {}
    o = ServeOptions(approvals=parse_policy(data.get("approvals")), windows=parse_windows(data.get("windows")),
                     notify=parse_destinations(config.get("notify"), os.environ if environ is None else environ))
    for name in ("listen", "interval", "auto_apply", "debounce", "sqs_queue_url", "leader_retry",
                 "allowed_hosts", "public_url", "trusted_proxies", "public_metrics"):
        value = flags.get(name)
        if value is None:
            value = data.get(name)
        if value is not None:
            setattr(o, name, value)
    if o.auto_apply not in POLICIES:
        raise ConfigError(f"auto-apply {o.auto_apply!r} is not one of {', '.join(POLICIES)}")
    o.host_port  # noqa: B018 — validates
    if o.public_url is not None:
        o.public_url = public_origin(o.public_url)
    for proxy in o.trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(f"serve.trusted_proxies: {proxy!r} is not an IP address or network (like 10.0.0.0/8)")
    return o


def public_origin(url: str) -> str:
    """``serve.public_url`` as an origin, ``scheme://host[:port]`` (the form browsers send
    in ``Origin``); anything more than a path of ``/`` is refused: the server answers at
    the root of its address."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"serve.public_url {url!r} is not like https://reconciler.example.com "
                          "(http or https, a host, an optional port, no path)")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"serve.public_url {url!r} has a port that is not a number") from None
    default = {"http": 80, "https": 443}[parts.scheme]
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")




def policy_rows(o: ServeOptions) -> list[tuple[str, str, str]]:
    """The approval policy, the change windows and the notification destinations as
    (section, key, value) rows for the settings page: variables by name, never values."""
    rules = "; ".join(f"{r.required} when {r.when}" + (f" > {r.over}" if r.over is not None else "")
                      for r in o.approvals.rules)
    rows = [("serve.approvals", "required", str(o.approvals.required)),
            ("serve.approvals", "rules", rules or "–"),
            ("serve.approvals", "self_approval", str(o.approvals.self_approval).lower())]
    rows += [("serve.windows", w.label, f"{w.kind}: {w.schedule} ({w.timezone}) for {w.duration:g} s")
             for w in o.windows] or [("serve.windows", "–", "none: applies may run at any time")]
    for d in o.notify:
        rows += d.settings_rows()
    return rows
