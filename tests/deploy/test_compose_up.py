"""The CPU compose bundle brought up for real under Docker, as a user brings it up.

``vkit render compose --gpu cpu`` of the installed wheel renders the bundle into an empty
directory outside the checkout (the checkout's render is the same files); ``docker-compose
build`` builds the gateway from the bundle's own context; the other images are the ones built
here from Debian's packages and the project's Dockerfiles (``tests/docker_images.py``, no
registry); ``.env`` publishes the edge (TLS, a generated pair) and the gateway on 127.0.0.1
only. Then, through the edge with the OpenAI SDK: a chat completion and a stream; a key added
on the host with the wheel's ``vkit keys add`` is accepted within the reload interval; a
replica that crashes (its main process SIGKILLed) costs no request sent after a short grace
and comes back through its restart policy; Prometheus scrapes the replicas and the gateway
and an alert reaches Alertmanager's webhook; ``docker-compose down`` lets a stream in flight
finish and leaves nothing behind. Grafana is not started (no Debian package to build it from).

``docker kill`` is not the crash here: Docker counts it as a manual stop, and the restart
policy then leaves the container down (docs/docker-offline.md#restart-policies-and-docker-kill).
Timings are printed (``-s``) and collected in :data:`TIMINGS` order.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy.compose_stack import (
    ComposeStack,
    WebhookReceiver,
    bundle_differences,
    docker,
    log,
    new_secret,
    render_cpu_bundle,
    rules_dir,
    vkit,
    wait_for,
)
from tests.deploy.wheel_kit import InstalledKit, installed_kit
from tests.docker_images import Built, bridge_gateway
from vkit.edge_cert import ensure_certificate

pytestmark = pytest.mark.system

CORES = "0,1"  # two replicas, one per core: one can die while the other serves
CONTEXT = 1024
MODEL = "tiny-llama"
SMOKE_ALERT = "VkitComposeTestAlert"
# Always firing: shows Prometheus -> Alertmanager -> webhook without waiting out a real
# alert's `for:` (the bundle's rules are loaded beside it).
SMOKE_RULES = {
    "groups": [
        {
            "name": "vkit-compose-test",
            "rules": [{"alert": SMOKE_ALERT, "expr": "vector(1)", "labels": {"severity": "info"}}],
        }
    ]
}
FIRST_ANSWER_S = 900  # images loaded, two CPU engines started on 2 shared cores
KEY_RELOAD_S = 10  # README: loaded within about 2 s
KILL_GRACE_S = 6  # NGINX's resolver (valid=5s) and fail_timeout forget the dead replica
DRAIN_TOKENS = 700
GATEWAY_TAG = "vkit-test-compose-gateway:latest"  # built from the bundle, removed after


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def add_key(name: str, keys_file: Path, gid: str, kit: InstalledKit) -> str:
    """``vkit keys add`` on the host, as the README says; the secret it prints."""
    out = vkit(
        *("keys", "add", name, "--file", str(keys_file), "--rpm", "6000", "--tpm", "10000000"),
        *("--concurrency", "16", "--max-tokens", "1000", "--models", MODEL, "--group", gid),
        kit=kit,
    )
    return out.strip().splitlines()[-1]


def chat(client: Any, text: str = "Hello there, how are you today?", **extra: Any) -> Any:
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], max_tokens=8, **extra
    )


def prometheus_up(stack: ComposeStack) -> dict[str, list[str]] | None:
    """``up`` by job from Prometheus' HTTP API (inside its container), once every replica
    and the gateway are up; None before."""
    url = "http://127.0.0.1:9090/api/v1/query?query=up"
    answer = json.loads(stack.exec("prometheus", "wget", "-qO-", url))
    by_job: dict[str, list[str]] = {}
    for series in answer["data"]["result"]:
        if series["value"][1] == "1":
            by_job.setdefault(series["metric"]["job"], []).append(series["metric"]["instance"])
    replicas = len(CORES.split(","))
    if len(by_job.get("vllm", [])) == replicas and by_job.get("vkit-gateway"):
        return by_job
    return None


def replica_answers(stack: ComposeStack, service: str) -> bool | None:
    """A chat completion sent to the replica itself, inside its container."""
    probe = (
        "import json, os, urllib.request; "
        "body = json.dumps({'model': 'tiny-llama', 'max_tokens': 4, "
        "'messages': [{'role': 'user', 'content': 'Hello there, how are you today?'}]}); "
        "request = urllib.request.Request('http://127.0.0.1:8000/v1/chat/completions', "
        "body.encode(), {'Content-Type': 'application/json', "
        "'Authorization': 'Bearer ' + os.environ['VLLM_API_KEY']}); "
        "answer = json.load(urllib.request.urlopen(request, timeout=30)); "
        "print(answer['usage']['completion_tokens'])"
    )
    return stack.exec(service, "python3", "-c", probe).strip() == "4" or None


def ledger_of(stack: ComposeStack, served: int) -> dict[str, Any] | None:
    """The gateway's ledger folder (owner, mode) and key ``first``'s requests, read inside
    its container, once it holds at least the ``served`` completion tokens."""
    probe = (
        "import json, os, sqlite3; "
        "folder = os.stat('/var/lib/vkit-gateway'); "
        "db = sqlite3.connect('/var/lib/vkit-gateway/usage.sqlite3'); "
        'row = db.execute("SELECT sum(requests), sum(completion_tokens) FROM usage_hours '
        "WHERE key = 'first'\").fetchone(); "
        "print(json.dumps({'folder': [folder.st_uid, oct(folder.st_mode & 0o777)], "
        "'requests': row[0] or 0, 'completion_tokens': row[1] or 0}))"
    )
    found: dict[str, Any] = json.loads(stack.exec("gateway", "python", "-c", probe))
    return found if found["completion_tokens"] >= served else None


def crash(container: str) -> None:
    """SIGKILL the container's main process from the host: a crash, as an OOM kill is."""
    pid = int(docker("inspect", "-f", "{{.State.Pid}}", container).strip())
    os.kill(pid, signal.SIGKILL)


