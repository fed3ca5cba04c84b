"""The ``keystile`` command: keys, usage, audit, demo, check-config.

Exit codes: 0 done, 1 backend failure, 2 bad input or settings, 3 no such key.
A token is printed once, by ``keys create`` and ``keys roll``, and never again.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from keystile._cli.commands import Command
from keystile._cli.config import load_config
from keystile._cli.exits import exit_code
from keystile._cli.output import Output
from keystile._cli.parser import build_parser
from keystile._core.errors import ConfigError
from keystile._core.settings import load_settings
from keystile._runtime.engine import Keystile


def _fail(message: str, code: int) -> NoReturn:
    print(f"keystile: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _setup_django() -> None:
    try:
        from keystile.django.cli import setup_django
    except ImportError:
        raise ConfigError("setting 'store': 'django://' needs Django installed") from None
    setup_django()


def _reported(exc: Exception) -> Exception:
    """The error to report: a Django store's own errors as keystile's, others as they are."""
    if "django" in sys.modules:
        from keystile.django.cli import keystile_error

        return keystile_error(exc) or exc
    return exc


def _open_engine(raw: dict[str, Any]) -> Keystile:
    settings = load_settings(raw)
    if settings.store.startswith("django://"):
        _setup_django()
    return Keystile(settings)


def _run(args: argparse.Namespace) -> None:
    settings = load_config(args.config)
    if args.command == "demo":
        from keystile._cli.demo import run_demo

        if args.store is not None and args.store.startswith("django://"):
            _setup_django()
        run_demo(args.host, args.port, args.store)
        return
    handler: Command = args.handler
    engine = _open_engine(settings)
    try:
        handler(engine, args, Output(sys.stdout, args.json))
    finally:
        engine.close()


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # A failure is reported once, below; not also as the pool's retry warnings.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    try:
        _run(args)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BrokenPipeError:
        # Read by `head` or the like, which stopped early: quiet, with the shell's code for
        # a closed pipe; stdout goes to devnull so the interpreter's final flush is silent.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(141) from None
    except Exception as exc:
        error = _reported(exc)
        code = exit_code(error)
        if code is None:
            raise
        _fail(str(error), code)


if __name__ == "__main__":  # pragma: no cover
    main()
