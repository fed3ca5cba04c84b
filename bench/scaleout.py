"""keystile scaled out, on its own: the delayed-replies burst and the failovers of
tests/test_scaleout.py (its scenarios b and d), outside pytest, with a table of what happened.

    python bench/scaleout.py [--scenarios b-strict,b-fast,d-cluster-failover,...] [--store URL]
                             [--logs DIR]

It starts its own Redis Cluster behind fault proxies (b), a plain Redis Cluster and a Sentinel
setup (d) with the classes of tests/topologies.py, tests/proxied.py and tests/faults.py, and
``uvicorn --workers 4`` on tests/scaleout_app.py for each scenario, all on free 127.0.0.1
ports, stopped at the end.  The store is PostgreSQL (``--store``, else
KEYSTILE_TEST_POSTGRES_URL, else postgresql://127.0.0.1:5432/test), in a schema of its own,
dropped at the end.  Needs redis-server and redis-cli on PATH.

b: 1,000 concurrent requests against a monthly limit of 300 while 10% of Redis replies are
delayed past ``redis_timeout``, then sequential requests after each flush until a 429 (faults
on), then once more with the faults off.  d: 50 concurrent requests in a loop while the master
of the account's slot fails over (CLUSTER FAILOVER), is killed, or Sentinel fails over; "heal"
is the seconds from the failover call to the first 20 consecutive 200s after the first error.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds bench/http.py, which must not shadow the standard library's http.
_HERE = str(Path(__file__).resolve().parent)
_ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _HERE]
sys.path[:0] = [str(_ROOT / "src"), str(_ROOT)]  # keystile, and the tests package

import argparse  # noqa: E402
import contextlib  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any  # noqa: E402

from tests.proxied import ProxiedCluster  # noqa: E402
from tests.services import DEFAULT_POSTGRES_URL, POSTGRES_URL_ENV, postgres_schema_scope  # noqa: E402
from tests.test_scaleout import (  # noqa: E402
    EVENTS,
    Deployment,
    Figures,
    burst_under_faults,
    failover_under_traffic,
    search_path_url,
    table,
)
from tests.topologies import Cluster, SentinelSetup  # noqa: E402

SCENARIOS = ("b-strict", "b-fast", *(f"d-{event}" for event in EVENTS))


class Topologies:
    """Each topology started on first use, all stopped at the end."""

    def __init__(self, base: Path) -> None:
        self._base = base
        self._made: dict[str, Any] = {}
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            raise SystemExit("needs redis-server and redis-cli on PATH")
        self._makers: dict[str, Callable[[Path], Any]] = {
            "proxied": lambda d: ProxiedCluster(server, cli, d),
            "cluster": lambda d: Cluster(server, cli, d),
            "sentinel": lambda d: SentinelSetup(server, d),
        }

    def get(self, name: str) -> Any:
        if name not in self._made:
            workdir = self._base / name
            workdir.mkdir()
            topology = self._makers[name](workdir)
            try:
                topology.start()
            except BaseException:
                topology.stop()
                raise
            self._made[name] = topology
        return self._made[name]

    def stop(self) -> None:
        for topology in self._made.values():
            topology.stop()


@contextlib.contextmanager
def deployment(kind: str, setup: Any, consistency: str, store: str, log: Path) -> Iterator[Any]:
    d = Deployment.start(kind, setup, consistency, store, log)
    try:
        yield d
    finally:
        d.close()
        lines = d.server.warnings()
        if lines:
            common = "; ".join(f"{n} x {line}" for line, n in lines.most_common(3))
            print(f"  {d.name} log: {common}")


def run(scenario: str, topologies: Topologies, store: str, logs: Path) -> Figures:
    log = logs / f"{scenario}.log"
    if scenario.startswith("b-"):
        consistency = scenario[2:]
        proxied = topologies.get("proxied")
        with deployment("uvicorn", proxied, consistency, store, log) as d:
            result = burst_under_faults(d, proxied.proxies, f"b delayed replies {consistency}")
            return result.figures
    event = scenario[2:]
    setup = topologies.get("sentinel" if event.startswith("sentinel") else "cluster")
    with deployment("uvicorn", setup, "strict", store, log) as d:
        return failover_under_traffic(d, setup, event).figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=", ".join(SCENARIOS))
    parser.add_argument("--store", default=os.environ.get(POSTGRES_URL_ENV) or DEFAULT_POSTGRES_URL)
    parser.add_argument("--logs", type=Path, help="keep the servers' logs in this folder")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        raise SystemExit(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
    print(f"load average at start: {os.getloadavg()}")
    base = Path(tempfile.mkdtemp(prefix="keystile-scaleout-"))
    topologies = Topologies(base)
    rows: list[Figures] = []
    try:
        with postgres_schema_scope(args.store) as schema:
            store = search_path_url(args.store, schema)
            for scenario in chosen:
                print(f"{scenario} ...", flush=True)
                logs = args.logs or base
                logs.mkdir(parents=True, exist_ok=True)
                rows.append(run(scenario, topologies, store, logs))
    finally:
        topologies.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(table(rows))
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
