"""The search at a glance: each evaluation's time relative to the defaults, in the order they
ran, and the best so far as a step line (what a longer search would still have gained).

Drawn with matplotlib's Agg renderer like the benchmark's charts (koschei.bench.report), only
when matplotlib is installed (the ``charts`` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_search_chart(result: Any, path: Path) -> Path | None:
    """``path`` (a PNG) of the evolve result ``result``; None without matplotlib or without a
    measured evaluation."""
    from koschei.bench.report import _save, matplotlib_missing

    if matplotlib_missing() is not None:
        return None
    points = [(index, record.ratio) for index, record in enumerate(result.evaluations, start=1)
              if record.ratio is not None]
    if not points:
        return None
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 4.0))
    axes = figure.add_subplot()
    axes.scatter([i for i, _ in points], [r for _, r in points], s=18, color="#4477aa",
                 label="candidate", zorder=3)
    failed = [index for index, record in enumerate(result.evaluations, start=1)
              if record.ratio is None]
    if failed:
        axes.scatter(failed, [max(r for _, r in points)] * len(failed), marker="x", s=24,
                     color="#cc3311", label="failed (not timed)", zorder=3)
    best, steps = float("inf"), []
    for index, ratio in points:
        best = min(best, ratio)
        steps.append((index, best))
    axes.step([i for i, _ in steps], [b for _, b in steps], where="post", color="#228833",
              label="best so far")
    axes.axhline(1.0, color="#888888", linewidth=0.8, linestyle="--", label="defaults")
    axes.set_xlabel("evaluation")
    axes.set_ylabel("time / the defaults' time (same rounds)")
    axes.set_title(f"koschei evolve {result.spec}/{result.case} · {result.strategy}, seed "
                   f"{result.seed}", fontsize=10)
    axes.legend(fontsize=8, loc="best")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    _save(figure, path)
    return path
