"""`rtrace diff`'s policy metrics against verl's own code (verl 0.9.1, the released wheel).

verl pulls in far more than these functions need (ray, vllm, ...), so it is not installed: `make deps`
downloads its wheel into .venv/engine-wheels/ (pip download --no-deps), and this test takes the functions
out of it with zipfile + ast (the definitions and the module constants they use), and runs them with torch
on the bundled Qwen3-MoE samples' logprobs, in float64. A missing wheel or function is a failure.

What is compared, for each pair (rollout against each training pass, and a variant with uneven response
masks, missing routing rows and a NaN logprob) and each threshold C:
- compute_offpolicy_metrics: every key;
- compute_rollout_correction_weights (rollout_is = token and sequence, truncated IS at C): every key; with
  IcePop ("1/C_C"), rollout_is_oob_ratio;
- compute_rollout_rejection_mask (each rollout_rs option alone at C): every key of the option.
Numbers must agree to 1e-12 relative. chi2_token and chi2_seq are E[x] - 1: verl rounds E[x] (near 1)
before subtracting, so its own float64 value carries an error of ~1e-16 * E[x], which is ~1e-12 of a
chi2 of 1e-4; those two are compared relative to 1 + |chi2|, and rtrace's value is checked against the
exact rational value of verl's formula instead (1e-14).

The token-level standard deviations (rollout_is_std, rollout_rs_RULE_std) are the same kind: verl's
one-pass masked_mean(x^2) - masked_mean(x)^2 carries an error of ~1e-16 * E[x^2], so verl's std is off by
~1e-16 * E[x^2] / std; they are compared within that bound, and rtrace's std is checked against the exact
rational value of verl's formula over the same float64 terms (1e-13). The standard deviations over sequences
(`_seq_std`, torch's two-pass unbiased std) are compared to 1e-12 (plus the spread that an ulp of each
per-sequence value can make), and also checked against the exact rational value over rtrace's own
per-sequence values (1e-13).

The split by routing is checked against an independent numpy computation: each token's group is the number
of layers whose top-k set differs between the two sides in the row that produced it (row t - 1).
"""
import ast
import json
import math
import os
import subprocess
import types
import zipfile
from fractions import Fraction
from typing import Any, Optional

import numpy as np
import pytest

from conftest import NO_SKIP, REPO, SAMPLES, require_module

VERL_VERSION = "0.9.1"
WHEEL = f"verl-{VERL_VERSION}-py3-none-any.whl"
HELPER = "verl/trainer/ppo/rollout_corr_helper.py"
TORCH_F = "verl/utils/torch_functional.py"
F_NAMES = ["masked_sum", "masked_mean"]
H_NAMES = ["SAFETY_BOUND", "SUPPORTED_ROLLOUT_RS_OPTIONS", "TOKEN_LEVEL_ROLLOUT_RS_OPTIONS", "_parse_rollout_is_threshold",
           "_parse_rollout_rs_thresholds", "compute_offpolicy_metrics", "compute_rollout_correction_weights",
           "compute_is_metrics", "compute_rollout_rejection_mask", "compute_rs_metrics"]
THRESHOLDS = [2.0, 1.05, 1.001, 0.001, 0.0001]
REL = 1e-12
# verl keys rtrace leaves out: the combined keys of several rs options at once (rtrace reports each option alone).
COMBINED = {"rollout_rs_masked_fraction", "rollout_rs_seq_masked_fraction"}


