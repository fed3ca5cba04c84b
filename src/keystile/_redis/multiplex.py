"""A pipelined (multiplexed) asyncio Redis client for the hot path.

redis-py's asyncio client spends most of a command in Python and needs a pooled connection
per command in flight.  Here the commands issued during one event-loop tick are packed (by
hiredis, in C) and written with one ``transport.write``; replies come back in order (RESP
is FIFO) and resolve the commands' futures in order: one connection, no task per command.

Errors are redis-py's classes, so ``except (redis.RedisError, OSError)`` applies.  A reply
overdue by ``timeout`` closes the connection (a late reply would go to the wrong command).
Nothing is retried but EVALSHA after NOSCRIPT (which means the script did not run).

A caller's retry goes on a spare connection (``execute_alone``) that carries one command at a
time: it must not queue behind the slow reply that stalled the shared connection, nor behind
another retry's.  A stall fails every command in flight at once, so the spares are few (at most
``SPARE_CONNECTIONS`` per server, more retries wait for one) and kept for the next fault: a
stall under load opens a bounded number of connections, not one per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import deque
from collections.abc import Sequence
from typing import Any

import redis.exceptions as rx

from keystile._redis.endpoint import endpoint_of
from keystile._redis.replies import NOT_ENOUGH_DATA, pack, reply_reader

__all__ = ["LuaScript", "RedisMultiplexer"]

SPARE_CONNECTIONS = 32
#: A retry waits for a spare this many timeouts at most: every command on a spare ends within
#: one, so the spares work through four rounds of a stall's retries; beyond that, in an outage,
#: a request is refused without waiting longer.
SPARE_WAIT = 4


class LuaScript:
    """A Lua script known by its SHA1, so the hot path sends EVALSHA, not the source."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


class _Connection(asyncio.Protocol):
    """One socket: a FIFO of futures, each resolved by the next reply."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, decode: bool) -> None:
        self.loop = loop
        self.timeout = timeout
        self.reader = reply_reader(decode)
        self.transport: asyncio.Transport | None = None
        self.pending: deque[asyncio.Future[Any]] = deque()  # written or queued, unanswered
        self.out: list[bytes] = []  # packed commands of this tick, not yet written
        self.written = 0  # commands written so far
        self.replied = 0  # replies received so far
        self.batches: deque[tuple[int, float]] = deque()  # (written after batch, deadline)
        self.timer: asyncio.TimerHandle | None = None  # one, for the oldest open batch
        self.lost: rx.RedisError | None = None  # why this connection is unusable, once set
        self.drained: asyncio.Future[None] | None = None  # set while writing is paused

    def send(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        """Queue a command for this tick's write; its future gets the matching reply."""
        if self.lost is not None:
            raise _copy(self.lost)
        packed = pack(args)
        out = self.out
        idle = not out and self.written == self.replied and self.drained is None
        idle = idle and self.transport is not None
        out.append(packed)
        fut: asyncio.Future[Any] = self.loop.create_future()
        self.pending.append(fut)
        if idle:
            # Nothing in flight, so no batch to join: write now and save a loop turn. Commands
            # issued while this one is out wait for the next tick's write together.
            self.flush()
        elif len(out) == 1:
            self.loop.call_soon(self.flush)
        return fut

    def flush(self) -> None:
        """Write everything issued this tick at once and time it as one batch."""
        out, transport = self.out, self.transport
        if not out or transport is None or self.lost is not None:
            return
        transport.write(out[0] if len(out) == 1 else b"".join(out))
        self.written += len(out)
        out.clear()
        deadline = self.loop.time() + self.timeout
        self.batches.append((self.written, deadline))
        if self.timer is None:
            self.timer = self.loop.call_at(deadline, self.check)

    def check(self) -> None:
        """The connection's one timer (not one per command): is the oldest batch overdue?"""
        self.timer = None
        self.drop_answered()
        if not self.batches or self.lost is not None:
            return
        deadline = self.batches[0][1]
        if deadline <= self.loop.time():
            self.fail(rx.TimeoutError(f"no reply from Redis within {self.timeout} s"))
        else:
            self.timer = self.loop.call_at(deadline, self.check)

    def data_received(self, data: bytes) -> None:
        reader, pending = self.reader, self.pending
        reader.feed(data)
        count = 0
        while True:
            try:
                reply = reader.gets()
            except UnicodeDecodeError:  # hiredis consumed the reply: fail just this one
                reply = rx.DataError("reply is not valid UTF-8 (decode_responses=True)")
            except Exception:  # protocol error: the stream cannot be trusted any more
                self.fail(rx.ConnectionError("invalid reply from Redis"))
                return
            if reply is NOT_ENOUGH_DATA:
                break
            if not pending:
                self.fail(rx.ConnectionError("unexpected reply from Redis"))
                return
            count += 1
            fut = pending.popleft()
            if fut.done():  # its caller was cancelled: the reply is consumed and dropped
                continue
            if isinstance(reply, Exception):
                fut.set_exception(reply)
            else:
                fut.set_result(reply)
        self.replied += count
        self.drop_answered()

    def drop_answered(self) -> None:
        batches = self.batches
        while batches and batches[0][0] <= self.replied:
            batches.popleft()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc is not None else ""
        self.fail(rx.ConnectionError(f"connection to Redis lost{reason}"))

    def pause_writing(self) -> None:
        self.drained = self.loop.create_future()

    def resume_writing(self) -> None:
        drained, self.drained = self.drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def fail(self, error: rx.RedisError) -> None:
        """Close for good: fail every pending command (later replies could not be matched)."""
        if self.lost is None:
            self.lost = error
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.out.clear()
        self.batches.clear()
        if self.transport is not None:
            self.transport.abort()
        pending = self.pending
        while pending:
            fut = pending.popleft()
            if not fut.done():
                fut.set_exception(_copy(error))
        self.resume_writing()


