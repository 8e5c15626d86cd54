"""The plan's NGINX and Redis commands, run for real (``services``: needs the binaries)."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from vkit.stack.ports import pick_free_ports, port_in_use
from vkit.stack.processes import ProcessGroup
from vkit.stack.stack_plan import StackLayout, StackPorts, plan_stack
from vkit.stack.up_settings import UpSettings

pytestmark = pytest.mark.integration


def test_planned_nginx_and_redis_start_answer_and_stop(tmp_path: Path) -> None:
    gateway, nginx, replica, redis = pick_free_ports(4)
    ports = StackPorts(gateway=gateway, nginx=nginx, replicas=(replica,), redis=redis)
    layout = StackLayout(tmp_path)
    plan = plan_stack(
        UpSettings(redis=True, replicas=1), ports, layout, model_path="m", python="py", cpu_count=2
    )
    layout.nginx_prefix.mkdir(parents=True)
    layout.nginx_conf.write_text(plan.nginx_conf)
    with ProcessGroup(poll_interval_s=0.05) as group:
        started = [group.start(spec) for spec in plan.specs if spec.name in ("nginx", "redis")]
        group.wait_ready(started, 15)
        with socket.create_connection(("127.0.0.1", redis), timeout=2) as conn:
            conn.sendall(b"PING\r\n")
            assert conn.recv(16) == b"+PONG\r\n"
        # No replica listens: NGINX answers with the template's JSON envelope.
        response = httpx.get(f"http://127.0.0.1:{nginx}/v1/models", timeout=10)
        assert response.status_code == 502
        assert response.json()["error"]["code"] == 502
    assert not port_in_use(nginx) and not port_in_use(redis)
