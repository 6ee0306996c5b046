#!/usr/bin/env bash
# GPU check: runs the binary scripts/build-cuda.sh built on a CPU machine (the GPU machine has
# no cargo or rustc) and prints one line per measured figure, in one run of at most ~8 minutes:
#
#   gpu <name>, <memory>, driver <version>
#   klot_step device=cuda:0 engine=candle B=<B> best_s=.. median_s=.. reps=..   (B = 4096, 16384, 32768)
#   klot_step_jax device=<jax device> B=<B> best_s=.. median_s=..          scripts/bench_reference.py, same GPU
#   klot_step_ratio B=<B> jax_over_sotalign=..                             > 1: sotalign faster
#   klot_step device=cpu engine=fused B=4096 ...                           the CPU engine on this host
#   encoders images: forward ../s, ... / texts: ../s                        `bench encoders --device cuda`
#   daemon_e2e device=cuda unpaired=N stage=ingest|align|suggest ...        `bench daemon --device cuda`
#
# Usage (from the checkout's root, with target-cuda/dist carried along):
#   scripts/gpu-check.sh                      the GPU run (device cuda, full sizes)
#   scripts/gpu-check.sh --device cpu --small every path with tiny sizes, on any machine (the
#                                             test of this script; CPU builds work too)
# Environment:
#   SOTALIGN_BIN         the binary or its .gz (default: target-cuda/dist/sotalign.gz, else
#                        target/release/sotalign)
#   SOTALIGN_BENCH_ASSETS encoder assets (default: target-cuda/dist/assets, else the user's)
#   SOTALIGN_LIB_PATH    prepended to LD_LIBRARY_PATH (e.g. target-cuda/stubs on a CPU machine)
#   SOTALIGN_KLOT_B, SOTALIGN_E2E_UNPAIRED, SOTALIGN_E2E_B, SOTALIGN_E2E_STEPS,
#   SOTALIGN_E2E_QUERIES, SOTALIGN_ENC_IMAGES, SOTALIGN_ENC_TEXTS override the sizes below.
# The CUDA libraries the binary links (libcublas.so.13, libcublasLt.so.13, libcurand.so.10,
# libcudart.so.13; libcuda.so.1 is the driver's) are looked up in the GPU machine's Python
# nvidia wheels (jax and torch bring them) and put on LD_LIBRARY_PATH.
# Memory: B = 32768 takes ~4 GiB per B x B f32 tensor and several at once; jax preallocates
# most of the GPU, so the jax reference runs after the binary, in its own process.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
SMALL=0
while [ $# -gt 0 ]; do
    case "$1" in
    --device)
        DEVICE="$2"
        shift 2
        ;;
    --small)
        SMALL=1
        shift
        ;;
    *)
        echo "gpu-check: unknown argument $1 (--device D, --small)" >&2
        exit 2
        ;;
    esac
done
if [ "$SMALL" = 1 ]; then
    KLOT_B="${SOTALIGN_KLOT_B:-128,256}" E2E_N="${SOTALIGN_E2E_UNPAIRED:-2000}"
    E2E_B="${SOTALIGN_E2E_B:-256}" E2E_STEPS="${SOTALIGN_E2E_STEPS:-5}"
    QUERIES="${SOTALIGN_E2E_QUERIES:-20}" IMAGES="${SOTALIGN_ENC_IMAGES:-16}"
    TEXTS="${SOTALIGN_ENC_TEXTS:-64}" CPU_B=256 BATCH=8 PAIRS=50 TEST=50
else
    KLOT_B="${SOTALIGN_KLOT_B:-4096,16384,32768}" E2E_N="${SOTALIGN_E2E_UNPAIRED:-100000}"
    E2E_B="${SOTALIGN_E2E_B:-32768}" E2E_STEPS="${SOTALIGN_E2E_STEPS:-5}"
    QUERIES="${SOTALIGN_E2E_QUERIES:-200}" IMAGES="${SOTALIGN_ENC_IMAGES:-2048}"
    TEXTS="${SOTALIGN_ENC_TEXTS:-16384}" CPU_B=4096 BATCH=64 PAIRS=200 TEST=200
fi
START=$(date +%s)
say() { echo "gpu-check: $*" >&2; }

# ---- the machine
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader |
        sed 's/^\(.*\), \(.*\), \(.*\)$/gpu \1, \2, driver \3/'
else
    echo "gpu none found (nvidia-smi missing)"
fi

# ---- the binary
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
BIN_SRC="${SOTALIGN_BIN:-}"
if [ -z "$BIN_SRC" ]; then
    for c in target-cuda/dist/sotalign.gz target/release/sotalign; do
        [ -f "$c" ] && BIN_SRC=$c && break
    done
fi
[ -n "$BIN_SRC" ] && [ -f "$BIN_SRC" ] || {
    say "no binary: run scripts/build-cuda.sh on the CPU machine and carry target-cuda/dist"
    exit 1
}
BIN="$WORK/sotalign"
case "$BIN_SRC" in
*.gz) gzip -dc "$BIN_SRC" >"$BIN" ;;
*) cp "$BIN_SRC" "$BIN" ;;
esac
chmod +x "$BIN"

