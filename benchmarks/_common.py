"""What every benchmark needs: the machine it ran on, and launching ranks under horovodrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional

import numpy as np


def machine() -> str:
    """The device figures were measured on, in words."""
    try:
        import torch
        if torch.cuda.is_available():
            return f"cuda: {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    from horovod_cutoff.cli import cpu_model

    return f"cpu: {cpu_model()}, {os.cpu_count()} cores"


def horovodrun(np_: int, script: Path, params: Dict[str, Any], timeout: float = 900,
               on_line: Optional[Callable[[str], None]] = None) -> List[dict]:
    """Runs ``script --rank-side OUTDIR PARAMS`` on np_ local ranks; returns each rank's JSON.
    ``on_line`` sees each line of the ranks' output as it comes (for a progress bar)."""
    launcher = Path(sys.executable).with_name("horovodrun")
    with tempfile.TemporaryDirectory() as out:
        cmd = [str(launcher), "-np", str(np_), "-H", f"localhost:{np_}", "--gloo", sys.executable,
               str(script), "--rank-side", out, json.dumps(params)]
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env, start_new_session=True)
        lines: Deque[str] = deque(maxlen=400)  # the tail, for the error message
        # A thread drains the output, so the timeout holds however much or little it prints.
        reader = threading.Thread(target=_drain, args=(proc.stdout, lines, on_line), daemon=True)
        reader.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise RuntimeError(f"{script.name}: ranks did not finish in {timeout} s") from None
        reader.join(timeout=10)
        if proc.returncode != 0:
            raise RuntimeError(f"{script.name}: horovodrun failed:\n{''.join(lines)[-3000:]}")
        return [json.loads((Path(out) / f"rank{r}.json").read_text()) for r in range(np_)]


def _drain(stream, lines: Deque[str], on_line) -> None:
    for line in stream:
        lines.append(line)
        if on_line is not None:
            on_line(line)


def write_rank_result(outdir: str, rank: int, payload: dict) -> None:
    with open(os.path.join(outdir, f"rank{rank}.json"), "w") as fh:
        json.dump(payload, fh)


def flag_values(flag: str):
    """The words after ``flag`` on the command line (up to the next --option), or None."""
    if flag not in sys.argv:
        return None
    i = sys.argv.index(flag) + 1
    out = []
    while i < len(sys.argv) and not sys.argv[i].startswith("--"):
        out.append(sys.argv[i])
        i += 1
    return out


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q))


def main(run, rank_side=None) -> None:
    """A benchmark file run directly: its JSON (or, under horovodrun, its rank side)."""
    if rank_side is not None and len(sys.argv) > 1 and sys.argv[1] == "--rank-side":
        rank_side(sys.argv[2], json.loads(sys.argv[3]))
        return
    results = run(quick="--quick" in sys.argv)
    for result in results if isinstance(results, list) else [results]:
        print(json.dumps(result))
