"""A serverless vLLM endpoint for the planned model: the RunPod worker's settings, and the
gateway's spill-over settings that point at it (docs/serverless.md).

    files = serverless_files(group, gpu_name="H100 80GB", endpoint_id=None, command="vkit ...")
    files[WORKER_ENV_FILE]    # MODEL_NAME=..., MAX_MODEL_LEN=..., for the endpoint's template
    files[GATEWAY_ENV_FILE]   # VKIT_GATEWAY_SPILL__URL=..., for the gateway

The worker (github.com/runpod-workers/worker-vllm) builds its ``vllm serve`` command from its
environment: a variable named as a flag in upper snake case is that flag, and a few keep
historical names (``MODEL_NAME`` is ``--model``, ``OPENAI_SERVED_MODEL_NAME_OVERRIDE`` is
``--served-model-name``). So the worker's settings here are the replica group's own vLLM
command -- the one builder every target uses (:meth:`vkit.deployment.ReplicaGroup.vllm_argv`)
-- written in the worker's names (:data:`WORKER_NAMES`), never a value spelled again. The
worker serves the model under the group's name, so the gateway sends it as it is (no
``spill.models`` mapping). Flags the worker sets itself (``--host``, ``--port``) or has no
setting for (``--shutdown-timeout``: the platform stops workers), and the kit's admission
in front of its own replicas (the queue caps, the priority policy: the platform queues the
endpoint's jobs), are left out; any other flag
it has no name for is refused (:class:`ServerlessRenderError`), so nothing is silently lost.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.settings_env import settings_env, settings_from_values
from vkit.deployment.model import ReplicaGroup

WORKER_ENV_FILE = "runpod-worker.env"
GATEWAY_ENV_FILE = "gateway-spill.env"
WORKER_IMAGE = "runpod/worker-v1-vllm"  # the worker's published image (its README)
RUNPOD_OPENAI_URL = "https://api.runpod.ai/v2/{endpoint}/openai"  # + /v1/..., its README
ENDPOINT_PLACEHOLDER = "ENDPOINT_ID"
SPILL_NAME = "runpod"
API_KEY_FILE = "/etc/vkit/runpod.key"

# The vLLM flags the kit's builder emits, by the worker's variable for each: its aliases,
# then its generic rule (the flag in upper snake case) for the flags on its allowlist
# (its src/args_builder.py: VALUE_FLAGS, PAIRED_BOOL_FLAGS; docs/serverless.md).
WORKER_NAMES: dict[str, str] = {
    "--model": "MODEL_NAME",
    "--served-model-name": "OPENAI_SERVED_MODEL_NAME_OVERRIDE",
    "--max-model-len": "MAX_MODEL_LEN",
    "--max-num-seqs": "MAX_NUM_SEQS",
    "--gpu-memory-utilization": "GPU_MEMORY_UTILIZATION",
    "--quantization": "QUANTIZATION",
    "--kv-cache-dtype": "KV_CACHE_DTYPE",
    "--tensor-parallel-size": "TENSOR_PARALLEL_SIZE",
    "--enforce-eager": "ENFORCE_EAGER",  # a boolean: true / false
    "--enable-prefix-caching": "ENABLE_PREFIX_CACHING",
}
LEFT_TO_THE_WORKER = frozenset({"--host", "--port", "--shutdown-timeout"})
# The kit's admission in front of its own replicas (launcher.sizing.queue_caps, gateway.
# priority_class), not the worker's: the platform queues a serverless endpoint's jobs (and
# MAX_CONCURRENCY bounds a worker's), and the gateway sends the remote no ``priority``.
LEFT_TO_THE_PLATFORM = frozenset(
    {"--max-num-queued-reqs", "--max-num-queued-tokens", "--scheduling-policy"}
)
CONCURRENCY_NAME = "MAX_CONCURRENCY"  # the wrapper's jobs per worker (default 30)


class ServerlessRenderError(ValueError):
    """The replica group uses a vLLM flag the worker has no setting for; one line."""


def worker_env(argv: Sequence[str], concurrency: int | None = None) -> dict[str, str]:
    """The worker's variables for a vLLM command (without its engine prefix); a boolean flag
    is ``true`` (``--no-...``: ``false``). ``concurrency``: the jobs one worker takes at once
    (``MAX_CONCURRENCY``; None: the worker's default)."""
    env: dict[str, str] = {}
    args = list(argv)
    index = 0
    while index < len(args):
        flag = args[index]
        value: str | None = None
        if index + 1 < len(args) and not args[index + 1].startswith("--"):
            value = args[index + 1]
            index += 1
        index += 1
        negated = flag.startswith("--no-")
        name = "--" + flag.removeprefix("--no-") if negated else flag
        if name in LEFT_TO_THE_WORKER or name in LEFT_TO_THE_PLATFORM:
            continue
        if name not in WORKER_NAMES:
            raise ServerlessRenderError(
                f"the RunPod vLLM worker has no setting for {flag}: render another target"
            )
        env[WORKER_NAMES[name]] = value if value is not None else str(not negated).lower()
    if concurrency is not None:
        env[CONCURRENCY_NAME] = str(concurrency)
    return env


def endpoint_url(endpoint_id: str | None) -> str:
    """The endpoint's OpenAI-compatible base URL, without ``/v1`` (as the gateway takes it)."""
    return RUNPOD_OPENAI_URL.format(endpoint=endpoint_id or ENDPOINT_PLACEHOLDER)


def gateway_spill_env(endpoint_id: str | None) -> dict[str, str]:
    """The gateway's ``VKIT_GATEWAY_SPILL__*`` variables for the endpoint (the gateway's own
    settings, written by its one writer). ``required``: a gateway that cannot reach it does
    not start, so a wrong endpoint id or key is found at once."""
    settings = settings_from_values(
        {
            "spill": {
                "url": endpoint_url(endpoint_id),
                "name": SPILL_NAME,
                "api_key_file": API_KEY_FILE,
                "required": True,
            }
        }
    )
    return settings_env(settings)


def serverless_files(
    group: ReplicaGroup,
    *,
    gpu_name: str,
    endpoint_id: str | None,
    command: str,
    concurrency: int | None = None,
) -> dict[str, str]:
    """The two files: the worker's environment and the gateway's spill-over settings."""
    env = worker_env(group.vllm_argv(engine=[]), concurrency)
    plan = group.plan
    fit = (
        f"# fit: {plan.max_model_len} tokens of context, {plan.max_num_seqs} sequences, "
        f"{plan.quant} on {gpu_name} x{plan.tensor_parallel}\n"
        if plan is not None
        else ""
    )
    worker = (
        f"# Generated by: {command}\n"
        f"# The RunPod serverless endpoint's environment (image {WORKER_IMAGE}, GPU class "
        f"{gpu_name}).\n{fit}"
        "# Gated models also need HF_TOKEN, set in RunPod as a secret, never here.\n"
        + "".join(f"{name}={value}\n" for name, value in env.items())
    )
    placeholder = (
        f"# Replace {ENDPOINT_PLACEHOLDER} with the endpoint's id.\n" if not endpoint_id else ""
    )
    gateway = (
        f"# Generated by: {command}\n"
        "# The gateway's spill-over settings (docs/spill-over.md): add to its environment, put\n"
        f"# the RunPod API key alone in {API_KEY_FILE} (readable by the gateway only), and\n"
        "# mark the keys that may spill with 'spill: true' in the keys file.\n"
        + placeholder
        + "".join(f"{name}={value}\n" for name, value in gateway_spill_env(endpoint_id).items())
    )
    return {WORKER_ENV_FILE: worker, GATEWAY_ENV_FILE: gateway}
