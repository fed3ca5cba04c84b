"""The cost of keystile on the hot path, in-process (no network), against a bare app.

    python bench/hot_path.py [--requests 20000] [--rounds 7] [--redis redis://127.0.0.1:6379/0]

ASGI requests go straight into a Starlette app, one at a time. Every scenario runs once per
round, rounds interleaved (bare, A, B, ..., bare, A, B, ...), and each line prints the median,
min and max over the rounds of: microseconds per request, and microseconds over the bare app
of the same round. With --redis (or KEYSTILE_BENCH_REDIS_URL) the Redis scenarios run too,
under a throwaway key prefix deleted afterwards, next to the floor: one bare script round
trip (``return redis.call('GET', KEYS[1])``) with redis-py's asyncio client, the least a
naive Redis check costs; a last table gives each strict request with a valid key (one round
trip too) over the floor of its round, and over the floor and the bare app (the floor runs
no app: this is keystile's own cost, as "over bare" is above). What the script costs the
server is bench/redis_scripts.py's to show. Every keystile request is metered; "limit" scenarios
also enforce a monthly page limit. "least key check" is a reference, not keystile: a middleware
that scans the headers once, looks the token up in a dict and attaches a principal.

``--interlude server`` runs, untimed, before every timed request, what a server does around
one: a request parsed and a response written with h11, both sent over a socketpair and
polled for. ``--interlude evict`` also walks about 5 MB of memory. A tight loop keeps the
warm path's code and data in the CPU's caches; a live server does not (README, Performance).
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds bench/http.py, which must not shadow the standard library's http.
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _HERE]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # bench.http_apps

import argparse  # noqa: E402
import asyncio  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Awaitable, Callable  # noqa: E402
from typing import Any  # noqa: E402

from bench.http_apps.starlette_app import LeastKeyCheck  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from keystile import Keystile  # noqa: E402
from keystile._core.errors import ConfigError  # noqa: E402
from keystile.starlette import KeystileMiddleware  # noqa: E402

FAST_ARGON2 = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}
Runner = Callable[[int], Awaitable[float]]
Interlude = Callable[[], None] | None
FLOOR = "redis: one bare script round trip (floor)"
LEAST = "least key check (reference)"


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def make_app(keystile: Keystile | None) -> Any:
    app = Starlette(routes=[Route("/", hello)])
    if keystile is not None:
        app.add_middleware(KeystileMiddleware, keystile=keystile)
    return app


def interlude_for(kind: str) -> Interlude:
    """What runs, untimed, before each timed request (see the module's docstring)."""
    if kind == "none":
        return None
    import selectors
    import socket

    import h11

    client, server = socket.socketpair()
    poll = selectors.DefaultSelector()
    poll.register(server, selectors.EVENT_READ)
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nAuthorization: Bearer sk_x\r\n\r\n"
    reply = h11.Response(status_code=200, headers=[("content-length", "2")])

    def serve() -> None:
        client.send(request)
        poll.select(0)
        connection = h11.Connection(h11.SERVER)
        connection.receive_data(server.recv(65536))
        connection.next_event()
        connection.next_event()
        out = connection.send(reply) + connection.send(h11.Data(data=b"ok"))
        server.send(out + connection.send(h11.EndOfMessage()))
        client.recv(65536)

    if kind == "server":
        return serve
    memory = list(range(300_000))  # ints and their pointers: about 5 MB a walk touches

    def evict() -> None:
        serve()
        sum(memory[::8])

    return evict


async def timed(count: int, call: Callable[[], Awaitable[Any]], interlude: Interlude) -> float:
    """µs per call over ``count`` calls; with an interlude, only the calls are timed."""
    if interlude is None:
        start = time.perf_counter()
        for _ in range(count):
            await call()
        return (time.perf_counter() - start) / count * 1e6
    total = 0.0
    for _ in range(count):
        interlude()
        start = time.perf_counter()
        await call()
        total += time.perf_counter() - start
    return total / count * 1e6


def scope_for(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }


async def app_runner(
    app: Any, headers: list[tuple[bytes, bytes]], expect: int, interlude: Interlude
) -> Runner:
    """Warms the app up, checks the status it answers, and returns a timed runner."""
    scope = scope_for(headers)
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    for _ in range(200):
        await app(dict(scope), receive, send)
    if statuses[-1] != expect:
        raise SystemExit(f"scenario answered {statuses[-1]}, expected {expect}")

    async def run(count: int) -> float:
        return await timed(count, lambda: app(dict(scope), receive, send), interlude)

    return run


async def floor_runner(
    redis_url: str, interlude: Interlude
) -> tuple[Runner, Callable[[], Awaitable[None]]]:
    """One EVALSHA with redis-py's asyncio client: what a naive Redis check costs."""
    import redis.asyncio as aredis

    client = aredis.Redis.from_url(redis_url, decode_responses=True)
    script = client.register_script("return redis.call('GET', KEYS[1])")
    key = f"ksbench-floor-{uuid.uuid4().hex}"
    for _ in range(200):
        await script(keys=[key], args=[])

    async def run(count: int) -> float:
        return await timed(count, lambda: script(keys=[key], args=[]), interlude)

    return run, client.aclose


def unknown_token() -> str:
    other = Keystile({"store": "memory://", "argon2": FAST_ARGON2})
    token = other.keys.create("acct_other", "not in the benched store").token
    other.close()
    return token


def engine_for(extra: dict[str, Any]) -> Keystile | None:
    try:
        return Keystile({"store": "memory://", "argon2": FAST_ARGON2, **extra})
    except ConfigError as exc:  # a mode this version does not have
        print(f"skipped {extra}: {exc}")
        return None


async def build(
    redis_url: str | None, prefix: str, interlude: Interlude
) -> tuple[list[tuple[str, Runner]], list[Any]]:
    bare = await app_runner(make_app(None), [], 200, interlude)
    runners: list[tuple[str, Runner]] = [("bare app", bare)]
    least_header = (b"authorization", b"Bearer sk_live_reference")
    least = Starlette(routes=[Route("/", hello)])  # where keystile's middleware goes, too
    least.add_middleware(LeastKeyCheck, principals={least_header[1]: object()})
    runners.append((LEAST, await app_runner(least, [least_header], 200, interlude)))
    closers: list[Any] = []
    configs: list[tuple[str, dict[str, Any]]] = [("in-process", {})]
    if redis_url:
        floor, close = await floor_runner(redis_url, interlude)
        runners.append((FLOOR, floor))
        closers.append(close)
        shared = {"redis_url": redis_url, "secret": "bench-secret-0123456789", "redis_prefix": prefix}
        configs.append(("strict", {**shared, "consistency": "strict"}))
        configs.append(("fast", {**shared, "consistency": "fast"}))
    stranger = unknown_token()
    for label, extra in configs:
        for limit_label, limit in (("unlimited", None), ("limit", 10**9)):
            engine = engine_for({"monthly_page_limit": limit, **extra})
            if engine is None:
                continue
            closers.append(engine)
            if label == "fast":
                engine.ready(5.0)
            token = engine.keys.create("acct_bench", "bench").token
            app = make_app(engine)
            bad_checksum = token[:-1] + ("A" if token[-1] != "A" else "B")
            cases = [("valid key (warm)", [(b"authorization", f"Bearer {token}".encode())], 200)]
            if limit_label == "unlimited":
                cases += [
                    ("bad-checksum token", [(b"x-api-key", bad_checksum.encode())], 401),
                    ("unknown key id", [(b"x-api-key", stranger.encode())], 401),
                ]
            for name, headers, status in cases:
                runner = await app_runner(app, headers, status, interlude)
                runners.append((f"{label:10} {limit_label:9} {name}", runner))
    return runners, closers


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.1f} {min(values):8.1f} {max(values):8.1f}"


