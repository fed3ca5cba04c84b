"""The user DRF's ``request.user`` is for a request keystile authenticated: the API key.

It is what ``django.contrib.auth`` expects of a user (authenticated, active, a ``pk`` for
throttling and logs) but holds no Django permissions: keystile's are checked with
:class:`~keystile.drf.HasRequiredPermissions`. Its ``str`` and ``repr`` name the key, never a
secret.
"""

from __future__ import annotations

from typing import Any

from keystile import Principal

__all__ = ["KeyUser"]


class KeyUser:
    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False

    def __init__(self, principal: Principal) -> None:
        self.principal = principal
        self.pk = self.id = principal.key_id
        self.username = principal.name

    @property
    def account_id(self) -> str:
        return self.principal.account_id

    def get_username(self) -> str:
        return self.username

    def has_perm(self, perm: str, obj: Any = None) -> bool:
        return False

    def has_perms(self, perm_list: Any, obj: Any = None) -> bool:
        return False

    def has_module_perms(self, app_label: str) -> bool:
        return False

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyUser) and other.pk == self.pk

    def __hash__(self) -> int:
        return hash(self.pk)

    def __str__(self) -> str:
        return f"{self.username} ({self.pk})"

    def __repr__(self) -> str:
        return f"KeyUser(key_id={self.pk!r}, name={self.username!r})"
