"""rtrace.megatron against Megatron-core's own GPTModel, TopKRouter and RouterReplay, on CPU.

A tiny GPTModel (3 decoder layers, the first dense, one MoE multi-token-prediction head; local
PyTorch layer specs, the allgather token dispatcher) runs forward on CPU with
torch.distributed (gloo, world size 1) and Megatron's parallel_state. Three test-only shims fill
Megatron's CPU gaps, none on the routing path: torch.cuda.current_device() answers "cpu" (the
router moves its weights there and builds its expert-bias buffers there), the CUDA RNG tracker's
fork() is a no-op (attention dropout, which is 0 here) and moe_utils.te_general_gemm is None (it
is left undefined without Transformer Engine). The packed (THD) layout runs through the same model
as one sequence of packed tokens with a block-diagonal causal mask and per-sequence positions:
Megatron's THD attention needs Transformer Engine on a GPU, but its routers see the same
[tokens, 1, hidden] rows.

Expert ids the routers used are read off TopKRouter's own output (routing_map), gates (probs)
are checked against an independent float64 recomputation of Megatron's replay rule from the
router's input. make deps installs torch and megatron-core into .venv; without them these tests
skip, or fail under RTRACE_NO_SKIP=1 (make test)."""
import contextlib
import io
import os
import tempfile
import warnings

import numpy as np
import pytest

from conftest import require_module

torch = require_module("torch", "rtrace.megatron is not tested without it")
require_module("megatron.core", "rtrace.megatron drives Megatron-core's RouterReplay")

import rtrace  # noqa: E402
import rtrace.megatron as RM  # noqa: E402
from rtrace.adapters import AdapterError  # noqa: E402

VOCAB = 50
ENGINE = dict(name="megatron-core", role="train")
VARIANTS = {
    # Qwen3-style: softmax over the k logits at the chosen ids (= softmax, top-k, renormalise)
    "softmax": dict(num_moe_experts=8, moe_router_topk=2),
    # softmax over all experts before top-k, gathered, not renormalised
    "softmax_pre": dict(num_moe_experts=8, moe_router_topk=3, moe_router_pre_softmax=True),
    # DeepSeek-V3-style: sigmoid, expert bias only for the choice, group-limited, renormalised, scaled
    "sigmoid_bias": dict(num_moe_experts=16, moe_router_topk=4, moe_router_score_function="sigmoid",
                         moe_router_enable_expert_bias=True, moe_router_topk_scaling_factor=2.5,
                         moe_router_num_groups=4, moe_router_group_topk=2),
}


@pytest.fixture(scope="module")
def mg():
    """torch.distributed + parallel_state for world size 1, and the CPU shims (module docstring)."""
    import torch.distributed as dist
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core import parallel_state as ps
        from megatron.core.tensor_parallel import random as tpr
        import megatron.core.transformer.moe.moe_utils as mu
    mp = pytest.MonkeyPatch()
    mp.setattr(torch.cuda, "current_device", lambda: "cpu")
    mp.setattr(tpr.get_cuda_rng_tracker(), "fork", lambda *a, **k: contextlib.nullcontext(), raising=False)
    mp.setattr(mu, "te_general_gemm", None, raising=False)
    own = not dist.is_initialized()
    tmp = tempfile.NamedTemporaryFile(delete=False)
    tmp.close()
    if own:
        dist.init_process_group("gloo", init_method=f"file://{tmp.name}", rank=0, world_size=1)
    ps.initialize_model_parallel(1, 1)
    try:
        yield
    finally:
        ps.destroy_model_parallel()
        if own:
            dist.destroy_process_group()
        os.unlink(tmp.name)
        mp.undo()


@pytest.fixture(autouse=True)
def clean_replay(request):
    """Megatron keeps every RouterReplay in a class-level list: empty it around each test."""
    if "mg" not in request.fixturenames:
        yield
        return
    from megatron.core.transformer.moe.router_replay import RouterReplay
    RouterReplay.clear_global_router_replay_instances()
    yield
    RouterReplay.clear_global_router_replay_instances()


