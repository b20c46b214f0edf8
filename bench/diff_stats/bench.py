#!/usr/bin/env python3
"""Benchmark: `rtrace diff` (release build) against the obvious numpy flip-rate script, end to end.

Generates two sides of SEQS x (TOKENS-1) rows x 48 layers x top-8 of 128 experts (neighbouring rows
share about half their experts; side B changes one expert in ~5% of (row, layer)s), writes them as
.npz (numpy, uncompressed) and as .rtrace (`rtrace import --from npz`), then times, in the same run:

  numpy:  load both npz, sort each top-k set, compare, average (per-layer and overall flip rate,
          rows with any layer flipped)
  rtrace: rtrace diff a.rtrace b.rtrace --json (every metric: flip / ordered flip / Jaccard / experts
          changed per layer, prompt/response and position splits, top sequences)

Usage: python3 bench/diff_stats/bench.py [--seqs 200] [--tokens 501] [--workdir /tmp/rtrace-bench]
       [--rtrace .build-analysis/release/rtrace] [--repeat 3] [--memory] [--logprobs] [--diff-args ...]

--logprobs also gives both sides logprobs of the response tokens (B = A + noise), so that diff computes
the policy mismatch (--diff-args passes options such as "--is-threshold 2 --is-threshold 1.05" to it).
--baseline PATH also times another rtrace binary's `diff --json` (without --diff-args) on the same files,
alternating run by run with the one measured, and prints the ratio.

--memory also imports the data 5 times more (other uid prefixes) and prints the peak resident memory
of diff and stats on 1 and on 5 copies: streaming keeps it nearly flat.
"""
import argparse, json, os, subprocess, sys, time
import numpy as np

def generate(seqs, rows, L, E, k, flip, seed):
    rng = np.random.default_rng(seed)
    ids = np.empty((seqs, rows, L, k), dtype=np.int32)
    half = k // 2
    prev = np.argsort(rng.random((seqs, L, E)), axis=-1)[..., :k].astype(np.int32)
    sl = np.arange(seqs)[:, None, None], np.arange(L)[None, :, None]
    for r in range(rows):
        # keep a random half of the previous row's experts, draw the rest among the others
        keep = np.take_along_axis(prev, np.argsort(rng.random((seqs, L, k)), axis=-1)[..., :half], axis=-1)
        score = rng.random((seqs, L, E))
        score[sl[0], sl[1], keep] = 2.0  # exclude kept experts
        new = np.argpartition(score, k - half, axis=-1)[..., : k - half].astype(np.int32)
        cur = np.concatenate([keep, new], axis=-1)
        ids[:, r] = cur
        prev = cur
    return ids, change_one_expert(rng, ids, flip, E)

def change_one_expert(rng, ids, rate, E):
    """A copy of ids [..., k] where a fraction `rate` of the top-k sets has one expert replaced by one
    not in the set (same slot)."""
    b = ids.copy()
    idx = np.nonzero(rng.random(ids.shape[:-1]) < rate)
    slot = rng.integers(0, ids.shape[-1], size=len(idx[0]))
    cand = rng.integers(0, E, size=len(idx[0])).astype(ids.dtype)
    sets = b[idx]
    while True:
        clash = (sets == cand[:, None]).any(axis=1)
        if not clash.any():
            break
        cand[clash] = rng.integers(0, E, size=int(clash.sum()))
    b[idx + (slot,)] = cand
    return b

NUMPY_DIFF = r'''
import sys, numpy as np, json
a = np.load(sys.argv[1]); b = np.load(sys.argv[2])
ia = np.sort(a["topk_ids"], axis=-1); ib = np.sort(b["topk_ids"], axis=-1)
flipped = (ia != ib).any(axis=-1)                # [seqs, rows, layers]
per_layer = flipped.reshape(-1, flipped.shape[-1]).mean(axis=0)
print(json.dumps({"flip_rate": float(flipped.mean()), "per_layer": per_layer.tolist(),
                  "token_any_layer_flip": float(flipped.any(axis=-1).mean())}))
'''

def timed(cmd, repeat):
    best, out = None, None
    for _ in range(repeat):
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        dt = time.perf_counter() - t
        if p.returncode != 0:
            sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr}")
        out = p.stdout
        best = dt if best is None else min(best, dt)
    return best, out

