import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SAMPLES = os.path.join(REPO, "samples", "qwen3moe-L6-E32-k4")
MODEL = dict(num_layers=6, num_experts=32, top_k=4, name="qwen3moe-L6-E32-k4")
ENGINE = dict(name="pytest", version="0", role="rollout")


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
