"""Page leases ("fast" metering): LeaseBook arithmetic, and lease.lua / lease_report.lua on a
real Redis driven the way the engine will drive them (spend; when short, acquire with want()
and need(), grant, spend again; 'exceeded' refuses)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import pytest
import redis

from keystile._core.leases import LeaseBook, LeaseReport, report_args
from keystile._core.metering import Charge, UsageBuffer
from keystile._core.periods import PeriodPolicy
from keystile._redis.scripts import load_script

C = ("acct", "2026-07", "live")
USAGE_TTL, LIMIT_TTL = 3600, 600


# ----------------------------------------------------------------------------- helpers


def keys(prefix: str, counter: tuple[str, str, str]) -> tuple[str, str, str]:
    account, period, env = counter
    tag = f"{prefix}:{{a:{account}}}"
    return f"{tag}:u:{period}:{env}", f"{tag}:l:{env}", f"{tag}:ls:{period}:{env}"


def marker(prefix: str, counter: tuple[str, str, str]) -> str:
    """A fresh call marker (once.lua) in the counter's slot."""
    return f"{prefix}:{{a:{counter[0]}}}:c:{uuid.uuid4().hex}"


def first_call(*args: Any) -> list[Any]:
    """ARGV of a counter-changing script's first call: not a retry, marker kept 120 s."""
    return ["0", 120, *args]


class Engine:
    """What the engine will do around one LeaseBook (one process = one holder)."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        *,
        limit: int | None,
        spread: int = 8,
        lease_ttl: int = 60_000,
        thresholds: str = "",
        store: dict[str, int] | None = None,
        max_block: int = 1024,
    ) -> None:
        self.client, self.prefix, self.limit = client, prefix, limit
        self.spread, self.lease_ttl, self.thresholds = spread, lease_ttl, thresholds
        self.store = store if store is not None else {"pages": 0, "requests": 0}
        self.book = LeaseBook(max_block=max_block)
        self.lease = client.register_script(load_script("lease"))
        self.report = client.register_script(load_script("lease_report"))
        self.replies: list[tuple[int, list[Any]]] = []  # (want, ok reply) per grant
        self.crossed: list[str] = []
        self.report_replies: list[list[Any]] = []

    def acquire(self, cost: int = 1, counter: tuple[str, str, str] = C) -> list[Any]:
        usage, limit_key, leases = keys(self.prefix, counter)
        seed = rebuild = ""
        while True:
            want = self.book.want(counter, cost)
            args = first_call(self.book.holder, want, seed, rebuild, USAGE_TTL, LIMIT_TTL,
                              self.lease_ttl, self.thresholds, self.spread,
                              self.book.need(counter, cost))  # fmt: skip
            call_keys = [usage, limit_key, leases, marker(self.prefix, counter)]
            reply: list[Any] = self.lease(keys=call_keys, args=args)
            if reply[0] == "need_limit":
                seed = "none" if self.limit is None else str(self.limit)
            elif reply[0] == "need_usage":  # no forget(): the rebuilt counter's grant resets
                rebuild = json.dumps(self.store)
            else:
                break
        if reply[0] == "ok":
            limit = None if int(reply[3]) < 0 else int(reply[3])
            self.book.grant(counter, int(reply[1]), int(reply[2]), limit, int(reply[5]))
            self.replies.append((want, reply))
            self.crossed += [t for t in reply[4].split(",") if t]
        return reply

    def request(self, kid: str = "k1", cost: int = 1, counter: tuple[str, str, str] = C) -> bool:
        while self.book.spend(counter, kid, cost) is None:
            if self.acquire(cost, counter)[0] == "exceeded":
                return False
        return True

    def send(self, report: LeaseReport) -> list[Any]:
        usage, _, leases = keys(self.prefix, report.counter)
        args = first_call(*report_args(report, self.book.holder, self.lease_ttl))
        call_keys = [usage, leases, marker(self.prefix, report.counter)]
        reply: list[Any] = self.report(keys=call_keys, args=args)
        self.report_replies.append(reply)
        if reply[0] == "lost":
            self.book.forget(report.counter, report.gen)
        elif int(reply[2]) == 0:
            self.book.revoke(report.counter)
        return reply

    def flush(self, *, keep: bool) -> list[list[Any]]:
        return [self.send(report) for report in self.book.reports(keep=keep)]

    @property
    def grants(self) -> list[int]:
        return [int(reply[1]) for _, reply in self.replies]


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield c
    finally:
        c.close()


def pages(client: redis.Redis, prefix: str, counter: tuple[str, str, str] = C) -> int:
    return int(client.hget(keys(prefix, counter)[0], "pages") or 0)  # type: ignore[arg-type]


def outstanding(client: redis.Redis, prefix: str, holder: str) -> int | None:
    value = client.hget(keys(prefix, C)[2], holder)
    return None if value is None else int(str(value).split(":")[0])


def wait_expired(client: redis.Redis, prefix: str, holder: str) -> None:
    """Until the server clock passes the holder's lease expiry (a few ms; bounded)."""
    value = client.hget(keys(prefix, C)[2], holder)
    assert value is not None
    expiry = int(str(value).split(":")[1])
    deadline = time.monotonic() + 5
    while True:
        sec, usec = client.time()
        if sec * 1000 + usec // 1000 > expiry:
            return
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(0.005)