def build(variant="softmax", mtp=True, seed=0, **over):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec, get_gpt_mtp_block_spec
    from megatron.core.models.gpt.gpt_model import GPTModel
    from megatron.core.transformer.transformer_config import TransformerConfig
    torch.manual_seed(seed)
    kw = dict(num_layers=3, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64, moe_ffn_hidden_size=16,
              moe_layer_freq=[0, 1, 1], mtp_num_layers=1 if mtp else None, moe_enable_routing_replay=True,
              moe_token_dispatcher_type="allgather", moe_router_load_balancing_type="none", moe_aux_loss_coeff=0.0,
              use_cpu_initialization=True, add_bias_linear=False, hidden_dropout=0.0, attention_dropout=0.0,
              init_method_std=0.3, params_dtype=torch.float32)
    kw.update(VARIANTS[variant])
    kw.update(over)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = TransformerConfig(**kw)
        spec = get_gpt_decoder_block_spec(cfg, use_transformer_engine=False)
        mspec = get_gpt_mtp_block_spec(cfg, spec.layer_specs[-1], use_transformer_engine=False) if mtp else None
        model = GPTModel(cfg, spec, vocab_size=VOCAB, max_sequence_length=64, mtp_block_spec=mspec,
                         position_embedding_type="rope")
    for m in model.modules():
        if getattr(m, "expert_bias", None) is not None:   # make the bias matter for the natural choice
            m.expert_bias.copy_(torch.randn(cfg.num_moe_experts) * 0.5)
    return model.eval(), cfg


class Capture:
    """Forward hooks on every TopKRouter: its input and its own (probs, routing_map) output, per call."""

    def __init__(self, model):
        from megatron.core.transformer.moe.router import TopKRouter
        self.calls = {}
        self.handles = []
        for name, mod in model.named_modules():
            if isinstance(mod, TopKRouter):
                self.handles.append(mod.register_forward_hook(self._hook(mod)))

    def _hook(self, mod):
        def h(_m, args, out):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            self.calls.setdefault(id(mod), []).append((x, out[0].detach(), out[1].detach()))
        return h

    def last(self, router):
        return self.calls[id(router)][-1]

    def close(self):
        for h in self.handles:
            h.remove()


def chosen(routing_map):
    """[tokens, E] bool -> list of sorted expert-id tuples."""
    return [tuple(np.nonzero(r)[0].tolist()) for r in routing_map.numpy()]


def reference_gates(router, x, ids):
    """Megatron's replay rule recomputed in float64 from the router input x [T, H] at ids [T, k]."""
    cfg = router.config
    logits = x.double().numpy() @ router.weight.detach().double().numpy().T
    g = np.take_along_axis(logits, ids, axis=1)
    if cfg.moe_router_score_function == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-g))
        p = s / (s.sum(axis=1, keepdims=True) + 1e-20)
    elif cfg.moe_router_pre_softmax:
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        p = np.take_along_axis(e / e.sum(axis=1, keepdims=True), ids, axis=1)
    else:
        e = np.exp(g - g.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
    return p * (cfg.moe_router_topk_scaling_factor or 1.0)


def rollout_trace(cfg, seqs, seed=1, include_last=False):
    """A trace of random routing (deliberately not what the model would choose), written and read back."""
    rng = np.random.default_rng(seed)
    E, k = cfg.num_moe_experts, cfg.moe_router_topk
    model = dict(name="tiny", num_layers=cfg.num_layers, num_experts=E, top_k=k, layer_map=[1, 2])
    buf = io.BytesIO()
    with rtrace.Writer(buf, model=model, engine=dict(name="test", role="rollout")) as w:
        for i, t in enumerate(seqs):
            n = len(t) if include_last else len(t) - 1
            ids = np.stack([np.stack([rng.permutation(E)[:k] for _ in range(2)]) for _ in range(n)])
            w.add(uid=f"u{i}", tokens=t, topk_ids=ids.reshape(n, 2, k), prompt_len=2)
    r = rtrace.Reader(io.BytesIO(buf.getvalue()))
    return r, list(r)


def sequences(lengths, seed=2):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, VOCAB, size=n).astype(np.int32) for n in lengths]


def padded_batch(seqs, side):
    B, S = len(seqs), max(len(s) for s in seqs) + 1
    ids = np.zeros((B, S), np.int64)
    mask = np.zeros((B, S), bool)
    pos = np.zeros((B, S), np.int64)
    for b, s in enumerate(seqs):
        a = 0 if side == "right" else S - len(s)
        ids[b, a:a + len(s)] = s
        mask[b, a:a + len(s)] = True
        pos[b, a:a + len(s)] = np.arange(len(s))
    causal = np.triu(np.ones((S, S), bool), 1)
    am = causal[None] | ~mask[:, None, :]                      # True = masked (Megatron's convention)
    return ids, mask, pos, torch.from_numpy(am[:, None])


