"""Planning reads of many traces: which files, which chunk ranges, one geometry, one set of columns
(for ``rtrace.ray``).

A read unit is one file, or one range of a complete file's chunks (``Reader.read_chunks``): the
records whose FIRST piece lies in the range. Units never split a record, so the units of a file hold
each of its records exactly once. Planning reads only headers and indexes."""
from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from . import _format as F
from .reader import Reader

__all__ = ["ReadUnit", "TraceFile", "expand_paths", "open_files", "plan_units", "check_geometry", "common_columns",
           "as_dtype"]


@dataclass(frozen=True)
class ReadUnit:
    """One read task's share: ``path`` (absolute, to open), ``name`` (as the user gave it, for messages
    and JSON), chunks ``first`` … ``end - 1`` (None: the whole file, read as a stream), and the
    records, rows and stored bytes the index gives for it (None for a stream)."""
    path: str
    name: str
    first: Optional[int] = None
    end: Optional[int] = None
    records: Optional[int] = None
    rows: Optional[int] = None
    nbytes: Optional[int] = None

    def read(self, allow_incomplete: bool = False, threads: bool = True):
        """Yields the unit's records (``rtrace.Record``), in file order."""
        rd = Reader(self.path, allow_incomplete=allow_incomplete, threads=threads)
        if self.first is None:
            yield from rd
        else:
            yield from rd.read_chunks(self.first, self.end)

    @property
    def label(self) -> str:
        """The file, and the chunk range when the unit is a part of it."""
        return self.name if self.first is None else f"{self.name} (chunks {self.first}:{self.end})"


@dataclass(frozen=True)
class TraceFile:
    """A file's header and the summary of its index (None when it has none)."""
    path: str
    name: str
    header: dict
    size: int
    complete: bool
    chunks: Optional[list]       # (offset, frame_len, first_record, n_pieces, n_rows) per chunk
    first_chunks: Optional[list]  # the first chunk of each record

    @property
    def geometry(self):
        m = self.header["model"]
        return (m["num_layers"], m["num_experts"], m["top_k"], list(m["layer_map"]))


def expand_paths(paths) -> List[str]:
    """Files named by ``paths`` (a path, or a list of paths): a directory stands for the ``*.rtrace``
    files in it, sorted by name, as the CLI expands them. Names are kept as given."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            files = sorted(n for n in os.listdir(p) if n.endswith(".rtrace"))
            if not files:
                raise ValueError(f"directory {p} holds no *.rtrace files")
            out += [os.path.join(p, n) for n in files]
        else:
            out.append(p)
    if not out:
        raise ValueError("no trace files given")
    return out


def open_files(names: Sequence[str]) -> List[TraceFile]:
    """Reads each file's header and index. Raises ``FormatError`` naming a file that is empty or not a
    trace, ``FileNotFoundError`` for a missing one (errors name files by absolute path)."""
    out = []
    for name in names:
        path = os.path.abspath(name)
        rd = Reader(path)
        try:
            ix = rd.index
            out.append(TraceFile(path, name, rd.header, rd._src.size, bool(rd.complete),
                                 None if ix is None else list(ix["chunks"]),
                                 None if ix is None else [r[0] for r in ix["records"]]))
        finally:
            rd._src.close()
    return out


_GEOMETRY = ("num_layers", "num_experts", "top_k", "layer_map")


def check_geometry(files: Sequence[TraceFile], reference: Optional[TraceFile] = None):
    """Raises ``ValueError`` naming the first file whose geometry (num_layers, num_experts, top_k,
    layer_map) differs from ``reference``'s (default: the first file's)."""
    ref = reference or files[0]
    for f in files:
        for key, want, got in zip(_GEOMETRY, ref.geometry, f.geometry):
            if want != got:
                raise ValueError(f"{f.name}: a trace of another geometry: {key} {got}, where {ref.name} has {want} "
                                 f"(the traces of one dataset or comparison share num_layers, num_experts, top_k "
                                 f"and layer_map)")


def plan_units(files: Sequence[TraceFile], target_rows: Optional[int] = None) -> List[ReadUnit]:
    """Read units of ``files``, in file order: a complete file in ranges of whole chunks holding about
    ``target_rows`` rows each (at least one chunk; None: one range per file), a file without index as
    one unit. A range starts only at a chunk where a record starts, so none is empty."""
    units = []
    for f in files:
        if f.chunks is None:
            units.append(ReadUnit(f.path, f.name, nbytes=f.size))
            continue
        n = len(f.chunks)
        starts = set(f.first_chunks)  # chunks holding a record's FIRST piece
        cuts, rows = [0], 0
        for c in range(n):
            if target_rows is not None and rows >= target_rows and c in starts:
                cuts.append(c)
                rows = 0
            rows += f.chunks[c][4]
        cuts.append(n)
        for a, b in zip(cuts, cuts[1:]):
            recs = bisect.bisect_left(f.first_chunks, b) - bisect.bisect_left(f.first_chunks, a)
            units.append(ReadUnit(f.path, f.name, a, b, recs, sum(ch[4] for ch in f.chunks[a:b]),
                                  sum(ch[1] for ch in f.chunks[a:b])))
    return units


def common_columns(headers: Sequence[dict], every: bool = True) -> dict:
    """The columns one table of several files' records has: ``topk_ids`` and ``tokens`` of the first,
    and each float column (``topk_weights``, ``router_logits``) in the dtype the files share, or ``f32``
    when they differ (f16 and bf16 are exact in f32). ``every``: keep an optional column only when every
    file has it (else when any has it)."""
    cols = {"topk_ids": headers[0]["columns"]["topk_ids"], "tokens": headers[0]["columns"]["tokens"]}
    for key in ("topk_weights", "router_logits", "logprobs"):
        kinds = {h["columns"].get(key) for h in headers}
        if None in kinds and (every or kinds == {None}):
            continue
        kinds.discard(None)
        cols[key] = kinds.pop() if len(kinds) == 1 else "f32"
    return cols


def as_dtype(a: Optional[np.ndarray], dtype: Optional[str]) -> Optional[np.ndarray]:
    """A float column of a record (bf16 as uint16 bits) in ``dtype`` (``f32`` widens; None drops it)."""
    if a is None or dtype is None:
        return None
    if dtype == "f32" and a.dtype == np.uint16:
        return F.bf16_bits_to_float(a)
    return a.astype(np.float32) if dtype == "f32" else a
