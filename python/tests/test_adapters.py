import base64
import io

import numpy as np
import pytest

import rtrace
from rtrace import adapters as A
from conftest import ENGINE, MODEL


def npy_b64(a):
    b = io.BytesIO()
    np.save(b, a)
    return base64.b64encode(b.getvalue()).decode()


def roundtrip(tmp_path, model, adds, **kw):
    p = tmp_path / "ad.rtrace"
    with rtrace.Writer(p, model=model, engine=ENGINE, **kw) as w:
        for d in adds:
            w.add(**d)
    return list(rtrace.Reader(p))


def test_sglang(tmp_path, sample):
    ids = sample["topk_ids"][0]                                 # [127, 6, 4] = [seq_len-1, L, k]
    toks = sample["tokens"][0].tolist()
    resp = {"output_ids": toks[48:], "input_ids": toks[:48],
            "meta_info": {"id": "r0", "prompt_tokens": 48, "completion_tokens": 80,
                          "routed_experts": base64.b64encode(ids.astype("<i4").tobytes()).decode()}}
    d = A.sglang(resp, MODEL)
    assert d["uid"] == "r0" and d["prompt_len"] == 48 and d["start"] == 0
    out = roundtrip(tmp_path, MODEL, [d])
    assert np.array_equal(out[0].topk_ids, ids) and out[0].tokens.tolist() == toks
    # multi-turn continuation in int16, rows start at 100
    cont = {"meta_info": {"routed_experts": base64.b64encode(ids[100:].astype("<i2").tobytes()).decode(),
                          "routed_experts_dtype": "torch.int16", "routed_experts_start_len": 100}}
    d = A.sglang(cont, MODEL, uid="turn2", tokens=toks, prompt_len=48)
    assert d["start"] == 100 and np.array_equal(d["topk_ids"], ids[100:])
    # dense layers included: 8 decoder layers, MoE at 1..6
    m8 = dict(num_layers=8, num_experts=32, top_k=4, layer_map=[1, 2, 3, 4, 5, 6])
    full = np.zeros((127, 8, 4), dtype=np.int32)
    full[:, 0] = full[:, 7] = [0, 1, 2, 3]
    full[:, 1:7] = ids
    d = A.sglang({"meta_info": {"routed_experts": base64.b64encode(full.tobytes()).decode()}}, m8,
                 uid="x", tokens=toks)
    assert np.array_equal(d["topk_ids"], ids)
    bad = ids.copy(); bad[3, 2, 1] = 32
    with pytest.raises(A.AdapterError, match=r"row 3, layer 2, slot 1: expert id 32 outside 0..31"):
        A.sglang({"meta_info": {"routed_experts": base64.b64encode(bad.astype("<i4").tobytes()).decode()}},
                 MODEL, uid="x", tokens=toks)
    bad = ids.copy(); bad[5, 0, 3] = bad[5, 0, 0]
    with pytest.raises(A.AdapterError, match="row 5, layer 0 names an expert twice"):
        A.sglang({"meta_info": {"routed_experts": base64.b64encode(bad.astype("<i4").tobytes()).decode()}},
                 MODEL, uid="x", tokens=toks)
    # SGLang never echoes routed_experts_start_len: the start follows from the payload's rows
    d = A.sglang({"meta_info": {"routed_experts": base64.b64encode(ids[1:].astype("<i4").tobytes()).decode()}},
                 MODEL, uid="x", tokens=toks)
    assert d["start"] == 1 and np.array_equal(d["topk_ids"], ids[1:])
    full_rows = np.concatenate([ids, ids[-1:]])                 # 128 rows for 128 tokens: one too many
    with pytest.raises(A.AdapterError, match="128 routed rows for a sequence of 128 tokens"):
        A.sglang({"meta_info": {"routed_experts": base64.b64encode(full_rows.astype("<i4").tobytes()).decode()}},
                 MODEL, uid="x", tokens=toks)
    with pytest.raises(A.AdapterError, match="do not end at the last token but one"):
        A.sglang({"meta_info": {"routed_experts": base64.b64encode(ids[1:].astype("<i4").tobytes()).decode()}},
                 MODEL, uid="x", tokens=toks, start=0)
    with pytest.raises(A.AdapterError, match=r"meta_info has no routed_experts \(meta_info keys: id\); SGLang 0.5.x"):
        A.sglang({"meta_info": {"id": "r"}}, MODEL)


def test_sglang_chat_meta_info_per_choice(sample):
    """/v1/chat/completions with return_meta_info: each choice carries its own meta_info.routed_experts."""
    ids, toks = sample["topk_ids"][:2], sample["tokens"][:2]
    resp = {"id": "c", "choices": [{"index": i, "token_ids": toks[i][48:].tolist(),
                                    "meta_info": {"routed_experts": base64.b64encode(ids[i].astype("<i4").tobytes()).decode()}}
                                   for i in range(2)], "prompt_token_ids": toks[0][:48].tolist()}
    recs = A.sglang(resp, MODEL)
    assert [d["uid"] for d in recs] == ["c/0", "c/1"]
    for i, d in enumerate(recs):
        assert np.array_equal(d["topk_ids"], ids[i]) and d["start"] == 0 and d["prompt_len"] == 48
        assert list(d["tokens"]) == toks[0][:48].tolist() + toks[i][48:].tolist()


