"""Adapters from rollout/training engines' routing outputs to ``Writer.add`` arguments.

Every adapter returns a dict (or a list of dicts) of keyword arguments for ``Writer.add``::

    w.add(**rtrace.adapters.sglang(response, w, uid="req-17"))

``model`` is a ``Writer``, a ``Reader`` or a model dict (num_layers, num_experts, top_k,
layer_map). Ids are checked against the geometry: shape ``[rows, layers, top_k]`` where
``layers`` is either ``len(layer_map)`` (MoE layers only) or ``num_layers`` (dense layers
included, then dropped through ``layer_map``); ids in ``[0, num_experts)``; -1 only for a
wholly missing (row, layer); no expert twice in one (row, layer).
"""
from __future__ import annotations

import base64
import io
import re

import numpy as np

__all__ = ["AdapterError", "geometry", "validate_ids", "sglang", "vllm", "nemo_rl", "parse_nemo_rl", "verl",
           "decode_array"]


class AdapterError(ValueError):
    """An engine output that does not fit the trace's model geometry."""


def geometry(model) -> dict:
    h = getattr(model, "header", None)
    if isinstance(h, dict):
        model = h["model"]
    m = dict(model)
    if m.get("layer_map") is None:
        m["layer_map"] = list(range(int(m["num_layers"])))
    return m


def _dtype(name, default="int32"):
    if name is None:
        return np.dtype(default)
    s = str(name).replace("torch.", "").strip()
    try:
        dt = np.dtype(s)
    except TypeError:
        raise AdapterError(f"unknown routed-experts dtype {name!r}") from None
    if dt.kind not in "iu":
        raise AdapterError(f"routed-experts dtype {name!r} is not an integer type")
    return dt


def decode_array(x, dtype=None, what="array"):
    """A nested list, numpy array, torch tensor, bytes, or base64 text of raw bytes or a .npy buffer."""
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, (str, bytes, bytearray, memoryview)):
        raw = bytes(x) if not isinstance(x, str) else None
        if raw is None or not raw.startswith(b"\x93NUMPY"):
            try:
                raw = base64.b64decode(x, validate=True) if raw is None else raw
            except Exception as e:
                raise AdapterError(f"{what}: not valid base64 ({e})") from None
        if raw.startswith(b"\x93NUMPY"):
            return np.load(io.BytesIO(raw), allow_pickle=False)
        dt = _dtype(dtype)
        if len(raw) % dt.itemsize:
            raise AdapterError(f"{what}: {len(raw)} bytes is not a multiple of the {dt} size {dt.itemsize}")
        return np.frombuffer(raw, dtype=dt.newbyteorder("<"))
    return np.asarray(x, dtype=_dtype(dtype, "int64") if dtype else None)


def validate_ids(ids, model, what="routed experts", allow_missing=True) -> np.ndarray:
    """Checks ids [rows, layers, k] against the geometry; maps dense-layer axes through layer_map.
    Returns int32 [rows, len(layer_map), top_k] with -1 for missing (row, layer)s."""
    m = geometry(model)
    L, NL, E, k = len(m["layer_map"]), int(m["num_layers"]), int(m["num_experts"]), int(m["top_k"])
    a = np.asarray(ids)
    if a.ndim != 3:
        raise AdapterError(f"{what}: expected a [rows, layers, top_k] array, got shape {a.shape}")
    if a.dtype.kind not in "iu":
        raise AdapterError(f"{what}: expert ids must be integers, got {a.dtype}")
    if a.shape[2] != k:
        raise AdapterError(f"{what}: top_k axis is {a.shape[2]}, the model routes top-{k}")
    if a.shape[1] == L:
        pass
    elif a.shape[1] == NL:
        a = a[:, m["layer_map"], :]
    else:
        raise AdapterError(f"{what}: layer axis is {a.shape[1]}, expected {L} MoE layers"
                           + (f" or {NL} decoder layers" if NL != L else ""))
    a = a.astype(np.int64)
    neg = a == -1
    miss = neg.all(axis=2)
    partial = neg.any(axis=2) & ~miss
    if partial.any():
        r, l = np.argwhere(partial)[0]
        raise AdapterError(f"{what}: row {r}, layer {m['layer_map'][l]} is partly -1 ({a[r, l].tolist()}); "
                           f"a (row, layer) is wholly present or wholly missing")
    if miss.any() and not allow_missing:
        r, l = np.argwhere(miss)[0]
        raise AdapterError(f"{what}: row {r}, layer {m['layer_map'][l]} is missing (-1), not allowed here")
    bad = ((a < 0) | (a >= E)) & ~miss[:, :, None]
    if bad.any():
        r, l, j = np.argwhere(bad)[0]
        raise AdapterError(f"{what}: row {r}, layer {m['layer_map'][l]}, slot {j}: expert id {a[r, l, j]} "
                           f"outside 0..{E - 1}")
    if k > 1 and a.size:
        s = np.sort(a, axis=2)
        dup = (s[:, :, 1:] == s[:, :, :-1]).any(axis=2) & ~miss
        if dup.any():
            r, l = np.argwhere(dup)[0]
            raise AdapterError(f"{what}: row {r}, layer {m['layer_map'][l]} names an expert twice: "
                               f"{a[r, l].tolist()}")
    return a.astype(np.int32)


