"""How the routing clients react to a failed command: a timeout has the cluster's slot map
(or the sentinels' primary) read again beside the next commands, which go on to the server
known; a lost connection has it read before them. No server is needed: nothing listens on
port 1, so the reads fail, and their failures are retrieved, not logged."""

from __future__ import annotations

import asyncio

import pytest
import redis.exceptions as rx

from keystile._core.redisurl import parse_redis_url
from keystile._redis.routing import ClusterMultiplexer, SentinelMultiplexer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_cluster_timeout_reads_the_map_beside_the_commands() -> None:
    client = ClusterMultiplexer(parse_redis_url("redis+cluster://127.0.0.1:1"), timeout=0.2)
    client._stale = False  # as after a map was read
    client._failed(rx.TimeoutError("no reply"))
    assert not client._stale  # the next commands go on to the primaries known
    running = client._mapping.running
    assert running is not None  # ... while the map is read again
    await asyncio.wait([running])
    assert client._mapping.running is None
    client._failed(rx.ConnectionError("lost"))
    assert client._stale  # read before the next command
    await client.aclose()


@pytest.mark.anyio
async def test_sentinel_timeout_asks_the_sentinels_beside_the_commands() -> None:
    target = parse_redis_url("redis+sentinel://127.0.0.1:1/mymaster")
    client = SentinelMultiplexer(target, timeout=0.2)
    client._primary = ("127.0.0.1", 2)
    client._failed(rx.TimeoutError("no reply"))
    assert client._primary == ("127.0.0.1", 2)
    running = client._asking.running
    assert running is not None
    await asyncio.wait([running])
    client._failed(rx.ConnectionError("lost"))
    assert client._primary is None
    await client.aclose()


@pytest.mark.anyio
async def test_a_slot_without_an_owner_has_the_map_read_again() -> None:
    """A map read mid-failover may leave a slot without a primary: the next command must read
    the map again, not fail on that slot until something else goes wrong."""
    client = ClusterMultiplexer(parse_redis_url("redis+cluster://127.0.0.1:1"), timeout=0.2)
    client._stale = False  # a map was read, and this slot had no owner in it
    with pytest.raises(rx.ClusterDownError):
        await client.execute_command("GET", "k")
    assert client._stale
    await client.aclose()
