"""The streamed npz import and export of the Swift CLI (issue 15) against numpy itself: what np.savez and
np.savez_compressed write is imported, from files and pipes; what `rtrace export --to npz` writes, to files
and pipes, with and without an index, stored and deflated, np.load reads back exactly; members that declare
more than they hold, or hold more than they declare, are refused naming the file and the member."""
import os
import struct
import subprocess
import zipfile
import zlib

import numpy as np
import pytest

import rtrace

BIN = os.environ.get("RTRACE_BIN")
need_bin = pytest.mark.skipif(not BIN, reason="RTRACE_BIN is not set: Swift CLI tests skipped")

MODEL = dict(num_layers=5, num_experts=40, top_k=3, layer_map=[0, 2, 4], name="npz-stream")
ENGINE = dict(name="pytest", version="0", role="rollout")
L, K, E = 3, 3, 40


def run(args, stdin=None, ok=True):
    p = subprocess.run([BIN, *map(str, args)], input=stdin, capture_output=True, timeout=120)
    if ok:
        assert p.returncode == 0, f"rtrace {' '.join(map(str, args))} failed ({p.returncode}): {p.stderr.decode()}"
    return p


def shell(cmd):
    p = subprocess.run(cmd, shell=True, capture_output=True, timeout=120, env={**os.environ, "RT": BIN})
    assert p.returncode == 0, f"{cmd} failed: {p.stderr.decode()}"
    return p


def ragged_records(seed=3):
    """Six records: rows 0..17, starts, token and logprob counts, groups and rewards that vary."""
    rng = np.random.default_rng(seed)
    recs = []
    for i, (rows, start, extra_tokens, n_lp) in enumerate([(5, 0, 1, 4), (0, 2, 3, 0), (17, 1, 2, 9),
                                                           (9, 0, 1, 9), (1, 4, 5, 1), (12, 0, 1, 3)]):
        ids = np.argsort(rng.random((rows, L, E)), axis=-1)[..., :K].astype(np.int32)
        if rows > 3:
            ids[2] = -1
            ids[rows - 1, 1] = -1
        n_tok = start + rows + extra_tokens
        # a missing (row, layer) has no weights or logits: the trace keeps none, export gives zeros
        weights = np.where(ids < 0, 0, rng.random((rows, L, K))).astype(np.float16)
        logits = np.where(ids[..., :1] < 0, 0, rng.standard_normal((rows, L, E))).astype(np.float32)
        recs.append(dict(
            uid=f"req-{i}/0" if i != 3 else "3", tokens=rng.integers(0, 150_000, n_tok).astype(np.int32),
            topk_ids=ids, topk_weights=weights, router_logits=logits,
            logprobs=-rng.random(n_lp).astype(np.float32), prompt_len=min(2 + i, n_tok), start=start,
            reward=None if i % 3 == 1 else i * 0.5, group=None if i == 4 else f"g{i // 2}"))
    return recs


def expected_arrays(recs):
    """The arrays export must give for `recs` (the npz layout of README.md / spec: padded, ragged extras)."""
    S, R = len(recs), max(len(r["topk_ids"]) for r in recs)
    T, N = max(len(r["tokens"]) for r in recs), max(len(r["logprobs"]) for r in recs)
    ids = np.full((S, R, L, K), -1, np.int32)
    w = np.zeros((S, R, L, K), np.float16)
    g = np.zeros((S, R, L, E), np.float32)
    tok = np.full((S, T), -1, np.int32)
    lp = np.zeros((S, N), np.float32)
    for s, r in enumerate(recs):
        n = len(r["topk_ids"])
        ids[s, :n], w[s, :n], g[s, :n] = r["topk_ids"], r["topk_weights"], r["router_logits"]
        tok[s, :len(r["tokens"])] = r["tokens"]
        lp[s, :len(r["logprobs"])] = r["logprobs"]
    def i4(f):
        return np.array([f(r) for r in recs], np.int32)

    return {
        "topk_ids": ids, "tokens": tok, "n_tokens": i4(lambda r: len(r["tokens"])),
        "topk_weights": w, "router_logits": g, "logprobs": lp, "n_logprobs": i4(lambda r: len(r["logprobs"])),
        "prompt_len": i4(lambda r: r["prompt_len"]), "n_rows": i4(lambda r: len(r["topk_ids"])),
        "start": i4(lambda r: r["start"]), "uids": np.array([r["uid"] for r in recs]),
        "groups": np.array([r["group"] or "" for r in recs]),
        "rewards": np.array([np.nan if r["reward"] is None else r["reward"] for r in recs], np.float64),
    }


