"""Routing replay (R2/R3) in Megatron-core from .rtrace records, and Megatron's recorded routing back to records.

Megatron-core replays routing through ``RouterReplay``
(``megatron/core/transformer/moe/router_replay.py``): with
``TransformerConfig(moe_enable_routing_replay=True)`` each ``TopKRouter`` owns one instance, and in
``REPLAY_FORWARD`` the router takes the ``[num_tokens, top_k]`` expert ids it was given instead of
its own top-k, gathering its own scores at those ids for the gates (``topk_routing_with_score_function``).
``REPLAY_BACKWARD`` pops the ids of each ``set_target_indices`` call first in, first out, for the
activation-checkpoint recompute; ``RECORD`` keeps the ids the router chose.

This module builds those per-layer tensors from trace records, in the token order of a micro-batch::

    lay = rtrace.megatron.padded(attention_mask)                   # [B, S] batch, left or right padding
    lay = rtrace.megatron.packed(cu_seqlens, cu_seqlens_padded)    # THD: sequences packed one after another
    data = rtrace.megatron.replay_data(model, [recs[u] for u in uids], lay, trace=reader, input_ids=input_ids)
    data.apply()                                                   # set_target_indices + REPLAY_FORWARD

and turns what a ``RECORD`` pass kept back into ``Writer.add`` arguments (``recorded_records``).

Token order. Megatron's routers see ``[seq, batch, hidden]``: in a padded ``[B, S]`` micro-batch the
router row of batch row ``b``, column ``s`` is ``s * B + b``; in a packed (THD) micro-batch the row is
the token's place in the packed stream. Under sequence parallelism each tensor-parallel rank routes
one contiguous ``1/tp`` slice of those rows, and gets only that slice.

Layers are matched by decoder index (the router's ``layer_number - 1``) against the trace's
``layer_map``, never by list position: dense layers and multi-token-prediction (MTP) heads shift
nothing. An MTP head's routers get no tensor (``None``): the trace has no MTP layer, so they route
natively (``apply`` and ``set_action`` leave their action unset).

Tokens a record lacks. Megatron replays every row it is given, so each row needs ids:

* padding (batch padding, THD slot padding, a padded tail) gets *filler* ids, distinct in the row
  (``(row * top_k + slot) % num_experts``, never 0 repeated: duplicates upset the token dispatcher);
  padding feeds no loss term;
* a sequence's last token when the record has no row for it (the usual ``tokens - 1`` rows) gets
  filler ids too: under causal attention no other token reads it and its logits predict past the
  sequence;
* any other token without a row (before ``start``, past the rows, or a ``-1`` (row, layer)) is an
  error naming the uid, position and layer (``missing="error"``, the default), or filler ids counted in
  ``stats.filled`` (``missing="fill"``): such a token is then routed to the wrong experts, knowingly.

torch and megatron-core are imported lazily: importing this module needs neither.
Verified with megatron-core 0.16.1 / torch 2.13 (CPU): see python/README.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

import numpy as np

from .adapters import AdapterError, geometry as _trace_geometry, validate_ids

__all__ = ["Layout", "padded", "packed", "MoERouter", "routers", "geometry", "ReplayStats", "ReplayData",
           "replay_data", "set_action", "recorded_records", "AdapterError"]


def _np(x):
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _ints(x, what, ndim):
    a = _np(x)
    if a.ndim != ndim:
        raise AdapterError(f"{what}: expected {ndim} dimension(s), got shape {a.shape}")
    if a.dtype.kind not in "iub":
        raise AdapterError(f"{what}: expected integers, got {a.dtype}")
    return a.astype(np.int64)


# layouts -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """Where each sequence of a micro-batch sits in the rows Megatron's routers see.

    ``rows[i]``: the router rows of sequence ``i``'s tokens, in token order; ``id_index[i]``: where the
    same tokens sit in ``input_ids`` flattened (``ids_shape``). ``num_tokens``: the router rows of the
    whole micro-batch before any sequence-parallel split. Build it with ``padded`` or ``packed``."""
    kind: str
    num_tokens: int
    rows: tuple
    id_index: tuple
    ids_shape: tuple

    @property
    def num_sequences(self) -> int:
        return len(self.rows)


def padded(attention_mask) -> Layout:
    """A padded ``[B, S]`` micro-batch; ``attention_mask`` (1/True = real token) marks each row's tokens,
    left or right padded. Token ``j`` of batch row ``b`` is its ``j``-th real position ``s``, router row
    ``s * B + b`` (Megatron routes ``[S, B, hidden]`` flattened)."""
    m = _np(attention_mask)
    if m.ndim != 2:
        raise AdapterError(f"attention_mask: expected [batch, seq], got shape {m.shape}")
    if m.dtype.kind not in "biuf" or not np.isin(m, (0, 1)).all():
        raise AdapterError("attention_mask: values must be 0/1 or booleans")
    m = m.astype(bool)
    B, S = m.shape
    rows, idx = [], []
    for b in range(B):
        s = np.nonzero(m[b])[0]
        rows.append(s * B + b)
        idx.append(b * S + s)
    return Layout("padded", B * S, tuple(rows), tuple(idx), (B, S))


def packed(cu_seqlens, cu_seqlens_padded=None, num_tokens=None) -> Layout:
    """A packed (THD) micro-batch: sequence ``i`` is ``cu_seqlens[i+1] - cu_seqlens[i]`` tokens starting at
    ``cu_seqlens_padded[i]`` (default ``cu_seqlens[i]``: no padding between sequences), as in Megatron's
    ``PackedSeqParams``. ``num_tokens`` (default ``cu_seqlens_padded[-1]``) is the packed length the model
    runs, padding at the tail included. Router row = place in the packed stream; ``input_ids`` is
    ``[num_tokens]`` or ``[1, num_tokens]``."""
    cu = _ints(cu_seqlens, "cu_seqlens", 1)
    cp = cu if cu_seqlens_padded is None else _ints(cu_seqlens_padded, "cu_seqlens_padded", 1)
    if len(cu) < 1 or cu[0] != 0:
        raise AdapterError(f"cu_seqlens: must start at 0, got {cu[:4].tolist()}")
    lens = np.diff(cu)
    if (lens < 0).any():
        i = int(np.nonzero(lens < 0)[0][0])
        raise AdapterError(f"cu_seqlens: decreases at sequence {i} ({cu[i]} -> {cu[i + 1]})")
    if len(cp) != len(cu):
        raise AdapterError(f"cu_seqlens_padded: {len(cp)} entries, cu_seqlens has {len(cu)}")
    if cp[0] != 0:
        raise AdapterError(f"cu_seqlens_padded: must start at 0, got {cp[0]}")
    slots = np.diff(cp)
    short = slots < lens
    if short.any():
        i = int(np.nonzero(short)[0][0])
        raise AdapterError(f"cu_seqlens_padded: sequence {i} has {lens[i]} tokens (cu_seqlens) but a slot of "
                           f"{slots[i]} (cu_seqlens_padded)")
    total = int(cp[-1]) if len(cp) else 0
    n = total if num_tokens is None else int(num_tokens)
    if n < total:
        raise AdapterError(f"num_tokens: {n} is less than the packed length {total} (cu_seqlens_padded[-1])")
    rows = tuple(np.arange(cp[i], cp[i] + lens[i], dtype=np.int64) for i in range(len(lens)))
    return Layout("packed", n, rows, rows, (n,))


def _input_ids(input_ids, lay: Layout):
    if input_ids is None:
        return None
    a = _np(input_ids)
    shape = tuple(a.shape)
    ok = shape == lay.ids_shape or (lay.kind == "packed" and shape == (1,) + lay.ids_shape)
    if not ok:
        want = lay.ids_shape if lay.kind == "padded" else f"{lay.ids_shape} or {(1,) + lay.ids_shape}"
        raise AdapterError(f"input_ids: shape {shape}, the {lay.kind} layout needs {want}")
    if a.dtype.kind not in "iu":
        raise AdapterError(f"input_ids: expected integers, got {a.dtype}")
    return a.reshape(-1).astype(np.int64)


# the model's routers -----------------------------------------------------------------------------
@dataclass(frozen=True)
class MoERouter:
    """One replay-enabled ``TopKRouter`` of the model: its 0-based decoder layer (``None`` for a router of a
    multi-token-prediction head), module path and the router module (``.router.router_replay`` is its
    ``RouterReplay``)."""
    decoder_layer: Optional[int]
    name: str
    router: Any = field(repr=False)


def _megatron():
    try:
        from megatron.core.transformer.moe.router import TopKRouter
        from megatron.core.transformer.moe.router_replay import RouterReplay, RouterReplayAction
    except ImportError as e:
        raise ImportError(f"rtrace.megatron needs megatron-core (pip install megatron-core): {e}") from None
    return TopKRouter, RouterReplay, RouterReplayAction


def routers(model) -> List[MoERouter]:
    """The replay-enabled routers of ``model`` (a module, or the list of virtual-pipeline chunks), in the
    order of ``RouterReplay.global_router_replay_instances`` (the order ``set_replay_data`` takes).

    Refuses, naming the router: a model without ``moe_enable_routing_replay``, a router whose layer number
    was never set, two routers of one decoder layer, and the settings that bypass Megatron's replay
    (``moe_router_fusion=True`` runs the fused top-k before the replay hook; sinkhorn routing never calls it)."""
    TopKRouter, RouterReplay, _ = _megatron()
    chunks = list(model) if isinstance(model, (list, tuple)) else [model]
    found, seen = [], {}
    for ci, chunk in enumerate(chunks):
        for name, mod in chunk.named_modules():
            if not isinstance(mod, TopKRouter):
                continue
            path = f"{ci}.{name}" if len(chunks) > 1 else name
            cfg = mod.config
            if mod.router_replay is None:
                raise AdapterError(f"router {path}: no RouterReplay; build the model with "
                                   f"TransformerConfig(moe_enable_routing_replay=True)")
            if getattr(cfg, "moe_router_fusion", False):
                raise AdapterError(f"router {path}: moe_router_fusion=True computes the fused top-k before "
                                   f"Megatron's replay hook, so replayed ids would be ignored; set it False")
            if mod.routing_type == "sinkhorn":
                raise AdapterError(f"router {path}: sinkhorn routing does not go through Megatron's replay hook")
            ln = mod.layer_number
            if ln is None:
                raise AdapterError(f"router {path}: layer_number is not set (MoELayer.set_layer_number)")
            if "mtp" in name.split("."):
                layer = None
            else:
                layer = int(ln) - 1
                if not 0 <= layer < cfg.num_layers:
                    raise AdapterError(f"router {path}: layer_number {ln} outside the decoder's 1..{cfg.num_layers}")
                if layer in seen:
                    raise AdapterError(f"decoder layer {layer} has two routers: {seen[layer]} and {path}")
                seen[layer] = path
            found.append(MoERouter(layer, path, mod))
    if not found:
        raise AdapterError(f"no TopKRouter found in {type(chunks[0]).__name__ if chunks else 'an empty list'}")
    pos = {id(r): i for i, r in enumerate(RouterReplay.global_router_replay_instances)}
    if all(id(r.router.router_replay) in pos for r in found):
        found.sort(key=lambda r: pos[id(r.router.router_replay)])
    return found


def _config(rs):
    return rs[0].router.config


def _moe_pattern(cfg):
    """The decoder indices of the MoE layers by ``moe_layer_freq``, or None where it is not an int or list."""
    f, n = getattr(cfg, "moe_layer_freq", 1), cfg.num_layers
    if isinstance(f, int) and f > 0:
        return {i for i in range(n) if i % f == 0}
    if isinstance(f, (list, tuple)) and len(f) == n:
        return {i for i, v in enumerate(f) if v}
    return None


def geometry(model, name: str = "") -> dict:
    """The ``model`` dict for ``rtrace.Writer``: ``num_layers`` (decoder layers, MTP heads not counted),
    ``num_experts``, ``top_k`` and ``layer_map``, the decoder indices of the MoE layers this process holds
    (all of them without pipeline parallelism; one stage's under it)."""
    rs = routers(model)
    cfg = _config(rs)
    return {"name": str(name), "num_layers": int(cfg.num_layers), "num_experts": int(cfg.num_moe_experts),
            "top_k": int(cfg.moe_router_topk),
            "layer_map": sorted(r.decoder_layer for r in rs if r.decoder_layer is not None)}


def _check_geometry(rs, g):
    cfg = _config(rs)
    for field_, want, cfield in (("num_layers", cfg.num_layers, "num_layers"),
                                 ("num_experts", cfg.num_moe_experts, "num_moe_experts"),
                                 ("top_k", cfg.moe_router_topk, "moe_router_topk")):
        if int(g[field_]) != int(want):
            raise AdapterError(f"trace {field_} is {g[field_]}, the Megatron model has {cfield}={want}")
    lm = [int(x) for x in g["layer_map"]]
    pattern = _moe_pattern(cfg)
    if pattern is not None:
        dense = [l for l in lm if l not in pattern]
        if dense:
            raise AdapterError(f"trace layer_map {lm}: decoder layer {dense[0]} is dense in the Megatron model "
                               f"(moe_layer_freq={cfg.moe_layer_freq}); its MoE layers are {sorted(pattern)}")
    for r in rs:
        if r.decoder_layer is not None and r.decoder_layer not in lm:
            raise AdapterError(f"decoder layer {r.decoder_layer} (router {r.name}) is an MoE layer of the model "
                               f"but missing from the trace's layer_map {lm}")
    return lm


def _tp_split(cfg, rs, tp_rank, tp_size):
    if int(getattr(cfg, "context_parallel_size", 1) or 1) > 1:
        raise AdapterError(f"context_parallel_size={cfg.context_parallel_size}: context parallelism splits each "
                           f"sequence into chunks per rank, a layout rtrace.megatron does not build")
    if tp_size is None:
        if getattr(cfg, "sequence_parallel", False):
            g = rs[0].router.tp_group
            return int(g.rank()), int(g.size())
        return 0, 1
    tp_size, tp_rank = int(tp_size), int(tp_rank or 0)
    if tp_size < 1 or not 0 <= tp_rank < tp_size:
        raise AdapterError(f"tp_rank {tp_rank} / tp_size {tp_size}: need 0 <= tp_rank < tp_size")
    return tp_rank, tp_size


def _filler(n0, n1, k, E):
    """Filler ids of router rows n0..n1-1: ``(row * k + slot) % E``, distinct within a row (k <= E)."""
    t = np.arange(n0, n1, dtype=np.int64)[:, None]
    return (t * k + np.arange(k, dtype=np.int64)[None, :]) % E


def _fields(rec, i):
    """(uid for messages, tokens, start, topk_ids or None) of a Record, a Writer.add dict or None."""
    if rec is None:
        return f"of sequence {i} (None)", np.zeros(0, np.int64), 0, None
    get = rec.get if isinstance(rec, dict) else (lambda key, d=None: getattr(rec, key, d))
    toks = get("tokens", None)
    toks = np.zeros(0, np.int64) if toks is None else np.asarray(_np(toks), dtype=np.int64).reshape(-1)
    ids = get("topk_ids", None)
    if ids is None:
        raise AdapterError(f"record {get('uid')!r}: no topk_ids")
    return repr(get("uid")), toks, int(get("start", 0) or 0), np.asarray(_np(ids))


# replay ------------------------------------------------------------------------------------------
@dataclass
class ReplayStats:
    """Counts of one micro-batch's replay tensors. Token counts: ``num_tokens`` router rows (whole
    micro-batch, before a sequence-parallel split), ``padding`` of them padding. Per decoder layer (keys of
    the dicts): ``replayed`` real tokens given the trace's ids, ``last`` sequences' last tokens filled
    (the record has no row for them), ``filled`` other real tokens filled (``missing="fill"``)."""
    num_tokens: int
    sequences: int
    padding: int
    replayed: dict
    last: dict
    filled: dict


@dataclass
class ReplayData:
    """What ``replay_data`` built. ``tensors``: one ``[num_tokens, top_k]`` int64 tensor per router of
    ``routers`` (its order: ``RouterReplay.set_replay_data(data.tensors)`` takes it when this model's routers
    are all of ``global_router_replay_instances``), ``None`` for an MTP head's router. ``layers``: the
    decoder layer of each (``None`` = MTP). ``stats``: ``ReplayStats``."""
    tensors: list
    layers: list
    stats: ReplayStats
    routers: list = field(repr=False)

    def apply(self, action=None):
        """Gives each router its ids (``set_target_indices``, which also queues them for
        ``REPLAY_BACKWARD``) and sets ``action`` (default ``REPLAY_FORWARD``) on the routers that have ids;
        an MTP head's routers are left without an action, routing natively."""
        _, _, Action = _megatron()
        action = Action.REPLAY_FORWARD if action is None else action
        for r, t in zip(self.routers, self.tensors):
            rr = r.router.router_replay
            if t is None:
                rr.clear_router_replay_action()
            else:
                rr.set_target_indices(t)
                rr.set_router_replay_action(action)


def set_action(model, action):
    """Sets ``action`` (a ``RouterReplayAction`` or None) on the model's decoder routers and clears it on
    MTP heads' routers, which have no trace layer: e.g. ``REPLAY_BACKWARD`` before a backward pass that
    recomputes checkpointed activations. ``RouterReplay.set_global_router_replay_action`` would set it
    on every router of the process, MTP heads and other models included."""
    for r in routers(model):
        if r.decoder_layer is None or action is None:
            r.router.router_replay.clear_router_replay_action()
        else:
            r.router.router_replay.set_router_replay_action(action)


def replay_data(model, records, layout: Layout, trace, input_ids=None, missing: str = "error",
                tp_rank=None, tp_size=None, device=None) -> ReplayData:
    """Per-router ``[num_tokens, top_k]`` expert ids for one micro-batch of ``model`` from trace records.

    * ``records``: one per sequence of ``layout``, in order: ``rtrace.Record``s, ``Writer.add`` dicts
      (uid, tokens, topk_ids, start; ``recorded_records`` gives these) or None (no routing for it).
    * ``trace``: the records' geometry: a ``Reader``, a ``Writer`` or a model dict. num_layers, num_experts
      and top_k must be the model's; every MoE decoder layer of the model must be in its ``layer_map`` and
      every layer there an MoE layer of the model (``moe_layer_freq``).
    * ``input_ids`` (``[B, S]`` padded, ``[T]`` / ``[1, T]`` packed): each sequence's tokens must be its
      record's (uid, position and both ids named otherwise). Without it alignment is unchecked.
    * ``missing``: ``"error"`` or ``"fill"`` for real tokens without a row (module docstring).
    * ``tp_rank``, ``tp_size``: this rank's sequence-parallel slice of the rows; by default from the
      routers' tensor-parallel group when ``sequence_parallel`` is on, else the whole micro-batch.
    * ``device``: where to put the tensors (Megatron moves them to the scores' device at each forward).
    """
    import torch
    if missing not in ("error", "fill"):
        raise AdapterError(f"missing must be 'error' or 'fill', not {missing!r}")
    rs = routers(model)
    cfg = _config(rs)
    g = _trace_geometry(trace)
    lm = _check_geometry(rs, g)
    rank, size = _tp_split(cfg, rs, tp_rank, tp_size)
    records = list(records)
    if len(records) != layout.num_sequences:
        raise AdapterError(f"{len(records)} records for the {layout.num_sequences} sequences of the micro-batch")
    ids_in = _input_ids(input_ids, layout)
    N, E, k, Lt = layout.num_tokens, int(cfg.num_moe_experts), int(cfg.moe_router_topk), len(lm)
    if N % size:
        raise AdapterError(f"num_tokens {N} does not split over tp_size {size} (sequence parallelism)")
    dec = [r for r in rs if r.decoder_layer is not None]
    layers = [r.decoder_layer for r in dec]
    cols = np.array([lm.index(l) for l in layers], dtype=np.int64)
    out = np.broadcast_to(_filler(0, N, k, E), (len(dec), N, k)).copy()
    real = np.zeros(N, dtype=bool)
    rep, last, fil = (np.zeros(len(dec), np.int64) for _ in range(3))
    for i, (rec, rows) in enumerate(zip(records, layout.rows)):
        uid, toks, start, ids = _fields(rec, i)
        n = len(rows)
        real[rows] = True
        if n == 0:
            continue
        if ids is None:
            ids = np.zeros((0, Lt, k), np.int64)
        if ids.ndim != 3 or ids.shape[1:] != (Lt, k):
            raise AdapterError(f"record {uid}: topk_ids has shape {ids.shape}, the trace geometry is "
                               f"[rows, {Lt}, {k}]")
        ids = validate_ids(ids, g, f"record {uid}")     # ids in range, no expert twice, -1 rows whole
        if len(toks):
            if n > len(toks):
                raise AdapterError(f"record {uid}: sequence {i} of the micro-batch has {n} tokens, the record "
                                   f"{len(toks)}")
            if ids_in is not None:
                got = ids_in[layout.id_index[i]]
                bad = np.nonzero(got != toks[:n])[0]
                if len(bad):
                    p = int(bad[0])
                    raise AdapterError(f"record {uid}: token at position {p} is {int(got[p])} in the micro-batch "
                                       f"(sequence {i}) but {int(toks[p])} in the trace")
        j = np.arange(n)
        r = j - start
        have = (r >= 0) & (r < ids.shape[0])
        sub = ids[r[have]][:, cols].astype(np.int64)               # [h, layers, k]
        present = (sub >= 0).all(axis=2)                          # [h, layers]
        lacking = np.ones((n, len(dec)), dtype=bool)
        lacking[have] = ~present
        rr = rows[have]
        if present.all():
            out[:, rr] = sub.transpose(1, 0, 2)
        else:
            for li in range(len(dec)):
                m = present[:, li]
                out[li, rr[m]] = sub[m, li]
        rep += (~lacking).sum(axis=0)
        last += lacking[n - 1]
        lacking[n - 1] = False
        if lacking.any():
            p, li = (int(x[0]) for x in np.nonzero(lacking))
            if missing == "error":
                why = ("no record" if rec is None else "before the record's first row (start)" if p < start else
                       "past the record's rows" if p - start >= ids.shape[0] else "missing (-1) in the record")
                raise AdapterError(f"record {uid}: position {p}, decoder layer {layers[li]} has no routing: {why}; "
                                   f"missing='fill' gives it filler ids (counted in stats.filled)")
            fil += lacking.sum(axis=0)
    lo, hi = rank * N // size, (rank + 1) * N // size
    tensors, li = [], 0
    for r in rs:
        if r.decoder_layer is None:
            tensors.append(None)
            continue
        t = torch.from_numpy(np.ascontiguousarray(out[li, lo:hi]))
        tensors.append(t if device is None else t.to(device))
        li += 1
    stats = ReplayStats(N, layout.num_sequences, int(N - real.sum()), dict(zip(layers, rep.tolist())),
                        dict(zip(layers, last.tolist())), dict(zip(layers, fil.tolist())))
    return ReplayData(tensors, [r.decoder_layer for r in rs], stats, rs)


# record ------------------------------------------------------------------------------------------
def recorded_records(model, layout: Layout, uids=None, input_ids=None, recorded=None, prompt_lens=None,
                     groups=None, include_last: bool = False) -> list:
    """``Writer.add`` keyword dicts, one per sequence of ``layout``, from the ids the model's routers kept
    in a ``RouterReplayAction.RECORD`` forward of that micro-batch (R2, or a training-side trace for
    ``rtrace diff``). The writer's model is ``geometry(model)``.

    ``recorded``: ``RouterReplay.get_recorded_data()`` (aligned with ``global_router_replay_instances``);
    by default each router's own ``get_recorded_indices()``. Each must be ``[num_tokens, top_k]`` for the
    whole micro-batch: under sequence parallelism gather the ranks' slices first
    (``gather_from_sequence_parallel_region``). Record ``i`` has the tokens of sequence ``i`` (from
    ``input_ids``, else none), ``uid`` ``uids[i]`` (default ``seq-<i>``) and ``len(tokens) - 1`` rows, row
    ``p`` the routing of token ``p`` (``include_last=True`` keeps the last token's row). MTP heads are left out."""
    _, RouterReplay, _ = _megatron()
    rs = routers(model)
    cfg = _config(rs)
    g = geometry(model)
    lm = g["layer_map"]
    N, E, k = layout.num_tokens, g["num_experts"], g["top_k"]
    if recorded is not None:
        recorded = list(recorded)
        inst = RouterReplay.global_router_replay_instances
        if len(recorded) != len(inst):
            raise AdapterError(f"recorded: {len(recorded)} tensors, RouterReplay has {len(inst)} instances "
                               f"(get_recorded_data() gives one per instance)")
        pos = {id(x): i for i, x in enumerate(inst)}
    arr = np.empty((N, len(lm), k), dtype=np.int32)
    for r in rs:
        if r.decoder_layer is None:
            continue
        if recorded is None:
            t = r.router.router_replay.get_recorded_indices()
        elif id(r.router.router_replay) not in pos:
            raise AdapterError(f"router {r.name} is not in RouterReplay.global_router_replay_instances, so "
                               f"get_recorded_data() has nothing of it; leave recorded unset")
        else:
            t = recorded[pos[id(r.router.router_replay)]]
        if t is None:
            raise AdapterError(f"decoder layer {r.decoder_layer} (router {r.name}) recorded nothing: set "
                               f"RouterReplayAction.RECORD before the forward")
        a = _np(t)
        if a.shape != (N, k):
            hint = (" (under sequence parallelism gather the ranks' slices first)"
                    if a.ndim == 2 and a.shape[1] == k and a.shape[0] and N % a.shape[0] == 0 else "")
            raise AdapterError(f"decoder layer {r.decoder_layer}: recorded ids have shape {tuple(a.shape)}, the "
                               f"micro-batch has [{N}, {k}]{hint}")
        if a.size and (a.min() < 0 or a.max() >= E):
            raise AdapterError(f"decoder layer {r.decoder_layer}: recorded expert id outside 0..{E - 1}")
        arr[:, lm.index(r.decoder_layer)] = a
    ids_in = _input_ids(input_ids, layout)
    S = layout.num_sequences
    for what, v in (("uids", uids), ("prompt_lens", prompt_lens), ("groups", groups)):
        if v is not None and len(v) != S:
            raise AdapterError(f"{what}: {len(v)} entries for the {S} sequences of the micro-batch")
    out = []
    for i, rows in enumerate(layout.rows):
        n = len(rows)
        nr = n if include_last else max(n - 1, 0)
        d = dict(uid=str(uids[i]) if uids is not None else f"seq-{i}",
                 tokens=ids_in[layout.id_index[i]].astype(np.int32) if ids_in is not None else (),
                 topk_ids=arr[rows[:nr]], prompt_len=int(prompt_lens[i]) if prompt_lens is not None else 0,
                 start=0, group=groups[i] if groups is not None else None)
        out.append(d)
    return out
