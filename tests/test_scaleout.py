"""keystile scaled out: real server processes (``uvicorn --workers 4``, ``gunicorn -w 4``)
on one PostgreSQL store and one Redis Cluster or Sentinel setup.

a. a burst of 1,000 concurrent requests admits exactly the monthly limit (both modes), and
   the store records it;
b. the same through fault proxies that delay 10% of Redis replies past ``redis_timeout`` (the
   command ran, its reply came too late): never more than the limit; exactly the limit once
   the unconfirmed charges are resolved at the flushes; Redis, the store and the 200s agree;
c. a revocation made anywhere is refused by every worker on its next request (strict);
d. a failover (CLUSTER FAILOVER, a killed master, SENTINEL FAILOVER) heals without a restart,
   and the store still records exactly what was admitted;
e. FLUSHALL mid-month overshoots by at most what the processes had not yet flushed.

Every figure measured is printed (``pytest -s``) in ``scaleout:`` lines, and once more as a
table at the end of the module; ``bench/scaleout.py`` runs b and d on their own.  Nothing
asserts on speed; heal times have an upper bound.  Servers are started once per (server,
topology, mode) and shared by the tests; each test has an account and key of its own.
"store" always means the store's own rows: ``ks.quotas.usage`` reports Redis's live counter
whenever Redis has one.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from keystile import Keystile

from . import polling
from .conftest import FAST_ARGON2, SECRET
from .proxied import redis_cluster_proxied  # noqa: F401  (the fixture)
from .scaleout_app import FLUSH_INTERVAL, PID_HEADER, SETTINGS_ENV
from .services import _log_tail, free_port, new_redis_prefix, postgres_schema_scope, service_missing

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 4
LIMIT = 300
BURST = 1000
REDIS_TIMEOUT = 0.25
#: Every worker has flushed at least once in this time (each flushes every FLUSH_INTERVAL).
FLUSH_WAIT = 3 * FLUSH_INTERVAL
#: A figure that converges (the store, a rebuilt counter) returns as soon as it does; on a
#: loaded machine (tox running several environments on two cores) that took over 10 s.
SETTLE_TIMEOUT = 30.0
START_TIMEOUT = 60.0
#: b: a delayed reply arrives after its client gave up; the proxies' seed is fixed.
FAULT_DELAY, FAULT_FRACTION = 2 * REDIS_TIMEOUT, 0.10
#: b: "few" 503s: at most one request in ten of the burst (the fraction of replies delayed).
FEW_UNAVAILABLE = BURST // 10  # of the requests sent one at a time under faults
#: b: the burst's 503s: 10-12% measured alone, 34-44% under the whole suite's load (a slow
#: machine times out more); a bound with room. Before spare connections: 80-100%.
BURST_UNAVAILABLE = int(6 * FAULT_FRACTION * BURST)
HEAL_BOUND = 15.0  # d: seconds from the failover call to requests succeeding again
HEALED_RUN = 20  # d: consecutive 200s that count as healed
STEADY = 50  # d: concurrent requests of the background traffic
SENTINEL_POLL = 1.0  # keystile asks the sentinels for the primary this often
FLUSHALL_LIMIT, FLUSHALL_BEFORE = 100, 50  # e
#: Deployments kept running at once: each process's store pool may grow to 10 connections,
#: and six deployments of five processes ran PostgreSQL's default 100 out ("too many clients").
RUNNING_DEPLOYMENTS = 2

FIGURES: list[Figures] = []


# ---------------------------------------------------------------------------- servers


class Server:
    """``uvicorn --workers 4`` or ``gunicorn -w 4`` serving tests/scaleout_app.py on a free
    port; output in ``log``.  Its own process group: stop() ends the whole group."""

    def __init__(self, kind: str, settings: dict[str, Any], log: Path) -> None:
        self.kind, self.log = kind, log
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        if kind == "uvicorn":
            cmd = ["uvicorn", "tests.scaleout_app:app", "--workers", str(WORKERS),
                   "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
                   "--log-level", "info", "--timeout-graceful-shutdown", "5"]  # fmt: skip
            self._booted = "Application startup complete."
        else:
            cmd = ["gunicorn", "-w", str(WORKERS), "-b", f"127.0.0.1:{port}",
                   "--graceful-timeout", "5", "tests.scaleout_app:flask_app"]  # fmt: skip
            self._booted = "Booting worker with pid"
        env = {**os.environ, SETTINGS_ENV: json.dumps(settings)}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", *cmd], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/work", timeout=2).status_code == 401  # no key
        except httpx.HTTPError:
            return False

    def _wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                return True
            time.sleep(0.05)
            booted = self.log.read_text(errors="replace").count(self._booted)
            return booted >= WORKERS and self._answers()

        up = polling.eventually(ready, START_TIMEOUT)
        if not up or self.proc.poll() is not None:
            why = f"exited ({self.proc.returncode})" if up else "did not come up"
            raise RuntimeError(f"{self.kind} {why}:\n{_log_tail(self.log)}")

    def stop(self) -> None:
        """SIGTERM (graceful: workers flush), then SIGKILL for anything left in the group."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # workers left behind, if any
        except (ProcessLookupError, PermissionError):
            pass

    def warnings(self) -> Counter[str]:
        """keystile's log lines (and tracebacks), counted, account ids and numbers elided."""
        lines = self.log.read_text(errors="replace").splitlines()
        wanted = [line for line in lines if "keystile" in line or line.startswith("Traceback")]
        return Counter(" ".join("N" if w.isdigit() else w for w in line.split()) for line in wanted)


