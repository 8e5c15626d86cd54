"""GPU profiles from configs/gpus.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.errors import UnknownGpuError
from launcher.sizing.gpus import GIB, get_gpu, load_gpus

EXPECTED = {
    "rtx4090",
    "rtx3090",
    "l40s",
    "l4",
    "a10",
    "a100-40gb",
    "a100-80gb",
    "h100-sxm",
    "h100-pcie",
    "h100-nvl",
    "h200",
    "a40",
}


def test_all_profiles_load_with_sane_numbers() -> None:
    gpus = load_gpus()
    assert set(gpus) == EXPECTED
    for key, gpu in gpus.items():
        assert gpu.key == key
        # CUDA reports a little less than the marketing size (24 GB card -> ~22-24 GiB).
        assert 20 * GIB < gpu.vram_bytes < 141 * GIB
        assert gpu.bandwidth_gbs >= 300


def test_fp8_support_follows_the_architecture() -> None:
    assert not get_gpu("a100-80gb").supports_fp8
    assert get_gpu("rtx4090").supports_fp8
    assert get_gpu("h100-sxm").supports_fp8
    for gpu in load_gpus().values():
        # FP8 tensor cores run twice the dense bf16 rate (the datasheets); none on Ampere
        assert gpu.supports_fp8 == (gpu.arch in ("ada", "hopper", "blackwell"))
        if gpu.fp8_tflops is not None:
            assert 1.95 < gpu.fp8_tflops / gpu.bf16_tflops < 2.05, gpu.key


def test_prices_from_the_cost_guide() -> None:
    h100 = get_gpu("h100-sxm")
    assert h100.prices == {"cost-guide": 1.87, "aws": 8.46}
    assert h100.price_per_hour == 1.87
    assert get_gpu("rtx4090").price_per_hour == 0.39
    assert get_gpu("a40").price_per_hour is None


def test_names_are_forgiving() -> None:
    assert get_gpu("RTX 4090").key == "rtx4090"
    assert get_gpu("H100").key == "h100-sxm"


def test_unknown_gpu_lists_known_ones() -> None:
    with pytest.raises(UnknownGpuError) as info:
        get_gpu("v100")
    message = str(info.value)
    assert all(name in message for name in EXPECTED)


def test_bad_default_price_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gpus.yaml"
    path.write_text(
        "x:\n  name: X\n  vram_bytes: 1\n  bandwidth_gbs: 1\n  bf16_tflops: 1\n"
        "  arch: ampere\n  fp8: false\n  prices: {a: 1}\n  default_price: b\n"
    )
    with pytest.raises(ValueError, match="default_price"):
        load_gpus(path)
