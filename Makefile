# Two entry points: `make demo` (the main job) and `make test`. Both create .venv on first use.
# `make test` (what CI runs) first makes the real-client tests' system dependencies ready (test-deps:
# Debian's chromium, a llama.cpp build in the cache); `make test-quick` is the developers' short loop
# without the slow, browser and multi-process tests.
#
# CPU machines get the CPU build of PyTorch (TORCH_SPEC below), never the multi-GB CUDA wheels.
# GPU users: install your CUDA build into .venv first (or pass TORCH_SPEC), e.g.
#   make venv TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128"
# A torch that is already installed in .venv is kept as it is (pinned while the rest installs).

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.instructglm-installed
# The llama.cpp that tests/export/test_llama_cpp.py runs GGUF files in: the one this llama-cpp-python
# release vendors (it reads the llama, qwen2, gemma3 and chatglm files our exporter writes), built once.
LLAMA_CPP_PYTHON ?= 0.3.36
LLAMA_CPP_DIR ?= $(or $(INSTRUCTGLM_CACHE),$(HOME)/.cache/instructglm)/llama.cpp/$(LLAMA_CPP_PYTHON)

.PHONY: demo test test-deps test-quick venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	@# Pin the torch that is now installed, so resolving our dependencies never swaps it.
	@$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/constraints.txt
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/instructglm demo

test-deps: $(STAMP)
	@PYTHON=$(PY) bash scripts/test_deps.sh $(LLAMA_CPP_PYTHON) "$(LLAMA_CPP_DIR)"

test: test-deps
	HF_HUB_OFFLINE=1 LLAMA_PROBE="$(LLAMA_CPP_DIR)/bin/llama-probe" $(PY) -m pytest -q

test-quick: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow and not browser and not multiprocess"

clean:
	rm -rf runs .pytest_cache
