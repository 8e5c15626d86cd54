"""Data, not code: GPU profiles, model config snapshots and deployment profiles.

Installed as the package ``launcher.configs`` (pyproject's ``package-dir``), so that a wheel
carries it; :mod:`launcher.config_files` finds it through ``importlib.resources``.
"""