def _get(obj, key, default=None):
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


# SGLang ------------------------------------------------------------------------------------------
def sglang(response, model, uid=None, tokens=None, prompt_len=None, group=None, reward=None, attrs=None):
    """One SGLang /generate response (dict with ``meta_info``; ``return_routed_experts=True``).

    ``meta_info["routed_experts"]`` is base64 of a flat ``[seq_len - 1, layers, top_k]`` array,
    int32 unless ``meta_info["routed_experts_dtype"]`` says otherwise; with
    ``meta_info["routed_experts_start_len"]`` (a multi-turn continuation) the rows start at that
    position. ``tokens`` defaults to ``input_ids + output_ids`` when the response has them."""
    m = geometry(model)
    meta = _get(response, "meta_info")
    if meta is None:
        meta = response
    if "routed_experts" not in meta or meta["routed_experts"] is None:
        raise AdapterError("sglang: meta_info has no 'routed_experts' (launch with --enable-return-routed-experts "
                           "and request return_routed_experts=True)")
    flat = decode_array(meta["routed_experts"], meta.get("routed_experts_dtype"), "sglang: routed_experts")
    flat = np.asarray(flat).reshape(-1)
    start = int(meta.get("routed_experts_start_len") or 0)
    if tokens is None:
        inp, out = _get(response, "input_ids"), _get(response, "output_ids")
        if inp is not None and out is not None:
            tokens = list(inp) + list(out)
    if prompt_len is None:
        prompt_len = int(meta.get("prompt_tokens", 0) or 0)
    k, L, NL = int(m["top_k"]), len(m["layer_map"]), int(m["num_layers"])
    n_tok = len(tokens) if tokens is not None else None
    if n_tok is None and "prompt_tokens" in meta and "completion_tokens" in meta:
        n_tok = int(meta["prompt_tokens"]) + int(meta["completion_tokens"])
    rows = None
    if n_tok is not None:
        rows = n_tok - 1 - start
        if rows < 0:
            raise AdapterError(f"sglang: routed_experts_start_len={start} is past the {n_tok} tokens")
        per = flat.size // rows if rows else 0
        if rows == 0 and flat.size:
            raise AdapterError(f"sglang: {flat.size} routed-expert values but no rows expected")
        if rows and (flat.size % rows or per not in (L * k, NL * k)):
            raise AdapterError(
                f"sglang: routed_experts holds {flat.size} values; seq_len-1-start = {rows} rows need "
                f"{rows * L * k} (MoE layers) or {rows * NL * k} (all layers) values of top-{k}")
        layers = per // k if rows else L
    else:
        cands = [x for x in (L, NL) if flat.size % (x * k) == 0]
        if not cands:
            raise AdapterError(f"sglang: routed_experts holds {flat.size} values, not a multiple of "
                               f"layers×top_k = {L * k} (or {NL * k})")
        layers = cands[0]
        rows = flat.size // (layers * k)
    ids = validate_ids(flat.reshape(rows, layers, k), m, "sglang routed_experts")
    out = dict(uid=uid if uid is not None else _get(meta, "id", "sglang"), tokens=tokens if tokens is not None else [],
               topk_ids=ids, prompt_len=prompt_len, start=start, group=group, reward=reward, attrs=attrs)
    lp = meta.get("output_token_logprobs")
    if lp:
        out["logprobs"] = np.array([x[0] if isinstance(x, (list, tuple)) else x for x in lp], dtype=np.float32)
    return out


