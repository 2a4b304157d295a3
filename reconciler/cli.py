"""Command line: parse arguments, call a library function, print the result.

Results go to stdout; progress goes to stderr only when it is a terminal (and not with
``--quiet``); a warning (a plan that deletes rows) goes to stderr, terminal or not,
unless ``--quiet``. Any failure is one line ``error: …`` on stderr and exit code 1; the
traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import enum
import os
import shlex
import signal
import sys
import traceback
from typing import Callable, Sequence
from urllib.parse import parse_qsl, unquote, urlsplit

from . import commands, render
from .config import SIGNING_KEY_ENV, Settings, load_settings, secret_values
from .errors import ReconcilerError
from .planfile import load_plan, verify_plan
from .store.db import _password_of, scrub
from .version import __version__


class Exit(enum.IntEnum):
    OK = 0
    ERROR = 1
    CHANGES = 2  # plan --detailed-exitcode: the plan holds changes


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit 2
        raise UsageError(f"{message}; see `{self.prog} --help`")


def _common(p: argparse.ArgumentParser) -> None:
    """Options every command takes, before or after the subcommand."""
    S = argparse.SUPPRESS
    g = p.add_argument_group("common options")
    g.add_argument("--config", metavar="FILE", default=S, help="YAML config file (env RECONCILER_CONFIG)")
    g.add_argument("--source", metavar="URL", default=S, help="s3://BUCKET[/PREFIX] or a folder (env RECONCILER_SOURCE)")
    g.add_argument("--database", metavar="URL", default=S, help="postgresql://… (env DATABASE_URL); default: embedded")
    g.add_argument("--state-dir", metavar="DIR", default=S, help="home of the embedded database (env RECONCILER_STATE_DIR; default ./state)")
    g.add_argument("--cdn-base-url", metavar="URL", default=S, help="base of media URLs (env RECONCILER_CDN_BASE_URL)")
    g.add_argument("--endpoint-url", metavar="URL", default=S, help="S3 endpoint (env AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL)")
    g.add_argument("--catalogue", metavar="NAME|FILE", default=S,
                   help="the catalogue: a shipped one's name (creators, product-images) or a spec file "
                        "(env RECONCILER_CATALOGUE, config catalogue:; default creators)")
    g.add_argument("--quiet", "-q", action="store_true", default=S, help="no progress or warnings on stderr")
    g.add_argument("--debug", action="store_true", default=S, help="show tracebacks of errors")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="reconciler",
        description="Keep a PostgreSQL content catalogue in line with an S3 bucket, through reviewable plans.",
    )
    parser.add_argument("--version", action="version", version=f"reconciler {__version__}")
    _common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _common(p)
        return p

    command("init", "create or upgrade the schema and install the catalogue: create missing tables, adopt existing "
                    "ones, check the rest (idempotent)")

    p = command("explain", "print the rule that takes each key, its captures and the rows it makes, or why it is skipped")
    p.add_argument("keys", metavar="KEY", nargs="+", help="a key of the bucket (full, or below the source's prefix)")

    p = command("catalogue", "print the catalogue in use (resolved spec) and its fingerprint")
    p.add_argument("--format", choices=["yaml", "json"], default="yaml", help="yaml (default) or json")
    p.add_argument("--plan-schema", action="store_true", help="print the JSON Schema of its plans instead")

    _plan_arguments(command("plan", "list the source, compare with the database, and write a plan file"))

    p = command("show", "print a plan file as a table, markdown (for a pull request) or json")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--format", choices=["table", "markdown", "json"], default="table",
                   help="table (default), markdown for a pull-request comment, or json")

    p = command("validate", "check a plan file: schema, plan_id and signature; no database needed")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--require-signature", action="store_true", default=None, help="refuse an unsigned plan")

    p = command("apply", "apply a reviewed plan file in one transaction")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--lock-timeout", metavar="SECONDS", type=_nonneg_float, help="wait this long for the apply lock (60)")
    p.add_argument("--require-signature", action="store_true", default=None, help="refuse an unsigned plan")

    p = command("history", "list past applies, newest first")
    p.add_argument("--limit", metavar="N", type=_nonneg_int, default=20, help="show the N newest applies (20; 0: all)")
    p.add_argument("--format", choices=["table", "json"], default="table", help="table (default) or json")

    command("db-url", "print a URL to open the database with (psql URL); the embedded one runs until Ctrl-C")

    p = command("rollback", "write the inverse plan of an apply (review and apply it like any plan)")
    p.add_argument("apply_id", metavar="APPLY_ID", type=_nonneg_int)
    p.add_argument("-o", "--output", metavar="FILE",
                   help="plan file to write (default: plans/rollback-<APPLY_ID>-<UTC time>-<plan id>.json, never replacing a file)")

    p = command("serve", "run the reconciliation controller: scheduled and event-driven runs, a JSON API, metrics")
    p.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (serve.listen; default 127.0.0.1:8080)")
    p.add_argument("--interval", metavar="SECONDS", type=_positive_float, help="seconds between full checks (600)")
    p.add_argument("--auto-apply", choices=["off", "creates", "within-limits"],
                   help="apply plans without a person: off (default), creates, within-limits")
    p.add_argument("--debounce", metavar="SECONDS", type=_nonneg_float, help="seconds to gather S3 events into one run (5)")
    return parser


def _plan_arguments(p: argparse.ArgumentParser) -> None:
    """``plan``'s options: what to plan, the guards, where the objects come from."""
    p.add_argument("-o", "--output", metavar="FILE",
                   help="plan file to write (default: plans/plan-<UTC time>-<plan id>[-<scope>].json, never replacing a file)")
    p.add_argument("--scope", metavar="KEY", action="append",
                   help="limit the plan to this key of the catalogue's top entity: a model (creators), a product "
                        "(product-images) … (repeatable)")
    p.add_argument("--model", metavar="NAME", action="append",
                   help="the creators' spelling of --scope: limit the plan to this model (repeatable; only for a "
                        "catalogue whose top entity is model)")
    p.add_argument("--detailed-exitcode", action="store_true", help="exit 0 without changes, 2 with changes, 1 on error")
    p.add_argument("--sign", action="store_true", help=f"sign the plan with the key in {SIGNING_KEY_ENV}")
    p.add_argument("--allow-empty-source", action="store_true", default=None, help="allow a plan from an empty listing")
    p.add_argument("--max-delete", metavar="N", type=_nonneg_int, help="refuse a plan that deletes more than N rows")
    p.add_argument("--max-delete-percent", metavar="P", type=_percent,
                   help="refuse deleting more than P%% of the rows in scope (default 50 from 20 rows; 100: no limit)")
    p.add_argument("--max-url-rewrite-percent", metavar="P", type=_percent,
                   help="refuse giving more than P%% of the media rows in scope a new URL (default 50 from 20 rows; "
                        "100: no limit)")
    p.add_argument("--no-moves", dest="detect_moves", action="store_false", default=None,
                   help="plan renamed folders as delete + create, not as moves (config plan.detect_moves)")
    p.add_argument("--shard", metavar="K/N", type=_shard,
                   help="plan only the top entity's keys of shard K of N (K from 1; keys by a hash of their name)")
    p.add_argument("--inventory", metavar="URL",
                   help="read the objects from an S3 Inventory report: s3://DEST/PREFIX/BUCKET/CONFIG/ (the newest) "
                        "or …/manifest.json (env RECONCILER_INVENTORY, config source.inventory)")
    p.add_argument("--max-inventory-age", metavar="AGE",
                   help="refuse an inventory report older than AGE, e.g. 48h (default), 2d, 90m")


