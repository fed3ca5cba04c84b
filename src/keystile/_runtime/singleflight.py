"""Single flight: concurrent callers with the same key share one run of the work.

Used so that a burst of requests with one cold key costs one argon2 run per process, and one
read of its snapshot from Redis. ``again_on``: failures after which a caller that only joined
the run does the work itself (a shared read that timed out must not fail every request that
waited for it).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class _Flight(Generic[T]):
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None


class SyncSingleFlight:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight[Any]] = {}

    def run(
        self, key: str, work: Callable[[], T], again_on: tuple[type[BaseException], ...] = ()
    ) -> T:
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if leader:
            try:
                flight.result = work()
            except BaseException as exc:
                flight.error = exc
            finally:
                with self._lock:
                    del self._flights[key]
                flight.done.set()
        else:
            flight.done.wait()
        if flight.error is not None:
            if not leader and isinstance(flight.error, again_on):
                return work()
            raise flight.error
        result: T = flight.result  # type: ignore[assignment]
        return result


class AsyncSingleFlight:
    def __init__(self) -> None:
        self._tasks: dict[tuple[int, str], asyncio.Task[Any]] = {}

    async def run(
        self,
        key: str,
        work: Callable[[], Awaitable[T]],
        again_on: tuple[type[BaseException], ...] = (),
    ) -> T:
        slot = (id(asyncio.get_running_loop()), key)
        task = self._tasks.get(slot)
        leader = task is None
        if task is None:
            task = asyncio.ensure_future(work())
            self._tasks[slot] = task
            task.add_done_callback(lambda done: self._finish(slot, done))
        try:
            # Shielded: one caller giving up (client gone) must not cancel the others' answer.
            result: T = await asyncio.shield(task)
        except again_on:
            if leader:
                raise
            result = await work()
        return result

    def _finish(self, slot: tuple[int, str], task: asyncio.Task[Any]) -> None:
        if self._tasks.get(slot) is task:
            del self._tasks[slot]
        if not task.cancelled():
            task.exception()  # retrieved here, so an unawaited failure is not logged as lost
