"""Reading .rtrace files (spec/format.md)."""
from __future__ import annotations

import io
import json
import os
import struct
import threading
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import _format as F
from ._format import FormatError

__all__ = ["Reader", "Record", "decode_ids", "native_available"]


@dataclass
class Record:
    uid: str
    group: Optional[str]
    tokens: np.ndarray            # int32 [n_tokens]
    prompt_len: int
    start: int
    topk_ids: np.ndarray          # int32 [rows, layers, k], -1 = missing
    topk_weights: Optional[np.ndarray] = None   # [rows, layers, k] f16/f32, bf16 as uint16
    router_logits: Optional[np.ndarray] = None  # [rows, layers, E]
    logprobs: Optional[np.ndarray] = None       # f32 [n_logprobs], None when the column is absent
    reward: Optional[float] = None
    attrs: Optional[dict] = None
    ordinal: int = field(default=-1, repr=False)

    @property
    def n_rows(self) -> int:
        return self.topk_ids.shape[0]

    @property
    def missing(self) -> np.ndarray:
        """[rows, layers] bool: True where the (row, layer) was not captured."""
        return self.topk_ids[:, :, 0] < 0


def _load_native():
    """The compiled accelerator rtrace._native (python/rtrace/_native.c), or None when it was not
    built or the environment variable RTRACE_PURE_PYTHON is 1 (then the numpy code decodes)."""
    if os.environ.get("RTRACE_PURE_PYTHON") == "1":
        return None
    try:
        from . import _native
    except ImportError:
        return None
    return _native


_native = _load_native()


def native_available() -> bool:
    """Whether the reader decodes with the compiled accelerator ``rtrace._native``: True when it was
    built (``pip install`` with a C compiler) and ``RTRACE_PURE_PYTHON`` is not ``1``. Both decoders
    give the same records and the same errors; the numpy one is several times slower."""
    return _native is not None


def _bad_code(code: int, entry: int, k: int, where) -> FormatError:
    return FormatError(f"ID_SLOTS byte {code} at entry {entry} is neither 0xFF nor < top_k={k}", where)


def _no_previous(entry: int, where) -> FormatError:
    return FormatError(f"ID_SLOTS entry {entry} refers to a previous row that does not exist", where)


def _new_count(n_new: int, markers: int, where) -> FormatError:
    if markers == 0:
        return FormatError(f"ID_NEW holds {n_new} values but ID_SLOTS has no 0xFF", where)
    return FormatError(f"ID_NEW holds {n_new} values but ID_SLOTS has {markers} 0xFF bytes", where)


_STRAY_NIBBLE = "ID_SLOTS: the unused high nibble of its last byte is not 0"


def _native_error(err, k: int, n_new: int, where) -> FormatError:
    """The FormatError of an error tuple (kind, entry, value) of rtrace._native's decoders: the one
    decode_ids_numpy raises for the same coding."""
    from . import _native as native
    kind, entry, value = err
    if kind == native.ERR_BAD_CODE:
        return _bad_code(value, entry, k, where)
    if kind == native.ERR_NO_PREVIOUS:
        return _no_previous(entry, where)
    if kind == native.ERR_STRAY_NIBBLE:
        return FormatError(_STRAY_NIBBLE, where)
    return _new_count(n_new, entry, where)


def decode_ids(slots: np.ndarray, new: np.ndarray, valid_prev: np.ndarray, k: int, where=None):
    """Inverse of the ordered-reuse coding (§6.2), with rtrace._native when it is in use, else numpy.

    slots: [Q, k] uint8; new: ID_NEW values; valid_prev: [Q] bool (a previous present row of the
    same piece and layer exists). Returns [Q, k] int32 ids; raises FormatError on an invalid coding."""
    if _native is not None:
        return decode_ids_native(slots, new, valid_prev, k, where)
    return decode_ids_numpy(slots, new, valid_prev, k, where)


def decode_ids_native(slots, new: np.ndarray, valid_prev: np.ndarray, k: int, where=None, packed: bool = False):
    """decode_ids with rtrace._native (which must be built). With ``packed``, ``slots`` is the
    nibble-packed ID_SLOTS column (§6.3, bytes) instead of [Q, k] codes."""
    from . import _native as native
    valid = np.ascontiguousarray(valid_prev, dtype=bool)
    new = np.ascontiguousarray(new, dtype=np.uint8 if np.asarray(new).dtype.itemsize == 1 else np.dtype("<u2"))
    Q = len(valid)
    if Q == 0 and len(new):
        raise _new_count(len(new), 0, where)
    out = np.empty((Q, k), dtype=np.int32)
    err = native.decode_ids(slots if packed else np.ascontiguousarray(slots, dtype=np.uint8), packed, new,
                            new.dtype.itemsize, valid, k, out)
    if err is not None:
        raise _native_error(err, k, len(new), where)
    return out


