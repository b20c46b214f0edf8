#!/usr/bin/env python3
"""Benchmark: rtrace.ray (read_rtrace, diff, stats) on a local Ray cluster of 1 and of 2 cores, against
the single-machine CLI on the same cores, in the same run.

Data: SEQS sequences x ROWS rows x 48 MoE layers x top-8 of 128 experts (Qwen3-30B-A3B geometry; rows
share about half their experts with the previous row; B changes one expert in ~5 % of (row, layer)s,
bench/diff_stats's generator), ids only. Side A: 4 shards in uid order; side B: the same uids shuffled
into 3 uneven shards (as rollout workers and trainers write them). Files written by rtrace.Writer.

Each configuration runs in its own process pinned to the first C cores (os.sched_setaffinity: Ray's
processes and the rtrace executable inherit it), C = 1 and 2:

  cli diff      rtrace diff --a A --b B --json                     (the single-machine baseline)
  ray diff      rtrace.ray.diff(A, B)                              (shuffle by uid, partials, merge)
  ray diff uid  rtrace.ray.diff(A, B, strategy="uid-shard")
  cli stats     rtrace stats A B --json
  ray stats     rtrace.ray.stats(A + B)
  ray read      rtrace.ray.read_rtrace(A + B).materialize()        (decoded into tensor blocks in Ray's
                                                                   object store)

Every Ray result is checked equal to the CLI's. Rows/s count the rows of both sides. It also measures,
on one core without Ray, the shuffle's map step (decode + split + write raw parts) and the bytes it
produces, for the scaling arithmetic in bench/README.md: by `rtrace split` (rtrace._shuffle.split_unit_cli,
what rtrace.ray.diff runs) against the Python writer (rtrace._shuffle.split_unit) in the same run.

Usage: RTRACE_BIN=.build/release/rtrace PYTHONPATH=python python3 bench/ray/bench.py
       [--rtrace BIN] [--seqs 100] [--rows 1000] [--repeat 2] [--workdir /tmp/rtrace-ray-bench]
"""
import argparse
import json
import os
import random
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))

L, E, K = 48, 128, 8


