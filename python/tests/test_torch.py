"""rtrace.torch.record_routing against tiny, randomly initialised transformers MoE models.

Each architecture's routing is recomputed independently of the recorder: router logits from the
MoE block's input (captured by a separate pre-hook on the block) with the architecture's documented
rule in numpy float64, and the ids/weights the experts actually received (a pre-hook on
``block.experts``). make deps installs torch and transformers into .venv; without them these tests skip, or
fail under RTRACE_NO_SKIP=1 (make test)."""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from conftest import require_module

torch = require_module("torch", "rtrace.torch is not tested without it")

import rtrace  # noqa: E402
import rtrace.torch as RT  # noqa: E402
from rtrace.adapters import AdapterError  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ENGINE = dict(name="transformers", role="train")


def _transformers():
    return require_module("transformers", "the MoE models rtrace.torch hooks come from it")


# tiny models ---------------------------------------------------------------------------------
COMMON = dict(hidden_size=32, num_attention_heads=2, vocab_size=100, pad_token_id=0, bos_token_id=1,
              eos_token_id=2, max_position_embeddings=64)

ARCHS = {
    # name: (config class, model class, config kwargs, expected layer_map, routing rule)
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(intermediate_size=32, moe_intermediate_size=16, num_hidden_layers=3, num_key_value_heads=1,
                       head_dim=16, num_experts=8, num_experts_per_tok=2, mlp_only_layers=[0], norm_topk_prob=True),
                  [1, 2], "softmax"),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM",
              dict(intermediate_size=16, num_hidden_layers=2, num_key_value_heads=1, num_experts=8,
                   num_experts_per_tok=2),
              [0, 1], "softmax"),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                dict(intermediate_size=16, num_hidden_layers=2, num_key_value_heads=1, head_dim=16,
                     num_local_experts=6, num_experts_per_tok=2),
                [0, 1], "softmax"),
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM",
                    dict(intermediate_size=32, moe_intermediate_size=16, num_hidden_layers=3, num_key_value_heads=2,
                         n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4, n_group=4, topk_group=2,
                         first_k_dense_replace=1, norm_topk_prob=True, routed_scaling_factor=2.5, q_lora_rank=16,
                         kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8),
                    [1, 2], "sigmoid_group"),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  dict(intermediate_size=32, moe_intermediate_size=16, shared_expert_intermediate_size=16,
                       num_hidden_layers=3, num_key_value_heads=1, num_experts=8, num_experts_per_tok=2,
                       decoder_sparse_step=2, mlp_only_layers=[]),
                  [1], "softmax"),
}


def tiny(arch, seed=0):
    T = _transformers()
    cfg_cls, model_cls, kw, layer_map, rule = ARCHS[arch]
    cfg = getattr(T, cfg_cls)(**COMMON, **kw)
    torch.manual_seed(seed)
    model = getattr(T, model_cls)(cfg).eval()
    # routers with well separated scores (the default init std 0.02 makes near-ties likely)
    with torch.no_grad():
        for _, block, gate in RT.find_routers(model):
            gate.weight.normal_(0.0, 0.5)
            if hasattr(gate, "e_score_correction_bias"):
                gate.e_score_correction_bias.normal_(0.0, 0.2)
    return model, layer_map, rule


