#!/usr/bin/env python3
"""Benchmark: `rtrace import --from sglang` against the Python paths, in the same run (issue 13).

Generates RESPONSES SGLang /generate responses, one JSON object per line, each with ROWS routed rows
(tokens = ROWS + 1: prompt_token_ids + output_ids), 48 layers x top-8 of 128 experts: meta_info
.routed_experts = base64 of the int32 [rows, layers, k] array as SGLang 0.5 sends it, plus
meta_info.output_token_logprobs ([logprob, token_id, null] per generated token). Routing: neighbouring
rows share about half their experts (bench/diff_stats's generator; DISTINCT different arrays, reused).
Defaults give 100 responses x 2,048 rows, about 420 MB of JSON lines.

Then times (best of REPEAT) and measures the peak resident memory (os.wait4's ru_maxrss, each in its own
process) of:

  rtrace:     rtrace import --from sglang responses.jsonl -o out.rtrace (release build)
  python:     for each line json.loads, rtrace.adapters.sglang, rtrace.Writer.add (the Python path)
  parse only: for each line json.loads, base64.b64decode, np.frombuffer (nothing written)

and prints the ratios. Both traces are read back and compared record by record.

Usage: python3 bench/import/bench.py [--rtrace .build/release/rtrace] [--responses 100] [--rows 2048]
       [--workdir /tmp/rtrace-bench-import] [--repeat 3]
"""
import argparse, base64, importlib.util, json, os, subprocess, sys, time
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

PYTHON_IMPORT = r'''
import json, sys
sys.path.insert(0, sys.argv[3])
import rtrace, rtrace.adapters as A
model = dict(name="bench", num_layers=int(sys.argv[4]), num_experts=int(sys.argv[5]), top_k=int(sys.argv[6]))
with rtrace.Writer(sys.argv[2], model=model, engine=dict(name="sglang", role="rollout"), logprobs=True) as w, open(sys.argv[1], "rb") as f:
    for line in f:
        if line.strip():
            w.add(**A.sglang(json.loads(line), w))
'''

PARSE_ONLY = r'''
import base64, json, sys
import numpy as np
rows = 0
with open(sys.argv[1], "rb") as f:
    for line in f:
        if line.strip():
            r = json.loads(line)
            a = np.frombuffer(base64.b64decode(r["meta_info"]["routed_experts"]), dtype="<i4")
            rows += a.size
print(rows)
'''


def load_generator():
    spec = importlib.util.spec_from_file_location("diff_stats_bench", os.path.join(ROOT, "bench", "diff_stats", "bench.py"))
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m.generate


def make_input(path, responses, rows, layers, experts, k, distinct):
    generate = load_generator()
    ids, _ = generate(distinct, rows, layers, experts, k, 0.0, 7)
    rng = np.random.default_rng(3)
    prompt = rows // 4
    with open(path, "w") as f:
        for i in range(responses):
            a = ids[i % distinct]
            tokens = rng.integers(0, 150000, size=rows + 1).tolist()
            lps = (-rng.random(rows + 1 - prompt)).round(6).tolist()
            out = tokens[prompt:]
            resp = {
                "text": "",
                "output_ids": out,
                "prompt_token_ids": tokens[:prompt],
                "meta_info": {
                    "id": f"req-{i}",
                    "prompt_tokens": prompt,
                    "completion_tokens": len(out),
                    "finish_reason": {"type": "length", "length": len(out)},
                    "routed_experts": base64.b64encode(a.astype("<i4").tobytes()).decode("ascii"),
                    "output_token_logprobs": [[lp, t, None] for lp, t in zip(lps, out)],
                },
            }
            f.write(json.dumps(resp) + "\n")


