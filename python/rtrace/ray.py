"""Traces that outgrow one machine, on Ray: a Ray Data datasource and datasink for ``.rtrace`` files,
and ``diff`` / ``stats`` spread over a cluster with exact merges.

* ``read_rtrace(paths)``: a ``ray.data.Dataset`` with one row per record and tensor columns
  (``rtrace._arrow`` lists them). Read tasks split by file and, through each complete file's index,
  by ranges of chunks, so one large file is read in parallel too.
* ``write_rtrace(ds, dir)``: one ``.rtrace`` shard per block.
* ``diff(a_paths, b_paths)`` / ``stats(paths)``: the dict ``rtrace diff --json`` / ``rtrace stats
  --json`` prints for the union of the files. Every metric is computed by the rtrace executable (found
  through ``rtrace_bin``, ``RTRACE_BIN`` or ``PATH`` on each node): each partition makes an exact partial
  (integer counts, exact sums) and ``rtrace merge`` adds them, so a cluster gives the answer one
  machine gives.

How ``diff`` co-partitions A and B by uid (``strategy``):

* ``"shuffle"`` (default): read tasks each read one chunk range of one file (every stored byte is
  read once, by one task), split its records by ``crc32(uid) mod n`` and write each part as a trace
  (``rtrace split --raw``, under the side's common header);
  Ray moves each part to the task of its partition (each record crosses the network at most once, as
  raw trace columns), which concatenates its parts into one local file per side (chunks copied, not
  re-encoded) and runs ``rtrace diff --partial`` on them.
* ``"uid-shard"``: task p runs ``rtrace diff --partial --uid-shard p/n`` over all the files (which
  every node must see, on a shared file system); it reads, through the indexes, the chunks that hold
  its uids: about 1/n of the data when records are longer than a chunk, up to all of it when a chunk
  holds many records. Nothing but partials crosses Ray's network.

Importing this module imports ray; ``import rtrace`` does not."""
from __future__ import annotations

import functools
import json
import math
import os
import shutil
import tempfile
import uuid
from typing import List, Optional, Sequence

import ray
from ray.data import Datasink, Datasource, ReadTask
from ray.data.block import BlockAccessor, BlockMetadata

from ._arrow import header_for_table, header_of, records_to_table, table_records
from ._cli import CommandError, find_rtrace, run_rtrace
from ._format import FormatError
from ._plan import ReadUnit, TraceFile, check_geometry, common_columns, expand_paths, open_files, plan_units
from ._shuffle import diff_partition, relabel, side_header, split_unit_cli, writer_args
from .writer import Writer

__all__ = ["read_rtrace", "write_rtrace", "diff", "stats", "RTraceDatasource", "RTraceDatasink", "CommandError"]


def _row_bytes(header: dict) -> int:
    """Bytes of one decoded row in a block (ids int32, the float columns, a token)."""
    m, c = header["model"], header["columns"]
    L, k, E = len(m["layer_map"]), m["top_k"], m["num_experts"]
    w = {"f16": 2, "bf16": 2, "f32": 4}
    return L * k * 4 + L * k * w.get(c.get("topk_weights"), 0) + L * E * w.get(c.get("router_logits"), 0) + 8


def _file_rows(f: TraceFile) -> int:
    """Rows of a file: its index's, or for a file without one a guess from its size."""
    return sum(c[4] for c in f.chunks) if f.chunks is not None else f.size // 64


