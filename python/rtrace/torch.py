"""Record the routing of Hugging Face transformers MoE models while they run.

    with rtrace.torch.record_routing(model, writer) as rec:
        rec.set_batch(uids=["a", "b"], prompt_lens=[12, 9])   # optional, before each forward
        model(input_ids=ids, attention_mask=mask)

Forward hooks on the routers (the ``gate`` of ``Qwen3MoeSparseMoeBlock``, ``OlmoeSparseMoeBlock``,
``MixtralSparseMoeBlock``, DeepSeek-style ``MoE``/``MoEGate`` routers that return indices)
capture each forward's top-k ids in the router's order, their weights and optionally the
logits; a hook on the model writes one record per sequence of the batch when the forward ends.
torch is imported lazily: importing this module does not need it.
"""
from __future__ import annotations

import contextlib
import re

import numpy as np

__all__ = ["record_routing", "find_routers", "RoutingRecorder"]

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _top_k_of(block, model):
    for a in ("top_k", "num_experts_per_tok", "topk"):
        v = getattr(block, a, None)
        if isinstance(v, int):
            return v
    gate = getattr(block, "gate", None)
    for a in ("top_k", "num_experts_per_tok"):
        v = getattr(gate, a, None)
        if isinstance(v, int):
            return v
    cfg = getattr(model, "config", None)
    for a in ("num_experts_per_tok", "moe_topk", "top_k"):
        v = getattr(cfg, a, None)
        if isinstance(v, int):
            return v
    raise ValueError(f"cannot tell top_k of {type(block).__name__}")


def _norm_of(block, model):
    for o in (block, getattr(block, "gate", None), getattr(model, "config", None)):
        v = getattr(o, "norm_topk_prob", None)
        if isinstance(v, bool):
            return v
    return type(block).__name__.startswith("Mixtral")   # Mixtral renormalises its top-k


def find_routers(model):
    """[(decoder_layer_index, moe_block, gate_module)] for the model's MoE blocks, in layer order."""
    found = {}
    for name, mod in model.named_modules():
        gate = getattr(mod, "gate", None)
        if gate is None or not hasattr(gate, "register_forward_hook"):
            continue
        cls = type(mod).__name__
        if not (cls.endswith("SparseMoeBlock") or cls.endswith("MoE") or cls.endswith("MoeBlock")
                or hasattr(mod, "experts")):
            continue
        m = _LAYER.search(name + ".")
        if not m:
            continue
        layer = int(m.group(1))
        if layer not in found:
            found[layer] = (layer, mod, gate)
    return [found[k] for k in sorted(found)]


