"""Constants and low-level helpers of the .rtrace format (spec/format.md)."""
from __future__ import annotations

import os
import zlib

import numpy as np

MAGIC = b"\x89RTR\r\n\x1a\n"
CHUNK_MAGIC = b"RTCK"
INDEX_MAGIC = b"RTIX"
END_MAGIC = b"RTRCEND\n"
MAJOR = 1
MINOR = 0

MAX_HEADER_JSON = 16 << 20
MAX_COLUMNS = 64
MAX_PIECES = 1 << 20
MAX_ROWS = 1 << 24
MAX_COLUMN = 1 << 30
MAX_STRING = 65535
MAX_ATTRS = 16 << 20
MAX_INDEX = 1 << 30
MAX_DEFLATE_RATIO = 1032          # deflate emits at most 258 bytes per 2 bits (§8)
MAX_CHUNK_DECODED = 1 << 30       # decoded row data of a chunk (§8)
MAX_RECORD_DECODED = 1 << 31      # decoded row data of a record (§8)
MAX_VALUES = 1 << 28              # tokens or logprobs of the records starting in a chunk (§8)
MAX_POLICY_VERSION = (1 << 53) - 1
# feature names of later minor versions (§10) this reader implements: none, it reads 1.0
SUPPORTED_FEATURES: frozenset = frozenset()
ROLES = ("rollout", "train", "other")

# column ids (§5)
PIECES = 1
RECORDS = 2
TOKENS = 3
LOGPROBS = 4
MISSING = 8
ID_SLOTS = 16
ID_NEW = 17
WEIGHTS = 18
LOGITS = 19

COLUMN_NAMES = {
    PIECES: "PIECES", RECORDS: "RECORDS", TOKENS: "TOKENS", LOGPROBS: "LOGPROBS",
    MISSING: "MISSING", ID_SLOTS: "ID_SLOTS", ID_NEW: "ID_NEW", WEIGHTS: "WEIGHTS", LOGITS: "LOGITS",
}

NEW_MARKER = 0xFF

# on-disk float dtypes -> numpy dtype used in memory (bf16 as uint16 bit patterns)
FLOAT_DTYPES = {"f16": np.dtype("<f2"), "bf16": np.dtype("<u2"), "f32": np.dtype("<f4")}


class FormatError(Exception):
    """A damaged, truncated or invalid trace. ``offset`` is the byte offset of the problem
    (or None), ``kind`` the error kind of spec §9 (truncated, notATrace, checksum, ...)."""

    def __init__(self, message: str, offset: int | None = None, kind: str = "corrupt"):
        self.message = message
        self.offset = offset
        self.kind = kind
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"{kind}{where}: {message}")

    def __reduce__(self):   # pickled whole (multiprocessing, Ray tasks), not as its formatted text
        return type(self), (self.message, self.offset, self.kind)


def crc32(b) -> int:
    return zlib.crc32(b) & 0xFFFFFFFF


_UINT = {2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}


def shuffle_array(a: np.ndarray) -> bytes:
    """Byte-shuffle (§6.1) of the elements of a little-endian array, in C order. Planes are cut with
    shifts over whole contiguous arrays (a byte-level transpose copy is ~10x slower in numpy)."""
    w = a.dtype.itemsize
    if w <= 1 or a.size == 0:
        return np.ascontiguousarray(a).tobytes()
    if w not in _UINT:
        return shuffle(np.ascontiguousarray(a).tobytes(), w)
    u = np.ascontiguousarray(a).view(_UINT[w]).reshape(-1)
    out = np.empty((w, u.size), dtype=np.uint8)
    out[0] = u                                   # truncating casts: byte 0
    for b in range(1, w):
        out[b] = u >> (8 * b)
    return out.tobytes()


def shuffle(raw: bytes, width: int) -> bytes:
    """Byte-shuffle (§6.1): stored byte b*n+i is byte b of element i."""
    if width <= 1 or not raw:
        return bytes(raw)
    if width in _UINT:
        return shuffle_array(np.frombuffer(raw, dtype=_UINT[width]))
    a = np.frombuffer(raw, dtype=np.uint8).reshape(-1, width)
    return a.T.tobytes()


