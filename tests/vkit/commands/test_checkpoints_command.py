"""``vkit checkpoints check``: one line per pre-quantized entry, exit 1 on a mismatch, --save."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.sizing.checkpoint_check import CheckpointConfigSource, HubConfigSource
from vkit.cli import build_parser, main
from vkit.commands.checkpoint_catalog import run_check

KEPT = (
    Path(__file__).resolve().parents[2]
    / "launcher/sizing/checkpoint_configs/hugging-quants--Meta-Llama-3.1-70B-Instruct-AWQ-INT4.json"
)
REPO = "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"


def hub_cache(root: Path, data: bytes) -> Path:
    snapshot = root / f"models--{REPO.replace('/', '--')}" / "snapshots" / ("1" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_bytes(data)
    return root


def check(source: CheckpointConfigSource, *args: str) -> int:
    return run_check(build_parser().parse_args(["checkpoints", "check", *args]), source=source)


def test_the_kept_config_is_ok_and_the_rest_not_reachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = HubConfigSource(hub_cache(tmp_path, KEPT.read_bytes()), offline=True)
    assert check(source) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"ok             llama-3.1-70b/awq {REPO}" in lines
    assert len(lines) == 38  # every pre-quantized entry of the catalog, one line each
    assert sum(line.startswith("not reachable") for line in lines) == 37


def test_a_mismatch_is_named_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = json.loads(KEPT.read_bytes())
    config["quantization_config"]["group_size"] = 32
    source = HubConfigSource(hub_cache(tmp_path, json.dumps(config).encode()), offline=True)
    assert check(source, "--model", "70b") == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4  # the 70B's awq, gptq, fp8 and int8 entries
    assert [line for line in out if line.startswith("MISMATCH")] == [
        f"MISMATCH       llama-3.1-70b/awq {REPO}: group_size: catalog 128, config.json 32"
    ]


def test_save_writes_what_the_source_returned_byte_for_byte(tmp_path: Path) -> None:
    served = KEPT.read_bytes() + b"\n  "  # odd trailing bytes survive, nothing is re-encoded
    fetched: dict[str, bytes] = {REPO: served}
    assert (
        check(lambda repo: fetched.get(repo), "--model", "70b", "--save", str(tmp_path / "s")) == 0
    )
    saved = sorted((tmp_path / "s").iterdir())
    assert [path.name for path in saved] == [KEPT.name]  # owner--name.json, no temp file left
    assert saved[0].read_bytes() == served


def test_an_unknown_model_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["checkpoints", "check", "--model", "gpt-x"]) == 2
    err = capsys.readouterr().err
    assert "gpt-x" in err and len(err.strip().splitlines()) == 1
