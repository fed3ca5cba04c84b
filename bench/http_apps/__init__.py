"""The apps that ``bench/http.py`` serves over real HTTP (one case per server process).

Each server process reads its case from the environment, set by ``bench/http.py``:

- ``KS_BENCH_VARIANT``: which app to build (``bare``, ``keystile``, ``naive-redis-get``, ...);
- ``KS_BENCH_SETTINGS``: JSON, the keystile settings dict (or, for ``safe-api-keys``, its
  store path, prefix and pepper);
- ``KS_BENCH_REDIS_URL``: the bench's private Redis (``naive-redis-get`` only);
- ``KS_BENCH_DJANGO_DB``: the SQLite file of the Django cases.

Every app has one route, ``GET /``, answering 200.
"""

from __future__ import annotations

import json
import os
from typing import Any

VARIANT_ENV = "KS_BENCH_VARIANT"
SETTINGS_ENV = "KS_BENCH_SETTINGS"
REDIS_URL_ENV = "KS_BENCH_REDIS_URL"
DJANGO_DB_ENV = "KS_BENCH_DJANGO_DB"
#: The key ``naive-redis-get`` reads on every request (the bench sets it before starting).
NAIVE_REDIS_KEY = "ks-bench:naive"


def variant() -> str:
    return os.environ.get(VARIANT_ENV, "bare")


def case_settings() -> dict[str, Any]:
    raw = os.environ.get(SETTINGS_ENV)
    if not raw:
        raise RuntimeError(f"{SETTINGS_ENV} is not set: start this app through bench/http.py")
    settings = json.loads(raw)
    if not isinstance(settings, dict):
        raise RuntimeError(f"{SETTINGS_ENV} must be a JSON object")
    return settings


def redis_url() -> str:
    url = os.environ.get(REDIS_URL_ENV)
    if not url:
        raise RuntimeError(f"{REDIS_URL_ENV} is not set: start this app through bench/http.py")
    return url
