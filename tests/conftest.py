"""Shared test set-up: the real-vLLM replica fixture is a plugin of its own."""

pytest_plugins = ["tests.engine"]
