# Two entry points (README): `make demo` and `make test`. Both work on a fresh
# machine with only python3: they create .venv, install the package and run.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/demo
PYTEST_ARGS ?=

.PHONY: demo test test-slow install bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch first (a bare torch requirement could pull a multi-GB CUDA build)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m eval.demo --out $(DEMO_OUT)

test: $(STAMP)
	WANDB_MODE=offline $(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# multi-process runs (DDP over gloo, DeepSpeed ZeRO-2/3 on the CPU accelerator)
test-slow: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[test,deepspeed]"
	WANDB_MODE=offline $(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_sft.py

clean:
	rm -rf $(VENV) runs *.egg-info
