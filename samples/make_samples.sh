#!/usr/bin/env bash
# Rebuilds the golden .rtrace files from their expected content (.npz). Run from the repository root:
#   bash samples/make_samples.sh
# The tests read the .rtrace files and compare them with the .npz arrays, bit for bit.
set -euo pipefail
B=${RTRACE_BIN:-.build/debug/rtrace}
S=samples/qwen3moe-L6-E32-k4
for f in rollout train_mixed train_fp32 train_r3; do
  role=train; [ "$f" = rollout ] && role=rollout
  # 64 KiB chunks: the golden files hold several chunks and records that span them.
  "$B" import --from npz "$S/$f.npz" -o "$S/$f.rtrace" --engine transformers --engine-version 5.17 \
    --role "$role" --model qwen3moe-L6-E32-k4 --policy-version 1100 --chunk-bytes 65536 --attr source=shared/real-traces
done
(cd samples && python3 make_synthetic.py)
"$B" import --from npz samples/synthetic-E300-dense.npz -o samples/synthetic-E300-dense.rtrace --engine synthetic \
  --role rollout --num-layers 8 --layer-map 2-7 --num-experts 300 --chunk-bytes 1024
