"""The demo key is made by the key-file code: the secret comes back, only its digest is stored."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.keyfile import digest_secret
from vkit.exit_codes import CliError
from vkit.stack.demo_key import add_demo_key
from vkit.stack.up_settings import DemoKeyLimits


def test_add_key_returns_the_secret_and_stores_only_its_digest(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.yaml"
    limits = DemoKeyLimits(rpm=7, tpm=700, concurrency=2, max_tokens=16)
    secret = add_demo_key(keys_file, "demo", limits, ["tiny-llama"])
    text = keys_file.read_text()
    assert secret and secret not in text
    (entry,) = yaml.safe_load(text)["keys"]
    assert entry["sha256"] == digest_secret(secret)
    assert (entry["name"], entry["rpm"], entry["tpm"]) == ("demo", 7, 700)
    assert (entry["concurrency"], entry["max_tokens"], entry["models"]) == (2, 16, ["tiny-llama"])


def test_a_refused_key_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="could not create the demo key"):
        add_demo_key(tmp_path / "keys.yaml", "bad name!", DemoKeyLimits(), [])
