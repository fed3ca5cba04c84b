"""A WSGI environ's (or Django ``request.META``'s) headers, converted only when something reads
them all.

A request's credential is read from the five environ keys that can hold one
(:meth:`EnvironHeaders.credential_pairs`); converting every ``HTTP_*`` key to a header name
cost a Flask request without Redis a fifth of keystile's time in it. What does read them all
(a ``page_cost`` callable, ``trusted_proxies``, an Idempotency-Key) sees ``(lowercase name,
value)`` pairs, as from any adapter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keystile._core.credentials import CREDENTIAL_HEADERS, SCANNED_HEADERS
from keystile._core.lazyheaders import LazyHeaders

__all__ = ["EnvironHeaders", "environ_headers"]

#: (header name, its environ key), for the headers a credential is read from.
_SCANNED_KEYS = tuple(
    (name, "HTTP_" + name.upper().replace("-", "_")) for name in sorted(SCANNED_HEADERS)
)


def _add(headers: list[tuple[str, str]], name: str, value: str) -> None:
    # A WSGI server joins a header sent twice with ",", and no credential holds one: split
    # back, so that the core sees the repeat (and refuses it), as from every adapter.
    if "," in value and name in CREDENTIAL_HEADERS:
        headers.extend((name, part) for part in value.split(","))
    else:
        headers.append((name, value))


def environ_headers(environ: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The ``HTTP_*`` keys (and ``CONTENT_TYPE``/``CONTENT_LENGTH``) of a WSGI environ or a
    Django ``request.META``, as lowercase dashed names; a credential header sent more than
    once comes as its repeats."""
    headers: list[tuple[str, str]] = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            if isinstance(value, str):
                _add(headers, key[5:].lower().replace("_", "-"), value)
        elif (key == "CONTENT_TYPE" or key == "CONTENT_LENGTH") and isinstance(value, str):
            headers.append((key.lower().replace("_", "-"), value))
    return headers


class EnvironHeaders(LazyHeaders):
    """:func:`environ_headers` of ``environ``, a sequence of ``(str, str)`` when read."""

    __slots__ = ("environ",)

    def __init__(self, environ: Mapping[str, Any]) -> None:
        self.environ = environ
        self._decoded = None

    def credential_pairs(self) -> list[tuple[str, str]]:
        """The pairs of the headers a credential is read from, in a fixed order."""
        environ = self.environ
        pairs: list[tuple[str, str]] = []
        for name, key in _SCANNED_KEYS:
            value = environ.get(key)
            if isinstance(value, str):
                _add(pairs, name, value)
        return pairs

    def _convert(self) -> list[tuple[str, str]]:
        return environ_headers(self.environ)
