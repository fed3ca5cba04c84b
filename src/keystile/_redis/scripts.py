"""Redis for keystile: the Lua scripts (package files, registered once) and the clients.

Key names live in :mod:`keystile._core.rediskeys`. Clients never retry on their own: a timed out
increment must not run twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Sequence
from importlib import resources
from typing import Any

import redis

from keystile._core.rediskeys import RedisKeys
from keystile._core.redisurl import CLUSTER, SENTINEL, SINGLE
from keystile._core.settings import Settings
from keystile._redis.blocking import BlockingRedis
from keystile._redis.clients import sync_client, target_of
from keystile._redis.multiplex import LuaScript, RedisMultiplexer
from keystile._redis.routing import SENTINEL_POLL, ClusterMultiplexer, SentinelMultiplexer

__all__ = ["AsyncRedis", "RedisKeys", "SyncRedis", "load_script"]

SCRIPT_NAMES = (
    "adopt", "meter", "settle", "lease", "lease_report", "lease_lost", "resolve", "pending",
    "fetch_known", "seed_done", "rate_lease",
)  # fmt: skip
#: The scripts that change a counter: each call carries a marker, so it can be sent again.
ONCE = frozenset({"meter", "settle", "lease", "lease_report", "pending"})


def _lua(name: str) -> str:
    return resources.files("keystile._redis").joinpath("lua", f"{name}.lua").read_text()


def load_script(name: str) -> str:
    """A script's source; those in :data:`ONCE` start with ``once.lua``."""
    return (_lua("once") + _lua(name)) if name in ONCE else _lua(name)


class _BlockingScript:
    """A script on keystile's blocking client, called like redis-py's: ``script(keys, args)``."""

    __slots__ = ("_client", "_script", "sha")

    def __init__(self, client: BlockingRedis, source: str) -> None:
        self._client = client
        self._script = LuaScript(source)
        self.sha = self._script.sha

    def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self._client.evalsha(self._script, keys, args)


class SyncRedis:
    """A blocking client and its registered scripts. On one server (not a Cluster nor
    Sentinel) the scripts and :attr:`commands` go through keystile's lean client
    (:mod:`keystile._redis.blocking`); ``client`` is redis-py's, for everything else."""

    def __init__(self, settings: Settings) -> None:
        self.client: redis.Redis = sync_client(settings)
        self.commands: Any = self.client
        self.scripts: dict[str, Any]
        if target_of(settings).kind == SINGLE:
            assert settings.redis_url
            lean = self.commands = BlockingRedis(settings.redis_url, timeout=settings.redis_timeout)
            self.scripts = {name: _BlockingScript(lean, load_script(name)) for name in SCRIPT_NAMES}
        else:
            self.scripts = {
                name: self.client.register_script(load_script(name)) for name in SCRIPT_NAMES
            }
        self._closed = threading.Event()
        if target_of(settings).kind == SENTINEL:
            threading.Thread(target=self._watch, name="keystile-sentinel", daemon=True).start()

    def _watch(self) -> None:
        """Each second, ask the sentinels for the primary: after a failover the old one takes
        writes (then lost) until it is demoted; this moves the idle connections within about
        a second of the sentinels naming the new one."""
        pool: Any = self.client.connection_pool
        while not self._closed.wait(SENTINEL_POLL):
            with contextlib.suppress(redis.RedisError, OSError):
                pool.get_master_address()

    def close(self) -> None:
        self._closed.set()
        self.client.close()
        if self.commands is not self.client:
            self.commands.close()


class _Script:
    """A script bound to one multiplexer, called like redis-py's: ``await script(keys, args)``."""

    __slots__ = ("_client", "_script")

    def __init__(self, client: Multiplexer, source: str) -> None:
        self._client = client
        self._script = LuaScript(source)

    def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Awaitable[Any]:
        return self._client.evalsha(self._script, keys, args)  # its coroutine: no frame here

    async def alone(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """On a spare connection, alone on it (a retry): see ``execute_alone``."""
        script = self._script
        call = ("EVALSHA", script.sha, len(keys), *keys, *args)
        return await self._client.execute_alone(*call, script=script)


Multiplexer = RedisMultiplexer | ClusterMultiplexer | SentinelMultiplexer


def _multiplexer(settings: Settings) -> Multiplexer:
    target, timeout = target_of(settings), settings.redis_timeout
    if target.kind == CLUSTER:
        return ClusterMultiplexer(target, timeout=timeout)
    if target.kind == SENTINEL:
        return SentinelMultiplexer(target, timeout=timeout)
    assert settings.redis_url
    return RedisMultiplexer(settings.redis_url, timeout=timeout)


class AsyncRedis:
    """One pipelined client per event loop: the commands of concurrent requests share one
    connection and one write per loop tick, so a thousand requests in flight neither open a
    thousand connections nor run out of them (redis-py's asyncio pool raises instead)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Not weak: each client holds its loop. A closed loop's client is let go instead.
        self._by_loop: dict[asyncio.AbstractEventLoop, tuple[Multiplexer, dict[str, _Script]]] = {}

    def _get(self) -> tuple[Multiplexer, dict[str, _Script]]:
        loop = asyncio.get_running_loop()
        pair = self._by_loop.get(loop)
        if pair is None:
            # Code that runs a loop per call (asyncio.run, async_to_sync) leaves closed ones.
            for old in [old for old in self._by_loop if old.is_closed()]:
                del self._by_loop[old]
            client = _multiplexer(self.settings)
            scripts = {name: _Script(client, load_script(name)) for name in SCRIPT_NAMES}
            pair = self._by_loop[loop] = (client, scripts)
        return pair

    @property
    def client(self) -> Multiplexer:
        return self._get()[0]

    @property
    def scripts(self) -> dict[str, _Script]:
        return self._get()[1]

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        pair = self._by_loop.pop(loop, None)
        if pair is not None:
            await pair[0].aclose()
