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
from prometheus_client import CollectorRegistry

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
from gateway.metrics import GatewayMetrics


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


def metrics() -> GatewayMetrics:
    return GatewayMetrics(CollectorRegistry())


def refused(m: GatewayMetrics, reason: str) -> float:
    value = m.registry.get_sample_value(
        "vkit_gateway_keys_reload_refused_total", {"reason": reason}
    )
    return value or 0.0


def loaded(m: GatewayMetrics) -> float | None:
    return m.registry.get_sample_value("vkit_gateway_keys_loaded")


async def test_reload_is_off_the_request_path_and_a_broken_edit_keeps_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.yaml"
    save_keys(path, [make_key("alice", "s-alice")])
    clock, m = FakeClock(), metrics()
    store = KeyStore(path, clock=clock, settle_time=0.0, in_place_settle=0.0, metrics=m)
    assert loaded(m) == 1
    save_keys(path, [make_key("alice", "s-alice"), make_key("carol", "s-carol")])
    clock.now += 10
    assert store.authenticate("s-carol") is None  # a request never touches the file
    await store.refresh()  # the background reload
    carol = store.authenticate("s-carol")
    assert carol is not None and carol.name == "carol"
    assert loaded(m) == 2

    path.write_text("keys: [oops\n")
    os.utime(path, ns=(1, 1))  # make sure the signature changes
    with caplog.at_level(logging.WARNING, logger="gateway.key_store"):
        await store.refresh()
        await store.refresh()  # the same broken file: refused once
    assert store.authenticate("s-carol") is not None  # last good keys kept
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "not valid YAML" in warnings[0], warnings
    assert "keeping the 2 keys" in warnings[0]
    assert "s-carol" not in caplog.text
    assert refused(m, "invalid") == 1 and loaded(m) == 2

    save_keys(path, [make_key("alice", "s-alice", enabled=False)])
    await store.refresh()
    assert store.authenticate("s-alice") is None
    assert store.authenticate("s-carol") is None  # removing keys on purpose still works


@pytest.mark.parametrize("text", ["", "# every key moved to keys.d\n", "keys: []\n"])
async def test_a_file_without_keys_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str
) -> None:
    path = tmp_path / "keys.yaml"
    save_keys(path, [make_key("alice", "s-alice"), make_key("bob", "s-bob")])
    m = metrics()
    store = KeyStore(path, clock=FakeClock(), settle_time=0.0, in_place_settle=0.0, metrics=m)
    path.write_text(text)
    with caplog.at_level(logging.WARNING, logger="gateway.key_store"):
        await store.refresh()
        await store.refresh()
    assert store.authenticate("s-alice") is not None
    assert store.authenticate("s-bob") is not None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no keys" in warnings[0] and "keeping the 2 keys" in warnings[0]
    assert refused(m, "empty") == 1 and loaded(m) == 2


async def test_every_cut_of_a_file_mid_line_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    keys = [make_key(name, f"s-{name}", models=("tiny-llama",)) for name in ("a", "b", "c")]
    save_keys(path, keys)
    text = path.read_text()
    m = metrics()
    store = KeyStore(path, clock=FakeClock(), settle_time=0.0, in_place_settle=0.0, metrics=m)
    cuts = [n for n in range(1, len(text)) if text[n - 1] != "\n"]
    for n in cuts:  # what a reader sees of `cat new > keys.yaml` caught halfway
        path.write_text(text[:n])
        os.utime(path, ns=(n, n))
        await store.refresh()
        assert store.keys == tuple(keys), f"loaded a file cut after {n} bytes"
    total = sum(refused(m, r) for r in ("invalid", "empty", "truncated"))
    assert total == len(cuts)
    assert refused(m, "truncated") > 0  # valid YAML, fewer keys, cut mid-line


async def test_a_file_still_being_written_is_loaded_once_it_settles(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    keys = [make_key(name, f"s-{name}") for name in ("a", "b", "c")]
    save_keys(path, keys[:2])
    clock = FakeClock()
    store = KeyStore(path, clock=clock, settle_time=1.0)
    save_keys(path, keys)
    full = path.read_text()
    first_entry = full[: full.index("- name: b")]  # ends at a line's end: valid, one key
    path.write_text(first_entry)
    os.utime(path, ns=(1, 1))
    await store.refresh()  # the writer may not be done: wait for the file to settle
    assert len(store.keys) == 2
    clock.now += 0.5
    path.write_text(full)  # the rest arrives
    await store.refresh()
    clock.now += 0.6
    await store.refresh()  # changed 0.6 s ago: still not settled
    assert len(store.keys) == 2
    clock.now += 0.5
    await store.refresh()
    assert store.keys == tuple(keys)


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


@pytest.mark.integration
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


@pytest.mark.integration
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
