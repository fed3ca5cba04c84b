"""Counter changes Redis did not confirm, to send again until it does.

Every call that changes a counter carries an id and a marker key (``once.lua``), so sending it
again is answered from the marker when the first one ran. Four kinds wait here:

* a settle or a lease report whose reply was lost twice: the same call, sent again;
* a meter call lost twice: ``resolve.lua`` with ``cancel`` (the request was refused: take the
  charge back if the call ran) or ``ensure`` (admitted without Redis: charge it if it did not);
* a lease call lost twice: ``lease_lost.lua``, which gives back what it granted, if it ran
  (this process never learned of those pages, and its reports would keep them leased).

Nothing is dropped from Redis to be rebuilt, so no counter ever loses another process's
unflushed charges because this one lost a reply.
"""

from __future__ import annotations

import itertools
import secrets
import threading
from dataclasses import dataclass
from typing import Any

from keystile._core.rediskeys import CALL_MARKER_TTL, RedisKeys

#: ARGV[1] of a counter-changing script: "1" when the call is sent again.
FIRST, AGAIN = "0", "1"


class CallIds:
    """Ids unique to each call: this process's random prefix and a counter."""

    def __init__(self) -> None:
        #: Unique to this process (this engine): it also names it in counters' pending fields.
        self.prefix = secrets.token_hex(6)
        self._next = itertools.count()

    def __call__(self) -> str:
        return f"{self.prefix}{next(self._next)}"  # next() on a count is atomic under the GIL


@dataclass(frozen=True, slots=True)
class Resend:
    """One script call to send again: ``script`` with ``keys`` and ``args`` as they were
    (``args[0]`` says it is sent again); ``counter``: the usage counter it changes;
    ``report``: the lease report it carries, if any."""

    script: str
    keys: list[str]
    args: list[Any]
    counter: tuple[str, str, str]
    report: Any = None


def resolution(
    keys: RedisKeys,
    charge: Any,
    call_keys: list[str] | None,
    gen: str,
    holder: str,
    *,
    admitted: bool,
) -> Resend:
    """The ``resolve.lua`` call for a meter call lost twice (``charge``: its Charge).
    ``call_keys``: its usage, idempotency and marker keys; None when there was no such call
    (a lease): then an admitted request is charged, under a marker no call set. ``gen``: the
    counter's generation when last seen ('' = never seen); ``holder``: this process in the
    counter's pending field (pending.lua)."""
    counter = charge.counter
    if call_keys is None:
        usage = keys.usage(*counter)
        call_keys = [usage, usage, keys.call(counter[0], "none-" + secrets.token_hex(8))]
    mode = "ensure" if admitted else "cancel"
    requests = 1 if charge.count_request else 0
    args = [mode, CALL_MARKER_TTL, charge.kid, charge.cost, requests, gen, holder]
    return Resend("resolve", call_keys, args, counter)


class Resends:
    """The queue, shared by request threads and the flusher."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[Resend] = []

    def add(self, resend: Resend) -> None:
        with self._lock:
            self._calls.append(resend)

    def take(self) -> list[Resend]:
        with self._lock:
            taken, self._calls = self._calls, []
        return taken

    def give_back(self, calls: list[Resend]) -> None:
        with self._lock:
            self._calls[:0] = calls  # ahead of newer ones: a counter's changes stay in order

    def drop_counter(self, counter: tuple[str, str, str]) -> None:
        """This process rebuilt ``counter`` from the store and its own unflushed charges, which
        hold what its resolutions and settles would have fixed. (Lease reports stay: the
        rebuild voided the leases, and a report of one adds what was really spent.)"""
        with self._lock:
            self._calls = [
                c for c in self._calls if c.script == "lease_report" or c.counter != counter
            ]

    def counters(self) -> set[tuple[str, str, str]]:
        with self._lock:
            return {c.counter for c in self._calls}

    def __len__(self) -> int:
        return len(self._calls)