class RTraceDatasource(Datasource):
    """A Ray Data datasource of ``.rtrace`` files (``paths``: files or directories of ``*.rtrace``).

    Read tasks: a complete file is read in ranges of whole chunks taken from its index (about
    ``rows_per_task`` rows each; by default the dataset's rows over the requested parallelism), each
    range holding the records whose first piece lies in it (``Reader.read_chunks``); a file without
    index (still being written, truncated, a pipe) is one task, read as a stream (with
    ``allow_incomplete`` its cut tail is left out with a warning, else it is an error). All files must
    share one geometry. Blocks are Arrow tables, one row per record (columns: ``rtrace._arrow``), of
    at most about the context's target block size; each block's schema metadata holds the header of
    the file it came from. A float column whose dtype differs between files reads as float32 (exact);
    a column some files lack is absent from their blocks (null where Ray combines blocks)."""

    def __init__(self, paths, *, rows_per_task: Optional[int] = None, include_paths: bool = False,
                 allow_incomplete: bool = False):
        super().__init__()
        self._files = open_files(expand_paths(paths))
        check_geometry(self._files)
        self._columns = common_columns([f.header for f in self._files], every=False)
        self._rows_per_task = rows_per_task
        self._include_paths = include_paths
        self._allow_incomplete = allow_incomplete

    def get_name(self) -> str:
        return "RTrace"

    def estimate_inmemory_data_size(self) -> Optional[int]:
        return sum(_file_rows(f) * _row_bytes(f.header) for f in self._files)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: Optional[int] = None,
                       data_context=None) -> List[ReadTask]:
        total = sum(_file_rows(f) for f in self._files)
        target = self._rows_per_task or max(1, math.ceil(total / max(1, parallelism)))
        block_bytes = getattr(data_context, "target_max_block_size", None) or (128 << 20)
        headers = {f.path: f.header for f in self._files}
        tasks = []
        for u in plan_units(self._files, target):
            h = headers[u.path]
            rows = u.rows if u.rows is not None else _file_rows(next(f for f in self._files if f.path == u.path))
            meta = BlockMetadata(num_rows=u.records, size_bytes=int(rows * _row_bytes(h)), input_files=[u.path],
                                 exec_stats=None)
            fn = functools.partial(_read_blocks, u, h, self._columns, self._include_paths, self._allow_incomplete,
                                   block_bytes)
            tasks.append(ReadTask(fn, meta, per_task_row_limit=per_task_row_limit))
        return tasks


def _read_blocks(unit: ReadUnit, header: dict, columns: dict, include_paths: bool, allow_incomplete: bool,
                 block_bytes: int):
    """A read task: the unit's records as tables of at most about ``block_bytes`` decoded bytes."""
    batch, size = [], 0
    path = unit.name if include_paths else None
    for rec in unit.read(allow_incomplete=allow_incomplete):
        batch.append(rec)
        size += rec.topk_ids.nbytes + len(rec.tokens) * 4 + sum(
            a.nbytes for a in (rec.topk_weights, rec.router_logits, rec.logprobs) if a is not None)
        if size >= block_bytes:
            yield records_to_table(batch, header, path, columns)
            batch, size = [], 0
    if batch:
        yield records_to_table(batch, header, path, columns)


def read_rtrace(paths, *, rows_per_task: Optional[int] = None, include_paths: bool = False,
                allow_incomplete: bool = False, **read_args) -> "ray.data.Dataset":
    """A ``ray.data.Dataset`` of the records of ``paths`` (files, or directories of ``*.rtrace``): one
    row per record, tensor columns (``RTraceDatasource``). ``read_args`` go to
    ``ray.data.read_datasource`` (``override_num_blocks``, ``concurrency``, ``ray_remote_args``, …)."""
    return ray.data.read_datasource(RTraceDatasource(paths, rows_per_task=rows_per_task,
                                                     include_paths=include_paths,
                                                     allow_incomplete=allow_incomplete), **read_args)


