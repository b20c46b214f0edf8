"""Routing replay (R3 / R2) for Hugging Face transformers MoE models: ``rtrace.torch.replay_routing``.

Each MoE block's router (its ``gate``) keeps running; a forward hook on it replaces the router's
choice by the trace's expert ids, in the trace's slot order, and recomputes the gate weights from
the router's own scores by the model's own rule, so that gradients reach the router's weights:

* softmax routers (Qwen3-MoE, Qwen2-MoE, OLMoE, Mixtral): softmax over all experts in float32,
  gathered at the replayed ids, renormalised where the model renormalises (``norm_topk_prob``;
  Mixtral always), cast to the dtype the router returns;
* DeepSeek-V3: the sigmoid of the logits (unbiased: the correction bias and the group limit only
  choose experts) gathered at the replayed ids, renormalised with the model's epsilon 1e-20 when
  ``norm_topk_prob``, times ``routed_scaling_factor``.

With the router's own ids these rules give its own weights bit for bit, so a replayed row costs
nothing in exactness. The rules are those of transformers 5.24 (``modeling_qwen3_moe.py``,
``modeling_qwen2_moe.py``, ``modeling_olmoe.py``, ``modeling_mixtral.py``,
``modeling_deepseek_v3.py``); a router class not listed in ``RULES`` is refused, never guessed.

Records are matched to the model by decoder-layer index through their trace's ``layer_map``, and
to the batch by tokens: each batch row's unpadded tokens must equal its record's. Rows the trace
lacks are routed by the router and counted. Under activation checkpointing the recompute in
backward applies the ids its forward applied (found through a gradient hook on the decoder
layer's output), whatever the router would pick the second time.
"""
from __future__ import annotations

import contextlib

import numpy as np

from .adapters import AdapterError
from .reader import Record

__all__ = ["replay_routing", "RoutingReplay", "RULES"]

# router class -> (family, renormalise): renormalise None = the router's ``norm_topk_prob``
RULES = {
    "Qwen3MoeTopKRouter": ("softmax", None),
    "Qwen2MoeTopKRouter": ("softmax", None),
    "OlmoeTopKRouter": ("softmax", None),
    "MixtralTopKRouter": ("softmax", True),
    "DeepseekV3TopkRouter": ("sigmoid", None),
}
DEEPSEEK_EPS = 1e-20   # DeepseekV3TopkRouter.forward: denominator = sum + 1e-20


def _in_backward() -> bool:
    """True inside the autograd engine: a forward that runs now is an activation-checkpoint recompute."""
    import torch
    return torch._C._current_graph_task_id() != -1


def gate_weights(gate, logits, ids, dtype):
    """The gate weights of ``ids`` [N, k] (int64) under ``gate``'s rule, from its ``logits`` [N, E]:
    differentiable in the logits, bit-identical to the router's own weights when ``ids`` are its own."""
    import torch
    family, renorm = RULES[type(gate).__name__]
    if family == "softmax":
        w = torch.softmax(logits, dim=-1, dtype=torch.float32).gather(1, ids)
        if renorm if renorm is not None else gate.norm_topk_prob:
            w = w / w.sum(dim=-1, keepdim=True)
        return w.to(dtype)
    w = logits.sigmoid().gather(1, ids)
    if gate.norm_topk_prob:
        w = w / (w.sum(dim=-1, keepdim=True) + DEEPSEEK_EPS)
    return (w * gate.routed_scaling_factor).to(dtype)


class _Forward:
    """What one forward of the model replays: per MoE layer, the trace's ids [N, k] and which of the
    N = batch x seq rows they cover; the ids each layer applied (for the checkpoint recompute); counts."""

    def __init__(self, B, S, valid, record_pass, uids):
        self.B, self.S = B, S
        self.valid = valid                 # [B*S] bool numpy: unpadded positions
        self.record_pass = record_pass     # r2: this forward records the router's own routing
        self.uids = uids
        self.replay = {}                   # layer -> (ids [N, k], covered [N], all covered) or None: none covered
        self.covered_np = {}               # layer -> [N] bool numpy
        self.applied = {}                  # layer -> ids LongTensor [N, k] the experts received
        self.replaced = {}                 # layer -> (router's ids, replayed ids, covered) for last_stats
        self.native_w = {}                 # r2 with a writer: layer -> (weights, logits) of the router


