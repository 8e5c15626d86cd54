"""The deployment file: read, checked with one-line errors, each group fit on its GPUs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from launcher.errors import GpuShareError, InvalidInput
from launcher.sizing.gpus import get_gpu
from vkit.deployment.deployment_file import (
    DeploymentFileError,
    load_deployment_file,
    parse_deployment,
)
from vkit.deployment.group_fit import fit_groups, group_launch
from vkit.exit_codes import exit_code_for

CHAT: dict[str, Any] = {
    "model": "llama-3.1-8b",
    "served_name": "chat",
    "quant": "awq",
    "gpus": [0],
    "context": 8192,
    "adapters": [{"name": "sql", "source": "org/llama-sql-lora", "rank": 16}],
}
FAST: dict[str, Any] = {"model": "qwen3-4b", "served_name": "fast", "gpus": "1", "context": 4096}


def two_groups(**changes: Any) -> dict[str, Any]:
    chat = {**CHAT, **changes.pop("chat", {})}
    fast = {**FAST, **changes.pop("fast", {})}
    return {"gpu": "l40s", "groups": [chat, fast], **changes}


def test_a_file_is_read_into_groups_with_their_lora(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(
        "gpu: l40s\ngroups:\n"
        "  - {model: llama-3.1-8b, served_name: chat, quant: awq, gpus: [0, 1],\n"
        "     adapters: [{name: sql, source: org/sql, rank: 8}],\n"
        "     lora: {max_loras: 2, runtime_updates: true}}\n"
        "  - {model: qwen3-4b, served_name: fast, gpus: '2'}\n"
    )
    file = load_deployment_file(path)
    chat, fast = file.groups
    assert file.served_names == ["chat", "fast"]
    assert chat.gpus == ("0", "1") and fast.gpus == ("2",)
    lora = chat.lora_settings
    assert lora is not None and lora.rank == 8 and lora.max_loras == 2 and lora.runtime_updates
    assert fast.lora_settings is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            two_groups(fast={"served_name": "chat"}),
            "the served name 'chat' is claimed twice: by a group and a group",
        ),
        (
            two_groups(fast={"served_name": "sql"}),
            "the served name 'sql' is claimed twice: by an adapter of 'chat' and a group",
        ),
        (
            two_groups(chat={"lora": False}),
            "group 'chat' names adapters but its LoRA is off (lora: false)",
        ),
        (
            two_groups(chat={"lora": {"max_rank": 8}}),
            "adapter 'sql' has rank 16, above max_rank 8",
        ),
        (two_groups(chat={"lora": {"max_rank": 12}}), "max_rank 12 is not one vLLM accepts"),
        (two_groups(fast={"gpus": []}), "group 'fast' lists no GPUs"),
        (two_groups(fast={"colour": "red"}), "groups.1.colour: Extra inputs are not permitted"),
        ({"gpu": "l40s", "groups": []}, "groups: Tuple should have at least 1 item"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(data: dict[str, Any], message: str) -> None:
    with pytest.raises(DeploymentFileError) as caught:
        parse_deployment(data)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert exit_code_for(caught.value) == 2


def test_unreadable_and_malformed_files_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(DeploymentFileError, match="cannot read"):
        load_deployment_file(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups: [\n  - {model: x\n")
    with pytest.raises(DeploymentFileError, match=r"bad.yaml line \d+: not YAML"):
        load_deployment_file(bad)


def test_groups_on_their_own_gpus_keep_the_whole_gpu() -> None:
    chat, fast = fit_groups(parse_deployment(two_groups()))
    assert chat.plan.gpu_memory_utilization == fast.plan.gpu_memory_utilization == 0.92
    assert chat.shared_with == fast.shared_with == ()
    assert chat.plan.lora_gib > 0 and fast.plan.lora_gib == 0
    assert chat.plan.max_model_len == 8192 and fast.plan.max_model_len == 4096
    assert chat.price_per_hour == get_gpu("l40s").price_per_hour


def test_two_small_models_share_one_48_gb_gpu_with_each_ones_context() -> None:
    chat, fast = fit_groups(parse_deployment(two_groups(fast={"gpus": [0]})))
    chat_share, fast_share = chat.plan.gpu_memory_utilization, fast.plan.gpu_memory_utilization
    assert chat_share is not None and fast_share is not None
    assert chat_share + fast_share <= 0.92
    assert chat.shared_with == ("fast",) and fast.shared_with == ("chat",)
    # each one's weights, LoRA slots and the KV of its own context fit in its share
    assert chat.plan.max_model_len == 8192 and fast.plan.max_model_len == 4096
    assert chat.plan.kv_tokens >= 8192 and fast.plan.kv_tokens >= 4096


def test_two_models_too_big_for_one_24_gb_gpu_are_one_clear_refusal() -> None:
    data = two_groups(gpu="rtx4090", chat={"quant": "bf16", "adapters": []}, fast={"gpus": [0]})
    with pytest.raises(GpuShareError) as caught:
        fit_groups(parse_deployment(data))
    message = str(caught.value)
    assert message.startswith("chat and fast cannot share one rtx4090: they need at least chat ")
    assert "GiB is usable (0.92 x" in message
    assert exit_code_for(caught.value) == 2


def test_a_gpu_shared_by_different_sets_is_refused() -> None:
    data = two_groups(chat={"gpus": [0, 1], "tp": 2}, fast={"gpus": [1]})
    with pytest.raises(GpuShareError, match="GPU 1 is claimed by chat and fast with different"):
        fit_groups(parse_deployment(data))


def test_a_group_that_does_not_fit_names_itself() -> None:
    data = two_groups(fast={"context": 40_960, "model": "qwen3-8b", "gpu": "l4"})
    with pytest.raises(InvalidInput, match=r"^group 'fast': qwen3-8b does not fit on l4"):
        fit_groups(parse_deployment(data))


def test_a_group_ttft_target_sizes_its_queue_caps_and_goes_to_its_replicas() -> None:
    default, tight = fit_groups(parse_deployment(two_groups(fast={"ttft_target": 0.5})))
    wide = fit_groups(parse_deployment(two_groups(fast={"ttft_target": 4})))[1]
    assert default.plan.ttft_target_s == 2.0 and tight.plan.ttft_target_s == 0.5
    tokens = [fit.plan.max_num_queued_tokens for fit in (tight, wide)]
    assert None not in tokens and tokens[0] < tokens[1]  # type: ignore[operator]
    assert group_launch(tight, "qwen3-4b", host="0.0.0.0", shutdown_timeout=30).ttft_target == 0.5
    assert group_launch(default, "x", host="0.0.0.0", shutdown_timeout=30).ttft_target == 2.0


def test_a_group_ttft_target_its_gpu_cannot_meet_is_one_line_naming_the_group() -> None:
    with pytest.raises(InvalidInput) as caught:
        fit_groups(parse_deployment(two_groups(fast={"ttft_target": 0.01})))
    message = str(caught.value)
    assert message.startswith("group 'fast': a time-to-first-token target of 0.01 s cannot be met")
    assert "\n" not in message and exit_code_for(caught.value) == 2
    with pytest.raises(DeploymentFileError, match="ttft_target: Input should be greater than 0"):
        parse_deployment(two_groups(fast={"ttft_target": 0}))
