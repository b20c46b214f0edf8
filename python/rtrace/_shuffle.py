"""The two halves of a diff co-partitioned by uid (``rtrace.ray.diff``), without Ray in them.

Map (``split_unit_cli``: ``rtrace split``; ``split_unit``: the same in Python): one read unit's records,
split by uid partition ``crc32(uid) mod n`` (the CLI's ``--uid-shard``), each part written as a trace of
the side's header (stored raw: the bytes cross the network once and are read once). Reduce (``diff_partition``): a partition's parts of each side concatenated into
one local file per side (``TraceConcat``: chunks copied, nothing decoded), compared by ``rtrace diff
--partial``; the partial is labelled uid shard p/n of the original files, which is what it is."""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import zlib
from typing import Iterable, List, Optional, Sequence, Tuple

from ._cli import run_rtrace
from ._concat import TraceConcat
from ._plan import ReadUnit, TraceFile, as_dtype, common_columns
from .writer import Writer

__all__ = ["uid_partition", "side_header", "writer_args", "split_unit", "split_unit_cli", "diff_partition"]


def uid_partition(uid: str, n: int) -> int:
    """The partition of ``uid`` among ``n``: CRC-32 of its UTF-8 bytes modulo n (``rtrace diff --uid-shard``)."""
    return zlib.crc32(uid.encode("utf-8")) % n


def side_header(files: Sequence[TraceFile]) -> dict:
    """The header of one side's partition files: the first file's, with each optional column kept only
    when every file of the side has it (the CLI compares a column only when all files carry it), as
    f32 when their dtypes differ (``common_columns``)."""
    h = json.loads(json.dumps(files[0].header))
    h["columns"] = common_columns([f.header for f in files])
    return h


def writer_args(header: dict) -> dict:
    """``rtrace.Writer`` keyword arguments that write ``header`` (a ``Reader.header``)."""
    c = header["columns"]
    return dict(model=header["model"], engine=header.get("engine"), topk_weights_dtype=c.get("topk_weights"),
                router_logits_dtype=c.get("router_logits"), logprobs="logprobs" in c,
                policy_version=header.get("policy_version"), attributes=header.get("attributes"),
                created=header.get("created"))


def record_args(rec, header: dict) -> dict:
    """``Writer.add`` arguments of a record, its float columns as ``header`` declares them."""
    c = header["columns"]
    return dict(uid=rec.uid, tokens=rec.tokens, topk_ids=rec.topk_ids,
                topk_weights=as_dtype(rec.topk_weights, c.get("topk_weights")),
                router_logits=as_dtype(rec.router_logits, c.get("router_logits")),
                logprobs=rec.logprobs if "logprobs" in c else None, prompt_len=rec.prompt_len, start=rec.start,
                reward=rec.reward, attrs=rec.attrs, group=rec.group)


def split_unit(unit: ReadUnit, header: dict, n: int) -> Tuple[List[Optional[bytes]], int]:
    """Reads ``unit`` and writes the records of each uid partition as a trace of ``header`` (raw columns).
    Returns (n traces as bytes, None for a partition without records; the rows read)."""
    writers, bufs, rows = {}, {}, 0
    args = writer_args(header)
    for rec in unit.read(threads=False):
        p = uid_partition(rec.uid, n)
        if p not in writers:
            bufs[p] = io.BytesIO()
            writers[p] = Writer(bufs[p], compress=False, threads=False, **args)
        writers[p].add(**record_args(rec, header))
        rows += rec.n_rows
    for w in writers.values():
        w.close()
    return [bufs[p].getvalue() if p in bufs else None for p in range(n)], rows


def split_unit_cli(unit: ReadUnit, header: dict, n: int, exe: str, threads: Sequence = ()) -> Tuple[List[Optional[bytes]], int]:
    """``split_unit`` done by the rtrace executable (``rtrace split --raw --header``): the same parts, the
    records decoded and written in Swift. ``threads``: extra ``--threads N`` arguments."""
    tmp = tempfile.mkdtemp(prefix="rtrace-split-")
    try:
        hpath = os.path.join(tmp, "header.json")
        with open(hpath, "w") as f:
            json.dump(header, f)
        args = ["split", unit.path, "--uid-shards", n, "--prefix", os.path.join(tmp, "part"), "--raw",
                "--header", hpath, *threads]
        if unit.first is not None:
            args += ["--chunks", f"{unit.first}:{unit.end}"]
        summary = json.loads(run_rtrace(exe, args, replace={unit.path: unit.label}))
        blobs = []
        for part in summary["parts"]:
            if part["records"] == 0:
                blobs.append(None)
            else:
                with open(part["file"], "rb") as f:
                    blobs.append(f.read())
        return blobs, summary["rows"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _gather(path: str, parts: Iterable[Tuple[Optional[bytes], str]], header: dict, side: str) -> None:
    """Concatenates one side's parts into ``path``; raises naming both sources when a uid repeats."""
    seen = {}
    with open(path, "wb") as f:
        cat = TraceConcat(f, header)
        for blob, label in parts:
            if blob is None:
                continue
            for uid in cat.add(blob, label):
                if uid in seen:
                    also = "twice in " + label if seen[uid] == label else f"in {seen[uid]} and in {label}"
                    raise ValueError(f"uid {uid!r} appears twice in side {side} ({also}): each sequence must be in "
                                     f"one file of a side once")
                seen[uid] = label
        cat.close()


def diff_partition(p: int, n: int, parts_a, parts_b, header_a: dict, header_b: dict, names_a: List[str],
                   names_b: List[str], exe: str, options: Sequence = (), workdir: Optional[str] = None) -> dict:
    """The diff partial of uid partition ``p`` of ``n``: ``parts_a``/``parts_b`` iterate (trace bytes or
    None, label) of each side; returns the partial (``rtrace diff --partial OPTIONS``) labelled uid shard
    p/n of the files ``names_a``/``names_b``."""
    tmp = tempfile.mkdtemp(prefix=f"rtrace-part{p}-", dir=workdir)
    try:
        pa, pb = os.path.join(tmp, "a.rtrace"), os.path.join(tmp, "b.rtrace")
        _gather(pa, parts_a, header_a, "A")
        _gather(pb, parts_b, header_b, "B")
        out = run_rtrace(exe, ["diff", "--a", pa, "--b", pb, "--partial", *options, "--spill-dir", tmp],
                         replace={pa: f"side A of uid partition {p}/{n}", pb: f"side B of uid partition {p}/{n}"})
        return relabel(json.loads(out), names_a, names_b, p, n)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def relabel(partial: dict, names_a: List[str], names_b: List[str], p: int, n: int) -> dict:
    """The diff partial with its inputs set to uid shard p/n of the files ``names_a`` and ``names_b``."""
    partial["inputs"] = [{"a": list(names_a), "b": list(names_b), "uid_shards": {"count": n, "indices": [p]}}]
    return partial
