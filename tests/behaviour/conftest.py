"""The behaviour suite's fixtures: every test runs once per framework and backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from keystile import Keystile

from ..conftest import TOPOLOGIES, topology_settings
from .harness import EXEMPT_PATHS, Harness
from .harness import HARNESSES as ASGI_HARNESSES
from .harness_sync import SYNC_HARNESSES

#: Every framework runs every case: a difference between them is a bug.
HARNESSES = {**ASGI_HARNESSES, **SYNC_HARNESSES}


# ----------------------------------------------------------------------------- fixtures


BACKENDS = ["memory"] + [
    f"{topology}-{mode}" for topology in TOPOLOGIES for mode in ("strict", "fast")
]


#: On a Cluster or Sentinel one async stack and one blocking stack run every case: below the
#: adapters the engine is the same for all, and these two drive both of its drivers.
TOPOLOGY_FRAMEWORKS = frozenset({"starlette", "flask"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        params = params.params if params is not None else {}
        backend, framework = params.get("backend", ""), params.get("framework")
        here = item.path.is_relative_to(Path(__file__).parent)
        on_topology = here and backend.startswith(("cluster-", "sentinel-"))
        if on_topology and framework is not None and framework not in TOPOLOGY_FRAMEWORKS:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings for the engine: nothing more (in-memory only), or a test Redis (one server,
    a Cluster, Sentinel) in either consistency mode."""
    if request.param == "memory":
        return {}
    topology, mode = request.param.split("-")
    return {**topology_settings(request, topology), "consistency": mode}


@pytest.fixture
def ks(make_keystile: Callable[..., Keystile], clock: Any, backend: dict[str, Any]) -> Keystile:
    engine = make_keystile(clock=clock, exempt_paths=EXEMPT_PATHS, **backend)
    assert engine.ready(10.0), "the invalidation channel never became healthy"
    return engine


@pytest.fixture(params=sorted(HARNESSES))
def framework(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def harness_for(framework: str) -> Iterator[Callable[[Keystile], Harness]]:
    """``harness_for(engine)``: the current framework's app on that engine."""
    made: list[Harness] = []

    def make(engine: Keystile) -> Harness:
        harness = HARNESSES[framework](engine)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


@pytest.fixture
def client(harness_for: Callable[[Keystile], Harness], ks: Keystile) -> Harness:
    return harness_for(ks)
