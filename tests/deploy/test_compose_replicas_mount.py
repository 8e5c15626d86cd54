"""The scheduled compose gateway sees the follower's replicas file after each rename, because
its *directory* is bind-mounted (:mod:`vkit.render.compose_schedule`): checked in a real
container, with a mount of the file itself (which keeps the old inode) for contrast."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from tests.deploy.compose_stack import docker
from tests.docker_images import debootstrap_image
from vkit.render.compose_schedule import REPLICAS_FILE, REPLICAS_MOUNT, replicas_volume
from vkit.stack.schedule_follower import write_replicas_file

pytestmark = pytest.mark.system

BOTH = ["http://vllm-0:8000", "http://vllm-1:8000"]


def listed(container: str, path: str) -> list[str]:
    return docker("exec", container, "cat", path).split()


def test_a_renamed_replicas_file_is_seen_through_the_directory_mount(tmp_path: Path) -> None:
    replicas_file = tmp_path / REPLICAS_FILE
    replicas_file.parent.mkdir()
    write_replicas_file(replicas_file, BOTH)
    source, target, mode = replicas_volume().split(":")
    directory_mount = f"{tmp_path / source}:{target}:{mode}"
    file_mount = f"{replicas_file}:/etc/pinned.txt:ro"  # the file itself: what not to do
    name = f"vkit-replicas-mount-{uuid.uuid4().hex[:8]}"
    image = debootstrap_image("debian").tag
    docker("run", "-d", "--name", name, "-v", directory_mount, "-v", file_mount, image,
           "sleep", "120")  # fmt: skip
    try:
        seen = f"{REPLICAS_MOUNT}/{replicas_file.name}"
        assert listed(name, seen) == BOTH
        write_replicas_file(replicas_file, BOTH[:1])  # a new file renamed over the old one
        assert listed(name, seen) == BOTH[:1]
        assert listed(name, "/etc/pinned.txt") == BOTH  # the file mount still shows the old
        write_replicas_file(replicas_file, BOTH)
        assert listed(name, seen) == BOTH
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
