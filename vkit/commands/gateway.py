"""``vkit gateway``: run the gateway under uvicorn, and its admin listener beside it.

The only place that reads the environment and the config file: flags > environment
(``VKIT_GATEWAY_*``) > ``--config`` YAML > defaults (see :mod:`gateway.settings`).
A bad setting, or an unknown ``VKIT_GATEWAY_*`` variable, stops it at start with one line
and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo
from pydantic_settings import SettingsError

from gateway.settings import ENV_PREFIX, GatewaySettings, UnknownSetting, load_settings
from vkit.exit_codes import UsageError


class ServeArgs(BaseModel):
    """The command line, typed."""

    model_config = ConfigDict(extra="forbid")

    config: Path | None = None
    host: str | None = None
    port: int | None = Field(default=None, ge=0, le=65535)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "gateway",
        help="run the OpenAI-compatible gateway (keys, limits, caps, timeouts, metrics)",
        description="Run the gateway in front of NGINX or vLLM replicas. "
        "Settings: flags > environment > --config YAML file > defaults.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="YAML file with the settings below")
    parser.add_argument("--host", help="listen address (VKIT_GATEWAY_HOST)")
    parser.add_argument("--port", type=int, help="listen port (VKIT_GATEWAY_PORT)")
    parser.set_defaults(handler=run)


def settings_help() -> str:
    """One line per setting: its environment variable, default and meaning."""
    lines = ["settings (environment variable = default: meaning; YAML uses the lower-case path):"]
    lines += _field_lines(GatewaySettings.model_fields, ENV_PREFIX)
    lines.append("lists are JSON, e.g. VKIT_GATEWAY_HEALTH__EXPECTED_MODELS='[\"tiny-llama\"]'")
    return "\n".join(lines)


def _field_lines(fields: dict[str, FieldInfo], prefix: str) -> list[str]:
    lines = []
    for name, info in fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines += _field_lines(annotation.model_fields, f"{prefix}{name.upper()}__")
            continue
        default = info.get_default(call_default_factory=True)
        shown = [str(u) for u in default] if name == "upstreams" else default
        text = f"  {prefix}{name.upper()} = {shown}"
        if info.description:
            text += f": {info.description}"
        lines.append(text)
    return lines


def read_settings(args: ServeArgs) -> GatewaySettings:
    if args.config is not None and not args.config.is_file():
        raise UsageError(f"config file not found: {args.config}")
    overrides: dict[str, object] = {
        k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None
    }
    try:
        settings = load_settings(args.config, None, **overrides)
    except (SettingsError, UnknownSetting) as exc:
        raise UsageError(str(exc)) from None
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())
        raise UsageError(f"config file {args.config} is not valid YAML: {reason}") from None
    if settings.keys_file is None and not settings.allow_anonymous:
        raise UsageError("no keys: set VKIT_GATEWAY_KEYS_FILE (or allow_anonymous for development)")
    if settings.keys_file is not None and not settings.keys_file.is_file():
        raise UsageError(f"keys file not found: {settings.keys_file}")
    return settings


def run(namespace: argparse.Namespace) -> int:
    args = ServeArgs(config=namespace.config, host=namespace.host, port=namespace.port)
    settings = read_settings(args)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    from gateway.app import create_admin_app
    from gateway.assembly import build_app  # imports uvicorn/aiohttp only when running
    from gateway.keyfile import KeyFileError
    from gateway.spill_settings import SpillError

    try:
        app = build_app(settings)
    except (KeyFileError, SpillError) as exc:
        raise UsageError(str(exc)) from None
    admin = create_admin_app(app) if settings.admin_port is not None else None
    tune_gc()
    serve(settings, app, admin)
    return 0


def tune_gc() -> None:
    """Garbage collection for a long-running server, measured under load (bench/cpu_profile.py).

    With the defaults the youngest generation is collected every 700 net allocations, which
    at concurrency 16-64 happens every few requests: the objects of the requests in flight
    are scanned and promoted again and again, and each full collection walks the ~97,000
    objects of the app's start (FastAPI, pydantic, the modules), tens of ms, the p99. So a
    request cost more CPU the more were in flight. Now the start's objects are frozen out
    of every collection and the youngest generation waits for 10,000. Requests build no
    reference cycles (tests/gateway/test_garbage.py), so nothing waits for the collector.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


@dataclass(frozen=True)
class ServerParts:
    """uvicorn's event loop and HTTP parser: the fast ones (``uvloop``, ``httptools``; the
    kit depends on both) or, where one is missing, the pure-Python fallback."""

    loop: str
    http: str

    def describe(self) -> str:
        line = f"vkit gateway: event loop {self.loop}, HTTP parser {self.http}"
        if (self.loop, self.http) != FAST_PARTS:
            line += (
                " (uvloop or httptools is not installed: each request costs 40-60% more "
                "CPU; pip install uvloop httptools)"
            )
        return line


FAST_PARTS = ("uvloop", "httptools")


def server_parts(
    installed: Callable[[str], bool] = lambda name: find_spec(name) is not None,
) -> ServerParts:
    """What this environment can run: each fast part when it is importable."""
    return ServerParts(
        loop="uvloop" if installed("uvloop") else "asyncio",
        http="httptools" if installed("httptools") else "h11",
    )


def serve(settings: GatewaySettings, app: Any, admin: Any | None) -> None:
    """The gateway on ``host:port`` and, when ``admin_port`` is set, ``admin`` on
    ``admin_host:admin_port``: two uvicorn servers in this process and event loop.

    SIGTERM/SIGINT drain the public server first (open responses finish, up to
    ``timeouts.total``) while the admin listener still answers; then the admin one stops.
    Each uvicorn server takes the signal handlers while it runs and, when it ends, puts back
    the ones it found and raises the signal again: the admin server starts first, so the
    public one hands it the signal when it is done. Either one ending ends both.
    """
    import uvicorn

    parts = server_parts()
    logging.getLogger("vkit.gateway").warning(parts.describe())
    from gateway.held_head import http_protocol

    public = uvicorn.Server(
        uvicorn.Config(
            app,
            loop=parts.loop,
            # a response's head goes out with its body, in one write (gateway/held_head.py)
            http=http_protocol(parts.http),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            access_log=False,
            # The gateway reads no client address (no access log, no per-address rule), so
            # uvicorn's X-Forwarded-* rewriting is one ASGI layer per request for nothing.
            proxy_headers=False,
            timeout_graceful_shutdown=int(settings.timeouts.total),
        )
    )
    if admin is None:
        public.run()
        return
    assert settings.admin_port is not None
    config = uvicorn.Config(
        admin,
        loop=parts.loop,
        http=parts.http,
        host=settings.admin_host,
        port=settings.admin_port,
        log_level=settings.log_level,
        access_log=False,
        lifespan="off",  # the public app's lifespan runs the prober for both
    )
    second = uvicorn.Server(config)

    async def both() -> None:
        admin_task = asyncio.create_task(second.serve())
        await asyncio.sleep(0)  # the admin server takes the signal handlers first
        public_task = asyncio.create_task(public.serve())
        await asyncio.wait({admin_task, public_task}, return_when=asyncio.FIRST_COMPLETED)
        public.should_exit = second.should_exit = True
        await asyncio.gather(public_task, admin_task)

    with asyncio.Runner(loop_factory=public.config.get_loop_factory()) as runner:
        runner.run(both())