@pytest.mark.parametrize("as_npy", [False, True])
def test_vllm(tmp_path, sample, as_npy):
    ids = sample["topk_ids"][:3]
    toks = sample["tokens"][:3]
    pre = ids[0, :48].astype(np.int16).copy()
    pre[:16] = -1                                              # prefix-cached rows
    enc = (lambda a: npy_b64(a)) if as_npy else (lambda a: a.tolist())
    req = {"request_id": "req7", "prompt_token_ids": toks[0, :48].tolist(), "prompt_routed_experts": enc(pre),
           "outputs": [{"token_ids": toks[i, 48:].tolist(), "routed_experts": enc(ids[i, 48:].astype(np.int16))}
                       for i in range(3)]}
    adds = A.vllm(req, MODEL)
    assert [d["uid"] for d in adds] == ["req7/0", "req7/1", "req7/2"]
    out = roundtrip(tmp_path, MODEL, adds)
    for i, o in enumerate(out):
        assert o.group == "req7" and o.prompt_len == 48
        assert o.topk_ids.shape == (48 + 79, 6, 4)
        assert (o.topk_ids[:16] == -1).all() and o.missing[:16].all() and not o.missing[16:].any()
        assert np.array_equal(o.topk_ids[16:48], ids[0, 16:48])
        assert np.array_equal(o.topk_ids[48:], ids[i, 48:])
    req["prompt_routed_experts"] = enc(np.full((47, 6, 4), -1, np.int16))
    with pytest.raises(A.AdapterError, match="47 rows for 48 prompt tokens"):
        A.vllm(req, MODEL)


def test_nemo_rl(tmp_path, sample):
    ids = sample["topk_ids"][2]                                 # [127, 6, 4]: NeMo RL adds the filler row 127
    toks = sample["tokens"][2]
    wired = np.concatenate([ids, np.broadcast_to(np.arange(4), (1, 6, 4))])
    for dt in ("int8", "int16", "int32"):
        wire = f"nrlre1:{dt}:128x6x4:" + base64.b64encode(wired.astype("<" + np.dtype(dt).str[1:]).tobytes()).decode()
        assert np.array_equal(A.parse_nemo_rl(wire), wired)
        out = roundtrip(tmp_path, MODEL, [A.nemo_rl(wire, MODEL, uid="n", tokens=toks, prompt_len=48)])
        assert np.array_equal(out[0].topk_ids, ids) and out[0].topk_ids.shape[0] == 127
    # a last row NeMo RL's gym environment replaced with the next turn's prefill route is routing: kept
    wire = "nrlre1:int16:127x6x4:" + base64.b64encode(ids.astype("<i2").tobytes()).decode()
    assert np.array_equal(A.nemo_rl(wire, MODEL, uid="n")["topk_ids"], ids)
    with pytest.raises(A.AdapterError, match="127 rows for 128 tokens"):
        A.nemo_rl(wire, MODEL, uid="n", tokens=toks)
    with pytest.raises(A.AdapterError, match="needs 3048"):
        A.nemo_rl("nrlre1:int8:127x6x4:" + base64.b64encode(b"\0" * 10).decode(), MODEL, uid="n")
    with pytest.raises(A.AdapterError, match="nrlre1"):
        A.parse_nemo_rl("nrlre2:int8:1x1x1:AA==")
    with pytest.raises(A.AdapterError, match="top_k axis is 3"):
        A.nemo_rl("nrlre1:int8:1x6x3:" + base64.b64encode(bytes(range(18))).decode(), MODEL, uid="n")


def test_verl(tmp_path, sample):
    B, P, Rw = 3, 50, 85                                       # prompt width 50 (left pad 2), response width 85
    S = P + Rw
    re_ = np.zeros((B, S, 6, 4), dtype=np.int64)
    ids_in = np.zeros((B, S), dtype=np.int64)
    mask = np.zeros((B, S), dtype=np.int64)
    resp_lens = [80, 60, 75]
    for b in range(B):
        T = 48 + resp_lens[b]
        pos = np.arange(P - 48, P - 48 + T)
        mask[b, pos] = 1
        ids_in[b, pos] = sample["tokens"][b, :T]
        re_[b, pos[:-1]] = sample["topk_ids"][b, :T - 1]
        re_[b, pos[-1]] = [0, 1, 2, 3]
    adds = A.verl(re_, mask, ids_in, P, MODEL, uids=["a", "b", "c"])
    out = roundtrip(tmp_path, MODEL, adds)
    for b, o in enumerate(out):
        T = 48 + resp_lens[b]
        assert o.prompt_len == 48 and o.tokens.tolist() == sample["tokens"][b, :T].tolist()
        assert np.array_equal(o.topk_ids, sample["topk_ids"][b, :T - 1])
    with pytest.raises(A.AdapterError, match="attention_mask"):
        A.verl(re_, mask[:, 1:], ids_in, P, MODEL)
    re_[1, 10, 2] = [5, 5, 6, 7]
    with pytest.raises(A.AdapterError, match="verl batch row 1: row 8, layer 2 names an expert twice"):
        A.verl(re_, mask, ids_in, P, MODEL)


def test_layer_axis_errors():
    with pytest.raises(A.AdapterError, match="layer axis is 5, expected 6 MoE layers"):
        A.validate_ids(np.zeros((2, 5, 4), np.int32), MODEL)
    with pytest.raises(A.AdapterError, match="partly -1"):
        A.validate_ids(np.array([[[0, 1, 2, -1]] * 6]), MODEL)
