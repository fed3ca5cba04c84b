"""Redis key names, without a Redis client: the core builds script calls from them.

Every key carries a hash tag, so multi-key scripts work on Redis Cluster: ``{a:<account>}``
for an account's state stamps and counters, ``{k:<kid>}`` for a credential's cached snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RedisKeys:
    prefix: str

    def state(self, account_id: str, kid: str) -> str:
        return f"{self.prefix}:{{a:{account_id}}}:v:{kid}"

    def snapshot(self, kid: str, digest: str) -> str:
        return f"{self.prefix}:{{k:{kid}}}:t:{digest}"

    def usage(self, account_id: str, period: str, environment: str) -> str:
        return f"{self.prefix}:{{a:{account_id}}}:u:{period}:{environment}"

    def limit(self, account_id: str, environment: str) -> str:
        return f"{self.prefix}:{{a:{account_id}}}:l:{environment}"

    def idempotency(self, account_id: str, digest: str) -> str:
        return f"{self.prefix}:{{a:{account_id}}}:i:{digest}"

    def leases(self, account_id: str, period: str, environment: str) -> str:
        return f"{self.prefix}:{{a:{account_id}}}:ls:{period}:{environment}"
