#!/usr/bin/env python3
"""Throughput of the Python writer and reader on a realistic synthetic trace.

100 records x 1000 rows x 48 MoE layers x top-8 of 128 experts, bf16 gate weights (uint16 bit
patterns), neighbouring rows sharing about half their experts (slot order shuffled), 4 MiB chunks.
Prints one JSON object. Usage: python3 bench_python.py [--records N] [--rows R] [--out PATH]
"""
import argparse
import json
import os
import tempfile
import time

import numpy as np

import rtrace


def synth(rng, S, R, L, E, k, overlap=0.5):
    ids = np.empty((S, R, L, k), dtype=np.int32)
    prev = np.argsort(rng.random((S, L, E)), axis=2)[:, :, :k].astype(np.int32)
    for r in range(R):
        keep = rng.random((S, L, k)) < overlap
        row = np.where(keep, prev, rng.integers(0, E, (S, L, k), dtype=np.int32))
        while True:  # redraw non-kept duplicates
            order = np.argsort(row, axis=2, kind="stable")
            srt = np.take_along_axis(row, order, axis=2)
            dup_sorted = np.zeros_like(keep)
            dup_sorted[:, :, 1:] = srt[:, :, 1:] == srt[:, :, :-1]
            dup = np.zeros_like(keep)
            np.put_along_axis(dup, order, dup_sorted, axis=2)
            dup &= ~keep | dup            # the later copy of a pair is redrawn
            if not dup.any():
                break
            keep &= ~dup
            row = np.where(dup, rng.integers(0, E, (S, L, k), dtype=np.int32), row)
        row = rng.permuted(row, axis=2)
        ids[:, r] = row
        prev = row
    return ids


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=100)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    S, R, L, E, k = a.records, a.rows, 48, 128, 8
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    ids = synth(rng, S, R, L, E, k)
    p = rng.dirichlet(np.ones(k), size=(S, R, L)).astype(np.float32)
    w = rtrace.float_to_bf16_bits(p)
    tokens = rng.integers(0, 151936, (S, R + 1), dtype=np.int32)
    gen_s = time.perf_counter() - t0
    overlap = float(np.mean([len(np.intersect1d(ids[0, r, 0], ids[0, r + 1, 0])) / k for r in range(200)]))
    path = a.out or os.path.join(tempfile.mkdtemp(), "bench.rtrace")
    model = dict(name="synthetic-48L-E128-k8", num_layers=L, num_experts=E, top_k=k)
    t0 = time.perf_counter()
    with rtrace.Writer(path, model=model, engine=dict(name="bench", role="rollout"), topk_weights_dtype="bf16") as wr:
        for s in range(S):
            wr.add(f"s{s}", tokens[s], ids[s], w[s], prompt_len=200)
    write_s = time.perf_counter() - t0
    size = os.path.getsize(path)
    t0 = time.perf_counter()
    n = 0
    for rec in rtrace.Reader(path):
        n += rec.n_rows
    read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    g = rtrace.Reader(path).get(f"s{S // 2}")
    get_s = time.perf_counter() - t0
    assert n == S * R and np.array_equal(g.topk_ids, ids[S // 2])
    rows = S * R
    print(json.dumps({
        "rows": rows, "layers": L, "experts": E, "top_k": k, "weights": "bf16", "neighbour_overlap": round(overlap, 3),
        "file_bytes": size, "bytes_per_row_layer": round(size / (rows * L), 3),
        "raw_bytes_per_row_layer": k * 3,
        "write_rows_per_s": round(rows / write_s), "read_rows_per_s": round(rows / read_s),
        "write_s": round(write_s, 3), "read_s": round(read_s, 3), "get_one_record_s": round(get_s, 4),
        "synth_s": round(gen_s, 2),
    }, indent=1))
    if not a.out:
        os.remove(path)


if __name__ == "__main__":
    main()
