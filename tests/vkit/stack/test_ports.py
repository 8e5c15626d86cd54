"""Port checks against real sockets on 127.0.0.1."""

from __future__ import annotations

import socket

import pytest

from vkit.exit_codes import CliError
from vkit.stack.ports import pick_free_ports, port_in_use, ports_in_use
from vkit.stack.preflight import check_ports


def test_a_listening_port_is_in_use_and_free_again_after_close() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    assert port_in_use(port)
    sock.close()
    assert not port_in_use(port)


def test_pick_free_ports_are_distinct_and_bindable() -> None:
    ports = pick_free_ports(4)
    assert len(set(ports)) == 4
    assert ports_in_use(ports) == []


def test_check_ports_names_the_role_of_the_taken_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        free = pick_free_ports(1)[0]
        with pytest.raises(CliError, match=rf"port {port} \(gateway\) is already in use"):
            check_ports({"nginx": free, "gateway": port})
