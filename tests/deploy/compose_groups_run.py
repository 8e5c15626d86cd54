"""Two replica groups of a compose bundle under the real Docker engine, each request answered
by its own group.

:func:`run_two_groups` renders ``vkit render compose --deployment`` of a CPU deployment file
(the shapes of ``tests/e2e/test_up_groups.py``: the built-in tiny model served as ``tiny``
with a random-weight LoRA adapter ``tiny-sql`` read from a host directory, and the same
model again as a second group ``tiny-two``), brings up its replicas, the gateway and Redis
with the images built here (``tests/docker_images.py``, no registry), and then, through the
gateway's published port with the OpenAI SDK: every served name and the adapter listed by
``/v1/models``; one chat completion for each, answered by its own group's replica (each
replica's own ``vllm:request_success_total``, read inside its container, grows by one, the
other's not at all); a model nobody serves is the OpenAI 404; ``docker-compose down`` leaves
nothing behind. The edge, Prometheus, Alertmanager and Grafana are not started: the
single-group test (``test_compose_up.py``) covers them, and two CPU engines are enough for
two shared cores.

The system tier runs it (``test_compose_groups_up.py``, with the session's images); it
took 4.7 and 6.8 minutes (from rendering to ``down``) on a two-core machine beside other
work. By hand, the images must be built first (``make images``); nothing is built or
removed:

    make images
    python -m tests.deploy.compose_groups_run [GATEWAY_PORT]   # default 18080, on 127.0.0.1
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from launcher.supervision.tiny_model import build_tiny_model
from tests.deploy.compose_stack import ComposeStack, log, new_secret, vkit, wait_for
from tests.e2e.prom import sample_sum
from tests.e2e.test_up_groups import RANK, write_random_lora

PROJECT = "vkit-test-compose-groups"
# served name -> the replica service that must answer it
ANSWERED_BY = {"tiny": "vllm-tiny-0", "tiny-two": "vllm-tiny-two-1", "tiny-sql": "vllm-tiny-0"}
STARTED = ("vllm-tiny-0", "vllm-tiny-two-1", "redis", "gateway")
FIRST_ANSWER_S = 900  # two CPU engines (one with LoRA) starting on two shared cores
METRICS_PROBE = (
    "import urllib.request; "
    "print(urllib.request.urlopen('http://127.0.0.1:8000/metrics', timeout=10).read().decode())"
)


def deployment_file(adapter: Path) -> str:
    """One core each: ``tiny`` with the adapter on core 0, ``tiny-two`` on core 1."""
    return (
        "gpu: cpu\ngroups:\n"
        "  - {model: tiny-llama, served_name: tiny, gpus: [0], context: 256,\n"
        f"     adapters: [{{name: tiny-sql, source: {adapter}, rank: {RANK}}}],\n"
        "     lora: {max_cpu_loras: 2}}\n"
        "  - {model: tiny-llama, served_name: tiny-two, gpus: [1], context: 256}\n"
    )


def successes(stack: ComposeStack, service: str) -> float:
    """The replica's finished requests, from its own ``/metrics`` inside its container."""
    text = stack.exec(service, "python3", "-c", METRICS_PROBE)
    return sample_sum(text, "vllm:request_success_total")


def run_two_groups(images: Mapping[str, str], work: Path, gateway_port: int) -> dict[str, float]:
    """Render, bring up, ask each model, bring down (see the module): the seconds each step
    took. ``images``: compose service kind -> tag (``vllm-cpu``, ``gateway``, ``redis``, ...)."""
    import openai

    tiny = build_tiny_model(work / "models" / "tiny")
    adapter = write_random_lora(work / "lora" / "sql", tiny)
    deployment = work / "two.yaml"
    deployment.write_text(deployment_file(adapter))
    bundle = work / "bundle"
    vkit(
        "render", "compose", "--deployment", str(deployment), "--out", str(bundle / "compose.yaml")
    )
    keys_dir = work / "keys"
    keys_dir.mkdir()
    gid = str(os.getgid())
    # every model granted: what no group serves is then the gateway's 404, not the key's 403
    key = vkit("keys", "add", "groups", "--file", str(keys_dir / "keys.yaml"), "--group", gid)
    tls = work / "tls"  # the edge is not started; its mount must still be named
    tls.mkdir()
    env = {
        "VLLM_API_KEY": new_secret(),
        "VKIT_KEYS_DIR": str(keys_dir),
        "VKIT_KEYS_GID": gid,
        "VKIT_TLS_DIR": str(tls),
        "VKIT_GATEWAY_PORT": str(gateway_port),
        "GRAFANA_ADMIN_PASSWORD": new_secret(),
        "ALERTMANAGER_WEBHOOK_URL": "http://alerts.invalid/hook",
    }
    stack = ComposeStack(bundle / "compose.yaml", images, env, project=PROJECT)
    stack.write()
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{gateway_port}/v1",
        api_key=key.strip().splitlines()[-1],
        max_retries=0,
        timeout=60,
    )

    def chat(model: str) -> str:
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3
        )
        assert reply.usage is not None and reply.usage.completion_tokens > 0
        return reply.model

    timings: dict[str, float] = {}
    down = False
    try:
        started = time.monotonic()
        stack.must("up", "-d", "--no-build", *STARTED)
        log(f"up -d returned after {time.monotonic() - started:.1f} s")
        for model in ANSWERED_BY:  # a 404 or 503 while a replica starts counts as not yet
            wait_for(f"a first answer of {model}", lambda m=model: chat(m), FIRST_ANSWER_S, 3)
            timings[f"up to the first answer of {model}"] = time.monotonic() - started
            log(
                f"{model}: first answer after {timings[f'up to the first answer of {model}']:.1f} s"
            )
        listed = {model.id for model in client.models.list()}
        assert listed == set(ANSWERED_BY), listed
        for model, answering in ANSWERED_BY.items():
            idle = next(s for s in set(ANSWERED_BY.values()) if s != answering)
            before = successes(stack, answering), successes(stack, idle)
            assert chat(model) == model
            after = successes(stack, answering), successes(stack, idle)
            counts = f"{before[0]:.0f} -> {after[0]:.0f}, {idle} stays {after[1]:.0f}"
            log(f"{model}: {answering} {counts}")
            assert after == (before[0] + 1, before[1]), (model, before, after)
        try:
            chat("nobody")
        except openai.NotFoundError as exc:
            assert exc.status_code == 404
        else:
            raise AssertionError("a model no group serves was answered")
        timings["down"] = stack.down()
        down = True
        assert stack.leftovers() == []
    finally:
        if not down:
            log("failed; the last lines of every service:\n" + stack.logs())
            stack.down(grace_s=5)
    return timings


def existing_images() -> dict[str, str]:
    """The newest ``vkit-test-NAME:HASH`` image of each name on this machine: NAME -> tag."""
    out = subprocess.run(
        ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found: dict[str, str] = {}
    for tag in out.split():
        repository = tag.partition(":")[0]
        if repository.startswith("vkit-test-"):
            found.setdefault(repository.removeprefix("vkit-test-"), tag)
    missing = sorted({"vllm-cpu", "gateway", "redis"} - found.keys())
    if missing:
        raise SystemExit(f"no vkit-test image of {', '.join(missing)}: run `make images` first")
    return found


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 18080
    with tempfile.TemporaryDirectory(prefix="vkit-compose-groups-") as tmp:
        for what, seconds in run_two_groups(existing_images(), Path(tmp), port).items():
            log(f"{what}: {seconds:.1f} s")
