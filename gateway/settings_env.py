"""The gateway's settings as environment variables: :func:`settings_env`, the one writer.

    >>> settings = settings_from_values(
    ...     {"port": 8080, "routing": "aware", "upstreams": ["http://a:8000"],
    ...      "tokenizers": {"models": {"m": "org/m"}}})
    >>> settings_env(settings)
    {'VKIT_GATEWAY_UPSTREAMS': '["http://a:8000"]', 'VKIT_GATEWAY_PORT': '8080',
     'VKIT_GATEWAY_TOKENIZERS__MODELS': '{"m": "org/m"}', 'VKIT_GATEWAY_ROUTING': 'aware'}

Every deploy file (compose, Kubernetes, systemd's env files, ``vkit up``) writes the gateway's
``VKIT_GATEWAY_*`` variables from a :class:`~gateway.settings.GatewaySettings` value with this
function, so that what it writes loads back into the same settings. Only the values that were
given are written (a default stays the gateway's own), in the settings' field order, a
section's fields nested with the settings' own delimiter (``__``). Lists and mappings are
JSON; a URL is written without the trailing slash pydantic adds (as
:attr:`~gateway.settings.GatewaySettings.upstream_urls` reads it); a whole float is written as
an integer (``600``, not ``600.0``); a secret is written in clear (a deploy file passes a
reference such as ``${VLLM_API_KEY:?...}`` there). ``None`` cannot be written: it is left out.

:func:`settings_from_values` builds the value from exactly the given values: no environment
and no settings file are read, so a render never depends on the shell it runs in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from pydantic import AnyUrl, BaseModel, SecretStr

from gateway.settings import ENV_PREFIX, GatewaySettings, load_settings

__all__ = ["NESTED_DELIMITER", "settings_env", "settings_from_values"]

NESTED_DELIMITER: str = GatewaySettings.model_config.get("env_nested_delimiter") or "__"


def settings_from_values(values: Mapping[str, Any]) -> GatewaySettings:
    """The settings with exactly ``values`` given (validated; nothing read from outside)."""
    return load_settings(environ={}, **values)


def settings_env(settings: GatewaySettings) -> dict[str, str]:
    """``VKIT_GATEWAY_*`` variables for every value given in ``settings``."""
    return _section_env(settings, ENV_PREFIX)


def _section_env(section: BaseModel, prefix: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for name in type(section).model_fields:
        if name not in section.model_fields_set:
            continue
        value = getattr(section, name)
        key = prefix + name.upper()
        if isinstance(value, BaseModel):
            env.update(_section_env(value, key + NESTED_DELIMITER))
        elif value is not None:
            env[key] = _env_value(value)
    return env


def _env_value(value: object) -> str:
    if isinstance(value, list | tuple | dict):
        return json.dumps(_plain(value), ensure_ascii=False)
    plain = _plain(value)
    return plain if isinstance(plain, str) else json.dumps(plain)


def _plain(value: object) -> Any:
    """A JSON-ready value: URLs, paths and secrets as strings, whole floats as integers."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, AnyUrl):
        return str(value).rstrip("/")
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
