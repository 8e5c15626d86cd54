"""Settings sources and their priority; ``vkit gateway`` refuses bad settings in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.settings import GatewaySettings, UnknownSetting, load_settings
from vkit.cli import main
from vkit.commands.gateway import settings_help


def test_arguments_beat_environment_beat_file(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text("port: 9001\nhost: 0.0.0.0\ntimeouts: {idle: 3, first_byte: 4}\n")
    env = {"VKIT_GATEWAY_TIMEOUTS__IDLE": "7", "VKIT_GATEWAY_HOST": "10.0.0.1"}
    settings = load_settings(config, env, host="127.0.0.2")
    assert settings.host == "127.0.0.2"
    assert settings.timeouts.idle == 7
    assert settings.timeouts.first_byte == 4
    assert settings.port == 9001


def test_unknown_and_bad_fields_are_refused() -> None:
    with pytest.raises(ValidationError):
        GatewaySettings(bogus=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        GatewaySettings(timeouts={"idle": -1})  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        GatewaySettings(upstreams=[])


def test_a_client_write_deadline_over_total_is_refused_and_the_default_lowered() -> None:
    """``total`` bounds every write too: a ``client_write`` set above it could never fire,
    so it is refused; the default (30 s) is lowered to a shorter ``total``."""
    with pytest.raises(ValidationError, match=r"client_write \(5 s\) must not be above"):
        GatewaySettings(timeouts={"total": 3, "client_write": 5})  # type: ignore[arg-type]
    timeouts = GatewaySettings(timeouts={"total": 3}).timeouts  # type: ignore[arg-type]
    assert timeouts.client_write == 3
    equal = GatewaySettings(timeouts={"total": 3, "client_write": 3})  # type: ignore[arg-type]
    assert equal.timeouts.client_write == 3


def test_upstream_urls_drop_the_trailing_slash() -> None:
    settings = GatewaySettings(upstreams=["http://a:1/", "http://b:2"])  # type: ignore[list-item]
    assert settings.upstream_urls == ["http://a:1", "http://b:2"]


def test_help_lists_every_setting_as_an_env_var() -> None:
    text = settings_help()
    for name in (
        "VKIT_GATEWAY_UPSTREAMS",
        "VKIT_GATEWAY_TIMEOUTS__FIRST_BYTE",
        "VKIT_GATEWAY_CAPS__OVER_CAP",
        "VKIT_GATEWAY_REDIS_URL",
    ):
        assert name in text


@pytest.mark.parametrize(
    ("config_text", "message"),
    [
        ("port: [1\n", "not valid YAML"),
        ("port: 99999\n", "port"),
        ("bogus: 1\n", "bogus"),
        ("allow_anonymous: false\n", "no keys"),
    ],
)
def test_bad_settings_stop_the_command_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config_text: str, message: str
) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(config_text)
    assert main(["gateway", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1


def test_upstreams_from_env_as_json_or_comma_list() -> None:
    commas = load_settings(None, {"VKIT_GATEWAY_UPSTREAMS": "http://a:1, http://b:2"})
    assert commas.upstream_urls == ["http://a:1", "http://b:2"]
    as_json = load_settings(None, {"VKIT_GATEWAY_UPSTREAMS": '["http://c:3"]'})
    assert as_json.upstream_urls == ["http://c:3"]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("name", "value"),
    [("VKIT_GATEWAY_UPSTREAMS", "[oops"), ("VKIT_GATEWAY_HEALTH__EXPECTED_MODELS", "x")],
)
def test_unparsable_env_values_are_one_line_exit_2(name: str, value: str) -> None:
    env = {**os.environ, name: value}
    done = subprocess.run(
        [sys.executable, "-m", "vkit", "gateway"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("vkit gateway: error:")
    assert done.stderr.count("\n") == 1


def test_a_broken_keys_file_stops_the_command_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text("keys:\n  - name: 'not valid'\n")
    config = tmp_path / "gw.yaml"
    config.write_text(f"keys_file: {keys}\n")
    assert main(["gateway", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and err.count("\n") == 1


@pytest.mark.integration
@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("VKIT_GATEWAY_UPSTREAM", "VKIT_GATEWAY_UPSTREAMS"),
        ("VKIT_GATEWAY_TIMEOUTS__FIRSTBYTE", "VKIT_GATEWAY_TIMEOUTS__FIRST_BYTE"),
        ("VKIT_GATEWAY_HOST__X", None),
    ],
)
def test_an_unknown_env_variable_stops_the_command_naming_it(
    capsys: pytest.CaptureFixture[str], name: str, suggestion: str | None
) -> None:
    environ = {"VKIT_GATEWAY_ALLOW_ANONYMOUS": "true", name: "http://10.0.0.5:8000"}
    with pytest.raises(UnknownSetting) as refused:
        load_settings(None, environ)
    message = str(refused.value)
    assert name in message and "\n" not in message
    if suggestion is not None:
        assert f"did you mean {suggestion}?" in message
    done = subprocess.run(
        [sys.executable, "-m", "vkit", "gateway"],
        env={**os.environ, **environ},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("vkit gateway: error:") and name in done.stderr
    assert done.stderr.count("\n") == 1


def test_valid_env_names_pass_the_check() -> None:
    environ = {
        "VKIT_GATEWAY_UPSTREAMS": "http://a:1",
        "vkit_gateway_timeouts__first_byte": "9",  # names are case-insensitive
        "VKIT_GATEWAY_RETRY": '{"attempts": 2}',  # a whole section as JSON
        "OTHER_VARIABLE": "ignored",
    }
    settings = load_settings(None, environ)
    assert settings.timeouts.first_byte == 9
    assert settings.retry.attempts == 2
