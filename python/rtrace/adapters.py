"""Adapters from rollout/training engines' routing outputs to ``Writer.add`` arguments.

Every adapter returns a dict (or a list of dicts) of keyword arguments for ``Writer.add``::

    w.add(**rtrace.adapters.sglang(response, w, uid="req-17"))

``model`` is a ``Writer``, a ``Reader`` or a model dict (num_layers, num_experts, top_k,
layer_map). Ids are checked against the geometry: shape ``[rows, layers, top_k]`` where
``layers`` is either ``len(layer_map)`` (MoE layers only) or ``num_layers`` (dense layers
included, then dropped through ``layer_map``); ids in ``[0, num_experts)``; -1 only for a
wholly missing (row, layer); no expert twice in one (row, layer).

Each adapter reads exactly what the engine releases named in its docstring send (checked
against fixtures the engines' own code produced: ``Tests/fixtures/engines``), imports no row the
engine never routed (fillers, padding, zero fills), and, when the input matches no supported
layout, says what it found and what each supported release would have sent.
"""
from __future__ import annotations

import base64
import io
import re

import numpy as np

__all__ = ["AdapterError", "geometry", "validate_ids", "sglang", "vllm", "nemo_rl", "nemo_rl_batch",
           "parse_nemo_rl", "verl", "verl_agent_loop", "decode_array"]

SGLANG_LAYOUT = ("SGLang 0.5.x sends meta_info.routed_experts, base64 of int32 [seq_len - 1 - start_len, "
                 "num_hidden_layers, top_k] (routed_experts_start_len is a request field, never echoed), "
                 "prompt_token_ids (with return_prompt_token_ids) and output_ids; n > 1 and batch requests "
                 "return a JSON array; its OpenAI-compatible server sends the first choice's routing at "
                 "sglext.routed_experts")
VLLM_LAYOUT = ("vLLM >= 0.22 sends outputs[i].routed_experts, one array per completion [num_tokens - 1 - "
               "routed_experts_prompt_start, num_hidden_layers, top_k] uint8/uint16 (base64 .npy in its "
               "OpenAI-compatible choices[i].routed_experts), with prompt_token_ids + token_ids; vLLM 0.21 sent "
               "prompt_routed_experts [prompt_len, MoE layers, top_k] + outputs[i].routed_experts [gen_len - 1, "
               "MoE layers, top_k] int16")
NEMO_LAYOUT = ("NeMo RL sends 'nrlre1:<int8|int16|int32>:<S>x<L>x<K>:<base64>' with S = prompt + generated "
               "tokens, row S-1 a filler arange(K)")
VERL_LAYOUT = ("verl 0.9 sends routed_experts [batch, prompt_length + response_length, num_hidden_layers, top_k] "
               "int16 aligned with input_ids/attention_mask (prompt left-padded, response right-padded), zero "
               "where the engine routed nothing")


class AdapterError(ValueError):
    """An engine output that does not fit the trace's model geometry or any supported layout."""


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
            try:
                return np.load(io.BytesIO(raw), allow_pickle=False)
            except Exception as e:
                raise AdapterError(f"{what}: not a readable .npy buffer ({e})") from None
        dt = _dtype(dtype)
        if len(raw) % dt.itemsize:
            raise AdapterError(f"{what}: {len(raw)} bytes is not a multiple of the {dt} size {dt.itemsize}")
        return np.frombuffer(raw, dtype=dt.newbyteorder("<"))
    try:
        return np.asarray(x, dtype=_dtype(dtype, "int64") if dtype else None)
    except (ValueError, TypeError) as e:
        raise AdapterError(f"{what}: not an array ({e})") from None


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


def _has(obj, key):
    return _get(obj, key, None) is not None


def _keys(obj):
    if isinstance(obj, dict):
        return sorted(obj)
    return sorted(k for k in vars(obj) if not k.startswith("_")) if hasattr(obj, "__dict__") else []


def _zero_rows(a):
    """Rows of [rows, layers, k] that are 0 in every slot of every layer (never routing when k >= 2)."""
    return (np.asarray(a) == 0).reshape(len(a), -1).all(axis=1) if len(a) else np.zeros(0, bool)


