"""PNG pictures of traces and simulations: the heatmap with cutoffs and who was cut,
gradients/s per policy against the oracle, and a policy's cutoff over time."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MAX_STEPS = 2000  # a heatmap wider than this is unreadable: show the first steps


def _clip(times: np.ndarray, title: Optional[str]) -> tuple:
    if times.shape[0] > MAX_STEPS:
        note = f" (first {MAX_STEPS} of {times.shape[0]} steps)"
        return times[:MAX_STEPS], (title or "trace") + note, MAX_STEPS
    return times, title or "trace", times.shape[0]


def plot_trace(path, times: np.ndarray, cutoffs: Optional[np.ndarray] = None,
               censored: Optional[np.ndarray] = None, title: Optional[str] = None) -> Path:
    """Heatmap steps x workers; with cutoffs, a panel of the cutoff and who was cut."""
    times, title, T = _clip(np.asarray(times, dtype=float), title)
    if cutoffs is None:
        fig, heat_ax = plt.subplots(figsize=(11, 4.5))
    else:
        fig, (top, heat_ax) = plt.subplots(2, 1, figsize=(11, 7), sharex=True,
                                           gridspec_kw={"height_ratios": [1, 2]})
        steps = np.arange(T)
        top.plot(steps, np.nanmax(times, axis=1), lw=0.8, color="tab:red", label="slowest worker")
        top.plot(steps, np.nanmedian(times, axis=1), lw=0.8, color="tab:gray",
                 label="median worker")
        top.plot(steps, np.asarray(cutoffs, dtype=float)[:T], lw=1.2, color="tab:blue",
                 label="cutoff")
        top.set_ylabel("seconds")
        top.legend(loc="upper right", fontsize=8, ncol=3)
        top.set_title(title)
    vmax = float(np.nanpercentile(times, 99))
    image = heat_ax.imshow(times.T, aspect="auto", origin="lower", cmap="viridis",
                           vmin=float(np.nanmin(times)), vmax=vmax, interpolation="nearest")
    cbar = fig.colorbar(image, ax=heat_ax, pad=0.01)
    cbar.set_label("step time (s)")
    cut = None
    if censored is not None:
        cut = np.asarray(censored, dtype=bool)[:T]
    elif cutoffs is not None:
        cut = times > np.asarray(cutoffs, dtype=float)[:T, None]
    if cut is not None and cut.any():
        t, n = np.nonzero(cut)
        heat_ax.scatter(t, n, s=4 if T > 300 else 10, c="white", marker="x", linewidths=0.6,
                        label="cut")
        heat_ax.legend(loc="upper right", fontsize=8, facecolor="0.25", labelcolor="white")
    heat_ax.set_xlabel("step")
    heat_ax.set_ylabel("worker")
    if cutoffs is None:
        heat_ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_policies(path, results: List[Dict], title: Optional[str] = None) -> Path:
    """Bars of gradients/s per policy, the oracle as a dashed line, ratios annotated."""
    rows = [r for r in results if r["policy"] != "oracle"]
    oracle = results[0]["oracle_gradients_per_second"]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.8))
    names = [r["policy"] for r in rows]
    rates = [r["gradients_per_second"] for r in rows]
    colors = ["tab:gray" if n.endswith("hindsight") else "tab:blue" for n in names]
    bars = ax.barh(names, rates, color=colors)
    ax.axvline(oracle, ls="--", color="tab:red", label=f"oracle {oracle:.1f}/s")
    for bar, r in zip(bars, rows):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                f" {r['ratio_to_oracle']:.3f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("gradients per second (label: ratio to oracle; grey: hindsight, not online)")
    ax.set_xlim(0, oracle * 1.15)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "policies on one trace")
    fig.tight_layout()
    return _save(fig, path)


def plot_cutoffs(path, times: np.ndarray, cutoffs: np.ndarray, title: Optional[str] = None) -> Path:
    """A policy's cutoff over time against every worker's time at each step."""
    times, title, T = _clip(np.asarray(times, dtype=float), title)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    steps = np.repeat(np.arange(T), times.shape[1])
    ax.scatter(steps, times.reshape(-1), s=2, alpha=0.15, color="tab:gray", label="worker times")
    ax.plot(np.arange(T), np.asarray(cutoffs, dtype=float)[:T], color="tab:blue", lw=1.2,
            label="cutoff")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.2g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.2g"))
    ax.set_xlabel("step")
    ax.set_ylabel("seconds (log scale)")
    ax.legend(loc="upper right", fontsize=8, markerscale=4)
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
