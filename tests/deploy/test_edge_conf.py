"""The edge site's renderer (pure), the committed sites it renders, and the first run's
certificate with a real ``openssl`` and a real NGINX serving TLS in front of a gateway."""

from __future__ import annotations

import stat
from pathlib import Path, PurePath

import httpx
import pytest

from gateway.settings import GatewaySettings
from gateway.settings_env import settings_from_values
from tests.deploy.edge_processes import (
    PROBE_SOURCE,
    closed_by_peer,
    edge_process,
    gateway_process,
    slow_heads,
)
from tests.vllm_standin import Script, standin_in_thread
from vkit.deployment import Ports
from vkit.edge_cert import CertificateError, ensure_certificate
from vkit.edge_conf import EdgeLimits, EdgeTls, render_edge_site, systemd_edge_site
from vkit.render.systemd import gateway_host_values

LIMITS = EdgeLimits(header_timeout_s=2)
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def directive(site: str, name: str) -> str:
    lines = [line.strip() for line in site.splitlines() if line.strip().startswith(name + " ")]
    assert len(lines) == 1, (name, lines)
    return lines[0].removeprefix(name + " ").removesuffix(";")


def test_limits_follow_the_gateway_body_limit_and_total_timeout() -> None:
    gateway = GatewaySettings(max_body_bytes=1_000_000, timeouts={"total": 900.5})
    limits = EdgeLimits.for_gateway(gateway)
    site = render_edge_site("127.0.0.1:8080", "443", limits)
    # Rounded down: the edge never passes a body the gateway would refuse.
    assert directive(site, "client_max_body_size") == "976k"
    assert gateway.max_body_bytes >= 976 * 1024
    assert directive(site, "proxy_read_timeout") == "901s"
    assert EdgeLimits.for_gateway(gateway, conns_per_client=5).conns_per_client == 5


def test_the_site_buffers_bodies_streams_answers_and_sets_the_client_address() -> None:
    site = render_edge_site("127.0.0.1:8080", "8443", EdgeLimits(requests_per_s=10))
    assert directive(site, "proxy_request_buffering") == "on"
    assert directive(site, "proxy_buffering") == "off"
    assert directive(site, "proxy_next_upstream") == "off"
    assert directive(site, "proxy_set_header X-Forwarded-For") == "$remote_addr"
    assert directive(site, "limit_conn") == "vkit_edge_conn 64"
    assert directive(site, "limit_req") == "zone=vkit_edge_req burst=20 nodelay"
    assert directive(site, "listen") == "8443"
    assert "ssl_certificate" not in site
    assert "limit_req" not in render_edge_site("127.0.0.1:8080", "8443")


def test_tls_and_bad_values() -> None:
    tls = EdgeTls(PurePath("/etc/vkit/tls/cert.pem"), PurePath("/etc/vkit/tls/key.pem"))
    site = render_edge_site("127.0.0.1:8080", "443", tls=tls)
    assert directive(site, "listen") == "443 ssl"
    assert directive(site, "ssl_certificate_key") == "/etc/vkit/tls/key.pem"
    with pytest.raises(ValueError, match="without spaces"):
        EdgeTls(PurePath("/my certs/c.pem"), PurePath("/k.pem"))
    with pytest.raises(ValueError, match="header_timeout_s"):
        EdgeLimits(header_timeout_s=0)
    with pytest.raises(ValueError, match="listen"):
        render_edge_site("127.0.0.1:8080", "443; evil")


def test_the_committed_systemd_edge_site_is_the_rendered_one() -> None:
    gateway = settings_from_values(gateway_host_values(Ports()))
    assert gateway.host == "127.0.0.1"  # the edge is the only way in
    committed = (DEPLOY / "systemd" / "nginx" / "vkit-edge.conf").read_text()
    assert committed == systemd_edge_site(gateway), (
        "re-render: python -c 'from vkit.edge_conf import systemd_edge_site; ...' "
        "(see this test) > deploy/systemd/nginx/vkit-edge.conf"
    )


def test_the_compose_edge_site_resolves_the_gateway_at_run_time() -> None:
    site = (DEPLOY / "docker" / "nginx" / "edge.conf").read_text()
    assert "server gateway:8080 resolve max_fails=0;" in site
    assert "    listen 443 ssl;\n" in site
    assert "    listen 127.0.0.1:8081;\n" in site  # /edge_health, for the healthcheck


@pytest.mark.integration
def test_a_first_certificate_is_made_once_and_never_replaced(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    assert ensure_certificate(cert, key, names=["localhost", "127.0.0.1"]) == "made"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    made = cert.read_bytes()
    assert ensure_certificate(cert, key) == "kept"
    assert cert.read_bytes() == made
    key.unlink()
    with pytest.raises(CertificateError, match="give both, or neither"):
        ensure_certificate(cert, key)
    assert not key.exists() and cert.read_bytes() == made
    assert sorted(p.name for p in cert.parent.iterdir()) == ["cert.pem"]


@pytest.mark.integration
def test_the_edge_serves_tls_with_the_made_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    ensure_certificate(cert, key, names=["localhost", "127.0.0.1"])
    with (
        standin_in_thread(Script()) as upstream,
        gateway_process(tmp_path, upstream.url) as gateway,
        edge_process(tmp_path, gateway, LIMITS, tls=EdgeTls(cert, key)) as port,
        slow_heads(int(port), 1, b"\x16\x03\x01") as (stalled_handshake,),
    ):
        transport = httpx.HTTPTransport(local_address=PROBE_SOURCE, verify=str(cert))
        with httpx.Client(transport=transport, timeout=10) as client:
            body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]}
            headers = {"Authorization": f"Bearer {gateway.secret}"}
            url = f"https://localhost:{port}/v1/chat/completions"
            assert client.post(url, json=body, headers=headers).status_code == 200
        with pytest.raises(httpx.ConnectError):  # an unknown CA is refused
            httpx.get(f"https://localhost:{port}/livez", timeout=5)
        # A TLS handshake begun and never finished is cut after client_header_timeout.
        assert closed_by_peer(stalled_handshake, LIMITS.header_timeout_s + 3)