# vLLM --------------------------------------------------------------------------------------------
def vllm(request_output, model, uid=None, group=None, keep_missing=True):
    """One vLLM ``RequestOutput`` (object or dict): ``prompt_routed_experts`` ``[prompt_len, layers, k]``
    shared by its n completions, each completion (``outputs[i]``) with ``routed_experts``
    ``[gen_len, layers, k]``. Arrays are int16 nested lists or base64 ``.npy`` buffers; ``-1``
    rows (prefix-cached) stay missing. Returns one ``add`` dict per completion, grouped by the
    request id, uids ``<request_id>/<i>``. Rows are the prompt rows then the completion rows,
    from position 0."""
    m = geometry(model)
    rid = uid if uid is not None else str(_get(request_output, "request_id", "vllm"))
    prompt_ids = list(_get(request_output, "prompt_token_ids", None) or [])
    pre = _get(request_output, "prompt_routed_experts")
    if pre is None:
        raise AdapterError("vllm: request output has no 'prompt_routed_experts'")
    pre = validate_ids(np.asarray(decode_array(pre, "int16", "vllm: prompt_routed_experts")), m,
                       "vllm prompt_routed_experts", allow_missing=keep_missing)
    if prompt_ids and pre.shape[0] != len(prompt_ids):
        raise AdapterError(f"vllm: prompt_routed_experts has {pre.shape[0]} rows for {len(prompt_ids)} prompt tokens")
    outs = _get(request_output, "outputs") or []
    if not outs:
        raise AdapterError("vllm: request output has no completions ('outputs')")
    res = []
    for i, o in enumerate(outs):
        gen = _get(o, "routed_experts")
        if gen is None:
            raise AdapterError(f"vllm: completion {i} has no 'routed_experts'")
        gen = validate_ids(np.asarray(decode_array(gen, "int16", f"vllm: outputs[{i}].routed_experts")), m,
                           f"vllm outputs[{i}].routed_experts", allow_missing=keep_missing)
        toks = list(_get(o, "token_ids", None) or [])
        if toks and gen.shape[0] not in (len(toks), len(toks) - 1):
            raise AdapterError(f"vllm: outputs[{i}].routed_experts has {gen.shape[0]} rows for {len(toks)} "
                               f"generated tokens")
        ids = np.concatenate([pre, gen])
        tokens = prompt_ids + toks if prompt_ids else []
        d = dict(uid=f"{rid}/{i}", tokens=tokens, topk_ids=ids, prompt_len=len(prompt_ids), start=0,
                 group=group if group is not None else rid)
        lps = _get(o, "logprobs")
        if lps and toks and len(lps) == len(toks):
            try:
                d["logprobs"] = np.array([float(lp[t].logprob if hasattr(lp[t], "logprob") else lp[t])
                                          for lp, t in zip(lps, toks)], dtype=np.float32)
            except (KeyError, TypeError, IndexError):
                pass
        res.append(d)
    return res


# NeMo RL -----------------------------------------------------------------------------------------
_NRL = re.compile(r"^nrlre1:(int8|int16|int32):(\d+)x(\d+)x(\d+):([A-Za-z0-9+/=\s]*)$", re.S)


