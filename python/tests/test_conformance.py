"""The conformance files of spec/conformance/ (one per rule of spec/format.md two readers could read two
ways): the Python reader does what cases.json says in each mode of spec §8, and, salvaging, recovers and
loses the same records as the Swift CLI's `rtrace check --salvage`."""
import json
import os
import re
import subprocess
import warnings

import pytest

import rtrace
from conftest import REPO

# every test reads with both decoders: the accelerator rtrace._native and numpy (conftest.decoder)
pytestmark = pytest.mark.usefixtures("decoder")

DIR = os.path.join(REPO, "spec", "conformance")
CASES = json.load(open(os.path.join(DIR, "cases.json")))["cases"]
BIN = os.environ.get("RTRACE_BIN")
need_bin = pytest.mark.skipif(not BIN, reason="RTRACE_BIN is not set: Swift CLI cross-implementation tests skipped")


def read(path, **kw):
    """Reads every record: (uids delivered, the FormatError that stopped the read or None, the reader or
    None, the warnings given)."""
    got, error, reader = [], None, None
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        try:
            reader = rtrace.Reader(path, **kw)
            for rec in reader:
                got.append(rec.uid)
        except rtrace.FormatError as e:
            error = e
    return got, error, reader, [str(w.message) for w in ws]


def expect(case, mode, got, error):
    want = case.get(mode, case["strict"])
    name = f"{case['file']} ({mode})"
    if want["error"] is None:
        assert error is None, f"{name}: {error}"
    else:
        assert error is not None, f"{name}: read without error, expected {want['error']}"
        assert error.kind == want["error"], f"{name}: {error}"
        lo, hi = want["at"]
        assert error.offset is not None and lo <= error.offset < hi, f"{name}: offset {error.offset} not in [{lo}, {hi}): {error}"
    assert len(got) == want["records"], f"{name}: {len(got)} records delivered, expected {want['records']}"


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_strict(case):
    path = os.path.join(DIR, case["file"])
    got, error, reader, ws = read(path)
    expect(case, "strict", got, error)
    for n in case.get("notices", []):
        assert any(n in w for w in ws), f"{case['file']}: no notice about {n!r} in {ws}"
    if "role" in case:
        assert reader.header["engine"]["role"] == case["role"]
    if "policy_version" in case:
        assert reader.header["policy_version"] == case["policy_version"]
    if "lookup" in case:
        lk = case["lookup"]
        r = rtrace.Reader(path)
        with pytest.raises(rtrace.FormatError) as e:
            r.get(lk["uid"])
        assert e.value.kind == lk["error"], e.value


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_incomplete_tolerant(case):
    got, error, _, _ = read(os.path.join(DIR, case["file"]), allow_incomplete=True)
    expect(case, "incomplete", got, error)


@pytest.mark.parametrize("case", [c for c in CASES if "salvage" in c], ids=[c["file"] for c in CASES if "salvage" in c])
def test_salvage(case):
    got, error, reader, _ = read(os.path.join(DIR, case["file"]), salvage=True)
    want = case["salvage"]
    assert error is None, f"{case['file']}: salvage raised {error}"
    assert len(got) == want["records"], f"{case['file']}: salvaged {got}"
    assert reader.complete == want["complete"]
    assert (not reader.damage) == want["clean"], reader.damage


@pytest.mark.parametrize("case", [c for c in CASES if "salvage" in c], ids=[c["file"] for c in CASES if "salvage" in c])
def test_salvage_pipe_never_reads_more_than_a_file(case):
    """On a pipe the forward search is impossible: a salvage stops at the first damaged header, with a subset
    of what a regular file gives."""
    path = os.path.join(DIR, case["file"])
    with open(path, "rb") as f:
        data = f.read()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.write(w, data)
        finally:
            os._exit(0)
    os.close(w)
    got, error, _, _ = read(r, salvage=True)
    os.waitpid(pid, 0)
    assert error is None, error
    file_got, *_ = read(path, salvage=True)
    assert set(got) <= set(file_got)


@need_bin
@pytest.mark.parametrize("case", [c for c in CASES if "salvage" in c], ids=[c["file"] for c in CASES if "salvage" in c])
def test_salvage_matches_swift(case, tmp_path):
    """`rtrace check --salvage` and Reader(salvage=True) recover the same records and count the same losses."""
    path = os.path.join(DIR, case["file"])
    out = tmp_path / "salvaged.rtrace"
    p = subprocess.run([BIN, "check", "--quiet", "--salvage", str(out), path], capture_output=True, text=True,
                       timeout=120)
    m = re.search(r"(\d+) intact records, \d+ rows, (\d+) records lost, (complete|no valid index/trailer)", p.stdout)
    assert m, p.stdout + p.stderr
    got, error, reader, _ = read(path, salvage=True)
    assert error is None
    assert [r.uid for r in rtrace.Reader(out)] == got
    assert int(m.group(2)) == reader.lost_records, f"Swift lost {m.group(2)}, Python {reader.lost_records}: {reader.damage}"
    assert (m.group(3) == "complete") == reader.complete
    assert (p.returncode == 0) == (not reader.damage)


