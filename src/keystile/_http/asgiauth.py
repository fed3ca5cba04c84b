"""A key's permissions as an ASGI app's authentication scopes, without a framework: the
Starlette adapter's ``request.auth`` is built from these."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from keystile._core.principal import grants

Made = TypeVar("Made")


class Scopes(tuple[str, ...]):
    """A key's permissions, sorted, as scopes; ``in`` grants as keystile does (``jobs:*``
    holds ``jobs:read``, ``*`` everything), so a framework's scope check agrees with
    keystile's ``requires``."""

    __slots__ = ()

    def __contains__(self, wanted: object) -> bool:
        return isinstance(wanted, str) and any(grants(held, wanted) for held in self)


class ByPermissions(dict[frozenset[str], Made]):
    """``make(permissions)``, made once per permission set and kept (at most ``limit``):
    a request reuses what the last one with the same permissions made."""

    def __init__(self, make: Callable[[frozenset[str]], Made], limit: int = 1024) -> None:
        super().__init__()
        self.make = make
        self.limit = limit

    def __missing__(self, permissions: frozenset[str]) -> Made:
        if len(self) >= self.limit:
            self.clear()  # far more permission sets than keys in use: start again
        made = self[permissions] = self.make(permissions)
        return made
