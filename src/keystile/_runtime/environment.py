"""Settings from the process's environment: ``KEYSTILE_*`` variables over the TOML file that
``KEYSTILE_CONFIG`` names. An app that passes no settings (``Keystile()``, a middleware
without ``settings=``) runs on them, and so does the command line (its ``--config`` file in
place of ``KEYSTILE_CONFIG``'s).

A variable's value is JSON when it decodes as JSON (``KEYSTILE_ENVIRONMENTS='["live","dev"]'``,
``KEYSTILE_MONTHLY_PAGE_LIMIT=5000``), else the string itself; the string settings are always
taken verbatim. Variables that name no setting are not keystile's to judge and are ignored
(``KEYSTILE_CONFIG`` itself, Django's ``KEYSTILE_MANAGEMENT_PREFIX``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from keystile._core.errors import ConfigError
from keystile._core.settings import Settings, load_settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "KEYSTILE_"
CONFIG_VARIABLE = "KEYSTILE_CONFIG"
_FIELDS = frozenset(f.name for f in fields(Settings))

#: Settings whose value is a string: taken verbatim from the environment, never JSON-decoded
#: (KEYSTILE_REDIS_PREFIX=2024 is the string "2024", not the number).
STRING_SETTINGS = frozenset(
    {
        "store",
        "redis_url",
        "secret",
        "redis_prefix",
        "token_prefix",
        "on_backend_error",
        "billing_timezone",
    }
)


def _env_value(key: str, raw: str) -> Any:
    if key in STRING_SETTINGS:
        return raw
    # JSON first, so KEYSTILE_ENVIRONMENTS='["live","test"]' and numbers work; else a string
    # (which the setting's validation then names, if it wanted something else).
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def read_toml(path: str, source: str) -> dict[str, Any]:
    """The settings in a TOML file: its ``[keystile]`` table, or else its top level.
    ``source`` says who named the file (``--config``, ``KEYSTILE_CONFIG``) in every error."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file {path!r}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read {path!r}: {exc}") from None
    table = data.get("keystile", data)
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [keystile] in {path!r} must be a table")
    return dict(table)


@dataclass
class _Sources:
    """Where each setting came from: the file (who named it, and its path) or a variable."""

    file_source: str = ""
    file_path: str = ""
    from_file: dict[str, Any] = field(default_factory=dict)
    #: setting -> (the variable's name, its decoded value)
    from_variables: dict[str, tuple[str, Any]] = field(default_factory=dict)

    def merged(self) -> dict[str, Any]:
        settings = dict(self.from_file)
        settings.update({key: value for key, (_, value) in self.from_variables.items()})
        return settings

    def origin_of(self, message: str) -> str | None:
        """Which variables (or else which file) the settings an error names came from."""
        named = [var for key, (var, _) in self.from_variables.items() if _names(message, key)]
        if named:
            return ", ".join(sorted(named))
        if any(_names(message, key) for key in self.from_file):
            return f"{self.file_source} {self.file_path!r}"
        return None


def _names(message: str, key: str) -> bool:
    # The settings' errors quote the key ('local_cache_size', 'argon2.time_cost'), except
    # redis_url's, which starts with it.
    return f"'{key}'" in message or f"'{key}." in message or message.startswith(f"{key}:")


def _sources(path: str | None, environ: Mapping[str, str]) -> _Sources:
    sources = _Sources()
    if path is not None:
        sources.file_source, sources.file_path = "--config", path
    elif CONFIG_VARIABLE in environ:
        sources.file_source, sources.file_path = CONFIG_VARIABLE, environ[CONFIG_VARIABLE]
        if not sources.file_path:
            raise ConfigError(f"{CONFIG_VARIABLE} is empty: set it to a TOML file, or unset it")
    if sources.file_source:
        sources.from_file = read_toml(sources.file_path, sources.file_source)
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key in _FIELDS:
            sources.from_variables[key] = (name, _env_value(key, raw))
    return sources


def load_config(path: str | None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings dict, not yet validated: the file at ``path`` (the command line's
    ``--config``) or else the one ``KEYSTILE_CONFIG`` names, then each ``KEYSTILE_*``
    variable over the file's value."""
    return _sources(path, os.environ if environ is None else environ).merged()


def environment_settings(
    environ: Mapping[str, str] | None = None, *, config_path: str | None = None
) -> Settings:
    """:func:`load_config`, validated: what ``Keystile()`` with no settings runs on. A bad
    value's error starts with the variable (or the file) it came from."""
    sources = _sources(config_path, os.environ if environ is None else environ)
    try:
        return load_settings(sources.merged())
    except ConfigError as exc:
        origin = sources.origin_of(str(exc))
        if origin is None:
            raise
        raise ConfigError(f"{origin}: {exc}") from None
