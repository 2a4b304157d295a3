"""Configuration: flags, then environment, then the YAML config file, then defaults.

The config file is validated against ``schemas/config.schema.json``; unknown keys and
wrong types are errors that name the key. Credentials never come from the config
file: AWS credentials come from boto3's chain, the signing key from
``RECONCILER_SIGNING_KEY``. (A database URL in the file may hold a password; it is
never printed.)
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping
from urllib.parse import urlsplit

from .catalogue import Catalogue, default_catalogue
from .engine import BATCH_ROWS
from .engine.safety import Limits
from .errors import ConfigError
from .planfile.digest import SIGNING_KEY_ENV

ENV = {
    "config": "RECONCILER_CONFIG",
    "source": "RECONCILER_SOURCE",
    "database": "DATABASE_URL",
    "cdn_base_url": "RECONCILER_CDN_BASE_URL",
    "state_dir": "RECONCILER_STATE_DIR",
    "inventory": "RECONCILER_INVENTORY",
    "catalogue": "RECONCILER_CATALOGUE",
}
# Settings boto3 would read from the environment itself: read here, so that the
# precedence flag → environment → config file holds for them too.
_ENV_ALSO = {
    "endpoint_url": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    "region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
}
API_TOKENS_ENV = "RECONCILER_API_TOKENS"
WEBHOOK_TOKEN_ENV = "RECONCILER_WEBHOOK_TOKEN"
METRICS_TOKEN_ENV = "RECONCILER_METRICS_TOKEN"
# Every environment variable that holds a secret: what error messages, logs, pages and
# plan files are scrubbed of. (``RECONCILER_API_TOKENS`` is ``name:token,…``: its
# tokens are secrets on their own; see :func:`secret_values`.)
SECRET_ENV = (SIGNING_KEY_ENV, "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", API_TOKENS_ENV, WEBHOOK_TOKEN_ENV,
              METRICS_TOKEN_ENV)
# Variables the config file names as holding secrets (a notification's webhook URL or
# signing secret): registered when the config is read, scrubbed like the ones above.
_NAMED_SECRET_ENV: set[str] = set()


def register_secret_env(*names: str) -> None:
    """Scrub the values of these environment variables too (see :func:`secret_values`)."""
    _NAMED_SECRET_ENV.update(names)


def secret_values() -> list[str]:
    """The secrets set in the environment now (see :data:`SECRET_ENV` and
    :func:`register_secret_env`), each API token on its own as well as the whole list."""
    found = [v for v in (os.environ.get(n) for n in (*SECRET_ENV, *sorted(_NAMED_SECRET_ENV))) if v]
    for item in (os.environ.get(API_TOKENS_ENV) or "").split(","):  # name:token → the token
        token = item.partition(":")[2].strip()
        if token:
            found.append(token)
    return found




@dataclass
class Settings:
    source: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: str | None = None
    max_workers: int = 8
    database: str | None = None
    state_dir: str = "state"
    cdn_base_url: str | None = None
    catalogue: Catalogue = field(default_factory=lambda: default_catalogue())
    allow_empty_source: bool = False
    max_delete: int | None = None
    max_delete_percent: float | None = None  # None: the default guard (see reconciler.engine.safety)
    max_url_rewrite_percent: float | None = None  # None: the default guard
    require_signature: bool = False
    lock_timeout: float = 60.0
    plans_dir: str = "plans"
    detect_moves: bool = True  # renamed folders plan as moves (--no-moves, plan.detect_moves)
    batch_rows: int = BATCH_ROWS  # objects (or current media rows) planned at a time (plan.batch_rows)
    inventory: str | None = None  # an S3 Inventory report instead of listing (--inventory, source.inventory)
    max_inventory_age: float = 48 * 3600.0  # seconds (--max-inventory-age, source.max_inventory_age)
    # How plans and messages name the database, when ``database`` is not what the user
    # configured: ``serve`` resolves the embedded default to its socket URL.
    database_display: str | None = None

    @property
    def limits(self) -> Limits:
        return Limits(self.max_delete, self.max_delete_percent, self.max_url_rewrite_percent)

    @property
    def signing_key(self) -> str | None:
        return os.environ.get(SIGNING_KEY_ENV) or None


# The settings that are URLs: (name, config key, schemes). A base of media URLs may be a
# folder's file:// URL (the default of a folder source is one).
_URL_SETTINGS = (
    ("cdn_base_url", "cdn_base_url", ("https", "http", "file")),
    ("endpoint_url", "source.endpoint_url", ("https", "http")),
)
# A host name as botocore accepts one: dot-separated labels of letters, digits and '-'.
_HOST_NAME = re.compile(r"^((?!-)[a-z\d-]{1,63}(?<!-)\.)*((?!-)[a-z\d-]{1,63}(?<!-))\.?$", re.I)


def check_url(value: str, where: str, *, schemes: tuple[str, ...]) -> str:
    """``value``, if it is an absolute URL of one of ``schemes`` with a valid host
    (``file``: a path); else a ConfigError that names ``where`` the value was given (a
    flag, a variable, a config key) and what to write.

    Checked when the settings are read: a base URL without its scheme would otherwise
    be written into every media URL of the catalogue, and an endpoint without one fails
    deep inside boto3. The value is shown without a user name or password."""
    said = f"{where} {_without_userinfo(value)!r}"
    form = f"{schemes[0]}://HOST[:PORT][/PATH]"
    if any(c.isspace() or not c.isprintable() for c in value):  # urlsplit drops tabs and newlines silently
        raise ConfigError(f"{said} holds spaces or control characters; write the URL without them")
    if "://" not in value:
        examples = " or ".join(f"{s}://{value}" for s in schemes if s != "file")
        raise ConfigError(f"{said} is not a URL: write it with its scheme, e.g. {examples}")
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:  # a bracketed host that is no IPv6 address
        raise ConfigError(f"{said} is not a valid URL; write {form}") from None
    try:
        port = parts.port
    except ValueError:  # not a number, or past 65535
        port = 0
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise ConfigError(f"{said} must start with " + " or ".join(f"{s}://" for s in schemes))
    if "@" in parts.netloc:
        raise ConfigError(f"{said} must not hold a user name or password; remove them from the URL")
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ConfigError(f"{said} must not have a query (?…) or a fragment (#…); remove it")
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigError(f"{said} must be file:///ABSOLUTE/PATH")
        return value
    if not host:
        raise ConfigError(f"{said} names no host; write {form}")
    if port == 0 or parts.netloc.endswith(":"):
        raise ConfigError(f"{said} has an invalid port; write HOST:PORT with a PORT from 1 to 65535")
    bracketed = parts.netloc.startswith("[")
    if bracketed and not re.fullmatch(r"\[[^\]]+\](:\d+)?", parts.netloc):
        raise ConfigError(f"{said} is not a valid URL; write {form}")
    if not (_is_ip(host) if bracketed else _HOST_NAME.match(host) or _is_ip(host)):
        raise ConfigError(f"{said} has an invalid host name {host!r} (write a non-ASCII name in its xn-- form)")
    return value


def _without_userinfo(url: str) -> str:
    """``url`` with anything before an ``@`` after its scheme (a user name, a password)
    shown as ``***``; done on the text, since such a URL need not parse."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if not sep or "@" not in authority:
        return url
    return f"{scheme}://***@{authority.rpartition('@')[2]}{slash}{path}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@lru_cache(maxsize=1)