def decode_ids_numpy(slots: np.ndarray, new: np.ndarray, valid_prev: np.ndarray, k: int, where=None):
    """decode_ids in numpy, vectorised with pointer jumping.

    Every reused entry points at an entry of the previous row; the pointers are followed by
    doubling (``ref = ref[ref]``) over the entries not yet resolved to a 0xFF entry only, so the
    work shrinks with every step (log2 of the longest reuse chain steps)."""
    Q = slots.shape[0]
    if Q == 0:
        if len(new):
            raise _new_count(len(new), 0, where)
        return np.zeros((0, k), dtype=np.int32)
    flat = slots.reshape(-1)
    isnew = flat == F.NEW_MARKER
    nnew = int(np.count_nonzero(isnew))
    if int(np.count_nonzero(flat >= k)) != nnew:
        bad = (flat >= k) & ~isnew
        if bad.any():
            i = int(np.argmax(bad))
            raise _bad_code(int(flat[i]), i, k, where)
    inv = np.flatnonzero(~valid_prev)
    if len(inv):
        bad = ~isnew.reshape(Q, k)[inv]
        if bad.any():
            q, j = np.argwhere(bad)[0]
            raise _no_previous(int(inv[q]) * k + int(j), where)
    if nnew != len(new):
        raise _new_count(len(new), nnew, where)
    N = Q * k
    # ref: for a 0xFF entry ~(its index in ID_NEW) (negative); for a reused entry q*k + j with slot
    # byte m, the entry (q-1)*k + m it copies. Pointer doubling (ref[x] = ref[ref[x]]) over the
    # entries still pointing at a reused entry turns every ref negative in log2(chain) rounds.
    ref = (np.arange(-k, N - k, k, dtype=np.intp)[:, None] + slots).reshape(-1)
    ref[np.flatnonzero(isnew)] = ~np.arange(nnew, dtype=np.intp)
    act = np.flatnonzero(~isnew)
    tgt = ref[act]
    while len(act):
        tgt = ref[tgt]
        ref[act] = tgt
        keep = tgt >= 0
        act = np.compress(keep, act)
        tgt = np.compress(keep, tgt)
    vals = np.asarray(new, dtype=np.int32)[~ref] if nnew else np.zeros(N, dtype=np.int32)
    return vals.reshape(Q, k)


class _Source:
    """Reads exactly, tracking the offset; seekable when the file is."""

    def __init__(self, target):
        self.own = False
        self.name = "<stream>"
        if isinstance(target, (bytes, bytearray, memoryview)):
            self.f = io.BytesIO(bytes(target))
            self.name = "<bytes>"
            self.own = True
        elif isinstance(target, (str, os.PathLike)):
            self.name = os.fspath(target)
            self.f = open(target, "rb")
            self.own = True
        elif isinstance(target, int):
            self.f = os.fdopen(target, "rb")
            self.own = True
        else:
            self.f = target
            self.name = getattr(target, "name", "<stream>")
        try:
            self.seekable = bool(self.f.seekable())
        except Exception:
            self.seekable = False
        self.offset = 0
        self.size = None
        if self.seekable:
            cur = self.f.tell()
            self.size = self.f.seek(0, 2)
            self.f.seek(cur)
            self.offset = cur
            self.base = cur
        else:
            self.base = 0

    def read(self, n: int) -> bytes:
        out = self.f.read(n)
        if out is None:
            out = b""
        if len(out) < n:
            parts = [out]
            got = len(out)
            while got < n:
                b = self.f.read(n - got)
                if not b:
                    break
                parts.append(b)
                got += len(b)
            out = b"".join(parts)
        self.offset += len(out)
        return out

    def exact(self, n: int, what: str) -> bytes:
        at = self.offset
        b = self.read(n)
        if len(b) < n:
            raise FormatError(f"{self.name}: end of data inside {what} ({len(b)} of {n} bytes)", at, "truncated")
        return b

    def seek(self, pos: int):
        self.f.seek(self.base + pos)
        self.offset = pos

    def left(self) -> Optional[int]:
        return None if self.size is None else self.size - self.base - self.offset

    def close(self):
        if self.own:
            self.f.close()


def _describe(b: bytes) -> str:
    if b.startswith(b"PK\x03\x04"):
        return "a zip archive (an .npz?)"
    if b.startswith(b"\x1f\x8b"):
        return "gzip data"
    if b.startswith(b"\x93NUMPY"):
        return "a .npy array"
    if b and all(32 <= c < 127 or c in (9, 10, 13) for c in b):
        return "text"
    return f"bytes {b[:8].hex(' ')}"


