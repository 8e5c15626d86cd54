"""The gateway's settings, modelled once at the edge.

Sources, highest priority first:

1. constructor arguments (``vkit gateway --host/--port``, and tests),
2. environment variables ``VKIT_GATEWAY_<FIELD>``, nested with ``__``
   (``VKIT_GATEWAY_TIMEOUTS__FIRST_BYTE=30``); lists as JSON
   (``VKIT_GATEWAY_UPSTREAMS='["http://127.0.0.1:8000"]'``),
3. the YAML file given with ``vkit gateway --config FILE`` (same field names, nested mappings),
4. the defaults below.

Unknown fields are refused (``extra="forbid"``), and so is an unknown ``VKIT_GATEWAY_*``
variable (:class:`UnknownSetting`, naming the closest valid one): pydantic-settings would
ignore ``VKIT_GATEWAY_UPSTREAM`` and serve from the default upstream. Timeouts are in seconds.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from gateway.spill_settings import SpillSettings

ENV_PREFIX = "VKIT_GATEWAY_"


class TimeoutSettings(BaseModel):
    """Layered upstream timeouts, seconds.

    ``connect``: TCP connect to an upstream; ``first_byte``: from sending the request to the
    response headers (vLLM sends them once the first token is ready when streaming);
    ``idle``: the longest gap between two stream chunks; ``total``: the whole request;
    ``client_write``: the longest the client may take to accept one write (a client that
    stops reading with its socket open is cut off after it, its upstream closed).

    ``total`` bounds the whole request, writes included: past it, a write may wait one
    second more (for the stream's closing error event), then the answer is abandoned. So
    ``client_write`` is never above ``total``: set above it, it is refused; left at its
    default, it is lowered to a shorter ``total``.
    """

    model_config = ConfigDict(extra="forbid")

    connect: float = Field(default=5.0, gt=0, description="TCP connect to an upstream")
    first_byte: float = Field(
        default=60.0, gt=0, description="request sent -> response head (504 after)"
    )
    idle: float = Field(default=30.0, gt=0, description="longest gap between stream chunks")
    total: float = Field(default=600.0, gt=0, description="whole request")
    client_write: float = Field(
        default=30.0,
        gt=0,
        description="longest wait for the client to take one write (at most total)",
    )

    @model_validator(mode="after")
    def _writes_end_with_the_request(self) -> TimeoutSettings:
        write, total = self.client_write, self.total
        if write > total:
            if "client_write" in self.model_fields_set:
                raise ValueError(
                    f"client_write ({write:g} s) must not be above total ({total:g} s): "
                    "the total deadline bounds the whole request, its writes included"
                )
            self.client_write = total
        return self


class CapSettings(BaseModel):
    """Token caps: ``default_max_tokens`` is injected when a request names none;
    a request above the cap (the key's ``max_tokens`` or ``max_tokens`` here, whichever is
    lower) is clamped or rejected with 400, per ``over_cap``.

    Fan-out bounds, each also settable per key (the lower one holds), a body over one
    refused with 400 naming the field: ``max_n`` (OpenAI's own bound on ``n``) and
    ``max_best_of`` completions per prompt, ``max_prompts`` in a batch (a completions
    ``prompt`` or embeddings ``input`` list: OpenAI's bound on an embeddings batch), and
    ``max_completions`` per request, prompts x ``max(n, best_of)``: what ``max_tokens``
    is reserved for."""

    model_config = ConfigDict(extra="forbid")

    default_max_tokens: int = Field(
        default=512, gt=0, description="injected when a request names no max_tokens"
    )
    max_tokens: int = Field(
        default=4096, gt=0, description="global cap (a key's max_tokens may be lower)"
    )
    over_cap: Literal["clamp", "reject"] = Field(
        default="clamp", description="above the cap: clamp, or reject with 400"
    )
    max_n: int = Field(default=128, ge=1, description="most completions per prompt (n)")
    max_best_of: int = Field(default=128, ge=1, description="most candidates per prompt (best_of)")
    max_prompts: int = Field(
        default=2048, ge=1, description="most prompts in a batch (prompt or input list)"
    )
    max_completions: int = Field(
        default=2048, ge=1, description="most completions per request: prompts x max(n, best_of)"
    )


class RetrySettings(BaseModel):
    """Retries on another upstream, only of attempts no upstream can have started:
    connection failures, 503, an answer that is not HTTP (see :mod:`gateway.upstream_call`)."""

    model_config = ConfigDict(extra="forbid")

    attempts: int = Field(default=3, ge=1, le=10, description="tries in all, across upstreams")
    backoff_initial: float = Field(default=0.05, ge=0, description="first backoff")
    backoff_max: float = Field(default=1.0, ge=0, description="longest backoff")


class HealthSettings(BaseModel):
    """Background readiness probing of every upstream (``/health`` and ``/v1/models``).

    ``canary_interval`` turns on the canary: a one-token completion per ready upstream at
    most that often, which must succeed within ``canary_timeout`` for it to stay ready
    (:mod:`gateway.health`). The canary waits in vLLM's queue like any request: keep
    ``canary_timeout`` above the queueing a busy replica may show, or load takes it out.
    """

    model_config = ConfigDict(extra="forbid")

    interval: float = Field(default=5.0, gt=0, description="seconds between probes")
    timeout: float = Field(default=2.0, gt=0, description="per probe")
    failure_threshold: int = Field(
        default=3,
        ge=1,
        description="probes in a row with no answer in time before a ready upstream is out "
        "(an answer that says not ready counts at once)",
    )
    expected_models: list[str] = Field(
        default_factory=list,
        description="models /v1/models must list for an upstream to be ready (empty: any one)",
    )
    canary_interval: float | None = Field(
        default=None,
        gt=0,
        description="seconds between one-token canary generations per upstream (unset: none)",
    )
    canary_timeout: float = Field(default=30.0, gt=0, description="per canary generation")
    canary_prompt: str = Field(default="Hi", min_length=1, description="the canary's prompt")


class TokenizerSettings(BaseModel):
    """Where the gateway finds each model's tokenizer, to count prompt tokens as vLLM does.

    ``models`` maps a model name (as clients send it) to the model's directory (its
    ``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``) or to a Hugging
    Face repo id looked up in ``hf_cache``:
    ``VKIT_GATEWAY_TOKENIZERS__MODELS='{"llama-3.1-8b": "meta-llama/Llama-3.1-8B-Instruct"}'``.
    Other models are counted by a byte bound (``gateway.prompt_tokens.ByteBound``, with the
    template allowances below); so are texts longer than ``max_tokenized_chars``, and bodies
    whose count takes longer than ``count_budget`` s. Bodies over ``count_inline_bytes`` are
    counted on a worker thread, beside the event loop (``gateway.prompt_budget``).
    """

    model_config = ConfigDict(extra="forbid")

    models: dict[str, str] = Field(
        default_factory=dict, description="model name -> model directory or HF repo id"
    )
    hf_cache: Path = Field(
        default=Path("~/.cache/huggingface/hub"), description="Hugging Face hub cache"
    )
    max_tokenized_chars: int = Field(
        default=65536, ge=0, description="longer prompt texts get the byte bound (CPU)"
    )
    count_budget: float = Field(
        default=0.1, gt=0, description="seconds one request's count may take; then the byte bound"
    )
    count_inline_bytes: int = Field(
        default=16384, ge=0, description="larger bodies are counted on a worker thread"
    )
    message_overhead: int = Field(
        default=8, ge=0, description="byte bound: template tokens per chat message"
    )
    request_overhead: int = Field(
        default=64, ge=0, description="byte bound: template tokens per chat request"
    )


class RouterSettings(BaseModel):
    """The aware router (``routing: aware``, :mod:`gateway.routing`): the upstreams are the
    vLLM replicas themselves, each one's ``/metrics`` scraped every ``scrape_interval`` s.

    A request whose leading content (system prompt and first messages, or a completion
    prompt) has at least ``min_prefix_chars`` of its first ``prefix_chars`` characters goes
    to its key's replica: where it went before (``key_table_size`` keys unused for less than
    ``key_idle_ttl`` s are remembered), else the first on its consistent-hash ring
    (``virtual_nodes`` points per replica) holding no more than its share of the keys;
    unless that would put it above ``(1 + epsilon) x`` the mean load and more than
    ``spill_margin`` requests ahead of the least loaded one: then the next on the ring.
    Other requests go to the least loaded replica. A scrape older than ``stale_after`` s
    counts for nothing (the gateway's own in-flight counts decide). When every ready
    replica's queue (``vllm:num_requests_waiting``) is above ``max_waiting``, the request
    is refused with 503 + ``Retry-After`` (``null``: never).

    ``spill_margin`` is 8 as AIBrix's prefix-cache router (it leaves affinity when the
    busiest pod runs more than 8 requests beyond the idlest; SGLang's router waits for 32 and
    1.5x the mean): vLLM batches what a replica runs, so a few more running requests cost a
    decode step little, while a spill recomputes the whole shared prefix elsewhere and
    evicts another tenant's from that cache. 2 spilled one prefix turn in eight at four in
    flight on two replicas (README, routing table).
    """

    model_config = ConfigDict(extra="forbid")

    scrape_interval: float = Field(default=1.0, gt=0, description="seconds between scrapes")
    stale_after: float = Field(default=3.0, gt=0, description="a scrape older counts for nothing")
    epsilon: float = Field(default=0.25, gt=0, description="bounded load: (1 + epsilon) x mean")
    spill_margin: int = Field(
        default=8,
        ge=0,
        description="a replica takes its own keys while that leaves it at most this "
        "many requests ahead of the least loaded one",
    )
    prefix_chars: int = Field(default=2048, ge=1, description="leading characters in the key")
    min_prefix_chars: int = Field(
        default=64, ge=0, description="shorter leading content: least loaded, no affinity"
    )
    virtual_nodes: int = Field(default=64, ge=1, le=1024, description="ring points per replica")
    key_table_size: int = Field(
        default=8192,
        ge=0,
        le=1_000_000,
        description="active prefix keys remembered with their replica, spread evenly "
        "(0: the ring owner alone)",
    )
    key_idle_ttl: float = Field(
        default=600.0, gt=0, description="a key unused this long (s) is placed afresh"
    )
    max_waiting: int | None = Field(
        default=256, ge=0, description="queue bound per replica for 503 overload (null: none)"
    )


class HoldSettings(BaseModel):
    """Holding requests while no upstream is ready (scale to zero, a restart): with
    ``max_wait`` set, a request that finds no ready upstream waits up to ``max_wait`` s for
    one, at most ``max_queued`` at a time; past either bound it gets 503 + ``Retry-After``.
    While requests wait, upstreams are probed every ``probe_interval`` s."""

    model_config = ConfigDict(extra="forbid")

    max_wait: float | None = Field(
        default=None, gt=0, description="longest wait for a ready upstream, s (null: no holding)"
    )
    max_queued: int = Field(default=100, ge=1, description="requests waiting at most")
    probe_interval: float = Field(default=0.5, gt=0, description="probe period while holding")


class DiscoverySettings(BaseModel):
    """Where the upstream list comes from besides ``upstreams`` (which it then replaces),
    looked at every ``interval`` s: ``file`` (one base URL per line, ``#`` comments), or DNS:
    every A/AAAA record (e.g. of a Kubernetes headless Service) of ``dns_name`` and of each
    of ``dns_names``, as ``scheme://address:port``. A ``dns_names`` entry is ``"name"``
    (port ``dns_port``) or ``"name:port"``: one name per replica group, each group's
    replicas then found whole
    (``VKIT_GATEWAY_DISCOVERY__DNS_NAMES='["chat-a", "embed:8001"]'``, or comma-separated)."""

    model_config = ConfigDict(extra="forbid")

    file: Path | None = Field(default=None, description="file of upstream base URLs")
    dns_name: str | None = Field(default=None, description="name whose A records are upstreams")
    dns_names: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="names whose A records are upstreams, each 'name' or 'name:port' "
        "(a JSON list or comma-separated)",
    )
    dns_port: int = Field(default=8000, ge=1, le=65535, description="port of DNS upstreams")
    scheme: Literal["http", "https"] = Field(default="http", description="of DNS upstreams")
    interval: float = Field(default=5.0, gt=0, description="seconds between look-ups")

    @field_validator("dns_names", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        return json_or_comma_list(value, "names")

    @field_validator("dns_names")
    @classmethod
    def _names_and_ports(cls, names: list[str]) -> list[str]:
        for entry in names:
            dns_target(entry, 1)  # raises for a bad entry
        return names

    @model_validator(mode="after")
    def _one_source(self) -> DiscoverySettings:
        if self.file is not None and (self.dns_name is not None or self.dns_names):
            raise ValueError("discovery: set file or DNS names, not both")
        return self

    @property
    def dns_targets(self) -> list[tuple[str, int]]:
        """Every DNS name to look up, with its port: ``dns_name``'s, then ``dns_names``'."""
        names = ([self.dns_name] if self.dns_name is not None else []) + self.dns_names
        targets: list[tuple[str, int]] = []
        for entry in names:
            target = dns_target(entry, self.dns_port)
            if target not in targets:
                targets.append(target)
        return targets


def json_or_comma_list(value: object, what: str) -> object:
    """A list given as one string (an environment variable): a JSON list, or the parts
    between commas; anything else as it is."""
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError(f"not a JSON list of {what}") from None
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def dns_target(entry: str, default_port: int) -> tuple[str, int]:
    """``"name"`` or ``"name:port"`` as ``(name, port)``; ValueError for anything else."""
    name, colon, port = entry.strip().rpartition(":")
    if not colon:  # no port: the whole entry is the name
        name, port = port, ""
    if colon and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"discovery: {entry!r} is not 'name' or 'name:port' (port 1-65535)")
    if not name or any(c.isspace() or c in "/[]@" for c in name):
        raise ValueError(f"discovery: {entry!r} is not 'name' or 'name:port'")
    return name, int(port) if colon else default_port


class LedgerSettings(BaseModel):
    """The usage ledger (:mod:`gateway.ledger`, docs/usage-ledger.md): usage per key, model
    and hour in a database, key budgets over a day, week, month and in total, and dollars
    from each replica group's price per hour.

    ``url``: ``sqlite:///PATH`` (one gateway) or ``postgresql://user:pass@host/db`` (several
    gateways sharing usage and budgets); unset, ``usage.sqlite3`` beside the keys file. Usage
    is written every ``flush_interval`` s (the most a crash can lose); budgets are read back
    every ``budget_refresh`` s (how far several gateways may overshoot a budget together).
    While the database is away up to ``max_backlog_rows`` rows (key x model x hour) are kept
    for it. ``prices``: model -> dollars per hour of the replica group serving it.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="keep the usage ledger")
    url: str | None = Field(
        default=None,
        description="sqlite:///PATH or postgresql://...; unset: usage.sqlite3 beside the keys file",
    )
    flush_interval: float = Field(
        default=1.0, gt=0, le=60, description="seconds between writes (the most a crash loses)"
    )
    budget_refresh: float = Field(
        default=5.0, gt=0, description="seconds between reads of every key's spending"
    )
    max_backlog_rows: int = Field(
        default=100_000, ge=1, description="rows kept while the database is away"
    )
    prices: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict, description="model -> dollars per hour of its replica group"
    )


