#!/usr/bin/env python3
"""Format benchmark (issue 2): size and write/read time of .rtrace against numpy's savez_compressed/load.

Usage: python3 bench/format_bench.py --rtrace .build/release/rtrace [--rows 100000]
Data: 100k rows x 48 MoE layers x top-8 of 128 experts (Qwen3-30B-A3B geometry), skewed expert
popularity, neighbouring rows sharing about half their experts, bf16 gate weights (uint16 bits)
that sum to 1, token ids and logprobs. Both sides are timed end to end in this same run:
  numpy write = np.savez_compressed; numpy read = np.load + touching every array
  rtrace write = `rtrace import --from npz` of the uncompressed arrays (includes reading that npz)
  rtrace read  = `rtrace check` (inflates and decodes every column, verifies every CRC)
"""
import argparse, json, os, subprocess, sys, tempfile, time
import numpy as np

def gen(rows, L=48, E=128, K=8, seq=1000, seed=0):
    rng = np.random.default_rng(seed)
    S = rows // seq
    bias = rng.normal(0, 0.3, (L, E)).astype(np.float32)
    h = rng.normal(0, 1, (S, L, E)).astype(np.float32)
    ids = np.empty((S, seq, L, K), np.int32)
    w = np.empty((S, seq, L, K), np.uint16)
    rho = 0.8
    for r in range(seq):
        h = rho * h + np.sqrt(1 - rho * rho) * rng.normal(0, 1, h.shape).astype(np.float32)
        z = 2 * (bias[None] + h)
        top = np.argpartition(-z, K, axis=-1)[..., :K]
        zs = np.take_along_axis(z, top, -1)
        order = np.argsort(-zs, axis=-1)
        top = np.take_along_axis(top, order, -1); zs = np.take_along_axis(zs, order, -1)
        p = np.exp(zs - zs.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
        ids[:, r] = top
        b = p.astype(np.float32).view(np.uint32)
        w[:, r] = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    tokens = rng.integers(0, 151936, (S, seq + 1), dtype=np.int32)
    logprobs = -rng.random((S, 500), dtype=np.float32)
    return dict(topk_ids=ids, topk_weights=w, tokens=tokens, logprobs=logprobs, prompt_len=np.int32(seq - 499))

def best(f, n=3):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return min(ts)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rtrace", required=True)
    ap.add_argument("--rows", type=int, default=100_000)
    a = ap.parse_args()
    d = os.path.join(tempfile.gettempdir(), f"rtrace-bench-{a.rows}")
    os.makedirs(d, exist_ok=True)
    raw = os.path.join(d, "raw.npz")
    if not os.path.exists(raw):  # generating takes a minute or two: reuse it across runs
        np.savez(raw, **gen(a.rows))
    z = np.load(raw)
    arrays = {k: z[k] for k in z.files}
    npz = os.path.join(d, "c.npz"); rt = os.path.join(d, "t.rtrace")
    t_np_w = best(lambda: np.savez_compressed(npz, **arrays))
    def np_read():
        z = np.load(npz)
        for k in z.files: z[k].sum()
    t_np_r = best(np_read)
    t_rt_w = best(lambda: subprocess.run([a.rtrace, "import", "--from", "npz", raw, "-o", rt, "--num-experts", "128"], check=True))
    t_rt_r = best(lambda: subprocess.run([a.rtrace, "check", "--quiet", rt], check=True, stdout=subprocess.DEVNULL))
    rows = arrays["topk_ids"].shape[0] * arrays["topk_ids"].shape[1]
    res = {
        "rows": rows, "layers": 48, "experts": 128, "top_k": 8,
        "npz_bytes": os.path.getsize(npz), "rtrace_bytes": os.path.getsize(rt),
        "size_ratio_npz_over_rtrace": round(os.path.getsize(npz) / os.path.getsize(rt), 2),
        "npz_write_s": round(t_np_w, 3), "rtrace_write_s": round(t_rt_w, 3),
        "npz_read_s": round(t_np_r, 3), "rtrace_read_s": round(t_rt_r, 3),
        "write_speedup": round(t_np_w / t_rt_w, 2), "read_speedup": round(t_np_r / t_rt_r, 2),
        "rtrace_read_rows_per_s": round(rows / t_rt_r), "rtrace_write_rows_per_s": round(rows / t_rt_w),
    }
    print(json.dumps(res, indent=1))

if __name__ == "__main__":
    main()