async def bench(redis_url: str | None, count: int, rounds: int, interlude: str) -> None:
    prefix = f"ksbench-{uuid.uuid4().hex[:8]}"
    print(f"load average at start: {os.getloadavg()}")
    print(f"interlude before each request: {interlude}")
    runners, closers = await build(redis_url, prefix, interlude_for(interlude))
    samples: dict[str, list[float]] = {name: [] for name, _ in runners}
    over: dict[str, list[float]] = {name: [] for name, _ in runners}
    over_floor: dict[str, list[float]] = {}  # strict, valid key: one round trip, as the floor
    own: dict[str, list[float]] = {}  # the same, less the bare app too: keystile's own cost
    try:
        for _ in range(rounds):
            bare = floor = 0.0
            for name, run in runners:
                micros = await run(count)
                bare = micros if name == "bare app" else bare
                floor = micros if name == FLOOR else floor
                samples[name].append(micros)
                over[name].append(micros - bare)
                if name.startswith("strict") and "valid key" in name:
                    over_floor.setdefault(name, []).append(micros - floor)
                    own.setdefault(name, []).append(micros - floor - bare)
    finally:
        for closer in closers:
            if isinstance(closer, Keystile):
                await closer.aclose()
                closer.close()
            else:
                await closer()
        if redis_url:
            import redis

            client = redis.Redis.from_url(redis_url)
            for key in client.scan_iter(match=f"{prefix}*"):
                client.unlink(key)
            client.close()
    print(f"{rounds} interleaved rounds of {count} requests; median, min and max over the rounds")
    print(f"{'scenario':48} {'µs/request (med min max)':>26} {'µs over bare (med min max)':>28}")
    for name, _ in runners:
        print(f"{name:48} {spread(samples[name]):>26} {spread(over[name]):>28}")
    if over_floor:
        print(f"{'the same, against the floor of the same round':48} "
              f"{'µs over floor (med min max)':>26} {'over floor + bare (med min max)':>32}")
        for name, values in over_floor.items():
            print(f"{name:48} {spread(values):>26} {spread(own[name]):>32}")
    print(f"load average at end: {os.getloadavg()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="per scenario and round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--redis", default=os.environ.get("KEYSTILE_BENCH_REDIS_URL"))
    parser.add_argument(
        "--interlude", choices=("none", "server", "evict"), default="none",
        help="untimed work before each request (module docstring)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    asyncio.run(bench(args.redis, args.requests, args.rounds, args.interlude))


if __name__ == "__main__":
    main()
