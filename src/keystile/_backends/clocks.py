"""The two clocks keystile reads, injectable so that tests move time instead of sleeping."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone


@dataclass(frozen=True, slots=True)
class Clocks:
    """``wall``: epoch seconds (expiry, billing periods, last use); ``monotonic``: seconds
    for durations only (cache lifetimes, failure windows, retry pacing)."""

    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.wall(), timezone.utc)
