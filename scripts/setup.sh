#!/usr/bin/env bash
# Installs everything horovod-cutoff needs into a virtual environment (default: .venv in the
# repository root): torch 2.13.0, Horovod 0.28.1 built from its PyPI sdist with the patches
# torch 2.x needs (C++17, CMake policy minimum), Gloo always and NCCL where CUDA is present,
# then this package with its C++ extension. The Horovod wheel and its headers are cached under
# $HOROVOD_CUTOFF_CACHE (default ~/.cache/horovod-cutoff), so a second run takes seconds.
#
# Settings (environment):
#   HOROVOD_CUTOFF_VENV   the environment to install into (default .venv; created if missing)
#   HOROVOD_CUTOFF_TORCH  "installed" keeps the environment's own torch (>= 2.0, e.g. a CUDA
#                         build you chose) instead of pinning torch 2.13.0
#   HOROVOD_SDIST         a local horovod-0.28.1.tar.gz, for hosts without PyPI access
#   HOROVOD_CUTOFF_CPU_ONLY=1  no NCCL build even where a GPU is present
#   HOROVOD_BUILD_CUDA_CC_LIST  compute capabilities for Horovod's CUDA kernels (default: this
#                         host's GPUs, e.g. 90 on an H100)
#   HOROVOD_NCCL_HOME     an NCCL install to build against (default: torch's nvidia-nccl wheel)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${HOROVOD_CUTOFF_VENV:-$ROOT/.venv}
CACHE=${HOROVOD_CUTOFF_CACHE:-$HOME/.cache/horovod-cutoff}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
HOROVOD_VERSION=0.28.1

say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

command -v "$PYTHON" >/dev/null || die "no '$PYTHON' on PATH (set PYTHON=/path/to/python3.11)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 9))' \
  || die "Python >= 3.9 is required, found $("$PYTHON" --version 2>&1)"
for tool in cmake make g++; do
  command -v "$tool" >/dev/null || die "'$tool' is required to build Horovod and the extension; install it (e.g. apt-get install -y cmake build-essential)"
done

GPU=0
if [ "${HOROVOD_CUTOFF_CPU_ONLY:-0}" != 1 ] && command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  command -v nvcc >/dev/null || die "a GPU is present but nvcc is not on PATH; install the CUDA toolkit or set HOROVOD_CUTOFF_CPU_ONLY=1"
  GPU=1
fi
say "GPU build: $GPU"

if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
VPY="$VENV/bin/python"

# torch pinned exactly: a looser requirement can pull a multi-GB build we do not want.
if [ "${HOROVOD_CUTOFF_TORCH:-}" = installed ]; then
  "$VPY" -c "import torch, sys; sys.exit(int(torch.__version__.split('.')[0]) < 2)" 2>/dev/null \
    || die "HOROVOD_CUTOFF_TORCH=installed, but $VENV has no torch >= 2.0"
  say "keeping the installed torch $("$VPY" -c 'import torch; print(torch.__version__)')"
elif ! "$VPY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  say "installing torch==$TORCH_VERSION"
  "${PIP[@]}" "torch==$TORCH_VERSION"
fi
"${PIP[@]}" "setuptools>=64" wheel "pybind11>=2.11" "scikit-build-core>=0.10" \
  "numpy>=1.24" "scipy>=1.10" "matplotlib>=3.7" "tqdm>=4.60" "pytest>=7" "pytest-timeout>=2.1" \
  "scikit-learn>=1.3" "triton>=3.0" psutil cloudpickle pyyaml packaging cffi

TORCH_TAG=$("$VPY" -c "import torch; print(torch.__version__.replace('+', '_'))")
PY_TAG=$("$VPY" -c "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')")
KEY="horovod-$HOROVOD_VERSION-torch$TORCH_TAG-$PY_TAG-gpu$GPU"
WHEELS="$CACHE/$KEY/wheels"
SRC="$CACHE/$KEY/src"