def config_schema() -> dict:
    return json.loads(resources.files("reconciler.schemas").joinpath("config.schema.json").read_text("utf-8"))


def _describe(error, path: str) -> str:
    where = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})), key=str)  # YAML keys: any type
        key = ".".join(filter(None, [where, str(unknown[0]) if unknown else ""]))
        return f"config file {path}: unknown key {key!r}"
    if error.validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return f"config file {path}: {where or 'the top level'} must be of type {expected}"
    return f"config file {path}: {where or 'the top level'}: {error.message}"


def read_config_file(path: str) -> dict:
    """Parse and validate a YAML config file."""
    import jsonschema

    from .yamlfile import read_yaml

    data = read_yaml(path, "config file", "check --config / RECONCILER_CONFIG")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of keys (source:, database:, …)")
    validator = jsonschema.Draft202012Validator(config_schema())
    try:
        errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply") from None
    if errors:
        raise ConfigError(_describe(errors[0], path))
    for section, values in data.items():
        # YAML's .nan and .inf pass "type: number, minimum: 0"; a NaN limit would disable its guard.
        for key, value in (values.items() if isinstance(values, dict) else ()):
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"config file {path}: {section}.{key} must be a finite number")
    return data


def _catalogue(ref, layout: dict, config_path: str | None) -> Catalogue:
    """The catalogue ``catalogue:`` names (default: creators), a spec file's path taken
    relative to the config file (``config_path``; None for a path given by a flag or the
    environment: relative to the working directory, as any path typed in a shell);
    ``layout:`` adjusts the creators catalogue."""
    from .catalogue import load_catalogue

    if ref is None and not layout:
        return default_catalogue()
    base = os.path.dirname(os.path.abspath(config_path)) if config_path else None
    return load_catalogue(ref, base, layout or None)