def parse_nemo_rl(wire: str) -> np.ndarray:
    """Decodes ``nrlre1:<dtype>:<S>x<L>x<K>:<base64>`` into an ``[S, L, K]`` array."""
    if isinstance(wire, bytes):
        wire = wire.decode("ascii")
    mt = _NRL.match(wire)
    if not mt:
        head = wire[:40]
        raise AdapterError(f"nemo_rl: not an 'nrlre1:<int8|int16|int32>:<S>x<L>x<K>:<base64>' string: {head!r}")
    dt, S, L, K, b64 = mt.group(1), int(mt.group(2)), int(mt.group(3)), int(mt.group(4)), mt.group(5)
    try:
        raw = base64.b64decode("".join(b64.split()), validate=True)
    except Exception as e:
        raise AdapterError(f"nemo_rl: payload is not valid base64 ({e})") from None
    dtype = np.dtype(dt).newbyteorder("<")
    if len(raw) != S * L * K * dtype.itemsize:
        raise AdapterError(f"nemo_rl: payload has {len(raw)} bytes, {S}x{L}x{K} {dt} needs {S * L * K * dtype.itemsize}")
    return np.frombuffer(raw, dtype=dtype).reshape(S, L, K)


def nemo_rl(wire, model, uid, tokens=(), prompt_len=0, start=0, group=None, logprobs=None, reward=None, attrs=None):
    """A NeMo RL wire string; its S rows are placed from position ``start``."""
    ids = validate_ids(parse_nemo_rl(wire), model, "nemo_rl routed experts")
    d = dict(uid=uid, tokens=tokens, topk_ids=ids, prompt_len=prompt_len, start=start, group=group,
             reward=reward, attrs=attrs)
    if logprobs is not None:
        d["logprobs"] = logprobs
    return d


# verl --------------------------------------------------------------------------------------------
def verl(routed_experts, attention_mask, input_ids, prompt_width, model, uids=None, groups=None,
         rewards=None, include_last=False):
    """verl batched tensors: ``routed_experts`` ``[batch, seq, layers, k]`` aligned with
    ``input_ids`` ``[batch, seq]`` = a left-padded prompt of ``prompt_width`` columns then the
    right-padded response; ``attention_mask`` (1 = real token) tells real rows from padding.
    Position p of a sequence's real tokens gives row p; the pass over the last token is dropped
    unless ``include_last`` (the row convention: T tokens, T - 1 rows)."""
    m = geometry(model)
    re_ = np.asarray(decode_array(routed_experts))
    mask = np.asarray(decode_array(attention_mask)).astype(bool)
    ids_in = np.asarray(decode_array(input_ids))
    if re_.ndim != 4:
        raise AdapterError(f"verl: routed_experts must be [batch, seq, layers, k], got shape {re_.shape}")
    B, S = re_.shape[:2]
    if mask.shape != (B, S) or ids_in.shape != (B, S):
        raise AdapterError(f"verl: attention_mask {mask.shape} and input_ids {ids_in.shape} must be "
                           f"[batch, seq] = {(B, S)} like routed_experts")
    if not 0 <= prompt_width <= S:
        raise AdapterError(f"verl: prompt_width {prompt_width} outside 0..{S}")
    res = []
    for b in range(B):
        pos = np.nonzero(mask[b])[0]
        if len(pos) and not np.array_equal(pos, np.arange(pos[0], pos[0] + len(pos))):
            # a left-padded prompt followed by a right-padded response: real tokens must be contiguous
            raise AdapterError(f"verl: batch row {b}: real tokens are not contiguous (a hole in attention_mask)")
        plen = int(mask[b, :prompt_width].sum())
        if plen and mask[b, prompt_width - plen:prompt_width].sum() != plen:
            raise AdapterError(f"verl: batch row {b}: prompt is not left-padded")
        rows_pos = pos if include_last else pos[:-1]
        ids = validate_ids(re_[b, rows_pos], m, f"verl batch row {b}")
        res.append(dict(uid=uids[b] if uids is not None else f"verl-{b}", tokens=ids_in[b, pos].astype(np.int32),
                        topk_ids=ids, prompt_len=plen, start=0,
                        group=groups[b] if groups is not None else None,
                        reward=rewards[b] if rewards is not None else None))
    return res
