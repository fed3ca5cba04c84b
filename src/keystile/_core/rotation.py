"""The signals of a rolled key's old secret: RFC 9745 ``Deprecation`` and RFC 8594 ``Sunset``.

Both give the moment the grace period ends. keystile keeps no time of the roll itself, and a
deprecation that takes effect when the secret stops working is what the client must act on.
"""

from __future__ import annotations

from datetime import datetime
from email.utils import format_datetime


def rotation_headers(grace_ends: datetime) -> list[tuple[str, str]]:
    """``Deprecation`` (a structured-field Date, ``@`` and epoch seconds) and ``Sunset`` (an
    HTTP-date) for a credential that works until ``grace_ends``."""
    return [
        ("deprecation", f"@{int(grace_ends.timestamp())}"),
        ("sunset", format_datetime(grace_ends, usegmt=True)),
    ]
