#!/usr/bin/env bash
# The checks that need a GPU, in one go (CI has none): the GPU build of Horovod and this
# package through setup.sh, the extension's CUDA tests, the compiled Triton kernels against the
# reference, and P2. Logs and P2's JSON go to $1 (default ./gpu-check). Run on a machine whose
# Python already has a CUDA build of torch and Triton:
#     HOROVOD_CUTOFF_VENV=/path/to/venv bash scripts/gpu_check.sh [out-dir]
# (offline: also HOROVOD_SDIST=/path/to/horovod-0.28.1.tar.gz). About 5 minutes on an H100.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$(mkdir -p "${1:-gpu-check}" && cd "${1:-gpu-check}" && pwd)
VENV=${HOROVOD_CUTOFF_VENV:?set HOROVOD_CUTOFF_VENV to the environment with a CUDA build of torch}
PY="$VENV/bin/python"
T0=$(date +%s)
stamp() { printf '[gpu-check %4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*" >&2; }
cd "$ROOT"
"$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' \
  || { echo "gpu-check: no CUDA device visible to $PY" >&2; exit 1; }
"$PY" -c 'import sys, torch, triton; print(sys.version.split()[0], torch.__version__, triton.__version__, torch.cuda.get_device_name())' \
  | tee "$OUT/versions.txt"

stamp "setup.sh (GPU build of Horovod with NCCL, then the extension with CUDA)"
HOROVOD_CUTOFF_TORCH=installed bash scripts/setup.sh >"$OUT/setup.log" 2>&1
SETUP=$?
tail -n 3 "$OUT/setup.log" >&2

stamp "compiled Triton kernels vs the PyTorch reference"
# These two need neither Horovod nor the extension: they run even if the build failed.
PYTHONPATH="$ROOT/python" "$PY" -m pytest -p no:cacheprovider -q -m gpu tests/test_kernels_triton.py \
  >"$OUT/triton_gpu_tests.log" 2>&1
TRITON=$?
tail -n 8 "$OUT/triton_gpu_tests.log" >&2

EXT=1
if [ "$SETUP" = 0 ]; then
  stamp "the extension's CUDA tests"
  "$PY" -m pytest -p no:cacheprovider -q tests/test_gpu.py tests/test_cuda_sources.py >"$OUT/ext_gpu_tests.log" 2>&1
  EXT=$?
  tail -n 3 "$OUT/ext_gpu_tests.log" >&2
fi

stamp "P2 (nothing else running)"
PYTHONPATH="$ROOT/python" "$PY" -m horovod_cutoff.cli bench P2 --json >"$OUT/p2.json" 2>"$OUT/p2.err"
P2=$?
head -c 600 "$OUT/p2.json" >&2; echo >&2
stamp "done: setup rc=$SETUP, Triton tests rc=$TRITON, extension tests rc=$EXT, P2 rc=$P2; logs in $OUT"
[ "$SETUP" = 0 ] && [ "$TRITON" = 0 ] && [ "$EXT" = 0 ] && [ "$P2" = 0 ]
