#!/usr/bin/env bash
# KLOT-step benchmark: Rust (criterion) and the numpy / jax-jit reference, in the same run.
# Installs numpy + jax into a venv (bench-venv/, git-ignored) with pip, runs `cargo bench --bench align`,
# then the reference, and prints the ratio table used in docs/BENCHMARKS.md.
# Usage: scripts/bench-reference.sh [sizes, default 256,1024,2048,4096]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES="${1:-256,1024,2048,4096}"
VENV=bench-venv
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet numpy jax jaxlib
fi
# CARGO_BENCH overrides the cargo invocation, e.g. to reuse the dev-profile dependency builds:
#   CARGO_BENCH="cargo bench --workspace --bench align --profile dev --config profile.dev.package.sotalign.opt-level=3 ..."
# (see docs/BENCHMARKS.md for the exact command; `-p` re-resolves features and rebuilds candle)
${CARGO_BENCH:-cargo bench --workspace --bench align} -- 'klot_step|cca_fit'
# Faster numpy: the machine's OpenBLAS work-arounds slow current numpy (see .library env notes).
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$VENV/bin/python" scripts/bench_reference.py \
    --sizes "$SIZES" --criterion target/criterion --json target/bench-reference.json \
    --cca-fixtures tests/fixtures/reference
