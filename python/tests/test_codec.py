"""The vectorised id coding, byte-shuffle and threaded paths against simple reference code."""
import io

import numpy as np
import pytest

import rtrace
from rtrace import _format as F
from rtrace.reader import decode_ids
from rtrace.writer import encode_ids

# every test reads with both decoders: the accelerator rtrace._native and numpy (conftest.decoder)
pytestmark = pytest.mark.usefixtures("decoder")


def ref_encode(ids_lr, present, piece_of_row, width):
    """spec/format.md §6.2, literally."""
    L, R, k = ids_lr.shape
    slots, new = [], []
    for l in range(L):
        prev, prev_piece = None, None
        for r in range(R):
            if piece_of_row[r] != prev_piece:
                prev, prev_piece = None, piece_of_row[r]
            if not present[l, r]:
                continue
            row = [int(x) for x in ids_lr[l, r]]
            for e in row:
                if prev is not None and e in prev:
                    slots.append(prev.index(e))
                else:
                    slots.append(0xFF)
                    new.append(e)
            prev = row
    dt = np.uint8 if width == 1 else np.dtype("<u2")
    return bytes(slots), np.array(new, dtype=dt).tobytes()


def ref_decode(slots, new, valid, k):
    Q = len(valid)
    out = np.zeros((Q, k), dtype=np.int32)
    it = iter(new.tolist())
    for q in range(Q):
        for j in range(k):
            m = slots[q, j]
            out[q, j] = next(it) if m == 0xFF else out[q - 1, m]
    return out


def random_case(rng, L, R, E, k, p_missing, n_pieces, dup=False):
    ids = np.empty((L, R, k), dtype=np.int32)
    for l in range(L):
        prev = rng.choice(E, k, replace=False)
        for r in range(R):
            keep = rng.random(k) < 0.6
            row = np.where(keep, rng.permutation(prev), rng.integers(0, E, k))
            if dup:                      # duplicates within a row are legal for the coding
                row[rng.random(k) < 0.2] = row[0]
            ids[l, r] = row
            prev = row
    present = rng.random((L, R)) >= p_missing
    cuts = np.sort(rng.choice(np.arange(1, R), min(n_pieces - 1, R - 1), replace=False)) if R > 1 else []
    piece_of_row = np.zeros(R, dtype=np.int64)
    for c in cuts:
        piece_of_row[c:] += 1
    return ids, present, piece_of_row


@pytest.mark.parametrize("L,R,E,k,p_missing,n_pieces,dup", [
    (3, 50, 16, 4, 0.0, 1, False),
    (3, 50, 16, 4, 0.3, 4, False),
    (5, 200, 128, 8, 0.0, 7, False),
    (5, 200, 128, 8, 0.1, 3, True),
    (2, 40, 6, 6, 0.5, 2, True),
    (4, 60, 300, 3, 0.2, 5, False),       # u16 ids
    (2, 30, 4, 1, 0.2, 3, False),         # top_k = 1
    (2, 1, 8, 2, 0.0, 1, False),
    (2, 9, 8, 2, 1.0, 2, False),          # everything missing
])
def test_id_coding_matches_reference(L, R, E, k, p_missing, n_pieces, dup):
    rng = np.random.default_rng(L * 1000 + R + k)
    ids, present, por = random_case(rng, L, R, E, k, p_missing, n_pieces, dup)
    width = 1 if E <= 256 else 2
    slots, new = encode_ids(ids, present, por, width)
    rs, rn = ref_encode(ids, present, por, width)
    assert slots == rs and new == rn
    # an [R, L, k] array transposed to layer-major (the writer's view) codes the same
    assert encode_ids(np.ascontiguousarray(ids.transpose(1, 0, 2)).transpose(1, 0, 2), present, por, width) \
        == (slots, new)
    valid, li, ri = F.prev_valid(present, por)
    Q = int(present.sum())
    s = np.frombuffer(slots, dtype=np.uint8).reshape(Q, k)
    n = np.frombuffer(new, dtype=np.uint8 if width == 1 else "<u2")
    got = decode_ids(s, n, valid, k)
    assert np.array_equal(got, ids[present])
    assert np.array_equal(got, ref_decode(s, n, valid, k))


