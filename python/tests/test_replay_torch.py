"""rtrace.torch.replay_routing (R3 / R2) against tiny, randomly initialised transformers MoE models of each
architecture it supports: Qwen3-MoE, Qwen2-MoE, OLMoE, Mixtral, DeepSeek-V3.

What the experts receive is read by separate hooks (a pre-hook on ``block.experts``); the router's own
choice by a gate hook registered before the replay's (so it sees the router's output unchanged); the
gate-weight rules are recomputed in numpy float64 from the block's input. Traces are written with
expert ids drawn at random, so that replay differs from what the router would pick."""
import os
import re
import sys

import numpy as np
import pytest

from conftest import require_module

torch = require_module("torch", "rtrace.torch is not tested without it")
require_module("transformers", "the MoE models replay_routing hooks come from it")

import rtrace  # noqa: E402
import rtrace.torch as RT  # noqa: E402
from rtrace.adapters import AdapterError  # noqa: E402
from test_torch import ARCHS, batch, tiny  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
ROLLOUT = dict(name="pytest", role="rollout")


# helpers -------------------------------------------------------------------------------------
def write_trace(path, geo, rows, **kw):
    """rows: [(uid, tokens, topk_ids, start)] -> the records read back."""
    with rtrace.Writer(path, model=geo, engine=ROLLOUT, **kw) as w:
        for uid, tok, ids, start in rows:
            w.add(uid=uid, tokens=tok, topk_ids=ids, start=start)
    return {r.uid: r for r in rtrace.Reader(path)}


def random_ids(rng, n, L, E, k):
    return np.stack([[rng.choice(E, k, replace=False) for _ in range(L)] for _ in range(n)]).astype(np.int32) \
        if n else np.zeros((0, L, k), np.int32)


def unpadded(ids, mask, b):
    return ids[b][mask[b].bool()].numpy()


class Seen:
    """Hooks of the test's own: per MoE layer, the router's own (ids, weights) (a gate hook registered
    before the replay's), the block's input, and every call's (ids, weights) the experts received,
    with whether it ran in backward (an activation-checkpoint recompute)."""

    def __init__(self, model):
        self.native, self.inp, self.calls, self.handles = {}, {}, [], []
        for li, block, gate in RT.find_routers(model):
            self.handles += [gate.register_forward_hook(self._gate(li)),
                             block.register_forward_pre_hook(self._blk(li)),
                             block.experts.register_forward_pre_hook(self._exp(li), with_kwargs=True)]

    def _gate(self, li):
        def f(mod, args, out):
            if torch._C._current_graph_task_id() == -1:
                self.native[li] = (out[2].detach().clone(), out[1].detach().clone())
        return f

    def _blk(self, li):
        def f(mod, args):
            if torch._C._current_graph_task_id() == -1:
                self.inp[li] = args[0].detach().reshape(-1, args[0].shape[-1]).double().numpy().copy()
        return f

    def _exp(self, li):
        def f(mod, args, kwargs):
            a = list(args) + [kwargs.get("top_k_index"), kwargs.get("top_k_weights")][len(args) - 1:]
            self.calls.append((li, torch._C._current_graph_task_id() != -1, a[1].detach().clone(),
                               a[2].detach().clone()))
        return f

    def received(self, li, backward=False):
        return [(i, w) for l, bw, i, w in self.calls if l == li and bw == backward]

    def close(self):
        for h in self.handles:
            h.remove()