def restart_count(container: str) -> int:
    return int(docker("inspect", "-f", "{{.RestartCount}}", container).strip())


def test_the_cpu_bundle_serves_heals_monitors_and_drains(
    compose_images: dict[str, Built], tmp_path: Path
) -> None:
    from openai import OpenAI

    timings: dict[str, float] = {
        f"image {name} ({'cached' if built.cached else 'built'})": built.seconds
        for name, built in compose_images.items()
    }
    # The bundle a user gets from the installed wheel, in an empty directory outside the
    # checkout; the checkout renders the very same files.
    kit = installed_kit(tmp_path / "kit")
    compose = render_cpu_bundle(tmp_path / "bundle", cores=CORES, context=CONTEXT, kit=kit)
    from_checkout = render_cpu_bundle(tmp_path / "checkout", cores=CORES, context=CONTEXT)
    assert bundle_differences(compose.parent, from_checkout.parent) == []
    (rules_dir(compose) / "compose-test.yml").write_text(json.dumps(SMOKE_RULES))
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    gid = str(os.getgid())
    first_key = add_key("first", keys_dir / "keys.yaml", gid, kit)
    port, edge_port = free_port(), free_port()
    tls = tmp_path / "tls"
    assert ensure_certificate(tls / "cert.pem", tls / "key.pem") == "made"
    receiver = WebhookReceiver(bridge_gateway())
    env = {
        "VLLM_API_KEY": new_secret(),
        "VKIT_KEYS_DIR": str(keys_dir),
        "VKIT_KEYS_GID": gid,
        "VKIT_TLS_DIR": str(tls),
        "VKIT_EDGE_PORT": f"127.0.0.1:{edge_port}",
        "VKIT_GATEWAY_PORT": f"127.0.0.1:{port}",
        "GRAFANA_ADMIN_PASSWORD": new_secret(),
        "ALERTMANAGER_WEBHOOK_URL": receiver.url,
        "VKIT_GATEWAY_IMAGE": GATEWAY_TAG,
    }
    images = {name: built.tag for name, built in compose_images.items()}
    # The gateway is built from the bundle's own context (`docker compose build`), on the
    # python:3.11-slim stand-in.
    base = {"PYTHON_IMAGE": compose_images["python"].tag}
    stack = ComposeStack(compose, images, env, build_args=base)
    stack.write()
    # Clients go through the edge (TLS, the generated pair trusted); the gateway's own port
    # (published on 127.0.0.1 only) is asked directly once.
    base_url = f"https://127.0.0.1:{edge_port}/v1"
    http = httpx.Client(verify=str(tls / "cert.pem"), timeout=60)
    client = OpenAI(base_url=base_url, api_key=first_key, max_retries=0, http_client=http)
    down = False
    with receiver.running():
        try:
            started = time.monotonic()
            stack.up()
            log(f"up -d returned after {time.monotonic() - started:.1f} s")
            first = wait_for("a first chat completion", lambda: chat(client), FIRST_ANSWER_S, 3)
            timings["up to first answer"] = time.monotonic() - started
            assert first.usage.completion_tokens > 0 and first.choices[0].message.content
            log(f"first answer after {timings['up to first answer']:.1f} s")
            direct = OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key=first_key, max_retries=0
            )
            direct_tokens = chat(direct).usage.completion_tokens
            assert direct_tokens > 0

            # A stream, with usage at its end.
            stream = client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Tell me a story about a cat."}],
                max_tokens=32,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
            chunks = list(stream)
            # Several chunks carry text (the tiny model samples random tokens, and a token that
            # decodes to part of a character sends no text of its own: not one chunk per token)
            texts = [c.choices[0].delta.content for c in chunks if c.choices]
            assert sum(1 for text in texts if text) >= 2 and "".join(t or "" for t in texts)
            assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 32

            # The usage ledger: SQLite in the gateway's own named volume (its user's, 0700,
            # apart from the read-only keys), written within its flush interval.
            served = first.usage.completion_tokens + direct_tokens + 32
            ledger = wait_for("the ledger written", lambda: ledger_of(stack, served), 30, 1)
            assert ledger["folder"] == [10001, "0o700"] and ledger["requests"] >= 3, ledger

            # A key added on the host while the gateway runs: accepted within the interval.
            added = time.monotonic()
            second = OpenAI(
                base_url=base_url,
                api_key=add_key("second", keys_dir / "keys.yaml", gid, kit),
                max_retries=0,
                http_client=http,
            )
            wait_for("the added key accepted", lambda: chat(second), KEY_RELOAD_S, 0.5)
            timings["key added to accepted"] = time.monotonic() - added

            # Prometheus scrapes every replica and the gateway's admin listener.
            by_job = wait_for("Prometheus scraping", lambda: prometheus_up(stack), 90, 3)
            log(f"Prometheus up by job: {by_job}")

            # A replica crashes: requests sent after a short grace succeed (the other one
            # serves); the restart policy brings it back and it serves again.
            victim = stack.container("vllm-0")
            restarts = restart_count(victim)
            crashed = time.monotonic()
            crash(victim)
            time.sleep(KILL_GRACE_S)
            for _ in range(8):
                assert chat(client).usage.completion_tokens > 0
            wait_for("vllm-0 restarted", lambda: restart_count(victim) > restarts or None, 60)
            wait_for("vllm-0 serving again", lambda: replica_answers(stack, "vllm-0"), 600, 3)
            timings["crash to served again"] = time.monotonic() - crashed
            assert chat(client).usage.completion_tokens > 0

            # An alert reaches Alertmanager's webhook (group_wait 30 s after it fires).
            wait_for(
                "the alert at the webhook",
                lambda: SMOKE_ALERT in receiver.alert_names() or None,
                180,
                2,
            )

            # down drains: a stream in flight when it starts finishes, every token.
            tokens: list[int] = []
            stream_done = threading.Event()

            def long_stream() -> None:
                stream = client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": "Tell me everything."}],
                    max_tokens=DRAIN_TOKENS,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_body={"ignore_eos": True},
                    timeout=300,
                )
                for chunk in stream:
                    if chunk.usage is not None:
                        tokens.append(chunk.usage.completion_tokens)
                    elif not tokens:
                        tokens.append(0)  # first chunk: the stream is in flight
                stream_done.set()

            streamer = threading.Thread(target=long_stream, daemon=True)
            streamer.start()
            wait_for("the long stream in flight", lambda: tokens or None, 60, 0.2)
            timings["down"] = stack.down()
            down = True
            streamer.join(timeout=60)
            assert stream_done.is_set() and tokens[-1] == DRAIN_TOKENS, tokens
            assert stack.leftovers() == []
        finally:
            if not down:
                log("failed; the last lines of every service:\n" + stack.logs())
                stack.down(grace_s=5)
            leftover = stack.leftovers()
    assert leftover == []
    for what, seconds in timings.items():
        log(f"{what}: {seconds:.1f} s")
