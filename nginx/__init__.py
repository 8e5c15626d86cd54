"""Data, not code: the one NGINX template, installed as the package ``vkit.nginx``.

:mod:`vkit.nginx_conf` renders it for the compose bundle, systemd and ``vkit up``.
"""
