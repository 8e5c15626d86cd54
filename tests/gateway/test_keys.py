"""The keys file, the key store (auth, reload) and ``vkit keys`` run as a real subprocess."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.key_store import KeyStore
from gateway.keyfile import (
    ApiKey,
    KeyFileError,
    digest_secret,
    load_keys,
    new_secret,
    parse_keys,
    save_keys,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_key(name: str, secret: str, **fields: object) -> ApiKey:
    return ApiKey(name=name, sha256=digest_secret(secret), **fields)  # type: ignore[arg-type]


def test_new_secret_format_and_uniqueness() -> None:
    first, second = new_secret(), new_secret()
    assert first.startswith("vk-") and len(first) == 3 + 43
    assert first != second


def test_save_is_atomic_0600_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    keys = [make_key("alice", "s1", rpm=5, models=("m",)), make_key("bob", "s2", enabled=False)]
    save_keys(path, keys)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_keys(path) == keys
    assert [p.name for p in tmp_path.iterdir()] == ["keys.yaml"]  # no temp file left behind


def test_failed_save_leaves_old_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    save_keys(path, [make_key("alice", "s1")])
    before = path.read_text()
    bad = make_key("bob", "s2").model_copy(update={"created": object()})  # not serialisable
    with pytest.raises(Exception):  # noqa: B017 - any serialisation error will do
        save_keys(path, [bad])
    assert path.read_text() == before
    assert len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("keys:\n  - name: a\n    sha256: 'zz'\n", "line 3: keys.0.sha256"),
        ("keys:\n  - name: a\n    sha256: " + "a" * 64 + "\n    rpm: -3\n", "line 4: keys.0.rpm"),
        (
            "keys:\n  - name: a\n    sha256: " + "a" * 64 + "\n    bogus: 1\n",
            "line 4: keys.0.bogus",
        ),
        ("keys: [\n", "not valid YAML"),
    ],
)
def test_malformed_file_names_line_and_field(text: str, expected: str) -> None:
    with pytest.raises(KeyFileError, match=expected.replace(".", r"\.")):
        parse_keys(text, "keys.yaml")


def test_duplicate_names_are_refused() -> None:
    entry = {"name": "a", "sha256": "b" * 64}
    text = yaml.safe_dump({"keys": [entry, {**entry, "sha256": "c" * 64}]})
    with pytest.raises(KeyFileError, match="duplicate key name 'a'"):
        parse_keys(text)


def test_authenticate_matches_digest_and_skips_disabled(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    save_keys(path, [make_key("alice", "s-alice"), make_key("bob", "s-bob", enabled=False)])
    store = KeyStore(path, clock=FakeClock())
    alice = store.authenticate("s-alice")
    assert alice is not None and alice.name == "alice"
    assert store.authenticate("s-bob") is None
    assert store.authenticate("s-nobody") is None
    assert store.authenticate("") is None


def test_reload_on_change_rate_limited_and_broken_edit_keeps_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.yaml"
    save_keys(path, [make_key("alice", "s-alice")])
    clock = FakeClock()
    store = KeyStore(path, clock=clock)
    save_keys(path, [make_key("alice", "s-alice"), make_key("carol", "s-carol")])
    clock.now += 0.5
    assert store.authenticate("s-carol") is None  # checked at most once per second
    clock.now += 0.6
    carol = store.authenticate("s-carol")
    assert carol is not None and carol.name == "carol"

    path.write_text("keys: [oops\n")
    os.utime(path, ns=(1, 1))  # make sure the signature changes
    clock.now += 2
    with caplog.at_level(logging.ERROR, logger="gateway.key_store"):
        assert store.authenticate("s-carol") is not None  # last good keys kept
        clock.now += 2
        store.authenticate("s-carol")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "not valid YAML" in errors[0].getMessage()
    assert "s-carol" not in caplog.text

    save_keys(path, [make_key("alice", "s-alice", enabled=False)])
    clock.now += 2
    assert store.authenticate("s-alice") is None
    assert store.authenticate("s-carol") is None


def test_broken_file_at_start_raises(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("keys: 5\n")
    with pytest.raises(KeyFileError, match="keys"):
        KeyStore(path, clock=FakeClock())


def vkit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vkit", "keys", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )


def test_cli_add_prints_secret_once_and_stores_only_digest(tmp_path: Path) -> None:
    done = vkit(
        "add",
        "alice",
        "--file",
        "k.yaml",
        "--rpm",
        "5",
        "--tpm",
        "900",
        "--concurrency",
        "2",
        "--max-tokens",
        "64",
        "--models",
        "a, b",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    secret = done.stdout.strip().splitlines()[-1]
    assert secret.startswith("vk-") and done.stdout.count(secret) == 1
    text = (tmp_path / "k.yaml").read_text()
    assert secret not in text and digest_secret(secret) in text
    key = KeyStore(tmp_path / "k.yaml", clock=FakeClock()).authenticate(secret)
    assert key is not None
    assert (key.rpm, key.tpm, key.concurrency, key.max_tokens) == (5, 900, 2, 64)
    assert key.models == ("a", "b")

    listing = vkit("list", "--file", "k.yaml", cwd=tmp_path)
    assert listing.returncode == 0 and "alice" in listing.stdout
    assert digest_secret(secret) not in listing.stdout

    assert vkit("disable", "alice", "--file", "k.yaml", cwd=tmp_path).returncode == 0
    assert KeyStore(tmp_path / "k.yaml", clock=FakeClock()).authenticate(secret) is None
    assert vkit("enable", "alice", "--file", "k.yaml", cwd=tmp_path).returncode == 0
    assert KeyStore(tmp_path / "k.yaml", clock=FakeClock()).authenticate(secret) is not None


@pytest.mark.parametrize(
    "args",
    [
        ("add", "bob", "--rpm", "-1"),
        ("add", "bob", "--tpm", "0"),
        ("add", "bad name!"),
        ("add", "alice"),  # duplicate
        ("disable", "nobody"),
        ("list", "--file", "missing.yaml"),
    ],
)
def test_cli_bad_input_is_one_line_nonzero(tmp_path: Path, args: tuple[str, ...]) -> None:
    save_keys(tmp_path / "keys.yaml", [make_key("alice", "s")])
    before = (tmp_path / "keys.yaml").read_text()
    done = vkit(*args, cwd=tmp_path)
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert (tmp_path / "keys.yaml").read_text() == before