def packed_batch(seqs, slot=4, tail=3):
    lens = [len(s) for s in seqs]
    padl = [(n + slot - 1) // slot * slot for n in lens]
    cu = np.concatenate([[0], np.cumsum(lens)])
    cup = np.concatenate([[0], np.cumsum(padl)])
    T = int(cup[-1]) + tail
    ids = np.zeros(T, np.int64)
    pos = np.zeros(T, np.int64)
    am = np.ones((T, T), bool)
    for i, s in enumerate(seqs):
        a = cup[i]
        ids[a:a + len(s)] = s
        pos[a:a + len(s)] = np.arange(len(s))
        am[a:a + len(s), a:a + len(s)] = np.triu(np.ones((len(s), len(s)), bool), 1)
    return ids, cu, cup, T, pos, torch.from_numpy(am[None, None])


def forward(model, ids, pos, am):
    """[B, S] padded, or [T] packed run as one row of T tokens. A model with an MTP head needs labels
    (it then returns the per-token loss), one without returns the logits."""
    ids_t = torch.as_tensor(ids).reshape(-1, np.shape(ids)[-1])
    labels = ids_t if model.mtp_process else None
    with torch.no_grad():
        return model(ids_t, torch.as_tensor(pos).reshape(ids_t.shape), attention_mask=am, labels=labels)


def decoder_routers(model):
    return [r for r in RM.routers(model) if r.decoder_layer is not None]


def solo(model, seqs):
    """Each sequence run alone (batch of one, no padding), natively: per sequence, what each decoder MoE
    router saw (its input) and chose (Megatron's own recorded top-k, in slot order). With one
    sequence the router rows are its tokens in order, whatever the layout code says."""
    from megatron.core.transformer.moe.router_replay import RouterReplayAction
    RM.set_action(model, RouterReplayAction.RECORD)
    out = []
    for t in seqs:
        n = len(t)
        cap = Capture(model)
        forward(model, t[None], np.arange(n)[None], torch.from_numpy(np.triu(np.ones((n, n), bool), 1))[None, None])
        cap.close()
        out.append([(cap.last(r.router)[0], r.router.router_replay.get_recorded_indices().numpy())
                    for r in decoder_routers(model)])
    RM.set_action(model, None)
    return out


def true_rows(model, cap, alone):
    """The router rows of each sequence's tokens in a batched forward, found without rtrace: the first MoE
    layer's input at token j of a sequence run alone equals exactly one row of the batched input."""
    x = cap.last(decoder_routers(model)[0].router)[0].double()
    rows = []
    for per_layer in alone:
        xs = per_layer[0][0].double()
        d = torch.cdist(xs, x)                                   # [n, N]
        best = d.argmin(dim=1)
        two = d.topk(2, largest=False).values
        assert (two[:, 0] < 1e-4).all() and (two[:, 1] > 1e-2).all()
        rows.append(best.numpy())
    return rows


def check_replayed(model, cap, data, recs, rows_of, lay, trace_layers, E, k):
    """The layout put each token where Megatron routes it; every real token with a record row got exactly
    the record's ids (slot order kept); gates follow Megatron's replay rule; the rest got the filler."""
    assert [r.tolist() for r in lay.rows] == [r.tolist() for r in rows_of]
    N = lay.num_tokens
    filler = (np.arange(N)[:, None] * k + np.arange(k)[None]) % E
    for r in decoder_routers(model):
        x, probs, rmap = cap.last(r.router)
        assert rmap.shape == (N, E)
        want = filler.copy()
        col = trace_layers.index(r.decoder_layer)
        for rec, rows in zip(recs, rows_of):
            n = min(len(rows), rec.topk_ids.shape[0])
            want[rows[:n]] = rec.topk_ids[:n, col]
        assert chosen(rmap) == [tuple(sorted(w)) for w in want.tolist()]
        gates = np.take_along_axis(probs.double().numpy(), want, axis=1)
        np.testing.assert_allclose(gates, reference_gates(r.router, x, want), rtol=1e-6, atol=1e-7)
        t = data.tensors[data.layers.index(r.decoder_layer)]
        assert t.dtype == torch.int64 and np.array_equal(t.numpy(), want)


def forward_and_check(model, data, recs, lay, alone, ids, pos, am):
    """One forward under replay, then check_replayed against the rows found from ``alone`` (``solo``)."""
    cfg = decoder_routers(model)[0].router.config
    cap = Capture(model)
    forward(model, ids, pos, am)
    cap.close()
    check_replayed(model, cap, data, recs, true_rows(model, cap, alone), lay, [1, 2], cfg.num_moe_experts,
                   cfg.moe_router_topk)
    return cap


def natural_sets(router, x):
    logits = x.double().numpy() @ router.weight.detach().double().numpy().T
    k = router.config.moe_router_topk
    return [tuple(sorted(np.argsort(-row)[:k].tolist())) for row in logits]


# replay --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant, side", [("softmax", "right"), ("softmax", "left"), ("softmax_pre", "right"),
                                           ("sigmoid_bias", "left")])
