#!/usr/bin/env python3
"""Throughput of the Python writer and reader on a realistic synthetic trace, against Swift.

100 records x 1000 rows x 48 MoE layers x top-8 of 128 experts, bf16 gate weights (uint16 bit
patterns), neighbouring rows sharing about half their experts (slot order shuffled), 4 MiB chunks.
Times are the best of --repeat runs. With the Swift CLI (--rtrace PATH or env RTRACE_BIN), the same
run also times `rtrace import --from npz` of the same arrays (Swift write, includes reading the
uncompressed npz) and `rtrace check --quiet` of the file Python wrote (Swift read: inflates,
decodes and validates every column), and prints Swift/Python ratios (the target: within 2x).
"decoder" says how the Python reader decoded: "native" (the compiled accelerator rtrace._native) or
"numpy" (not built, or RTRACE_PURE_PYTHON=1). Prints one JSON object.
Usage: python3 bench_python.py [--records N] [--rows R] [--repeat 3] [--rtrace PATH] [--out PATH]
"""
import argparse
import json
import os
import shutil
import subprocess
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


def best(f, n):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=100)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rtrace", default=os.environ.get("RTRACE_BIN"), help="the Swift CLI (default: $RTRACE_BIN)")
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
    tmp = tempfile.mkdtemp()
    path = a.out or os.path.join(tmp, "bench.rtrace")
    model = dict(name="synthetic-48L-E128-k8", num_layers=L, num_experts=E, top_k=k)
    rows = S * R

    def write():
        with rtrace.Writer(path, model=model, engine=dict(name="bench", role="rollout"),
                           topk_weights_dtype="bf16") as wr:
            for s in range(S):
                wr.add(f"s{s}", tokens[s], ids[s], w[s], prompt_len=200)

    def read(threads=True):
        n = 0
        for rec in rtrace.Reader(path, threads=threads):
            n += rec.n_rows
        assert n == rows

    write_s = best(write, a.repeat)
    size = os.path.getsize(path)
    read_s = best(read, a.repeat)
    read1_s = best(lambda: read(False), a.repeat)
    t0 = time.perf_counter()
    g = rtrace.Reader(path).get(f"s{S // 2}")
    get_s = time.perf_counter() - t0
    assert np.array_equal(g.topk_ids, ids[S // 2]) and np.array_equal(g.topk_weights, w[S // 2])
    out = {
        "decoder": "native" if rtrace.native_available() else "numpy",
        "rows": rows, "layers": L, "experts": E, "top_k": k, "weights": "bf16", "neighbour_overlap": round(overlap, 3),
        "file_bytes": size, "bytes_per_row_layer": round(size / (rows * L), 3),
        "raw_bytes_per_row_layer": k * 3,
        "python_write_rows_per_s": round(rows / write_s), "python_read_rows_per_s": round(rows / read_s),
        "python_read_rows_per_s_one_thread": round(rows / read1_s),
        "python_write_s": round(write_s, 3), "python_read_s": round(read_s, 3),
        "get_one_record_s": round(get_s, 4), "synth_s": round(gen_s, 2),
    }
    if a.rtrace:
        npz = os.path.join(tmp, "raw.npz")
        np.savez(npz, topk_ids=ids, topk_weights=w, tokens=tokens, prompt_len=np.int32(200))
        sw = os.path.join(tmp, "swift.rtrace")
        sw_w = best(lambda: subprocess.run([a.rtrace, "import", "--from", "npz", npz, "-o", sw, "--num-experts",
                                            str(E), "--role", "rollout"], check=True), a.repeat)
        sw_r = best(lambda: subprocess.run([a.rtrace, "check", "--quiet", path], check=True,
                                           stdout=subprocess.DEVNULL), a.repeat)
        # Python reads the Swift-written file to the same arrays
        for i, rec in enumerate(rtrace.Reader(sw)):
            assert np.array_equal(rec.topk_ids, ids[i]) and np.array_equal(rec.topk_weights, w[i])
        out.update({
            "swift_write_rows_per_s": round(rows / sw_w), "swift_read_rows_per_s": round(rows / sw_r),
            "swift_write_s": round(sw_w, 3), "swift_read_s": round(sw_r, 3),
            # Python time / Swift time (= Swift rows/s over Python rows/s): the target is <= 2
            "write_python_time_over_swift": round(write_s / sw_w, 2),
            "read_python_time_over_swift": round(read_s / sw_r, 2),
            "within_2x_of_swift": bool(write_s <= 2 * sw_w and read_s <= 2 * sw_r),
        })
    print(json.dumps(out, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)   # (--out is written outside it and kept)


if __name__ == "__main__":
    main()
