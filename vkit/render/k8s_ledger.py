"""The usage ledger on Kubernetes (``vkit render k8s --ledger``): where the gateway keeps it.

    >>> ledger_values("sqlite")
    {'enabled': True, 'url': 'sqlite:////var/lib/vkit-gateway/usage.sqlite3'}

``off`` (the default here): the base runs two or more gateway pods (an HPA on CPU), which one
SQLite file cannot serve, and the gateway image carries no PostgreSQL driver (its size
budget), so either choice changes the deployment and is asked for:

- ``sqlite``: one gateway pod with the file on a PersistentVolumeClaim of access mode
  ``ReadWriteOncePod`` (Kubernetes never gives it to a second pod), the Deployment
  ``Recreate``d (the old pod lets go of the file before the new one starts), its HPA pinned to
  one replica and its PodDisruptionBudget letting that pod be evicted (a node drain would wait
  forever otherwise). The pod's ``fsGroup`` is the image's group (10001), so the volume is
  the gateway's to write. A second gateway on the file anyway (the volume shared some other
  way) stops at start with one line (:mod:`gateway.ledger.owner`).
- ``postgres``: the gateways as the base runs them, sharing a PostgreSQL database whose URL
  comes from the Secret :data:`LEDGER_SECRET` (key ``url``; never rendered). Needs a gateway
  image with the ``postgres`` extra (docs/usage-ledger.md#in-the-deployments-vkit-renders).
"""

from __future__ import annotations

from typing import Any, Literal

from vkit.render.k8s_manifests import metadata
from vkit.render.k8s_spec import GATEWAY_NAME

LedgerChoice = Literal["off", "sqlite", "postgres"]
LEDGER_SECRET = "vkit-ledger"  # key url: postgresql://user:password@host/db
LEDGER_PVC = "vkit-gateway-ledger"
LEDGER_MOUNT = "/var/lib/vkit-gateway"
LEDGER_SIZE = "1Gi"  # a million requests take ~12 MB (bench/ledger_size.py)
GATEWAY_GID = 10001  # the gateway image's group (vkit/render/gateway.Dockerfile)


def ledger_values(choice: LedgerChoice) -> dict[str, Any]:
    """The gateway's ``ledger`` settings for ``choice`` (the PostgreSQL URL is the Secret's)."""
    if choice == "sqlite":
        return {"enabled": True, "url": f"sqlite:///{LEDGER_MOUNT}/usage.sqlite3"}
    if choice == "postgres":
        return {"enabled": True}
    return {}


def ledger_env(choice: LedgerChoice) -> list[dict[str, Any]]:
    """The gateway's ``VKIT_GATEWAY_LEDGER__URL`` from the Secret (``postgres`` only)."""
    if choice != "postgres":
        return []
    ref = {"secretKeyRef": {"name": LEDGER_SECRET, "key": "url"}}
    return [{"name": "VKIT_GATEWAY_LEDGER__URL", "valueFrom": ref}]


def ledger_deployment_spec(choice: LedgerChoice) -> dict[str, Any]:
    """What ``sqlite`` patches into the gateway Deployment's spec besides its env: one pod,
    recreated, the claim mounted, the volume its group's. ``None`` removes a field, as in a
    strategic merge patch."""
    if choice != "sqlite":
        return {}
    return {
        "replicas": 1,
        "strategy": {"type": "Recreate", "rollingUpdate": None},
        "template": {
            "spec": {
                "securityContext": {"fsGroup": GATEWAY_GID},
                "containers": [
                    {
                        "name": "gateway",
                        "volumeMounts": [{"name": "ledger", "mountPath": LEDGER_MOUNT}],
                    }
                ],
                "volumes": [{"name": "ledger", "persistentVolumeClaim": {"claimName": LEDGER_PVC}}],
            }
        },
    }


def ledger_patches(choice: LedgerChoice, namespace: str) -> list[dict[str, Any]]:
    """``sqlite``: the HPA held at one replica, the PodDisruptionBudget letting it go."""
    if choice != "sqlite":
        return []
    meta = {"name": GATEWAY_NAME, "namespace": namespace}
    return [
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": meta,
            "spec": {"minReplicas": 1, "maxReplicas": 1},
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": meta,
            "spec": {"minAvailable": None, "maxUnavailable": 1},
        },
    ]


def ledger_objects(choice: LedgerChoice, namespace: str) -> list[dict[str, Any]]:
    """``sqlite``: the claim the one gateway pod keeps its file on."""
    if choice != "sqlite":
        return []
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": metadata(LEDGER_PVC, namespace, "gateway"),
            "spec": {
                "accessModes": ["ReadWriteOncePod"],
                "resources": {"requests": {"storage": LEDGER_SIZE}},
            },
        }
    ]