# ------------------------------------------------------------------- LeaseBook (pure)

_PERIOD = PeriodPolicy(1, "UTC").period_at(datetime(2026, 12, 2, tzinfo=timezone.utc))


def test_spend_needs_a_lease_and_takes_nothing_when_short() -> None:
    book = LeaseBook()
    assert book.spend(C, "k1", 1) is None
    assert (book.want(C), book.want(C, 5), book.need(C, 5)) == (1, 5, 5)
    book.grant(C, 10, used=10, limit=100)
    assert book.spend(C, "k1", 3)[0] == 7
    assert book.spend(C, "k1", 8) is None  # short: nothing taken
    assert book.need(C, 8) == 1
    assert book.want(C, 8) == 2  # the block doubled with the grant; at least the 1 lacking
    assert book.view(C) == (3, 100)  # 10 used as of the grant, 7 of them still held here
    assert book.spend(C, "k2", 7, count_request=False)[0] == 0
    assert book.spend(C, "k2", 0)[0] == 0  # a free request passes on an empty lease
    (report,) = book.reports(keep=True)
    assert report == LeaseReport(C, 10, 0, 0, True, 2, (("k1", 3, 1), ("k2", 7, 1)), gen=0)


def test_spend_reports_the_view_and_adds_a_charge_to_the_buffer_under_one_lock() -> None:
    buffer = UsageBuffer()
    book = LeaseBook(buffer=buffer)
    assert book._lock is buffer.lock  # one lock for both: a request takes it once
    charge = Charge("acct", "live", "k1", None, _PERIOD, 2, None)
    counter = charge.counter
    assert book.spend(counter, "k1", 2, charge=charge) is None  # no lease: nothing buffered
    assert buffer.take() == []
    book.grant(counter, 10, used=10, limit=100)
    assert book.spend(counter, "k1", 2, charge=charge) == (8, 2, 100)
    assert book.spend(counter, "k1", 2) == (6, 4, 100)  # no charge: the caller records it
    (delta,) = buffer.take()
    assert (delta.kid, delta.pages, delta.requests) == ("k1", 2, 1)


def test_refund_goes_back_into_the_lease_and_overage_out_of_it() -> None:
    book = LeaseBook()
    book.grant(C, 5, used=5, limit=None)
    assert book.spend(C, "k1", 4)[0] == 1
    book.refund(C, "k1", 3)  # unreported spending: back into the lease
    assert book.spend(C, "k1", 4)[0] == 0
    (r,) = book.reports(keep=True)
    assert (r.spent, r.returned, r.extra, r.per_key) == (5, 0, 0, (("k1", 5, 2),))
    book.refund(C, "k1", 2)  # already reported as spent: comes off Redis at the next report
    assert book.spend(C, "k1", 1) is None
    book.grant(C, 3, used=8, limit=None)
    assert book.spend(C, "k1", 1)[0] == 2
    book.overage(C, "k1", 5)  # 2 from the lease, 3 beyond it
    assert book.spend(C, "k1", 1) is None
    (r,) = book.reports(keep=False)
    assert (r.spent, r.returned, r.extra, r.requests, r.per_key) == (3, 0, 1, 1, (("k1", 4, 1),))


