"""A warning at start when Redis may evict keystile's keys.

Counters, limits, state stamps and call markers all carry a TTL, so every eviction policy but
``noeviction`` may pick them under memory pressure (the ``volatile-*`` ones first of all). An
evicted counter is rebuilt from the store, losing the charges other processes have not written
yet; an evicted state stamp makes every process verify anew. Run on a thread: it must not delay
the start, and Redis may not answer yet.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from keystile._core.settings import Settings
from keystile._redis.clients import sync_client
from keystile._redis.gateway import REDIS_ERRORS

log = logging.getLogger("keystile")
SAFE_POLICY = "noeviction"


def eviction_policies(settings: Settings) -> set[str]:
    """Each server's ``maxmemory-policy``; empty when CONFIG is not allowed (some hosted
    Redis) or Redis does not answer."""
    try:
        client = sync_client(settings)
        try:
            reply: Any = client.config_get("maxmemory-policy")
        finally:
            client.close()
    except REDIS_ERRORS:
        return set()
    # A cluster answers per node: {node: {name: value}}.
    replies = reply.values() if all(isinstance(v, dict) for v in reply.values()) else [reply]
    return {str(r["maxmemory-policy"]) for r in replies if "maxmemory-policy" in r}


def check_eviction(settings: Settings) -> list[str]:
    """The policies that may evict keystile's keys (logged as a warning)."""
    risky = sorted(p for p in eviction_policies(settings) if p != SAFE_POLICY)
    if risky:
        log.warning(
            "keystile: Redis maxmemory-policy is %s: it may evict quota counters under memory"
            " pressure (set maxmemory-policy %s, or give keystile a Redis of its own)",
            ", ".join(risky),
            SAFE_POLICY,
        )
    return risky


def check_eviction_soon(settings: Settings) -> threading.Thread:
    thread = threading.Thread(
        target=check_eviction, args=(settings,), name="keystile-eviction-check", daemon=True
    )
    thread.start()
    return thread
