"""Record the routing of Hugging Face transformers MoE models while they run, and replay it.

Training engine (one record per sequence per whole-sequence forward)::

    with rtrace.Writer("train.rtrace", model=rtrace.torch.geometry(hf_model),
                       engine=dict(name="transformers", role="train"), topk_weights_dtype="bf16") as w, \\
         rtrace.torch.record_routing(hf_model, w) as rec:
        rec.set_batch(uids=["a", "b"], prompt_lens=[12, 9])   # optional, before each forward
        hf_model(input_ids=ids, attention_mask=mask)

Rollout engine (a KV-cached generation: a prefill, then one forward per sampled token)::

    with rtrace.torch.record_routing(hf_model, w) as rec, rec.generation(uids=["a", "b"]) as g:
        seqs = hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=64)
        g.finish(tokens=[...])        # per sequence: prompt + completion, unpadded

Replay into a trainer (R3 from a rollout trace, or R2): ``replay_routing`` (module ``._replay``).

Forward hooks on each MoE block's router (its ``gate``) take the router's own outputs: the top-k
expert ids in the router's slot order (the order the experts receive them), the weights after the
router's own normalisation (and scaling), and optionally the logits. A pre/post hook pair on the
model delimits one forward; when it ends, one record per sequence of the batch is written (inside
``rec.generation()``, when the generation ends). Hooks only read: the model's outputs are unchanged.

Routers understood:

* transformers >= 5 ``*TopKRouter`` / ``*TopkRouter`` gates returning ``(logits, weights, indices)``:
  Qwen3-MoE, Qwen2-MoE, OLMoE, Mixtral, DeepSeek-V3 (sigmoid + bias, group-limited top-k) and the
  other models built the same way;
* DeepSeek-style gates returning ``(indices, weights[, aux_loss])`` (remote-code ``MoEGate``);
* transformers 4.x ``nn.Linear`` gates returning logits only, for the softmax routers whose rule is
  known (Qwen2-MoE, Qwen3-MoE, OLMoE, Mixtral): softmax -> top-k -> renormalised when the block
  says ``norm_topk_prob`` (Mixtral always). Any other logits-only gate is refused, never guessed.

torch is imported lazily: importing this module does not need it.
"""
from __future__ import annotations

import contextlib
import re

import numpy as np

from .adapters import AdapterError, validate_ids

__all__ = ["record_routing", "replay_routing", "find_routers", "geometry", "RoutingRecorder", "RoutingReplay",
           "AdapterError"]

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
# transformers 4.x blocks whose gate is a bare nn.Linear: the routing rule is the block's, known here
_SOFTMAX_BLOCKS = ("Qwen2MoeSparseMoeBlock", "Qwen3MoeSparseMoeBlock", "OlmoeSparseMoeBlock",
                   "MixtralSparseMoeBlock")


def _text_config(model):
    cfg = getattr(model, "config", None)
    if cfg is None:
        m = getattr(model, "module", None)          # DDP-style wrappers
        cfg = getattr(m, "config", None)
    if cfg is not None and hasattr(cfg, "get_text_config"):
        try:
            cfg = cfg.get_text_config()
        except Exception:
            pass
    return cfg


def _int_attr(objs, names):
    for o in objs:
        for a in names:
            v = getattr(o, a, None)
            if isinstance(v, int) and not isinstance(v, bool):
                return v
    return None


def _top_k_of(block, gate, cfg):
    k = _int_attr((gate, block), ("top_k", "num_experts_per_tok", "topk"))
    if k is None:
        k = _int_attr((cfg,), ("num_experts_per_tok", "moe_topk", "top_k"))
    if k is None:
        raise AdapterError(f"cannot tell the top_k of {type(block).__name__}: neither its gate, the block nor "
                           f"the config has top_k / num_experts_per_tok")
    return k


