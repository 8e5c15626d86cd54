"""Reloading the keys file while another tool rewrites it in place, with a real writer thread."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from gateway.key_store import KeyStore
from gateway.keyfile import ApiKey, digest_secret, dump_keys, save_keys

SETTLE = 0.2
PAUSE = 0.8  # the writer stops mid-file for longer than the settle time
IN_PLACE_QUIET = 1.5


def key(name: str, **fields: object) -> ApiKey:
    return ApiKey(name=name, sha256=digest_secret(f"s-{name}"), **fields)  # type: ignore[arg-type]


def rewrite_in_place(path: Path, text: str, cut: int, pause: float) -> None:
    """What a tool that truncates the file and writes it in pieces does (``open(..., "w")``
    keeps the inode): ``text[:cut]``, a pause, the rest."""
    with path.open("r+", encoding="utf-8") as handle:
        handle.truncate(0)
        handle.write(text[:cut])
        handle.flush()
        time.sleep(pause)
        handle.write(text[cut:])


async def test_a_file_rewritten_in_place_with_a_pause_is_never_loaded_half_written(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keys.yaml"
    old = [key(name, rpm=60) for name in "abcdef"]
    new = [key(name, rpm=120) for name in "abcdef"] + [key("g")]
    save_keys(path, old)
    store = KeyStore(path, clock=time.monotonic, settle_time=SETTLE, in_place_settle=IN_PLACE_QUIET)
    text = dump_keys(new)
    cut = text.index("- name: d")  # at a line's end: valid YAML, keys a, b, c
    writer = threading.Thread(target=rewrite_in_place, args=(path, text, cut, PAUSE))
    writer.start()
    refused: list[str] = []
    loaded_at: float | None = None
    began = time.monotonic()
    while time.monotonic() - began < PAUSE + IN_PLACE_QUIET + 1.5:
        await store.refresh()
        refused += [name for name in "abcdef" if store.authenticate(f"s-{name}") is None]
        if loaded_at is None and store.keys == tuple(new):
            loaded_at = time.monotonic() - began
        await asyncio.sleep(0.05)
    writer.join()
    assert refused == [], f"keys of both versions refused: {sorted(set(refused))}"
    assert loaded_at is not None, f"never loaded the whole new file: {store.keys}"
    assert loaded_at >= PAUSE + IN_PLACE_QUIET - 0.1  # quiet that long after the last write


async def test_a_file_replaced_whole_is_loaded_after_the_settle_time(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    save_keys(path, [key("a")])
    store = KeyStore(path, clock=time.monotonic, settle_time=SETTLE, in_place_settle=60.0)
    save_keys(path, [key("a"), key("b")])  # a temporary file renamed over it: a new inode
    began = time.monotonic()
    while store.authenticate("s-b") is None and time.monotonic() - began < 5:
        await store.refresh()
        await asyncio.sleep(0.05)
    assert store.authenticate("s-b") is not None
    assert time.monotonic() - began < 2
