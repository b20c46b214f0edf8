#!/usr/bin/env python3
"""The id coding frontier and `rtrace diff` end to end (issue 16; results in bench/idcoding/README.md).

Three parts, all in one run so that every ratio compares figures of the same minutes:

1. Frontier. For each data set, the raw ID_SLOTS and ID_NEW columns of every chunk (and the bytes the file
   stores today) are dumped, and bench/idcoding/idcodec.c encodes them with each candidate coding and times
   its decoder (one thread, best of --repeat): deflate Huffman-only inflated by libdeflate (today), raw,
   bit-packed, rANS.
2. `rtrace diff` end to end on the diff benchmark's two 100k-row sides (bench/diff_stats/bench.py data),
   as written today and rewritten with ID_SLOTS and/or ID_NEW stored raw (codec 0, which every reader
   already reads: a copy instead of an inflate). Raw id columns are the fastest any id coding can decode,
   so their diff time bounds what any coding can gain.
3. The estimate for each candidate: diff's measured time today, less the share its id decoding saves,
   interpolated between the two measured ends (today's coding and raw) by single-thread decode time.

Usage:
    swift build -c release --product rtrace
    python3 bench/idcoding/idcoding.py --rtrace .build/release/rtrace [--workdir /tmp/rtrace-idcoding]
        [--repeat 7] [--diff-repeat 7]

Data sets: the real Qwen3-MoE traces (samples/qwen3moe-L6-E32-k4/*.rtrace, the .rtrace copies of
../shared/real-traces), the format benchmark's 100k-row Qwen3-30B geometry trace (bench/format_bench.py's
generator: skewed popularity, correlated rows, 1000-row sequences) and side A of the diff benchmark.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import struct
import subprocess
import sys
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "python"))
sys.path.insert(0, os.path.join(REPO, "bench"))
sys.path.insert(0, os.path.join(REPO, "bench", "diff_stats"))

MAGIC = b"\x89RTR\r\n\x1a\n"
ID_SLOTS, ID_NEW, MISSING = 16, 17, 8
DIFF_SET = "diff bench, both sides (E=128, k=8, 2 x 100k rows)"


# -- reading and rewriting frames --------------------------------------------------------------------
def parse(path):
    """(header bytes, header dict, [chunk dicts], index frame bytes or None, trailer bytes or None)."""
    b = open(path, "rb").read()
    assert b[:8] == MAGIC, path
    n = struct.unpack_from("<I", b, 12)[0]
    header = json.loads(b[16:16 + n])
    pos = 20 + n
    chunks, index, trailer = [], None, None
    while pos < len(b):
        magic = b[pos:pos + 4]
        if magic == b"RTCK":
            C, P, R, payload = struct.unpack_from("<IIIQ", b, pos + 4)
            hl = 28 + 16 * C
            cols, off = [], pos + hl
            for i in range(C):
                cid, codec, tr, raw_len, stored_len, crc = struct.unpack_from("<HBBIII", b, pos + 24 + 16 * i)
                cols.append(dict(id=cid, codec=codec, transform=tr, raw_len=raw_len, data=b[off:off + stored_len]))
                off += stored_len
            chunks.append(dict(offset=pos, P=P, R=R, columns=cols))
            pos = off
        elif magic == b"RTIX":
            body_len = struct.unpack_from("<Q", b, pos + 8)[0]
            index = b[pos:pos + 20 + body_len]
            trailer = b[pos + 20 + body_len:]
            break
        else:
            raise SystemExit(f"{path}: unexpected frame at {pos}")
    return b[:20 + n], header, chunks, index, trailer


def raw_column(col) -> bytes:
    """A column's bytes after decoding (before un-transforming)."""
    if col["codec"] == 0:
        return col["data"]
    d = zlib.decompressobj(-15)
    out = d.decompress(col["data"])
    assert len(out) == col["raw_len"] and d.eof
    return out


def chunk_frame(ch) -> bytes:
    C = len(ch["columns"])
    directory = b"".join(struct.pack("<HBBIII", c["id"], c["codec"], c["transform"], c["raw_len"], len(c["data"]),
                                     zlib.crc32(c["data"])) for c in ch["columns"])
    payload = b"".join(c["data"] for c in ch["columns"])
    head = b"RTCK" + struct.pack("<IIIQ", C, ch["P"], ch["R"], len(payload)) + directory
    return head + struct.pack("<I", zlib.crc32(head)) + payload


