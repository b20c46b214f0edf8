#!/usr/bin/env python3
"""Benchmark: memory and time of `rtrace diff` whatever the order of side B's records (issue 15).

Generates side A of SEQS sequences x ROWS rows at Qwen3-30B-A3B geometry (48 MoE layers, top-8 of 128
experts; tokens and response logprobs) and side B (the same routing with one expert changed in ~5% of
(row, layer)s, perturbed logprobs), written by `rtrace import --from npz` in three orders:

  order     B's records in A's order
  shuffled  B's records in a random order (seeded)
  reversed  B's records in reverse order

then measures, in the same run, the peak resident memory (os.wait4's ru_maxrss of a fresh process) and
the wall time (best and median of --repeat runs, the cases interleaved so that each sees the shared
machine in the same state) and CPU time (user + system, best) of `rtrace diff A B --json --join-stats`
on each, and of B
shuffled read from a pipe (no index: the streaming join with its spill file). It checks that every run
prints the same report (apart from B's file name), prints ratios against B in order, and what
--join-stats says (records spilled, chunks decoded).

Routing model: per (sequence, layer) a random permutation of the experts; row r takes k consecutive
experts of it from a position that random-walks (steps -3..3, a jump anywhere in 5% of rows), in a
random slot order, so neighbouring rows share most experts, as real routing does. The data (about
4 x 150 MB of .rtrace, plus 4 x 400 MB of .npz while importing) goes to --workdir, never to the repository.

Usage: python3 bench/diff_stats/join_bench.py --rtrace .build/release/rtrace [--seqs 489] [--rows 2047]
       [--workdir /tmp/rtrace-join-bench] [--repeat 3] [--before OTHER_RTRACE] [--reuse]

--before also measures another build (e.g. main's) on the same files, for the figures before the change;
--reuse takes the traces a previous run left in --workdir instead of generating them again.
"""
import argparse, json, os, subprocess, sys, time
import numpy as np
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import change_one_expert  # noqa: E402  (bench/diff_stats/bench.py)

L, E, K = 48, 128, 8


def routing(rng, seqs, rows):
    perm = np.argsort(rng.random((seqs, L, E)), axis=-1).astype(np.uint8).reshape(-1)
    steps = rng.integers(-3, 4, size=(seqs, rows, L))
    jump = rng.random((seqs, rows, L)) < 0.05
    steps[jump] = rng.integers(0, E, size=int(jump.sum()))
    pos = np.cumsum(steps, axis=1) % E
    offs = (pos[..., None] + np.arange(K)) % E
    offs = np.take_along_axis(offs, np.argsort(rng.random((seqs, rows, L, K)), axis=-1), axis=-1)
    base = (np.arange(seqs)[:, None, None, None] * L + np.arange(L)[None, None, :, None]) * E
    return perm[base + offs]


def generate(o):
    """Writes a.rtrace and b-{order,shuffled,reversed}.rtrace; returns their paths."""
    S, R, T, P = o.seqs, o.rows, o.rows + 1, (o.rows + 1) // 4
    rng = np.random.default_rng(15)
    a = np.empty((S, R, L, K), dtype=np.uint8)
    for s0 in range(0, S, 32):
        a[s0:s0 + 32] = routing(rng, min(32, S - s0), R)
    b = change_one_expert(rng, a, 0.05, E)
    tokens = rng.integers(0, 150000, size=(S, T), dtype=np.int32)
    lp_a = (-rng.exponential(1.0, size=(S, T - P))).astype(np.float32)
    lp_b = (lp_a + rng.normal(0, 0.1, size=lp_a.shape)).astype(np.float32)
    uids = np.array([f"seq-{s:06d}" for s in range(S)])
    orders = {"order": np.arange(S), "shuffled": np.random.default_rng(16).permutation(S), "reversed": np.arange(S)[::-1]}
    out = {}
    for name, ids, lp, perm, role in [("a", a, lp_a, orders["order"], "rollout")] + \
            [("b-" + k, b, lp_b, v, "train") for k, v in orders.items()]:
        npz = os.path.join(o.workdir, name + ".npz")
        rt = os.path.join(o.workdir, name + ".rtrace")
        np.savez(npz, topk_ids=ids[perm], tokens=tokens[perm], prompt_len=np.full(S, P, dtype=np.int32),
                 logprobs=lp[perm], uids=uids[perm])
        subprocess.run([o.rtrace, "import", "--from", "npz", npz, "-o", rt, "--num-experts", str(E), "--role", role,
                        "--model", "Qwen3-30B-A3B-geometry"], check=True)
        os.remove(npz)
        out[name] = rt
    return out


