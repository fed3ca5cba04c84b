"""Client addresses behind trusted proxies, and allowlists (keystile._core.networks)."""

from __future__ import annotations

import ipaddress

import pytest

from keystile import ConfigError, Keystile
from keystile._core.errors import InvalidInput
from keystile._core.keyfields import check_networks
from keystile._core.networks import allowed, client_address, networks_of

PROXIES = networks_of(["10.0.0.0/8", "fd00::/8"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("203.0.113.9", [], "203.0.113.9"),
        ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),  # not a proxy: the header is ignored
        ("10.0.0.1", [], "10.0.0.1"),
        ("10.0.0.1", ["198.51.100.1"], "198.51.100.1"),
        ("10.0.0.1", ["1.1.1.1, 198.51.100.1"], "198.51.100.1"),
        ("10.0.0.1", ["198.51.100.1, 10.0.0.2"], "198.51.100.1"),
        ("10.0.0.1", ["1.1.1.1", "198.51.100.1"], "198.51.100.1"),  # repeated headers, in order
        ("10.0.0.1", ["10.0.0.3, 10.0.0.2"], "10.0.0.3"),  # every hop a proxy
        ("10.0.0.1", ["garbage, 198.51.100.1"], "198.51.100.1"),
        ("10.0.0.1", ["198.51.100.1, garbage"], None),
        ("fd00::1", ["[2001:db8::5]"], "2001:db8::5"),
        ("::ffff:10.0.0.1", ["198.51.100.1"], "198.51.100.1"),
        ("testclient", ["198.51.100.1"], None),
        (None, [], None),
        ("", [], None),
    ],
)
def test_client_address(peer: str | None, forwarded: list[str], client: str | None) -> None:
    headers = [("x-forwarded-for", value) for value in forwarded]
    found = client_address(peer, headers, PROXIES)
    assert found == (None if client is None else ipaddress.ip_address(client))


def test_allowed() -> None:
    office = networks_of(["198.51.100.0/24", "2001:db8::/32"])
    assert allowed(ipaddress.ip_address("198.51.100.255"), office)
    assert allowed(ipaddress.ip_address("2001:db8::1"), office)
    assert not allowed(ipaddress.ip_address("198.51.101.0"), office)
    assert not allowed(None, office)


def test_check_networks_normalises_and_names_the_field() -> None:
    assert check_networks("f", ["10.1.2.3/8", " 2001:DB8::1 ", "10.0.0.0/8"]) == (
        "10.0.0.0/8",
        "2001:db8::1/128",
    )
    assert check_networks("f", None) == () == check_networks("f", [])
    for bad in ("10.0.0.0/8", [1], ["10.0.0.0/33"], ["x" * 100], ["10.0.0.1"] * 101, 7):
        with pytest.raises(InvalidInput) as caught:
            check_networks("allowed_ips", bad)
        assert caught.value.field == "allowed_ips"


def test_bad_trusted_proxies_are_a_config_error(tmp_path: object) -> None:
    with pytest.raises(ConfigError, match=r"'trusted_proxies'.*not an IP"):
        Keystile({"store": "memory://", "trusted_proxies": ["10.0.0.0/8", "nope"]})
    with pytest.raises(ConfigError, match="'trusted_proxies'"):
        Keystile({"store": "memory://", "trusted_proxies": "10.0.0.0/8"})
