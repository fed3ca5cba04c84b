"""Page leases for the "fast" metering mode: exact quotas with no Redis trip per request.

A process takes a block of pages from the account's Redis counter (``lua/lease.lua``) and
spends it here, in memory. The counter counts leased pages as used, so the leases out never
add up to more than the limit: quotas stay exact. Blocks grow while a process keeps asking
and shrink to single pages near the limit (the script caps each grant at a share of what is
left). What was spent, and at flush or shutdown every unused page, goes back to Redis in one
``lua/lease_report.lua`` call per counter. A process that dies loses at most its lease: once
the lease expires another holder's acquisition sweeps it, forgiving what it spent unreported.

This module does no I/O. The engine makes the Redis calls and tells the book what they
answered; everything here is integer bookkeeping under one lock, because :meth:`spend` runs
on every request of every thread. Redis holds, per holder, ``outstanding = unspent here +
spent here since the last report``; every method below keeps that true.
"""

from __future__ import annotations

import math
import secrets
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from keystile._core.metering import Charge, UsageBuffer
from keystile._core.ratelimits import Rate
from keystile._core.rediskeys import CALL_MARKER_TTL
from keystile._core.resends import FIRST

#: (account_id, period label, environment): one usage hash in Redis.
Counter = tuple[str, str, str]
#: A lease takes at most 1/8 of what is left under the limit: near it, single pages.
LEASE_SPREAD = 8


@dataclass(frozen=True, slots=True)
class LeaseReport:
    """What one ``lease_report.lua`` call carries for one counter."""

    counter: Counter
    spent: int  # pages spent out of the lease since the last report (>= 0)
    returned: int  # unused lease pages given back (>= 0)
    extra: int  # pages beyond any lease (negative: a refund of pages already reported)
    keep: bool  # keep the lease alive and refresh its expiry
    requests: int
    per_key: tuple[tuple[str, int, int], ...]  # (kid, pages, requests)
    gen: int | None = None  # the counter generation the reported lease came from


def report_args(report: LeaseReport, holder: str, lease_ttl_ms: int) -> list[str | int]:
    """ARGV of ``lease_report.lua`` for ``report`` (its KEYS: the usage and leases hashes)."""
    args: list[str | int] = [
        holder,
        report.spent,
        report.returned,
        report.extra,
        "1" if report.keep else "0",
        lease_ttl_ms,
        report.requests,
    ]
    for kid, pages, requests in report.per_key:
        args += (kid, pages, requests)
    return args


class _Lease:
    """One counter's local state. Mutable and slotted: spend() only does integer updates."""

    __slots__ = (
        "account_rate", "block", "born", "extra", "gen", "have", "limit", "per_key", "rate_known",
        "requests", "spent", "until", "used",
    )  # fmt: skip

    def __init__(self) -> None:
        self.have = 0  # leased pages not yet spent
        self.spent = 0  # spent out of the lease since the last report
        self.extra = 0  # charged beyond any lease since the last report
        self.requests = 0
        self.per_key: dict[str, list[int]] = {}  # kid -> [pages, requests] since the last report
        self.block = 1  # the next acquisition's size
        self.used = 0  # the counter's pages as of the last grant (leases included)
        self.limit: int | None = None
        self.gen: int | None = None  # the counter generation its lease came from (None: none)
        self.born = ""  # when its lease in Redis was made ('': not known)
        self.until = 0.0  # wall clock: spent here only before then (its lease may lapse after)
        self.account_rate: Rate | None = None  # the account's rate limit, as of the last grant
        self.rate_known = False  # whether a grant said which

    def key(self, kid: str) -> list[int]:
        counts = self.per_key.get(kid)
        if counts is None:
            counts = self.per_key[kid] = [0, 0]
        return counts


