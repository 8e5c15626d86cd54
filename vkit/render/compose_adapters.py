"""LoRA adapters read from host directories, in the compose bundle's replica containers.

    >>> lora = LoraSettings(adapters=(LoraAdapter(name="sql", source="/srv/lora/sql", rank=8),))
    >>> container_lora(lora).adapters[0].source
    '/opt/vkit/lora/sql'
    >>> adapter_mounts(lora)
    ['${VKIT_ADAPTER_SQL:-/srv/lora/sql}:/opt/vkit/lora/sql:ro']

vLLM in a container reads ``--lora-modules name=path`` inside the container, where a directory
of the host does not exist. Each adapter whose source is a path (``/``, ``./`` or ``../`` at its
start; a relative one is relative to the compose file, as every bind mount of it) is mounted
read-only at :data:`ADAPTERS_DIR`/<name> in its group's replicas, and vLLM is told that path.
``.env`` can point the mount elsewhere (``VKIT_ADAPTER_<NAME>``, :func:`adapter_variable`), as
``VLLM_MODEL_<GROUP>`` does a model. A source without one is a Hugging Face id, fetched into
the cache volume as a model is.
"""

from __future__ import annotations

from launcher.sizing.lora import LoraAdapter, LoraSettings
from vkit.render.compose import group_slug

__all__ = [
    "ADAPTERS_DIR",
    "adapter_mounts",
    "adapter_variable",
    "container_lora",
    "host_adapters",
    "is_host_path",
]

ADAPTERS_DIR = "/opt/vkit/lora"
PATH_STARTS = ("/", "./", "../")


def is_host_path(source: str) -> bool:
    """Whether an adapter's source is a directory of the host (not a Hugging Face id)."""
    return source.startswith(PATH_STARTS)


def adapter_variable(name: str) -> str:
    """The ``.env`` variable that points an adapter's mount at another host directory."""
    return "VKIT_ADAPTER_" + group_slug(name).upper().replace("-", "_")


def host_adapters(lora: LoraSettings | None) -> list[LoraAdapter]:
    """The group's adapters that are read from host directories."""
    return [a for a in lora.adapters if is_host_path(a.source)] if lora is not None else []


def _in_container(adapter: LoraAdapter) -> str:
    return f"{ADAPTERS_DIR}/{adapter.name}"


def container_lora(lora: LoraSettings | None) -> LoraSettings | None:
    """The group's LoRA settings with each host directory replaced by its mount point."""
    if lora is None:
        return None
    adapters = tuple(
        adapter.model_copy(update={"source": _in_container(adapter)})
        if is_host_path(adapter.source)
        else adapter
        for adapter in lora.adapters
    )
    return lora.model_copy(update={"adapters": adapters})


def adapter_mounts(lora: LoraSettings | None) -> list[str]:
    """The replicas' read-only bind mounts of the group's adapters in host directories."""
    return [
        f"${{{adapter_variable(adapter.name)}:-{adapter.source}}}:{_in_container(adapter)}:ro"
        for adapter in host_adapters(lora)
    ]
