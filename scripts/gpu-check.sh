#!/usr/bin/env bash
# GPU check: build with `--features cuda` and print one line per measured figure:
#   klot_step B=<B> <seconds per step>   for B = 4096, 16384, 32768 (the paper's batch)
#   encoders ...                          encoder throughput (`sotalign bench encoders --device cuda`)
# UNTESTED ON A GPU (written on a CPU-only machine). Read docs/SCALING.md ("GPU") first: the
# KLOT step runs on the engine's CPU Sinkhorn in every build today, so the cuda feature changes
# the candle parts (heads, encoders), not this figure. B = 32768 needs about 8.6 GiB of RAM
# (two f32 B x B plans + kernels).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES="${SOTALIGN_KLOT_B:-4096,16384,32768}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | sed 's/^/gpu /' || echo "gpu none found (nvidia-smi missing)"
cargo build --release --features cuda -p sotalign --bins --benches >&2
# criterion prints "klot_step/B  time: [lo mid hi]"; keep the middle estimate.
SOTALIGN_KLOT_B="$SIZES" cargo bench --features cuda -p sotalign --bench align -- 'klot_step/' --noplot 2>/dev/null \
  | awk '/^klot_step\// {name=$1} /time:/ && name != "" { for (i=1;i<=NF;i++) if ($i ~ /^\[/) { v=$(i+2); u=$(i+3); print name " " v " " u; name=""; break } }' \
  | sed 's#klot_step/\([0-9]*\)#klot_step B=\1#'
BIN=target/release/sotalign
# Encoder throughput on the GPU (real weights: run `sotalign fetch` first).
"$BIN" bench encoders --device cuda --batch 64 --images 512 --texts 4096 2>&1 \
  | grep -E '^(images|texts|candle)' | sed 's/^/encoders /'
