"""Deploy files as data: each target translates a :mod:`vkit.deployment` model.

- :mod:`vkit.render.compose` -- ``ComposeSpec`` -> its deployment -> the compose file as a dict
- :mod:`vkit.render.compose_services` -- Redis, Prometheus, Grafana, DCGM services
- :mod:`vkit.render.compose_cpu` -- its CPU variant (``--gpu cpu``): replicas on cores
- :mod:`vkit.render.compose_groups` -- a deployment file's groups as a compose bundle (aware
  routing to every replica of every model)
- :mod:`vkit.render.compose_adapters` -- LoRA adapters in host directories, mounted into their
  group's replicas
- :mod:`vkit.render.compose_schedule` -- a bundle for a replica schedule (``--schedule``): the
  gateway's replicas from a file the follower rewrites, holding while none is ready
- :mod:`vkit.render.bundle` -- every file of a compose bundle (``deploy/docker/``), the writers
- :mod:`vkit.render.compose_env` -- the bundle's variables: ``.env.example``, a first ``.env``
- :mod:`vkit.render.gateway_build` -- the gateway image's build context inside the bundle
- :mod:`vkit.render.vllm_supervisor` -- the replicas' entrypoint script (copied, stdlib only)
- :mod:`vkit.render.healthcheck` -- the one wget healthcheck of the monitoring services
- :mod:`vkit.render.prometheus` -- scrape config and per-GPU price series
- :mod:`vkit.render.alertmanager` -- the Alertmanager service, its config and start script
- :mod:`vkit.render.systemd` -- a systemd host's generated files (replica and gateway env)
- :mod:`vkit.render.systemd_groups` -- a deployment file's groups on a systemd host:
  ``vllm@GROUP-SET`` instances, each group's profile
- :mod:`vkit.render.groups_gateway` -- the gateway's routing and tokenizers over several groups
  (compose and systemd)
- :mod:`vkit.render.k8s_spec` -- ``K8sSpec``: one Kubernetes deployment, names and drain
- :mod:`vkit.render.k8s_plan` -- ``vkit render k8s`` arguments -> ``K8sSpec`` and fit plan
- :mod:`vkit.render.k8s_vllm` -- the vLLM StatefulSet: base and fit-made patch, probes
- :mod:`vkit.render.k8s_manifests` -- the base: gateway, Redis, Services, NetworkPolicies
- :mod:`vkit.render.k8s_autoscaling` -- KEDA ScaledObject, HPA, prometheus-adapter values
- :mod:`vkit.render.k8s_monitoring` -- PodMonitors, rules, dashboard, price rule
- :mod:`vkit.render.k8s_ledger` -- the usage ledger (``--ledger``): SQLite on a one-pod
  volume, or PostgreSQL from a Secret
- :mod:`vkit.render.k8s_groups` -- a deployment file's groups as one overlay: a StatefulSet and
  headless Service per group, the gateway discovering each
- :mod:`vkit.render.schedule_keda` -- a replica schedule as KEDA cron triggers (a patch)
- :mod:`vkit.render.schedule_systemd` -- a replica schedule as systemd timers over ``vllm@``
- :mod:`vkit.render.k8s_bundle` -- the kustomize tree (base, components, overlay) as files
- :mod:`vkit.render.serverless_worker` -- a serverless endpoint: the RunPod vLLM worker's
  settings from the group's vLLM command, and the gateway's spill-over settings

The ``vkit render`` sub-commands are in :mod:`vkit.commands.render` (compose, nginx, and the
registration of :mod:`~vkit.commands.render_systemd`, :mod:`~vkit.commands.render_k8s` and
:mod:`~vkit.commands.render_serverless`).
The NGINX config comes from :mod:`vkit.nginx_conf` (one template for every deployment).
"""
