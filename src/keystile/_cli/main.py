"""The ``keystile`` command: keys, usage, audit, demo, check-config.

Exit codes: 0 done, 1 backend failure, 2 bad input or settings, 3 no such key.
A token is printed once, by ``keys create`` and ``keys roll``, and never again.

:func:`run` is the command behind every way in: ``keystile`` (:func:`main`, settings from
``--config`` and ``KEYSTILE_*`` variables), ``python manage.py keystile`` and ``flask
keystile`` (settings from the project, passed in).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, TextIO

from keystile._cli.commands import Command
from keystile._cli.config import load_config
from keystile._cli.exits import EXIT_BACKEND, EXIT_INPUT, EXIT_OK, CliError, exit_code
from keystile._cli.output import Output
from keystile._cli.parser import build_parser
from keystile._core.errors import ConfigError
from keystile._core.settings import Settings, load_settings, redact_url
from keystile._runtime.engine import Keystile
from keystile._runtime.environment import environment_settings

#: The shell's code for a command stopped by Ctrl+C, and for one whose reader went away.
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141

#: Settings as a wrapper passes them: a dict (``settings.KEYSTILE``), or already loaded.
GivenSettings = Mapping[str, Any] | Settings
#: Those, or a function giving them, called by the command so that its errors (a bad
#: environment variable, say) are reported as the command's.
SettingsSource = GivenSettings | Callable[[], GivenSettings]


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


def _open_engine(raw: GivenSettings) -> Keystile:
    settings = load_settings(raw)
    if settings.store.startswith("django://"):
        _setup_django()
    return Keystile(settings)


def describe_store(url: str) -> str:
    """The store URL as it may be shown (no password), a relative SQLite file made absolute."""
    shown = redact_url(url) or url
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://").removeprefix("/")
        if path and not os.path.isabs(path):
            shown += f" ({os.path.abspath(path)})"
    return shown


def _describe_ready_store(engine: Keystile) -> str:
    # Its settings' URL may not be its store (an engine can be given a store object).
    path = getattr(engine.store, "path", None)
    where = f" {os.path.abspath(path)}" if isinstance(path, str) and path != ":memory:" else ""
    return f"{type(engine.store).__name__}{where}, the project's own engine"


def _refuse_a_default_store_in_django(raw: Mapping[str, Any]) -> None:
    # Inside a Django project the keys live where settings.KEYSTILE says; ./keystile.db would
    # be a second, empty store that looks like the real one.
    if "store" not in raw and os.environ.get("DJANGO_SETTINGS_MODULE"):
        raise CliError(
            "DJANGO_SETTINGS_MODULE is set but no store is configured, and keystile will not "
            "fall back to ./keystile.db: run `python manage.py keystile ...` to use "
            "settings.KEYSTILE, or set KEYSTILE_STORE=django:// (or another store URL)"
        )


def _run(
    args: argparse.Namespace,
    given: SettingsSource | None,
    ready: Keystile | None,
    out: Output,
) -> None:
    if given is None and ready is None:
        raw: GivenSettings = load_config(args.config)
    elif args.config is not None:
        raise CliError("--config: this command takes its settings from the project, not a file")
    else:
        raw = {} if given is None else given() if callable(given) else given
    if args.command == "demo":
        from keystile._cli.demo import run_demo

        if args.store is not None and args.store.startswith("django://"):
            _setup_django()
        run_demo(args.host, args.port, args.store)
        return
    handler: Command = args.handler
    if ready is not None:  # the project's own engine: it outlives the command
        if not args.quiet:
            out.note(f"store {_describe_ready_store(ready)}")
        handler(ready, args, out)
        return
    if given is None and isinstance(raw, Mapping):
        _refuse_a_default_store_in_django(raw)
        # Validated again where a bad value's error names its variable (or the file).
        raw = environment_settings(config_path=args.config)
    engine = _open_engine(raw)
    try:
        if not args.quiet:
            out.note(f"store {describe_store(engine.settings.store)}")
        handler(engine, args, out)
    finally:
        engine.close()


def _quiet_stdout(stream: TextIO) -> None:
    """Point the stream's descriptor at devnull, so the interpreter's last flush of what is
    still buffered (the reader is gone) succeeds silently."""
    try:
        descriptor = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, descriptor)
    os.close(devnull)


def run(
    argv: Sequence[str] | None = None,
    *,
    settings: SettingsSource | None = None,
    engine: Keystile | None = None,
    prog: str = "keystile",
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run the command on ``argv`` and return its exit code.

    Without ``settings`` or ``engine``, settings come from ``--config`` and ``KEYSTILE_*``
    variables; with ``settings`` (a dict, e.g. ``settings.KEYSTILE``, or a function giving
    one), from those alone; with ``engine``, a ready engine is used (and left open).
    ``prog`` names the command in help and errors.
    """
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    try:
        args = build_parser(prog).parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a flag argparse refused (said already)
        return exc.code if isinstance(exc.code, int) else EXIT_INPUT
    # A failure is reported once, below; not also as the pool's retry warnings.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    try:
        _run(args, settings, engine, Output(stdout, args.json, errors=stderr))
        stdout.flush()  # here, so a reader that went away is a BrokenPipeError caught below
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Read by `head` or the like, which stopped early: quiet, with the shell's code.
        _quiet_stdout(stdout)
        return EXIT_BROKEN_PIPE
    except SystemExit as exc:  # the demo's own refusals (a busy port, no uvicorn)
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or EXIT_OK
        print(exc.code, file=stderr)
        return EXIT_BACKEND
    except Exception as exc:
        error = _reported(exc)
        code = exit_code(error)
        if code is None:
            raise
        print(f"keystile: error: {error}", file=stderr)
        return code
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> NoReturn:
    raise SystemExit(run(argv))


if __name__ == "__main__":  # pragma: no cover
    main()
