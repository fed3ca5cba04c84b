"""Redis replies, read by hiredis (in C) with redis-py's error classes (``NoScriptError``,
``ResponseError``, ...), for keystile's own connections; and commands, packed by hiredis."""

from __future__ import annotations

from typing import Any

import hiredis
import redis.exceptions as rx
from redis._parsers import BaseParser

#: What a reader's ``gets()`` returns for "no complete reply yet" (False and None are replies).
NOT_ENOUGH_DATA = object()


def reply_reader(decode: bool) -> hiredis.Reader:
    text: dict[str, Any] = {"encoding": "utf-8", "errors": "strict"} if decode else {}
    return hiredis.Reader(
        protocolError=rx.InvalidResponse,
        replyError=BaseParser.parse_error,  # a reply error comes back as an instance
        notEnoughData=NOT_ENOUGH_DATA,
        **text,
    )


def pack(args: tuple[Any, ...]) -> bytes:
    """One command in RESP; refuses what redis-py refuses (None, bool, an empty command)."""
    if not args:  # Redis answers nothing to an empty command: replies would slip
        raise rx.DataError("empty command")
    try:
        packed: bytes = hiredis.pack_command(args)
        return packed
    except TypeError as exc:
        raise rx.DataError(str(exc)) from None
