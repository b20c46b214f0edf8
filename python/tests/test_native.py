"""The compiled accelerator rtrace._native against the numpy decoder: the same ids, the same errors
and the same records; `pip install` builds it and falls back to numpy without a C compiler."""
import glob
import os
import shutil
import struct
import subprocess
import sys
import sysconfig
import zlib

import numpy as np
import pytest

import rtrace
from rtrace import _format as F
from rtrace import reader as RD
from rtrace.writer import encode_ids
from conftest import REPO, native_module
from test_codec import random_case

PYDIR = os.path.join(REPO, "python")


@pytest.fixture(scope="module")
def native():
    return native_module()


@pytest.fixture(params=["simd", "scalar"])
def kernel(request, native):
    """Runs a test with the SSSE3 row kernel of decode_chunk_ids (top_k <= 8; skipped where the CPU or
    compiler has none) and with the scalar code."""
    was = native.use_simd()
    if native.use_simd(request.param == "simd") != (request.param == "simd"):
        pytest.skip("platform: no SSSE3 kernel on this machine (x86-64 only)")
    yield request.param
    native.use_simd(was)


# codings --------------------------------------------------------------------------------------------
def coding(seed):
    """A random valid coding (§6.2) of a random chunk: k 1..20 (1..15 nibble-packable), u8 or u16 ids,
    missing rows, pieces, duplicate ids. Returns a dict of what the decoders take and the ids."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 21))
    E = int(rng.choice([max(k, 8), 64, 256, 300, 40000])) if k <= 8 else int(rng.choice([k, 256, 5000]))
    L, R = int(rng.integers(1, 6)), int(rng.integers(1, 70))
    p_missing = float(rng.choice([0.0, 0.0, 0.1, 0.5, 1.0]))
    ids, present, por = random_case(rng, L, R, E, k, p_missing, int(rng.integers(1, 6)), dup=bool(rng.random() < 0.3))
    width = 1 if E <= 256 else 2
    slots, new = encode_ids(ids, present, por, width)
    Q = int(present.sum())
    piece_rows = np.bincount(por).astype(np.int64)
    empty = rng.integers(0, len(piece_rows) + 1, int(rng.integers(0, 3)))   # pieces of records without rows
    return dict(k=k, L=L, R=R, width=width, ids=ids, present=present, Q=Q,
                piece_rows=np.insert(piece_rows, empty, 0),
                slots=np.frombuffer(slots, np.uint8).reshape(Q, k),
                new=np.frombuffer(new, np.uint8 if width == 1 else "<u2"),
                valid=F.prev_valid(present, por)[0])


def numpy_result(c, slots=None, new=None):
    """decode_ids_numpy's ids or its error message."""
    try:
        return RD.decode_ids_numpy(c["slots"] if slots is None else slots, c["new"] if new is None else new,
                                   c["valid"], c["k"], 7)
    except rtrace.FormatError as e:
        return str(e)


def native_result(c, slots=None, new=None, packed=False):
    """decode_ids_native's ids or its error message; slots packed (§6.3) first when ``packed``."""
    s = c["slots"] if slots is None else slots
    try:
        return RD.decode_ids_native(F.nibble_pack(s) if packed else s, c["new"] if new is None else new,
                                    c["valid"], c["k"], 7, packed=packed)
    except rtrace.FormatError as e:
        return str(e)


def chunk_result(native, c, slots=None, new=None, packed=False):
    """decode_chunk_ids's [Q, k] ids of the present (layer, row)s (after checking that missing ones
    are -1) or its error message."""
    s = c["slots"] if slots is None else slots
    n = c["new"] if new is None else new
    L, R, k = c["L"], c["R"], c["k"]
    out = np.full((R, L, k), 12345, dtype=np.int32)
    present = None if c["present"].all() else c["present"]
    err = native.decode_chunk_ids(F.nibble_pack(s) if packed else s.tobytes(), packed, n.tobytes(), c["width"], k,
                                  L, R, c["piece_rows"], present, out)
    if err is not None:
        return str(RD._native_error(err, k, len(n), 7))
    lr = out.transpose(1, 0, 2)
    assert (lr[~c["present"]] == -1).all()
    return lr[c["present"]]


def same(a, b):
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return a.dtype == b.dtype == np.int32 and np.array_equal(a, b)


