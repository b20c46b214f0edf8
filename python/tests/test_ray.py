"""rtrace.ray on a real local Ray cluster (ray.init(num_cpus=2), one per module), against the rtrace
CLI (RTRACE_BIN): Ray Data read/write, and distributed diff/stats equal to one `rtrace diff --json` /
`rtrace stats --json` over the same files, on the samples and on shuffled, unevenly sharded copies."""
import json
import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest

import rtrace
from conftest import NO_SKIP, REPO, SAMPLES, require_module
from rtrace._plan import open_files

BIN = os.environ.get("RTRACE_BIN")
ROLLOUT = os.path.join(SAMPLES, "rollout.rtrace")
TRAINS = [os.path.join(SAMPLES, f"{n}.rtrace") for n in ("train_mixed", "train_fp32", "train_r3")]
E300 = os.path.join(REPO, "samples", "synthetic-E300-dense.rtrace")


@pytest.fixture(scope="module")
def rr():
    """rtrace.ray on a local cluster of 2 CPUs, started once for the module; workers import rtrace
    from this checkout."""
    require_module("ray", "rtrace.ray runs on Ray")
    if not BIN:
        msg = "RTRACE_BIN is not set: rtrace.ray computes every metric with the rtrace executable"
        pytest.fail(msg) if NO_SKIP else pytest.skip(msg)
    if "--partial" not in subprocess.run([BIN, "diff", "--help"], capture_output=True, text=True).stdout:
        pytest.fail(f"{BIN} has no `rtrace diff --partial`: rtrace.ray needs issue 15's CLI (rtrace diff --partial, "
                    f"rtrace merge)")
    import ray
    pkg = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": pkg, "RTRACE_BIN": os.path.abspath(BIN)}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    import rtrace.ray as rr
    yield rr
    ray.shutdown()


def cli(*args):
    p = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"rtrace {' '.join(map(str, args))}: {p.stderr}"
    return json.loads(p.stdout)


