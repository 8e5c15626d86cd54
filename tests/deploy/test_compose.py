"""The compose bundle: the committed example is the rendered one, and it is well formed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.bundle_check import image_default
from tests.deploy.gateway_env import gateway_settings, unknown_gateway_variables
from vkit.cli import main

DOCKER_DIR = Path(__file__).resolve().parents[2] / "deploy" / "docker"
FAKE_ENGINE = DOCKER_DIR.parents[1] / "tests" / "launcher" / "supervision" / "fake_engine.py"
EXAMPLE = [
    "render", "compose", "--gpu", "rtx4090", "--gpus", "0,1", "--model", "llama-3.1-8b",
    "--quant", "awq", "--concurrency", "16",
]  # fmt: skip


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DOCKER_DIR / "compose.yaml").read_text())
    return data


def vllm_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in compose["services"].items() if k.startswith("vllm-")}


def seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return int(match.group(1))


def test_committed_bundle_is_exactly_the_rendered_example(tmp_path: Path) -> None:
    """Every file a render writes is committed as rendered, and nothing else is there; the
    kit's own sources, copied into the gateway's build context, are not committed."""
    from vkit.render.bundle import COPIED_SOURCES, GITIGNORE

    ignored = [line for line in GITIGNORE.splitlines() if not line.startswith("#")]
    assert ignored == [".env", "keys/", "tls/", COPIED_SOURCES]
    assert main([*EXAMPLE, "--out", str(tmp_path / "compose.yaml")]) == 0
    rendered = {
        str(path.relative_to(tmp_path))
        for path in tmp_path.rglob("*")
        if path.is_file() and path.name != ".env"
    }
    kept = {name for name in rendered if not name.startswith(COPIED_SOURCES)}
    assert len(rendered - kept) > 100  # the kit's packages, for the gateway's image
    for name in sorted(kept):
        assert (DOCKER_DIR / name).is_file(), f"{name}: re-render deploy/docker/"
        assert (tmp_path / name).read_text() == (DOCKER_DIR / name).read_text(), name
    # What the bundle's .gitignore leaves out (.env, keys/, the copied sources) is not committed.
    ignored = tuple(line for line in (DOCKER_DIR / ".gitignore").read_text().splitlines())
    ignored = tuple(line for line in ignored if line and not line.startswith("#"))
    on_disk = {str(p.relative_to(DOCKER_DIR)) for p in DOCKER_DIR.rglob("*") if p.is_file()}
    committed = {name for name in on_disk if not name.startswith(ignored)}
    assert sorted(committed - kept) == [], "not rendered: remove from deploy/docker/"


def test_without_out_the_compose_file_goes_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(EXAMPLE) == 0
    assert capsys.readouterr().out == (DOCKER_DIR / "compose.yaml").read_text()


def test_one_replica_per_gpu_each_with_its_own_device(compose: dict[str, Any]) -> None:
    services = vllm_services(compose)
    assert sorted(services) == ["vllm-0", "vllm-1"]
    devices = []
    for service in services.values():
        (reservation,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert reservation["capabilities"] == ["gpu"]
        devices += reservation["device_ids"]
        assert service["ipc"] == "host"
        assert any("huggingface" in volume for volume in service["volumes"])
    assert sorted(devices) == ["0", "1"]


def test_replicas_are_supervised_and_drain_before_they_are_killed(
    compose: dict[str, Any],
) -> None:
    for name, service in vllm_services(compose).items():
        command = service["command"]
        shutdown = int(command[command.index("--shutdown-timeout") + 1])
        assert seconds(service["stop_grace_period"]) > shutdown, name
        assert service["restart"] == "unless-stopped"
        assert "/health" in " ".join(service["healthcheck"]["test"])
        assert seconds(service["healthcheck"]["start_period"]) >= 300
        image = image_default(service["image"])
        assert re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+", image), image


def test_replica_command_carries_the_fit_solver_settings(compose: dict[str, Any]) -> None:
    command = compose["services"]["vllm-0"]["command"]
    flags = dict(zip(command[::2], command[1::2], strict=True))
    assert flags["--served-model-name"] == "llama-3.1-8b"
    assert int(flags["--max-model-len"]) >= 2048
    assert int(flags["--max-num-seqs"]) >= 16
    assert flags["--host"] == "0.0.0.0"


def test_only_the_edge_gateway_and_grafana_publish_ports(compose: dict[str, Any]) -> None:
    published = sorted(k for k, v in compose["services"].items() if v.get("ports"))
    assert published == ["edge", "gateway", "grafana"]
    # Clients reach the gateway through the edge; its own port is the host's loopback only.
    assert all(p.startswith("127.0.0.1:") for p in compose["services"]["gateway"]["ports"])
    for service in compose["services"].values():
        assert "network_mode" not in service


def test_every_service_restarts_and_every_image_is_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert service["restart"] == "unless-stopped", name
        image = image_default(service["image"])  # what .env may override
        tag = image.rsplit(":", 1)[-1]
        if name != "gateway":  # built here
            assert tag not in ("latest", image), name


def test_secrets_fail_loudly_and_env_example_documents_every_variable() -> None:
    text = (DOCKER_DIR / "compose.yaml").read_text()
    variables = set(re.findall(r"\$\{(\w+)", text))
    required = set(re.findall(r"\$\{(\w+):\?", text))
    assert {"VLLM_API_KEY", "GRAFANA_ADMIN_PASSWORD", "VLLM_MODEL"} <= required
    example = (DOCKER_DIR / ".env.example").read_text()
    documented = set(re.findall(r"^(\w+)=", example, re.M))
    assert variables <= documented, variables - documented


def test_gateway_image_runs_as_its_own_fixed_unprivileged_user() -> None:
    """uid and gid 10001, as the README and .env.example say (keys.yaml is read through
    the group compose adds, not by owning it)."""
    dockerfile = (DOCKER_DIR / "build" / "gateway" / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    assert users and users[-1] == "10001:10001"
    assert "--uid 10001" in dockerfile and "--gid 10001" in dockerfile
    assert "uid 10001" in (DOCKER_DIR / ".env.example").read_text()
    assert "10001" in (DOCKER_DIR.parent / "README.md").read_text()
    defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", dockerfile, re.M))  # the base: an ARG
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda name: defaults[name[1]], base)
        for base in re.findall(r"^FROM\s+(\S+)", dockerfile, re.M)
    ]
    assert bases and all(base.endswith("-slim") for base in bases)


def test_the_gateway_keeps_its_usage_ledger_in_a_named_volume_of_its_own(
    compose: dict[str, Any],
) -> None:
    """On by default: SQLite in a named volume mounted writable, apart from the read-only
    keys directory; the image makes that folder its user's (0700), which Docker copies onto
    the empty volume at its first mount (tests/deploy/test_compose_up.py checks it for real)."""
    gateway = compose["services"]["gateway"]
    ledger = gateway_settings(gateway["environment"]).ledger
    assert ledger.enabled and ledger.url is not None
    mounts = {
        v: v.rsplit(":", 2) if v.endswith(":ro") else v.split(":") for v in gateway["volumes"]
    }
    ((volume, folder),) = [
        m for m in mounts.values() if ledger.url == f"sqlite:///{m[1]}/usage.sqlite3"
    ]
    assert volume in compose["volumes"]  # named, kept across `down` without -v
    keys = next(m for m in mounts.values() if m[0].startswith("${VKIT_KEYS_DIR"))
    assert keys[2] == "ro" and not folder.startswith(keys[1])
    dockerfile = (DOCKER_DIR / "build" / "gateway" / "Dockerfile").read_text()
    assert f"install -d -o vkit -g vkit -m 0700 {folder}" in dockerfile


def test_each_replica_runs_vllm_under_the_supervisor_with_the_healthchecks_numbers(
    compose: dict[str, Any],
) -> None:
    for name, service in vllm_services(compose).items():
        entrypoint = service["entrypoint"]
        split = entrypoint.index("--")
        assert entrypoint[split + 1 :] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
        script = entrypoint[1]
        mounts = [v.split(":") for v in service["volumes"]]
        ((source, _, mode),) = [m for m in mounts if m[1] == script]
        assert mode == "ro" and (DOCKER_DIR / source).is_file(), name
        options = dict(zip(entrypoint[2:split:2], entrypoint[3:split:2], strict=True))
        check = service["healthcheck"]
        assert seconds(check["interval"]) == int(options["--interval"])
        assert seconds(check["timeout"]) == int(options["--timeout"])
        assert check["retries"] == int(options["--failures"])
        assert seconds(check["start_period"]) == int(options["--start-period"])
        assert options["--health-url"].endswith(":8000/health")
        assert service["init"] is True  # docker-init reaps vLLM's workers


@pytest.mark.integration
def test_a_replica_heals_vllms_start_up_memory_errors(compose: dict[str, Any]) -> None:
    """As ``vkit launch`` does (issue 20: healing ran only where `vkit launch` runs): the
    replica's entrypoint and command as rendered, the bundle's supervisor file, and a
    stand-in in vLLM's place that refuses a context over 1,024 tokens as vLLM does."""
    service = vllm_services(compose)["vllm-0"]
    entrypoint, command = service["entrypoint"], service["command"]
    split = entrypoint.index("--")
    assert int(command[command.index("--max-model-len") + 1]) > 1024
    stand_in = [sys.executable, str(FAKE_ENGINE), "too-long"]
    script = DOCKER_DIR / "vllm_supervisor.py"
    supervisor = [sys.executable, str(script), *entrypoint[2 : split + 1]]
    result = subprocess.run(
        [*supervisor, *stand_in, *command], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    starts = [line for line in result.stdout.splitlines() if line.startswith("fake engine")]
    assert len(starts) == 2 and starts[-1].endswith("--max-model-len 1024"), result.stdout
    assert "retrying with --max-model-len 1024 (restart 1/2)" in result.stderr


def test_gpu_ids_mean_what_nvidia_smi_and_dcgm_call_them(compose: dict[str, Any]) -> None:
    for name, service in vllm_services(compose).items():
        assert service["environment"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID", name


def test_nginx_resolves_the_replicas_at_run_time_and_is_otherwise_the_shared_site() -> None:
    from vkit.nginx_conf import render_nginx_site

    site = (DOCKER_DIR / "nginx" / "vkit.conf").read_text()
    assert "resolver 127.0.0.11 valid=" in site and "zone vkit_replicas" in site
    servers = re.findall(r"^    server (\S+) (\S+)", site, re.M)
    assert servers == [("vllm-0:8000", "resolve"), ("vllm-1:8000", "resolve")]
    shared = render_nginx_site(["vllm-0:8000", "vllm-1:8000"], "8000")
    inserted = re.compile(r"    (# Names looked up at run time|zone |resolver |resolver_timeout )")
    restored = [
        line.replace(" resolve ", " ") for line in site.splitlines() if not inserted.match(line)
    ]
    assert restored == shared.splitlines()  # systemd's and vkit up's site, plus the above
    for kept in ("keepalive 32;", "proxy_next_upstream error timeout", 'Connection ""'):
        assert kept in site
    tag = compose_nginx_image_tag()
    assert tuple(int(n) for n in tag.split("-")[0].split(".")) >= (1, 27, 3), tag  # resolve


def compose_nginx_image_tag() -> str:
    data = yaml.safe_load((DOCKER_DIR / "compose.yaml").read_text())
    image = image_default(data["services"]["nginx"]["image"])
    return image.rsplit(":", 1)[1]


def test_the_gateway_counts_prompts_with_the_served_models_tokenizer(
    compose: dict[str, Any], tiny_model_dir: Path, tmp_path: Path
) -> None:
    from gateway.prompt_tokens import ByteBound, ModelCounters, build_prompt_counter

    gateway = compose["services"]["gateway"]
    settings = gateway_settings(gateway["environment"]).tokenizers
    replica = compose["services"]["vllm-0"]
    model = replica["command"][replica["command"].index("--model") + 1]
    assert gateway["environment"]["VKIT_GATEWAY_TOKENIZERS__MODELS"] == (
        f'{{"llama-3.1-8b": "{model}"}}'
    )
    # The replicas' Hugging Face cache volume, read-only, with the hub where vLLM puts it.
    replica_home = {v.split(":")[0]: v.split(":")[1] for v in replica["volumes"]}["hf-cache"]
    ((_, target, mode),) = [v.split(":") for v in gateway["volumes"] if v.startswith("hf-cache:")]
    assert mode == "ro"
    assert settings.hf_cache == Path(target) / "hub"
    assert replica_home == "/root/.cache/huggingface"  # HF_HOME of the vLLM image: hub below
    # A cache laid out as vLLM leaves it, mounted where the gateway looks: its counter is exact.
    repo = "acme/tiny"
    hub = tmp_path / "hf-cache" / "hub" / f"models--{repo.replace('/', '--')}"
    skip = shutil.ignore_patterns("*.safetensors")
    shutil.copytree(tiny_model_dir, hub / "snapshots" / "abc", ignore=skip)
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text("abc")
    mounted = settings.model_copy(
        update={"models": {"llama-3.1-8b": repo}, "hf_cache": tmp_path / "hf-cache" / "hub"}
    )
    counter = build_prompt_counter(mounted)
    assert isinstance(counter, ModelCounters)
    chat = {"model": "llama-3.1-8b", "messages": [{"role": "user", "content": "Hi there"}]}
    assert counter.count(chat) < ByteBound.of(mounted).count(chat)


def test_gateway_environment_is_what_the_gateway_reads(compose: dict[str, Any]) -> None:
    env = compose["services"]["gateway"]["environment"]
    assert unknown_gateway_variables(env) == []
    settings = gateway_settings(env)
    assert settings.upstream_urls == ["http://nginx:8000"]
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)
    assert settings.health.expected_models == ["llama-3.1-8b"]
    assert settings.upstream_api_key is not None
    published = compose["services"]["gateway"]["ports"]
    assert published == [f"127.0.0.1:${{VKIT_GATEWAY_PORT:-8080}}:{settings.port}"]


def test_prometheus_scrapes_the_gateway_admin_listener_which_is_not_published(
    compose: dict[str, Any],
) -> None:
    gateway = compose["services"]["gateway"]
    settings = gateway_settings(gateway["environment"])
    assert settings.admin_port is not None and settings.admin_port != settings.port
    assert settings.admin_host == "0.0.0.0"  # the Prometheus container reaches it
    assert all(not str(p).endswith(f":{settings.admin_port}") for p in gateway["ports"])
    assert "prometheus" in compose["services"]
    scrape = yaml.safe_load((DOCKER_DIR / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    targets = jobs["vkit-gateway"]["static_configs"][0]["targets"]
    assert targets == [f"gateway:{settings.admin_port}"]


def test_the_gateway_variable_check_can_fail() -> None:
    assert unknown_gateway_variables({"VKIT_GATEWAY_UPSTREAM": "x"}) == ["VKIT_GATEWAY_UPSTREAM"]
    assert unknown_gateway_variables({"VKIT_GATEWAY_HOST__X": "y"}) == ["VKIT_GATEWAY_HOST__X"]


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["--gpus", "0,0"], 2),
        (["--gpu", "no-such-gpu"], 2),
        (["--model", "llama-3.1-70b"], 1),  # does not fit on a 4090
    ],
)
def test_bad_requests_are_one_line_errors(
    argv: list[str], code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    args = list(EXAMPLE)
    for flag, value in zip(argv[::2], argv[1::2], strict=True):
        args[args.index(flag) + 1] = value
    assert main(args) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err


def docker_compose() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("docker-compose is not installed (Debian package: docker-compose)")


def compose_config(tmp_path: Path, env: str, compose_text: str) -> subprocess.CompletedProcess[str]:
    env_file = tmp_path / "test.env"
    env_file.write_text(env)
    compose_file = DOCKER_DIR / "compose.yaml"
    if compose_text != compose_file.read_text():  # a variant: same directory, own name
        compose_file = tmp_path / "compose.yaml"
        compose_file.write_text(compose_text)
    argv = [*docker_compose(), "--env-file", str(env_file), "-f", str(compose_file)]
    return subprocess.run(
        [*argv, "--project-directory", str(DOCKER_DIR), "config", "-q"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def filled_env() -> str:
    example = (DOCKER_DIR / ".env.example").read_text()
    return re.sub(r"^(\w+)=$", r"\1=test-value", example, flags=re.M)


@pytest.mark.integration
def test_docker_compose_accepts_the_committed_file(tmp_path: Path) -> None:
    text = (DOCKER_DIR / "compose.yaml").read_text()
    result = compose_config(tmp_path, filled_env(), text)
    assert result.returncode == 0, result.stderr


@pytest.mark.integration
def test_docker_compose_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    text = (DOCKER_DIR / "compose.yaml").read_text()
    env = re.sub(r"^VLLM_API_KEY=.*$", "", filled_env(), flags=re.M)
    result = compose_config(tmp_path, env, text)
    assert result.returncode != 0
    assert "VLLM_API_KEY" in result.stderr


@pytest.mark.integration
def test_docker_compose_validates_the_schema(tmp_path: Path) -> None:
    """The check above can fail: an unknown service key is refused."""
    text = (DOCKER_DIR / "compose.yaml").read_text().replace("ipc: host", "ipc_mode: host", 1)
    result = compose_config(tmp_path, filled_env(), text)
    assert result.returncode != 0
    assert "ipc_mode" in result.stderr