SEEDS = range(150)


@pytest.mark.parametrize("seed", SEEDS)
def test_valid_codings_decode_alike(native, kernel, seed):
    c = coding(seed)
    want = c["ids"][c["present"]]                       # [Q, k] in coding order
    assert same(numpy_result(c), want)
    assert same(native_result(c), want)
    assert same(chunk_result(native, c), want)
    n_markers = int((c["slots"] == F.NEW_MARKER).sum())
    assert native.count_new(c["slots"].tobytes(), False, c["Q"] * c["k"]) == n_markers
    if c["k"] <= F.NIBBLE_MAX_TOP_K:
        assert same(native_result(c, packed=True), want)
        assert same(chunk_result(native, c, packed=True), want)
        assert native.count_new(F.nibble_pack(c["slots"]), True, c["Q"] * c["k"]) == n_markers


@pytest.mark.parametrize("k,E,p_missing", [(8, 128, 0.0), (8, 384, 0.05), (6, 64, 0.2), (2, 8, 0.0)])
def test_large_chunks_decode_alike(native, kernel, k, E, p_missing):
    """Chunks of many blocks of rows (the row-order decoder works in blocks of 64) and many pieces."""
    rng = np.random.default_rng(k * 1000 + E)
    L, R = 6, 700
    ids, present, por = random_case(rng, L, R, E, k, p_missing, 9)
    width = 1 if E <= 256 else 2
    slots, new = encode_ids(ids, present, por, width)
    out = np.empty((R, L, k), np.int32)
    for packed in (False, True):
        err = native.decode_chunk_ids(F.nibble_pack(np.frombuffer(slots, np.uint8)) if packed else slots, packed, new,
                                      width, k, L, R, np.bincount(por).astype(np.int64),
                                      None if present.all() else present, out)
        assert err is None
        assert np.array_equal(out, np.where(present.T[:, :, None], ids.transpose(1, 0, 2), -1))


def corruptions(c, rng):
    """(slots, new) pairs with invalid codings: bad bytes, reuse codes without a previous row, ID_NEW
    too short or too long, and several at once (which error comes first matters)."""
    k, Q = c["k"], c["Q"]
    out = []
    flat = c["slots"].reshape(-1)
    no_prev = np.flatnonzero(~c["valid"])
    for _ in range(6):
        s = flat.copy()
        kinds = rng.choice(["bad", "noprev", "short", "long"], size=int(rng.integers(1, 4)))
        new = c["new"]
        for kind in kinds:
            if kind == "bad" and k < 15 and Q:
                s[rng.integers(0, Q * k)] = rng.integers(k, 15)  # a bad code a nibble can hold
            elif kind == "bad" and Q and k >= 15:
                s[rng.integers(0, Q * k)] = rng.integers(k, 255)
            elif kind == "noprev" and len(no_prev):
                i = no_prev[rng.integers(0, len(no_prev))] * k + rng.integers(0, k)
                s[i] = rng.integers(0, k)
                reuse = np.flatnonzero(s[i:] != F.NEW_MARKER)[1:] + i
                if len(reuse) and rng.random() < 0.7:       # keep the number of markers (and so ID_NEW's length)
                    s[reuse[rng.integers(0, len(reuse))]] = F.NEW_MARKER
            elif kind == "short" and len(new):
                new = new[:-int(rng.integers(1, len(new) + 1))]
            elif kind == "long":
                new = np.concatenate([new, new[:1] if len(new) else np.zeros(1, new.dtype)])
        out.append((s.reshape(Q, k), np.ascontiguousarray(new)))
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_invalid_codings_fail_alike(native, kernel, seed):
    c = coding(seed)
    rng = np.random.default_rng(seed + 1000)
    for slots, new in corruptions(c, rng):
        want = numpy_result(c, slots, new)
        if not isinstance(want, str):
            continue                                    # a corruption that happened to stay valid
        assert native_result(c, slots, new) == want
        assert chunk_result(native, c, slots, new) == want
        if c["k"] < F.NIBBLE_MAX_TOP_K:
            assert native_result(c, slots, new, packed=True) == want
            assert chunk_result(native, c, slots, new, packed=True) == want


