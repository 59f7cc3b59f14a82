# mmi — every target documented with `## text`; `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
# uv: on PATH, in ~/.local/bin, or the pip-installed module; looked up when a recipe runs (after `install` may have
# pip-installed it), not when make parses this file.
UV ?= $$(command -v uv 2>/dev/null || { [ -x "$(HOME)/.local/bin/uv" ] && echo "$(HOME)/.local/bin/uv"; } || echo "python3 -m uv")
VENV := .venv
STAMP := $(VENV)/.mmi-synced
PY := $(VENV)/bin/python
# GPU machine: system python3 with torch/triton/transformers preinstalled, no uv, no internet.
GPU_PY ?= python3
GPU_PATH := packages/mmi-core/src:packages/mmi-kernels/src:packages/mmi-models/src:packages/mmi-sglang/src:tools

.PHONY: help install test test-fast lint build bench bench-gpu test-gpu clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml uv.lock packages/*/pyproject.toml
	@command -v uv >/dev/null 2>&1 || [ -x "$(HOME)/.local/bin/uv" ] || python3 -m uv --version >/dev/null 2>&1 \
		|| python3 -m pip install -q --user uv || python3 -m pip install -q --user --break-system-packages uv
	$(UV) sync --frozen --all-packages
	@touch $(STAMP)

install: $(STAMP) ## set up the environment (installs uv if missing, then uv sync from uv.lock)

test: $(STAMP) ## run the test suite on CPU (Triton kernels under TRITON_INTERPRET=1)
	TRITON_INTERPRET=1 $(PY) -m pytest -q -n auto --dist loadfile

test-fast: $(STAMP) ## tests without the slow marker
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m "not slow" -n auto --dist loadfile

lint: $(STAMP) ## ruff check and format check
	$(VENV)/bin/ruff check packages tests tools
	$(VENV)/bin/ruff format --check packages tests tools

build: $(STAMP) ## build the four wheels into dist/
	$(UV) build --all-packages -o dist

bench: $(STAMP) ## benchmark: the embedded CPU default here, the GPU suite where CUDA is present (BENCHMARKS.md)
	PYTHONUNBUFFERED=1 $(PY) tools/bench.py $(BENCH_ARGS)

bench-gpu: ## GPU suite with the system python3 (GPU machine: no uv, no internet)
	PYTHONUNBUFFERED=1 PYTHONPATH=$(GPU_PATH):$$PYTHONPATH $(GPU_PY) tools/bench.py $(BENCH_ARGS)

test-gpu: ## test suite with the system python3 on the GPU machine (gpu-marked tests run there)
	PYTHONPATH=$(GPU_PATH):$$PYTHONPATH $(GPU_PY) -m pytest -q -p no:cacheprovider -m "not sglang"

clean: ## remove the environment and build outputs
	rm -rf $(VENV) dist .pytest_cache .ruff_cache
