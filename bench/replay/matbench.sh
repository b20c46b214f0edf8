#!/usr/bin/env bash
# SIMD vs OpenBLAS at the trainer's shapes; writes bench/replay/matbench.md (summarize.py puts it in
# bench/replay.md). Not part of the package build: compiles bench/replay/matbench.swift together with
# the trainer's own kernel file Sources/RTraceTrain/MatvecSIMD8.swift, and links the system OpenBLAS (installs libopenblas-dev with apt if missing).
# Usage: bench/replay/matbench.sh            (width 64 / 16 experts and width 32 / 8 experts; OpenBLAS 1 and 2 threads)
#        bench/replay/matbench.sh W E ROWS T (one configuration)
set -euo pipefail
cd "$(dirname "$0")"
if ! pkg-config --exists openblas 2>/dev/null; then
  (apt-get update -qq && apt-get install -y -qq libopenblas-dev pkg-config) || { echo "install libopenblas-dev"; exit 1; }
fi
BIN=${BIN:-/tmp/rtrace-matbench}
# With two source files swiftc wants the one with top-level code named main.swift.
SRC=$(mktemp -d)
cp matbench.swift "$SRC/main.swift"
swiftc -O -target-cpu haswell -I CBLAS $(pkg-config --cflags openblas | sed 's/-I/-Xcc -I/g') \
  $(pkg-config --libs openblas) "$SRC/main.swift" ../../Sources/RTraceTrain/MatvecSIMD8.swift -o "$BIN"
rm -rf "$SRC"
if [ $# -gt 0 ]; then exec "$BIN" "$@"; fi
{
  echo "Command: \`bench/replay/matbench.sh\` (swiftc -O -target-cpu haswell, as the RTraceTrain target in release; OpenBLAS from"
  echo "apt libopenblas-dev). Times are best of 7 batches, ns per call, on this 2-core VM. \`current scalar\` is the trainer's scalar"
  echo "loops (the forward's previous kernel, four accumulators; the backward's current one); \`SIMD8\` is \`matvecSIMD8\` in Sources/RTraceTrain/MatvecSIMD8.swift. The trainer"
  echo "runs token by token, so its products are matrix–vector (first rows); the batched rows show what a whole-sequence"
  echo "(7 rows) or 8-sequence (56 rows) GEMM would cost. The trainer uses the SIMD8 forward kernel; its backward stays"
  echo "the scalar loop (the SIMD backward gains only 0–15 % at these shapes)."
  echo
  "$BIN" 64 16 7 1
  echo
  "$BIN" 64 16 7 2 | grep -E "^# |^\| op|^\|---|matvec|×56"
  echo
  "$BIN" 32 8 7 1 | grep -v checksum
} | grep -v checksum | tee matbench.md