def test_error_order_bad_byte_after_missing_previous(native):
    """A reuse code without a previous row at entry 0 and a bad byte later: the bad byte is reported
    (the numpy decoder checks bytes first)."""
    c = dict(k=2, valid=np.array([False, True, True]), width=1)
    slots = np.array([[0, 255], [255, 0], [1, 7]], np.uint8)
    new = np.array([3, 4], np.uint8)
    want = "corrupt at byte 7: ID_SLOTS byte 7 at entry 5 is neither 0xFF nor < top_k=2"
    assert numpy_result(c, slots, new) == want == native_result(c, slots, new)
    slots[2, 1] = 1
    want = "corrupt at byte 7: ID_SLOTS entry 0 refers to a previous row that does not exist"
    assert numpy_result(c, slots, new) == want == native_result(c, slots, new)


def test_stray_nibble_is_an_error_of_the_native_decoders(native):
    """An odd number of packed codes whose unused high nibble is not 0 (§6.3): both entry points say so,
    in the reader's words."""
    c = dict(k=3, valid=np.array([False]), width=1)
    packed = bytes([0xFF, 0x1F])                          # codes 15, 15, 15 and a stray 1
    want = "corrupt at byte 7: " + RD._STRAY_NIBBLE
    try:
        RD.decode_ids_native(packed, np.array([1, 2, 3], np.uint8), c["valid"], 3, 7, packed=True)
    except rtrace.FormatError as e:
        assert str(e) == want
    else:
        raise AssertionError("a stray nibble decoded")
    out = np.empty((1, 1, 3), np.int32)
    err = native.decode_chunk_ids(packed, True, b"\x01\x02\x03", 1, 3, 1, 1, np.array([1], np.int64), None, out)
    assert err == (native.ERR_STRAY_NIBBLE, 3, 1)
    assert native.decode_chunk_ids(bytes([0xFF, 0x0F]), True, b"\x01\x02\x03", 1, 3, 1, 1, np.array([1], np.int64),
                                   None, out) is None and out.tolist() == [[[1, 2, 3]]]


def test_long_chains_and_u16_extremes(native, kernel):
    """Ids up to 65534 through reuse chains as long as the chunk."""
    L, R, k = 3, 4000, 8
    rng = np.random.default_rng(1)
    ids = np.broadcast_to(rng.choice(65535, k, replace=False).astype(np.int32), (L, R, k)).copy()
    ids[:, 1::3] = ids[:, 1::3, ::-1]
    present = np.ones((L, R), bool)
    por = np.zeros(R, np.int64)
    slots, new = encode_ids(ids, present, por, 2)
    out = np.empty((R, L, k), np.int32)
    assert native.decode_chunk_ids(slots, False, new, 2, k, L, R, np.array([R], np.int64), None, out) is None
    assert np.array_equal(out, ids.transpose(1, 0, 2))


def test_bad_arguments_are_value_errors(native):
    slots, new = b"\xff\xff", b"\x01\x02"
    out = np.empty((1, 1, 2), np.int32)
    one = np.array([1], np.int64)
    assert native.decode_chunk_ids(slots, False, new, 1, 2, 1, 1, one, None, out) is None
    assert out.tolist() == [[[1, 2]]]
    with pytest.raises(ValueError, match="out holds"):
        native.decode_chunk_ids(slots, False, new, 1, 2, 1, 1, one, None, np.empty(3, np.int32))
    with pytest.raises(ValueError, match="slots holds"):
        native.decode_chunk_ids(slots[:1], False, new, 1, 2, 1, 1, one, None, out)
    with pytest.raises(ValueError, match="piece_rows sum"):
        native.decode_chunk_ids(slots, False, new, 1, 2, 1, 1, np.array([2], np.int64), None, out)
    with pytest.raises(ValueError, match="present holds"):
        native.decode_chunk_ids(slots, False, new, 1, 2, 1, 1, one, np.ones(2, bool), out)
    with pytest.raises(ValueError, match="k .nibble-packed slots. is 16"):
        native.decode_chunk_ids(b"\xff" * 8, True, b"\x01" * 16, 1, 16, 1, 1, one, None, np.empty(16, np.int32))
    with pytest.raises(ValueError, match="width is 3"):
        native.decode_chunk_ids(slots, False, new, 3, 2, 1, 1, one, None, out)
    with pytest.raises(ValueError, match="aligned"):
        native.decode_chunk_ids(slots, False, new, 1, 2, 1, 1, one, None, memoryview(bytearray(9))[1:])
    with pytest.raises(ValueError, match="data holds"):
        native.scatter_floats(b"\0" * 3, 2, True, 2, 1, 1, None, np.empty(2, np.uint16))
    with pytest.raises(TypeError):
        native.decode_chunk_ids(slots, False, new, 1, 2, 1, 1, one, None, b"\0" * 8)   # read-only out