def _reseal(b: bytes) -> bytes:
    """Recomputes every CRC a damaged file's structure still lets one find (header, chunk headers and columns,
    index, trailer), so that damage reaches the checks behind the CRCs."""
    import struct
    import zlib
    b = bytearray(b)
    if len(b) < 20:
        return bytes(b)
    n = struct.unpack_from("<I", b, 12)[0]
    if 20 + n > len(b):
        return bytes(b)
    struct.pack_into("<I", b, 16 + n, zlib.crc32(b[:16 + n]))
    p = 20 + n
    while p + 28 <= len(b):
        magic = bytes(b[p:p + 4])
        if magic == b"RTCK":
            C = struct.unpack_from("<I", b, p + 4)[0]
            if not 1 <= C <= 64 or p + 28 + 16 * C > len(b):
                break
            q = p + 28 + 16 * C
            for i in range(C):
                e = p + 24 + 16 * i
                sl = struct.unpack_from("<I", b, e + 8)[0]
                if q + sl <= len(b):
                    struct.pack_into("<I", b, e + 12, zlib.crc32(b[q:q + sl]))
                q += sl
            struct.pack_into("<I", b, p + 24 + 16 * C, zlib.crc32(b[p:p + 24 + 16 * C]))
            p = q
        elif magic == b"RTIX":
            bl = struct.unpack_from("<Q", b, p + 8)[0]
            if p + 20 + bl > len(b):
                break
            struct.pack_into("<I", b, p + 16 + bl, zlib.crc32(b[p:p + 16 + bl]))
            p += 20 + bl
            if p + 32 <= len(b):
                struct.pack_into("<I", b, p + 20, zlib.crc32(b[p:p + 20]))
            break
        else:
            break
    return bytes(b)


def _mutants(seed: int, count: int):
    """Seeded damage to the conformance files: bit flips, insertions, deletions, mostly with CRCs resealed."""
    import random
    rnd = random.Random(seed)
    chunked = [c["file"] for c in CASES if not c["file"].startswith(("h-", "v-"))]
    for i in range(count):
        with open(os.path.join(DIR, rnd.choice(chunked)), "rb") as f:
            b = bytearray(f.read())
        for _ in range(rnd.randint(1, 3)):
            at, op = rnd.randrange(20, len(b)), rnd.random()
            if op < 0.6:
                b[at] ^= 1 << rnd.randrange(8)
            elif op < 0.8:
                b[at:at] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8)))
            else:
                del b[at:at + rnd.randint(1, 16)]
        yield i, _reseal(bytes(b)) if rnd.random() < 0.7 else bytes(b)


@need_bin
def test_damaged_files_read_alike_in_swift(tmp_path, decoder):
    """Damaged files (seeded mutants of the conformance files): a strict read delivers the same records before
    failing or not in both readers (`rtrace view`), and a salvage recovers and loses the same records
    (`rtrace check --salvage`). Differential, not a list of cases: it finds disagreements nobody listed."""
    path, out = tmp_path / "m.rtrace", tmp_path / "salvaged.rtrace"
    for i, data in _mutants(16 if decoder == "native" else 61, 60):
        path.write_bytes(data)
        got, error, reader, _ = read(str(path))
        v = subprocess.run([BIN, "view", str(path)], capture_output=True, text=True, timeout=60)
        swift = [json.loads(line)["uid"] for line in v.stdout.splitlines()]
        assert swift == got and (v.returncode != 0) == (error is not None), \
            f"mutant {i}: Swift {swift} rc {v.returncode} {v.stderr[-200:]}; Python {got} {error}"
        if reader is None:
            continue                       # the header fails: nothing to salvage
        got, error, reader, _ = read(str(path), salvage=True)
        c = subprocess.run([BIN, "check", "--quiet", "--salvage", str(out), str(path)], capture_output=True,
                           text=True, timeout=60)
        m = re.search(r"(\d+) intact records, \d+ rows, (\d+) records lost, (complete|no valid)", c.stdout)
        assert m and error is None, (i, c.stdout, c.stderr, error)
        assert [r.uid for r in rtrace.Reader(out)] == got, f"mutant {i}: salvaged records differ"
        assert (int(m.group(2)), m.group(3) == "complete") == (reader.lost_records, reader.complete), \
            f"mutant {i}: Swift {c.stdout}; Python lost {reader.lost_records}, complete {reader.complete}: {reader.damage}"
