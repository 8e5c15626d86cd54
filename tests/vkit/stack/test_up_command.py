"""``vkit up`` refuses clearly, before starting anything, when it cannot run."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from vkit.cli import main


def test_port_in_use_is_one_line_naming_the_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code = main(["up", "--port", str(port), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err == (
        f"vkit up: error: port {port} (gateway) is already in use on 127.0.0.1: "
        "stop what holds it or choose another port"
    )
    assert not (tmp_path / "run").exists()


def test_missing_nginx_names_the_binary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["up", "--nginx-bin", str(tmp_path / "no-nginx"), "--run-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{tmp_path / 'no-nginx'} not found on PATH" in err
    assert "Traceback" not in err


def test_bad_flag_values_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["up", "--replicas", "0"]) == 2
    assert "replicas" in capsys.readouterr().err
    assert main(["up", "--gpu", "h100"]) == 2
    assert "--gpu needs --model" in capsys.readouterr().err
