"""The ``keystile`` command's flags: which command, and what each one takes.

``--config``, ``--json`` and ``--quiet`` are read before or after the command (``keystile
keys list --account a --json``): every subcommand repeats them with a suppressed default, so
one not given there leaves the value read before the command as it was.
"""

from __future__ import annotations

import argparse
from importlib import metadata

from keystile._cli import commands
from keystile._services.keys import MAX_LIST_LIMIT


def version() -> str:
    try:
        return metadata.version("keystile")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        import keystile

        return str(getattr(keystile, "__version__", "unknown"))


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written; an option's default shown when it has a meaningful one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = default is not None and default is not False and default is not argparse.SUPPRESS
        if shown and action.option_strings and "(default" not in text:
            text += " (default: %(default)s)"
        return text


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """On a subcommand (``suppress``), an option not given there sets nothing."""
    unset, off = (argparse.SUPPRESS, argparse.SUPPRESS) if suppress else (None, False)
    parser.add_argument("--config", default=unset, help="TOML settings file (its [keystile] table)")
    parser.add_argument("--json", action="store_true", default=off, help="machine-readable output")
    parser.add_argument(
        "--quiet", "-q", action="store_true", default=off,
        help="do not say on stderr which store is used",
    )  # fmt: skip


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


class _Commands:
    """Adds subcommands that each take the global options and format their help alike."""

    def __init__(
        self, parent: argparse._SubParsersAction[argparse.ArgumentParser], prog: str
    ) -> None:
        self.parent = parent
        self.prog = prog
        self.globals = argparse.ArgumentParser(add_help=False)
        _global_options(self.globals, suppress=True)

    def add(
        self, name: str, summary: str, description: str, *examples: str
    ) -> argparse.ArgumentParser:
        return self.parent.add_parser(
            name,
            help=summary,
            description=description,
            epilog=_examples(*(f"{self.prog} {line}" for line in examples)),
            formatter_class=HelpFormatter,
            parents=[self.globals],
        )