def test_reports_heartbeat_return_and_drop() -> None:
    book = LeaseBook()
    book.grant(C, 8, used=8, limit=50)
    assert book.spend(C, "k1", 2)[0] == 6
    assert book.reports(keep=True)[0].spent == 2
    # Nothing new, but a lease held: reported anyway, to keep it alive.
    assert book.reports(keep=True) == [LeaseReport(C, 0, 0, 0, True, 0, (), 0)]
    assert book.reports(keep=False) == [LeaseReport(C, 0, 6, 0, False, 0, (), 0)]
    assert book.view(C) == (2, 50)
    assert book.spend(C, "k1", 1) is None
    assert book.reports(keep=True) == []  # nothing held, nothing new: dropped
    assert book.view(C) == (0, None)


def test_give_back_merges_a_failed_report_exactly() -> None:
    book = LeaseBook()
    book.grant(C, 10, used=10, limit=None)
    for kid in ("a", "b", "a"):
        book.spend(C, kid, 2)
    book.overage(C, "b", 20)
    first = book.reports(keep=False)
    assert first == [LeaseReport(C, 10, 0, 16, False, 3, (("a", 4, 2), ("b", 22, 1)), 0)]
    book.give_back(first)
    assert book.reports(keep=False) == first
    book.give_back(first)
    book.grant(C, 1, used=27, limit=None)
    assert book.spend(C, "a", 1)[0] == 0  # between the failure and the retry
    (again,) = book.reports(keep=False)
    assert (again.spent, again.extra, again.requests) == (11, 16, 4)
    assert dict((k, (p, r)) for k, p, r in again.per_key) == {"a": (5, 3), "b": (22, 1)}

    book.grant(C, 6, used=6, limit=None)
    book.spend(C, "a", 1)
    kept = book.reports(keep=False)
    assert kept[0].returned == 5
    book.give_back(kept)  # the returned pages are still leased in Redis: spendable again
    assert book.spend(C, "a", 5)[0] == 0


def test_forget_and_revoke() -> None:
    book = LeaseBook()
    book.grant(C, 10, used=40, limit=100)
    book.spend(C, "k", 4)
    book.revoke(C)  # lease swept in Redis: unspent pages are not reserved any more
    assert book.spend(C, "k", 1) is None
    assert book.view(C) == (34, 100)
    (r,) = book.reports(keep=True)
    assert (r.spent, r.returned) == (4, 0)  # the spending is still reported
    book.grant(C, 3, used=43, limit=100)
    book.spend(C, "k", 1)
    book.forget(C)
    assert book.spend(C, "k", 1) is None
    assert book.reports(keep=False) == []


def test_a_rebuilt_counter_generation_voids_the_old_lease() -> None:
    book = LeaseBook()
    book.grant(C, 10, used=10, limit=100, gen=1)
    book.spend(C, "k", 4)
    stale = book.reports(keep=False)
    assert stale[0].gen == 1
    book.grant(C, 10, used=20, limit=100, gen=1)
    book.spend(C, "k", 2)
    # Redis lost the counter; a sibling thread's acquisition rebuilt it (generation 2).
    book.grant(C, 3, used=3, limit=100, gen=2)
    assert book.spend(C, "k", 4) is None  # the old 8 unspent are void
    book.forget(C, gen=1)  # a report of the old counter answered 'lost': the new lease stays
    book.give_back(stale)  # and a failed report of the old counter is void too
    assert book.spend(C, "k", 3)[0] == 0
    (r,) = book.reports(keep=False)
    assert (r.spent, r.returned, r.requests, r.per_key, r.gen) == (3, 0, 1, (("k", 3, 1),), 2)
    assert book.reports(keep=True) == []  # idle: dropped
    book.refund(C, "k", 1)  # an entry made without a grant takes the next grant's generation
    book.grant(C, 1, used=1, limit=100, gen=2)
    assert book.reports(keep=False)[0].extra == -1
    book.grant(C, 1, used=1, limit=100, gen=2)
    book.forget(C, gen=2)
    assert book.view(C) == (0, None)


def test_blocks_double_up_to_max_block_and_halve_at_each_report() -> None:
    book = LeaseBook(max_block=16)
    seen = []
    for _ in range(7):
        seen.append(book.want(C))
        book.grant(C, seen[-1], used=0, limit=None)
    assert seen == [1, 2, 4, 8, 16, 16, 16]
    book.reports(keep=True)
    assert book.want(C) == 8
    assert book.want(C, 100) == 100 - (1 + 2 + 4 + 8 + 16 + 16 + 16)
    assert LeaseBook(holder="h").holder == "h" and len(LeaseBook().holder) == 16
    with pytest.raises(ValueError):
        LeaseBook(max_block=0)


