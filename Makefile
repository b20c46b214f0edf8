# rtrace: `make demo` runs the main job on the bundled samples, `make test` runs every test.
SHELL    := /bin/bash
SWIFT    ?= swift
# The interpreter that creates the project's virtual environment; everything Python then runs from it.
PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
REQS     := python/requirements-dev.txt python/constraints.txt
# Where torch's CPU build comes from when that index answers (else pip takes the default wheel, or the
# CPU wheel a local find-links folder holds). `make deps TORCH_INDEX=` goes to the package index only.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
BIN      := .build/debug/rtrace
RELEASE  := .build/release/rtrace
SAMPLES  := samples/qwen3moe-L6-E32-k4

.PHONY: all deps build-deps system-deps python-deps engine-wheels distclean build release test test-aarch64 demo bench experiment experiment-torch clean fuzz fuzz-build fuzz-seeds fuzz-regressions fuzz-python fuzz-python-build fuzz-python-regressions

all: build

# Everything a fresh machine needs: system packages (apt) and the Python packages, which go into the
# project's own virtual environment .venv (created with `python3 -m venv`, no system site-packages) from
# the pinned python/requirements-dev.txt + python/constraints.txt, and the engine wheels some tests read
# without installing them (engine-wheels). Run again, it only checks.
deps: build-deps system-deps python-deps engine-wheels

# What the Swift build needs: the zlib and libdeflate headers.
build-deps:
	@if [ ! -f /usr/include/zlib.h ] || [ ! -f /usr/include/libdeflate.h ]; then \
	  (apt-get update -qq && apt-get install -y -qq zlib1g-dev libdeflate-dev) || \
	  { echo "install zlib1g-dev and libdeflate-dev (zlib and libdeflate headers)"; exit 1; }; fi

# What the tests need beside it: a C compiler and Python's headers (rtrace._native), Chromium.
system-deps:
	@command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || \
	  (apt-get update -qq && apt-get install -y -qq gcc) || \
	  { echo "install gcc (a C compiler builds the Python package's accelerator rtrace._native)"; exit 1; }
	@$(PYTHON) -c "import os, sysconfig; os.stat(os.path.join(sysconfig.get_paths()['include'], 'Python.h'))" 2>/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq python3-dev) || \
	  { echo "install python3-dev (Python.h, needed to build rtrace._native)"; exit 1; }
	@command -v chromium >/dev/null 2>&1 || [ -n "$$RTRACE_CHROMIUM" ] || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  { echo "install chromium (rtrace report's browser test renders the report in it), or set RTRACE_CHROMIUM"; exit 1; }

python-deps: $(VENV)/.deps-installed

# Engine packages whose own code the tests run but that are far too heavy to install (verl pulls in vllm,
# ray, flash-attn, ...): their wheels are downloaded (pip download --no-deps, only when missing, checked
# against the sha256 below) into $(VENV)/engine-wheels/, and the tests take the functions they need out of
# the wheel (python/tests/test_verl_policy.py: verl's rollout-correction metrics).
ENGINE_WHEELS := $(VENV)/engine-wheels
VERL_WHEEL    := $(ENGINE_WHEELS)/verl-0.9.1-py3-none-any.whl
VERL_SHA256   := db6e6f2a8d9d5808d9ec32d357a42319fdc6967df688ff9d9810050f49bfdd14
engine-wheels: $(VERL_WHEEL)

$(VERL_WHEEL): | $(VENV)/.deps-installed
	@mkdir -p $(ENGINE_WHEELS)
	$(PY) -m pip download -q --disable-pip-version-check --no-deps verl==0.9.1 -d $(ENGINE_WHEELS)
	@echo "$(VERL_SHA256)  $@" | sha256sum -c --quiet || { rm -f $@; echo "$@: unexpected sha256"; exit 1; }