def _num_experts_of(block, gate, cfg):
    e = _int_attr((gate,), ("num_experts", "n_routed_experts", "num_local_experts", "out_features"))
    if e is None:
        w = getattr(gate, "weight", None)
        if w is not None and getattr(w, "ndim", 0) == 2:
            e = int(w.shape[0])
    if e is None:
        e = _int_attr((block, cfg), ("num_experts", "n_routed_experts", "num_local_experts"))
    if e is None:
        raise AdapterError(f"cannot tell the number of experts of {type(block).__name__}")
    return e


def _norm_of(block, gate, cfg):
    for o in (block, gate, cfg):
        v = getattr(o, "norm_topk_prob", None)
        if isinstance(v, bool):
            return v
    return type(block).__name__.startswith("Mixtral")   # Mixtral always renormalises its top-k


def find_routers(model):
    """[(decoder_layer_index, moe_block, gate_module)] of the model's MoE blocks, in layer order.

    A MoE block is a module under ``layers.<i>.`` with a ``gate`` submodule and an ``experts``
    attribute (or a class name ending in SparseMoeBlock / MoeBlock / MoE)."""
    found = {}
    for name, mod in model.named_modules():
        gate = getattr(mod, "gate", None)
        if gate is None or not hasattr(gate, "register_forward_hook"):
            continue
        cls = type(mod).__name__
        if not (hasattr(mod, "experts") or cls.endswith(("SparseMoeBlock", "MoeBlock", "MoE"))):
            continue
        m = _LAYER.search(name + ".")
        if not m:
            continue
        layer = int(m.group(1))
        if layer in found:
            raise AdapterError(f"decoder layer {layer} has two MoE routers ({found[layer][3]}.gate and {name}.gate)")
        found[layer] = (layer, mod, gate, name)
    return [found[k][:3] for k in sorted(found)]


def geometry(model, name=None) -> dict:
    """The ``model`` dict for ``rtrace.Writer`` read off a transformers MoE model: num_layers (decoder
    layers), num_experts, top_k, layer_map (the decoder indices of the MoE layers) and name."""
    cfg = _text_config(model)
    routers = find_routers(model)
    if not routers:
        raise AdapterError(f"no MoE router found in {type(model).__name__} (looked for layers.<i>.*.gate "
                           f"of a module with experts)")
    E = {_num_experts_of(b, g, cfg) for _, b, g in routers}
    K = {_top_k_of(b, g, cfg) for _, b, g in routers}
    if len(E) != 1 or len(K) != 1:
        raise AdapterError(f"the MoE layers disagree on num_experts {sorted(E)} or top_k {sorted(K)}; "
                           f"a trace has one geometry")
    nl = _int_attr((cfg,), ("num_hidden_layers", "num_layers", "n_layer"))
    if nl is None:
        nl = routers[-1][0] + 1
    if name is None:
        name = getattr(cfg, "name_or_path", "") or getattr(cfg, "model_type", "") or type(model).__name__
    return {"name": str(name), "num_layers": nl, "num_experts": E.pop(), "top_k": K.pop(),
            "layer_map": [l for l, _, _ in routers]}