def _infer_start(what, rows, seq_len, start, layout):
    """The first row's position: ``start`` when given (checked against seq_len), else
    seq_len - 1 - rows (no engine routes the pass over the last token)."""
    if seq_len is None:
        return int(start or 0)
    if start is not None:
        if rows != seq_len - 1 - int(start):
            raise AdapterError(f"{what}: {rows} rows from start {start} do not end at the last token but one of "
                               f"{seq_len} tokens ({seq_len - 1 - int(start)} rows expected); {layout}")
        return int(start)
    s = seq_len - 1 - rows
    if s < 0:
        raise AdapterError(f"{what}: {rows} routed rows for a sequence of {seq_len} tokens (at most "
                           f"{seq_len - 1}: the last token is never routed); {layout}")
    return s


# SGLang ------------------------------------------------------------------------------------------
def sglang(response, model, uid=None, tokens=None, prompt_len=None, start=None, group=None, reward=None,
           attrs=None, dtype=None):
    """SGLang (0.5.x, checked against 0.5.23) responses with ``return_routed_experts``.

    ``response`` is one ``/generate`` result (a dict with ``meta_info``; returns one ``add`` dict), a
    JSON array of them as n > 1 or batch requests return it (returns a list), or an
    OpenAI-compatible ``/v1/completions`` or ``/v1/chat/completions`` body (a dict with ``choices``;
    returns a list: one record for the first choice, the only one whose routing
    ``sglext.routed_experts`` carries, or one per choice when each carries ``meta_info``).

    ``meta_info.routed_experts`` is base64 of int32 ``[seq_len - 1 - start, num_hidden_layers,
    top_k]`` (dense layers 0, dropped through ``layer_map``). ``start`` (the request's
    ``routed_experts_start_len``, which no response echoes) is ``seq_len - 1 - rows`` unless given.
    ``tokens`` defaults to ``prompt_token_ids + output_ids`` (``return_prompt_token_ids=True``);
    without them seq_len comes from ``meta_info`` ``prompt_tokens + completion_tokens`` and the record
    has no tokens. ``dtype`` overrides int32 (``meta_info.routed_experts_dtype`` where a build sends
    it). For a JSON array, ``tokens`` is a list of sequences, and ``uid`` (else ``<uid>/<j>``),
    ``prompt_len``, ``start``, ``reward`` may be lists, one per element."""
    if isinstance(response, (list, tuple)):
        n = len(response)
        if tokens is not None and len(tokens) != n:
            raise AdapterError(f"sglang: {len(tokens)} token sequences for a JSON array of {n} responses")

        def each(v, j):
            return v[j] if isinstance(v, (list, tuple)) else v
        def uid_of(j):
            return uid[j] if isinstance(uid, (list, tuple)) else (f"{uid}/{j}" if uid is not None else None)
        return [sglang(r, model, uid=uid_of(j), tokens=tokens[j] if tokens is not None else None,
                       prompt_len=each(prompt_len, j),
                       start=each(start, j), group=group, reward=each(reward, j), attrs=attrs, dtype=dtype)
                for j, r in enumerate(response)]
    if not isinstance(response, dict) and _get(response, "meta_info") is None:
        raise AdapterError(f"sglang: expected a /generate response (a dict with meta_info), a JSON array of them "
                           f"or an OpenAI-compatible body, got {type(response).__name__}; {SGLANG_LAYOUT}")
    if _get(response, "meta_info") is None and _has(response, "choices"):
        return _sglang_openai(response, model, uid, tokens, prompt_len, start, group, reward, attrs, dtype)
    meta = _get(response, "meta_info")
    if meta is None:
        meta = response
    if meta.get("routed_experts") is None:
        raise AdapterError(f"sglang: meta_info has no routed_experts (meta_info keys: {', '.join(sorted(meta))}); "
                           f"{SGLANG_LAYOUT}")
    if tokens is None:
        for a, b in (("prompt_token_ids", "output_ids"), ("input_ids", "output_ids")):
            inp, out = _get(response, a), _get(response, b)
            if inp is not None and out is not None:
                tokens = list(inp) + list(out)
                if prompt_len is None:
                    prompt_len = len(inp)
                break
    if prompt_len is None:
        prompt_len = int(meta.get("prompt_tokens", 0) or 0)
    seq_len = len(tokens) if tokens is not None else None
    if seq_len is None and meta.get("prompt_tokens") is not None and meta.get("completion_tokens") is not None:
        seq_len = int(meta["prompt_tokens"]) + int(meta["completion_tokens"])
    rid = uid if uid is not None else meta.get("id", "sglang")
    ids, st = _sglang_ids(meta["routed_experts"], dtype or meta.get("routed_experts_dtype"), model, seq_len, start,
                          f"sglang {rid}")
    out = dict(uid=rid, tokens=tokens if tokens is not None else [], topk_ids=ids, prompt_len=prompt_len, start=st,
               group=group, reward=reward, attrs=attrs)
    lp = meta.get("output_token_logprobs")
    if lp:
        out["logprobs"] = np.array([x[0] if isinstance(x, (list, tuple)) else x for x in lp], dtype=np.float32)
    return out