def recode(src, dst, raw_ids):
    """Rewrites src with the columns in raw_ids stored raw (codec 0), the index and trailer updated."""
    head, _h, chunks, index, trailer = parse(src)
    frames = []
    for ch in chunks:
        for c in ch["columns"]:
            if c["id"] in raw_ids and c["codec"] == 1:
                c["data"], c["codec"] = raw_column(c), 0
        frames.append(chunk_frame(ch))
    out = bytearray(head)
    offsets = []
    for f in frames:
        offsets.append((len(out), len(f)))
        out += f
    if index is not None:
        body = bytearray(index[16:-4])
        nc = struct.unpack_from("<Q", body, 0)[0]
        assert nc == len(frames)
        for i, (o, n) in enumerate(offsets):
            struct.pack_into("<QQ", body, 8 + 32 * i, o, n)
        fh = b"RTIX" + struct.pack("<IQ", 0, len(body))
        frame = fh + body + struct.pack("<I", zlib.crc32(fh + body))
        at = len(out)
        out += frame
        t = struct.pack("<QQI", at, len(frame), len(frames))
        out += t + struct.pack("<I", zlib.crc32(t)) + trailer[24:]
    open(dst, "wb").write(out)


def present_count(header, ch) -> int:
    L = len(header["model"]["layer_map"])
    R = ch["R"]
    for c in ch["columns"]:
        if c["id"] == MISSING:
            bits = int.from_bytes(raw_column(c), "little")
            return L * R - bin(bits).count("1")
    return L * R


def dump(paths, out):
    """The dump idcodec.c reads: per chunk k, width, experts, codes, packed, raw/stored ID_SLOTS and ID_NEW."""
    recs = []
    for p in paths:
        _head, h, chunks, _ix, _tr = parse(p)
        k, E = h["model"]["top_k"], h["model"]["num_experts"]
        w = 1 if h["columns"]["topk_ids"] == "u8" else 2
        for ch in chunks:
            cols = {c["id"]: c for c in ch["columns"]}
            s, n = cols[ID_SLOTS], cols[ID_NEW]
            q = present_count(h, ch)
            rs, rn = raw_column(s), raw_column(n)
            recs.append(struct.pack("<5I", k, w, E, q * k, int(s["transform"] == 2))
                        + struct.pack("<I", len(rs)) + rs + struct.pack("<II", s["codec"], len(s["data"])) + s["data"]
                        + struct.pack("<I", len(rn)) + rn + struct.pack("<II", n["codec"], len(n["data"])) + n["data"])
    with open(out, "wb") as f:
        f.write(struct.pack("<I", len(recs)))
        for r in recs:
            f.write(r)


