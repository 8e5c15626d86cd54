"""A two-group compose bundle under the real Docker engine (tier ``system``): each model's and
the adapter's requests answered by their own group's replica, an unknown model the OpenAI 404,
``down`` leaving nothing. The run itself is :func:`tests.deploy.compose_groups_run.run_two_groups`
(also runnable by hand); the images are the session's, built once for the CPU bundle.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.compose_groups_run import run_two_groups
from tests.deploy.test_compose_up import free_port
from tests.docker_images import Built

pytestmark = pytest.mark.system


def test_two_groups_each_answer_their_own_models(
    compose_images: dict[str, Built], tmp_path: Path
) -> None:
    images = {name: built.tag for name, built in compose_images.items()}
    timings = run_two_groups(images, tmp_path, free_port())
    assert timings["down"] > 0
