"""Where the kit's data files live: ``configs/`` at the root of the repository."""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR: Path = Path(__file__).resolve().parents[1] / "configs"
GPUS_FILE: Path = CONFIG_DIR / "gpus.yaml"
MODELS_DIR: Path = CONFIG_DIR / "models"
DEPLOYMENTS_DIR: Path = CONFIG_DIR / "deployments"
