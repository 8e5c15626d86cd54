"""The compose file's supporting services: the public edge (NGINX with TLS in front of the
gateway, :mod:`vkit.edge_conf`), Redis for shared limits, Prometheus, Grafana and NVIDIA's
DCGM exporter (Alertmanager: :mod:`vkit.render.alertmanager`). Paths are relative to the
compose file, inside the bundle (:mod:`vkit.render.bundle` writes what they name)."""

from __future__ import annotations

from typing import Any

from vkit.deployment.images import DCGM_IMAGE, GRAFANA_IMAGE, PROMETHEUS_IMAGE, REDIS_IMAGE
from vkit.render.healthcheck import wget_healthcheck

GRAFANA_PASSWORD_VAR = "${GRAFANA_ADMIN_PASSWORD:?set GRAFANA_ADMIN_PASSWORD}"
# Copied into the bundle from vkit.monitoring (deploy/monitoring/) by vkit.render.bundle.
RULES_DIR = "prometheus/rules"
GRAFANA_PROVISIONING_DIR = "grafana/provisioning"
GRAFANA_DASHBOARDS_DIR = "grafana/dashboards"

# The edge: TLS on 443 in the container, its own liveness on loopback for the healthcheck.
EDGE_SITE_FILE = "nginx/edge.conf"
EDGE_PORT = 443
EDGE_HEALTH_LISTEN = "127.0.0.1:8081"
EDGE_TLS_MOUNT = "/etc/vkit/tls"
TLS_DIR_VAR = (
    "${VKIT_TLS_DIR:?set VKIT_TLS_DIR to the directory of the edge's cert.pem and key.pem"
    " (.env.example shows how to make a first one)}"
)


def edge_service(image: str, grace_s: int) -> dict[str, Any]:
    """NGINX in front of the gateway, the one published port for clients (``VKIT_EDGE_PORT``,
    443 by default); stopped first and gracefully (SIGQUIT: open answers finish, up to the
    gateway's own grace ``grace_s``)."""
    return {
        "image": image,
        "volumes": [
            f"./{EDGE_SITE_FILE}:/etc/nginx/conf.d/default.conf:ro",
            f"{TLS_DIR_VAR}:{EDGE_TLS_MOUNT}:ro",
        ],
        "ports": [f"${{VKIT_EDGE_PORT:-{EDGE_PORT}}}:{EDGE_PORT}"],
        "depends_on": {"gateway": {"condition": "service_healthy"}},
        "healthcheck": wget_healthcheck(f"http://{EDGE_HEALTH_LISTEN}/edge_health", "10s"),
        "restart": "unless-stopped",
        "stop_signal": "SIGQUIT",
        "stop_grace_period": f"{grace_s}s",
        "networks": ["edge"],
    }


def redis_service() -> dict[str, Any]:
    return {
        "image": REDIS_IMAGE,
        # Rate-limit windows only: nothing to persist.
        "command": ["redis-server", "--save", "", "--appendonly", "no"],
        "healthcheck": {
            "test": ["CMD", "redis-cli", "ping"],
            "interval": "10s",
            "timeout": "5s",
            "retries": 3,
        },
        "restart": "unless-stopped",
        "networks": ["backend"],
    }


def prometheus_service() -> dict[str, Any]:
    return {
        "image": PROMETHEUS_IMAGE,
        "command": [
            "--config.file=/etc/prometheus/prometheus.yml",
            "--storage.tsdb.path=/prometheus",
            "--storage.tsdb.retention.time=30d",
        ],
        "volumes": [
            "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro",
            "./prometheus/cost.rules.yml:/etc/prometheus/cost.rules.yml:ro",
            f"./{RULES_DIR}:/etc/prometheus/rules:ro",
            "prometheus-data:/prometheus",
        ],
        "healthcheck": wget_healthcheck("http://127.0.0.1:9090/-/ready"),
        "restart": "unless-stopped",
        "networks": ["backend"],
    }


def grafana_service() -> dict[str, Any]:
    return {
        "image": GRAFANA_IMAGE,
        "environment": {
            "GF_SECURITY_ADMIN_PASSWORD": GRAFANA_PASSWORD_VAR,
            "GF_USERS_ALLOW_SIGN_UP": "false",
            "GF_AUTH_ANONYMOUS_ENABLED": "false",
        },
        "volumes": [
            f"./{GRAFANA_PROVISIONING_DIR}:/etc/grafana/provisioning:ro",
            f"./{GRAFANA_DASHBOARDS_DIR}:/etc/vkit/dashboards:ro",
            "grafana-data:/var/lib/grafana",
        ],
        "ports": ["${GRAFANA_PORT:-3000}:3000"],
        "depends_on": {"prometheus": {"condition": "service_healthy"}},
        "healthcheck": wget_healthcheck("http://127.0.0.1:3000/api/health"),
        "restart": "unless-stopped",
        "networks": ["backend", "edge"],
    }


def dcgm_service() -> dict[str, Any]:
    return {
        "image": DCGM_IMAGE,
        "cap_add": ["SYS_ADMIN"],
        "deploy": {
            "resources": {
                "reservations": {
                    "devices": [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
                }
            }
        },
        "restart": "unless-stopped",
        "networks": ["backend"],
    }
