# The vkit gateway: slim Python, non-root, no vLLM inside (it only proxies).
# Build context: the repository root (compose: build.context ../..).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY vkit ./vkit
COPY launcher ./launcher
COPY gateway ./gateway
RUN pip install --no-cache-dir --prefix=/install .
# The kit finds its data beside its packages (launcher/config_files.py, vkit/nginx_conf.py);
# a wheel install does not carry them, so they go next to site-packages' packages.
COPY configs /install/lib/python3.11/site-packages/configs
COPY nginx /install/lib/python3.11/site-packages/nginx

FROM python:3.11-slim
RUN groupadd --system vkit && useradd --system --gid vkit --home-dir /nonexistent \
        --shell /usr/sbin/nologin vkit
COPY --from=build /install /usr/local
USER vkit
EXPOSE 8080
# Settings come from VKIT_GATEWAY_* variables (compose.yaml sets them).
CMD ["vkit", "gateway"]
