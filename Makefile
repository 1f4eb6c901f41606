# Two entry points (README): `make demo` and `make test`. Both work on a fresh
# machine with only python3: they create .venv, install the package and run.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
DS_STAMP := $(VENV)/.installed-deepspeed
STAMP := $(VENV)/.installed
LINT_STAMP := $(VENV)/.installed-lint
DEMO_OUT ?= runs/demo
PYTEST_ARGS ?=

.PHONY: demo test test-slow lint install bench clean

$(STAMP): pyproject.toml
	$(BIN)/python -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV); $(PY) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned, so nothing later resolves a newer (multi-GB CUDA) build. On the
	# CI/dev machines pip finds the CPU wheel of torch 2.13.0 locally; elsewhere set
	# TORCH_INDEX=https://download.pytorch.org/whl/cpu for the CPU build, or bring your own torch.
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m eval.demo --out $(DEMO_OUT)

test: $(STAMP)
	WANDB_MODE=offline $(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# ruff (lint + format check) and mypy, configured in pyproject.toml
$(LINT_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[test,lint]"
	touch $(LINT_STAMP)

lint: $(LINT_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# multi-process runs (DDP over gloo, DeepSpeed ZeRO-2/3 on the CPU accelerator)
$(DS_STAMP): $(STAMP)
	DS_BUILD_OPS=0 $(BIN)/python -m pip install -q -e ".[test,deepspeed]"
	touch $(DS_STAMP)

test-slow: $(DS_STAMP)
	WANDB_MODE=offline $(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

# every benchmark, each printing its ratios measured side by side (about 10 min on 2 cores)
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_sft.py --threads 1
	$(BIN)/python benchmarks/bench_runner.py --repeats 5
	$(BIN)/python benchmarks/bench_joins.py
	$(BIN)/python benchmarks/bench_constrained.py --random --temperature 1.5
	$(BIN)/python benchmarks/bench_serve.py

clean:
	rm -rf $(VENV) runs *.egg-info
