#!/usr/bin/env python3
"""Measure candidate expert-id codecs on real and synthetic routing (the evidence behind spec/format.md §Codecs).

Usage: python3 bench/measure_codecs.py [REAL.npz ...]
Prints bytes per (row, layer) for each candidate; every candidate is lossless and keeps slot order
unless it says "set only".
"""
import sys, zlib, itertools
import numpy as np

def huff(b):
    c = zlib.compressobj(1, zlib.DEFLATED, -15, 8, zlib.Z_HUFFMAN_ONLY)
    return len(c.compress(bytes(b)) + c.flush())

def l6(b):
    return len(zlib.compress(bytes(b), 6))

def ordered_reuse(ids):
    """ids [S,R,L,K] -> (match bytes, new-id bytes), layer-major; match = slot of the same expert in the previous row, 0xFF new."""
    S, R, L, K = ids.shape
    match, new = bytearray(), bytearray()
    for l in range(L):
        for s in range(S):
            prev = None
            for r in range(R):
                row = ids[s, r, l]
                for e in row:
                    if prev is not None and e in prev:
                        match.append(list(prev).index(e))
                    else:
                        match.append(0xFF); new.append(int(e))
                prev = row
    return match, new

def sorted_reuse_gaps(ids):
    S, R, L, K = ids.shape
    mask, gaps = bytearray(), bytearray()
    for l in range(L):
        for s in range(S):
            prev = None
            for r in range(R):
                cur = sorted(int(e) for e in ids[s, r, l])
                if prev is not None:
                    m = 0
                    for j, e in enumerate(prev):
                        if e in cur: m |= 1 << j
                    mask.append(m)
                    fresh = [e for e in cur if e not in prev]
                else:
                    fresh = cur
                last = -1
                for e in fresh:
                    gaps.append(e - last - 1); last = e
                prev = cur
    return mask, gaps

def lehmer(ids):
    out = bytearray()
    S, R, L, K = ids.shape
    for l in range(L):
        for s in range(S):
            for r in range(R):
                row = list(ids[s, r, l]); srt = sorted(row)
                code = 0
                for i, e in enumerate(row):
                    rest = sorted(srt); idx = rest.index(e); srt.remove(e)
                    code = code * (K - i) + idx
                out += int(code).to_bytes(2, 'little')
    return out

def report(name, ids):
    S, R, L, K = ids.shape
    n = S * R * L
    ov = np.mean([len(set(ids[s, r, l]) & set(ids[s, r - 1, l])) / K for s in range(S) for r in range(1, R) for l in range(L)])
    print(f"## {name}: {S} seqs x {R} rows x {L} layers x top-{K}, neighbour overlap {ov:.3f}")
    u8tm = ids.astype(np.uint8).tobytes()
    u8lm = ids.transpose(2, 0, 1, 3).astype(np.uint8).tobytes()
    rows = [
        ("int32 token-major, zlib-6 (npz-like)", l6(ids.astype(np.int32).tobytes())),
        ("u8 slot order token-major, huffman", huff(u8tm)),
        ("u8 slot order layer-major, huffman", huff(u8lm)),
    ]
    m, nw = ordered_reuse(ids)
    rows.append(("ordered reuse (match+new) layer-major, huffman", huff(m) + huff(nw)))
    rows.append(("ordered reuse, one stream, huffman", huff(m + nw)))
    mk, gp = sorted_reuse_gaps(ids)
    sr = huff(mk) + huff(gp)
    rows.append(("sorted reuse-mask+gaps (set only), huffman", sr))
    rows.append(("sorted reuse-mask+gaps + Lehmer perm u16, huffman", sr + huff(lehmer(ids))))
    for label, size in rows:
        print(f"  {label:55s} {size / n:7.3f} B/(row,layer)")

def synthetic(S=40, R=256, L=12, E=128, K=8, rho=0.8, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.empty((S, R, L, K), np.int64)
    for l in range(L):
        bias = rng.normal(0, 0.3, E)
        for s in range(S):
            h = rng.normal(0, 1, E)
            for r in range(R):
                h = rho * h + np.sqrt(1 - rho * rho) * rng.normal(0, 1, E)
                z = 2 * (bias + h)
                ids[s, r, l] = np.argsort(-z)[:K]
    return ids

if __name__ == "__main__":
    for p in sys.argv[1:]:
        report(p, np.load(p)["topk_ids"])
    report("synthetic E=128 k=8 (AR(1) rho=0.8)", synthetic())
