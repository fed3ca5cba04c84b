"""What the warm path's script costs Redis: server time per ``meter.lua`` call, by Redis's own
``INFO commandstats``, against the floor's one-``GET`` script and an empty one.

    python bench/redis_scripts.py [--calls 2000] [--rounds 7] [--against OTHER/src]

It starts a private ``redis-server`` (on PATH; Debian: ``apt-get install redis-server``) on a
free loopback port, because it resets the server's statistics before each measurement. An
engine of this checkout makes one warm strict request (an unlimited key, then one under a
monthly limit) and its meter call's keys and arguments are kept; each script is then sent
those, every call with a marker key of its own as in real use, ``--calls`` times one at a
time (as a request waits for it: the server's caches go cold between calls) and as many in
pipelines of 32 (as under load). Rounds interleave the scripts (A B C A B C ...) and each
line prints the median, min and max over the rounds of the microseconds of server time per
call, and over the floor of the same round. ``--against`` adds another checkout's
``meter.lua`` (``OTHER/src``), sent the same keys and arguments: both must answer ``ok``.
Timings come from the server, not the client: the network and this process do not count.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds bench/http.py, which must not shadow the standard library's http.
_HERE = str(Path(__file__).resolve().parent)
_ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _HERE]
sys.path[:0] = [str(_ROOT / "src"), str(_ROOT)]

import argparse  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
from typing import Any  # noqa: E402

import redis  # noqa: E402

from bench.http import private_redis  # noqa: E402
from keystile import Keystile  # noqa: E402

FAST_ARGON2 = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}
PIPELINE = 32
Call = tuple[list[str], list[Any]]


def meter_source(src: Path) -> str:
    lua = src / "keystile" / "_redis" / "lua"
    return (lua / "once.lua").read_text() + (lua / "meter.lua").read_text()


def captured_call(url: str, limit: int | None) -> tuple[Call, dict[str, str]]:
    """One warm strict request's meter call, and the keys it expects to find (the state
    stamp and the limit), with their values."""
    engine = Keystile({
        "store": "memory://", "argon2": FAST_ARGON2, "redis_url": url, "consistency": "strict",
        "secret": "bench-secret-0123456789", "redis_prefix": f"ksscripts-{limit}",
        "monthly_page_limit": limit,
    })  # fmt: skip
    try:
        token = engine.keys.create("acct_bench", "bench").token
        headers = [("authorization", f"Bearer {token}")]
        engine.settle(engine.authenticate(headers), 200)  # cold: verifies and caches the key
        scripts = engine.redis.sync.scripts
        meter, calls = scripts["meter"], []

        def recording(keys: list[str], args: list[Any]) -> Any:
            calls.append((list(keys), list(args)))
            return meter(keys, args)

        scripts["meter"] = recording
        engine.settle(engine.authenticate(headers), 200)
        scripts["meter"] = meter
    finally:
        engine.close()
    if len(calls) != 1:
        raise SystemExit(f"a warm request made {len(calls)} meter calls, expected 1")
    client = redis.Redis.from_url(url, decode_responses=True)
    keys = calls[0][0]
    expect = {k: client.get(k) for k in (keys[1], keys[3])}  # the limit, the state stamp
    client.close()
    return calls[0], {k: v for k, v in expect.items() if v is not None}


def server_micros(client: redis.Redis, sha: str, call: Call, count: int, piped: bool) -> float:
    """Server time per EVALSHA over ``count`` calls, each with a marker key of its own."""
    keys, args = call
    client.config_resetstat()
    head, marker = keys[:-1], keys[-1]
    batch = client.pipeline(transaction=False)
    for i in range(count):
        every = (*head, f"{marker}.{i}") if len(keys) > 1 else keys
        if piped:
            batch.evalsha(sha, len(every), *every, *args)
            if len(batch) == PIPELINE:
                batch.execute()
        else:
            client.evalsha(sha, len(every), *every, *args)
    if len(batch):
        batch.execute()
    stats = client.info("commandstats")["cmdstat_evalsha"]
    if stats["calls"] != count or stats.get("failed_calls", 0):
        raise SystemExit(f"{stats['calls']} calls, {stats.get('failed_calls')} failed")
    return float(stats["usec"]) / count


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):7.2f} {min(values):7.2f} {max(values):7.2f}"


def bench(url: str, calls: int, rounds: int, against: Path | None) -> None:
    client = redis.Redis.from_url(url, decode_responses=True)
    sources = {"this meter.lua": meter_source(_ROOT / "src")}
    if against is not None:
        sources[f"meter.lua of {against}"] = meter_source(against)
    cases: list[tuple[str, str, Call, dict[str, str]]] = []
    floor_call: Call = (["ksscripts-floor"], [])
    floor_sha = client.script_load("return redis.call('GET', KEYS[1])")
    cases.append(("floor: one GET", floor_sha, floor_call, {}))  # first: the others need it
    cases.append(("empty script (return 1)", client.script_load("return 1"), floor_call, {}))
    for label, limit in (("unlimited", None), ("monthly limit", 10**9)):
        call, expect = captured_call(url, limit)
        for name, source in sources.items():
            sha = client.script_load(source)
            for key, value in expect.items():
                client.set(key, value, ex=3600)
            reply = client.evalsha(sha, len(call[0]), *call[0], *call[1])
            if reply[0] != "ok":
                raise SystemExit(f"{name} answered {reply[0]!r} to a warm call: not comparable")
            cases.append((f"{name}, {label}", sha, call, expect))
    print(f"load average at start: {os.getloadavg()}")
    results: dict[tuple[str, bool], list[float]] = {}
    over: dict[tuple[str, bool], list[float]] = {}
    for _ in range(rounds):
        for piped in (False, True):
            floor = 0.0
            for name, sha, call, expect in cases:
                for key, value in expect.items():
                    client.set(key, value, ex=3600)
                micros = server_micros(client, sha, call, calls, piped)
                floor = micros if name.startswith("floor") else floor
                results.setdefault((name, piped), []).append(micros)
                over.setdefault((name, piped), []).append(micros - floor)
    client.close()
    print(f"{rounds} interleaved rounds of {calls} calls; Redis server time per EVALSHA")
    for piped in (False, True):
        print(f"\n{'one at a time' if not piped else f'pipelines of {PIPELINE}'}")
        print(f"{'script':48} {'µs/call (med min max)':>23} {'µs over floor (med min max)':>28}")
        for name, *_ in cases:
            print(f"{name:48} {spread(results[(name, piped)]):>23} {spread(over[(name, piped)]):>28}")
    print(f"\nload average at end: {os.getloadavg()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="per script, round and mode")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--against", type=Path, help="another checkout's src directory")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ksscripts-") as tmp, private_redis(Path(tmp)) as url:
        if url is None:
            raise SystemExit("needs redis-server on PATH (Debian: apt-get install redis-server)")
        bench(url, args.calls, args.rounds, args.against)


if __name__ == "__main__":
    main()