def test_padded_replay_exact_ids_and_gates(mg, variant, side):
    model, cfg = build(variant)
    seqs = sequences([5, 7, 4])
    alone = solo(model, seqs)
    reader, recs = rollout_trace(cfg, seqs)
    ids, mask, pos, am = padded_batch(seqs, side)
    lay = RM.padded(mask)
    data = RM.replay_data(model, recs, lay, trace=reader, input_ids=ids)
    assert data.layers == [1, 2, None]       # dense layer 0 has no router; the MTP head's router has no data
    assert data.tensors[2] is None
    s = data.stats
    assert (s.num_tokens, s.sequences, s.padding) == (ids.size, 3, ids.size - 16)
    assert s.replayed == {1: 13, 2: 13} and s.last == {1: 3, 2: 3} and s.filled == {1: 0, 2: 0}
    data.apply()
    cap = forward_and_check(model, data, recs, lay, alone, ids, pos, am)
    if variant == "softmax":       # the MTP head routes natively (no trace layer)
        mtp = [r for r in RM.routers(model) if r.decoder_layer is None][0]
        x, _, rmap = cap.last(mtp.router)
        assert chosen(rmap) == natural_sets(mtp.router, x)


def test_packed_replay_through_set_replay_data(mg):
    """THD: sequences packed with per-sequence slot padding (cu_seqlens_padded) and a padded tail; the
    tensors go through Megatron's own positional RouterReplay.set_replay_data."""
    from megatron.core.transformer.moe.router_replay import RouterReplay, RouterReplayAction
    model, cfg = build("softmax")
    seqs = sequences([5, 7, 4])
    alone = solo(model, seqs)
    reader, recs = rollout_trace(cfg, seqs)
    ids, cu, cup, T, pos, am = packed_batch(seqs)
    lay = RM.packed(torch.tensor(cu, dtype=torch.int32), torch.tensor(cup, dtype=torch.int32), num_tokens=T)
    data = RM.replay_data(model, recs, lay, trace=reader, input_ids=ids[None])
    assert data.stats.padding == T - 16
    RouterReplay.set_replay_data(data.tensors)
    RM.set_action(model, RouterReplayAction.REPLAY_FORWARD)
    forward_and_check(model, data, recs, lay, alone, ids, pos, am)


def test_replay_gradients_reach_the_router(mg):
    model, cfg = build("sigmoid_bias", mtp=False)
    seqs = sequences([6, 6])
    reader, recs = rollout_trace(cfg, seqs)
    ids, mask, pos, am = padded_batch(seqs, "right")
    RM.replay_data(model, recs, RM.padded(mask), trace=reader, input_ids=ids).apply()
    model.train()
    out = model(torch.as_tensor(ids), torch.as_tensor(pos), attention_mask=am)
    out.float().pow(2).mean().backward()
    for r in decoder_routers(model):
        g = r.router.weight.grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_replay_backward_pops_first_in_first_out(mg):
    """Two micro-batches replayed forward, then REPLAY_BACKWARD (the activation-checkpoint recompute)
    replays each with its own ids, in order; MTP routers stay native."""
    from megatron.core.transformer.moe.router_replay import RouterReplayAction
    model, cfg = build("softmax")
    seqs = sequences([6, 5])
    alone = solo(model, seqs)
    ids, mask, pos, am = padded_batch(seqs, "right")
    lay = RM.padded(mask)
    datas = []
    for seed in (11, 12):
        reader, recs = rollout_trace(cfg, seqs, seed=seed)
        datas.append((RM.replay_data(model, recs, lay, trace=reader, input_ids=ids), recs))
    cap = Capture(model)
    for d, _ in datas:
        d.apply()
        forward(model, ids, pos, am)
    RM.set_action(model, RouterReplayAction.REPLAY_BACKWARD)
    for d, recs in datas:
        forward(model, ids, pos, am)
        check_replayed(model, cap, d, recs, true_rows(model, cap, alone), lay, [1, 2], cfg.num_moe_experts,
                       cfg.moe_router_topk)
    cap.close()
    for r in decoder_routers(model):
        assert r.router.router_replay.replay_backward_list == []