def build_parser(prog: str = "keystile") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="API keys for Python APIs: create and manage keys, read usage and audit.",
        epilog=_examples(
            f"{prog} keys create --account acct_1 --name CI -p 'jobs:*'",
            f"{prog} keys list --account acct_1 --json",
            f"{prog} usage --account acct_1 --month 2026-11",
            f"{prog} keys create -h   (every command has its own help)",
        )
        + "\n\nexit codes: 0 done, 1 backend failure, 2 bad input or settings, 3 no such key",
        formatter_class=HelpFormatter,
    )
    _global_options(parser, suppress=False)
    parser.add_argument("--version", action="version", version=f"keystile {version()}")
    verbs = _Commands(
        parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands"),
        prog,
    )

    # No handler: the demo makes its own engine, on its own store.
    demo = verbs.add(
        "demo",
        "run an example API with a demo key",
        "Serve an example Starlette API protected by keystile, and print a working key\n"
        "and curl lines to try it. Needs the demo extra: pip install 'keystile[demo]'.",
        "demo --port 0",
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on")
    demo.add_argument("--port", type=int, default=8000, help="port to listen on; 0: any free one")
    demo.add_argument("--store", help="store URL (default: a fresh SQLite file)")

    check = verbs.add(
        "check-config",
        "validate settings and reach the backends",
        "Validate the settings, read the store once and ping Redis (when configured).",
        "check-config",
        "--config keystile.toml check-config --json",
    )
    check.set_defaults(handler=commands.check_config)

    usage = verbs.add(
        "usage",
        "an account's pages this month, per key, and history",
        "An account's pages and requests in a billing period, per key, with the\n"
        "twelve periods before it.",
        "usage --account acct_1",
        "usage --account acct_1 --month 2026-11 --json",
    )
    usage.add_argument("--account", required=True, help="the account id")
    usage.add_argument("--month", help="YYYY-MM (default: the current period)")
    usage.add_argument("--env", help="environment (default: the billed one)")
    usage.set_defaults(handler=commands.usage)

    audit = verbs.add(
        "audit",
        "an account's management actions, newest first",
        "An account's audit log: who created, changed, revoked or deleted its keys, and\n"
        "its management logins, newest first.",
        "audit --account acct_1",
        "audit --account acct_1 --action key.revoke --json",
    )
    audit.add_argument("--account", required=True, help="the account id")
    audit.add_argument("--action", help="e.g. key.create, key.revoke, session.login")
    audit.add_argument("--limit", type=int, default=50, help="entries per page")
    audit.add_argument("--cursor", help="the cursor a previous page printed")
    audit.set_defaults(handler=commands.audit)

    keys = verbs.add(
        "keys",
        "create, list, show, update, revoke, delete, roll API keys",
        "Create, list, show, change, revoke, delete and roll API keys.",
        "keys create --account acct_1 --name CI",
        "keys list --all-accounts",
    )
    actions = keys.add_subparsers(
        dest="keys_command", required=True, metavar="ACTION", title="actions"
    )
    _add_key_actions(_Commands(actions, f"{prog} keys"))
    return parser


def _add_key_actions(actions: _Commands) -> None:
    create = actions.add(
        "create",
        "create a key and print its token once",
        "Create a key for an account and print its token. The token is shown this once:\n"
        "keystile keeps only its hash.",
        "create --account acct_1 --name CI -p 'jobs:*' --expires-in-days 90",
        "create --account acct_1 --name ETL --rate-limit 100/s --json",
    )
    create.add_argument("--account", required=True, help="the account the key belongs to")
    create.add_argument("--name", required=True, help="a name people recognise")
    create.add_argument("--permission", "-p", action="append", help="repeat for several")
    create.add_argument("--env", default="live", help="environment (in the token's prefix)")
    create.add_argument("--owner", help="who the key is for, e.g. an e-mail address")
    create.add_argument("--acts-for", action="append", help="another account it may act for")
    create.add_argument("--meta", help='a JSON object, e.g. \'{"team": "data"}\'')
    create.add_argument(
        "--allowed-ip", action="append", help="a CIDR it may be used from; repeat for several"
    )
    create.add_argument("--rate-limit", help="requests per s, min or h: 100/s, 6000/min")
    expiry = create.add_mutually_exclusive_group()
    expiry.add_argument("--expires-at", help="ISO 8601 with a time zone")
    expiry.add_argument("--expires-in-days", type=float, help="days from now")
    create.set_defaults(handler=commands.keys_create)

    listing = actions.add(
        "list",
        "list keys (masked), of an account or of all",
        "List keys, newest first, masked: their tokens are never shown again.",
        "list --account acct_1 --search CI",
        "list --all-accounts --json",
    )
    scope = listing.add_mutually_exclusive_group(required=True)
    scope.add_argument("--account", help="the account whose keys to list")
    scope.add_argument(
        "--all-accounts", action="store_true", help="every account's keys, in one table"
    )
    listing.add_argument("--search", help="a part of the name, in any case")
    listing.add_argument("--env", help="only this environment's keys")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    listing.add_argument(
        "--limit", type=int,
        help=f"keys per page, 1-{MAX_LIST_LIMIT} "
        f"(default: {commands.LIST_LIMIT}; with --all-accounts: every key)",
    )  # fmt: skip
    listing.add_argument("--cursor", help="the cursor a previous page printed")
    listing.set_defaults(handler=commands.keys_list)

    show = actions.add("show", "one key's details (masked)", "One key's details.", "show key_…")
    show.add_argument("key_id", help="the key's id (key_…)")
    show.set_defaults(handler=commands.keys_show)

    update = actions.add(
        "update",
        "change name, permissions, expiry, meta, ips",
        "Change a key. Only the options given change; a list option replaces the list.",
        "update key_… --name 'CI (old)' -p read -p write",
        "update key_… --rate-limit 100/s --allowed-ip 203.0.113.0/24",
        "update key_… --disable",
    )
    update.add_argument("key_id", help="the key's id (key_…)")
    update.add_argument("--name", help="a new name")
    update.add_argument("--permission", "-p", action="append", help="replaces all; '' for none")
    update.add_argument("--meta", help="a JSON object; replaces the meta")
    update.add_argument("--allowed-ip", action="append", help="replaces the list; '' for anywhere")
    update.add_argument("--rate-limit", help="100/s, 6000/min, 100000/h; '' for none")
    state = update.add_mutually_exclusive_group()
    state.add_argument("--enable", action="store_true", help="accept the key again")
    state.add_argument("--disable", action="store_true", help="refuse the key until enabled")
    update_expiry = update.add_mutually_exclusive_group()
    update_expiry.add_argument("--expires-at", help="ISO 8601 with a time zone")
    update_expiry.add_argument("--expires-in-days", type=float, help="days from now")
    update_expiry.add_argument("--no-expiry", action="store_true", help="never expires")
    update.set_defaults(handler=commands.keys_update)

    for name, handler, summary, description in (
        (
            "revoke",
            commands.keys_revoke,
            "revoke a key now (kept for audit)",
            "Revoke a key: it is refused from the next request on, and kept for the audit\n"
            "log. Asks for confirmation on a terminal; --yes skips it (needed in scripts).",
        ),
        (
            "delete",
            commands.keys_delete,
            "delete a key for good",
            "Delete a key for good. Asks for confirmation on a terminal; --yes skips it\n"
            "(needed in scripts).",
        ),
    ):
        sub = actions.add(name, summary, description, f"{name} key_…", f"{name} key_… --yes")
        sub.add_argument("key_id", help="the key's id (key_…)")
        sub.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
        sub.set_defaults(handler=handler)

    roll = actions.add(
        "roll",
        "new secret for a key; prints the token once",
        "Give a key a new secret and print its token once; the key id stays the same.",
        "roll key_… --grace 3600",
    )
    roll.add_argument("key_id", help="the key's id (key_…)")
    roll.add_argument("--grace", type=int, default=0, help="seconds the old secret still works")
    roll.set_defaults(handler=commands.keys_roll)
