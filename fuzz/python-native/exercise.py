"""What the fuzz target "reader" (fuzz_native.c) does with each input, and what
python/tests/test_fuzz_regressions.py replays: every read path of rtrace.Reader over the bytes.

``exercise(data)`` reads the input as given and with every CRC-32 recomputed (``fix_checksums``, as the
Swift harness fuzz/Sources/FuzzReader does, so that mutations get past the checksums), as a regular file
(iterating, then through the index) or as a pipe, with the C decoder rtrace._native and, for half the
inputs, with the numpy decoder too. It raises AssertionError when the two decoders disagree (other records, or
another error) and lets any exception that is not rtrace.FormatError through: both are bugs. A
FormatError is the expected answer to a damaged file."""
from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np

from rtrace import reader as RD
from rtrace._format import FormatError

NATIVE = RD._native


def check_native():
    """Fails unless the reader decodes with rtrace._native (the fuzz target registers its own build)."""
    if NATIVE is None:
        raise RuntimeError("rtrace._native is not in use (RTRACE_PURE_PYTHON=1, or it did not import)")


class Pipe(io.RawIOBase):
    """The bytes as a stream that cannot seek (the reader then takes the pipe path: no index)."""

    def __init__(self, data: bytes):
        self._b = io.BytesIO(data)

    def readable(self):
        return True

    def seekable(self):
        return False

    def readinto(self, buf):
        return self._b.readinto(buf)


def fix_checksums(b: bytes) -> bytes:
    """The input with every CRC-32 recomputed where its structure can be followed that far: the header,
    each chunk's columns, payload_len and header, the index frame and the trailer."""
    b = bytearray(b)

    def u32(i):
        return struct.unpack_from("<I", b, i)[0]

    def put32(v, i):
        struct.pack_into("<I", b, i, v & 0xFFFFFFFF)

    if len(b) < 20:
        return bytes(b)
    n = u32(12)
    if n > len(b) - 20:
        return bytes(b)
    put32(zlib.crc32(b[:16 + n]), 16 + n)
    pos = 20 + n
    while pos + 4 <= len(b):
        magic = bytes(b[pos:pos + 4])
        if magic == b"RTCK":
            if pos + 24 > len(b):
                break
            c = u32(pos + 4)
            if not 1 <= c <= 64 or pos + 28 + 16 * c > len(b):
                break
            hl = 28 + 16 * c
            off = pos + hl
            fits = True
            for i in range(c):
                e = pos + 24 + 16 * i
                stored = u32(e + 8)
                if off + stored > len(b):
                    fits = False
                    break
                put32(zlib.crc32(b[off:off + stored]), e + 12)
                off += stored
            if fits:
                struct.pack_into("<Q", b, pos + 16, off - pos - hl)
            put32(zlib.crc32(b[pos:pos + hl - 4]), pos + hl - 4)
            if not fits:
                break
            pos = off
        elif magic == b"RTIX":
            if pos + 20 > len(b):
                break
            body = struct.unpack_from("<Q", b, pos + 8)[0]
            if body > len(b) - pos - 20:
                break
            end = pos + 16 + body
            put32(zlib.crc32(b[pos:end]), end)
            pos = end + 4
            if pos + 32 <= len(b):
                put32(zlib.crc32(b[pos:pos + 20]), pos + 20)
            break
        else:
            break
    return bytes(b)


def _arr(a):
    """An array as comparable bytes (None stays None): dtype, shape and every bit."""
    return None if a is None else (a.dtype.str, a.shape, np.ascontiguousarray(a).tobytes())


def _record(r) -> tuple:
    return (r.uid, r.group, _arr(r.tokens), r.prompt_len, r.start, _arr(r.topk_ids), _arr(r.topk_weights),
            _arr(r.router_logits), _arr(r.logprobs),
            None if r.reward is None else struct.pack("<d", r.reward), repr(r.attrs), r.ordinal)


def _read(data: bytes, seekable: bool, allow_incomplete: bool):
    """What one read gives: ("ok", records and completeness, records found through the index) or
    ("error", message)."""
    got = []
    try:
        rd = RD.Reader(data if seekable else Pipe(data), allow_incomplete=allow_incomplete, threads=False)
        for r in rd:
            got.append(_record(r))
        by_uid = []
        if seekable and rd.index is not None:
            uids = rd.uids()
            for uid in {uids[0], uids[-1]} if uids else ():
                try:
                    by_uid.append(_record(rd.get(uid)))
                except KeyError:
                    by_uid.append(("KeyError", uid))
        return ("ok", got, rd.complete, by_uid)
    except FormatError as e:
        return ("error", str(e), got)


def _both_decoders(data: bytes, seekable: bool, allow_incomplete: bool):
    """_read with the C decoder and with numpy; AssertionError when they differ."""
    try:
        RD._native = NATIVE
        native = _read(data, seekable, allow_incomplete)
        RD._native = None
        numpy = _read(data, seekable, allow_incomplete)
    finally:
        RD._native = NATIVE
    if native != numpy:
        raise AssertionError(f"rtrace._native and numpy differ (seekable={seekable}, allow_incomplete="
                             f"{allow_incomplete}):\n  native: {_short(native)}\n  numpy:  {_short(numpy)}")


def _short(outcome) -> str:
    s = repr(outcome)
    return s if len(s) < 2000 else s[:2000] + "..."


def exercise(data: bytes, every_path: bool = False) -> None:
    """Every read path over the input and over its checksum-fixed version (see the module's text).

    The fuzz target keeps each input cheap: the input's length picks one of four read plans (a file
    with the C decoder; the same against numpy; a pipe; a pipe against numpy), each plan tolerating an
    incomplete file or not by the length's next bit. ``every_path`` (the regression replay) runs them
    all."""
    plans = [(True, False), (True, True), (False, False), (False, True)]
    if not every_path:
        plans = [plans[len(data) % 4]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        variants = [data]
        fixed = fix_checksums(data)
        if fixed != data:
            variants.append(fixed)
        for v in variants:
            for seekable, compare in plans:
                for allow_incomplete in ((False, True) if every_path else (len(data) >> 2 & 1 == 1,)):
                    if compare:
                        _both_decoders(v, seekable, allow_incomplete)
                    else:
                        _read(v, seekable, allow_incomplete)