def run(cmd, repeat):
    """Best wall time of `repeat` runs, and the peak RSS (MB) of the last one."""
    best, peak, out = None, 0.0, ""
    for _ in range(repeat):
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, status, ru = os.wait4(p.pid, 0)
        dt = time.perf_counter() - t
        out, err = p.stdout.read().decode(), p.stderr.read().decode()
        if status != 0:
            sys.exit(f"failed: {' '.join(cmd)}\n{err}")
        best = dt if best is None else min(best, dt)
        peak = ru.ru_maxrss / 1024
    return best, peak, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rtrace", default=os.path.join(ROOT, ".build", "release", "rtrace"))
    ap.add_argument("--responses", type=int, default=100)
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--topk", type=int, default=8)
    ap.add_argument("--distinct", type=int, default=10, help="different routing arrays among the responses")
    ap.add_argument("--workdir", default="/tmp/rtrace-bench-import")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--python", default=os.path.join(ROOT, "python"), help="the rtrace Python package's folder")
    o = ap.parse_args()
    os.makedirs(o.workdir, exist_ok=True)
    src = os.path.join(o.workdir, f"sglang-{o.responses}x{o.rows}.jsonl")
    if not os.path.exists(src):
        t = time.perf_counter()
        make_input(src + ".tmp", o.responses, o.rows, o.layers, o.experts, o.topk, o.distinct)
        os.rename(src + ".tmp", src)
        print(f"generated {src} in {time.perf_counter() - t:.1f} s")
    size = os.path.getsize(src)
    print(f"input: {o.responses} SGLang responses x {o.rows} rows x {o.layers} layers x top-{o.topk} of {o.experts}: "
          f"{size / 1e6:.0f} MB of JSON lines")
    geo = [str(o.layers), str(o.experts), str(o.topk)]
    scripts = {}
    for name, text in (("python_import.py", PYTHON_IMPORT), ("parse_only.py", PARSE_ONLY)):
        scripts[name] = os.path.join(o.workdir, name)
        with open(scripts[name], "w") as f:
            f.write(text)
    out_rt, out_py = os.path.join(o.workdir, "swift.rtrace"), os.path.join(o.workdir, "python.rtrace")
    t_rt, m_rt, _ = run([o.rtrace, "import", "--from", "sglang", src, "-o", out_rt, "--num-layers", geo[0],
                         "--num-experts", geo[1], "--top-k", geo[2]], o.repeat)
    t_py, m_py, _ = run([sys.executable, scripts["python_import.py"], src, out_py, o.python, *geo], o.repeat)
    t_pa, m_pa, out = run([sys.executable, scripts["parse_only.py"], src], o.repeat)
    assert int(out) == o.responses * o.rows * o.layers * o.topk, out

    # Same records both ways.
    sys.path.insert(0, o.python)
    import rtrace
    a, b = rtrace.Reader(out_rt), rtrace.Reader(out_py)
    n = 0
    for ra, rb in zip(a, b):
        assert ra.uid == rb.uid and np.array_equal(ra.topk_ids, rb.topk_ids), ra.uid
        assert np.array_equal(ra.tokens, rb.tokens) and ra.start == rb.start and ra.prompt_len == rb.prompt_len, ra.uid
        assert np.array_equal(ra.logprobs, rb.logprobs), ra.uid
        n += 1
    assert n == o.responses, n
    print(f"both traces hold the same {n} records ({os.path.getsize(out_rt) / 1e6:.1f} MB)")

    print(f"{'':34s} {'time':>9s} {'peak RSS':>10s}")
    print(f"{'rtrace import --from sglang':34s} {t_rt:8.2f}s {m_rt:8.0f} MB")
    print(f"{'Python adapter + rtrace.Writer':34s} {t_py:8.2f}s {m_py:8.0f} MB")
    print(f"{'parse alone (json+base64+numpy)':34s} {t_pa:8.2f}s {m_pa:8.0f} MB")
    print(f"rtrace vs the Python path: {t_py / t_rt:.2f}x faster; the Python path holds {m_py / m_rt:.2f}x the memory")
    print(f"rtrace time / parse-alone time: {t_rt / t_pa:.2f} (target: within 2)")


if __name__ == "__main__":
    main()
