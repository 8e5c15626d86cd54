"""Deploy files as data: pure builders for a GPU box's compose bundle.

- :mod:`vkit.render.compose` -- ``ComposeSpec`` -> the compose file as a dict
- :mod:`vkit.render.prometheus` -- scrape config and per-GPU price series
- :mod:`vkit.render.alertmanager` -- the Alertmanager service, its config and start script
- :mod:`vkit.render.bundle` -- every file of ``deploy/docker/`` as text, and an atomic writer

The NGINX config comes from :mod:`vkit.nginx_conf` (one template for every deployment).
"""
