# The vkit gateway: slim Python, non-root, no vLLM inside (it only proxies).
# Build context: the bundle's build/gateway/ (`vkit render compose --out` writes it): this
# file, gateway-requirements.txt, and the kit's packages under src/ with the pyproject.toml
# that installs them (vkit/render/gateway_build.py).
# The base image is a build argument: a private registry's copy, or one built without a
# registry (docs/docker-offline.md#a-stand-in-for-python-slim).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
# What the gateway imports, nothing more, at requirements.lock's versions: the generated
# gateway-requirements.txt (pyproject's dependencies less httpx, which only the kit's blocking
# probes use, and tokenizers without its one requirement, huggingface_hub: ~26 MB serving
# Tokenizer.from_pretrained's downloads, while the gateway reads tokenizer.json files).
# --no-deps: the file lists every package. No vLLM, no matplotlib (the [plot] extra).
# Installed size: tests/deploy/test_gateway_image.py.
COPY gateway-requirements.txt pyproject.toml ./
COPY src ./src
RUN pip install --no-cache-dir --prefix=/install --no-deps -r gateway-requirements.txt .

FROM ${PYTHON_IMAGE}
# A fixed uid and gid, 10001 (above the ids hosts give their users): the gateway reads the
# host's keys.yaml (mode 0640) through the group compose adds to it (group_add:
# VKIT_KEYS_GID), never by owning it. Documented in deploy/README.md.
# /var/lib/vkit-gateway: the usage ledger's folder (a named volume in compose, which takes
# this folder's owner and mode at its first mount), the gateway user's only.
RUN groupadd --system --gid 10001 vkit && useradd --system --uid 10001 --gid vkit \
        --home-dir /nonexistent --shell /usr/sbin/nologin vkit \
    && install -d -o vkit -g vkit -m 0700 /var/lib/vkit-gateway
COPY --from=build /install /usr/local
USER 10001:10001
EXPOSE 8080
# Settings come from VKIT_GATEWAY_* variables (compose.yaml sets them).
CMD ["vkit", "gateway"]
