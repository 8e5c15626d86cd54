# The vkit gateway: slim Python, non-root, no vLLM inside (it only proxies).
# Build context: the repository root (compose: build.context ../..).
# The base image is a build argument: a private registry's copy, or one built without a registry
# (docs/docker-offline.md#a-stand-in-for-python-slim).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY vkit ./vkit
COPY launcher ./launcher
COPY gateway ./gateway
# Package data (pyproject's package-dir: launcher.configs, vkit.nginx, vkit.monitoring),
# installed with the rest.
COPY configs ./configs
COPY nginx ./nginx
COPY deploy/monitoring ./deploy/monitoring
# What the gateway imports, nothing more, at requirements.lock's versions: the generated
# gateway-requirements.txt (pyproject's dependencies less httpx, which only the kit's blocking
# probes use, and tokenizers without its one requirement, huggingface_hub: ~26 MB serving
# Tokenizer.from_pretrained's downloads, while the gateway reads tokenizer.json files).
# --no-deps: the file lists every package. No vLLM, no matplotlib (the [plot] extra).
# Installed size: tests/deploy/test_gateway_image.py.
COPY deploy/docker/gateway-requirements.txt ./
RUN pip install --no-cache-dir --prefix=/install --no-deps -r gateway-requirements.txt .

FROM ${PYTHON_IMAGE}
RUN groupadd --system vkit && useradd --system --gid vkit --home-dir /nonexistent \
        --shell /usr/sbin/nologin vkit
COPY --from=build /install /usr/local
USER vkit
EXPOSE 8080
# Settings come from VKIT_GATEWAY_* variables (compose.yaml sets them).
CMD ["vkit", "gateway"]
