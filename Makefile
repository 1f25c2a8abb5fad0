# Two entry points: `make demo` (the main job) and `make test`. Both create .venv on first use.
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

.PHONY: demo test venv clean

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

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

clean:
	rm -rf runs .pytest_cache
