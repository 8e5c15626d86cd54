"""The rendered NGINX config: pure checks, then ``nginx -t`` on the real binary."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy.nginx_process import free_port, nginx_binary
from vkit.cli import main
from vkit.nginx_conf import (
    DEFAULT_TEMPLATE,
    ProxyTuning,
    nginx_argv,
    parse_upstream,
    render_nginx_conf,
    render_nginx_site,
    wrap_standalone,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

UPSTREAMS_LOCAL = ["127.0.0.1:8001", "127.0.0.1:8002"]
UPSTREAMS = ["127.0.0.1:8001", "http://10.0.0.2:8000/", "http://vllm-1:8000/v1"]


def directives(conf: str, name: str) -> list[str]:
    pattern = rf"^[ \t]*{name}[ \t]+([^;{{]*);"
    return [m.group(1).strip() for m in re.finditer(pattern, conf, re.M)]


def test_every_replica_is_an_upstream_server_with_passive_health_checks() -> None:
    site = render_nginx_site(UPSTREAMS, "8080", tuning=ProxyTuning(max_fails=2, fail_timeout_s=7))
    assert directives(site, "server") == [
        "127.0.0.1:8001 max_fails=2 fail_timeout=7s",
        "10.0.0.2:8000 max_fails=2 fail_timeout=7s",
        "vllm-1:8000 max_fails=2 fail_timeout=7s",
    ]
    assert directives(site, "listen") == ["8080"]


def test_streaming_and_failover_directives_follow_the_tuning() -> None:
    tuning = ProxyTuning(read_timeout_s=900, next_upstream_tries=3, client_max_body_size="8m")
    site = render_nginx_site(UPSTREAMS[:1], "127.0.0.1:9000", tuning=tuning)
    assert directives(site, "proxy_buffering") == ["off"]
    # Buffered request bodies are what lets a POST fail over (see the template).
    assert directives(site, "proxy_request_buffering") == ["on"]
    assert directives(site, "proxy_http_version") == ["1.1"]
    assert directives(site, "proxy_set_header Connection") == ['""']
    assert directives(site, "proxy_read_timeout") == ["900s"]
    assert directives(site, "proxy_next_upstream_tries") == ["3"]
    assert directives(site, "client_max_body_size") == ["8m"]
    retry_on = directives(site, "proxy_next_upstream")[0].split()
    assert {"error", "timeout", "http_502", "http_503"} <= set(retry_on)
    # A POST is passed on only if it never reached the first replica: no second generation.
    assert "non_idempotent" not in retry_on
    assert "{{" not in site


def test_standalone_conf_keeps_every_path_under_the_prefix() -> None:
    conf = render_nginx_conf(UPSTREAMS, "127.0.0.1:9000", worker_processes=2, daemon=False)
    paths = [directives(conf, d)[0].split()[0] for d in ("pid", "error_log")]
    paths += [directives(conf, f"{k}_temp_path")[0] for k in ("client_body", "proxy", "fastcgi")]
    paths += [directives(conf, f"{k}_temp_path")[0] for k in ("uwsgi", "scgi")]
    assert all(not p.startswith("/") for p in paths), paths
    assert directives(conf, "worker_processes") == ["2"]
    assert directives(conf, "daemon") == ["off"]
    assert directives(conf, "user") == []


@pytest.mark.parametrize(
    ("given", "expected"),
    [("h:1", "h:1"), ("http://h:80/x/", "h:80"), (" [::1]:8000 ", "[::1]:8000")],
)
def test_parse_upstream_accepts_host_port_and_base_urls(given: str, expected: str) -> None:
    assert parse_upstream(given) == expected


@pytest.mark.parametrize(
    "bad", ["https://h:443", "h", "h:port", "http://h:1?x=1", "h:1; include /etc/passwd"]
)
def test_parse_upstream_rejects_what_nginx_cannot_proxy_to(bad: str) -> None:
    with pytest.raises(ValueError, match="upstream"):
        parse_upstream(bad)


@pytest.mark.parametrize("listen", ["80; include x", "", "a b"])
def test_bad_listen_is_refused(listen: str) -> None:
    with pytest.raises(ValueError, match="listen"):
        render_nginx_site(UPSTREAMS, listen)


@pytest.mark.parametrize(
    "kwargs",
    [{"next_upstream_tries": 0}, {"next_upstream_tries": 9}, {"client_max_body_size": "4 mb"}],
)
def test_tuning_refuses_unbounded_or_malformed_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ProxyTuning(**kwargs)  # type: ignore[arg-type]


def test_a_slot_left_without_a_value_is_an_error() -> None:
    template = DEFAULT_TEMPLATE.read_text() + "\n# {{ surprise }}\n"
    with pytest.raises(ValueError, match="surprise"):
        render_nginx_site(UPSTREAMS, "80", template=template)


def test_no_upstreams_is_an_error() -> None:
    with pytest.raises(ValueError, match="upstream"):
        render_nginx_conf([], "80")


@pytest.mark.integration
def test_nginx_accepts_the_standalone_conf(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx_conf(UPSTREAMS[:2], f"127.0.0.1:{free_port()}"))
    result = subprocess.run(
        nginx_argv(conf, tmp_path, binary=nginx_binary(), test=True),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.integration
def test_nginx_refuses_a_broken_conf(tmp_path: Path) -> None:
    """The check above can fail: a bad directive value is caught by ``nginx -t``."""
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx_conf(["127.0.0.1:1"], "80").replace("keepalive 32", "keepalive x"))
    result = subprocess.run(
        nginx_argv(conf, tmp_path, binary=nginx_binary(), test=True),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0


# The compose site resolves names at run time (NGINX >= 1.27.3): tests/deploy/test_compose*.py
@pytest.mark.integration
@pytest.mark.parametrize("deployment", ["systemd"])
def test_nginx_accepts_the_committed_site_files(tmp_path: Path, deployment: str) -> None:
    """The compose and systemd sites, inside a minimal main config.

    NGINX resolves upstream names at start: compose's service names (``vllm-0``) only
    exist on its network, so here they become 127.0.0.1.
    """
    site = (DEPLOY / deployment / "nginx" / "vkit.conf").read_text()
    site = re.sub(r"server vllm-\d+:", "server 127.0.0.1:", site)
    site = re.sub(r"listen [^;]+;", f"listen 127.0.0.1:{free_port()};", site)
    conf = tmp_path / "nginx.conf"
    conf.write_text(wrap_standalone(site))
    result = subprocess.run(
        nginx_argv(conf, tmp_path, binary=nginx_binary(), test=True),
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("deployment", ["systemd"])
def test_committed_sites_come_from_the_template(deployment: str) -> None:
    site = (DEPLOY / deployment / "nginx" / "vkit.conf").read_text()
    upstreams = [m.split()[0] for m in directives(site, "server")]
    listen = directives(site, "listen")[0]
    assert site == render_nginx_site(upstreams, listen)


def test_render_nginx_command_writes_a_standalone_conf(tmp_path: Path) -> None:
    out = tmp_path / "conf" / "nginx.conf"
    argv = ["render", "nginx", "--upstream", "127.0.0.1:8001", "--upstream", "127.0.0.1:8002"]
    assert main([*argv, "--listen", "127.0.0.1:9000", "--workers", "2", "--out", str(out)]) == 0
    expected = render_nginx_conf(UPSTREAMS_LOCAL, "127.0.0.1:9000", worker_processes=2)
    assert out.read_text() == expected


def test_render_nginx_command_refuses_a_bad_upstream(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "nginx", "--upstream", "https://x:1", "--listen", "80"]) == 2
    assert "only http://" in capsys.readouterr().err
