"""The two drivers of the core's steps: one with blocking calls (WSGI, Django, the CLI), one
with ``await`` (ASGI). A step yields ``(operation, args)``; the driver looks the operation up
in its table, runs it, and sends back the result or throws in the failure.

A failed store call, and a failed Redis call (the gateway's :class:`BackendError`), go back
into the steps, where the core decides what they mean; anything else is a bug, or a refusal
(:class:`AuthError`), and goes on up.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from keystile._backends.backends import Backends
from keystile._backends.hashing import match_secret
from keystile._core import tokens
from keystile._core.errors import AuthError, BackendError
from keystile._core.models import KeyRecord
from keystile._core.verification import Call, Snapshot, Steps, Verifier
from keystile._runtime.singleflight import AsyncSingleFlight, SyncSingleFlight
from keystile._services.loginlimits import FailureLimits


def as_backend_error(operation: str, exc: Exception) -> BackendError:
    """What to throw back into the steps for ``exc``, or ``exc`` itself raised."""
    if isinstance(exc, BackendError):
        return exc
    if operation.startswith("store_") and not isinstance(exc, AuthError):
        error = BackendError(f"{operation} failed: {type(exc).__name__}")
        error.__cause__ = exc
        return error
    raise exc


#: The store's and the gateway's calls the steps ask for by name (``store_get``, ...).
STORE_OPS = ("get", "set_hash", "usage", "get_limit", "get_session")
REDIS_OPS = (
    "version", "fetch", "fetch_known", "adopt", "put", "meter", "lease", "rate_lease", "settle",
)  # fmt: skip
#: The reads of a key's snapshot: a burst of requests with one credential not yet in this
#: process's cache shares one of each, as it shares one argon2 run (if it fails, the requests
#: that joined it read on their own).
SHARED_READS = ("fetch", "fetch_known")


class Done:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def advance(steps: Steps, result: Any, error: BaseException | None) -> Call | Done:
    """Send ``result`` into the steps, or throw ``error`` in: the next call they ask for, or
    :class:`Done` with what they return."""
    try:
        return steps.throw(error) if error else steps.send(result)
    except StopIteration as done:
        return Done(done.value)


def _late(owner: Any, name: str) -> Callable[..., Any]:
    """``owner.name`` looked up at each call, so that a method swapped in later (a test's
    fault, a wrapped store) is the one that runs. Only the cold path pays for it."""

    def call(*args: Any) -> Any:
        return getattr(owner, name)(*args)

    return call


def _read_body(reader: Callable[[], bytes | None]) -> bytes | None:
    return reader()


async def _read_body_async(reader: Callable[[], Any]) -> bytes | None:
    body = reader()
    result: bytes | None = await body if inspect.isawaitable(body) else body
    return result


def _shared(flights: SyncSingleFlight, name: str, read: Callable[..., Any]) -> Callable[..., Any]:
    """``read(kid, digest)``, shared by the concurrent callers for one digest."""

    def shared(kid: str, digest: str) -> Any:
        return flights.run(f"{name}:{digest}", lambda: read(kid, digest), (BackendError,))

    return shared


def _shared_async(
    flights: AsyncSingleFlight, name: str, read: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    async def shared(kid: str, digest: str) -> Any:
        return await flights.run(f"{name}:{digest}", lambda: read(kid, digest), (BackendError,))

    return shared


def _limit_ops(limits: FailureLimits) -> dict[str, Callable[..., Any]]:
    """The key-failure budget's calls (see :meth:`Verifier._within_budget`)."""
    return {
        "key_failures": limits.key_failures,
        "key_known": limits.known.matches,
        "key_failed": limits.key_failed,
        "key_verified": limits.known.remember,
    }