@pytest.mark.parametrize("w,shuffled", [(1, False), (2, True), (2, False), (4, True), (8, True)])
@pytest.mark.parametrize("p_missing", [0.0, 0.3])
def test_scatter_floats_matches_numpy(native, w, shuffled, p_missing):
    """A layer-major column of the present (layer, row)s, shuffled or not, to [R, L, n] with zeros."""
    rng = np.random.default_rng(w)
    L, R, n = 3, 50, 5
    present = rng.random((L, R)) >= p_missing
    Q = int(present.sum())
    dt = np.dtype(f"<u{w}")
    vals = rng.integers(0, np.iinfo(dt).max, (Q, n), dtype=np.uint64).astype(dt)
    want = np.zeros((L, R, n), dt)
    want[present] = vals
    out = np.full((R, L, n), 7, dt)
    native.scatter_floats(F.shuffle_array(vals) if shuffled else vals.tobytes(), w, shuffled, n, L, R,
                          None if present.all() else present, out)
    assert np.array_equal(out, want.transpose(1, 0, 2))


# whole files ------------------------------------------------------------------------------------------
def read_both(path_or_bytes, monkeypatch, **kw):
    """The records (or the error message) read with the accelerator and with numpy."""
    out = []
    for mod in (native_module(), None):
        monkeypatch.setattr(RD, "_native", mod)
        try:
            out.append(list(rtrace.Reader(path_or_bytes, **kw)))
        except rtrace.FormatError as e:
            out.append(str(e))
    return out


def assert_same_records(a, b):
    assert not isinstance(a, str) and len(a) == len(b)
    for x, y in zip(a, b):
        for f in ("uid", "group", "prompt_len", "start", "reward", "attrs", "ordinal"):
            assert getattr(x, f) == getattr(y, f), f
        for f in ("tokens", "topk_ids", "topk_weights", "router_logits", "logprobs"):
            u, v = getattr(x, f), getattr(y, f)
            assert (u is None) == (v is None), f
            if u is not None:
                assert u.dtype == v.dtype and u.shape == v.shape and u.tobytes() == v.tobytes(), f


def golden_files():
    return sorted(glob.glob(os.path.join(REPO, "samples", "**", "*.rtrace"), recursive=True))


@pytest.mark.parametrize("path", golden_files(), ids=os.path.basename)
def test_golden_files_read_alike(path, monkeypatch):
    a, b = read_both(path, monkeypatch)
    assert_same_records(a, b)
    assert a


def write_every_column(path, rng, wd, ld, E, k, nibbles=True, compress=True, n_rec=12, chunk_bytes=6000):
    """A trace with every optional column, missing rows and records over several chunks."""
    model = dict(num_layers=5, num_experts=E, top_k=k, layer_map=[0, 2, 3, 4])
    with rtrace.Writer(path, model=model, engine=dict(name="t", role="train"), topk_weights_dtype=wd,
                       router_logits_dtype=ld, logprobs=True, chunk_bytes=chunk_bytes, compress=compress) as w:
        w._nibble_slots = nibbles
        for i in range(n_rec):
            n = int(rng.integers(0, 90))
            ids = np.argsort(rng.random((n, 4, E)), axis=-1)[..., :k].astype(np.int32)
            ids[rng.random((n, 4)) < 0.15] = -1
            wt = rng.random((n, 4, k)).astype(np.float32)
            lg = rng.standard_normal((n, 4, E)).astype(np.float32)
            wt[ids[..., 0] < 0] = 0
            lg[ids[..., 0] < 0] = 0
            if wd == "f16":
                wt = wt.astype(np.float16)
            if ld == "f16":
                lg = lg.astype(np.float16)
            w.add(f"r{i}", np.arange(n + 2), ids, wt, lg, logprobs=rng.random(n + 2).astype(np.float32),
                  prompt_len=1, reward=float(i), attrs={"i": i}, group=f"g{i % 3}")


