#!/usr/bin/env bash
# make experiment-torch: GRPO with PPO clipping on a small transformers Qwen3MoeForCausalLM
# (bench/replay_torch/grpo.py) with routing replay none / r2 / r3 from .rtrace files, several seeds;
# the replay overhead (training forward + backward with r3 vs without, same process); the curves as SVG
# (rtrace report --run ... --format svg); the summary in bench/replay-torch.md.
# Environment: STEPS (30), SEEDS ("1 2 3"), JOBS (2), OUT (/tmp/rtrace-replay-torch), OREPS (30),
# PYTHON (.venv/bin/python), RTRACE_BIN (.build/debug/rtrace); extra arguments go to every grpo.py run.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
BIN=${RTRACE_BIN:-.build/debug/rtrace}
STEPS=${STEPS:-30}
SEEDS=${SEEDS:-"1 2 3"}
JOBS=${JOBS:-2}
OUT=${OUT:-/tmp/rtrace-replay-torch}
OREPS=${OREPS:-30}
[ -x "$BIN" ] || { echo "no rtrace binary at $BIN (swift build, or set RTRACE_BIN)"; exit 1; }
rm -rf "$OUT"; mkdir -p "$OUT/ckpt"
GRPO="$PY bench/replay_torch/grpo.py"
EXTRA="$*"
t0=$(date +%s)
# 1. the pretrained starting point of each seed, shared by its three runs
printf '%s\n' $SEEDS | xargs -P "$JOBS" -I{} bash -c \
  "$GRPO --seed {} --checkpoint $OUT/ckpt/seed{}.pt --steps 0 --out $OUT/pretrain-{} $EXTRA >/dev/null && echo 'pretrained seed {}' >&2"
# 2. none / r2 / r3 x seeds, JOBS at a time
runs=()
for mode in none r2 r3; do for seed in $SEEDS; do runs+=("$mode $seed"); done; done
printf '%s\n' "${runs[@]}" | xargs -P "$JOBS" -L 1 bash -c \
  "$GRPO --mode \$0 --seed \$1 --steps $STEPS --checkpoint $OUT/ckpt/seed\$1.pt --out $OUT/\$0-\$1 $EXTRA && echo \"done \$0 seed \$1\" >&2"
t1=$(date +%s)
# 3. replay overhead, nothing else of ours running: the experiment's model, and a 4x wider one (random
#    weights) to show how the share shrinks as the model grows (the replay's cost is per token and expert)
first=$(echo $SEEDS | cut -d' ' -f1)
$GRPO --overhead-bench "$OREPS" --seed "$first" --checkpoint "$OUT/ckpt/seed$first.pt" --out "$OUT/overhead" $EXTRA >/dev/null
$GRPO --overhead-bench "$OREPS" --seed "$first" --pretrain-steps 0 --width 256 --expert-width 128 --heads 8 \
  --out "$OUT/overhead-wide" $EXTRA >/dev/null
# 4. the curves (one line per mode: mean over seeds, min-max band)
rm -rf bench/replay_torch/svg
args=()
for mode in none r2 r3; do for seed in $SEEDS; do args+=(--run "$OUT/$mode-$seed"); done; done
"$BIN" report "${args[@]}" --format svg -o bench/replay_torch/svg
"$PY" bench/replay_torch/summarize.py "$OUT" --steps "$STEPS" --jobs "$JOBS" --seconds $((t1 - t0)) \
  --command "make experiment-torch (STEPS=$STEPS SEEDS=\"$SEEDS\" JOBS=$JOBS OREPS=$OREPS) $EXTRA" > bench/replay-torch.md
cat bench/replay-torch.md
