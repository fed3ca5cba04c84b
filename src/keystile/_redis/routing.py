"""The pipelined asyncio client for a Redis Cluster or a Sentinel-watched primary.

Both keep what makes :class:`~keystile._redis.multiplex.RedisMultiplexer` fit for the hot path
(one connection per server, shared by every request in flight) and add only the choice of the
server:

* :class:`ClusterMultiplexer` sends a command to the primary that owns its first key's slot,
  from a slot map read with ``CLUSTER SLOTS``. ``MOVED`` (the command did not run) updates the
  map and goes to the new owner; ``ASK`` sends ``ASKING`` first. A lost connection or
  ``CLUSTERDOWN`` marks the map stale, so the next command (keystile's own retry of a charge
  included) reads it anew: that is how a promoted replica is found. A timeout has the map read
  again in the background instead: a slow reply seldom means a new owner, and the retries
  of every command it held up must not wait behind one more round trip.
* :class:`SentinelMultiplexer` asks the sentinels for the primary, and asks again each second
  in the background and after any failure (before the next command, or beside it after a
  timeout), so after a failover it moves to the new primary
  within about a second of the sentinels naming it, instead of writing on to the old one until
  it is demoted (writes that are lost then).
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import quote

import redis.exceptions as rx
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from keystile._core.redisurl import RedisTarget
from keystile._redis.multiplex import LuaScript, RedisMultiplexer

__all__ = ["ClusterMultiplexer", "SentinelMultiplexer", "node_url"]

Address = tuple[str, int]
#: Failures after which the server's role may have changed: look again before the next command.
_MOVED_ON = (
    rx.ConnectionError,
    rx.TimeoutError,
    rx.ClusterDownError,
    rx.TryAgainError,
    rx.ReadOnlyError,
    rx.MasterDownError,
    OSError,
)
SENTINEL_POLL = 1.0
_SCRIPT_CALLS = frozenset({"EVALSHA", "EVAL", "EVALSHA_RO", "EVAL_RO", "FCALL", "FCALL_RO"})


def node_url(target: RedisTarget, address: Address, *, data: bool = True) -> str:
    """A server's URL; ``data=False``: a sentinel's (no password, no database)."""
    host, port = address
    scheme = "rediss" if target.tls else "redis"
    user = ""
    if data and target.password is not None:
        user = f"{quote(target.username or '', safe='')}:{quote(target.password, safe='')}@"
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{user}{host}:{port}/{target.db if data else 0}"


class _Routed(ABC):
    """What both share: a multiplexer per server address, made when first needed."""

    def __init__(self, target: RedisTarget, *, timeout: float, decode_responses: bool) -> None:
        self._target = target
        self._timeout = timeout
        self._decode = decode_responses
        self._servers: dict[Address, RedisMultiplexer] = {}

    def _server(self, address: Address, *, data: bool = True) -> RedisMultiplexer:
        server = self._servers.get(address)
        if server is None:
            url = node_url(self._target, address, data=data)
            server = RedisMultiplexer(url, timeout=self._timeout, decode_responses=self._decode)
            self._servers[address] = server
        return server

    @abstractmethod
    async def execute_command(self, *args: Any, script: LuaScript | None = None) -> Any:
        """``args`` on the server they belong to; ``script``: the one an EVALSHA runs."""

    async def evalsha(
        self, script: LuaScript, keys: Sequence[str], args: Sequence[str | int | float | bytes]
    ) -> Any:
        return await self.execute_command(
            "EVALSHA", script.sha, len(keys), *keys, *args, script=script
        )

    async def execute_alone(self, *args: Any, script: LuaScript | None = None) -> Any:
        """A command on one of its server's spare connections (see
        :meth:`RedisMultiplexer.execute_alone`), routed as :meth:`execute_command` is."""
        address = await self._address_for(_key_of(args))
        try:
            return await self._alone(address, args, script)
        except rx.MovedError as moved:  # not run: the slot has a new owner
            self._failed(moved)
            return await self._alone(moved.node_addr, args, script)

    async def _alone(
        self, address: Address, args: tuple[Any, ...], script: LuaScript | None
    ) -> Any:
        try:
            return await self._server(address).execute_alone(*args, script=script)
        except _MOVED_ON as exc:
            self._failed(exc)
            raise

    @abstractmethod
    async def _address_for(self, key: Any) -> Address:
        """The server that runs commands on ``key`` now."""

    @abstractmethod
    def _failed(self, exc: BaseException) -> None:
        """The server may have changed (``exc`` says why): find it again, before the next
        command, or beside it after a timeout."""

    @staticmethod
    async def _run(
        server: RedisMultiplexer, args: tuple[Any, ...], script: LuaScript | None
    ) -> Any:
        try:
            return await server.execute_command(*args)
        except rx.NoScriptError:
            if script is None:
                raise
            # It did not run: this server (a promoted replica, a restarted node) lacks it.
            await server.execute_command("SCRIPT", "LOAD", script.source)
            return await server.execute_command(*args)

    async def _close_all(self) -> None:
        servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            await server.aclose()


class ClusterMultiplexer(_Routed):
    """Redis Cluster: one pipelined connection per primary, commands routed by slot."""

    def __init__(self, target: RedisTarget, *, timeout: float, decode_responses: bool = True):
        super().__init__(target, timeout=timeout, decode_responses=decode_responses)
        self._slots: list[Address | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        self._stale = True
        self._mapping = _Shared(self._read_map)

    async def execute_command(self, *args: Any, script: LuaScript | None = None) -> Any:
        return await self._send(_key_of(args), args, script)

    async def aclose(self) -> None:
        self._stale = True
        await self._close_all()

    async def _send(self, key: Any, args: tuple[Any, ...], script: LuaScript | None) -> Any:
        if self._stale:
            await self._map()
        address = self._slots[key_slot(_bytes(key))] if key is not None else self._any()
        if address is None:
            self._stale = True  # a map read mid-failover: read it again next time
            raise rx.ClusterDownError(f"no primary serves the slot of {key!r}")
        try:
            return await self._run(self._server(address), args, script)
        except rx.MovedError as moved:  # not run: the slot has a new owner
            self._slots[moved.slot_id] = moved.node_addr
            self._stale = True  # a failover moves many slots at once: read them all next time
            return await self._run(self._server(moved.node_addr), args, script)
        except rx.AskError as ask:  # the slot is migrating: this key is there already
            server = self._server(ask.node_addr)
            return (
                await asyncio.gather(
                    server.execute_command("ASKING"), server.execute_command(*args)
                )
            )[1]
        except _MOVED_ON as exc:
            self._failed(exc)
            raise

    async def _address_for(self, key: Any) -> Address:
        if self._stale:
            await self._map()
        address = self._slots[key_slot(_bytes(key))] if key is not None else self._any()
        if address is None:
            self._stale = True
            raise rx.ClusterDownError(f"no primary serves the slot of {key!r}")
        return address

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, rx.TimeoutError):
            self._mapping.start()
        else:
            self._stale = True

    def _any(self) -> Address | None:
        return next((a for a in self._slots if a is not None), None)

    async def _map(self) -> None:
        """Read the slot map (one reader at a time; the others wait for it)."""
        await asyncio.shield(self._mapping.start())

    async def _read_map(self) -> None:
        known = [a for a in dict.fromkeys(self._slots) if a is not None]
        failure: BaseException | None = None
        for address in dict.fromkeys([*known, *self._target.nodes]):
            try:
                reply = await self._server(address).execute_command("CLUSTER", "SLOTS")
            except (rx.RedisError, OSError) as exc:
                failure = exc
                continue
            slots: list[Address | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
            for start, end, primary, *_ in reply:
                host = _text(primary[0]) or address[0]  # an empty host means "the one asked"
                owner = (host, int(primary[1]))
                slots[int(start) : int(end) + 1] = [owner] * (int(end) - int(start) + 1)
            self._slots, self._stale = slots, False
            await self._drop_unused()
            return
        raise rx.ConnectionError(f"no cluster node answered CLUSTER SLOTS ({failure!r})")

    async def _drop_unused(self) -> None:
        owners = set(self._slots) | set(self._target.nodes)
        for address in [a for a in self._servers if a not in owners]:
            await self._servers.pop(address).aclose()


class SentinelMultiplexer(_Routed):
    """The primary the sentinels name, through one pipelined connection."""

    def __init__(self, target: RedisTarget, *, timeout: float, decode_responses: bool = True):
        super().__init__(target, timeout=timeout, decode_responses=decode_responses)
        assert target.service
        self._service = target.service
        self._primary: Address | None = None
        self._asking = _Shared(self._ask)
        self._watch: asyncio.Task[None] | None = None

    async def execute_command(self, *args: Any, script: LuaScript | None = None) -> Any:
        primary = self._primary
        if primary is None:
            primary = await self._discover()
        try:
            return await self._run(self._server(primary), args, script)
        except _MOVED_ON as exc:
            self._failed(exc)
            raise

    async def aclose(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(BaseException):
                await self._watch
            self._watch = None
        self._primary = None
        await self._close_all()

    async def _address_for(self, key: Any) -> Address:
        return self._primary if self._primary is not None else await self._discover()

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, rx.TimeoutError):
            self._asking.start()
        else:
            self._primary = None  # ask the sentinels before the next command

    async def _discover(self) -> Address:
        await asyncio.shield(self._asking.start())
        if self._primary is None:
            raise rx.ConnectionError(f"no sentinel names a primary for {self._service!r}")
        if self._watch is None:
            self._watch = asyncio.ensure_future(self._watch_sentinels())
        return self._primary

    async def _ask(self) -> None:
        for sentinel in self._target.nodes:
            try:
                reply = await self._server(sentinel, data=False).execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self._service
                )
            except (rx.RedisError, OSError):
                continue
            if reply:
                address = (_text(reply[0]), int(reply[1]))
                if address != self._primary and self._primary is not None:
                    old = self._servers.pop(self._primary, None)
                    if old is not None:
                        await old.aclose()
                self._primary = address
                return

    async def _watch_sentinels(self) -> None:
        """Each second, ask again: a failover moves the primary with no error to tell."""
        while True:
            await asyncio.sleep(SENTINEL_POLL)
            with contextlib.suppress(rx.RedisError, OSError):
                await self._ask()


class _Shared:
    """One run of ``work`` at a time, shared by whoever starts it meanwhile; its failure is
    retrieved even when nobody waited for it (a lookup started beside the commands)."""

    def __init__(self, work: Callable[[], Awaitable[None]]) -> None:
        self._work = work
        self.running: asyncio.Future[None] | None = None

    def start(self) -> asyncio.Future[None]:
        if self.running is None:
            self.running = asyncio.ensure_future(self._work())
            self.running.add_done_callback(self._done)
        return self.running

    def _done(self, task: asyncio.Future[None]) -> None:
        self.running = None
        if not task.cancelled():
            task.exception()


def _key_of(args: tuple[Any, ...]) -> Any:
    """The key a command routes by (None: any server will do)."""
    if str(args[0]).upper() in _SCRIPT_CALLS:  # EVALSHA sha numkeys key...
        return args[3] if int(args[2]) > 0 else None
    return args[1] if len(args) > 1 else None


def _bytes(key: Any) -> bytes:
    return key if isinstance(key, bytes) else str(key).encode()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