class RoutingRecorder:
    """Hooks a model's routers and writes one record per sequence per forward; see ``record_routing``."""

    def __init__(self, model, writer, record_logits=None, include_last=False):
        import torch  # noqa: F401  (fails clearly when torch is missing)
        self.model, self.writer = model, writer
        self.include_last = bool(include_last)
        hm = writer.header["model"]
        cols = writer.header["columns"]
        self.layer_map = list(hm["layer_map"])
        self.k, self.E = int(hm["top_k"]), int(hm["num_experts"])
        self.want_w = cols.get("topk_weights") is not None
        has_lg = cols.get("router_logits") is not None
        if record_logits is None:
            record_logits = has_lg
        if record_logits and not has_lg:
            raise AdapterError("record_logits=True but the writer has no router_logits column "
                               "(create it with router_logits_dtype='bf16', 'f16' or 'f32')")
        if not record_logits and has_lg:
            raise AdapterError("the writer declares a router_logits column, so every record needs logits: "
                               "leave record_logits unset (or True), or drop router_logits_dtype")
        self.want_logits = bool(record_logits)
        self._check_geometry(hm)
        self.handles = []
        self.step = 0
        self._batch = None
        self._cur = {}
        self._inputs = None
        self._active = False
        self._gen = None

    def _check_geometry(self, hm):
        cfg = _text_config(self.model)
        self.routers = find_routers(self.model)
        if not self.routers:
            raise AdapterError(f"no MoE router found in {type(self.model).__name__} (looked for "
                               f"layers.<i>.*.gate of a module with experts)")
        nl = _int_attr((cfg,), ("num_hidden_layers", "num_layers", "n_layer"))
        if nl is not None and nl != int(hm["num_layers"]):
            raise AdapterError(f"the model has {nl} decoder layers, the writer's model says "
                               f"num_layers={hm['num_layers']}")
        got = [l for l, _, _ in self.routers]
        if got != self.layer_map:
            raise AdapterError(f"the model's MoE layers are {got}, the writer's layer_map is {self.layer_map}")
        self._kind = {}
        for li, block, gate in self.routers:
            e = _num_experts_of(block, gate, cfg)
            if e != self.E:
                raise AdapterError(f"layer {li}: {type(gate).__name__} routes over {e} experts, the writer's model "
                                   f"says num_experts={self.E}")
            k = _top_k_of(block, gate, cfg)
            if k != self.k:
                raise AdapterError(f"layer {li}: {type(gate).__name__} picks top-{k}, the writer's model says "
                                   f"top_k={self.k}")
            self._kind[li] = (type(block).__name__, type(gate).__name__, _norm_of(block, gate, cfg))

    def set_batch(self, uids=None, prompt_lens=None, groups=None, rewards=None, attrs=None):
        """Metadata of the next forward's sequences, each a list with one entry per sequence of the batch
        (checked against the batch size when the forward starts). Cleared after that forward."""
        self._batch = dict(uids=uids, prompt_lens=prompt_lens, groups=groups, rewards=rewards, attrs=attrs)

    # hooks -----------------------------------------------------------------------------------
    def _parse(self, li, out):
        """The router output -> (ids [N, k] int, weights [N, k] float or None, logits [N, E] or None)."""
        import torch
        blk, gname, norm = self._kind[li]
        logits = idx = w = None
        if isinstance(out, (tuple, list)):
            ts = [t for t in out if torch.is_tensor(t)]
            if (len(out) >= 3 and all(torch.is_tensor(t) for t in out[:3])
                    and out[0].is_floating_point() and out[1].is_floating_point()
                    and not out[2].is_floating_point()):
                logits, w, idx = out[0], out[1], out[2]          # transformers >= 5: (logits, weights, ids)
            else:
                ints = [t for t in ts if not t.is_floating_point()]
                floats = [t for t in ts if t.is_floating_point()]
                if ints:                                        # DeepSeek-style: (ids, weights[, aux])
                    idx = ints[0]
                    w = next((t for t in floats if t.shape == idx.shape), None)
                    logits = next((t for t in floats if t.ndim >= 1 and t.shape[-1] == self.E
                                   and t.shape != idx.shape), None)
                elif floats:
                    logits = floats[0]
        elif torch.is_tensor(out) and out.is_floating_point():
            logits = out
        if idx is None:
            if logits is None:
                raise AdapterError(f"layer {li}: {gname} returned {type(out).__name__}, not router logits or "
                                   f"top-k indices")
            if blk not in _SOFTMAX_BLOCKS:
                raise AdapterError(f"layer {li}: {gname} of {blk} returns logits only and rtrace.torch does not "
                                   f"know that block's routing rule (known: {', '.join(_SOFTMAX_BLOCKS)})")
            probs = torch.softmax(logits.float(), dim=-1)
            w, idx = torch.topk(probs, self.k, dim=-1)
            if norm:
                w = w / w.sum(dim=-1, keepdim=True)
            w = w.to(logits.dtype)
        idx = idx.reshape(-1, idx.shape[-1]) if idx.ndim != 2 else idx
        if idx.shape[-1] != self.k:
            raise AdapterError(f"layer {li}: {gname} returned ids of shape {list(idx.shape)}, the writer's "
                               f"model routes top-{self.k}")
        if w is not None:
            if w.numel() != idx.numel():
                raise AdapterError(f"layer {li}: {gname} returned weights of shape {list(w.shape)} for ids of "
                                   f"shape {list(idx.shape)}")
            w = w.reshape(idx.shape)
        elif self.want_w:
            raise AdapterError(f"layer {li}: {gname} returns no top-k weights, but the writer declares a "
                               f"topk_weights column")
        if logits is not None:
            if logits.shape[-1] != self.E:
                raise AdapterError(f"layer {li}: {gname} returned logits of shape {list(logits.shape)}, the "
                                   f"writer's model has {self.E} experts")
            logits = logits.reshape(-1, self.E)
        elif self.want_logits:
            raise AdapterError(f"layer {li}: {gname} returns no logits, but the writer declares a "
                               f"router_logits column")
        return idx, w, logits

    def _gate_hook(self, li):
        def hook(mod, args, out):
            if not self._active:   # a forward not through the hooked model, or checkpoint recomputation
                return
            import torch
            with torch.no_grad():
                idx, w, logits = self._parse(li, out)
                if li in self._cur:
                    raise AdapterError(f"layer {li}: the router ran twice in one forward of the model")
                self._cur[li] = (idx.detach().clone(),
                                 None if w is None or not self.want_w else w.detach().clone(),
                                 None if logits is None or not self.want_logits else logits.detach().clone())
        return hook

    @staticmethod
    def _past(kwargs) -> int:
        """Tokens already in the forward's KV cache (transformers 5.x passes it as ``cache``, before as
        ``past_key_values``)."""
        pkv = kwargs.get("cache")
        if pkv is None:
            pkv = kwargs.get("past_key_values")
        if pkv is None:
            return 0
        try:
            return int(pkv.get_seq_length()) if hasattr(pkv, "get_seq_length") else len(pkv)
        except Exception:
            return 0

    def _pre_hook(self, mod, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        emb = kwargs.get("inputs_embeds")
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        self._cur = {}
        self._active = False
        if ids is None and emb is None:
            raise AdapterError("record_routing: the forward has neither input_ids nor inputs_embeds")
        B, S = (ids.shape if ids is not None else emb.shape[:2])
        past = self._past(kwargs)
        if self._gen is not None:
            mask = self._gen.begin(ids, mask, B, S, past)
        elif past:
            raise AdapterError(f"record_routing records whole-sequence forwards (training, prefill); this "
                               f"forward continues a KV cache of {past} tokens (use_cache / generate): "
                               f"record a KV-cached generation inside rec.generation()")
        if mask is not None and (mask.ndim != 2 or tuple(mask.shape) != (B, S)):
            raise AdapterError(f"record_routing needs a [batch, seq] 0/1 attention_mask of shape {[B, S]}, "
                               f"got shape {list(mask.shape)}")
        meta = self._batch or {}
        for key, v in meta.items():
            if v is not None and len(v) != B:
                raise AdapterError(f"set_batch: {len(v)} {key} for a batch of {B} sequences")
        self._inputs = (ids, mask, B, S)
        self._active = True

    def _post_hook(self, mod, args, kwargs, out):
        try:
            if self._active:
                if self._gen is not None:
                    self._gen.add(*self._collect())
                else:
                    self._emit()
        finally:
            self._active = False
            self._cur = {}
            if self._gen is None:
                self._batch = None

    @staticmethod
    def _np(t, dtype_name):
        import torch
        t = t.to("cpu")
        if dtype_name == "bf16" and t.dtype == torch.bfloat16:
            return t.contiguous().view(torch.int16).numpy().view(np.uint16)   # bit-exact
        if dtype_name == "f16" and t.dtype == torch.float16:
            return t.numpy()
        return t.float().numpy()   # f32 exactly; the writer rounds to a narrower column type

    def _collect(self):
        """The forward's routing as numpy: ids [B, S, L, k], weights [B, S, L, k] or None, logits
        [B, S, L, E] or None, tokens [B, S] or None, mask [B, S] bool."""
        import torch
        ids_in, mask, B, S = self._inputs
        missing = [l for l in self.layer_map if l not in self._cur]
        if missing:
            raise AdapterError(f"the routers of MoE layers {missing} did not run in this forward")
        for l in self.layer_map:
            n = self._cur[l][0].shape[0]
            if n != B * S:
                raise AdapterError(f"layer {l}: the router saw {n} tokens, the forward has {B}x{S} = {B * S}")
        cols = self.writer.header["columns"]
        L = len(self.layer_map)
        ids = torch.stack([self._cur[l][0] for l in self.layer_map], 1).to("cpu").numpy()   # [B*S, L, k]
        ids = ids.reshape(B, S, L, self.k)
        w = lg = None
        if self.want_w:
            w = self._np(torch.stack([self._cur[l][1] for l in self.layer_map], 1), cols["topk_weights"])
            w = w.reshape(B, S, L, self.k)
        if self.want_logits:
            lg = self._np(torch.stack([self._cur[l][2] for l in self.layer_map], 1), cols["router_logits"])
            lg = lg.reshape(B, S, L, self.E)
        tok = ids_in.detach().cpu().numpy() if ids_in is not None else None
        m = mask.detach().cpu().numpy() != 0 if mask is not None else np.ones((B, S), bool)
        return ids, w, lg, tok, m

    def _emit(self):
        ids, w, lg, tok, m = self._collect()
        B = ids.shape[0]
        meta = self._batch or {}
        recs = []
        for b in range(B):
            def g(key, default=None):
                v = meta.get(key)
                return default if v is None else v[b]
            uid = g("uids", f"step{self.step}-{b}")
            pos = np.flatnonzero(m[b])
            rows = pos if self.include_last else pos[:-1]
            rid = validate_ids(ids[b, rows].astype(np.int64), self.writer, what=f"record {uid!r}",
                               allow_missing=False)
            pl = g("prompt_lens")
            if pl is not None and not 0 <= int(pl) <= len(pos):
                raise AdapterError(f"record {uid!r}: prompt_len {int(pl)} outside 0..{len(pos)} (the sequence's "
                                   f"unpadded length)")
            recs.append(dict(uid=uid, tokens=() if tok is None else tok[b, pos], topk_ids=rid,
                             topk_weights=None if w is None else w[b, rows],
                             router_logits=None if lg is None else lg[b, rows],
                             prompt_len=int(pl or 0), group=g("groups"), reward=g("rewards"), attrs=g("attrs")))
        for r in recs:     # all validated first: a bad batch writes nothing
            self.writer.add(**r)
        self.step += 1

    @contextlib.contextmanager
    def generation(self, uids=None, prompt_lens=None, groups=None):
        """Records one KV-cached generation: a prefill forward, then forwards that continue its cache
        (one per sampled token, as ``generate`` or a hand-written loop runs them). Each forward's
        routing is appended to its sequences (padding, from ``attention_mask``, left out); the records
        are written when the block ends without an exception, one per sequence: call
        ``g.finish(tokens=..., logprobs=..., rewards=..., attrs=...)`` on the yielded handle to give the
        whole sequences (the last sampled token is never fed through the model, so only the caller
        knows it; a sequence that ended early is cut there) and what else the records hold.
        ``prompt_lens`` defaults to each prefill's unpadded length, ``uids`` to ``step<n>-<b>``."""
        if self._gen is not None:
            raise AdapterError("record_routing: a generation is already being recorded")
        g = _Generation(self, uids, prompt_lens, groups)
        self._gen = g
        try:
            yield g
            if not g.done:
                g.finish()
        finally:
            self._gen = None

    def attach(self):
        for li, _block, gate in self.routers:
            self.handles.append(gate.register_forward_hook(self._gate_hook(li)))
        self.handles.append(self.model.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
        self.handles.append(self.model.register_forward_hook(self._post_hook, with_kwargs=True))
        return self

    def detach(self):
        for h in self.handles:
            h.remove()
        self.handles = []
        self._active = False


class _Generation:
    """The sequences of one KV-cached generation being recorded (``RoutingRecorder.generation``)."""

    def __init__(self, rec, uids, prompt_lens, groups):
        self.rec, self.uids, self.prompt_lens, self.groups = rec, uids, prompt_lens, groups
        self.B = None          # batch size, from the prefill
        self.fed = 0           # columns of the KV cache so far (padding included)
        self.done = False

    def begin(self, ids, mask, B, S, past):
        """Checks a forward against the generation; returns the [B, S] mask of its new tokens."""
        if ids is None:
            raise AdapterError("rec.generation() records tokens: call the model with input_ids")
        if self.done:
            raise AdapterError("rec.generation(): a forward after finish()")
        if self.B is None:
            if past:
                raise AdapterError(f"rec.generation() starts with a prefill; this forward continues a KV cache of "
                                   f"{past} tokens that the recorder did not see")
            for key, v in (("uids", self.uids), ("prompt_lens", self.prompt_lens), ("groups", self.groups)):
                if v is not None and len(v) != B:
                    raise AdapterError(f"rec.generation(): {len(v)} {key} for a batch of {B} sequences")
            self.B = B
            self.tokens = [[] for _ in range(B)]
            self.ids = [[] for _ in range(B)]
            self.w = [[] for _ in range(B)]
            self.lg = [[] for _ in range(B)]
            self.prefill = [0] * B
        else:
            if B != self.B:
                raise AdapterError(f"rec.generation(): a forward over {B} sequences, the prefill had {self.B}")
            if past != self.fed:
                raise AdapterError(f"rec.generation(): this forward continues a KV cache of {past} tokens, the "
                                   f"generation has fed {self.fed} (a forward outside the recorder, or another cache)")
        if mask is not None and hasattr(mask, "ndim") and mask.ndim == 2 and tuple(mask.shape) == (B, past + S) \
                and past:
            mask = mask[:, past:]          # generate passes the mask of the whole cache
        return mask

    def add(self, ids, w, lg, tok, m):
        first = self.fed == 0
        for b in range(self.B):
            pos = np.flatnonzero(m[b])
            self.tokens[b].append(tok[b, pos])
            self.ids[b].append(ids[b, pos])
            if w is not None:
                self.w[b].append(w[b, pos])
            if lg is not None:
                self.lg[b].append(lg[b, pos])
            if first:
                self.prefill[b] = len(pos)
        self.fed += ids.shape[1]

    def finish(self, tokens=None, logprobs=None, rewards=None, attrs=None):
        """Writes one record per sequence. ``tokens``: per sequence, its whole unpadded token sequence
        (prompt + completion, the last sampled token included); the tokens fed through the model must
        agree with it, and the record keeps ``len(tokens) - 1`` rows (a sequence that ended before the
        last forward is cut there). Without ``tokens`` the record holds the fed tokens (and their rows
        but the last, unless ``include_last``). ``logprobs``, ``rewards``, ``attrs``: per sequence."""
        rec = self.rec
        if self.done:
            raise AdapterError("rec.generation(): finish() twice")
        if self.B is None:
            raise AdapterError("rec.generation(): finish() before any forward")
        B = self.B
        for key, v in (("tokens", tokens), ("logprobs", logprobs), ("rewards", rewards), ("attrs", attrs)):
            if v is not None and len(v) != B:
                raise AdapterError(f"finish: {len(v)} {key} for a batch of {B} sequences")
        recs = []
        for b in range(B):
            uid = self.uids[b] if self.uids is not None else f"step{rec.step}-{b}"
            fed = np.concatenate(self.tokens[b]).astype(np.int64)
            rows_all = np.concatenate(self.ids[b])
            if tokens is None:
                seq = fed
                n_rows = len(fed) if rec.include_last else max(len(fed) - 1, 0)
            else:
                t = tokens[b]
                seq = np.asarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t).astype(np.int64).reshape(-1)
                c = min(len(seq), len(fed))
                bad = np.flatnonzero(seq[:c] != fed[:c])
                if len(bad):
                    p = int(bad[0])
                    raise AdapterError(f"record {uid!r}: token {p} is {int(seq[p])} in tokens, {int(fed[p])} was fed "
                                       f"through the model")
                if len(seq) > len(fed) + 1:
                    raise AdapterError(f"record {uid!r}: {len(seq)} tokens, but only {len(fed)} were fed through the "
                                       f"model (only the last sampled token may be missing)")
                n_rows = min(len(fed), len(seq) if rec.include_last else len(seq) - 1)
            rid = validate_ids(rows_all[:n_rows].astype(np.int64), rec.writer, what=f"record {uid!r}",
                               allow_missing=False)
            pl = int(self.prompt_lens[b]) if self.prompt_lens is not None else self.prefill[b]
            if not 0 <= pl <= len(seq):
                raise AdapterError(f"record {uid!r}: prompt_len {pl} outside 0..{len(seq)}")
            recs.append(dict(uid=uid, tokens=seq, topk_ids=rid,
                             topk_weights=np.concatenate(self.w[b])[:n_rows] if rec.want_w else None,
                             router_logits=np.concatenate(self.lg[b])[:n_rows] if rec.want_logits else None,
                             prompt_len=pl, group=None if self.groups is None else self.groups[b],
                             reward=None if rewards is None else rewards[b],
                             attrs=None if attrs is None else attrs[b],
                             logprobs=None if logprobs is None else logprobs[b]))
        self.done = True
        for r in recs:     # all validated first
            rec.writer.add(**r)
        rec.step += 1


@contextlib.contextmanager
def record_routing(model, writer, record_logits=None, include_last=False):
    """Hooks ``model``'s routers for the duration of the ``with`` block; yields the recorder.

    Each forward of ``model`` (``input_ids`` or ``inputs_embeds`` ``[batch, seq]``, optional 0/1
    ``attention_mask``, left or right padding) writes one record per sequence: its unpadded tokens,
    row ``p`` = the routing of the pass over its token ``p``; ``len(tokens) - 1`` rows (the last
    token's row too with ``include_last=True``). ``rec.set_batch(uids=, prompt_lens=, groups=,
    rewards=, attrs=)`` names the next forward's sequences (default uid ``step<n>-<b>``). The model's
    MoE layers, experts and top-k must equal the writer's model (``geometry(model)`` builds it);
    ids are checked (range, duplicates) and every mismatch raises ``AdapterError`` saying what.
    ``record_logits`` defaults to whether the writer has a router_logits column."""
    rec = RoutingRecorder(model, writer, record_logits=record_logits, include_last=include_last).attach()
    try:
        yield rec
    finally:
        rec.detach()


def __getattr__(name):
    # the replay lives in ._replay (which imports this module): loaded on first use
    if name in ("replay_routing", "RoutingReplay"):
        from . import _replay
        return getattr(_replay, name)
    raise AttributeError(name)
