"""The gateway's settings over a deployment file's groups, shared by every target that renders
one (compose, systemd): :func:`groups_gateway_values`.

    >>> from launcher.supervision.launch_spec import LaunchSettings
    >>> chat = ReplicaGroup(launch=LaunchSettings(model="m", served_model_name="chat"))
    >>> values = groups_gateway_values((chat,), ["http://r:8000"], lambda group: "org/m")
    >>> values["routing"], values["tokenizers"], values["health"]
    ('aware', {'models': {'chat': 'org/m'}}, {'expected_models': ['chat']})

The gateway routes ``aware`` to every replica's URL and learns which serves which model from
their ``/v1/models``; each served name and each of its adapters counts prompts with its base's
tokenizer (where ``tokenizer`` says the target finds it); a replica is ready when it lists
its group's model (:func:`~vkit.deployment.model.expected_models`: any model, with several).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from vkit.deployment import ReplicaGroup
from vkit.deployment.model import expected_models

__all__ = ["groups_gateway_values"]


def groups_gateway_values(
    groups: Sequence[ReplicaGroup],
    upstreams: list[str],
    tokenizer: Callable[[ReplicaGroup], str],
) -> dict[str, Any]:
    """The gateway's ``routing``, ``upstreams``, ``health`` and ``tokenizers.models`` over
    ``groups`` (the target adds its listeners, keys, Redis and ``tokenizers.hf_cache``)."""
    tokenizers: dict[str, str] = {}
    for group in groups:
        tokenizers[group.served_model] = tokenizer(group)
        for adapter in group.launch.lora.adapters if group.launch.lora else ():
            tokenizers[adapter.name] = tokenizer(group)
    return {
        "routing": "aware",
        "upstreams": upstreams,
        "health": {"expected_models": expected_models([g.served_model for g in groups])},
        "tokenizers": {"models": tokenizers},
    }