def _take(src, names, where):
    """The top-level definitions (functions, assignments) named `names`, compiled as one module."""
    found = {}
    for node in ast.parse(src).body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            found[node.name] = node
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name) and t.id in names:
                    found[t.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id in names:
            found[node.target.id] = node
    missing = [n for n in names if n not in found]
    if missing:
        pytest.fail(f"{where} has no {', '.join(missing)}: not the verl {VERL_VERSION} this test was written for", pytrace=False)
    return compile(ast.Module(body=[found[n] for n in names], type_ignores=[]), where, "exec")


@pytest.fixture(scope="module")
def verl():
    torch = require_module("torch", "verl's metric functions run on torch tensors")
    venv = os.environ.get("RTRACE_VENV", os.path.join(REPO, ".venv"))
    wheel = os.path.join(venv if os.path.isabs(venv) else os.path.join(REPO, venv), "engine-wheels", WHEEL)
    if not os.path.isfile(wheel):
        pytest.fail(f"{wheel} is missing: make deps downloads it (pip download --no-deps verl=={VERL_VERSION})", pytrace=False)
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for p in (HELPER, TORCH_F):
            if p not in names:
                pytest.fail(f"{wheel} has no {p}", pytrace=False)
        helper, tf = z.read(HELPER).decode(), z.read(TORCH_F).decode()
    nf = {"torch": torch}
    exec(_take(tf, F_NAMES, f"{wheel}:{TORCH_F}"), nf)
    ns = {"torch": torch, "math": math, "Optional": Optional, "Any": Any,
          "verl_F": types.SimpleNamespace(**{n: nf[n] for n in F_NAMES})}
    exec(_take(helper, H_NAMES, f"{wheel}:{HELPER}"), ns)
    return types.SimpleNamespace(torch=torch, **{n: ns[n] for n in H_NAMES})


@pytest.fixture(scope="module")
def rtrace_bin():
    for b in (os.environ.get("RTRACE_BIN"), os.path.join(REPO, ".build", "debug", "rtrace")):
        if b and os.path.isfile(b) and os.access(b, os.X_OK):
            return b
    msg = "no rtrace binary: set RTRACE_BIN or swift build"
    if NO_SKIP:
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def load(name):
    z = np.load(os.path.join(SAMPLES, f"{name}.npz"))
    return {k: z[k] for k in z.files}


def diff_policy(binary, a, b):
    args = [binary, "diff", a, b, "--json"]
    for c in THRESHOLDS:
        args += ["--is-threshold", repr(c)]
    out = subprocess.run(args, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["policy"]


def close(got, want, key, scale=None):
    if want is None or got is None:
        assert got is None and want is None, f"{key}: rtrace {got!r}, verl {want!r}"
        return
    s = max(abs(got), abs(want), scale or 0.0)
    assert got == want or abs(got - want) <= REL * s, f"{key}: rtrace {got!r}, verl {want!r} ({abs(got - want) / s:.2e} relative)"


class Case:
    """One comparison: logprobs [B, T] of the response (A rollout, B training), its mask, the traces."""

    def __init__(self, a_path, b_path, lp_a, lp_b, mask, ids_a, ids_b, prompt):
        self.a_path, self.b_path = a_path, b_path
        self.lp_a, self.lp_b, self.mask = lp_a, lp_b, mask
        self.ids_a, self.ids_b, self.prompt = ids_a, ids_b, prompt


def sample_case(train):
    a, b = load("rollout"), load(train)
    mask = np.ones(a["logprobs"].shape)
    return Case(os.path.join(SAMPLES, "rollout.rtrace"), os.path.join(SAMPLES, f"{train}.rtrace"),
                a["logprobs"].astype(np.float64), b["logprobs"].astype(np.float64), mask,
                a["topk_ids"], b["topk_ids"], int(a["prompt_len"]))


def uneven_case(tmp):
    """train_mixed against the rollout with B's logprobs cut to the last 80 - 7i tokens of sequence i, a NaN
    logprob in A (sequence 2), and B's routing missing in some rows (sequence 4: all layers of rows 100-109,
    sequence 5: layer 3 of rows 90-119)."""
    import rtrace
    a, b = load("rollout"), load("train_mixed")
    P, n = int(a["prompt_len"]), a["logprobs"].shape[1]
    lp_a, lp_b = a["logprobs"].astype(np.float32).copy(), b["logprobs"].astype(np.float32)
    lp_a[2, 40] = np.nan
    ids_b = b["topk_ids"].copy()
    ids_b[4, 100:110] = -1
    ids_b[5, 90:120, 3] = -1
    keep = [n - 7 * i for i in range(len(lp_a))]
    model = dict(num_layers=6, num_experts=32, top_k=4)
    paths = []
    for side, lp, ids in (("a", lp_a, a["topk_ids"]), ("b", lp_b, ids_b)):
        p = os.path.join(tmp, f"{side}.rtrace")
        with rtrace.Writer(p, model=model, engine=dict(name="pytest", role="rollout" if side == "a" else "train"), logprobs=True) as w:
            for i in range(len(lp)):
                w.add(str(i), tokens=a["tokens"][i], topk_ids=ids[i], prompt_len=P,
                      logprobs=lp[i] if side == "a" else lp[i, n - keep[i]:])
        paths.append(p)
    mask = np.zeros(lp_a.shape)
    for i, k in enumerate(keep):
        mask[i, n - k:] = 1
    mask[2, 40] = 0
    return Case(paths[0], paths[1], lp_a.astype(np.float64), lp_b.astype(np.float64), mask,
                a["topk_ids"], ids_b, P)


def check_against_verl(V, case, pol):
    torch = V.torch
    old, roll = torch.tensor(np.nan_to_num(case.lp_b)), torch.tensor(np.nan_to_num(case.lp_a))
    mask = torch.tensor(case.mask)
    assert pol["tokens"] == int(case.mask.sum())
    assert pol["sequences"] == int((case.mask.sum(1) > 0).sum())
    compared = 0

    m = V.compute_offpolicy_metrics(old_log_prob=old, rollout_log_prob=roll, response_mask=mask)
    assert len(m) == 13
    for k, v in m.items():
        close(pol[k], v, k, 1.0 if k.startswith("chi2") else None)
        compared += 1
    # chi2: rtrace's value against the exact value of verl's formula over the same float64 terms.
    lr = [(float(x), float(y)) for x, y, w in zip(case.lp_b.ravel(), case.lp_a.ravel(), case.mask.ravel()) if w]
    rho2 = [math.exp(min(max(x - y, -20.0), 20.0)) ** 2 for x, y in lr]
    exact = sum(map(Fraction, rho2)) / (Fraction(len(rho2)) + Fraction(1e-8)) - 1
    assert abs(pol["chi2_token"] - float(exact)) <= 1e-14 * abs(float(exact))

    log_ratio = old - roll
    for i, c in enumerate(THRESHOLDS):
        t = pol["thresholds"][i]
        assert t["threshold"] == c
        for level in ("token", "sequence"):
            got = t[f"rollout_is_{level}"]
            _, want = V.compute_rollout_correction_weights(log_ratio, mask, level, c)
            keys = set(want)
            assert set(got) == keys | {"rollout_is_oob_ratio"}, f"C={c} {level}: keys differ from verl's"
            for k in keys:
                if k.endswith("_std"):
                    continue
                close(got[k], want[k], f"C={c} rollout_is={level} {k}")
                compared += 1
            terms = exact_terms(case, c)
            x = terms[f"is_{level}"]
            check_std(got, want, "rollout_is", x, f"C={c} rollout_is={level}")
            compared += 2
            if 1 / c <= c:
                try:
                    _, ice = V.compute_rollout_correction_weights(log_ratio, mask, level, f"{1 / c!r}_{c!r}")
                    close(got["rollout_is_oob_ratio"], ice["rollout_is_oob_ratio"], f"C={c} {level} IcePop oob")
                    compared += 1
                except ZeroDivisionError:
                    # verl 0.9.1 divides by zero (its effective sample size) when IcePop zeroes every weight.
                    n = pol["tokens"]
                    assert got["rollout_is_oob_ratio"] == n / (n + 1e-8)
            else:
                with pytest.raises(ValueError):
                    V.compute_rollout_correction_weights(log_ratio, mask, level, f"{1 / c!r}_{c!r}")
                assert got["rollout_is_oob_ratio"] is None
        rs = t["rollout_rs"]
        assert all(any(k.startswith(f"rollout_rs_{o}_") for o in V.SUPPORTED_ROLLOUT_RS_OPTIONS) for k in rs)
        for opt in sorted(V.SUPPORTED_ROLLOUT_RS_OPTIONS):
            mine = {k: v for k, v in rs.items() if k.startswith(f"rollout_rs_{opt}_")}
            try:
                _, want = V.compute_rollout_rejection_mask(log_ratio, mask, opt, c)
            except ValueError:
                assert opt.endswith("k1") and c < 1, f"verl refused rollout_rs={opt} at {c}"
                assert mine and all(v is None for v in mine.values()), f"C={c} {opt}: verl refuses it, rtrace reports {mine}"
                continue
            keys = {k for k in want if k not in COMBINED}
            assert set(mine) == keys, f"C={c} {opt}: keys differ from verl's: {set(mine) ^ keys}"
            for k in keys:
                if k.endswith("_std"):
                    continue
                close(mine[k], want[k], f"C={c} {k}")
                compared += 1
            check_std(mine, want, f"rollout_rs_{opt}", terms[opt], f"C={c} {opt}")
            compared += 2
            # One option alone: verl's combined shares are the option's.
            close(mine[f"rollout_rs_{opt}_masked_fraction"], want["rollout_rs_masked_fraction"], f"C={c} {opt} combined")
    return compared


EPS = 2.0 ** -53


def exact_terms(case, c):
    """rtrace's float64 terms, as verl defines them, for each rule at threshold C: (per-token values x clamped as
    verl clamps them before its std, per-sequence values). Sums over a sequence are rounded once (math.fsum),
    as rtrace's exact sums are."""
    out = {}
    seqs = []
    for i in range(case.mask.shape[0]):
        sel = case.mask[i] > 0
        if sel.any():
            lr = [float(y) - float(x) for x, y in zip(case.lp_a[i][sel], case.lp_b[i][sel])]
            seqs.append(lr)
    lo_k1, hi_k1 = (math.log(1 / c), math.log(c)) if 1 / c <= c else (None, None)
    tok = {k: ([], []) for k in ("is_token", "is_sequence", "token_k1", "token_k2", "token_k3", "seq_sum_k1", "seq_sum_k2",
                                 "seq_sum_k3", "seq_mean_k1", "seq_mean_k2", "seq_mean_k3", "seq_max_k2", "seq_max_k3")}

    def clamp(k, v):
        return min(max(v, lo_k1), hi_k1) if k.endswith("k1") else min(max(v, 0.0), c)

    for lr in seqs:
        n = len(lr)
        den = n + 1e-8
        s = [min(max(x, -20.0), 20.0) for x in lr]
        w = [min(math.exp(x), c) for x in s]
        tok["is_token"][0].extend(w)
        tok["is_token"][1].append(math.fsum(w) / den)
        ws = min(math.exp(min(max(math.fsum(lr), -20.0), 20.0)), c)
        tok["is_sequence"][0].extend([ws] * n)
        tok["is_sequence"][1].append(n * ws / den)
        stats = {"k1": [-x for x in s], "k2": [0.5 * (x * x) for x in s], "k3": [math.exp(x) - 1.0 - x for x in s]}
        for k, v in stats.items():
            agg = {"token": math.fsum(v) / den, "seq_sum": math.fsum(v), "seq_mean": math.fsum(v) / den, "seq_max": max(v)}
            for a, sv in agg.items():
                name = f"{a}_{k}"
                if name not in tok:
                    continue
                tok[name][1].append(sv)
                if name.endswith("k1") and lo_k1 is None:
                    continue
                tok[name][0].extend([clamp(name, x) for x in v] if a == "token" else [clamp(name, sv)] * n)
    return tok


def exact_std(xs, den, divisor):
    """sqrt((den * sum x^2 - (sum x)^2) / divisor), the numerator exact (Fractions)."""
    s1 = sum(map(Fraction, xs))
    s2 = sum(Fraction(x) ** 2 for x in xs)
    var = (Fraction(den) * s2 - s1 * s1) / divisor
    return math.sqrt(max(float(var), 0.0))


def check_std(got, want, prefix, terms, where):
    """`{prefix}_std` and `{prefix}_seq_std`: rtrace against verl (within verl's own rounding) and against the
    exact value of verl's formula over rtrace's terms (1e-13)."""
    x, seq = terms
    g, w = got[f"{prefix}_std"], want[f"{prefix}_std"]
    n = len(x)
    if not x:  # a k1 rule verl refuses: handled by the caller's null check
        assert g is None
    elif n <= 1:
        assert g == 0.0 == w
    else:
        d = n + 1e-8
        ex = exact_std(x, d, Fraction(d) ** 2)
        assert g == ex or abs(g - ex) <= 1e-13 * ex, f"{where} std: rtrace {g!r}, exact {ex!r}"
        ex2 = math.fsum(v * v for v in x) / d
        tol = REL * max(g, w) + 64 * EPS * ex2 / max(g, w, 1e-300)
        assert abs(g - w) <= tol, f"{where} std: rtrace {g!r}, verl {w!r} (tolerance {tol:.3g})"
    g, w = got[f"{prefix}_seq_std"], want[f"{prefix}_seq_std"]
    m = len(seq)
    if m <= 1:
        assert g == 0.0 == w
        return
    ex = exact_std(seq, m, Fraction(m) * (m - 1))
    assert g == ex or abs(g - ex) <= 1e-13 * ex, f"{where} seq_std: rtrace {g!r}, exact {ex!r}"
    # An ulp of difference in each per-sequence value (rtrace sums exactly, torch does not) moves the std by
    # up to ~ max|s| * 2^-52 * sqrt(m / (m - 1)).
    tol = REL * max(g, w) + 4 * EPS * max(abs(v) for v in seq)
    assert abs(g - w) <= tol, f"{where} seq_std: rtrace {g!r}, verl {w!r} ({abs(g - w) / max(g, w):.2e} relative)"


def flips_per_row(ids_a, ids_b):
    """[B, rows]: layers whose top-k set differs, -1 where no layer is present on both sides."""
    a, b = np.sort(ids_a, axis=-1), np.sort(ids_b, axis=-1)
    present = (ids_a[..., 0] >= 0) & (ids_b[..., 0] >= 0)
    differ = (a != b).any(axis=-1) & present
    return np.where(present.any(axis=-1), differ.sum(axis=-1), -1)


def check_routing_split(case, pol):
    B, T = case.lp_a.shape
    n_tok = case.prompt + T  # tokens per sequence: the response is the last T
    fl = flips_per_row(case.ids_a, case.ids_b)
    rows = np.arange(n_tok - T, n_tok) - 1  # row that produced each response token
    group = np.where(rows[None, :] < fl.shape[1], fl[:, np.minimum(rows, fl.shape[1] - 1)], -1)
    sel = case.mask > 0
    lpa, lpb = case.lp_a[sel], case.lp_b[sel]
    g = group[sel]
    lr = lpb - lpa
    rho = np.array([math.exp(min(max(x, -20.0), 20.0)) for x in lr])
    k3 = np.array([math.exp(x) - x - 1 for x in lr])
    s = np.clip(lr, -20.0, 20.0)
    r = pol["routing"]
    assert r["tokens_without_routing"] == int((g < 0).sum())
    assert sum(x["tokens"] for x in r["by_flipped_layers"]) + r["tokens_without_routing"] == pol["tokens"]

    def expect(obj, pick, lo, hi):
        n = int(pick.sum())
        assert obj["tokens"] == n and obj["from"] == lo and obj["to"] == hi
        if n == 0:
            assert obj["k1"] is None and obj["chi2_token"] is None
            return
        den = n + 1e-8
        close(obj["mean_flipped_layers"], float(g[pick].mean()), "mean_flipped_layers")
        close(obj["k1"], float(np.mean(lpa[pick] - lpb[pick])), "k1")
        close(obj["k3"], float(np.mean(k3[pick])), "k3")
        close(obj["abs_log_ratio"], float(np.mean(np.abs(lr[pick]))), "abs_log_ratio")
        close(obj["chi2_token"], float(np.sum(rho[pick] ** 2) / den - 1), "chi2_token", 1.0)
        for tau, key in ((1.5, "1.5"), (2, "2"), (5, "5")):
            close(obj["extreme_frac"][key], float(np.mean(np.abs(lr[pick]) > math.log(tau))), f"F({tau})")
        for c, t in zip(THRESHOLDS, obj["thresholds"]):
            assert t["threshold"] == c
            close(t["rollout_is_ratio_fraction_high"], float((rho[pick] > c).sum() / den), f"{c} high")
            close(t["rollout_is_ratio_fraction_low"], float((rho[pick] < 1 / c).sum() / den), f"{c} low")
            k1 = -s[pick]
            want = float(((k1 < math.log(1 / c)) | (k1 > math.log(c))).sum() / den) if 1 / c <= c else None
            close(t["rollout_rs_token_k1_masked_fraction"], want, f"{c} token_k1")
            close(t["rollout_rs_token_k2_masked_fraction"], float((0.5 * s[pick] ** 2 > c).sum() / den), f"{c} token_k2")
            close(t["rollout_rs_token_k3_masked_fraction"], float((np.exp(s[pick]) - 1 - s[pick] > c).sum() / den), f"{c} token_k3")

    L = case.ids_a.shape[2]
    expect(r["unflipped"], g == 0, 0, 0)
    expect(r["flipped"], g >= 1, 1, L)
    buckets = [(0, 0), (1, 1), (2, 2), (3, 4), (5, 6)]
    assert [(x["from"], x["to"]) for x in r["by_flipped_layers"]] == buckets
    for (lo, hi), obj in zip(buckets, r["by_flipped_layers"]):
        expect(obj, (g >= lo) & (g <= hi), lo, hi)
    return int((g >= 1).sum())


@pytest.mark.parametrize("train", ["train_mixed", "train_fp32", "train_r3"])
def test_samples_match_verl(verl, rtrace_bin, train):
    case = sample_case(train)
    pol = diff_policy(rtrace_bin, case.a_path, case.b_path)
    assert check_against_verl(verl, case, pol) > 600
    flipped = check_routing_split(case, pol)
    # R3 replays the rollout's routing: nothing flips; the others flip some tokens.
    assert (flipped == 0) == (train == "train_r3")


def test_uneven_masks_match_verl(verl, rtrace_bin, tmp_path):
    case = uneven_case(str(tmp_path))
    pol = diff_policy(rtrace_bin, case.a_path, case.b_path)
    assert pol["tokens_nonfinite"] == 1
    assert check_against_verl(verl, case, pol) > 600
    check_routing_split(case, pol)
    assert pol["routing"]["tokens_without_routing"] == 10


def test_wheel_functions_are_verls(verl):
    """The functions run are the wheel's: their docstrings and signatures are verl's."""
    import inspect
    assert "KL divergence" in (verl.compute_offpolicy_metrics.__doc__ or "")
    assert list(inspect.signature(verl.compute_offpolicy_metrics).parameters) == ["old_log_prob", "rollout_log_prob", "response_mask"]
    assert verl.SAFETY_BOUND == 20.0
