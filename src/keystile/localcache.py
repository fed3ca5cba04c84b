"""The in-process cache in front of Redis: verified credentials by digest, bounded LRU."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class LocalCache(Generic[T]):
    """Thread-safe TTL + LRU map. ``by_group`` lets a key's entries be dropped at once."""

    def __init__(self, size: int, clock: Callable[[], float]) -> None:
        self._size = size
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, str, T]] = OrderedDict()
        self._groups: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> T | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            expires, group, value = entry
            if expires <= self._clock():
                self._remove(key, group)
                return None
            self._entries.move_to_end(key)
            return value

    def put(self, key: str, group: str, value: T, ttl: float) -> None:
        if self._size == 0 or ttl <= 0:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._groups.get(old[1], set()).discard(key)
            self._entries[key] = (self._clock() + ttl, group, value)
            self._groups.setdefault(group, set()).add(key)
            while len(self._entries) > self._size:
                oldest, (_, oldest_group, _) = next(iter(self._entries.items()))
                self._remove(oldest, oldest_group)

    def drop(self, key: str) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._remove(key, entry[1])

    def drop_group(self, group: str) -> None:
        with self._lock:
            for key in self._groups.pop(group, set()):
                self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._groups.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def _remove(self, key: str, group: str) -> None:
        self._entries.pop(key, None)
        members = self._groups.get(group)
        if members is not None:
            members.discard(key)
            if not members:
                del self._groups[group]
