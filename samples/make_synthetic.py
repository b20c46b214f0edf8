#!/usr/bin/env python3
"""Writes samples/synthetic-E300-dense.npz: the expected content of synthetic-E300-dense.rtrace.

A small trace that exercises what the real sample does not: 300 experts (u16 ids), a layer axis of
all 8 decoder layers of which 2 are dense (-1) and 6 MoE, missing (prefix-cached) rows, bf16
weights (uint16 bit patterns), ragged rows and tokens, a continuation with start > 0, uids, groups
and rewards. Deterministic (seed 7)."""
import numpy as np

rng = np.random.default_rng(7)
S, R, L, K, E, T = 5, 40, 8, 3, 300, 44
moe = list(range(2, 8))
ids = np.full((S, R, L, K), -1, np.int32)
w = np.zeros((S, R, L, K), np.uint16)
n_rows = np.array([40, 17, 0, 33, 25], np.int32)
start = np.array([0, 0, 0, 6, 0], np.int32)
n_tokens = np.array([41, 18, 3, 44, 26], np.int32)
for s in range(S):
    for r in range(n_rows[s]):
        if s == 1 and r < 5:
            continue  # prefix-cached rows: missing in every layer
        for l in moe:
            ids[s, r, l] = rng.choice(E, K, replace=False)
            p = rng.dirichlet(np.ones(K)).astype(np.float32)
            w[s, r, l] = (p.view(np.uint32) >> 16).astype(np.uint16)
tokens = np.full((S, T), -1, np.int32)
for s in range(S):
    tokens[s, : n_tokens[s]] = rng.integers(0, 151936, n_tokens[s])
logprobs = np.zeros((S, 10), np.float32)
n_logprobs = np.array([10, 4, 0, 10, 7], np.int32)
for s in range(S):
    logprobs[s, : n_logprobs[s]] = -rng.random(n_logprobs[s], dtype=np.float32) * 3
np.savez(
    "synthetic-E300-dense.npz", topk_ids=ids, topk_weights=w, tokens=tokens, n_tokens=n_tokens,
    logprobs=logprobs, n_logprobs=n_logprobs, prompt_len=np.array([8, 8, 2, 12, 8], np.int32),
    n_rows=n_rows, start=start, uids=np.array(["a-0", "a-1", "b-0", "c/turn2", "d-0"]),
    groups=np.array(["a", "a", "b", "", ""]), rewards=np.array([1.0, 0.25, np.nan, 0.5, 0.0]),
)
