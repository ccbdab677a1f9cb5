"""Reports of a benchmark run beyond the terminal table: image charts and the README table.

- ``write_charts(result, folder)``: ``roofline.png`` (each case as a point at its arithmetic
  intensity and achieved GFLOP/s, on this machine's log-log roofline: the DRAM bandwidth slope,
  the cache-level slopes, and the sgemm compute roof) and ``speedup.png`` (x NumPy and x PyTorch
  per case, log scale, 1x marked). Drawn with matplotlib's Agg renderer on a ``Figure`` of its
  own (no pyplot, no global backend switch), imported only when charts are drawn; without
  matplotlib, no image is written and the caller is told why. The files carry no timestamp.
- ``readme_table(result, run_id, command)`` and ``update_readme(path, table)``: the headline
  results as a Markdown table between ``<!-- benchmark:begin -->`` and ``<!-- benchmark:end -->``.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from koschei.files import write_bytes_atomic

README_BEGIN = "<!-- benchmark:begin -->"
README_END = "<!-- benchmark:end -->"
CHART_FILES = ("roofline.png", "speedup.png")
CHART_DPI = 110


def matplotlib_missing() -> str | None:
    """Why charts cannot be drawn (None: they can)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return ("matplotlib is not installed: no charts were written "
                "(pip install 'koschei[charts]')")
    return None


def _save(figure: Any, path: Path) -> None:
    """Write ``figure`` as PNG atomically, without the metadata that would vary by version."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=CHART_DPI, metadata={"Software": None})
    write_bytes_atomic(path, image.getvalue())


def _measured(result: Any) -> list[Any]:
    return [case for case in result.cases if case.verdict in ("ok", "regression")
            and case.gflops is not None]


def roofline_figure(result: Any) -> Any:
    from matplotlib.figure import Figure

    calibration = result.calibration
    peak = float(calibration["sgemm_gflops"])
    ceilings = [("DRAM (STREAM triad)", float(calibration["stream_triad_gbs"]), "-")]
    for level, gbs in sorted((calibration.get("cache_triad_gbs") or {}).items(), reverse=True):
        ceilings.append((f"{level} triad", float(gbs), "--"))
    cases = [case for case in _measured(result) if case.intensity and case.gflops > 0]
    intensities = [case.intensity for case in cases] or [1.0]
    low = 10 ** math.floor(math.log10(min(intensities + [peak / max(g for _, g, _ in ceilings)]))
                           - 1)
    high = 10 ** math.ceil(math.log10(max(intensities + [peak / min(g for _, g, _ in ceilings)]))
                           + 1)
    figure = Figure(figsize=(9, 6))
    axes = figure.add_subplot()
    axes.set_xscale("log")
    axes.set_yscale("log")
    xs = [low * (high / low) ** (i / 200) for i in range(201)]
    for label, gbs, style in ceilings:
        axes.plot(xs, [min(peak, x * gbs) for x in xs], style, linewidth=1.2,
                  label=f"{label}: {gbs:.0f} GB/s")
    axes.axhline(peak, color="black", linewidth=0.8, linestyle=":",
                 label=f"sgemm: {peak:.0f} GFLOP/s")
    markers = "os^Dv<>p*h"
    specs = sorted({case.spec for case in cases})
    for case in cases:
        marker = markers[specs.index(case.spec) % len(markers)]
        axes.plot([case.intensity], [case.gflops], marker, markersize=6, linestyle="none")
        axes.annotate(f"{case.spec}/{case.case}", (case.intensity, case.gflops),
                      textcoords="offset points", xytext=(5, 3), fontsize=7)
    axes.set_xlim(low, high)
    axes.set_xlabel("arithmetic intensity (FLOP per byte, the spec's bytes formula)")
    axes.set_ylabel("achieved GFLOP/s (engine median)")
    axes.set_title(f"roofline of this machine, {result.threads} thread(s), "
                   f"fingerprint {result.fingerprint}", fontsize=10)
    axes.grid(True, which="major", linewidth=0.4)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    return figure


def speedup_figure(result: Any) -> Any:
    from matplotlib.figure import Figure

    cases = [case for case in _measured(result) if case.speedup_vs_numpy is not None]
    labels = [f"{case.spec}/{case.case}" for case in cases]
    figure = Figure(figsize=(9, max(2.5, 0.45 * len(cases) + 1.2)))
    axes = figure.add_subplot()
    height = 0.38
    positions = list(range(len(cases)))
    for offset, name, attribute in ((-height / 2, "x NumPy", "speedup_vs_numpy"),
                                    (height / 2, "x PyTorch", "speedup_vs_torch")):
        values = [getattr(case, attribute) for case in cases]
        shown = [(p + offset, v) for p, v in zip(positions, values, strict=True) if v]
        if shown:
            bars = axes.barh([p for p, _ in shown], [v for _, v in shown], height=height,
                             label=name)
            axes.bar_label(bars, labels=[f"{v:.2f}x" for _, v in shown], fontsize=7, padding=2)
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.set_xscale("log")
    axes.set_yticks(positions, labels, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("engine speedup (median of per-round ratios; > 1: the engine is faster)")
    axes.set_title(f"engine vs NumPy and PyTorch, {result.threads} thread(s)", fontsize=10)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    return figure


def write_charts(result: Any, folder: Path) -> tuple[list[Path], str | None]:
    """Draw the charts into ``folder``; the files written, and a note when none could be."""
    missing = matplotlib_missing()
    if missing:
        return [], missing
    if not _measured(result):
        return [], "no case was measured: no charts were written"
    written = []
    for name, draw in zip(CHART_FILES, (roofline_figure, speedup_figure), strict=True):
        path = Path(folder) / name
        _save(draw(result), path)
        written.append(path)
    return written, None


# --- the README table ---------------------------------------------------------------------------


def _ratio(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.2f}×"


def format_seconds(seconds: float | None, separator: str = " ") -> str:
    """A duration in s, ms, µs or ns with three significant digits ("—" for none)."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g}{separator}{unit}"
    return f"{seconds / 1e-9:.3g}{separator}ns"