def peak_rss_mb(cmd):
    """Runs cmd (output discarded) and returns its peak resident memory in MB (os.wait4's ru_maxrss; it
    includes what the forked child held before exec, so this runs in a fresh process: --memory-only)."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    if status != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr.read().decode()}")
    return ru.ru_maxrss / 1024

def memory(o, copies=5):
    """Peak memory of diff and stats on one copy of the data and on `copies` copies (shards
    imported again under other uid prefixes): streaming keeps it flat as the trace grows."""
    paths = {side: os.path.join(o.workdir, side + ".npz") for side in ("a", "b")}
    shards = {"a": [], "b": []}
    for side in ("a", "b"):
        for c in range(copies):
            rt = os.path.join(o.workdir, f"{side}-copy{c}.rtrace")
            subprocess.run([o.rtrace, "import", "--from", "npz", paths[side], "-o", rt, "--num-experts", str(o.experts),
                            "--uid-prefix", f"c{c}-", "--role", "rollout" if side == "a" else "train"], check=True)
            shards[side].append(rt)
    print(f"peak resident memory (MB), 1 copy -> {copies} copies of the data:")
    for name, make in (("diff", lambda n: [o.rtrace, "diff", "--a", *shards["a"][:n], "--b", *shards["b"][:n], "--json"]),
                       ("stats", lambda n: [o.rtrace, "stats", *shards["a"][:n], "--json", "--capacity-factor", "1.25"])):
        one, many = peak_rss_mb(make(1)), peak_rss_mb(make(copies))
        print(f"  rtrace {name:5s}: {one:6.0f} -> {many:6.0f}")

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", type=int, default=200)
    ap.add_argument("--tokens", type=int, default=501)
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--topk", type=int, default=8)
    ap.add_argument("--workdir", default="/tmp/rtrace-bench")
    ap.add_argument("--rtrace", default=".build-analysis/release/rtrace")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--memory", action="store_true", help="also measure peak memory on 1 and 5 copies of the data")
    ap.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)  # --memory, in a fresh process
    ap.add_argument("--logprobs", action="store_true", help="give both sides response logprobs (diff then computes the policy metrics)")
    ap.add_argument("--diff-args", default="", help="extra arguments of rtrace diff (split on spaces)")
    ap.add_argument("--baseline", help="another rtrace binary whose diff is timed on the same files, alternating")
    o = ap.parse_args()
    if o.memory_only:
        return memory(o)
    os.makedirs(o.workdir, exist_ok=True)
    rows = o.tokens - 1
    print(f"data: {o.seqs} seqs x {rows} rows = {o.seqs * rows} rows, {o.layers} layers, top-{o.topk} of {o.experts}")
    t = time.perf_counter()
    a, b = generate(o.seqs, rows, o.layers, o.experts, o.topk, 0.05, 1)
    tokens = np.random.default_rng(2).integers(0, 150000, size=(o.seqs, o.tokens), dtype=np.int32)
    paths = {}
    lp = {}
    if o.logprobs:
        rng = np.random.default_rng(3)
        lp["a"] = -rng.exponential(1.0, size=(o.seqs, o.tokens - o.tokens // 4)).astype(np.float32)
        lp["b"] = (lp["a"] + rng.normal(0, 0.02, size=lp["a"].shape)).astype(np.float32)
    for name, ids in (("a", a), ("b", b)):
        paths[name] = os.path.join(o.workdir, name + ".npz")
        extra = {"logprobs": lp[name]} if o.logprobs else {}
        np.savez(paths[name], tokens=tokens, prompt_len=np.int32(o.tokens // 4), topk_ids=ids, **extra)
        rt = os.path.join(o.workdir, name + ".rtrace")
        subprocess.run([o.rtrace, "import", "--from", "npz", paths[name], "-o", rt, "--num-experts", str(o.experts),
                        "--uid-prefix", "s", "--role", "rollout" if name == "a" else "train"], check=True)
        paths[name + "_rt"] = rt
    print(f"generated and imported in {time.perf_counter() - t:.1f}s; sizes: npz {os.path.getsize(paths['a']) / 1e6:.0f} MB, "
          f"rtrace {os.path.getsize(paths['a_rt']) / 1e6:.0f} MB per side")
    script = os.path.join(o.workdir, "numpy_diff.py")
    open(script, "w").write(NUMPY_DIFF)
    t_np, out_np = timed([sys.executable, script, paths["a"], paths["b"]], o.repeat)
    t_rt, out_rt = timed([o.rtrace, "diff", paths["a_rt"], paths["b_rt"], "--json"] + o.diff_args.split(), o.repeat)
    np_j, rt_j = json.loads(out_np), json.loads(out_rt)
    assert abs(np_j["flip_rate"] - rt_j["flip_rate"]) < 1e-12, (np_j["flip_rate"], rt_j["flip_rate"])
    assert abs(np_j["token_any_layer_flip"] - rt_j["token_any_layer_flip"]) < 1e-12
    assert all(abs(x - p["flip_rate"]) < 1e-12 for x, p in zip(np_j["per_layer"], rt_j["per_layer"]))
    print(f"flip_rate {rt_j['flip_rate']:.5f}  token_any_layer_flip {rt_j['token_any_layer_flip']:.4f}  (numpy and rtrace agree)")
    print(f"numpy  (load npz, sort, compare): {t_np:7.3f} s   best of {o.repeat}")
    print(f"rtrace diff --json {o.diff_args:13s}: {t_rt:7.3f} s   best of {o.repeat}" + ("  (with logprobs)" if o.logprobs else ""))
    print(f"ratio numpy / rtrace diff       : {t_np / t_rt:7.1f}x")
    if o.baseline:
        ours, base = [], []
        for _ in range(o.repeat):
            ours.append(timed([o.rtrace, "diff", paths["a_rt"], paths["b_rt"], "--json"] + o.diff_args.split(), 1)[0])
            base.append(timed([o.baseline, "diff", paths["a_rt"], paths["b_rt"], "--json"], 1)[0])
        ours.sort(); base.sort()
        med = lambda v: v[len(v) // 2]
        print(f"rtrace diff vs --baseline, alternating {o.repeat}x: best {min(ours):.3f} / {min(base):.3f} s = {min(ours) / min(base):.2f}, "
              f"median {med(ours):.3f} / {med(base):.3f} s = {med(ours) / med(base):.2f}")
    t_st, _ = timed([o.rtrace, "stats", paths["a_rt"], "--json", "--capacity-factor", "1.25", "--ep", "8"], o.repeat)
    print(f"rtrace stats --capacity-factor --ep (one side): {t_st:.3f} s")
    if o.memory:
        sys.stdout.flush()
        subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-only", "--workdir", o.workdir,
                        "--rtrace", o.rtrace, "--experts", str(o.experts)], check=True)

if __name__ == "__main__":
    main()