def unshuffle_array(data, dtype) -> np.ndarray:
    """Inverse byte-shuffle of ``data`` into a new 1-D array of ``dtype`` (little-endian)."""
    dtype = np.dtype(dtype)
    w = dtype.itemsize
    b = np.frombuffer(data, dtype=np.uint8)
    if w <= 1 or b.size == 0:
        return b.view(dtype).copy() if w == 1 else np.zeros(0, dtype=dtype)
    n = b.size // w
    planes = b.reshape(w, n)
    if w not in _UINT:
        return np.frombuffer(planes.T.tobytes(), dtype=dtype)
    u = planes[w - 1].astype(_UINT[w])
    for i in range(w - 2, -1, -1):
        u <<= 8
        u |= planes[i]
    return u.view(dtype)


def unshuffle(data: bytes, width: int) -> bytes:
    if width <= 1 or not data:
        return bytes(data)
    if width in _UINT:
        return unshuffle_array(data, _UINT[width]).tobytes()
    a = np.frombuffer(data, dtype=np.uint8).reshape(width, -1)
    return a.T.tobytes()


def deflate(data: bytes, mode, planes: int = 1) -> bytes:
    """Raw deflate; ``mode`` True = Huffman-only, an int = that zlib level. A byte-shuffled column
    (``planes`` > 1) deflates plane by plane into one stream: each plane coded on its own and ended
    on a byte boundary (sync flush), as stored blocks when its byte entropy is over 7.84 bits
    (coding would save under 2 %: the low mantissa bytes of floats), as the Swift writer does."""
    if planes <= 1 or len(data) % planes or not data:
        return _deflate(data, mode, True)
    n = len(data) // planes
    out = []
    for p in range(planes):
        plane = data[p * n:(p + 1) * n]
        out.append(_deflate(plane, 0 if byte_entropy(plane) > 7.84 else mode, p == planes - 1))
    return b"".join(out)


def byte_entropy(data: bytes) -> float:
    """Shannon entropy of the bytes, in bits per byte."""
    if not data:
        return 0.0
    c = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
    q = c[c > 0] / len(data)
    return float(-(q * np.log2(q)).sum())


def _deflate(data, mode, final: bool) -> bytes:
    """mode: True = Huffman-only, an int = that zlib level (0: stored blocks)."""
    if mode is True:
        c = zlib.compressobj(1, zlib.DEFLATED, -15, 8, zlib.Z_HUFFMAN_ONLY)
    else:
        c = zlib.compressobj(int(mode), zlib.DEFLATED, -15)
    return c.compress(data) + c.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)


NIBBLE_MAX_TOP_K = 15


def nibble_pack(codes: np.ndarray) -> bytes:
    """Transform 2 of ID_SLOTS (§6.3): two slot codes per byte, even code in the low nibble,
    the new marker 0xFF as 15."""
    c = np.asarray(codes, dtype=np.uint8).reshape(-1) & 0x0F
    if c.size % 2:
        c = np.concatenate([c, np.zeros(1, np.uint8)])
    return (c[0::2] | (c[1::2] << 4)).astype(np.uint8).tobytes()


def _nibble_table() -> np.ndarray:
    """Byte -> its two codes (low nibble first, 15 as 0xFF), as one little-endian u16 per byte."""
    b = np.arange(256)
    lo, hi = b & 15, b >> 4
    lo = np.where(lo == 15, NEW_MARKER, lo)
    hi = np.where(hi == 15, NEW_MARKER, hi)
    return (lo | (hi << 8)).astype("<u2")


_NIBBLE_TABLE = _nibble_table()


def stray_nibble(data: bytes, count: int) -> bool:
    """Whether ``count`` nibble-packed codes leave a non-zero unused high nibble (odd count) in the
    last byte of ``data`` (§6.3 forbids it)."""
    return bool(count % 2 and data[-1] >> 4)


def nibble_unpack(data: bytes, count: int):
    """Inverse of ``nibble_pack``: ``count`` byte codes (15 back to 0xFF), or None when an odd count
    leaves a non-zero high nibble in the last byte. One table look-up per byte."""
    if stray_nibble(data, count):
        return None
    return _NIBBLE_TABLE[np.frombuffer(data, dtype=np.uint8)].view(np.uint8)[:count]


