"""The behaviour suite's fixtures: every test runs once per framework and backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from keystile import Keystile

from .harness import EXEMPT_PATHS, Harness
from .harness import HARNESSES as ASGI_HARNESSES
from .harness_sync import SYNC_HARNESSES

#: Every framework runs every case: a difference between them is a bug.
HARNESSES = {**ASGI_HARNESSES, **SYNC_HARNESSES}


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(params=["memory", "redis-strict", "redis-fast"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings for the engine: nothing more (in-memory only), or the test Redis in either
    consistency mode."""
    if request.param == "memory":
        return {}
    settings: dict[str, Any] = request.getfixturevalue("redis_settings")
    return {**settings, "consistency": request.param.removeprefix("redis-")}


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
