"""The usage ledger on Kubernetes (``vkit render k8s --ledger``), built by ``kubectl
kustomize``: SQLite keeps one gateway pod on a volume only it may mount; PostgreSQL keeps
the base's gateways and takes its URL from a Secret."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.settings import load_settings
from tests.deploy.test_k8s_render import kubectl, object_key, render_stdout
from vkit.cli import main
from vkit.render.k8s_ledger import LEDGER_SECRET

CPU = ["--gpu", "cpu", "--model", "tiny-llama", "--context", "256", "--autoscaler", "none"]
DOCKERFILE = Path(__file__).resolve().parents[2] / "vkit" / "render" / "gateway.Dockerfile"


def built(tmp_path: Path, ledger: str) -> dict[tuple[str, str], dict[str, Any]]:
    """``kubectl kustomize`` of the overlay rendered with ``--ledger``, by (kind, name),
    checked equal to what ``vkit render k8s`` prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["render", "k8s", *CPU, "--ledger", ledger, "--out", str(tmp_path)]) == 0
    done = subprocess.run(
        [kubectl(), "kustomize", str(tmp_path / "overlays" / "cpu-tiny-llama")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    objects = sorted(yaml.safe_load_all(done.stdout), key=object_key)
    printed = sorted(yaml.safe_load_all(render_stdout([*CPU, "--ledger", ledger])), key=object_key)
    assert printed == objects
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def gateway_env(objects: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    (container,) = objects["Deployment", "vkit-gateway"]["spec"]["template"]["spec"]["containers"]
    env: list[dict[str, Any]] = container["env"]
    return env


@pytest.mark.integration
def test_sqlite_keeps_one_gateway_pod_on_a_volume_only_it_may_mount(tmp_path: Path) -> None:
    objects = built(tmp_path, "sqlite")
    deployment = objects["Deployment", "vkit-gateway"]["spec"]
    pod = deployment["template"]["spec"]
    values = {e["name"]: e["value"] for e in gateway_env(objects) if "value" in e}
    ledger = load_settings(environ=values).ledger
    assert ledger.enabled and ledger.url is not None
    folder = ledger.url.removeprefix("sqlite:///").rsplit("/", 1)[0]
    # one pod, and the old one gone before the new one opens the file
    assert deployment["replicas"] == 1 and deployment["strategy"] == {"type": "Recreate"}
    hpa = objects["HorizontalPodAutoscaler", "vkit-gateway"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 1)
    assert objects["PodDisruptionBudget", "vkit-gateway"]["spec"].get("minAvailable") is None
    # the file on a claim that Kubernetes gives one pod only, mounted writable there
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == folder]
    assert not mount.get("readOnly")
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    claim = objects["PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteOncePod"]
    # writable by the image's own user, through its group
    gid = re.search(r"groupadd --system --gid (\d+) vkit", DOCKERFILE.read_text())
    assert gid is not None and pod["securityContext"]["fsGroup"] == int(gid.group(1))


@pytest.mark.integration
def test_postgres_keeps_the_gateways_and_reads_the_url_from_a_secret(tmp_path: Path) -> None:
    objects = built(tmp_path, "postgres")
    env = {e["name"]: e for e in gateway_env(objects)}
    assert env["VKIT_GATEWAY_LEDGER__ENABLED"]["value"] == "true"
    assert env["VKIT_GATEWAY_LEDGER__URL"]["valueFrom"] == {
        "secretKeyRef": {"name": LEDGER_SECRET, "key": "url"}
    }
    assert objects["HorizontalPodAutoscaler", "vkit-gateway"]["spec"]["minReplicas"] >= 2
    assert not [kind for kind, _ in objects if kind == "PersistentVolumeClaim"]


def test_off_by_default_on_kubernetes() -> None:
    objects = list(yaml.safe_load_all(render_stdout(CPU)))
    (gateway,) = [o for o in objects if object_key(o)[1:] == ("Deployment", "vkit-gateway")]
    (container,) = gateway["spec"]["template"]["spec"]["containers"]
    assert not [e for e in container["env"] if e["name"].startswith("VKIT_GATEWAY_LEDGER")]


def test_a_deployment_file_takes_no_ledger_yet(capsys: pytest.CaptureFixture[str]) -> None:
    two = Path(__file__).resolve().parents[2] / "deploy" / "deployments" / "two-models.yaml"
    assert main(["render", "k8s", "--deployment", str(two), "--ledger", "sqlite"]) != 0
    assert "drop --ledger" in capsys.readouterr().err