# Re-runs only when the pinned lists change (or .venv is removed).
$(VENV)/.deps-installed: $(REQS)
	@if [ ! -x $(PY) ]; then \
	  rm -rf $(VENV); \
	  $(PYTHON) -m venv $(VENV) 2>/dev/null || { rm -rf $(VENV); \
	    (apt-get update -qq && apt-get install -y -qq python3-venv) && $(PYTHON) -m venv $(VENV); } || \
	  { echo "cannot create a virtual environment with $(PYTHON) -m venv (Debian: apt-get install python3-venv)"; exit 1; }; fi
	@extra=""; if [ -n "$(TORCH_INDEX)" ] && curl -fsS -m 10 -o /dev/null "$(TORCH_INDEX)/torch/" 2>/dev/null; then \
	  extra="--extra-index-url $(TORCH_INDEX)"; echo "torch: the CPU build from $(TORCH_INDEX)"; \
	  else echo "torch: $(TORCH_INDEX) does not answer; the package index's wheel (or a local CPU wheel pip's find-links holds)"; fi; \
	  echo "installing the Python packages into $(VENV) (the first time: ~1.5 GB installed, a few minutes)"; \
	  $(PY) -m pip install -q --disable-pip-version-check $$extra -r python/requirements-dev.txt -c python/constraints.txt
	@touch $@
build: build-deps
	$(SWIFT) build --product rtrace

release: build-deps
	$(SWIFT) build -c release --product rtrace

# RTRACE_NO_SKIP=1: a test that would skip (a missing browser, binary or Python package) fails instead,
# and the Swift run fails if Swift Testing reports any test skipped.
test: deps
	$(SWIFT) build --build-tests
	set -o pipefail; RTRACE_NO_SKIP=1 $(SWIFT) test --skip-build --disable-xctest 2>&1 | tee .build/swift-test.log
	@if grep -E "Test .* skipped|[1-9][0-9]* tests? skipped" .build/swift-test.log; then \
	  echo "Swift tests were skipped (above); nothing may skip in make test"; exit 1; fi
	cd python && ../$(PY) setup.py -q build_ext --inplace
	RTRACE_BIN=$(BIN) RTRACE_REQUIRE_NATIVE=1 RTRACE_NO_SKIP=1 RTRACE_VENV=$(VENV) PYTHONPATH=python $(PY) -m pytest -q -rs python/tests

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
	$(PY) bench/format_bench.py --rtrace $(RELEASE)
	$(PY) bench/diff_stats/bench.py --rtrace $(RELEASE)
	$(PY) bench/diff_stats/join_bench.py --rtrace $(RELEASE)
	$(PY) bench/idcoding/idcoding.py --rtrace $(RELEASE)
	$(PY) bench/npz/bench.py --rtrace $(RELEASE)
	cd python && ../$(PY) setup.py -q build_ext --inplace
	RTRACE_BIN=$(RELEASE) PYTHONPATH=python $(PY) python/bench_python.py
	RTRACE_BIN=$(RELEASE) PYTHONPATH=python $(PY) bench/ray/bench.py --rtrace $(RELEASE)
	$(PY) bench/import/bench.py --rtrace $(RELEASE)

experiment: deps
	@if [ -f bench/replay/experiment.sh ]; then PYTHON=$(PY) bash bench/replay/experiment.sh; else echo "replay-train is not built yet"; exit 1; fi

# Routing replay where people train: GRPO on a small transformers Qwen3MoeForCausalLM (bf16 KV-cached rollout
# recorded to .rtrace, fp32 training replaying it with rtrace.torch.replay_routing), none / r2 / r3 x 3 seeds,
# replay overhead, curves -> bench/replay-torch.md (~17 min on this shared 2-core machine; STEPS, SEEDS, JOBS, OREPS).
experiment-torch: deps build
	PYTHON=$(PY) RTRACE_BIN=$(BIN) bash bench/replay_torch/experiment.sh

# Fuzzing (issue 6): libFuzzer over the reader and `check`, in the nested package fuzz/ so the main
# build never needs the fuzzer flags. `make fuzz FUZZ_SECONDS=1800` fuzzes for that long from a corpus
# seeded with fuzz/seeds/, fuzz/regressions/ and samples/; crashes go to fuzz/artifacts/. Copy each new
# crash into fuzz/regressions/ (FaultTests replays them). FUZZ_CONFIG=debug adds Swift's debug checks.
FUZZ_SECONDS ?= 60
FUZZ_CONFIG  ?= release
FUZZ_BIN     := fuzz/.build/$(FUZZ_CONFIG)/FuzzReader
FUZZ_ENV     := SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=malloc_context_size=0:quarantine_size_mb=16:max_malloc_fill_size=0

fuzz-build: build-deps
	$(SWIFT) build --package-path fuzz -c $(FUZZ_CONFIG) --sanitize=fuzzer -Xswiftc -sanitize=fuzzer,address --product FuzzReader

fuzz-seeds: fuzz-build
	RTRACE_FUZZ_SEEDS=fuzz/seeds $(FUZZ_ENV) $(FUZZ_BIN)

