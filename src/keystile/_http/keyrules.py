"""The rules a new or changed key's fields obey, for forms that check them field by field
before asking the key manager (the Django admin).

They are pure and belong in the core: until they move there, adapters reach them here
rather than in :mod:`keystile._services`.
"""

from keystile._services.keys import (
    check_account,
    check_expiry,
    check_name,
    check_page_limit,
    check_permissions,
)

__all__ = ["check_account", "check_expiry", "check_name", "check_page_limit", "check_permissions"]
