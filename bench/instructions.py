"""Instructions per warm request, counted by valgrind: a measure the machine's noise leaves alone.

    python bench/instructions.py [--src PATH] [--low 200] [--high 1200] [--redis URL]

Each scenario runs as a whole Python process under ``valgrind --tool=callgrind`` twice, with
``--low`` and with ``--high`` requests (after 200 to warm up), through a Starlette app without
Redis: the bare app, keystile with an unlimited key, keystile with a monthly limit. The
difference of the two totals over ``high - low`` requests is the cost of one request, start-up
and imports taken out; it repeats to about 0.2% from run to run. With ``--redis`` (a server
the scenarios write under a throwaway prefix each, whose keys this process deletes once the
measured one has ended, so the deletion is not counted) ``strict`` and
``strict-limit`` run too: the same keys in strict mode, so one meter script call a request,
whose instructions in this process (not the server's, nor the wait) are counted: the
client's side of the round trip, which the machine's noise hides in timings. The ``wsgi-``
scenarios do the same for a plain WSGI app, as a sync worker runs it (over their own bare
app): the floor with redis-py's blocking client, strict with keystile's. ``--src``
counts another checkout's ``src`` (an older commit, say) with this one's Python and packages.
Needs valgrind (Debian: ``apt-get install valgrind``); two processes run at a time.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds bench/http.py, which must not shadow the standard library's http.
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _HERE]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import uuid  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("bare", "unlimited", "limit")
REDIS_SCENARIOS = ("floor", "strict", "strict-limit", "wsgi-bare", "wsgi-floor", "wsgi-strict")
REDIS_ENV = "KEYSTILE_BENCH_INSTRUCTIONS_REDIS"
#: The key prefix of one measured process: its keys are deleted by this one, after it (a
#: strict request leaves its call's marker behind, and deleting a thousand of them in the
#: measured process would count as its requests' cost).
PREFIX_ENV = "KEYSTILE_BENCH_INSTRUCTIONS_PREFIX"
WARMUP = 200


def child(kind: str, count: int) -> None:
    """The measured process: ``WARMUP + count`` requests of one scenario."""
    if kind.startswith("wsgi"):
        wsgi_child(kind, count)
        return
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app: Any = Starlette(routes=[Route("/", hello)])
    headers: list[tuple[bytes, bytes]] = []
    if kind == "floor":
        app = _with_floor(app, os.environ[REDIS_ENV])
    elif kind != "bare":
        from keystile import Keystile
        from keystile.starlette import KeystileMiddleware

        limit = {"monthly_page_limit": 10**9} if kind.endswith("limit") else {}
        argon2 = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}
        redis: dict[str, Any] = {}
        if kind.startswith("strict"):
            redis = {"redis_url": os.environ[REDIS_ENV], "redis_prefix": os.environ[PREFIX_ENV]}
            redis.update(secret="bench-secret-0123456789", consistency="strict")
        ks = Keystile({"store": "memory://", "argon2": argon2, **limit, **redis})
        token = ks.keys.create("acct_bench", "bench").token
        app.add_middleware(KeystileMiddleware, keystile=ks)
        headers = [(b"authorization", f"Bearer {token}".encode())]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/", "raw_path": b"/", "query_string": b"", "root_path": "",
        "headers": headers, "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def run() -> None:
        for _ in range(WARMUP + count):
            await app(dict(scope), receive, send)

    asyncio.run(run())
    if statuses[-1] != 200:
        raise SystemExit(f"{kind} answered {statuses[-1]}")
    if kind.startswith("strict"):
        ks.close()


def wsgi_child(kind: str, count: int) -> None:
    """A plain WSGI app, as a sync worker runs it: bare, behind a middleware making one bare
    script call with redis-py's blocking client (the sync floor), or behind keystile's WSGI
    middleware in strict mode (keystile's own blocking client)."""
    import io

    import redis as redis_py

    def plain(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    app: Any = plain
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/", "QUERY_STRING": "",
        "SERVER_NAME": "bench", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "bench", "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "http",
    }  # fmt: skip
    url, prefix, ks = os.environ[REDIS_ENV], os.environ[PREFIX_ENV], None
    if kind == "wsgi-floor":
        client = redis_py.Redis.from_url(url, decode_responses=True)
        script = client.register_script("return redis.call('GET', KEYS[1])")

        def floor(environ: Any, start_response: Any) -> Any:
            script(keys=[f"{prefix}:floor"], args=[])
            return plain(environ, start_response)

        app = floor
    elif kind == "wsgi-strict":
        from keystile import Keystile
        from keystile.wsgi import KeystileMiddleware

        ks = Keystile({
            "store": "memory://", "argon2": {"time_cost": 1, "memory_cost": 8, "parallelism": 1},
            "redis_url": url, "redis_prefix": prefix, "secret": "bench-secret-0123456789",
            "consistency": "strict",
        })  # fmt: skip
        environ["HTTP_AUTHORIZATION"] = f"Bearer {ks.keys.create('acct_bench', 'bench').token}"
        app = KeystileMiddleware(plain, keystile=ks)
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        statuses.append(status)

    for _ in range(WARMUP + count):
        body = app({**environ, "wsgi.input": io.BytesIO()}, start_response)
        b"".join(body)
        getattr(body, "close", lambda: None)()
    if not statuses[-1].startswith("200"):
        raise SystemExit(f"{kind} answered {statuses[-1]}")
    if ks is not None:
        ks.close()


def _with_floor(app: Any, redis_url: str) -> Any:
    """The app behind a pure-ASGI middleware that makes one bare script call (redis-py's
    asyncio client) per request: the least a Redis-backed check costs this process."""
    import redis.asyncio as aredis

    client = aredis.Redis.from_url(redis_url, decode_responses=True)
    script = client.register_script("return redis.call('GET', KEYS[1])")
    key = f"{os.environ[PREFIX_ENV]}:floor"

    async def floor(scope: Any, receive: Any, send: Any) -> None:
        await script(keys=[key], args=[])
        await app(scope, receive, send)

    return floor


def count(src: Path, kind: str, requests: int, redis_url: str | None) -> int:
    """Instructions of one whole process."""
    prefix = f"ksinstr-{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(src), "PYTHONHASHSEED": "0", PREFIX_ENV: prefix}
        if redis_url:
            env[REDIS_ENV] = redis_url
        try:
            done = subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out",
                 sys.executable, __file__, "--child", kind, str(requests)],
                env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
        finally:
            if redis_url:
                delete_prefix(redis_url, prefix)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"valgrind failed for {kind}: {done.stderr[-1500:]}")
    return int(found.group(1))


