"""Every error the gateway raises is an OpenAI envelope with the right status; upstream
errors pass through, normalised when vLLM did not use the envelope."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from gateway.errors import RateLimitExceeded, normalise_upstream_error
from tests.gateway.conftest import AUTH, GatewayFactory, wait_until
from tests.gateway.doubles import Key, RecordingLimiter
from tests.vllm_standin import ScriptedUpstream

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]}


def assert_envelope(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


@pytest.mark.parametrize(
    ("headers", "expected_code"),
    [({}, "invalid_api_key"), ({"Authorization": "Bearer nope"}, "invalid_api_key")],
)
async def test_missing_or_unknown_key_is_401(
    start_gateway: GatewayFactory, headers: dict[str, str], expected_code: str
) -> None:
    gw = await start_gateway()
    response = await gw.client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert assert_envelope(response, 401)["code"] == expected_code


async def test_disabled_key_is_401(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway(keys={"k": Key("off", enabled=False)})
    response = await gw.client.get("/v1/models", headers={"Authorization": "Bearer k"})
    assert_envelope(response, 401)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"messages": []}', "model"),
        (b'{"model": 5}', "model"),
        (b'{"model": "tiny-llama", "stream": "yes"}', "stream"),
        (b'{"model": "tiny-llama", "max_tokens": -1}', "max_tokens"),
        (b'{"model": "tiny-llama", "max_tokens": 2.5}', "max_tokens"),
        (b'{"model": "tiny-llama", "max_tokens": true}', "max_tokens"),
        (b'{"model": "tiny-llama", "max_completion_tokens": 0}', "max_completion_tokens"),
        (b'{"model": "tiny-llama", "stream_options": 3}', "stream_options"),
    ],
)
async def test_malformed_bodies_are_400(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, body: bytes, param: str | None
) -> None:
    gw = await start_gateway()
    headers = {**AUTH, "content-type": "application/json"}
    response = await gw.client.post("/v1/chat/completions", content=body, headers=headers)
    error = assert_envelope(response, 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert upstream.bodies == []


async def test_body_over_the_limit_is_413(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway(max_body_bytes=1000)
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 2000}]}
    response = await gw.client.post("/v1/chat/completions", json=big, headers=AUTH)
    assert_envelope(response, 413)

    async def chunked() -> Any:
        for _ in range(3):
            yield b" " * 600

    response = await gw.client.post("/v1/completions", content=chunked(), headers=AUTH)
    assert_envelope(response, 413)


async def _sent_at_once(url: str, head: str, body: bytes) -> bytes:
    """Sends ``head`` and ``body`` in one write on a raw socket, then reads to the end."""
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, (parts.hostname, parts.port))
        await loop.sock_sendall(sock, head.encode() + body)  # a reset raises here
        received = bytearray()
        async with asyncio.timeout(10):
            while chunk := await loop.sock_recv(sock, 1 << 16):
                received += chunk
    return bytes(received)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_body_over_the_limit_sent_in_one_write_gets_the_413(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream, framing: str
) -> None:
    """5 MiB against the 4 MiB default, head and body in one write, by a client that asks
    to close the connection after the answer: it reads the 413 envelope, not a reset."""
    gw = await start_gateway()
    content = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * (5 << 20)}]})
    body = content.encode()
    if framing == "chunked":
        body = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
        length = "Transfer-Encoding: chunked"
    else:
        length = f"Content-Length: {len(body)}"
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n{length}\r\n"
        f"{next(f'{k}: {v}' for k, v in AUTH.items())}\r\n"
        "Content-Type: application/json\r\nConnection: close\r\n\r\n"
    )
    answer = await _sent_at_once(gw.url, head, body)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413 "), answer[:200]
    error = json.loads(rest.partition(b"\r\n\r\n")[2])["error"]
    assert error["type"] == "invalid_request_error"
    assert upstream.bodies == []


async def test_model_outside_the_key_is_403_and_unknown_model_404(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    keys = {"k": Key("bob", models=["other"]), "a": Key("alice")}
    gw = await start_gateway(keys=keys)
    response = await gw.client.post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer k"}
    )
    assert assert_envelope(response, 403)["param"] == "model"
    pool = gw.app.running.pool
    await wait_until(lambda: pool.any_ready)
    body = {**CHAT, "model": "no-such-model"}
    response = await gw.client.post(
        "/v1/chat/completions", json=body, headers={"Authorization": "Bearer a"}
    )
    assert assert_envelope(response, 404)["code"] == "model_not_found"


async def test_unknown_paths_are_404_and_never_forwarded(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    for path in ("/scale_elastic_ep", "/v1/../health", "/v1/fine_tuning/jobs"):
        response = await gw.client.post(path, json={}, headers=AUTH)
        assert_envelope(response, 404)


async def test_rate_limited_is_429_with_retry_after_and_headers(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway(limiter=RecordingLimiter(refuse_above=10))
    response = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert assert_envelope(response, 429)["code"] == "rate_limit_exceeded"
    assert response.headers["retry-after"] == "3"
    assert response.headers["x-ratelimit-limit-tokens"] == "10"
    labels = {"key": "alice", "reason": "tokens"}
    assert gw.metric("vkit_gateway_rate_limited_total", labels) == 1


async def test_upstream_400_passes_through(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway()
    upstream.script.statuses = [400]
    response = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert assert_envelope(response, 400)["message"] == "scripted"


async def test_upstream_flat_error_is_normalised(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway()
    upstream.script.statuses = [400]
    upstream.script.error_body = {"object": "error", "message": "too long", "code": 400}
    response = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert assert_envelope(response, 400)["message"] == "too long"


async def test_upstream_unauthorized_becomes_502(
    start_gateway: GatewayFactory, upstream: ScriptedUpstream
) -> None:
    gw = await start_gateway()
    upstream.script.statuses = [401]
    upstream.script.error_body = {"error": "Unauthorized"}
    response = await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert "credentials" in assert_envelope(response, 502)["message"]


def test_normalise_leaves_envelopes_alone() -> None:
    envelope = b'{"error": {"message": "m", "type": "t", "param": null, "code": 400}}'
    assert normalise_upstream_error(400, envelope) is None
    assert b"Unauthorized" in (normalise_upstream_error(401, b'{"error":"Unauthorized"}') or b"")
    assert b"upstream answered 500" in (normalise_upstream_error(500, b"<html>") or b"")


def test_rate_limit_error_rounds_retry_after_up() -> None:
    exc = RateLimitExceeded("x", reason="requests", retry_after=0.2)
    assert exc.headers["retry-after"] == "1"
    assert exc.status_code == 429


async def test_wrong_method_is_405_envelope(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    response = await gw.client.get("/v1/chat/completions", headers=AUTH)
    assert_envelope(response, 405)


async def test_models_without_an_upstream_is_503(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway(upstreams=["http://127.0.0.1:9"])
    response = await gw.client.get("/v1/models", headers=AUTH)
    assert assert_envelope(response, 503)["code"] == "upstream_unavailable"