if ! "$VPY" -c "import horovod.torch" 2>/dev/null; then
  if ! ls "$WHEELS"/horovod-*.whl >/dev/null 2>&1 || [ ! -d "$SRC/horovod/common" ]; then
    say "building Horovod $HOROVOD_VERSION from source (2-4 minutes on 2 cores); cache: $CACHE/$KEY"
    rm -rf "$CACHE/$KEY" && mkdir -p "$WHEELS" "$CACHE/$KEY/download"
    if [ -n "${HOROVOD_SDIST:-}" ]; then
      [ -f "$HOROVOD_SDIST" ] || die "HOROVOD_SDIST=$HOROVOD_SDIST is not a file"
      cp "$HOROVOD_SDIST" "$CACHE/$KEY/download/"
    else
      "$VPY" -m pip download --quiet --no-deps --no-binary :all: -d "$CACHE/$KEY/download" \
        "horovod==$HOROVOD_VERSION" || die "could not download the horovod==$HOROVOD_VERSION sdist (offline? set HOROVOD_SDIST)"
    fi
    tar -xzf "$CACHE/$KEY"/download/horovod-*.tar.gz -C "$CACHE/$KEY"
    mv "$CACHE/$KEY/horovod-$HOROVOD_VERSION" "$SRC"
    # torch 2.x headers need C++17; Horovod 0.28.1 pins C++14.
    sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' \
      "$SRC/CMakeLists.txt" "$SRC/horovod/torch/CMakeLists.txt"
    grep -q 'CMAKE_CXX_STANDARD 17' "$SRC/CMakeLists.txt" || die "patching Horovod's CMakeLists.txt failed"
    export CMAKE_POLICY_VERSION_MINIMUM=3.5 HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 \
      HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
      MAKEFLAGS="-j$(nproc)"
    # GCC >= 13 no longer pulls these in transitively; Horovod 0.28.1 relies on it
    # (group_table.h: std::string, common.h: std::logic_error).
    export CXXFLAGS="${CXXFLAGS:-} -include cstdint -include string -include stdexcept"
    if [ "$GPU" = 1 ]; then
      if [ -z "${HOROVOD_NCCL_HOME:-}" ]; then
        # torch's CUDA wheels ship NCCL as nvidia-nccl-cu*, a namespace package (no __file__)
        # holding libnccl.so.2 only; Horovod's FindNCCL looks for libnccl.so, so link one.
        NCCL_DIR=$("$VPY" -c "import nvidia.nccl; print(list(nvidia.nccl.__path__)[0])" 2>/dev/null) \
          || die "a GPU build needs NCCL: torch's CUDA wheel ships it as nvidia-nccl-cu*, which is missing (or set HOROVOD_NCCL_HOME)"
        mkdir -p "$CACHE/$KEY/nccl-lib"
        ln -sf "$NCCL_DIR/lib/libnccl.so.2" "$CACHE/$KEY/nccl-lib/libnccl.so"
        export HOROVOD_NCCL_INCLUDE="$NCCL_DIR/include" HOROVOD_NCCL_LIB="$CACHE/$KEY/nccl-lib"
      fi
      if [ -z "${HOROVOD_BUILD_CUDA_CC_LIST:-}" ]; then
        # Every architecture nvcc knows takes long to build; this host's GPUs are enough here.
        HOROVOD_BUILD_CUDA_CC_LIST=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader \
          | tr -d '. ' | sort -u | paste -sd, -)
        export HOROVOD_BUILD_CUDA_CC_LIST
      fi
      say "NCCL build for compute capabilities $HOROVOD_BUILD_CUDA_CC_LIST"
      export HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_LINK=SHARED
    else
      export HOROVOD_CPU_OPERATIONS=GLOO
    fi
    (cd "$SRC" && "$VPY" -m pip wheel --no-build-isolation --no-deps -w "$WHEELS" . > "$CACHE/$KEY/build.log" 2>&1) \
      || { # The log ends in pip's traceback; the compiler's or linker's first complaints say why.
           grep -E -m 40 -B 3 -A 12 'error:|error [0-9]|undefined reference|CMake Error|FATAL' "$CACHE/$KEY/build.log" >&2
           die "building Horovod failed (the lines above are the first errors); full log: $CACHE/$KEY/build.log"; }
    # The build tree is large; the headers are all the extension needs from it.
    find "$SRC" -mindepth 1 -maxdepth 1 ! -name horovod -exec rm -rf {} +
    find "$SRC/horovod" -type f ! -name '*.h' -delete
  fi
  say "installing the cached Horovod wheel"
  "${PIP[@]}" --no-deps "$WHEELS"/horovod-*.whl
fi

# Tests syntax-check the CUDA build of csrc/ against the same headers.
printf '%s\n' "$SRC" > "$VENV/horovod_headers.txt"
HOROVOD_CUTOFF_GPU=$GPU HOROVOD_CUTOFF_HOROVOD_SRC="$SRC" \
  "${PIP[@]}" --no-build-isolation --no-deps -e "$ROOT" \
  || die "building the horovod_cutoff extension failed"
"$VPY" -c "import horovod_cutoff.torch" || die "horovod_cutoff does not import after install"
say "ready: $VENV"
