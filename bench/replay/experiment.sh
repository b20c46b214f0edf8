#!/usr/bin/env bash
# Runs rtrace replay-train with --mode none, r2 and r3 over several seeds and writes a summary
# table to bench/replay.md. Usage: bench/replay/experiment.sh [extra replay-train flags]
# Environment: STEPS (30), SEEDS ("1 2 3"), JOBS (2), OUT (/tmp/rtrace-replay-exp), SCRATCH (.build-train), OREPS (40),
# CALLGRIND (0; 1 adds instruction counts of one none and one r3 step under valgrind, ~3 min),
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
# Replay overhead: step 0 under none and r3, back to back in one process (same seed, same rollout
# batch), OREPS pairs after a warm-up pair, nothing else of ours running.
OREPS=${OREPS:-40}
"$BIN" replay-train --overhead-bench "$OREPS" --seed 1 --out "$OUT/overhead" $CONFIG "$@" > "$OUT/overhead.md" 2>/dev/null
# Optional (CALLGRIND=1, needs valgrind): instruction counts of step 0 under none and r3, immune to other load.
if [ "${CALLGRIND:-0}" = 1 ] && command -v valgrind >/dev/null; then
  mkdir -p "$OUT/callgrind"
  for mode in none r3; do
    valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind/$mode.out" "$BIN" replay-train --mode "$mode" --steps 1 --seed 1 \
      --out "$OUT/callgrind/$mode" $CONFIG "$@" >/dev/null 2>&1 &
  done
  wait
  for mode in none r3; do callgrind_annotate --inclusive=yes "$OUT/callgrind/$mode.out" > "$OUT/callgrind/$mode.txt"; done
fi
"${PYTHON:-python3}" bench/replay/summarize.py "$OUT" "$STEPS" "$JOBS" "$CONFIG $*" > bench/replay.md
cat bench/replay.md