def _roofline(case: Any) -> str:
    if case.level_roofline_fraction is None:
        return "—"
    where = case.memory_level if case.bound == "memory" else "FLOP/s"
    return f"{case.level_roofline_fraction:.0%} {where}"


def goal_outcome(goal: dict[str, Any]) -> str:
    """A goal with what was measured: "×PyTorch ≥ 3: 1.74×, short by 42% (needs 3.00×)"."""
    target, measured = goal["target"], goal["measured"]

    def show(value: float) -> str:
        return f"{value:.0%}" if goal["kind"] == "roofline" else f"{value:.2f}×"

    if measured is None:
        return f"{goal['goal']}: not measured"
    if goal["met"]:
        return f"{goal['goal']}: {show(measured)}, met"
    return (f"{goal['goal']}: {show(measured)}, short by {goal['short_by_pct']:.0f}% "
            f"(needs {show(target)})")


def _goals(case: Any) -> str:
    return "; ".join(goal_outcome(goal) for goal in case.goals)


def readme_table(result: Any, run_id: str, command: str) -> str:
    """The Markdown block (markers included) with every case of ``result``."""
    calibration = result.calibration
    caches = ", ".join(f"{level} {gbs:.0f}" for level, gbs in
                       sorted((calibration.get("cache_triad_gbs") or {}).items()))
    cpu = result.machine.get("cpu_model", "?")
    lines = [
        README_BEGIN,
        f"Measured by `{command}` (run `{run_id}`): {cpu}, {result.machine.get('cores')} cores, "
        f"{result.threads} thread(s) for Numba and PyTorch; roofline: STREAM triad "
        f"{calibration['stream_triad_gbs']:.1f} GB/s"
        + (f" (cache triads GB/s: {caches})" if caches else "")
        + f", sgemm {calibration['sgemm_gflops']:.0f} GFLOP/s; numpy "
        f"{result.machine.get('numpy')}, numba {result.machine.get('numba')}, torch "
        f"{result.machine.get('torch')}; 1-minute load {result.load_average} when it started "
        "(other work on the machine slows every contender). Times are medians; ratios are "
        "medians of per-round ratios from the same run.",
        "",
        "| case | engine | NumPy | PyTorch | GB/s | roofline | ×NumPy | ×PyTorch | goals |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for case in result.cases:
        contenders = case.contenders
        if case.verdict not in ("ok", "regression"):
            lines.append(f"| {case.spec}/{case.case} | {case.verdict} | | | | | | | |")
            continue

        def median(name: str, contenders: dict[str, Any] = contenders) -> str:
            timing = contenders.get(name)
            return format_seconds(timing.median_s if timing is not None else None)

        lines.append(
            f"| {case.spec}/{case.case} | {median('engine')} | {median('numpy')} | "
            f"{median('torch')} | {case.gbs:.1f} | {_roofline(case)} | "
            f"{_ratio(case.speedup_vs_numpy)} | {_ratio(case.speedup_vs_torch)} | "
            f"{_goals(case)} |")
    if result.models:
        lines += ["", ("| model, decoding step | weights | step | tokens/s | MB/token | "
                       "bandwidth ceiling tokens/s | of ceiling |"),
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for model in result.models:
        for weights, entry in model.weights.items():
            if model.verdict != "ok":
                lines.append(f"| {model.label} | {weights} | {model.verdict} | | | | |")
                continue
            step = format_seconds(model.contenders[weights].median_s)
            lines.append(
                f"| {model.label} | {weights} | {step} | {entry.tokens_per_s:.1f} | "
                f"{entry.bytes_per_token / 1e6:.1f} | {entry.ceiling_tokens_per_s:.1f} | "
                f"{entry.ceiling_fraction * 100:.0f}% |")
        if model.speedup_ternary_vs_fp32 is not None:
            lines.append(f"| {model.label} | ternary ÷ fp32 | | "
                         f"{_ratio(model.speedup_ternary_vs_fp32)} | | | |")
    lines.append(README_END)
    return "\n".join(lines) + "\n"


def readme_problem(path: Path) -> str | None:
    """Why ``path`` cannot take the table (None: it can)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        return f"cannot read {path}: {error.strerror or error}"
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        return f"{path} has no {README_BEGIN} ... {README_END} block to rewrite"
    return None


def update_readme(path: Path, table: str) -> bool:
    """Replace the block between the markers in ``path`` with ``table``; whether it changed.
    Raises ValueError when the markers are missing or out of order."""
    text = Path(path).read_text(encoding="utf-8")
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        raise ValueError(f"{path} has no {README_BEGIN} ... {README_END} block to rewrite")
    end += len(README_END)
    if text[end:end + 1] == "\n":
        end += 1
    updated = text[:begin] + table + text[end:]
    if updated == text:
        return False
    write_bytes_atomic(Path(path), updated.encode("utf-8"))
    return True
