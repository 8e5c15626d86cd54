"""Shared test set-up: the tiers (unit, integration, system) and their guards, and the
real-vLLM replica fixture, the images of the compose bundle (built without a registry), each
a plugin of its own."""

from importlib.util import find_spec

pytest_plugins = ["tests.tiers", "tests.engine", "tests.docker_images"]

# The cost chart needs the `plot` extra (matplotlib), which the unit tier's pip install
# (`pip install -e '.[dev]'`) leaves out: without it, the chart's tests are not collected.
collect_ignore = (
    [] if find_spec("matplotlib") else ["launcher/sizing/capacity/test_capacity_report.py"]
)