class RTraceDatasink(Datasink):
    """Writes each non-empty block as one ``.rtrace`` file ``<prefix>-<write id>-<task>-<block>.rtrace``
    in the directory ``path`` (made if needed; a file appears only once complete). The header is
    ``header`` when given (a ``Reader.header``-shaped dict; without ``columns`` they follow the
    block's columns and dtypes), else the one ``read_rtrace`` left in the block's schema metadata.
    ``files`` lists what was written, after the write."""

    def __init__(self, path, *, header: Optional[dict] = None, compress: bool = True,
                 chunk_bytes: int = 4 << 20, prefix: str = "part"):
        self.path = os.path.abspath(os.fspath(path))
        self.header, self.compress, self.chunk_bytes, self.prefix = header, compress, chunk_bytes, prefix
        self.write_id = uuid.uuid4().hex[:8]
        self.files: List[str] = []

    def get_name(self) -> str:
        return "WriteRTrace"

    def on_write_start(self, schema=None) -> None:
        os.makedirs(self.path, exist_ok=True)

    def write(self, blocks, ctx) -> list:
        written = []
        for i, block in enumerate(blocks):
            t = BlockAccessor.for_block(block).to_arrow()
            if t.num_rows == 0:
                continue
            header = self.header if self.header is not None else header_of(t)
            if header is None:
                raise ValueError("write_rtrace: the blocks carry no trace header (the dataset was not read with "
                                 "read_rtrace, or a transform dropped its schema metadata): pass header= "
                                 "(at least {'model': {'num_layers', 'num_experts', 'top_k', ...}})")
            header = header_for_table(header, t)
            name = os.path.join(self.path, f"{self.prefix}-{self.write_id}-{ctx.task_idx:05d}-{i:04d}.rtrace")
            tmp = name + ".tmp"
            try:
                with Writer(tmp, compress=self.compress, chunk_bytes=self.chunk_bytes, **writer_args(header)) as w:
                    for kw in table_records(t):
                        try:
                            w.add(**kw)
                        except ValueError as e:
                            raise ValueError(f"write_rtrace: record {kw.get('uid')!r}: {e}") from None
                os.replace(tmp, name)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            written.append(name)
        return written

    def on_write_complete(self, write_result) -> None:
        self.files = sorted(f for r in write_result.write_returns for f in r)


def write_rtrace(ds: "ray.data.Dataset", path, *, header: Optional[dict] = None, compress: bool = True,
                 chunk_bytes: int = 4 << 20, prefix: str = "part") -> List[str]:
    """Writes ``ds`` (the columns of ``read_rtrace``) as one ``.rtrace`` shard per non-empty block in
    the directory ``path`` (``RTraceDatasink``); returns the files written, sorted."""
    sink = RTraceDatasink(path, header=header, compress=compress, chunk_bytes=chunk_bytes, prefix=prefix)
    ds.write_datasink(sink)
    if sink.files:
        return sink.files
    return sorted(os.path.join(sink.path, n) for n in os.listdir(sink.path)
                  if n.startswith(f"{prefix}-{sink.write_id}-") and n.endswith(".rtrace"))


# distributed diff and stats ------------------------------------------------------------------------

def _init():
    if not ray.is_initialized():
        ray.init()


def _cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _get(refs):
    """ray.get, raising a task's own error (a damaged file, a failed rtrace command) as itself."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, (FormatError, ValueError, CommandError, OSError)):
            raise cause from None
        raise


def _worker_rtrace(exe: str) -> str:
    """The executable the driver found, or this node's own when that path is not here."""
    return exe if os.access(exe, os.X_OK) else find_rtrace(None)


