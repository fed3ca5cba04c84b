"""Waiting for something another thread or process does, without timing anything."""

from __future__ import annotations

import time
from collections.abc import Callable


def eventually(condition: Callable[[], bool], timeout: float) -> bool:
    """Whether ``condition()`` becomes true within ``timeout`` seconds (an upper bound only:
    it returns as soon as the condition holds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True
