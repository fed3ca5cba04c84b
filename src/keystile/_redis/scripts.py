"""Redis for keystile: the Lua scripts (package files, registered once) and the clients.

Key names live in :mod:`keystile._core.rediskeys`. Clients never retry on their own: a timed out
increment must not run twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from keystile._core.rediskeys import RedisKeys
from keystile._core.settings import Settings
from keystile._redis.multiplex import LuaScript, RedisMultiplexer

__all__ = ["AsyncRedis", "RedisKeys", "SyncRedis", "load_script"]

SCRIPT_NAMES = ("adopt", "meter", "settle", "lease", "lease_report", "fetch_known", "seed_done")


def load_script(name: str) -> str:
    return resources.files("keystile._redis").joinpath("lua", f"{name}.lua").read_text()


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


class _Script:
    """A script bound to one multiplexer, called like redis-py's: ``await script(keys, args)``."""

    __slots__ = ("_client", "_script")

    def __init__(self, client: RedisMultiplexer, source: str) -> None:
        self._client = client
        self._script = LuaScript(source)

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self._client.evalsha(self._script, keys, args)


class AsyncRedis:
    """One pipelined client per event loop: the commands of concurrent requests share one
    connection and one write per loop tick, so a thousand requests in flight neither open a
    thousand connections nor run out of them (redis-py's asyncio pool raises instead)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Not weak: each client holds its loop. A closed loop's client is let go instead.
        self._by_loop: dict[
            asyncio.AbstractEventLoop, tuple[RedisMultiplexer, dict[str, _Script]]
        ] = {}

    def _get(self) -> tuple[RedisMultiplexer, dict[str, _Script]]:
        loop = asyncio.get_running_loop()
        pair = self._by_loop.get(loop)
        if pair is None:
            # Code that runs a loop per call (asyncio.run, async_to_sync) leaves closed ones.
            for old in [old for old in self._by_loop if old.is_closed()]:
                del self._by_loop[old]
            assert self.settings.redis_url
            client = RedisMultiplexer(self.settings.redis_url, timeout=self.settings.redis_timeout)
            scripts = {name: _Script(client, load_script(name)) for name in SCRIPT_NAMES}
            pair = self._by_loop[loop] = (client, scripts)
        return pair

    @property
    def client(self) -> RedisMultiplexer:
        return self._get()[0]

    @property
    def scripts(self) -> dict[str, _Script]:
        return self._get()[1]

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        pair = self._by_loop.pop(loop, None)
        if pair is not None:
            await pair[0].aclose()