def _task_threads() -> List[str]:
    """``--threads N`` for an rtrace run inside a Ray task: the CPUs Ray gave the task (one by default),
    so that n tasks on a node start n threads, not n × cores."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    return ["--threads", str(max(1, int(cpus)))]


def _inputs(paths) -> List[TraceFile]:
    """The files of ``paths``, complete (as the CLI's diff and stats need), of one geometry."""
    files = open_files(expand_paths(paths))
    for f in files:
        if not f.complete:
            raise FormatError(f"{f.path}: no index and trailer: truncated or still being written "
                              f"(diff and stats read complete traces, as the rtrace CLI does)", f.size, "truncated")
    check_geometry(files)
    return files


def _merge(exe: str, partials: list, args: list) -> dict:
    """``rtrace merge ARGS partial…`` on the driver: the JSON of the whole."""
    tmp = tempfile.mkdtemp(prefix="rtrace-merge-")
    try:
        names = []
        for i, p in enumerate(partials):
            names.append(os.path.join(tmp, f"part-{i:05d}.json"))
            with open(names[-1], "w") as f:
                json.dump(p, f)
        return json.loads(run_rtrace(exe, ["merge", *args, *names]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _split_task(unit: ReadUnit, header: dict, n: int, exe: str):
    blobs, rows = split_unit_cli(unit, header, n, _worker_rtrace(exe), _task_threads())
    return (*blobs, rows)


def _reduce_task(p, n, refs_a, labels_a, refs_b, labels_b, header_a, header_b, names_a, names_b, exe, options):
    parts_a = ((ray.get(r), label) for r, label in zip(refs_a, labels_a))
    parts_b = ((ray.get(r), label) for r, label in zip(refs_b, labels_b))
    return diff_partition(p, n, parts_a, parts_b, header_a, header_b, names_a, names_b, _worker_rtrace(exe),
                          [*options, *_task_threads()])


def _uid_shard_task(p, n, paths_a, paths_b, names_a, names_b, exe, options):
    out = run_rtrace(_worker_rtrace(exe), ["diff", "--a", *paths_a, "--b", *paths_b, "--partial", "--uid-shard",
                                           f"{p}/{n}", *options, *_task_threads()])
    return relabel(json.loads(out), names_a, names_b, p, n)


def _stats_task(paths, names, exe, capacity_factor, batch_tokens, chunks=None):
    args = ["stats", *paths, "--json", "--batch-tokens", batch_tokens, *_task_threads()]
    if capacity_factor is not None:
        args += ["--capacity-factor", repr(float(capacity_factor))]
    if chunks is not None:
        args += ["--chunks", f"{chunks[0]}:{chunks[1]}"]
    out = json.loads(run_rtrace(_worker_rtrace(exe), args))
    if chunks is None:
        out["files"] = list(names)
    else:
        out["chunk_ranges"][0]["file"] = names[0]
    return out


def stats_groups(files: List[TraceFile], capacity_factor: Optional[float], batch_tokens: int) -> List[List[TraceFile]]:
    """The files ``stats`` gives each task: one file each; with a capacity factor, runs of consecutive
    files that end on a capacity batch boundary (batches of ``batch_tokens`` rows run on across files
    in one ``rtrace stats`` over all of them, so only there may the stream be cut)."""
    if capacity_factor is None:
        return [[f] for f in files]
    groups, cur, rows = [], [], 0
    for f in files:
        cur.append(f)
        rows += _file_rows(f)
        if rows % batch_tokens == 0:
            groups.append(cur)
            cur = []
    return groups + ([cur] if cur else [])


_split_remote = ray.remote(_split_task)
_reduce_remote = ray.remote(_reduce_task)
_uid_shard_remote = ray.remote(_uid_shard_task)
_stats_remote = ray.remote(_stats_task)


def diff(a_paths, b_paths, *, top: int = 10, buckets: int = 4, is_thresholds: Sequence[float] = (),
         partitions: Optional[int] = None, strategy: str = "shuffle", rows_per_task: Optional[int] = None,
         rtrace_bin: Optional[str] = None) -> dict:
    """What ``rtrace diff --a A… --b B… --json --top TOP --buckets BUCKETS [--is-threshold C…]`` prints
    for the files of ``a_paths`` and ``b_paths`` (files or directories), as a dict, computed on the Ray cluster
    (``ray.init()`` first, or this calls it): the join co-partitioned by uid into ``partitions`` parts
    (default: the cluster's CPUs), each part's exact partial made by ``rtrace diff --partial``, the
    partials added by ``rtrace merge``. ``strategy``: ``"shuffle"`` or ``"uid-shard"`` (module
    docstring). ``rows_per_task``: rows of the chunk ranges the shuffle's read tasks take.

    Raises ``FormatError`` (naming the file) for an empty or unfinished file, ``ValueError`` for files
    of different geometries or a uid twice on one side, ``CommandError`` when rtrace refuses: damage
    inside a chunk (naming the file, the chunk range and the offset), no uid in both sides, … as the
    CLI would."""
    if strategy not in ("shuffle", "uid-shard"):
        raise ValueError(f"strategy must be 'shuffle' or 'uid-shard', not {strategy!r}")
    if partitions is not None and partitions < 1:
        raise ValueError(f"partitions must be at least 1, not {partitions}")
    options = ["--top", int(top), "--buckets", int(buckets)]
    for c in is_thresholds:
        options += ["--is-threshold", repr(float(c))]
    exe = find_rtrace(rtrace_bin)
    files_a, files_b = _inputs(a_paths), _inputs(b_paths)
    check_geometry(files_b, files_a[0])
    names_a, names_b = [f.name for f in files_a], [f.name for f in files_b]
    _init()
    n = int(partitions or _cpus())
    if strategy == "uid-shard":
        paths_a, paths_b = [f.path for f in files_a], [f.path for f in files_b]
        partials = _get([_uid_shard_remote.remote(p, n, paths_a, paths_b, names_a, names_b, exe, options)
                         for p in range(n)])
    else:
        if rows_per_task is None:
            total = sum(_file_rows(f) for f in files_a + files_b)
            rows_per_task = max(1, min(1 << 18, math.ceil(total / (4 * _cpus()))))
        units_a, units_b = plan_units(files_a, rows_per_task), plan_units(files_b, rows_per_task)
        ha, hb = side_header(files_a), side_header(files_b)
        split = _split_remote.options(num_returns=n + 1)
        refs_a = [split.remote(u, ha, n, exe) for u in units_a]
        refs_b = [split.remote(u, hb, n, exe) for u in units_b]
        _get([r[n] for r in refs_a + refs_b])   # every part written (a damaged file fails here, named)
        partials = _get([_reduce_remote.remote(p, n, [r[p] for r in refs_a], [u.label for u in units_a],
                                       [r[p] for r in refs_b], [u.label for u in units_b], ha, hb, names_a,
                                       names_b, exe, options) for p in range(n)])
    return _merge(exe, partials, ["--json"])


def stats(paths, *, capacity_factor: Optional[float] = None, batch_tokens: int = 4096, ep: Optional[int] = None,
          rows_per_task: Optional[int] = None, rtrace_bin: Optional[str] = None) -> dict:
    """What ``rtrace stats FILE… --json`` prints for the files of ``paths`` (with
    ``--capacity-factor``, ``--batch-tokens``, ``--ep`` when given), as a dict, computed on the Ray
    cluster: each task runs ``rtrace stats FILE --chunks FIRST:END --json`` over a range of whole chunks
    holding about ``rows_per_task`` rows (default: the rows over 4 × the cluster's CPUs), so one large
    file is counted by several tasks, and ``rtrace merge`` adds the partials (the ranges of a file
    merge into the file). With ``capacity_factor``, whose batches of ``batch_tokens`` rows run on in
    stream order, a task takes whole files up to a batch boundary (``stats_groups``): files whose rows
    are not multiples of ``batch_tokens`` go to one task together. Errors as ``diff``."""
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be at least 1, not {batch_tokens}")
    if rows_per_task is not None and rows_per_task < 1:
        raise ValueError(f"rows_per_task must be at least 1, not {rows_per_task}")
    exe = find_rtrace(rtrace_bin)
    files = _inputs(paths)
    _init()
    if capacity_factor is None:
        if rows_per_task is None:
            total = sum(_file_rows(f) for f in files)
            rows_per_task = max(1, min(1 << 20, math.ceil(total / (4 * _cpus()))))
        units = plan_units(files, rows_per_task)
        whole = {f.path: len(f.chunks) if f.chunks is not None else None for f in files}
        tasks = [_stats_remote.remote([u.path], [u.name], exe, None, batch_tokens,
                                      None if u.first is None or (u.first, u.end) == (0, whole[u.path])
                                      else (u.first, u.end))
                 for u in units]
    else:
        tasks = [_stats_remote.remote([f.path for f in g], [f.name for f in g], exe, capacity_factor, batch_tokens)
                 for g in stats_groups(files, capacity_factor, batch_tokens)]
    partials = _get(tasks)
    return _merge(exe, partials, ["--json"] + (["--ep", str(int(ep))] if ep is not None else []))
