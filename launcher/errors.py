"""Errors of the launcher: plain exceptions that know nothing of exit codes.

    LauncherError                   -- base of everything below
      LaunchError                   -- the engine could not be started or kept running
      MetricsError                  -- a deployment's Prometheus could not be read
      InvalidInput                  -- the caller asked for something that cannot be
        UnknownGpuError             -- a GPU name that configs/gpus.yaml does not list
        UnknownModelError           -- a model that is neither a directory nor a snapshot
        UnsupportedQuantizationError -- e.g. FP8 W8A8 on a GPU without FP8 (A100)
        ExtraArgsError              -- duplicated or malformed pass-through vLLM flags
        ProfileError                -- a deployment profile that is missing or malformed
        PriceError                  -- a GPU price the capacity planner cannot use
        GpuSetError                 -- GPU ids that cannot be split into tensor-parallel sets
        NoCheckpointError           -- no known checkpoint of a model at a quantization
        CheckpointMismatchError     -- a catalog checkpoint whose config.json says otherwise
        UnsupportedParallelismError -- a tensor-parallel size the model or node cannot take
        GpuShareError               -- groups on one GPU whose memory cannot hold them all

Each message is one line a person can act on. The ``vkit`` command maps these classes to
exit codes in one table (:mod:`vkit.exit_codes`): ``InvalidInput`` is 2, the rest 1.
"""

from __future__ import annotations


class LauncherError(Exception):
    """Base class of the launcher's errors."""


class LaunchError(LauncherError):
    """vLLM could not be started (or restarted) with corrected values."""


class InvalidInput(LauncherError):
    """A request the launcher cannot serve as given (bad name, value or combination)."""


class UnknownGpuError(InvalidInput):
    """A GPU name that is not in the GPU profiles."""


class UnknownModelError(InvalidInput):
    """A model name that is neither a local directory nor a config snapshot."""


class UnsupportedQuantizationError(InvalidInput):
    """A quantization the chosen GPU cannot run."""


class ExtraArgsError(InvalidInput):
    """Pass-through vLLM arguments that repeat a flag or are not flags at all."""


class ProfileError(InvalidInput):
    """A deployment profile that cannot be found or read."""


class PriceError(InvalidInput):
    """A GPU price (``GPU[@PROVIDER][=USD_PER_HOUR]``) that is malformed or unknown."""


class GpuSetError(InvalidInput):
    """GPU ids that cannot form tensor-parallel sets (duplicates, a count not divisible)."""


class NoCheckpointError(InvalidInput):
    """No known checkpoint serves the model at the asked quantization (say how to make one)."""


class CheckpointMismatchError(InvalidInput):
    """A catalog checkpoint whose own config.json states other quantization facts."""


class UnsupportedParallelismError(InvalidInput):
    """A tensor-parallel size larger than the node or not dividing the model's heads."""


class MetricsError(LauncherError):
    """A deployment's Prometheus did not answer, or holds none of the series asked for."""


class GpuShareError(InvalidInput):
    """Replica groups on one GPU that cannot all fit in its memory."""
