"""Check a deploy file's ``VKIT_GATEWAY_*`` variables against the gateway's settings."""

from __future__ import annotations

import re

from pydantic import BaseModel

from gateway.settings import GatewaySettings, load_settings

PREFIX = "VKIT_GATEWAY_"


def unknown_gateway_variables(env: dict[str, str]) -> list[str]:
    """Names that no settings field reads (the environment source ignores them silently)."""
    unknown = []
    for name in env:
        if not name.startswith(PREFIX):
            continue
        model: type[BaseModel] = GatewaySettings
        parts = name.removeprefix(PREFIX).lower().split("__")
        for i, part in enumerate(parts):
            field = model.model_fields.get(part)
            if field is None:
                unknown.append(name)
                break
            annotation = field.annotation
            if i < len(parts) - 1:
                if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                    unknown.append(name)
                    break
                model = annotation
    return unknown


def gateway_settings(env: dict[str, str]) -> GatewaySettings:
    """The settings the gateway would start with (``${VAR...}`` references filled in)."""
    filled = {k: re.sub(r"\$\{[^}]*\}", "test-secret", v) for k, v in env.items()}
    return load_settings(environ=filled)
