"""Where a request comes from, and whether a key may be used from there.

The client is the server's peer address. ``X-Forwarded-For`` is read only when that peer is
one of the ``trusted_proxies``: then the client is the nearest address in it that is not a
trusted proxy (the right-most one: a client can write anything to the left of what its first
proxy appended). A peer or a forwarded address that does not parse is no client: a key with
an allowlist is refused, never let through.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Origin(Protocol):
    """What a request says of where it came from (``admission.RequestInfo`` is one)."""

    @property
    def peer(self) -> str | None: ...

    @property
    def headers(self) -> Sequence[tuple[str, str]]: ...


@dataclass(frozen=True, slots=True)
class RequestOrigin:
    """An :class:`Origin` for a caller that is not an admitted request (a login)."""

    peer: str | None
    headers: Sequence[tuple[str, str]]


@lru_cache(maxsize=4096)
def _address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.strip().removeprefix("[").partition("]")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack server's view of an IPv4 client
    return address


def networks_of(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """Networks from CIDRs already checked (``keyfields.check_networks``)."""
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def client_address(
    peer: str | None, headers: Sequence[tuple[str, str]], trusted: Sequence[Network]
) -> Address | None:
    """The request's client: ``peer``, or behind trusted proxies what they forwarded."""
    address = _address(peer) if peer else None
    if address is None or not trusted or not _within(address, trusted):
        return address
    forwarded = [v for k, v in headers if k == "x-forwarded-for"]
    hops = [hop for value in forwarded for hop in value.split(",")]
    for hop in reversed(hops[-64:]):
        address = _address(hop)
        if address is None or not _within(address, trusted):
            return address
    return address  # every hop a trusted proxy: the left-most one


def _within(address: Address, networks: Sequence[Network]) -> bool:
    return any(address in network for network in networks)


def allowed(address: Address | None, networks: Sequence[Network]) -> bool:
    """Whether a key restricted to ``networks`` may be used from ``address``."""
    return address is not None and _within(address, networks)