def make_data(workdir, seqs, rows):
    import importlib.util
    import rtrace
    spec = importlib.util.spec_from_file_location("diff_stats_bench", os.path.join(HERE, "..", "diff_stats", "bench.py"))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    a_dir, b_dir = os.path.join(workdir, "a"), os.path.join(workdir, "b")
    stamp = os.path.join(workdir, f"done-{seqs}-{rows}")
    if os.path.exists(stamp):
        return sorted(os.path.join(a_dir, n) for n in os.listdir(a_dir)), \
            sorted(os.path.join(b_dir, n) for n in os.listdir(b_dir))
    os.makedirs(a_dir, exist_ok=True)
    os.makedirs(b_dir, exist_ok=True)
    ids_a, ids_b = gen.generate(seqs, rows, L, E, K, 0.05, 7)
    model = dict(num_layers=L, num_experts=E, top_k=K, name="qwen3-30b-a3b-geometry")
    tokens = np.arange(rows + 1, dtype=np.int32)

    def write(path, order, ids, role):
        with rtrace.Writer(path, model, engine=dict(name="bench", role=role)) as w:
            for s in order:
                w.add(str(s), tokens, ids[s], prompt_len=rows // 4)

    order = list(range(seqs))
    for i in range(4):
        write(os.path.join(a_dir, f"a-{i}.rtrace"), order[i * seqs // 4:(i + 1) * seqs // 4], ids_a, "rollout")
    random.Random(3).shuffle(order)
    cuts = [0, seqs // 2, seqs // 2 + seqs // 10, seqs]
    for i in range(3):
        write(os.path.join(b_dir, f"b-{i}.rtrace"), order[cuts[i]:cuts[i + 1]], ids_b, "train")
    open(stamp, "w").close()
    return make_data(workdir, seqs, rows)


def best(fn, repeat):
    out, times = None, []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def run_config(args):
    """One configuration, in this process (pinned to args.cores cores): JSON timings on stdout."""
    os.sched_setaffinity(0, set(range(args.cores)))
    a, b = json.loads(args.files)
    exe = args.rtrace
    res = {"cores": args.cores}

    def cli(*argv):
        p = subprocess.run([exe, *argv], capture_output=True, text=True)
        if p.returncode:
            sys.exit(p.stderr)
        return json.loads(p.stdout)

    res["cli_diff_s"], want_diff = best(lambda: cli("diff", "--a", *a, "--b", *b, "--json"), args.repeat)
    res["cli_stats_s"], want_stats = best(lambda: cli("stats", *a, *b, "--json"), args.repeat)
    import ray
    t = time.perf_counter()
    ray.init(num_cpus=args.cores, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.path.join(HERE, "..", "..", "python")}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    import rtrace.ray as rr
    res["ray_init_s"] = time.perf_counter() - t
    # warm up on the first file of each side: worker processes started, modules imported
    rr.diff(a[:1], b[:1], rtrace_bin=exe)
    rr.diff(a[:1], b[:1], rtrace_bin=exe, strategy="uid-shard")
    rr.stats(a[:1], rtrace_bin=exe)
    rr.read_rtrace(a[:1]).materialize()
    res["ray_diff_s"], got = best(lambda: rr.diff(a, b, rtrace_bin=exe), args.repeat)
    assert got == want_diff, "rtrace.ray.diff differs from rtrace diff --json"
    res["ray_diff_uid_s"], got = best(lambda: rr.diff(a, b, rtrace_bin=exe, strategy="uid-shard"), args.repeat)
    assert got == want_diff, "rtrace.ray.diff (uid-shard) differs from rtrace diff --json"
    res["ray_stats_s"], got = best(lambda: rr.stats(a + b, rtrace_bin=exe), args.repeat)
    assert got == want_stats, "rtrace.ray.stats differs from rtrace stats --json"
    res["ray_read_s"], ds = best(lambda: rr.read_rtrace(a + b).materialize(), args.repeat)
    assert ds.sum("n_rows") == want_stats["rows"]
    ray.shutdown()
    print(json.dumps(res))


def map_step(a, exe):
    """The shuffle's map step on one core, without Ray: rows/s and bytes of the raw parts it writes, done
    by ``rtrace split`` (what ``rtrace.ray.diff`` runs) and, as the baseline, by the Python writer."""
    from rtrace._plan import open_files, plan_units
    from rtrace._shuffle import side_header, split_unit, split_unit_cli
    files = open_files(a)
    units = plan_units(files, 1 << 16)
    h = side_header(files)
    out = {}
    for name, split in (("map", lambda u: split_unit_cli(u, h, 8, exe, ["--threads", "1"])),
                        ("map_python", lambda u: split_unit(u, h, 8))):
        t = time.perf_counter()
        rows = nbytes = 0
        for u in units:
            blobs, r = split(u)
            rows += r
            nbytes += sum(len(x) for x in blobs if x is not None)
        out[f"{name}_rows_per_s"] = rows / (time.perf_counter() - t)
        out[f"{name}_bytes_per_row"] = nbytes / rows
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rtrace", default=os.environ.get("RTRACE_BIN", ".build/release/rtrace"))
    ap.add_argument("--seqs", type=int, default=100)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/rtrace-ray-bench")
    ap.add_argument("--cores", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.rtrace = os.path.abspath(args.rtrace)
    if args.cores:
        return run_config(args)
    os.makedirs(args.workdir, exist_ok=True)
    a, b = make_data(args.workdir, args.seqs, args.rows)
    rows = 2 * args.seqs * args.rows
    stored = sum(os.path.getsize(p) for p in a + b)
    print(f"data: {rows:,} rows (both sides), {len(a)} + {len(b)} files, {stored:,} bytes stored "
          f"({stored / rows:.1f} B/row)", flush=True)
    os.sched_setaffinity(0, {0})
    m = map_step(a, args.rtrace)
    os.sched_setaffinity(0, set(range(os.cpu_count())))
    print(f"shuffle map step, one core: rtrace split {m['map_rows_per_s']:,.0f} rows/s, {m['map_bytes_per_row']:.1f} "
          f"B/row of raw parts; in Python (rtrace.Writer) {m['map_python_rows_per_s']:,.0f} rows/s, "
          f"{m['map_python_bytes_per_row']:.1f} B/row", flush=True)
    results = []
    for cores in (1, 2):
        p = subprocess.run([sys.executable, __file__, "--rtrace", args.rtrace, "--repeat", str(args.repeat),
                            "--cores", str(cores), "--files", json.dumps([a, b])], capture_output=True, text=True)
        if p.returncode:
            sys.exit(f"configuration with {cores} cores failed:\n{p.stderr[-3000:]}")
        results.append(json.loads(p.stdout.strip().splitlines()[-1]))
    names = [("cli diff", "cli_diff_s"), ("ray diff (shuffle)", "ray_diff_s"), ("ray diff (uid-shard)", "ray_diff_uid_s"),
             ("cli stats", "cli_stats_s"), ("ray stats", "ray_stats_s"), ("ray read_rtrace", "ray_read_s")]
    print(f"\n| | " + " | ".join(f"{r['cores']} core{'s' if r['cores'] > 1 else ''}" for r in results)
          + " | 2 cores / 1 core |")
    print("|---|" + "---|" * (len(results) + 1))
    for label, key in names:
        cells = [f"{r[key]:.2f} s ({rows / r[key]:,.0f} rows/s)" for r in results]
        print(f"| {label} | " + " | ".join(cells) + f" | {results[0][key] / results[1][key]:.2f}× |")
    for r in results:
        print(f"\n{r['cores']} core(s): ray diff / cli diff = {r['ray_diff_s'] / r['cli_diff_s']:.2f}, "
              f"uid-shard / cli = {r['ray_diff_uid_s'] / r['cli_diff_s']:.2f}, "
              f"ray stats / cli stats = {r['ray_stats_s'] / r['cli_stats_s']:.2f}; ray.init {r['ray_init_s']:.1f} s")
    print(json.dumps({"rows": rows, "stored_bytes": stored, **m, "configs": results}))


if __name__ == "__main__":
    main()