RUNNER = r"""
import json, os, subprocess, sys, time
cases, repeat = json.loads(sys.argv[1]), int(sys.argv[2])
for rep in range(repeat):
    for name, src, cmd in cases:  # interleaved: every case sees the machine in the same state
        t = time.perf_counter()
        cat = subprocess.Popen(["cat", src], stdout=subprocess.PIPE) if src else None
        p = subprocess.Popen(cmd, stdin=cat.stdout if cat else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if cat:
            cat.stdout.close()
        out = p.stdout.read()
        err = p.stderr.read().decode()
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        if cat:
            cat.wait()
        if status:
            sys.exit(err)
        print(json.dumps({"case": name, "wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "rss_mb": ru.ru_maxrss / 1024,
                          "stderr": err, "out": out.decode() if rep == repeat - 1 else ""}), flush=True)
"""


def runs(cases, repeat):
    """Runs each case (name, stdin file or None, command) `repeat` times, the cases interleaved, from a
    fresh interpreter (so that ru_maxrss is rtrace's own, not what this process held before exec).
    With a stdin file, it reaches rtrace through a pipe (`cat FILE |`), so rtrace cannot seek it or use
    its index. Returns {name: [one dict per run: wall, cpu (user + system seconds), rss_mb, stderr, out]}."""
    r = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(cases), str(repeat)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {r.stderr}")
    out = {}
    for line in r.stdout.splitlines():
        d = json.loads(line)
        out.setdefault(d["case"], []).append(d)
    return out


def measure(binaries, paths, repeat):
    """Times and peak memory of `rtrace diff A B --json` with B in order, shuffled, reversed, and
    shuffled through a pipe, for each binary (the first with --join-stats), every run interleaved;
    checks each binary's reports are the same across orders; prints ratios against B in order."""
    kinds = [(k, None, paths["b-" + k]) for k in ("order", "shuffled", "reversed")] + [("shuffled, pipe", paths["b-shuffled"], "-")]
    cases = [(f"{i}/{name}", src, [rt, "diff", paths["a"], b, "--json"] + (["--join-stats"] if i == 0 else []))
             for i, rt in enumerate(binaries) for name, src, b in kinds]
    res = runs(cases, repeat)
    same = True
    for i, rt in enumerate(binaries):
        rows, reports = [], {}
        for name, _, _ in kinds:
            rs = res[f"{i}/{name}"]
            j = json.loads(rs[-1]["out"])
            j.pop("b")
            reports[name] = j
            walls = sorted(r["wall"] for r in rs)
            rows.append((name, walls[0], walls[len(walls) // 2], min(r["cpu"] for r in rs), max(r["rss_mb"] for r in rs),
                         rs[-1]["stderr"].strip().replace("rtrace diff: ", "")))
        base = rows[0]
        print(f"{rt}{' (before)' if i else ''}: rtrace diff A B --json, {paths['rows']} rows per side; {repeat} runs of each, interleaved")
        print(f"  {'B':16s} {'wall best':>9s} {'x order':>8s} {'median':>8s} {'x order':>8s} {'cpu best':>9s} {'x order':>8s} {'peak RSS MB':>12s} {'x order':>8s}")
        for name, t, med, c, m, _ in rows:
            print(f"  {name:16s} {t:9.2f} {t / base[1]:8.2f} {med:8.2f} {med / base[2]:8.2f} {c:9.2f} {c / base[3]:8.2f} {m:12.0f} {m / base[4]:8.2f}")
        if i == 0:
            for name, *_, note in rows:
                print(f"  {name}: {note}")
        ok = all(r == reports["order"] for r in reports.values())
        print(f"  reports identical across orders: {ok}")
        same = same and (ok or i > 0)
    return same


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rtrace", default=".build/release/rtrace")
    ap.add_argument("--before", help="another rtrace build to measure on the same files")
    ap.add_argument("--seqs", type=int, default=489)
    ap.add_argument("--rows", type=int, default=2047)
    ap.add_argument("--workdir", default="/tmp/rtrace-join-bench")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--reuse", action="store_true", help="use the traces a previous run left in --workdir")
    o = ap.parse_args()
    os.makedirs(o.workdir, exist_ok=True)
    print(f"data: {o.seqs} sequences x {o.rows} rows = {o.seqs * o.rows} rows per side, {L} layers, top-{K} of {E}")
    t = time.perf_counter()
    names = ["a"] + ["b-" + k for k in ("order", "shuffled", "reversed")]
    if o.reuse and all(os.path.exists(os.path.join(o.workdir, n + ".rtrace")) for n in names):
        paths = {n: os.path.join(o.workdir, n + ".rtrace") for n in names}
    else:
        paths = generate(o)
    paths["rows"] = o.seqs * o.rows
    print(f"generated and imported in {time.perf_counter() - t:.0f} s; {os.path.getsize(paths['a']) / 1e6:.0f} MB per side")
    sys.stdout.flush()
    same = measure([o.rtrace] + ([o.before] if o.before else []), paths, o.repeat)
    if not same:
        sys.exit("the reports differ between orders")


if __name__ == "__main__":
    main()
