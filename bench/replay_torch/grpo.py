#!/usr/bin/env python3
"""GRPO with PPO clipping on a small transformers Qwen3MoeForCausalLM, with routing replay from .rtrace files.

The task is `rtrace replay-train`'s: reverse a string of digits (tokens 0-9; 10 separates, 11 begins);
the reward is the share of response positions equal to the reversed digits. Each step:

1. rollout engine: the policy's weights in bf16, sampling token by token with a KV cache
   (a prefill, then one forward per sampled token), its routing recorded by
   ``rtrace.torch.record_routing`` (``rec.generation()``) into ``traces/rollout-<step>.rtrace``
   together with the tokens, sampled-token logprobs, groups and rewards;
2. training engine: the same weights in fp32 over whole sequences, reading that trace back;
   an old-policy pass (no grad), then ``--minibatches`` PPO updates (clipped ratio against the
   rollout logprobs, group-normalised advantages, Adam, gradient-norm clip), with
   ``--mode none`` (the router routes), ``r2`` (the old-policy pass's routing replayed in the updates)
   or ``r3`` (the rollout's routing replayed, ``rtrace.torch.replay_routing``).

``metrics.jsonl`` holds one line per step with the keys ``rtrace replay-train`` writes (so
``rtrace report --run DIR`` plots it): k1, k3 and extreme_frac_2 compare the training engine's
old-policy logprobs with the rollout's over response tokens; flip_rate_natural is the share of
(row, MoE layer)s where the training router's own top-k set differs from the rollout's,
flip_rate_applied where the set the experts received in the old-policy pass differs.

``--overhead-bench N`` instead times a training forward + backward over one rollout batch with and
without r3 replay, N pairs back to back in this process.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))

import rtrace  # noqa: E402
import rtrace.torch as RT  # noqa: E402

SEP, BOS, VOCAB = 10, 11, 16


@dataclasses.dataclass
class Config:
    layers: int = 4
    experts: int = 16
    top_k: int = 4
    width: int = 64
    heads: int = 4
    expert_width: int = 32
    digits: int = 3
    prompts: int = 8
    group: int = 8
    minibatches: int = 4
    lr: float = 1e-3
    clip: float = 0.2
    temperature: float = 1.0
    max_grad_norm: float = 1.0
    steps: int = 30
    pretrain_steps: int = 150
    pretrain_lr: float = 3e-3


def make_model(cfg: Config, seed: int):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    c = Qwen3MoeConfig(vocab_size=VOCAB, hidden_size=cfg.width, num_hidden_layers=cfg.layers,
                       num_attention_heads=cfg.heads, num_key_value_heads=max(1, cfg.heads // 2),
                       head_dim=cfg.width // cfg.heads, intermediate_size=2 * cfg.width,
                       moe_intermediate_size=cfg.expert_width, num_experts=cfg.experts,
                       num_experts_per_tok=cfg.top_k, norm_topk_prob=True, max_position_embeddings=64,
                       pad_token_id=None, bos_token_id=BOS, eos_token_id=None, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return Qwen3MoeForCausalLM(c)


def prompts(cfg: Config, gen: torch.Generator):
    """[prompts * group, 1 + digits + 1] prompt tokens (each prompt repeated group times) and the digits."""
    d = torch.randint(0, 10, (cfg.prompts, cfg.digits), generator=gen)
    p = torch.cat([torch.full((cfg.prompts, 1), BOS), d, torch.full((cfg.prompts, 1), SEP)], 1)
    return p.repeat_interleave(cfg.group, 0), d.repeat_interleave(cfg.group, 0)


def rewards(digits, response):
    return (response == digits.flip(1)).float().mean(1)


def pretrain(model, cfg: Config, seed: int):
    """Brief supervised training on the task (teacher forcing over the response), fp32: a policy that
    already gets some digits right, so that GRPO has a signal from step 0."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.pretrain_lr)
    model.train()
    P = 1 + cfg.digits + 1
    for _ in range(cfg.pretrain_steps):
        p, d = prompts(cfg, gen)
        x = torch.cat([p, d.flip(1)], 1)
        lg = model(input_ids=x, use_cache=False).logits[:, P - 1:-1]
        loss = torch.nn.functional.cross_entropy(lg.reshape(-1, VOCAB), x[:, P:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def rollout(policy, cfg: Config, step: int, gen: torch.Generator, path: str):
    """The rollout engine: bf16 copy of the policy, token-by-token sampling with a KV cache, routing
    recorded into ``path``. Returns (wall time, time writing the trace, mean reward)."""
    from transformers import DynamicCache
    t0 = time.perf_counter()
    eng = copy.deepcopy(policy).to(torch.bfloat16).eval()
    p, d = prompts(cfg, gen)
    B = p.shape[0]
    uids = [f"s{step}-{i}" for i in range(B)]
    groups = [f"s{step}-g{i // cfg.group}" for i in range(B)]
    geo = RT.geometry(eng, name="qwen3moe-grpo")
    with torch.no_grad(), rtrace.Writer(path, model=geo, engine=dict(name="transformers", version="5.24", role="rollout"),
                                        topk_weights_dtype="bf16", logprobs=True, policy_version=step,
                                        attributes={"step": str(step), "temperature": str(cfg.temperature),
                                                    "vocab": str(VOCAB)}) as w:
        with RT.record_routing(eng, w) as rec, rec.generation(uids=uids, groups=groups) as g:
            cache = DynamicCache(config=eng.config)
            mask = torch.ones_like(p)
            logits = eng(input_ids=p, attention_mask=mask, cache=cache, use_cache=True).logits[:, -1]
            seq, lps = [p], []
            for t in range(cfg.digits):
                lp = torch.log_softmax(logits.float() / cfg.temperature, -1)
                tok = torch.multinomial(lp.exp(), 1, generator=gen)
                lps.append(lp.gather(1, tok))
                seq.append(tok)
                if t + 1 < cfg.digits:
                    mask = torch.cat([mask, torch.ones_like(tok)], 1)
                    logits = eng(input_ids=tok, attention_mask=mask, cache=cache, use_cache=True).logits[:, -1]
            full = torch.cat(seq, 1)
            r = rewards(d, full[:, -cfg.digits:])
            t1 = time.perf_counter()
            g.finish(tokens=list(full), logprobs=list(torch.cat(lps, 1)), rewards=r.tolist())
    t2 = time.perf_counter()       # records added and the file closed
    return t2 - t0, t2 - t1, float(r.mean())


class RouterProbe:
    """The training router's own top-k choice at each MoE layer (hooks registered before the replay's,
    so they see the router's output before replay replaces it)."""

    def __init__(self, model):
        self.routers = RT.find_routers(model)
        self.ids = {}
        self.handles = [g.register_forward_hook(self._hook(li)) for li, _, g in self.routers]

    def _hook(self, li):
        def f(mod, args, out):
            if torch._C._current_graph_task_id() == -1:
                self.ids[li] = out[2].detach()
        return f

    def stacked(self, B, S):
        return torch.stack([self.ids[li] for li, _, _ in self.routers], 1).numpy().reshape(B, S, len(self.routers), -1)

    def close(self):
        for h in self.handles:
            h.remove()


def flip_rate(a, b):
    """Share of (row, layer)s whose top-k sets differ; a, b [..., k]."""
    return float((np.sort(a, -1) != np.sort(b, -1)).any(-1).mean())


def token_logp(logits, tokens, temperature):
    lp = torch.log_softmax(logits[:, :-1].float() / temperature, -1)
    return lp.gather(2, tokens[:, 1:, None])[..., 0], lp


def k3_of(old_lp, roll_lp, rows=None):
    """k3 = mean(r - 1 - log r), r = pi_train / pi_rollout, over the response tokens of `rows` (all by
    default); None when there is no token."""
    lr = old_lp.double() - roll_lp.double()
    if rows is not None:
        lr = lr[torch.from_numpy(rows)]
    return float((lr.exp() - 1 - lr).mean()) if lr.numel() else None


def routing_effect(model, recs, tokens, roll_lp, roll_ids, P, temperature):
    """The rollout mismatch with and without replaying the rollout's routing, on the same batch and the
    same weights: old-policy logprobs routed by the training router and with the rollout's routing (r3),
    k3 of each against the rollout's logprobs, over all sequences and over those where the router flips
    at least one (row, layer)."""
    B, T = tokens.shape
    probe = RouterProbe(model)
    with torch.no_grad():
        own = token_logp(model(input_ids=tokens, use_cache=False).logits, tokens, temperature)[0][:, P - 1:]
        probe.close()
        with RT.replay_routing(model) as rp:
            rp.set_batch(recs)
            rep = token_logp(model(input_ids=tokens, use_cache=False).logits, tokens, temperature)[0][:, P - 1:]
    flipped = (np.sort(probe.stacked(B, T)[:, :T - 1], -1) != np.sort(roll_ids, -1)).any(-1).any((1, 2))
    return dict(k3_router=k3_of(own, roll_lp), k3_replayed=k3_of(rep, roll_lp),
                seq_flipped_frac=float(flipped.mean()),
                k3_router_flipped=k3_of(own, roll_lp, flipped), k3_replayed_flipped=k3_of(rep, roll_lp, flipped),
                k3_router_unflipped=k3_of(own, roll_lp, ~flipped))


class Trainer:
    def __init__(self, cfg: Config, mode: str, seed: int, out: str, model):
        self.cfg, self.mode, self.seed, self.out = cfg, mode, seed, out
        self.model = model
        self.model.train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.gen = torch.Generator().manual_seed(seed)        # rollout sampling, same in every mode
        self.shuffle = np.random.default_rng(seed)
        self.step = 0
        os.makedirs(os.path.join(out, "traces"), exist_ok=True)

    def run(self, steps=None):
        with open(os.path.join(self.out, "config.json"), "w") as f:
            json.dump(dict(dataclasses.asdict(self.cfg), mode=self.mode, seed=self.seed), f)
        with open(os.path.join(self.out, "metrics.jsonl"), "w") as f:
            for _ in range(self.cfg.steps if steps is None else steps):
                m = self.run_step()
                f.write(json.dumps(m) + "\n")
                f.flush()

    def read_batch(self, path):
        recs = list(rtrace.Reader(path))
        tokens = torch.from_numpy(np.stack([r.tokens for r in recs]).astype(np.int64))
        return recs, tokens

    def run_step(self):
        cfg, s = self.cfg, self.step
        path = os.path.join(self.out, "traces", f"rollout-{s}.rtrace")
        t_roll, t_write, _ = rollout(self.model, cfg, s, self.gen, path)
        t0 = time.perf_counter()
        recs, tokens = self.read_batch(path)
        t_read = time.perf_counter() - t0
        met = dict(step=s, mode=self.mode)
        t1 = time.perf_counter()
        roll_lp = torch.from_numpy(np.stack([r.logprobs for r in recs]))
        met.update(routing_effect(self.model, recs, tokens, roll_lp, np.stack([r.topk_ids for r in recs]),
                                  recs[0].prompt_len, self.cfg.temperature))
        met["time_analysis_s"] = time.perf_counter() - t1
        met.update(self.train_on(recs, tokens))
        met.update(time_rollout_s=t_roll, time_trace_write_s=t_write, time_trace_read_s=t_read,
                   time_replay_s=t_read if self.mode == "r3" else 0.0)
        met["time_train_s"] += t_read
        self.step += 1
        return met

    def train_on(self, recs, tokens):
        """Old-policy pass and PPO updates on a rollout batch read from its trace."""
        cfg, model = self.cfg, self.model
        t0 = time.perf_counter()
        B, T = tokens.shape
        P = recs[0].prompt_len
        R = T - P
        roll_lp = torch.from_numpy(np.stack([r.logprobs for r in recs]))            # [B, R]
        reward = torch.tensor([r.reward for r in recs], dtype=torch.float32)
        g = reward.view(-1, cfg.group)
        adv = ((g - g.mean(1, keepdim=True)) / (g.std(1, unbiased=False, keepdim=True) + 1e-6)).view(-1)
        roll_ids = np.stack([r.topk_ids for r in recs])                               # [B, T-1, L, k]
        uids = [r.uid for r in recs]
        probe = RouterProbe(model)
        ctx = RT.replay_routing(model, mode=self.mode) if self.mode != "none" else None
        rp = ctx.__enter__() if ctx else None
        try:
            with torch.no_grad():
                if self.mode == "r3":
                    rp.set_batch(recs)
                elif self.mode == "r2":
                    rp.forget()
                    rp.set_batch(uids=uids)
                logits = model(input_ids=tokens, use_cache=False).logits
            natural = probe.stacked(B, T)[:, :T - 1]
            applied = rp.applied_ids()[:, :T - 1] if rp is not None else natural
            old_lp, lp_all = token_logp(logits, tokens, cfg.temperature)
            old_lp = old_lp[:, P - 1:]
            lr = old_lp.double() - roll_lp.double()                                   # log r, r = pi_train / pi_rollout
            r = lr.exp()
            ent = -(lp_all.exp() * lp_all).sum(-1)[:, P - 1:]
            met = dict(reward=float(reward.mean()), k1=float((-lr).mean()), k3=float((r - 1 - lr).mean()),
                       extreme_frac_2=float(((r > 2) | (r < 0.5)).double().mean()),
                       flip_rate_natural=flip_rate(natural, roll_ids), flip_rate_applied=flip_rate(applied, roll_ids),
                       entropy=float(ent.mean()))
            if rp is not None:
                st = rp.last_stats()
                met.update(replay_replaced_rate=st["replaced_rate"], replay_rows_native=st["rows_native"])
            probe.close()
            order = self.shuffle.permutation(B)
            gns, upd_rep = [], []
            for mb in range(cfg.minibatches):
                idx = order[mb::cfg.minibatches]
                if self.mode == "r3":
                    rp.set_batch([recs[i] for i in idx])
                elif self.mode == "r2":
                    rp.set_batch(uids=[uids[i] for i in idx])
                x = tokens[idx]
                lp, _ = token_logp(model(input_ids=x, use_cache=False).logits, x, cfg.temperature)
                ratio = (lp[:, P - 1:] - roll_lp[idx]).exp()
                a = adv[idx, None]
                loss = -torch.minimum(ratio * a, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * a).mean()
                self.opt.zero_grad()
                loss.backward()
                gns.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)))
                self.opt.step()
                if rp is not None:
                    upd_rep.append(rp.last_stats()["replaced_rate"])
        finally:
            probe.close()
            if ctx:
                ctx.__exit__(None, None, None)
        met.update(grad_norm=statistics.mean(gns), time_train_s=time.perf_counter() - t0)
        if upd_rep:     # the training router's flip rate against the replayed routing, as the policy moves
            met["replay_replaced_rate_updates"] = statistics.mean(upd_rep)
        return met


