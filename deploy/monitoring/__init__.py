"""Data, not code: Prometheus alert/recording rules, their promtool tests and the Grafana
dashboard and provisioning that compose mounts from here.

Installed as the package ``vkit.monitoring`` (pyproject's ``package-dir``), so that a wheel
carries the files ``vkit render k8s`` turns into a PrometheusRule and a dashboard ConfigMap;
:mod:`vkit.render.k8s_monitoring` finds them through ``importlib.resources``.
"""
