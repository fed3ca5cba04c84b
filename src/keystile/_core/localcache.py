"""The in-process cache in front of Redis: verified credentials by digest, bounded LRU."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class LocalCache(Generic[T]):
    """Thread-safe TTL + LRU map. ``by_group`` lets a key's entries be dropped at once.

    Negative entries (wrong or unknown credentials) have their own LRU of the same size: a
    flood of junk tokens, which costs no argon2, must not push out the verified keys, whose
    eviction would."""

    def __init__(self, size: int, clock: Callable[[], float]) -> None:
        self._size = size
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, str, T]] = OrderedDict()
        self._negatives: OrderedDict[str, tuple[float, str, T]] = OrderedDict()
        self._groups: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        #: Changes whenever an entry is dropped, replaced or cleared (not when one expires or
        #: the bound pushes it out): read it before a store read, hand it to :meth:`put`, and
        #: a value read before a key changed is not cached after the change. What is built
        #: from entries (:mod:`keystile._core.warmtickets`) holds as long as it stays.
        self.epoch = 0

    def get(self, key: str, now: float | None = None) -> T | None:
        """``now``: the cache's clock, read already by the caller (a request reads it once).

        A hit takes no lock (every request makes two): each dictionary operation is atomic
        under the GIL, and a hit only reads, then moves its key to the end."""
        entries = self._entries
        entry = entries.get(key)
        if entry is None:
            entries = self._negatives
            entry = entries.get(key)
            if entry is None:
                return None
        expires, group, value = entry
        if expires <= (self._clock() if now is None else now):
            with self._lock:
                if entries.get(key) is entry:  # not replaced meanwhile
                    self._remove(key, group)
            return None
        try:
            entries.move_to_end(key)
        except KeyError:  # dropped meanwhile: this request still saw it, as before the drop
            pass
        return value

    def put(
        self,
        key: str,
        group: str,
        value: T,
        ttl: float,
        *,
        negative: bool = False,
        epoch: int | None = None,
    ) -> None:
        if self._size == 0 or ttl <= 0:
            return
        with self._lock:
            if epoch is not None and epoch != self.epoch:
                return  # a key changed since the value was read: it may be this one
            now = self._clock()
            replaced = self._entries.get(key)
            if replaced is not None and replaced[0] > now:  # a live verified value changed
                self.epoch += 1
            self._remove(key, None)
            entries = self._negatives if negative else self._entries
            entries[key] = (now + ttl, group, value)
            self._groups.setdefault(group, set()).add(key)
            while len(entries) > self._size:
                # (popitem, not an iterator: a lock-free get may reorder the entries)
                oldest, (_, oldest_group, _) = entries.popitem(last=False)
                self._leave_group(oldest, oldest_group)

    def expiry(self, key: str) -> float | None:
        """When ``key``'s entry expires (the cache's clock), None when there is none."""
        entry = self._entries.get(key) or self._negatives.get(key)
        return None if entry is None else entry[0]

    def drop(self, key: str) -> None:
        with self._lock:
            if self._remove(key, None):
                self.epoch += 1

    def drop_group(self, group: str) -> None:
        with self._lock:
            self.epoch += 1
            for key in self._groups.pop(group, set()):
                self._entries.pop(key, None)
                self._negatives.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self.epoch += 1  # a value read before the clear is not cached after it
            self._entries.clear()
            self._negatives.clear()
            self._groups.clear()

    def __len__(self) -> int:
        return len(self._entries) + len(self._negatives)

    def _remove(self, key: str, group: str | None) -> bool:
        """Whether ``key`` had an entry."""
        entry = self._entries.pop(key, None) or self._negatives.pop(key, None)
        if group is None:
            if entry is None:
                return False
            group = entry[1]
        self._leave_group(key, group)
        return entry is not None

    def _leave_group(self, key: str, group: str) -> None:
        members = self._groups.get(group)
        if members is not None:
            members.discard(key)
            if not members:
                del self._groups[group]
