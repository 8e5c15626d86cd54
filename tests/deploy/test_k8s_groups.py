"""A Kubernetes overlay of two models (a deployment file): built by ``kubectl kustomize`` into
exactly what the render says, every object valid against its schema, one StatefulSet and
headless Service per group, and the gateway discovering each group's Service."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.settings import load_settings
from tests.deploy.test_k8s_render import kubectl, object_key
from tests.deploy.test_k8s_schemas import validate_object
from vkit.cli import main
from vkit.deployment.deployment_file import load_deployment_file
from vkit.deployment.group_fit import fit_groups
from vkit.render.k8s_groups import DNS_NAMES_VAR, group_patch, group_specs

REPO = Path(__file__).resolve().parents[2]
TWO_MODELS = REPO / "deploy" / "deployments" / "two-models.yaml"


def rendered() -> list[dict[str, Any]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["render", "k8s", "--deployment", str(TWO_MODELS)]) == 0
    return sorted(yaml.safe_load_all(out.getvalue()), key=object_key)


def by_name(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def render_and_build(deployment: Path, root: Path) -> list[dict[str, Any]]:
    """``vkit render k8s --deployment`` into ``root``, then its overlay built by kustomize."""
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["render", "k8s", "--deployment", str(deployment), "--out", str(root)]) == 0
    done = subprocess.run(
        [kubectl(), "kustomize", str(root / "overlays" / deployment.stem)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return sorted(yaml.safe_load_all(done.stdout), key=object_key)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return render_and_build(TWO_MODELS, tmp_path_factory.mktemp("k8s"))


@pytest.mark.integration
def test_kustomize_builds_what_the_render_says(built: list[dict[str, Any]]) -> None:
    mine = rendered()
    assert [object_key(o) for o in mine] == [object_key(o) for o in built]
    for ours, theirs in zip(mine, built, strict=True):
        assert ours == theirs, object_key(ours)


@pytest.mark.integration
def test_every_object_validates_against_its_schema(built: list[dict[str, Any]]) -> None:
    for obj in built:
        validate_object(obj)


@pytest.mark.integration
def test_each_group_is_its_own_statefulset_behind_its_own_headless_service(
    built: list[dict[str, Any]],
) -> None:
    chat, fast = by_name(built, "StatefulSet", "vllm"), by_name(built, "StatefulSet", "vllm-fast")
    assert fast["spec"]["serviceName"] == "vllm-fast-pods"
    pods = by_name(built, "Service", "vllm-fast-pods")
    assert pods["spec"]["clusterIP"] == "None"
    assert pods["spec"]["selector"] == {"app.kubernetes.io/name": "vllm-fast"}
    pod_labels = fast["spec"]["template"]["metadata"]["labels"]
    assert pods["spec"]["selector"].items() <= pod_labels.items()
    # the first group's pods do not carry the second's label: each Service finds its own
    chat_labels = chat["spec"]["template"]["metadata"]["labels"]
    assert not pods["spec"]["selector"].items() <= chat_labels.items()
    assert fast["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "vllm-fast"}
    chat_args = chat["spec"]["template"]["spec"]["containers"][0]["args"]
    fast_args = fast["spec"]["template"]["spec"]["containers"][0]["args"]
    assert chat_args[chat_args.index("--served-model-name") + 1] == "chat"
    assert fast_args[fast_args.index("--served-model-name") + 1] == "fast"
    assert "--enable-lora" in chat_args and "--enable-lora" not in fast_args
    # each pod is given whole GPUs: no memory split as on one box
    for args in (chat_args, fast_args):
        assert args[args.index("--gpu-memory-utilization") + 1] == "0.92"
    assert env_of(chat)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in env_of(fast)
    file = load_deployment_file(TWO_MODELS)
    fits = fit_groups(file, share=False)
    specs = group_specs(file, fits)
    for index, statefulset in enumerate((chat, fast)):
        container = group_patch(index, specs[index], fits[index])["spec"]["template"]["spec"]
        assert (
            statefulset["spec"]["template"]["spec"]["containers"][0]["args"]
            == (container["containers"][0]["args"])
        )


@pytest.mark.integration
def test_the_gateway_discovers_every_group_and_loads_back(built: list[dict[str, Any]]) -> None:
    env = env_of(by_name(built, "Deployment", "vkit-gateway"))
    assert json.loads(env[DNS_NAMES_VAR]) == [
        "vllm-pods.vkit.svc:8000",
        "vllm-fast-pods.vkit.svc:8000",
    ]
    settings = load_settings(environ=env)
    assert settings.routing == "aware"
    assert settings.health.expected_models == []
    # every group's Service is looked up once (the base's dns_name is the first group's)
    assert settings.discovery.dns_targets == [
        ("vllm-pods.vkit.svc", 8000),
        ("vllm-fast-pods.vkit.svc", 8000),
    ]


def test_a_bad_deployment_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(TWO_MODELS.read_text().replace("served_name: fast", "served_name: chat"))
    assert main(["render", "k8s", "--deployment", str(bad), "--out", str(tmp_path / "k8s")]) == 2
    assert not (tmp_path / "k8s").exists()


# --- Per-group autoscaling: each group's own autoscaler on its own StatefulSet -------------

AUTOSCALED = (
    TWO_MODELS.read_text()
    .replace(
        "    lora: {max_loras: 2, runtime_updates: true}\n",
        "    lora: {max_loras: 2, runtime_updates: true}\n"
        "    autoscaling: {autoscaler: hpa, min_replicas: 2, max_replicas: 3}\n",
    )
    .replace(
        "    context: 4096\n",
        "    context: 4096\n    autoscaling: {max_replicas: 4, scale_target: 7}\n",
    )
)


@pytest.fixture(scope="module")
def autoscaled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    root = tmp_path_factory.mktemp("k8s-auto")
    deployment = root / "autoscaled.yaml"
    deployment.write_text(AUTOSCALED)
    out = root / "k8s"
    return out, render_and_build(deployment, out)


@pytest.mark.integration
def test_each_group_scales_its_own_statefulset_on_its_own_model(
    autoscaled: tuple[Path, list[dict[str, Any]]],
) -> None:
    out, built = autoscaled
    for obj in built:
        validate_object(obj)
    chat, fast = by_name(built, "StatefulSet", "vllm"), by_name(built, "StatefulSet", "vllm-fast")
    assert (chat["spec"]["replicas"], fast["spec"]["replicas"]) == (2, 1)  # the least of each
    hpa = by_name(built, "HorizontalPodAutoscaler", "vllm")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "vllm"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 3)
    scaled = by_name(built, "ScaledObject", "vllm-fast")
    assert scaled["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "name": "vllm-fast"
    }  # fmt: skip
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 4)
    triggers = {t["name"]: t["metadata"] for t in scaled["spec"]["triggers"]}
    assert 'model_name="fast"' in triggers["running"]["query"]
    assert triggers["running"]["threshold"] == "7"
    assert [o["kind"] for o in built].count("ScaledObject") == 1  # none for the HPA's group
    assert (out / "overlays" / "autoscaled" / "prometheus-adapter-values.yaml").is_file()


def test_groups_without_autoscaling_keep_their_fixed_replicas() -> None:
    objects = rendered()
    assert by_name(objects, "StatefulSet", "vllm-fast")["spec"]["replicas"] == 1
    scaled = [o for o in objects if o["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")]
    assert [o["metadata"]["name"] for o in scaled] == ["vkit-gateway"]  # the gateway's HPA only


def test_autoscaling_bounds_out_of_order_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(AUTOSCALED.replace("max_replicas: 3", "max_replicas: 1"))
    assert main(["render", "k8s", "--deployment", str(bad), "--out", str(tmp_path / "k8s")]) == 2
    assert not (tmp_path / "k8s").exists()
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "min_replicas 2 is above max_replicas 1" in error[0], error