def ref_gates(model, gate, h, ids):
    """Gate weights of ``ids`` [N, k] in float64 from the block input h [N, H], by each model's rule."""
    cfg = model.config
    lg = h @ gate.weight.detach().double().numpy().T
    if cfg.model_type == "deepseek_v3":
        w = np.take_along_axis(1 / (1 + np.exp(-lg)), ids, 1)        # unbiased sigmoid scores
        if cfg.norm_topk_prob:
            w = w / (w.sum(1, keepdims=True) + 1e-20)
        return w * cfg.routed_scaling_factor
    p = np.exp(lg - lg.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    w = np.take_along_axis(p, ids, 1)
    if cfg.model_type == "mixtral" or cfg.norm_topk_prob:
        w = w / w.sum(1, keepdims=True)
    return w


# the experts receive the trace's ids ---------------------------------------------------------
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_experts_receive_trace_ids(arch, side, tmp_path):
    """Rows: 0 a full T - 1 record; 1 a record with a -1 row (all layers) and a -1 (row, layer);
    2 a record starting at row 2 (a multi-turn continuation); 3 no record. Every replayed (row, layer)
    gives the experts the trace's ids in slot order, the rest the router's own, and gate weights equal
    the float64 rule; the stats count exactly that."""
    model, layer_map, _ = tiny(arch)
    geo = RT.geometry(model)
    L, E, k = len(layer_map), geo["num_experts"], geo["top_k"]
    ids, mask = batch(4, 8, [8, 6, 7, 5], side, 11)
    rng = np.random.default_rng(1)
    rows = []
    for b, (uid, start) in enumerate([("full", 0), ("holes", 0), ("cont", 2)]):
        t = unpadded(ids, mask, b)
        x = random_ids(rng, len(t) - 1 - start, L, E, k)
        if uid == "holes":
            x[2] = -1
            x[3, L - 1] = -1
        rows.append((uid, t, x, start))
    recs = write_trace(tmp_path / "r.rtrace", geo, rows)
    seen = Seen(model)
    with RT.replay_routing(model) as rp:
        rp.set_batch([recs["full"], recs["holes"], recs["cont"], None])
        model(input_ids=ids, attention_mask=mask)
        st = rp.last_stats()
    seen.close()
    B, S = ids.shape
    m = mask.numpy().astype(bool)
    n_rep = {li: 0 for li in layer_map}
    n_repl = {li: 0 for li in layer_map}
    row_full = np.zeros((B, S), bool)
    for j, li in enumerate(layer_map):
        [(got_ids, got_w)] = seen.received(li)
        nat_ids, nat_w = seen.native[li]
        want = nat_ids.numpy().copy()
        covered = np.zeros(B * S, bool)
        for b, (uid, _, x, start) in enumerate(rows):
            pos = np.flatnonzero(m[b])
            for r in range(len(x)):
                if x[r, j, 0] >= 0:
                    f = b * S + pos[start + r]
                    want[f] = x[r, j]
                    covered[f] = True
        assert np.array_equal(got_ids.numpy(), want)                     # exact ids, slot order
        np.testing.assert_allclose(got_w.double().numpy(), ref_gates(model, RT.find_routers(model)[j][2],
                                                                      seen.inp[li], want), rtol=0, atol=1e-6)
        assert torch.equal(got_w[~torch.from_numpy(covered)], nat_w[~torch.from_numpy(covered)])  # native rows: as is
        n_rep[li] = int(covered.sum())
        n_repl[li] = int((np.sort(want, 1) != np.sort(nat_ids.numpy(), 1)).any(1)[covered].sum())
        row_full = (row_full if j else np.ones((B, S), bool)) & covered.reshape(B, S)
    n = int(m.sum())
    assert st["rows"] == n and st["pass"] == "replay"
    assert st["rows_replayed"] == int((row_full & m).sum())
    assert st["rows_native"] == n - st["rows_replayed"]
    # full: its last token; holes: last token, the -1 row, the row with a -1 layer; cont: rows 0, 1 and the
    # last token; no record: all 5
    assert st["rows_native"] == 1 + 3 + 3 + 5
    for li in layer_map:
        assert st["layers"][li]["replayed"] == n_rep[li] and st["layers"][li]["native"] == n - n_rep[li]
        assert st["layers"][li]["replaced"] == n_repl[li] > 0
        assert st["layers"][li]["replaced_rate"] == pytest.approx(n_repl[li] / n_rep[li])
    assert st["replaced_rate"] == pytest.approx(sum(n_repl.values()) / sum(n_rep.values()))


def test_layers_matched_by_decoder_index(tmp_path):
    """DeepSeek-V3 with a dense first layer: trace column 0 is decoder layer 1, never list position 0;
    a trace laid out for layers [1, 2] replays layer 2's column into layer 2."""
    model, layer_map, _ = tiny("deepseek_v3")
    assert layer_map == [1, 2]
    geo = RT.geometry(model)
    ids, mask = batch(1, 6, [6], "right", 12)
    x = random_ids(np.random.default_rng(2), 5, 2, geo["num_experts"], geo["top_k"])
    recs = write_trace(tmp_path / "d.rtrace", geo, [("a", unpadded(ids, mask, 0), x, 0)])
    seen = Seen(model)
    with RT.replay_routing(model) as rp:
        rp.set_batch([recs["a"]])
        model(input_ids=ids, attention_mask=mask)
    seen.close()
    for j, li in enumerate(layer_map):
        assert np.array_equal(seen.received(li)[0][0][:5].numpy(), x[:, j])


# bit-exact replay of a recorded pass ---------------------------------------------------------
@pytest.mark.parametrize("arch", list(ARCHS))
def test_record_then_replay_is_bit_exact(arch, tmp_path):
    model, layer_map, _ = tiny(arch)
    ids, mask = batch(3, 7, [7, 4, 6], "left", 13)
    for train in (False, True):
        model.train(train)
        p = tmp_path / f"rec{train}.rtrace"
        with rtrace.Writer(p, model=RT.geometry(model), engine=ROLLOUT) as w:
            with RT.record_routing(model, w, include_last=train) as rec:
                rec.set_batch(uids=["a", "b", "c"])
                ref = model(input_ids=ids, attention_mask=mask).logits
        recs = list(rtrace.Reader(p))
        with RT.replay_routing(model) as rp:
            rp.set_batch(recs)
            out = model(input_ids=ids, attention_mask=mask).logits
            st = rp.last_stats()
        assert out.dtype == torch.float32 and torch.equal(out, ref)
        assert st["replaced_rate"] == 0 and st["rows_native"] == (0 if train else 3)


# gradients -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", list(ARCHS))
def test_router_gradients_match_finite_differences(arch, tmp_path):
    """With every row replayed (a row for the last token too) the ids are fixed, so the loss is smooth in
    the router weights: autograd's directional derivative along a random direction equals a central
    finite difference. The model runs in float64 except where the routers compute in float32 (their
    softmax / sigmoid), which limits the agreement to about 1e-3 (a central difference
    extrapolated over two steps, so that the steps can be large against that noise)."""
    model, layer_map, _ = tiny(arch)
    model.set_experts_implementation("eager")          # grouped_mm takes no float64
    model = model.double()
    geo = RT.geometry(model)
    ids, mask = batch(2, 6, [6, 5], "right", 14)
    rng = np.random.default_rng(3)
    recs = write_trace(tmp_path / "g.rtrace", geo, [
        (f"u{b}", unpadded(ids, mask, b), random_ids(rng, n, len(layer_map), geo["num_experts"], geo["top_k"]), 0)
        for b, n in enumerate([6, 5])])
    R = torch.randn(2, 6, 100, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gates = [g.weight for _, _, g in RT.find_routers(model)]
    with RT.replay_routing(model) as rp:
        def loss():
            rp.set_batch([recs["u0"], recs["u1"]])
            return (model(input_ids=ids, attention_mask=mask).logits * R * mask[..., None]).sum()
        model.zero_grad()
        loss().backward()
        assert rp.last_stats()["rows_native"] == 0
        grads = [g.grad.clone() for g in gates]
        for g in grads:
            assert torch.isfinite(g).all() and g.abs().sum() > 0
        gen = torch.Generator().manual_seed(1)
        for g, gr in zip(gates, grads):
            v = torch.randn(g.shape, generator=gen, dtype=g.dtype)

            def central(eps):
                with torch.no_grad():
                    g.add_(eps * v)
                    up = loss().item()
                    g.sub_(2 * eps * v)
                    down = loss().item()
                    g.add_(eps * v)
                return (up - down) / (2 * eps)
            fd = (4 * central(1e-2) - central(2e-2)) / 3           # Richardson: error O(eps^4)
            an = float((gr * v).sum())
            assert abs(fd - an) <= 1e-2 * abs(an), (fd, an)


# checks --------------------------------------------------------------------------------------
def _trace_for(model, tmp_path, ids, mask, name="t", **geo_over):
    geo = dict(RT.geometry(model), **geo_over)
    rows = []
    for b in range(ids.shape[0]):
        t = unpadded(ids, mask, b)
        rows.append((f"u{b}", t, random_ids(np.random.default_rng(b), len(t) - 1, len(geo["layer_map"]),
                                             geo["num_experts"], geo["top_k"]), 0))
    return list(write_trace(tmp_path / f"{name}.rtrace", geo, rows).values())


def test_misaligned_tokens_refused(tmp_path):
    model, _, _ = tiny("qwen3_moe")
    ids, mask = batch(2, 7, [7, 5], "left", 15)
    recs = _trace_for(model, tmp_path, ids, mask)
    bad = ids.clone()
    bad[1, 2 + 3] = 7 if int(ids[1, 5]) != 7 else 8           # row 1 (left-padded by 2), unpadded position 3
    with RT.replay_routing(model) as rp:
        rp.set_batch(recs)
        with pytest.raises(AdapterError) as e:
            model(input_ids=bad, attention_mask=mask)
        assert str(e.value) == (f"record 'u1' does not match batch row 1: at position 3 the batch has token "
                                f"{int(bad[1, 5])}, the record token {int(ids[1, 5])}")
        rp.set_batch(recs[::-1])                                  # rows swapped
        with pytest.raises(AdapterError, match=r"^record 'u1' does not match batch row 0: at position 0 "):
            model(input_ids=ids, attention_mask=mask)
        rp.set_batch(recs[:1])
        with pytest.raises(AdapterError, match=r"^set_batch: 1 records for a batch of 2 sequences$"):
            model(input_ids=ids, attention_mask=mask)
        rp.set_batch(recs)
        with pytest.raises(AdapterError, match=r"call the model with input_ids"):
            model(inputs_embeds=model.get_input_embeddings()(ids), attention_mask=mask)
        model(input_ids=ids, attention_mask=mask)                 # and it still works


@pytest.mark.parametrize("over, msg", [
    (dict(num_experts=16), "record 'u0': the trace's model.num_experts is 16, the model routes over 8 experts"),
    (dict(top_k=3), "record 'u0': the trace's model.top_k is 3, the model picks top-2"),
    (dict(layer_map=[1]), "record 'u0': the trace's model.layer_map is [1], the model's MoE layers are [1, 2] "
                          "(MoE layers [2] are missing from the trace)"),
    (dict(layer_map=[0, 1, 2]), "record 'u0': the trace's model.layer_map is [0, 1, 2], the model's MoE layers are "
                                "[1, 2] (layers [0] are not MoE layers of the model)"),
])
def test_wrong_geometry_refused(tmp_path, over, msg):
    model, _, _ = tiny("qwen3_moe")
    ids, mask = batch(1, 5, [5], "right", 16)
    recs = _trace_for(model, tmp_path, ids, mask, **over)
    with RT.replay_routing(model) as rp:
        with pytest.raises(AdapterError) as e:
            rp.set_batch(recs)
    assert str(e.value) == msg


def test_strict(tmp_path):
    model, _, _ = tiny("olmoe")
    ids, mask = batch(2, 6, [6, 4], "left", 17)
    recs = _trace_for(model, tmp_path, ids, mask)                 # T - 1 rows: no row for the last token
    with RT.replay_routing(model, strict=True) as rp:
        rp.set_batch(recs)
        with pytest.raises(AdapterError, match=r"^record 'u0': no routing for position 5, layer 0 \(the last "
                                               r"token's row: a trace of T - 1 rows has none; feed tokens\[:-1\]\)"):
            model(input_ids=ids, attention_mask=mask)
        rp.set_batch([recs[0], None])
        with pytest.raises(AdapterError, match=r"^batch row 1 has no record"):
            model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1])
        # without the last token every row is replayed (row 1 is left-padded: its last token goes too)
        rp.set_batch(recs)
        model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1])
        assert rp.last_stats()["rows_native"] == 0