class RoutingReplay:
    """Replays routing into a model's routers; see ``replay_routing``."""

    def __init__(self, model, mode="r3", strict=False, writer=None):
        import torch  # noqa: F401  (fails clearly when torch is missing)
        from .torch import _LAYER, find_routers, geometry
        if mode not in ("r3", "r2"):
            raise ValueError(f"mode must be 'r3' or 'r2', not {mode!r}")
        if writer is not None and mode != "r2":
            raise ValueError("writer= is for mode='r2' (it receives the routing each record pass takes)")
        self.model, self.mode, self.strict, self.writer = model, mode, bool(strict), writer
        self.geometry = geometry(model)
        self.routers = find_routers(model)
        for li, _block, gate in self.routers:
            if type(gate).__name__ not in RULES:
                raise AdapterError(f"layer {li}: replay_routing does not know the gate-weight rule of "
                                   f"{type(gate).__name__} (known, transformers 5.x: {', '.join(RULES)})")
        self.layer_map = [li for li, _, _ in self.routers]
        self.E, self.k = self.geometry["num_experts"], self.geometry["top_k"]
        names = {id(m): n for n, m in model.named_modules()}
        self.decoder_layers = {}   # layer -> the decoder layer module holding its MoE block
        for li, block, _ in self.routers:
            name = names[id(block)] + "."
            self.decoder_layers[li] = model.get_submodule(name[:_LAYER.search(name).end() - 1])
        if writer is not None:
            from .torch import RoutingRecorder
            wm = writer.header["model"]
            if list(wm["layer_map"]) != self.layer_map or int(wm["num_experts"]) != self.E \
                    or int(wm["top_k"]) != self.k:
                raise AdapterError(f"the writer's model (layer_map {wm['layer_map']}, num_experts "
                                   f"{wm['num_experts']}, top_k {wm['top_k']}) is not this model's "
                                   f"({self.layer_map}, {self.E}, {self.k})")
            self._np = RoutingRecorder._np
        self.memory = {}           # r2: uid -> Record of its record pass
        self.handles = []
        self._records = None       # r3: the records of set_batch
        self._uids = None          # r2: the uids of set_batch
        self._fwd = None           # the forward running now
        self._last = None          # the last finished forward (for last_stats)
        self._bwd = {}             # layer -> the _Forward whose recompute runs in backward now
        self._headers = {}         # id(trace header) -> header, for the headers already checked

    # batch -----------------------------------------------------------------------------------
    def set_batch(self, records=None, uids=None):
        """The next forwards' batch, one entry per batch row, until the next ``set_batch``.

        r3: ``records``, each a ``rtrace.Record`` read from a trace (or None: that row is routed by
        the model). r2: ``uids``: a forward whose uids were all recorded before (by this replay, since
        the last ``forget``) replays their routing; one whose uids are all new records the router's
        routing (the old-policy pass); a mix is refused."""
        if self.mode == "r3":
            if records is None or uids is not None:
                raise ValueError("mode='r3': set_batch(records), one rtrace.Record (or None) per batch row")
            records = list(records)
            for r in records:
                if r is not None and not isinstance(r, Record):
                    raise TypeError(f"set_batch: expected rtrace.Record or None, got {type(r).__name__}")
                if r is not None:
                    self._check_trace(r)
            self._records, self._uids = records, None
        else:
            if uids is None or records is not None:
                raise ValueError("mode='r2': set_batch(uids=[...]), one uid per batch row")
            uids = [str(u) for u in uids]
            if len(set(uids)) != len(uids):
                raise AdapterError(f"set_batch: uids repeat in the batch: {sorted(u for u in set(uids) if uids.count(u) > 1)}")
            known = [u in self.memory for u in uids]
            if any(known) and not all(known):
                raise AdapterError(f"set_batch: uids {[u for u, k in zip(uids, known) if k]} were recorded, "
                                   f"{[u for u, k in zip(uids, known) if not k]} were not: a forward either "
                                   f"records (old-policy pass) or replays, so split the batch")
            self._uids, self._records = uids, None

    def forget(self):
        """r2: drops the recorded routing (call when a new rollout batch starts)."""
        self.memory = {}

    def _check_trace(self, rec):
        h = rec.header
        if h is None:
            raise AdapterError(f"record {rec.uid!r} has no trace header (it was not read by rtrace.Reader): "
                               f"its columns cannot be matched to decoder layers")
        if id(h) in self._headers:
            return
        m = h["model"]
        if int(m["num_experts"]) != self.E:
            raise AdapterError(f"record {rec.uid!r}: the trace's model.num_experts is {m['num_experts']}, the "
                               f"model routes over {self.E} experts")
        if int(m["top_k"]) != self.k:
            raise AdapterError(f"record {rec.uid!r}: the trace's model.top_k is {m['top_k']}, the model "
                               f"picks top-{self.k}")
        lm = [int(x) for x in m["layer_map"]]
        if lm != self.layer_map:
            miss = [l for l in self.layer_map if l not in lm]
            extra = [l for l in lm if l not in self.layer_map]
            why = "; ".join(([f"MoE layers {miss} are missing from the trace"] if miss else [])
                            + ([f"layers {extra} are not MoE layers of the model"] if extra else []))
            raise AdapterError(f"record {rec.uid!r}: the trace's model.layer_map is {lm}, the model's MoE "
                               f"layers are {self.layer_map} ({why})")
        self._headers[id(h)] = h          # kept alive, so that its id is not reused while cached

    # the forward ---------------------------------------------------------------------------
    def _inputs(self, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        if ids is None:
            raise AdapterError("replay_routing checks each batch row's tokens against its record: call the model "
                               "with input_ids (not inputs_embeds)")
        B, S = ids.shape
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = 0
        if cache is not None and hasattr(cache, "get_seq_length"):
            past = int(cache.get_seq_length())
        if past:
            raise AdapterError(f"replay_routing replays whole-sequence forwards; this forward continues a KV cache "
                               f"of {past} tokens")
        if mask is None:
            m = np.ones((B, S), bool)
        else:
            if not hasattr(mask, "ndim") or mask.ndim != 2 or tuple(mask.shape) != (B, S):
                raise AdapterError(f"replay_routing needs a [batch, seq] 0/1 attention_mask of shape {[B, S]}, got "
                                   f"{type(mask).__name__} {list(getattr(mask, 'shape', []))}")
            m = mask.detach().cpu().numpy() != 0
        return ids.detach().cpu().numpy(), m, B, S

    def _pre_hook(self, mod, args, kwargs):
        import torch
        self._fwd = None
        if _in_backward():
            return
        tok, m, B, S = self._inputs(args, kwargs)
        if self.mode == "r3":
            if self._records is None:
                raise AdapterError("replay_routing: no batch: call rp.set_batch(records) before the forward")
            recs = self._records
            uids = [None if r is None else r.uid for r in recs]
            record_pass = False
        else:
            if self._uids is None:
                raise AdapterError("replay_routing: no batch: call rp.set_batch(uids=...) before the forward")
            uids = self._uids
            record_pass = not (uids and uids[0] in self.memory)
            recs = None if record_pass else [self.memory[u] for u in uids]
        if len(uids) != B:
            raise AdapterError(f"set_batch: {len(uids)} {'records' if self.mode == 'r3' else 'uids'} for a batch of "
                               f"{B} sequences")
        F = _Forward(B, S, m.reshape(-1), record_pass, uids)
        F.tokens = tok
        if not record_pass:
            ids, covered = self._plan(recs, tok, m, B, S)
            dev = self.routers[0][2].weight.device
            t_ids = torch.from_numpy(ids).to(dev)
            for j, li in enumerate(self.layer_map):
                c = covered[j]
                F.covered_np[li] = c
                F.replay[li] = (t_ids[j], torch.from_numpy(c).to(dev), bool(c.all())) if c.any() else None
        self._fwd = F

    def _plan(self, recs, tok, m, B, S):
        """ids [L, B*S, k] int64 (0 where not covered) and covered [L, B*S] bool, from the records.
        Vectorised over the batch: per record only slicing and bookkeeping run in Python."""
        L, k, E = len(self.layer_map), self.k, self.E
        lens = m.sum(1).tolist()
        col = np.argsort(~m, axis=1, kind="stable")     # col[b, p]: the column of row b's p-th unpadded token
        ids = np.zeros((L, B * S, k), np.int64)
        covered = np.zeros((L, B * S), bool)
        have = [(b, r) for b, r in enumerate(recs) if r is not None]
        if self.strict and len(have) < len(recs):
            b = next(b for b, r in enumerate(recs) if r is None and lens[b])
            raise AdapterError(f"batch row {b} has no record (strict replay routes nothing natively)")
        if not have:
            return ids, covered
        bs = np.array([b for b, _ in have])
        toks = [r.tokens for _, r in have]
        tl = np.array([len(t) for t in toks])
        if not tl.all():
            b, r = have[int(np.flatnonzero(tl == 0)[0])]
            raise AdapterError(f"record {r.uid!r} carries no tokens: replay cannot check that it belongs to "
                               f"batch row {b}")
        n = np.asarray(lens)[bs]
        c = np.minimum(n, tl)

        def where(starts, ns):
            """Flat batch indices of positions starts[i] .. starts[i] + ns[i] - 1 of rows bs[i], and the
            position of each."""
            first = np.cumsum(ns) - ns
            p = np.repeat(starts - first, ns) + np.arange(int(ns.sum()))
            bb = np.repeat(bs, ns)
            return bb * S + col[bb, p], p

        f, p = where(np.zeros_like(c), c)
        got, want = tok.reshape(-1)[f], np.concatenate([t[:ci] for t, ci in zip(toks, c.tolist())])
        if not np.array_equal(got, want):
            i = int(np.flatnonzero(got != want)[0])
            b = int(f[i] // S)
            raise AdapterError(f"record {recs[b].uid!r} does not match batch row {b}: at position {int(p[i])} the "
                               f"batch has token {int(got[i])}, the record token {int(want[i])}")
        lo = np.array([r.start for _, r in have])
        cnt = np.maximum(np.minimum(lo + np.array([r.n_rows for _, r in have]), n) - lo, 0)
        blocks = [r.topk_ids[:m_] for (_, r), m_ in zip(have, cnt.tolist()) if m_]
        owners = [r for _, r in have]
        if blocks:
            rows = np.concatenate(blocks).astype(np.int64)   # [R, L, k]: the trace's layer_map is the model's
            flat, pos = where(lo, cnt)
            rec_of = np.repeat(np.arange(len(owners)), cnt)
            present = rows[:, :, 0] >= 0
            clean = rows.min() >= 0 and rows.max() < E              # the common case: nothing to report
            if not clean:
                bad = ((rows < 0) | (rows >= E)) & present[:, :, None]
                if bad.any():
                    i, l, j = np.argwhere(bad)[0]
                    raise AdapterError(f"record {owners[rec_of[i]].uid!r}: position {pos[i]}, layer "
                                       f"{self.layer_map[l]}, slot {j}: expert id {rows[i, l, j]} outside 0..{E - 1}")
            if k > 1:
                if k <= 6:      # pairwise: k (k - 1) / 2 compares of [rows, layers]
                    dup = np.zeros(present.shape, bool)
                    for a in range(k):
                        for b in range(a + 1, k):
                            dup |= rows[:, :, a] == rows[:, :, b]
                else:
                    srt = np.sort(rows, axis=2)
                    dup = (srt[:, :, 1:] == srt[:, :, :-1]).any(axis=2)
                dup &= present
                if dup.any():
                    i, l = np.argwhere(dup)[0]
                    raise AdapterError(f"record {owners[rec_of[i]].uid!r}: position {pos[i]}, layer "
                                       f"{self.layer_map[l]} names an expert twice: {rows[i, l].tolist()}")
            ids[:, flat] = (rows if clean else np.where(present[:, :, None], rows, 0)).transpose(1, 0, 2)
            covered[:, flat] = present.T
        if self.strict:
            lack = m.reshape(-1)[None, :] & ~covered
            if lack.any():
                f, l = np.argwhere(lack.T)[0]
                b = f // S
                p = int(m[b, : f % S].sum())
                last = " (the last token's row: a trace of T - 1 rows has none; feed tokens[:-1])" \
                    if p == lens[b] - 1 else ""
                raise AdapterError(f"record {recs[b].uid!r}: no routing for position {p}, layer {self.layer_map[l]}"
                                   f"{last}; strict replay routes nothing natively")
        return ids, covered

    def _gate_hook(self, li, gate):
        def hook(mod, args, out):
            import torch
            if not (isinstance(out, tuple) and len(out) == 3 and all(torch.is_tensor(t) for t in out)
                    and not out[2].is_floating_point()):
                raise AdapterError(f"layer {li}: {type(gate).__name__} did not return (logits, weights, ids) as in "
                                   f"transformers 5.x")
            logits, w_nat, ids_nat = out
            if _in_backward():             # the activation-checkpoint recompute of a forward
                F = self._bwd.get(li)
                if F is None or li not in F.applied:
                    raise AdapterError(f"layer {li}: the router runs again in backward (activation checkpointing), "
                                       f"but replay_routing did not see the forward it recomputes")
                ids = F.applied[li]
                if ids.shape[0] != logits.shape[0]:
                    raise AdapterError(f"layer {li}: the checkpoint recompute routes {logits.shape[0]} tokens, its "
                                       f"forward routed {ids.shape[0]}")
                return logits, gate_weights(gate, logits, ids, w_nat.dtype), ids
            F = self._fwd
            if F is None:
                raise AdapterError(f"layer {li}: the router ran outside a forward of the model given to "
                                   f"replay_routing")
            if ids_nat.shape[0] != F.B * F.S:
                raise AdapterError(f"layer {li}: the router saw {ids_nat.shape[0]} tokens, the forward has "
                                   f"{F.B}x{F.S} = {F.B * F.S}")
            if li in F.applied:
                raise AdapterError(f"layer {li}: the router ran twice in one forward of the model")
            plan = F.replay.get(li)
            if plan is None:
                F.applied[li] = ids_nat.detach()
                if F.record_pass and self.writer is not None:
                    F.native_w[li] = (w_nat.detach(), logits.detach())
                F.replaced[li] = None
                return out
            rids, cov, full = plan
            ids = rids if full else torch.where(cov[:, None], rids, ids_nat)
            F.applied[li] = ids
            F.replaced[li] = (ids_nat.detach(), rids, cov)          # compared when last_stats() asks
            return logits, gate_weights(gate, logits, ids, w_nat.dtype), ids
        return hook

    def _layer_hook(self, li):
        def hook(mod, args, out):
            F = self._fwd
            if F is None or _in_backward():
                return
            import torch
            t = out if torch.is_tensor(out) else (out[0] if isinstance(out, (tuple, list)) and out else None)
            if torch.is_tensor(t) and t.requires_grad:
                def mark(grad, F=F):       # backward reaches this layer: its recompute (if any) is F's
                    self._bwd[li] = F
                t.register_hook(mark)
        return hook

    def _post_hook(self, mod, args, kwargs, out):
        F, self._fwd = self._fwd, None
        if F is None:
            return
        missing = [l for l in self.layer_map if l not in F.applied]
        if missing:
            raise AdapterError(f"the routers of MoE layers {missing} did not run in this forward")
        if F.record_pass:
            self._remember(F)
        self._last = F

    def _remember(self, F):
        """r2: the routing this record pass took, as in-memory records (a row for every unpadded token)."""
        import torch
        ids = torch.stack([F.applied[l] for l in self.layer_map], 1).cpu().numpy()   # [B*S, L, k]
        header = {"model": dict(self.geometry), "engine": {"name": "transformers", "role": "train"}}
        m = F.valid.reshape(F.B, F.S)
        new = {}
        for b, u in enumerate(F.uids):
            pos = np.flatnonzero(m[b])
            new[u] = Record(uid=u, group=None, tokens=F.tokens[b, pos].astype(np.int32), prompt_len=0, start=0,
                            topk_ids=ids[b * F.S + pos].astype(np.int32), header=header)
        if self.writer is not None:
            self._write(F, new)
        self.memory.update(new)

    def _write(self, F, new):
        import torch
        cols = self.writer.header["columns"]
        L, k, E = len(self.layer_map), self.k, self.E
        w = lg = None
        if cols.get("topk_weights") is not None:
            w = self._np(torch.stack([F.native_w[l][0] for l in self.layer_map], 1), cols["topk_weights"])
            w = w.reshape(F.B * F.S, L, k)
        if cols.get("router_logits") is not None:
            lg = self._np(torch.stack([F.native_w[l][1].reshape(-1, E) for l in self.layer_map], 1),
                          cols["router_logits"]).reshape(F.B * F.S, L, E)
        m = F.valid.reshape(F.B, F.S)
        for b, u in enumerate(F.uids):
            rows = (b * F.S + np.flatnonzero(m[b]))[:-1]          # T - 1 rows, as record_routing writes
            r = new[u]
            self.writer.add(uid=u, tokens=r.tokens, topk_ids=r.topk_ids[:-1],
                            topk_weights=None if w is None else w[rows],
                            router_logits=None if lg is None else lg[rows])

    # results -------------------------------------------------------------------------------
    def last_stats(self) -> dict:
        """The last forward's replay: ``rows`` (unpadded tokens), ``rows_replayed`` (tokens whose experts
        came from the trace at every MoE layer), ``rows_native`` (tokens the router routed at some
        layer: no record, a -1 row, beyond the record's rows such as the last token's), ``replaced_rate``
        (over replayed (token, layer)s: the share whose expert set differs from the router's own
        choice, i.e. the natural flip rate), ``pass`` ("replay", or "record" for an r2 record pass)
        and ``layers``: per decoder-layer index ``{replayed, native, replaced, replaced_rate}``."""
        F = self._last
        if F is None:
            return {}
        n = int(F.valid.sum())
        layers = {}
        all_cov = np.ones(F.B * F.S, bool)
        tot_rep = tot_cnt = 0
        for li in self.layer_map:
            cov = F.covered_np.get(li)
            cov = np.zeros(F.B * F.S, bool) if cov is None else cov
            c = int((cov & F.valid).sum())
            rep = 0 if F.replaced.get(li) is None else self._replaced(*F.replaced[li])
            layers[li] = dict(replayed=c, native=n - c, replaced=rep, replaced_rate=rep / c if c else 0.0)
            all_cov &= cov
            tot_rep += rep
            tot_cnt += c
        full = int((all_cov & F.valid).sum())
        return dict(**{"pass": "record" if F.record_pass else "replay"}, rows=n, rows_replayed=full,
                    rows_native=n - full, replaced_rate=tot_rep / tot_cnt if tot_cnt else 0.0, layers=layers)

    @staticmethod
    def _replaced(native, replayed, cov):
        """Replayed rows whose expert set differs from the router's (each row's k ids are distinct)."""
        import torch
        with torch.no_grad():
            same = (replayed[:, :, None] == native[:, None, :]).any(-1).all(-1)
            return int((~same & cov).sum())

    def applied_ids(self):
        """The last forward's routing as the experts received it: int64 numpy [batch, seq, MoE layers, k]."""
        import torch
        F = self._last
        if F is None:
            return None
        return torch.stack([F.applied[l] for l in self.layer_map], 1).cpu().numpy().reshape(F.B, F.S, -1, self.k)

    # hooks -----------------------------------------------------------------------------------
    def attach(self):
        try:
            for li, _block, gate in self.routers:
                self.handles.append(gate.register_forward_hook(self._gate_hook(li, gate)))
                self.handles.append(self.decoder_layers[li].register_forward_hook(self._layer_hook(li)))
            self.handles.append(self.model.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
            self.handles.append(self.model.register_forward_hook(self._post_hook, with_kwargs=True))
        except BaseException:
            self.detach()
            raise
        return self

    def detach(self):
        for h in self.handles:
            h.remove()
        self.handles = []
        self._fwd = None
        self._bwd = {}


@contextlib.contextmanager
def replay_routing(model, mode="r3", strict=False, writer=None):
    """Replays routing into ``model``'s MoE layers for the duration of the ``with`` block; yields the
    ``RoutingReplay``. transformers 5.x models: Qwen3-MoE, Qwen2-MoE, OLMoE, Mixtral, DeepSeek-V3.

    ``mode="r3"``: ``rp.set_batch(records)`` (one ``rtrace.Record`` from a rollout trace per batch row)
    before a forward; each MoE layer's experts then receive the record's ids, in its slot order, at
    every position the record has a row for. ``mode="r2"``: ``rp.set_batch(uids=...)``; the first
    forward over new uids (the old-policy pass) records the router's routing in memory (and through
    ``writer``, an ``rtrace.Writer``, to a trace), later forwards over recorded uids replay it.

    The forward takes ``input_ids`` [batch, seq] and an optional 0/1 ``attention_mask`` (left or right
    padding). Checked, with an ``AdapterError`` naming what differs: the trace's num_experts, top_k and
    layer_map against the model; each row's unpadded tokens against its record's (uid, first
    mismatching position, both tokens). Rows without routing in the record are routed by the model and
    counted in ``rp.last_stats()``; ``strict=True`` refuses them. Everything is unhooked on exit."""
    rp = RoutingReplay(model, mode=mode, strict=strict, writer=writer).attach()
    try:
        yield rp
    finally:
        rp.detach()
