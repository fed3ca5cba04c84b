"""The cost of keystile on the hot path, in-process (no network), against a bare app.

    python bench/hot_path.py [--requests 20000] [--redis redis://127.0.0.1:6379/0]

Each scenario sends ASGI requests straight into a Starlette app and prints microseconds per
request and the ratio to the bare app measured in the same run. With --redis (or
KEYSTILE_BENCH_REDIS_URL) the Redis scenarios run too, under a throwaway key prefix that is
deleted afterwards. Every request here is metered (metering is always on); "limit" scenarios
also enforce a monthly page limit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from keystile import Keystile
from keystile.starlette import KeystileMiddleware

FAST_ARGON2 = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def make_app(keystile: Keystile | None) -> Any:
    app = Starlette(routes=[Route("/", hello)])
    if keystile is not None:
        app.add_middleware(KeystileMiddleware, keystile=keystile)
    return app


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


async def run(app: Any, headers: list[tuple[bytes, bytes]], count: int, expect: int) -> float:
    scope = scope_for(headers)
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    for _ in range(50):  # warm caches and code paths
        await app(dict(scope), receive, send)
    if statuses[-1] != expect:
        raise SystemExit(f"scenario answered {statuses[-1]}, expected {expect}")
    samples = []
    per_batch = max(1, count // 10)
    for _ in range(10):
        start = time.perf_counter()
        for _ in range(per_batch):
            await app(dict(scope), receive, send)
        samples.append((time.perf_counter() - start) / per_batch)
    return statistics.median(samples) * 1e6


def scenarios(engine: Keystile, token: str, unknown: str) -> list[tuple[str, list, int]]:
    bad_checksum = token[:-1] + ("A" if token[-1] != "A" else "B")
    return [
        ("valid key (warm)", [(b"authorization", f"Bearer {token}".encode())], 200),
        ("bad-checksum token", [(b"x-api-key", bad_checksum.encode())], 401),
        ("unknown key id", [(b"x-api-key", unknown.encode())], 401),
    ]


def unknown_token(engine: Keystile) -> str:
    other = Keystile({"store": "memory://", "argon2": FAST_ARGON2})
    token = other.keys.create("acct_other", "not in the benched store").token
    other.close()
    return token


async def bench(redis_url: str | None, count: int) -> None:
    bare = await run(make_app(None), [], count, 200)
    rows: list[tuple[str, float]] = [("bare app", bare)]
    configs: list[tuple[str, dict[str, Any]]] = [("in-process", {})]
    prefix = f"ksbench-{uuid.uuid4().hex[:8]}"
    if redis_url:
        configs.append(
            ("redis", {"redis_url": redis_url, "secret": "bench-secret-0123456789", "redis_prefix": prefix})
        )
    if redis_url:
        rows.append(("redis: one bare script round trip (floor)", await redis_floor(redis_url, count)))
    try:
        for label, extra in configs:
            for limit_label, limit in (("unlimited", None), ("limit", 10**9)):
                engine = Keystile(
                    {"store": "memory://", "argon2": FAST_ARGON2, "monthly_page_limit": limit, **extra}
                )
                token = engine.keys.create("acct_bench", "bench").token
                app = make_app(engine)
                for name, headers, status in scenarios(engine, token, unknown_token(engine)):
                    if limit_label == "limit" and status != 200:
                        continue
                    micros = await run(app, headers, count, status)
                    rows.append((f"{label:10} {limit_label:9} {name}", micros))
                await engine.aclose()
                engine.close()
    finally:
        if redis_url:
            import redis

            client = redis.Redis.from_url(redis_url)
            for key in client.scan_iter(match=f"{prefix}*"):
                client.unlink(key)
            client.close()
    print(f"{'scenario':50} {'µs/request':>12} {'× bare':>8}")
    for name, micros in rows:
        print(f"{name:50} {micros:12.1f} {micros / bare:8.2f}")


async def redis_floor(redis_url: str, count: int) -> float:
    """What one EVALSHA costs this client on this machine: the least a Redis check can cost."""
    import redis.asyncio as aredis

    client = aredis.Redis.from_url(redis_url, decode_responses=True)
    script = client.register_script("return redis.call('GET', KEYS[1])")
    key = f"ksbench-floor-{uuid.uuid4().hex}"
    for _ in range(50):
        await script(keys=[key], args=[])
    start = time.perf_counter()
    for _ in range(count):
        await script(keys=[key], args=[])
    micros = (time.perf_counter() - start) / count * 1e6
    await client.aclose()
    return micros


def main(argv: list[str] | None = None, printer: Callable[..., None] = print) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--redis", default=os.environ.get("KEYSTILE_BENCH_REDIS_URL"))
    args = parser.parse_args(argv)
    asyncio.run(bench(args.redis, args.requests))


if __name__ == "__main__":
    main()
