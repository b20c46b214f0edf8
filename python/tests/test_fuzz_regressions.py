"""Replays the inputs the fuzzers kept (fuzz/regressions-python/reader/ from the Python package's fuzz
target, fuzz/regressions/ from the Swift reader's) and the fuzz seeds through every read path of
fuzz/python-native/exercise.py: each as given and checksum-fixed, as a file and as a pipe, the C decoder
against the numpy one. A crash, an exception other than FormatError or the two decoders disagreeing
fails (`make fuzz-python-regressions` replays the same files under AddressSanitizer)."""
import glob
import os
import sys

import pytest

from conftest import REPO, native_module

sys.path.insert(0, os.path.join(REPO, "fuzz", "python-native"))

INPUTS = sorted(glob.glob(os.path.join(REPO, "fuzz", "regressions-python", "reader", "*"))
                + glob.glob(os.path.join(REPO, "fuzz", "regressions", "*"))
                + glob.glob(os.path.join(REPO, "fuzz", "seeds", "*.rtrace")))
INPUTS = [p for p in INPUTS if not p.endswith(".md")]


def test_there_are_inputs():
    assert len(INPUTS) >= 10, INPUTS


@pytest.mark.parametrize("path", INPUTS, ids=lambda p: os.path.relpath(p, REPO))
def test_replay(path):
    native_module()   # the comparison needs the accelerator (make test builds it)
    import exercise
    exercise.check_native()
    exercise.exercise(open(path, "rb").read(), every_path=True)
