"""Run a process's readiness checks: one bounded, exception-free call per check.

A vLLM replica is judged by the one rule of :mod:`launcher.supervision.readiness` (the same
rule the gateway's prober and ``vkit launch``'s sd_notify use); NGINX and the gateway by
their own health endpoints answering 200; Redis by accepting a TCP connection.
"""

from __future__ import annotations

import socket

import httpx

from launcher.supervision.readiness import ReadinessCheck
from launcher.supervision.readiness_probe import VllmProbe
from vkit.stack.specs import HttpCheck, ReadyCheck, TcpCheck, VllmCheck

PROBE_TIMEOUT_S = 2.0


def is_ready(check: ReadyCheck, timeout: float = PROBE_TIMEOUT_S) -> bool:
    if isinstance(check, TcpCheck):
        return _tcp_ready(check, timeout)
    if isinstance(check, VllmCheck):
        rule = ReadinessCheck.of(check.api_key, [check.model])
        return VllmProbe(check.base_url, rule, timeout_s=timeout).ready()
    return _http_ready(check, timeout)


def _tcp_ready(check: TcpCheck, timeout: float) -> bool:
    try:
        with socket.create_connection((check.host, check.port), timeout=timeout):
            return True
    except OSError:
        return False


def _http_ready(check: HttpCheck, timeout: float) -> bool:
    try:
        return httpx.get(check.url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False