def settings_for(store_url: str, redis_url: str, consistency: str) -> dict[str, Any]:
    return {
        "store": store_url, "redis_url": redis_url, "secret": SECRET,
        "redis_prefix": new_redis_prefix(), "consistency": consistency,
        "monthly_page_limit": LIMIT, "argon2": FAST_ARGON2,
        "redis_timeout": REDIS_TIMEOUT, "usage_flush_interval": FLUSH_INTERVAL,
    }  # fmt: skip


@dataclass
class Deployment:
    """One server (4 workers) and the test's own engine on the same store and Redis."""

    name: str
    server: Server
    ks: Keystile
    setup: Any  # the topology: its client() reads the counters directly

    @classmethod
    def start(cls, kind: str, setup: Any, consistency: str, store: str, log: Path) -> Deployment:
        settings = settings_for(store, setup.url, consistency)
        ks = Keystile(settings)
        ks.keys.list("acct_warmup")  # first: the store's tables exist before the workers start
        try:
            server = Server(kind, settings, log)
        except BaseException:
            ks.close()
            raise
        return cls(f"{kind}/{type(setup).__name__}/{consistency}", server, ks, setup)

    def close(self) -> None:
        self.server.stop()
        self.ks.close()

    def new_key(self, limit: int | str | None = "default") -> tuple[str, str, str]:
        """A fresh account with one key: (account, key id, token)."""
        account = f"acct_{uuid.uuid4().hex[:12]}"
        if limit != "default":
            self.ks.quotas.set_limit(account, limit)  # type: ignore[arg-type]
        created = self.ks.keys.create(account, "scaleout")
        return account, created.key_id, created.token

    def usage_key(self, account: str) -> str:
        label = self.ks.admission.period_at(time.time()).label
        return self.ks.redis_keys.usage(account, label, "live")

    def counter(self, account: str) -> int:
        """The Redis counter's ``pages``, read straight from the servers (no proxy)."""
        with self.setup.client() as client:
            value = client.hget(self.usage_key(account), "pages")
        return int(value or 0)

    def _rows(self, account: str) -> list[Any]:
        label = self.ks.admission.period_at(time.time()).label
        return [r for r in self.ks.store.usage(account, [label]) if r.environment == "live"]

    def stored(self, account: str) -> int:
        """The pages in the store's rows (``ks.quotas.usage`` would give Redis's counter)."""
        return sum(r.pages for r in self._rows(account))

    def stored_requests(self, account: str) -> int:
        return sum(r.requests for r in self._rows(account))


