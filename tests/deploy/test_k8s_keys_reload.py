"""The gateway reloads a keys file that the kubelet updates in a Secret volume.

The kubelet writes a Secret (or ConfigMap) volume as its atomic writer does: the files live in
a timestamped directory, ``..data`` is a symlink to it and ``keys.yaml`` a symlink to
``..data/keys.yaml``; an update writes a new directory and renames a new ``..data`` symlink
over the old one, then removes the old directory. The rendered manifests mount the Secret as
a directory (no ``subPath``) and point ``VKIT_GATEWAY_KEYS_FILE`` at ``keys.yaml`` in it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from gateway.key_store import KeyStore
from gateway.keyfile import ApiKey, digest_secret, dump_keys


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def keys_text(*names: str) -> str:
    return dump_keys([ApiKey(name=n, sha256=digest_secret(f"secret-{n}")) for n in names])


def kubelet_write(volume: Path, version: str, text: str) -> None:
    """One update the way the kubelet's atomic writer makes it."""
    payload = volume / f"..{version}"
    payload.mkdir()
    (payload / "keys.yaml").write_text(text)
    data = volume / "..data"
    old = data.resolve() if data.is_symlink() else None
    (volume / "..data_tmp").symlink_to(payload.name)
    os.replace(volume / "..data_tmp", data)
    if not (volume / "keys.yaml").is_symlink():
        (volume / "keys.yaml").symlink_to("..data/keys.yaml")
    if old is not None:
        shutil.rmtree(old)


def test_a_secret_volume_update_is_seen_and_loaded(tmp_path: Path) -> None:
    kubelet_write(tmp_path, "2026_01_01_00_00_00.1", keys_text("alice"))
    clock = Clock()
    store = KeyStore(tmp_path / "keys.yaml", clock=clock, settle_time=1.0)
    assert store.authenticate("secret-alice") is not None

    kubelet_write(tmp_path, "2026_01_01_00_05_00.2", keys_text("alice", "bob"))
    asyncio.run(store.refresh())  # seen: waits for it to settle
    assert store.authenticate("secret-bob") is None
    clock.now = 2.0
    asyncio.run(store.refresh())
    assert store.authenticate("secret-bob") is not None

    kubelet_write(tmp_path, "2026_01_01_00_10_00.3", keys_text("bob"))  # alice revoked
    for clock.now in (3.0, 5.0):
        asyncio.run(store.refresh())
    assert store.authenticate("secret-alice") is None
    assert store.authenticate("secret-bob") is not None
