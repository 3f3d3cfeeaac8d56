# `make serve` starts the daemon, `make test` runs every test; both create
# (or reuse) the virtual environment in .venv first. `serve` installs what the
# daemon needs (the runtime dependencies); `test` adds the dev extra (torch,
# onnxruntime, tritonclient, ... to test against).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HASH := $(shell cat pyproject.toml client/pyproject.toml | cksum | cut -d" " -f1)
RUNTIME := $(VENV)/.runtime-$(HASH)
DEV := $(VENV)/.dev-$(HASH)
ARGS ?=

.PHONY: serve test protos bench example clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# A dev install is a runtime install too.
$(RUNTIME): pyproject.toml client/pyproject.toml | $(VENV)/bin/python
	test -e $(DEV) || $(BIN)/python -m pip install --quiet -e ./client -e .
	touch $@

$(DEV): pyproject.toml client/pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e ./client -e '.[dev]'
	rm -f $(VENV)/.runtime-* $(VENV)/.dev-* && touch $@ $(RUNTIME)

serve: $(RUNTIME)
	$(BIN)/memserved --host 127.0.0.1 --port 50051 --device cpu $(ARGS)

test: $(DEV)
	tools/ensure_prometheus.sh
	tools/ensure_perf_analyzer.sh >/dev/null || echo "perf_analyzer could not be installed: tests/test_perf_analyzer.py will be skipped" >&2
	$(BIN)/python -m memserve.kernels
	$(BIN)/python -m pytest $(ARGS)

protos: $(DEV)
	$(BIN)/python tools/gen_protos.py

example: $(RUNTIME)
	$(BIN)/python examples/make_mlp.py

bench: $(DEV)
	$(BIN)/python bench/execute_latency.py
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/conv_kernels.py
	$(BIN)/python bench/control_flow.py
	$(BIN)/python bench/front.py
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/compile_time.py
	$(BIN)/python bench/busy.py
	$(BIN)/python bench/overload.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