Deploy = Callable[..., Deployment]


def search_path_url(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


@pytest.fixture(scope="module")
def store_url(postgres_url: str) -> Iterator[str]:
    """One PostgreSQL schema for the module's servers (each test has its own accounts)."""
    with postgres_schema_scope(postgres_url) as schema:
        yield search_path_url(postgres_url, schema)


@pytest.fixture(scope="module")
def deploy(store_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deploy]:
    """``deploy(kind, topology, consistency)``: the Deployment, started on first use."""
    for module in ("uvicorn", "gunicorn", "flask", "starlette"):
        if importlib.util.find_spec(module) is None:
            service_missing(f"{module} is not installed (pip install -e '.[dev]')")
    running: dict[tuple[str, str, str], Deployment] = {}  # least recently asked for first
    logs = tmp_path_factory.mktemp("servers")
    started = 0

    def retire(deployment: Deployment) -> None:
        deployment.close()
        lines = deployment.server.warnings()
        if lines:
            common = "; ".join(f"{n} x {line}" for line, n in lines.most_common(4))
            print(f"\n{deployment.name} log ({deployment.server.log}): {common}")

    def get(kind: str, setup: Any, consistency: str = "strict") -> Deployment:
        nonlocal started
        key = (kind, setup.url, consistency)
        if key in running:
            running[key] = running.pop(key)
            return running[key]
        while len(running) >= RUNNING_DEPLOYMENTS:
            retire(running.pop(next(iter(running))))
        log = logs / f"{started}-{kind}.log"
        started += 1
        running[key] = Deployment.start(kind, setup, consistency, store_url, log)
        return running[key]

    yield get
    for deployment in running.values():
        retire(deployment)


@pytest.fixture(scope="module", autouse=True)
def figures_table() -> Iterator[None]:
    yield
    if FIGURES:
        print("\n\nscaleout figures\n" + table(FIGURES))


# ---------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Reply:
    status: int  # 0: no HTTP answer
    code: str | None
    pid: str | None
    at: float  # time.monotonic() when it completed


def client() -> httpx.AsyncClient:
    """No keep-alive: each request is a new connection, so the workers share them out."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    return httpx.AsyncClient(limits=limits, timeout=60)


async def call(http: httpx.AsyncClient, url: str, token: str) -> Reply:
    try:
        response = await http.get(f"{url}/work", headers={"authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        return Reply(0, type(exc).__name__, None, time.monotonic())
    code = None
    if response.status_code != 200:
        try:
            code = response.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = response.text[:40]
    return Reply(response.status_code, code, response.headers.get(PID_HEADER), time.monotonic())


async def burst(url: str, token: str, n: int) -> list[Reply]:
    async with client() as http:
        return list(await asyncio.gather(*(call(http, url, token) for _ in range(n))))


def burst_apart(url: str, token: str, n: int) -> list[Reply]:
    """:func:`burst` from a process of its own: the fault proxies forward every reply on
    threads of this one, and a thousand requests' worth of Python here would hold them up
    (a slow network made by the test, not by keystile)."""
    code = "from tests.test_scaleout import _burst_main; _burst_main()"
    done = subprocess.run(
        [sys.executable, "-c", code, url, token, str(n)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return [Reply(*fields) for fields in json.loads(done.stdout)]


def _burst_main() -> None:
    url, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    replies = asyncio.run(burst(url, token, n))
    print(json.dumps([[r.status, r.code, r.pid, r.at] for r in replies]))


async def until_refused(url: str, token: str, most: int = LIMIT + 50) -> list[Reply]:
    """Sequential requests up to the first 429 (a 503 does not stop them)."""
    replies: list[Reply] = []
    async with client() as http:
        while len(replies) < most:
            replies.append(await call(http, url, token))
            if replies[-1].status == 429:
                break
    return replies


def outcomes(*batches: list[Reply]) -> Counter[tuple[int, str | None]]:
    return Counter((r.status, r.code) for replies in batches for r in replies)


def admitted(*batches: list[Reply]) -> int:
    return sum(r.status == 200 for replies in batches for r in replies)


def unavailable(*batches: list[Reply]) -> int:
    return sum(r.status == 503 for replies in batches for r in replies)


def settles(value: Callable[[], int], expected: int, timeout: float = SETTLE_TIMEOUT) -> int:
    """``value()`` once it equals ``expected`` (or at the timeout): the figure to assert."""

    def check() -> bool:
        time.sleep(0.05)
        return value() == expected

    polling.eventually(check, timeout)
    return value()


def top_up(url: str, token: str, most_rounds: int = 8) -> list[list[Reply]]:
    """After a flush, sequential requests up to the first 429; again after the next flush,
    until a round admits nothing and meets no 503.  A refused request whose charge may have
    run is cancelled at a flush, and fast mode's unspent leases come back then: both free
    pages that only later requests can use."""
    rounds: list[list[Reply]] = []
    for _ in range(most_rounds):
        time.sleep(FLUSH_WAIT)
        rounds.append(asyncio.run(until_refused(url, token)))
        if admitted(rounds[-1]) == 0 and unavailable(rounds[-1]) == 0:
            break
    return rounds


# ----------------------------------------------------------------------------- figures


@dataclass
class Figures:
    """One scenario's figures, a row of the table."""

    scenario: str
    admitted: int
    refused: int  # 429 BILLING_001
    unavailable: int  # 503 SVC_001
    counter: int  # Redis
    stored: int  # the store's rows
    heal: float | None = None
    note: str = ""


def table(rows: list[Figures]) -> str:
    head = f"{'scenario':34} {'admitted':>8} {'429s':>6} {'503s':>6} {'Redis':>6} {'store':>6} {'heal s':>7}  note"
    lines = [head, "-" * len(head)]
    for f in rows:
        heal = "-" if f.heal is None else f"{f.heal:.2f}"
        lines.append(
            f"{f.scenario:34} {f.admitted:>8} {f.refused:>6} {f.unavailable:>6} "
            f"{f.counter:>6} {f.stored:>6} {heal:>7}  {f.note}"
        )
    return "\n".join(lines)


def report(figures: Figures | None, line: str) -> None:
    if figures is not None:
        FIGURES.append(figures)
    print(f"\nscaleout: {line}", flush=True)


# ---------------------------------------------------------------------- a. the burst


@pytest.mark.parametrize("consistency", ["strict", "fast"])
def test_a_burst_admits_exactly_the_limit(
    deploy: Deploy, redis_cluster: Any, consistency: str
) -> None:
    d = deploy("uvicorn", redis_cluster, consistency)
    account, _, token = d.new_key()
    replies = asyncio.run(burst(d.server.url, token, BURST))
    rounds = top_up(d.server.url, token)
    total = admitted(replies, *rounds)
    stored = settles(lambda: d.stored(account), LIMIT)
    counter = settles(lambda: d.counter(account), LIMIT)
    workers = len({r.pid for r in replies})
    seen = outcomes(replies)
    refused = outcomes(replies, *rounds)[429, "BILLING_001"]
    note = f"burst admitted {admitted(replies)}"
    figures = Figures(f"a burst {consistency}", total, refused, unavailable(replies, *rounds),
                      counter, stored, None, note)  # fmt: skip
    report(
        figures,
        f"a {consistency}: burst {dict(seen)} from {workers} workers; after flushes "
        f"{dict(outcomes(*rounds))} in {len(rounds)} rounds; admitted {total}, store {stored} "
        f"pages / {d.stored_requests(account)} requests, Redis {counter}",
    )
    assert set(seen) <= {(200, None), (429, "BILLING_001")}
    if consistency == "strict":
        assert seen == {(200, None): LIMIT, (429, "BILLING_001"): BURST - LIMIT}
    # Fast mode: near the limit, a page another worker leased and has not spent refuses a
    # request early, until that worker's flush gives it back (README, "Consistency modes"):
    # the burst admits at most the limit, and the requests after the flush the rest.
    assert admitted(replies) <= LIMIT
    assert total == LIMIT
    assert rounds[-1][-1].code == "BILLING_001"
    assert stored == LIMIT
    assert counter == LIMIT


# ------------------------------------------------------- b. the burst, replies delayed


@dataclass
class FaultRun:
    figures: Figures
    burst: list[Reply]
    faulty: list[list[Reply]]  # the rounds after flushes, faults still on
    clean: list[list[Reply]]  # the rounds after the faults were cleared
    injected: int
    stored_requests: int
    seconds: float  # under faults


def burst_under_faults(d: Deployment, proxies: Any, name: str) -> FaultRun:
    """A burst and its top-up rounds with FAULT_FRACTION of the replies delayed by
    FAULT_DELAY (every proxy of ``proxies``); then faults off, and the last rounds."""
    account, _, token = d.new_key()
    before = proxies.injected["delay"]
    rounds: list[list[Reply]] = []
    replies: list[Reply] = []
    proxies.faults(delay=FAULT_DELAY, delay_fraction=FAULT_FRACTION)
    started = time.monotonic()
    try:
        replies = burst_apart(d.server.url, token, BURST)
        if admitted(replies) <= LIMIT:  # else already failed: the test says so
            rounds = top_up(d.server.url, token)
    finally:
        proxies.clear()
        injected = proxies.injected["delay"] - before
    seconds = time.monotonic() - started
    clean = top_up(d.server.url, token)  # whatever is still unconfirmed is resolved now
    everything = [replies, *rounds, *clean]
    total = admitted(*everything)
    stored = settles(lambda: d.stored(account), total)
    counter = settles(lambda: d.counter(account), total)
    figures = Figures(name, total, outcomes(*everything)[429, "BILLING_001"],
                      unavailable(*everything), counter, stored, None,
                      f"{injected} replies delayed; burst admitted {admitted(replies)}, "
                      f"{unavailable(replies)} 503s")  # fmt: skip
    return FaultRun(figures, replies, rounds, clean, injected, d.stored_requests(account), seconds)


@pytest.mark.parametrize("consistency", ["strict", "fast"])
def test_b_burst_with_delayed_replies_never_overshoots(
    deploy: Deploy, request: pytest.FixtureRequest, consistency: str
) -> None:
    proxied = request.getfixturevalue("redis_cluster_proxied")
    d = deploy("uvicorn", proxied, consistency)
    run = burst_under_faults(d, proxied.proxies, f"b delayed replies {consistency}")
    f = run.figures
    report(
        f,
        f"b {consistency}: {run.injected} replies delayed {FAULT_DELAY}s "
        f"({run.seconds:.1f}s under faults); burst {dict(outcomes(run.burst))}; "
        f"{len(run.faulty)} rounds after flushes {dict(outcomes(*run.faulty))}; faults off, "
        f"{len(run.clean)} rounds {dict(outcomes(*run.clean))}; admitted {f.admitted}, 503s "
        f"{f.unavailable}; store {f.stored} pages / {run.stored_requests} requests, "
        f"Redis {f.counter}",
    )
    assert run.injected > 0
    assert admitted(run.burst) <= LIMIT, "the burst alone admitted more than the limit"
    assert f.admitted <= LIMIT, "never more than the limit, over the whole test"
    assert f.admitted == LIMIT, "all pages admitted, once every charge is resolved"
    assert run.clean[-1][-1].code == "BILLING_001"
    assert f.stored == f.admitted, "the store records what was admitted"
    assert f.counter == f.admitted, "the Redis counter holds what was admitted"
    kinds = {(r.status, r.code) for r in run.burst}
    assert kinds <= {(200, None), (429, "BILLING_001"), (503, "SVC_001")}, "never a 500"
    # A delayed reply stalls every command behind it on the shared connection, so most of
    # the burst's charges time out once and go again on spare connections, where one reply
    # in ten is delayed again: a 503 is a reply lost twice, about one request in ten alone.
    assert unavailable(run.burst) <= BURST_UNAVAILABLE, "503s: only replies lost twice"
    if consistency == "strict":  # (fast: a lease lost twice holds a block of pages)
        # A charge lost twice holds its page until the flusher resolves it: the burst admits
        # the limit but for those.
        assert admitted(run.burst) + unavailable(run.burst) >= LIMIT
    sequential = [r for round_ in run.faulty for r in round_]
    assert unavailable(sequential) <= FEW_UNAVAILABLE, "few 503s: a reply lost twice"


# ---------------------------------------------------------------------- c. revocation


def until_answered_by(
    url: str, token: str, done: Callable[[set[str]], bool]
) -> tuple[set[str], list[Reply]]:
    """``(the pids that answered, the replies)``: batches of 40 requests until ``done(pids)``
    or SETTLE_TIMEOUT.  A 503 is no answer about the key, so its pid does not count.

    A deadline, not a number of batches: the workers race for each new connection, and on a
    loaded machine one of four lost 400 in a row (CI, uvicorn, Redis Cluster)."""
    pids: set[str] = set()
    replies: list[Reply] = []
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while not done(pids) and time.monotonic() < deadline:
        replies += asyncio.run(burst(url, token, 40))
        pids = {r.pid for r in replies if r.pid and r.status != 503}
    return pids, replies


def unavailable_asked_again(
    url: str, token: str, replies: list[Reply]
) -> tuple[list[Reply], list[Reply]]:
    """``(the answers about the key, the replies to the 503s asked once more)``.

    A 503 says "Redis did not answer in time, try again" (a loaded machine can take longer
    than ``redis_timeout``): not an answer about the key, so it is asked again, as a client
    would, and only the second answer counts."""
    answers = [r for r in replies if (r.status, r.code) != (503, "SVC_001")]
    unavailable = len(replies) - len(answers)
    again = asyncio.run(burst(url, token, unavailable)) if unavailable else []
    return answers + again, again


@pytest.mark.parametrize(
    ("kind", "topology"),
    [("uvicorn", "redis_cluster"), ("uvicorn", "redis_sentinel"), ("gunicorn", "redis_cluster")],
)
def test_c_revoked_in_one_process_refused_by_all(
    deploy: Deploy, request: pytest.FixtureRequest, kind: str, topology: str
) -> None:
    d = deploy(kind, request.getfixturevalue(topology), "strict")
    _, key_id, token = d.new_key()
    warm_pids, warm = until_answered_by(d.server.url, token, lambda pids: len(pids) >= WORKERS)
    assert outcomes(unavailable_asked_again(d.server.url, token, warm)[0]) == {
        (200, None): len(warm)
    }
    assert len(warm_pids) == WORKERS
    d.ks.keys.revoke(key_id)
    pids, after = until_answered_by(d.server.url, token, lambda pids: pids >= warm_pids)
    answers, again = unavailable_asked_again(d.server.url, token, after)
    report(
        None,
        f"c {kind} {topology}: warmed {len(warm_pids)} workers with {len(warm)} requests; "
        f"after revoke {dict(outcomes(after))} from {len(pids & warm_pids)} of them"
        + (f"; the 503s asked again: {dict(outcomes(again))}" if again else ""),
    )
    assert outcomes(answers) == {(401, "AUTH_003"): len(after)}
    assert pids >= warm_pids


# ----------------------------------------------------------------------- d. failover


@dataclass
class FailoverRun:
    figures: Figures
    took: float  # what the topology helper returned
    rate: float  # requests/s before the event
    before: list[Reply]
    during: list[Reply]  # from the call on
    errors_after_heal: int
    lost: int  # admitted - Redis counter
    bound: int  # what Redis may lose in this event (see failover_under_traffic)
    stored_requests: int = 0
    seconds: list[float] = field(default_factory=list)


async def under_traffic(
    url: str, token: str, act: Callable[[], float]
) -> tuple[float, list[Reply], float]:
    """Steady traffic (STEADY concurrent requests in a loop), and after 1 s of it ``act()``
    in a thread; the traffic goes on until it has healed (or HEAL_BOUND), plus 0.5 s.
    (what ``act`` returned, the replies in completion order, when ``act`` was called)."""
    replies: list[Reply] = []
    stop = asyncio.Event()

    async def loop(http: httpx.AsyncClient) -> None:
        while not stop.is_set():
            replies.append(await call(http, url, token))

    async with client() as http:
        tasks = [asyncio.ensure_future(loop(http)) for _ in range(STEADY)]
        await asyncio.sleep(1.0)
        start = time.monotonic()
        took = await asyncio.to_thread(act)
        while time.monotonic() - start < HEAL_BOUND and healed_at(replies, start) is None:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks)
    return took, replies, start