def test_bad_ids_and_headerless_records(tmp_path):
    model, _, _ = tiny("qwen3_moe")
    ids, mask = batch(1, 5, [5], "right", 18)
    [r] = _trace_for(model, tmp_path, ids, mask)
    r.topk_ids[2, 1] = [3, 3]
    with RT.replay_routing(model) as rp:
        rp.set_batch([r])
        with pytest.raises(AdapterError, match=r"^record 'u0': position 2, layer 2 names an expert twice: \[3, 3\]$"):
            model(input_ids=ids, attention_mask=mask)
        r.header = None
        with pytest.raises(AdapterError, match=r"^record 'u0' has no trace header"):
            rp.set_batch([r])
    with RT.replay_routing(model):
        with pytest.raises(AdapterError, match=r"no batch: call rp.set_batch"):
            model(input_ids=ids)


def test_hooks_removed_on_exit(tmp_path):
    model, _, _ = tiny("mixtral")
    ids, mask = batch(2, 5, [5, 3], "right", 19)
    ref = model(input_ids=ids, attention_mask=mask).logits
    recs = _trace_for(model, tmp_path, ids, mask)
    counts = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())  # noqa: E731
    before = counts()
    with pytest.raises(RuntimeError, match="boom"):
        with RT.replay_routing(model) as rp:
            rp.set_batch(recs)
            assert not torch.equal(model(input_ids=ids, attention_mask=mask).logits, ref)
            raise RuntimeError("boom")
    assert counts() == before
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, ref)


