"""Where the kit's data files live: the ``configs/`` folder, installed as ``launcher.configs``.

Found through ``importlib.resources``, so an editable checkout and an installed wheel read
the same files, from any working directory.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

CONFIG_DIR: Path = Path(str(files("launcher.configs")))
GPUS_FILE: Path = CONFIG_DIR / "gpus.yaml"
MODELS_DIR: Path = CONFIG_DIR / "models"
DEPLOYMENTS_DIR: Path = CONFIG_DIR / "deployments"
