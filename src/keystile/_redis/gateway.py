"""Every Redis call keystile makes, and the one policy for a failed one.

The policy: a Redis error or a socket error becomes :class:`BackendError`, named by the
operation and chained to the cause; anything else is a bug and goes on up. The callers decide
what a :class:`BackendError` means where they are (a 503, a fallback, a retry later), never
which exceptions count as Redis failing.

A call whose reply is lost (a timeout, a cut connection, a failover) is sent once more at
once; async, on a spare connection that carries it alone, since the shared one may be
stalled behind a slow reply. Every other call is a read or writes the same thing twice alike;
a call that changes a counter (meter, settle, lease, lease report, pending) goes again marked
as sent again, and its marker answers it when the first one ran, so nothing is counted twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any

import redis

from keystile._core.errors import BackendError
from keystile._core.rediskeys import KIDS_READY, RedisKeys
from keystile._core.resends import AGAIN
from keystile._core.settings import Settings
from keystile._redis.clients import is_cluster, shards_pubsub
from keystile._redis.invalidation import invalidation_channel
from keystile._redis.scripts import ONCE, AsyncRedis, SyncRedis

#: What counts as Redis failing (redis-py raises ``OSError`` subclasses for some socket errors).
#: A cluster client that cannot map the cluster raises RedisClusterException, not a RedisError.
REDIS_ERRORS = (redis.RedisError, redis.exceptions.RedisClusterException, OSError)
#: Errors of a script that ran and failed as written: sending it again would fail alike.
#: (A replica's READONLY, a cluster's CLUSTERDOWN or TRYAGAIN: the script did not run.)
_RAN = redis.ResponseError
_DID_NOT_RUN = (
    redis.exceptions.ReadOnlyError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
)


def _send_again(exc: BaseException) -> bool:
    return not isinstance(exc, _RAN) or isinstance(exc, _DID_NOT_RUN)


def _again(name: str, args: Sequence[Any]) -> list[Any]:
    return [AGAIN, *args[1:]] if name in ONCE else list(args)


def backend_error(operation: str, exc: BaseException) -> BackendError:
    error = BackendError(f"redis {operation} failed: {type(exc).__name__}")
    error.__cause__ = exc
    return error


def _known_reply(reply: list[Any]) -> tuple[str | None, bool, bool]:
    """The fetch_known script's reply: ``(snapshot or None, member, seeded)``."""
    return (reply[2] if len(reply) > 2 else None), reply[0] == 1, reply[1] == 1


