"""The live suite's pictures: one PNG per horovodrun job (test loss against training time per
run, gradients/s per run against ``none``), and the simulator's predicted gains against the
measured ones."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def job_figure(path: Path, title: str, runs: Sequence[dict], target_loss: float) -> Path:
    """Left: test loss over training seconds, one line per run, the target dashed. Right:
    gradients/s per run, labelled with its ratio to ``none``."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.cm.tab10(np.linspace(0, 1, 10))
    for i, r in enumerate(runs):
        t, loss, _ = zip(*r["curve"])
        left.plot(t, loss, color=colors[i % 10], label=r["run"], lw=1.5)
    left.axhline(target_loss, color="grey", ls="--", lw=1)
    left.set_yscale("log")
    left.set_xlabel("training seconds (evaluation excluded)")
    left.set_ylabel("test cross-entropy")
    left.legend(fontsize=8)
    base = next((r for r in runs if r["run"] == "none"), runs[0])
    names = [r["run"] for r in runs]
    rates = [r["gradients_per_s"] for r in runs]
    bars = right.bar(names, rates, color=[colors[i % 10] for i in range(len(runs))])
    for bar, rate in zip(bars, rates):
        right.annotate(f"{rate / base['gradients_per_s']:.2f}x", (bar.get_x() + bar.get_width() / 2, rate),
                       ha="center", va="bottom", fontsize=8)
    right.set_ylabel(f"gradients / s (label: vs {base['run']})")
    right.tick_params(axis="x", labelrotation=30)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def sim_vs_live_figure(path: Path, title: str, rows: Dict[str, dict]) -> Path:
    """Gain vs ``none`` per policy: measured live; predicted by the simulator; predicted with
    the live run's pauses (a full-wait step after each evaluation); and with pauses and the
    overhead each policy's live run paid per step."""
    names = list(rows)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(9, 4))
    series = (("measured", "measured live"), ("predicted", "simulator"),
              ("predicted_with_pauses", "simulator, pauses counted"),
              ("predicted_with_live_overhead", "simulator, pauses and live overhead"))
    width = 0.8 / len(series)
    for i, (key, label) in enumerate(series):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, [rows[n][key] for n in names], width=width,
               label=label)
    ax.axhline(1.0, color="grey", lw=1)
    ax.set_xticks(x, names)
    ax.set_ylabel("gradients/s vs none")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