@pytest.mark.parametrize("wd,ld,E,k", [("bf16", "f32", 40, 4), ("f16", "bf16", 300, 3), ("f32", "f16", 20, 15),
                                       ("bf16", "bf16", 64, 16)])
def test_every_column_reads_alike(tmp_path, monkeypatch, wd, ld, E, k):
    p = tmp_path / "a.rtrace"
    write_every_column(p, np.random.default_rng(k), wd, ld, E, k)
    assert len(rtrace.Reader(p).index["chunks"]) > 3
    for kw in (dict(threads=True), dict(threads=False)):
        a, b = read_both(p, monkeypatch, **kw)
        assert_same_records(a, b)
    with open(p, "rb") as f:                              # a pipe-like stream, decoded as it arrives
        data = f.read()
    a, b = read_both(data, monkeypatch)
    assert_same_records(a, b)


def patch_column(data: bytearray, chunk: int, cid: int, fn):
    """Applies fn to the stored bytes of column cid of the chunk at offset ``chunk`` (a raw column, same
    length) and fixes the column and chunk header CRCs."""
    C = struct.unpack_from("<I", data, chunk + 4)[0]
    p = chunk + 28 + 16 * C
    for i in range(C):
        e = chunk + 24 + 16 * i
        c, codec, _tr, _raw, stored, _crc = struct.unpack_from("<HBBIII", data, e)
        if c == cid:
            assert codec == 0
            col = bytearray(data[p:p + stored])
            fn(col)
            data[p:p + stored] = col
            struct.pack_into("<I", data, e + 12, zlib.crc32(bytes(col)))
            struct.pack_into("<I", data, chunk + 24 + 16 * C, zlib.crc32(bytes(data[chunk:chunk + 24 + 16 * C])))
            return
        p += stored
    raise AssertionError(f"no column {cid}")


