"""The backends object: built first from the settings, then handed to whatever needs a part."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from keystile._backends.clocks import Clocks
from keystile._backends.hashing import SecretHasher
from keystile._core import tokens
from keystile._core.localcache import LocalCache
from keystile._core.rediskeys import RedisKeys
from keystile._core.settings import Settings
from keystile._core.store import KeyStore
from keystile._core.verification import Snapshot
from keystile._redis.gateway import RedisGateway
from keystile._redis.keyids import KeyIdSet
from keystile.stores import open_store


@dataclass(frozen=True, slots=True, repr=False)
class Backends:
    settings: Settings
    store: KeyStore
    clocks: Clocks
    hasher: SecretHasher
    #: Verified credentials (and refusals) by digest, in front of Redis and the store.
    local: LocalCache[Snapshot | str]
    redis_keys: RedisKeys
    #: None without ``redis_url``: everything stays in this process.
    redis: RedisGateway | None
    key_ids: KeyIdSet | None
    digest_key: bytes

    @property
    def fast(self) -> bool:
        return self.settings.consistency == "fast"

    def digest(self, token: tokens.ParsedToken) -> str:
        return tokens.digest(self.digest_key, token)

    def __repr__(self) -> str:
        return f"Backends(store={self.settings.store!r}, redis={self.redis is not None})"


def build_backends(settings: Settings, clocks: Clocks, store: KeyStore | None = None) -> Backends:
    store = store if store is not None else open_store(settings.store)
    redis_keys = RedisKeys(settings.redis_prefix)
    gateway = RedisGateway(settings, redis_keys) if settings.redis_url else None
    key_ids = None
    if gateway is not None:
        key_ids = KeyIdSet(gateway, store, clocks.monotonic)
    # Without Redis nothing leaves the process, so a per-process digest key will do.
    secret = settings.secret
    return Backends(
        settings=settings,
        store=store,
        clocks=clocks,
        hasher=SecretHasher(
            settings.argon2, settings.argon2_max_concurrency, settings.argon2_queue_timeout
        ),
        local=LocalCache(settings.local_cache_size, clocks.monotonic),
        redis_keys=redis_keys,
        redis=gateway,
        key_ids=key_ids,
        digest_key=secret.encode() if secret else secrets.token_bytes(32),
    )
