"""Running the vLLM engine: its command line, its supervisor, and whether it is ready.

- :mod:`.vllm_args` -- the vLLM command line built from plain data (``build_vllm_argv``);
- :mod:`.launch_spec` -- ``vkit launch`` as a Python API: typed settings -> command and env;
- :mod:`.profiles` -- deployment profiles (``configs/deployments/*.yaml``) and the launch
  command's environment;
- :mod:`.supervisor` -- run vLLM, forward SIGTERM/SIGINT, relaunch after a healable error;
- :mod:`.healing` -- vLLM's start-up memory errors recognised and the options corrected;
- :mod:`.readiness` -- the one "is this replica ready" rule (gateway, systemd, ``vkit up``);
- :mod:`.readiness_probe` -- that rule asked over blocking HTTP;
- :mod:`.progress` -- the one "hung engine" rule: requests running, no progress in ``/metrics``
  (also the Kubernetes liveness probe's script);
- :mod:`.sd_notify` -- telling systemd ``READY=1``, then ``WATCHDOG=1`` while alive and moving;
- :mod:`.tiny_model` -- a tiny random Llama the CPU engine can serve;
- :mod:`.amx_site` -- a ``sitecustomize`` directory put on the CPU engine's ``PYTHONPATH``
  (AMX tile state requested at start-up).
"""