def _copy(error: rx.RedisError) -> rx.RedisError:
    """A fresh exception per caller: one instance raised in many tasks grows its traceback."""
    return type(error)(*error.args)


class RedisMultiplexer:
    """One pipelined connection per event loop (create it inside the running loop).

    Connects on the first command; concurrent first commands share the attempt.  After a
    connection is lost (or times out, or ``aclose()``), the next command reconnects, so
    the object stays usable after ``aclose()``."""

    def __init__(self, url: str, *, timeout: float, decode_responses: bool = True) -> None:
        self._url = url
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._decode = decode_responses
        self._endpoint = endpoint_of(url)
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._spares: list[RedisMultiplexer] = []  # idle ones
        self._spare_free: asyncio.Semaphore | None = None  # made with the first spare

    async def execute_command(self, *args: str | bytes | int | float) -> Any:
        conn = self._conn
        if conn is None or conn.lost is not None or conn.drained is not None:
            conn = await self._ready()
        return await conn.send(args)

    async def evalsha(
        self, script: LuaScript, keys: Sequence[str], args: Sequence[str | int | float | bytes]
    ) -> Any:
        try:
            return await self.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except rx.NoScriptError:  # it did not run: load it and run it, once
            await self.execute_command("SCRIPT", "LOAD", script.source)
            return await self.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)

    async def execute_alone(self, *args: Any, script: LuaScript | None = None) -> Any:
        """A command on a spare connection, alone on it while it runs (``script``: the one an
        EVALSHA runs).  Waits up to ``SPARE_WAIT`` timeouts for a spare when all are busy."""
        free = self._spare_free
        if free is None:
            free = self._spare_free = asyncio.Semaphore(SPARE_CONNECTIONS)
        try:
            await asyncio.wait_for(free.acquire(), SPARE_WAIT * self._timeout)
        except asyncio.TimeoutError:
            raise rx.TimeoutError("no spare connection to Redis free in time") from None
        spares = self._spares
        one = (
            spares.pop()
            if spares
            else RedisMultiplexer(self._url, timeout=self._timeout, decode_responses=self._decode)
        )
        try:
            try:
                return await one.execute_command(*args)
            except rx.NoScriptError:
                if script is None:
                    raise
                await one.execute_command("SCRIPT", "LOAD", script.source)  # it did not run
                return await one.execute_command(*args)
        finally:
            self._spares.append(one)  # (after a failure it reconnects on its next command)
            free.release()

    async def aclose(self) -> None:
        """Close the connections; their pending commands fail with ConnectionError."""
        if self._connecting is not None:
            with contextlib.suppress(Exception):  # a failed attempt leaves nothing to close
                await asyncio.shield(self._connecting)
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.fail(rx.ConnectionError("connection closed by aclose()"))
        spares, self._spares = self._spares, []
        for spare in spares:
            await spare.aclose()

    async def _ready(self) -> _Connection:
        conn = self._conn
        if conn is None or conn.lost is not None:
            task = self._connecting
            if task is None:
                task = self._connecting = self._loop.create_task(self._open())
                task.add_done_callback(self._opened)
            conn = await asyncio.shield(task)  # a cancelled caller must not cancel the others
        while conn.drained is not None and conn.lost is None:  # transport buffer over limit
            await asyncio.shield(conn.drained)
        return conn

    def _opened(self, task: asyncio.Task[_Connection]) -> None:
        self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved here even if every waiter was cancelled

    async def _open(self) -> _Connection:
        """Connect, then AUTH and SELECT pipelined before anything else."""
        conn = _Connection(self._loop, self._timeout, self._decode)
        loop = self._loop
        endpoint = self._endpoint
        try:
            if endpoint.path is not None:
                made = loop.create_unix_connection(lambda: conn, endpoint.path)
            else:
                made = loop.create_connection(
                    lambda: conn, endpoint.host, endpoint.port, ssl=endpoint.tls
                )
            await asyncio.wait_for(made, self._timeout)
        except asyncio.TimeoutError:
            raise rx.TimeoutError(f"timeout connecting to Redis at {endpoint.where}") from None
        except OSError as exc:
            raise rx.ConnectionError(
                f"error connecting to Redis at {endpoint.where}: {exc}"
            ) from exc
        hello = [conn.send(tuple(command)) for command in endpoint.handshake()]
        try:
            await asyncio.gather(*hello)
        except BaseException:
            conn.fail(rx.ConnectionError("Redis handshake failed"))
            raise
        self._conn = conn
        return conn
