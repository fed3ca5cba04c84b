"""The contract every key store keeps (defined in the core; re-exported here for store authors),
and the helpers of stores on SQL tables."""

from keystile._core import store as _contract
from keystile._core.store import *  # noqa: F403  (the whole contract, as its __all__ says)
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
    "decode_cursor",
    "encode_cursor",
    "like_escape",
]
__all__ += _contract.__all__