class RoutingRecorder:
    def __init__(self, model, writer, record_logits=None, include_last=False):
        import torch  # noqa: F401  (fails clearly when torch is missing)
        self.model, self.writer = model, writer
        self.include_last = include_last
        hm = writer.header["model"]
        self.layer_map = hm["layer_map"]
        self.k, self.E = hm["top_k"], hm["num_experts"]
        self.want_w = writer.header["columns"].get("topk_weights") is not None
        self.want_logits = (writer.header["columns"].get("router_logits") is not None
                            if record_logits is None else record_logits)
        self.routers = find_routers(model)
        got = [l for l, _, _ in self.routers]
        if got != list(self.layer_map):
            raise ValueError(f"the model's MoE layers {got} differ from the writer's layer_map {self.layer_map}")
        self.handles = []
        self.step = 0
        self._batch = None
        self._cur = {}
        self._inputs = None

    def set_batch(self, uids=None, prompt_lens=None, groups=None, rewards=None, attrs=None):
        """Metadata of the next forward's sequences (lists of batch length)."""
        self._batch = dict(uids=uids, prompt_lens=prompt_lens, groups=groups, rewards=rewards, attrs=attrs)

    # hooks -----------------------------------------------------------------------------------
    def _gate_hook(self, li, block):
        k_block = _top_k_of(block, self.model)
        norm = _norm_of(block, self.model)

        def hook(mod, args, out):
            import torch
            with torch.no_grad():
                logits = idx = w = None
                if isinstance(out, (tuple, list)):
                    ints = [t for t in out if torch.is_tensor(t) and not t.is_floating_point()]
                    floats = [t for t in out if torch.is_tensor(t) and t.is_floating_point()]
                    if ints:                            # DeepSeek-style: (indices, weights[, aux])
                        idx = ints[0]
                        w = next((t for t in floats if t.shape == idx.shape), None)
                        logits = next((t for t in floats if t.shape[-1] == self.E and t.shape != idx.shape), None)
                    else:                               # (logits, scores, ...) without indices
                        logits = floats[0]
                else:
                    logits = out
                if idx is None:
                    probs = torch.softmax(logits.float(), dim=-1)
                    w, idx = torch.topk(probs, k_block, dim=-1)
                    if norm:
                        w = w / w.sum(dim=-1, keepdim=True)
                    w = w.to(logits.dtype)
                idx = idx.reshape(-1, idx.shape[-1])
                self._cur[li] = (idx.detach().to("cpu"),
                                 None if w is None else w.reshape(idx.shape).detach().to("cpu"),
                                 None if logits is None or not self.want_logits
                                 else logits.reshape(-1, logits.shape[-1]).detach().to("cpu"))
        return hook

    def _pre_hook(self, mod, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._inputs = (ids, kwargs.get("attention_mask"))
        self._cur = {}

    def _post_hook(self, mod, args, kwargs, out):
        self._emit()

    def _np(self, t, dtype_name):
        import torch
        if t is None:
            return None
        if dtype_name == "bf16":
            if t.dtype == torch.bfloat16:
                return t.contiguous().view(torch.int16).numpy().view(np.uint16)
            return t.float().numpy()
        return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()

    def _emit(self):
        ids_in, mask = self._inputs or (None, None)
        if ids_in is None or not self._cur:
            return
        B, S = ids_in.shape
        missing = [l for l in self.layer_map if l not in self._cur]
        if missing:
            raise RuntimeError(f"routers of layers {missing} did not run in this forward")
        cols = self.writer.header["columns"]
        ids = np.stack([self._cur[l][0].numpy() for l in self.layer_map], axis=1)       # [B*S, L, k]
        ids = ids.reshape(B, S, len(self.layer_map), -1).astype(np.int32)
        w = lg = None
        if self.want_w:
            w = np.stack([self._np(self._cur[l][1], cols["topk_weights"]) for l in self.layer_map], axis=1)
            w = w.reshape(B, S, len(self.layer_map), -1)
        if self.want_logits and cols.get("router_logits"):
            lg = np.stack([self._np(self._cur[l][2], cols["router_logits"]) for l in self.layer_map], axis=1)
            lg = lg.reshape(B, S, len(self.layer_map), -1)
        tok = ids_in.detach().cpu().numpy()
        m = mask.detach().cpu().numpy().astype(bool) if mask is not None else np.ones((B, S), bool)
        meta = self._batch or {}
        for b in range(B):
            pos = np.nonzero(m[b])[0]
            rows = pos if self.include_last else pos[:-1]
            g = lambda key, default=None: (meta.get(key)[b] if meta.get(key) is not None else default)  # noqa
            self.writer.add(g("uids", f"step{self.step}-{b}"), tok[b, pos], ids[b, rows],
                            topk_weights=None if w is None else w[b, rows],
                            router_logits=None if lg is None else lg[b, rows],
                            prompt_len=int(g("prompt_lens", 0)), group=g("groups"), reward=g("rewards"),
                            attrs=g("attrs"))
        self.step += 1
        self._batch = None
        self._cur = {}

    def attach(self):
        for li, block, gate in self.routers:
            self.handles.append(gate.register_forward_hook(self._gate_hook(li, block)))
        self.handles.append(self.model.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
        self.handles.append(self.model.register_forward_hook(self._post_hook, with_kwargs=True))
        return self

    def detach(self):
        for h in self.handles:
            h.remove()
        self.handles = []


@contextlib.contextmanager
def record_routing(model, writer, record_logits=None, include_last=False):
    """Hooks ``model``'s routers for the duration of the ``with`` block; yields the recorder."""
    rec = RoutingRecorder(model, writer, record_logits=record_logits, include_last=include_last).attach()
    try:
        yield rec
    finally:
        rec.detach()
