"""Settings for the command line: a TOML file (``--config``) and ``KEYSTILE_*`` variables."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from keystile._core.errors import ConfigError
from keystile._core.settings import Settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "KEYSTILE_"
_FIELDS = {name for name in Settings.__dataclass_fields__}


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


def load_config(path: str | None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Settings from ``path`` (its ``[keystile]`` table, or the top level), then the environment."""
    settings: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"--config: no such file {path!r}") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"--config: cannot read {path!r}: {exc}") from None
        table = data.get("keystile", data)
        if not isinstance(table, dict):
            raise ConfigError(f"--config: [keystile] in {path!r} must be a table")
        settings.update(table)
    environ = os.environ if environ is None else environ
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key in _FIELDS:
            settings[key] = _env_value(key, raw)
    return settings