def assert_same(got, want, where="$"):
    """Equal JSON: counts and strings identical, floats to 1e-12 relative."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), f"{where}: keys {sorted(got)} vs {sorted(want)}"
        for k in want:
            assert_same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got!r} vs {want!r}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert isinstance(got, (int, float)) and math.isclose(got, want, rel_tol=1e-12, abs_tol=0), \
            f"{where}: {got!r} vs {want!r}"
    else:
        assert type(got) is type(want) and got == want, f"{where}: {got!r} vs {want!r}"


def write_shards(directory, path, sizes, seed, chunk_bytes, dtypes=None, drop=()):
    """The records of ``path`` shuffled and cut into shards of ``sizes`` records (written with
    rtrace.Writer, chunk size per shard); ``dtypes[i]`` = (weights, logits, logprobs) of shard i (f32 =
    an exact widening of the sample's f16; None drops the column); uids in ``drop`` are left out."""
    rd = rtrace.Reader(path)
    h = rd.header
    recs = [r for r in rd if r.uid not in drop]
    random.Random(seed).shuffle(recs)
    assert sum(sizes) == len(recs)
    os.makedirs(directory, exist_ok=True)
    out, at = [], 0
    for i, (n, cb) in enumerate(zip(sizes, chunk_bytes)):
        wd, ld, lp = (dtypes or {}).get(i, ("f16", "f16", True))
        p = os.path.join(directory, f"shard-{i}.rtrace")
        with rtrace.Writer(p, h["model"], engine=h["engine"], topk_weights_dtype=wd, router_logits_dtype=ld,
                           logprobs=lp, policy_version=h["policy_version"], chunk_bytes=cb) as w:
            for r in recs[at:at + n]:
                conv = (lambda a, d: None if d is None else a.astype(np.float32) if d == "f32" else a)
                w.add(r.uid, r.tokens, r.topk_ids, conv(r.topk_weights, wd), conv(r.router_logits, ld),
                      r.logprobs if lp else None, r.prompt_len, r.start, r.reward, r.attrs, r.group)
        at += n
        out.append(p)
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Rollout vs train_mixed, each side shuffled into uneven shards of multi-chunk files (records span
    chunks): "a"/"b" hold the same records as the samples, one A shard widened to f32 (exact); "b2" lacks
    two uids, and its shards disagree on which optional columns they carry."""
    d = tmp_path_factory.mktemp("shards")
    a = write_shards(d / "a", ROLLOUT, [1, 4, 7], 1, [3000, 1 << 20, 9000], dtypes={2: ("f32", "f32", True)})
    b = write_shards(d / "b", TRAINS[0], [5, 2, 5], 2, [5000, 2000, 1 << 22])
    b2 = write_shards(d / "b2", TRAINS[0], [2, 3, 5], 3, [1 << 20, 4000, 7000], drop={"3", "8"},
                      dtypes={1: ("f16", None, False), 2: ("f32", "f16", True)})
    return dict(a=a, b=b, b2=b2, dir=d)


def test_datasource_splits_a_multichunk_file(rr, tmp_path):
    p = str(tmp_path / "one.rtrace")
    write_shards(tmp_path / "w", ROLLOUT, [12], 0, [4000])
    os.replace(tmp_path / "w" / "shard-0.rtrace", p)
    ref = list(rtrace.Reader(p))
    n_chunks = len(rtrace.Reader(p).index["chunks"])
    assert n_chunks > 12
    tasks = rr.RTraceDatasource(p).get_read_tasks(4)
    assert len(tasks) >= 3 and sum(t.metadata.num_rows for t in tasks) == 12
    # each task reads its own chunk range: run them here, outside Ray, and see they tile the file
    uids = [u for t in tasks for block in t() for u in block.column("uid").to_pylist()]
    assert uids == [r.uid for r in ref]
    ds = rr.read_rtrace(p, override_num_blocks=4).materialize()
    assert ds.num_blocks() >= 3 and ds.count() == 12
    rows = sorted(ds.take_all(), key=lambda x: int(x["uid"]))
    for got, want in zip(rows, sorted(ref, key=lambda r: int(r.uid))):
        assert got["uid"] == want.uid and got["n_rows"] == want.n_rows
        assert got["topk_ids"].shape == want.topk_ids.shape and np.array_equal(got["topk_ids"], want.topk_ids)
        assert got["router_logits"].tobytes() == want.router_logits.tobytes()
        assert np.array_equal(got["tokens"], want.tokens) and got["logprobs"].tobytes() == want.logprobs.tobytes()


def _records_of(paths):
    return {r.uid: r for p in paths for r in rtrace.Reader(p)}


def test_read_write_round_trip(rr, tmp_path, shards):
    # a file with bf16 weights, u16 ids, missing rows, null rewards, groups and attrs, and the samples
    src = str(tmp_path / "odd.rtrace")
    rng = np.random.default_rng(1)
    model = dict(num_layers=3, num_experts=300, top_k=2, name="odd")
    with rtrace.Writer(src, model, engine=dict(name="t", role="train"), topk_weights_dtype="bf16", logprobs=True,
                       policy_version=7, attributes={"k": "v"}, chunk_bytes=700) as w:
        for i in range(7):
            ids = np.stack([rng.permutation(300)[:2] for _ in range(3 * (i + 1))]).reshape(i + 1, 3, 2)
            if i == 3:
                ids[1, 2] = -1
            wts = rng.integers(0, 1 << 15, ids.shape).astype(np.uint16)
            wts[ids[..., 0] < 0] = 0
            w.add(f"u{i}", np.arange(i + 3), ids, topk_weights=wts, logprobs=np.arange(i, dtype=np.float32),
                  prompt_len=1, start=2, reward=None if i % 2 else i / 3, attrs={"i": i} if i % 3 else None,
                  group=None if i == 5 else f"g{i % 2}")
    for inputs in ([src], shards["a"]):
        ds = rr.read_rtrace(inputs, rows_per_task=100, include_paths=True)
        assert set(ds.unique("path")) == set(inputs)
        files = rr.write_rtrace(ds.drop_columns(["path"]), tmp_path / f"out-{len(inputs)}")
        assert files and all(os.path.basename(f).startswith("part-") for f in files)
        want, got = _records_of(inputs), _records_of(files)
        assert sorted(got) == sorted(want)
        for uid, r in want.items():
            g = got[uid]
            for key in ("topk_ids", "topk_weights", "router_logits", "tokens", "logprobs"):
                x, y = getattr(r, key), getattr(g, key)
                assert (x is None and y is None) or (x.dtype == y.dtype and x.tobytes() == y.tobytes()), (uid, key)
            assert (g.group, g.reward, g.attrs, g.prompt_len, g.start) == (r.group, r.reward, r.attrs, r.prompt_len,
                                                                           r.start)
        # each shard carries the header of the file its block came from, as it was
        headers = {json.dumps(rtrace.Reader(p).header, sort_keys=True) for p in inputs}
        assert {json.dumps(rtrace.Reader(f).header, sort_keys=True) for f in files} == headers


def test_write_rtrace_of_another_dataset(rr, tmp_path):
    import ray
    rng = np.random.default_rng(2)
    items = [dict(uid=f"s{i}", topk_ids=rng.integers(0, 16, (i + 1, 2, 3)).astype(np.int32),
                  topk_weights=rng.random((i + 1, 2, 3)).astype(np.float16), reward=float(i)) for i in range(4)]
    ds = ray.data.from_items(items)
    with pytest.raises(ValueError, match="carry no trace header"):
        rr.write_rtrace(ds, tmp_path / "x")
    files = rr.write_rtrace(ds, tmp_path / "y", header={"model": dict(num_layers=2, num_experts=16, top_k=3)})
    got = _records_of(files)
    assert rtrace.Reader(files[0]).header["columns"]["topk_weights"] == "f16"
    for it in items:
        r = got[it["uid"]]
        assert np.array_equal(r.topk_ids, it["topk_ids"]) and r.topk_weights.tobytes() == it["topk_weights"].tobytes()
        assert r.reward == it["reward"] and r.group is None and len(r.tokens) == 0


def test_import_rtrace_does_not_import_ray():
    code = "import sys, rtrace; assert 'ray' not in sys.modules; import rtrace.ray; assert 'ray' in sys.modules"
    env = dict(os.environ, PYTHONPATH=os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_diff_equals_the_cli_on_the_samples(rr):
    for b in TRAINS:
        want = cli("diff", ROLLOUT, b, "--json")
        assert_same(rr.diff(ROLLOUT, b, rows_per_task=200), want)
    want = cli("diff", ROLLOUT, TRAINS[2], "--json", "--top", 3, "--buckets", 7, "--is-threshold", 1.05,
               "--is-threshold", 3)
    assert_same(rr.diff(ROLLOUT, TRAINS[2], top=3, buckets=7, is_thresholds=[1.05, 3]), want)
    assert_same(rr.diff(ROLLOUT, TRAINS[2], top=3, buckets=7, is_thresholds=[1.05, 3], strategy="uid-shard",
                        partitions=3), want)


def test_diff_on_shuffled_uneven_shards(rr, shards):
    a, b, b2 = shards["a"], shards["b"], shards["b2"]
    want = cli("diff", "--a", *a, "--b", *b, "--json", "--top", 20)
    got = rr.diff(a, b, top=20, partitions=3, rows_per_task=150)
    assert got == want   # the same partial sums, merged: identical JSON
    assert_same(rr.diff(a, b, top=20, partitions=2, strategy="uid-shard"), want)
    # the same figures as the unsharded samples (only the file lists differ)
    whole = cli("diff", ROLLOUT, TRAINS[0], "--json", "--top", 20)
    assert_same({k: v for k, v in got.items() if k not in ("a", "b")},
                {k: v for k, v in whole.items() if k not in ("a", "b")})
    # B lacks two uids, one B shard lacks logits and logprobs (router_kl and policy are null), a directory
    d = str(shards["dir"] / "b2")
    want2 = cli("diff", "--a", *a, "--b", d, "--json")
    assert want2["matched"]["sequences_only_a"] == 2 and want2["router_kl"] is None and want2["policy"] is None
    assert_same(rr.diff(a, d, partitions=5, rows_per_task=1), want2)


def test_stats_equals_the_cli(rr, shards):
    files = shards["a"] + [ROLLOUT]
    want = cli("stats", *files, "--json")
    assert_same(rr.stats(files), want)
    # one file counted in chunk ranges by several tasks (rtrace stats --chunks), merged into the file
    for rows in (1, 100, 700):
        assert rr.stats(files, rows_per_task=rows) == want
    # capacity batches run on across files: a task takes files up to a batch boundary
    files = open_files(shards["b"])   # 5, 2 and 5 records of 127 rows
    assert [len(g) for g in rr.stats_groups(files, 1.25, 127)] == [1, 1, 1]   # 127-row records: every file
    assert [len(g) for g in rr.stats_groups(files, 1.25, 100)] == [3]
    assert [len(g) for g in rr.stats_groups(files, 1.25, 7 * 127)] == [2, 1]
    assert [len(g) for g in rr.stats_groups(files, None, 100)] == [1, 1, 1]
    for batch in (100, 127, 7 * 127):
        want = cli("stats", *shards["b"], "--json", "--capacity-factor", 1.25, "--batch-tokens", batch, "--ep", 4)
        assert_same(rr.stats(shards["b"], capacity_factor=1.25, batch_tokens=batch, ep=4), want)
        assert want["drop_rate"] is not None and want["ep"]["ranks"] == 4


def test_stats_when_only_some_files_carry_logits(rr, shards):
    files = shards["b2"]   # shard 1 has no router_logits
    assert_same(rr.stats(files), cli("stats", *files, "--json"))


def test_tasks_run_rtrace_with_the_cpus_ray_gave_them(rr, shards, tmp_path):
    """Each task's rtrace starts as many threads as the task holds CPUs (one), not one per core."""
    log = tmp_path / "argv.log"
    wrapper = tmp_path / "rtrace-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {os.path.abspath(BIN)} "$@"\n')
    wrapper.chmod(0o755)
    rr.stats(shards["a"], rtrace_bin=str(wrapper))
    rr.stats([ROLLOUT], rows_per_task=300, rtrace_bin=str(wrapper))
    rr.diff(shards["a"], shards["b"], partitions=2, rtrace_bin=str(wrapper))
    rr.diff(shards["a"], shards["b"], partitions=2, strategy="uid-shard", rtrace_bin=str(wrapper))
    runs = [line.split() for line in log.read_text().splitlines() if line.split()[0] in ("stats", "diff")]
    assert sum(r[0] == "diff" for r in runs) == 4
    # the sample (11 chunks) was counted in ranges that tile it
    ranges = sorted(tuple(map(int, r[r.index("--chunks") + 1].split(":"))) for r in runs
                    if "--chunks" in r and os.path.abspath(ROLLOUT) in map(os.path.abspath, r))
    assert len(ranges) > 1 and ranges[0][0] == 0 and ranges[-1][1] == 11
    assert all(x[1] == y[0] for x, y in zip(ranges, ranges[1:]))
    for r in runs:
        assert r[r.index("--threads") + 1] == "1", r


def test_split_in_swift_and_in_python_give_the_same_parts(shards):
    """The shuffle's map step: rtrace split (what rtrace.ray.diff runs) and the Python writer (the bench's
    baseline) put the same records, under the side's common header, in the same parts."""
    from rtrace._plan import plan_units
    from rtrace._shuffle import side_header, split_unit, split_unit_cli
    files = open_files(shards["b2"])             # shards that disagree on their optional columns
    h = side_header(files)
    for u in plan_units(files, 200):
        py, rows_py = split_unit(u, h, 3)
        sw, rows_sw = split_unit_cli(u, h, 3, BIN, ["--threads", "1"])
        assert rows_py == rows_sw and [x is None for x in py] == [x is None for x in sw], u.label
        for x, y in zip(py, sw):
            if x is None:
                continue
            rx, ry = rtrace.Reader(x), rtrace.Reader(y)
            assert rx.header == ry.header == h
            for a, b in zip(rx, ry, strict=True):
                assert a.uid == b.uid and np.array_equal(a.topk_ids, b.topk_ids) and np.array_equal(a.tokens, b.tokens)
                for col in ("topk_weights", "router_logits", "logprobs"):
                    va, vb = getattr(a, col), getattr(b, col)
                    assert (va is None) == (vb is None) and (va is None or np.array_equal(va, vb, equal_nan=True)), col


def test_errors_name_the_file(rr, shards, tmp_path):
    a = shards["a"]
    empty = tmp_path / "empty.rtrace"
    empty.write_bytes(b"")
    with pytest.raises(rtrace.FormatError, match="empty.rtrace"):
        rr.diff(a + [str(empty)], shards["b"])
    with pytest.raises(rtrace.FormatError, match="empty.rtrace"):
        rr.stats([str(empty)] + a)
    with pytest.raises(rtrace.FormatError, match="empty.rtrace"):
        rr.read_rtrace([str(empty)])
    with pytest.raises(ValueError, match=r"synthetic-E300-dense.rtrace: a trace of another geometry: num_layers 8"):
        rr.diff(a, shards["b"] + [E300])
    with pytest.raises(ValueError, match="synthetic-E300-dense.rtrace: a trace of another geometry"):
        rr.stats(a + [E300])
    with pytest.raises(ValueError, match="synthetic-E300-dense.rtrace: a trace of another geometry"):
        rr.read_rtrace(a + [E300])
    # damage inside a chunk (the header and the index are intact): found by the task reading it
    bad = tmp_path / "damaged.rtrace"
    data = bytearray(open(a[2], "rb").read())
    off, flen = rtrace.Reader(a[2]).index["chunks"][1][:2]
    data[off + flen - 5] ^= 0x55
    bad.write_bytes(bytes(data))
    with pytest.raises(rr.CommandError, match=r"damaged.rtrace \(chunks \d+:\d+\): offset \d+: .*CRC mismatch"):
        rr.diff(a[:2] + [str(bad)], shards["b"], partitions=2)
    with pytest.raises(rr.CommandError, match="damaged.rtrace"):
        rr.diff(a[:2] + [str(bad)], shards["b"], partitions=2, strategy="uid-shard")
    with pytest.raises(rr.CommandError, match="damaged.rtrace"):
        rr.stats([str(bad)])
    with pytest.raises(rtrace.FormatError, match="damaged.rtrace"):
        rr.read_rtrace([str(bad)]).materialize()
    # a uid twice on one side: named with both places, as the CLI refuses it
    with pytest.raises(ValueError, match=r"uid '\w+' appears twice in side A"):
        rr.diff(a + [ROLLOUT], shards["b"], partitions=2)


def test_errors_cross_processes_whole():
    import pickle
    from rtrace._cli import CommandError
    e = pickle.loads(pickle.dumps(rtrace.FormatError("f.rtrace: CRC mismatch", 17, "checksum")))
    assert (str(e), e.offset, e.kind) == ("checksum at byte 17: f.rtrace: CRC mismatch", 17, "checksum")
    c = pickle.loads(pickle.dumps(CommandError(["/x/rtrace", "diff", "a"], 1, "rtrace: error: a: bad\n")))
    assert (str(c), c.argv, c.returncode) == ("rtrace diff failed (exit 1): rtrace: error: a: bad", ["/x/rtrace", "diff", "a"], 1)
