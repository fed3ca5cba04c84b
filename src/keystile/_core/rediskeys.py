"""Redis key names, without a Redis client: the core builds script calls from them.

Every key carries a hash tag, so multi-key scripts work on Redis Cluster: ``{a:<account>}``
for an account's state stamps and counters, ``{k:<kid>}`` for a credential's cached snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RedisKeys:
    prefix: str

    def _account(self, account_id: str, rest: str) -> str:
        # One hash tag per account: its stamps and counters share a Redis Cluster slot.
        return f"{self.prefix}:{{a:{account_id}}}:{rest}"

    def state(self, account_id: str, kid: str) -> str:
        return self._account(account_id, f"v:{kid}")

    def snapshot(self, kid: str, digest: str) -> str:
        return f"{self.prefix}:{{k:{kid}}}:t:{digest}"

    def usage(self, account_id: str, period: str, environment: str) -> str:
        return self._account(account_id, f"u:{period}:{environment}")

    def limit(self, account_id: str, environment: str) -> str:
        return self._account(account_id, f"l:{environment}")

    def rate(self, account_id: str, kid: str) -> str:
        """A rate-limited key's next-free time (µs; ``meter.lua``), per account it acts for
        (its own, or one ``x-account-id`` names): the script's keys share that slot."""
        return f"{self.prefix}:{{a:{account_id}}}:r:{kid}"

    def idempotency(self, account_id: str, digest: str) -> str:
        return self._account(account_id, f"i:{digest}")

    def leases(self, account_id: str, period: str, environment: str) -> str:
        return self._account(account_id, f"ls:{period}:{environment}")

    def call(self, account_id: str, call_id: str) -> str:
        """A counter-changing call's marker (``once.lua``): it holds the reply for a retry."""
        return self._account(account_id, f"c:{call_id}")

    def kids(self) -> str:
        """The set of every existing key id; holding :data:`KIDS_READY` too once it was
        seeded from the store in full (so that an evicted or flushed set is never ready)."""
        return f"{self.prefix}:{{kids}}"

    def kids_lock(self) -> str:
        """Held (SET NX EX) by the one engine seeding :meth:`kids` from the store."""
        return f"{self.prefix}:{{kids}}:seeding"


#: How long a call's marker is kept, so the call can be sent again: at once after a lost
#: reply, and by the next flushes while Redis does not answer. A resolution later than this
#: (an outage that long) presumes the call did not run.
CALL_MARKER_TTL = 120

#: The member of :meth:`RedisKeys.kids` meaning "seeded": never a key id (those are base62).
KIDS_READY = "*ready"
#: A seeded set lives this long, then is seeded anew from the store: the bound on how long a
#: key that reached the store some other way (an older keystile, a script) stays unknown.
KIDS_RESEED_SECONDS = 900
