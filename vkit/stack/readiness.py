"""Readiness probes: one bounded, exception-free call per check."""

from __future__ import annotations

import socket

import httpx

from vkit.stack.specs import HttpCheck, ReadyCheck, TcpCheck

PROBE_TIMEOUT_S = 2.0


def is_ready(check: ReadyCheck, timeout: float = PROBE_TIMEOUT_S) -> bool:
    if isinstance(check, TcpCheck):
        return _tcp_ready(check, timeout)
    return _http_ready(check, timeout)


def _tcp_ready(check: TcpCheck, timeout: float) -> bool:
    try:
        with socket.create_connection((check.host, check.port), timeout=timeout):
            return True
    except OSError:
        return False


def _http_ready(check: HttpCheck, timeout: float) -> bool:
    try:
        response = httpx.get(check.url, timeout=timeout)
    except httpx.HTTPError:
        return False
    if response.status_code != 200:
        return False
    if check.model is None:
        return True
    try:
        listed = {entry.get("id") for entry in response.json().get("data", [])}
    except (ValueError, AttributeError):
        return False
    return check.model in listed
