#!/usr/bin/env python3
"""Benchmark: peak memory and time of `rtrace import --from npz` and `rtrace export --to npz` on a dump
larger than memory would allow if held whole, of decompression bombs, and of np.savez (issue 15).

Generates SEQS sequences x ROWS rows x 48 layers x top-8 of 128 experts (int32 ids, 1M rows = 1.5 GB;
each (row, layer) draws a random first expert and steps by 16) with tokens, and, in the same run:

  np.savez        numpy writes the arrays (held in memory): the baseline of the export
  import          rtrace import --from npz big.npz -o big.rtrace
  import stdin    cat big.npz | rtrace import --from npz - -o ... (spooled to a temporary file)
  export          rtrace export --to npz big.rtrace -o out.npz (index: topk_ids written as it comes)
  export pipe     cat big.rtrace | rtrace export --to npz - -o ... (no index: every array spooled)
  bombs           topk_ids.npy whose .npy header declares 9.8 GB and which holds 1 GiB of zeros
                  (1 MB deflated); one whose header and zip directory both declare 3.8 GB (1 GiB of
                  zeros held); and one that declares 1000 rows but inflates to 1 GiB more (directory
                  and CRC agreeing with the declared bytes)

Peak resident memory and CPU time come from GNU time (/usr/bin/time -f '%M %U %S') around each command,
so the Python process that holds the arrays is not counted; np.savez's CPU time is time.process_time().
Each export is checked against the arrays (np.load, zipfile.testzip).

Usage: python3 bench/npz/bench.py [--seqs 1000] [--rows 1000] [--rtrace .build/release/rtrace]
       [--workdir /tmp/rtrace-npz-bench] [--baseline OTHER_RTRACE] [--repeat 2] [--keep]
np.savez and the export run alternately, best of --repeat each (the same disk and page cache for both).
--baseline runs the import, export and bomb commands with another binary too (the one before streaming).
Needs about 4 x the dump's size of free disk in --workdir and $TMPDIR.
"""
import argparse, json, os, shutil, struct, subprocess, sys, time, zipfile, zlib
import numpy as np

LAYERS, TOPK, EXPERTS = 48, 8, 128