def _positive_float(text: str) -> float:
    value = _nonneg_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not more than 0")
    return value


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def _shard(text: str):
    from .engine.shards import parse_shard
    from .errors import ConfigError

    try:
        return parse_shard(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).replace("--shard ", "", 1)) from None


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number ≥ 0")
    return value


def _percent(text: str) -> float:
    value = _nonneg_float(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"{text!r} is more than 100")
    return value


# --------------------------------------------------------------------------- commands


def _settings(args: argparse.Namespace) -> Settings:
    names = ("source", "database", "state_dir", "cdn_base_url", "endpoint_url", "config", "allow_empty_source",
             "max_delete", "max_delete_percent", "max_url_rewrite_percent", "lock_timeout", "require_signature",
             "detect_moves", "inventory", "max_inventory_age", "catalogue")
    return load_settings({n: getattr(args, n, None) for n in names})


def _progress(args: argparse.Namespace) -> Callable[[str], None]:
    if getattr(args, "quiet", False) or not sys.stderr.isatty():
        return lambda msg: None
    return lambda msg: print(f"… {msg}", file=sys.stderr, flush=True)


def cmd_init(args, settings: Settings) -> int:
    applied, report = commands.init(settings)
    if applied:
        print(f"Schema created or upgraded: applied {', '.join(applied)}.")
    else:
        print("Schema is up to date; nothing to do.")
    catalogue = settings.catalogue
    for line in report.lines():
        print(f"Catalogue {catalogue.name}: {line}.")
    tables = ", ".join(e.table for e in catalogue.entities)
    print(f"Catalogue {catalogue.name} ({catalogue.short_fingerprint}) is installed: {tables}.")
    return Exit.OK