class RedisGateway:
    """A blocking client (made on first use) and one pipelined asyncio client per event loop,
    behind methods named for what keystile asks of Redis."""

    def __init__(self, settings: Settings, keys: RedisKeys) -> None:
        self.settings = settings
        self.keys = keys
        self.channel = invalidation_channel(settings.redis_prefix)
        self._sync: SyncRedis | None = None
        self.aio = AsyncRedis(settings)
        #: On Redis Cluster a script's keys must share a slot: the few calls whose keys
        #: cannot (the key-id set is one for all keys) go as separate commands.
        self.cluster = is_cluster(settings)
        self._sharded: bool | None = None

    @property
    def sync(self) -> SyncRedis:
        if self._sync is None:
            self._sync = SyncRedis(self.settings)
        return self._sync

    @property
    def client(self) -> redis.Redis:
        """The blocking redis-py client (tests and tools look at Redis through it)."""
        return self.sync.client

    @property
    def scripts(self) -> dict[str, Any]:
        return self.sync.scripts

    # -- the request path, blocking ---------------------------------------------------------

    def version(self, account_id: str, kid: str) -> str | None:
        value: str | None = self._run("version", "GET", self.keys.state(account_id, kid))
        return value

    def fetch(self, kid: str, digest: str) -> str | None:
        value: str | None = self._run("fetch", "GET", self.keys.snapshot(kid, digest))
        return value

    def fetch_known(self, kid: str, digest: str) -> tuple[str | None, bool, bool]:
        """``(snapshot or None, kid in the key-id set, set seeded)``: one EVALSHA (two
        commands on a Cluster, where the set and the snapshot live in different slots)."""
        if self.cluster:
            known = self._run("fetch_known", "SMISMEMBER", self.keys.kids(), kid, KIDS_READY)
            if known[1] == 1 and known[0] == 0:
                return None, False, True
            return self.fetch(kid, digest), known[0] == 1, known[1] == 1
        keys = [self.keys.snapshot(kid, digest), self.keys.kids()]
        return _known_reply(self._script("fetch_known", keys, [kid, KIDS_READY]))

    def adopt(self, account_id: str, kid: str, version: str, stale: str) -> str:
        keys = [self.keys.state(account_id, kid)]
        return str(self._script("adopt", keys, [version, stale]))

    def put(self, kid: str, digest: str, value: str, ttl: int) -> None:
        self._run("put", "SET", self.keys.snapshot(kid, digest), value, "EX", ttl)

    def meter(self, keys: list[str], args: list[Any]) -> list[Any]:
        reply: list[Any] = self._script("meter", keys, args)
        return reply

    def lease(self, keys: list[str], args: list[Any]) -> list[Any]:
        reply: list[Any] = self._script("lease", keys, args)
        return reply

    def rate_lease(self, keys: list[str], args: list[Any]) -> list[Any]:
        reply: list[Any] = self._script("rate_lease", keys, args)
        return reply

    def settle(self, keys: list[str], args: list[Any]) -> None:
        self._script("settle", keys, args)

    def pending(self, keys: list[str], args: list[Any]) -> Any:
        return self._script("pending", keys, args)

    def lease_report(self, keys: list[str], args: list[Any]) -> list[Any]:
        reply: list[Any] = self._script("lease_report", keys, args)
        return reply

    def _run(self, operation: str, *command: Any) -> Any:
        """A plain command: every one keystile sends reads, or writes the same thing twice
        alike (GET, SET, SMISMEMBER, SREM, DEL, HGETALL, PING)."""
        try:
            return self.sync.commands.execute_command(*command)
        except REDIS_ERRORS as exc:
            if not _send_again(exc):
                raise backend_error(operation, exc) from exc
        try:
            return self.sync.commands.execute_command(*command)
        except REDIS_ERRORS as exc:
            raise backend_error(operation, exc) from exc

    def _script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return self.sync.scripts[name](keys=keys, args=args)
        except REDIS_ERRORS as exc:
            if not _send_again(exc):
                raise backend_error(name, exc) from exc
        try:
            return self.sync.scripts[name](keys=keys, args=_again(name, args))
        except REDIS_ERRORS as exc:
            raise backend_error(name, exc) from exc

    def resend(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """A counter change Redis did not confirm, sent again (``resolve`` for a charge)."""
        return self._script(name, keys, _again(name, args))

    # -- the request path, async ------------------------------------------------------------

    async def version_async(self, account_id: str, kid: str) -> str | None:
        value: str | None = await self._run_async(
            "version", "GET", self.keys.state(account_id, kid)
        )
        return value

    async def fetch_async(self, kid: str, digest: str) -> str | None:
        value: str | None = await self._run_async("fetch", "GET", self.keys.snapshot(kid, digest))
        return value

    async def fetch_known_async(self, kid: str, digest: str) -> tuple[str | None, bool, bool]:
        if self.cluster:
            known = await self._run_async(
                "fetch_known", "SMISMEMBER", self.keys.kids(), kid, KIDS_READY
            )
            if known[1] == 1 and known[0] == 0:
                return None, False, True
            return await self.fetch_async(kid, digest), known[0] == 1, known[1] == 1
        keys = [self.keys.snapshot(kid, digest), self.keys.kids()]
        return _known_reply(await self._script_async("fetch_known", keys, [kid, KIDS_READY]))

    async def adopt_async(self, account_id: str, kid: str, version: str, stale: str) -> str:
        keys = [self.keys.state(account_id, kid)]
        return str(await self._script_async("adopt", keys, [version, stale]))

    async def put_async(self, kid: str, digest: str, value: str, ttl: int) -> None:
        await self._run_async("put", "SET", self.keys.snapshot(kid, digest), value, "EX", ttl)

    # The script calls of requests return _script_async's coroutine itself: a coroutine
    # awaiting it would be one more frame to create and to resume at every reply.

    def meter_async(self, keys: list[str], args: list[Any]) -> Coroutine[Any, Any, Any]:
        return self._script_async("meter", keys, args)

    def lease_async(self, keys: list[str], args: list[Any]) -> Coroutine[Any, Any, Any]:
        return self._script_async("lease", keys, args)

    def rate_lease_async(self, keys: list[str], args: list[Any]) -> Coroutine[Any, Any, Any]:
        return self._script_async("rate_lease", keys, args)

    def settle_async(self, keys: list[str], args: list[Any]) -> Coroutine[Any, Any, Any]:
        return self._script_async("settle", keys, args)

    async def _run_async(self, operation: str, *command: Any) -> Any:
        try:
            return await self.aio.client.execute_command(*command)
        except REDIS_ERRORS as exc:
            if not _send_again(exc):
                raise backend_error(operation, exc) from exc
        try:
            return await self.aio.client.execute_alone(*command)
        except REDIS_ERRORS as exc:
            raise backend_error(operation, exc) from exc

    async def _script_async(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await self.aio.scripts[name](keys=keys, args=args)
        except REDIS_ERRORS as exc:
            if not _send_again(exc):
                raise backend_error(name, exc) from exc
        try:
            return await self.aio.scripts[name].alone(keys=keys, args=_again(name, args))
        except REDIS_ERRORS as exc:
            raise backend_error(name, exc) from exc

    # -- key changes, quotas, usage ---------------------------------------------------------

    def announce_state(self, account_id: str, kid: str, version: str, *, push: bool) -> None:
        """A key's new version stamp; with ``push`` (fast mode) also on the invalidation
        channel, which processes trusting their caches listen to."""
        try:
            self.sync.client.set(self.keys.state(account_id, kid), version)
            if push:
                if self.sharded:
                    self.sync.client.spublish(self.channel, kid)
                else:  # one server, or a cluster that forwards it to every node
                    self.sync.client.publish(self.channel, kid)
        except REDIS_ERRORS as exc:
            raise backend_error("announce_state", exc) from exc

    @property
    def sharded(self) -> bool:
        """The invalidation channel is sharded: a Cluster of Redis 7 or later."""
        if self._sharded is None:
            self._sharded = self.cluster and shards_pubsub(self.sync.client)
        return self._sharded

    def add_kids(self, kids: Iterable[str]) -> None:
        members = list(kids)
        try:
            for start in range(0, len(members), 1000):
                self.sync.client.sadd(self.keys.kids(), *members[start : start + 1000])
        except REDIS_ERRORS as exc:
            raise backend_error("add_kids", exc) from exc

    def remove_kid(self, kid: str) -> None:
        self._run("remove_kid", "SREM", self.keys.kids(), kid)

    def drop_limits(self, account_id: str, environments: Iterable[str]) -> None:
        """The account's cached limits leave Redis: the next request seeds the new ones."""
        limits = [self.keys.limit(account_id, e) for e in environments]
        self._run("drop_limits", "DEL", *limits)

    def counter(self, account_id: str, period: str, environment: str) -> dict[str, str]:
        key = self.keys.usage(account_id, period, environment)
        raw = self._run("counter", "HGETALL", key)
        if isinstance(raw, list):  # Redis's reply as is (keystile's client): field, value, ...
            return dict(zip(raw[::2], raw[1::2], strict=True))
        return dict(raw)

    # -- login limits -----------------------------------------------------------------------

    def _login_key(self, subject: str) -> str:
        digest = hashlib.sha256(subject.encode("utf-8", "replace")).hexdigest()[:32]
        return f"{self.keys.prefix}:login:{digest}"

    def login_failures(self, subject: str) -> int:
        return int(self._run("login_failures", "GET", self._login_key(subject)) or 0)

    def add_login_failures(self, subjects: Iterable[str], window: int) -> None:
        try:
            pipe = self.sync.client.pipeline()
            for subject in subjects:
                pipe.incr(self._login_key(subject))
                pipe.expire(self._login_key(subject), window, nx=True)
            pipe.execute()
        except REDIS_ERRORS as exc:
            raise backend_error("add_login_failures", exc) from exc

    def remember_login(self, kid: str, digest: str, ttl: int) -> None:
        self._run(
            "remember_login", "SET", f"{self.keys.prefix}:login-known:{kid}", digest, "EX", ttl
        )

    def known_login(self, kid: str) -> str | None:
        known: str | None = self._run("known_login", "GET", f"{self.keys.prefix}:login-known:{kid}")
        return known

    def ping(self) -> None:
        self._run("ping", "PING")

    # -- life cycle -------------------------------------------------------------------------

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()

    async def aclose(self) -> None:
        """Let go of this event loop's connection (others keep theirs)."""
        await self.aio.aclose()
