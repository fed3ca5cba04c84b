"""What the warm requests of one remembered credential reuse: its key's snapshot, the
account it acts for, its charge and its account's limit, decided by one full pass of
:meth:`~keystile._core.admission.Admission.warm` and reused while nothing they rest on can
have changed.

A ticket rests on the in-process caches it was read from and on the clock: it holds while
neither cache dropped, replaced or cleared an entry (their ``epoch``), while both entries it
was read from live, and until the first of the key's expiry, a rolled secret's end and the
billing period's end. Only what does not depend on the request itself is in it: a key with
an IP allowlist, a session, a ``page_cost`` callable, or a route of the mounted management
API (which costs no pages) take the full pass every time. It holds no secret: it is made
only for the remembered credential (:mod:`keystile._core.credentialreader`), which has none.
No I/O.
"""

from __future__ import annotations

from keystile._core.credentials import Credentials
from keystile._core.metering import Charge
from keystile._core.ratelimits import Rate
from keystile._core.verification import Snapshot


class WarmTicket:
    """Read-only once made (a plain class: made once per key and cache entry, read by every
    request)."""

    __slots__ = (
        "account",
        "cache_epoch",
        "charge",
        "creds",
        "fresh_until",
        "limit",
        "limits_epoch",
        "rate",
        "snapshot",
        "valid_until",
    )

    def __init__(
        self,
        creds: Credentials,
        snapshot: Snapshot,
        account: str,
        charge: Charge,
        limit: int | None,
        rate: Rate | None,
        epochs: tuple[int, int],
        fresh_until: float,
        valid_until: float,
    ) -> None:
        self.creds = creds
        self.snapshot = snapshot
        self.account = account
        self.charge = charge
        #: Without Redis, the account's limit and rate, resolved from its cached row.
        self.limit = limit
        self.rate = rate
        self.cache_epoch, self.limits_epoch = epochs
        #: The in-process caches' clock (monotonic): when the first entry it rests on expires.
        self.fresh_until = fresh_until
        #: The wall clock: the key's expiry, a rolled secret's end or the period's end.
        self.valid_until = valid_until


def valid_until(snapshot: Snapshot, period_end: float) -> float:
    """The wall time from which a ticket of ``snapshot`` no longer holds."""
    until = period_end
    if snapshot.expires_at is not None and snapshot.expires_at < until:
        until = snapshot.expires_at
    if snapshot.valid_until is not None and snapshot.valid_until < until:
        until = snapshot.valid_until
    return until


def ticketable(snapshot: Snapshot, creds: Credentials) -> bool:
    """Whether what a full pass decided for ``snapshot`` and ``creds`` holds for any request
    that carries them: no allowlist to check against the peer, and a credential with no
    secret in it (a remembered one)."""
    return not snapshot.networks and not creds.token.secret


class WarmTickets:
    """Tickets by credential digest, at most ``size`` (then all go: the busy ones come back
    at their next request). Thread-safe: a lookup and a store are single dict operations."""

    __slots__ = ("_size", "_tickets", "get")

    def __init__(self, size: int) -> None:
        self._size = size
        self._tickets: dict[str, WarmTicket] = {}
        self.get = self._tickets.get

    def put(self, digest: str, ticket: WarmTicket) -> None:
        tickets = self._tickets
        if len(tickets) >= self._size:
            if not self._size:
                return
            tickets.clear()
        tickets[digest] = ticket

    def __len__(self) -> int:
        return len(self._tickets)
