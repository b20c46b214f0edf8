"""Records as Arrow tables with Ray's tensor columns, and back (``rtrace.ray``).

One table row per record (sequence). Arrays are Ray Data variable-shaped tensor columns
(``ArrowVariableShapedTensorType``: each row its own shape, one dtype), so a batch in numpy format
holds one ndarray per record:

=================  ==========================================  =======================================
column             type                                        content
=================  ==========================================  =======================================
``uid``            string                                      the record's uid
``group``          string, null when absent                    its group
``tokens``         tensor int32 ``[n_tokens]``                 token ids
``prompt_len``     int64                                       prompt length
``start``          int64                                       token index of row 0
``n_rows``         int64                                       routed rows
``topk_ids``       tensor int32 ``[rows, layers, k]``          expert ids, -1 = (row, layer) missing
``topk_weights``   tensor f16 / f32 / uint16 ``[rows, layers, k]``  gate weights (bf16 as uint16 bits);
                                                               only when the trace has the column; float32
                                                               when the dataset's files differ in dtype
``router_logits``  tensor ``[rows, layers, num_experts]``      likewise
``logprobs``       tensor float32 ``[n]``                      only when the trace has the column
``reward``         float64, null when absent                   reward
``attrs``          string (JSON object), null when absent      attributes
``path``           string                                      the file (``include_paths=True``)
=================  ==========================================  =======================================

The table's schema metadata ``rtrace.header`` holds the trace header (JSON), so that
``write_rtrace`` writes the same header back."""
from __future__ import annotations

import json
from typing import Iterator, List, Optional

import numpy as np
import pyarrow as pa

from ._plan import as_dtype

HEADER_KEY = b"rtrace.header"

__all__ = ["HEADER_KEY", "records_to_table", "table_records", "header_of", "header_for_table"]


def _tensors(arrays: List[np.ndarray]):
    from ray.data.extensions import ArrowVariableShapedTensorArray
    return ArrowVariableShapedTensorArray.from_numpy(arrays)


def records_to_table(records, header: dict, path: Optional[str] = None, columns: Optional[dict] = None) -> pa.Table:
    """A table of ``records`` (``rtrace.Record``s of a trace with ``header``), one row each. ``columns``:
    the dataset's float dtypes (``_plan.common_columns``), to which a file's columns are widened."""
    own = header["columns"]
    cols = {k: v for k, v in (columns or own).items() if k in own}
    data = {
        "uid": pa.array([r.uid for r in records], pa.string()),
        "group": pa.array([r.group for r in records], pa.string()),
        "tokens": _tensors([r.tokens for r in records]),
        "prompt_len": pa.array([r.prompt_len for r in records], pa.int64()),
        "start": pa.array([r.start for r in records], pa.int64()),
        "n_rows": pa.array([r.n_rows for r in records], pa.int64()),
        "topk_ids": _tensors([r.topk_ids for r in records]),
    }
    if "topk_weights" in cols:
        data["topk_weights"] = _tensors([as_dtype(r.topk_weights, cols["topk_weights"]) for r in records])
    if "router_logits" in cols:
        data["router_logits"] = _tensors([as_dtype(r.router_logits, cols["router_logits"]) for r in records])
    if "logprobs" in cols:
        data["logprobs"] = _tensors([r.logprobs for r in records])
    data["reward"] = pa.array([r.reward for r in records], pa.float64())
    data["attrs"] = pa.array([None if r.attrs is None else json.dumps(r.attrs, ensure_ascii=False,
                                                                      separators=(",", ":")) for r in records],
                             pa.string())
    if path is not None:
        data["path"] = pa.array([path] * len(records), pa.string())
    t = pa.table(data)
    return t.replace_schema_metadata({HEADER_KEY: json.dumps(header, sort_keys=True).encode()})


def header_of(table: pa.Table) -> Optional[dict]:
    """The trace header a table carries in its schema metadata, or None."""
    md = table.schema.metadata or {}
    h = md.get(HEADER_KEY)
    return None if h is None else json.loads(h)


def _arrays(col: pa.ChunkedArray) -> List[Optional[np.ndarray]]:
    """One ndarray per row of a tensor column (Ray's fixed- or variable-shaped tensors, or nested lists)."""
    out = []
    for ch in col.chunks:
        if isinstance(ch.type, pa.ExtensionType):
            out += [np.asarray(x) for x in ch.to_numpy(zero_copy_only=False)]
        else:
            out += [None if x is None else np.asarray(x) for x in ch.to_pylist()]
    return out


def table_records(t: pa.Table) -> Iterator[dict]:
    """``Writer.add`` keyword arguments of each row of a table with the columns of ``records_to_table``
    (``uid`` and ``topk_ids`` required; the others optional)."""
    names = set(t.column_names)
    for need in ("uid", "topk_ids"):
        if need not in names:
            raise ValueError(f"the dataset has no {need!r} column (columns: {sorted(names)}): write_rtrace needs "
                             f"the columns read_rtrace makes")
    cols = {}
    for key in ("tokens", "topk_ids", "topk_weights", "router_logits", "logprobs"):
        if key in names:
            cols[key] = _arrays(t.column(key))
    for key in ("uid", "group", "prompt_len", "start", "reward", "attrs"):
        if key in names:
            cols[key] = t.column(key).to_pylist()
    for i in range(t.num_rows):
        kw = {k: v[i] for k, v in cols.items() if v[i] is not None}
        if "attrs" in kw:
            kw["attrs"] = json.loads(kw["attrs"])
        yield kw


def header_for_table(header: dict, t: pa.Table) -> dict:
    """A header with ``columns`` (taken from the table's columns and dtypes when not given)."""
    if "columns" in header:
        return header
    h = dict(header)
    cols = {"topk_ids": "u8" if h["model"]["num_experts"] <= 256 else "u16", "tokens": "i32"}
    kinds = {"float16": "f16", "float32": "f32", "uint16": "bf16"}
    for key in ("topk_weights", "router_logits"):
        if key in t.column_names:
            dt = _dtype_of(t.column(key))
            if dt not in kinds:
                raise ValueError(f"column {key} holds {dt}: write_rtrace writes float16, float32 or uint16 (bf16 bits)")
            cols[key] = kinds[dt]
    if "logprobs" in t.column_names:
        cols["logprobs"] = "f32"
    h["columns"] = cols
    return h


def _dtype_of(col: pa.ChunkedArray) -> str:
    """The numpy dtype name of a tensor column's elements (Ray's tensor types, or nested lists)."""
    vt = getattr(col.type, "value_type", None)
    if isinstance(col.type, pa.ExtensionType) and vt is not None:
        return str(np.dtype(vt.to_pandas_dtype()))
    for a in _arrays(col):
        if a is not None:
            return str(a.dtype)
    return "float32"
