"""A deployment as data, which compose, systemd, Kubernetes and ``vkit up`` render.

Modules:

- :mod:`vkit.deployment.model`: :class:`Deployment` (replica groups, the gateway's
  settings, ports, images, drain) and :class:`ReplicaGroup` (one served model);
- :mod:`vkit.deployment.deployment_file`: a YAML file of several groups (models, LoRA
  adapters), read and checked with one-line errors;
- :mod:`vkit.deployment.group_fit`: each group of such a file fit-solved on its GPUs (shared
  GPUs split by memory);
- :mod:`vkit.deployment.launch_args`: a replica's settings as ``vkit launch`` flags (the
  targets whose replicas run ``vkit launch``);
- :mod:`vkit.deployment.images`: the pinned container images;
- :mod:`vkit.deployment.service_ports`: the ports of every part;
- :mod:`vkit.deployment.drain`: the drain budget and the margin a stopper adds.
"""

from vkit.deployment.drain import DrainBudget
from vkit.deployment.images import Images
from vkit.deployment.model import Deployment, ReplicaGroup, Routing
from vkit.deployment.service_ports import Ports

__all__ = ["Deployment", "DrainBudget", "Images", "Ports", "ReplicaGroup", "Routing"]
