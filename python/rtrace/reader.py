"""Reading .rtrace files (spec/format.md)."""
from __future__ import annotations

import bisect
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
    # The header of the trace the record was read from (its ``model`` gives the layer_map that names
    # the decoder layer of each column); None for a record built by hand.
    header: Optional[dict] = field(default=None, repr=False, compare=False)

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

    Three modes (spec §8). By default a reader is strict: the first damage raises FormatError, after the
    records of the chunks before it. ``allow_incomplete=True`` also reads a file without index/trailer (a
    writer still running or killed) up to where its data ends, without raising there; any other damage
    still raises. ``salvage=True`` yields every record whose chunks are intact, skipping damaged chunks
    (the forward search of spec §8 on a regular file) and never raising for damage in the data:
    ``reader.damage`` then lists what was wrong, ``reader.lost_records`` counts the records lost, as
    ``rtrace check --salvage`` does. ``reader.complete`` tells whether a valid index and trailer were found.
    ``threads=False`` decodes on the calling thread only (by default, on a regular file, the next
    chunk is decoded on a worker thread and a chunk's columns are inflated concurrently)."""

    def __init__(self, path_or_file, allow_incomplete: bool = False, threads: bool = True, salvage: bool = False):
        self._src = _Source(path_or_file)
        self.threads = bool(threads)
        self.allow_incomplete = allow_incomplete
        self.salvage = bool(salvage)
        self.complete: Optional[bool] = None
        self.incomplete_reason: Optional[str] = None
        self.damage: list = []          # FormatErrors a salvaging read found
        self.lost_records = 0           # records a salvaging read could not recover
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
        if len(first) < 8 or first[:8] != F.MAGIC:
            if not first:
                raise FormatError(f"{s.name}: empty input: expected an rtrace header (20 bytes or more)", 0,
                                  "truncated")
            if len(first) < 8 and F.MAGIC.startswith(first):
                raise FormatError(f"{s.name}: input ends after {len(first)} bytes, inside the 8-byte magic",
                                  len(first), "truncated")
            raise FormatError(f"{s.name}: not an rtrace file: starts like {_describe(first)}", 0, "notATrace")
        if len(first) < 16:
            raise FormatError(f"{s.name}: header ends after {len(first)} bytes, needs 16", len(first), "truncated")
        major, minor, n = struct.unpack_from("<HHI", first, 8)
        if major != F.MAJOR:
            raise FormatError(f"{s.name}: format version {major}.{minor}, this reader reads version {F.MAJOR}.x",
                              8, "unsupportedVersion")
        if not 2 <= n <= F.MAX_HEADER_JSON:
            raise FormatError(f"{s.name}: header json_len {n} outside 2..{F.MAX_HEADER_JSON}", 12, "limit")
        js = s.exact(n, "the header JSON")
        crc = struct.unpack("<I", s.exact(4, "the header CRC"))[0]
        got = F.crc32(first + js)
        if crc != got:
            raise FormatError(f"{s.name}: header CRC mismatch (stored {crc:08x}, computed {got:08x})", 16 + n,
                              "checksum")
        h = F.json_object(js, f"{s.name}: header JSON", 16, "badHeader")
        self.notices = F.validate_header(h)
        for msg in self.notices:
            warnings.warn(f"{s.name}: {msg}")
        if h["engine"]["role"] not in F.ROLES:
            h["engine"]["role"] = "other"     # spec §3.2: an unknown role reads as "other"
        self.version = (major, minor)
        self.header = h
        m, c = h["model"], h["columns"]
        self.L, self.k, self.E = len(m["layer_map"]), m["top_k"], m["num_experts"]
        self.id_dtype = np.dtype("u1") if c["topk_ids"] == "u8" else np.dtype("<u2")
        self.wdt = F.FLOAT_DTYPES.get(c.get("topk_weights"))
        self.ldt = F.FLOAT_DTYPES.get(c.get("router_logits"))
        self.has_logprobs = "logprobs" in c
        self.row_bytes = F.row_bytes(self.L, self.k, self.E, self.wdt.itemsize if self.wdt is not None else 0,
                                     self.ldt.itemsize if self.ldt is not None else 0)
        self.data_start = 20 + n

    # index -----------------------------------------------------------------------------------
    def _try_index(self) -> bool:
        """Whether the file is complete with a usable index (spec §7); the index is parsed and checked to
        tile the data. Otherwise ``incomplete_reason`` says why and the file is read by scan."""
        s = self._src
        size = s.size - s.base
        self.incomplete_reason = "no trailer: truncated or still being written"
        if size < self.data_start + 32:
            return False
        s.seek(size - 32)
        t = s.read(32)
        if t[24:] != F.END_MAGIC or struct.unpack_from("<I", t, 20)[0] != F.crc32(t[:20]):
            return False
        io_, il, nch = struct.unpack_from("<QQI", t, 0)
        if io_ + il + 32 != size or il < 20 or io_ < self.data_start or il - 20 > F.MAX_INDEX:
            self.incomplete_reason = f"trailer points outside the file (index at {io_}, {il} bytes)"
            return False
        s.seek(io_)
        fr = s.read(il)
        try:
            ix = _parse_index_frame(fr, io_, s.name, records=False)
            expect = self.data_start
            for off, flen, _fr, _p, _r in ix["chunks"]:
                if off != expect or flen < 28:
                    raise FormatError(f"index lists a chunk at {off}, frames run to {expect}", io_)
                expect += flen
            if expect != io_ or len(ix["chunks"]) != nch:
                raise FormatError(f"index chunks end at {expect}, the index starts at {io_}", io_)
        except FormatError as e:
            self.incomplete_reason = f"index unusable ({e}); reading by scan"
            return False
        self.incomplete_reason = None
        self._index = ix
        return True

    def _parse_index(self):
        """The index, its record table parsed on first use; an index whose table does not parse is unusable
        (spec §7): the file is then read by scan, as an incomplete one."""
        if self._index is not None and "records" not in self._index:
            try:
                _parse_index_records(self._index)
            except FormatError as e:
                self._index = None
                self.complete = False
                self.incomplete_reason = f"index unusable ({e}); reading by scan"
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
        """Looks a record up through the index (complete, seekable files); scans otherwise. What the index
        says is checked against the chunks it points at (spec §7: the chunks win)."""
        ix = self._parse_index()
        if ix is None:
            for r in self:
                if r.uid == uid:
                    return r
            raise KeyError(uid)
        if uid not in ix["uids"]:
            raise KeyError(uid)
        name = self._src.name
        ordinal = ix["uids"][uid]
        fc, cc, rows, toks, _uid = ix["records"][ordinal]
        asm = _Assembler(self)
        out = None
        for ci in range(fc, fc + cc):
            chunk = self._indexed_chunk(ci)
            decoded = self._checked_decode(ci, chunk, chunk.decode())
            for rec in asm.feed(chunk, only=ordinal, seq_check=False, decoded=decoded):
                out = rec
        if out is None or out.uid != uid or out.n_rows != rows or len(out.tokens) != toks:
            raise FormatError(f"{name}: index record {ordinal} ({uid!r}) disagrees with the chunks it points at",
                              None, "corrupt")
        return out

    def _indexed_chunk(self, ci: int) -> "_ChunkData":
        """Chunk ``ci`` of the index, read (not yet decoded)."""
        name = self._src.name
        off = self._index["chunks"][ci][0]
        self._src.seek(off)
        magic = self._src.read(4)
        if magic != F.CHUNK_MAGIC:
            raise FormatError(f"{name}: index chunk {ci} points at {magic!r}, not a chunk", off, "corrupt")
        try:
            return self._read_chunk(off)
        except FormatError as e:
            if e.kind != "truncated":
                raise
            raise FormatError(f"{name}: index chunk {ci} points at a chunk that is not there: {e}", off,
                              "corrupt") from None

    def _checked_decode(self, ci: int, chunk: "_ChunkData", decoded):
        """``decoded`` (chunk ``ci``'s decode()), after checking that the index entry agrees with the chunk
        (spec §7: the chunks win)."""
        off, flen, first, P, R = self._index["chunks"][ci]
        if chunk.frame_len != flen or int(decoded[0]["record"][0]) != first or chunk.P != P or chunk.R != R:
            raise FormatError(f"{self._src.name}: index chunk {ci} disagrees with the chunk at offset {off} "
                              f"(length, first record, pieces or rows)", off, "corrupt")
        return decoded

    def read_chunks(self, first: int, end: int):
        """Yields, in order, the records whose FIRST piece lies in chunks ``first`` … ``end - 1`` of the
        index; a record that continues past chunk ``end - 1`` is read to its end from the chunks after.

        Ranges that tile ``0 … n_chunks`` (``len(reader.index["chunks"])``) yield every record exactly
        once, so several processes or machines can each read one range of a large file. Needs a complete,
        seekable file (the index); raises ``IndexError`` for a range outside ``0 … n_chunks`` and
        ``FormatError`` (naming the file) for damage, as iteration does."""
        ix = self._parse_index()
        if ix is None:
            raise TypeError("read_chunks() needs a complete, seekable trace (it reads the index)")
        first, end = int(first), int(end)
        chunks, records = ix["chunks"], ix["records"]
        if not 0 <= first <= end <= len(chunks):
            raise IndexError(f"{self._src.name}: chunk range {first}:{end} outside 0:{len(chunks)}")
        firsts = ix.get("first_chunks")
        if firsts is None:
            firsts = ix["first_chunks"] = [r[0] for r in records]
        o0, o1 = bisect.bisect_left(firsts, first), bisect.bisect_left(firsts, end)
        if o0 == o1:
            return
        last = max(records[o][0] + records[o][1] for o in range(o0, o1))
        if last > len(chunks):
            raise FormatError(f"{self._src.name}: index entry of record {o1 - 1} names chunk {last - 1} of "
                              f"{len(chunks)}", None)
        begin = records[o0][0]   # the chunks before it only continue records before o0
        name = self._src.name
        asm = _Assembler(self)
        asm.next_ordinal = o0
        keep = range(o0, o1)
        queue = []   # (chunk index, chunk, decoded future or None), decoded one chunk ahead
        done = 0
        for c in range(begin, last):
            chunk = self._indexed_chunk(c)
            if self.threads:
                chunk.prefetch()
                queue.append((c, chunk, _decode_pool().submit(chunk.decode)))
            else:
                queue.append((c, chunk, None))
            while len(queue) > (1 if self.threads and c + 1 < last else 0):
                ci, ch, fut = queue.pop(0)
                decoded = self._checked_decode(ci, ch, ch.decode() if fut is None else fut.result())
                for rec in asm.feed(ch, keep=keep, lead=ci == begin, decoded=decoded):
                    _fc, _cc, rows, toks, uid = records[rec.ordinal]
                    if rec.uid != uid or rec.n_rows != rows or len(rec.tokens) != toks:
                        raise FormatError(f"{name}: index record {rec.ordinal} ({uid!r}) disagrees with the chunks "
                                          f"it points at", ch.at, "corrupt")
                    done += 1
                    yield rec
        if done != o1 - o0:
            raise FormatError(f"{name}: chunks {begin}:{last} hold {done} of the {o1 - o0} records the index "
                              f"places in chunks {first}:{end}", None, "corrupt")

    # scanning --------------------------------------------------------------------------------
    def __iter__(self):
        s = self._src
        if s.seekable:
            s.seek(self.data_start)
        elif s.offset != self.data_start:
            raise ValueError("a non-seekable trace can be iterated once")
        if self.salvage:
            yield from self._salvage()
            return
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
                    msg = f"{s.name}: input ends after {at} bytes without index and trailer: truncated or still being written"
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
                try:
                    ix = self._read_index_and_trailer(at)
                except FormatError as e:
                    if e.kind == "truncated" and self.allow_incomplete:
                        self.complete = False
                        warnings.warn(str(e))
                        return
                    raise
                why = _index_difference(asm.rebuilt, ix)
                if why:
                    raise FormatError(f"{s.name}: index disagrees with the chunks: {why}", at, "corrupt")
                if asm.pending is not None:
                    raise FormatError(f"{s.name}: record {asm.pending.ordinal} has no LAST piece before the index",
                                      at, "corrupt")
                self.complete = True
                return
            else:
                raise FormatError(f"{s.name}: expected a frame (RTCK or RTIX), found {magic.hex(' ')}", at, "corrupt")

    def _end_incomplete(self, at, what):
        self.complete = False
        msg = f"{self._src.name}: end of data inside {what} (no trailer: truncated or still being written)"
        if self.allow_incomplete:
            warnings.warn(msg)
            return
        raise FormatError(msg, at, "truncated")

    def _read_index_and_trailer(self, at):
        """Reads the index frame whose magic (at ``at``) was just consumed and the trailer after it; returns
        the parsed index. Anything after the trailer is an error (spec §7)."""
        s = self._src
        h = s.exact(12, "the index frame header")
        body_len = _index_body_len(b"RTIX" + h, at)
        left = s.left()
        if left is not None and body_len + 4 > left:
            raise FormatError(f"{s.name}: index frame runs past the end of the file", at, "truncated")
        fr = b"RTIX" + h + s.exact(body_len + 4, "the index")
        ix = _parse_index_frame(fr, at, s.name)
        t_at = at + len(fr)
        t = s.read(32)
        if len(t) < 32:
            raise FormatError(f"{s.name}: index is not followed by a trailer", t_at + len(t), "truncated")
        if t[24:] != F.END_MAGIC:
            raise FormatError(f"{s.name}: trailer end magic is {t[24:]!r}, expected {F.END_MAGIC!r}", t_at + 24,
                              "corrupt")
        if struct.unpack_from("<I", t, 20)[0] != F.crc32(t[:20]):
            raise FormatError(f"{s.name}: trailer CRC mismatch", t_at + 20, "checksum")
        io_, il, nch = struct.unpack_from("<QQI", t, 0)
        if io_ != at or il != len(fr) or nch != len(ix["chunks"]):
            raise FormatError(f"{s.name}: trailer names an index at {io_} of {il} bytes and {nch} chunks; the index "
                              f"is at {at}, {len(fr)} bytes, {len(ix['chunks'])} chunks", t_at, "corrupt")
        if s.read(1):
            extra = "1 or more" if s.left() is None else str(s.left() + 1)
            raise FormatError(f"{s.name}: {extra} bytes follow the trailer", t_at + 32, "corrupt")
        return ix

    # salvage ---------------------------------------------------------------------------------
    def _salvage(self):
        """Salvage mode (spec §8): yields every record whose pieces are all in chunks that pass every check;
        records what was wrong in ``damage`` and counts ``lost_records``."""
        s = self._src
        size = None if s.size is None else s.size - s.base
        asm = _Assembler(self, salvage=True)
        pos = self.data_start
        searched = bad_chunks = 0

        def issue(msg, at, kind="corrupt"):
            self._report(FormatError(f"{s.name}: {msg}", at, kind))

        def lost_chunk(e):
            """The chunk at pos is damaged (e): lost whole."""
            nonlocal bad_chunks
            self._report(e)
            bad_chunks += 1
            asm.damage(pos)

        def search(frm):
            nonlocal searched
            searched += 1
            if size is None:
                issue("a pipe cannot be searched: the rest of the input was not examined", frm)
                return None
            return self._forward_search(frm, size)

        self.complete = False
        while True:
            if size is not None:
                if pos >= size:
                    issue(f"file ends after {pos} bytes without index and trailer: truncated or still being written",
                          pos, "truncated")
                    break
                s.seek(pos)
            magic = s.read(4)
            if not magic:
                issue(f"input ends after {pos} bytes without index and trailer: truncated or still being written",
                      pos, "truncated")
                break
            if magic == F.INDEX_MAGIC:
                try:
                    ix = self._read_index_and_trailer(pos)
                except FormatError as e:
                    self._report(e)
                    break
                why = _index_difference(asm.rebuilt, ix) if bad_chunks == 0 and not searched else None
                if why:
                    issue(f"index disagrees with the chunks: {why}", pos)
                self.complete = True
                break
            hdr = None
            if magic != F.CHUNK_MAGIC:
                issue(f"expected a frame (RTCK or RTIX), found {magic.hex(' ')}", pos)
                asm.damage(pos)
            else:
                try:
                    hdr = self._read_chunk_header(pos)
                except FormatError as e:
                    lost_chunk(e)
                    if e.kind == "truncated":
                        break
            if hdr is None:           # no sound header here: search forward (spec §8)
                nxt = search(pos + 1)
                if nxt is None:
                    break
                pos = nxt
                continue
            try:
                chunk = self._read_chunk_body(pos, hdr)
                out = asm.feed(chunk)
            except FormatError as e:
                lost_chunk(e)
                if e.kind == "truncated" and (size is None or pos + hdr[-1] > size):
                    break
                pos += hdr[-1]
                continue
            yield from out
            pos += hdr[-1]
        asm.finish_salvage()
        self.lost_records = asm.lost

    def _report(self, e: FormatError):
        """Salvage: records damage in ``damage`` and says it as a warning."""
        self.damage.append(e)
        warnings.warn(str(e))

    def _forward_search(self, frm: int, size: int) -> Optional[int]:
        """The next offset from ``frm`` holding a chunk whose header passes steps 1-5 of spec §8, or an index
        frame whose header checks and CRC hold; None when there is none."""
        s = self._src
        block = 1 << 20
        at = frm
        while at + 20 <= size:
            s.seek(at)
            buf = s.read(min(block + 3, size - at))
            i = 0
            while True:
                hits = [j for j in (buf.find(F.CHUNK_MAGIC, i, block + 3), buf.find(F.INDEX_MAGIC, i, block + 3))
                        if j >= 0]
                if not hits:
                    break
                j = min(hits)
                if self._frame_starts_at(at + j, size):
                    return at + j
                i = j + 1
            at += block
        return None

    def _frame_starts_at(self, at: int, size: int) -> bool:
        s = self._src
        s.seek(at)
        magic = s.read(4)
        try:
            if magic == F.CHUNK_MAGIC:
                self._read_chunk_header(at)
                return True
            h = s.read(12)
            if len(h) < 12:
                return False
            n = _index_body_len(b"RTIX" + h, at)
            if at + 20 + n > size:
                return False
            rest = s.read(n + 4)
            return struct.unpack_from("<I", rest, n)[0] == F.crc32(b"RTIX" + h + rest[:n])
        except (FormatError, struct.error):
            return False

    # chunks ----------------------------------------------------------------------------------
    def _read_chunk(self, at):
        """Reads the chunk frame whose magic (at offset ``at``) was just consumed, through step 8 of the order
        of checks of spec §8; the columns are decoded (step 9) by _ChunkData.decode."""
        return self._read_chunk_body(at, self._read_chunk_header(at))

    def _read_chunk_header(self, at):
        """Steps 1-5 of spec §8 on the chunk header whose magic was just consumed: n_columns, the header CRC,
        n_pieces and n_rows, each directory entry, payload_len. Returns (C, P, R, payload_len, entries, frame
        length)."""
        s = self._src
        name = s.name
        h = s.exact(20, "a chunk header")
        C, P, R, payload_len = struct.unpack("<IIIQ", h)
        if not 1 <= C <= F.MAX_COLUMNS:
            raise FormatError(f"{name}: chunk n_columns {C} outside 1..64", at + 4, "limit")
        d = s.exact(16 * C, "a chunk directory")
        crc = struct.unpack("<I", s.exact(4, "a chunk header CRC"))[0]
        got = F.crc32(b"RTCK" + h + d)
        if crc != got:
            raise FormatError(f"{name}: chunk header CRC mismatch (stored {crc:08x}, computed {got:08x})",
                              at + 24 + 16 * C, "checksum")
        if not 1 <= P <= F.MAX_PIECES:
            raise FormatError(f"{name}: chunk n_pieces {P} outside 1..{F.MAX_PIECES}", at + 8, "limit")
        if R > F.MAX_ROWS:
            raise FormatError(f"{name}: chunk n_rows {R} exceeds {F.MAX_ROWS}", at + 12, "limit")
        entries = [struct.unpack_from("<HBBIII", d, 16 * i) for i in range(C)]
        total = 0
        seen = set()
        for i, (cid, codec, tr, raw_len, stored_len, _c) in enumerate(entries):
            e_at = at + 24 + 16 * i
            cname = F.COLUMN_NAMES.get(cid, f"#{cid}")
            if cid in seen:
                raise FormatError(f"{name}: column id {cid} appears twice in the chunk", e_at, "corrupt")
            seen.add(cid)
            if cid < 32 and cid not in F.COLUMN_NAMES:
                raise FormatError(f"{name}: column id {cid} is reserved and unknown to this reader", e_at, "corrupt")
            if codec not in (0, 1):
                raise FormatError(f"{name}: column {cname} has unknown codec {codec}", e_at + 2, "corrupt")
            if tr not in (0, 1, 2):
                raise FormatError(f"{name}: column {cname} has unknown transform {tr}", e_at + 3, "corrupt")
            if raw_len > F.MAX_COLUMN or stored_len > F.MAX_COLUMN:
                raise FormatError(f"{name}: column {cname} raw_len {raw_len} / stored_len {stored_len} exceed 1 GiB",
                                  e_at + 4, "limit")
            if codec == 1 and raw_len > F.MAX_DEFLATE_RATIO * stored_len:
                raise FormatError(f"{name}: column {cname} declares {raw_len} raw bytes from {stored_len} deflated "
                                  f"bytes; deflate cannot expand more than 1032x", e_at + 4, "limit")
            if codec == 0 and stored_len != raw_len:
                raise FormatError(f"{name}: raw column {cname} has stored_len {stored_len} != raw_len {raw_len}",
                                  e_at + 4, "corrupt")
            total += stored_len
        if total != payload_len:
            raise FormatError(f"{name}: chunk payload_len {payload_len} != sum of stored_len {total}", at + 16,
                              "corrupt")
        return C, P, R, payload_len, entries, 28 + 16 * C + payload_len

    def _read_chunk_body(self, at, hdr):
        """Steps 6-8 of spec §8 after a sound chunk header: the frame within the data, the chunk against the
        file header, every column's CRC."""
        s = self._src
        name = s.name
        C, P, R, payload_len, entries, frame_len = hdr
        left = s.left()
        if left is not None and payload_len > left:
            raise FormatError(f"{name}: chunk payload ({payload_len} bytes) runs past the end of the file "
                              f"({left} left)", at, "truncated")
        payload = s.exact(payload_len, "a chunk payload")
        if R > F.MAX_CHUNK_DECODED // max(1, self.row_bytes):
            raise FormatError(f"{name}: chunk has {R} rows of {self.row_bytes} decoded bytes each, over the 1 GiB "
                              f"limit (spec §8)", at + 12, "limit")
        offs = []
        p = at + 28 + 16 * C
        for cid, codec, tr, raw_len, stored_len, _c in entries:
            offs.append(p)
            p += stored_len
            if tr == 2 and cid in F.COLUMN_NAMES and (cid != F.ID_SLOTS or self.k > F.NIBBLE_MAX_TOP_K):
                raise FormatError(f"{name}: column {F.COLUMN_NAMES[cid]} has transform 2 (nibble-pack), which only "
                                  f"ID_SLOTS may use, with top_k <= {F.NIBBLE_MAX_TOP_K}", offs[-1], "corrupt")
        seen = {e[0] for e in entries}
        for cid, wanted in ((F.PIECES, True), (F.RECORDS, True), (F.TOKENS, True), (F.LOGPROBS, self.has_logprobs),
                            (F.ID_SLOTS, True), (F.ID_NEW, True), (F.WEIGHTS, self.wdt is not None),
                            (F.LOGITS, self.ldt is not None)):
            if wanted != (cid in seen):
                if wanted:
                    raise FormatError(f"{name}: chunk lacks the required column {F.COLUMN_NAMES[cid]}", at, "corrupt")
                raise FormatError(f"{name}: chunk has a {F.COLUMN_NAMES[cid]} column, which the header does not "
                                  f"declare", at, "corrupt")
        payload = memoryview(payload)   # columns are slices of it, not copies
        stored = {}
        p = 0
        for (cid, codec, tr, raw_len, stored_len, ccrc), off in zip(entries, offs):
            b = payload[p:p + stored_len]
            p += stored_len
            if F.crc32(b) != ccrc:
                raise FormatError(f"{name}: column {F.COLUMN_NAMES.get(cid, f'#{cid}')} CRC mismatch", off,
                                  "checksum")
            if cid >= 32:
                if cid not in self._warned_ext:
                    self._warned_ext.add(cid)
                    warnings.warn(f"{name}: chunk at offset {at}: skipped unknown extension column #{cid}")
                continue
            stored[cid] = (codec, tr, raw_len, b)
        return _ChunkData(self, at, P, R, stored, frame_len)


def _index_body_len(head: bytes, at: int) -> int:
    """The body length of an index frame from its first 16 bytes (magic, flags 0, body_len <= 1 GiB)."""
    if head[:4] != F.INDEX_MAGIC:
        raise FormatError("expected index magic RTIX", at, "corrupt")
    flags, body_len = struct.unpack_from("<IQ", head, 4)
    if flags:
        raise FormatError(f"index flags are {flags:#010x}, expected 0", at + 4, "corrupt")
    if body_len > F.MAX_INDEX:
        raise FormatError(f"index body_len {body_len} exceeds 1 GiB", at + 8, "limit")
    return body_len


def _parse_index_frame(fr: bytes, at: int, name: str, records: bool = True) -> dict:
    """Parses and checks a whole index frame (spec §7): header, CRC, then the body exactly. With
    ``records=False`` the record table is only located (its entries are parsed by _parse_index_records,
    when the index is first used: a few microseconds per record)."""
    n = _index_body_len(fr[:16], at)
    if len(fr) != 20 + n:
        raise FormatError(f"{name}: index frame needs {20 + n} bytes, has {len(fr)}", at, "truncated")
    stored, got = struct.unpack_from("<I", fr, 16 + n)[0], F.crc32(fr[:16 + n])
    if stored != got:
        raise FormatError(f"{name}: index CRC mismatch (stored {stored:08x}, computed {got:08x})", at + 16 + n,
                          "checksum")
    b = fr[16:16 + n]
    if len(b) < 8:
        raise _index_bad(name, at, "body is malformed (no n_chunks)")
    (nc,) = struct.unpack_from("<Q", b, 0)
    if nc > (len(b) - 8) // 32:
        raise _index_bad(name, at, f"n_chunks {nc} does not fit its body")
    table = np.frombuffer(b, dtype=np.dtype([("offset", "<u8"), ("frame_len", "<u8"), ("first", "<u8"),
                                             ("P", "<u4"), ("R", "<u4")]), count=nc, offset=8)
    if nc and (max(int(table["offset"].max()), int(table["frame_len"].max()), int(table["first"].max())) >= 1 << 62):
        raise _index_bad(name, at, "chunk entry out of range")
    ix = {"chunks": [tuple(c) for c in table.tolist()], "body": b, "at": at, "name": name,
          "records_at": 8 + 32 * nc}
    if records:
        _parse_index_records(ix)
    return ix


def _index_bad(name, at, msg, kind="corrupt"):
    return FormatError(f"{name}: index: {msg}", at + 16, kind)


def _parse_index_records(ix: dict) -> dict:
    """Parses the record table and totals of an index from _parse_index_frame (in place), exactly."""
    if "records" in ix:
        return ix
    b, at, name, nc = ix["body"], ix["at"], ix["name"], len(ix["chunks"])
    p = ix["records_at"]

    def bad(msg, kind="corrupt"):
        return _index_bad(name, at, msg, kind)
    try:
        (nr,) = struct.unpack_from("<Q", b, p); p += 8
        if nr > (len(b) - p) // 20:
            raise bad(f"n_records {nr} does not fit its body")
        records = []
        uids = {}
        unpack = struct.Struct("<IIIII").unpack_from
        for i in range(nr):
            fc, cc, rows, toks, ul = unpack(b, p); p += 20
            if ul > F.MAX_STRING:
                raise bad(f"uid length {ul} exceeds 65535", "limit")
            if p + ul > len(b):
                raise bad(f"uid needs {ul} bytes, {len(b) - p} left")
            uid = b[p:p + ul].decode("utf-8"); p += ul
            if not uid:
                raise bad(f"record {i} has an empty uid")
            if cc < 1 or fc >= nc or fc + cc > nc:
                raise bad(f"record {uid} names chunks {fc}..{fc + cc - 1} of {nc}")
            records.append((fc, cc, rows, toks, uid))
            uids.setdefault(uid, i)
        total_rows, total_tokens = struct.unpack_from("<QQ", b, p); p += 16
        if total_rows >= 1 << 62 or total_tokens >= 1 << 62:
            raise bad("totals out of range")
        if p != len(b):
            raise bad(f"body has {len(b) - p} bytes after its tables")
    except struct.error as e:
        raise bad(f"body is malformed ({e})") from None
    except UnicodeDecodeError:
        raise bad("a uid is not UTF-8") from None
    ix.update(records=records, uids=uids, total_rows=total_rows, total_tokens=total_tokens)
    for k in ("body", "at", "name", "records_at"):
        del ix[k]
    return ix


def _index_difference(rebuilt: dict, ix: dict) -> Optional[str]:
    """The first field where the file's index differs from the one its chunks imply (spec §7); None when
    they agree."""
    for table, holder, fields in (("chunks", "the file holds", "offset, length, first record, pieces, rows"),
                                  ("records", "the chunks hold", "first chunk, chunks, rows, tokens, uid")):
        a_t, b_t = ix[table], rebuilt[table]
        if len(a_t) != len(b_t):
            return f"the index lists {len(a_t)} {table}, {holder} {len(b_t)}"
        for i, (a, b) in enumerate(zip(a_t, b_t)):
            if tuple(a) != tuple(b):
                return f"index {table[:-1]} {i} says {tuple(a)} ({fields}), {holder} {tuple(b)}"
    if (ix["total_rows"], ix["total_tokens"]) != (rebuilt["total_rows"], rebuilt["total_tokens"]):
        return (f"index totals say {ix['total_rows']} rows and {ix['total_tokens']} tokens, the chunks hold "
                f"{rebuilt['total_rows']} and {rebuilt['total_tokens']}")
    return None


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
    def __init__(self, rd: Reader, at: int, P: int, R: int, stored: dict, frame_len: int):
        self.rd, self.at, self.P, self.R, self.stored = rd, at, P, R, stored
        self.frame_len = frame_len
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

    def _pieces(self):
        """PIECES, checked piece by piece (spec §5.2, step 9 of §8)."""
        name, at, P, R = self.rd._src.name, self.at, self.P, self.R
        pc = np.frombuffer(self.col(F.PIECES, P * 20, 1), dtype=np.dtype(
            [("record", "<u8"), ("flags", "<u4"), ("row_offset", "<u4"), ("n_rows", "<u4")]))
        fl, n_rows = pc["flags"], pc["n_rows"]
        first, last = (fl & 1) != 0, (fl & 2) != 0
        idx = np.arange(P)
        ok = (not (fl & ~np.uint32(3)).any() and (first | (idx == 0)).all() and (last | (idx == P - 1)).all()
              and not (first & (pc["row_offset"] != 0)).any() and not ((n_rows == 0) & ~(first & last)).any()
              and (np.diff(pc["record"]) == 1).all() and int(n_rows.sum(dtype=np.int64)) == R)
        if ok:
            return pc
        rows = 0   # something is wrong: find the first broken rule, piece by piece, as the spec orders them
        for i, (ordinal, flags, ro, n) in enumerate(pc.tolist()):
            first, last = bool(flags & 1), bool(flags & 2)

            def bad(msg):
                return FormatError(f"{name}: piece {i} (record {ordinal}): {msg}", at, "corrupt")
            if flags & ~3:
                raise bad(f"unknown flag bits {flags:#010x}")
            if not first and i > 0:
                raise bad("only the first piece of a chunk may continue a record")
            if not last and i < P - 1:
                raise bad("only the last piece of a chunk may continue into the next")
            if first and ro != 0:
                raise bad(f"a record's first piece must start at row 0, not {ro}")
            if n == 0 and not (first and last):
                raise bad("holds no rows; only the single piece of a record with no rows may (spec §5.2)")
            if i > 0 and ordinal != (int(pc["record"][i - 1]) + 1) % (1 << 64):
                raise bad(f"ordinal follows {int(pc['record'][i - 1])}; ordinals must increase by 1")
            rows += n
            if rows > R:
                raise bad(f"pieces hold more rows than the chunk's n_rows {R}")
        if rows != R:
            raise FormatError(f"{name}: pieces hold {rows} rows, chunk header says {R}", at, "corrupt")
        return pc

    def _records(self, pc):
        """RECORDS, entry by entry and field by field (spec §5.3, step 9 of §8)."""
        rd, at = self.rd, self.at
        name = rd._src.name
        rb = bytes(self.col(F.RECORDS, None, 1))
        end = len(rb)
        entries = []
        p = 0
        ntok = nlp = 0
        u32 = struct.Struct("<I").unpack_from
        fixed = struct.Struct("<IIIIIB").unpack_from
        rec_limit = F.MAX_RECORD_DECODED // max(1, rd.row_bytes)

        def bad(ordinal, msg, kind="corrupt"):
            return FormatError(f"{name}: record {ordinal}: {msg}", at, kind)

        def short(ordinal, what, need, left):
            return bad(ordinal, f"records column: {what} needs {need} bytes, {left} left")

        def string(ordinal, what, p, n):
            """The n-byte UTF-8 string at p (a uid or group: at most 65535 bytes), and the offset after it."""
            if n > F.MAX_STRING:
                raise bad(ordinal, f"records column: {what} length {n} exceeds 65535", "limit")
            if p + n > end:
                raise short(ordinal, what, n, end - p)
            try:
                return rb[p:p + n].decode("utf-8"), p + n
            except UnicodeDecodeError:
                raise bad(ordinal, f"{what} is not UTF-8") from None

        for ordinal, flags, _ro, n in pc.tolist():
            if not flags & 1:
                continue
            if p + 4 > end:
                raise short(ordinal, "uid length", 4, end - p)
            uid, p = string(ordinal, "uid", p + 4, u32(rb, p)[0])
            if not uid:
                raise bad(ordinal, "uid is empty")
            if p + 4 > end:
                raise short(ordinal, "group length", 4, end - p)
            (gl,) = u32(rb, p); p += 4
            group = None
            if gl != 0xFFFFFFFF:
                group, p = string(ordinal, "group", p, gl)
            if p + 33 > end:
                raise short(ordinal, "n_tokens", 33, end - p)
            nt, pl, st, nr, nl, fl = fixed(rb, p)
            rw_bits = rb[p + 21:p + 29]
            (al,) = u32(rb, p + 29)
            p += 33
            if al > F.MAX_ATTRS:
                raise bad(ordinal, f"attributes length {al} exceeds 16 MiB", "limit")
            attrs = None
            if al:
                if p + al > end:
                    raise short(ordinal, "attributes", al, end - p)
                try:
                    attrs = F.json_object(rb[p:p + al], "attributes", at, "corrupt")
                except FormatError as e:
                    raise bad(ordinal, str(e).split(": ", 1)[-1]) from None
                p += al
            if fl & ~1:
                raise bad(ordinal, f"unknown record flag bits {fl}")
            if not fl & 1 and rw_bits != b"\0\0\0\0\0\0\0\0":
                raise bad(ordinal, "reward bytes are not zero but the has-reward flag is clear")
            if nt > 0:
                if st + nr > nt:
                    raise bad(ordinal, f"rows cover positions {st}..{st + nr - 1} but n_tokens is {nt}")
                if pl > nt:
                    raise bad(ordinal, f"prompt_len {pl} > n_tokens {nt}")
                if nl > nt:
                    raise bad(ordinal, f"n_logprobs {nl} > n_tokens {nt}")
            if nl and not rd.has_logprobs:
                raise bad(ordinal, f"n_logprobs is {nl} but the trace has no logprobs column")
            if nr > rec_limit:
                raise bad(ordinal, f"record has {nr} rows of {rd.row_bytes} decoded bytes each, over the 2 GiB "
                          f"limit (spec §8)", "limit")
            if flags & 2 and n != nr:
                raise bad(ordinal, f"single piece holds {n} rows, record says {nr}")
            if not flags & 2 and n > nr:
                raise bad(ordinal, f"piece holds {n} rows, record says {nr}")
            ntok += nt
            nlp += nl
            if ntok > F.MAX_VALUES or nlp > F.MAX_VALUES:
                raise bad(ordinal, "the tokens or logprobs of the records starting in this chunk exceed 2^28 "
                          "values (1 GiB)", "limit")
            entries.append({"uid": uid, "group": group, "n_tokens": nt, "prompt_len": pl, "start": st,
                            "n_rows": nr, "n_logprobs": nl,
                            "reward": struct.unpack("<d", rw_bits)[0] if fl & 1 else None, "attrs": attrs})
        if p != end:
            raise FormatError(f"{name}: records column has {end - p} bytes after the last record", at, "corrupt")
        return entries, ntok, nlp

    def decode(self):
        """Step 9 of spec §8: the columns in increasing id order, each length checked before it is inflated.
        Returns (pieces, records_entries, per-chunk arrays)."""
        rd, at = self.rd, self.at
        name = rd._src.name
        L, R = rd.L, self.R
        pc = self._pieces()
        entries, ntok, nlp = self._records(pc)
        self.prefetch()
        tokens = np.frombuffer(self.col(F.TOKENS, 4 * ntok, 4), dtype="<i4")
        logprobs = None
        if rd.has_logprobs:
            logprobs = np.frombuffer(self.col(F.LOGPROBS, 4 * nlp, 4), dtype="<f4")
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
    """Joins pieces across chunks into records, checking what spans chunks (spec §5.2; the rules within a
    chunk are checked when it is decoded), and rebuilds the index the chunks imply (spec §7). With
    ``salvage``, a damaged chunk (``damage()``) loses the records that touch it and reading goes on from
    the next record that starts in an intact chunk, as ``rtrace check --salvage`` does."""

    def __init__(self, rd: Reader, salvage: bool = False):
        self.rd = rd
        self.pending: Optional[Record] = None
        self.filled = 0
        self.next_ordinal = 0
        self.rebuilt = {"chunks": [], "records": [], "total_rows": 0, "total_tokens": 0}
        self.salvage = salvage
        self.resyncing = False
        self.dropped: Optional[int] = None   # a record counted as lost whose later pieces may still come
        self.lost = 0

    def _lose(self, msg, at, count=1):
        self.lost += count
        self.rd._report(FormatError(f"{self.rd._src.name}: {msg}", at, "corrupt"))

    def damage(self, at):
        """Salvage: damage at ``at``. The record left open is kept until the next intact chunk shows whether it
        continues it exactly (spec §8)."""
        self.resyncing = True

    def _lose_open(self, why, at):
        if self.pending is not None:
            o = self.pending.ordinal
            self._lose(f"record {o} is lost: {why}", at)
            self.next_ordinal = o + 1
            self.dropped = o
            self.pending = None

    def finish_salvage(self):
        self._lose_open("the file ends before its last piece", None)

    def _index_chunk(self, chunk, pc, entries):
        rb = self.rebuilt
        ci = len(rb["chunks"])
        rb["chunks"].append((chunk.at, chunk.frame_len, int(pc["record"][0]), len(pc), chunk.R))
        ei = 0
        for ordinal, flags, _ro, n in pc.tolist():
            rb["total_rows"] += n
            if flags & 1:
                e = entries[ei]; ei += 1
                rb["records"].append([ci, 1, e["n_rows"], e["n_tokens"], e["uid"]])
                rb["total_tokens"] += e["n_tokens"]
            elif ordinal < len(rb["records"]):
                rb["records"][ordinal][1] += 1

    def feed(self, chunk: _ChunkData, only: Optional[int] = None, seq_check: bool = True, decoded=None,
             keep: Optional[range] = None, lead: bool = False):
        """Assembles the chunk's pieces; returns the records completed in it. ``only``: the one ordinal
        wanted (get()); ``keep``: the ordinals wanted (read_chunks(); the others are checked, not kept);
        ``lead``: the chunk starts a read, so a leading piece continuing an earlier record is skipped."""
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
            if self.resyncing:
                # salvage, after damage: go on with the open record if this piece continues it exactly, else
                # count what was lost and skip to the next record that starts here
                p = self.pending
                if not first and p is not None and p.ordinal == ordinal and ro == self.filled:
                    self.resyncing = False
                else:
                    self._lose_open("its remaining pieces are in a damaged or missing chunk", at)
                    if ordinal > self.next_ordinal:
                        self._lose(f"records {self.next_ordinal}..{ordinal - 1} are lost with the damaged data", at,
                                   ordinal - self.next_ordinal)
                    if not first:
                        if ordinal != self.dropped:
                            self._lose(f"record {ordinal} is lost: its first piece was in a damaged chunk", at)
                            self.dropped = ordinal
                        self.next_ordinal = ordinal + 1
                        continue
                    self.next_ordinal = ordinal
                    self.resyncing = False
            if first:
                if self.pending is not None:
                    raise FormatError(f"{name}: record {self.pending.ordinal} ends without a LAST piece",
                                      at, "corrupt")
                if seq_check and ordinal != self.next_ordinal:
                    raise FormatError(f"{name}: record ordinal {ordinal}, expected {self.next_ordinal}: a chunk is "
                                      f"missing or out of order", at, "corrupt")
                self.next_ordinal = ordinal + 1
                NR = e["n_rows"]
                want = (only is None or only == ordinal) and (keep is None or ordinal in keep)
                rec = Record(uid=e["uid"], group=e["group"], tokens=toks.astype(np.int32), prompt_len=e["prompt_len"],
                             start=e["start"], topk_ids=np.empty((NR, rd.L, rd.k), dtype=np.int32) if want else None,
                             topk_weights=(np.empty((NR, rd.L, rd.k), dtype=rd.wdt) if want
                                           and weights is not None else None),
                             router_logits=(np.empty((NR, rd.L, rd.E), dtype=rd.ldt) if want
                                            and logits is not None else None),
                             logprobs=None if lps is None else lps.astype(np.float32),
                             reward=e["reward"], attrs=e["attrs"], ordinal=ordinal, header=rd.header)
                rec._want = want
                rec._rows = NR
                self.pending = rec
                self.filled = 0
            else:
                if self.pending is None:
                    if not seq_check or lead:
                        continue  # get(), read_chunks(): a continuation of a record we do not want
                    raise FormatError(f"{name}: piece of record {ordinal} continues a record that did not start",
                                      at, "corrupt")
                if ordinal != self.pending.ordinal or ro != self.filled:
                    raise FormatError(f"{name}: piece (record {ordinal}, row_offset {ro}) does not continue record "
                                      f"{self.pending.ordinal} at row {self.filled}", at, "corrupt")
            rec = self.pending
            if self.filled + n > rec._rows:
                raise FormatError(f"{name}: record {ordinal} pieces hold more rows than its {rec._rows}", at, "corrupt")
            if rec._want:
                rec.topk_ids[self.filled:self.filled + n] = ids[rows]
                if weights is not None:
                    rec.topk_weights[self.filled:self.filled + n] = weights[rows]
                if logits is not None:
                    rec.router_logits[self.filled:self.filled + n] = logits[rows]
            self.filled += n
            if last:
                if self.filled != rec._rows:
                    raise FormatError(f"{name}: record {ordinal} ends with {self.filled} rows, it declares "
                                      f"{rec._rows}", at, "corrupt")
                self.pending = None
                if rec._want:
                    del rec._want
                    del rec._rows
                    out.append(rec)
                if only is not None and only == ordinal:
                    break
        self._index_chunk(chunk, pc, entries)
        chunk.release()    # every row was copied into its record
        return out