def write_trace(path, recs, chunk_bytes=3000):
    with rtrace.Writer(path, model=MODEL, engine=ENGINE, topk_weights_dtype="f16", router_logits_dtype="f32",
                       logprobs=True, chunk_bytes=chunk_bytes) as w:
        for r in recs:
            w.add(r["uid"], r["tokens"], r["topk_ids"], r["topk_weights"], r["router_logits"], logprobs=r["logprobs"],
                  prompt_len=r["prompt_len"], start=r["start"], reward=r["reward"], group=r["group"])


def assert_npz(path, want):
    assert zipfile.ZipFile(path).testzip() is None
    d = np.load(path)
    assert sorted(d.files) == sorted(want), (d.files, sorted(want))
    for k, v in want.items():
        assert d[k].dtype == v.dtype and d[k].shape == v.shape, (k, d[k].dtype, d[k].shape, v.dtype, v.shape)
        assert d[k].tobytes() == v.tobytes(), k


@need_bin
@pytest.mark.parametrize("how", ["file", "compressed", "pipe"])
def test_export_is_read_by_numpy(tmp_path, how):
    recs = ragged_records()
    p = tmp_path / "t.rtrace"
    write_trace(p, recs)
    out = tmp_path / "out.npz"
    if how == "file":            # an index: topk_ids written as the records come, the rest spooled
        run(["export", "--to", "npz", p, "-o", out])
    elif how == "compressed":
        run(["export", "--to", "npz", p, "-o", out, "--compress"])
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in zipfile.ZipFile(out).infolist())
    elif how == "pipe":          # no index from a pipe: every array spooled; the npz to standard output
        shell(f"cat {p} | $RT export --to npz - -o - > {out}")
    assert_npz(out, expected_arrays(recs))


@need_bin
@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
@pytest.mark.parametrize("stdin", [False, True])
def test_numpy_npz_is_imported(tmp_path, save, stdin):
    """A single-sequence [rows, layers, k] int8 layout with float16 weights, int64 tokens and float64
    logprobs, as numpy writes it (ZIP64 local headers: np.savez forces them)."""
    rng = np.random.default_rng(9)
    rows = 300
    ids = np.argsort(rng.random((rows, L, E)), axis=-1)[..., :K].astype(np.int8)
    ids[7] = -1
    weights = rng.random((rows, L, K)).astype(np.float16)
    weights[7] = 0  # a missing (row, layer) keeps no weights
    arrays = dict(topk_ids=ids, topk_weights=weights,
                  tokens=np.arange(rows + 1, dtype=np.int64) * 1000, logprobs=-rng.random(50),
                  prompt_len=np.int32(40))
    src = tmp_path / "numpy.npz"
    save(src, **arrays)
    out = tmp_path / "n.rtrace"
    args = ["--num-experts", E, "--num-layers", 5, "--layer-map", "0,2,4", "--chunk-bytes", 2000]
    if stdin:
        shell(f"cat {src} | $RT import --from npz - -o {out} " + " ".join(map(str, args)))
    else:
        run(["import", "--from", "npz", src, "-o", out, *args])
    (r,) = list(rtrace.Reader(out))
    assert np.array_equal(r.topk_ids, ids.astype(np.int32))
    assert r.topk_weights.tobytes() == arrays["topk_weights"].tobytes()
    assert np.array_equal(r.tokens, arrays["tokens"]) and r.prompt_len == 40
    assert np.array_equal(r.logprobs, arrays["logprobs"].astype(np.float32))
    # and back: the same arrays, dtypes and single layout included
    back = tmp_path / "back.npz"
    run(["export", "--to", "npz", out, "-o", back])
    d = np.load(back)
    for k, v in arrays.items():
        assert d[k].dtype == v.dtype and d[k].shape == v.shape, k
        assert d[k].tobytes() == (v.astype(np.float32).astype(v.dtype) if k == "logprobs" else v).tobytes(), k


