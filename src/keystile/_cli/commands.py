"""The ``keystile`` command's actions on an open engine: each reads its flags, calls the
engine's managers, and hands the result to :mod:`keystile._cli.output`."""

from __future__ import annotations

import argparse
import getpass
import json
import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from keystile._cli.exits import EXIT_BACKEND, CliError
from keystile._cli.output import (
    Output,
    show_all_keys,
    show_audit,
    show_created,
    show_key,
    show_key_page,
    show_usage,
)
from keystile._core.errors import BackendError, InvalidInput
from keystile._core.models import ApiKey
from keystile._core.settings import redact_url
from keystile._runtime.engine import Keystile

#: A command: the engine, the parsed flags, where to print.
Command = Callable[[Keystile, argparse.Namespace, Output], None]

#: Keys per page of ``keys list --account`` when ``--limit`` is not given.
LIST_LIMIT = 20

#: The longest ``--expires-in-days`` (a century): beyond it, ask for no expiry instead.
MAX_EXPIRY_DAYS = 36_500


def _cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in this environment (containers)
        return "cli"


#: Who the audit log says acted, for changes made from the command line.
ACTOR = _cli_actor()


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


def keys_create(engine: Keystile, args: argparse.Namespace, out: Output) -> None:
    created = engine.keys.create(
        args.account,
        args.name,
        permissions=args.permission or (),
        environment=args.env,
        expires_at=_parse_expiry(args, engine),
        owner=args.owner,
        accounts=args.acts_for or (),
        meta=_parse_meta(args.meta),
        allowed_ips=args.allowed_ip or (),
        rate_limit=args.rate_limit,
        actor=ACTOR,
    )
    show_created(out, created, "Created")


def keys_list(engine: Keystile, args: argparse.Namespace, out: Output) -> None:
    if args.all_accounts:
        _list_all_accounts(engine, args, out)
        return
    page = engine.keys.list(
        args.account,
        search=args.search,
        environment=args.env,
        include_revoked=args.all,
        limit=LIST_LIMIT if args.limit is None else args.limit,
        cursor=args.cursor,
    )
    show_key_page(out, page, engine.now())


def _list_all_accounts(engine: Keystile, args: argparse.Namespace, out: Output) -> None:
    if args.cursor is not None:
        raise CliError("--cursor: --all-accounts lists every key at once; use --limit")
    if args.limit is not None and args.limit < 1:
        raise InvalidInput("limit", "expected an integer from 1 up")
    if args.env is not None and args.env not in engine.settings.environments:
        raise InvalidInput("environment", "unknown environment")
    search = (args.search or "").casefold()
    # The store pages one account at a time; across accounts it offers every key id, and
    # each key is read on its own (one deleted meanwhile is skipped).
    matching: list[ApiKey] = []
    for kid in engine.store.all_kids():
        record = engine.store.get(kid)
        if record is None:
            continue
        key = record.public()
        if not args.all and key.revoked_at is not None:
            continue
        if args.env is not None and key.environment != args.env:
            continue
        if search and search not in key.name.casefold():
            continue
        matching.append(key)
    matching.sort(key=lambda k: (k.created_at, k.id), reverse=True)
    shown = matching if args.limit is None else matching[: args.limit]
    show_all_keys(out, shown, len(matching), engine.now())


def keys_show(engine: Keystile, args: argparse.Namespace, out: Output) -> None:
    show_key(out, engine.keys.get(args.key_id), engine.now())


def keys_update(engine: Keystile, args: argparse.Namespace, out: Output) -> None:
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
    if args.allowed_ip is not None:
        changes["allowed_ips"] = [] if args.allowed_ip == [""] else args.allowed_ip
    if args.rate_limit is not None:
        changes["rate_limit"] = args.rate_limit or None
    if args.enable or args.disable:
        changes["enabled"] = bool(args.enable)
    if not changes:
        raise CliError("keys update: nothing to change (see keystile keys update --help)")
    show_key(out, engine.keys.update(args.key_id, actor=ACTOR, **changes), engine.now())


def _confirm(args: argparse.Namespace, out: Output, verb: str, key: ApiKey) -> None:
    """Ask on a terminal; without one, ``--yes`` is how a script says it means it."""
    if args.yes:
        return
    if not out.interactive:
        raise CliError(
            f"keys {verb}: stdin is not a terminal, so there is no one to confirm; "
            f"pass --yes to {verb} {key.id}"
        )
    question = f"{verb.capitalize()} key {key.id} ({key.name!r}, account {key.account_id})?"
    if out.ask(f"{question} [y/N] ").strip().lower() not in ("y", "yes"):
        raise CliError(f"keys {verb}: not confirmed; {key.id} is unchanged")


def keys_revoke(engine: Keystile, args: argparse.Namespace, out: Output) -> None:
    _confirm(args, out, "revoke", engine.keys.get(args.key_id))
    key = engine.keys.revoke(args.key_id, actor=ACTOR)
    if out.as_json:
        out.json(key.to_dict())
    else:
        out.line(f"Revoked {key.id} ({key.preview}); it is refused from the next request on.")


def keys_delete(engine: Keystile, args: argparse.Namespace, out: Output) -> None:
    _confirm(args, out, "delete", engine.keys.get(args.key_id))
    engine.keys.delete(args.key_id, actor=ACTOR)
    if out.as_json:
        out.json({"deleted": args.key_id})
    else:
        out.line(f"Deleted {args.key_id}.")


def keys_roll(engine: Keystile, args: argparse.Namespace, out: Output) -> None:
    created = engine.keys.roll(args.key_id, grace_seconds=args.grace, actor=ACTOR)
    show_created(out, created, "Rolled")
    if args.grace and not out.as_json:
        out.line(f"The previous secret keeps working for {args.grace} seconds.")


def usage(engine: Keystile, args: argparse.Namespace, out: Output) -> None:
    report = engine.quotas.usage(args.account, month=args.month, environment=args.env)
    show_usage(out, report)


def audit(engine: Keystile, args: argparse.Namespace, out: Output) -> None:
    page = engine.audit.list(args.account, action=args.action, limit=args.limit, cursor=args.cursor)
    show_audit(out, page)


def check_config(engine: Keystile, args: argparse.Namespace, out: Output) -> None:
    settings = engine.settings
    report = {
        "store": redact_url(settings.store),
        "redis": "configured" if settings.redis_url else "none (in-process cache)",
    }
    # Opening is not enough (PostgreSQL connects on first use, Django's tables may be
    # missing): one read of a key that does not exist. A failure is a BackendError.
    engine.store.get("keystile-check-config")
    if engine.redis is not None:
        try:
            engine.redis.ping()
            report["redis"] = "reachable"
        except BackendError as exc:
            raise CliError(
                f"redis_url: cannot reach Redis ({type(exc.__cause__).__name__})", EXIT_BACKEND
            ) from None
    if out.as_json:
        out.json({"ok": True, **report})
    else:
        out.line(f"Settings are valid. Store: {report['store']}. Redis: {report['redis']}.")