# independent reference -----------------------------------------------------------------------
def ref_routing(rule, gate, block, cfg, h):
    """(logits, ids, weights) in float64 from the block input h [N, H], by the documented rule."""
    W = gate.weight.detach().double().numpy()
    lg = h.astype(np.float64) @ W.T
    k = cfg.num_experts_per_tok
    if rule == "softmax":      # softmax -> top-k (descending) -> renormalise when norm_topk_prob (Mixtral: always)
        p = np.exp(lg - lg.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        ids = np.argsort(-p, axis=-1, kind="stable")[:, :k]
        w = np.take_along_axis(p, ids, -1)
        if getattr(cfg, "norm_topk_prob", None) or cfg.model_type == "mixtral":
            w = w / w.sum(-1, keepdims=True)
        return lg, ids, w
    # DeepSeek-V3: sigmoid scores, + correction bias for the choice only; groups ranked by the sum
    # of their top-2 biased scores, top-k over the topk_group best groups; weights = unbiased
    # scores of the chosen, renormalised (norm_topk_prob), times routed_scaling_factor
    s = 1 / (1 + np.exp(-lg))
    sc = s + gate.e_score_correction_bias.detach().double().numpy()
    N, E = sc.shape
    G, TG = cfg.n_group, cfg.topk_group
    gscore = np.sort(sc.reshape(N, G, E // G), -1)[..., -2:].sum(-1)
    keep = np.zeros((N, G), bool)
    np.put_along_axis(keep, np.argsort(-gscore, -1, kind="stable")[:, :TG], True, -1)
    sc = np.where(np.repeat(keep, E // G, axis=1), sc, -np.inf)
    ids = np.argsort(-sc, -1, kind="stable")[:, :k]
    w = np.take_along_axis(s, ids, -1)
    if cfg.norm_topk_prob:
        w = w / (w.sum(-1, keepdims=True) + 1e-20)
    return lg, ids, w * cfg.routed_scaling_factor


class Probe:
    """Separate hooks (not the recorder's): each MoE block's input and what its experts received."""

    def __init__(self, model):
        self.inp, self.exp, self.handles = {}, {}, []
        for li, block, _ in RT.find_routers(model):
            self.handles.append(block.register_forward_pre_hook(self._blk(li)))
            self.handles.append(block.experts.register_forward_pre_hook(self._exp(li), with_kwargs=True))

    def _blk(self, li):
        def f(mod, args):
            self.inp[li] = args[0].detach().reshape(-1, args[0].shape[-1]).float().numpy().copy()
        return f

    def _exp(self, li):
        def f(mod, args, kwargs):
            a = list(args) + [kwargs.get("top_k_index"), kwargs.get("top_k_weights")][len(args) - 1:]
            self.exp[li] = (a[1].detach().clone(), a[2].detach().clone())
        return f

    def close(self):
        for h in self.handles:
            h.remove()


def batch(B, S, lengths, side, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (B, S), generator=g)
    mask = torch.zeros(B, S, dtype=torch.long)
    for b, n in enumerate(lengths):
        if side == "right":
            mask[b, :n] = 1
        else:
            mask[b, S - n:] = 1
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


# the architectures ---------------------------------------------------------------------------
@pytest.mark.parametrize("arch", list(ARCHS))
def test_architecture(arch, tmp_path):
    model, layer_map, rule = tiny(arch)
    cfg = model.config
    geo = RT.geometry(model)
    E = geo["num_experts"]
    assert geo["layer_map"] == layer_map                      # dense layers excluded
    assert geo["num_layers"] == cfg.num_hidden_layers and geo["top_k"] == cfg.num_experts_per_tok
    routers = {li: (block, gate) for li, block, gate in RT.find_routers(model)}

    forwards = [  # (batch, uids or None, prompt_lens or None)
        (batch(2, 7, [7, 4], "right", 1), ["r0", "r1"], [3, 2]),
        (batch(3, 6, [5, 2, 6], "left", 2), None, None),
    ]
    plain = [model(input_ids=i, attention_mask=m).logits for (i, m), _, _ in forwards]

    p = tmp_path / f"{arch}.rtrace"
    probe = Probe(model)
    seen = []
    with rtrace.Writer(p, model=geo, engine=ENGINE, topk_weights_dtype="f32", router_logits_dtype="f32") as w:
        with RT.record_routing(model, w) as rec:
            for (ids, mask), uids, pls in forwards:
                if uids:
                    rec.set_batch(uids=uids, prompt_lens=pls)
                out = model(input_ids=ids, attention_mask=mask).logits
                seen.append((out, dict(probe.inp), dict(probe.exp)))
    probe.close()
    # the recorder changes nothing
    for a, (b, _, _) in zip(plain, seen):
        assert torch.equal(a, b)

    r = rtrace.Reader(p)
    assert r.header["model"]["layer_map"] == layer_map
    recs = list(r)
    assert [x.uid for x in recs] == ["r0", "r1", "step1-0", "step1-1", "step1-2"]
    assert [x.prompt_len for x in recs] == [3, 2, 0, 0, 0]
    k = cfg.num_experts_per_tok
    it = iter(recs)
    for ((ids, mask), _, _), (_, inp, exp) in zip(forwards, seen):
        B, S = ids.shape
        ref = {li: ref_routing(rule, routers[li][1], routers[li][0], cfg, inp[li]) for li in layer_map}
        for b in range(B):
            x = next(it)
            pos = np.flatnonzero(mask[b].numpy())
            assert np.array_equal(x.tokens, ids[b, pos].numpy())                 # padding dropped
            assert x.start == 0 and x.topk_ids.shape == (len(pos) - 1, len(layer_map), k)   # T - 1 rows
            flat = b * S + pos[:-1]                                               # row p = pass over token p
            for j, li in enumerate(layer_map):
                got_ids, got_w, got_lg = x.topk_ids[:, j], x.topk_weights[:, j], x.router_logits[:, j]
                # what the experts were given: same ids, same slot order, bit-identical weights
                e_ids, e_w = exp[li]
                assert np.array_equal(got_ids, e_ids[flat].numpy())
                assert np.array_equal(got_w, e_w[flat].float().numpy())
                # the architecture's rule, recomputed from the block input
                lg, rid, rw = (a[flat] for a in ref[li])
                np.testing.assert_allclose(got_lg, lg, rtol=1e-4, atol=1e-4)
                if rule == "softmax":
                    assert np.array_equal(got_ids, rid)                          # exact, slot order
                    np.testing.assert_allclose(got_w, rw, rtol=1e-5, atol=1e-6)
                else:  # top-k with sorted=False: the router's slot order is the experts' (checked above)
                    assert np.array_equal(np.sort(got_ids, -1), np.sort(rid, -1))
                    o = np.argsort(rid, -1)
                    back = np.take_along_axis(np.take_along_axis(rw, o, -1),
                                              np.argsort(np.argsort(got_ids, -1), -1), -1)
                    np.testing.assert_allclose(got_w, back, rtol=1e-5, atol=1e-6)
                assert (got_ids >= 0).all() and (got_ids < E).all()
                assert all(len(set(row)) == k for row in got_ids.tolist())
    assert next(it, None) is None


def test_include_last_and_inputs_embeds(tmp_path):
    model, layer_map, _ = tiny("qwen3_moe")
    ids, mask = batch(2, 5, [5, 3], "left", 3)
    p = tmp_path / "t.rtrace"
    with rtrace.Writer(p, model=RT.geometry(model), engine=ENGINE) as w:
        with RT.record_routing(model, w, include_last=True) as rec:
            model(input_ids=ids, attention_mask=mask)
            rec.set_batch(uids=["e0", "e1"])
            model(inputs_embeds=model.get_input_embeddings()(ids), attention_mask=mask)
    a, b, c, d = rtrace.Reader(p)
    assert a.topk_ids.shape[0] == 5 and b.topk_ids.shape[0] == 3           # a row for the last token too
    assert (c.uid, len(c.tokens)) == ("e0", 0) and np.array_equal(c.topk_ids, a.topk_ids)
    assert np.array_equal(d.topk_ids, b.topk_ids)


def test_bf16_model_weights_bit_exact(tmp_path):
    model, layer_map, _ = tiny("qwen3_moe")
    model = model.to(torch.bfloat16)
    ids, mask = batch(2, 6, [6, 4], "right", 4)
    probe = Probe(model)
    p = tmp_path / "t.rtrace"
    with rtrace.Writer(p, model=RT.geometry(model), engine=ENGINE, topk_weights_dtype="bf16",
                       router_logits_dtype="bf16") as w:
        with RT.record_routing(model, w):
            model(input_ids=ids, attention_mask=mask)
    probe.close()
    x = next(iter(rtrace.Reader(p)))
    e_ids, e_w = probe.exp[layer_map[0]]
    assert e_w.dtype == torch.bfloat16 and x.topk_weights.dtype == np.uint16
    assert np.array_equal(x.topk_weights[:, 0], e_w[:5].view(torch.int16).numpy().view(np.uint16))
    assert np.array_equal(x.topk_ids[:, 0], e_ids[:5].numpy())


def test_training_step_gradient_checkpointing_and_router_logits(tmp_path):
    """A trainer's step: train mode, labels, output_router_logits (aux loss), gradient checkpointing
    (the recomputation in backward must not record again)."""
    model, layer_map, _ = tiny("mixtral")
    model.train()
    calls = []
    RT.find_routers(model)[0][2].register_forward_hook(lambda *a: calls.append(1))
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    ids, mask = batch(2, 6, [6, 5], "right", 5)
    p = tmp_path / "t.rtrace"
    with rtrace.Writer(p, model=RT.geometry(model), engine=ENGINE, router_logits_dtype="f32") as w:
        with RT.record_routing(model, w) as rec:
            for step in range(2):
                rec.set_batch(uids=[f"s{step}a", f"s{step}b"], prompt_lens=[2, 2])
                out = model(input_ids=ids, attention_mask=mask, labels=ids, output_router_logits=True)
                out.loss.backward()
    assert len(calls) == 4                   # 2 forwards + 2 recomputations in backward
    recs = list(rtrace.Reader(p))
    assert [x.uid for x in recs] == ["s0a", "s0b", "s1a", "s1b"]
    for j in range(len(layer_map)):          # transformers' own router_logits output agrees
        np.testing.assert_array_equal(recs[2].router_logits[:, j], out.router_logits[j][:5].detach().numpy())


def test_readme_snippet_runs(tmp_path, monkeypatch):
    """python/README.md's trainer snippet, executed as written."""
    text = open(os.path.join(HERE, "..", "README.md"), encoding="utf-8").read()
    m = re.search(r"## Trainer.*?```python\n(.*?)```", text, re.S)
    assert m, "python/README.md has no trainer snippet"
    code = m.group(1)
    assert len(code.strip().splitlines()) <= 5
    hf_model, _, _ = tiny("qwen3_moe")
    input_ids, attention_mask = batch(2, 6, [6, 4], "left", 6)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), dict(hf_model=hf_model, input_ids=input_ids,
                                                 attention_mask=attention_mask, batch_uids=["u0", "u1"],
                                                 prompt_lens=[2, 1]))
    recs = list(rtrace.Reader(tmp_path / "train.rtrace"))
    assert [(x.uid, x.prompt_len, x.n_rows) for x in recs] == [("u0", 2, 5), ("u1", 1, 3)]


def _cli():
    for b in (os.environ.get("RTRACE_BIN"), shutil.which("rtrace")):
        if b and os.path.exists(b):
            return b
    pytest.skip("no Swift rtrace binary (RTRACE_BIN)")


def test_swift_check_accepts(tmp_path):
    model, _, _ = tiny("deepseek_v3")
    ids, mask = batch(3, 8, [8, 3, 6], "left", 7)
    p = tmp_path / "t.rtrace"
    with rtrace.Writer(p, model=RT.geometry(model), engine=ENGINE, topk_weights_dtype="bf16") as w:
        with RT.record_routing(model, w):
            model(input_ids=ids, attention_mask=mask)
    res = subprocess.run([_cli(), "check", str(p)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


# validation ----------------------------------------------------------------------------------
def _writer(tmp_path, **model):
    geo = dict(num_layers=3, num_experts=8, top_k=2, layer_map=[1, 2])
    geo.update(model)
    return rtrace.Writer(tmp_path / "v.rtrace", model=geo, engine=ENGINE, topk_weights_dtype="f32")


@pytest.mark.parametrize("geo, msg", [
    (dict(num_experts=16), "layer 1: Qwen3MoeTopKRouter routes over 8 experts, the writer's model says num_experts=16"),
    (dict(top_k=4), "layer 1: Qwen3MoeTopKRouter picks top-2, the writer's model says top_k=4"),
    (dict(layer_map=[0, 1, 2]), "the model's MoE layers are [1, 2], the writer's layer_map is [0, 1, 2]"),
    (dict(num_layers=4), "the model has 3 decoder layers, the writer's model says num_layers=4"),
])
def test_geometry_mismatch(tmp_path, geo, msg):
    model, _, _ = tiny("qwen3_moe")
    with _writer(tmp_path, **geo) as w:
        with pytest.raises(AdapterError) as e:
            with RT.record_routing(model, w):
                pass
    assert str(e.value) == msg


def test_logits_column_mismatch(tmp_path):
    model, _, _ = tiny("qwen3_moe")
    with _writer(tmp_path) as w:
        with pytest.raises(AdapterError, match="record_logits=True but the writer has no router_logits column"):
            RT.RoutingRecorder(model, w, record_logits=True)


def test_batch_errors(tmp_path):
    model, _, _ = tiny("qwen3_moe")
    ids, mask = batch(2, 5, [5, 3], "right", 8)
    with _writer(tmp_path) as w:
        with RT.record_routing(model, w) as rec:
            rec.set_batch(uids=["a", "b", "c"])
            with pytest.raises(AdapterError, match=r"^set_batch: 3 uids for a batch of 2 sequences$"):
                model(input_ids=ids, attention_mask=mask)
            rec.set_batch(uids=["a", "b"], prompt_lens=[2, 4])
            with pytest.raises(AdapterError, match=r"^record 'b': prompt_len 4 outside 0\.\.3 \(the sequence's "
                                                   r"unpadded length\)$"):
                model(input_ids=ids, attention_mask=mask)
            assert w.records_written == 0                # a bad batch writes nothing, not even 'a'
            with pytest.raises(AdapterError, match=r"needs a \[batch, seq\] 0/1 attention_mask of shape \[2, 5\]"):
                model(input_ids=ids, attention_mask=mask[:, :4])
        pkv = model(input_ids=ids[:, :3], use_cache=True).past_key_values   # outside the recorder
        with RT.record_routing(model, w):
            with pytest.raises(AdapterError, match="continues a KV cache of 3 tokens"):
                model(input_ids=ids[:, 3:4], past_key_values=pkv, use_cache=True)
            model(input_ids=ids, attention_mask=mask)   # and the recorder still works
        assert w.records_written == 2


class Corrupt:
    """Makes the recorder (only) see other router ids: a hook before it swaps the ids, one after it
    puts the router's own output back, so the experts run on valid ids."""

    def __init__(self, gate, fn):
        self.fn, self.saved = fn, None
        self.h = [gate.register_forward_hook(self.swap)]
        self.gate = gate

    def swap(self, mod, args, out):
        self.saved = out
        return (out[0], out[1], self.fn(out[2].clone()))

    def restore(self, mod, args, out):
        return self.saved

    def after(self):
        self.h.append(self.gate.register_forward_hook(self.restore))


@pytest.mark.parametrize("fn, msg", [
    (lambda t: t.index_fill_(0, torch.tensor([7]), 8),
     r"^record 'x': row 2, layer 1, slot 0: expert id 8 outside 0\.\.7$"),
    (lambda t: t.index_fill_(0, torch.tensor([8]), 3),
     r"^record 'x': row 3, layer 1 names an expert twice: \[3, 3\]$"),
])
def test_bad_ids_named(tmp_path, fn, msg):
    model, _, _ = tiny("qwen3_moe")
    ids, mask = batch(2, 5, [4, 5], "left", 9)        # token 7 of the flat batch = sequence 1, position 2
    gate = RT.find_routers(model)[0][2]
    c = Corrupt(gate, fn)
    with _writer(tmp_path) as w:
        with RT.record_routing(model, w) as rec:
            c.after()
            rec.set_batch(uids=["w", "x"])
            with pytest.raises(AdapterError, match=msg):
                model(input_ids=ids, attention_mask=mask)
        assert w.records_written == 0


def test_ids_shape_named(tmp_path):
    model, _, _ = tiny("qwen3_moe")
    gate = RT.find_routers(model)[1][2]
    c = Corrupt(gate, lambda t: torch.cat([t, t[:, :1]], 1))
    ids, mask = batch(2, 5, [4, 5], "left", 9)
    with _writer(tmp_path) as w:
        with RT.record_routing(model, w):
            c.after()
            with pytest.raises(AdapterError, match=r"^layer 2: Qwen3MoeTopKRouter returned ids of shape \[10, 3\], "
                                                   r"the writer's model routes top-2$"):
                model(input_ids=ids, attention_mask=mask)


# transformers 4.x layout: an nn.Linear gate returning logits only ----------------------------
class Qwen3MoeSparseMoeBlock(torch.nn.Module):     # named as transformers 4.x names its block
    def __init__(self, E, k, norm):
        super().__init__()
        self.gate = torch.nn.Linear(8, E, bias=False)
        self.top_k, self.norm_topk_prob = k, norm
        self.experts = torch.nn.ModuleList()

    def forward(self, x):
        self.gate(x.reshape(-1, 8))
        return x


class UnknownMoE(Qwen3MoeSparseMoeBlock):
    pass


class Layer(torch.nn.Module):
    def __init__(self, block):
        super().__init__()
        self.mlp = block if block is not None else torch.nn.Identity()

    def forward(self, x):
        return self.mlp(x)


class Toy(torch.nn.Module):
    def __init__(self, cls=Qwen3MoeSparseMoeBlock, norm=True):
        super().__init__()
        self.emb = torch.nn.Embedding(100, 8)
        self.layers = torch.nn.ModuleList([Layer(cls(16, 2, norm) if i else None) for i in range(3)])

    def forward(self, input_ids, attention_mask=None):
        x = self.emb(input_ids)
        for layer in self.layers:
            x = layer(x)
        return x


@pytest.mark.parametrize("norm", [True, False])
def test_logits_only_gate(tmp_path, norm):
    torch.manual_seed(0)
    m = Toy(norm=norm)
    p = tmp_path / "t.rtrace"
    with rtrace.Writer(p, model=dict(num_layers=3, num_experts=16, top_k=2, layer_map=[1, 2]), engine=ENGINE,
                       topk_weights_dtype="f32", router_logits_dtype="f32") as w:
        with RT.record_routing(m, w) as rec:
            rec.set_batch(uids=["a", "b"], prompt_lens=[2, 3])
            ids = torch.randint(0, 100, (2, 6))
            m(input_ids=ids, attention_mask=torch.ones(2, 6, dtype=torch.long))
    out = list(rtrace.Reader(p))
    assert [r.uid for r in out] == ["a", "b"]
    with torch.no_grad():
        lg = (m.emb.weight[ids[0]].double() @ m.layers[1].mlp.gate.weight.double().T).numpy()
    pr = np.exp(lg - lg.max(-1, keepdims=True))
    pr /= pr.sum(-1, keepdims=True)
    exp = np.argsort(-pr, -1, kind="stable")[:, :2]
    ew = np.take_along_axis(pr, exp, -1)
    if norm:
        ew /= ew.sum(-1, keepdims=True)
    assert out[0].topk_ids.shape == (5, 2, 2)
    assert np.array_equal(out[0].topk_ids[:, 0], exp[:-1])
    np.testing.assert_allclose(out[0].topk_weights[:, 0], ew[:-1], rtol=1e-5)


def test_unknown_logits_only_gate_refused(tmp_path):
    m = Toy(cls=UnknownMoE)
    with rtrace.Writer(tmp_path / "t.rtrace", model=dict(num_layers=3, num_experts=16, top_k=2, layer_map=[1, 2]),
                       engine=ENGINE) as w:
        with RT.record_routing(m, w):
            with pytest.raises(AdapterError, match=r"^layer 1: Linear of UnknownMoE returns logits only and "
                                                   r"rtrace.torch does not know that block's routing rule"):
                m(input_ids=torch.zeros(1, 3, dtype=torch.long))


class MoEGate(torch.nn.Module):
    """DeepSeek remote-code style: returns (topk_idx, topk_weight, aux_loss)."""

    def __init__(self, E, k):
        super().__init__()
        self.top_k, self.n_routed_experts = k, E
        self.weight = torch.nn.Parameter(torch.randn(E, 8))

    def forward(self, x):
        s = torch.sigmoid(x.reshape(-1, 8) @ self.weight.T)
        w, i = torch.topk(s, self.top_k, dim=-1, sorted=False)
        return i, w * 2.0, None


class DeepseekMoE(torch.nn.Module):
    def __init__(self, E, k, norm):
        super().__init__()
        self.gate = MoEGate(E, k)
        self.experts = torch.nn.ModuleList()
        self.seen = None

    def forward(self, x):
        self.seen = self.gate(x)
        return x


def test_indices_first_gate(tmp_path):
    torch.manual_seed(1)
    m = Toy(cls=DeepseekMoE)
    p = tmp_path / "t.rtrace"
    ids = torch.randint(0, 100, (2, 6))
    with rtrace.Writer(p, model=RT.geometry(m), engine=ENGINE, topk_weights_dtype="f32") as w:
        assert w.header["model"]["layer_map"] == [1, 2] and w.header["model"]["num_experts"] == 16
        with RT.record_routing(m, w):
            m(input_ids=ids, attention_mask=torch.tensor([[0, 1, 1, 1, 1, 1], [1] * 6]))
    a, b = rtrace.Reader(p)
    i, wt, _ = m.layers[2].mlp.seen
    assert np.array_equal(a.topk_ids[:, 1], i[1:5].numpy()) and np.array_equal(b.topk_ids[:, 1], i[6:11].numpy())
    assert np.array_equal(b.topk_weights[:, 1], wt[6:11].detach().numpy())


# KV-cached generation (rec.generation) ---------------------------------------------------------
def _unpad(seqs, prompt_mask):
    mask = torch.nn.functional.pad(prompt_mask, (0, seqs.shape[1] - prompt_mask.shape[1]), value=1)
    return [s[m.bool()] for s, m in zip(seqs, mask)]


def _whole_forward(model, seqs, tmp_path):
    """record_routing over the finished sequences in one left-padded forward: the reference."""
    S = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), S, dtype=torch.long)
    mask = torch.zeros(len(seqs), S, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, S - len(s):], mask[b, S - len(s):] = s, 1
    p = tmp_path / "whole.rtrace"
    with rtrace.Writer(p, model=RT.geometry(model), engine=ENGINE, topk_weights_dtype="f32") as w:
        with RT.record_routing(model, w):
            model(input_ids=ids, attention_mask=mask)
    return list(rtrace.Reader(p))


@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3"])
def test_generation_with_generate_matches_whole_forward(arch, tmp_path):
    """transformers' generate (prefill + one KV-cached forward per token, left-padded prompts): the records
    hold the same tokens and routing as one whole-sequence forward over the finished sequences."""
    model, _, _ = tiny(arch)
    ids, mask = batch(3, 6, [6, 3, 5], "left", 30)
    p = tmp_path / "gen.rtrace"
    forwards = []
    model.register_forward_pre_hook(lambda m, a, kw: forwards.append(kw["input_ids"].shape[1]), with_kwargs=True)
    with rtrace.Writer(p, model=RT.geometry(model), engine=ENGINE, topk_weights_dtype="f32") as w:
        with RT.record_routing(model, w) as rec, rec.generation(uids=["a", "b", "c"], groups=["g", "g", "h"]) as g:
            seqs = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                                  pad_token_id=0, eos_token_id=None)
            g.finish(tokens=_unpad(seqs, mask), rewards=[1.0, 0.0, 0.5])
    assert forwards == [6, 1, 1, 1]                       # a prefill and three cached steps
    got = list(rtrace.Reader(p))
    ref = _whole_forward(model, _unpad(seqs, mask), tmp_path)
    assert [(r.uid, r.group, r.prompt_len, r.reward) for r in got] == [("a", "g", 6, 1.0), ("b", "g", 3, 0.0),
                                                                       ("c", "h", 5, 0.5)]
    for x, y in zip(got, ref):
        assert np.array_equal(x.tokens, y.tokens) and x.n_rows == len(x.tokens) - 1
        assert np.array_equal(x.topk_ids, y.topk_ids)
        np.testing.assert_allclose(x.topk_weights, y.topk_weights, rtol=1e-5, atol=1e-6)


def test_generation_hand_loop_early_stop_and_logprobs(tmp_path):
    """A hand-written sampling loop with a DynamicCache; sequences that stopped early are cut by
    finish(tokens=...), and logprobs go to the records."""
    from transformers import DynamicCache
    model, _, _ = tiny("olmoe")
    ids, mask = batch(2, 4, [4, 4], "left", 31)
    p = tmp_path / "loop.rtrace"
    with rtrace.Writer(p, model=RT.geometry(model), engine=ENGINE, logprobs=True) as w:
        with RT.record_routing(model, w) as rec, rec.generation() as g:
            cache = DynamicCache(config=model.config)
            x, m, seq = ids, mask, [ids]
            for _ in range(4):
                tok = model(input_ids=x, attention_mask=m, cache=cache, use_cache=True).logits[:, -1].argmax(-1, True)
                seq.append(tok)
                x, m = tok, torch.cat([m, torch.ones_like(tok)], 1)
            full = torch.cat(seq, 1)                          # 4 + 4 tokens; the last one never fed
            g.finish(tokens=[full[0], full[1, :6]], logprobs=[[-0.5] * 4, [-1.0, -2.0]])
    a, b = rtrace.Reader(p)
    assert (a.uid, b.uid) == ("step0-0", "step0-1") and (a.prompt_len, b.prompt_len) == (4, 4)
    assert a.n_rows == 7 and b.n_rows == 5 and np.array_equal(b.tokens, full[1, :6].numpy())
    assert a.logprobs.tolist() == [-0.5] * 4 and b.logprobs.tolist() == [-1.0, -2.0]
    ref = _whole_forward(model, [full[0], full[1, :6]], tmp_path)
    assert np.array_equal(a.topk_ids, ref[0].topk_ids) and np.array_equal(b.topk_ids, ref[1].topk_ids)


def test_generation_errors(tmp_path):
    from transformers import DynamicCache
    model, _, _ = tiny("qwen3_moe")
    ids, mask = batch(2, 5, [5, 5], "right", 32)
    with _writer(tmp_path) as w:
        with RT.record_routing(model, w) as rec:
            cache = DynamicCache(config=model.config)
            model(input_ids=ids[:, :2], cache=cache, use_cache=True)   # a prefill outside a generation: recorded as usual
            assert w.records_written == 2
            with pytest.raises(AdapterError, match=r"continues a KV cache of 2 tokens .* inside rec.generation\(\)"):
                model(input_ids=ids[:, 2:3], cache=cache, use_cache=True)      # transformers 5.x's name: cache
            with pytest.raises(AdapterError, match=r"starts with a prefill; this forward continues a KV cache of 2"):
                with rec.generation():
                    model(input_ids=ids[:, 2:3], cache=cache, use_cache=True)
            with pytest.raises(AdapterError, match=r"continues a KV cache of 2 tokens, the generation has fed 3"):
                with rec.generation():
                    model(input_ids=ids[:, :3], use_cache=True)
                    model(input_ids=ids[:, 3:4], cache=cache, use_cache=True)
            with pytest.raises(AdapterError, match=r"a forward over 1 sequences, the prefill had 2"):
                with rec.generation():
                    c2 = DynamicCache(config=model.config)
                    model(input_ids=ids[:, :3], cache=c2, use_cache=True)
                    model(input_ids=ids[:1, 3:4], cache=c2, use_cache=True)
            with rec.generation(uids=["p", "q"]) as g:
                c3 = DynamicCache(config=model.config)
                model(input_ids=ids[:, :3], cache=c3, use_cache=True)
                bad = ids[1, :4].clone()
                bad[1] += 1
                with pytest.raises(AdapterError, match=rf"^record 'q': token 1 is {int(bad[1])} in tokens, "
                                                       rf"{int(ids[1, 1])} was fed through the model$"):
                    g.finish(tokens=[ids[0, :4], bad])
                with pytest.raises(AdapterError, match=r"^record 'p': 5 tokens, but only 3 were fed"):
                    g.finish(tokens=[ids[0], ids[1, :4]])
                g.finish(tokens=[ids[0, :4], ids[1, :4]])
            with pytest.raises(RuntimeError, match="stop"):               # an exception writes nothing
                with rec.generation():
                    model(input_ids=ids[:, :3], use_cache=True)
                    raise RuntimeError("stop")
        assert w.records_written == 4
    recs = list(rtrace.Reader(tmp_path / "v.rtrace"))
    assert [r.uid for r in recs][2:] == ["p", "q"] and recs[2].n_rows == 3


def test_readme_generation_snippet_runs(tmp_path, monkeypatch):
    """python/README.md's rollout-engine snippet, executed as written."""
    text = open(os.path.join(HERE, "..", "README.md"), encoding="utf-8").read()
    m = re.search(r"## Rollout engine.*?```python\n(.*?)```", text, re.S)
    assert m, "python/README.md has no rollout engine snippet"
    hf_model, _, _ = tiny("mixtral")
    prompt_ids, prompt_mask = batch(2, 5, [5, 3], "left", 33)
    monkeypatch.chdir(tmp_path)
    hf_model.generation_config.pad_token_id = 0
    hf_model.generation_config.eos_token_id = None        # 8 new tokens each
    exec(compile(m.group(1), "README.md", "exec"), dict(hf_model=hf_model, prompt_ids=prompt_ids,
                                                     prompt_mask=prompt_mask, batch_uids=["u0", "u1"]))
    a, b = rtrace.Reader(tmp_path / "rollout.rtrace")
    assert (a.uid, a.prompt_len, len(a.tokens), a.n_rows) == ("u0", 5, 13, 12)
    assert (b.uid, b.prompt_len, len(b.tokens), b.n_rows) == ("u1", 3, 11, 10)