@need_bin
def test_npy_from_a_pipe(tmp_path):
    rng = np.random.default_rng(2)
    ids = np.argsort(rng.random((4, 20, L, E)), axis=-1)[..., :K].astype(np.int16)
    src = tmp_path / "ids.npy"
    np.save(src, ids)
    out = tmp_path / "ids.rtrace"
    shell(f"cat {src} | $RT import --from npy - -o {out} --num-experts {E}")
    recs = list(rtrace.Reader(out))
    assert len(recs) == 4 and all(np.array_equal(r.topk_ids, ids[i]) for i, r in enumerate(recs))
    # one byte more than the header declares is refused
    bad = tmp_path / "long.npy"
    bad.write_bytes(src.read_bytes() + b"\0")
    p = run(["import", "--from", "npy", bad, "-o", tmp_path / "x.rtrace", "--num-experts", E], ok=False)
    assert p.returncode != 0 and b"long.npy" in p.stderr and b"holds more than" in p.stderr, p.stderr


def npy_header(dtype, shape):
    h = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (np.dtype(dtype).str, repr(tuple(shape)))
    n = ((10 + len(h) + 1 + 63) // 64) * 64
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", n - 10) + (h + " " * (n - 10 - len(h) - 1) + "\n").encode()


@need_bin
def test_bombs_are_refused_naming_the_member(tmp_path):
    # declares 1.5 GB, holds 4 MiB of zeros (a few KB on disk): refused before inflating its data
    declared = npy_header("<i4", (1, 1_000_000, 48, 8))
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("topk_ids.npy", declared + bytes(4 << 20))
    p = run(["import", "--from", "npz", bomb, "-o", tmp_path / "b.rtrace", "--num-experts", 128], ok=False)
    err = p.stderr.decode()
    assert p.returncode != 0 and str(bomb) in err and "topk_ids.npy" in err, err
    assert str(len(declared) + 1_000_000 * 48 * 8 * 4) in err and str(len(declared) + (4 << 20)) in err, err

    # declares 2 sequences, inflates to 4 MiB more; the directory (size and CRC) agrees with the header
    ids = np.tile(np.arange(8, dtype=np.int32), (2, 3, 4, 1))
    body = npy_header("<i4", ids.shape) + ids.tobytes()
    more = tmp_path / "more.npz"
    with zipfile.ZipFile(more, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("topk_ids.npy", body + bytes(4 << 20))
    b = bytearray(more.read_bytes())
    cd = zipfile.ZipFile(more).start_dir
    struct.pack_into("<II", b, cd + 20, struct.unpack_from("<I", b, cd + 20)[0], len(body))
    struct.pack_into("<I", b, cd + 16, zlib.crc32(body))
    more.write_bytes(bytes(b))
    p = run(["import", "--from", "npz", more, "-o", tmp_path / "m.rtrace", "--num-experts", 16], ok=False)
    err = p.stderr.decode()
    assert p.returncode != 0 and str(more) in err and "topk_ids.npy" in err, err
    assert f"holds more than the {len(body)} bytes" in err and f"{len(body) + (4 << 20)} bytes found" in err, err