# -- the numpy fallback of the Python package --------------------------------------------------------
def quantise(sym: bytes):
    """12-bit frequencies of the symbols (every present one >= 1, summing to 4096) and their cumulative starts."""
    import numpy as np
    cnt = np.bincount(np.frombuffer(sym, np.uint8), minlength=256).astype(np.int64)
    f = np.where(cnt > 0, np.maximum(cnt * 4096 // len(sym), 1), 0)
    f[int(np.argmax(cnt))] += 4096 - int(f.sum())
    return f, np.concatenate([[0], np.cumsum(f)[:-1]])


def rans_encode(sym: bytes, nw=32):
    """idcodec.c's rANS (32-bit states, 16-bit words, 12-bit frequencies, nw interleaved states), in Python:
    (states, words, frequencies, starts)."""
    f, c = quantise(sym)
    f, c = f.tolist(), c.tolist()
    x = [1 << 16] * nw
    words = []
    for i in range(len(sym) - 1, -1, -1):
        j, s = i % nw, sym[i]
        if x[j] >= ((1 << 4) << 16) * f[s]:
            words.append(x[j] & 0xFFFF)
            x[j] >>= 16
        x[j] = ((x[j] // f[s]) << 12) + x[j] % f[s] + c[s]
    return x, words[::-1], f, c


def rans_decode_numpy(x, words, f, c, n, nw=32):
    """The same stream decoded with numpy, nw states at a time (what a numpy fallback could do)."""
    import numpy as np
    f = np.asarray(f, np.int64)
    c = np.asarray(c, np.int64)
    slot_sym = np.repeat(np.arange(256), f)                     # 12-bit slot -> symbol
    x = np.asarray(x, np.int64)
    w = np.asarray(words + [0] * nw, np.int64)
    out = np.empty(n, np.uint8)
    p = 0
    for i in range(0, n - n % nw, nw):
        s = slot_sym[x & 4095]
        out[i:i + nw] = s
        y = f[s] * (x >> 12) + (x & 4095) - c[s]
        need = y < (1 << 16)
        rank = np.cumsum(need) - need
        x = np.where(need, (y << 16) | w[p + rank], y)
        p += int(need.sum())
    return out


def unpack_bits_numpy(packed: bytes, n: int, bits: int):
    """n values of `bits` <= 8 bits (little-endian bit order) as uint8: every 8 values are `bits` bytes,
    read as one 64-bit word and shifted apart."""
    import numpy as np
    groups = (n + 7) // 8
    b = np.zeros((groups, 8), np.uint8)
    src = np.frombuffer(packed, np.uint8)
    flat = np.zeros(groups * bits, np.uint8)
    flat[:len(src)] = src[:groups * bits]
    b[:, :bits] = flat.reshape(groups, bits)
    w = b.view("<u8")[:, 0]
    out = (w[:, None] >> (np.arange(8, dtype=np.uint64) * np.uint64(bits))) & np.uint64((1 << bits) - 1)
    return out.astype(np.uint8).reshape(-1)[:n]


def numpy_fallback(pair):
    """Seconds the numpy fallback spends on the id columns of both sides: today (stdlib zlib inflate, then the
    nibbles unpacked), ID_NEW bit-packed (numpy unpack) and ID_SLOTS rANS (timed on one 64 Ki-symbol block,
    checked against the input, scaled to the column)."""
    import numpy as np
    t_inflate = t_unpack = 0.0
    n_new = n_slots = 0
    block = None
    for p in pair:
        _head, h, chunks, _ix, _tr = parse(p)
        E = h["model"]["num_experts"]
        bits = max(1, (E - 1).bit_length())
        for ch in chunks:
            cols = {col["id"]: col for col in ch["columns"]}
            t = time.process_time()
            slots = raw_column(cols[ID_SLOTS])
            new = raw_column(cols[ID_NEW])
            t_inflate += time.process_time() - t
            n_slots += len(slots)
            if block is None and len(slots) >= 65536:
                block = slots[:65536]
            ids = np.frombuffer(new, np.uint8)
            packed = np.packbits(np.unpackbits(ids[:, None], axis=1, bitorder="little")[:, :bits].reshape(-1),
                                 bitorder="little")
            t = time.process_time()
            got = unpack_bits_numpy(packed, len(ids), bits)
            t_unpack += time.process_time() - t
            assert np.array_equal(got, ids)
            n_new += len(ids)
    x, words, f, c = rans_encode(block)
    t = time.process_time()
    got = rans_decode_numpy(x, words, f, c, len(block))
    t_rans = (time.process_time() - t) * n_slots / len(block)
    assert bytes(got) == block
    return dict(inflate_both=t_inflate, bitpack_new=t_unpack, rans_slots=t_rans, slot_bytes=n_slots, new_ids=n_new)


# -- measuring ---------------------------------------------------------------------------------------
def build_idcodec(workdir):
    exe = os.path.join(workdir, "idcodec")
    subprocess.run(["cc", "-O2", "-march=native", "-o", exe, os.path.join(HERE, "idcodec.c"), "-ldeflate", "-lz"], check=True)
    return exe


def frontier(exe, dump_path, repeat):
    out = subprocess.run([exe, dump_path, "--repeat", str(repeat)], check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def timed(cmd):
    """Wall time and CPU time (user + sys of the child) of one run."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t
    if status != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{p.stderr.read().decode()}")
    return dt, ru.ru_utime + ru.ru_stime


def make_data(o):
    """The data sets: {name: [rtrace paths]} and the diff pair."""
    import numpy as np
    from diff_stats import bench as dsb   # noqa: F401 (bench/diff_stats/bench.py's generator)
    import format_bench as fb
    os.makedirs(o.workdir, exist_ok=True)
    sets = {"real Qwen3-MoE (E=32, k=4; 4 traces)": sorted(glob.glob(os.path.join(REPO, "samples", "qwen3moe-L6-E32-k4",
                                                                                   "*.rtrace")))}
    fmt = os.path.join(o.workdir, "format.rtrace")
    if not os.path.exists(fmt):
        raw = os.path.join(o.workdir, "format.npz")
        np.savez(raw, **fb.gen(100_000))
        subprocess.run([o.rtrace, "import", "--from", "npz", raw, "-o", fmt, "--num-experts", "128"], check=True)
    sets["format bench (E=128, k=8, 100k rows, skewed)"] = [fmt]
    pair = [os.path.join(o.workdir, s + ".rtrace") for s in ("a", "b")]
    if not all(os.path.exists(p) for p in pair):
        a, b = dsb.generate(200, 500, 48, 128, 8, 0.05, 1)
        tokens = np.random.default_rng(2).integers(0, 150000, size=(200, 501), dtype=np.int32)
        for name, ids, p in (("a", a, pair[0]), ("b", b, pair[1])):
            npz = os.path.join(o.workdir, name + ".npz")
            np.savez(npz, tokens=tokens, prompt_len=np.int32(125), topk_ids=ids)
            subprocess.run([o.rtrace, "import", "--from", "npz", npz, "-o", p, "--num-experts", "128", "--uid-prefix",
                            "s", "--role", "rollout" if name == "a" else "train"], check=True)
    sets[DIFF_SET] = pair
    return sets, pair


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rtrace", default=os.path.join(REPO, ".build", "release", "rtrace"))
    ap.add_argument("--workdir", default="/tmp/rtrace-idcoding")
    ap.add_argument("--repeat", type=int, default=9, help="decoder timings: best of N")
    ap.add_argument("--diff-repeat", type=int, default=9, help="rtrace diff timings: best of N")
    ap.add_argument("--json", help="also write every figure to this JSON file")
    o = ap.parse_args()
    print(f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at the start.\n")
    sets, pair = make_data(o)
    exe = build_idcodec(o.workdir)
    results = {"frontier": {}, "diff": {}}

    print("## Frontier: bytes and single-thread decode time of each coding\n")
    for name, paths in sets.items():
        d = os.path.join(o.workdir, "dump-" + "".join(ch for ch in name.split(" (")[0] if ch.isalnum()) + ".bin")
        if not os.path.exists(d):
            dump(paths, d)
        rows = frontier(exe, d, o.repeat)
        results["frontier"][name] = rows
        print(f"### {name}\n")
        print("| column | coding | bytes | vs today | bits per code | decode, CPU s | ns per code | vs today |")
        print("|---|---|---|---|---|---|---|---|")
        today = {r["column"]: r for r in rows if r["coding"] == "deflate-huffman"}
        for r in rows:
            t0 = today[r["column"]]
            print(f"| {r['column']} | {r['coding']} | {r['bytes']:,} | {r['bytes'] / t0['bytes']:.3f} | "
                  f"{8 * r['bytes'] / max(r['codes'], 1):.2f} | {r['best_s']:.4f} | {r['ns_per_code']:.2f} | "
                  f"{r['best_s'] / t0['best_s']:.2f} |")
        print()

    print("## rtrace diff end to end (diff benchmark, both sides recoded alike; measured)\n")
    variants = {"today": (), "ID_NEW raw": (ID_NEW,), "ID_SLOTS raw": (ID_SLOTS,), "both raw": (ID_SLOTS, ID_NEW)}
    files = {}
    for v, ids in variants.items():
        files[v] = []
        for p in pair:
            q = p if not ids else p.replace(".rtrace", "-" + "-".join(map(str, ids)) + ".rtrace")
            if ids and not os.path.exists(q):
                recode(p, q, set(ids))
            files[v].append(q)
    # interleaved, so that a busy minute on this shared machine hits every variant alike; the best wall
    # time and the best CPU time of the runs (each its own minimum)
    wall = {v: float("inf") for v in variants}
    cpu = dict(wall)
    for _ in range(o.diff_repeat):
        for v in variants:
            w, c = timed([o.rtrace, "diff", *files[v], "--json"])
            wall[v], cpu[v] = min(wall[v], w), min(cpu[v], c)
    size0 = sum(os.path.getsize(p) for p in files["today"])
    print("| files | bytes (both sides) | vs today | diff wall (s) | speed-up | diff CPU (s) | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for v in variants:
        size = sum(os.path.getsize(p) for p in files[v])
        results["diff"][v] = dict(bytes=size, wall=wall[v], cpu=cpu[v])
        print(f"| {v} | {size:,} | {size / size0:.3f} | {wall[v]:.3f} | {wall['today'] / wall[v]:.2f}x | "
              f"{cpu[v]:.3f} | {cpu['today'] / cpu[v]:.2f}x |")
    print()

    # The estimate: diff's time = its time with both columns raw + alpha x the single-thread decode time of
    # the two columns' codings (both sides), alpha fitted on today's coding; checked on the two one-raw files.
    fr = {(r["column"], r["coding"]): r for r in results["frontier"][DIFF_SET]}
    dec = {k: r["best_s"] for k, r in fr.items()}
    today_ids = fr[("ID_SLOTS", "deflate-huffman")]["bytes"] + fr[("ID_NEW", "deflate-huffman")]["bytes"]
    d0 = dec[("ID_SLOTS", "deflate-huffman")] + dec[("ID_NEW", "deflate-huffman")]
    alpha = {m: (t["today"] - t["both raw"]) / d0 for m, t in (("wall", wall), ("cpu", cpu))}

    def est(slots, new, m):
        t = wall if m == "wall" else cpu
        return t["both raw"] + alpha[m] * (dec[("ID_SLOTS", slots)] + dec[("ID_NEW", new)])

    print(f"Model: diff time = (both raw) + alpha x (decode time of the two columns, one thread, both sides); "
          f"alpha = {alpha['wall']:.2f} (wall), {alpha['cpu']:.2f} (CPU). Check on the measured files:\n")
    print("| files | wall measured | wall model | CPU measured | CPU model |")
    print("|---|---|---|---|---|")
    for v, (sl, nw) in (("ID_NEW raw", ("deflate-huffman", "raw")), ("ID_SLOTS raw", ("raw", "deflate-huffman"))):
        print(f"| {v} | {wall[v]:.3f} | {est(sl, nw, 'wall'):.3f} | {cpu[v]:.3f} | {est(sl, nw, 'cpu'):.3f} |")
    print()
    print("## Candidates: id bytes, file bytes and the estimated `rtrace diff` speed-up (rule: >= 1.5x for <= 5 % "
          "more bytes)\n")
    print("| ID_SLOTS | ID_NEW | id bytes vs today | file bytes vs today | diff wall (est.) | speed-up | "
          "diff CPU (est.) | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    results["candidates"] = []
    slot_codings = [c for (col, c) in fr if col == "ID_SLOTS"]
    new_codings = [c for (col, c) in fr if col == "ID_NEW"]
    for sl in slot_codings:
        for nw in new_codings:
            ids = fr[("ID_SLOTS", sl)]["bytes"] + fr[("ID_NEW", nw)]["bytes"]
            fb = (size0 - today_ids + ids) / size0
            ew, ec = est(sl, nw, "wall"), est(sl, nw, "cpu")
            results["candidates"].append(dict(slots=sl, new=nw, id_bytes=ids / today_ids, file_bytes=fb, wall=ew,
                                              cpu=ec))
            print(f"| {sl} | {nw} | {ids / today_ids:.3f} | {fb:.3f} | {ew:.3f} | {wall['today'] / ew:.2f}x | "
                  f"{ec:.3f} | {cpu['today'] / ec:.2f}x |")
    print()
    print("## The Python package's numpy fallback: seconds on the id columns of both sides (process CPU)\n")
    nf = numpy_fallback(pair)
    results["numpy_fallback"] = nf
    print("| coding | what decodes it | CPU s |")
    print("|---|---|---|")
    print(f"| today, both columns | stdlib zlib inflate | {nf['inflate_both']:.3f} |")
    print(f"| ID_NEW bit-packed | numpy: 8 ids from each 7 bytes, one 64-bit word shifted apart | {nf['bitpack_new']:.3f} |")
    print(f"| ID_SLOTS rANS (pairs) | numpy, 32 states a step (one 64 Ki block, scaled to {nf['slot_bytes']:,} bytes) | "
          f"{nf['rans_slots']:.1f} |")
    print()
    print(f"Load average {os.getloadavg()[0]:.1f} at the end.")
    if o.json:
        json.dump(results, open(o.json, "w"), indent=1)


if __name__ == "__main__":
    main()
