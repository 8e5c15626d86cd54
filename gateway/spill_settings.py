"""The spill-over endpoint's settings: a remote OpenAI-compatible endpoint of last resort.

    spill:
      url: https://api.runpod.ai/v2/ENDPOINT_ID/openai   # base URL, without /v1
      name: runpod                  # its label in metrics and the usage ledger
      api_key_file: /etc/vkit/runpod.key
      models: {tiny-llama: TinyLlama/TinyLlama-1.1B-Chat-v1.0}
      required: true                # start-up refused when its /v1/models does not answer

Unset ``url``: no spill-over. Which requests spill, and when, is :mod:`gateway.spill`'s.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, SecretStr, model_validator

LOCAL = "local"  # the backend label of the gateway's own replicas: no remote may take it


class SpillError(ValueError):
    """The spill-over endpoint cannot be used as configured; the message is one line."""


class SpillSettings(BaseModel):
    """A remote OpenAI-compatible endpoint (a serverless vLLM worker, a hosted API) taking
    the requests of opted-in keys when every local replica of their model is saturated or
    down (docs/spill-over.md). ``api_key`` or ``api_key_file`` (its first line) is sent as
    the remote's bearer key in place of the client's; ``models`` maps a local model name to
    the name the remote serves it under. ``connect`` and ``first_byte`` are its own
    timeouts (a serverless worker starting cold takes longer than a replica); the stream's
    idle and total deadlines are the gateway's. Its ``/v1/models`` is probed every
    ``probe_interval`` s: a remote that does not answer is down, and nothing is sent to it."""

    model_config = ConfigDict(extra="forbid")

    url: HttpUrl | None = Field(
        default=None, description="the remote's base URL, without /v1 (unset: no spill-over)"
    )
    name: str = Field(
        default="remote",
        pattern=r"^[a-z][a-z0-9_-]{0,31}$",
        description="its label in metrics and the usage ledger",
    )
    api_key: SecretStr | None = Field(default=None, description="the remote's API key")
    api_key_file: Path | None = Field(
        default=None, description="a file whose first line is the remote's API key"
    )
    models: dict[str, str] = Field(
        default_factory=dict, description="local model name -> the remote's name for it"
    )
    required: bool = Field(
        default=False, description="refuse to start when the remote's /v1/models does not answer"
    )
    connect: float = Field(default=10.0, gt=0, description="TCP and TLS connect to the remote")
    first_byte: float = Field(
        default=300.0, gt=0, description="request sent -> response head (a cold start)"
    )
    probe_interval: float = Field(default=15.0, gt=0, description="seconds between probes")
    probe_timeout: float = Field(default=10.0, gt=0, description="per probe")

    @model_validator(mode="after")
    def _one_key_source(self) -> SpillSettings:
        if self.api_key is not None and self.api_key_file is not None:
            raise ValueError("spill: set api_key or api_key_file, not both")
        if self.name == LOCAL:
            raise ValueError(f"spill: name '{LOCAL}' is the local replicas' label")
        return self

    @property
    def base_url(self) -> str | None:
        return None if self.url is None else str(self.url).rstrip("/")

    def secret(self) -> str | None:
        """The remote's API key (from ``api_key_file`` when set); :class:`SpillError` when
        the file cannot be read or is empty. Never logged."""
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_file is None:
            return None
        try:
            lines = self.api_key_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise SpillError(
                f"spill: cannot read api_key_file {self.api_key_file}: {reason}"
            ) from None
        key = lines[0].strip() if lines else ""
        if not key:
            raise SpillError(f"spill: api_key_file {self.api_key_file} is empty")
        return key
