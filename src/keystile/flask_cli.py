"""``flask keystile ...``: the ``keystile`` command, every verb and flag of it, on the app's
settings instead of ``--config`` and ``KEYSTILE_*`` variables::

    app.cli.add_command(keystile_command)  # then: flask --app myapp keystile keys list ...

On an app where :class:`keystile.flask.Keystile` is set up, the command uses that engine: the
store the app serves from, whatever its settings came from. Otherwise the settings are
``app.config["KEYSTILE"]`` (a dict), as the extension reads them; an app without it may
give them as flat keys, ``app.config["KEYSTILE_STORE"]``, ``["KEYSTILE_REDIS_URL"]`` and so
on (one per setting). When ``KEYSTILE`` is there, it is the whole of the settings and flat
keys are not read; with neither, the environment's settings (``KEYSTILE_*`` variables), as
the extension runs on then. Exit codes are the command's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from keystile import Keystile, environment_settings
from keystile._cli.main import run
from keystile._http.mounting import config_settings
from keystile.flask import EXTENSION_KEY

__all__ = ["app_settings", "keystile_command"]


def app_settings(app: Flask) -> Any:
    """The app's keystile settings, as the extension reads them (None: the environment's)."""
    return config_settings(app.config)


@click.command(
    "keystile",
    # Every argument, -h included, goes to keystile's own parser untouched.
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "help_option_names": [],
    },
    short_help="Create and manage API keys, read usage and audit.",
)
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
@with_appcontext
@click.pass_context
def keystile_command(context: click.Context, argv: tuple[str, ...]) -> None:
    """keystile's command line on the app's settings: flask keystile -h for its help."""
    prog = context.command_path
    engine = current_app.extensions.get(EXTENSION_KEY)
    if isinstance(engine, Keystile):
        context.exit(run(list(argv), engine=engine, prog=prog))
    configured: Mapping[str, Any] | None = app_settings(current_app)
    settings = environment_settings if configured is None else configured
    context.exit(run(list(argv), settings=settings, prog=prog))
