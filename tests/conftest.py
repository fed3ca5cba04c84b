"""Shared fixtures: fast argon2, engines on real Redis, a clock tests can move."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from keystile import Keystile
from keystile.stores import KeyStore, open_store

from .services import *  # noqa: F403  (the redis_* and postgres_* fixtures)
from .services import new_redis_prefix
from .topologies import *  # noqa: F403  (redis_cluster, redis_sentinel)

#: argon2 at its minimum cost: tests check behaviour, not hashing strength.
FAST_ARGON2 = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}
SECRET = "test-server-secret-0123456789"


class Clock:
    """Wall clock for an engine: starts at a fixed instant and moves only when told."""

    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def subprocess_environ() -> dict[str, str]:
    """This environment for a CLI or ``manage.py`` subprocess, without any ``KEYSTILE_*``
    variable or ``DJANGO_SETTINGS_MODULE``: the test sets what the command reads."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("KEYSTILE_") and k != "DJANGO_SETTINGS_MODULE"
    }


@pytest.fixture(autouse=True)
def _no_keystile_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine given no settings reads ``KEYSTILE_*``: the developer's shell must not reach
    the tests (``KEYSTILE_TEST_*`` say where the test servers are, and stay)."""
    for name in list(os.environ):
        if name.startswith("KEYSTILE_") and not name.startswith("KEYSTILE_TEST_"):
            monkeypatch.delenv(name)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_keystile() -> Iterator[Callable[..., Keystile]]:
    """Factory for engines on an in-memory store; ``make_keystile(redis_url=...)`` etc."""
    made: list[Keystile] = []

    def make(
        clock: Callable[[], float] | None = None,
        monotonic: Callable[[], float] | None = None,
        **settings: Any,
    ) -> Keystile:
        settings.setdefault("store", "memory://")
        settings.setdefault("argon2", FAST_ARGON2)
        engine = Keystile(settings, clock=clock, monotonic=monotonic)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


@pytest.fixture
def redis_settings(redis_url: str, redis_prefix: str) -> dict[str, Any]:
    """Settings that put an engine on the test Redis, under this test's own key prefix."""
    return {"redis_url": redis_url, "secret": SECRET, "redis_prefix": redis_prefix}


#: The Redis deployments the topology-wide suites run on.
TOPOLOGIES = ("single", "cluster", "sentinel")


def topology_settings(request: pytest.FixtureRequest, topology: str) -> dict[str, Any]:
    """Settings on the test Redis of ``topology``: the shared single server under the test's
    own prefix, or the private Cluster / Sentinel setup (a fresh prefix: nobody else's)."""
    if topology == "single":
        settings: dict[str, Any] = request.getfixturevalue("redis_settings")
        return dict(settings)
    setup = request.getfixturevalue(f"redis_{topology}")
    return {"redis_url": setup.url, "secret": SECRET, "redis_prefix": new_redis_prefix()}


@pytest.fixture
def shared_store() -> Iterator[KeyStore]:
    """One in-memory store for several engines: "processes" that share a database."""
    store = open_store("memory://")
    yield store
    store.close()
