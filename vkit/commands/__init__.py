"""The ``vkit`` sub-commands, one module each; :mod:`vkit.cli` registers them on one parser.

- :mod:`.plan` -- ``vkit plan``: will the model fit, with which settings, the vLLM command;
- :mod:`.plan_groups` -- ``vkit plan --deployment``: each group of a deployment file sized and
  priced, GPUs shared or refused;
- :mod:`.capacity` -- ``vkit capacity``: daily users -> GPUs, $/month, $/user, a chart;
- :mod:`.capacity_schedule` -- ``vkit capacity --schedule``: a replica floor per hour of the
  week and the month it saves; the schedule file that renderers and ``vkit schedule`` read;
- :mod:`.checkpoint_catalog` -- ``vkit checkpoints check``: the catalog against each
  repository's own ``config.json``;
- :mod:`.launch` -- ``vkit launch``: start vLLM with tuned arguments and supervise it;
- :mod:`.gateway` -- ``vkit gateway``: the gateway under uvicorn, its admin listener beside it;
- :mod:`.keys` -- ``vkit keys add|list|disable|enable|budget``: the gateway's keys file;
- :mod:`.ledger_usage` -- ``vkit usage``: the usage ledger for a period, with dollars and idle;
- :mod:`.up` -- ``vkit up``: the whole stack locally (:mod:`vkit.stack`);
- :mod:`.replica_schedule` -- ``vkit schedule follow|keda|systemd``: a replica schedule followed on
  compose, or rendered as KEDA cron triggers or systemd timers;
- :mod:`.render` -- ``vkit render``: deploy files for a given box (compose, nginx);
- :mod:`.render_systemd` -- ``vkit render systemd``: a systemd host's generated files;
- :mod:`.render_k8s` -- ``vkit render k8s``: a kustomize overlay for a GPU cluster;
- :mod:`.render_serverless` -- ``vkit render serverless``: a serverless endpoint (RunPod's
  vLLM worker) for the planned model, and the gateway's spill-over settings.
"""