def inflate(data: bytes, raw_len: int, offset: int, name: str) -> bytes:
    """Inflates a raw deflate stream that must give exactly raw_len bytes and end (bomb-safe)."""
    d = zlib.decompressobj(-15)
    try:
        out = d.decompress(data, raw_len) if raw_len > 0 else d.decompress(data, 1)
    except zlib.error as e:
        raise FormatError(f"column {name}: deflate stream is invalid ({e})", offset) from None
    if len(out) != raw_len or not d.eof or d.unconsumed_tail:
        raise FormatError(
            f"column {name}: deflate stream does not give exactly raw_len={raw_len} bytes and end "
            f"(got {len(out)}{'+' if d.unconsumed_tail else ''}, ended={d.eof})", offset)
    if d.unused_data:
        raise FormatError(f"column {name}: deflate stream ends {len(d.unused_data)} bytes before the stored length",
                          offset)
    return out


def row_bytes(L: int, k: int, E: int, wsize: int, lsize: int) -> int:
    """Bytes one routed row takes once decoded, as spec §8 counts them: u16 ids, weights, logits."""
    return L * (k * (2 + wsize) + E * lsize)


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def _finite_float(text):
    v = float(text)
    if v in (float("inf"), float("-inf")):
        raise ValueError(f"number {text} is outside binary64")
    return v


def _lone_surrogate(v) -> bool:
    """Whether a parsed JSON value holds a string (or key) with an unpaired surrogate."""
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return False


_SURROGATE_ESCAPE = None
_JSON_DECODER = None