# record -> records -> replay -----------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_record_roundtrip_and_replay(mg, layout):
    """A batched RECORD pass -> records -> a trace on disk -> read back: each record holds its sequence's
    own routing (what Megatron records for it run alone), in Megatron's slot order; replaying the records
    gives the routers exactly what they recorded."""
    from megatron.core.transformer.moe.router_replay import RouterReplay, RouterReplayAction
    model, cfg = build("sigmoid_bias")
    seqs = sequences([6, 4, 7], seed=5)
    alone = solo(model, seqs)
    if layout == "padded":
        ids, mask, pos, am = padded_batch(seqs, "left")
        lay = RM.padded(mask)
    else:
        ids, cu, cup, T, pos, am = packed_batch(seqs)
        lay = RM.packed(cu, cup, num_tokens=T)
    RM.set_action(model, RouterReplayAction.RECORD)
    cap = Capture(model)
    forward(model, ids, pos, am)
    recorded = RouterReplay.get_recorded_data()
    assert len(recorded) == 3      # two decoder MoE layers and the MTP head
    assert [r.tolist() for r in lay.rows] == [r.tolist() for r in true_rows(model, cap, alone)]
    d = RM.recorded_records(model, lay, uids=["a", "b", "c"], input_ids=ids, recorded=recorded,
                            prompt_lens=[2, 2, 3])
    geo = RM.geometry(model, name="tiny")
    assert geo == dict(name="tiny", num_layers=3, num_experts=16, top_k=4, layer_map=[1, 2])
    buf = io.BytesIO()
    with rtrace.Writer(buf, model=geo, engine=ENGINE) as w:
        for x in d:
            w.add(**x)
    back = list(rtrace.Reader(io.BytesIO(buf.getvalue())))
    assert [r.uid for r in back] == ["a", "b", "c"] and [r.prompt_len for r in back] == [2, 2, 3]
    for rec, s, per_layer in zip(back, seqs, alone):
        assert np.array_equal(rec.tokens, s) and rec.topk_ids.shape == (len(s) - 1, 2, 4)
        for li in range(2):
            assert np.array_equal(rec.topk_ids[:, li], per_layer[li][1][:-1])
    RouterReplay.clear_global_indices()
    data = RM.replay_data(model, back, lay, trace=geo, input_ids=ids)
    data.apply()
    forward(model, ids, pos, am)
    cap.close()
    for li, r in enumerate(decoder_routers(model)):
        for rows in lay.rows:
            assert np.array_equal(data.tensors[li].numpy()[rows[:-1]], recorded[li].numpy()[rows[:-1]])
        assert chosen(cap.last(r.router)[2]) == [tuple(sorted(x)) for x in data.tensors[li].tolist()]


def test_record_then_replay_reproduces_logits_bit_for_bit(mg):
    from megatron.core.transformer.moe.router_replay import RouterReplay, RouterReplayAction
    model, cfg = build("softmax", mtp=False)
    seqs = sequences([7, 7], seed=9)
    ids, mask, pos, am = padded_batch(seqs, "right")
    ids, mask, pos, am = ids[:, :7], mask[:, :7], pos[:, :7], am[:, :, :7, :7]
    lay = RM.padded(mask)
    RM.set_action(model, RouterReplayAction.RECORD)
    ref = forward(model, ids, pos, am)
    recs = RM.recorded_records(model, lay, input_ids=ids, include_last=True)
    RouterReplay.clear_global_indices()
    data = RM.replay_data(model, recs, lay, trace=RM.geometry(model), input_ids=ids)
    assert data.stats.last == {1: 0, 2: 0} and data.stats.padding == 0
    data.apply()
    out = forward(model, ids, pos, am)
    assert torch.equal(out, ref)


