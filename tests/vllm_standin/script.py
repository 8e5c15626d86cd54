"""What the stand-in answers: a :class:`Script` that a test changes between requests, and
:class:`WholeAnswer`, an answer already in memory for fake clients without any socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


class WholeAnswer:
    """An upstream answer already in memory (``gateway.client.UpstreamResponse``), for fake
    clients that stand in for a replica."""

    def __init__(self, status: int, body: bytes = b"", content_type: str = "text/plain") -> None:
        self.status, self.body, self.content_type = status, body, content_type

    async def read(self) -> bytes:
        return self.body

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self.body

    def unread(self) -> bytes:
        return b""

    def release(self) -> None:
        pass

    def abort(self) -> None:
        pass


@dataclass
class Script:
    """How the upstream answers; tests change it between requests."""

    models: list[str] = field(default_factory=lambda: ["tiny-llama"])
    # LoRA adapters held, name -> base model: listed in /v1/models with their "parent", as
    # vLLM lists an adapter from --lora-modules or one loaded at run time.
    adapters: dict[str, str] = field(default_factory=dict)
    chunks: int = 4
    chunk_delay: float = 0.0
    head_delay: float = 0.0  # before the response head (time to first byte)
    stall_after: int | None = None  # stream: after N chunks, wait for ``resume``
    break_after: int | None = None  # stream: drop the connection after N chunks
    statuses: list[int] = field(default_factory=list)  # answer these first, one per request
    error_body: dict[str, Any] | None = None  # the body sent with ``statuses``
    health_status: int = 200
    prompt_tokens: int = 7
    # As vLLM: usage on every chunk when stream_options asks for continuous_usage_stats.
    continuous_usage: bool = False
    tokens_per_chunk: int = 1  # completion tokens each chunk stands for (vLLM stream_interval)
    answer_usage: bool = True  # send usage at all (False: an upstream that never does)
    answer_extra: dict[str, Any] = field(default_factory=dict)  # fields after usage
    # As vLLM's --api-key: /v1 paths answer 401 without "Authorization: Bearer <api_key>".
    api_key: str | None = None
    models_status: int = 200  # the /v1/models answer's status
    health_delays: dict[int, float] = field(default_factory=dict)  # n-th /health (from 1): wait
    running: float = 0.0  # /metrics: vllm:num_requests_running
    waiting: float = 0.0  # /metrics: vllm:num_requests_waiting
    kv_cache_usage: float = 0.1  # /metrics: vllm:kv_cache_usage_perc
    start_time: float | None = None  # /metrics: process_start_time_seconds (a restart: a new one)
    name: str | None = None  # a replica's name, echoed as "replica" in its JSON answers
    down_status: int | None = None  # every path answers this (503: an engine starting or dead)
    # /metrics: vllm:generation_tokens_total and vllm:prompt_tokens_total start here; the
    # tokens the stand-in then answers with are added (a test may also raise them itself).
    generation_tokens_total: float = 0.0
    prompt_tokens_total: float = 0.0
    # A hung engine (stuck mid-step, e.g. a tensor-parallel collective that never returns):
    # /health stays 200, /metrics shows `running` (at least 1) requests and counters that no
    # longer move, and completions never answer.
    hung: bool = False
