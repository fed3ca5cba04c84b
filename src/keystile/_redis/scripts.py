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

from keystile._core.rediskeys import RedisKeys
from keystile._core.redisurl import SINGLE
from keystile._core.settings import Settings
from keystile._redis.clients import async_client, sync_client, target_of
from keystile._redis.multiplex import LuaScript, RedisMultiplexer

__all__ = ["AsyncRedis", "RedisKeys", "SyncRedis", "load_script"]

SCRIPT_NAMES = (
    "adopt", "meter", "settle", "lease", "lease_report", "resolve", "fetch_known", "seed_done"
)  # fmt: skip
#: The scripts that change a counter: each call carries a marker, so it can be sent again.
ONCE = frozenset({"meter", "settle", "lease", "lease_report"})


def _lua(name: str) -> str:
    return resources.files("keystile._redis").joinpath("lua", f"{name}.lua").read_text()


def load_script(name: str) -> str:
    """A script's source; those in :data:`ONCE` start with ``once.lua``."""
    return (_lua("once") + _lua(name)) if name in ONCE else _lua(name)


class SyncRedis:
    """A blocking client and its registered scripts."""

    def __init__(self, settings: Settings) -> None:
        self.client: redis.Redis = sync_client(settings)
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


class _ClientScript(_Script):
    """A script on redis-py's asyncio Cluster or Sentinel client: loaded (on every primary)
    when the server does not know it, which means it did not run."""

    __slots__ = ()

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        client: Any = self._client
        try:
            return await client.evalsha(self._script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            await client.script_load(self._script.source)
            return await client.evalsha(self._script.sha, len(keys), *keys, *args)


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
            client: Any
            if target_of(self.settings).kind == SINGLE:
                client = RedisMultiplexer(
                    self.settings.redis_url, timeout=self.settings.redis_timeout
                )
                kind: type[_Script] = _Script
            else:
                client, kind = async_client(self.settings), _ClientScript
            scripts = {name: kind(client, load_script(name)) for name in SCRIPT_NAMES}
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
