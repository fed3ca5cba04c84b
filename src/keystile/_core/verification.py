"""How a credential is verified, written once without I/O.

The steps are generators that ``yield`` the I/O they need as ``(operation, args)`` and receive
its result; :mod:`keystile._runtime.engine` drives them with blocking calls (WSGI, Django, CLI)
or with ``await`` (ASGI). A failed Redis or store call is thrown back in as
:class:`BackendError`, so the policy for it lives here too.

Order (cheapest refusal first): checksum (done by the caller, no I/O) -> in-process cache ->
Redis -> store -> argon2 -> state -> account -> permissions (left to the endpoint).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Generator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from keystile._core.errors import (
    ACCOUNT_FORBIDDEN,
    BACKEND_UNAVAILABLE,
    EXPIRED_API_KEY,
    INVALID_API_KEY,
    IP_NOT_ALLOWED,
    TOO_MANY_ATTEMPTS,
    AuthError,
    BackendError,
)
from keystile._core.localcache import LocalCache
from keystile._core.models import KeyRecord
from keystile._core.networks import Origin, allowed, client_address, networks_of
from keystile._core.principal import Principal, Unfrozen
from keystile._core.settings import Settings
from keystile._core.snapshot import NEGATIVE, Snapshot, freeze, thaw
from keystile._core.store import SessionRecord, fingerprint
from keystile._core.tokens import KEY_ID_PREFIX, SESSION_ENVIRONMENT, ParsedToken

if TYPE_CHECKING:
    from keystile._core.metering import Meter

__all__ = [
    "NEGATIVE",
    "SessionIdle",
    "Snapshot",
    "Steps",
    "Verifier",
    "freeze",
    "principal_of",
    "session_digest",
    "thaw",
]
log = logging.getLogger("keystile")

Call = tuple[str, tuple[Any, ...]]
Steps = Generator[Call, Any, Any]

#: How often the slow path starts over when the key changes while it is being verified.
_MAX_ADOPT_TRIES = 3


class SessionIdle(AuthError):
    """Idle as far as this process knows; another process may have used it since."""


def session_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Verifier:
    def __init__(
        self,
        settings: Settings,
        local: LocalCache[Snapshot | str],
        has_redis: bool,
    ) -> None:
        self.settings = settings
        self.local = local
        self.has_redis = has_redis
        # With Redis every request checks the key's state, so a local entry may live longer.
        self.local_ttl = settings.cache_ttl if has_redis else settings.local_cache_ttl
        #: Last use of each session in this process (idle expiry), written out in batches.
        self.session_seen: dict[str, float] = {}
        #: Fast mode: the invalidation channel. While it is ``healthy``, every change of a key
        #: reaches this process's cache, so a cached snapshot is current without asking Redis.
        self.listener: Any = None
        self.trusted_proxies = networks_of(settings.trusted_proxies)

    def trusts_local(self) -> bool:
        """Whether a snapshot from this process's cache is current as it stands."""
        listener = self.listener
        return not self.has_redis or (listener is not None and listener.healthy)

    def forget(self, digest: str, stale: Snapshot) -> None:
        """``stale`` was found out of date: it leaves the cache, unless a newer one that
        another request just cached has replaced it."""
        if self.local.get(digest) is stale:
            self.local.drop(digest)

    def backend_down(self, exc: BackendError) -> None:
        """Redis failed: refuse (fail_closed) or go on without it (degrade)."""
        log.warning("keystile: Redis unavailable (%s)", type(exc.__cause__ or exc).__name__)
        if self.settings.on_backend_error == "fail_closed":
            raise AuthError(BACKEND_UNAVAILABLE) from None

    def lookup(self, cred: ParsedToken, digest: str) -> Steps:
        """``(snapshot, checked)`` for a credential, or AuthError(INVALID_API_KEY).

        ``checked`` is False for a snapshot from this process's cache while Redis is in use:
        its state stamp still has to be compared, which the caller folds into its one Redis
        call (see :mod:`keystile._core.admission`).
        """
        cached = self.local.get(digest)
        if cached == NEGATIVE:
            raise AuthError(INVALID_API_KEY)
        if isinstance(cached, Snapshot):
            return cached, self.trusts_local()
        seeded = True
        if self.has_redis:
            try:
                if cred.environment == SESSION_ENVIRONMENT:  # a session id: not in the set
                    shared = yield ("redis_fetch", (cred.kid, digest))
                else:
                    # One call: the snapshot, and whether the id exists at all. An id the
                    # seeded set lacks is refused here: no store read, no thread, no SET.
                    shared, known, seeded = yield ("redis_fetch_known", (cred.kid, digest))
                    if seeded and not known:
                        ttl = self.settings.negative_cache_ttl
                        self.local.put(digest, cred.kid, NEGATIVE, ttl, negative=True)
                        raise AuthError(INVALID_API_KEY)
                if shared == NEGATIVE:
                    ttl = self.settings.negative_cache_ttl
                    self.local.put(digest, cred.kid, NEGATIVE, ttl, negative=True)
                    raise AuthError(INVALID_API_KEY)
                if shared is not None:
                    snapshot = Snapshot.loads(shared)
                    self.local.put(digest, snapshot.kid, snapshot, self.local_ttl)
                    return snapshot, False
            except BackendError as exc:
                self.backend_down(exc)
            if not seeded:  # (fresh, flushed or evicted Redis) have it seeded in the background
                try:
                    yield ("kids_seed", ())
                except BackendError:
                    pass
        return (yield from self.refresh(cred, digest)), True

    def refresh(self, cred: ParsedToken, digest: str, stale: Snapshot | None = None) -> Steps:
        """Verify against the store; concurrent callers with one credential share the run.

        ``stale`` is a snapshot found out of date: it leaves the cache (a newer one that
        another request just cached stays, and is used)."""
        if stale is not None:
            self.forget(digest, stale)
        return (yield ("single_flight", (digest, cred)))

    def is_current(self, snapshot: Snapshot) -> Steps:
        """Whether Redis still holds the snapshot's state stamp (True when Redis is down
        and the policy is to degrade: the local snapshot is the best there is)."""
        try:
            current = yield ("redis_version", (snapshot.account_id, snapshot.kid))
        except BackendError as exc:
            self.backend_down(exc)
            return True
        return bool(current == snapshot.version)

    def slow(self, cred: ParsedToken, digest: str) -> Steps:
        """Store lookup and argon2: the only path that costs milliseconds."""
        cached = self.local.get(digest)
        # A flight for this credential may have ended just before this one began.
        if isinstance(cached, Snapshot) and (
            self.trusts_local() or (yield from self.is_current(cached))
        ):
            return cached
        stale_stamp = ""
        seen_version = None
        match: str | None = None
        for _ in range(_MAX_ADOPT_TRIES):
            # A revoke or update between the store read and the put below must win.
            epoch = self.local.epoch
            if cred.environment == SESSION_ENVIRONMENT:
                record, snapshot = yield from self._session(cred, digest)
            else:
                record, match = yield from self._key(cred, digest, seen_version, match)
                snapshot = Snapshot.of(record, via_previous=match != record.secret_hash)
            if not self.has_redis:
                self.local.put(digest, record.kid, snapshot, self.local_ttl, epoch=epoch)
                return snapshot
            try:
                current = yield (
                    "redis_adopt",
                    (record.account_id, record.kid, record.version, stale_stamp),
                )
                if current != record.version:
                    # The key changed under us: read it again, never cache the old state.
                    # If the store still says the same, the stamp is one a failed publish left.
                    if seen_version == record.version:
                        stale_stamp = current
                    seen_version = record.version
                    continue
                yield ("redis_put", (cred.kid, digest, snapshot.dumps(), self.settings.cache_ttl))
            except BackendError as exc:
                self.backend_down(exc)
                # Degraded: kept as briefly as without Redis, so that an outage does not
                # turn every request into an argon2 run.
                ttl = self.settings.local_cache_ttl
                self.local.put(digest, record.kid, snapshot, ttl, epoch=epoch)
                return snapshot
            self.local.put(digest, record.kid, snapshot, self.local_ttl, epoch=epoch)
            return snapshot
        raise AuthError(BACKEND_UNAVAILABLE, "API key is changing; retry shortly.")

    def _store_get(self, kid: str) -> Steps:
        try:
            record: KeyRecord | None = yield ("store_get", (kid,))
        except BackendError:
            raise AuthError(BACKEND_UNAVAILABLE) from None
        return record

    def _key(
        self, cred: ParsedToken, digest: str, seen_version: str | None, match: str | None
    ) -> Steps:
        """The key record a token's secret matches, and which of its hashes it matched."""
        record = yield from self._store_get(cred.kid)
        if record is None:
            # Unknown ids never reach argon2, and are remembered by digest only, so a
            # stranger can't get a real key refused by guessing its id.
            yield from self._remember_wrong(cred, digest)
            raise AuthError(INVALID_API_KEY)
        if cred.environment not in (None, record.environment):
            # Not remembered: the digest leaves the environment out, so the right token
            # shares it.
            raise AuthError(INVALID_API_KEY)
        new_hash = None
        if record.version != seen_version:  # the same record a moment ago: argon2 once is enough
            yield from self._within_budget(cred.kid, digest)
            match, new_hash = yield ("argon2_verify", (record, cred.secret))
            if match is None:
                yield from self._remember_wrong(cred, digest)
                yield from self._best_effort("key_failed", (cred.kid,))
                raise AuthError(INVALID_API_KEY)
            if match == record.secret_hash:  # (a rolled key's old secret is not the one known)
                yield from self._best_effort("key_verified", (cred.kid, digest))
        if match is None:
            raise AuthError(INVALID_API_KEY)
        if new_hash is not None:
            try:
                yield ("store_set_hash", (record.kid, match, new_hash))
            except BackendError:
                log.warning("keystile: could not store a rehashed secret; will retry")
        return record, match

    def _within_budget(self, kid: str, digest: str) -> Steps:
        """A wrong secret costs an argon2 run, and a key id is no secret: past the key's
        budget of failures in the window, only its known credential gets one."""
        settings = self.settings
        try:
            failures = yield ("key_failures", (kid,))
            if failures < settings.login_max_failures_per_key:
                return
            known = yield ("key_known", (kid, digest))
        except BackendError:
            return  # the budget is out of reach: argon2's concurrency cap still bounds the runs
        if not known:
            retry = {"retry-after": str(settings.login_failure_window)}
            raise AuthError(TOO_MANY_ATTEMPTS, "Too many failed attempts for this API key.", retry)

    def _best_effort(self, operation: str, args: tuple[Any, ...]) -> Steps:
        try:
            yield (operation, args)
        except BackendError:
            pass  # a missed count or hint: the budget is a bound, not a ledger

    def _session(self, cred: ParsedToken, digest: str) -> Steps:
        """A session token: its record (secrets compared by SHA-256: they are random and long,
        so no argon2), and the state of the key it acts for, read now."""
        try:
            session: SessionRecord | None = yield ("store_get_session", (cred.kid,))
        except BackendError:
            raise AuthError(BACKEND_UNAVAILABLE) from None
        if session is None or not hmac.compare_digest(
            session.secret_digest, session_digest(cred.secret)
        ):
            yield from self._remember_wrong(cred, digest)
            raise AuthError(INVALID_API_KEY)
        if session.ended_at is not None:
            raise AuthError(EXPIRED_API_KEY, "Session has ended.")
        record = yield from self._store_get(session.kid)
        if record is None:
            raise AuthError(EXPIRED_API_KEY, "Session has ended: its key was deleted.")
        if fingerprint(record.secret_hash) != session.key_hash_fingerprint:
            raise AuthError(EXPIRED_API_KEY, "Session has ended: its key was rolled.")
        snapshot = replace(
            Snapshot.of(record, via_previous=False),
            session_id=session.sid,
            session_expires_at=session.expires_at.timestamp(),
            idle_timeout=session.idle_timeout,
            session_last_seen=session.last_seen_at.timestamp(),
            session_account_id=session.account_id,
        )
        return record, snapshot

    def _remember_wrong(self, cred: ParsedToken, digest: str) -> Steps:
        ttl = self.settings.negative_cache_ttl
        self.local.put(digest, cred.kid, NEGATIVE, ttl, negative=True)
        if self.has_redis:
            try:
                yield ("redis_put", (cred.kid, digest, NEGATIVE, ttl))
            except BackendError:
                pass  # a missed negative entry only costs a later lookup

    def _check_session(self, snapshot: Snapshot, now: float) -> None:
        sid = snapshot.session_id
        assert sid is not None and snapshot.session_expires_at is not None
        if snapshot.session_expires_at <= now:
            raise AuthError(EXPIRED_API_KEY, "Session has expired.")
        last_seen = max(self.session_seen.get(sid, 0.0), snapshot.session_last_seen or 0.0)
        if snapshot.idle_timeout is not None and now - last_seen > snapshot.idle_timeout:
            raise SessionIdle(EXPIRED_API_KEY, "Session has expired after being idle.")
        self.session_seen[sid] = now

    def authorize(
        self,
        snapshot: Snapshot,
        auth_method: str,
        account_header: str | None,
        now: float,
        token_environment: str | None = None,
        origin: Origin | None = None,
    ) -> Principal:
        account = self.check(snapshot, account_header, now, token_environment, origin)
        return principal_of(snapshot, account, auth_method, None)

    def check(
        self,
        snapshot: Snapshot,
        account_header: str | None,
        now: float,
        token_environment: str | None = None,
        origin: Origin | None = None,
    ) -> str:
        """The account the request acts for, once the snapshot's state allows it (or
        AuthError). ``origin``: where the request came from, for a key with an allowlist
        (None: a caller with no request, such as a test, is not restricted)."""
        expected = SESSION_ENVIRONMENT if snapshot.session_id is not None else snapshot.environment
        if token_environment not in (None, expected):
            raise AuthError(INVALID_API_KEY)  # sk_test_ (or sk_sess_) around a live key's secret
        if snapshot.valid_until is not None and snapshot.valid_until <= now:
            raise AuthError(INVALID_API_KEY)  # a rolled key's old secret, past its grace
        if snapshot.revoked:
            raise AuthError(EXPIRED_API_KEY, "API key has been revoked.")
        if not snapshot.enabled:
            raise AuthError(EXPIRED_API_KEY, "API key is disabled.")
        if snapshot.expires_at is not None and snapshot.expires_at <= now:
            raise AuthError(EXPIRED_API_KEY, "API key has expired.")
        if snapshot.session_id is not None:
            self._check_session(snapshot, now)
        if snapshot.networks and origin is not None:
            client = client_address(origin.peer, origin.headers, self.trusted_proxies)
            if not allowed(client, snapshot.networks):
                raise AuthError(IP_NOT_ALLOWED)
        account = snapshot.session_account_id or snapshot.account_id
        if account_header is not None and account_header != account:
            if account_header not in (snapshot.account_id, *snapshot.accounts):
                raise AuthError(ACCOUNT_FORBIDDEN)
            account = account_header
        return account


def principal_of(
    snapshot: Snapshot, account: str, auth_method: str, meter: Meter | None
) -> Principal:
    principal: Any = _new(Unfrozen)
    principal.key_id = KEY_ID_PREFIX + snapshot.kid
    principal.account_id = account
    principal.name = snapshot.name
    principal.owner = snapshot.owner
    principal.environment = snapshot.environment
    principal.permissions = snapshot.grant_set
    principal.auth_method = auth_method
    principal.expires_at = snapshot.expires
    principal.key_account_id = snapshot.account_id
    principal.meta = snapshot.meta
    principal.meter = meter
    principal.session_id = snapshot.session_id
    principal.previous_secret_expires_at = snapshot.grace_ends
    principal.__class__ = Principal
    return principal  # type: ignore[no-any-return]


_new = object.__new__