# ---- the CUDA libraries it links, from this machine's Python wheels
cuda_lib_dirs() {
    local py
    for py in python3 /opt/torch/.venv/bin/python3; do
        command -v "$py" >/dev/null || continue
        "$py" - <<'EOF' 2>/dev/null && return 0
import glob, os, site, sys
roots = [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(p)]
want = ("libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libcudart.so.13", "libnvrtc.so.13")
dirs = []
for r in roots:
    for w in want:
        for f in glob.glob(os.path.join(r, "nvidia", "**", w), recursive=True):
            d = os.path.dirname(f)
            if d not in dirs:
                dirs.append(d)
if not dirs:
    sys.exit(1)
print(":".join(dirs))
EOF
    done
    return 1
}
LIBS="${SOTALIGN_LIB_PATH:-}"
if ldd "$BIN" | grep -q 'not found'; then
    found=$(cuda_lib_dirs || true)
    LIBS="${LIBS:+$LIBS:}$found"
fi
export LD_LIBRARY_PATH="${LIBS:+$LIBS:}${LD_LIBRARY_PATH:-}"
if ldd "$BIN" | grep -q 'not found'; then
    say "libraries the binary needs are missing:"
    ldd "$BIN" | grep 'not found' >&2
    exit 1
fi
echo "binary $BIN_SRC ($("$BIN" --version)), libraries: $(ldd "$BIN" | awk '/cublas\.so|cudart|curand|libcuda\./ {print $3}' | tr '\n' ' ')"

# ---- the measurements: a failing one is reported and the others still run
set +e
FAILED=""
failed() {
    say "$1 failed"
    FAILED="$FAILED $1"
}
# Each part runs under a time budget (seconds) so one run stays within ~8 minutes; a part cut
# short has printed the figures it finished (one line each, as they come).
budget() {
    local secs=$1
    shift
    timeout --signal=TERM "$secs" "$@"
    local rc=$?
    [ "$rc" = 124 ] && say "$1 $2 $3: stopped at its ${secs}s budget"
    return "$rc"
}

# ---- KLOT step: the binary, then jax on the same device
budget 100 "$BIN" bench klot --device "$DEVICE" --sizes "$KLOT_B" --iters 2 | tee "$WORK/klot.txt" ||
    failed klot
if python3 -c 'import jax' 2>/dev/null; then
    budget 80 python3 scripts/bench_reference.py --sizes "$KLOT_B" --numpy-max 0 --reps 3 >"$WORK/jax.txt" ||
        failed jax
    python3 - "$WORK/klot.txt" "$WORK/jax.txt" <<'EOF'
import json, re, sys
ours = {}
for line in open(sys.argv[1]):
    m = re.search(r"B=(\d+) best_s=([0-9.]+)", line)
    if m:
        ours[int(m.group(1))] = float(m.group(2))
dev = "?"
try:
    import jax
    dev = str(jax.devices()[0].platform) + ":" + str(jax.devices()[0].device_kind).replace(" ", "_")
except Exception:
    pass
for line in open(sys.argv[2]):
    line = line.strip()
    if not line.startswith("{") or '"B"' not in line:
        continue
    r = json.loads(line)
    b = r["B"]
    print(f"klot_step_jax device={dev} B={b} best_s={r['jax_s']:.4f} median_s={r['jax_median_s']:.4f} reps=3")
    if b in ours:
        print(f"klot_step_ratio B={b} jax_over_sotalign={r['jax_s'] / ours[b]:.2f}")
EOF
    [ $? = 0 ] || failed jax-table
else
    echo "klot_step_jax skipped (no jax in python3)"
fi
budget 20 "$BIN" bench klot --device cpu --engine fused --sizes "$CPU_B" --iters 3 || failed klot-cpu

# ---- encoders
ASSETS="${SOTALIGN_BENCH_ASSETS:-}"
[ -z "$ASSETS" ] && [ -d target-cuda/dist/assets ] && ASSETS=target-cuda/dist/assets
budget 40 "$BIN" bench encoders --device "$DEVICE" --batch "$BATCH" --images "$IMAGES" --texts "$TEXTS" \
    ${ASSETS:+--assets "$ASSETS"} --text-weights zeros 2>&1 |
    grep -E '^(images|texts|candle|text model)' | sed 's/^/encoders /' || failed encoders

# ---- the daemon end to end
budget 220 "$BIN" bench daemon --device "$DEVICE" --unpaired "$E2E_N" --batch "$E2E_B" --steps "$E2E_STEPS" \
    --queries "$QUERIES" --pairs "$PAIRS" --test "$TEST" || failed daemon
echo "gpu-check done in $(($(date +%s) - START)) s${FAILED:+; failed:$FAILED}"
[ -z "$FAILED" ]