def test_unknown_router_refused():
    from test_torch import Toy
    with pytest.raises(AdapterError, match=r"^layer 1: replay_routing does not know the gate-weight rule of Linear"):
        with RT.replay_routing(Toy()):
            pass


def test_kv_cache_forward_refused(tmp_path):
    model, _, _ = tiny("qwen3_moe")
    ids, mask = batch(1, 5, [5], "right", 20)
    recs = _trace_for(model, tmp_path, ids, mask)
    cache = model(input_ids=ids[:, :3], use_cache=True).cache
    with RT.replay_routing(model) as rp:
        rp.set_batch(recs)
        with pytest.raises(AdapterError, match="continues a KV cache of 3 tokens"):
            model(input_ids=ids[:, 3:4], cache=cache, use_cache=True)


# activation checkpointing --------------------------------------------------------------------
class FlipInBackward:
    """Makes the router pick other experts when it runs in backward (a near-tie flipping in the
    recompute): registered before the replay, it rotates the router's ids there."""

    def __init__(self, model):
        self.handles = [g.register_forward_hook(self.hook) for _, _, g in RT.find_routers(model)]

    def hook(self, mod, args, out):
        if torch._C._current_graph_task_id() != -1:
            E = mod.weight.shape[0]
            return out[0], out[1], (out[2] + 1) % E

    def close(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpoint_recompute_replays_same_ids(tmp_path, reentrant):
    """Two forwards, then one backward over both: each layer's recompute gives the experts the ids its
    own forward gave (trace ids where replayed, the forward's router choice elsewhere), although the
    router picks others in backward; the gradients equal those of two separate forward + backwards."""
    model, layer_map, _ = tiny("qwen3_moe")
    model.train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    a_ids, a_mask = batch(2, 6, [6, 4], "right", 21)
    b_ids, b_mask = batch(2, 6, [5, 6], "left", 22)
    ra = _trace_for(model, tmp_path, a_ids, a_mask, "a")
    rb = _trace_for(model, tmp_path, b_ids, b_mask, "b")
    flip = FlipInBackward(model)
    # the test can fail: without replay the recompute routes differently
    seen = Seen(model)
    model(input_ids=a_ids, attention_mask=a_mask).logits.sum().backward()
    assert not torch.equal(seen.received(layer_map[0])[0][0], seen.received(layer_map[0], True)[0][0])
    seen.close()
    model.zero_grad()
    seen = Seen(model)
    gates = [g.weight for _, _, g in RT.find_routers(model)]
    with RT.replay_routing(model) as rp:
        rp.set_batch(ra)
        la = (model(input_ids=a_ids, attention_mask=a_mask).logits ** 2).mean()
        rp.set_batch(rb)
        lb = (model(input_ids=b_ids, attention_mask=b_mask).logits ** 2).mean()
        (la + lb).backward()
        both = [g.grad.clone() for g in gates]
        sep = [torch.zeros_like(g) for g in gates]
        for recs, i, m in ((ra, a_ids, a_mask), (rb, b_ids, b_mask)):
            model.zero_grad()
            rp.set_batch(recs)
            (model(input_ids=i, attention_mask=m).logits ** 2).mean().backward()
            sep = [s + g.grad for s, g in zip(sep, gates)]
    seen.close()
    flip.close()
    for li in layer_map:
        fw = [i for i, _ in seen.received(li)][:2]
        bw = [i for i, _ in seen.received(li, True)][:2]
        assert len(bw) == 2
        assert not torch.equal(fw[0], fw[1])
        assert all(any(torch.equal(x, y) for y in fw) for x in bw)   # each recompute = one of the forwards
    for x, y in zip(both, sep):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


# r2 ------------------------------------------------------------------------------------------
def test_r2_records_then_replays(tmp_path):
    model, layer_map, _ = tiny("qwen2_moe")
    ids, mask = batch(4, 6, [6, 5, 6, 3], "right", 23)
    uids = ["a", "b", "c", "d"]
    plain = model(input_ids=ids, attention_mask=mask).logits
    p = tmp_path / "old.rtrace"
    seen = Seen(model)                       # before the replay's hooks: sees the router's own choice
    with rtrace.Writer(p, model=RT.geometry(model), engine=dict(name="t", role="train"), topk_weights_dtype="f32") as w:
        with RT.replay_routing(model, mode="r2", writer=w) as rp:
            rp.set_batch(uids=uids)
            with torch.no_grad():
                old = model(input_ids=ids, attention_mask=mask).logits           # the old-policy pass records
            assert torch.equal(old, plain) and rp.last_stats()["pass"] == "record"
            assert rp.last_stats()["rows_native"] == 20
            rec_ids = rp.applied_ids()
            with torch.no_grad():
                for _, _, g in RT.find_routers(model):                              # the policy moves
                    g.weight.add_(torch.randn_like(g.weight))
            rp.set_batch(uids=["c", "a"])                                          # a mini-batch of the same batch
            model(input_ids=ids[[2, 0]], attention_mask=mask[[2, 0]])
            st = rp.last_stats()
            with pytest.raises(AdapterError, match=r"were recorded, \['e'\] were not"):
                rp.set_batch(uids=["a", "e"])
            rp.set_batch(uids=["b", "a"])
            with pytest.raises(AdapterError, match=r"^record 'b' does not match batch row 0"):
                model(input_ids=ids[[2, 0]], attention_mask=mask[[2, 0]])
    seen.close()
    assert st["pass"] == "replay" and st["rows"] == 12 and st["rows_replayed"] == 12 and st["rows_native"] == 0
    for j, li in enumerate(layer_map):
        got = seen.received(li)[1][0]                                               # the replay pass
        want = np.concatenate([rec_ids[2, :, j], rec_ids[0, :, j]])
        assert np.array_equal(got.numpy(), want)
        nat = seen.native[li][0].numpy()
        flips = int((np.sort(nat, 1) != np.sort(want, 1)).any(1).sum())
        assert flips > 0 and st["layers"][li]["replaced"] == flips
    # the writer got what record_routing writes for the same forward
    written = list(rtrace.Reader(p))
    q = tmp_path / "rec.rtrace"
    model2, _, _ = tiny("qwen2_moe")
    with rtrace.Writer(q, model=RT.geometry(model2), engine=dict(name="t", role="train"), topk_weights_dtype="f32") as w:
        with RT.record_routing(model2, w) as rec:
            rec.set_batch(uids=uids)
            model2(input_ids=ids, attention_mask=mask)
    for x, y in zip(written, rtrace.Reader(q)):
        assert x.uid == y.uid and np.array_equal(x.tokens, y.tokens) and np.array_equal(x.topk_ids, y.topk_ids)
        assert np.array_equal(x.topk_weights, y.topk_weights)


# documentation -------------------------------------------------------------------------------
def test_python_readme_replay_snippet_runs(tmp_path, monkeypatch):
    """python/README.md's R3 trainer snippet, executed as written on a trace recorded from the model."""
    text = open(os.path.join(HERE, "..", "README.md"), encoding="utf-8").read()
    m = re.search(r"## Routing replay.*?```python\n(.*?)```", text, re.S)
    assert m, "python/README.md has no routing replay snippet"
    hf_model, _, _ = tiny("qwen3_moe")
    hf_model.train()
    input_ids, attention_mask = batch(2, 6, [6, 4], "left", 24)
    monkeypatch.chdir(tmp_path)
    with rtrace.Writer("rollout.rtrace", model=RT.geometry(hf_model), engine=ROLLOUT) as w:
        with RT.record_routing(hf_model, w) as rec:
            rec.set_batch(uids=["u0", "u1"])
            hf_model(input_ids=input_ids, attention_mask=attention_mask)
    logged = []
    env = dict(hf_model=hf_model, input_ids=input_ids, attention_mask=attention_mask, batch_uids=["u0", "u1"],
               log=logged.append, rtrace=rtrace,
               compute_loss=lambda out: out.logits.float().pow(2).mean())
    exec(compile(m.group(1), "README.md", "exec"), env)
    assert logged and logged[0]["rows_replayed"] == 8 and logged[0]["rows_native"] == 2
    assert all(g.weight.grad is not None for _, _, g in RT.find_routers(hf_model))


# the experiment's code path (make experiment-torch), one tiny step per mode ------------------
def test_experiment_smoke(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "bench", "replay_torch"))
    try:
        import grpo
    finally:
        sys.path.pop(0)
    cfg = grpo.Config(layers=2, experts=8, top_k=2, width=32, heads=2, expert_width=16, digits=2, prompts=2,
                      group=4, minibatches=2, steps=1, pretrain_steps=1)
    base = grpo.pretrain(grpo.make_model(cfg, 1), cfg, 1)
    out = {}
    for mode in ("none", "r2", "r3"):
        model = grpo.make_model(cfg, 1)
        model.load_state_dict(base.state_dict())
        d = tmp_path / mode
        grpo.Trainer(cfg, mode, 1, str(d), model=model).run()
        rows = [__import__("json").loads(x) for x in open(d / "metrics.jsonl")]
        assert [r["step"] for r in rows] == [0] and all(r["mode"] == mode for r in rows)
        for key in ("reward", "k1", "k3", "extreme_frac_2", "flip_rate_natural", "flip_rate_applied", "grad_norm",
                    "entropy", "time_rollout_s", "time_train_s", "time_replay_s", "time_trace_write_s"):
            assert all(np.isfinite(r[key]) for r in rows), key
        recs = list(rtrace.Reader(d / "traces" / "rollout-0.rtrace"))
        assert len(recs) == 8 and recs[0].topk_ids.shape == (5, 2, 2) and len(recs[0].logprobs) == 2
        out[mode] = rows
    assert all(r["flip_rate_applied"] == 0 for r in out["r3"])
    assert all(r["flip_rate_natural"] == pytest.approx(r["replay_replaced_rate"]) for r in out["r3"])
    assert all(r["flip_rate_applied"] == r["flip_rate_natural"] for r in out["none"] + out["r2"])
    # the paired measurement repeats each mode's own old-policy pass exactly
    assert all(r["k3"] == r["k3_replayed"] for r in out["r3"])
    assert all(r["k3"] == r["k3_router"] for r in out["none"] + out["r2"])
    # the same seed samples the same first rollout in every mode
    assert out["none"][0]["reward"] == out["r2"][0]["reward"] == out["r3"][0]["reward"]
    res = grpo.overhead_bench(grpo.make_model(cfg, 1), cfg, 1, 1, str(tmp_path / "oh"))
    for k in ("fwd_bwd", "update"):
        assert len(res[f"{k}_none_cpu_ms"]) == len(res[f"{k}_r3_cpu_ms"]) == 1
