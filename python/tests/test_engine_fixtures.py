"""rtrace.adapters against what the engines' own code emits (Tests/fixtures/engines, made by
make_fixtures.py from vLLM, SGLang, NeMo RL and verl releases), checked against each fixture's
ground truth: every id on its (sequence, position, decoder layer, slot), the tokens, the start, and
no row the engine never routed."""
import base64
import glob
import io
import json
import os
import re
from types import SimpleNamespace as NS

import numpy as np
import pytest

import rtrace
from rtrace import adapters as A
from conftest import REPO
from test_cross import need_bin, run

FIXTURES = os.path.join(REPO, "Tests", "fixtures", "engines")
TRUTHS = sorted(glob.glob(os.path.join(FIXTURES, "*.truth.json")))


def load(truth_path):
    t = json.load(open(truth_path))
    return t, os.path.join(FIXTURES, t["fixture"])


def lines(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def as_list(x):
    return x if isinstance(x, list) else [x]


def import_fixture(t, path):
    """The adapters' records for a fixture, in file order; the adapter is chosen by the engine and
    the file's layout, never by the ground truth's content."""
    m, name = t["model"], t["fixture"]
    if t["engine"] == "vllm":
        return [d for o in lines(path) for d in A.vllm(o, m)]
    if t["engine"] == "sglang":
        return [d for o in lines(path) for d in as_list(A.sglang(o, m))]
    if t["engine"] == "nemo-rl" and name.endswith(".jsonl"):
        out = []
        for i, o in enumerate(lines(path)):
            if isinstance(o, str):
                out.append(A.nemo_rl(o, m, uid=f"nemo-{i}"))
            else:
                out.append(A.nemo_rl(o["routed_experts"], m, uid=o["uid"], tokens=o["tokens"],
                                     prompt_len=o["prompt_len"]))
        return out
    if t["engine"] == "nemo-rl":
        z = np.load(path)
        return A.nemo_rl_batch(z["routed_experts"], z["output_ids"], z["unpadded_sequence_lengths"],
                               z["input_lengths"], m)
    if t["engine"] == "verl" and "agent-loop" in name:
        z = np.load(path)
        n = len({k.split("/")[0] for k in z.files})
        keys = ("prompts", "responses", "response_mask", "routed_experts")
        return [A.verl_agent_loop({k: z[f"{i}/{k}"] for k in keys}, m, uid=f"s{i}") for i in range(n)]
    if t["engine"] == "verl":
        z = np.load(path)
        return A.verl(z["routed_experts"], z["attention_mask"], z["input_ids"], z["prompts"].shape[1], m,
                      response_mask=z["response_mask"])
    raise AssertionError(f"no adapter for fixture {name} (engine {t['engine']})")


def check_against_truth(t, recs):
    assert len(recs) == len(t["records"]), f"{t['fixture']}: {len(recs)} records, the truth has {len(t['records'])}"
    nev = {}
    for n in t["never_routed"]:
        nev.setdefault(json.dumps(n["where"], sort_keys=True), []).extend(n["positions"])
    for d, r in zip(recs, t["records"]):
        what = f"{t['fixture']} {r['where']}"
        ids = np.asarray(d["topk_ids"])
        want = np.asarray(r["topk_ids"], dtype=np.int32).reshape(r["rows"], len(t["model"]["layer_map"]),
                                                                  t["model"]["top_k"])
        assert d["start"] == r["start"], what
        assert ids.shape == want.shape, f"{what}: {ids.shape} vs {want.shape}"
        bad = np.argwhere(ids != want)
        if len(bad):
            (row, layer, slot) = bad[0]
            raise AssertionError(f"{what}: row {row} (position {r['start'] + row}), MoE layer "
                                 f"{t['model']['layer_map'][layer]}, slot {slot}: {ids[row, layer, slot]} != "
                                 f"{want[row, layer, slot]}")
        missing = [r["start"] + int(p) for p in np.nonzero((ids == -1).all(axis=2).any(axis=1))[0]]
        assert missing == r["missing_positions"], what
        toks = np.asarray(d["tokens"]).tolist()
        if r["tokens_sent"]:
            assert toks == r["tokens"], what
            assert d["prompt_len"] == r["prompt_len"], what
        else:
            assert toks == [], what
        # no row the engine never routed survives as routing
        for p in nev.get(json.dumps(r["where"], sort_keys=True), []):
            if r["start"] <= p < r["start"] + len(ids):
                assert (ids[p - r["start"]] == -1).all(), f"{what}: never-routed position {p} imported as routing"


def test_every_fixture_has_truth_and_files():
    assert len(TRUTHS) >= 12, f"the engine fixtures are missing from {FIXTURES}"
    engines = set()
    for p in TRUTHS:
        t, path = load(p)
        assert os.path.exists(path), path
        assert t["provenance"]["release"] and t["records"], p
        engines.add(t["engine"])
    assert engines == {"vllm", "sglang", "nemo-rl", "verl"}


@pytest.mark.parametrize("truth", TRUTHS, ids=lambda p: os.path.basename(p).replace(".truth.json", ""))
def test_adapter_matches_engine_truth(truth):
    t, path = load(truth)
    check_against_truth(t, import_fixture(t, path))


def test_writer_roundtrip_of_every_fixture(tmp_path):
    """Everything the adapters produce from the fixtures writes with rtrace.Writer and reads back."""
    model = None
    adds = []
    for p in TRUTHS:
        t, path = load(p)
        model = t["model"]
        for i, d in enumerate(import_fixture(t, path)):
            adds.append(dict(d, uid=f"{t['fixture']}#{i}"))
    out = tmp_path / "engines.rtrace"
    with rtrace.Writer(out, model=model, engine=dict(name="fixtures", role="rollout")) as w:
        for d in adds:
            w.add(**d)
    got = list(rtrace.Reader(out))
    assert len(got) == len(adds)
    for rec, d in zip(got, adds):
        assert rec.uid == d["uid"] and rec.start == d["start"] and rec.prompt_len == d["prompt_len"]
        assert np.array_equal(rec.topk_ids, d["topk_ids"]), rec.uid
        assert rec.tokens.tolist() == np.asarray(d["tokens"]).tolist(), rec.uid
        assert np.array_equal(rec.missing, (np.asarray(d["topk_ids"]) == -1).all(axis=2))


# --- the in-process objects and the refusals ------------------------------------------------------------
def _npy(s):
    return np.load(io.BytesIO(base64.b64decode(s)))


def test_vllm_request_output_objects():
    """vLLM's in-process RequestOutput / CompletionOutput objects (numpy arrays) import like their JSON."""
    for version in ("0.33.0", "0.21.0"):
        t, path = load(os.path.join(FIXTURES, f"vllm-{version}-request-outputs.truth.json"))
        recs = []
        for o in lines(path):
            pre = o.get("prompt_routed_experts")
            obj = NS(request_id=o["request_id"], prompt_token_ids=o["prompt_token_ids"],
                     num_cached_tokens=o["num_cached_tokens"],
                     prompt_routed_experts=np.asarray(pre, np.int16) if pre is not None else None,
                     outputs=[NS(index=c["index"], token_ids=tuple(c["token_ids"]), logprobs=None,
                                 routed_experts=_npy(c["routed_experts"]) if isinstance(c["routed_experts"], str)
                                 else np.asarray(c["routed_experts"], np.int16)) for c in o["outputs"]])
            recs += A.vllm(obj, t["model"])
        check_against_truth(t, recs)
        assert [d["uid"] for d in recs] == [r["uid"] for r in t["records"]]


def test_vllm_refusals_say_what_was_found():
    t, path = load(os.path.join(FIXTURES, "vllm-0.33.0-openai-completions.truth.json"))
    resp = lines(path)[2]                                       # cmpl-C: rows start at 14
    for c in resp["choices"]:
        c.pop("prompt_token_ids")
    with pytest.raises(A.AdapterError,
                       match="start cannot be told.*request return_token_ids, or pass tokens= or start="):
        A.vllm(resp, t["model"])
    d = A.vllm(resp, t["model"], start=14)[0]                   # the caller knows routed_experts_prompt_start
    assert d["start"] == 14 and np.array_equal(d["topk_ids"], np.asarray(t["records"][-1]["topk_ids"]))
    sg = lines(os.path.join(FIXTURES, "sglang-0.5.23-generate.jsonl"))[0]
    with pytest.raises(A.AdapterError, match=r"no completions \('outputs'; keys: meta_info, output_ids, "
                                             r"prompt_token_ids, text\); vLLM >= 0.22 sends .*vLLM 0.21 sent"):
        A.vllm(sg, t["model"])
    ro = lines(os.path.join(FIXTURES, "vllm-0.33.0-request-outputs.jsonl"))[1]
    ro["outputs"][0]["routed_experts"] = None
    with pytest.raises(A.AdapterError, match="cmpl-B/0: no routed_experts .*preempted"):
        A.vllm(ro, t["model"])
    ro = lines(os.path.join(FIXTURES, "vllm-0.21.0-request-outputs.jsonl"))[0]
    ro["num_cached_tokens"] = 13                                # row 12 was routed: the count is wrong
    with pytest.raises(A.AdapterError, match="row 12 is routed though num_cached_tokens = 13"):
        A.vllm(ro, t["model"])


def test_sglang_refusals_and_arrays():
    t, path = load(os.path.join(FIXTURES, "sglang-0.5.23-generate.truth.json"))
    arr = lines(path)[1]                                        # n = 2 as a JSON array
    recs = A.sglang(arr, t["model"], uid="req")
    assert [d["uid"] for d in recs] == ["req/0", "req/1"]
    vl = lines(os.path.join(FIXTURES, "vllm-0.33.0-openai-completions.jsonl"))[0]
    with pytest.raises(A.AdapterError, match=r"has no sglext.routed_experts \(response keys: choices, created, id, "
                                             r"model, object, usage; sglext keys: none\); SGLang 0.5.x sends"):
        A.sglang(vl, t["model"])
    one = lines(path)[0]
    one["meta_info"]["routed_experts"] = base64.b64encode(b"\0" * 20).decode()
    with pytest.raises(A.AdapterError,
                       match="holds 5 values, not a whole number of rows of num_hidden_layers × top_k = 4 × 2"):
        A.sglang(one, t["model"])


def test_nemo_rl_batch_refuses_a_tail_that_is_not_the_filler():
    t, path = load(os.path.join(FIXTURES, "nemo-rl-batch.truth.json"))
    z = dict(np.load(path))
    T = int(z["unpadded_sequence_lengths"][1])
    z["routed_experts"][1, T + 1, 2] = [5, 6]
    with pytest.raises(A.AdapterError, match=f"batch row 1: row {T + 1} .* is not the filler arange"):
        A.nemo_rl_batch(z["routed_experts"], z["output_ids"], z["unpadded_sequence_lengths"], z["input_lengths"],
                        t["model"])


def test_verl_zero_fill_is_never_imported():
    t, path = load(os.path.join(FIXTURES, "verl-0.9.1-batch.truth.json"))
    z = np.load(path)
    args = (z["routed_experts"], z["attention_mask"], z["input_ids"], z["prompts"].shape[1], t["model"])
    # include_last: the last token's row is verl's zero fill, never imported (it was read as [0, 0] before)
    check_against_truth(t, A.verl(*args, include_last=True, response_mask=z["response_mask"]))
    # without response_mask the tool agent's zero rows (tool tokens after the last generation) are refused
    with pytest.raises(A.AdapterError, match="batch row 2: position 18 is all zero.*pass response_mask"):
        A.verl(*args)
    single = A.verl(*[a[:2] if isinstance(a, np.ndarray) else a for a in args])   # single-turn rows: T - 1
    check_against_truth(dict(t, records=t["records"][:2], never_routed=t["never_routed"][:2]), single)
    top1 = dict(t["model"], top_k=1)
    with pytest.raises(A.AdapterError, match="include_last with top-1"):
        A.verl(z["routed_experts"][..., :1], z["attention_mask"], z["input_ids"], z["prompts"].shape[1], top1,
               include_last=True)
    t, path = load(os.path.join(FIXTURES, "verl-0.9.1-agent-loop-outputs.truth.json"))
    z = np.load(path)
    s = {k: z[f"2/{k}"].copy() for k in ("prompts", "responses", "response_mask", "routed_experts")}
    s["routed_experts"][19] = [[0, 0], [1, 2], [3, 4], [5, 6]]
    with pytest.raises(A.AdapterError, match=r"row 19, after the last generated token \(18\), is not zero"):
        A.verl_agent_loop(s, t["model"], uid="s2")


def _snippets(path, heading):
    text = open(path, encoding="utf-8").read()
    sec = text[text.index(heading):]
    sec = sec[:sec.index("\n## ", 1)] if "\n## " in sec[1:] else sec
    return [b for b in sec.split("```python\n")[1:] for b in [b[:b.index("```")]]]


@pytest.mark.parametrize("readme,heading", [("python/README.md", "## Rollout worker"),
                                            ("README.md", "## From Python engines")])
def test_readme_rollout_snippets_run(tmp_path, monkeypatch, readme, heading):
    """The READMEs' rollout-worker snippets, executed as written on what SGLang and vLLM send (the
    fixtures; the model dict swapped for the fixtures' geometry; the vLLM snippet continues the
    SGLang one's imports), give the ground truth's records."""
    blocks = [b for b in _snippets(os.path.join(REPO, readme), heading) if "adapters" in b or "A." in b]
    assert len(blocks) >= 2, f"{readme}: no SGLang and vLLM snippets under {heading}"
    sg_t, sg_path = load(os.path.join(FIXTURES, "sglang-0.5.23-generate.truth.json"))
    vl_t, vl_path = load(os.path.join(FIXTURES, "vllm-0.33.0-request-outputs.truth.json"))
    outs = [NS(request_id=o["request_id"], prompt_token_ids=o["prompt_token_ids"],
               num_cached_tokens=o["num_cached_tokens"],
               outputs=[NS(index=c["index"], token_ids=c["token_ids"], logprobs=None,
                           routed_experts=_npy(c["routed_experts"])) for c in o["outputs"]]) for o in lines(vl_path)]
    monkeypatch.chdir(tmp_path)
    g = dict(rtrace=rtrace, A=A, responses=lines(sg_path), llm=NS(generate=lambda prompts, params: outs),
             prompts=None, params=None, sampling_params=None, step=0)
    for code, t in zip(blocks[:2], (sg_t, vl_t)):
        code = re.sub(r"model = dict\([^)]*\)\n", "model = fixture_model\n", code)
        exec(compile(code, readme, "exec"), dict(g, fixture_model=t["model"], model=t["model"]))
        recs = list(rtrace.Reader(tmp_path / "rollout.rtrace"))
        assert [r.uid for r in recs] == [r["uid"] for r in t["records"]], readme
        for rec, r in zip(recs, t["records"]):
            assert rec.start == r["start"] and np.array_equal(rec.topk_ids, np.asarray(r["topk_ids"]))
            assert rec.tokens.tolist() == (r["tokens"] if r["tokens_sent"] else [])


@need_bin
def test_rtrace_diff_of_nemo_rl_import_against_truth_is_zero_flips(tmp_path):
    """NeMo RL's wire strings through the adapter, diffed by the CLI against a training trace of the
    same sequences that keeps its last row: 0 flips (the filler row, imported, flipped 1 in 2 layers)."""
    t, path = load(os.path.join(FIXTURES, "nemo-rl-wire.truth.json"))
    m = t["model"]
    recs = [d for d in import_fixture(t, path) if len(d["tokens"])]
    roll, train = tmp_path / "rollout.rtrace", tmp_path / "train.rtrace"
    with rtrace.Writer(roll, model=m, engine=dict(name="nemo-rl", role="rollout")) as w:
        for d in recs:
            w.add(**d)
    with rtrace.Writer(train, model=m, engine=dict(name="megatron", role="train")) as w:
        for r in t["records"][:len(recs)]:
            last = np.array([[[3, 7]] * len(m["layer_map"])])          # the training forward routes the last token too
            w.add(uid=r["uid"], tokens=r["tokens"], prompt_len=r["prompt_len"],
                  topk_ids=np.concatenate([np.asarray(r["topk_ids"]), last]))
    rep = json.loads(run("diff", roll, train, "--json"))
    assert rep["matched"]["sequences"] == len(recs)
    assert rep["matched"]["rows"] == sum(r["rows"] for r in t["records"][:len(recs)])
    assert rep["matched"]["rows_only_b"] == len(recs) and rep["matched"]["rows_only_a"] == 0
    assert rep["flip_rate"] == 0
