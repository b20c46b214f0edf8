# rtrace: `make demo` runs the main job on the bundled samples, `make test` runs every test.
SWIFT    ?= swift
PYTHON   ?= python3
BIN      := .build/debug/rtrace
RELEASE  := .build/release/rtrace
SAMPLES  := samples/qwen3moe-L6-E32-k4

.PHONY: all deps build release test demo bench experiment clean

all: build

# System packages the build needs (zlib headers) and the Python test/bench dependencies.
deps:
	@if [ ! -f /usr/include/zlib.h ]; then \
	  (apt-get update -qq && apt-get install -y -qq zlib1g-dev) || { echo "install zlib1g-dev (zlib headers)"; exit 1; }; fi
	@$(PYTHON) -c "import numpy, pytest" 2>/dev/null || $(PYTHON) -m pip install -q numpy pytest

build: deps
	$(SWIFT) build --product rtrace

release: deps
	$(SWIFT) build -c release --product rtrace

test: deps
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build --disable-xctest
	RTRACE_BIN=$(BIN) PYTHONPATH=python $(PYTHON) -m pytest -q python/tests

demo: build
	@echo "== import the real Qwen3-MoE rollout and training routing (npz, as SGLang returns it) =="
	$(BIN) import --from npz $(SAMPLES)/rollout.npz -o /tmp/rtrace-demo-rollout.rtrace --engine transformers --role rollout --model qwen3moe-L6-E32-k4
	$(BIN) import --from npz $(SAMPLES)/train_mixed.npz -o /tmp/rtrace-demo-train.rtrace --engine transformers --role train --model qwen3moe-L6-E32-k4
	$(BIN) info /tmp/rtrace-demo-rollout.rtrace
	$(BIN) check /tmp/rtrace-demo-train.rtrace
	@echo "== sequence 3, decoder layer 2, first rows =="
	$(BIN) view /tmp/rtrace-demo-rollout.rtrace --uid 3 --layer 2 --format tsv | head -6
	@if $(BIN) help diff >/dev/null 2>&1; then \
	  echo "== rollout vs training routing =="; $(BIN) diff /tmp/rtrace-demo-rollout.rtrace /tmp/rtrace-demo-train.rtrace --top 3; \
	  echo "== expert load of the rollout =="; $(BIN) stats /tmp/rtrace-demo-rollout.rtrace; fi

bench: deps release
	$(PYTHON) bench/format_bench.py --rtrace $(RELEASE)
	@if [ -f bench/diff_stats/run.sh ]; then bash bench/diff_stats/run.sh; fi
	@if [ -f python/bench_python.py ]; then PYTHONPATH=python $(PYTHON) python/bench_python.py; fi

experiment: deps
	@if [ -f bench/replay/experiment.sh ]; then bash bench/replay/experiment.sh; else echo "replay-train is not built yet"; exit 1; fi

clean:
	rm -rf .build
