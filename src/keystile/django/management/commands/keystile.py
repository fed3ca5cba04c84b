"""``python manage.py keystile ...``: the ``keystile`` command, every verb and flag of it, on
the project's ``settings.KEYSTILE`` (as the middleware reads it) instead of ``--config`` and
``KEYSTILE_*`` variables; only a project without ``KEYSTILE`` runs, like its middleware, on
the environment's settings. Exit codes are the command's.

Its flags are keystile's, not Django's: the arguments go to keystile's parser as typed, so
``manage.py keystile -h`` is keystile's help. ``--settings`` and ``--pythonpath`` are
Django's own (it applied them before the command started) and are passed on to no one.
``call_command("keystile", "keys", "list", "--account", "a1", "--json")`` works too.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any, TextIO

from django.core.management.base import (  # type: ignore[import-untyped,unused-ignore]
    BaseCommand,
    CommandError,
)

from keystile import Keystile, environment_settings
from keystile._cli.main import run
from keystile._cli.parser import build_parser
from keystile.django.conf import configured_settings

#: Django reads these from the whole command line before any command runs.
DJANGO_OPTIONS = ("--settings", "--pythonpath")


def _without_django_options(argv: Sequence[str]) -> list[str]:
    kept: list[str] = []
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
        elif arg in DJANGO_OPTIONS:
            skip_value = True
        elif not arg.startswith(tuple(f"{option}=" for option in DJANGO_OPTIONS)):
            kept.append(arg)
    return kept


def run_keystile(
    argv: Sequence[str], prog: str, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """The command on ``settings.KEYSTILE``: a settings dict, a ready engine, or, unset, the
    environment's settings (what the middleware then runs on too)."""
    configured = configured_settings()
    if isinstance(configured, Keystile):
        return run(argv, engine=configured, prog=prog, stdout=stdout, stderr=stderr)
    settings = environment_settings if configured is None else configured
    return run(argv, settings=settings, prog=prog, stdout=stdout, stderr=stderr)


class Command(BaseCommand):  # type: ignore[misc,unused-ignore]
    help = "Create and manage API keys, read usage and audit: keystile's command line."

    def run_from_argv(self, argv: list[str]) -> None:
        from django.db import connections  # type: ignore[import-untyped,unused-ignore]

        prog = f"{os.path.basename(argv[0])} {argv[1]}"
        try:
            code = run_keystile(_without_django_options(argv[2:]), prog)
        finally:
            connections.close_all()
        if code:
            raise SystemExit(code)

    def print_help(self, prog_name: str, subcommand: str) -> None:  # manage.py help keystile
        build_parser(f"{os.path.basename(prog_name)} {subcommand}").print_help()

    def add_arguments(self, parser: Any) -> None:  # for call_command(): keystile's own argv
        parser.add_argument("args", nargs=argparse.REMAINDER, help="keystile's arguments")

    def handle(self, *args: str, **options: Any) -> None:
        code = run_keystile(
            args, "manage.py keystile", stdout=self.stdout._out, stderr=self.stderr._out
        )
        if code:
            raise CommandError(f"keystile exited with code {code}", returncode=code)
