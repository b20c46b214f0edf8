"""Cross-implementation tests against the Swift CLI (env RTRACE_BIN)."""
import glob
import json
import os
import subprocess

import numpy as np
import pytest

import rtrace
from conftest import ENGINE, MODEL, SAMPLES
from test_roundtrip import write_sample

# every test reads with both decoders: the accelerator rtrace._native and numpy (conftest.decoder)
pytestmark = pytest.mark.usefixtures("decoder")

BIN = os.environ.get("RTRACE_BIN")
need_bin = pytest.mark.skipif(not BIN, reason="RTRACE_BIN is not set: Swift CLI cross-implementation tests skipped")


def run(*args):
    p = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"{BIN} {' '.join(map(str, args))} failed ({p.returncode}): {p.stderr}"
    return p.stdout


def _f32(x):
    return np.float32(x)


@need_bin
def test_swift_views_python_file(tmp_path, sample):
    p = tmp_path / "py.rtrace"
    write_sample(p, sample, chunk_bytes=3000)
    lines = [json.loads(l) for l in run("view", p, "--format", "jsonl").splitlines() if l.strip()]
    assert len(lines) == 12
    for i, o in enumerate(lines):
        assert o["uid"] == f"seq-{i}" and o["group"] == f"g{i // 4}"
        assert o["tokens"] == sample["tokens"][i].tolist()
        assert o["prompt_len"] == 48 and o["start"] == 0
        assert np.array_equal(np.array(o["topk_ids"]), sample["topk_ids"][i])
        assert o["reward"] == i * 0.25
        assert np.array_equal(np.array(o["logprobs"], dtype=np.float32), sample["logprobs"][i])
        attrs = o["attrs"] if not isinstance(o["attrs"], str) else json.loads(o["attrs"])
        assert attrs == {"i": i}


@need_bin
def test_swift_views_missing_rows(tmp_path, sample):
    ids = sample["topk_ids"][0].copy()
    ids[:10] = -1
    ids[50, 3] = -1
    p = tmp_path / "m.rtrace"
    with rtrace.Writer(p, model=MODEL, engine=ENGINE) as w:
        w.add("m", sample["tokens"][0], ids, prompt_len=48, start=0)
        w.add("cont", sample["tokens"][0], ids[100:], prompt_len=48, start=100)
    lines = [json.loads(l) for l in run("view", p, "--format", "jsonl").splitlines() if l.strip()]
    assert np.array_equal(np.array(lines[0]["topk_ids"]), ids)
    assert lines[1]["start"] == 100 and np.array_equal(np.array(lines[1]["topk_ids"]), ids[100:])


@need_bin
def test_swift_import_python_reads(tmp_path, sample):
    out = tmp_path / "sw.rtrace"
    run("import", "--from", "npz", os.path.join(SAMPLES, "rollout.npz"), "-o", out)
    recs = list(rtrace.Reader(out))
    assert len(recs) == 12
    for i, r in enumerate(recs):
        assert np.array_equal(r.tokens, sample["tokens"][i])
        assert np.array_equal(r.topk_ids, sample["topk_ids"][i])
        if r.topk_weights is not None:
            assert r.topk_weights.tobytes() == sample["topk_weights"][i].tobytes()
        if r.router_logits is not None:
            assert r.router_logits.tobytes() == sample["router_logits"][i].tobytes()
        if r.logprobs is not None and len(r.logprobs):
            assert r.logprobs.tobytes() == sample["logprobs"][i].tobytes()


@need_bin
def test_swift_export_of_python_file(tmp_path, sample):
    p = tmp_path / "py.rtrace"
    write_sample(p, sample, chunk_bytes=2500)
    npz = tmp_path / "out.npz"
    run("export", "--to", "npz", p, "-o", npz)
    d = np.load(npz)
    assert np.array_equal(d["topk_ids"], sample["topk_ids"])
    assert np.array_equal(d["tokens"], sample["tokens"])
    assert d["topk_weights"].tobytes() == sample["topk_weights"].tobytes()
    assert d["router_logits"].tobytes() == sample["router_logits"].tobytes()
    assert d["logprobs"].tobytes() == sample["logprobs"].tobytes()


def golden_traces():
    return sorted(glob.glob(os.path.join(os.path.dirname(SAMPLES), "**", "*.rtrace"), recursive=True))


