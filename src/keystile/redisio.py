"""Redis for keystile: the Lua scripts (package files, registered once) and the clients.

Key names live in :mod:`keystile.rediskeys`. Clients never retry on their own: a timed out
increment must not run twice.
"""

from __future__ import annotations

import asyncio
import weakref
from importlib import resources
from typing import Any

import redis
import redis.asyncio as aredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .rediskeys import RedisKeys
from .settings import Settings

__all__ = ["AsyncRedis", "RedisKeys", "SyncRedis", "load_script"]

SCRIPT_NAMES = ("adopt", "meter", "settle")


def load_script(name: str) -> str:
    return resources.files("keystile").joinpath("lua", f"{name}.lua").read_text()


def _options(settings: Settings) -> dict[str, Any]:
    return {
        "socket_timeout": settings.redis_timeout,
        "socket_connect_timeout": settings.redis_timeout,
        "retry": Retry(NoBackoff(), 0),
        "retry_on_timeout": False,
        "decode_responses": True,
    }


class SyncRedis:
    """A blocking client and its registered scripts."""

    def __init__(self, settings: Settings) -> None:
        assert settings.redis_url
        self.client: redis.Redis = redis.Redis.from_url(settings.redis_url, **_options(settings))
        self.scripts = {
            name: self.client.register_script(load_script(name)) for name in SCRIPT_NAMES
        }

    def close(self) -> None:
        self.client.close()


class AsyncRedis:
    """One asyncio client per event loop: redis.asyncio connections belong to the loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._by_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[aredis.Redis, dict[str, Any]]
        ] = weakref.WeakKeyDictionary()

    def _get(self) -> tuple[aredis.Redis, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        pair = self._by_loop.get(loop)
        if pair is None:
            assert self.settings.redis_url
            client = aredis.Redis.from_url(self.settings.redis_url, **_options(self.settings))
            scripts = {name: client.register_script(load_script(name)) for name in SCRIPT_NAMES}
            pair = self._by_loop[loop] = (client, scripts)
        return pair

    @property
    def client(self) -> aredis.Redis:
        return self._get()[0]

    @property
    def scripts(self) -> dict[str, Any]:
        return self._get()[1]

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        pair = self._by_loop.pop(loop, None)
        if pair is not None:
            await pair[0].aclose()