# layouts -------------------------------------------------------------------------------------------
def test_layout_orders():
    lay = RM.padded(np.array([[0, 1, 1], [1, 1, 0]]))
    assert [r.tolist() for r in lay.rows] == [[2, 4], [1, 3]]        # s * B + b
    assert [r.tolist() for r in lay.id_index] == [[1, 2], [3, 4]]    # b * S + s
    lay = RM.packed([0, 2, 5], [0, 4, 8], num_tokens=10)
    assert [r.tolist() for r in lay.rows] == [[0, 1], [4, 5, 6]] and lay.num_tokens == 10
    assert RM.packed([0, 3, 4]).rows[1].tolist() == [3]


@pytest.mark.parametrize("args, msg", [
    (([1, 2],), "must start at 0"),
    (([0, 3, 2],), "decreases at sequence 1"),
    (([0, 3, 5], [0, 2, 6]), "sequence 0 has 3 tokens (cu_seqlens) but a slot of 2"),
    (([0, 3, 5], [0, 4]), "cu_seqlens_padded: 2 entries"),
    (([0, 3, 5], [0, 4, 8], 7), "num_tokens: 7 is less than the packed length 8"),
])
def test_packed_layout_errors(args, msg):
    with pytest.raises(AdapterError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        RM.packed(*args)


def test_sequence_parallel_slices(mg):
    model, cfg = build("softmax", mtp=False)
    seqs = sequences([5, 4])
    reader, recs = rollout_trace(cfg, seqs)
    ids, mask, pos, am = padded_batch(seqs, "right")          # [2, 6]: 12 router rows
    full = RM.replay_data(model, recs, RM.padded(mask), trace=reader, input_ids=ids)
    parts = [RM.replay_data(model, recs, RM.padded(mask), trace=reader, tp_rank=r, tp_size=3) for r in range(3)]
    for li in range(2):
        assert torch.equal(torch.cat([p.tensors[li] for p in parts]), full.tensors[li])
    with pytest.raises(AdapterError, match="num_tokens 12 does not split over tp_size 5"):
        RM.replay_data(model, recs, RM.padded(mask), trace=reader, tp_rank=0, tp_size=5)


# errors --------------------------------------------------------------------------------------------
def test_misaligned_tokens_are_refused(mg):
    model, cfg = build("softmax", mtp=False)
    seqs = sequences([5, 7])
    reader, recs = rollout_trace(cfg, seqs)
    ids, mask, pos, am = padded_batch(seqs, "left")
    bad = ids.copy()
    S = ids.shape[1]
    bad[1, S - 7 + 3] = (ids[1, S - 7 + 3] + 1) % VOCAB
    with pytest.raises(AdapterError, match=rf"record 'u1': token at position 3 is {bad[1, S - 4]} in the "
                                           rf"micro-batch \(sequence 1\) but {ids[1, S - 4]} in the trace"):
        RM.replay_data(model, recs, RM.padded(mask), trace=reader, input_ids=bad)
    shifted = np.roll(mask, -1, axis=1)                # the mask one column off: a pad becomes token 0
    with pytest.raises(AdapterError, match=rf"record 'u0': token at position 0 is 0 in the micro-batch \(sequence 0\) "
                                           rf"but {ids[0, S - 5]} in the trace"):
        RM.replay_data(model, recs, RM.padded(shifted), trace=reader, input_ids=ids)
    with pytest.raises(AdapterError, match=r"input_ids: shape \(2, 3\), the padded layout needs \(2, 8\)"):
        RM.replay_data(model, recs, RM.padded(mask), trace=reader, input_ids=ids[:, :3])
    longer = np.ones((2, 10), bool)
    with pytest.raises(AdapterError, match="record 'u0': sequence 0 of the micro-batch has 10 tokens, the record 5"):
        RM.replay_data(model, recs, RM.padded(longer), trace=reader)
    with pytest.raises(AdapterError, match="1 records for the 2 sequences"):
        RM.replay_data(model, recs[:1], RM.padded(mask), trace=reader)


@pytest.mark.parametrize("change, msg", [
    (dict(num_experts=16), "trace num_experts is 16, the Megatron model has num_moe_experts=8"),
    (dict(top_k=3), "trace top_k is 3, the Megatron model has moe_router_topk=2"),
    (dict(num_layers=4), "trace num_layers is 4, the Megatron model has num_layers=3"),
    (dict(layer_map=[0, 1, 2]), r"decoder layer 0 is dense in the Megatron model \(moe_layer_freq=\[0, 1, 1\]\)"),
    (dict(layer_map=[2]), r"decoder layer 1 \(router decoder.layers.1.mlp.router\) is an MoE layer of the model but "
                          r"missing from the trace's layer_map \[2\]"),
])
def test_wrong_geometry_is_refused(mg, change, msg):
    model, cfg = build("softmax")
    geo = dict(name="x", num_layers=3, num_experts=8, top_k=2, layer_map=[1, 2])
    geo.update(change)
    with pytest.raises(AdapterError, match=msg):
        RM.replay_data(model, [], RM.padded(np.zeros((0, 4))), trace=geo)


def test_records_must_fit_the_geometry(mg):
    model, cfg = build("softmax", mtp=False)
    geo = RM.geometry(model)
    mask = np.ones((1, 4), bool)
    rec = dict(uid="r", tokens=[5, 6, 7, 8], topk_ids=np.zeros((3, 1, 2), np.int32))
    with pytest.raises(AdapterError, match=r"record 'r': topk_ids has shape \(3, 1, 2\), the trace geometry is "
                                           r"\[rows, 2, 2\]"):
        RM.replay_data(model, [rec], RM.padded(mask), trace=geo)
    ids = np.tile(np.array([[0, 1], [2, 3]]), (3, 1, 1))
    ids[1, 1] = [4, 4]
    with pytest.raises(AdapterError, match=r"record 'r': row 1, layer 2 names an expert twice: \[4, 4\]"):
        RM.replay_data(model, [dict(rec, topk_ids=ids)], RM.padded(mask), trace=geo)
    ids[1, 1] = [4, 9]
    with pytest.raises(AdapterError, match="record 'r': row 1, layer 2, slot 1: expert id 9 outside 0..7"):
        RM.replay_data(model, [dict(rec, topk_ids=ids)], RM.padded(mask), trace=geo)
    ids[1, 1] = [-1, 3]
    with pytest.raises(AdapterError, match=r"record 'r': row 1, layer 2 is partly -1 \(\[-1, 3\]\)"):
        RM.replay_data(model, [dict(rec, topk_ids=ids)], RM.padded(mask), trace=geo)


def test_tokens_without_routing(mg):
    """A -1 (row, layer), rows that start late, a missing record: refused by default, or filled and counted."""
    model, cfg = build("softmax", mtp=False)
    geo = RM.geometry(model)
    mask = np.ones((3, 5), bool)
    ids = np.tile(np.array([[0, 1], [2, 3]]), (4, 1, 1))
    holed = ids.copy()
    holed[2, 0] = -1
    recs = [dict(uid="hole", tokens=[9] * 5, topk_ids=holed), dict(uid="late", tokens=[9] * 5, topk_ids=ids[:3], start=1),
            None]
    lay = RM.padded(mask)
    with pytest.raises(AdapterError, match=r"record 'hole': position 2, decoder layer 1 has no routing: missing \(-1\)"):
        RM.replay_data(model, recs, lay, trace=geo)
    with pytest.raises(AdapterError, match=r"record 'late': position 0, decoder layer 1 has no routing: before the "
                                           r"record's first row \(start\)"):
        RM.replay_data(model, recs[1:2], RM.padded(mask[:1]), trace=geo)
    with pytest.raises(AdapterError, match="record of sequence 0 \\(None\\): position 0, decoder layer 1 has no "
                                           "routing: no record"):
        RM.replay_data(model, [None], RM.padded(mask[:1]), trace=geo)
    data = RM.replay_data(model, recs, lay, trace=geo, missing="fill")
    assert data.stats.replayed == {1: 3 + 3, 2: 4 + 3} and data.stats.filled == {1: 1 + 1 + 4, 2: 0 + 1 + 4}
    assert data.stats.last == {1: 3, 2: 3} and data.stats.padding == 0
    t = data.tensors[0].numpy()
    assert t[2 * 3 + 0].tolist() == [(6 * 2) % 8, (6 * 2 + 1) % 8]       # filler at row s*B+b = 6
    assert t[1 * 3 + 1].tolist() == [0, 1]                               # 'late' token 1 = its row 0


def test_routers_refuse_what_bypasses_replay(mg):
    from megatron.core.transformer.moe.router_replay import RouterReplay
    model, cfg = build("softmax", moe_enable_routing_replay=False, mtp=False)
    with pytest.raises(AdapterError, match=r"no RouterReplay; build the model with .*moe_enable_routing_replay=True"):
        RM.routers(model)
    model, cfg = build("softmax", mtp=False)
    model.decoder.layers[1].mlp.router.config.moe_router_fusion = True
    with pytest.raises(AdapterError, match="moe_router_fusion=True computes the fused top-k before"):
        RM.routers(model)
    model.decoder.layers[1].mlp.router.config.moe_router_fusion = False
    model.decoder.layers[2].mlp.router.layer_number = 2
    with pytest.raises(AdapterError, match="decoder layer 1 has two routers"):
        RM.routers(model)
    RouterReplay.clear_global_router_replay_instances()
    model, cfg = build("softmax", mtp=False)
    with pytest.raises(AdapterError, match="recorded nothing: set RouterReplayAction.RECORD"):
        RM.recorded_records(model, RM.padded(np.ones((1, 3))))
    with pytest.raises(AdapterError, match="recorded: 1 tensors, RouterReplay has 2 instances"):
        RM.recorded_records(model, RM.padded(np.ones((1, 3))), recorded=[None])
    with pytest.raises(AdapterError, match="context parallelism"):
        model.decoder.layers[1].mlp.router.config.context_parallel_size = 2
        RM.replay_data(model, [], RM.padded(np.zeros((0, 3))), trace=RM.geometry(model))


def test_stale_instances_do_not_misroute(mg):
    """A model built earlier leaves its RouterReplay instances in Megatron's global list: the positional
    set_replay_data then refuses (its own length check), while ReplayData.apply reaches this model's routers."""
    from megatron.core.transformer.moe.router_replay import RouterReplay
    build("softmax", mtp=False)
    model, cfg = build("softmax", mtp=False, seed=3)
    seqs = sequences([4, 4])
    alone = solo(model, seqs)
    reader, recs = rollout_trace(cfg, seqs)
    ids, mask, pos, am = padded_batch(seqs, "right")
    lay = RM.padded(mask)
    data = RM.replay_data(model, recs, lay, trace=reader, input_ids=ids)
    with pytest.raises(ValueError, match="does not match instances"):
        RouterReplay.set_replay_data(data.tensors)
    data.apply()
    forward_and_check(model, data, recs, lay, alone, ids, pos, am)


def test_recorded_records_refuse_partial_data(mg):
    from megatron.core.transformer.moe.router_replay import RouterReplay
    model, cfg = build("softmax", mtp=False)
    lay = RM.padded(np.ones((2, 6), bool))                     # 12 router rows
    half = [torch.zeros(6, 2, dtype=torch.int64), torch.zeros(6, 2, dtype=torch.int64)]
    with pytest.raises(AdapterError, match=r"decoder layer 1: recorded ids have shape \(6, 2\), the micro-batch has "
                                           r"\[12, 2\] \(under sequence parallelism gather the ranks' slices first\)"):
        RM.recorded_records(model, lay, recorded=half)
    bad = [torch.full((12, 2), 8, dtype=torch.int64)] * 2
    with pytest.raises(AdapterError, match=r"decoder layer 1: recorded expert id outside 0..7"):
        RM.recorded_records(model, lay, recorded=bad)
    ok = [torch.tensor([[0, 1]] * 12), torch.tensor([[2, 3]] * 12)]
    with pytest.raises(AdapterError, match="uids: 3 entries for the 2 sequences"):
        RM.recorded_records(model, lay, recorded=ok, uids=["a", "b", "c"])
    RouterReplay.global_router_replay_instances.reverse()      # recorded follows the global list's order
    d = RM.recorded_records(model, lay, recorded=ok)
    assert d[0]["uid"] == "seq-0" and d[0]["topk_ids"].shape == (5, 2, 2)
    assert d[0]["topk_ids"][0].tolist() == [[2, 3], [0, 1]]