def healed_at(replies: list[Reply], start: float) -> float | None:
    """When requests succeed again: the start of the first run of HEALED_RUN 200s after the
    first failure that follows ``start`` (``start`` itself when nothing failed)."""
    after = [r for r in replies if r.at >= start]
    failures = [i for i, r in enumerate(after) if r.status != 200]
    if not failures:
        return start if len(after) >= HEALED_RUN else None
    run = 0
    for i in range(failures[0], len(after)):
        run = run + 1 if after[i].status == 200 else 0
        if run == HEALED_RUN:
            return after[i - HEALED_RUN + 1].at
    return None


def busiest(replies: list[Reply], start: float, window: float) -> int:
    """The most 200s completed in any ``window`` seconds after ``start``."""
    times = [r.at for r in replies if r.status == 200 and r.at >= start]
    most, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] > window:
            first += 1
        most = max(most, last - first + 1)
    return most


EVENTS = ("cluster-failover", "cluster-kill", "sentinel-failover")


def failover_under_traffic(d: Deployment, setup: Any, event: str) -> FailoverRun:
    """``event`` (one of EVENTS) on ``setup`` under steady traffic on an unlimited account."""
    account, _, token = d.new_key(limit=None)  # unlimited, still metered
    key = d.usage_key(account)
    act: Callable[[], float] = {
        "cluster-failover": lambda: setup.failover(key),
        "cluster-kill": lambda: setup.kill_master_of(key),
        "sentinel-failover": lambda: setup.failover(),
    }[event]
    took, replies, start = asyncio.run(under_traffic(d.server.url, token, act))
    before = [r for r in replies if r.at < start]
    during = [r for r in replies if r.at >= start]
    healed = healed_at(replies, start)
    heal = None if healed is None else healed - start
    late = [r for r in during if healed is not None and r.at > healed and r.status != 200]
    total = admitted(replies)
    stored = settles(lambda: d.stored(account), total)
    counter = d.counter(account)
    # What Redis may lose.  CLUSTER FAILOVER is coordinated (the replica takes over once it
    # has every write): nothing.  SIGKILL: the writes acknowledged but not yet replicated, at
    # most the requests in flight (and strict mode's pending fields add back those not yet in
    # the store).  SENTINEL FAILOVER: the old primary takes writes until keystile asks the
    # sentinels again, every SENTINEL_POLL plus a timeout: what is admitted in that window,
    # plus the requests in flight. Two timeouts more of room: alone a run loses 0.4-0.8 of
    # the bound of a 1.5 s window, but under the whole suite on two cores the poll and the
    # sentinels run late, and one run lost 1,013 against such a bound of 900 (1.7 s worth).
    window = SENTINEL_POLL + 4 * REDIS_TIMEOUT
    bound = {"cluster-failover": 0, "cluster-kill": STEADY,
             "sentinel-failover": busiest(replies, start, window) + STEADY}[event]  # fmt: skip
    figures = Figures(f"d {event}", total, outcomes(replies)[429, "BILLING_001"],
                      unavailable(replies), counter, stored, heal,
                      f"lost by Redis {total - counter} (bound {bound}); helper {took:.2f}s")  # fmt: skip
    return FailoverRun(figures, took, len(before) / 1.0, before, during, len(late),
                       total - counter, bound, d.stored_requests(account))  # fmt: skip


