# rtrace: `make demo` runs the main job on the bundled samples, `make test` runs every test.
SWIFT    ?= swift
PYTHON   ?= python3
BIN      := .build/debug/rtrace
RELEASE  := .build/release/rtrace
SAMPLES  := samples/qwen3moe-L6-E32-k4

.PHONY: all deps build release test test-aarch64 demo bench experiment clean fuzz fuzz-build fuzz-seeds fuzz-regressions

all: build

# System packages the build needs (zlib headers) and the Python test/bench dependencies.
deps:
	@if [ ! -f /usr/include/zlib.h ] || [ ! -f /usr/include/libdeflate.h ]; then \
	  (apt-get update -qq && apt-get install -y -qq zlib1g-dev libdeflate-dev) || \
	  { echo "install zlib1g-dev and libdeflate-dev (zlib and libdeflate headers)"; exit 1; }; fi
	@$(PYTHON) -c "import numpy, pytest, setuptools" 2>/dev/null || $(PYTHON) -m pip install -q numpy pytest setuptools || \
	  (apt-get update -qq && apt-get install -y -qq python3-numpy python3-pytest python3-setuptools) || \
	  { echo "install numpy, pytest and setuptools for $(PYTHON)"; exit 1; }
	@command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || \
	  (apt-get update -qq && apt-get install -y -qq gcc) || \
	  { echo "install gcc (a C compiler builds the Python package's accelerator rtrace._native)"; exit 1; }
	@$(PYTHON) -c "import os, sysconfig; os.stat(os.path.join(sysconfig.get_paths()['include'], 'Python.h'))" 2>/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq python3-dev) || \
	  { echo "install python3-dev (Python.h, needed to build rtrace._native)"; exit 1; }
	@command -v chromium >/dev/null 2>&1 || [ -n "$$RTRACE_CHROMIUM" ] || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "warning: could not install chromium (rtrace report's browser test needs it: apt-get install chromium)"

build: deps
	$(SWIFT) build --product rtrace

release: deps
	$(SWIFT) build -c release --product rtrace

test: deps
	$(SWIFT) build --build-tests
	RTRACE_REQUIRE_BROWSER=1 $(SWIFT) test --skip-build --disable-xctest
	cd python && $(PYTHON) setup.py -q build_ext --inplace
	RTRACE_BIN=$(BIN) RTRACE_REQUIRE_NATIVE=1 PYTHONPATH=python $(PYTHON) -m pytest -q python/tests

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
	@echo "== the same as pictures: open /tmp/rtrace-demo-report.html in a browser =="
	$(BIN) report /tmp/rtrace-demo-rollout.rtrace /tmp/rtrace-demo-train.rtrace -o /tmp/rtrace-demo-report.html

bench: deps release
	$(PYTHON) bench/format_bench.py --rtrace $(RELEASE)
	$(PYTHON) bench/diff_stats/bench.py --rtrace $(RELEASE)
	RTRACE_BIN=$(RELEASE) PYTHONPATH=python $(PYTHON) python/bench_python.py

experiment: deps
	@if [ -f bench/replay/experiment.sh ]; then bash bench/replay/experiment.sh; else echo "replay-train is not built yet"; exit 1; fi

# Fuzzing (issue 6): libFuzzer over the reader and `check`, in the nested package fuzz/ so the main
# build never needs the fuzzer flags. `make fuzz FUZZ_SECONDS=1800` fuzzes for that long from a corpus
# seeded with fuzz/seeds/, fuzz/regressions/ and samples/; crashes go to fuzz/artifacts/. Copy each new
# crash into fuzz/regressions/ (FaultTests replays them). FUZZ_CONFIG=debug adds Swift's debug checks.
FUZZ_SECONDS ?= 60
FUZZ_CONFIG  ?= release
FUZZ_BIN     := fuzz/.build/$(FUZZ_CONFIG)/FuzzReader
FUZZ_ENV     := SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=malloc_context_size=0:quarantine_size_mb=16:max_malloc_fill_size=0

fuzz-build: deps
	$(SWIFT) build --package-path fuzz -c $(FUZZ_CONFIG) --sanitize=fuzzer -Xswiftc -sanitize=fuzzer,address --product FuzzReader

fuzz-seeds: fuzz-build
	RTRACE_FUZZ_SEEDS=fuzz/seeds $(FUZZ_ENV) $(FUZZ_BIN)

fuzz: fuzz-build
	mkdir -p fuzz/corpus fuzz/artifacts
	cp fuzz/seeds/*.rtrace fuzz/regressions/* samples/*.rtrace fuzz/corpus/
	for f in samples/*/*.rtrace; do head -c 8192 $$f > fuzz/corpus/head8k-$$(basename $$(dirname $$f))-$$(basename $$f); done
	cd fuzz && $(FUZZ_ENV) ./.build/$(FUZZ_CONFIG)/FuzzReader corpus -dict=rtrace.dict -max_len=8192 \
	  -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 -timeout=20 -print_final_stats=1 -artifact_prefix=artifacts/

# Replays every kept crash through the fuzz target (the Swift test FaultTests/fuzzRegressions does the same).
# The NEON path of the C id kernel, on this x86 machine: cross-compiled for aarch64, run under qemu
# (not part of `make test`: it installs a cross compiler and qemu).
test-aarch64:
	@command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64-static >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq gcc-aarch64-linux-gnu qemu-user-static >/dev/null)
	mkdir -p .build/simd-cross
	aarch64-linux-gnu-gcc -O2 -static -ISources/CRTraceSIMD/include Tests/SIMDCross/kernel_vs_spec.c \
	  Sources/CRTraceSIMD/rtrace_simd.c -o .build/simd-cross/kernel_vs_spec-aarch64
	qemu-aarch64-static .build/simd-cross/kernel_vs_spec-aarch64

fuzz-regressions: fuzz-build
	$(FUZZ_ENV) $(FUZZ_BIN) fuzz/regressions/*

clean:
	rm -rf .build fuzz/.build
