"""PNG pictures of traces and simulations: the heatmap with cutoffs and who was cut,
gradients/s per policy against the oracle, a policy's cutoff over time, and the run-time
model's calibration and predicted-vs-actual times."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import matplotlib

matplotlib.use("Agg")  # files only, no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import (  # noqa: E402
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
)

PathLike = Union[str, os.PathLike]

MAX_STEPS = 2000  # a heatmap wider than this is unreadable: show the first steps
MARKER_STEPS = 400  # beyond this a cell is narrower than a marker: tint cut cells instead
CUT_COLOR = "red"  # viridis has no red, so a red tint or dot stands out on any time


def _clip(times: np.ndarray, title: Optional[str], default: str) -> Tuple[np.ndarray, str, int]:
    times = np.asarray(times, dtype=float)
    if times.ndim != 2 or times.size == 0:
        raise ValueError(f"times must be a non-empty [steps, workers] array, got {times.shape}")
    title = title or default
    if times.shape[0] > MAX_STEPS:
        note = f" (first {MAX_STEPS} of {times.shape[0]} steps)"
        return times[:MAX_STEPS], title + note, MAX_STEPS
    return times, title, times.shape[0]


def _cutoff_line(cutoffs: Sequence[float], steps: int, total: int) -> np.ndarray:
    cut = np.asarray(cutoffs, dtype=float).reshape(-1)
    if cut.shape[0] != total:
        raise ValueError(f"cutoffs has {cut.shape[0]} entries, the trace has {total} steps")
    # inf (no cutoff, as a live run records it) and NaN (no decision yet) draw as gaps.
    return np.where(np.isfinite(cut), cut, np.nan)[:steps]


def _seconds_axis(ax) -> None:
    """Log y axis with plain decimal labels at 1-2-5 steps: straggler times span decades."""
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    decades = np.log10(high / low) if low > 0 and high > low else 3.0
    # Enough labelled ticks to read a value off a narrow range, few enough not to collide.
    if decades < 1.2:
        subs: Tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0)
    else:
        subs = (1.0, 2.0, 3.0, 5.0) if decades < 3 else (1.0, 2.0, 5.0)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def plot_trace(path: PathLike, times: np.ndarray, cutoffs: Optional[Sequence[float]] = None,
               censored: Optional[np.ndarray] = None, title: Optional[str] = None) -> Path:
    """Heatmap steps x workers; with cutoffs, a panel of the cutoff and who was cut."""
    total = np.asarray(times).shape[0] if np.ndim(times) == 2 else 0
    times, title, T = _clip(times, title, "trace")
    steps = np.arange(T)
    if cutoffs is None:
        fig, heat_ax = plt.subplots(figsize=(11, 4.5), layout="constrained")
        heat_ax.set_title(title)
        cut_line = None
    else:
        cut_line = _cutoff_line(cutoffs, T, total)
        fig, (top, heat_ax) = plt.subplots(2, 1, figsize=(11, 7.5), sharex=True,
                                           layout="constrained",
                                           gridspec_kw={"height_ratios": [1, 2]})
        style = {"marker": "o", "ms": 3} if T < 30 else {}  # lone points need a marker
        top.plot(steps, np.nanmax(times, axis=1), lw=0.8, color="tab:red",
                 label="slowest worker", **style)
        top.plot(steps, np.nanmedian(times, axis=1), lw=0.8, color="tab:gray",
                 label="median worker", **style)
        top.plot(steps, cut_line, lw=1.4, color="tab:blue", label="cutoff", **style)
        _seconds_axis(top)
        top.set_ylabel("seconds (log)")
        # Legend in a row above the panel: outside on the right it would push the colorbar away.
        top.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3, fontsize=8,
                   frameon=False)
        fig.suptitle(title)

    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")  # absent (NaN) workers: light grey
    vmin, vmax = float(np.nanmin(times)), float(np.nanpercentile(times, 99))
    if vmax <= vmin:  # all times equal: widen so the colorbar has readable ticks
        vmin, vmax = vmin * 0.95, vmin * 1.05 + 1e-9
    # The 99th percentile keeps one huge stall from flattening every other colour.
    image = heat_ax.imshow(times.T, aspect="auto", origin="lower", cmap=cmap, vmin=vmin,
                           vmax=vmax, interpolation="nearest",
                           extent=(-0.5, T - 0.5, -0.5, times.shape[1] - 0.5))
    cbar = fig.colorbar(image, ax=heat_ax, pad=0.01,
                        extend="max" if np.nanmax(times) > vmax else "neither")
    cbar.set_label("step time (s)")

    cut = None
    if censored is not None:
        censored = np.asarray(censored, dtype=bool)
        if censored.shape[1:] != times.shape[1:] or censored.shape[0] != total:
            raise ValueError(f"censored has shape {censored.shape}, times "
                             f"{(total, times.shape[1])}")
        cut = censored[:T]
    if cut_line is not None:
        with np.errstate(invalid="ignore"):
            over = times > cut_line[:, None]
        cut = over if cut is None else (cut | over)
    if cut is not None and cut.any():
        if T <= MARKER_STEPS:
            t, n = np.nonzero(cut)
            # A dot about half a cell across, in points (the heatmap is ~9.5 x 4 inches).
            cell = min(9.5 / T, 4.0 / times.shape[1]) * 72
            heat_ax.scatter(t, n, s=float(np.clip(0.5 * cell, 1.5, 8.0)) ** 2, c=CUT_COLOR,
                            marker="o", linewidths=0)
        else:
            # Cells are sub-pixel here: a translucent tint shows density without hiding times.
            tint = ListedColormap([(0, 0, 0, 0), matplotlib.colors.to_rgba(CUT_COLOR, 0.6)])
            heat_ax.imshow(cut.T.astype(float), aspect="auto", origin="lower", cmap=tint,
                           vmin=0, vmax=1, interpolation="nearest",
                           extent=(-0.5, T - 0.5, -0.5, times.shape[1] - 0.5))
        heat_ax.legend(handles=[Patch(color=CUT_COLOR, label="cut (time > cutoff)")],
                       loc="upper left", bbox_to_anchor=(0.0, -0.1), fontsize=8, frameon=False)
    heat_ax.set_xlabel("step")
    heat_ax.set_ylabel("worker")
    # Steps and workers are whole numbers: never tick at 0.5 of a worker.
    for axis, count in ((heat_ax.xaxis, T), (heat_ax.yaxis, times.shape[1])):
        if count <= 16:
            axis.set_ticks(range(count))
        else:
            axis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))
    return _save(fig, path)


def plot_policies(path: PathLike, results: List[Dict[str, Any]],
                  title: Optional[str] = None) -> Path:
    """Bars of gradients/s per policy, the oracle as a dashed line, ratios annotated."""
    if not results:
        raise ValueError("results is empty: no policy to plot")
    rows = [r for r in results if r["policy"] != "oracle"]
    oracle = float(results[0]["oracle_gradients_per_second"])
    fig, ax = plt.subplots(figsize=(8.5, 0.5 * max(len(rows), 1) + 2.0), layout="constrained")
    names = [r["policy"] for r in rows]
    rates = [float(r["gradients_per_second"]) for r in rows]
    hindsight = [n.endswith("hindsight") for n in names]
    colors = ["tab:gray" if h else "tab:blue" for h in hindsight]
    bars = ax.barh(names, rates, color=colors)
    ax.axvline(oracle, ls="--", lw=1.5, color="tab:red")
    for bar, r in zip(bars, rows):
        # White box: a label beside a bar that reaches the oracle line stays readable.
        ax.text(bar.get_width() + oracle * 0.01, bar.get_y() + bar.get_height() / 2,
                f"{float(r['ratio_to_oracle']):.3f}", va="center", fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.0, "alpha": 0.85})
    ax.invert_yaxis()
    ax.set_xlabel("gradients per second (bar labels: ratio to the oracle)")
    ax.set_xlim(0, max([oracle, *rates]) * 1.18)
    handles = [plt.Line2D([], [], ls="--", color="tab:red", label=f"oracle ({oracle:.1f}/s)"),
               Patch(color="tab:blue", label="online policy")]
    if any(hindsight):
        handles.append(Patch(color="tab:gray", label="hindsight (knows the whole trace)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
              frameon=False)
    ax.set_title(title or "policies on one trace")
    return _save(fig, path)


def plot_cutoffs(path: PathLike, times: np.ndarray, cutoffs: Sequence[float],
                 title: Optional[str] = None) -> Path:
    """A policy's cutoff over time against every worker's time at each step."""
    total = np.asarray(times).shape[0] if np.ndim(times) == 2 else 0
    times, title, T = _clip(times, title, "cutoff over time")
    cut_line = _cutoff_line(cutoffs, T, total)
    fig, ax = plt.subplots(figsize=(11, 4.5), layout="constrained")
    steps = np.repeat(np.arange(T), times.shape[1])
    values = times.reshape(-1)
    with np.errstate(invalid="ignore"):  # NaN cutoff (no decision yet): nobody counts as cut
        cut = (times > cut_line[:, None]).reshape(-1)
    alpha = float(np.clip(3000.0 / times.size, 0.15, 0.6))  # denser traces, fainter dots
    ax.scatter(steps[~cut], values[~cut], s=3, alpha=alpha, color="tab:gray", linewidths=0,
               label="worker times (made it)")
    ax.scatter(steps[cut], values[cut], s=3, alpha=alpha, color=CUT_COLOR, linewidths=0,
               label="worker times (cut)")
    ax.plot(np.arange(T), cut_line, color="tab:blue", lw=1.4, label="cutoff",
            marker="o" if T < 30 else None, ms=3)
    _seconds_axis(ax)
    ax.set_xlabel("step")
    ax.set_ylabel("seconds (log scale)")
    legend = ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
                       markerscale=3)
    for handle in getattr(legend, "legend_handles", None) or legend.legendHandles:
        handle.set_alpha(1.0)  # the legend dot should be visible even when the scatter is faint
    ax.set_title(title)
    return _save(fig, path)


def plot_calibration(path: PathLike, pits: Dict[str, np.ndarray], title: Optional[str] = None) -> Path:
    """Coverage of central predictive intervals against their nominal level, one line per
    trace (``pits``: name -> PIT values u = F(x) of observed times; NaN ignored). A calibrated
    model lies on the diagonal; below it, its intervals are too narrow."""
    levels = np.linspace(0.05, 0.95, 19)
    fig, ax = plt.subplots(figsize=(5.5, 5), layout="constrained")
    ax.plot([0, 1], [0, 1], color="black", lw=0.8, ls="--", label="calibrated")
    for name, u in pits.items():
        u = np.asarray(u, dtype=float).reshape(-1)
        u = u[~np.isnan(u)]
        if u.size:
            ax.plot(levels, [(np.abs(2 * u - 1) <= a).mean() for a in levels], lw=1.2, label=name)
    ax.set_xlabel("nominal coverage of the central interval")
    ax.set_ylabel("observed coverage")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(title or "predictive calibration")
    return _save(fig, path)


def plot_predicted_vs_actual(path: PathLike, predicted: Dict[str, np.ndarray], actual: Dict[str, np.ndarray],
                             title: Optional[str] = None) -> Path:
    """Each worker's mean predicted time against its mean actual time (log-log), one colour
    per trace: points on the diagonal are workers the model has right."""
    fig, ax = plt.subplots(figsize=(5.5, 5), layout="constrained")
    low, high = np.inf, 0.0
    for name in predicted:
        p = np.asarray(predicted[name], dtype=float)
        a = np.asarray(actual[name], dtype=float)
        ok = np.isfinite(p) & np.isfinite(a) & (p > 0) & (a > 0)
        ax.scatter(a[ok], p[ok], s=8, alpha=0.6, linewidths=0, label=name)
        if ok.any():
            low, high = min(low, a[ok].min(), p[ok].min()), max(high, a[ok].max(), p[ok].max())
    if high > 0:
        ax.plot([low, high], [low, high], color="black", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("actual mean time per worker (s)")
    ax.set_ylabel("predicted mean time per worker (s)")
    ax.legend(fontsize=7, frameon=False, markerscale=2)
    ax.set_title(title or "predicted vs actual per-worker times")
    return _save(fig, path)


def _save(fig, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
