#!/usr/bin/env bash
# Runs rtrace replay-train with --mode none, r2 and r3 over several seeds and writes a summary
# table to bench/replay.md. Usage: bench/replay/experiment.sh [extra replay-train flags]
# Environment: STEPS (30), SEEDS ("1 2 3"), JOBS (2), OUT (/tmp/rtrace-replay-exp), SCRATCH (.build-train),
# MODEL flags via CONFIG (default "--layers 4 --experts 16 --top-k 4 --width 64 --heads 4").
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${STEPS:-30}
SEEDS=${SEEDS:-"1 2 3"}
JOBS=${JOBS:-2}
OUT=${OUT:-/tmp/rtrace-replay-exp}
SCRATCH=${SCRATCH:-.build-train}
CONFIG=${CONFIG:-"--layers 4 --experts 16 --top-k 4 --width 64 --heads 4"}
swift build -c release --scratch-path "$SCRATCH" --product rtrace >&2
BIN="$SCRATCH/release/rtrace"
rm -rf "$OUT"; mkdir -p "$OUT"
runs=()
for mode in none r2 r3; do for seed in $SEEDS; do runs+=("$mode $seed"); done; done
printf '%s\n' "${runs[@]}" | xargs -P "$JOBS" -L 1 bash -c '
  mode=$0; seed=$1
  "'"$BIN"'" replay-train --mode "$mode" --seed "$seed" --steps '"$STEPS"' --out "'"$OUT"'/$mode-$seed" '"$CONFIG"' '"$*"' 2>/dev/null
  echo "done $mode seed $seed" >&2'
# Timing pass: one run at a time, so the r3-vs-none overhead is not confounded by a parallel run.
TSTEPS=${TSTEPS:-10}
for rep in 1 2; do for mode in none r2 r3; do
  "$BIN" replay-train --mode "$mode" --seed 1 --steps "$TSTEPS" --out "$OUT/timing/$mode-$rep" $CONFIG "$@" 2>/dev/null
done; done
python3 bench/replay/summarize.py "$OUT" "$STEPS" "$JOBS" "$CONFIG $*" > bench/replay.md
cat bench/replay.md
