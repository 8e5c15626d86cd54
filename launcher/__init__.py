"""vkit's launcher: everything about vLLM itself, from sizing a model to running the engine.

It never imports :mod:`vkit` (the CLI); the gateway uses one module of it, the readiness rule.

- :mod:`.sizing` -- pure: GPUs, model shapes, memory, the fit solver, the speed model,
  checkpoints, and the cost planner :mod:`.sizing.capacity`;
- :mod:`.supervision` -- running the engine: the vLLM argv, the supervisor, healing,
  readiness, systemd notifications, deployment profiles, the tiny CPU model;
- :mod:`.config_files` -- where the kit's data files live (``configs/``, installed as
  ``launcher.configs``);
- :mod:`.errors` -- the launcher's plain exceptions, which know nothing of exit codes.
"""
