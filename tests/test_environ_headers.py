"""A WSGI environ's headers, read lazily: a known key's request reads only the credential's
environ keys, and whatever reads every header (a ``page_cost`` callable, a refusal's
second look) gets them all, as ``environ_headers`` gives them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from keystile import AuthError, Keystile
from keystile._core.environheaders import EnvironHeaders, environ_headers
from keystile._core.errors import MALFORMED_CREDENTIALS


def environ_of(**headers: str) -> dict[str, Any]:
    environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.input": object()}
    environ.update({f"HTTP_{name.upper()}": value for name, value in headers.items()})
    return environ


def test_the_credential_pairs_are_environ_headers_own() -> None:
    environ = environ_of(
        authorization="Bearer t", x_api_key="a,b", x_account_id="acct", idempotency_key="o-1",
        accept="text/html, application/json", x_other="1",
    )  # fmt: skip
    environ["HTTP_X_API_SECRET"] = b"not text"  # not a WSGI header value: left out by both
    pairs = EnvironHeaders(environ).credential_pairs()
    scanned = {"authorization", "x-api-key", "x-api-secret", "x-account-id", "idempotency-key"}
    assert sorted(pairs) == sorted((k, v) for k, v in environ_headers(environ) if k in scanned)
    assert ("x-api-key", "a") in pairs and ("x-api-key", "b") in pairs  # a repeat, split back


def test_the_sequence_reads_as_environ_headers() -> None:
    environ = environ_of(authorization="Bearer t", accept="*/*")
    environ["CONTENT_TYPE"] = "application/json"
    headers = EnvironHeaders(environ)
    assert list(headers) == environ_headers(environ)
    assert len(headers) == 3 and headers[0] == environ_headers(environ)[0]
    assert "Bearer" not in repr(headers)


def test_a_known_key_reads_no_other_header(make_keystile: Callable[..., Keystile]) -> None:
    ks = make_keystile()
    token = ks.keys.create("acct_1", "k").token
    for _ in range(3):  # cold, remembered, ticketed
        headers = EnvironHeaders(environ_of(authorization=f"Bearer {token}", accept="*/*"))
        ks.settle(ks.authenticate(headers), 200)
    assert headers._decoded is None


def test_a_page_cost_callable_sees_every_header(make_keystile: Callable[..., Keystile]) -> None:
    seen: list[str | None] = []

    def cost(request: Any) -> int:
        seen.append(request.header("x-pages"))
        return 1

    ks = make_keystile(page_cost=cost)
    token = ks.keys.create("acct_1", "k").token
    for pages in ("1", "2"):
        headers = EnvironHeaders(environ_of(authorization=f"Bearer {token}", x_pages=pages))
        ks.settle(ks.authenticate(headers), 200)
    assert seen == ["1", "2"]


def test_a_credential_sent_twice_is_refused_when_its_key_is_known(
    make_keystile: Callable[..., Keystile],
) -> None:
    ks = make_keystile()
    token = ks.keys.create("acct_1", "k").token
    ks.settle(ks.authenticate(EnvironHeaders(environ_of(x_api_key=token))), 200)
    with pytest.raises(AuthError) as info:
        ks.authenticate(EnvironHeaders(environ_of(x_api_key=f"{token},{token}")))
    assert info.value.code == MALFORMED_CREDENTIALS.code
