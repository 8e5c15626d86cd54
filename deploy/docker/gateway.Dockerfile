# The vkit gateway: slim Python, non-root, no vLLM inside (it only proxies).
# Build context: the repository root (compose: build.context ../..).
FROM python:3.11-slim AS build
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
# What the gateway imports, nothing more: pyproject's dependencies, with tokenizers installed
# without its one requirement, huggingface_hub (with hf-xet, fsspec, httpx2, tqdm: ~26 MB).
# That serves Tokenizer.from_pretrained's downloads; the gateway reads tokenizer.json files
# (Tokenizer.from_file). No vLLM, no matplotlib (the [plot] extra). Installed size:
# tests/deploy/test_gateway_image.py.
COPY deploy/docker/gateway-requirements.txt ./
RUN pip install --no-cache-dir --prefix=/install -r gateway-requirements.txt \
 && pip install --no-cache-dir --prefix=/install --no-deps . 'tokenizers>=0.20'

FROM python:3.11-slim
RUN groupadd --system vkit && useradd --system --gid vkit --home-dir /nonexistent \
        --shell /usr/sbin/nologin vkit
COPY --from=build /install /usr/local
USER vkit
EXPOSE 8080
# Settings come from VKIT_GATEWAY_* variables (compose.yaml sets them).
CMD ["vkit", "gateway"]
