import io
import os
import struct
import threading

import numpy as np
import pytest

import rtrace
from conftest import ENGINE, MODEL, synth_ids

# every test reads with both decoders: the accelerator rtrace._native and numpy (conftest.decoder)
pytestmark = pytest.mark.usefixtures("decoder")


def write_sample(path, d, chunk_bytes=4 << 20, **kw):
    with rtrace.Writer(path, model=MODEL, engine=ENGINE, topk_weights_dtype="f16", router_logits_dtype="f16",
                       logprobs=True, policy_version=3, attributes={"run": "t"}, chunk_bytes=chunk_bytes, **kw) as w:
        for i in range(len(d["tokens"])):
            w.add(f"seq-{i}", d["tokens"][i], d["topk_ids"][i], d["topk_weights"][i], d["router_logits"][i],
                  logprobs=d["logprobs"][i], prompt_len=int(d["prompt_len"]), reward=i * 0.25,
                  attrs={"i": i}, group=f"g{i // 4}")


def check_sample(recs, d):
    assert len(recs) == len(d["tokens"])
    for i, r in enumerate(recs):
        assert r.uid == f"seq-{i}" and r.group == f"g{i // 4}"
        assert np.array_equal(r.tokens, d["tokens"][i])
        assert r.prompt_len == int(d["prompt_len"]) and r.start == 0
        assert r.topk_ids.dtype == np.int32 and np.array_equal(r.topk_ids, d["topk_ids"][i])
        assert r.topk_weights.dtype == np.float16
        assert r.topk_weights.tobytes() == d["topk_weights"][i].tobytes()
        assert r.router_logits.tobytes() == d["router_logits"][i].tobytes()
        assert r.logprobs.tobytes() == d["logprobs"][i].tobytes()
        assert r.reward == i * 0.25 and r.attrs == {"i": i}


@pytest.mark.parametrize("chunk_bytes", [4 << 20, 2000, 1])
def test_sample_roundtrip(tmp_path, sample, chunk_bytes):
    p = tmp_path / "a.rtrace"
    write_sample(p, sample, chunk_bytes)
    r = rtrace.Reader(p)
    assert r.complete
    assert r.header["model"]["layer_map"] == list(range(6))
    assert r.header["columns"] == {"topk_ids": "u8", "tokens": "i32", "topk_weights": "f16",
                                   "router_logits": "f16", "logprobs": "f32"}
    assert r.header["policy_version"] == 3 and r.header["attributes"] == {"run": "t"}
    check_sample(list(r), sample)
    if chunk_bytes < 4 << 20:
        assert len(r.index["chunks"]) > len(sample["tokens"])  # multi-chunk records
        assert any(rec[1] > 1 for rec in r.index["records"])
    for i in (0, 5, 11):
        g = r.get(f"seq-{i}")
        assert np.array_equal(g.topk_ids, sample["topk_ids"][i])
        assert g.router_logits.tobytes() == sample["router_logits"][i].tobytes()
    with pytest.raises(KeyError):
        r.get("nope")
    assert len(r) == 12 and r.index["total_rows"] == 12 * 127


def test_compressed_smaller_than_raw(tmp_path, sample):
    write_sample(tmp_path / "c.rtrace", sample)
    write_sample(tmp_path / "r.rtrace", sample, compress=False)
    assert os.path.getsize(tmp_path / "c.rtrace") < os.path.getsize(tmp_path / "r.rtrace")
    check_sample(list(rtrace.Reader(tmp_path / "r.rtrace")), sample)


@pytest.mark.parametrize("wd,ld", [("bf16", "f32"), ("f32", "bf16"), (None, None)])
def test_dtypes_missing_and_u16(tmp_path, wd, ld):
    rng = np.random.default_rng(1)
    model = dict(num_layers=5, num_experts=300, top_k=3, layer_map=[1, 2, 4], name="m")
    recs = []
    for i in range(7):
        n = int(rng.integers(0, 40))
        ids = synth_ids(rng, n, 3, 300, 3)
        miss = rng.random((n, 3)) < 0.3
        ids[miss] = -1
        w = rng.standard_normal((n, 3, 3)).astype(np.float32)
        lg = rng.standard_normal((n, 3, 300)).astype(np.float32)
        wv = rtrace.float_to_bf16_bits(w) if wd == "bf16" else w
        lv = rtrace.float_to_bf16_bits(lg) if ld == "bf16" else lg
        start = int(rng.integers(0, 3))
        toks = rng.integers(0, 1000, n + start + 1) if i % 2 else np.zeros(0, dtype=np.int32)
        recs.append((f"r{i}", toks, ids, wv if wd else None, lv if ld else None, start, miss))
    p = tmp_path / "m.rtrace"
    with rtrace.Writer(p, model=model, engine=ENGINE, topk_weights_dtype=wd, router_logits_dtype=ld,
                       chunk_bytes=3000) as w:
        for uid, toks, ids, wv, lv, start, _ in recs:
            w.add(uid, toks, ids, wv, lv, start=start)
    r = rtrace.Reader(p)
    assert r.header["columns"]["topk_ids"] == "u16"
    out = list(r)
    assert len(out) == len(recs)
    for (uid, toks, ids, wv, lv, start, miss), o in zip(recs, out):
        assert o.uid == uid and o.start == start and o.group is None and o.reward is None and o.attrs is None
        assert np.array_equal(o.topk_ids, ids) and np.array_equal(o.missing, miss)
        assert np.array_equal(o.tokens, toks)
        assert o.logprobs is None
        if wd:
            exp = wv.copy(); exp[miss] = 0
            assert o.topk_weights.dtype == (np.uint16 if wd == "bf16" else np.float32)
            assert o.topk_weights.tobytes() == exp.astype(o.topk_weights.dtype).tobytes()
        else:
            assert o.topk_weights is None
        if ld:
            exp = lv.copy(); exp[miss] = 0
            assert o.router_logits.tobytes() == exp.astype(o.router_logits.dtype).tobytes()