def get_code(col, i, packed):
    """Slot code i of a raw ID_SLOTS column (a nibble when packed)."""
    return col[i] if not packed else (col[i // 2] >> (4 * (i % 2))) & 15


def put_code(col, i, v, packed):
    if not packed:
        col[i] = v
    else:
        sh = 4 * (i % 2)
        col[i // 2] = (col[i // 2] & ~(15 << sh) & 0xFF) | ((v & 15) << sh)


def reuse_entries(col, packed, n):
    """The entries of the first n codes that are not markers (so that rewriting them keeps ID_NEW's length)."""
    marker = 15 if packed else 0xFF
    return [i for i in range(n) if get_code(col, i, packed) != marker]


@pytest.mark.parametrize("packed", [True, False])
def test_damaged_id_coding_fails_alike(tmp_path, monkeypatch, packed):
    """Invalid codes in a raw ID_SLOTS column (CRCs fixed, the number of markers kept, so that the
    decoders see them): the same FormatError from both decoders, naming the chunk and the entry."""
    p = tmp_path / "a.rtrace"
    k = 3
    write_every_column(p, np.random.default_rng(0), "bf16", "f32", 40, k, nibbles=packed, compress=False)
    good = p.read_bytes()
    off = rtrace.Reader(p).index["chunks"][1][0]
    bad_code = 9 if packed else 200

    def first_bad(col):                                 # a code neither 0xFF nor < top_k
        put_code(col, reuse_entries(col, packed, 2 * len(col) if packed else len(col))[0], bad_code, packed)

    def last_bad(col):
        put_code(col, reuse_entries(col, packed, 2 * len(col) - 1 if packed else len(col))[-1], 14, packed)

    def no_previous(col):                               # entry 0 (a first row) reuses; a later reuse becomes new
        later = reuse_entries(col, packed, 2 * len(col) if packed else len(col))[0]
        put_code(col, 0, 1, packed)
        put_code(col, later, 0xFF, packed)

    seen = set()
    for fn in (first_bad, last_bad, no_previous):
        bad = bytearray(good)
        patch_column(bad, off, F.ID_SLOTS, fn)
        a, b = read_both(bytes(bad), monkeypatch)
        assert isinstance(a, str) and a == b and "chunk ids coding invalid" in a and f"byte {off}" in a, (a, b)
        seen.add(a)
    assert len(seen) == 3 and any("does not exist" in m for m in seen)


def test_stray_nibble_fails_alike(tmp_path, monkeypatch):
    p = tmp_path / "a.rtrace"
    with rtrace.Writer(p, model=dict(num_layers=1, num_experts=8, top_k=3), engine=dict(name="t", role="other"),
                       compress=False) as w:
        w.add("a", np.arange(4), np.array([[[0, 1, 2]], [[2, 1, 0]], [[3, 4, 5]]], np.int32))
    data = bytearray(p.read_bytes())                     # 9 codes: the last byte's high nibble is unused

    def stray(col):
        col[-1] |= 0x10

    patch_column(data, rtrace.Reader(p).index["chunks"][0][0], F.ID_SLOTS, stray)
    a, b = read_both(bytes(data), monkeypatch)
    assert isinstance(a, str) and a == b and "high nibble" in a


# the package ----------------------------------------------------------------------------------------
def test_native_available_follows_the_build_and_the_environment():
    """native_available() is True with the in-place build, False with RTRACE_PURE_PYTHON=1."""
    native_module()
    code = "import rtrace; print(rtrace.native_available())"
    env = dict(os.environ, PYTHONPATH=PYDIR)
    env.pop("RTRACE_PURE_PYTHON", None)
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "True"
    env["RTRACE_PURE_PYTHON"] = "1"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


SAMPLE = os.path.join(REPO, "samples", "qwen3moe-L6-E32-k4", "rollout.rtrace")
READ_SAMPLE = ("import sys, rtrace, numpy as np; rs = list(rtrace.Reader(sys.argv[1])); "
               "print(rtrace.native_available(), len(rs), int(sum(np.int64(r.topk_ids).sum() for r in rs)))")


def pip_install(tmp_path, name, env_extra):
    """`pip install --no-deps --no-build-isolation --no-index --target` of a copy of python/ (its sources
    only, no in-place build outputs); returns (target, pip's output). Skips when pip cannot run here."""
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode:
        pytest.skip("pip is not available")
    try:
        import setuptools  # noqa: F401  (--no-build-isolation builds with the installed setuptools)
    except ImportError:
        pytest.skip("setuptools is not installed: pip cannot build offline without build isolation")
    src, target = tmp_path / f"src-{name}", tmp_path / f"site-{name}"
    shutil.copytree(PYDIR, src, ignore=shutil.ignore_patterns("build", "tests", "__pycache__", "*.so", "*.pyd",
                                                              "*.egg-info", "bench_python.py"))
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", **env_extra)
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-v", "--no-deps", "--no-build-isolation",
                        "--no-index", "--target", str(target), str(src)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return target, p.stdout + p.stderr


def run_installed(target):
    env = dict(os.environ, PYTHONPATH=str(target))
    env.pop("RTRACE_PURE_PYTHON", None)
    p = subprocess.run([sys.executable, "-c", READ_SAMPLE, SAMPLE], env=env, capture_output=True, text=True,
                       cwd=str(target), timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout.split()


def expected_sample():
    rs = list(rtrace.Reader(SAMPLE))
    return [str(len(rs)), str(int(sum(np.int64(r.topk_ids).sum() for r in rs)))]


def built_extensions(target):
    """The compiled rtrace._native files installed in target (the C source may be installed beside them)."""
    from importlib.machinery import EXTENSION_SUFFIXES
    return [f for f in glob.glob(str(target / "rtrace" / "_native*")) if f.endswith(tuple(EXTENSION_SUFFIXES))]


def test_pip_install_builds_the_accelerator(tmp_path):
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if not shutil.which(cc) or not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
        pytest.skip(f"no C compiler ({cc}) or no Python headers (Python.h): pip install builds without the accelerator")
    target, log = pip_install(tmp_path, "cc", {})
    assert built_extensions(target), log[-3000:]
    assert run_installed(target) == ["True"] + expected_sample()


def test_pip_install_without_a_compiler_falls_back_to_numpy(tmp_path):
    target, log = pip_install(tmp_path, "nocc", {"CC": "false"})
    assert not built_extensions(target)
    assert "rtrace._native" in log                      # setuptools said it skipped the optional extension
    assert run_installed(target) == ["False"] + expected_sample()
