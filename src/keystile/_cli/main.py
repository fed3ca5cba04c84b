"""The ``keystile`` command: keys, demo, check-config.

Exit codes: 0 done, 1 backend failure, 2 bad input or settings, 3 no such key.
A token is printed once, by ``keys create`` and ``keys roll``, and never again.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, NoReturn, TextIO

from keystile._cli.config import load_config
from keystile._core.errors import BackendError, ConfigError, InvalidInput, NotFound
from keystile._core.models import ApiKey
from keystile._core.settings import Settings, load_settings, redact_url
from keystile._runtime.engine import Keystile
from keystile._services.audit import entry_to_dict
from keystile._services.keys import CreatedKey

EXIT_OK, EXIT_BACKEND, EXIT_INPUT, EXIT_NOT_FOUND = 0, 1, 2, 3

#: The longest ``--expires-in-days`` (a century): beyond it, ask for no expiry instead.
MAX_EXPIRY_DAYS = 36_500


def _cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in this environment (containers)
        return "cli"


#: Who the audit log says acted, for changes made from the command line.
ACTOR = _cli_actor()


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_INPUT) -> None:
        super().__init__(message)
        self.code = code


class Output:
    def __init__(self, stream: TextIO, as_json: bool) -> None:
        self.stream = stream
        self.as_json = as_json
        self.colour = stream.isatty() and "NO_COLOR" not in os.environ

    def bold(self, text: str) -> str:
        return f"\033[1m{text}\033[0m" if self.colour else text

    def line(self, text: str = "") -> None:
        print(text, file=self.stream)

    def json(self, data: Any) -> None:
        print(json.dumps(data, indent=2, default=str), file=self.stream)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        widths = [
            max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
            for i, h in enumerate(headers)
        ]
        self.line(self.bold("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()))
        for row in rows:
            self.line("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


def _parse_expiry(args: argparse.Namespace, engine: Keystile) -> datetime | None:
    days = getattr(args, "expires_in_days", None)
    if days is not None:
        if not math.isfinite(days) or not 0 < days <= MAX_EXPIRY_DAYS:
            raise CliError(
                f"--expires-in-days: expected a number of days above 0 and at most "
                f"{MAX_EXPIRY_DAYS}, got {days!r}"
            )
        return engine.now() + timedelta(days=days)
    raw = getattr(args, "expires_at", None)
    if raw is None:
        return None
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(f"--expires-at: not an ISO 8601 date/time: {raw!r}") from None
    if parsed.tzinfo is None:
        raise CliError("--expires-at: give a time zone, e.g. 2027-01-01T00:00:00Z")
    return parsed


def _parse_meta(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        raise CliError('--meta: expected a JSON object, e.g. \'{"team": "data"}\'') from None
    if not isinstance(meta, dict):
        raise CliError("--meta: expected a JSON object")
    return meta


def _show_created(out: Output, created: CreatedKey, verb: str) -> None:
    if out.as_json:
        out.json({"token": created.token, "secret": created.secret, "key": created.key.to_dict()})
        return
    out.line(f"{verb} {created.key_id} ({created.key.name}) for account {created.key.account_id}")
    out.line()
    out.line(f"  token:   {out.bold(created.token)}")
    out.line(f"  key id:  {created.key_id}")
    out.line(f"  secret:  {created.secret}")
    out.line()
    out.line("Store it now: it is shown only this once.")


def _show_key(out: Output, key: ApiKey, now: datetime) -> None:
    if out.as_json:
        out.json(key.to_dict())
        return
    rows = [
        ("id", key.id),
        ("preview", key.preview),
        ("name", key.name),
        ("account", key.account_id),
        ("owner", key.owner or "-"),
        ("environment", key.environment),
        ("permissions", ", ".join(key.permissions) or "-"),
        ("accounts", ", ".join(key.accounts) or "-"),
        ("status", key.status(now)),
        ("created", _when(key.created_at)),
        ("expires", _when(key.expires_at)),
        ("last used", _when(key.last_used_at)),
        ("revoked", _when(key.revoked_at)),
        ("meta", json.dumps(dict(key.meta)) if key.meta else "-"),
    ]
    for label, value in rows:
        out.line(f"{label:<12} {value}")


def cmd_keys_create(engine: Keystile, args: argparse.Namespace, out: Output) -> None:
    created = engine.keys.create(
        args.account,
        args.name,
        permissions=args.permission or (),
        environment=args.env,
        expires_at=_parse_expiry(args, engine),
        owner=args.owner,
        accounts=args.acts_for or (),
        meta=_parse_meta(args.meta),
        actor=ACTOR,
    )
    _show_created(out, created, "Created")


def cmd_keys_list(engine: Keystile, args: argparse.Namespace, out: Output) -> None:
    page = engine.keys.list(
        args.account,
        search=args.search,
        environment=args.env,
        include_revoked=args.all,
        limit=args.limit,
        cursor=args.cursor,
    )
    if out.as_json:
        out.json(
            {
                "items": [k.to_dict() for k in page.items],
                "total": page.total,
                "next_cursor": page.next_cursor,
            }
        )
        return
    now = engine.now()
    out.table(
        ["ID", "PREVIEW", "NAME", "ENV", "STATUS", "OWNER", "CREATED", "LAST USED"],
        [
            [
                k.id,
                k.preview,
                k.name,
                k.environment,
                k.status(now),
                k.owner or "-",
                _when(k.created_at),
                _when(k.last_used_at),
            ]
            for k in page.items
        ],
    )
    more = f"; next page: --cursor {page.next_cursor}" if page.next_cursor else ""
    out.line(f"{len(page.items)} of {page.total} key(s){more}")


def cmd_keys_show(engine: Keystile, args: argparse.Namespace, out: Output) -> None:
    _show_key(out, engine.keys.get(args.key_id), engine.now())


def cmd_keys_update(engine: Keystile, args: argparse.Namespace, out: Output) -> None:
    changes: dict[str, Any] = {}
    if args.name is not None:
        changes["name"] = args.name
    if args.permission is not None:
        changes["permissions"] = [] if args.permission == [""] else args.permission
    if args.expires_at is not None or args.expires_in_days is not None:
        changes["expires_at"] = _parse_expiry(args, engine)
    if args.no_expiry:
        changes["expires_at"] = None
    if args.meta is not None:
        changes["meta"] = _parse_meta(args.meta)
    if args.enable or args.disable:
        changes["enabled"] = bool(args.enable)
    if not changes:
        raise CliError("keys update: nothing to change (see keystile keys update --help)")
    _show_key(out, engine.keys.update(args.key_id, actor=ACTOR, **changes), engine.now())


def cmd_keys_revoke(engine: Keystile, args: argparse.Namespace, out: Output) -> None:
    key = engine.keys.revoke(args.key_id, actor=ACTOR)
    if out.as_json:
        out.json(key.to_dict())
    else:
        out.line(f"Revoked {key.id} ({key.preview}); it is refused from the next request on.")


def cmd_keys_delete(engine: Keystile, args: argparse.Namespace, out: Output) -> None:
    engine.keys.delete(args.key_id, actor=ACTOR)
    if out.as_json:
        out.json({"deleted": args.key_id})
    else:
        out.line(f"Deleted {args.key_id}.")


def cmd_keys_roll(engine: Keystile, args: argparse.Namespace, out: Output) -> None:
    created = engine.keys.roll(args.key_id, grace_seconds=args.grace, actor=ACTOR)
    _show_created(out, created, "Rolled")
    if args.grace and not out.as_json:
        out.line(f"The previous secret keeps working for {args.grace} seconds.")


def cmd_usage(engine: Keystile, args: argparse.Namespace, out: Output) -> None:
    report = engine.quotas.usage(args.account, month=args.month, environment=args.env)
    if out.as_json:
        out.json(report.to_dict())
        return
    limit = "unlimited" if report.limit is None else f"{report.limit:,}"
    out.line(
        f"{report.account_id} · {report.environment} · {report.month}: "
        f"{report.pages:,} pages of {limit}, {report.requests:,} requests; "
        f"resets {report.resets_at:%Y-%m-%d %H:%M} UTC"
    )
    out.line()
    out.table(
        ["KEY", "PAGES", "REQUESTS"],
        [[k.key_id, f"{k.pages:,}", f"{k.requests:,}"] for k in report.keys],
    )
    out.line()
    out.table(
        ["MONTH", "PAGES", "REQUESTS"],
        [[m.month, f"{m.pages:,}", f"{m.requests:,}"] for m in report.history],
    )


def cmd_audit(engine: Keystile, args: argparse.Namespace, out: Output) -> None:
    page = engine.audit.list(args.account, action=args.action, limit=args.limit, cursor=args.cursor)
    if out.as_json:
        out.json({"items": [entry_to_dict(e) for e in page.items], "next_cursor": page.next_cursor})
        return
    out.table(
        ["WHEN", "ACTION", "ACTOR", "TARGET", "DETAILS"],
        [
            [
                f"{e.at:%Y-%m-%d %H:%M:%S}",
                e.action,
                e.actor,
                e.target or "-",
                json.dumps(dict(e.details), separators=(",", ":")) if e.details else "-",
            ]
            for e in page.items
        ],
    )
    if page.next_cursor:
        out.line(f"more: --cursor {page.next_cursor}")


def cmd_check_config(engine: Keystile, args: argparse.Namespace, out: Output) -> None:
    settings = engine.settings
    report = {
        "store": redact_url(settings.store),
        "redis": "configured" if settings.redis_url else "none (in-process cache)",
    }
    # Opening is not enough (PostgreSQL connects on first use, Django's tables may be
    # missing): one read of a key that does not exist. A failure is a BackendError.
    engine.store.get("keystile-check-config")
    if settings.redis_url:
        try:
            engine.redis.client.ping()
            report["redis"] = "reachable"
        except Exception as exc:
            raise CliError(
                f"redis_url: cannot reach Redis ({type(exc).__name__})", EXIT_BACKEND
            ) from None
    if out.as_json:
        out.json({"ok": True, **report})
    else:
        out.line(f"Settings are valid. Store: {report['store']}. Redis: {report['redis']}.")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keystile", description="API keys for Python APIs.")
    parser.add_argument("--config", help="TOML settings file (its [keystile] table)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="run an example API with a demo key")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--store", help="store URL (default: a fresh SQLite file)")

    commands.add_parser("check-config", help="validate settings and reach the backends")

    usage = commands.add_parser("usage", help="an account's pages this month, per key, and history")
    usage.add_argument("--account", required=True)
    usage.add_argument("--month", help="YYYY-MM (default: the current period)")
    usage.add_argument("--env", help="environment (default: the billed one)")
    usage.set_defaults(handler=cmd_usage)

    audit = commands.add_parser("audit", help="an account's management actions, newest first")
    audit.add_argument("--account", required=True)
    audit.add_argument("--action", help="e.g. key.create, key.revoke, session.login")
    audit.add_argument("--limit", type=int, default=50)
    audit.add_argument("--cursor")
    audit.set_defaults(handler=cmd_audit)

    keys = commands.add_parser("keys", help="create and manage API keys")
    keys_cmds = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    create = keys_cmds.add_parser("create", help="create a key and print its token once")
    create.add_argument("--account", required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--permission", "-p", action="append", help="repeat for several")
    create.add_argument("--env", default="live")
    create.add_argument("--owner")
    create.add_argument("--acts-for", action="append", help="another account it may act for")
    create.add_argument("--meta", help="JSON object")
    expiry = create.add_mutually_exclusive_group()
    expiry.add_argument("--expires-at", help="ISO 8601 with a time zone")
    expiry.add_argument("--expires-in-days", type=float)
    create.set_defaults(handler=cmd_keys_create)

    listing = keys_cmds.add_parser("list", help="list an account's keys (masked)")
    listing.add_argument("--account", required=True)
    listing.add_argument("--search")
    listing.add_argument("--env")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--cursor")
    listing.set_defaults(handler=cmd_keys_list)

    show = keys_cmds.add_parser("show", help="one key's details (masked)")
    show.add_argument("key_id")
    show.set_defaults(handler=cmd_keys_show)

    update = keys_cmds.add_parser("update", help="change name, permissions, expiry, meta")
    update.add_argument("key_id")
    update.add_argument("--name")
    update.add_argument("--permission", "-p", action="append", help="replaces all; '' for none")
    update.add_argument("--meta")
    state = update.add_mutually_exclusive_group()
    state.add_argument("--enable", action="store_true")
    state.add_argument("--disable", action="store_true")
    update_expiry = update.add_mutually_exclusive_group()
    update_expiry.add_argument("--expires-at")
    update_expiry.add_argument("--expires-in-days", type=float)
    update_expiry.add_argument("--no-expiry", action="store_true")
    update.set_defaults(handler=cmd_keys_update)

    for name, handler, text in (
        ("revoke", cmd_keys_revoke, "revoke a key now (kept for audit)"),
        ("delete", cmd_keys_delete, "delete a key for good"),
    ):
        sub = keys_cmds.add_parser(name, help=text)
        sub.add_argument("key_id")
        sub.set_defaults(handler=handler)

    roll = keys_cmds.add_parser("roll", help="new secret for a key; prints the token once")
    roll.add_argument("key_id")
    roll.add_argument("--grace", type=int, default=0, help="seconds the old secret still works")
    roll.set_defaults(handler=cmd_keys_roll)
    return parser


def _fail(message: str, code: int) -> NoReturn:
    print(f"keystile: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _setup_django() -> None:
    """Load the Django project ``django://`` needs (``DJANGO_SETTINGS_MODULE``), or say why not."""
    try:
        import django  # type: ignore[import-untyped,unused-ignore]
        from django.apps import apps  # type: ignore[import-untyped,unused-ignore]
        from django.core.exceptions import (  # type: ignore[import-untyped,unused-ignore]
            ImproperlyConfigured,
        )
    except ImportError:
        raise ConfigError("setting 'store': 'django://' needs Django installed") from None
    module = os.environ.get("DJANGO_SETTINGS_MODULE")
    if not module:
        raise ConfigError(
            "setting 'store': 'django://' works inside a Django project only: set "
            "DJANGO_SETTINGS_MODULE (and put the project on PYTHONPATH)"
        )
    try:
        django.setup()
    except ImportError as exc:
        raise ConfigError(
            f"setting 'store': cannot import DJANGO_SETTINGS_MODULE {module!r} "
            f"({exc}); is the project on PYTHONPATH?"
        ) from None
    except ImproperlyConfigured as exc:
        raise ConfigError(f"setting 'store': the Django project is misconfigured: {exc}") from None
    if not apps.is_installed("keystile.django"):
        raise ConfigError(
            "setting 'store': 'django://' needs 'keystile.django' in INSTALLED_APPS "
            "(then: python manage.py migrate)"
        )


