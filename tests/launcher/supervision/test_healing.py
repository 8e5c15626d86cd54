"""The start-up error parsers on vLLM's own wording (docs/memory.md#refusal-messages, vLLM 0.32
source)."""

from __future__ import annotations

from pathlib import Path

from launcher.supervision.healing import (
    diagnose,
    lowered_utilization,
    parse_free_memory,
    parse_max_model_len_hint,
)
from launcher.supervision.vllm_args import VllmOptions

NEW_WORDING = (
    "ValueError: To serve at least one request with the models's max seq len (40960), "
    "(5.62 GiB KV cache is needed, which is larger than the available KV cache memory "
    "(4.50 GiB). Based on the available memory, the estimated maximum model length is "
    "32768. Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when "
    "initializing the engine."
)
OLD_WORDING = (
    "ValueError: The model's max seq len (131072) is larger than the maximum number of "
    "tokens that can be stored in KV cache (35152). Try increasing `gpu_memory_utilization` "
    "or decreasing `max_model_len` when initializing the engine."
)
FREE_MEMORY = (
    "ValueError: Free memory on device cuda:0 (10.25/23.65 GiB) on startup is less than "
    "desired GPU memory utilization (0.92, 21.76 GiB). Decrease GPU memory utilization or "
    "reduce GPU memory used by other processes."
)
FREE_MEMORY_OLD = (
    "ValueError: Free memory on device (60.1/79.15 GiB) on startup is less than desired "
    "GPU memory utilization (0.9, 71.24 GiB)."
)


def test_max_len_hint_from_both_wordings() -> None:
    assert parse_max_model_len_hint("INFO noise\n" + NEW_WORDING) == 32768
    assert parse_max_model_len_hint(OLD_WORDING) == 35152
    assert parse_max_model_len_hint("CUDA out of memory") is None


def test_free_memory_from_both_wordings() -> None:
    assert parse_free_memory(FREE_MEMORY) == (10.25, 23.65, 0.92)
    assert parse_free_memory(FREE_MEMORY_OLD) == (60.1, 79.15, 0.9)
    assert parse_free_memory(NEW_WORDING) is None


def test_lowered_utilization_keeps_headroom() -> None:
    assert lowered_utilization(10.25, 23.65) == 0.41
    assert lowered_utilization(60.1, 79.15) == 0.73


def test_diagnose_lowers_max_model_len() -> None:
    healed = diagnose(VllmOptions(model="m", max_model_len=40960), NEW_WORDING)
    assert healed is not None
    assert healed.options.max_model_len == 32768
    assert "32768" in healed.reason


def test_diagnose_lowers_utilization() -> None:
    healed = diagnose(VllmOptions(model="m", gpu_memory_utilization=0.92), FREE_MEMORY)
    assert healed is not None
    assert healed.options.gpu_memory_utilization == 0.41


def test_diagnose_gives_up_on_other_errors_and_on_no_progress() -> None:
    assert diagnose(VllmOptions(model="m"), "RuntimeError: CUDA error") is None
    # Already at (or below) the hinted length: relaunching would fail the same way.
    assert diagnose(VllmOptions(model="m", max_model_len=32768), NEW_WORDING) is None
    assert diagnose(VllmOptions(model="m", gpu_memory_utilization=0.4), FREE_MEMORY) is None


def test_corrected_value_replaces_a_pass_through_flag() -> None:
    options = VllmOptions(
        model="m", max_model_len=256, extra_args=("--max-model-len=40960", "--seed", "1")
    )
    healed = diagnose(options, NEW_WORDING)
    assert healed is not None
    assert healed.options.max_model_len == 32768
    assert healed.options.extra_args == ("--seed", "1")
    assert "max_model_len 40960" in healed.reason


def test_the_compose_supervisor_carries_the_healing_rule_unchanged() -> None:
    """vkit/render/vllm_supervisor.py heals replicas that run without the kit (compose, and
    Kubernetes' stock vLLM image): its copy of the rule block must equal this module's (copy
    the block between the ``# -- healing rule:`` markers over)."""
    repo = Path(__file__).resolve().parents[3]

    def block(path: Path) -> str:
        text = path.read_text()
        begin = text.index("\n", text.index("# -- healing rule: begin"))
        return text[begin : text.index("# -- healing rule: end --")]

    module = block(repo / "launcher" / "supervision" / "healing.py")
    assert "def correction(" in module
    assert block(repo / "vkit" / "render" / "vllm_supervisor.py") == module
