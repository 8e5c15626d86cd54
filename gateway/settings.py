"""The gateway's settings, modelled once at the edge.

Sources, highest priority first:

1. constructor arguments (``vkit gateway --host/--port``, and tests),
2. environment variables ``VKIT_GATEWAY_<FIELD>``, nested with ``__``
   (``VKIT_GATEWAY_TIMEOUTS__FIRST_BYTE=30``); lists as JSON
   (``VKIT_GATEWAY_UPSTREAMS='["http://127.0.0.1:8000"]'``),
3. the YAML file given with ``vkit gateway --config FILE`` (same field names, nested mappings),
4. the defaults below.

Unknown fields are refused (``extra="forbid"``). Timeouts are in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)


class TimeoutSettings(BaseModel):
    """Layered upstream timeouts, seconds.

    ``connect``: TCP connect to an upstream; ``first_byte``: from sending the request to the
    response headers (vLLM sends them once the first token is ready when streaming);
    ``idle``: the longest gap between two stream chunks; ``total``: the whole request.
    """

    model_config = ConfigDict(extra="forbid")

    connect: float = Field(default=5.0, gt=0, description="TCP connect to an upstream")
    first_byte: float = Field(
        default=60.0, gt=0, description="request sent -> response head (504 after)"
    )
    idle: float = Field(default=30.0, gt=0, description="longest gap between stream chunks")
    total: float = Field(default=600.0, gt=0, description="whole request")


class CapSettings(BaseModel):
    """Token caps: ``default_max_tokens`` is injected when a request names none;
    a request above the cap (the key's ``max_tokens`` or ``max_tokens`` here, whichever is
    lower) is clamped or rejected with 400, per ``over_cap``."""

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


class RetrySettings(BaseModel):
    """Retries before the first byte (connection failures, 502, 503) on another upstream."""

    model_config = ConfigDict(extra="forbid")

    attempts: int = Field(default=3, ge=1, le=10, description="tries in all, across upstreams")
    backoff_initial: float = Field(default=0.05, ge=0, description="first backoff")
    backoff_max: float = Field(default=1.0, ge=0, description="longest backoff")


class HealthSettings(BaseModel):
    """Background readiness probing of every upstream (``/health`` and ``/v1/models``)."""

    model_config = ConfigDict(extra="forbid")

    interval: float = Field(default=5.0, gt=0, description="seconds between probes")
    timeout: float = Field(default=2.0, gt=0, description="per probe")
    expected_models: list[str] = Field(
        default_factory=list,
        description="models /v1/models must list for an upstream to be ready (empty: any one)",
    )


class GatewaySettings(BaseSettings):
    """Everything ``vkit gateway`` needs; see the module docstring for the sources."""

    model_config = SettingsConfigDict(
        env_prefix="VKIT_GATEWAY_",
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
    keys_file: Path | None = Field(default=None, description="YAML/TOML file of API keys")
    allow_anonymous: bool = Field(
        default=False, description="serve requests without a key (development only)"
    )
    redis_url: str | None = Field(
        default=None, description="share limits via Redis (else in memory)"
    )
    redis_fail_open: bool = Field(
        default=True, description="keep serving (True) or refuse (False) while Redis is unreachable"
    )
    host: str = Field(default="127.0.0.1", description="listen address")
    port: int = Field(default=8080, ge=0, le=65535, description="listen port")
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0, description="larger bodies get 413")
    timeouts: TimeoutSettings = TimeoutSettings()
    caps: CapSettings = CapSettings()
    retry: RetrySettings = RetrySettings()
    health: HealthSettings = HealthSettings()
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="debug | info | warning | error"
    )

    @field_validator("upstreams", mode="before")
    @classmethod
    def _split_comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                try:
                    return json.loads(value)
                except ValueError:
                    raise ValueError("not a JSON list of URLs") from None
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

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
    file; ``overrides`` (e.g. CLI flags) win over both."""

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