class LeaseBook:
    """This process's leases, one per counter. Thread-safe; every method is O(1) but
    :meth:`reports` and :meth:`give_back`, which the flusher calls."""

    def __init__(
        self, *, max_block: int = 1024, holder: str | None = None, buffer: UsageBuffer | None = None
    ) -> None:
        """``buffer``: where :meth:`spend` adds a charge, under its lock (one lock, not two)."""
        if max_block < 1:
            raise ValueError("max_block must be >= 1")
        self.max_block = max_block
        #: This process's field in the leases hash: random, so a restarted process never
        #: inherits (and keeps alive) the lease of the one that died.
        self.holder = holder if holder is not None else secrets.token_hex(8)
        self._buffer = buffer
        self._lock = threading.Lock() if buffer is None else buffer.lock
        self._leases: dict[Counter, _Lease] = {}
        #: Counters whose account has a rate limit (as of their last grant).
        self.rated: set[Counter] = set()

    def spend(
        self, counter: Counter, kid: str, cost: int, count_request: bool = True,
        now: float = 0.0, charge: Charge | None = None,
    ) -> tuple[int, int, int | None] | None:  # fmt: skip
        """Take ``cost`` pages (>= 0, already validated) from the local lease: the pages left
        and :meth:`view`'s (used, limit), or None when the lease is short, or may have lapsed
        in Redis by ``now`` (wall clock), and the caller must acquire (nothing is taken then).
        ``charge``: added to the usage buffer too, under the same lock.
        The hot path: one dict lookup and a few integer operations under the lock."""
        with self._lock:
            lease = self._leases.get(counter)
            if (
                lease is None
                or lease.have < cost
                or (cost and now >= lease.until)
                or not lease.rate_known
            ):
                return None
            lease.have -= cost
            lease.spent += cost
            counts = lease.per_key.get(kid)
            if counts is None:
                counts = lease.per_key[kid] = [0, 0]
            counts[0] += cost
            if count_request:
                counts[1] += 1
                lease.requests += 1
            if charge is not None:
                assert self._buffer is not None
                self._buffer.add_locked(charge, cost, 1 if count_request else 0)
            return lease.have, max(0, lease.used - lease.have), lease.limit

    def unspend(self, counter: Counter, kid: str, cost: int, count_request: bool = True) -> None:
        """Undo a :meth:`spend` whose request a rate limit then refused."""
        with self._lock:
            lease = self._leases.get(counter)
            if lease is None:
                return
            lease.have += cost
            lease.spent -= cost
            counts = lease.key(kid)
            counts[0] -= cost
            if count_request:
                counts[1] -= 1
                lease.requests -= 1

    def holds(self, counter: Counter, cost: int, now: float) -> bool:
        """Whether :meth:`spend` would take ``cost`` (the account's rate limit known)."""
        lease = self._leases.get(counter)
        return (
            lease is not None
            and lease.rate_known
            and lease.have >= cost
            and not (cost and now >= lease.until)
        )

    def account_rate(self, counter: Counter) -> tuple[bool, Rate | None]:
        """``(known, the account's rate limit or None)``: known once a lease was granted."""
        lease = self._leases.get(counter)
        if lease is None:
            return False, None
        return lease.rate_known, lease.account_rate

    def call_args(
        self,
        counter: Counter,
        cost: int,
        seed: str,
        rebuild: str,
        usage_ttl: int,
        limit_ttl: int,
        lease_ttl_ms: int,
        thresholds: str,
    ) -> list[Any]:
        """``lease.lua``'s ARGV for a request of ``cost`` (its KEYS: the usage hash, the limit,
        the leases hash, the call's marker)."""
        return [
            FIRST, CALL_MARKER_TTL, self.holder, self.want(counter, cost), seed, rebuild, usage_ttl,
            limit_ttl, lease_ttl_ms, thresholds, LEASE_SPREAD, self.need(counter, cost),
        ]  # fmt: skip

    def granted(self, counter: Counter, reply: Sequence[Any], until: float) -> None:
        """``lease.lua`` answered ok: :meth:`grant` what it says."""
        limit = None if int(reply[3]) < 0 else int(reply[3])
        born = str(reply[6]) if len(reply) > 6 else ""
        rated = len(reply) > 8 and reply[7] not in ("", b"")
        account_rate = Rate(int(reply[7]), int(reply[8])) if rated else None
        self.grant(
            counter, int(reply[1]), int(reply[2]), limit, int(reply[5]), born, until, account_rate
        )

    def want(self, counter: Counter, cost: int = 1) -> int:
        """The block to ask for: doubles with each full grant (a busy counter soon needs one trip
        per ``max_block`` pages), halves at each report (an idle one stops hoarding), and is
        never less than what a request of ``cost`` still lacks."""
        with self._lock:
            lease = self._leases.get(counter)
            if lease is None:
                return max(1, cost)
            return max(lease.block, cost - lease.have)

    def need(self, counter: Counter, cost: int) -> int:
        """Pages a request of ``cost`` lacks (``lease.lua``'s ``need``): with fewer left in
        Redis it is refused at once rather than handed a lease too small to use."""
        with self._lock:
            lease = self._leases.get(counter)
            return max(0, cost - (lease.have if lease is not None else 0))

    def grant(
        self,
        counter: Counter,
        pages: int,
        used: int,
        limit: int | None,
        gen: int = 0,
        born: str = "",
        until: float = math.inf,
        account_rate: Rate | None = None,
    ) -> None:
        """``lease.lua`` answered ok: ``pages`` more to spend; ``used`` is the counter after,
        ``gen`` its generation. A different generation means Redis lost the counter and it was
        rebuilt from the store: what this book held or owed for the old one is void (its leases
        were dropped with it, its charges are in the store), so it starts over. Comparing here,
        not in a forget() on 'need_usage', keeps a sibling thread's fresh grant: at the start
        of each period every thread of every process sees 'need_usage' at once.

        ``born``: when the holder's lease in Redis was made. Another one than before means the
        old lease lapsed and was swept (forgiven): its unspent pages are no longer reserved, so
        they are not spent here (what was spent is still reported). ``until``: the grant
        refreshed the whole lease, which may be spent here until then. ``account_rate``: the
        account's rate limit that came with the limit in force."""
        with self._lock:
            lease = self._leases.get(counter)
            if lease is None:
                lease = self._leases[counter] = _Lease()
            elif lease.gen is not None and lease.gen != gen:
                lease.have = lease.spent = lease.extra = lease.requests = 0
                lease.per_key = {}
            elif born and lease.born and born != lease.born:
                lease.used -= lease.have
                lease.have = 0
            lease.gen = gen
            if born:
                lease.born = born
            lease.until = max(lease.until, until)
            lease.have += pages
            lease.used = used
            lease.limit = limit
            lease.account_rate = account_rate
            lease.rate_known = True
            if account_rate is None:
                self.rated.discard(counter)
            else:
                self.rated.add(counter)
            # Twice what this grant gave (at most twice the block), not twice the block each
            # time: a burst of concurrent requests gets many small grants at once.
            grown = 2 * min(pages, lease.block)
            lease.block = min(self.max_block, max(lease.block, grown))

    def refund(self, counter: Counter, kid: str, pages: int) -> None:
        """A settled refund (the response was not counted): the pages go back into the local
        lease, so the next request spends them without asking Redis. Pages already reported
        as spent are no longer in the lease in Redis: those come off the counter at the next
        report instead (negative ``extra``)."""
        with self._lock:
            lease = self._leases.get(counter)
            if lease is None:
                lease = self._leases[counter] = _Lease()
            back = min(pages, lease.spent)
            lease.have += back
            lease.spent -= back
            lease.extra -= pages - back
            lease.key(kid)[0] -= pages

    def overage(self, counter: Counter, kid: str, pages: int) -> None:
        """Pages charged after the fact (a real cost above the reservation): out of the lease
        as far as it goes, the rest as ``extra``, added unconditionally like ``settle.lua``.
        The response is already out: it cannot be refused."""
        with self._lock:
            lease = self._leases.get(counter)
            if lease is None:
                lease = self._leases[counter] = _Lease()
            taken = min(pages, lease.have)
            lease.have -= taken
            lease.spent += taken
            lease.extra += pages - taken
            lease.key(kid)[0] += pages

    def view(self, counter: Counter) -> tuple[int, int | None]:
        """(used, limit) for the quota headers, without asking Redis: the counter as of the
        last grant minus what this process still holds unspent. Other processes' unspent
        leases count as used, so it may overstate by those; (0, None) for a counter unknown
        here."""
        with self._lock:
            lease = self._leases.get(counter)
            if lease is None:
                return 0, None
            return max(0, lease.used - lease.have), lease.limit

    def reports(self, *, keep: bool) -> list[LeaseReport]:
        """Take everything to report, one report per counter. ``keep=True`` also reports a
        counter with nothing new but an unspent lease: that refreshes its expiry, so a live
        process is never swept. ``keep=False`` (flush, shutdown) gives every unused page back.
        A counter with nothing to report and nothing held is dropped from the book."""
        out: list[LeaseReport] = []
        with self._lock:
            for counter, lease in list(self._leases.items()):
                returned = 0 if keep else lease.have
                per_key = tuple(
                    (kid, pages, requests)
                    for kid, (pages, requests) in lease.per_key.items()
                    if pages or requests
                )
                if not (lease.spent or lease.extra or lease.requests or lease.have or per_key):
                    del self._leases[counter]
                    self.rated.discard(counter)
                    continue
                out.append(
                    LeaseReport(
                        counter,
                        lease.spent,
                        returned,
                        lease.extra,
                        keep,
                        lease.requests,
                        per_key,
                        lease.gen,
                    )
                )
                lease.have -= returned
                lease.used -= returned
                lease.spent = lease.extra = lease.requests = 0
                lease.per_key = {}
                lease.block = max(1, lease.block // 2)
        return out

    def give_back(self, reports: Iterable[LeaseReport]) -> None:
        """A ``lease_report.lua`` call failed: merge its report back for the next try. Its
        returned pages are still leased in Redis, so they are spendable here again. A report
        from a counter generation the book has since left is void, like the rest of it."""
        with self._lock:
            for report in reports:
                lease = self._leases.get(report.counter)
                if lease is None:
                    lease = self._leases[report.counter] = _Lease()
                    lease.gen = report.gen
                elif None not in (lease.gen, report.gen) and lease.gen != report.gen:
                    continue
                elif lease.gen is None:
                    lease.gen = report.gen
                lease.have += report.returned
                lease.used += report.returned
                lease.spent += report.spent
                lease.extra += report.extra
                lease.requests += report.requests
                for kid, pages, requests in report.per_key:
                    counts = lease.key(kid)
                    counts[0] += pages
                    counts[1] += requests

    def revoke(self, counter: Counter) -> None:
        """``lease_report.lua`` found no lease for this holder while it held one: it expired
        and was swept (this process stalled past the lease ttl), so its unspent pages are no
        longer reserved. Stop spending them; what was spent is still reported."""
        with self._lock:
            lease = self._leases.get(counter)
            if lease is not None:
                lease.used -= lease.have
                lease.have = 0

    def forget(self, counter: Counter, gen: int | None = None) -> None:
        """Redis lost the counter (``lease_report.lua`` answered 'lost'): drop it. Unspent
        pages are gone with it, and unreported charges are not needed: the counter is rebuilt
        from the store plus this process's unflushed usage, which hold them. With ``gen`` (the
        report's), a lease already granted from a newer, rebuilt counter is kept.
        'need_usage' needs no forget(): the rebuilt counter's first grant starts over."""
        with self._lock:
            lease = self._leases.get(counter)
            if lease is not None and (gen is None or lease.gen is None or lease.gen == gen):
                del self._leases[counter]
                self.rated.discard(counter)