def generate(seqs, rows, seed=1):
    rng = np.random.default_rng(seed)
    first = rng.integers(0, EXPERTS, size=(seqs, rows, LAYERS, 1), dtype=np.int32)
    ids = (first + np.arange(TOPK, dtype=np.int32) * (EXPERTS // TOPK)) % EXPERTS
    tokens = rng.integers(0, 150_000, size=(seqs, rows + 1), dtype=np.int32)
    return {"topk_ids": ids, "tokens": tokens, "prompt_len": np.int32(rows // 4)}


def measure(cmd, shell=False, expect_ok=True):
    """Runs cmd under GNU time; returns (wall seconds, CPU seconds, peak RSS in MB, stderr)."""
    t = time.perf_counter()
    fmt = "__RSS__ %M %U %S"
    full = f"/usr/bin/time -f '{fmt}' {cmd}" if shell else ["/usr/bin/time", "-f", fmt, *cmd]
    p = subprocess.run(full, shell=shell, capture_output=True, text=True)
    dt = time.perf_counter() - t
    lines = p.stderr.splitlines()
    last = next(l.split() for l in reversed(lines) if l.startswith("__RSS__"))
    rss, cpu = int(last[1]) / 1024, float(last[2]) + float(last[3])
    err = "\n".join(l for l in lines if not l.startswith("__RSS__") and not l.startswith("Command exited"))
    if expect_ok is True and p.returncode != 0:
        sys.exit(f"failed: {cmd}\n{err}")
    if expect_ok is False and p.returncode == 0:
        sys.exit(f"was accepted: {cmd}")
    if p.returncode == 0:
        err = "(accepted) " + err
    return dt, cpu, rss, err


def npy_header(dtype, shape):
    h = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (np.dtype(dtype).str, repr(tuple(shape)))
    n = ((10 + len(h) + 1 + 63) // 64) * 64
    h = h + " " * (n - 10 - len(h) - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h.encode()


def write_bomb(path, header, zeros, tokens_rows):
    """topk_ids.npy = header + `zeros` zero bytes, deflated (1 MiB at a time), plus a small tokens array."""
    z = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED)
    with z.open("topk_ids.npy", "w", force_zip64=True) as f:
        f.write(header)
        block = bytes(1 << 20)
        for _ in range(zeros >> 20):
            f.write(block)
    with z.open("tokens.npy", "w") as f:
        np.lib.format.write_array(f, np.zeros((1, tokens_rows), dtype=np.int32))
    z.close()


def patch_directory(path, member, size, crc=None):
    """Sets `member`'s uncompressed size (and CRC) in the central directory (ZIP64 extra field included)."""
    b = bytearray(open(path, "rb").read())
    at = zipfile.ZipFile(path).start_dir
    while True:
        n, e, c = struct.unpack_from("<HHH", b, at + 28)
        if b[at + 46:at + 46 + n].decode() == member:
            break
        at += 46 + n + e + c
    if crc is not None:
        struct.pack_into("<I", b, at + 16, crc)
    if struct.unpack_from("<I", b, at + 24)[0] == 0xFFFFFFFF:
        x = at + 46 + n
        while struct.unpack_from("<H", b, x)[0] != 1:
            x += 4 + struct.unpack_from("<H", b, x + 2)[0]
        struct.pack_into("<Q", b, x + 4, size)
    else:
        assert size < 0xFFFFFFFF
        struct.pack_into("<I", b, at + 24, size)
    open(path, "wb").write(b)


def check_export(path, arrays):
    d = np.load(path)
    for k, v in arrays.items():
        assert d[k].dtype == v.dtype and d[k].shape == v.shape and np.array_equal(d[k], v), k
    assert zipfile.ZipFile(path).testzip() is None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seqs", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--rtrace", default=".build/release/rtrace")
    ap.add_argument("--baseline", help="another rtrace binary to measure the same commands with")
    ap.add_argument("--workdir", default="/tmp/rtrace-npz-bench")
    ap.add_argument("--repeat", type=int, default=2, help="np.savez and export, alternately, best of N")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    o = ap.parse_args()
    os.makedirs(o.workdir, exist_ok=True)
    w = lambda n: os.path.join(o.workdir, n)
    rt = os.path.abspath(o.rtrace)
    bins = [("rtrace", rt)] + ([("baseline", os.path.abspath(o.baseline))] if o.baseline else [])
    rows = o.seqs * o.rows
    print(f"data: {o.seqs} sequences x {o.rows} rows = {rows:,} rows x {LAYERS} layers x top-{TOPK} of {EXPERTS}, int32 ids")

    arrays = generate(o.seqs, o.rows)
    t, c = time.perf_counter(), time.process_time()
    np.savez(w("big.npz"), **arrays)
    t_savez, c_savez = time.perf_counter() - t, time.process_time() - c
    size = os.path.getsize(w("big.npz"))
    print(f"npz: {size:,} bytes; the first np.savez (arrays in memory): {t_savez:.2f} s wall, {c_savez:.2f} s CPU")
    results = {"rows": rows, "npz_bytes": size, "np_savez": (t_savez, c_savez)}
    def show(what, dt, cpu, rss, note):
        mem = f"peak RSS {rss:8.1f} MB" if rss is not None else " " * 20
        print(f"{what:13s} {dt:6.2f} s wall {cpu:6.2f} s CPU  {mem}  {note}")

    for name, b in bins:
        print(f"== {name}: {b}")
        imp = f"{b} import --from npz {w('big.npz')} -o {w(name + '.rtrace')} --engine bench --role rollout --num-experts {EXPERTS}"
        dt, cpu, rss, _ = measure(imp, shell=True)
        show("import", dt, cpu, rss, f"({rows / dt:,.0f} rows/s; the npz is {size / 2**20:,.0f} MiB)")
        results[f"{name}_import"] = (dt, cpu, rss)
        if name == "rtrace":
            # sh's own memory is not counted: GNU time reports the largest process, rtrace.
            dt, cpu, rss, _ = measure(f"sh -c 'cat {w('big.npz')} | {b} import --from npz - -o {w('stdin.rtrace')} --num-experts {EXPERTS}'", shell=True)
            show("import stdin", dt, cpu, rss, "(spooled to a temporary file; CPU includes cat)")
            results["rtrace_import_stdin"] = (dt, cpu, rss)
        # np.savez and the export alternately, best of `repeat` each, so that both meet the same disk and page cache.
        best, sv = None, None
        for _ in range(o.repeat):
            t, c = time.perf_counter(), time.process_time()
            np.savez(w("np-out.npz"), **arrays)
            s1 = (time.perf_counter() - t, time.process_time() - c)
            os.remove(w("np-out.npz"))
            sv = s1 if sv is None else (min(sv[0], s1[0]), min(sv[1], s1[1]))
            m = measure([b, "export", "--to", "npz", w(name + ".rtrace"), "-o", w(name + "-out.npz")])
            best = m if best is None else (min(best[0], m[0]), min(best[1], m[1]), max(best[2], m[2]), "")
        dt, cpu, rss, _ = best
        show("np.savez", sv[0], sv[1], None, "(the same arrays, from memory, in this process)")
        show("export", dt, cpu, rss, f"({dt / sv[0]:.2f}x np.savez's wall time, {cpu / sv[1]:.2f}x its CPU time)")
        results[f"{name}_export"] = (dt, cpu, rss)
        results[f"{name}_np_savez"] = sv
        check_export(w(name + "-out.npz"), arrays)
        os.remove(w(name + "-out.npz"))
        if name == "rtrace":
            dt, cpu, rss, _ = measure(f"sh -c 'cat {w(name + '.rtrace')} | {b} export --to npz - -o {w('pipe-out.npz')}'", shell=True)
            show("export pipe", dt, cpu, rss, f"({dt / sv[0]:.2f}x / {cpu / sv[1]:.2f}x np.savez; no index: every array spooled)")
            results["rtrace_export_pipe"] = (dt, cpu, rss)
            check_export(w("pipe-out.npz"), arrays)
            os.remove(w("pipe-out.npz"))
    del arrays

    # Bombs. 1: the (header 9.8 GB, 1 GiB of zeros held, directory honest about what it holds).
    declared = npy_header("<i4", (1, 6_400_000, LAYERS, TOPK))
    write_bomb(w("bomb.npz"), declared, 1 << 30, 8)
    # 2: header and directory both declare 3.8 GB (a 32-bit directory size), 1 GiB of zeros held.
    agreeing = npy_header("<i4", (1, 2_500_000, LAYERS, TOPK))
    write_bomb(w("bomb-agreeing.npz"), agreeing, 1 << 30, 8)
    patch_directory(w("bomb-agreeing.npz"), "topk_ids.npy", len(agreeing) + 2_500_000 * LAYERS * TOPK * 4)
    # 3: declares 1000 rows, holds 1 GiB more (directory and CRC say the declared bytes).
    small = npy_header("<i4", (1, 1000, LAYERS, TOPK))
    write_bomb(w("bomb-more.npz"), small, 1 << 30, 1001)
    declared_bytes = small + bytes(1000 * LAYERS * TOPK * 4)
    patch_directory(w("bomb-more.npz"), "topk_ids.npy", len(declared_bytes), zlib.crc32(declared_bytes))
    print(f"bombs: {os.path.getsize(w('bomb.npz')):,} / {os.path.getsize(w('bomb-agreeing.npz')):,} / "
          f"{os.path.getsize(w('bomb-more.npz')):,} bytes on disk")
    for name, b in bins:
        for bomb, what in [("bomb", "declares 9.8 GB, holds 1 GiB"), ("bomb-agreeing", "declares 3.8 GB (directory too)"),
                           ("bomb-more", "declares 1000 rows, holds 1 GiB more")]:
            cmd = [b, "import", "--from", "npz", w(bomb + ".npz"), "-o", w("bomb.rtrace"), "--num-experts", str(EXPERTS), "--no-validate"]
            # This rtrace must refuse every bomb; the baseline may not.
            dt, cpu, rss, err = measure(cmd, expect_ok=False if name == "rtrace" else None)
            print(f"{name} {what:34s} {dt:6.2f} s wall {cpu:6.2f} s CPU  peak RSS {rss:8.1f} MB  {(err.strip().splitlines() or ['accepted'])[-1][:240]}")
            results[f"{name}_{bomb}"] = (dt, cpu, rss)

    print(json.dumps(results))
    if not o.keep:
        shutil.rmtree(o.workdir)


if __name__ == "__main__":
    main()
