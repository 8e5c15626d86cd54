"""The kustomize tree: committed = rendered, and ``kubectl kustomize`` = ``vkit render k8s``."""

from __future__ import annotations

import contextlib
import filecmp
import io
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from vkit.cli import main
from vkit.render.k8s_bundle import strategic_merge

K8S_DIR = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
# Every committed overlay and the command that renders it (README lists the same).
OVERLAYS: dict[str, list[str]] = {
    "rtx4090-llama-3.1-8b-awq": ["--gpu", "rtx4090", "--model", "llama-3.1-8b", "--quant", "awq"],
    "rtx4090-llama-3.1-8b-awq-hpa": [
        "--gpu", "rtx4090", "--model", "llama-3.1-8b", "--quant", "awq", "--autoscaler", "hpa",
    ],
    "rtx4090-llama-3.1-8b-awq-zero": [
        "--gpu", "rtx4090", "--model", "llama-3.1-8b", "--quant", "awq", "--autoscaler", "zero",
    ],
    "l40s-qwen2.5-14b-awq": ["--gpu", "l40s", "--model", "qwen2.5-14b", "--quant", "awq"],
    "h100-sxm-llama-3.1-8b-bf16": [
        "--gpu", "h100-sxm", "--model", "llama-3.1-8b", "--quant", "bf16",
    ],
    "h200-llama-3.1-70b-fp8": ["--gpu", "h200", "--model", "llama-3.1-70b", "--quant", "fp8"],
    "cpu-tiny-llama": [
        "--gpu", "cpu", "--model", "tiny-llama", "--context", "256", "--autoscaler", "none",
        "--no-monitoring",
    ],
}  # fmt: skip
GPU_OVERLAYS = [name for name in OVERLAYS if not name.startswith("cpu-")]


def object_key(obj: dict[str, Any]) -> tuple[str, str, str]:
    return (obj["apiVersion"], obj["kind"], obj["metadata"]["name"])


def kubectl() -> str:
    binary = shutil.which("kubectl")
    if binary is None:
        pytest.fail("kubectl (with kustomize) is not installed")
    return binary


@cache
def built_text(overlay: str) -> str:
    result = subprocess.run(
        [kubectl(), "kustomize", str(K8S_DIR / "overlays" / overlay)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def built(overlay: str) -> list[dict[str, Any]]:
    """What ``kubectl kustomize`` builds from the committed overlay, in a stable order."""
    return sorted(yaml.safe_load_all(built_text(overlay)), key=object_key)


def render_stdout(args: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["render", "k8s", *args]) == 0
    return out.getvalue()


def all_files(root: Path) -> set[str]:
    return {
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "README.md"
    }


@pytest.mark.integration
def test_committed_tree_is_exactly_what_the_overlay_commands_render(tmp_path: Path) -> None:
    for args in OVERLAYS.values():
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["render", "k8s", *args, "--out", str(tmp_path)]) == 0
    assert all_files(tmp_path) == all_files(K8S_DIR)
    _, mismatch, errors = filecmp.cmpfiles(tmp_path, K8S_DIR, sorted(all_files(tmp_path)), False)
    assert mismatch == [] and errors == []


@pytest.mark.integration
def test_the_rules_and_dashboard_are_read_at_render_time() -> None:
    """One source, two renderings: the PrometheusRule is the rules file compose mounts."""
    monitoring = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
    rules = yaml.safe_load((monitoring / "rules" / "vkit.rules.yml").read_text())
    dashboard = (monitoring / "grafana" / "dashboards" / "vkit.json").read_text()
    objects = {(o["kind"], o["metadata"]["name"]): o for o in built(GPU_OVERLAYS[0])}
    assert objects["PrometheusRule", "vkit"]["spec"]["groups"] == rules["groups"]
    assert objects["ConfigMap", "vkit-grafana-dashboard"]["data"]["vkit.json"] == dashboard


@pytest.mark.integration
@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_kustomize_build_equals_the_render_output(overlay: str) -> None:
    rendered = sorted(yaml.safe_load_all(render_stdout(OVERLAYS[overlay])), key=object_key)
    assert [object_key(o) for o in rendered] == [object_key(o) for o in built(overlay)]
    for mine, theirs in zip(rendered, built(overlay), strict=True):
        assert mine == theirs, object_key(mine)


def test_every_gpu_profile_the_planner_prices_renders(tmp_path: Path) -> None:
    """A committed overlay for each tier; every other priced GPU renders one on demand."""
    from launcher.sizing.capacity import default_priced_gpus

    priced = {option.gpu.key for option in default_priced_gpus()}
    committed = {name.split("-llama")[0].split("-qwen")[0] for name in GPU_OVERLAYS}
    assert committed <= priced
    for gpu in sorted(priced - committed):
        args = ["--gpu", gpu, "--model", "llama-3.1-8b", "--quant", "awq"]
        args += ["--out", str(tmp_path / gpu)]
        errors = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
            code = main(["render", "k8s", *args])
        if code != 0:  # too slow for the per-user speed at any load (an L4): says so, once
            assert "give --scale-target N" in errors.getvalue(), errors.getvalue()
            with contextlib.redirect_stdout(io.StringIO()):
                assert main(["render", "k8s", *args, "--scale-target", "8"]) == 0
        overlay = tmp_path / gpu / "overlays" / f"{gpu}-llama-3.1-8b-awq"
        assert (overlay / "vllm-patch.yaml").is_file(), gpu


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpu", "h100-sxm", "--model", "llama-3.1-70b", "--quant", "fp8"], "--scale-target"),
        (["--gpu", "rtx4090", "--model", "llama-3.1-8b", "--autoscaler", "zero",
          "--min-replicas", "1"], "drop --min-replicas"),
        (["--gpu", "rtx4090", "--model", "llama-3.1-8b", "--autoscaler", "hpa",
          "--min-replicas", "0"], "at least one replica"),
        (["--gpu", "rtx4090", "--model", "llama-3.1-70b", "--scale-target", "4"], "does not fit"),
    ],
)  # fmt: skip
def test_bad_requests_end_with_one_line_and_non_zero(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["render", "k8s", *args]) != 0
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1


def test_patches_merge_lists_in_kustomizes_order() -> None:
    """Keyed lists: the patch's items first (merged), then the base's others; as
    ``kubectl kustomize`` orders them (checked by hand on a three-item env)."""
    base = {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}], "args": ["x"]}
    patch = {"env": [{"name": "B", "value": "9"}, {"name": "D", "value": "4"}], "args": ["y"]}
    assert strategic_merge(base, patch) == {
        "env": [
            {"name": "B", "value": "9"},
            {"name": "D", "value": "4"},
            {"name": "A", "value": "1"},
        ],
        "args": ["y"],
    }
