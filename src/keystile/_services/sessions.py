"""``ks.sessions``: log in with a key + secret for a session token, log out.

A session acts with its key's account and permissions (``auth_method="session"``). It ends at
``session_ttl`` after login, after ``session_idle_ttl`` unused, at logout, and when its key is
revoked, rolled or deleted: every check of a session reads its key's state, and every one of
those changes publishes a new state stamp, so the next request anywhere sees it.

Login is the one place argon2 runs on purpose, so failed logins are limited per client and per
key id, without locking out the owner's known secret (:mod:`keystile._services.loginlimits`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from keystile._backends.backends import Backends
from keystile._core import tokens
from keystile._core.credentials import Credentials, read_credentials
from keystile._core.errors import (
    INVALID_API_KEY,
    MALFORMED_CREDENTIALS,
    TOO_MANY_ATTEMPTS,
    AuthError,
    BackendError,
    NotFound,
)
from keystile._core.models import ShownOnce
from keystile._core.networks import Origin, RequestOrigin
from keystile._core.principal import Principal
from keystile._core.store import SessionRecord, fingerprint
from keystile._core.tokens import SESSION_ENVIRONMENT
from keystile._core.verification import Snapshot, session_digest
from keystile._services.audit import AuditLog
from keystile._services.keys import KeyManager
from keystile._services.loginlimits import FailureLimits

#: What the engine verifies a credential with: the principal and the snapshot it read.
Verify = Callable[[Credentials, Origin | None], tuple[Principal, Snapshot]]

log = logging.getLogger("keystile")


@dataclass(frozen=True, slots=True, repr=False)
class Session(ShownOnce):
    """What a login returns: the token once, and when it stops working."""

    token: str
    session_id: str
    key_id: str
    account_id: str
    expires_at: datetime
    idle_timeout: int


class SessionManager:
    """``ks.sessions``: log in with a key credential for a session token; log out."""

    def __init__(
        self,
        backends: Backends,
        audit: AuditLog,
        keys: KeyManager,
        verify: Verify,
        limits: FailureLimits,
    ) -> None:
        self._backends = backends
        self._settings = backends.settings
        self._store = backends.store
        self._now = backends.clocks.now
        self._audit = audit
        self._keys = keys
        self._verify = verify
        self.failures = limits.failures
        self.known = limits.known

    def _limited(self, subject: str, limit: int) -> AuthError | None:
        if self.failures.count(subject) < limit:
            return None
        window = self._settings.login_failure_window
        return AuthError(
            TOO_MANY_ATTEMPTS, "Too many failed logins; retry later.", {"retry-after": str(window)}
        )

    def login(self, headers: Iterable[tuple[str, str]], client: str | None = None) -> Session:
        """Blocking. Verifies a key credential (either form) and opens a session for it."""
        settings = self._settings
        client_subject = f"client:{client or '-'}"
        client_refused = self._limited(client_subject, settings.login_max_failures)
        sent = list(headers)
        try:
            creds = read_credentials(sent, settings.token_prefix, settings.environments)
        except AuthError as error:
            if client_refused:
                raise client_refused from None
            if error.spec is INVALID_API_KEY:
                self.failures.add(client_subject)
            raise
        if creds.token.environment == SESSION_ENVIRONMENT:
            raise AuthError(MALFORMED_CREDENTIALS, "Log in with an API key, not a session token.")
        kid = creds.token.kid
        digest = self._backends.digest(creds.token)
        # A client's limit (a shared NAT address too) never stops the key's known credential:
        # it is the owner's. (The key's own budget is checked in the verification itself.)
        if client_refused and not self.known.matches(kid, digest):
            raise client_refused
        for _attempt in (1, 2):  # a change in between: verify once more
            try:
                principal, snapshot = self._verify(creds, RequestOrigin(client, sent))
            except AuthError as error:
                if error.spec is INVALID_API_KEY:
                    self.failures.add(client_subject)
                raise
            session = self._open(principal, snapshot)
            if session is not None:
                try:
                    self.known.remember(kid, digest)
                except BackendError as exc:  # the session exists: a lost hint is no failure
                    log.warning("keystile: could not remember a login (%s)", exc)
                return session
            # This process's cached snapshot is older than the store (another process
            # changed the key, or logged a session out): check against the store.
            self._backends.local.drop(digest)
        # Changed twice while logging in (revoked, rolled, updated): no session on a stale read.
        raise AuthError(INVALID_API_KEY)

    def _open(self, principal: Principal, verified: Snapshot) -> Session | None:
        """The session, or None when the key changed since it was verified (a roll or revoke
        racing this login): its hash would not be the one the secret matched."""
        settings = self._settings
        kid = principal.key_id.removeprefix(tokens.KEY_ID_PREFIX)
        record = self._store.get(kid)
        if record is None:
            raise AuthError(INVALID_API_KEY)
        if record.version != verified.version:
            return None
        now = self._now()
        expires = now + timedelta(seconds=settings.session_ttl)
        if record.expires_at is not None:
            expires = min(expires, record.expires_at)  # never outlives its key
        if verified.valid_until is not None:  # a rolled key's old secret: not past its grace
            expires = min(expires, datetime.fromtimestamp(verified.valid_until, timezone.utc))
        sid = tokens.new_kid()
        secret = tokens.new_secret(sid)
        token = tokens.format_token(settings.token_prefix, SESSION_ENVIRONMENT, sid, secret)
        self._store.insert_session(
            SessionRecord(
                sid=sid,
                kid=kid,
                account_id=principal.account_id,
                secret_digest=session_digest(secret),
                key_hash_fingerprint=fingerprint(record.secret_hash),
                created_at=now,
                expires_at=expires,
                idle_timeout=float(settings.session_idle_ttl),
                last_seen_at=now,
            )
        )
        self._audit.record(
            "session.login",
            principal.account_id,
            principal.key_id,
            principal.key_id,
            {"session_id": sid, "expires_at": expires.isoformat()},
        )
        return Session(
            token, sid, principal.key_id, principal.account_id, expires, settings.session_idle_ttl
        )

    def logout(self, principal: Principal) -> None:
        """End the principal's session, in every process from the next request on."""
        sid = principal.session_id
        if sid is None:
            raise AuthError(MALFORMED_CREDENTIALS, "Log out needs a session token.")
        session = self._store.get_session(sid)
        if session is None:
            raise NotFound("no such session")
        self._store.end_session(sid, self._now())
        # Cached session snapshots carry their key's state stamp: a new stamp sends every
        # process back to the store, which now says the session has ended.
        self._keys.touch(principal.key_id)
        self._audit.record(
            "session.logout",
            principal.account_id,
            principal.key_id,
            principal.key_id,
            {"session_id": sid},
        )
