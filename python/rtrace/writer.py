"""Writing .rtrace files (spec/format.md)."""
from __future__ import annotations

import datetime as _dt
import json
import os
import struct

import numpy as np

from . import _format as F

__all__ = ["Writer", "encode_ids"]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def encode_ids(ids_lr: np.ndarray, present: np.ndarray, piece_of_row: np.ndarray, width: int):
    """Ordered-reuse coding (§6.2), vectorised across rows.

    ids_lr: [L, R, k] ids (layer-major; any strides), present: [L, R] bool, piece_of_row: [R] piece
    index. Returns (ID_SLOTS bytes, ID_NEW bytes)."""
    L, R, k = ids_lr.shape
    # ids narrowed to the stored width first (u8 / u16 truncation, as the format stores them):
    # equality of stored ids is what the coding compares, and narrow compares are faster.
    dt = np.uint8 if width == 1 else np.dtype("<u2")
    valid, li, ri = F.prev_valid(present, piece_of_row)
    # slot-major [k, Q] copies, so that every compare below runs over one contiguous row of Q ids
    if li is None:
        Xt = np.ascontiguousarray(ids_lr.transpose(2, 0, 1), dtype=dt).reshape(k, L * R)
    else:
        Xt = np.ascontiguousarray(ids_lr[li, ri].T, dtype=dt)
    Q = Xt.shape[1]
    if Q == 0:
        return b"", b""
    # St[j, q] = the smallest m with Xt[j, q] == Xt[m, q - 1]: broadcast [k(j), k(m), block]
    # equality weighted 255 - m, so that 255 - (the maximum over m) is the first matching slot, or
    # 0xFF (the new marker) where nothing matches (k <= 254 keeps every weight above 0)
    St = np.empty((k, Q), dtype=np.uint8)
    St[:, 0] = F.NEW_MARKER                   # entry 0 never has a previous row
    wt = (255 - np.arange(k)).astype(np.uint8)[None, :, None]
    step = max(64, (8 << 20) // (k * k))    # eq holds k*k*step bytes (8 MiB)
    for q0 in range(1, Q, step):
        q1 = min(Q, q0 + step)
        eq = np.equal(Xt[:, None, q0:q1], Xt[None, :, q0 - 1:q1 - 1]).view(np.uint8)
        np.multiply(eq, wt, out=eq)
        np.subtract(np.uint8(255), eq.max(axis=1), out=St[:, q0:q1])
    inv = np.flatnonzero(~valid)
    if len(inv):
        St[:, inv] = F.NEW_MARKER
    slots = np.ascontiguousarray(St.T)        # [Q, k]
    new = np.compress((slots == F.NEW_MARKER).reshape(-1), np.ascontiguousarray(Xt.T).reshape(-1))
    return slots.tobytes(), new.tobytes()


def _shuffled_layer_major(a: np.ndarray, present: np.ndarray, li, ri) -> bytes:
    """[R, L, n] float column (little-endian) -> its layer-major (over present (layer, row)s),
    byte-shuffled raw bytes (§5.5, §6.1)."""
    lm = a.transpose(1, 0, 2)
    return F.shuffle_array(np.ascontiguousarray(lm) if li is None else lm[li, ri])


class _Sink:
    def __init__(self, target):
        self.own = False
        if isinstance(target, (str, bytes, os.PathLike)):
            self.f = open(target, "wb")
            self.own = True
        elif isinstance(target, int):
            self.f = os.fdopen(target, "wb")
            self.own = True
        else:
            self.f = target
        self.offset = 0

    def write(self, b: bytes):
        mv = memoryview(b)
        while len(mv):
            n = self.f.write(mv)
            if n is None:  # unbuffered raw streams may return None (would block): retry
                continue
            mv = mv[n:]
        self.offset += len(b)

    def close(self):
        try:
            self.f.flush()
        finally:
            if self.own:
                self.f.close()


class _Rec:
    __slots__ = ("uid", "group", "tokens", "prompt_len", "start", "ids", "missing", "weights",
                 "logits", "logprobs", "reward", "attrs", "n_rows")


class Writer:
    """Writes a trace; a context manager. See the package README for the arguments."""

    def __init__(self, path_or_file, model: dict, engine: dict | None = None,
                 topk_weights_dtype: str | None = None, router_logits_dtype: str | None = None,
                 logprobs: bool = False, policy_version: int | None = None,
                 attributes: dict | None = None, chunk_bytes: int = 4 << 20, compress: bool = True,
                 created: str | None = None, threads: bool = True):
        model = dict(model)
        if "layer_map" not in model or model["layer_map"] is None:
            model["layer_map"] = list(range(int(model["num_layers"])))
        model = {"name": str(model.get("name", "")), "num_layers": int(model["num_layers"]),
                 "num_experts": int(model["num_experts"]), "top_k": int(model["top_k"]),
                 "layer_map": [int(x) for x in model["layer_map"]]}
        engine = dict(engine or {})
        engine = {"name": str(engine.get("name", "")), "version": str(engine.get("version", "")),
                  "role": engine.get("role", "other")}
        if engine["role"] not in F.ROLES:
            raise ValueError(f"engine role must be rollout, train or other, not {engine['role']!r}")
        cols = {"topk_ids": "u8" if model["num_experts"] <= 256 else "u16", "tokens": "i32"}
        for key, d in (("topk_weights", topk_weights_dtype), ("router_logits", router_logits_dtype)):
            if d is not None:
                if d not in F.FLOAT_DTYPES:
                    raise ValueError(f"{key} dtype must be f16, bf16 or f32, not {d!r}")
                cols[key] = d
        if logprobs:
            cols["logprobs"] = "f32"
        attributes = {str(k): str(v) for k, v in (attributes or {}).items()}
        self.header = {"format": "rtrace", "engine": engine, "model": model, "columns": cols,
                       "policy_version": None if policy_version is None else int(policy_version),
                       "created": created or _now(), "attributes": attributes}
        try:
            F.validate_header(self.header)
        except F.FormatError as e:
            raise ValueError(str(e).split(": ", 1)[-1]) from None
        self.L = len(model["layer_map"])
        self.k = model["top_k"]
        self._nibble_slots = True   # §6.3 transform 2; tests turn it off to write the older layout
        self.E = model["num_experts"]
        self.id_width = 1 if cols["topk_ids"] == "u8" else 2
        self.wdt = F.FLOAT_DTYPES[topk_weights_dtype] if topk_weights_dtype else None
        self.ldt = F.FLOAT_DTYPES[router_logits_dtype] if router_logits_dtype else None
        self.wname, self.lname = topk_weights_dtype, router_logits_dtype
        self.has_logprobs = bool(logprobs)
        self.compress = compress
        self.threads = bool(threads)   # deflate a chunk's columns concurrently (zlib releases the GIL)
        self.row_bytes = max(1, self.L * self.k * (1 + (self.wdt.itemsize if self.wdt else 0))
                             + self.L * self.E * (self.ldt.itemsize if self.ldt else 0))
        self.budget = max(int(chunk_bytes), self.row_bytes)
        self._pending = []   # (ordinal, first, last, row_offset, n_rows, rec)
        self._pending_bytes = 0
        self._ordinal = 0
        self._closed = False
        # index tables
        self._chunks = []    # (offset, frame_len, first_record, n_pieces, n_rows)
        self._records = []   # [first_chunk, n_chunks, n_rows, n_tokens, uid_bytes]
        self._total_rows = 0
        self._total_tokens = 0
        self._sink = _Sink(path_or_file)
        js = json.dumps(self.header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        h = F.MAGIC + struct.pack("<HHI", F.MAJOR, F.MINOR, len(js)) + js
        self._sink.write(h + struct.pack("<I", F.crc32(h)))

    # context manager -------------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is None:
            self.close()
        else:  # leave what was written readable as an incomplete trace; do not write an index
            try:
                self._sink.close()
            except Exception:
                pass
            self._closed = True
        return False

    @property
    def records_written(self) -> int:
        return self._ordinal

    # records ---------------------------------------------------------------------------------
    def _float_col(self, a, dt, name, shape, dname):
        if a is None:
            raise ValueError(f"{name} is required: the trace declares the {name} column ({dname})")
        if hasattr(a, "detach"):  # torch tensor
            a = _torch_to_numpy(a, dname)
        a = np.asarray(a)
        if a.shape != shape:
            raise ValueError(f"{name} has shape {a.shape}, expected {shape}")
        if dname == "bf16":
            if a.dtype == np.uint16 or a.dtype == np.int16:
                return np.ascontiguousarray(a).view(np.uint16).astype("<u2", copy=False)
            if a.dtype.kind == "f":
                return F.float_to_bf16_bits(a)
            raise ValueError(f"{name}: bf16 values must be uint16 bit patterns or floats, not {a.dtype}")
        if a.dtype.kind != "f":
            raise ValueError(f"{name} must be a float array, not {a.dtype}")
        return np.ascontiguousarray(a, dtype=dt)

    def add(self, uid, tokens=(), topk_ids=None, topk_weights=None, router_logits=None, logprobs=None,
            prompt_len=0, start=0, reward=None, attrs=None, group=None):
        """Adds one record (one sequence). ``topk_ids`` is [rows, layers, k], -1 = missing."""
        if self._closed:
            raise ValueError("add() after close()")
        L, k, E = self.L, self.k, self.E
        r = _Rec()
        r.uid = str(uid).encode("utf-8")
        if not 1 <= len(r.uid) <= F.MAX_STRING:
            raise ValueError(f"uid must be 1..65535 UTF-8 bytes, got {len(r.uid)}")
        r.group = None if group is None else str(group).encode("utf-8")
        if r.group is not None and len(r.group) > F.MAX_STRING:
            raise ValueError("group must be at most 65535 UTF-8 bytes")
        r.tokens = np.ascontiguousarray(np.asarray(tokens, dtype=np.int64).reshape(-1)).astype("<i4")
        if topk_ids is None:
            topk_ids = np.zeros((0, L, k), dtype=np.int32)
        if hasattr(topk_ids, "detach"):
            topk_ids = topk_ids.detach().cpu().numpy()
        ids = np.asarray(topk_ids)
        if ids.ndim != 3 or ids.shape[1:] != (L, k):
            raise ValueError(f"record {uid!r}: topk_ids has shape {ids.shape}, expected [rows, {L}, {k}]")
        if ids.dtype.kind not in "iu":
            raise ValueError(f"record {uid!r}: topk_ids must be integers, not {ids.dtype}")
        ids = ids.astype(np.int32, copy=False)
        n = ids.shape[0]
        neg = ids < 0
        miss = neg.all(axis=2)
        if (neg.any(axis=2) & ~miss).any():
            rr, ll = np.nonzero(neg.any(axis=2) & ~miss)
            raise ValueError(f"record {uid!r}: row {rr[0]} layer {ll[0]} is partly missing "
                             f"(ids {ids[rr[0], ll[0]].tolist()}); a (row, layer) is all -1 or has no -1")
        if self.id_width == 1:
            bad = ids > 255
        else:
            bad = ids > 65535
        if bad.any():
            raise ValueError(f"record {uid!r}: expert id {int(ids[bad][0])} does not fit the id type "
                             f"{'u8' if self.id_width == 1 else 'u16'}")
        r.ids, r.missing, r.n_rows = ids, miss, n
        r.prompt_len, r.start = int(prompt_len), int(start)
        nt = len(r.tokens)
        if r.prompt_len < 0 or r.start < 0:
            raise ValueError(f"record {uid!r}: prompt_len and start must be >= 0")
        if nt > 0 and (r.prompt_len > nt or r.start + n > nt):
            raise ValueError(f"record {uid!r}: needs prompt_len <= n_tokens and start + rows <= n_tokens "
                             f"(prompt_len={r.prompt_len}, start={r.start}, rows={n}, n_tokens={nt})")
        r.weights = (self._float_col(topk_weights, self.wdt, "topk_weights", (n, L, k), self.wname)
                     if self.wdt is not None else None)
        if self.wdt is None and topk_weights is not None:
            raise ValueError("topk_weights given but the writer has no topk_weights_dtype")
        r.logits = (self._float_col(router_logits, self.ldt, "router_logits", (n, L, E), self.lname)
                    if self.ldt is not None else None)
        if self.ldt is None and router_logits is not None:
            raise ValueError("router_logits given but the writer has no router_logits_dtype")
        if logprobs is not None and not self.has_logprobs:
            raise ValueError("logprobs given but the writer was created with logprobs=False")
        r.logprobs = (np.ascontiguousarray(np.asarray(logprobs, dtype=np.float32).reshape(-1)).astype("<f4")
                      if logprobs is not None else np.zeros(0, dtype="<f4"))
        if nt > 0 and len(r.logprobs) > nt:
            raise ValueError(f"record {uid!r}: {len(r.logprobs)} logprobs for {nt} tokens")
        r.reward = None if reward is None else float(reward)
        if attrs is None:
            r.attrs = b""
        else:
            r.attrs = (attrs if isinstance(attrs, str) else json.dumps(attrs, ensure_ascii=False,
                                                                       separators=(",", ":"))).encode()
            if not isinstance(json.loads(r.attrs), dict):
                raise ValueError("attrs must be a JSON object")
            if len(r.attrs) > F.MAX_ATTRS:
                raise ValueError("attrs exceed 16 MiB")
        self._append(r)

    def _append(self, r: _Rec):
        ordinal = self._ordinal
        self._ordinal += 1
        extra = (len(r.tokens) + len(r.logprobs)) * 4 + len(r.uid) + 64
        offset = 0
        while True:
            if self._pending_bytes > 0 and self._pending_bytes + extra + self.row_bytes > self.budget \
                    and offset == 0 and r.n_rows > 0:
                self.flush()
            room = max(1, (self.budget - self._pending_bytes - extra) // self.row_bytes)
            n = min(r.n_rows - offset, room)
            last = offset + n == r.n_rows
            self._pending.append((ordinal, offset == 0, last, offset, n, r))
            self._pending_bytes += n * self.row_bytes + extra
            extra = 0
            offset += n
            if not last or self._pending_bytes >= self.budget or len(self._pending) >= 65536:
                self.flush()
            if offset >= r.n_rows:
                break

    # chunks ----------------------------------------------------------------------------------
    def flush(self):
        """Writes the pending rows as a chunk now."""
        if not self._pending:
            return
        frame = self._encode_chunk(self._pending)
        offset = self._sink.offset
        self._sink.write(frame)
        ci = len(self._chunks)
        pieces = self._pending
        self._chunks.append((offset, len(frame), pieces[0][0], len(pieces), sum(p[4] for p in pieces)))
        for ordinal, first, last, ro, n, r in pieces:
            self._total_rows += n
            if first:
                self._records.append([ci, 1, r.n_rows, len(r.tokens), r.uid])
                self._total_tokens += len(r.tokens)
            else:
                self._records[ordinal][1] += 1
        self._pending = []
        self._pending_bytes = 0

    def _encode_chunk(self, pieces) -> bytes:
        R = sum(p[4] for p in pieces)
        pcol = bytearray()
        rcol = bytearray()
        toks, lps = [], []
        for ordinal, first, last, ro, n, r in pieces:
            pcol += struct.pack("<QIII", ordinal, (1 if first else 0) | (2 if last else 0), ro, n)
            if not first:
                continue
            rcol += struct.pack("<I", len(r.uid)) + r.uid
            rcol += struct.pack("<I", 0xFFFFFFFF) if r.group is None else struct.pack("<I", len(r.group)) + r.group
            rcol += struct.pack("<IIIIIBdI", len(r.tokens), r.prompt_len, r.start, r.n_rows, len(r.logprobs),
                                0 if r.reward is None else 1, 0.0 if r.reward is None else r.reward, len(r.attrs))
            rcol += r.attrs
            toks.append(r.tokens)
            lps.append(r.logprobs)
        cols = [(F.PIECES, bytes(pcol), 1, 1), (F.RECORDS, bytes(rcol), 1, 1),
                (F.TOKENS, b"".join(t.tobytes() for t in toks), 4, 1)]
        if self.has_logprobs:
            cols.append((F.LOGPROBS, b"".join(t.tobytes() for t in lps), 4, 1))
        if R > 0:
            if len(pieces) == 1:
                p = pieces[0]
                ids = p[5].ids[p[3]:p[3] + p[4]]
                miss = p[5].missing[p[3]:p[3] + p[4]]
            else:
                ids = np.concatenate([p[5].ids[p[3]:p[3] + p[4]] for p in pieces])
                miss = np.concatenate([p[5].missing[p[3]:p[3] + p[4]] for p in pieces])
            piece_of_row = np.repeat(np.arange(len(pieces), dtype=np.int64), [p[4] for p in pieces])
            miss_lr = np.ascontiguousarray(miss.T)            # [L, R]
            present = ~miss_lr
            if miss_lr.any():
                cols.append((F.MISSING, np.packbits(miss_lr.reshape(-1), bitorder="little").tobytes(), 1, 1))
                li, ri = np.nonzero(present)
            else:
                li = ri = None
            slots, new = encode_ids(ids.transpose(1, 0, 2), present, piece_of_row, self.id_width)
        else:
            slots, new = b"", b""
        cols.append((F.ID_SLOTS, slots, 1, True))
        cols.append((F.ID_NEW, new, self.id_width, True))
        shuffled = set()
        for attr, dt, col in (("weights", self.wdt, F.WEIGHTS), ("logits", self.ldt, F.LOGITS)):
            if dt is None:
                continue
            if R > 0:
                parts = [getattr(p[5], attr)[p[3]:p[3] + p[4]] for p in pieces]
                a = parts[0] if len(parts) == 1 else np.concatenate(parts)
                data = _shuffled_layer_major(a, present, li, ri)   # layer-major over present, shuffled
                shuffled.add(col)
            else:
                data = b""
            cols.append((col, data, dt.itemsize, 3))   # planes at level 3 (LZ77 finds the exponent bytes' runs)

        def encode(c):
            cid, raw, width, huff = c
            if cid == F.ID_SLOTS and self.k <= F.NIBBLE_MAX_TOP_K and self._nibble_slots:
                transform, t = 2, F.nibble_pack(np.frombuffer(raw, dtype=np.uint8))
            else:
                transform = 1 if width > 1 else 0
                t = F.shuffle(raw, width) if transform and cid not in shuffled else raw
            if self.compress and t:
                z = F.deflate(t, huff, planes=width if transform == 1 else 1)
                if len(z) < len(t):
                    return cid, 1, transform, len(t), z
            return cid, 0, transform, len(t), t

        # deflate releases the GIL: big chunks compress their columns concurrently (as the Swift writer)
        if self.threads and sum(len(c[1]) for c in cols) > 256 << 10:
            done = list(_pool().map(encode, cols))
        else:
            done = [encode(c) for c in cols]
        directory = bytearray()
        payload = []
        for cid, codec, transform, raw_len, stored in done:
            directory += struct.pack("<HBBIII", cid, codec, transform, raw_len, len(stored), F.crc32(stored))
            payload.append(stored)
        head = b"RTCK" + struct.pack("<IIIQ", len(cols), len(pieces), R, sum(len(s) for s in payload)) \
            + bytes(directory)
        return b"".join([head, struct.pack("<I", F.crc32(head))] + payload)

    # close -----------------------------------------------------------------------------------
    def close(self):
        """Writes the last chunk, the index and the trailer, and closes the output."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._sink.write(index_and_trailer(self._sink.offset, self._chunks, self._records, self._total_rows,
                                           self._total_tokens))
        self._sink.close()


def index_and_trailer(at: int, chunks, records, total_rows: int, total_tokens: int) -> bytes:
    """The index frame and trailer (spec §7) of a file whose index starts at byte ``at``. ``chunks``:
    (offset, frame_len, first_record, n_pieces, n_rows) per chunk; ``records``: (first_chunk, n_chunks,
    n_rows, n_tokens, uid bytes) per record."""
    body = [struct.pack("<Q", len(chunks))]
    body += [struct.pack("<QQQII", *c) for c in chunks]
    body.append(struct.pack("<Q", len(records)))
    body += [struct.pack("<IIIII", fc, nc, nr, nt, len(uid)) + uid for fc, nc, nr, nt, uid in records]
    body.append(struct.pack("<QQ", total_rows, total_tokens))
    body = b"".join(body)
    frame = b"RTIX" + struct.pack("<IQ", 0, len(body)) + body
    frame += struct.pack("<I", F.crc32(frame))
    t = struct.pack("<QQI", at, len(frame), len(chunks))
    return frame + t + struct.pack("<I", F.crc32(t)) + F.END_MAGIC


def _pool():
    return F.thread_pool("rtrace-deflate")


def _torch_to_numpy(t, dname):
    t = t.detach().cpu()
    if str(t.dtype) == "torch.bfloat16":
        import torch  # noqa: WPS433
        return t.contiguous().view(torch.int16).numpy().view(np.uint16)
    return t.numpy()
