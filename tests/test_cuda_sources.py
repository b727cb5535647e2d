"""The CUDA build of csrc/ type-checks on machines without a GPU (tests/test_gpu.py runs it where
one is present)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "csrc"


def _cuda_include():
    import glob
    import os
    roots = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"))
    for root in roots:
        if root and (Path(root) / "include" / "cuda_runtime.h").exists():
            return Path(root) / "include"
    return None


@pytest.mark.skipif(shutil.which("g++") is None or _cuda_include() is None,
                    reason="no g++ or no CUDA headers")
@pytest.mark.parametrize("source", ["engine.cc", "pack.cc", "bindings.cc"])
def test_cuda_build_of_the_extension_type_checks(tmp_path, source):
    """The GPU build (HAVE_GPU, CUDA events and side stream, ready events for Horovod) compiles
    where no GPU build of torch exists: g++ -fsyntax-only against torch's headers, Horovod's and CUDA's."""
    import sys
    import sysconfig

    import pybind11
    import torch.utils.cpp_extension as ext

    headers_file = Path(sys.prefix) / "horovod_headers.txt"
    if not headers_file.exists():
        pytest.fail(f"{headers_file} missing: run scripts/setup.sh")
    horovod_src = headers_file.read_text().strip()
    # The CPU wheel of torch lacks this one generated header of its CUDA build.
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    cmd = ["g++", "-std=c++17", "-fsyntax-only", "-DHOROVOD_CUTOFF_WITH_CUDA", "-DHAVE_GPU=1",
           "-DHAVE_CUDA=1", "-DTORCH_EXTENSION_NAME=_C", f"-I{CSRC}", f"-I{tmp_path}",
           f"-I{horovod_src}", f"-I{_cuda_include()}", f"-I{sysconfig.get_paths()['include']}",
           f"-I{pybind11.get_include()}"] + [f"-I{p}" for p in ext.include_paths()]
    proc = subprocess.run(cmd + [str(CSRC / source)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