def test_all_missing_and_empty_records(tmp_path):
    p = tmp_path / "e.rtrace"
    with rtrace.Writer(p, model=MODEL, engine=ENGINE) as w:
        w.add("empty", [1, 2], np.zeros((0, 6, 4), dtype=np.int32))
        w.add("allmiss", [1, 2, 3, 4], np.full((3, 6, 4), -1))
    out = list(rtrace.Reader(p))
    assert [o.uid for o in out] == ["empty", "allmiss"]
    assert out[0].topk_ids.shape == (0, 6, 4)
    assert (out[1].topk_ids == -1).all()


def test_empty_trace(tmp_path):
    p = tmp_path / "z.rtrace"
    rtrace.Writer(p, model=MODEL, engine=ENGINE).close()
    r = rtrace.Reader(p)
    assert list(r) == [] and r.complete and len(r) == 0


def test_duplicate_ids_lossless(tmp_path):
    ids = np.array([[[3, 3, 3, 3]] * 6, [[3, 1, 3, 1]] * 6, [[31, 0, 5, 3]] * 6], dtype=np.int32)
    p = tmp_path / "d.rtrace"
    with rtrace.Writer(p, model=MODEL, engine=ENGINE) as w:
        w.add("d", [], ids)
    assert np.array_equal(next(iter(rtrace.Reader(p))).topk_ids, ids)


def test_pipe(sample):
    rfd, wfd = os.pipe()
    out = []

    def reader():
        with os.fdopen(rfd, "rb") as f:
            r = rtrace.Reader(f)
            out.extend(r)
            out.append(r.complete)

    t = threading.Thread(target=reader)
    t.start()
    with os.fdopen(wfd, "wb") as f:
        write_sample(f, sample, chunk_bytes=5000)
    t.join(30)
    assert out[-1] is True
    check_sample(out[:-1], sample)


def test_unseekable_file_object(sample):
    class NoSeek(io.RawIOBase):
        def __init__(self):
            self.buf = bytearray()

        def writable(self):
            return True

        def write(self, b):
            self.buf += b
            return len(b)

        def seekable(self):
            return False

        def tell(self):
            raise OSError("no tell")

    s = NoSeek()
    write_sample(s, sample)
    check_sample(list(rtrace.Reader(bytes(s.buf))), sample)


def test_invalid_adds(tmp_path):
    with rtrace.Writer(tmp_path / "x.rtrace", model=MODEL, engine=ENGINE, topk_weights_dtype="f16") as w:
        with pytest.raises(ValueError, match="shape"):
            w.add("a", [], np.zeros((2, 5, 4), dtype=np.int32), np.zeros((2, 5, 4), np.float16))
        with pytest.raises(ValueError, match="partly missing"):
            w.add("a", [], np.array([[[1, -1, 2, 3]] * 6]), np.zeros((1, 6, 4), np.float16))
        with pytest.raises(ValueError, match="required"):
            w.add("a", [], np.zeros((1, 6, 4), dtype=np.int32))
        with pytest.raises(ValueError, match="n_tokens"):
            w.add("a", [1, 2], np.zeros((3, 6, 4), dtype=np.int32), np.zeros((3, 6, 4), np.float16))
    with pytest.raises(ValueError, match="top_k"):
        rtrace.Writer(tmp_path / "y.rtrace", model=dict(num_layers=2, num_experts=4, top_k=5), engine=ENGINE)