def load_settings(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_path: str | None = None,
) -> Settings:
    """Settings with the precedence flag → environment → config file → default.

    ``flags`` holds only the options given on the command line (absent or None means
    not given).
    """
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    env = os.environ if env is None else env
    path = config_path or flags.get("config") or env.get(ENV["config"])
    data = read_config_file(path) if path else {}
    src, dbc, lay, safe = (data.get(k) or {} for k in ("source", "database", "layout", "safety"))

    given_by: dict[str, str] = {}  # a flag's or a variable's name, for the settings checked below

    def pick(name: str, file_value, default=None):
        if name in flags:
            given_by[name] = "--" + name.replace("_", "-")
            return flags[name]
        for var in _ENV_ALSO.get(name, (ENV.get(name),)):
            if var and env.get(var):
                given_by[name] = var
                return env[var]
        return file_value if file_value is not None else default

    s = Settings(
        source=pick("source", src.get("url")),
        endpoint_url=pick("endpoint_url", src.get("endpoint_url")),
        region=pick("region", src.get("region")),
        addressing_style=pick("addressing_style", src.get("addressing_style")),
        max_workers=pick("max_workers", src.get("max_workers"), 8),
        database=pick("database", dbc.get("url")),
        state_dir=pick("state_dir", dbc.get("state_dir"), "state"),
        cdn_base_url=pick("cdn_base_url", data.get("cdn_base_url")),
        catalogue=_catalogue(pick("catalogue", data.get("catalogue")), lay,
                             None if "catalogue" in given_by else path),
        allow_empty_source=bool(pick("allow_empty_source", safe.get("allow_empty_source"), False)),
        max_delete=pick("max_delete", safe.get("max_delete")),
        max_delete_percent=pick("max_delete_percent", safe.get("max_delete_percent")),
        max_url_rewrite_percent=pick("max_url_rewrite_percent", safe.get("max_url_rewrite_percent")),
        require_signature=bool(pick("require_signature", safe.get("require_signature"), False)),
        lock_timeout=float(pick("lock_timeout", (data.get("apply") or {}).get("lock_timeout"), 60.0)),
        plans_dir=pick("plans_dir", data.get("plans_dir"), "plans"),
        detect_moves=bool(pick("detect_moves", (data.get("plan") or {}).get("detect_moves"), True)),
        batch_rows=int(pick("batch_rows", (data.get("plan") or {}).get("batch_rows"), BATCH_ROWS)),
        inventory=pick("inventory", src.get("inventory")),
    )
    for name, key, schemes in _URL_SETTINGS:
        value = getattr(s, name)
        if value:
            check_url(value, given_by.get(name) or f"config file {path}: {key}", schemes=schemes)
    age = pick("max_inventory_age", src.get("max_inventory_age"))
    if age is not None:
        s.max_inventory_age = parse_duration(age)
    return s


def parse_duration(value, what: str = "max inventory age") -> float:
    """Seconds from ``48h``, ``2d``, ``90m``, ``3600s`` or a number of seconds; ``what``
    names the setting in the error."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(value))
        if not m:
            raise ConfigError(f"{what} {value!r} is not a duration such as 48h, 2d or 90m")
        seconds = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"{what} {value!r} must be a positive duration such as 48h")
    return seconds
