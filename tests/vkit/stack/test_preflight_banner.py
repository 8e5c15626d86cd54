"""Missing binaries and the banner."""

from __future__ import annotations

import ast
import json
import re

import pytest

from vkit.exit_codes import CliError
from vkit.stack.banner import render_banner
from vkit.stack.preflight import check_binaries, missing_binaries
from vkit.stack.up_settings import UpSettings


def only(*present: str):
    return lambda name: f"/usr/bin/{name}" if name in present else None


def test_missing_nginx_is_named_with_an_install_hint() -> None:
    with pytest.raises(CliError, match=r"^nginx not found on PATH: install it"):
        check_binaries(UpSettings(), which=only("redis-server"))


def test_redis_is_needed_only_with_redis() -> None:
    assert missing_binaries(UpSettings(), which=only("nginx")) == []
    assert missing_binaries(UpSettings(redis=True), which=only("nginx")) == ["redis-server"]
    assert missing_binaries(UpSettings(nginx_bin="/opt/nginx"), which=only("nginx")) == [
        "/opt/nginx"
    ]


def test_banner_shows_url_key_and_runnable_examples() -> None:
    text = render_banner("http://127.0.0.1:8000", "vk-secret123", "tiny-llama", 2)
    assert "http://127.0.0.1:8000/v1" in text
    assert "API key: vk-secret123" in text
    assert "2 replica(s)" in text
    body = re.search(r"-d '(.*?)'", text, re.S)
    assert body is not None
    assert json.loads(body.group(1))["model"] == "tiny-llama"
    snippet = text.split("OpenAI Python SDK:\n", 1)[1].split("\n\n", 1)[0]
    tree = ast.parse("\n".join(line[2:] for line in snippet.splitlines()))
    assert any(isinstance(node, ast.ImportFrom) for node in tree.body)
    assert 'api_key="vk-secret123"' in snippet


def test_banner_names_the_admin_listener_for_metrics() -> None:
    text = render_banner("http://127.0.0.1:8000", "k", "m", 1, admin_url="http://127.0.0.1:9180")
    assert "Metrics: http://127.0.0.1:9180/metrics" in text
    assert "http://127.0.0.1:9180/readyz" in text
    assert "Metrics:" not in render_banner("http://x", "k", "m", 1)


def test_banner_says_that_crashed_replicas_restart() -> None:
    from vkit.stack.restarts import RestartPolicy

    text = render_banner("http://x", "k", "m", 1, RestartPolicy(first_delay_s=2, max_delay_s=60))
    words = " ".join(text.split())
    assert "started again (after 2 s, doubling up to 60 s)" in words
    assert "the gateway answers 503 with Retry-After" in words
