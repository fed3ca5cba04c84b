"""What each step of a warm request costs, found by replacing it with what it returned.

    python bench/warm_steps.py [--requests 3000] [--rounds 5] [--interlude server]

A Starlette app with keystile's middleware, no Redis, an unlimited key, runs warm requests as
``bench/hot_path.py`` does (its runner and its interludes; ``server`` by default, since a
tight loop hides most of the cost a live server sees). Each scenario is a fresh engine in
which one step answers with the result it recorded on its first warm call, so the step's own
work is gone and everything around it still runs; the difference to the whole request is
what the step costs. Rounds are interleaved; each line prints µs over the bare app of the
same round, and what the replacement saved (the whole request's less this scenario's),
median, min and max over the rounds; ``hot_path.py``'s least key check runs beside them,
for reference.

The steps replaced:

- ``engine``: ``authenticate_async`` and ``settle_async``: what is left is the middleware
  (its exchange, the principal on the scope, ``request.user``, the wrapped ``send``);
- ``credential read``: the header scan and the remembered credential's lookup;
- ``admission``: ``admission.warm``: the ticket's checks, the counters, the meter and the
  principal (the recorded principal's meter is settled once, so its settle is shorter too);
- ``counters``: the local counters and the usage buffer alone;
- ``settle``: the engine's settle, after the response.

It reaches into the engine's parts by name (it is a measurement of them): when they are
renamed, it fails loudly rather than measuring something else.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds bench/http.py, which must not shadow the standard library's http.
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _HERE]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # bench.hot_path

import argparse  # noqa: E402
import asyncio  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

from bench.hot_path import (  # noqa: E402
    LEAST,
    Runner,
    app_runner,
    engine_for,
    hello,
    interlude_for,
    make_app,
)
from bench.http_apps.starlette_app import LeastKeyCheck  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.routing import Route  # noqa: E402

from keystile import Keystile  # noqa: E402
from keystile._core.rawheaders import RawHeaders  # noqa: E402
from keystile._runtime.awaitables import DONE  # noqa: E402

WHOLE = "whole request"


def replace_method(obj: Any, name: str, answer: Callable[..., Any]) -> None:
    """``obj.name`` becomes ``answer`` for this object only (slotted classes included: the
    object gets a subclass of its class, of the same layout, that defines it)."""
    cls = obj.__class__
    if not callable(getattr(cls, name, None)):
        raise SystemExit(f"{cls.__name__} has no method {name!r}: update bench/warm_steps.py")
    obj.__class__ = type(cls.__name__, (cls,), {"__slots__": (), name: staticmethod(answer)})


def recorded(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method``, answering every call after the first with the first call's result."""
    results: list[Any] = []

    def answer(*args: Any) -> Any:
        if not results:
            results.append(method(*args))
        return results[0]

    return answer


def replace_step(engine: Keystile, step: str, headers: list[tuple[bytes, bytes]]) -> None:
    if step == "engine":
        principal = engine.authenticate(RawHeaders(headers), "GET", "/")

        async def authenticated(*args: Any, **kwargs: Any) -> Any:
            return principal

        replace_method(engine, "authenticate_async", authenticated)
        replace_method(engine, "settle_async", lambda principal, status: DONE)
    elif step == "credential read":
        replace_method(engine.credentials, "read", recorded(engine.credentials.read))
    elif step == "admission":
        replace_method(engine.admission, "warm", recorded(engine.admission.warm))
    elif step == "counters":
        counters = engine.admission.counters
        replace_method(counters, "meter", recorded(counters.meter))
    elif step == "settle":
        replace_method(engine, "settle_async", lambda principal, status: DONE)
    elif step != WHOLE:
        raise SystemExit(f"unknown step {step!r}")


STEPS = (WHOLE, "engine", "credential read", "admission", "counters", "settle")


async def scenario(step: str, interlude: Any) -> tuple[Runner, Keystile]:
    engine = engine_for({})
    assert engine is not None
    token = engine.keys.create("acct_bench", "bench").token
    headers = [(b"authorization", f"Bearer {token}".encode())]
    app = make_app(engine)
    await app_runner(app, headers, 200, interlude)  # warm: the credential and ticket known
    replace_step(engine, step, headers)
    return await app_runner(app, headers, 200, interlude), engine


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):6.1f} {min(values):6.1f} {max(values):6.1f}"


async def bench(count: int, rounds: int, interlude_kind: str) -> None:
    print(f"load average at start: {os.getloadavg()}")
    print(f"interlude before each request: {interlude_kind}")
    interlude = interlude_for(interlude_kind)
    runners: list[tuple[str, Runner]] = [
        ("bare app", await app_runner(make_app(None), [], 200, interlude))
    ]
    least_header = (b"authorization", b"Bearer sk_live_reference")
    least = Starlette(routes=[Route("/", hello)])
    least.add_middleware(LeastKeyCheck, principals={least_header[1]: object()})
    runners.append((LEAST, await app_runner(least, [least_header], 200, interlude)))
    engines = []
    for step in STEPS:
        run, engine = await scenario(step, interlude)
        runners.append((step, run))
        engines.append(engine)
    over: dict[str, list[float]] = {name: [] for name, _ in runners}
    saved: dict[str, list[float]] = {name: [] for name, _ in runners}
    try:
        for _ in range(rounds):
            times = {name: await run(count) for name, run in runners}
            for name in times:
                over[name].append(times[name] - times["bare app"])
                saved[name].append(times[WHOLE] - times[name])
    finally:
        for engine in engines:
            engine.close()
    print(f"{rounds} interleaved rounds of {count} requests; median, min and max over the rounds")
    print(f"{'step replaced by its recorded result':38} {'µs over bare':>20} {'µs saved':>20}")
    for name, _ in runners[1:]:
        label = "(none: the whole request)" if name == WHOLE else name
        gain = "" if name == LEAST else spread(saved[name])
        print(f"{label:38} {spread(over[name]):>20} {gain:>20}")
    print(f"load average at end: {os.getloadavg()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=3_000, help="per scenario and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--interlude", choices=("none", "server", "evict"), default="server",
        help="untimed work before each request (bench/hot_path.py)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    asyncio.run(bench(args.requests, args.rounds, args.interlude))


if __name__ == "__main__":
    main()