fuzz: fuzz-build
	mkdir -p fuzz/corpus fuzz/artifacts
	cp fuzz/seeds/*.rtrace fuzz/regressions/* samples/*.rtrace fuzz/corpus/
	for f in samples/*/*.rtrace; do head -c 8192 $$f > fuzz/corpus/head8k-$$(basename $$(dirname $$f))-$$(basename $$f); done
	cd fuzz && $(FUZZ_ENV) ./.build/$(FUZZ_CONFIG)/FuzzReader corpus -dict=rtrace.dict -max_len=8192 \
	  -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 -timeout=20 -print_final_stats=1 -artifact_prefix=artifacts/

# Fuzzing the Python package's C decoder python/rtrace/_native.c (issue 16): libFuzzer + ASan, with the module
# compiled into a binary that embeds the Python of .venv (fuzz/python-native/fuzz_native.c). Two targets: the
# module's functions on arguments made from the input, checked against a reference decoder (the first quarter
# of FUZZ_SECONDS), then rtrace.Reader over traces, the C decoder against numpy (the rest). Corpora in
# fuzz/corpus-python/, crashes in fuzz/artifacts-python/; copy each into fuzz/regressions-python/ (replayed by
# python/tests/test_fuzz_regressions.py and make fuzz-python-regressions). Needs clang with libFuzzer (the Swift
# toolchain's) and Python's headers and shared library.
FUZZ_CC      ?= clang
FUZZ_PY_BIN  := .build/fuzz-python/fuzz_native
FUZZ_PY_ENV  := RTRACE_FUZZ_DIR=$(CURDIR) ASAN_OPTIONS=detect_leaks=0:malloc_context_size=0:quarantine_size_mb=16:max_malloc_fill_size=0
FUZZ_PY_ARGS := -detect_leaks=0 -rss_limit_mb=4096 -timeout=20 -print_final_stats=1 -artifact_prefix=../artifacts-python/

fuzz-python-build: python-deps
	mkdir -p .build/fuzz-python
	inc=$$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['include'])"); \
	lib=$$($(PY) -c "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"); \
	ver=$$($(PY) -c "import sys; print('%d.%d' % sys.version_info[:2])"); \
	$(FUZZ_CC) -g -O1 -fuse-ld=lld -fsanitize=fuzzer,address -I$$inc fuzz/python-native/fuzz_native.c \
	  -L$$lib -lpython$$ver -Wl,-rpath,$$lib -o $(FUZZ_PY_BIN)

fuzz-python: fuzz-python-build
	mkdir -p fuzz/corpus-python/reader fuzz/corpus-python/api fuzz/artifacts-python
	cp fuzz/seeds/*.rtrace fuzz/regressions/* samples/*.rtrace fuzz/corpus-python/reader/
	cp fuzz/regressions-python/reader/* fuzz/corpus-python/reader/ 2>/dev/null || true
	cp fuzz/regressions-python/api/* fuzz/corpus-python/api/ 2>/dev/null || true
	for f in samples/*/*.rtrace; do head -c 8192 $$f > fuzz/corpus-python/reader/head8k-$$(basename $$(dirname $$f))-$$(basename $$f); done
	cd fuzz/corpus-python && RTRACE_FUZZ_TARGET=api $(FUZZ_PY_ENV) ../../$(FUZZ_PY_BIN) api -max_len=4096 \
	  -max_total_time=$$(( ($(FUZZ_SECONDS) + 3) / 4 )) $(FUZZ_PY_ARGS)
	cd fuzz/corpus-python && RTRACE_FUZZ_TARGET=reader $(FUZZ_PY_ENV) ../../$(FUZZ_PY_BIN) reader -dict=../rtrace.dict \
	  -max_len=8192 -max_total_time=$$(( $(FUZZ_SECONDS) - ($(FUZZ_SECONDS) + 3) / 4 )) $(FUZZ_PY_ARGS)

# Replays every kept crash of fuzz/regressions-python/ through the ASan build (the pytest replay runs the reader
# ones without ASan).
fuzz-python-regressions: fuzz-python-build
	@for t in api reader; do if ls fuzz/regressions-python/$$t/* >/dev/null 2>&1; then \
	  RTRACE_FUZZ_TARGET=$$t $(FUZZ_PY_ENV) $(FUZZ_PY_BIN) fuzz/regressions-python/$$t/* || exit 1; fi; done

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

# Also removes the virtual environment (make deps makes it again).
distclean: clean
	rm -rf $(VENV)