def test_long_reuse_chains():
    # one expert set kept for every row: chains as long as the piece (pointer doubling depth)
    L, R, k = 2, 5000, 8
    ids = np.broadcast_to(np.arange(k, dtype=np.int32), (L, R, k)).copy()
    ids[:, ::2] = ids[:, ::2, ::-1]       # slot order changes, the set does not
    present = np.ones((L, R), dtype=bool)
    por = np.zeros(R, dtype=np.int64)
    slots, new = encode_ids(ids, present, por, 1)
    assert len(new) == L * k
    valid, _, _ = F.prev_valid(present, por)
    got = decode_ids(np.frombuffer(slots, np.uint8).reshape(-1, k), np.frombuffer(new, np.uint8), valid, k)
    assert np.array_equal(got.reshape(L, R, k), ids)


def test_decode_ids_rejects_bad_coding():
    k = 4
    valid = np.array([False, True, True])
    ok = np.array([[255, 255, 255, 255], [0, 1, 255, 3], [2, 0, 1, 3]], dtype=np.uint8)
    new = np.array([5, 6, 7, 8, 9], dtype=np.uint8)
    assert decode_ids(ok, new, valid, k).tolist() == [[5, 6, 7, 8], [5, 6, 9, 8], [9, 5, 6, 8]]
    bad = ok.copy(); bad[1, 0] = 4                       # neither 0xFF nor < top_k
    with pytest.raises(F.FormatError, match="neither 0xFF"):
        decode_ids(bad, new, valid, k)
    bad = ok.copy(); bad[0, 2] = 1                       # refers to a row that does not exist
    with pytest.raises(F.FormatError, match="does not exist"):
        decode_ids(bad, np.array([5, 6, 8, 9], np.uint8), valid, k)
    with pytest.raises(F.FormatError, match="ID_NEW holds"):
        decode_ids(ok, new[:4], valid, k)


@pytest.mark.parametrize("w", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("n", [0, 1, 5, 4097])
def test_shuffle_matches_reference(w, n):
    raw = np.random.default_rng(w * 10 + n).integers(0, 256, n * w, dtype=np.uint8).tobytes()
    ref = np.frombuffer(raw, np.uint8).reshape(-1, w).T.tobytes() if w > 1 and n else raw
    assert F.shuffle(raw, w) == ref
    assert F.unshuffle(ref, w) == raw
    if w in (2, 4, 8):
        dt = np.dtype(f"<u{w}")
        assert F.shuffle_array(np.frombuffer(raw, dt)) == ref
        assert F.unshuffle_array(ref, dt).tobytes() == raw


def _write(path_or_file, rng, n_rec=9, threads=True, missing=True):
    model = dict(num_layers=4, num_experts=64, top_k=4, name="m")
    recs = []
    with rtrace.Writer(path_or_file, model=model, topk_weights_dtype="bf16", router_logits_dtype="f32",
                       chunk_bytes=20000, threads=threads, created="2026-01-01T00:00:00Z") as w:
        for i in range(n_rec):
            n = int(rng.integers(0, 300))
            ids = np.stack([rng.permutation(64)[:4] for _ in range(n * 4)]).reshape(n, 4, 4).astype(np.int32)
            if missing and n:
                ids[rng.random((n, 4)) < 0.2] = -1
            wt = rng.integers(0, 1 << 16, (n, 4, 4)).astype(np.uint16)
            lg = rng.standard_normal((n, 4, 64)).astype(np.float32)
            wt[ids[..., 0] < 0] = 0
            lg[ids[..., 0] < 0] = 0
            w.add(f"r{i}", np.arange(n + 1), ids, wt, lg)
            recs.append((ids, wt, lg))
    return recs


@pytest.mark.parametrize("missing", [False, True])
def test_threads_do_not_change_bytes_or_records(tmp_path, missing):
    a, b = tmp_path / "a.rtrace", tmp_path / "b.rtrace"
    recs = _write(a, np.random.default_rng(3), threads=True, missing=missing)
    _write(b, np.random.default_rng(3), threads=False, missing=missing)
    assert a.read_bytes() == b.read_bytes()
    assert len(rtrace.Reader(a).index["chunks"]) > 5
    for threads in (True, False):
        got = list(rtrace.Reader(a, threads=threads))
        assert len(got) == len(recs)
        for r, (ids, wt, lg) in zip(got, recs):
            assert np.array_equal(r.topk_ids, ids)
            assert r.topk_weights.dtype == np.uint16 and np.array_equal(r.topk_weights, wt)
            assert r.router_logits.tobytes() == lg.tobytes()
    # a pipe-like (non-seekable) source
    class Pipe(io.RawIOBase):
        def __init__(self, data):
            self.b = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, buf):
            n = self.b.readinto(buf)
            return n

    got = list(rtrace.Reader(io.BufferedReader(Pipe(a.read_bytes()))))
    assert [r.uid for r in got] == [f"r{i}" for i in range(len(recs))]