def cmd_explain(args, settings: Settings) -> int:
    for x in commands.explain(settings, args.keys):
        print(x.key)
        if x.rule is not None:
            print(f"  rule {x.rule.index + 1} {x.rule.name}: {x.rule.pattern.text}")
        if x.captures:
            print("  captures: " + ", ".join(f"{k}={v!r}" for k, v in x.captures.items()))
        if x.reason is not None:
            print(f"  skipped: {x.reason}")
            continue
        chain = list(x.rows.items())
        kind, key = chain[-1]
        if x.facet:
            print(f"  facet {x.facet} of {kind} {key!r}")
        else:
            print(f"  row of {kind} {key!r}")
        for entity, parent in reversed(chain[:-1]):
            # A platform's row is only looked up: plan says unknown_parent if it is missing.
            whose = "" if settings.catalogue.entity(entity).owned else " (the platform's: looked up, never written)"
            print(f"    under {entity} {parent!r}{whose}")
        for name, value in x.values.items():
            print(f"  {name}: {render.value_text(value)}")
    return Exit.OK


def cmd_catalogue(args, settings: Settings) -> int:
    import json

    catalogue = settings.catalogue
    if args.plan_schema:
        from .planfile import plan_schema

        print(json.dumps(plan_schema(catalogue), indent=2, sort_keys=True))
        return Exit.OK
    print(f"# catalogue {catalogue.name}, fingerprint {catalogue.fingerprint}")
    if args.format == "json":
        print(json.dumps(catalogue.source, indent=2, ensure_ascii=False))
    else:
        import yaml

        print(yaml.safe_dump(catalogue.source, sort_keys=False, allow_unicode=True, width=120), end="")
    return Exit.OK


def cmd_plan(args, settings: Settings) -> int:
    default_base = not settings.cdn_base_url
    if default_base and settings.source:
        settings.cdn_base_url = commands.default_cdn_base_url(settings)
    p, path = commands.plan(
        settings, args.output, **_scope(args, settings.catalogue), shard=args.shard, sign=args.sign,
        progress=_progress(args),
    )
    print(render.summary_table(p.summary, p.kinds))
    n = len(p.changes)
    print()
    print(f"Target: {p.target['database']}, {render.scope_text(p)}.")
    if p.source.get("inventory"):
        print(f"Source: {render.inventory_text(p.source['inventory'])}.")
    default = " (default: the source's own URL; set --cdn-base-url to change)" if default_base else ""
    print(f"URLs: {settings.cdn_base_url}/<key>{default}.")
    for note in p.notes:
        print(f"Note: {note}.")
    if n == 0:
        print(f"No changes: the database matches the source. Plan written to {path}.")
    else:
        print(f"Plan {p.plan_id[:12]} with {n} change(s) written to {path}.")
        print(f"Review it with `reconciler show {path}`, then apply it with `reconciler apply {path}`.")
    warning = render.deletion_warning(p)
    if warning and not getattr(args, "quiet", False):
        # A warning, not progress: printed whether or not stderr is a terminal (CI logs keep it).
        print(f"warning: {warning}; review them with `reconciler show {path}` before applying", file=sys.stderr)
    if args.detailed_exitcode:
        return Exit.CHANGES if n else Exit.OK
    return Exit.OK


def _scope(args, catalogue) -> dict[str, list[str] | None]:
    """``--scope`` or ``--model`` as :func:`reconciler.commands.make_plan` takes them.
    ``--model`` is refused where the top entity is not a model: a product's key passed
    as a model would mislead whoever reads the command in a CI job or a runbook."""
    if args.model and args.scope:
        raise UsageError("--model and --scope cannot be combined: --model is the creators' spelling of --scope; "
                         "give every key with one of them")
    if args.model and catalogue.top.name != "model":
        raise UsageError(f"--model names models, but catalogue {catalogue.name} is scoped by its "
                         f"{catalogue.top.plural.lower()}: use --scope {shlex.quote(args.model[0])}")
    return {"models": args.model} if args.model else {"scope": args.scope}


def cmd_show(args, settings: Settings) -> int:
    p = load_plan(args.file, settings.catalogue)
    view = {"table": render.table, "markdown": render.markdown, "json": render.json_view}[args.format]
    print(view(p))
    return Exit.OK


def cmd_validate(args, settings: Settings) -> int:
    p = verify_plan(
        args.file,
        settings.catalogue,
        keep_changes=False,
        signing_key=settings.signing_key,
        require_signature=bool(args.require_signature or settings.require_signature),
    )
    n = sum(sum(v.values()) for v in p.summary.values())
    if not p.signature:
        signed = "unsigned"
    elif settings.signing_key:
        signed = "signed, signature checked"
    else:
        signed = f"signed, signature not checked ({SIGNING_KEY_ENV} is not set)"
    print(f"{args.file} is a valid plan: {p.plan_id}, {n} change(s), {signed}.")
    return Exit.OK