def delete_prefix(redis_url: str, prefix: str) -> None:
    """Delete every key a measured process wrote: keystile puts its hash tags after the
    prefix, so one pattern finds them all."""
    import redis as redis_py

    client = redis_py.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.unlink(key)
    finally:
        client.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--src", type=Path, default=ROOT / "src")
    parser.add_argument("--low", type=int, default=200)
    parser.add_argument("--high", type=int, default=1200)
    parser.add_argument("--redis", help="also the strict scenarios, on this Redis server")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("needs valgrind: apt-get install valgrind")
    if args.high <= args.low:
        raise SystemExit("--high must be more than --low")
    print(f"load average at start: {os.getloadavg()} (instructions do not depend on it)")
    scenarios = SCENARIOS + (REDIS_SCENARIOS if args.redis else ())
    jobs = [(kind, n) for kind in scenarios for n in (args.low, args.high)]
    with ThreadPoolExecutor(2) as pool:
        totals = dict(zip(jobs, pool.map(lambda job: count(args.src, *job, args.redis), jobs)))
    per = {
        k: (totals[k, args.high] - totals[k, args.low]) / (args.high - args.low) for k in scenarios
    }
    print(f"src: {args.src}")
    print(f"{'scenario':12} {'instructions/request':>22} {'over bare':>12}")
    for kind in scenarios:
        bare = per["wsgi-bare" if kind.startswith("wsgi") else "bare"]  # its own bare app
        print(f"{kind:12} {per[kind]:22,.0f} {per[kind] - bare:12,.0f}")


if __name__ == "__main__":
    main()