@pytest.mark.skipif(not golden_traces(), reason="no Swift-written golden .rtrace files in samples/ yet")
@pytest.mark.parametrize("path", golden_traces(), ids=os.path.basename)
def test_golden_swift_files(path):
    """Swift-written golden files hold exactly the arrays of the .npz beside them (samples/README)."""
    r = rtrace.Reader(path)
    recs = list(r)
    assert r.complete and recs
    hm = r.header["model"]
    npz = os.path.splitext(path)[0] + ".npz"
    if not os.path.exists(npz):
        pytest.skip(f"no expected content {npz}")
    d = np.load(npz)
    ids = d["topk_ids"]
    if ids.shape[2] != len(hm["layer_map"]):
        assert ids.shape[2] == hm["num_layers"]
        ids = ids[:, :, hm["layer_map"]]
    assert len(recs) == len(ids)
    for i, rec in enumerate(recs):
        nr = int(d["n_rows"][i]) if "n_rows" in d else ids.shape[1]
        nt = int(d["n_tokens"][i]) if "n_tokens" in d else d["tokens"].shape[1]
        assert rec.n_rows == nr
        assert np.array_equal(rec.topk_ids, ids[i, :nr])
        assert np.array_equal(rec.tokens, d["tokens"][i, :nt])
        pl = d["prompt_len"]
        assert rec.prompt_len == int(pl if pl.ndim == 0 else pl[i])
        if "start" in d:
            assert rec.start == int(d["start"][i])
        if "uids" in d:
            assert rec.uid == str(d["uids"][i])
        if "groups" in d:
            assert rec.group == (str(d["groups"][i]) or None)
        if "rewards" in d:
            rw = float(d["rewards"][i])
            assert (rec.reward is None) if np.isnan(rw) else rec.reward == rw
        for key, attr in (("topk_weights", "topk_weights"), ("router_logits", "router_logits")):
            if key in d:
                exp = d[key][i, :nr]
                if exp.shape[1] != len(hm["layer_map"]):
                    exp = exp[:, hm["layer_map"]]
                got = getattr(rec, attr)
                assert got is not None and got.dtype == exp.dtype
                assert got.tobytes() == exp.tobytes(), key
        if "logprobs" in d:
            nl = int(d["n_logprobs"][i]) if "n_logprobs" in d else d["logprobs"].shape[1]
            assert rec.logprobs.tobytes() == d["logprobs"][i, :nl].tobytes()
    for rec in recs:
        g = r.get(rec.uid)
        assert g.uid == rec.uid and np.array_equal(g.topk_ids, rec.topk_ids)


@need_bin
def test_swift_engine_importers_match_python_adapters(tmp_path, sample):
    """The same SGLang / vLLM / NeMo RL dumps through `rtrace import --from …` (Swift) and through
    rtrace.adapters + rtrace.Writer (Python) give the same records."""
    import base64
    from rtrace import adapters as A
    geo = ["--num-layers", "6", "--num-experts", "32", "--top-k", "4"]
    ids, toks = sample["topk_ids"], sample["tokens"]

    def both(name, lines, py_records):
        src = tmp_path / f"{name}.jsonl"
        src.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
        run("import", "--from", name, src, *geo, "-o", tmp_path / f"{name}.swift.rtrace")
        with rtrace.Writer(tmp_path / f"{name}.py.rtrace", model=MODEL, engine=ENGINE) as w:
            for d in py_records:
                w.add(**d)
        sw = list(rtrace.Reader(tmp_path / f"{name}.swift.rtrace"))
        py = list(rtrace.Reader(tmp_path / f"{name}.py.rtrace"))
        assert [r.uid for r in sw] == [r.uid for r in py]
        for a, b in zip(sw, py):
            assert np.array_equal(a.topk_ids, b.topk_ids), a.uid
            assert a.tokens.tolist() == b.tokens.tolist() and a.prompt_len == b.prompt_len and a.start == b.start
        return sw

    sg = [{"input_ids": toks[i][:48].tolist(), "output_ids": toks[i][48:].tolist(),
           "meta_info": {"id": f"r{i}", "prompt_tokens": 48, "completion_tokens": len(toks[i]) - 48,
                         "routed_experts": base64.b64encode(ids[i].astype("<i4").tobytes()).decode()}} for i in range(3)]
    assert len(both("sglang", sg, [A.sglang(r, MODEL) for r in sg])) == 3

    pre = ids[0][:48].astype(np.int16)
    pre[:5] = -1                                                   # prefix-cached prompt rows
    vl = [{"request_id": "q", "prompt_token_ids": toks[0][:48].tolist(), "prompt_routed_experts": pre.tolist(),
           "outputs": [{"index": j, "token_ids": toks[j][48:].tolist(), "routed_experts": ids[j][48:].tolist()}
                       for j in range(2)]}]
    got = both("vllm", vl, A.vllm(vl[0], MODEL))
    assert [r.uid for r in got] == ["q/0", "q/1"]

    wires = [f"nrlre1:int16:{ids[i].shape[0]}x6x4:" + base64.b64encode(ids[i].astype("<i2").tobytes()).decode()
             for i in range(2)]
    both("nemo", [{"routed_experts": w, "uid": f"n{i}"} for i, w in enumerate(wires)],
         [A.nemo_rl(w, MODEL, uid=f"n{i}") for i, w in enumerate(wires)])
