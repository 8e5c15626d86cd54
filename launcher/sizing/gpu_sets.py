"""GPU ids grouped into tensor-parallel sets: one vLLM replica per set.

    >>> split_gpu_sets(["0", "1", "2", "3"], tensor_parallel=2)
    [GpuSet(ids=('0', '1')), GpuSet(ids=('2', '3'))]
    >>> split_gpu_sets(["0", "1"], tensor_parallel=1)[1].name
    '1'
    >>> split_gpu_sets(["0", "1", "2", "3"], tensor_parallel=2)[1].name
    '2-3'

Ids are the CUDA/NVML indexes (``CUDA_DEVICE_ORDER=PCI_BUS_ID``, so they are the numbers
``nvidia-smi`` and DCGM show). Sets are consecutive in the order given: on a NVLink/NVSwitch
box any split works; on PCIe boxes list the ids so that each set shares a switch.
``GpuSet.name`` is the replica's name suffix (``vllm-2-3``, ``vllm@2-3.service``): ids joined
by ``-``, which compose service names and systemd instance names both accept.
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher.errors import GpuSetError


@dataclass(frozen=True)
class GpuSet:
    """The GPUs one replica owns, in CUDA order."""

    ids: tuple[str, ...]

    @property
    def name(self) -> str:
        return "-".join(self.ids)

    @property
    def size(self) -> int:
        return len(self.ids)

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(self.ids)


def split_gpu_sets(gpu_ids: list[str], *, tensor_parallel: int) -> list[GpuSet]:
    """Consecutive groups of ``tensor_parallel`` ids; each id used once."""
    if tensor_parallel < 1:
        raise GpuSetError(f"tensor parallel size must be at least 1, got {tensor_parallel}")
    if not gpu_ids:
        raise GpuSetError("no GPU ids given")
    bad = [gpu_id for gpu_id in gpu_ids if not gpu_id.isdigit()]
    if bad:
        raise GpuSetError(f"GPU ids are indexes like 0,1: got {','.join(bad)}")
    dupes = sorted({gpu_id for gpu_id in gpu_ids if gpu_ids.count(gpu_id) > 1}, key=int)
    if dupes:
        raise GpuSetError(f"GPU id listed twice: {','.join(dupes)}")
    if len(gpu_ids) % tensor_parallel:
        raise GpuSetError(
            f"{len(gpu_ids)} GPUs cannot be split into sets of {tensor_parallel} "
            f"(tensor parallel size): give a multiple of {tensor_parallel} ids"
        )
    return [
        GpuSet(tuple(gpu_ids[start : start + tensor_parallel]))
        for start in range(0, len(gpu_ids), tensor_parallel)
    ]