def overhead_bench(model, cfg: Config, seed: int, reps: int, out: str):
    """The cost of r3 replay, same process, same rollout batch: `reps` pairs (after a warm-up pair,
    alternating which mode goes first) of (a) a training forward + backward over the batch (CPU time
    also split: up to the loss, then backward and last_stats) and (b) a whole training update on it
    (old-policy pass + PPO mini-batch updates, weights and optimizer reset before each), without and
    with r3 replay. Returns the per-pair times (ms) and ratios."""
    tr = Trainer(cfg, "none", seed, out, model=model)
    path = os.path.join(out, "traces", "overhead.rtrace")
    rollout(model, cfg, 0, tr.gen, path)
    recs, tokens = tr.read_batch(path)
    start = copy.deepcopy(model.state_dict())
    trainers = {m: Trainer(cfg, m, seed, out, model=model) for m in ("none", "r3")}

    def fwd_bwd(mode, rp):
        model.zero_grad(set_to_none=True)
        c0, w0 = time.process_time(), time.perf_counter()
        if mode == "r3":
            rp.set_batch(recs)
        loss = model(input_ids=tokens, use_cache=False).logits.float().logsumexp(-1).mean()
        c1 = time.process_time()
        loss.backward()
        if mode == "r3":
            rp.last_stats()
        c2 = time.process_time()
        return 1e3 * (c2 - c0), 1e3 * (time.perf_counter() - w0), 1e3 * (c1 - c0), 1e3 * (c2 - c1)

    def update(mode):
        model.load_state_dict(start)
        t = trainers[mode]
        t.opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        t.shuffle = np.random.default_rng(seed)
        c0, w0 = time.process_time(), time.perf_counter()
        t.train_on(recs, tokens)
        return 1e3 * (time.process_time() - c0), 1e3 * (time.perf_counter() - w0)

    res = {k: {"none": [], "r3": []} for k in ("fwd_bwd", "update")}
    for i in range(reps + 1):
        order = ("none", "r3") if i % 2 == 0 else ("r3", "none")
        got = {"fwd_bwd": {}, "update": {}}
        for mode in order:
            if mode == "r3":
                with RT.replay_routing(model) as rp:
                    got["fwd_bwd"][mode] = fwd_bwd(mode, rp)
            else:
                got["fwd_bwd"][mode] = fwd_bwd(mode, None)
        for mode in order:
            got["update"][mode] = update(mode)
        if i:                                   # the first pair warms up
            for k in res:
                for mode in order:
                    res[k][mode].append(got[k][mode])
    model.load_state_dict(start)
    out_d = dict(reps=reps, batch=list(tokens.shape))
    for k, v in res.items():
        for j, unit in ((0, "cpu"), (1, "wall"), (2, "fwd_cpu"), (3, "bwd_cpu")):
            if j >= len(v["none"][0]):
                continue
            ratios = [b[j] / a[j] - 1 for a, b in zip(v["none"], v["r3"])]
            out_d[f"{k}_none_{unit}_ms"] = [x[j] for x in v["none"]]
            out_d[f"{k}_r3_{unit}_ms"] = [x[j] for x in v["r3"]]
            out_d[f"{k}_{unit}_ratio_median"] = statistics.median(ratios)
            out_d[f"{k}_{unit}_ratio_mean"] = statistics.mean(ratios)
            out_d[f"{k}_{unit}_ratio_se"] = statistics.stdev(ratios) / len(ratios) ** 0.5 if len(ratios) > 1 else 0.0
    return out_d


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["none", "r2", "r3"], default="r3")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True, help="output directory (metrics.jsonl, traces/)")
    ap.add_argument("--checkpoint", help="load the pretrained weights from this file when it exists, else "
                                         "pretrain and save them there")
    ap.add_argument("--overhead-bench", type=int, metavar="N", help="time N pairs of training forward + backward, "
                                                                     "without and with r3 replay, and exit")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    for f in dataclasses.fields(Config):
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = Config(**{f.name: getattr(a, f.name) for f in dataclasses.fields(Config)})
    os.makedirs(a.out, exist_ok=True)
    if a.checkpoint and os.path.exists(a.checkpoint):
        model = make_model(cfg, a.seed)
        model.load_state_dict(torch.load(a.checkpoint))
    else:
        model = pretrain(make_model(cfg, a.seed), cfg, a.seed)
        if a.checkpoint:
            torch.save(model.state_dict(), a.checkpoint)
    if a.overhead_bench:
        res = overhead_bench(model, cfg, a.seed, a.overhead_bench, a.out)
        with open(os.path.join(a.out, "overhead.json"), "w") as f:
            json.dump(res, f)
        print(json.dumps({k: v for k, v in res.items() if not k.endswith("_ms")}))
        return
    Trainer(cfg, a.mode, a.seed, a.out, model=model).run()


if __name__ == "__main__":
    main()
