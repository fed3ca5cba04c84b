"""The contract every key store keeps (defined in the core; re-exported here for store authors)."""

from keystile._core.store import (
    BAD_CURSOR,
    KEY_COLUMNS,
    AccountLimit,
    AuditEntry,
    KeyStore,
    Page,
    SessionRecord,
    UsageDelta,
    UsageRow,
    decode_cursor,
    encode_cursor,
    fingerprint,
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
