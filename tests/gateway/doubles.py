"""Test doubles for the gateway's own collaborators: a dict key store and a limiter that
records what the gateway reserves and settles. The vLLM stand-in the gateway proxies to is
``tests/vllm_standin/``."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.errors import RateLimitExceeded
from gateway.ledger import KeyBudgets


@dataclass
class Key:
    """Shaped like gateway.key_store.ApiKey (the fields the gateway reads)."""

    name: str
    rpm: int = 1000
    tpm: int = 1_000_000
    concurrency: int = 100
    max_tokens: int | None = None
    max_n: int | None = None
    max_best_of: int | None = None
    max_prompts: int | None = None
    max_completions: int | None = None
    models: list[str] = field(default_factory=list)
    budgets: KeyBudgets | None = None
    spill: bool = False
    on_premises: bool = False
    enabled: bool = True
    scheduling_priority: int = 0  # gateway.priority_class: interactive


class DictKeyStore:
    def __init__(self, keys: dict[str, Key]) -> None:
        self.keys = keys

    def authenticate(self, secret: str) -> Key | None:
        return self.keys.get(secret)

    def named(self, name: str) -> Key | None:
        return next((key for key in self.keys.values() if key.name == name), None)


@dataclass
class RecordedLease:
    reserved: int
    settled: list[int] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"x-ratelimit-remaining-tokens": str(1_000_000 - self.reserved)}

    async def settle(self, used_tokens: int) -> None:
        self.settled.append(used_tokens)


class RecordingLimiter:
    """Admits everything below ``refuse_above`` tokens and records every lease."""

    def __init__(self, refuse_above: int | None = None) -> None:
        self.refuse_above = refuse_above
        self.leases: list[RecordedLease] = []

    def early_refusal(self, key: Key) -> RateLimitExceeded | None:
        return None

    async def acquire(self, key: Key, tokens: int) -> RecordedLease:
        if self.refuse_above is not None and tokens > self.refuse_above:
            headers = {"x-ratelimit-limit-tokens": str(self.refuse_above)}
            raise RateLimitExceeded(
                "too many tokens", reason="tokens", retry_after=2.5, ratelimit_headers=headers
            )
        lease = RecordedLease(tokens)
        self.leases.append(lease)
        return lease