def test_error_in_a_later_chunk_comes_after_earlier_records(tmp_path):
    p = tmp_path / "a.rtrace"
    _write(p, np.random.default_rng(4))
    r = rtrace.Reader(p)
    chunks = r.index["chunks"]
    assert len(chunks) > 4
    data = bytearray(p.read_bytes())
    off, flen = chunks[3][0], chunks[3][1]
    data[off + flen - 1] ^= 0xFF                        # last payload byte of chunk 3: column CRC fails
    bad = tmp_path / "bad.rtrace"
    bad.write_bytes(bytes(data))
    first_bad = chunks[3][2]
    got = []
    with pytest.raises(F.FormatError, match="CRC"):
        for rec in rtrace.Reader(bad):
            got.append(rec.ordinal)
    # every record that ends before chunk 3 was delivered before the error
    assert got == list(range(len(got))) and len(got) >= first_bad - 1
    good = [rec.ordinal for rec in rtrace.Reader(p)]
    assert got == good[:len(got)]


def test_missing_column_without_bits_set(tmp_path):
    """Another writer may store a MISSING column of zeros; it reads as all present."""
    import struct
    p = tmp_path / "a.rtrace"
    rng = np.random.default_rng(5)
    model = dict(num_layers=3, num_experts=16, top_k=2, name="m")
    ids = np.stack([rng.permutation(16)[:2] for _ in range(30)]).reshape(10, 3, 2).astype(np.int32)
    wt = rng.integers(0, 1 << 16, (10, 3, 2)).astype(np.uint16)
    with rtrace.Writer(p, model=model, topk_weights_dtype="bf16", compress=False) as w:
        w.add("a", np.arange(11), ids, wt)
    data = bytearray(p.read_bytes())
    r = rtrace.Reader(p)
    off = r.index["chunks"][0][0]
    C = struct.unpack_from("<I", data, off + 4)[0]
    # rewrite the chunk with a MISSING column of zero bits appended
    head = bytes(data[off:off + 24 + 16 * C])
    payload_len = struct.unpack_from("<Q", head, 16)[0]
    payload = bytes(data[off + 28 + 16 * C: off + 28 + 16 * C + payload_len])
    miss = bytes((3 * 10 + 7) // 8)
    entry = struct.pack("<HBBIII", F.MISSING, 0, 0, len(miss), len(miss), F.crc32(miss))
    h = bytearray(head[:24]) + head[24:] + entry
    struct.pack_into("<IIIQ", h, 4, C + 1, *struct.unpack_from("<II", head, 8), payload_len + len(miss))
    frame = bytes(h) + struct.pack("<I", F.crc32(bytes(h))) + payload + miss
    q = tmp_path / "b.rtrace"
    hdr_end = off
    q.write_bytes(bytes(data[:hdr_end]) + frame)      # no index: read as incomplete
    with pytest.warns(UserWarning, match="without index and trailer"):
        got = list(rtrace.Reader(q, allow_incomplete=True))
    assert len(got) == 1 and np.array_equal(got[0].topk_ids, ids) and np.array_equal(got[0].topk_weights, wt)


@pytest.mark.parametrize("n", [0, 1, 2, 31, 32, 33, 1001])
def test_nibble_pack_round_trip(n):
    """Transform 2 (§6.3): code i in the low nibble of byte i/2 when even, high when odd; 0xFF as 15."""
    rng = np.random.default_rng(n)
    codes = np.where(rng.random(n) < 0.3, F.NEW_MARKER, rng.integers(0, 15, n)).astype(np.uint8)
    packed = F.nibble_pack(codes)
    assert len(packed) == (n + 1) // 2
    p = np.frombuffer(packed, dtype=np.uint8)
    nib = np.stack([p & 15, p >> 4], axis=1).reshape(-1)[:n]
    assert np.array_equal(nib, np.where(codes == F.NEW_MARKER, 15, codes))
    assert np.array_equal(F.nibble_unpack(packed, n), codes)


def test_nibble_unpack_rejects_a_stray_high_nibble():
    assert F.nibble_unpack(bytes([0x10]), 1) is None
    assert list(F.nibble_unpack(bytes([0x1F]), 2)) == [0xFF, 1]


def test_plane_by_plane_deflate_is_one_stream():
    """A shuffled column deflates plane by plane into one ordinary deflate stream; an incompressible
    plane is stored, a compressible one coded (§6.4)."""
    import zlib
    rng = np.random.default_rng(9)
    n = 50_000
    rand = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    skew = np.where(rng.random(n) < 0.25, rng.integers(0, 256, n), 0x3F).astype(np.uint8).tobytes()
    for huff in (True, 1, 3):
        z = F.deflate(skew + rand + skew, huff, planes=3)
        assert zlib.decompress(z, -15) == skew + rand + skew
        assert n < len(z) < 2 * n
    assert F.byte_entropy(rand) > 7.84 > F.byte_entropy(skew)


@pytest.mark.parametrize("k,nibbles", [(4, True), (4, False), (16, True)])
def test_both_slot_layouts_read_back(tmp_path, k, nibbles):
    """Nibble-packed ID_SLOTS, the one-byte-per-code layout of older files, and top_k > 15 (no packing)."""
    import struct
    p = tmp_path / "a.rtrace"
    rng = np.random.default_rng(k)
    E = 40
    recs = []
    with rtrace.Writer(p, model=dict(num_layers=2, num_experts=E, top_k=k), engine=dict(name="t", role="rollout"),
                       chunk_bytes=4000) as w:
        w._nibble_slots = nibbles
        for i in range(6):
            n = int(rng.integers(1, 60))
            ids = np.argsort(rng.random((n, 2, E)), axis=-1)[..., :k].astype(np.int32)
            w.add(f"s{i}", np.arange(n + 1), ids)
            recs.append(ids)
    got = list(rtrace.Reader(p))
    assert [r.uid for r in got] == [f"s{i}" for i in range(6)]
    for r, ids in zip(got, recs):
        assert np.array_equal(r.topk_ids, ids)
    data = p.read_bytes()
    off = rtrace.Reader(p).index["chunks"][0][0]
    C = struct.unpack_from("<I", data, off + 4)[0]
    tr = {struct.unpack_from("<H", data, off + 24 + 16 * i)[0]: data[off + 24 + 16 * i + 3] for i in range(C)}
    assert tr[F.ID_SLOTS] == (2 if nibbles and k <= 15 else 0)


def test_transform_two_on_another_column_is_rejected(tmp_path):
    import struct
    import zlib
    p = tmp_path / "a.rtrace"
    with rtrace.Writer(p, model=dict(num_layers=2, num_experts=16, top_k=2), engine=dict(name="t", role="rollout")) as w:
        w.add("s0", np.arange(5), np.tile(np.array([[0, 1], [2, 3]], np.int32), (4, 1, 1)))
    data = bytearray(p.read_bytes())
    off = rtrace.Reader(p).index["chunks"][0][0]
    C = struct.unpack_from("<I", data, off + 4)[0]
    i = next(i for i in range(C) if struct.unpack_from("<H", data, off + 24 + 16 * i)[0] == F.TOKENS)
    data[off + 24 + 16 * i + 3] = 2
    crc_at = off + 24 + 16 * C
    struct.pack_into("<I", data, crc_at, zlib.crc32(bytes(data[off:crc_at])))
    bad = tmp_path / "bad.rtrace"
    bad.write_bytes(bytes(data))
    with pytest.raises(F.FormatError, match="transform 2"):
        list(rtrace.Reader(bad))
