#!/usr/bin/env bash
# GPU check: build with `--features cuda` and print one line per measured figure:
#   gpu <name>, <memory>
#   klot_step_device B=<B> <time> <unit>  one KLOT step (two 100-iteration log-domain Sinkhorn
#                                         plans, KL and gradient) in candle ops on cuda:0, for
#                                         B = 4096, 16384, 32768 (the paper's batch)
#   klot_step B=4096 <time> <unit>        the fused CPU engine on this host, for comparison
#   encoders ...                          encoder throughput (`sotalign bench encoders --device cuda`)
# NOT YET RUN ON A GPU (written and checked with `bash -n` on a CPU-only machine; the device
# KLOT path itself is tested on candle's CPU device against the CPU engine). Training with
# `device = "cuda"` uses the same device KLOT (`klot.engine = "auto"`).
# Memory: B = 32768 needs ~4 GiB per B x B f32 tensor and a handful of them at once (~30 GiB of
# GPU memory); lower SOTALIGN_KLOT_B on smaller cards.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES="${SOTALIGN_KLOT_B:-4096,16384,32768}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | sed 's/^/gpu /' || echo "gpu none found (nvidia-smi missing)"
cargo build --release --features sotalign/cuda --workspace --bins >&2
# criterion prints "<group>/B  time: [lo mid hi]"; keep the middle estimate.
criterion_lines() {
    awk '/^klot_step(_device)?\// {name=$1} /time:/ && name != "" { for (i=1;i<=NF;i++) if ($i ~ /^\[/) { v=$(i+2); u=$(i+3); print name " " v " " u; name=""; break } }' \
      | sed 's#^\(klot_step[a-z_]*\)/\([0-9]*\)#\1 B=\2#'
}
SOTALIGN_BENCH_DEVICE=cuda SOTALIGN_KLOT_B="$SIZES" \
  cargo bench --features sotalign/cuda --workspace --bench align -- 'klot_step_device/' --noplot 2>/dev/null | criterion_lines
SOTALIGN_KLOT_B=4096 \
  cargo bench --features sotalign/cuda --workspace --bench align -- '^klot_step/' --noplot 2>/dev/null | criterion_lines
BIN=target/release/sotalign
# Encoder throughput on the GPU (real weights: run `sotalign fetch` first).
"$BIN" bench encoders --device cuda --batch 64 --images 512 --texts 4096 2>&1 \
  | grep -E '^(images|texts|candle)' | sed 's/^/encoders /'