class GatewaySettings(BaseSettings):
    """Everything ``vkit gateway`` needs; see the module docstring for the sources."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    upstreams: Annotated[list[HttpUrl], NoDecode] = Field(
        default_factory=lambda: [HttpUrl("http://127.0.0.1:8000")],
        min_length=1,
        description="base URLs of NGINX or the vLLM replicas (without /v1), "
        "a JSON list or comma-separated",
    )
    upstream_api_key: SecretStr | None = Field(default=None, description="vLLM's --api-key, if set")
    upstream_priority: bool = Field(
        default=True,
        description="the upstreams run vLLM's --scheduling-policy priority (every replica the "
        "kit starts does): a key's class goes to them as the body's priority; false for "
        "replicas on fcfs, which refuse any priority but 0",
    )
    keys_file: Path | None = Field(default=None, description="YAML/TOML file of API keys")
    allow_anonymous: bool = Field(
        default=False, description="serve requests without a key (development only)"
    )
    redis_url: str | None = Field(
        default=None, description="share limits via Redis (else in memory)"
    )
    redis_fail_open: bool = Field(
        default=True,
        description="while Redis is unreachable: serve without per-key limits (True) or "
        "refuse with 503 (False); either way, releases are kept and written when it returns "
        "(docs/shared-limits.md)",
    )
    host: str = Field(default="127.0.0.1", description="listen address")
    port: int = Field(default=8080, ge=0, le=65535, description="listen port")
    # The admin listener: /metrics, /readyz with each upstream's state, /openapi.json and
    # /redoc. Off unless a port is set, so that no fixed port collides with Prometheus
    # (9090) or a second gateway on the host; the deploy files set it.
    admin_host: str = Field(default="127.0.0.1", description="admin listener address")
    admin_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="admin listener port (/metrics, detailed /readyz, /openapi.json, /redoc); "
        "unset: none",
    )
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0, description="larger bodies get 413")
    max_body_values: int = Field(
        default=262_144,
        ge=16,
        description="JSON values (arrays, objects, strings, numbers) in a body; more get 400 "
        "before it is parsed (the event loop's work per request)",
    )
    max_body_containers: int = Field(
        default=16_384,
        ge=16,
        description="JSON arrays and objects in a body, the costliest values to parse; more "
        "get 400 before it is parsed",
    )
    max_in_flight: int | None = Field(
        default=1000,
        ge=1,
        description="requests in flight in this process; more get 503 + Retry-After "
        "(null: unbounded)",
    )
    default_key_concurrency: int | None = Field(
        default=64,
        ge=1,
        description="requests in flight per key whose entry sets no concurrency; more get 429 "
        "(null: unlimited)",
    )
    timeouts: TimeoutSettings = TimeoutSettings()
    caps: CapSettings = CapSettings()
    retry: RetrySettings = RetrySettings()
    health: HealthSettings = HealthSettings()
    tokenizers: TokenizerSettings = TokenizerSettings()
    routing: Literal["round_robin", "aware"] = Field(
        default="round_robin",
        description="round_robin: through the listed upstreams (NGINX); aware: the listed "
        "upstreams are the vLLM replicas, routed by load and prompt prefix",
    )
    router: RouterSettings = RouterSettings()
    hold: HoldSettings = HoldSettings()
    discovery: DiscoverySettings = DiscoverySettings()
    ledger: LedgerSettings = LedgerSettings()
    spill: SpillSettings = SpillSettings()  # the remote endpoint of last resort (gateway.spill)
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="debug | info | warning | error"
    )

    @field_validator("upstreams", mode="before")
    @classmethod
    def _split_comma_list(cls, value: object) -> object:
        return json_or_comma_list(value, "URLs")

    @model_validator(mode="after")
    def _one_key_never_takes_every_slot(self) -> GatewaySettings:
        bound, per_key = self.max_in_flight, self.default_key_concurrency
        if bound is not None and per_key is not None and per_key >= bound:
            raise ValueError(
                f"default_key_concurrency ({per_key}) must be below max_in_flight ({bound}), "
                "or one key could take every slot"
            )
        return self

    @model_validator(mode="after")
    def _holding_ends_before_the_request_does(self) -> GatewaySettings:
        wait, total = self.hold.max_wait, self.timeouts.total
        if wait is not None and wait >= total:
            raise ValueError(
                f"hold.max_wait ({wait:g} s) must be below timeouts.total ({total:g} s): "
                "a held request's time counts toward its whole duration"
            )
        return self

    @model_validator(mode="after")
    def _ledger_has_a_place(self) -> GatewaySettings:
        if self.ledger.enabled and self.ledger.url is None and self.keys_file is None:
            raise ValueError("ledger: set ledger.url, or a keys_file to keep it beside")
        return self

    @property
    def ledger_url(self) -> str | None:
        """The ledger's database URL, or ``None`` when there is no ledger."""
        if not self.ledger.enabled:
            return None
        if self.ledger.url is not None:
            return self.ledger.url
        assert self.keys_file is not None
        return f"sqlite:///{self.keys_file.parent / 'usage.sqlite3'}"

    @property
    def upstream_urls(self) -> list[str]:
        """Base URLs without a trailing slash."""
        return [str(url).rstrip("/") for url in self.upstreams]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, YamlConfigSettingsSource(settings_cls)


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: object,
) -> GatewaySettings:
    """Read the environment (``os.environ``, or ``environ`` when given) and the optional YAML
    file; ``overrides`` (e.g. CLI flags) win over both. An unknown ``VKIT_GATEWAY_*`` name
    raises :class:`UnknownSetting`."""
    check_environment(os.environ if environ is None else environ)

    class _Loaded(GatewaySettings):
        model_config = SettingsConfigDict(yaml_file=config_file)

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            env = env_settings if environ is None else _MappingEnvSource(settings_cls, environ)
            return init_settings, env, YamlConfigSettingsSource(settings_cls)

    return _Loaded(**overrides)  # type: ignore[arg-type]


class _MappingEnvSource(EnvSettingsSource):
    """The environment source, reading a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = dict(environ)
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name.lower(): value for name, value in self._environ.items()}


class UnknownSetting(ValueError):
    """A ``VKIT_GATEWAY_*`` variable that no setting reads; the message names the closest one."""


def env_names(model: type[BaseModel] = GatewaySettings, prefix: str = ENV_PREFIX) -> Iterator[str]:
    """Every variable the settings read: each field, and each field of a section after ``__``
    (a section's own name takes the whole section as JSON)."""
    for name, info in model.model_fields.items():
        yield prefix + name.upper()
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from env_names(annotation, f"{prefix}{name.upper()}__")


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse a ``VKIT_GATEWAY_*`` name (any case, like pydantic-settings) that no setting
    reads, suggesting the closest valid name."""
    valid = set(env_names())
    for name in environ:
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in valid:
            continue
        close = difflib.get_close_matches(upper, sorted(valid), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else "; see 'vkit gateway --help'"
        raise UnknownSetting(f"unknown setting {name} in the environment{hint}")
