"""The ``keystile`` command's flags: which command, and what each one takes."""

from __future__ import annotations

import argparse

from keystile._cli import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keystile", description="API keys for Python APIs.")
    parser.add_argument("--config", help="TOML settings file (its [keystile] table)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # No handler: the demo makes its own engine, on its own store.
    demo = subcommands.add_parser("demo", help="run an example API with a demo key")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--store", help="store URL (default: a fresh SQLite file)")

    check = subcommands.add_parser("check-config", help="validate settings and reach the backends")
    check.set_defaults(handler=commands.check_config)

    usage = subcommands.add_parser(
        "usage", help="an account's pages this month, per key, and history"
    )
    usage.add_argument("--account", required=True)
    usage.add_argument("--month", help="YYYY-MM (default: the current period)")
    usage.add_argument("--env", help="environment (default: the billed one)")
    usage.set_defaults(handler=commands.usage)

    audit = subcommands.add_parser("audit", help="an account's management actions, newest first")
    audit.add_argument("--account", required=True)
    audit.add_argument("--action", help="e.g. key.create, key.revoke, session.login")
    audit.add_argument("--limit", type=int, default=50)
    audit.add_argument("--cursor")
    audit.set_defaults(handler=commands.audit)

    keys = subcommands.add_parser("keys", help="create and manage API keys")
    _add_key_actions(keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION"))
    return parser


def _add_key_actions(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    create = actions.add_parser("create", help="create a key and print its token once")
    create.add_argument("--account", required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--permission", "-p", action="append", help="repeat for several")
    create.add_argument("--env", default="live")
    create.add_argument("--owner")
    create.add_argument("--acts-for", action="append", help="another account it may act for")
    create.add_argument("--meta", help="JSON object")
    create.add_argument(
        "--allowed-ip", action="append", help="a CIDR it may be used from; repeat for several"
    )
    create.add_argument("--rate-limit", help="requests per s, min or h: 100/s, 6000/min")
    expiry = create.add_mutually_exclusive_group()
    expiry.add_argument("--expires-at", help="ISO 8601 with a time zone")
    expiry.add_argument("--expires-in-days", type=float)
    create.set_defaults(handler=commands.keys_create)

    listing = actions.add_parser("list", help="list an account's keys (masked)")
    listing.add_argument("--account", required=True)
    listing.add_argument("--search")
    listing.add_argument("--env")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--cursor")
    listing.set_defaults(handler=commands.keys_list)

    show = actions.add_parser("show", help="one key's details (masked)")
    show.add_argument("key_id")
    show.set_defaults(handler=commands.keys_show)

    update = actions.add_parser("update", help="change name, permissions, expiry, meta, ips")
    update.add_argument("key_id")
    update.add_argument("--name")
    update.add_argument("--permission", "-p", action="append", help="replaces all; '' for none")
    update.add_argument("--meta")
    update.add_argument("--allowed-ip", action="append", help="replaces the list; '' for anywhere")
    update.add_argument("--rate-limit", help="100/s, 6000/min, 100000/h; '' for none")
    state = update.add_mutually_exclusive_group()
    state.add_argument("--enable", action="store_true")
    state.add_argument("--disable", action="store_true")
    update_expiry = update.add_mutually_exclusive_group()
    update_expiry.add_argument("--expires-at")
    update_expiry.add_argument("--expires-in-days", type=float)
    update_expiry.add_argument("--no-expiry", action="store_true")
    update.set_defaults(handler=commands.keys_update)

    for name, handler, text in (
        ("revoke", commands.keys_revoke, "revoke a key now (kept for audit)"),
        ("delete", commands.keys_delete, "delete a key for good"),
    ):
        sub = actions.add_parser(name, help=text)
        sub.add_argument("key_id")
        sub.set_defaults(handler=handler)

    roll = actions.add_parser("roll", help="new secret for a key; prints the token once")
    roll.add_argument("key_id")
    roll.add_argument("--grace", type=int, default=0, help="seconds the old secret still works")
    roll.set_defaults(handler=commands.keys_roll)
