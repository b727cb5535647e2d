"""The CUDA path compiles with nvcc on machines without a GPU, and runs where one is present."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "csrc"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_pack_kernels_compile_with_nvcc(tmp_path):
    out = tmp_path / "pack_cuda.o"
    proc = subprocess.run(["nvcc", "-c", str(CSRC / "pack_cuda.cu"), "-o", str(out),
                           "-arch=sm_90", "-Werror=all-warnings"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    symbols = subprocess.run(["nm", str(out)], capture_output=True, text=True).stdout
    for name in ("hvdcut_scaled_copy", "hvdcut_event_record", "hvdcut_event_query"):
        assert name in symbols
