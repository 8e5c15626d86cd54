"""``vkit launch``: start vLLM with tuned arguments, supervise it, exit with its code.

vkit launch --model llama-3.1-8b --gpu rtx4090 --quant awq --concurrency 16
vkit launch --profile tiny-cpu --port 8001 -- --seed 7
vkit launch --model DIR --cpu --dry-run
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from launcher.sizing.checkpoint_check import (
    CheckpointConfigSource,
    HubEnvironment,
    require_matching_config,
)
from launcher.sizing.checkpoints import served_checkpoint, snapshot_key
from launcher.sizing.fit_report import command_line
from launcher.supervision.launch_spec import LaunchSettings, engine_process_env, resolve_launch
from launcher.supervision.profiles import LaunchEnvironment, load_profile, merge_extra_args
from launcher.supervision.readiness import ReadinessCheck
from launcher.supervision.sd_notify import HealthWatcher, SystemdNotifier, watch_replica
from launcher.supervision.supervisor import EngineSupervisor
from launcher.supervision.tiny_model import TINY_MODEL_NAME, build_tiny_model
from launcher.supervision.vllm_args import VllmOptions, build_vllm_argv, split_flags
from vkit.commands.plan import _FIELDS, add_model_arguments, settings_fields
from vkit.exit_codes import UsageError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "launch",
        help="start vLLM with the fit solver's settings (GPU or CPU) and supervise it",
        description="Start `python -m vllm.entrypoints.openai.api_server` with tuned flags, "
        "forward SIGTERM/SIGINT for a graceful drain, relaunch after start-up memory errors, "
        "and exit with vLLM's exit code. Flags after `--` go to vLLM (they win over ours).",
    )
    add_model_arguments(parser)
    parser.add_argument("--max-model-len", type=int, help="context length (else solved)")
    parser.add_argument(
        "--enforce-eager",
        action="store_true",
        default=None,
        help="no CUDA graphs / torch.compile (faster start)",
    )
    parser.add_argument(
        "--shutdown-timeout", type=float, help="seconds vLLM drains in-flight requests on SIGTERM"
    )
    parser.add_argument("--max-restarts", type=int, help="relaunches after memory errors (2)")
    parser.add_argument(
        "--profile", help="deployment profile: a YAML file or a name in configs/deployments"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the command and exit")
    parser.add_argument(
        "extra", nargs="*", metavar="-- VLLM_ARGS", help="extra vLLM arguments, after --"
    )
    parser.set_defaults(handler=run_launch)


_LAUNCH_FIELDS = [*_FIELDS, "max_model_len", "enforce_eager", "shutdown_timeout", "max_restarts"]


def detect_gpu() -> tuple[bool, str | None]:
    """Is an NVIDIA GPU visible, and its name (via nvidia-smi)?"""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return Path("/dev/nvidia0").exists(), None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False, None
    names = [line.strip() for line in out.splitlines() if line.strip()]
    return bool(names), names[0] if names else None


def settings_from(args: argparse.Namespace, environment: LaunchEnvironment) -> LaunchSettings:
    """Profile < environment < flags, validated once as LaunchSettings."""
    fields: dict[str, Any] = load_profile(args.profile) if args.profile else {}
    if environment.vllm_cpu_kvcache_space is not None:
        fields["kv_cache_space_gib"] = environment.vllm_cpu_kvcache_space
    fields.update(settings_fields(args, _LAUNCH_FIELDS))
    if args.cpu:
        fields.pop("gpu", None)
    elif args.gpu:
        fields.pop("cpu", None)
    fields["extra_args"] = merge_extra_args(tuple(fields.get("extra_args", ())), tuple(args.extra))
    if "model" not in fields:
        raise UsageError("give --model NAME_OR_DIR or --profile FILE")
    return LaunchSettings(**fields)


def with_tiny_model(settings: LaunchSettings, models_dir: Path) -> LaunchSettings:
    """``--model tiny-llama`` (not a directory): build the built-in tiny model and use it."""
    if settings.model != TINY_MODEL_NAME or Path(settings.model).is_dir():
        return settings
    path = build_tiny_model(models_dir / TINY_MODEL_NAME)
    return settings.model_copy(
        update={
            "model": str(path.resolve()),
            "served_model_name": settings.served_model_name or TINY_MODEL_NAME,
        }
    )


def catalog_check_note(settings: LaunchSettings, source: CheckpointConfigSource) -> str | None:
    """For a pre-quantized catalog checkpoint: its config.json checked against the catalog's
    facts (a note, or a CheckpointMismatchError before vLLM starts); None otherwise."""
    checkpoint = served_checkpoint(settings.model, settings.quant)
    if checkpoint is None or not checkpoint.prequantized:
        return None
    entry = f"{snapshot_key(settings.model)}/{settings.quant}"
    return require_matching_config(entry, checkpoint, source)


def run_launch(
    args: argparse.Namespace,
    *,
    config_source: CheckpointConfigSource | None = None,
    argv_for: Callable[[VllmOptions], list[str]] = build_vllm_argv,
) -> int:
    """``config_source`` defaults to the Hugging Face cache then the hub (the cache only for
    ``--dry-run``); ``argv_for`` builds the engine command the supervisor starts."""
    environment = LaunchEnvironment()
    settings = with_tiny_model(settings_from(args, environment), environment.vkit_models_dir)
    gpu_visible, gpu_name = (False, None) if settings.cpu else detect_gpu()
    spec = resolve_launch(settings, gpu_visible=gpu_visible, detected_gpu=gpu_name)
    if config_source is None:
        hub = HubEnvironment().source()
        config_source = hub.cache_only() if args.dry_run else hub
    checked = catalog_check_note(settings, config_source)
    for note in [*spec.notes, *([checked] if checked else [])]:
        print(f"vkit launch: note: {note}", file=sys.stderr)
    line = command_line(spec.argv, spec.env)
    if args.dry_run:
        print(line)
        return 0
    print(f"vkit launch: {line}", file=sys.stderr, flush=True)
    supervisor = EngineSupervisor(
        argv_for,
        env=engine_process_env(os.environ, spec.env),
        max_restarts=settings.max_restarts,
    )
    watcher = systemd_watcher(environment, spec.options)
    if watcher is not None:
        watcher.start()
    try:
        return supervisor.run(spec.options)
    finally:
        if watcher is not None:
            watcher.stop()


def systemd_watcher(environment: LaunchEnvironment, options: VllmOptions) -> HealthWatcher | None:
    """Under systemd (``NOTIFY_SOCKET`` set): READY=1 once the replica serves its model by the
    one readiness rule, asked with vLLM's API key; then WATCHDOG=1 while ``/health`` is 200
    and the engine makes progress (``VKIT_STALL_AFTER_S``)."""
    if not environment.notify_socket:
        return None
    host = options.host if options.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    base_url = f"http://[{host}]:{options.port}" if ":" in host else f"http://{host}:{options.port}"
    check = ReadinessCheck.of(vllm_api_key(environment, options), [served_model(options)])
    return watch_replica(
        base_url,
        check,
        SystemdNotifier(environment.notify_socket),
        watchdog_interval_s=environment.watchdog_interval_s,
        stall_after_s=environment.vkit_stall_after_s,
    )


def vllm_api_key(environment: LaunchEnvironment, options: VllmOptions) -> str | None:
    """The key vLLM will demand: ``--api-key`` among the pass-through flags wins over
    ``VLLM_API_KEY``, as in vLLM itself."""
    flag = _extra_flag_value(options, "api-key")
    if flag:
        return flag
    return environment.vllm_api_key.get_secret_value() if environment.vllm_api_key else None


def served_model(options: VllmOptions) -> str:
    """The model id ``/v1/models`` lists: a pass-through ``--served-model-name`` (its first
    name), else ours, else the model argument."""
    return _extra_flag_value(options, "served-model-name") or (
        options.served_model_name or options.model
    )


def _extra_flag_value(options: VllmOptions, key: str) -> str | None:
    for flag, tokens in split_flags(options.extra_args):
        if flag == key:
            if "=" in tokens[0]:
                return tokens[0].split("=", 1)[1]
            return tokens[1] if len(tokens) > 1 else None
    return None
