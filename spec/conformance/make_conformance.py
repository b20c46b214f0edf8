#!/usr/bin/env python3
"""Writes the conformance files of spec/format.md: one small .rtrace per rule that two readers could
read two ways (the 13 items of the 1.0 freeze, the truncated-chunk rule, the order of checks), and
cases.json, which says what a conforming reader does with each, in each mode of spec §8.

    python3 spec/conformance/make_conformance.py     # from the repository root; deterministic

The files are made by the Python writer (python/rtrace) and then edited frame by frame; every CRC
that the edit is not about is recomputed, so each file breaks exactly the rule it names. The Swift
tests (Tests/RTraceTests/ConformanceTests.swift) and the Python tests (python/tests/test_conformance.py)
read every file and hold both readers to cases.json; see README.md beside this script.
"""
import io
import json
import os
import struct
import sys
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))

import rtrace  # noqa: E402
from rtrace import _format as F  # noqa: E402

MODEL = dict(name="conformance", num_layers=3, num_experts=16, top_k=2, layer_map=[0, 2])
ENGINE = dict(name="make_conformance", version="1", role="rollout")
CREATED = "2026-11-30T00:00:00Z"
ROWS = [5, 9, 0, 7, 12, 3, 6, 4]     # records r0..r7; r2 has no rows
CHUNK_BYTES = 650


# --- writing -------------------------------------------------------------------------------------

def records():
    """The records of the base trace: ids without repeats and below num_experts, some rows missing."""
    rng = np.random.default_rng(16)
    out = []
    for i, n in enumerate(ROWS):
        ids = np.array([rng.permutation(16)[:2] for _ in range(n * 2)], dtype=np.int32).reshape(n, 2, 2)
        if i == 1:
            ids[:2] = -1                                # prefix-cached rows: missing
        w = rng.integers(0, 1 << 16, (n, 2, 2)).astype(np.uint16)
        w[ids < 0] = 0
        g = rng.integers(0, 1 << 16, (n, 2, 16)).astype(np.uint16).view(np.float16)
        g[ids[:, :, 0] < 0] = 0
        nt = n + 2
        out.append(dict(uid=f"r{i}", tokens=rng.integers(0, 1000, nt), topk_ids=ids, topk_weights=w, router_logits=g,
                        logprobs=rng.standard_normal(2).astype(np.float32), start=1, prompt_len=2,
                        reward=float(i) if i % 3 == 1 else None, group="g" if i < 4 else None,
                        attrs={"i": i} if i == 4 else None))
    return out


def write(chunk_bytes=CHUNK_BYTES, recs=None, **kw):
    """The base trace: several chunks, records across chunks, bf16 weights, f16 logits, logprobs."""
    buf = io.BytesIO()
    w = rtrace.Writer(buf, model=MODEL, engine=ENGINE, topk_weights_dtype="bf16", router_logits_dtype="f16",
                      logprobs=True,
                      policy_version=3, created=CREATED, attributes={"made_by": "make_conformance"},
                      chunk_bytes=chunk_bytes, threads=False, **kw)
    for r in recs or records():
        w.add(**r)
    w.close()
    return buf.getvalue()


def header_json():
    """The base trace's header as a dict (to edit and re-serialise)."""
    b = write()
    n = struct.unpack_from("<I", b, 12)[0]
    return json.loads(b[16:16 + n])


def file_header(js: bytes, major=1, minor=0) -> bytes:
    h = F.MAGIC + struct.pack("<HHI", major, minor, len(js)) + js
    return h + struct.pack("<I", F.crc32(h))