def _open_engine(raw: dict[str, Any]) -> Keystile:
    settings: Settings = load_settings(raw)
    if settings.store.startswith("django://"):
        _setup_django()
    return Keystile(settings)


def _foreign_error(exc: Exception) -> tuple[str, int] | None:
    """A Django store's own error (its store does not wrap them): message and exit code."""
    if "django" not in sys.modules:
        return None
    from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped,unused-ignore]
    from django.db import Error as DjangoDatabaseError  # type: ignore[import-untyped,unused-ignore]

    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, ImproperlyConfigured):
        return f"setting 'store': the Django project is misconfigured: {detail}", EXIT_INPUT
    if isinstance(exc, DjangoDatabaseError):
        hint = " (run python manage.py migrate?)" if "no such table" in detail.lower() else ""
        return f"Django store: {type(exc).__name__}: {redact_url(detail)}{hint}", EXIT_BACKEND
    return None


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    out = Output(sys.stdout, args.json)
    # A failure is reported once, below; not also as the pool's retry warnings.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    try:
        settings = load_config(args.config)
        if args.command == "demo":
            from keystile._cli.demo import run_demo

            if args.store is not None and args.store.startswith("django://"):
                _setup_django()
            run_demo(args.host, args.port, args.store)
            return
        handler: Callable[[Keystile, argparse.Namespace, Output], None] = (
            cmd_check_config if args.command == "check-config" else args.handler
        )
        engine = _open_engine(settings)
        try:
            handler(engine, args, out)
        finally:
            engine.close()
    except CliError as exc:
        _fail(str(exc), exc.code)
    except (ConfigError, InvalidInput) as exc:
        _fail(str(exc), EXIT_INPUT)
    except NotFound as exc:
        _fail(str(exc), EXIT_NOT_FOUND)
    except BackendError as exc:
        _fail(str(exc), EXIT_BACKEND)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BrokenPipeError:
        # Read by `head` or the like, which stopped early: quiet, with the shell's code for
        # a closed pipe; stdout goes to devnull so the interpreter's final flush is silent.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(141) from None
    except Exception as exc:
        foreign = _foreign_error(exc)
        if foreign is None:
            raise
        _fail(*foreign)


if __name__ == "__main__":  # pragma: no cover
    main()
