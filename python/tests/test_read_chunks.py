"""Reader.read_chunks (a range of a complete file's chunks) and the chunk-copying concatenation
rtrace.ray gathers partitions with (rtrace._concat)."""
import io
import os
import subprocess

import numpy as np
import pytest

import rtrace
from conftest import ENGINE, MODEL, synth_ids
from rtrace._concat import TraceConcat, concat_traces

# every test reads with both decoders: the accelerator rtrace._native and numpy (conftest.decoder)
pytestmark = pytest.mark.usefixtures("decoder")


def _records(n=9, seed=3):
    """Records of 0 to 300 rows (one empty), some rows missing, with every optional field."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        rows = [37, 0, 300, 5, 120, 1, 64, 250, 9][i % 9]
        ids = synth_ids(rng, rows, MODEL["num_layers"], MODEL["num_experts"], MODEL["top_k"])
        if rows > 10:
            ids[3:6, 2] = -1
        w = rng.random((rows, MODEL["num_layers"], MODEL["top_k"])).astype(np.float16)
        w[ids[:, :, 0] < 0] = 0   # a missing (row, layer) has no weights (they read back as 0)
        out.append(dict(uid=f"r{i}", tokens=rng.integers(0, 1000, rows + 2), topk_ids=ids, topk_weights=w,
                        logprobs=-rng.random(rows).astype(np.float32), prompt_len=2, start=1,
                        reward=None if i % 3 else float(i), attrs={"i": i} if i % 2 else None,
                        group=None if i % 4 else f"g{i}"))
    return out


def _write(target, recs, chunk_bytes):
    with rtrace.Writer(target, model=MODEL, engine=ENGINE, topk_weights_dtype="f16", logprobs=True,
                       chunk_bytes=chunk_bytes, created="2026-01-01T00:00:00Z") as w:
        for r in recs:
            w.add(**r)


def _same(got, want):
    assert [r.uid for r in got] == [r["uid"] for r in want]
    for g, w in zip(got, want):
        assert np.array_equal(g.topk_ids, w["topk_ids"])
        assert g.topk_weights.tobytes() == w["topk_weights"].tobytes()
        assert np.array_equal(g.tokens, w["tokens"]) and g.logprobs.tobytes() == w["logprobs"].tobytes()
        assert (g.reward, g.attrs, g.group, g.start, g.prompt_len) == (w["reward"], w["attrs"], w["group"], 1, 2)


@pytest.mark.parametrize("threads", [True, False])
def test_chunk_ranges_tile_a_file(tmp_path, threads):
    recs = _records()
    p = tmp_path / "t.rtrace"
    _write(p, recs, chunk_bytes=5000)   # records span up to ~5 chunks; chunks hold pieces of several records
    r = rtrace.Reader(p, threads=threads)
    n = len(r.index["chunks"])
    assert n > 10 and any(rec[1] > 3 for rec in r.index["records"])
    assert any(c[3] > 1 for c in r.index["chunks"])   # some chunk holds pieces of two records
    rng = np.random.default_rng(0)
    for cuts in ([0, n], list(range(n + 1)), [0, 1, n - 1, n], sorted({0, n, *rng.integers(0, n, 6).tolist()})):
        got = [rec for a, b in zip(cuts, cuts[1:]) for rec in r.read_chunks(a, b)]
        _same(got, recs)
    # a range holds the records whose FIRST piece is in it, read to their end beyond the range
    firsts = [rec[0] for rec in r.index["records"]]
    c = firsts[2]
    assert [x.uid for x in r.read_chunks(c, c + 1)] == [recs[i]["uid"] for i in range(9) if firsts[i] == c]
    inner = next(c for c in range(n) if c not in firsts)   # a chunk only continuing a record
    assert list(r.read_chunks(inner, inner + 1)) == []
    assert list(r.read_chunks(3, 3)) == []


def test_read_chunks_refusals(tmp_path):
    p = tmp_path / "t.rtrace"
    _write(p, _records(4), chunk_bytes=5000)
    r = rtrace.Reader(p)
    n = len(r.index["chunks"])
    for a, b in ((-1, 2), (2, 1), (0, n + 1)):
        with pytest.raises(IndexError, match="outside"):
            list(r.read_chunks(a, b))
    data = p.read_bytes()
    cut = tmp_path / "cut.rtrace"
    cut.write_bytes(data[:r.index["chunks"][2][0]])
    with pytest.raises(TypeError, match="complete"):
        list(rtrace.Reader(cut, allow_incomplete=True).read_chunks(0, 1))
    # damage in a chunk of the range: the FormatError names the file
    bad = tmp_path / "bad.rtrace"
    off, flen = r.index["chunks"][1][:2]
    b = bytearray(data)
    b[off + flen - 3] ^= 0xFF
    bad.write_bytes(bytes(b))
    with pytest.raises(rtrace.FormatError, match="bad.rtrace"):
        list(rtrace.Reader(bad).read_chunks(0, 2))
    # a range whose records do not touch the damaged chunk reads only its own chunks
    later = next(c for c in sorted(set(rec[0] for rec in r.index["records"])) if c > 1)
    assert [x.uid for x in rtrace.Reader(bad).read_chunks(later, n)] == [x.uid for x in r.read_chunks(later, n)]


def test_concat_copies_chunks(tmp_path):
    recs = _records(9, seed=5)
    parts = []
    for sl, cb in ((slice(0, 2), 3000), (slice(2, 3), 1 << 20), (slice(3, 3), 1000), (slice(3, 9), 20000)):
        buf = io.BytesIO()
        _write(buf, recs[sl], cb)
        parts.append(buf.getvalue())
    out = tmp_path / "cat.rtrace"
    with open(out, "wb") as f:
        assert concat_traces(parts, f) == 9
    r = rtrace.Reader(out)
    assert r.complete and len(r) == 9 and r.index["total_rows"] == sum(len(x["topk_ids"]) for x in recs)
    _same(list(r), recs)
    _same([r.get("r7")], [recs[7]])
    bin_ = os.environ.get("RTRACE_BIN")
    if bin_:   # the Swift reader agrees: every CRC, ordinal and index entry
        c = subprocess.run([bin_, "check", str(out)], capture_output=True, text=True)
        assert c.returncode == 0, c.stdout + c.stderr
    # nothing added: a trace of the given header without records
    with open(tmp_path / "none.rtrace", "wb") as f:
        cat = TraceConcat(f, rtrace.Reader(out).header)
        assert cat.close() == 0
    assert rtrace.Reader(tmp_path / "none.rtrace").complete and list(rtrace.Reader(tmp_path / "none.rtrace")) == []


def test_concat_refuses_other_headers_and_damage(tmp_path):
    a, b = io.BytesIO(), io.BytesIO()
    _write(a, _records(2), 4 << 20)
    with rtrace.Writer(b, model=MODEL, engine=ENGINE, chunk_bytes=4 << 20) as w:
        w.add("x", topk_ids=np.zeros((1, MODEL["num_layers"], MODEL["top_k"]), dtype=np.int32) + np.arange(4))
    with pytest.raises(ValueError, match="header differs"):
        concat_traces([a.getvalue(), b.getvalue()], io.BytesIO(), names=["a", "b"])
    data = bytearray(a.getvalue())
    off = rtrace.Reader(a.getvalue()).index["chunks"][0][0]
    data[off + 10] ^= 1   # the chunk header
    with pytest.raises(rtrace.FormatError, match="part-7: chunk header CRC"):
        concat_traces([bytes(data)], io.BytesIO(), names=["part-7"])
