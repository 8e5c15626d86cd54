"""save_keys keeps the keys file's owner, group and mode across its atomic replace.

The gateway runs as the service user and reads the file through its group (root:vkit 0640
under systemd); an edit by root that reset it to root's 0600 would lock the gateway out.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gateway.keyfile import add_key, load_keys, save_keys


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_file_is_the_writers_and_private(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    add_key(path, "alice")
    assert mode_of(path) == 0o600
    assert (path.stat().st_uid, path.stat().st_gid) == (os.geteuid(), os.getegid())


@pytest.mark.parametrize("mode", [0o640, 0o600, 0o660])
def test_replacing_the_file_keeps_its_mode(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "keys.yaml"
    add_key(path, "alice")
    path.chmod(mode)
    add_key(path, "bob")
    save_keys(path, load_keys(path))
    assert mode_of(path) == mode
    assert [key.name for key in load_keys(path)] == ["alice", "bob"]


def test_a_group_makes_it_group_readable_only(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    add_key(path, "alice", group=os.getegid())
    assert mode_of(path) == 0o640
    assert path.stat().st_gid == os.getegid()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another owner needs root")
def test_root_keeps_the_files_owner_and_group(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    add_key(path, "alice")
    os.chown(path, 65534, 65533)
    path.chmod(0o640)
    add_key(path, "bob")
    st = path.stat()
    assert (st.st_uid, st.st_gid, mode_of(path)) == (65534, 65533, 0o640)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