class SyncDriver:
    def __init__(self, backends: Backends, verifier: Verifier, limits: FailureLimits) -> None:
        self._verifier = verifier
        self._flights = SyncSingleFlight()
        store, redis = backends.store, backends.redis
        hasher, wall = backends.hasher, backends.clocks.wall

        def argon2_verify(record: KeyRecord, secret: str) -> tuple[str | None, str | None]:
            return match_secret(hasher, record, secret, wall())

        #: Operation name -> the call that does it (tests swap entries to inject faults).
        self.ops: dict[str, Callable[..., Any]] = {
            **{f"store_{name}": _late(store, name) for name in STORE_OPS},
            "argon2_verify": argon2_verify,
            "request_body": _read_body,
            "single_flight": self._single_flight,
            **_limit_ops(limits),
        }
        if redis is not None and backends.key_ids is not None:
            self.ops.update({f"redis_{name}": _late(redis, name) for name in REDIS_OPS})
            reads = SyncSingleFlight()
            for name in SHARED_READS:
                self.ops[f"redis_{name}"] = _shared(reads, name, self.ops[f"redis_{name}"])
            self.ops["kids_seed"] = backends.key_ids.seed_soon

    def run(self, steps: Steps) -> Any:
        ops = self.ops
        call = advance(steps, None, None)
        while call.__class__ is tuple:
            operation, args = call
            try:
                result, error = ops[operation](*args), None
            except Exception as exc:
                result, error = None, as_backend_error(operation, exc)
            call = advance(steps, result, error)
        return call.value  # type: ignore[union-attr]

    def _single_flight(self, digest: str, token: tokens.ParsedToken) -> Snapshot:
        snapshot: Snapshot = self._flights.run(
            digest, lambda: self.run(self._verifier.slow(token, digest))
        )
        return snapshot


def _threaded(blocking: bool, fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """``fn`` as an awaitable call: in a worker thread when it blocks (a store on disk or
    over the network), else inline (an in-memory store)."""
    if blocking:

        async def in_thread(*args: Any) -> Any:
            return await asyncio.to_thread(fn, *args)

        return in_thread

    async def inline(*args: Any) -> Any:
        return fn(*args)

    return inline


class AsyncDriver:
    def __init__(
        self, backends: Backends, verifier: Verifier, sync: SyncDriver, limits: FailureLimits
    ) -> None:
        self._verifier = verifier
        self._flights = AsyncSingleFlight()
        store, redis = backends.store, backends.redis
        blocking = store.blocking
        seed = None if backends.key_ids is None else backends.key_ids.seed_soon
        self.ops: dict[str, Callable[..., Awaitable[Any]]] = {
            **{f"store_{name}": _threaded(blocking, _late(store, name)) for name in STORE_OPS},
            "argon2_verify": _threaded(True, sync.ops["argon2_verify"]),
            "request_body": _read_body_async,
            "single_flight": self._single_flight,
            # In Redis when there is one (blocking calls: a thread), else in this process.
            **{name: _threaded(redis is not None, op) for name, op in _limit_ops(limits).items()},
        }
        if redis is not None and seed is not None:
            self.ops.update({f"redis_{name}": _late(redis, f"{name}_async") for name in REDIS_OPS})
            reads = AsyncSingleFlight()
            for name in SHARED_READS:
                self.ops[f"redis_{name}"] = _shared_async(reads, name, self.ops[f"redis_{name}"])
            self.ops["kids_seed"] = _threaded(False, seed)  # only starts a thread

    async def run(self, steps: Steps) -> Any:
        ops = self.ops
        call = advance(steps, None, None)
        while call.__class__ is tuple:
            operation, args = call
            try:
                result, error = await ops[operation](*args), None
            except Exception as exc:
                result, error = None, as_backend_error(operation, exc)
            call = advance(steps, result, error)
        return call.value  # type: ignore[union-attr]

    async def _single_flight(self, digest: str, token: tokens.ParsedToken) -> Snapshot:
        snapshot: Snapshot = await self._flights.run(
            digest, lambda: self.run(self._verifier.slow(token, digest))
        )
        return snapshot
