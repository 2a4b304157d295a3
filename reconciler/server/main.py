"""``reconciler serve``: resolve the database once, check the schema, build the
controller and the app, and run them on uvicorn until SIGTERM or SIGINT.

On the embedded default the private PostgreSQL in ``state/`` is started once and
lives as long as the server; the controller and every run reach it by its URL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
from typing import Iterator

from ..config import Settings
from ..controller.loop import Controller
from ..controller.options import ServeOptions
from ..errors import ConfigError
from ..store.db import open_database, scrub
from ..store.migrations import check_schema
from .app import create_app
from .auth import API_TOKENS_ENV, Tokens, is_loopback

log = logging.getLogger("reconciler.server")


class ScrubSecrets(logging.Filter):
    """No token, password or key reaches a log line."""

    def __init__(self, secrets) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        record.msg, record.args = scrub(message, *self.secrets), ()
        return True


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes, not the stream of the
    moment it was made: the library's ``serve`` may run more than once in a process
    (tests capture stderr per test, and a closed capture must not catch later logs)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


_LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "botocore")


@contextlib.contextmanager
def server_logging(quiet: bool, secrets):
    """The server's log lines on stderr, scrubbed of secrets, for the time ``serve``
    runs; the process's logging configuration is put back afterwards (``serve`` is a
    library function, and a process may call it more than once)."""
    saved = [(lg, lg.handlers[:], lg.level, lg.propagate) for lg in map(logging.getLogger, _LOGGERS)]
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(ScrubSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("botocore").setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, handlers, level, propagate in saved:
            lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate


def check_listen(options: ServeOptions, tokens: Tokens) -> tuple[str, int]:
    host, port = options.host_port
    if not tokens.configured and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {options.listen} without {API_TOKENS_ENV}: anyone who reaches it could apply "
            f"plans; set {API_TOKENS_ENV}=name:token,… or listen on 127.0.0.1"
        )
    return host, port


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}; choose another --listen") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(settings: Settings, options: ServeOptions, tokens: Tokens, *, quiet: bool = False, secrets=()) -> int:
    """Run the controller and its HTTP server until a signal; return the exit code."""
    host, port = check_listen(options, tokens)
    if not settings.source:
        raise ConfigError("no source: pass --source, set RECONCILER_SOURCE or source.url in the config")
    if not settings.cdn_base_url:
        raise ConfigError("no CDN base URL: pass --cdn-base-url, set RECONCILER_CDN_BASE_URL or cdn_base_url in the config")
    if options.auto_apply == "within-limits" and settings.max_delete is None and settings.max_delete_percent is None:
        raise ConfigError(
            "--auto-apply within-limits needs a delete limit (safety.max_delete or safety.max_delete_percent "
            "in the config file); without one every plan would be applied"
        )
    tokens = tokens.minted_for_local()
    with server_logging(quiet, [*secrets, *tokens.secrets]):
        return _serve(settings, options, tokens)


@contextlib.contextmanager
def token_file(state_dir: str, port: int, token: str) -> Iterator[str]:
    """The minted token in ``STATE_DIR/serve-PORT.token``, readable by this user alone,
    for as long as the server runs (scripts read it: ``Authorization: Bearer $(cat …)``)."""
    path = os.path.join(state_dir, f"serve-{port}.token")
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a stale one (a server killed): made anew, never written through a link
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(token + "\n")
    except OSError as e:
        raise ConfigError(f"cannot write the token file {path}: {e.strerror}; set {API_TOKENS_ENV} "
                          "or --state-dir to a folder this user can write") from None
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


class EarlyStop:
    """The SIGTERM / SIGINT handler from the start of ``serve`` until uvicorn installs
    its own (and again after uvicorn is done): a signal while the database opens or the
    app is built is remembered, and uvicorn, once started, shuts down at once — the
    controller stopped, the embedded database too. (uvicorn raises the signal again
    after a graceful shutdown, for the handler it found: this one, so a clean stop still
    exits 0.) Before, a SIGTERM in that moment was either fatal or ignored."""

    def __init__(self) -> None:
        self.requested = False
        self.server = None

    def __call__(self, signum, frame) -> None:
        self.requested = True
        if self.server is not None:
            self.server.should_exit = True

    def attach(self, server) -> None:
        self.server = server
        server.should_exit = server.should_exit or self.requested

    @contextlib.contextmanager
    def installed(self) -> Iterator["EarlyStop"]:
        previous = {sig: signal.signal(sig, self) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _serve(settings: Settings, options: ServeOptions, tokens: Tokens) -> int:
    import uvicorn

    host, port = options.host_port
    sock = bind(host, port)
    actual = sock.getsockname()[1]
    where = f"http://{host if ':' not in host else f'[{host}]'}:{actual}"
    with EarlyStop().installed() as stop, open_database(settings.database, settings.state_dir) as db, \
            contextlib.ExitStack() as stack:
        check_schema(db, settings.catalogue)
        resolved = dataclasses.replace(settings, database=db.url, database_display=db.display)
        controller = Controller(resolved, options, display=db.display)
        app = create_app(controller, tokens)
        if tokens.minted:
            path = stack.enter_context(token_file(settings.state_dir, actual, tokens.api[0][1]))
            access = f"loopback only, no {API_TOKENS_ENV}: this process's token is in {path}"
        else:
            access = "API tokens required"
        log.info("reconciler serve on %s (%s); database %s; source %s; every %gs, auto-apply %s",
                 where, access, db.display, settings.source, options.interval, options.auto_apply)
        print(f"listening on {where} ({access})", file=sys.stderr, flush=True)
        if tokens.minted and sys.stderr.isatty():
            # To the person at the terminal, as Jupyter does; never to a log.
            print(f"log in: {where}/login?token={tokens.api[0][1]}", file=sys.stderr, flush=True)
        # Forwarded headers (the scheme, the client's address) only from the proxies named.
        config = uvicorn.Config(app, log_config=None, lifespan="on", access_log=False,
                                timeout_graceful_shutdown=None, server_header=False,
                                proxy_headers=bool(options.trusted_proxies),
                                forwarded_allow_ips=list(options.trusted_proxies))
        server = uvicorn.Server(config)
        stop.attach(server)
        server.run(sockets=[sock])
        started = server.started
    return 0 if started else 1

