"""The contract every key store keeps (defined in the core; re-exported here for store authors),
and the helpers of stores on SQL tables."""

from keystile._core.store import (
    AccountLimit,
    AuditEntry,
    KeyStore,
    Page,
    SessionRecord,
    UsageDelta,
    UsageRow,
    fingerprint,
)
from keystile.stores.rows import (
    BAD_CURSOR,
    KEY_COLUMNS,
    decode_cursor,
    encode_cursor,
    like_escape,
)

__all__ = [
    "BAD_CURSOR",
    "KEY_COLUMNS",
    "AccountLimit",
    "AuditEntry",
    "KeyStore",
    "Page",
    "SessionRecord",
    "UsageDelta",
    "UsageRow",
    "decode_cursor",
    "encode_cursor",
    "fingerprint",
    "like_escape",
]
