"""The compose bundle's variables: ``.env.example``, and the ``.env`` a first render writes.

    >>> text = render_env_example(bundle_variables("hugging-quants/Llama-AWQ-INT4"))
    >>> first_env(text, {"VKIT_KEYS_GID": "1000"})   # .env.example with those values

Every ``${VAR}`` the compose file reads is one :class:`Variable` here, with the comment that
``.env.example`` shows above it (a test checks that none is missing). Required ones are
``${VAR:?message}`` in the compose file: ``docker compose`` refuses to start without them.

``vkit render compose --out`` also writes ``.env`` when there is none (never over one):
``.env.example`` with the host's group id for the keys file and fresh secrets filled in
(:func:`first_env`), mode 0600. What only the user knows (the webhook URL, a Hugging Face
token) stays empty.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vkit.deployment.images import COMPOSE_IMAGE_VARIABLES

KEYS_DIR_DEFAULT = "./keys"


@dataclass(frozen=True)
class Variable:
    """One variable of the bundle's ``.env``: its comment lines and its example value."""

    name: str
    comment: str
    example: str = ""


HEADER = """\
# Copy to .env (next to compose.yaml) and fill in; `vkit render compose --out` writes a .env
# like this one when there is none, with VKIT_KEYS_GID and the secrets filled in. Variables
# marked REQUIRED make `docker compose up` stop with a message when missing.
"""


def bundle_variables(checkpoint: str | None) -> list[Variable]:
    """Every variable of the compose file; ``checkpoint``: the catalog's for the render."""
    required = [
        Variable(
            "VLLM_MODEL",
            "REQUIRED: the Hugging Face checkpoint every replica serves. It must match the\n"
            "--quant the compose file was rendered with.",
            checkpoint or "",
        ),
        Variable(
            "VLLM_API_KEY",
            "REQUIRED: shared secret between the gateway and the vLLM replicas (vLLM --api-key).\n"
            'Generate one: python3 -c "import secrets; print(secrets.token_urlsafe(32))"',
        ),
        Variable(
            "VKIT_KEYS_DIR",
            "REQUIRED: the host directory that holds the gateway's keys.yaml (create it with:\n"
            'mkdir -m 0750 keys; vkit keys add NAME --file keys/keys.yaml --group "$(id -g)").\n'
            "The directory is mounted, not the file: `vkit keys add` replaces the file, and the\n"
            "gateway picks the new one up within seconds.",
            KEYS_DIR_DEFAULT,
        ),
        Variable(
            "VKIT_KEYS_GID",
            "REQUIRED: the numeric group of keys.yaml and its directory (`id -g` of whoever runs\n"
            "`vkit keys add ... --group`). The gateway runs as the image's own user (uid 10001)\n"
            "with this group added, and reads the file (mode 0640) through it.",
        ),
        Variable(
            "VKIT_TLS_DIR",
            "REQUIRED: the directory of the edge's TLS certificate (cert.pem, chain first)\n"
            "and its key (key.pem); the edge (NGINX) is what clients reach, on\n"
            "VKIT_EDGE_PORT. Your own, or for a first run a self-signed pair (clients must\n"
            "then trust tls/cert.pem): deploy/README.md's quickstart has the openssl line.",
            "./tls",
        ),
        Variable("GRAFANA_ADMIN_PASSWORD", "REQUIRED: Grafana's admin password."),
        Variable(
            "ALERTMANAGER_WEBHOOK_URL",
            "REQUIRED: where Alertmanager POSTs alerts (its webhook JSON, firing and resolved),\n"
            "e.g. a chat tool's incoming webhook or a bridge to one; http:// or https://. Without\n"
            "it nobody hears of a replica that crashes, flaps, or runs out of GPU memory.",
        ),
    ]
    optional = [
        Variable("HF_TOKEN", "Optional: a Hugging Face token for gated models (Llama needs one)."),
        Variable(
            "VKIT_EDGE_PORT",
            "Optional: the edge's host port (TLS), the one published for clients.",
            "443",
        ),
        Variable(
            "VKIT_GATEWAY_PORT",
            "Optional: the gateway's own host port, published on 127.0.0.1 only (checks from\n"
            "the host; clients go through the edge).",
            "8080",
        ),
        Variable("GRAFANA_PORT", "Optional: Grafana's host port.", "3000"),
    ]
    images = [
        Variable(variable, f"Optional: the image to run (default {image}).", image)
        for image, variable in COMPOSE_IMAGE_VARIABLES.items()
    ]
    return [*required, *optional, *images]


def render_env_example(variables: list[Variable]) -> str:
    """``.env.example``: each variable under its comment."""
    blocks = [
        "".join(f"# {line}\n" for line in variable.comment.splitlines())
        + f"{variable.name}={variable.example}\n"
        for variable in variables
    ]
    return HEADER + "\n" + "".join(blocks)


def first_env(example: str, values: dict[str, str]) -> str:
    """``example`` with each ``NAME=`` line of ``values`` set to its value."""
    for name, value in values.items():
        lines = list(re.finditer(rf"^{re.escape(name)}=.*$", example, re.M))
        if len(lines) != 1:
            raise ValueError(f"{name} is not a variable of the bundle")
        start, end = lines[0].span()
        example = f"{example[:start]}{name}={value}{example[end:]}"
    return example