def test_report_args() -> None:
    r = LeaseReport(C, 3, 4, -1, True, 2, (("a", 2, 1), ("b", 1, 1)))
    assert report_args(r, "h", 500) == ["h", 3, 4, -1, "1", 500, 2, "a", 2, 1, "b", 1, 1]


def test_concurrent_spending_never_exceeds_the_lease() -> None:
    book = LeaseBook()
    book.grant(C, 5000, used=5000, limit=5000)
    admitted = [0] * 8

    def worker(i: int) -> None:
        for _ in range(1000):
            if book.spend(C, f"k{i}", 1) is not None:
                admitted[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 5000
    (r,) = book.reports(keep=False)
    assert (r.spent, r.returned, r.requests) == (5000, 0, 5000)
    assert sum(p for _, p, _ in r.per_key) == 5000


# --------------------------------------------------------------------- on real Redis


@pytest.mark.redis
@pytest.mark.parametrize("mixed", [False, True], ids=["cost1", "cost1-3"])
def test_no_overshoot_with_three_holders(
    client: redis.Redis, redis_prefix: str, mixed: bool
) -> None:
    """Invariants: admitted pages <= limit at every moment (leases count as used, and no grant
    exceeds what is left); after every holder returns its leases Redis pages == pages admitted
    and the lease hash is gone; with the leftovers returned, single pages fill the limit."""
    engines = [Engine(client, redis_prefix, limit=300) for _ in range(3)]
    costs = [1 + (i * 7) % 3 if mixed else 1 for i in range(1000)]

    def one(i: int) -> bool:
        return engines[i % 3].request(f"k{i % 5}", costs[i])

    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(one, range(1000)))
    admitted = sum(c for c, ok in zip(costs, results) if ok)
    usage, _, leases = keys(redis_prefix, C)
    assert pages(client, redis_prefix) <= 300
    if not mixed:
        assert (results.count(True), results.count(False)) == (300, 700)
        assert pages(client, redis_prefix) == 300
    assert admitted <= 300
    for e in engines:
        for reply in e.flush(keep=False):
            assert reply[0] == "ok" and reply[2] == 1
    assert pages(client, redis_prefix) == admitted
    assert int(client.hget(usage, "requests")) == results.count(True)  # type: ignore[arg-type]
    per_key = sum(int(client.hget(usage, f"k:k{k}:pages") or 0) for k in range(5))  # type: ignore[arg-type]
    assert per_key == admitted
    assert client.exists(leases) == 0
    for e in engines:  # every grant respected what was left at the time
        for _want, reply in e.replies:
            assert int(reply[2]) <= 300
    if mixed:
        drain, drained = Engine(client, redis_prefix, limit=300), 0
        while drain.request("k0", 1):
            drained += 1
        drain.flush(keep=False)
        assert admitted + drained == pages(client, redis_prefix) == 300


