"""Errors of the launcher: each is a one-line message the ``vkit`` command prints.

vkit.errors.CliError            -- exit 1
  LaunchError                   -- the engine could not be started or kept running
  vkit.errors.UsageError        -- exit 2
    UnknownGpuError             -- a GPU name that configs/gpus.yaml does not list
    UnknownModelError           -- a model that is neither a directory nor a snapshot
    UnsupportedQuantizationError -- e.g. FP8 W8A8 on a GPU without FP8 (A100)
    ExtraArgsError              -- duplicated or malformed pass-through vLLM flags
"""

from __future__ import annotations

from vkit.errors import CliError, UsageError


class LaunchError(CliError):
    """vLLM could not be started (or restarted) with corrected values."""


class UnknownGpuError(UsageError):
    """A GPU name that is not in the GPU profiles."""


class UnknownModelError(UsageError):
    """A model name that is neither a local directory nor a config snapshot."""


class UnsupportedQuantizationError(UsageError):
    """A quantization the chosen GPU cannot run."""


class ExtraArgsError(UsageError):
    """Pass-through vLLM arguments that repeat a flag or are not flags at all."""
