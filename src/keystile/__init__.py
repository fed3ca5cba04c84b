"""keystile: API keys for Python APIs.

argon2-hashed keys, Redis-cached verification in microseconds, monthly quotas, and one
middleware for Starlette/FastAPI, WSGI/Flask and Django.
"""

from .engine import Keystile
from .errors import AuthError, BackendError, ConfigError, InvalidInput, KeystileError, NotFound
from .keys import CreatedKey, KeyPage
from .models import ApiKey
from .principal import Principal
from .settings import Settings
from .tokens import TOKEN_PATTERN

__all__ = [
    "TOKEN_PATTERN",
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
    "Settings",
]
__version__ = "0.1.0"