def _is_token_list(v):
    return isinstance(v, (list, tuple)) and (len(v) == 0 or isinstance(v[0], (int, np.integer)))


def _sglang_ids(b64, dtype, model, seq_len, start, what):
    """Decodes SGLang's flat base64 routing into validated [rows, MoE layers, k] and the start."""
    m = geometry(model)
    k, NL = int(m["top_k"]), int(m["num_layers"])
    flat = np.asarray(decode_array(b64, dtype, f"{what}: routed_experts")).reshape(-1)
    if flat.size % (NL * k):
        L = len(m["layer_map"])
        if L != NL and flat.size % (L * k) == 0 and seq_len is not None and \
                flat.size // (L * k) <= seq_len - 1:
            per = L * k                                     # a build that sends MoE layers only
        else:
            raise AdapterError(f"{what}: routed_experts holds {flat.size} values, not a whole number of rows of "
                               f"num_hidden_layers × top_k = {NL} × {k}; {SGLANG_LAYOUT}")
    else:
        per = NL * k
    rows = flat.size // per
    st = _infer_start(what, rows, seq_len, start, SGLANG_LAYOUT)
    return validate_ids(flat.reshape(rows, per // k, k), m, f"{what} routed_experts"), st


def _sglang_openai(resp, model, uid, tokens, prompt_len, start, group, reward, attrs, dtype):
    choices = resp.get("choices") or []
    rid = uid if uid is not None else resp.get("id", "sglang")
    per_choice = [c for c in choices if isinstance(c, dict) and isinstance(c.get("meta_info"), dict)
                  and c["meta_info"].get("routed_experts") is not None]
    if per_choice:                                          # chat with return_meta_info: per-choice meta_info
        out = []
        for c in per_choice:
            ptoks = c.get("prompt_token_ids") or resp.get("prompt_token_ids")
            t = tokens if tokens is not None else (list(ptoks) + list(c["token_ids"])
                                                   if ptoks is not None and c.get("token_ids") is not None else None)
            out.append(sglang(dict(meta_info=c["meta_info"]), model, uid=f"{rid}/{c.get('index', 0)}", tokens=t,
                              prompt_len=prompt_len if prompt_len is not None else (len(ptoks) if ptoks else None),
                              start=start, group=group, reward=reward, attrs=attrs, dtype=dtype))
        return out
    ext = resp.get("sglext") or {}
    if ext.get("routed_experts") is None:
        raise AdapterError(f"sglang: OpenAI-compatible response {rid} has no sglext.routed_experts (response keys: "
                           f"{', '.join(sorted(resp))}; sglext keys: {', '.join(sorted(ext)) or 'none'}); "
                           f"{SGLANG_LAYOUT}")
    c0 = choices[0] if choices else {}
    ptoks = c0.get("prompt_token_ids")
    if ptoks is None:
        ptoks = ext.get("input_ids")
    gtoks = c0.get("token_ids")
    if gtoks is None and ext.get("output_ids"):
        gtoks = ext["output_ids"][0]
    if tokens is None and ptoks is not None and gtoks is not None:
        tokens = list(ptoks) + list(gtoks)
    usage = resp.get("usage") or {}
    if prompt_len is None:
        prompt_len = len(ptoks) if ptoks is not None else int(usage.get("prompt_tokens", 0) or 0)
    seq_len = len(tokens) if tokens is not None else None
    if seq_len is None and len(choices) == 1 and usage.get("prompt_tokens") is not None \
            and usage.get("completion_tokens") is not None:
        seq_len = int(usage["prompt_tokens"]) + int(usage["completion_tokens"])
    ids, st = _sglang_ids(ext["routed_experts"], dtype, model, seq_len, start, f"sglang {rid}")
    return [dict(uid=rid, tokens=tokens if tokens is not None else [], topk_ids=ids, prompt_len=prompt_len, start=st,
                 group=group, reward=reward, attrs=attrs)]


# vLLM --------------------------------------------------------------------------------------------
def vllm(request_output, model, uid=None, group=None, keep_missing=True, start=None, tokens=None,
         cached_tokens=None):
    """One vLLM request's routing; returns one ``add`` dict per completion, uids
    ``<request_id>/<index>``, grouped by the request id.

    ``request_output`` is a ``RequestOutput`` (object or dict, e.g. one line of a JSON dump) or an
    OpenAI-compatible ``/v1/completions`` or ``/v1/chat/completions`` body (a dict with ``choices``).

    * vLLM >= 0.22 (checked against 0.27 and 0.33): each completion's ``routed_experts`` is one
      array ``[num_tokens - 1 - start, num_hidden_layers, top_k]`` uint8 (uint16 above 256 experts)
      covering prompt and output rows (dense layers 0, dropped through ``layer_map``); the servers
      send it as base64 of a ``.npy`` file (``choices[i].routed_experts``). ``start``
      (``SamplingParams.routed_experts_prompt_start``, never echoed) is ``len(tokens) - 1 - rows``;
      the tokens are ``prompt_token_ids + token_ids`` (``return_token_ids=true`` on the servers;
      chat sends ``prompt_token_ids`` at the response level), else ``tokens=`` or ``start=`` must
      be given.
    * vLLM 0.21: ``prompt_routed_experts`` ``[prompt_len, MoE layers, top_k]`` int16 shared by the
      completions plus each completion's ``[gen_len - 1, ...]`` rows, from position 0. Positions the
      engine never ran (prefix-cache hits) hold 0: the first ``num_cached_tokens`` rows (or
      ``cached_tokens=``) and any all-zero row (never routing for top_k >= 2) become missing (-1);
      ``-1`` rows stay missing unless ``keep_missing=False`` (then an error)."""
    if isinstance(request_output, dict) and "choices" in request_output and "outputs" not in request_output:
        return _vllm_openai(request_output, model, uid, group, keep_missing, start, tokens, cached_tokens)
    rid = uid if uid is not None else str(_get(request_output, "request_id", "vllm"))
    prompt_ids = _get(request_output, "prompt_token_ids", None)
    prompt_ids = list(prompt_ids) if prompt_ids is not None else None
    outs = _get(request_output, "outputs") or []
    if not outs:
        raise AdapterError(f"vllm {rid}: no completions ('outputs'; keys: {', '.join(_keys(request_output))}); "
                           f"{VLLM_LAYOUT}")
    pre = _get(request_output, "prompt_routed_experts")
    if cached_tokens is None:
        cached_tokens = _get(request_output, "num_cached_tokens")
    comps = [(int(_get(o, "index", i)), _get(o, "routed_experts"), _get(o, "token_ids", None), _get(o, "logprobs"))
             for i, o in enumerate(outs)]
    return _vllm_completions(rid, comps, pre, prompt_ids, model, group, keep_missing, start, tokens, cached_tokens)


def _vllm_openai(resp, model, uid, group, keep_missing, start, tokens, cached_tokens):
    rid = uid if uid is not None else str(resp.get("id", "vllm"))
    choices = resp.get("choices") or []
    if not choices:
        raise AdapterError(f"vllm {rid}: OpenAI-compatible response without choices; {VLLM_LAYOUT}")
    comps, prompt_ids = [], resp.get("prompt_token_ids")   # chat: response level; completions: per choice
    for i, c in enumerate(choices):
        p = c.get("prompt_token_ids")
        if p is not None:
            prompt_ids = p
        comps.append((int(c.get("index", i)), c.get("routed_experts"), c.get("token_ids"), None))
    if cached_tokens is None:
        details = (resp.get("usage") or {}).get("prompt_tokens_details") or {}
        cached_tokens = details.get("cached_tokens")
    return _vllm_completions(rid, comps, resp.get("prompt_routed_experts"),
                             list(prompt_ids) if prompt_ids is not None else None, model, group, keep_missing, start,
                             tokens, cached_tokens)


def _vllm_completions(rid, comps, pre, prompt_ids, model, group, keep_missing, start, tokens, cached_tokens):
    m = geometry(model)
    k = int(m["top_k"])
    if pre is not None:                                     # vLLM 0.21
        pre = np.asarray(decode_array(pre, "int16", f"vllm {rid}: prompt_routed_experts"))
        if pre.ndim != 3:
            raise AdapterError(f"vllm {rid}: prompt_routed_experts has shape {pre.shape}, expected [prompt_len, "
                               f"layers, top_k]; {VLLM_LAYOUT}")
        if prompt_ids is not None and pre.shape[0] != len(prompt_ids):
            raise AdapterError(f"vllm {rid}: prompt_routed_experts has {pre.shape[0]} rows for {len(prompt_ids)} "
                               f"prompt tokens; {VLLM_LAYOUT}")
    res = []
    for index, re_, toks, lps in comps:
        what = f"vllm {rid}/{index}"
        if re_ is None and pre is not None and toks is not None and len(toks) <= 1:
            re_ = np.zeros((0,) + pre.shape[1:], pre.dtype)   # 0.21 sends None for no generated row
        if re_ is None:
            raise AdapterError(f"{what}: no routed_experts (vLLM sends None for a request preempted or aborted "
                               f"before any forward pass); {VLLM_LAYOUT}")
        gen = np.asarray(decode_array(re_, "int16", f"{what}: routed_experts"))
        if gen.ndim != 3:
            raise AdapterError(f"{what}: routed_experts has shape {gen.shape}, expected [rows, layers, top_k]; "
                               f"{VLLM_LAYOUT}")
        toks = list(toks) if toks is not None else None
        seq = tokens if tokens is not None else (prompt_ids + toks if prompt_ids is not None and toks is not None
                                                 else None)
        seq = list(seq) if seq is not None else None
        if pre is not None:                                 # 0.21: prompt rows + generated rows from position 0
            if toks is not None and gen.shape[0] not in (len(toks), len(toks) - 1, 0):
                raise AdapterError(f"{what}: routed_experts has {gen.shape[0]} rows for {len(toks)} generated "
                                   f"tokens; {VLLM_LAYOUT}")
            raw = np.concatenate([pre, gen]) if len(gen) else pre
            ids = raw.astype(np.int64)
            never = _zero_rows(raw) if k > 1 else np.zeros(len(raw), bool)
            if cached_tokens:
                c = min(int(cached_tokens), pre.shape[0])
                if k > 1 and not never[:c].all():
                    p = int(np.argmin(never[:c]))
                    raise AdapterError(f"{what}: row {p} is routed though num_cached_tokens = {cached_tokens} says "
                                       f"vLLM 0.21 never ran it (its rows are 0); {VLLM_LAYOUT}")
                never[:c] = True
            elif k == 1 and len(raw) and (raw[0] == 0).all():
                raise AdapterError(f"{what}: row 0 is expert 0 in every layer: vLLM 0.21 leaves rows of prefix-cached "
                                   f"positions 0, which top-1 cannot tell from expert 0; pass cached_tokens= "
                                   f"(RequestOutput.num_cached_tokens)")
            ids[never] = -1
            st = 0
            if seq is not None and len(ids) > len(seq):
                raise AdapterError(f"{what}: {len(ids)} rows for {len(seq)} tokens; {VLLM_LAYOUT}")
        else:                                               # >= 0.22: one array, prompt and output rows
            if seq is None and start is None:
                raise AdapterError(f"{what}: no prompt_token_ids/token_ids, so the rows' start cannot be told (vLLM "
                                   f">= 0.22 sends num_tokens - 1 - routed_experts_prompt_start rows and never echoes "
                                   f"the start): request return_token_ids, or pass tokens= or start=")
            ids = gen
            st = _infer_start(what, len(gen), len(seq) if seq is not None else None, start, VLLM_LAYOUT)
        ids = validate_ids(ids, m, f"{what} routed_experts", allow_missing=keep_missing or pre is not None)
        if not keep_missing and (ids == -1).any():
            r = int(np.argwhere((ids == -1).all(axis=2))[0][0])
            raise AdapterError(f"{what}: row {r} was never routed (prefix-cached) and keep_missing=False")
        d = dict(uid=f"{rid}/{index}", tokens=seq if seq is not None else [], topk_ids=ids,
                 prompt_len=len(prompt_ids) if prompt_ids is not None else 0, start=st,
                 group=group if group is not None else rid)
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
    """Decodes ``nrlre1:<dtype>:<S>x<L>x<K>:<base64>`` into an ``[S, L, K]`` array (all S rows,
    the filler included)."""
    if isinstance(wire, bytes):
        wire = wire.decode("ascii")
    if not isinstance(wire, str):
        raise AdapterError(f"nemo_rl: expected a wire string, got {type(wire).__name__}; {NEMO_LAYOUT}")
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
        raise AdapterError(f"nemo_rl: payload has {len(raw)} bytes, {S}x{L}x{K} {dt} needs "
                           f"{S * L * K * dtype.itemsize}")
    return np.frombuffer(raw, dtype=dtype).reshape(S, L, K)


def _is_filler(row):
    """NeMo RL's filler: arange(K) in every layer."""
    row = np.asarray(row)
    return bool((row == np.arange(row.shape[-1])).all())


def nemo_rl(wire, model, uid, tokens=(), prompt_len=0, start=0, group=None, logprobs=None, reward=None, attrs=None):
    """A NeMo RL wire string (``nemo_rl/utils/routed_experts_codec.py``, as
    ``pad_and_align_routed_expert_indices`` in ``nemo_rl/models/generation/vllm/utils.py`` fills it;
    checked against NeMo RL 7ea279a, 2026-08): S = prompt + generated rows of vLLM's all-layer axis,
    rows 0..S-2 the pass over each token (-1 = missing), row S-1 a filler ``arange(K)``, dropped.
    A last row that is not the filler is kept (NeMo RL's gym environment replaces it with the next
    turn's prefill route). The rows are placed from position ``start``; with ``tokens``, S must be
    ``len(tokens) - start``."""
    a = parse_nemo_rl(wire)
    if len(a) and _is_filler(a[-1]):
        a = a[:-1]
        S = len(a) + 1
    else:
        S = len(a)
    if tokens is not None and len(tokens) and S != len(tokens) - start:
        raise AdapterError(f"nemo_rl {uid}: {S} rows for {len(tokens)} tokens from position {start}: {NEMO_LAYOUT} "
                           f"(S = {len(tokens) - start} here)")
    ids = validate_ids(a, model, f"nemo_rl {uid} routed experts")
    d = dict(uid=uid, tokens=tokens, topk_ids=ids, prompt_len=prompt_len, start=start, group=group,
             reward=reward, attrs=attrs)
    if logprobs is not None:
        d["logprobs"] = logprobs
    return d


def nemo_rl_batch(routed_experts, output_ids, unpadded_sequence_lengths, input_lengths, model, uids=None,
                  groups=None, rewards=None):
    """NeMo RL's in-process generation batch (``VllmGenerationWorker.generate``:
    ``routed_experts`` ``[B, padded_len, L, K]``, ``output_ids`` ``[B, padded_len]`` right-padded,
    ``unpadded_sequence_lengths`` T, ``input_lengths`` the prompt lengths). Sequence b gets tokens
    ``output_ids[b, :T]`` and rows 0..T-2; rows T-1.. are NeMo RL's filler ``arange(K)`` (checked),
    never imported."""
    re_ = np.asarray(decode_array(routed_experts))
    ids_in = np.asarray(decode_array(output_ids))
    lens = np.asarray(decode_array(unpadded_sequence_lengths)).reshape(-1)
    plens = np.asarray(decode_array(input_lengths)).reshape(-1)
    if re_.ndim != 4:
        raise AdapterError(f"nemo_rl batch: routed_experts has shape {re_.shape}, expected [batch, padded_len, "
                           f"layers, top_k]")
    B, S = re_.shape[:2]
    if ids_in.shape != (B, S) or lens.shape != (B,) or plens.shape != (B,):
        raise AdapterError(f"nemo_rl batch: output_ids {ids_in.shape}, unpadded_sequence_lengths {lens.shape} and "
                           f"input_lengths {plens.shape} must be [{B}, {S}], [{B}] and [{B}] like routed_experts")
    res = []
    for b in range(B):
        T = int(lens[b])
        if not 1 <= T <= S or not 0 <= int(plens[b]) <= T:
            raise AdapterError(f"nemo_rl batch row {b}: length {T} / prompt {int(plens[b])} outside 1..{S}")
        tail = re_[b, T - 1:]
        if not all(_is_filler(r) for r in tail):
            p = T - 1 + next(i for i, r in enumerate(tail) if not _is_filler(r))
            raise AdapterError(f"nemo_rl batch row {b}: row {p} (at or after the last token, {T - 1}) is not the "
                               f"filler arange(K): {re_[b, p].tolist()}; {NEMO_LAYOUT}, padded with it")
        ids = validate_ids(re_[b, :T - 1], model, f"nemo_rl batch row {b}")
        res.append(dict(uid=uids[b] if uids is not None else f"nemo-{b}", tokens=ids_in[b, :T].astype(np.int32),
                        topk_ids=ids, prompt_len=int(plens[b]), start=0,
                        group=groups[b] if groups is not None else None,
                        reward=rewards[b] if rewards is not None else None))
    return res


# verl --------------------------------------------------------------------------------------------
def _routed_end(n_real, resp_mask_real, prompt_real):
    """Position (in the real tokens) of the last generated token: the engine's rows end there."""
    gen = np.nonzero(resp_mask_real)[0]
    if len(gen) == 0:
        return None
    return prompt_real + int(gen[-1])


def verl(routed_experts, attention_mask, input_ids, prompt_width, model, uids=None, groups=None,
         rewards=None, include_last=False, response_mask=None):
    """verl's batch (checked against verl 0.9.1, ``AgentLoopWorker._agent_loop_postprocess``):
    ``routed_experts`` ``[batch, seq, layers, k]`` aligned with ``input_ids`` ``[batch, seq]`` = a
    left-padded prompt of ``prompt_width`` columns then the right-padded response;
    ``attention_mask`` (1 = real token) tells real tokens from padding. verl copies the engine's
    rows (T - 1 of a T-token engine call) from the prompt's first column and leaves zeros
    elsewhere. Row p is the pass over real token p; the rows end at the last token but one, or,
    with ``response_mask`` ``[batch, response_width]`` (1 = generated; a multi-turn agent's tool
    responses are 0), at the last generated token. A zero row is never imported: within those rows
    it is an error (a tool response after the last generation without ``response_mask``), and
    ``include_last`` keeps the last token's row only when the engine routed it (never all zero;
    refused for top-1, where zero is expert 0)."""
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
    rmask = None
    if response_mask is not None:
        rmask = np.asarray(decode_array(response_mask)).astype(bool)
        if rmask.shape != (B, S - prompt_width):
            raise AdapterError(f"verl: response_mask {rmask.shape} must be [batch, seq - prompt_width] = "
                               f"{(B, S - prompt_width)}")
    if include_last and int(m["top_k"]) == 1:
        raise AdapterError("verl: include_last with top-1: verl zero-fills the rows the engine never routed (the "
                           "last token's among them), and with top-1 a zero row cannot be told from expert 0")
    res = []
    for b in range(B):
        pos = np.nonzero(mask[b])[0]
        if len(pos) and not np.array_equal(pos, np.arange(pos[0], pos[0] + len(pos))):
            # a left-padded prompt followed by a right-padded response: real tokens must be contiguous
            raise AdapterError(f"verl: batch row {b}: real tokens are not contiguous (a hole in attention_mask)")
        plen = int(mask[b, :prompt_width].sum())
        if plen and mask[b, prompt_width - plen:prompt_width].sum() != plen:
            raise AdapterError(f"verl: batch row {b}: prompt is not left-padded")
        n = max(len(pos) - 1, 0)
        if rmask is not None:
            end = _routed_end(len(pos), rmask[b][mask[b, prompt_width:]], plen)
            n = end if end is not None else 0
        if include_last and n < len(pos) and not _zero_rows(re_[b, pos[n]][None])[0]:
            n += 1                                          # the last token's row, where the engine routed it
        rows = re_[b, pos[:n]]
        zero = _zero_rows(rows) if int(m["top_k"]) > 1 else np.zeros(len(rows), bool)
        if zero.any():
            p = int(np.argmax(zero))
            raise AdapterError(f"verl: batch row {b}: position {p} is all zero, verl's fill where the engine routed "
                               f"nothing (a multi-turn agent's tool response after its last generation): pass "
                               f"response_mask so the rows end at the last generated token")
        ids = validate_ids(rows, m, f"verl batch row {b}")
        res.append(dict(uid=uids[b] if uids is not None else f"verl-{b}", tokens=ids_in[b, pos].astype(np.int32),
                        topk_ids=ids, prompt_len=plen, start=0,
                        group=groups[b] if groups is not None else None,
                        reward=rewards[b] if rewards is not None else None))
    return res


def verl_agent_loop(sample, model, uid=None, group=None, reward=None, attrs=None):
    """One sample of verl's TransferQueue path (``AgentLoopOutput.as_dict()``, verl 0.9.1): a dict
    (or object) with ``prompts`` and ``responses`` (unpadded token ids), ``response_mask`` (1 =
    generated, 0 = tool response) and ``routed_experts`` ``[len(prompts) + len(responses), layers,
    k]`` whose rows the engine never sent are zero. The rows end at the last generated token (the
    last engine call's last token but one); the zero tail after it is never imported."""
    def need(k):
        v = _get(sample, k)
        if v is None:
            raise AdapterError(f"verl agent loop {uid}: no {k!r} (keys: {', '.join(_keys(sample))}); verl 0.9's "
                               f"AgentLoopOutput.as_dict() has prompts, responses, response_mask, routed_experts")
        return np.asarray(decode_array(v))
    p, r, rm, re_ = need("prompts").reshape(-1), need("responses").reshape(-1), need("response_mask").reshape(-1), \
        need("routed_experts")
    tokens = np.concatenate([p, r]).astype(np.int32)
    if rm.shape != r.shape:
        raise AdapterError(f"verl agent loop {uid}: response_mask has {rm.size} entries for {r.size} response tokens")
    if re_.ndim != 3 or re_.shape[0] != len(tokens):
        raise AdapterError(f"verl agent loop {uid}: routed_experts has shape {re_.shape}, expected [{len(tokens)} "
                           f"(prompt + response), layers, top_k] as AgentLoopOutput.as_dict() aligns it")
    n = _routed_end(len(tokens), rm, len(p))
    if n is None:
        raise AdapterError(f"verl agent loop {uid}: response_mask has no generated token, so no engine call routed "
                           f"anything")
    if (re_[n:] != 0).any():
        q = n + int(np.argmax((re_[n:] != 0).reshape(len(re_) - n, -1).any(axis=1)))
        raise AdapterError(f"verl agent loop {uid}: row {q}, after the last generated token ({n}), is not zero: "
                           f"verl zero-fills the rows the engine never routed; not an AgentLoopOutput layout")
    ids = validate_ids(re_[:n], model, f"verl agent loop {uid}")
    return dict(uid=uid if uid is not None else "verl", tokens=tokens, topk_ids=ids, prompt_len=len(p), start=0,
                group=group, reward=reward, attrs=attrs)