def test_writer_keeps_the_header_rules(tmp_path):
    """What readers accept from a later minor version (an unknown role, spec §3.2) a 1.0 writer does not write;
    a policy_version outside 0..2^53-1 is refused; a reward of -0.0 keeps its sign (its flag says it is there)."""
    with pytest.raises(ValueError, match="role"):
        rtrace.Writer(tmp_path / "r.rtrace", model=MODEL, engine=dict(ENGINE, role="critic"))
    for pv in (-1, 1 << 53):
        with pytest.raises(ValueError, match="policy_version"):
            rtrace.Writer(tmp_path / "p.rtrace", model=MODEL, engine=ENGINE, policy_version=pv)
    with rtrace.Writer(tmp_path / "z.rtrace", model=MODEL, engine=ENGINE) as w:
        w.add("a", [1, 2], np.zeros((1, 6, 4), dtype=np.int32), reward=-0.0)
        w.add("b", [1, 2], np.zeros((1, 6, 4), dtype=np.int32))
    a, b = rtrace.Reader(tmp_path / "z.rtrace")
    assert a.reward == 0.0 and np.signbit(a.reward) and b.reward is None


# damage ------------------------------------------------------------------------------------------
@pytest.fixture
def good(tmp_path, sample):
    p = tmp_path / "g.rtrace"
    write_sample(p, sample, chunk_bytes=20000)
    return p.read_bytes()


def test_truncation_detected_everywhere(good, sample):
    r = rtrace.Reader(good)
    chunks = r.index["chunks"]
    cuts = sorted({5, 19, 25, r.data_start + 2, chunks[0][0] + 10, chunks[1][0] + 100, chunks[-1][0] + 3,
                   len(good) - 40, len(good) - 1, chunks[2][0]})
    for cut in cuts:
        with pytest.raises(rtrace.FormatError) as e:
            list(rtrace.Reader(good[:cut]))
        assert e.value.kind == "truncated", (cut, e.value)
        assert e.value.offset is not None
    # reading what is there: complete records only
    cut = chunks[3][0] + 50
    with pytest.warns(UserWarning, match="truncated|no trailer"):
        part = list(rtrace.Reader(good[:cut], allow_incomplete=True))
    assert 0 < len(part) < 12
    check_sample(part, {k: v[:len(part)] for k, v in sample.items() if k != "prompt_len"} | {"prompt_len": sample["prompt_len"]})


def test_every_byte_flip_in_chunk_detected(good):
    r = rtrace.Reader(good)
    off, flen = r.index["chunks"][1][:2]
    rng = np.random.default_rng(0)
    for pos in list(range(off, off + 60)) + list(rng.integers(off, off + flen, 60)):
        bad = bytearray(good)
        bad[pos] ^= 0x41
        with pytest.raises(rtrace.FormatError) as e:
            list(rtrace.Reader(bytes(bad)))
        assert off <= e.value.offset < off + flen or e.value.kind in ("corrupt", "limit", "truncated"), e.value


def test_header_damage(good):
    bad = bytearray(good)
    bad[30] ^= 1
    with pytest.raises(rtrace.FormatError, match="checksum"):
        rtrace.Reader(bytes(bad))
    with pytest.raises(rtrace.FormatError, match="zip"):
        rtrace.Reader(b"PK\x03\x04" + b"\0" * 40)
    with pytest.raises(rtrace.FormatError, match="truncated"):
        rtrace.Reader(b"")
    bad = bytearray(good)
    bad[8] = 2
    with pytest.raises(rtrace.FormatError, match="unsupportedVersion"):
        rtrace.Reader(bytes(bad))


def test_index_damage_falls_back_to_scan(good, sample):
    r = rtrace.Reader(good)
    ioff = struct.unpack_from("<Q", good, len(good) - 32)[0]
    bad = bytearray(good)
    bad[ioff + 30] ^= 1
    r2 = rtrace.Reader(bytes(bad))
    assert r2.complete is False and r2.index is None
    assert r2.get("seq-3").uid == "seq-3"      # get() scans when the index is unusable
    with pytest.raises(rtrace.FormatError, match="checksum"):
        list(r2)                                # but iterating to the end reports the damaged index


def test_unknown_extension_column_skipped(good, sample):
    """Append an extension column (id 40) to the first chunk by hand: readers skip it."""
    import zlib
    r = rtrace.Reader(good)
    off, flen = r.index["chunks"][0][:2]
    C, P, R, pl = struct.unpack_from("<IIIQ", good, off + 4)
    d = good[off + 24: off + 24 + 16 * C]
    ext = b"hello"
    d2 = d + struct.pack("<HBBIII", 40, 0, 0, len(ext), len(ext), zlib.crc32(ext))
    head = b"RTCK" + struct.pack("<IIIQ", C + 1, P, R, pl + len(ext)) + d2
    frame = head + struct.pack("<I", zlib.crc32(head)) + good[off + 28 + 16 * C: off + flen] + ext
    data = good[:off] + frame + good[off + flen:r.index["chunks"][-1][0] + r.index["chunks"][-1][1]]
    with pytest.warns(UserWarning, match="extension column #40"):
        out = list(rtrace.Reader(data, allow_incomplete=True))
    check_sample(out, sample)
