"""Alertmanager for the compose bundle: its service, its config, and its start script.

    >>> files = render_alertmanager_files(header)
    >>> sorted(files)
    ['alertmanager/alertmanager.yml', 'alertmanager/start.sh']

Prometheus sends firing alerts to ``alertmanager:9093`` (the ``alerting:`` block of
``prometheus.yml``, :mod:`vkit.render.prometheus`); Alertmanager groups them by alert name
and POSTs each group, and its resolution, to one webhook (Alertmanager's webhook JSON:
Slack-, Teams- or PagerDuty-style bridges and most chat tools take it). The URL comes from
``ALERTMANAGER_WEBHOOK_URL`` in ``.env``: ``docker compose`` refuses to start without it.

Alertmanager reads no environment variables, so its config carries the placeholder
:data:`WEBHOOK_URL_PLACEHOLDER` and ``start.sh`` (busybox ``sh`` and ``sed``, as in the
image) writes the config with the URL where ``--config.file=`` says, then runs
Alertmanager. Silences and the notification log live in ``/alertmanager``, the image's own
volume, which compose keeps when it recreates the container.
"""

from __future__ import annotations

from typing import Any

import yaml

from vkit.deployment.images import ALERTMANAGER_IMAGE
from vkit.render.healthcheck import wget_healthcheck

ALERTMANAGER_PORT = 9093
CONFIG_FILE = "alertmanager/alertmanager.yml"  # relative to the compose file
START_SCRIPT_FILE = "alertmanager/start.sh"
MOUNTED_AT = "/etc/alertmanager/vkit"  # both files, read-only
CONFIG_IN_CONTAINER = "/alertmanager/alertmanager.yml"  # what start.sh writes
WEBHOOK_URL_PLACEHOLDER = "@ALERTMANAGER_WEBHOOK_URL@"
WEBHOOK_URL_VAR = (
    "${ALERTMANAGER_WEBHOOK_URL:?set ALERTMANAGER_WEBHOOK_URL to the URL that receives"
    " alerts (see .env.example)}"
)
RECEIVER = "webhook"

# The URL is escaped for sed's replacement (\ & |) and for a single-quoted YAML string
# (' doubled); a URL cannot hold a newline, and anything but http(s) is refused.
START_SCRIPT = r"""
# Alertmanager reads no environment variables: put ALERTMANAGER_WEBHOOK_URL into the config
# next to this script (placeholder @ALERTMANAGER_WEBHOOK_URL@), write it where the command
# line's --config.file= says, then run that command line (Alertmanager's).
set -eu
url=${ALERTMANAGER_WEBHOOK_URL:-}
case $url in
    http://?*|https://?*) ;;
    *) echo "start.sh: ALERTMANAGER_WEBHOOK_URL is not an http(s) URL" >&2; exit 64 ;;
esac
config=
for arg in "$@"; do
    case $arg in --config.file=*) config=${arg#--config.file=} ;; esac
done
if [ -z "$config" ]; then
    echo "start.sh: the command line has no --config.file=" >&2
    exit 64
fi
escaped=$(printf '%s\n' "$url" | sed -e "s/'/''/g" -e 's/[\\&|]/\\&/g')
sed "s|@ALERTMANAGER_WEBHOOK_URL@|$escaped|" "$(dirname "$0")/alertmanager.yml" >"$config.tmp"
mv "$config.tmp" "$config"
exec "$@"
"""


def build_alertmanager_config(
    *,
    webhook_url: str = WEBHOOK_URL_PLACEHOLDER,
    group_wait: str = "30s",
    group_interval: str = "5m",
    repeat_interval: str = "4h",
) -> dict[str, Any]:
    """One route to one webhook receiver, resolutions included.

    The defaults are Alertmanager's own; a test passes seconds to see a notification
    arrive quickly.
    """
    return {
        "route": {
            "receiver": RECEIVER,
            "group_by": ["alertname"],
            "group_wait": group_wait,
            "group_interval": group_interval,
            "repeat_interval": repeat_interval,
        },
        "receivers": [
            {"name": RECEIVER, "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}
        ],
    }


def render_alertmanager_files(header: str) -> dict[str, str]:
    """The config (with the placeholder) and the start script, each with ``header``."""
    config = yaml.safe_dump(build_alertmanager_config(), sort_keys=False, width=4096)
    return {
        CONFIG_FILE: header + config,
        START_SCRIPT_FILE: "#!/bin/sh\n" + header + START_SCRIPT.lstrip("\n"),
    }


def alertmanager_service() -> dict[str, Any]:
    """The compose service: on the backend network only, no published port."""
    return {
        "image": ALERTMANAGER_IMAGE,
        "entrypoint": ["/bin/sh", f"{MOUNTED_AT}/start.sh"],
        "command": [
            "/bin/alertmanager",
            f"--config.file={CONFIG_IN_CONTAINER}",
            "--storage.path=/alertmanager",
        ],
        "environment": {"ALERTMANAGER_WEBHOOK_URL": WEBHOOK_URL_VAR},
        "volumes": [f"./alertmanager:{MOUNTED_AT}:ro"],
        "healthcheck": wget_healthcheck(f"http://127.0.0.1:{ALERTMANAGER_PORT}/-/ready"),
        "restart": "unless-stopped",
        "networks": ["backend"],
    }