def dumps(h) -> bytes:
    return json.dumps(h, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# --- frames --------------------------------------------------------------------------------------

class Chunk:
    """A chunk frame taken apart: its counts and its columns [id, codec, transform, raw_len, stored]."""

    def __init__(self, b: bytes):
        C, self.P, self.R, _ = struct.unpack_from("<IIIQ", b, 4)
        self.cols = []
        p = 28 + 16 * C
        for i in range(C):
            cid, codec, tr, raw_len, stored_len, _crc = struct.unpack_from("<HBBIII", b, 24 + 16 * i)
            self.cols.append([cid, codec, tr, raw_len, b[p:p + stored_len]])
            p += stored_len
        self.payload_len = None      # set to break payload_len = sum of stored_len
        self.bad_crc = set()         # column ids whose CRC is stored wrong

    def col(self, cid):
        return next(c for c in self.cols if c[0] == cid)

    def raw(self, cid) -> bytes:
        """A column's bytes after inflating (before un-transforming)."""
        _, codec, _, raw_len, stored = self.col(cid)
        return zlib.decompress(stored, -15) if codec == 1 else stored

    def set_raw(self, cid, raw: bytes, transform=None):
        """Stores a column raw (codec 0), keeping its transform unless one is given."""
        c = self.col(cid)
        c[1], c[3], c[4] = 0, len(raw), bytes(raw)
        if transform is not None:
            c[2] = transform

    def frame(self) -> bytes:
        directory = b"".join(struct.pack("<HBBIII", cid, codec, tr, raw_len, len(st),
                                         F.crc32(st) ^ (1 if cid in self.bad_crc else 0))
                             for cid, codec, tr, raw_len, st in self.cols)
        pl = sum(len(c[4]) for c in self.cols) if self.payload_len is None else self.payload_len
        head = b"RTCK" + struct.pack("<IIIQ", len(self.cols), self.P, self.R, pl) + directory
        return head + struct.pack("<I", F.crc32(head)) + b"".join(c[4] for c in self.cols)


class Trace:
    """A complete trace taken apart: header bytes, chunks, and its index (to rebuild with new offsets)."""

    def __init__(self, b: bytes):
        r = rtrace.Reader(b)
        ix = r.index
        self.header = b[:r.data_start]
        self.chunks = [Chunk(b[o:o + n]) for o, n, _, _, _ in ix["chunks"]]
        self.index = ix

    def touching(self, ci):
        """Records with a piece in chunk ci."""
        return [i for i, (fc, cc, *_r) in enumerate(self.index["records"]) if fc <= ci < fc + cc]

    def before(self, ci):
        """Records a strict reader delivers before an error in chunk ci: those ending in an earlier chunk."""
        return sum(1 for fc, cc, *_r in self.index["records"] if fc + cc <= ci)

    def assemble(self, frames=None, header=None, index_edit=None, tail=b"", no_index=False):
        """The file from `frames` (Chunk objects, or bytes inserted as they are: garbage between frames),
        with an index rebuilt for the new offsets (edited by index_edit) and a trailer."""
        frames = self.chunks if frames is None else frames
        out = bytearray(self.header if header is None else header)
        chunks = []
        k = 0
        for f in frames:
            if isinstance(f, Chunk):
                fb = f.frame()
                _, _, first, P, R = self.index["chunks"][k]
                chunks.append([len(out), len(fb), first, P, R])
                k += 1
                out += fb
            else:
                out += f
        if no_index:
            return bytes(out)
        recs = [list(r) for r in self.index["records"]]
        totals = [self.index["total_rows"], self.index["total_tokens"]]
        if index_edit:
            index_edit(chunks, recs, totals)
        body = struct.pack("<Q", len(chunks)) + b"".join(struct.pack("<QQQII", *c) for c in chunks)
        body += struct.pack("<Q", len(recs))
        for fc, cc, rows, toks, uid in recs:
            u = uid.encode()
            body += struct.pack("<IIIII", fc, cc, rows, toks, len(u)) + u
        body += struct.pack("<QQ", *totals)
        fr = b"RTIX" + struct.pack("<IQ", 0, len(body)) + body
        fr += struct.pack("<I", F.crc32(fr))
        at = len(out)
        t = struct.pack("<QQI", at, len(fr), len(chunks))
        return bytes(out) + fr + t + struct.pack("<I", F.crc32(t)) + F.END_MAGIC + tail

    def offset(self, b: bytes, ci):
        """Offset of chunk ci in a file made by assemble() without insertions."""
        return len(self.header) + sum(len(c.frame()) for c in self.chunks[:ci])


# --- the cases -----------------------------------------------------------------------------------

CASES = []


def case(name, item, rule, data, strict, salvage=None, incomplete=None, notices=(), role=None, lookup=None,
         policy_version=None):
    """strict / incomplete: {"records": n delivered, "error": kind or None, "at": [lo, hi) of the offset}.
    salvage: {"records": n recovered, "complete": bool, "clean": bool}, or None where the header already
    fails (nothing to salvage)."""
    with open(os.path.join(HERE, name + ".rtrace"), "wb") as f:
        f.write(data)
    c = {"file": name + ".rtrace", "item": item, "rule": rule, "strict": strict}
    if incomplete is not None:
        c["incomplete"] = incomplete
    if salvage is not None:
        c["salvage"] = salvage
    if notices:
        c["notices"] = list(notices)
    if role:
        c["role"] = role
    if lookup:
        c["lookup"] = lookup
    if policy_version is not None:
        c["policy_version"] = policy_version
    CASES.append(c)


def ok(n):
    return {"records": n, "error": None}


def err(kind, n=0, at=None):
    return {"records": n, "error": kind, "at": at}


def header_case(name, item, rule, h=None, js=None, kind="badHeader", at=(16, 17), **kw):
    """A file whose header JSON is `h` (a dict) or `js` (bytes), with the base trace's chunks."""
    recs = records()[:3]                    # the header is what these cases are about: a short trace
    base = Trace(write(recs=recs))
    js = dumps(h) if js is None else js
    data = base.assemble(header=file_header(js))
    n = len(recs)
    if kind is None:
        case(name, item, rule, data, ok(n), salvage={"records": n, "complete": True, "clean": True}, **kw)
    else:
        case(name, item, rule, data, err(kind, 0, list(at)), **kw)


def make():
    base_bytes = write()
    T = Trace(base_bytes)
    N = len(ROWS)
    nch = len(T.chunks)
    assert nch >= 5, nch
    all_ok = {"records": N, "complete": True, "clean": True}
    case("base", "-", "the base trace every other case edits: it reads whole", base_bytes, ok(N), salvage=all_ok)

    def edited(h_edit):
        h = header_json()
        h_edit(h)
        return h

    # 1: which header keys are required, and how values are typed
    def drop_optional(h):
        del h["engine"]["name"], h["engine"]["version"], h["model"]["name"]
        del h["policy_version"], h["created"], h["attributes"]
    header_case("h-optional-keys-absent", "1", "engine.name/version, model.name, policy_version, created and "
                "attributes may all be absent", edited(drop_optional), kind=None)
    header_case("h-created-free-text", "1", "created is shown, never interpreted: any string is accepted",
                edited(lambda h: h.update(created="yesterday, around noon")), kind=None)
    header_case("h-created-not-a-string", "1", "created, when present, is a string",
                edited(lambda h: h.update(created=20261130)))
    header_case("h-engine-name-not-a-string", "1", "engine.name, when present, is a string",
                edited(lambda h: h["engine"].update(name=7)))
    header_case("h-attribute-not-a-string", "1", "attribute values are strings",
                edited(lambda h: h["attributes"].update(seed=7)))
    js = dumps(header_json()).replace(b'"top_k":2', b'"top_k":2.0')
    header_case("h-integer-with-fraction", "1", "an integer is written without a fraction (2.0 is not 2)", js=js)
    js = dumps(header_json()).replace(b'"num_experts":16', b'"num_experts":1.6e1')
    header_case("h-integer-with-exponent", "1", "an integer is written without an exponent", js=js)
    header_case("h-integer-boolean", "1", "true is not an integer", edited(lambda h: h.update(policy_version=True)))
    header_case("h-policy-version-negative", "1", "policy_version is 0 .. 2^53-1 or null",
                edited(lambda h: h.update(policy_version=-1)))
    header_case("h-engine-absent", "1", "engine is required", edited(lambda h: h.pop("engine")))
    header_case("h-role-absent", "1", "engine.role is required", edited(lambda h: h["engine"].pop("role")))
    header_case("h-tokens-column-absent", "1", "columns.tokens is required", edited(lambda h: h["columns"].pop("tokens")))
    header_case("h-byte-order-mark", "1", "the header JSON has no byte-order mark", js=b"\xef\xbb\xbf" + dumps(header_json()))
    js = dumps(header_json()).replace(b'"policy_version":3', b'"policy_version":NaN')
    header_case("h-nan", "1", "NaN is not JSON", js=js)
    js = dumps(header_json()).replace(b'"name":"conformance"', b'"name":"\\ud800"')
    header_case("h-unpaired-surrogate", "1", "strings hold no unpaired surrogate escape", js=js)
    js = dumps(header_json()).replace(b'"policy_version":3', b'"policy_version":3,"policy_version":4')
    header_case("h-repeated-key", "1", "a repeated key (which writers must not write) reads as its last value",
                js=js, kind=None, policy_version=4)
    # 2: one id width per file
    header_case("h-u16-ids-for-16-experts", "2", 'topk_ids is "u16" only above 256 experts',
                edited(lambda h: h["columns"].update(topk_ids="u16")))
    # 3: roles a later minor version may add
    header_case("h-role-unknown", "3", "an unknown engine.role reads as other, with a notice",
                edited(lambda h: h["engine"].update(role="critic")), kind=None, notices=["critic"], role="other")
    header_case("h-role-not-a-string", "3", "engine.role is a string", edited(lambda h: h["engine"].update(role=1)))
    # 4: columns of a later minor version
    header_case("h-unknown-columns-key", "4", "a columns key the reader does not know is ignored, with a notice",
                edited(lambda h: h["columns"].update(expert_bias="f32")), kind=None, notices=["expert_bias"])

    def with_ext(ci, cid=40, codec=0, tr=0, raw_len=None, stored=b"extension column", bad_crc=False):
        cs = [Chunk(c.frame()) for c in T.chunks]
        cs[ci].cols.append([cid, codec, tr, len(stored) if raw_len is None else raw_len, stored])
        if bad_crc:
            cs[ci].bad_crc.add(cid)
        return cs
    h = edited(lambda h: h["columns"].update(expert_bias="f32"))
    data = T.assemble(with_ext(2), header=file_header(dumps(h)))
    case("c-extension-column", "4", "an extension column (id >= 32) is skipped, its CRC checked; nothing links it "
         "to a columns key", data, ok(N), salvage=all_ok, notices=["expert_bias", "#40"])
    # 5: what is checked on an extension column
    at2 = T.offset(base_bytes, 2)
    span2 = [at2, at2 + len(T.chunks[2].frame()) + 64]
    lost2 = {"records": N - len(T.touching(2)), "complete": True, "clean": False}
    data = T.assemble(with_ext(2, tr=2))
    case("c-extension-transform-2", "5", "transform 2 is allowed on an extension column: it is never "
         "un-transformed", data, ok(N), salvage=all_ok, notices=["#40"])
    data = T.assemble(with_ext(2, codec=1, raw_len=100, stored=b"not a deflate stream"))
    case("c-extension-invalid-deflate", "5", "an extension column is never inflated: an invalid stream in it is "
         "not an error", data, ok(N), salvage=all_ok, notices=["#40"])
    data = T.assemble(with_ext(2, codec=3))
    case("c-extension-unknown-codec", "5", "every directory entry has a known codec, an extension column's too",
         data, err("corrupt", T.before(2), span2), salvage=lost2)
    data = T.assemble(with_ext(2, codec=1, raw_len=1032 * 16 + 1, stored=bytes(16)))
    case("c-extension-bomb", "5", "the 1032x deflate limit holds for an extension column", data,
         err("limit", T.before(2), span2), salvage=lost2)
    data = T.assemble(with_ext(2, bad_crc=True))
    case("c-extension-crc", "5", "an extension column's CRC is checked", data, err("checksum", T.before(2), span2),
         salvage=lost2)

    # 6: salvage. Garbage between two frames: an unknown magic starts the forward search.
    garbage = bytes(16)
    frames = T.chunks[:2] + [garbage] + T.chunks[2:]
    data = T.assemble(frames)
    at = T.offset(base_bytes, 2)
    spanning = [i for i, (fc, cc, *_r) in enumerate(T.index["records"]) if fc < 2 <= fc + cc - 1]
    case("s-unknown-magic", "6", "an unknown magic is damage (strict: corrupt); salvage searches forward and loses "
         "nothing, since the record open across the garbage continues exactly", data,
         err("corrupt", T.before(2), [at, at + 1]), salvage={"records": N, "complete": True, "clean": False},
         incomplete=err("corrupt", T.before(2), [at, at + 1]))
    assert spanning, "the garbage should fall inside a record"
    # The last chunk's header is damaged: the forward search finds the index.
    cs = [Chunk(c.frame()) for c in T.chunks]
    data = bytearray(T.assemble(cs))
    last = T.offset(base_bytes, nch - 1)
    data[last + 8] ^= 0x01                                   # n_pieces: header CRC fails
    case("s-last-chunk-header-damaged", "6", "a damaged last chunk header does not hide the index: salvage finds "
         "it (complete)", bytes(data), err("checksum", T.before(nch - 1), [last, last + len(T.chunks[-1].frame())]),
         salvage={"records": N - len(T.touching(nch - 1)), "complete": True, "clean": False})
    # A header whose CRC holds but whose payload_len is not the sum of stored_len: searched past, not skipped.
    cs = [Chunk(c.frame()) for c in T.chunks]
    cs[2].payload_len = sum(len(c[4]) for c in cs[2].cols) + 1000
    data = T.assemble(cs)
    case("s-header-payload-len-wrong", "6", "a sound CRC but payload_len != sum of stored_len: corrupt; salvage "
         "searches forward instead of trusting the length", data, err("corrupt", T.before(2), span2),
         salvage=lost2)
    # 7: every corrupt or limit error in a chunk loses the chunk whole, not only a column CRC.
    cs = [Chunk(c.frame()) for c in T.chunks]
    packed = bytearray(cs[3].raw(F.ID_SLOTS))
    assert cs[3].col(F.ID_SLOTS)[2] == 2                    # nibble-packed
    i = next(i for i in range(2 * len(packed)) if (packed[i // 2] >> (4 * (i % 2))) & 15 < 2)
    packed[i // 2] ^= (((packed[i // 2] >> (4 * (i % 2))) & 15) ^ 5) << (4 * (i % 2))   # a reuse code becomes 5:
    cs[3].set_raw(F.ID_SLOTS, bytes(packed))                # invalid with top_k = 2, same count of new ids
    at3 = T.offset(base_bytes, 3)
    span3 = [at3, at3 + len(T.chunks[3].frame()) + 64]
    lost3 = {"records": N - len(T.touching(3)), "complete": True, "clean": False}
    case("c-id-coding-invalid", "7", "an invalid id coding is corrupt; salvage loses the chunk whole",
         T.assemble(cs), err("corrupt", T.before(3), span3), salvage=lost3)
    cs = [Chunk(c.frame()) for c in T.chunks]
    tok = cs[3].raw(F.TOKENS)
    cs[3].set_raw(F.TOKENS, tok + bytes(4))
    case("c-tokens-raw-len-wrong", "7", "a raw_len other than the content implies is corrupt; salvage loses the "
         "chunk whole", T.assemble(cs), err("corrupt", T.before(3), span3), salvage=lost3)
    # A record whose pieces hold fewer rows than its RECORDS entry declares: found at its last piece, in a
    # later chunk, which is then lost whole with the record (counted as lost, not dropped silently).
    r4 = T.index["records"][4]
    first, last = r4[0], r4[0] + r4[1] - 1
    assert r4[1] >= 2
    cs = [Chunk(c.frame()) for c in T.chunks]
    rb = bytearray(cs[first].raw(F.RECORDS))
    p = 0
    while True:
        ul = struct.unpack_from("<I", rb, p)[0]
        uid = rb[p + 4:p + 4 + ul].decode()
        q = p + 4 + ul
        gl = struct.unpack_from("<I", rb, q)[0]
        q += 4 + (0 if gl == 0xFFFFFFFF else gl)
        if uid == "r4":
            break
        p = q + 33 + struct.unpack_from("<I", rb, q + 29)[0]
    struct.pack_into("<I", rb, q + 12, struct.unpack_from("<I", rb, q + 12)[0] + 1)     # n_rows + 1
    cs[first].set_raw(F.RECORDS, bytes(rb))
    atl = T.offset(base_bytes, last)
    case("c-record-rows-short", "7", "a record whose pieces end short of its n_rows is corrupt where its last piece "
         "is; salvage loses that chunk and the record", T.assemble(cs),
         err("corrupt", T.before(last), [atl, atl + len(T.chunks[last].frame())]),
         salvage={"records": N - len(set(T.touching(last)) | {4}), "complete": True, "clean": False})
    # 8: bytes after the end of a deflate stream
    cs = [Chunk(c.frame()) for c in T.chunks]
    c = next(c for c in cs[3].cols if c[1] == 1)
    c[4] = c[4] + b"\x00\x00"
    case("c-deflate-trailing-bytes", "8", "bytes after the deflate stream's end, within stored_len, are corrupt",
         T.assemble(cs), err("corrupt", T.before(3), span3), salvage=lost3)
    # 9: a piece with no rows that is not a whole rowless record
    recs = records()
    buf = io.BytesIO()
    w = rtrace.Writer(buf, model=MODEL, engine=ENGINE, topk_weights_dtype="bf16", router_logits_dtype="f16",
                      logprobs=True, policy_version=3,
                      created=CREATED, chunk_bytes=1 << 20, threads=False)
    for r in recs[:3]:
        w.add(**r)
    r0, r1, r2 = (p[5] for p in w._pending)
    w._pending = [(0, True, True, 0, r0.n_rows, r0), (1, True, False, 0, 0, r1)]
    w.flush()
    w._pending = [(1, False, True, 0, r1.n_rows, r1), (2, True, True, 0, 0, r2)]
    w.flush()
    w.close()
    zb = buf.getvalue()
    zat = rtrace.Reader(zb).index["chunks"][0][0]
    case("c-zero-row-piece", "9", "a piece with no rows is only the single piece of a record with no rows", zb,
         err("corrupt", 0, [zat, zat + 4096]), salvage={"records": 1, "complete": True, "clean": False})
    # 10: reward bytes without the flag; logprobs without tokens
    cs = [Chunk(c.frame()) for c in T.chunks]
    rb = bytearray(cs[0].raw(F.RECORDS))
    ul = struct.unpack_from("<I", rb, 0)[0]
    p = 4 + ul
    gl = struct.unpack_from("<I", rb, p)[0]
    p += 4 + (0 if gl == 0xFFFFFFFF else gl) + 20
    assert rb[p] & 1 == 0, "r0 has no reward"
    struct.pack_into("<d", rb, p + 1, 0.5)
    cs[0].set_raw(F.RECORDS, bytes(rb))
    at0 = T.offset(base_bytes, 0)
    case("c-reward-without-flag", "10", "reward bytes are zero when the has-reward flag is clear", T.assemble(cs),
         err("corrupt", 0, [at0, at0 + len(T.chunks[0].frame()) + 64]),
         salvage={"records": N - len(T.touching(0)), "complete": True, "clean": False})
    recs = records()
    for r in recs:
        r["tokens"], r["start"], r["prompt_len"] = [], 0, 0
    data = write(recs=recs)
    case("c-logprobs-without-tokens", "10", "a record without tokens may carry logprobs (of tokens the trace does "
         "not hold)", data, ok(N), salvage=all_ok)
    # 11: the index against the chunks
    whole = T.assemble()
    ioff = struct.unpack_from("<Q", whole, len(whole) - 32)[0]

    def wrong_tokens(chunks, recs, totals):
        recs[3][3] += 1
    data = T.assemble(index_edit=wrong_tokens)
    case("i-index-disagrees", "11", "the chunks win: a full pass reports the index that disagrees (corrupt, at the "
         "index, after every record); a lookup through it fails", data, err("corrupt", N, [ioff, ioff + 1]),
         salvage={"records": N, "complete": True, "clean": False},
         lookup={"uid": "r3", "error": "corrupt"})

    def shifted(chunks, recs, totals):
        chunks[1][0] += 1
    data = T.assemble(index_edit=shifted)
    case("i-index-does-not-tile", "11", "an index whose chunks do not tile the data is unusable: the file reads by "
         "scan and the full pass reports it", data, err("corrupt", N, [ioff, ioff + 1]),
         salvage={"records": N, "complete": True, "clean": False})
    data = T.assemble(tail=b"\0")
    end = len(data) - 1
    case("i-bytes-after-trailer", "11", "bytes after the trailer are corrupt", data, err("corrupt", N, [end, end + 1]),
         salvage={"records": N, "complete": False, "clean": False})
    fr = bytearray(T.assemble())
    struct.pack_into("<I", fr, ioff + 4, 1)                 # index flags 1, CRC recomputed
    n = struct.unpack_from("<Q", fr, ioff + 8)[0]
    struct.pack_into("<I", fr, ioff + 16 + n, F.crc32(bytes(fr[ioff:ioff + 16 + n])))
    case("i-index-flags", "11", "index flags other than 0 make the index damaged", bytes(fr),
         err("corrupt", N, [ioff, ioff + 16]), salvage={"records": N, "complete": False, "clean": False})
    # 12: the order of checks
    cs = [Chunk(c.frame()) for c in T.chunks]
    cs[3].set_raw(F.TOKENS, cs[3].raw(F.TOKENS) + bytes(4))
    cs[3].bad_crc.add(F.WEIGHTS)
    case("o-crc-before-content", "12", "every column CRC (step 8) is checked before any column is decoded (step 9)",
         T.assemble(cs), err("checksum", T.before(3), span3), salvage=lost3)
    cs = [Chunk(c.frame()) for c in T.chunks]
    cs[3].set_raw(F.ID_NEW, cs[3].raw(F.ID_NEW) + bytes(1))
    case("o-id-new-length", "12", "ID_NEW's raw_len is checked against the new codes of the decoded ID_SLOTS before "
         "it is inflated", T.assemble(cs), err("corrupt", T.before(3), span3), salvage=lost3)
    cs = [Chunk(c.frame()) for c in T.chunks]
    cs[3].set_raw(F.RECORDS, cs[3].raw(F.RECORDS) + b"\0")
    case("o-records-trailing-bytes", "12", "RECORDS has no length known in advance: its entries fill it exactly",
         T.assemble(cs), err("corrupt", T.before(3), span3), salvage=lost3)
    cs = [Chunk(c.frame()) for c in T.chunks]
    cs[3].R = 1 << 24                # 2^24 rows of 80 decoded bytes: over 1 GiB; the pieces disagree too
    cs[3].bad_crc.add(F.WEIGHTS)
    case("o-limit-before-crc", "12", "the decoded-size limit (step 7) comes before the column CRCs and the "
         "pieces", T.assemble(cs), err("limit", T.before(3), span3), salvage=lost3)
    # 13: versioning
    header_case("v-requires-unknown", "13", "a file that requires a feature the reader lacks is refused as "
                "unsupportedVersion, before the rest of the header", edited(lambda h: h.update(
                    requires=["codec-zstd"], columns={"topk_ids": "u4"})), kind="unsupportedVersion")
    header_case("v-requires-empty", "13", "an empty requires list asks for nothing",
                edited(lambda h: h.update(requires=[])), kind=None)
    header_case("v-requires-not-a-list", "13", "requires is an array of strings",
                edited(lambda h: h.update(requires="codec-zstd")))
    h = header_json()
    data = T.assemble(header=file_header(dumps(h), minor=7))
    case("v-minor-newer", "13", "a reader accepts any minor version", data, ok(N), salvage=all_ok)
    data = T.assemble(header=file_header(dumps(h), major=2))
    case("v-major-2", "13", "a reader rejects a major version it does not know", data,
         err("unsupportedVersion", 0, [8, 9]))
    # a truncated chunk is lost whole, even when its id columns are there
    full = T.assemble(no_index=True)
    c0 = T.chunks[0]
    cut = T.offset(base_bytes, 0) + len(c0.frame()) - 1
    assert any(c[0] == F.ID_NEW for c in c0.cols)
    case("t-cut-inside-first-chunk", "truncated", "a chunk cut short is lost whole, even with its id columns "
         "present and intact", full[:cut], err("truncated", 0, [T.offset(base_bytes, 0), cut + 1]),
         incomplete=ok(0), salvage={"records": 0, "complete": False, "clean": False})
    cut = T.offset(base_bytes, 3)
    case("t-cut-between-chunks", "truncated", "a file cut between frames: strict says truncated; "
         "incomplete-tolerant and salvage read the records of the whole chunks", full[:cut],
         err("truncated", T.before(3), [cut, cut + 1]), incomplete=ok(T.before(3)),
         salvage={"records": T.before(3), "complete": False, "clean": False})
    zeros = full[:cut] + bytes(4096)
    case("t-zero-tail", "6", "zeros where a file ends (a crashed file system) are damage, not an end of data: "
         "incomplete-tolerant reading fails too", zeros, err("corrupt", T.before(3), [cut, cut + 1]),
         incomplete=err("corrupt", T.before(3), [cut, cut + 1]),
         salvage={"records": T.before(3), "complete": False, "clean": False})

    with open(os.path.join(HERE, "cases.json"), "w") as f:
        json.dump({"format": "rtrace-conformance", "version": "1.0", "cases": CASES}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    for name in os.listdir(HERE):
        if name.endswith(".rtrace"):
            os.remove(os.path.join(HERE, name))
    make()
    print(f"{len(CASES)} cases written to {HERE}")