def cmd_apply(args, settings: Settings) -> int:
    result = commands.apply(settings, args.file, require_signature=bool(args.require_signature), progress=_progress(args))
    if result.apply_id is None:
        print(f"Plan {result.plan_id[:12]} holds no changes; nothing to apply.")
        return Exit.OK
    print(render.summary_table(result.summary, settings.catalogue.kinds))
    print()
    print(f"Applied plan {result.plan_id[:12]} as apply {result.apply_id}: {result.total} change(s), to {result.database}.")
    print(f"To undo it: `reconciler rollback {result.apply_id}` writes the inverse plan, to review and apply like any other.")
    return Exit.OK


def cmd_history(args, settings: Settings) -> int:
    entries = commands.history(settings, args.limit or None)  # --limit 0: every apply
    kinds = settings.catalogue.kinds
    print(render.history_json(entries) if args.format == "json" else render.history_table(entries, kinds))
    return Exit.OK


def cmd_rollback(args, settings: Settings) -> int:
    p, path = commands.write_rollback(settings, args.apply_id, args.output)
    print(f"Inverse plan of apply {args.apply_id} ({len(p.changes)} change(s)) written to {path}.")
    print(f"Review it with `reconciler show {path}`, then apply it with `reconciler apply {path}`.")
    return Exit.OK


def cmd_db_url(args, settings: Settings) -> int:
    # SIGTERM stops the wait as Ctrl-C does, so that the embedded server is stopped cleanly.
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        with commands.database_url(settings) as url:
            print(url, flush=True)
            if not settings.database:
                _progress(args)("the embedded PostgreSQL runs until you press Ctrl-C")
                try:
                    while True:
                        signal.pause()
                except KeyboardInterrupt:
                    pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    return Exit.OK


class _Terminated(KeyboardInterrupt):
    pass


def _stop(signum, frame):
    raise _Terminated


def cmd_serve(args, settings: Settings) -> int:
    from .controller.options import load_serve_options
    from .server.auth import API_TOKENS_ENV, METRICS_TOKEN_ENV, WEBHOOK_TOKEN_ENV, parse_tokens
    from .server.main import serve

    config = getattr(args, "config", None) or os.environ.get("RECONCILER_CONFIG")
    flags = {"listen": args.listen, "interval": args.interval, "auto_apply": args.auto_apply, "debounce": args.debounce}
    options = load_serve_options(config, flags)
    tokens = parse_tokens(*(os.environ.get(n) for n in (API_TOKENS_ENV, WEBHOOK_TOKEN_ENV, METRICS_TOKEN_ENV)))
    return serve(settings, options, tokens, quiet=bool(getattr(args, "quiet", False)), secrets=_secrets(args, settings))


COMMANDS = {
    "init": cmd_init,
    "explain": cmd_explain,
    "catalogue": cmd_catalogue,
    "plan": cmd_plan,
    "show": cmd_show,
    "validate": cmd_validate,
    "apply": cmd_apply,
    "history": cmd_history,
    "rollback": cmd_rollback,
    "db-url": cmd_db_url,
    "serve": cmd_serve,
}


def _url_passwords(url: str) -> list[str | None]:
    """A database URL's password as libpq reads it, and as written: a URL libpq
    refuses (say ``postgresql://app:50%off@db/prod``) is echoed in its error."""
    found = [_password_of(url)]
    try:
        parts = urlsplit(url)
        raw = [parts.password] + [v for k, v in parse_qsl(parts.query) if k.lower() in ("password", "sslpassword")]
    except ValueError:
        raw = []
    for value in raw:
        if value:
            found += [value, unquote(value)]
    return found


def _secrets(args: argparse.Namespace | None, settings: Settings | None = None) -> list[str]:
    found = secret_values()
    for url in (getattr(args, "database", None), os.environ.get("DATABASE_URL"), getattr(settings, "database", None)):
        if url:
            found += _url_passwords(url)
    return sorted({s for s in found if s}, key=len, reverse=True)  # the longest first


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = settings = None
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        settings = _settings(args)
        return int(COMMANDS[args.command](args, settings))
    except SystemExit as e:  # --help and --version
        return int(e.code or 0)
    except (ReconcilerError, UsageError) as e:
        secrets = _secrets(args, settings)
        if debug:
            print(scrub(traceback.format_exc(), *secrets), file=sys.stderr, end="")
        print(f"error: {scrub(str(e), *secrets)}", file=sys.stderr)
        return Exit.ERROR
    except KeyboardInterrupt:
        print("error: interrupted; nothing was applied unless the command said so", file=sys.stderr)
        return Exit.ERROR
    except BrokenPipeError:
        return Exit.ERROR
    except Exception as e:
        secrets = _secrets(args, settings)
        if debug:
            print(scrub(traceback.format_exc(), *secrets), file=sys.stderr)
        message = " ".join(str(e).split()) or type(e).__name__
        print(
            f"error: unexpected {type(e).__name__}: {scrub(message, *secrets)} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return Exit.ERROR
