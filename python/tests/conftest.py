import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SAMPLES = os.path.join(REPO, "samples", "qwen3moe-L6-E32-k4")
MODEL = dict(num_layers=6, num_experts=32, top_k=4, name="qwen3moe-L6-E32-k4")
ENGINE = dict(name="pytest", version="0", role="rollout")

# RTRACE_REQUIRE_NATIVE=1 (make test) turns "the accelerator rtrace._native is not built" from a skip into
# a failure, so that a broken build of python/rtrace/_native.c cannot pass unnoticed.
REQUIRE_NATIVE = os.environ.get("RTRACE_REQUIRE_NATIVE") == "1"

# RTRACE_NO_SKIP=1 (make test, hence CI) turns every skip into a failure: a test that skips because a
# dependency is missing tests nothing. The one exception is a skip whose reason starts with PLATFORM_SKIP,
# for what a machine cannot do at all (an x86 instruction set on an Arm CPU); README.md lists each.
NO_SKIP = os.environ.get("RTRACE_NO_SKIP") == "1"
PLATFORM_SKIP = "platform: "


def _skip_reason(report):
    lr = report.longrepr
    return lr[2] if isinstance(lr, tuple) and len(lr) == 3 else str(lr)


def _allowed_skip(reason):
    return reason.removeprefix("Skipped: ").startswith(PLATFORM_SKIP)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under RTRACE_NO_SKIP=1, a test that skipped is reported as failed, with the skip's reason."""
    outcome = yield
    rep = outcome.get_result()
    if NO_SKIP and rep.skipped and not hasattr(rep, "wasxfail") and not _allowed_skip(_skip_reason(rep)):
        rep.outcome = "failed"
        rep.longrepr = f"skipped, but make test sets RTRACE_NO_SKIP=1 (nothing is skipped in CI): {_skip_reason(rep)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """Under RTRACE_NO_SKIP=1, a module skipped while collected (a module-level importorskip) fails too."""
    outcome = yield
    rep = outcome.get_result()
    if NO_SKIP and rep.skipped and not _allowed_skip(_skip_reason(rep)):
        rep.outcome = "failed"
        rep.longrepr = (f"{rep.nodeid} skipped while collected, but make test sets RTRACE_NO_SKIP=1: "
                        f"{_skip_reason(rep)}")


def require_module(name, why):
    """Imports a test dependency: skips without it, or fails under RTRACE_NO_SKIP=1 (make test installs every
    test dependency into .venv with make deps)."""
    try:
        return __import__(name)
    except ImportError as e:
        msg = f"{name} cannot be imported ({e}): {why}; make deps installs it into .venv"
        if NO_SKIP:
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


def native_module():
    """rtrace._native, built in place (python/setup.py build_ext --inplace); skips (or fails with
    RTRACE_REQUIRE_NATIVE=1) when it is not built."""
    try:
        from rtrace import _native
    except ImportError as e:
        if REQUIRE_NATIVE:
            pytest.fail(f"rtrace._native is not built ({e}) but RTRACE_REQUIRE_NATIVE=1")
        pytest.skip(f"rtrace._native is not built ({e}): cd python && python3 setup.py build_ext --inplace")
    return _native


@pytest.fixture(params=["native", "numpy"])
def decoder(request, monkeypatch):
    """Runs a reader test once per decoder: the compiled accelerator (skipped when the reader runs
    without it: not built, or RTRACE_PURE_PYTHON=1) and the numpy code."""
    import rtrace.reader as reader
    if request.param == "native":
        if reader._native is None:
            if os.environ.get("RTRACE_PURE_PYTHON") == "1":
                pytest.skip("RTRACE_PURE_PYTHON=1: the reader runs on numpy only")
            native_module()
    else:
        monkeypatch.setattr(reader, "_native", None)
    return request.param


@pytest.fixture
def sample():
    p = os.path.join(SAMPLES, "rollout.npz")
    if not os.path.exists(p):
        pytest.skip(f"golden sample {p} not present")
    return dict(np.load(p))


def synth_ids(rng, rows, L, E, k, overlap=0.5):
    """Synthetic routing where neighbouring rows share about `overlap` of their experts."""
    ids = np.empty((rows, L, k), dtype=np.int32)
    for l in range(L):
        prev = rng.choice(E, k, replace=False)
        for r in range(rows):
            keep = prev[rng.random(k) < overlap]
            rest = np.setdiff1d(np.arange(E), keep)
            new = rng.choice(rest, k - len(keep), replace=False)
            row = np.concatenate([keep, new])
            rng.shuffle(row)
            ids[r, l] = row
            prev = row
    return ids
