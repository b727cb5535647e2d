"""The live suite's figures as markdown tables: what the README's results section shows.

``markdown(result)`` renders bench P7's JSON (live_suite.run); live_suite writes it beside
the plots as ``p7.md``. ``python benchmarks/_live_tables.py docs/figures/live/p7.json``
prints it again from a saved result.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List

COLUMNS = ("run", "gradients/s", "vs none", "vs Horovod", "steps/s", "contributors",
           "wasted", "to target loss", "accuracy")


def _cell(value, fmt: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{suffix}"


def run_table(rows: List[dict]) -> str:
    """One job's runs (live_suite._rows), one line each."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["run"], _cell(r["gradients_per_s"], ".1f"), _cell(r["gain_vs_none"], ".2f", "x"),
            _cell(r["gain_vs_horovod"], ".2f", "x"), _cell(r["steps_per_s"], ".1f"),
            _cell(r["mean_contributors"], ".2f"), _cell(r["wasted_fraction"] * 100, ".0f", "%"),
            _cell(r["time_to_target_loss_s"], ".1f", " s"), _cell(r["final_accuracy"], ".3f"),
        ]) + " |")
    return "\n".join(lines)


def _spread(s: dict, fmt: str = ".2f", suffix: str = "x") -> str:
    if "median" not in s:
        return "-"
    return f"{s['median']:{fmt}}{suffix} ({s['min']:{fmt}}-{s['max']:{fmt}})"


def headline_table(result: dict) -> str:
    """P7 itself: medians (min-max) over the repetitions on the headline trace."""
    h = result["headline"]
    t = h["time_to_target_loss_s"]
    lines = ["| | median (min-max) over %d repetitions |" % result["repetitions"], "|---|---|",
             f"| predictive vs none | {_spread(h['predictive_gain'])} |",
             f"| adaptive vs none | {_spread(h['adaptive_gain'])} |",
             f"| predictive vs adaptive | {_spread(h['predictive_vs_adaptive'], '.3f')}, "
             f"at least adaptive in {h['predictive_at_least_adaptive_in']} |"]
    for name in ("none", "adaptive", "predictive"):
        lines.append(f"| {name}: time to test loss {result['target_loss']} | "
                     f"{_spread(t[name], '.1f', ' s')} |")
    if h.get("by_steps"):
        lines += ["", "| steps (every repetition) | none | adaptive | predictive | predictive / adaptive |",
                  "|---|---|---|---|---|"]
        for span, r in h["by_steps"].items():
            cells = [_cell(r[name], ".1f") for name in ("none", "adaptive", "predictive")]
            cells.append(_cell(r["predictive_vs_adaptive"], ".3f", "x"))
            lines.append(f"| {span} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sim_table(result: dict) -> str:
    """The headline trace's none run replayed in the simulator, against the live gains."""
    gains = result["sim_vs_live"]["gains"]
    lines = ["| policy | live gain | replay | replay, with pauses | replay, with pauses and live overhead |",
             "|---|---|---|---|---|"]
    for name, g in gains.items():
        lines.append(f"| {name} | {g['measured']:.2f}x | {g['predicted']:.2f}x | "
                     f"{g['predicted_with_pauses']:.2f}x | {g['predicted_with_live_overhead']:.2f}x |")
    return "\n".join(lines)


def _lengths(result: dict) -> str:
    headline = result.get("headline_steps", result["steps"])
    if headline == result["steps"]:
        return f"{headline} steps a run"
    return f"{headline} steps a run on the headline trace, {result['steps']} on the others"


def markdown(result: dict) -> str:
    """Every table of one P7 result, headed by job."""
    parts = [f"P7 (`{result.get('command', 'horovod-cutoff bench P7 --json')}`): "
             f"{'met' if result['met'] else 'not met'}; {result['device']}; "
             f"{_lengths(result)}, np={result['np']}.", "", headline_table(result)]
    for job, rows in result["runs"].items():
        parts += ["", f"**{job}**", "", run_table(rows)]
    parts += ["", "**simulator vs live** (the headline trace's `none` run, replayed)", "",
              sim_table(result)]
    if result.get("losing"):
        parts += ["", "Losing: " + "; ".join(result["losing"]) + "."]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/_live_tables.py P7.json")
    print(markdown(json.loads(Path(sys.argv[1]).read_text())), end="")
