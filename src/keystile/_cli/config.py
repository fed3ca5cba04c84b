"""Settings for the command line: a TOML file (``--config``, else ``KEYSTILE_CONFIG``'s), then
``KEYSTILE_*`` variables; read as an app without settings reads them
(:mod:`keystile._runtime.environment`)."""

from __future__ import annotations

from keystile._runtime.environment import ENV_PREFIX, STRING_SETTINGS, load_config

__all__ = ["ENV_PREFIX", "STRING_SETTINGS", "load_config"]
