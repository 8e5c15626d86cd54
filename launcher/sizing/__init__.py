"""Sizing, pure: will a model run on a GPU, with which vLLM settings, how fast, at what cost.

- :mod:`.gpus` -- GPU profiles (VRAM, bandwidth, compute, FP8, prices) from ``configs/gpus.yaml``;
- :mod:`.gpu_sets` -- GPU ids grouped into tensor-parallel sets, one vLLM replica per set;
- :mod:`.models` -- model shapes from a ``config.json``: parameters, KV bytes per token;
- :mod:`.memory` -- byte math of a replica: weights by quantization, overhead, KV tokens;
- :mod:`.lora` -- LoRA adapters: vLLM's flags and the memory their slots take from the KV cache;
- :mod:`.fit` -- the fit solver: does a model run on a GPU (or this CPU), with which settings;
- :mod:`.queue_caps` -- vLLM's admission caps (queued requests and prefill tokens) sized from a
  time-to-first-token target;
- :mod:`.gpu_sharing` -- several models on one GPU: each one's memory share, or one refusal;
- :mod:`.fit_report` -- ``vkit plan``'s readable report and its JSON twin;
- :mod:`.speed` -- one replica's serving speed: a step model calibrated on measurements;
- :mod:`.quant_kernels` -- which kernel runs a quantization on a GPU (FP8 weight-only through
  FP8 Marlin on Ampere) and the speed the planner gives it;
- :mod:`.speed_table` -- the published measurements :mod:`.speed` is calibrated on, and its
  error on each (``configs/speed_measurements.yaml``);
- :mod:`.speed_fit` -- fitting :mod:`.speed`'s constants, and leave-one-source-out: how well it
  predicts the sources it was not fitted to (``python -m launcher.sizing.speed_fit``);
- :mod:`.speed_band` -- how sure :mod:`.speed` is: its held-out error band, which every
  capacity answer carries with the GPUs it would take at the band's pessimistic end;
- :mod:`.checkpoints` -- runnable checkpoints: which repository serves a model at a
  quantization (``configs/checkpoints.yaml``);
- :mod:`.checkpoint_check` -- a catalog checkpoint's facts checked against its repository's
  ``config.json``;
- :mod:`.capacity` -- ``vkit capacity``, the cost planner: daily users -> GPUs and dollars
  (its own map is in its package docstring).
"""
