"""A catalog entry's facts against its repository's config.json, read from a hub cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.errors import CheckpointMismatchError, InvalidInput
from launcher.sizing.checkpoint_check import (
    HubConfigSource,
    HubEnvironment,
    HubUnreachable,
    check_checkpoint,
    fact_mismatches,
    require_matching_config,
)
from launcher.sizing.checkpoints import checkpoint_for

KEPT = (
    Path(__file__).parent
    / "checkpoint_configs"
    / "hugging-quants--Meta-Llama-3.1-70B-Instruct-AWQ-INT4.json"
)
REPO = "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"
ENTRY = checkpoint_for("llama-3.1-70b", "awq")


def put_in_cache(cache: Path, repo: str, data: bytes, revision: str = "0" * 40) -> Path:
    """Lay ``data`` out as huggingface_hub does: snapshots/<rev>/config.json, refs/main."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_bytes(data)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    return snapshot / "config.json"


def with_group_size(group_size: int) -> bytes:
    config = json.loads(KEPT.read_bytes())
    config["quantization_config"]["group_size"] = group_size
    return json.dumps(config).encode()


def test_the_kept_config_in_a_hub_cache_agrees_with_its_entry(tmp_path: Path) -> None:
    assert ENTRY is not None
    put_in_cache(tmp_path, REPO, KEPT.read_bytes())
    check = check_checkpoint(ENTRY, HubConfigSource(tmp_path, offline=True))
    assert check.status == "ok" and check.mismatches == ()
    assert check.raw == KEPT.read_bytes()


def test_a_changed_group_size_is_named_with_both_values(tmp_path: Path) -> None:
    assert ENTRY is not None
    put_in_cache(tmp_path, REPO, with_group_size(32))
    check = check_checkpoint(ENTRY, HubConfigSource(tmp_path, offline=True))
    assert check.status == "mismatch"
    assert check.mismatches == ("group_size: catalog 128, config.json 32",)


def test_only_facts_both_sides_state_are_compared() -> None:
    assert ENTRY is not None
    no_group = {"quantization_config": {"quant_method": "awq", "bits": 4}}
    assert fact_mismatches(ENTRY, no_group) == []
    # a config without quantization_config states a 16-bit checkpoint
    assert fact_mismatches(ENTRY, {"hidden_size": 8192}) == [
        "method: catalog awq, config.json none"
    ]
    gptq8 = {"quantization_config": {"quant_method": "gptq", "bits": 8, "group_size": 128}}
    assert fact_mismatches(ENTRY, gptq8) == [
        "method: catalog awq, config.json gptq",
        "bits: catalog 4, config.json 8",
    ]


def test_refs_main_chooses_the_snapshot(tmp_path: Path) -> None:
    assert ENTRY is not None
    put_in_cache(tmp_path, REPO, KEPT.read_bytes(), revision="a" * 40)
    put_in_cache(tmp_path, REPO, with_group_size(64), revision="b" * 40)  # refs/main -> b
    check = check_checkpoint(ENTRY, HubConfigSource(tmp_path, offline=True))
    assert check.mismatches == ("group_size: catalog 128, config.json 64",)
    root = tmp_path / f"models--{REPO.replace('/', '--')}"
    (root / "refs" / "main").write_text("a" * 40)
    assert check_checkpoint(ENTRY, HubConfigSource(tmp_path, offline=True)).status == "ok"


def test_offline_never_downloads_and_an_unreachable_hub_is_asked_once(tmp_path: Path) -> None:
    asked: list[str] = []

    def unreachable(repo: str, cache_dir: Path) -> Path | None:
        asked.append(repo)
        raise HubUnreachable("no network")

    assert HubConfigSource(tmp_path, offline=True, download=unreachable)("a/b") is None
    assert asked == []
    online = HubConfigSource(tmp_path, download=unreachable)
    assert online("a/b") is None and online("c/d") is None
    assert asked == ["a/b"]


def test_a_download_lands_in_the_cache_and_is_read(tmp_path: Path) -> None:
    def download(repo: str, cache_dir: Path) -> Path | None:
        return put_in_cache(cache_dir, repo, b'{"hidden_size": 1}')

    source = HubConfigSource(tmp_path, download=download)
    assert source("a/b") == b'{"hidden_size": 1}'
    assert source.cache_only()("a/b") == b'{"hidden_size": 1}'  # now from the cache
    assert source.cache_only()("c/d") is None


def test_not_json_is_not_checked(tmp_path: Path) -> None:
    assert ENTRY is not None
    check = check_checkpoint(ENTRY, lambda repo: b"<html>")
    assert check.status == "unreachable" and check.problem == "config.json is not JSON"


def test_the_cache_is_where_huggingface_hub_keeps_it(tmp_path: Path) -> None:
    # every field given (given values win over the environment), as strings where they are
    # strings in the environment
    unset = {"xdg_cache_home": None, "hf_home": None, "hf_hub_cache": None}
    home = HubEnvironment.model_validate(
        {**unset, "hf_home": tmp_path / "hf", "hf_hub_offline": "0"}
    )
    assert home.cache_dir == tmp_path / "hf" / "hub" and not home.hf_hub_offline
    cache = HubEnvironment.model_validate(
        {**unset, "hf_hub_cache": tmp_path / "c", "hf_hub_offline": "yes"}
    )
    assert cache.source() == HubConfigSource(tmp_path / "c", offline=True)
    xdg = HubEnvironment.model_validate({**unset, "xdg_cache_home": tmp_path})
    assert xdg.cache_dir == tmp_path / "huggingface" / "hub"


def test_launch_refuses_a_mismatch_with_one_line_naming_the_fix(tmp_path: Path) -> None:
    assert ENTRY is not None
    put_in_cache(tmp_path, REPO, with_group_size(32))
    source = HubConfigSource(tmp_path, offline=True)
    with pytest.raises(CheckpointMismatchError) as caught:
        require_matching_config("llama-3.1-70b/awq", ENTRY, source)
    message = str(caught.value)
    assert isinstance(caught.value, InvalidInput) and "\n" not in message
    assert "llama-3.1-70b/awq" in message and "group_size: catalog 128, config.json 32" in message
    assert "--model" in message and "correct configs/checkpoints.yaml" in message
    empty = HubConfigSource(tmp_path / "empty", offline=True)
    note = require_matching_config("llama-3.1-70b/awq", ENTRY, empty)
    assert note.startswith(f"could not read {REPO}/config.json to check the catalog's facts")