class Reader:
    """Reads a trace: iterate for records in order; ``get(uid)`` uses the index.

    ``allow_incomplete=True`` reads a file without index/trailer (a writer still running or
    killed) without raising at its end; ``reader.complete`` tells what was found.
    ``threads=False`` decodes on the calling thread only (by default, on a regular file, the next
    chunk is decoded on a worker thread and a chunk's columns are inflated concurrently)."""

    def __init__(self, path_or_file, allow_incomplete: bool = False, threads: bool = True):
        self._src = _Source(path_or_file)
        self.threads = bool(threads)
        self.allow_incomplete = allow_incomplete
        self.complete: Optional[bool] = None
        self._index = None
        self._warned_ext = set()
        self._buffers = _Buffers()
        self._read_header()
        if self._src.seekable:
            self.complete = self._try_index()
            self._src.seek(self.data_start)

    # header ----------------------------------------------------------------------------------
    def _read_header(self):
        s = self._src
        first = s.read(16)
        if len(first) < 16 or (len(first) >= 8 and first[:8] != F.MAGIC):
            if len(first) >= 8 and first[:8] != F.MAGIC:
                raise FormatError(f"{s.name}: not an rtrace file: starts like {_describe(first)}", 0, "notATrace")
            raise FormatError(f"{s.name}: {len(first)} bytes, a trace has at least 20", 0, "truncated")
        major, minor, n = struct.unpack_from("<HHI", first, 8)
        if major != F.MAJOR:
            raise FormatError(f"{s.name}: format version {major}.{minor}, this reader supports {F.MAJOR}.x",
                              8, "unsupportedVersion")
        if not 2 <= n <= F.MAX_HEADER_JSON:
            raise FormatError(f"{s.name}: header json_len {n} outside 2..{F.MAX_HEADER_JSON}", 12, "limit")
        js = s.exact(n, "the header JSON")
        crc = struct.unpack("<I", s.exact(4, "the header CRC"))[0]
        got = F.crc32(first + js)
        if crc != got:
            raise FormatError(f"{s.name}: header CRC mismatch (stored {crc:08x}, computed {got:08x})", 16 + n,
                              "checksum")
        try:
            h = json.loads(js.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise FormatError(f"{s.name}: header JSON does not parse: {e}", 16, "badHeader") from None
        F.validate_header(h)
        self.version = (major, minor)
        self.header = h
        m, c = h["model"], h["columns"]
        self.L, self.k, self.E = len(m["layer_map"]), m["top_k"], m["num_experts"]
        self.id_dtype = np.dtype("u1") if c["topk_ids"] == "u8" else np.dtype("<u2")
        self.wdt = F.FLOAT_DTYPES.get(c.get("topk_weights"))
        self.ldt = F.FLOAT_DTYPES.get(c.get("router_logits"))
        self.has_logprobs = "logprobs" in c
        self.data_start = 20 + n

    # index -----------------------------------------------------------------------------------
    def _try_index(self) -> bool:
        s = self._src
        size = s.size - s.base
        if size < self.data_start + 32:
            return False
        s.seek(size - 32)
        t = s.read(32)
        if t[24:] != F.END_MAGIC or struct.unpack_from("<I", t, 20)[0] != F.crc32(t[:20]):
            return False
        io_, il, nch = struct.unpack_from("<QQI", t, 0)
        if io_ + il + 32 != size or il < 20 or io_ < self.data_start or il - 20 > F.MAX_INDEX:
            return False
        s.seek(io_)
        fr = s.read(il)
        if fr[:4] != F.INDEX_MAGIC or struct.unpack_from("<I", fr, il - 4)[0] != F.crc32(fr[:il - 4]):
            return False
        body_len = struct.unpack_from("<Q", fr, 8)[0]
        if body_len != il - 20:
            return False
        self._index = (io_, fr[16:16 + body_len], nch)
        return True

    def _parse_index(self):
        if isinstance(self._index, dict) or self._index is None:
            return self._index
        io_, b, nch = self._index
        try:
            p = 0
            (nc,) = struct.unpack_from("<Q", b, p); p += 8
            if nc != nch or nc * 32 > len(b):
                raise FormatError("index n_chunks disagrees with the trailer", io_)
            chunks = [struct.unpack_from("<QQQII", b, p + 32 * i) for i in range(nc)]
            p += 32 * nc
            (nr,) = struct.unpack_from("<Q", b, p); p += 8
            if nr * 20 > len(b):
                raise FormatError(f"index n_records {nr} too large", io_, "limit")
            records = []
            uids = {}
            for i in range(nr):
                fc, cc, rows, toks, ul = struct.unpack_from("<IIIII", b, p); p += 20
                uid = b[p:p + ul].decode("utf-8"); p += ul
                records.append((fc, cc, rows, toks, uid))
                uids.setdefault(uid, i)
            total_rows, total_tokens = struct.unpack_from("<QQ", b, p)
        except (struct.error, UnicodeDecodeError) as e:
            raise FormatError(f"{self._src.name}: index body is malformed ({e})", io_) from None
        self._index = {"chunks": chunks, "records": records, "uids": uids,
                       "total_rows": total_rows, "total_tokens": total_tokens}
        return self._index

    @property
    def index(self) -> Optional[dict]:
        """The parsed index (chunks, records, uids, totals) of a complete seekable file, else None."""
        return self._parse_index()

    def __len__(self):
        ix = self._parse_index()
        if ix is None:
            raise TypeError("len() needs a complete, seekable trace (it reads the index)")
        return len(ix["records"])

    def uids(self):
        ix = self._parse_index()
        if ix is None:
            return [r.uid for r in self]
        return [r[4] for r in ix["records"]]

    def get(self, uid: str) -> Record:
        """Looks a record up through the index (complete, seekable files); scans otherwise."""
        ix = self._parse_index()
        if ix is None:
            for r in self:
                if r.uid == uid:
                    return r
            raise KeyError(uid)
        if uid not in ix["uids"]:
            raise KeyError(uid)
        ordinal = ix["uids"][uid]
        fc, cc = ix["records"][ordinal][:2]
        asm = _Assembler(self)
        out = None
        for ci in range(fc, fc + cc):
            if ci >= len(ix["chunks"]):
                raise FormatError(f"index names chunk {ci} of {len(ix['chunks'])}", None)
            off = ix["chunks"][ci][0]
            self._src.seek(off)
            magic = self._src.exact(4, "a chunk magic")
            if magic != F.CHUNK_MAGIC:
                raise FormatError(f"{self._src.name}: index points at {magic!r}, not a chunk", off, "corrupt")
            for rec in asm.feed(self._read_chunk(off), only=ordinal, seq_check=False):
                out = rec
        if out is None or out.uid != uid:
            raise FormatError(f"{self._src.name}: index entry of {uid!r} does not lead to that record", None)
        return out

    # scanning --------------------------------------------------------------------------------
    def __iter__(self):
        s = self._src
        if s.seekable:
            s.seek(self.data_start)
        elif s.offset != self.data_start:
            raise ValueError("a non-seekable trace can be iterated once")
        asm = _Assembler(self)
        # On a regular file, chunk i+1 is decoded on a worker thread (numpy and zlib release the GIL)
        # while the records of chunk i are assembled and consumed. On a pipe every chunk is decoded
        # as soon as it arrives, so that a reader following a live writer is not one chunk behind.
        ahead = self.threads and s.seekable
        queue = []

        def drain():
            while queue:
                chunk, fut = queue.pop(0)
                yield from asm.feed(chunk, decoded=fut.result())

        while True:
            at = s.offset
            magic = s.read(4)
            if len(magic) < 4 or magic != F.CHUNK_MAGIC:
                yield from drain()
            if len(magic) == 0:
                self.complete = False
                if asm.pending is not None:
                    msg = (f"{s.name}: record {asm.pending.ordinal} ({asm.pending.uid!r}) is cut: "
                           f"its last piece is missing (no trailer: truncated or still being written)")
                else:
                    msg = f"{s.name}: no trailer: truncated or still being written"
                if self.allow_incomplete:
                    warnings.warn(msg)
                    return
                raise FormatError(msg, at, "truncated")
            if len(magic) < 4:
                self._end_incomplete(at, "a frame magic")
                return
            if magic == F.CHUNK_MAGIC:
                try:
                    chunk = self._read_chunk(at)
                except FormatError as e:
                    yield from drain()
                    if e.kind == "truncated" and self.allow_incomplete:
                        self.complete = False
                        warnings.warn(str(e))
                        return
                    raise
                if ahead:
                    chunk.prefetch()
                    queue.append((chunk, _decode_pool().submit(chunk.decode)))
                    if len(queue) > 1:
                        c, fut = queue.pop(0)
                        yield from asm.feed(c, decoded=fut.result())
                else:
                    yield from asm.feed(chunk)
            elif magic == F.INDEX_MAGIC:
                self._read_index_and_trailer(at)
                if asm.pending is not None:
                    raise FormatError(f"{s.name}: record {asm.pending.ordinal} has no LAST piece before the index",
                                      at, "corrupt")
                self.complete = True
                return
            else:
                raise FormatError(f"{s.name}: unknown frame magic {magic!r}", at, "corrupt")

    def _end_incomplete(self, at, what):
        self.complete = False
        msg = f"{self._src.name}: end of data inside {what} (no trailer: truncated or still being written)"
        if self.allow_incomplete:
            warnings.warn(msg)
            return
        raise FormatError(msg, at, "truncated")

    def _read_index_and_trailer(self, at):
        s = self._src
        h = s.exact(12, "the index frame header")
        _flags, body_len = struct.unpack("<IQ", h)
        if body_len > F.MAX_INDEX:
            raise FormatError(f"index body_len {body_len} exceeds 1 GiB", at, "limit")
        left = s.left()
        if left is not None and body_len + 4 > left:
            raise FormatError(f"{s.name}: index frame runs past the end of the file", at, "truncated")
        body = s.exact(body_len, "the index body")
        crc = struct.unpack("<I", s.exact(4, "the index CRC"))[0]
        got = F.crc32(b"RTIX" + h + body)
        if crc != got:
            raise FormatError(f"{s.name}: index CRC mismatch (stored {crc:08x}, computed {got:08x})", at, "checksum")
        t = s.exact(32, "the trailer")
        if t[24:] != F.END_MAGIC or struct.unpack_from("<I", t, 20)[0] != F.crc32(t[:20]):
            raise FormatError(f"{s.name}: trailer is damaged", at + 20 + body_len, "checksum")
        io_, il, _nch = struct.unpack_from("<QQI", t, 0)
        if io_ != at or il != 20 + body_len:
            raise FormatError(f"{s.name}: trailer names index at {io_} (+{il}), found at {at} (+{20 + body_len})",
                              at + 20 + body_len, "corrupt")
        if s.read(1):
            raise FormatError(f"{s.name}: data after the trailer", s.offset - 1, "corrupt")

    def _read_chunk(self, at):
        """Reads the chunk frame whose magic (at offset ``at``) was just consumed; returns decoded columns."""
        s = self._src
        name = s.name
        h = s.exact(20, "a chunk header")
        C, P, R, payload_len = struct.unpack("<IIIQ", h)
        if not 1 <= C <= F.MAX_COLUMNS:
            raise FormatError(f"{name}: chunk n_columns {C} outside 1..64", at + 4, "limit")
        if not 1 <= P <= F.MAX_PIECES:
            raise FormatError(f"{name}: chunk n_pieces {P} outside 1..{F.MAX_PIECES}", at + 8, "limit")
        if R > F.MAX_ROWS:
            raise FormatError(f"{name}: chunk n_rows {R} exceeds {F.MAX_ROWS}", at + 12, "limit")
        d = s.exact(16 * C, "a chunk directory")
        crc = struct.unpack("<I", s.exact(4, "a chunk header CRC"))[0]
        got = F.crc32(b"RTCK" + h + d)
        if crc != got:
            raise FormatError(f"{name}: chunk header CRC mismatch (stored {crc:08x}, computed {got:08x})",
                              at, "checksum")
        entries = [struct.unpack_from("<HBBIII", d, 16 * i) for i in range(C)]
        total = 0
        seen = set()
        for cid, codec, tr, raw_len, stored_len, _c in entries:
            cname = F.COLUMN_NAMES.get(cid, f"column {cid}")
            if cid in seen:
                raise FormatError(f"{name}: column {cname} appears twice in the chunk", at, "corrupt")
            seen.add(cid)
            if cid < 32 and cid not in F.COLUMN_NAMES:
                raise FormatError(f"{name}: reserved column id {cid} unknown to this reader", at, "corrupt")
            if codec not in (0, 1) or tr not in (0, 1, 2):
                raise FormatError(f"{name}: column {cname} codec {codec} / transform {tr} unknown", at, "corrupt")
            if raw_len > F.MAX_COLUMN or stored_len > F.MAX_COLUMN:
                raise FormatError(f"{name}: column {cname} raw_len {raw_len} / stored_len {stored_len} exceed 1 GiB",
                                  at, "limit")
            if codec == 0 and stored_len != raw_len:
                raise FormatError(f"{name}: raw column {cname} has stored_len {stored_len} != raw_len {raw_len}",
                                  at, "corrupt")
            if tr == 2 and (cid != F.ID_SLOTS or self.k > F.NIBBLE_MAX_TOP_K):
                raise FormatError(f"{name}: column {cname} has transform 2 (nibble-pack), which only ID_SLOTS may use, "
                                  f"with top_k <= {F.NIBBLE_MAX_TOP_K}", at, "corrupt")
            total += stored_len
        if total != payload_len:
            raise FormatError(f"{name}: chunk payload_len {payload_len} != sum of stored_len {total}", at + 16,
                              "corrupt")
        left = s.left()
        if left is not None and payload_len > left:
            raise FormatError(f"{name}: chunk payload ({payload_len} bytes) runs past the end of the file "
                              f"({left} left)", at, "truncated")
        for req in (F.PIECES, F.RECORDS, F.TOKENS, F.ID_SLOTS, F.ID_NEW):
            if req not in seen:
                raise FormatError(f"{name}: chunk lacks required column {F.COLUMN_NAMES[req]}", at, "corrupt")
        for cid, opt in ((F.LOGPROBS, self.has_logprobs), (F.WEIGHTS, self.wdt is not None),
                         (F.LOGITS, self.ldt is not None)):
            if opt != (cid in seen):
                raise FormatError(f"{name}: column {F.COLUMN_NAMES[cid]} is {'missing' if opt else 'present'} "
                                  f"but the header says {'present' if opt else 'absent'}", at, "corrupt")
        payload = memoryview(s.exact(payload_len, "a chunk payload"))   # columns are slices of it, not copies
        stored = {}
        p = 0
        for cid, codec, tr, raw_len, stored_len, ccrc in entries:
            b = payload[p:p + stored_len]
            p += stored_len
            if F.crc32(b) != ccrc:
                raise FormatError(f"{name}: CRC mismatch in column {F.COLUMN_NAMES.get(cid, cid)} of the chunk",
                                  at, "checksum")
            if cid >= 32:
                if cid not in self._warned_ext:
                    self._warned_ext.add(cid)
                    warnings.warn(f"{name}: chunk at {at}: skipping unknown extension column {cid}")
                continue
            stored[cid] = (codec, tr, raw_len, b)
        return _ChunkData(self, at, P, R, stored)


class _Buffers:
    """Arrays the native decoder decodes chunks into, reused: a chunk hands its arrays back once the
    assembler has copied its records out of them (a fresh array costs a page fault per 4 KiB when it
    is first written). Keeps at most two free buffers per dtype."""

    def __init__(self):
        self._free = {}
        self._lock = threading.Lock()   # the decoding thread takes, the reading thread gives back

    def take(self, shape, dtype) -> np.ndarray:
        """An uninitialised C-contiguous array of ``shape``: a view of a free buffer large enough, or new."""
        n = int(np.prod(shape))
        with self._lock:
            free = self._free.get(np.dtype(dtype), [])
            for i, buf in enumerate(free):
                if buf.size >= n:
                    return free.pop(i)[:n].reshape(shape)
        return np.empty(n, dtype).reshape(shape)

    def give(self, arrays):
        """Hands back arrays from take(); their buffers are free to reuse."""
        with self._lock:
            for a in arrays:
                free = self._free.setdefault(a.dtype, [])
                if len(free) < 2:
                    free.append(a.base)


class _ChunkData:
    def __init__(self, rd: Reader, at: int, P: int, R: int, stored: dict):
        self.rd, self.at, self.P, self.R, self.stored = rd, at, P, R, stored
        self.futures = None
        self.taken = []    # arrays from rd._buffers that the decoded chunk lives in

    def release(self):
        """Hands the decoded chunk's arrays back to the reader once its records were copied out."""
        self.rd._buffers.give(self.taken)
        self.taken = []

    def col(self, cid, expect_len, width, keep_shuffled=False):
        """The column's raw bytes (inflated, un-shuffled). With keep_shuffled, returns
        (bytes, transform) and leaves a byte-shuffled column shuffled."""
        codec, tr, raw_len, b = self.stored[cid]
        name = F.COLUMN_NAMES[cid]
        if expect_len is not None and raw_len != expect_len:
            raise FormatError(f"{self.rd._src.name}: column {name} raw_len {raw_len}, content implies {expect_len}",
                              self.at, "corrupt")
        if raw_len % max(width, 1):
            raise FormatError(f"column {name} raw_len {raw_len} is not a multiple of {width}", self.at, "corrupt")
        fut = self.futures.pop(cid, None) if self.futures else None
        if fut is not None:
            data = fut.result()
        else:
            data = F.inflate(b, raw_len, self.at, name) if codec == 1 else b
        if keep_shuffled:
            return data, tr
        if tr == 1:
            data = F.unshuffle(data, width)
        return data

    def prefetch(self):
        """Starts inflating the chunk's large deflated row columns (ID_SLOTS, ID_NEW, WEIGHTS, LOGITS) on
        the inflate pool (zlib releases the GIL), once; the reader calls it as soon as the chunk is read,
        so that they inflate while the previous chunk decodes. A column whose raw_len is more than the
        chunk's rows can hold (all present) is left to col(), which rejects it."""
        rd = self.rd
        if self.futures is not None or not rd.threads:
            return
        cells = rd.L * self.R * rd.k
        bounds = {F.ID_SLOTS: cells, F.ID_NEW: cells * rd.id_dtype.itemsize,
                  F.WEIGHTS: cells * (rd.wdt.itemsize if rd.wdt is not None else 0),
                  F.LOGITS: rd.L * self.R * rd.E * (rd.ldt.itemsize if rd.ldt is not None else 0)}
        pool = _pool()
        self.futures = {}
        for cid, bound in bounds.items():
            codec, _tr, raw_len, b = self.stored.get(cid, (0, 0, 0, b""))
            if codec == 1 and (1 << 16) <= raw_len <= bound:
                self.futures[cid] = pool.submit(F.inflate, b, raw_len, self.at, F.COLUMN_NAMES[cid])

    def _slot_codes(self, Q):
        """ID_SLOTS as (its bytes, whether nibble-packed), after checking a packed column's unused
        high nibble (§6.3)."""
        k, name = self.rd.k, self.rd._src.name
        if self.stored[F.ID_SLOTS][1] != 2:
            return self.col(F.ID_SLOTS, Q * k, 1), False
        data = self.col(F.ID_SLOTS, (Q * k + 1) // 2, 1)
        if F.stray_nibble(data, Q * k):
            raise FormatError(f"{name}: {_STRAY_NIBBLE}", self.at, "corrupt")
        return data, True

    def _ids_error(self, e: FormatError) -> FormatError:
        """An invalid id coding (a decode_ids error) as the chunk's error."""
        return FormatError(f"{self.rd._src.name}: chunk ids coding invalid: {str(e).split(': ', 1)[-1]}", self.at,
                           "corrupt")

    def _rows_numpy(self, piece_rows, present, Q):
        """The chunk's ids, weights and logits ([R, L, *] transposed views of layer-major arrays, or
        None for an absent column), decoded with numpy. ``present``: [L, R] bool or None (all)."""
        rd = self.rd
        L, k, E, R = rd.L, rd.k, rd.E, self.R
        data, packed = self._slot_codes(Q)
        slots = (F.nibble_unpack(data, Q * k) if packed else np.frombuffer(data, dtype=np.uint8)).reshape(Q, k)
        nnew = int(np.count_nonzero(slots == F.NEW_MARKER))
        w = rd.id_dtype.itemsize
        new = np.frombuffer(self.col(F.ID_NEW, nnew * w, w), dtype=rd.id_dtype)
        piece_of_row = np.repeat(np.arange(len(piece_rows), dtype=np.int64), piece_rows)
        valid, li, ri = F.prev_valid(np.ones((L, R), dtype=bool) if present is None else present, piece_of_row)
        try:
            vals = decode_ids_numpy(slots, new, valid, k, self.at)
        except FormatError as e:
            raise self._ids_error(e) from None
        if present is None:
            ids = vals.reshape(L, R, k).transpose(1, 0, 2)        # [R, L, k] view
        else:
            ids_lr = np.full((L, R, k), -1, dtype=np.int32)
            ids_lr[li, ri] = vals
            ids = ids_lr.transpose(1, 0, 2)
        weights = self._floats(F.WEIGHTS, rd.wdt, k, Q, present, li, ri) if rd.wdt is not None else None
        logits = self._floats(F.LOGITS, rd.ldt, E, Q, present, li, ri) if rd.ldt is not None else None
        return ids, weights, logits

    def _rows_native(self, piece_rows, present, Q):
        """_rows_numpy with rtrace._native: ids, weights and logits decoded straight into row-major
        [R, L, *] arrays (the assembler then copies each piece's rows as one block)."""
        rd = self.rd
        L, k, E, R = rd.L, rd.k, rd.E, self.R
        data, packed = self._slot_codes(Q)
        w = rd.id_dtype.itemsize
        new = self.col(F.ID_NEW, _native.count_new(data, packed, Q * k) * w, w)
        ids = self._take((R, L, k), np.int32)
        err = _native.decode_chunk_ids(data, packed, new, w, k, L, R, piece_rows, present, ids)
        if err is not None:
            raise self._ids_error(_native_error(err, k, len(new) // w, self.at))
        weights = self._floats_native(F.WEIGHTS, rd.wdt, k, Q, present) if rd.wdt is not None else None
        logits = self._floats_native(F.LOGITS, rd.ldt, E, Q, present) if rd.ldt is not None else None
        return ids, weights, logits

    def _take(self, shape, dtype) -> np.ndarray:
        """An array to decode into, from the reader's buffers; release() hands it back."""
        a = self.rd._buffers.take(shape, dtype)
        self.taken.append(a)
        return a

    def _floats_native(self, cid, dt, n, Q, present):
        """A float column as an [R, L, n] array of ``dt`` (one of the reader's reused buffers; zeros
        where missing), un-shuffled and scattered by rtrace._native in one pass."""
        L, R = self.rd.L, self.R
        sz = dt.itemsize
        data, tr = self.col(cid, Q * n * sz, sz, keep_shuffled=True)
        out = self._take((R, L, n), dt)
        _native.scatter_floats(data, sz, tr == 1, n, L, R, present, out)
        return out

    def _floats(self, cid, dt, n, Q, present, li, ri):
        """A float column as an [R, L, n] array of ``dt`` (a transposed view of the layer-major
        array, copied once into the records by the assembler)."""
        L, R = self.rd.L, self.R
        sz = dt.itemsize
        data, tr = self.col(cid, Q * n * sz, sz, keep_shuffled=True)
        v = F.unshuffle_array(data, dt) if tr == 1 else np.frombuffer(data, dtype=dt)
        if present is None:
            return v.reshape(L, R, n).transpose(1, 0, 2)
        a = np.zeros((L, R, n), dtype=dt)
        a[li, ri] = v.reshape(Q, n)
        return a.transpose(1, 0, 2)

    def decode(self):
        """Returns (pieces, records_entries, per-chunk arrays)."""
        rd, at = self.rd, self.at
        name = rd._src.name
        L, k, E = rd.L, rd.k, rd.E
        P, R = self.P, self.R
        pc = np.frombuffer(self.col(F.PIECES, P * 20, 1), dtype=np.dtype(
            [("record", "<u8"), ("flags", "<u4"), ("row_offset", "<u4"), ("n_rows", "<u4")]))
        if int(pc["n_rows"].sum(dtype=np.int64)) != R:
            raise FormatError(f"{name}: pieces hold {int(pc['n_rows'].sum())} rows, chunk says {R}", at, "corrupt")
        if (pc["flags"] & ~np.uint32(3)).any():
            raise FormatError(f"{name}: piece flags have unknown bits", at, "corrupt")
        nfirst = int((pc["flags"] & 1).sum())
        rb = bytes(self.col(F.RECORDS, None, 1))
        entries = []
        p = 0
        try:
            for _ in range(nfirst):
                (ul,) = struct.unpack_from("<I", rb, p); p += 4
                if not 1 <= ul <= F.MAX_STRING:
                    raise FormatError(f"{name}: uid_len {ul} outside 1..65535", at, "limit")
                uid = rb[p:p + ul].decode("utf-8"); p += ul
                (gl,) = struct.unpack_from("<I", rb, p); p += 4
                if gl == 0xFFFFFFFF:
                    group = None
                else:
                    if gl > F.MAX_STRING:
                        raise FormatError(f"{name}: group_len {gl} exceeds 65535", at, "limit")
                    group = rb[p:p + gl].decode("utf-8"); p += gl
                nt, pl, st, nr, nl, fl, rw, al = struct.unpack_from("<IIIIIBdI", rb, p); p += 33
                if al > F.MAX_ATTRS:
                    raise FormatError(f"{name}: attrs_len {al} exceeds 16 MiB", at, "limit")
                attrs = None
                if al:
                    if p + al > len(rb):
                        raise struct.error("attributes run past the column")
                    attrs = json.loads(rb[p:p + al].decode("utf-8")); p += al
                if nt > 0 and (pl > nt or st + nr > nt or nl > nt):
                    raise FormatError(f"{name}: record {uid!r} breaks prompt_len/start+n_rows/n_logprobs <= "
                                      f"n_tokens ({pl}, {st}+{nr}, {nl}, {nt})", at, "corrupt")
                if nl and not rd.has_logprobs:
                    raise FormatError(f"{name}: record {uid!r} has logprobs but the column is absent", at, "corrupt")
                entries.append(dict(uid=uid, group=group, n_tokens=nt, prompt_len=pl, start=st, n_rows=nr,
                                    n_logprobs=nl, reward=rw if fl & 1 else None, attrs=attrs))
        except (struct.error, UnicodeDecodeError, ValueError) as e:
            if isinstance(e, FormatError):
                raise
            raise FormatError(f"{name}: RECORDS column is malformed ({e})", at, "corrupt") from None
        if p != len(rb):
            raise FormatError(f"{name}: RECORDS column has {len(rb) - p} trailing bytes", at, "corrupt")
        nbits = L * R
        if F.MISSING in self.stored:
            mb = np.frombuffer(self.col(F.MISSING, (nbits + 7) // 8, 1), dtype=np.uint8)
            bits = np.unpackbits(mb, bitorder="little")
            if bits[nbits:].any():
                raise FormatError(f"{name}: MISSING has unused high bits set", at, "corrupt")
            missing = bits[:nbits].reshape(L, R).astype(bool)
            present = ~missing
            Q = int(np.count_nonzero(present))
            if Q == L * R:
                present = None   # a MISSING column with no bit set
        else:
            present = None   # every (layer, row) present: no scatter needed
            Q = L * R
        self.prefetch()
        ntok = sum(e["n_tokens"] for e in entries)
        tokens = np.frombuffer(self.col(F.TOKENS, 4 * ntok, 4), dtype="<i4")
        logprobs = None
        if rd.has_logprobs:
            logprobs = np.frombuffer(self.col(F.LOGPROBS, 4 * sum(e["n_logprobs"] for e in entries), 4), dtype="<f4")
        decode_rows = self._rows_native if _native is not None else self._rows_numpy
        ids, weights, logits = decode_rows(np.ascontiguousarray(pc["n_rows"], dtype=np.int64), present, Q)
        return pc, entries, tokens, logprobs, ids, weights, logits


def _decode_pool():
    """One thread that decodes the next chunk while the caller consumes the current one. It waits
    on inflate jobs of _pool(), which never wait on anything: no deadlock."""
    return F.thread_pool("rtrace-decode", 1)


def _pool():
    return F.thread_pool("rtrace-inflate")


class _Assembler:
    """Joins pieces across chunks into records, checking the ordering rules of §5.2."""

    def __init__(self, rd: Reader):
        self.rd = rd
        self.pending: Optional[Record] = None
        self.filled = 0
        self.next_ordinal = 0

    def feed(self, chunk: _ChunkData, only: Optional[int] = None, seq_check: bool = True, decoded=None):
        rd = self.rd
        name = rd._src.name
        at = chunk.at
        pc, entries, tokens, logprobs, ids, weights, logits = decoded if decoded is not None else chunk.decode()
        ei = tp = lp = r0 = 0
        out = []
        for i in range(len(pc)):
            ordinal, flags, ro, n = int(pc["record"][i]), int(pc["flags"][i]), int(pc["row_offset"][i]), \
                int(pc["n_rows"][i])
            first, last = bool(flags & 1), bool(flags & 2)
            rows = slice(r0, r0 + n)
            r0 += n
            if first:
                e = entries[ei]; ei += 1
                toks = tokens[tp:tp + e["n_tokens"]]; tp += e["n_tokens"]
                lps = None
                if logprobs is not None:
                    lps = logprobs[lp:lp + e["n_logprobs"]]; lp += e["n_logprobs"]
                if self.pending is not None:
                    raise FormatError(f"{name}: record {self.pending.ordinal} ends without a LAST piece",
                                      at, "corrupt")
                if ro != 0:
                    raise FormatError(f"{name}: FIRST piece of record {ordinal} has row_offset {ro}", at, "corrupt")
                if seq_check and ordinal != self.next_ordinal:
                    raise FormatError(f"{name}: record ordinal {ordinal} where {self.next_ordinal} was expected",
                                      at, "corrupt")
                if i > 0 and not (int(pc["flags"][i - 1]) & 2):
                    raise FormatError(f"{name}: piece {i - 1} lacks LAST but is not the chunk's last", at, "corrupt")
                self.next_ordinal = ordinal + 1
                NR = e["n_rows"]
                if n > NR:
                    raise FormatError(f"{name}: piece of record {ordinal} holds {n} of its {NR} rows", at, "corrupt")
                want = only is None or only == ordinal
                rec = Record(uid=e["uid"], group=e["group"], tokens=toks.astype(np.int32), prompt_len=e["prompt_len"],
                             start=e["start"], topk_ids=np.empty((NR, rd.L, rd.k), dtype=np.int32) if want else None,
                             topk_weights=(np.empty((NR, rd.L, rd.k), dtype=rd.wdt) if want
                                           and weights is not None else None),
                             router_logits=(np.empty((NR, rd.L, rd.E), dtype=rd.ldt) if want
                                            and logits is not None else None),
                             logprobs=None if lps is None else lps.astype(np.float32),
                             reward=e["reward"], attrs=e["attrs"], ordinal=ordinal)
                rec._want = want
                self.pending = rec
                self.filled = 0
            else:
                if i != 0:
                    raise FormatError(f"{name}: piece {i} lacks FIRST but is not the chunk's first", at, "corrupt")
                if self.pending is None:
                    if not seq_check:
                        continue  # get(): a continuation of a record we do not want
                    raise FormatError(f"{name}: piece of record {ordinal} continues nothing", at, "corrupt")
                if ordinal != self.pending.ordinal or ro != self.filled:
                    raise FormatError(f"{name}: piece (record {ordinal}, row_offset {ro}) does not continue record "
                                      f"{self.pending.ordinal} at row {self.filled}", at, "corrupt")
            rec = self.pending
            if self.filled + n > rec.topk_ids.shape[0] if rec._want else self.filled + n > 1 << 62:
                raise FormatError(f"{name}: record {ordinal} pieces exceed its n_rows", at, "corrupt")
            if rec._want:
                rec.topk_ids[self.filled:self.filled + n] = ids[rows]
                if weights is not None:
                    rec.topk_weights[self.filled:self.filled + n] = weights[rows]
                if logits is not None:
                    rec.router_logits[self.filled:self.filled + n] = logits[rows]
            self.filled += n
            if last:
                if rec._want and self.filled != rec.topk_ids.shape[0]:
                    raise FormatError(f"{name}: record {ordinal} ends after {self.filled} of its "
                                      f"{rec.topk_ids.shape[0]} rows", at, "corrupt")
                self.pending = None
                if rec._want:
                    del rec._want
                    out.append(rec)
                if only is not None and only == ordinal:
                    break
        chunk.release()    # every row was copied into its record
        return out
