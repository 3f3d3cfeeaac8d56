# `make serve` starts the daemon, `make test` runs every test; both create
# (or reuse) the virtual environment in .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml client/pyproject.toml | cksum | cut -d" " -f1)
ARGS ?=

.PHONY: serve test protos bench example clean

$(STAMP): pyproject.toml client/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ./client -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

serve: $(STAMP)
	$(BIN)/memserved --host 127.0.0.1 --port 50051 --device cpu $(ARGS)

test: $(STAMP)
	tools/ensure_prometheus.sh
	tools/ensure_perf_analyzer.sh >/dev/null || echo "perf_analyzer could not be installed: tests/test_perf_analyzer.py will be skipped" >&2
	$(BIN)/python -m memserve.kernels
	$(BIN)/python -m pytest $(ARGS)

protos: $(STAMP)
	$(BIN)/python tools/gen_protos.py

example: $(STAMP)
	$(BIN)/python examples/make_mlp.py

bench: $(STAMP)
	$(BIN)/python bench/execute_latency.py
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/conv_kernels.py
	$(BIN)/python bench/front.py
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/compile_time.py
	$(BIN)/python bench/busy.py
	$(BIN)/python bench/overload.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