@pytest.mark.redis
def test_blocks_adapt_and_shrink_to_single_pages_near_the_limit(
    client: redis.Redis, redis_prefix: str
) -> None:
    e = Engine(client, redis_prefix, limit=100)
    admitted = 0
    while e.request():
        admitted += 1
    assert admitted == 100 and sum(e.grants) == 100
    for want, reply in e.replies:
        grant, after = int(reply[1]), int(reply[2])
        assert grant == min(want, max(1, (100 - (after - grant)) // 8))
    assert max(e.grants) > 1
    assert e.grants[-10:] == [1] * 10
    assert e.grants[:4] == [1, 2, 4, 8]  # doubling while there is room


@pytest.mark.redis
def test_unused_pages_return_at_shutdown(client: redis.Redis, redis_prefix: str) -> None:
    e = Engine(client, redis_prefix, limit=10_000, spread=1)
    assert e.acquire(cost=500)[:3] == ["ok", 500, 500]
    for _ in range(7):
        assert e.request()
    e.flush(keep=True)  # the lease stays out, its spending is recorded
    assert pages(client, redis_prefix) == 500
    assert outstanding(client, redis_prefix, e.book.holder) == 493
    e.flush(keep=False)
    assert pages(client, redis_prefix) == 7
    assert client.exists(keys(redis_prefix, C)[2]) == 0
    assert int(client.hget(keys(redis_prefix, C)[0], "requests")) == 7  # type: ignore[arg-type]


@pytest.mark.redis
def test_a_crash_loses_at_most_its_lease(client: redis.Redis, redis_prefix: str) -> None:
    """A takes 40, spends 10 (reported) + 5 (unreported) and dies holding 25.
    While its lease is live: admitted A+B <= limit (B gets exactly the 60 not leased).
    Once it expires B's next acquisition sweeps it: pages drop by A's outstanding (30).
    In the end: charged == B's served + A's reported spending (<= limit), and
    served A+B == limit + A's unreported spending (5) <= limit + A's lease (40)."""
    a = Engine(client, redis_prefix, limit=100, spread=1)
    b = Engine(client, redis_prefix, limit=100)
    assert a.acquire(cost=40)[:3] == ["ok", 40, 40]
    served_a = reported_a = 0
    for _ in range(10):
        served_a += a.request()
    a.flush(keep=True)
    reported_a = served_a
    for _ in range(5):
        served_a += a.request()
    assert outstanding(client, redis_prefix, a.book.holder) == 30
    del a  # crash: never reports again

    served_b = 0
    while b.request():
        served_b += 1
    assert served_b == 60 and served_a + served_b <= 100
    assert pages(client, redis_prefix) == 100

    # Time passes: A's lease expires (rewritten here rather than waited for).
    leases = keys(redis_prefix, C)[2]
    holder_a = next(h for h in client.hkeys(leases) if h != b.book.holder)  # type: ignore[union-attr]
    client.hset(leases, holder_a, "30:0")
    before = len(b.replies)
    while b.request():
        served_b += 1
    first_after_sweep = b.replies[before][1]
    assert int(first_after_sweep[2]) - int(first_after_sweep[1]) == 100 - 30
    assert client.hexists(leases, holder_a) == 0
    b.flush(keep=False)
    charged = pages(client, redis_prefix)
    assert charged == served_b + reported_a == 100
    assert served_a + served_b == 100 + (served_a - reported_a) == 105
    assert served_a + served_b <= 100 + 40
    assert client.exists(leases) == 0


@pytest.mark.redis
def test_a_late_reporter_whose_lease_was_swept_re_adds_its_spending(
    client: redis.Redis, redis_prefix: str
) -> None:
    a = Engine(client, redis_prefix, limit=100, spread=1, lease_ttl=20)
    b = Engine(client, redis_prefix, limit=100)
    a.acquire(cost=40)
    for _ in range(12):
        assert a.request()
    wait_expired(client, redis_prefix, a.book.holder)  # A stalls past its lease ttl
    assert b.request()  # sweeps A: its 40 come off (12 spent are forgiven for now)
    assert pages(client, redis_prefix) == 1
    assert outstanding(client, redis_prefix, a.book.holder) is None

    (reply,) = a.flush(keep=True)  # A wakes up
    assert reply == ["ok", 1 + 12, 0]  # no lease found: what it spent is real, added back
    assert a.book.spend(C, "k1", 1) is None  # revoked: its 28 unspent are not reserved
    assert a.request()
    a.flush(keep=False)
    b.flush(keep=False)
    assert pages(client, redis_prefix) == 12 + 1 + 1
    assert client.exists(keys(redis_prefix, C)[2]) == 0


@pytest.mark.redis
def test_a_lost_counter_is_rebuilt_and_its_old_leases_are_void(
    client: redis.Redis, redis_prefix: str
) -> None:
    store = {"pages": 0, "requests": 0}
    e = Engine(client, redis_prefix, limit=100, store=store)
    f = Engine(client, redis_prefix, limit=100, spread=1)
    for _ in range(5):
        assert e.request()
    f.acquire(cost=10)
    for _ in range(3):
        assert f.request("kf")
    e.flush(keep=True)
    assert pages(client, redis_prefix) == 7 + 10  # e's grants 1+2+4, f's 10
    store.update({"pages": 5, "requests": 5, "k:k1:pages": 5, "k:k1:requests": 5})

    usage, _, leases = keys(redis_prefix, C)
    client.delete(usage)  # Redis lost the counter
    assert e.request()  # still within its local lease
    assert e.flush(keep=True) == [["lost"]]  # not recreated half-empty
    assert client.exists(usage) == 0
    assert e.book.spend(C, "k1", 1) is None  # forgotten

    store.update({"pages": 6, "requests": 6, "k:k1:pages": 6, "k:k1:requests": 6})
    assert e.request()  # need_usage -> rebuilt from the store; f's old lease is void
    grant = e.grants[-1]
    assert pages(client, redis_prefix) == 6 + grant
    assert client.hkeys(leases) == [e.book.holder]
    assert client.ttl(usage) > 0 and client.ttl(leases) > 0

    (reply,) = f.flush(keep=False)  # f's 3 were real; its 7 unspent were never counted here
    assert reply == ["ok", 6 + grant + 3, 0]
    e.flush(keep=False)
    assert pages(client, redis_prefix) == 6 + 1 + 3
    assert int(client.hget(usage, "k:kf:pages")) == 3  # type: ignore[arg-type]


@pytest.mark.redis
def test_limit_seeding_and_unlimited(client: redis.Redis, redis_prefix: str) -> None:
    e = Engine(client, redis_prefix, limit=50)
    usage, limit_key, leases = keys(redis_prefix, C)
    args = first_call(e.book.holder, 1, "", "", USAGE_TTL, LIMIT_TTL, 60_000, "", 8, 1)
    call_keys = [usage, limit_key, leases, marker(redis_prefix, C)]
    assert e.lease(keys=call_keys, args=args) == ["need_limit"]
    assert client.exists(usage, limit_key, leases) == 0
    assert e.request()
    assert client.get(limit_key) == "50" and 0 < client.ttl(limit_key) <= LIMIT_TTL  # type: ignore[operator]

    u = ("acct2", "2026-07", "live")
    free = Engine(client, redis_prefix, limit=None)
    reply = free.acquire(cost=5000, counter=u)
    assert reply[:5] == ["ok", 5000, 5000, -1, ""]
    assert client.get(keys(redis_prefix, u)[1]) == "none"
    assert free.book.view(u) == (0, None)
    for _ in range(3):
        assert free.request("k", 2000, counter=u)
    free.flush(keep=False)
    assert pages(client, redis_prefix, u) == 6000


@pytest.mark.redis
def test_thresholds_fire_once(client: redis.Redis, redis_prefix: str) -> None:
    marks = "5000,8000,10000"
    a = Engine(client, redis_prefix, limit=100, thresholds=marks)
    b = Engine(client, redis_prefix, limit=100, thresholds=marks)
    while a.request() | b.request():
        pass
    assert sorted(a.crossed + b.crossed, key=int) == ["5000", "8000", "10000"]
    a.book.refund(C, "k1", 30)  # back under 80%, then past it again: announced already
    a.flush(keep=False)
    b.flush(keep=False)
    assert pages(client, redis_prefix) == 70
    while a.request():
        pass
    assert sorted(a.crossed + b.crossed, key=int) == ["5000", "8000", "10000"]

    # A rebuilt counter already past 50% does not announce 50% again.
    u = ("acct3", "2026-07", "live")
    r = Engine(client, redis_prefix, limit=100, thresholds=marks, store={"pages": 60})
    assert r.request(counter=u)
    while r.request(counter=u):
        pass
    assert r.crossed == ["8000", "10000"]
    th = client.hmget(keys(redis_prefix, u)[0], ["th:5000", "th:8000", "th:10000"])
    assert th == ["1", "1", "1"]


# ------------------------------------------------------------- a lease whose reply was lost


def lost_lease(e: Engine, cost: int = 1) -> str:
    """A lease call that ran but whose reply never reached ``e`` (its book learns nothing):
    the marker it left, which lease_lost.lua asks."""
    usage, limit_key, leases = keys(e.prefix, C)
    call_marker = marker(e.prefix, C)
    args = first_call(e.book.holder, e.book.want(C, cost), "" if e.limit is None else str(e.limit),
                      "", USAGE_TTL, LIMIT_TTL, e.lease_ttl, e.thresholds, e.spread,
                      e.book.need(C, cost))  # fmt: skip
    reply = e.lease(keys=[usage, limit_key, leases, call_marker], args=args)
    if reply[0] == "need_usage":  # a counter not made yet: make it, as the engine would
        args[5] = json.dumps(e.store)
        reply = e.lease(keys=[usage, limit_key, leases, call_marker], args=args)
    assert reply[0] == "ok" and int(reply[1]) > 0, reply
    return call_marker


def ask_lost(client: redis.Redis, e: Engine, call_marker: str) -> list[Any]:
    usage, _, leases = keys(e.prefix, C)
    script = client.register_script(load_script("lease_lost"))
    reply: list[Any] = script(keys=[usage, leases, call_marker], args=[e.book.holder])
    return reply


@pytest.mark.redis
def test_a_lost_grant_is_given_back_once(client: redis.Redis, redis_prefix: str) -> None:
    a = Engine(client, redis_prefix, limit=100)
    b = Engine(client, redis_prefix, limit=100)
    for _ in range(3):
        assert a.request()
    known = outstanding(client, redis_prefix, a.book.holder)
    before = pages(client, redis_prefix)
    call_marker = lost_lease(a, cost=5)
    lost = outstanding(client, redis_prefix, a.book.holder) - known  # type: ignore[operator]
    assert lost >= 5 and pages(client, redis_prefix) == before + lost

    assert ask_lost(client, a, call_marker) == ["returned", lost]
    assert pages(client, redis_prefix) == before
    assert outstanding(client, redis_prefix, a.book.holder) == known  # a's own pages stay
    assert ask_lost(client, a, call_marker) == ["unseen"]  # asked again: nothing comes off
    assert pages(client, redis_prefix) == before

    # Every page a did not learn of is free again: a and b reach the limit exactly.
    served = 3
    while a.request() or b.request():
        served += 1
    a.flush(keep=False)
    b.flush(keep=False)
    assert served == pages(client, redis_prefix) == 100


@pytest.mark.redis
def test_a_lost_grant_of_a_lease_swept_since_is_left_alone(
    client: redis.Redis, redis_prefix: str
) -> None:
    a = Engine(client, redis_prefix, limit=100, spread=1)
    b = Engine(client, redis_prefix, limit=100)
    call_marker = lost_lease(a, cost=10)
    leases = keys(redis_prefix, C)[2]
    out, _, born = str(client.hget(leases, a.book.holder)).split(":")
    client.hset(leases, a.book.holder, f"{out}:0:{born}")  # a stalls past its lease ttl
    assert b.request()  # sweeps a's lease: its 10 pages are forgiven
    assert outstanding(client, redis_prefix, a.book.holder) is None
    assert a.request()  # a new lease, made anew: the lost grant is not in it
    new = outstanding(client, redis_prefix, a.book.holder)
    before = pages(client, redis_prefix)

    assert ask_lost(client, a, call_marker) == ["kept"]
    assert outstanding(client, redis_prefix, a.book.holder) == new  # pages a knows it has
    assert pages(client, redis_prefix) == before


@pytest.mark.redis
def test_a_lost_call_that_never_ran_gives_nothing_back(
    client: redis.Redis, redis_prefix: str
) -> None:
    a = Engine(client, redis_prefix, limit=100)
    assert a.request()
    before = pages(client, redis_prefix), outstanding(client, redis_prefix, a.book.holder)
    assert ask_lost(client, a, marker(redis_prefix, C)) == ["unseen"]
    assert (pages(client, redis_prefix), outstanding(client, redis_prefix, a.book.holder)) == before


def test_book_spends_a_lease_only_until_it_may_lapse() -> None:
    book = LeaseBook()
    book.grant(C, 10, used=10, limit=100, born="1", until=50.0)
    assert book.spend(C, "k1", 1, now=49.0)[0] == 9
    assert book.spend(C, "k1", 1, now=50.0) is None  # may have lapsed in Redis: acquire
    assert book.spend(C, "k1", 0, now=60.0)[0] == 9  # a free request spends nothing
    book.grant(C, 2, used=12, limit=100, born="1", until=80.0)  # the same lease, refreshed
    assert book.spend(C, "k1", 1, now=60.0)[0] == 10
    book.grant(C, 3, used=13, limit=100, born="2", until=90.0)  # swept and made anew
    assert book.spend(C, "k1", 1, now=60.0)[0] == 2  # the old 10 are void, the new 3 are not
    (report,) = book.reports(keep=False)
    assert (report.spent, report.returned) == (3, 2)  # what was spent is still reported


def test_many_small_grants_at_once_grow_the_block_once() -> None:
    """A burst of concurrent requests asks with the same block and gets one grant each: the
    next block is twice what a grant gave, not doubled once per grant."""
    book = LeaseBook()
    for _ in range(150):
        book.grant(C, 1, used=1, limit=10_000)
    assert book.want(C) == 2
    book.grant(C, 2, used=3, limit=10_000)  # a full grant of that block doubles it
    assert book.want(C) == 4