def json_object(data, what: str, offset, kind: str) -> dict:
    """Parses one JSON object under the rules of spec §3.2 (UTF-8 without a byte-order mark, finite numbers,
    no unpaired surrogate; a repeated key keeps its last value); raises FormatError(kind) otherwise."""
    global _SURROGATE_ESCAPE, _JSON_DECODER
    if _JSON_DECODER is None:
        import json
        import re
        _JSON_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
        _SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")
    data = bytes(data)
    try:
        text = data.decode("utf-8")
        if text.startswith("\ufeff"):
            raise ValueError("it starts with a byte-order mark; the format forbids one")
        v = _JSON_DECODER.decode(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise FormatError(f"{what} does not parse: {e}", offset, kind) from None
    if not isinstance(v, dict):
        raise FormatError(f"{what} is not an object", offset, kind)
    if _SURROGATE_ESCAPE.search(data) and _lone_surrogate(v):
        raise FormatError(f"{what} holds an unpaired surrogate", offset, kind)
    return v


def prev_valid(present: np.ndarray, piece_of_row: np.ndarray):
    """For the present (layer, row)s in layer-major order: whether the previous present row of the
    same piece and layer exists. Returns (valid [Q] bool, layer index, row index or None when all
    (layer, row)s are present)."""
    L, R = present.shape
    if R and present.all():
        vr = np.zeros(R, dtype=bool)
        vr[1:] = piece_of_row[1:] == piece_of_row[:-1]
        return np.tile(vr, L), None, None
    li, ri = np.nonzero(present)
    Q = len(li)
    key = li.astype(np.int64) * (int(piece_of_row.max()) + 1 if R else 1) + piece_of_row[ri]
    valid = np.zeros(Q, dtype=bool)
    valid[1:] = key[1:] == key[:-1]
    return valid, li, ri


def validate_header(h: dict) -> list:
    """Checks the rules of spec §3.2 (``format``, then ``requires``, then the rest); raises
    FormatError(kind='badHeader', or 'unsupportedVersion' for a feature this reader lacks). Returns the
    notices a reader gives: columns keys it does not know, an engine.role it reads as "other"."""
    def bad(msg):
        raise FormatError(msg, 16, "badHeader")

    def isint(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def string(d, key, path):
        if key in d and not isinstance(d[key], str):
            bad(f"{path}.{key} must be a string, found {d[key]!r}")

    if not isinstance(h, dict):
        bad("header JSON is not an object")
    if h.get("format") != "rtrace":
        bad('header field format must be "rtrace"')
    if "requires" in h:
        req = h["requires"]
        if not isinstance(req, list) or not all(isinstance(x, str) for x in req):
            bad(f"header field requires must be an array of strings, found {req!r}")
        missing = [x for x in req if x not in SUPPORTED_FEATURES]
        if missing:
            raise FormatError(f"the file requires {', '.join(missing)}, which this reader does not implement; "
                              f"this reader reads format 1.0: a newer reader is needed", 16, "unsupportedVersion")
    e = h.get("engine")
    if not isinstance(e, dict):
        bad("header field engine is missing or not an object")
    if not isinstance(e.get("role"), str):
        bad(f"engine.role must be a string (rollout, train or other), found {e.get('role')!r}")
    string(e, "name", "engine")
    string(e, "version", "engine")
    m = h.get("model")
    if not isinstance(m, dict):
        bad("header field model is missing or not an object")
    string(m, "name", "model")
    for k in ("num_layers", "num_experts", "top_k"):
        if k not in m:
            bad(f"model.{k} is missing")
        if not isint(m[k]):
            bad(f"model.{k} must be an integer (no fraction or exponent), found {m[k]!r}")
    nl, ne, tk = m["num_layers"], m["num_experts"], m["top_k"]
    if not 1 <= nl <= 65535:
        bad(f"model.num_layers is {nl}, expected 1..65535")
    if not 1 <= ne <= 65535:
        bad(f"model.num_experts is {ne}, expected 1..65535")
    if not 1 <= tk <= min(254, ne):
        bad(f"model.top_k is {tk}, expected 1..{min(254, ne)} (at most num_experts and 254)")
    lm = m.get("layer_map")
    if not isinstance(lm, list) or not lm or not all(isint(x) for x in lm):
        bad("model.layer_map must be a non-empty array of integers")
    for i, x in enumerate(lm):
        if not 0 <= x < nl:
            bad(f"model.layer_map[{i}] is {x}, outside 0..{nl - 1}")
        if i and lm[i - 1] >= x:
            bad(f"model.layer_map must increase, but [{i-1}]={lm[i-1]} and [{i}]={x}")
    c = h.get("columns")
    if not isinstance(c, dict):
        bad("header field columns is missing or not an object")
    want = "u8" if ne <= 256 else "u16"
    if c.get("topk_ids") != want:
        bad(f'columns.topk_ids must be "{want}" for {ne} experts, found {c.get("topk_ids")!r}')
    if c.get("tokens") != "i32":
        bad('columns.tokens must be "i32"')
    for k in ("topk_weights", "router_logits"):
        if k in c and c[k] not in FLOAT_DTYPES:
            bad(f"columns.{k} must be f16, bf16 or f32, found {c[k]!r}")
    if "logprobs" in c and c["logprobs"] != "f32":
        bad(f'columns.logprobs must be "f32", found {c["logprobs"]!r}')
    pv = h.get("policy_version")
    if pv is not None:
        if not isint(pv):
            bad(f"header.policy_version must be an integer (no fraction or exponent) or null, found {pv!r}")
        if not 0 <= pv <= MAX_POLICY_VERSION:
            bad(f"policy_version is {pv}, expected null or 0..{MAX_POLICY_VERSION}")
    string(h, "created", "header")
    a = h.get("attributes", {})
    if not isinstance(a, dict):
        bad("attributes must be an object")
    for k, v in a.items():
        if not isinstance(v, str):
            bad(f"attributes.{k} must be a string, found {v!r}")
    notices = []
    unknown = sorted(set(c) - {"topk_ids", "tokens", "topk_weights", "router_logits", "logprobs"})
    if unknown:
        notices.append(f"header declares columns this reader does not know, skipped: {', '.join(unknown)}")
    if e["role"] not in ROLES:
        notices.append(f'engine.role "{e["role"]}" is unknown to this reader, read as other')
    return notices


def float_to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), round to nearest even (NaN kept quiet)."""
    f = np.ascontiguousarray(a, dtype=np.float32)
    u = f.view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(f)
    if nan.any():
        r[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return r


def bf16_bits_to_float(a: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) -> float32."""
    return (np.asarray(a, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


_POOLS: dict = {}


def thread_pool(name: str, workers: int | None = None):
    """A process-wide thread pool per purpose (zlib and numpy release the GIL), made on first use;
    `workers` defaults to the cores, at most 4."""
    pool = _POOLS.get(name)
    if pool is None:
        from concurrent.futures import ThreadPoolExecutor
        n = workers if workers is not None else max(1, min(4, os.cpu_count() or 1))
        pool = _POOLS[name] = ThreadPoolExecutor(max_workers=n, thread_name_prefix=name)
    return pool
