"""vkit: a production deployment kit for vLLM.

The console script ``vkit`` lives in :mod:`vkit.cli`; the work is done by the
``launcher`` and ``gateway`` packages.

- :mod:`.cli` -- the ``vkit`` command: one parser, one sub-command per module of
  :mod:`.commands`;
- :mod:`.commands` -- the sub-commands, one module each;
- :mod:`.exit_codes` -- how ``vkit`` ends: error classes -> exit codes and one-line messages;
- :mod:`.deployment` -- a deployment as data, target-neutral: replica groups, the gateway's
  settings, ports, images, drain;
- :mod:`.render` -- deploy files (compose, systemd, Kubernetes) translated from that model;
- :mod:`.nginx_conf` -- the NGINX configuration, rendered from ``nginx/vkit.conf.template``
  (the data package ``vkit.nginx``);
- :mod:`.edge_conf` -- the public edge: NGINX in front of the gateway (timeouts, limits, TLS);
- :mod:`.edge_template` -- the edge site's NGINX template;
- :mod:`.edge_cert` -- a first run's self-signed TLS certificate, made once, never replaced;
- :mod:`.stack` -- ``vkit up``: the whole local stack, started, watched and stopped;
- :mod:`.bootstrap` -- what ``make demo`` and ``make test`` need from the machine before the
  venv exists (standard library only);
- :mod:`.bootstrap_kubectl` -- kubectl with kustomize for ``make test``'s deploy/k8s checks.

The monitoring files (``deploy/monitoring/``) are installed as the data package
``vkit.monitoring``.
"""

__version__ = "0.1.0"