@pytest.mark.parametrize("event", EVENTS)
def test_d_failover_heals_without_restart(
    deploy: Deploy, request: pytest.FixtureRequest, event: str
) -> None:
    setup = request.getfixturevalue("redis_sentinel" if "sentinel" in event else "redis_cluster")
    d = deploy("uvicorn", setup, "strict")
    run = failover_under_traffic(d, setup, event)
    f = run.figures
    heal = "never" if f.heal is None else f"{f.heal:.2f}s"
    report(
        f,
        f"d {event}: helper took {run.took:.2f}s; ~{run.rate:.0f} requests/s before, "
        f"{dict(outcomes(run.before))}; from the call on {dict(outcomes(run.during))}; healed "
        f"after {heal}, {run.errors_after_heal} errors after; admitted {f.admitted}, store "
        f"{f.stored} pages / {run.stored_requests} requests, Redis {f.counter}; lost by Redis "
        f"{run.lost} (bound {run.bound})",
    )
    assert outcomes(run.before) == {(200, None): len(run.before)}
    assert f.heal is not None and f.heal <= HEAL_BOUND
    assert run.errors_after_heal == 0
    assert f.stored == f.admitted
    assert 0 <= run.lost <= run.bound


# ----------------------------------------------------------------- e. FLUSHALL mid-month


