"""keystile: API keys for Python APIs.

argon2-hashed keys, Redis-cached verification in microseconds, monthly quotas, and one
middleware for Starlette/FastAPI, WSGI/Flask and Django.
"""

from keystile._core.errors import (
    ApiError,
    AuthError,
    BackendError,
    ConfigError,
    InvalidInput,
    KeystileError,
    NotFound,
    RequestError,
)
from keystile._core.models import ApiKey
from keystile._core.principal import Principal
from keystile._core.settings import Settings
from keystile._core.tokens import TOKEN_PATTERN
from keystile._runtime.engine import Keystile
from keystile._runtime.environment import environment_settings
from keystile._services.keys import CreatedKey, KeyPage

__all__ = [
    "TOKEN_PATTERN",
    "ApiError",
    "ApiKey",
    "AuthError",
    "BackendError",
    "ConfigError",
    "CreatedKey",
    "InvalidInput",
    "KeyPage",
    "Keystile",
    "KeystileError",
    "NotFound",
    "Principal",
    "RequestError",
    "Settings",
    "environment_settings",
]
__version__ = "0.1.0"
