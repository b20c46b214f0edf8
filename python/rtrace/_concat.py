"""Concatenating complete traces without decoding their rows (spec/format.md §4, §5.2, §7).

Chunks are self-contained: a chunk frame is copied as it is, except its PIECES column, whose record
ordinals must count on from the previous trace's (§5.2), so it is rewritten (stored raw) and the
column's and the chunk header's CRCs recomputed. The index is rebuilt from the inputs' indexes.
``rtrace.ray`` uses this to gather one partition's shuffled pieces into one file per side."""
from __future__ import annotations

import io
import json
import struct
from typing import Optional

import numpy as np

from . import _format as F
from ._format import FormatError
from .reader import Reader
from .writer import index_and_trailer

__all__ = ["TraceConcat", "concat_traces"]

_PIECE = np.dtype([("record", "<u8"), ("flags", "<u4"), ("row_offset", "<u4"), ("n_rows", "<u4")])


def _header_bytes(header: dict) -> bytes:
    js = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    h = F.MAGIC + struct.pack("<HHI", F.MAJOR, F.MINOR, len(js)) + js
    return h + struct.pack("<I", F.crc32(h))


def _rebased_chunk(frame: memoryview, base: int, name: str, at: int) -> bytes:
    """The chunk frame with ``base`` added to its PIECES ordinals (PIECES stored raw)."""
    C, P, R, payload_len = struct.unpack_from("<IIIQ", frame, 4)
    head_len = 24 + 16 * C
    if frame[:4] != F.CHUNK_MAGIC or len(frame) != head_len + 4 + payload_len:
        raise FormatError(f"{name}: the index points at no chunk frame of its length", at, "corrupt")
    if struct.unpack_from("<I", frame, head_len)[0] != F.crc32(frame[:head_len]):
        raise FormatError(f"{name}: chunk header CRC mismatch", at, "checksum")
    entries = [list(struct.unpack_from("<HBBIII", frame, 24 + 16 * i)) for i in range(C)]
    cols = []
    p = head_len + 4
    for e in entries:
        cols.append(frame[p:p + e[4]])
        p += e[4]
    for i, (cid, codec, tr, raw_len, stored_len, crc) in enumerate(entries):
        if cid != F.PIECES:
            continue
        if F.crc32(cols[i]) != crc:
            raise FormatError(f"{name}: CRC mismatch in column PIECES of the chunk", at, "checksum")
        raw = F.inflate(cols[i], raw_len, at, "PIECES") if codec == 1 else bytes(cols[i])
        if tr != 0 or len(raw) != 20 * P:
            raise FormatError(f"{name}: PIECES of the chunk is not {P} plain entries", at, "corrupt")
        pc = np.frombuffer(raw, dtype=_PIECE).copy()
        pc["record"] += np.uint64(base)
        cols[i] = pc.tobytes()
        entries[i] = [cid, 0, 0, len(cols[i]), len(cols[i]), F.crc32(cols[i])]
    head = F.CHUNK_MAGIC + struct.pack("<IIIQ", C, P, R, sum(len(c) for c in cols)) \
        + b"".join(struct.pack("<HBBIII", *e) for e in entries)
    return b"".join([head, struct.pack("<I", F.crc32(head))] + [bytes(c) for c in cols])


class TraceConcat:
    """Writes the records of complete traces, added one at a time as bytes, as one trace to the binary
    file ``out``; every added trace must have the same header. ``close()`` writes the index and trailer
    (with no trace added: a trace of ``header`` without records)."""

    def __init__(self, out, header: Optional[dict] = None):
        self.out = out
        self.header = header
        self.pos = None
        self.chunks, self.records = [], []
        self.total_rows = self.total_tokens = 0
        if header is not None:
            self._start(header)

    def _start(self, header: dict):
        hb = _header_bytes(header)
        self.out.write(hb)
        self.pos = len(hb)
        self.header = header

    def add(self, src: bytes, name: str = "<bytes>") -> list:
        """Appends the records of the trace ``src``; returns their uids."""
        f = io.BytesIO(src)
        f.name = name
        rd = Reader(f, threads=False)
        if not rd.complete:
            raise FormatError(f"{name}: no index and trailer: only complete traces can be concatenated", None,
                              "truncated")
        if self.pos is None:
            self._start(rd.header)
        elif rd.header != self.header:
            raise ValueError(f"{name}: its header differs from the first trace's; traces concatenate only under "
                             f"one header")
        ix = rd.index
        mv = memoryview(src)
        base, cbase = len(self.records), len(self.chunks)
        for off, flen, first_rec, n_pieces, n_rows in ix["chunks"]:
            frame = _rebased_chunk(mv[off:off + flen], base, name, off)
            self.out.write(frame)
            self.chunks.append((self.pos, len(frame), first_rec + base, n_pieces, n_rows))
            self.pos += len(frame)
        uids = []
        for fc, nc, nr, nt, uid in ix["records"]:
            self.records.append((fc + cbase, nc, nr, nt, uid.encode("utf-8")))
            uids.append(uid)
        self.total_rows += ix["total_rows"]
        self.total_tokens += ix["total_tokens"]
        return uids

    def close(self) -> int:
        """Writes the index and trailer; returns the number of records."""
        if self.pos is None:
            raise ValueError("nothing to concatenate and no header given")
        self.out.write(index_and_trailer(self.pos, self.chunks, self.records, self.total_rows, self.total_tokens))
        return len(self.records)


def concat_traces(sources, out, names=None) -> int:
    """Writes the records of the complete traces ``sources`` (bytes), in order, as one trace to the
    binary file ``out`` (see ``TraceConcat``); ``names`` name them in errors. Returns the number of
    records written."""
    cat = TraceConcat(out)
    names = list(names) if names is not None else [f"source {i}" for i in range(len(sources))]
    for src, name in zip(sources, names):
        cat.add(src, name)
    return cat.close()