def test_e_flushall_overshoot_is_bounded(deploy: Deploy, redis_cluster: Any) -> None:
    d = deploy("uvicorn", redis_cluster, "strict")
    account, _, token = d.new_key(limit=FLUSHALL_LIMIT)
    first = asyncio.run(until_refused(d.server.url, token, most=FLUSHALL_BEFORE))
    unflushed = admitted(first) - d.stored(account)  # at least what the FLUSHALL takes
    redis_cluster.flushall()
    second = asyncio.run(until_refused(d.server.url, token, most=2 * FLUSHALL_LIMIT))
    total = admitted(first, second)
    overshoot = total - FLUSHALL_LIMIT
    stored = settles(lambda: d.stored(account), total)
    time.sleep(FLUSH_WAIT)
    counter = settles(lambda: d.counter(account), stored)
    refused = outcomes(first, second)[429, "BILLING_001"]
    note = f"overshoot {overshoot}, {unflushed} unflushed at the FLUSHALL"
    figures = Figures("e FLUSHALL", total, refused, unavailable(first, second), counter, stored,
                      None, note)  # fmt: skip
    report(
        figures,
        f"e FLUSHALL: {admitted(first)} admitted before ({unflushed} not yet in the store), "
        f"then {dict(outcomes(second))}; admitted {total}, overshoot {overshoot}; "
        f"store {stored}, Redis {counter}",
    )
    assert outcomes(first) == {(200, None): FLUSHALL_BEFORE}
    assert second[-1].code == "BILLING_001"
    # The README's bound: what was not yet flushed when Redis lost it, once. How much of it
    # the workers add back before the limit is reached depends on how fast the second run
    # goes against their flush timers (26 of 50 once, on a fast machine): not asserted.
    assert 0 <= overshoot <= max(unflushed, 0)
    assert stored == total
    assert counter == stored
