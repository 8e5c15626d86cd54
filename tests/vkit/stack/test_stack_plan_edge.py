"""``vkit up`` and the edge: NGINX in front of the gateway wherever other hosts reach it.

On loopback (the demo's default) nothing changes: the gateway is on ``--port``. Off
loopback the port is the edge's (TLS, self-signed unless a pair is given) and the gateway
sits behind it on 127.0.0.1."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.deploy.nginx_process import nginx_binary
from vkit.cli import VkitArgumentParser
from vkit.commands.up import register, settings_from_args
from vkit.edge_cert import ensure_certificate
from vkit.nginx_conf import nginx_argv
from vkit.stack.preflight import missing_binaries
from vkit.stack.run import edge_note
from vkit.stack.stack_plan import StackLayout, StackPlan, StackPorts, plan_stack
from vkit.stack.up_settings import UpSettings

PORTS = StackPorts(gateway=8000, nginx=9001, replicas=(9101, 9102))
EDGE_PORTS = StackPorts(gateway=9200, nginx=9001, replicas=(9101, 9102), edge=8000)


def plan(settings: UpSettings, ports: StackPorts, run_dir: Path = Path("run")) -> StackPlan:
    layout = StackLayout(run_dir)
    return plan_stack(settings, ports, layout, model_path="/m", python="/py", cpu_count=2)


def gateway_listen(stack: StackPlan) -> list[str]:
    argv = list(stack.named("gateway")[0].argv)
    return [argv[argv.index("--host") + 1], argv[argv.index("--port") + 1]]


def test_the_demo_on_loopback_has_no_edge() -> None:
    settings = UpSettings()
    assert not settings.uses_edge
    demo = plan(settings, PORTS)
    assert demo.edge_conf is None
    assert "edge" not in [s.name for s in demo.specs]
    assert demo.gateway_url == "http://127.0.0.1:8000"


def test_off_loopback_the_edge_serves_tls_and_the_gateway_hides_behind_it() -> None:
    settings = UpSettings(host="0.0.0.0")
    assert settings.uses_edge and settings.uses_tls
    public = plan(settings, EDGE_PORTS)
    assert gateway_listen(public) == ["127.0.0.1", "9200"]
    assert public.gateway_url == "https://localhost:8000"
    assert public.edge_conf is not None
    assert "    listen 0.0.0.0:8000 ssl;" in public.edge_conf
    assert f"ssl_certificate {Path('run/tls/cert.pem').resolve()};" in public.edge_conf
    assert "server 127.0.0.1:9200 max_fails=0;" in public.edge_conf
    edge = public.named("edge")[0]
    gateway = public.named("gateway")[0]
    assert edge.stop_tier < gateway.stop_tier  # no new clients while the gateway drains
    assert "curl --cacert" in edge_note(settings, StackLayout(Path("run")))


def test_edge_on_loopback_is_plain_http_unless_a_pair_is_given() -> None:
    local = plan(UpSettings(edge=True), EDGE_PORTS)
    assert local.gateway_url == "http://127.0.0.1:8000"
    assert local.edge_conf is not None and "ssl" not in local.edge_conf.split("server {")[1]
    given = UpSettings(edge=True, tls_cert=Path("/c.pem"), tls_key=Path("/k.pem"))
    assert given.uses_tls
    assert "ssl_certificate_key /k.pem;" in (plan(given, EDGE_PORTS).edge_conf or "")
    assert edge_note(given, StackLayout(Path("run"))) == ""


def test_no_edge_leaves_the_gateway_facing_clients() -> None:
    bare = plan(UpSettings(host="0.0.0.0", edge=False), PORTS)
    assert gateway_listen(bare) == ["0.0.0.0", "8000"]
    assert bare.edge_conf is None


def test_flags_and_their_combinations() -> None:
    parser = VkitArgumentParser(prog="vkit")
    register(parser.add_subparsers(dest="command"))
    args = ["up", "--edge", "--tls-cert", "c.pem", "--tls-key", "k.pem"]
    settings = settings_from_args(parser.parse_args(args))
    assert settings.edge is True and settings.tls_key == Path("k.pem")
    assert settings_from_args(parser.parse_args(["up", "--no-edge"])).edge is False
    with pytest.raises(ValidationError, match="go together"):
        UpSettings(tls_cert=Path("c.pem"))
    with pytest.raises(ValidationError, match="needs the edge"):
        UpSettings(edge=False, tls_cert=Path("c.pem"), tls_key=Path("k.pem"))
    missing = missing_binaries(UpSettings(host="0.0.0.0", routing="aware"), lambda b: None)
    assert missing == ["nginx", "openssl"]


@pytest.mark.integration
def test_the_planned_edge_conf_passes_nginx_t(tmp_path: Path) -> None:
    layout = StackLayout(tmp_path)
    ensure_certificate(layout.tls_cert, layout.tls_key)
    public = plan(UpSettings(host="0.0.0.0"), EDGE_PORTS, tmp_path)
    layout.edge_prefix.mkdir()
    layout.edge_conf.write_text(public.edge_conf or "")
    argv = nginx_argv(layout.edge_conf, layout.edge_prefix, binary=nginx_binary(), test=True)
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
