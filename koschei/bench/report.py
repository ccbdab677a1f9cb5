"""Reports of a benchmark run beyond the JSON: the words both tables use, image charts, the README.

- The words: ``case_title`` ("linear/decode_4096x4096 (cold)"), ``ceiling_text`` ("83% of L2
  read-mostly 140 GB/s", or for a case measured above its ceiling "over ceiling: ..." without a
  percentage, since such a figure is a benchmark error), ``torch_ratio_text`` ("1.15×
  (compiled)": against the faster PyTorch variant, named), ``calibration_summary`` (the ceilings
  measured on this machine, per memory level). The terminal table (``koschei.cli.benchmark``) and
  the README table use the same ones.
- ``write_charts(result, folder)``: ``roofline.png``, one panel per spec, each case a numbered
  point at its arithmetic intensity and achieved GFLOP/s under the slope of its own ceiling (the
  bandwidth of the memory level it is served from, for its mix of reads and writes) and the
  compute roof (the multiply-add peak), with a dotted line up to what that ceiling allows; and ``speedup.png``, ×NumPy and
  ×PyTorch (the faster of eager and compiled) per case as sorted horizontal bars on a log scale.
  Drawn with matplotlib's Agg renderer on a ``Figure`` of its own (no pyplot, no global backend
  switch), imported only when charts are drawn; without matplotlib, no image is written and the
  caller is told why. The files carry no timestamp.
- ``readme_table(result, run_id, command)`` and ``update_readme(path, table)``: the headline
  results as a Markdown table between ``<!-- benchmark:begin -->`` and ``<!-- benchmark:end -->``.
- The crossover case: ``crossover_table(case, mode)`` (a row per contender, a column per length:
  milliseconds per token for decoding, tokens per second for prefill), ``crossover_summary``
  (each crossover and exponent in words) and ``crossover_figure`` (``crossover.png``: both
  modes against length, log-log, the crossovers marked).
"""

from __future__ import annotations

import io
import math
import statistics
from pathlib import Path
from typing import Any

from koschei.files import write_bytes_atomic

README_BEGIN = "<!-- benchmark:begin -->"
README_END = "<!-- benchmark:end -->"
CHART_FILES = ("roofline.png", "speedup.png")
CHART_DPI = 110
MEASURED = ("ok", "regression")  # verdicts whose figures are results
# a case with figures that are not results: measured above its own ceiling
OVER_CEILING = "over_ceiling"
LEVEL_ORDER = ("L1", "L2", "L3", "L4", "DRAM")
TORCH_VARIANTS = {"torch": "eager", "torch_compile": "compiled"}
ERROR_TEXT_LIMIT = 240  # characters of an error shown under the README table


# --- words shared by the terminal and the README ------------------------------------------------


def format_seconds(seconds: float | None, separator: str = " ") -> str:
    """A duration in s, ms, µs or ns with three significant digits ("—" for none)."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g}{separator}{unit}"
    return f"{seconds / 1e-9:.3g}{separator}ns"


def format_ratio(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.2f}×"


def format_rate(value: float | None) -> str:
    """A bandwidth or FLOP rate with three significant digits ("—" for none)."""
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.0f}" if value >= 99.5 else f"{value:#.3g}"


def format_fraction(value: float) -> str:
    """A share in percent: "83%", and below 1% with one decimal ("0.4%") rather than "0%"."""
    return f"{value:.1%}" if 0 < value < 0.01 else f"{value:.0%}"


def format_bytes(value: float | None) -> str:
    """A capacity in KiB, MiB or GiB."""
    if not value:
        return "?"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f} B"


def case_title(case: Any) -> str:
    """``spec/case``, with "(cold)" when its inputs were streamed cold from memory."""
    title = f"{case.spec}/{case.case}"
    return f"{title} (cold)" if getattr(case, "cold_inputs", None) else title


def is_measured(case: Any) -> bool:
    """Whether the case's figures are results (not wrong, failed, or above its ceiling)."""
    return case.verdict in MEASURED


def access_mix(read_bytes: float | None, written_bytes: float | None) -> str:
    """The case's mix of reads and writes in a word: read-only, read-mostly, read+write,
    write-mostly (the ceiling of a memory level depends on it)."""
    if read_bytes is None or written_bytes is None or read_bytes + written_bytes <= 0:
        return ""
    written_share = written_bytes / (read_bytes + written_bytes)
    if written_share == 0:
        return "read-only"
    if written_share <= 0.2:
        return "read-mostly"
    if written_share <= 0.6:
        return "read+write"
    return "write-mostly"


def ceiling_name(case: Any) -> str:
    """The memory ceiling a case is held against: "L2 read-mostly 140 GB/s"."""
    mix = access_mix(case.read_bytes, case.written_bytes)
    words = [case.memory_level or "memory", *([mix] if mix else []),
             f"{format_rate(case.ceiling_gbs)} GB/s"]
    return " ".join(words)


def _peak_gflops(case: Any, calibration: dict[str, Any] | None) -> float | None:
    if case.bound == "compute" and case.attainable_gflops:
        return float(case.attainable_gflops)
    calibration = calibration or {}
    peak = calibration.get("peak_gflops") or calibration.get("sgemm_gflops")
    return float(peak) if peak else None


def ceiling_text(case: Any, calibration: dict[str, Any] | None = None) -> str:
    """The fraction of the case's own ceiling: "83% of L2 read-mostly 140 GB/s", "41% of the
    compute peak 360 GFLOP/s" (compute-bound: the cores' multiply-add peak). A case above its ceiling gets the two figures and the words
    "over ceiling", never a percentage: such a figure is an error of the benchmark."""
    if case.verdict == OVER_CEILING:
        if case.bound == "compute":
            peak = _peak_gflops(case, calibration)
            return (f"over ceiling: {format_rate(case.gflops)} GFLOP/s above the compute peak "
                    f"{format_rate(peak)} GFLOP/s")
        return f"over ceiling: {format_rate(case.gbs)} GB/s above {ceiling_name(case)}"
    if case.roofline_fraction is None:
        return "—"
    fraction = format_fraction(case.roofline_fraction)
    if case.bound == "compute":
        peak = _peak_gflops(case, calibration)
        return f"{fraction} of the compute peak {format_rate(peak)} GFLOP/s"
    return f"{fraction} of {ceiling_name(case)}"


def torch_fastest_name(case: Any) -> str | None:
    """"eager" or "compiled": the PyTorch variant ×PyTorch is measured against."""
    fastest = getattr(case, "torch_fastest", None)
    if fastest is None:
        return None
    return TORCH_VARIANTS.get(fastest, fastest)


def torch_ratio_text(case: Any) -> str:
    """×PyTorch against the faster variant, named: "1.15× (compiled)"."""
    if case.speedup_vs_torch is None or not math.isfinite(case.speedup_vs_torch):
        return "—"
    name = torch_fastest_name(case)
    return format_ratio(case.speedup_vs_torch) + (f" ({name})" if name else "")


def contention_text(case: Any) -> str:
    """How much slower the engine ran beside one busy process, and right after a BLAS call:
    "1.92× / 5.10×"."""
    contention = getattr(case, "contention", None)
    if not contention or contention.get("slowdown") is None:
        return "—"
    after = contention.get("after_blas_slowdown")
    return f"{contention['slowdown']:.2f}×" + (f" / {after:.2f}×" if after is not None else "")


def warm_median_s(case: Any) -> float | None:
    """The engine's median on warm copies of a cold case's inputs."""
    timing = case.contenders.get("engine_warm")
    return timing.median_s if timing is not None else None


def goal_outcome(goal: dict[str, Any]) -> str:
    """A goal with what was measured: "×PyTorch ≥ 3: 1.74×, short by 42% (needs 3.00×)",
    "koschei fp32 ≤ 2 ms: 2.47 ms, 24% over (needs ≤ 2 ms)", "...: 1.05×, met", "...: not
    measured". Kinds: "roofline" (a fraction), "time" (seconds, at most), else a ratio."""
    target, measured = goal["target"], goal["measured"]

    def show(value: float) -> str:
        if goal["kind"] == "roofline":
            return f"{value:.0%}"
        return f"{value * 1e3:.3g} ms" if goal["kind"] == "time" else f"{value:.2f}×"

    if measured is None:
        return f"{goal['goal']}: not measured"
    if goal["met"]:
        return f"{goal['goal']}: {show(measured)}, met"
    if goal["kind"] == "time":
        return (f"{goal['goal']}: {show(measured)}, {goal['short_by_pct']:.0f}% over "
                f"(needs ≤ {show(target)})")
    return (f"{goal['goal']}: {show(measured)}, short by {goal['short_by_pct']:.0f}% "
            f"(needs {show(target)})")


def calibration_levels(calibration: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The calibration's memory levels, innermost first (DRAM last)."""
    levels = calibration.get("levels") or {}
    order = {name: index for index, name in enumerate(LEVEL_ORDER)}
    return sorted(levels.items(), key=lambda item: order.get(item[0], len(order) - 1))


def calibration_summary(calibration: dict[str, Any]) -> str:
    """The ceilings measured on this machine in one line: "GB/s read/write/copy/triad: L1 (64
    KiB) 420/210/260/286, ..., DRAM 40.1/18.5/26.0/35.4 (non-temporal write 27.4); multiply-add
    peak 360 GFLOP/s; sgemm (NumPy's BLAS) 282 GFLOP/s" (non-temporal writes where they are faster than ordinary ones)."""
    parts = []
    for name, level in calibration_levels(calibration):
        figures = "/".join(format_rate(level.get(key)) for key in
                           ("read_gbs", "write_gbs", "copy_gbs", "triad_gbs"))
        capacity = level.get("capacity_bytes")
        part = f"{name} ({format_bytes(capacity)}) {figures}" if capacity else f"{name} {figures}"
        if (level.get("write_nt_gbs") or 0) > (level.get("write_gbs") or 0):
            # where streaming stores beat ordinary ones (DRAM), they are the write ceiling
            part += f" (non-temporal write {format_rate(level['write_nt_gbs'])})"
        parts.append(part)
    sgemm, fma = calibration.get("sgemm_gflops"), calibration.get("fma_gflops")
    text = ("GB/s read/write/copy/triad: " + ", ".join(parts)) if parts else "no memory levels"
    if fma:
        text += f"; multiply-add peak {format_rate(fma)} GFLOP/s"
    return text + (f"; sgemm (NumPy's BLAS) {format_rate(sgemm)} GFLOP/s" if sgemm else "")


def compile_seconds_text(cases: list[Any]) -> str | None:
    """How long torch.compile took per case (never part of a timing), or None when it did not
    run: "torch.compile took 1.5–40 s per case (median 12 s) to compile"."""
    seconds = [case.torch_compile_s for case in cases
               if getattr(case, "torch_compile_s", None) is not None]
    if not seconds:
        return None
    low, high = min(seconds), max(seconds)
    if len(seconds) == 1:
        spread = f"{low:.3g} s"
    elif low == high:
        spread = f"{low:.3g} s per case"
    else:
        spread = (f"{low:.3g}–{high:.3g} s per case (median "
                  f"{statistics.median(seconds):.3g} s)")
    return f"torch.compile took {spread} to compile, which no timing includes"


def first_line(text: str | None, limit: int = ERROR_TEXT_LIMIT) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[:limit - 1] + "…"


# --- charts -------------------------------------------------------------------------------------


LEVEL_COLORS = {"L1": "#2a9d8f", "L2": "#457b9d", "L3": "#e9a03b", "L4": "#9c6644",
                "DRAM": "#c1121f"}
OTHER_LEVEL_COLOR = "#6c757d"
OVER_CEILING_COLOR = "#d00000"
NUMPY_COLOR = "#4c72b0"
TORCH_COLORS = {"eager": "#dd8452", "compiled": "#8172b3"}
PANEL_COLUMNS = 3
PANEL_SIZE = (5.4, 3.4)  # inches of one roofline panel's plot area and margins
LEGEND_LINE_INCHES = 0.16  # height of one line of a panel's legend (font size 7)
# where a point's number may go, in points from the point: tried in turn, the first that
# overlaps no other number and no other point is taken
LABEL_OFFSETS = ((5, 4), (5, -11), (-12, 4), (-12, -11), (7, -3), (-15, -3), (-3, 8),
                 (-3, -15), (14, 10), (14, -18), (-22, 10), (-22, -18), (18, -4), (-26, -4),
                 (24, 16), (24, -24), (-32, 16), (-32, -24), (34, 0), (-42, 0))
LABEL_BOX = (9.0, 8.0)  # points: the size of a point's number at font size 7
MARKER_BOX = 7.0  # points


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


def _on_roofline(case: Any) -> bool:
    """Whether the case can be drawn on the roofline: measured (or above its ceiling), with a
    positive GFLOP/s and intensity."""
    return (case.verdict in (*MEASURED, OVER_CEILING) and case.gflops is not None
            and case.gflops > 0 and bool(case.intensity))


def _with_figures(case: Any) -> bool:
    return case.verdict in (*MEASURED, OVER_CEILING) and case.gbs is not None


def chart_groups(cases: list[Any]) -> dict[str, list[Any]]:
    """The roofline's panels: the cases of each spec, in the order the run measured them."""
    groups: dict[str, list[Any]] = {}
    for case in cases:
        if _with_figures(case):
            groups.setdefault(case.spec, []).append(case)
    return groups


def _level_color(level: str | None) -> str:
    return LEVEL_COLORS.get(level or "", OTHER_LEVEL_COLOR)


def _place_labels(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """An offset in points for each point's number (points given in points on the page), so that
    no number covers another number or another point; the first candidate when none is free."""
    placed: list[tuple[float, float, float, float]] = []
    markers = [(x - MARKER_BOX / 2, y - MARKER_BOX / 2, x + MARKER_BOX / 2, y + MARKER_BOX / 2)
               for x, y in points]

    def overlaps(box: tuple[float, float, float, float],
                 others: list[tuple[float, float, float, float]]) -> bool:
        return any(box[0] < o[2] and o[0] < box[2] and box[1] < o[3] and o[1] < box[3]
                   for o in others)

    offsets = []
    for index, (x, y) in enumerate(points):
        chosen = LABEL_OFFSETS[0]
        others = placed + markers[:index] + markers[index + 1:]
        for dx, dy in LABEL_OFFSETS:
            box = (x + dx, y + dy, x + dx + LABEL_BOX[0], y + dy + LABEL_BOX[1])
            if not overlaps(box, others):
                chosen = (dx, dy)
                break
        dx, dy = chosen
        placed.append((x + dx, y + dy, x + dx + LABEL_BOX[0], y + dy + LABEL_BOX[1]))
        offsets.append(chosen)
    return offsets


def _roofline_panel(axes: Any, spec: str, cases: list[Any], peak: float | None,
                    calibration: dict[str, Any], plot_inches: tuple[float, float]) -> None:
    """One spec's cases on the roofline: a slope per distinct ceiling of its cases (colored by
    memory level), the compute roof, each drawable case a numbered point colored by its level with
    a dotted line up to what its own ceiling allows at its intensity, and a legend that numbers
    the cases with their fraction of that ceiling."""
    from matplotlib.lines import Line2D
    from matplotlib.patheffects import withStroke

    drawn = [case for case in cases if _on_roofline(case)]
    intensities = [case.intensity for case in drawn] or [1.0]
    achieved = [case.gflops for case in drawn] or [1.0]
    ceilings = sorted({(case.memory_level, round(case.ceiling_gbs, 1),
                        access_mix(case.read_bytes, case.written_bytes))
                       for case in drawn if case.ceiling_gbs},
                      key=lambda c: (LEVEL_ORDER.index(c[0]) if c[0] in LEVEL_ORDER else 9, c[1]))
    ridges = [peak / gbs for _, gbs, _ in ceilings if peak] if ceilings else []
    low = min(intensities) / 4
    high = max([*intensities, *ridges]) * 4
    top = 2.5 * max([*achieved, *([peak] if peak else [])])
    bottom = min(achieved) / 4
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlim(low, high)
    axes.set_ylim(bottom, top)
    xs = [low * (high / low) ** (i / 200) for i in range(201)]
    handles: list[Any] = []
    labels: list[str] = []
    dashes = ((5, 2), (2, 1.5), (7, 2, 1.5, 2), (1, 1))  # one per ceiling of a level
    seen: dict[str, int] = {}
    for level, gbs, mix in ceilings:
        roof = [min(peak, x * gbs) if peak else x * gbs for x in xs]
        style = dashes[seen.setdefault(level, 0) % len(dashes)]
        seen[level] += 1
        (line,) = axes.plot(xs, roof, color=_level_color(level), linewidth=1.1, dashes=style)
        handles.append(line)
        labels.append(f"{level} {mix} {format_rate(gbs)} GB/s".replace("  ", " "))
    if peak:
        line = axes.axhline(peak, color="black", linewidth=0.9, linestyle=":")
        handles.append(line)
        labels.append(f"compute peak {format_rate(peak)} GFLOP/s")

    # the points in points on the page (log axes: fraction of the decades), for the numbers
    width_pt, height_pt = plot_inches[0] * 72, plot_inches[1] * 72

    def page(x: float, y: float) -> tuple[float, float]:
        return (math.log(x / low) / math.log(high / low) * width_pt,
                math.log(y / bottom) / math.log(top / bottom) * height_pt)

    offsets = _place_labels([page(case.intensity, case.gflops) for case in drawn])
    number = {id(case): index + 1 for index, case in enumerate(drawn)}
    for case, (dx, dy) in zip(drawn, offsets, strict=True):
        over = case.verdict == OVER_CEILING
        color = OVER_CEILING_COLOR if over else _level_color(case.memory_level)
        if case.attainable_gflops and not over:
            axes.plot([case.intensity, case.intensity], [case.gflops, case.attainable_gflops],
                      ":", color=color, linewidth=1.0)
        axes.plot([case.intensity], [case.gflops], "X" if over else
                  ("s" if case.bound == "compute" else "o"), color=color, markersize=7 if over
                  else 6, markeredgecolor="white" if not over else color, markeredgewidth=0.6,
                  linestyle="none")
        axes.annotate(str(number[id(case)]), (case.intensity, case.gflops),
                      textcoords="offset points", xytext=(dx, dy), fontsize=7,
                      fontweight="bold", color=color, va="bottom", ha="left",
                      arrowprops={"arrowstyle": "-", "color": color, "linewidth": 0.5,
                                  "shrinkA": 0, "shrinkB": 3},
                      path_effects=[withStroke(linewidth=2.5, foreground="white")])
    for case in cases:
        over = case.verdict == OVER_CEILING
        short = case.case + (" (cold)" if getattr(case, "cold_inputs", None) else "")
        if id(case) in number:
            text = (f"{number[id(case)]}  {short}: " +
                    ("over its ceiling, a benchmark error" if over else
                     ceiling_text(case, calibration)))
            marker = "X" if over else ("s" if case.bound == "compute" else "o")
            color = OVER_CEILING_COLOR if over else _level_color(case.memory_level)
            handles.append(Line2D([], [], marker=marker, color=color, linestyle="none",
                                  markersize=5))
        else:
            text = f"–  {short}: no FLOPs to draw; {ceiling_text(case, calibration)}"
            handles.append(Line2D([], [], linestyle="none"))
        labels.append(text)
    axes.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.16),
                frameon=False, borderaxespad=0.0, handlelength=1.6, handletextpad=0.5)
    axes.set_title(spec, fontsize=10, fontweight="bold", loc="left")
    axes.set_xlabel("FLOP per byte", fontsize=8)
    axes.set_ylabel("GFLOP/s", fontsize=8)
    _log_ticks(axes.xaxis, low, high)
    _log_ticks(axes.yaxis, bottom, top)
    axes.tick_params(which="both", labelsize=7)
    axes.grid(True, which="major", linewidth=0.4, alpha=0.6)


def _log_ticks(axis: Any, low: float, high: float) -> None:
    """Plain numbers at 1, 2, 5 times the powers of ten on a short log axis (at the powers of
    ten alone on a long one), and no labels at the minor ticks (they collide on a short axis)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    decades = math.log10(high / low)
    subs = (1.0, 2.0, 5.0) if decades <= 2.2 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def roofline_figure(result: Any) -> Any:
    """One panel per spec: each case against its own ceiling (see ``_roofline_panel``)."""
    from matplotlib.figure import Figure

    calibration = result.calibration or {}
    peak = calibration.get("peak_gflops") or calibration.get("sgemm_gflops")
    peak = float(peak) if peak else None
    groups = chart_groups(result.cases)
    columns = max(1, min(PANEL_COLUMNS, len(groups)))
    rows = max(1, math.ceil(len(groups) / columns))
    legend_lines = [max((len(cases) + len({(c.memory_level, c.ceiling_gbs) for c in cases}) + 1
                         for cases in list(groups.values())[row * columns:(row + 1) * columns]),
                        default=1) for row in range(rows)]
    plot_height = PANEL_SIZE[1] - 0.9
    heights = [PANEL_SIZE[1] + LEGEND_LINE_INCHES * lines for lines in legend_lines]
    figure = Figure(figsize=(PANEL_SIZE[0] * columns, sum(heights) + 0.8), layout="constrained")
    grid = figure.add_gridspec(rows, columns, height_ratios=heights)
    for index, (spec, cases) in enumerate(groups.items()):
        axes = figure.add_subplot(grid[index // columns, index % columns])
        _roofline_panel(axes, spec, cases, peak, calibration,
                        (PANEL_SIZE[0] - 0.9, plot_height))
    title = ("Each case against its own ceiling: the bandwidth of the memory level it is served "
             "from, for its mix of reads and writes, and sgemm's FLOP/s. "
             f"{result.threads} thread(s), machine {result.fingerprint}. Dotted: up to what its "
             "ceiling allows. Color: its level (L1 green, L2 blue, L3 amber, DRAM red); square: "
             "compute-bound; X: over its ceiling, an error of the benchmark.")
    figure.suptitle(_wrap(title, PANEL_SIZE[0] * columns), fontsize=10)
    return figure


def _wrap(text: str, inches: float, fontsize: float = 10) -> str:
    """``text`` in lines that fit ``inches`` at ``fontsize`` (an average character is about
    0.55 of the font size wide)."""
    import textwrap

    return textwrap.fill(text, width=max(40, int(inches * 72 / (fontsize * 0.55))))


def _speedup_cases(result: Any) -> list[Any]:
    """The measured cases with a ×NumPy, sorted by ×PyTorch (the stronger baseline), highest
    first; those without PyTorch after them, by ×NumPy."""
    cases = [case for case in result.cases if is_measured(case)
             and case.speedup_vs_numpy is not None]
    return sorted(cases, key=lambda case: (case.speedup_vs_torch is None,
                                           -(case.speedup_vs_torch or case.speedup_vs_numpy)))


def speedup_figure(result: Any) -> Any:
    """Two panels sharing the cases: ×NumPy and ×PyTorch (against the faster of eager and
    torch.compile, colored by which), horizontal bars on a log scale with the value at the end,
    a line at 1× (right of it, the engine is faster), cases sorted by ×PyTorch."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    cases = _speedup_cases(result)
    titles = [case_title(case) for case in cases]
    figure = Figure(figsize=(12, max(3.0, 0.24 * len(cases) + 1.6)), layout="constrained")
    left, right = figure.subplots(1, 2, sharey=True)
    positions = list(range(len(cases)))
    panels = ((left, "×NumPy", [case.speedup_vs_numpy for case in cases],
               [NUMPY_COLOR] * len(cases)),
              (right, "×PyTorch (the faster of eager and torch.compile)",
               [case.speedup_vs_torch for case in cases],
               [TORCH_COLORS.get(torch_fastest_name(case) or "eager", TORCH_COLORS["eager"])
                for case in cases]))
    for axes, title, values, colors in panels:
        shown = [(p, v, c) for p, v, c in zip(positions, values, colors, strict=True)
                 if v is not None and math.isfinite(v) and v > 0]
        if shown:
            # each bar runs from 1× to the speedup: right of the line faster, left of it slower
            bars = axes.barh([p for p, _, _ in shown], [v - 1.0 for _, v, _ in shown],
                             left=1.0, height=0.7, color=[c for _, _, c in shown])
            axes.bar_label(bars, labels=[f"{v:.2f}×" for _, v, _ in shown], fontsize=7,
                           padding=2)
            smallest = min(v for _, v, _ in shown)
            largest = max(v for _, v, _ in shown)
            axes.set_xscale("log")
            axes.set_xlim(min(0.5, smallest / 2.5), max(2.0, largest) * 3.0)
            _log_ticks(axes.xaxis, *axes.get_xlim())
        else:
            axes.set_xscale("log")
            title += ": not measured"
        axes.axvline(1.0, color="black", linewidth=0.9)
        axes.set_title(title, fontsize=10, loc="left")
        axes.set_xlabel("engine speedup (median of per-round ratios; right of 1×: faster)",
                        fontsize=8)
        axes.tick_params(axis="x", labelsize=7)
        axes.grid(True, axis="x", which="major", linewidth=0.4, alpha=0.6)
    left.set_yticks(positions, titles, fontsize=8)
    if cases:
        left.set_ylim(len(cases) - 0.5, -0.5)
    right.legend(handles=[Patch(color=TORCH_COLORS["eager"], label="PyTorch eager was faster"),
                          Patch(color=TORCH_COLORS["compiled"],
                                label="torch.compile was faster")],
                 fontsize=7, loc="lower right")
    left_out = [case_title(case) for case in result.cases if case.verdict == OVER_CEILING]
    figure.suptitle(f"Engine speedup per case, {result.threads} thread(s), sorted by ×PyTorch"
                    + (f"\nleft out, measured over their ceiling (a benchmark error): "
                       f"{', '.join(left_out)}" if left_out else ""), fontsize=10)
    return figure


def write_charts(result: Any, folder: Path) -> tuple[list[Path], str | None]:
    """Draw the charts into ``folder``; the files written, and a note when none could be."""
    missing = matplotlib_missing()
    if missing:
        return [], missing
    written = []
    for case in getattr(result, "crossovers", None) or []:
        if case.points:
            path = Path(folder) / CROSSOVER_CHART
            _save(crossover_figure(case), path)
            written.append(path)
    if not any(is_measured(case) for case in result.cases):
        return written, (None if written else "no case was measured: no charts were written")
    for name, draw in zip(CHART_FILES, (roofline_figure, speedup_figure), strict=True):
        path = Path(folder) / name
        _save(draw(result), path)
        written.append(path)
    return written, None


# --- the crossover case ---------------------------------------------------------------------------

CROSSOVER_CHART = "crossover.png"


def crossover_value(mode: str, length: int, seconds: float | None) -> str:
    """A decoding step in milliseconds per token, a prefill in tokens per second."""
    if seconds is None:
        return "—"
    if mode == "decode":
        return f"{seconds * 1e3:.3g}"
    return f"{length / seconds:,.0f}"


def crossover_table(case: Any, mode: str) -> tuple[list[str], list[list[str]]]:
    """The header (contender, then each length) and a row per contender of one mode."""
    from koschei.bench.crossover import DESCRIPTION

    lengths = case.lengths(mode)
    header = ["contender", *(f"{n:,}" for n in lengths)]
    rows = [[DESCRIPTION.get(name, name),
             *(crossover_value(mode, n, case.median(mode, name, n)) for n in lengths)]
            for name in case.contenders()]
    return header, rows


def crossover_summary(case: Any) -> list[str]:
    """Each crossover, then each contender's measured exponent per mode, in words."""
    lines = [f"{c.mode}: {c.linear} faster than {c.softmax} from {c.text}"
             for c in case.crossovers]
    for mode, exponents in case.exponents.items():
        if exponents:
            lines.append(f"{mode}: time grows as length^k, k = " + ", ".join(
                f"{name} {value:.2f}" for name, value in exponents.items()))
    return lines


def crossover_setup_text(case: Any) -> str:
    return (f"One layer's token mixing, batch 1, {case.heads} heads of {case.head_dim}, "
            f"float32, {case.threads} thread(s) for every contender. Decoding: ms per token "
            f"after a context of that many tokens, the per-layer caches or states of "
            f"{case.layers_rotated} layers rotating as a decoder of that depth reads them; "
            "prefill: tokens per second (causal). Crossover: the shortest length from which "
            "the linear layer is faster at every longer one (paired ratios of the same rounds), "
            "interpolated log-log; k: the slope of log time against log length over the upper "
            "half of the lengths.")


def crossover_figure(case: Any) -> Any:
    """Both modes against length, log-log: ms per token (decoding) and tokens per second
    (prefill), one line per contender, each crossover a dotted vertical line."""
    from matplotlib.figure import Figure

    from koschei.bench.crossover import DESCRIPTION, SOFTMAX

    figure = Figure(figsize=(12, 4.8))
    for index, mode in enumerate(("decode", "prefill")):
        axes = figure.add_subplot(1, 2, index + 1)
        lengths = case.lengths(mode)
        for name in case.contenders():
            points = [(n, case.median(mode, name, n)) for n in lengths]
            points = [(n, t) for n, t in points if t]
            if not points:
                continue
            x = [n for n, _ in points]
            y = [t * 1e3 if mode == "decode" else n / t for n, t in points]
            axes.plot(x, y, marker="o", linestyle="--" if name in SOFTMAX else "-",
                      label=DESCRIPTION.get(name, name))
        for crossing in case.crossovers:
            if crossing.mode == mode and crossing.length and crossing.below is not None:
                axes.axvline(crossing.length, color="grey", linestyle=":", linewidth=1)
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        axes.set_xlabel("context length (tokens)" if mode == "decode" else "prompt length "
                        "(tokens)")
        axes.set_ylabel("ms per token" if mode == "decode" else "tokens per second")
        axes.set_title(f"{mode}: {case.heads} heads x {case.head_dim}, batch 1")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=7)
    figure.tight_layout()
    return figure


def _crossover_lines(crossovers: list[Any]) -> list[str]:
    lines: list[str] = []
    for case in crossovers:
        for mode in ("decode", "prefill"):
            header, rows = crossover_table(case, mode)
            if not rows:
                continue
            unit = "ms per token" if mode == "decode" else "tokens per second"
            lines += ["", f"| {case.label} {mode} ({unit}) | " + " | ".join(header[1:]) + " |",
                      "| --- |" + " ---: |" * (len(header) - 1)]
            lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
        notes = [crossover_setup_text(case), *crossover_summary(case)]
        if case.verdict != "ok" and case.error:
            notes.append(f"{case.label}: {case.verdict}: {first_line(case.error)}")
        lines += ["", *[f"- {_cell(note)}" for note in notes]]
    return lines


# --- the README table ---------------------------------------------------------------------------


def _goals(case: Any) -> str:
    return "; ".join(goal_outcome(goal) for goal in case.goals)


def _cell(text: str) -> str:
    """Text that cannot break a Markdown table row."""
    return text.replace("|", "\\|").replace("\n", " ")


def _headline(result: Any, run_id: str, command: str) -> str:
    machine = result.machine
    calibration = result.calibration or {}
    blas = (result.thread_control or {}).get("blas")
    measured = calibration.get("measured_at")
    when = f"measured {str(measured)[:10]}" if measured else "measured"
    if calibration.get("load_average") is not None:
        when += f" at load {calibration['load_average']}"
    return (
        f"Measured by `{command}` (run `{run_id}`): {machine.get('cpu_model', '?')}, "
        f"{machine.get('cores')} cores, {result.threads} thread(s) for Numba and PyTorch"
        + (f", NumPy's BLAS on {blas}" if blas else "")
        + f"; numpy {machine.get('numpy')}, numba {machine.get('numba')}, torch "
        f"{machine.get('torch')}; 1-minute load {result.load_average} when it started (other "
        f"work on the machine slows every contender). Ceilings of this machine ({when}), "
        f"{calibration_summary(calibration)}. Each case is held against the ceiling of the "
        "level its working set is served from, for its own mix of reads and writes"
        + (" (a cold case's inputs come from DRAM)" if any(
            getattr(case, "cold_inputs", None) for case in result.cases) else "")
        + ". Times are medians; ratios are medians of per-round ratios from the same run; "
        "×PyTorch is against the faster of PyTorch eager and torch.compile, named.")


def readme_table(result: Any, run_id: str, command: str) -> str:
    """The Markdown block (markers included) with every case of ``result``: times of every
    contender, ratios, GB/s, the fraction of each case's own ceiling, goals; the models'
    decoding speed after it."""
    contention = any(getattr(case, "contention", None) for case in result.cases)
    header = ["case", "engine", "NumPy", "PyTorch eager", "torch.compile", "×NumPy", "×PyTorch",
              "GB/s", "of its ceiling"]
    align = ["---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---"]
    if contention:
        header.append("slower: busy process / after BLAS")
        align.append("---:")
    header.append("goals")
    align.append("---")
    lines = [README_BEGIN, _headline(result, run_id, command), "",
             "| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    footnotes: list[str] = []
    for case in result.cases:
        contenders = case.contenders

        def median(name: str, contenders: dict[str, Any] = contenders) -> str:
            timing = contenders.get(name)
            return format_seconds(timing.median_s if timing is not None else None)

        if case.verdict not in (*MEASURED, OVER_CEILING):
            cells = [case_title(case), f"**{case.verdict}**", *[""] * (len(header) - 2)]
            footnotes.append(f"{case_title(case)}: {case.verdict}: {first_line(case.error)}")
            lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
            continue
        engine = median("engine")
        warm = warm_median_s(case)
        if warm is not None:
            engine += f" (warm {format_seconds(warm)})"
        over = case.verdict == OVER_CEILING
        cells = [case_title(case), engine, median("numpy"), median("torch"),
                 median("torch_compile"),
                 "—" if over else format_ratio(case.speedup_vs_numpy),
                 "—" if over else torch_ratio_text(case),
                 f"{case.gbs:.1f}" if case.gbs is not None else "—",
                 ("**error**, " if over else "") + ceiling_text(case, result.calibration)]
        if contention:
            cells.append(contention_text(case))
        cells.append("not judged: measured over its ceiling" if over else _goals(case))
        if over:
            footnotes.append(f"{case_title(case)}: over its ceiling, a benchmark error: "
                             f"{first_line(case.error)}")
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    compile_text = compile_seconds_text(result.cases)
    if compile_text:
        footnotes.insert(0, compile_text + " (per case: `torch_compile_s` in the JSON).")
    if any(getattr(case, "cold_inputs", None) for case in result.cases):
        footnotes.insert(0, "(cold): the case's large inputs rotate through copies that "
                            "together exceed the last cache, so every call reads them from "
                            "DRAM, as a model reads each layer's weights once per token; warm: "
                            "the engine on one copy, timed in the same rounds.")
    if contention:
        footnotes.append("slower: busy process / after BLAS: the engine's median with one "
                         "other spinning process on the machine over its median alone, in "
                         "alternating rounds; and one call right after a NumPy GEMV on every "
                         "BLAS thread over one right after another engine call.")
    if footnotes:
        lines += ["", *[f"- {_cell(note)}" for note in footnotes]]
    lines += _model_lines(result.models)
    lines += _encoder_lines(getattr(result, "encoders", None) or [])
    lines += _crossover_lines(getattr(result, "crossovers", None) or [])
    lines.append(README_END)
    return "\n".join(lines) + "\n"


def _model_lines(models: list[Any]) -> list[str]:
    if not models:
        return []
    lines = ["", ("| model, decoding step | weights | step | tokens/s | MB/token | "
                  "bandwidth ceiling tokens/s | of ceiling |"),
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    notes = []
    for model in models:
        for weights, entry in model.weights.items():
            state = getattr(entry, "weights_state", None)
            named = f"{weights} ({state})" if state else weights
            if model.verdict not in ("ok", OVER_CEILING) or weights not in model.contenders:
                lines.append(f"| {model.label} | {named} | **{model.verdict}** | | | | |")
                continue
            step = format_seconds(model.contenders[weights].median_s)
            fraction = entry.ceiling_fraction
            of_ceiling = ("—" if fraction is None else
                          "**error**: over its ceiling" if fraction > 1 else f"{fraction:.0%}")
            lines.append(
                f"| {model.label} | {named} | {step} | {entry.tokens_per_s:.1f} | "
                f"{entry.bytes_per_token / 1e6:.1f} | {entry.ceiling_tokens_per_s:.1f} | "
                f"{of_ceiling} |")
        if model.verdict == "ok":
            for weights in ("bf16", "ternary"):
                speedup = getattr(model, f"speedup_{weights}_vs_fp32", None)
                if speedup is not None:
                    lines.append(f"| {model.label} | {weights} ÷ fp32 | | "
                                 f"{format_ratio(speedup)} | | | |")
        if model.verdict != "ok" and model.error:
            notes.append(f"{model.label}: {model.verdict}: {first_line(model.error)}")
    ceilings = sorted({(entry.memory_level, entry.ceiling_gbs) for model in models
                       for entry in model.weights.values() if entry.ceiling_gbs})
    if ceilings:
        read = ", ".join(f"{level} {format_rate(gbs)} GB/s" for level, gbs in ceilings)
        notes.insert(0, f"A decoding step's ceiling is the read bandwidth of the memory level "
                        f"its bytes are served from ({read}) over the bytes it must read (every "
                        "weight as stored, and the KV cache); cold: they do not fit in the "
                        "largest measured cache (DRAM); warm: they do.")
    lines += ["", *[f"- {_cell(note)}" for note in notes]] if notes else []
    for model in models:
        lines += _llama_cpp_lines(model)
    return lines


def llama_cpp_rows(model: Any) -> list[tuple[str, Any, Any, Any]]:
    """The prefill / decoding rows of a model case, each engine decoder followed by the
    llama.cpp files compared with it, then the reference files: (name, prefill timing, step
    timing, the LlamaCppResult or None for the engine) each. Shared by the terminal and the
    README."""
    rows: list[tuple[str, Any, Any, Any]] = []
    anchors = list(getattr(model, "llama_cpp", None) or [])
    for weights in model.weights:
        rows.append((f"engine {weights}", model.prefill.get(weights),
                     model.contenders.get(weights), None))
        rows += [(_anchor_name(anchor), anchor.prefill, anchor.decode, anchor)
                 for anchor in anchors if anchor.compared and anchor.weights == weights]
    rows += [(_anchor_name(anchor), anchor.prefill, anchor.decode, anchor)
             for anchor in anchors if not anchor.compared]
    return rows


def _anchor_name(anchor: Any) -> str:
    return f"llama.cpp {anchor.tensor_type}" + ("" if anchor.compared else " (reference)")


_KV_CACHE_WORDS = {"F32": "float32 (as the engine's)", "F16": "float16"}


def llama_cpp_setup_text(model: Any) -> str:
    """How llama.cpp ran, in words (empty when it did not)."""
    info = getattr(model, "llama_cpp_info", None) or {}
    if not info:
        return ""
    return (f"llama.cpp (llama-cpp-python {info.get('llama_cpp_python')}) ran the same weights "
            f"as GGUF files (F32, F16, Q8_0, Q4_0: the projection matrices' type; TQ2_0: the "
            f"ternary weights, 2 bits each; embeddings F32, F16 in the F16 file) on "
            f"{info.get('n_threads')} thread(s), n_batch {info.get('n_batch')}, a "
            f"{_KV_CACHE_WORDS.get(info.get('kv_cache'), info.get('kv_cache'))} KV cache, the "
            "same prompt and steps in the same rounds, "
            "each checked against its decoder's logits first; engine ÷ llama.cpp: the engine's "
            "speed over llama.cpp's, the median of per-round ratios (above 1: the engine is "
            "faster); (reference): a figure without an engine counterpart.")


def _llama_cpp_lines(model: Any) -> list[str]:
    if not getattr(model, "prefill", None) and not getattr(model, "llama_cpp_note", None):
        return []
    lines = ["", (f"| {model.model}/{model.config}: prefill of {model.context} tokens, "
                  f"decoding step at {model.context} | prefill | prompt tokens/s | step | "
                  "tokens/s | engine ÷ llama.cpp: prefill | engine ÷ llama.cpp: step |"),
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    notes = []
    for name, prefill, step, anchor in llama_cpp_rows(model):
        verdict = anchor.verdict if anchor is not None else model.verdict
        if prefill is None or step is None:
            lines.append(f"| {name} | **{verdict}** | | | | | |")
            if anchor is not None and anchor.error:
                notes.append(f"{name}: {verdict}: {first_line(anchor.error)}")
            continue
        ratios = ["", ""]
        if anchor is not None and anchor.compared:
            ratios = [format_ratio(anchor.engine_prefill_speedup),
                      format_ratio(anchor.engine_speedup)]
        lines.append(f"| {name} | {format_seconds(prefill.median_s)} | "
                     f"{model.context / prefill.median_s:.0f} | {format_seconds(step.median_s)} | "
                     f"{1 / step.median_s:.1f} | {ratios[0]} | {ratios[1]} |")
    setup = llama_cpp_setup_text(model)
    if setup:
        notes.insert(0, setup)
    if getattr(model, "llama_cpp_note", None):
        notes.insert(0, model.llama_cpp_note)
    return lines + (["", *[f"- {_cell(note)}" for note in notes]] if notes else [])


# --- the encoder case -----------------------------------------------------------------------------


def encoder_rows(item: Any) -> list[tuple[str, Any, str | None, float | None]]:
    """The rows of one input of an encoder case, koschei's contenders first, in the order of
    ``koschei.bench.encoder.CONTENDERS`` (any other after them): (name, its
    EncoderContenderResult, the koschei contender compared with it or None, koschei's speed over
    it: the paired speedup) each. Shared by the terminal and the README."""
    from koschei.bench.encoder import CONTENDERS, SPEEDUPS

    compared = {baseline: (engine, key) for key, (baseline, engine) in SPEEDUPS.items()}
    order = {name: index for index, name in enumerate(CONTENDERS)}
    names = sorted(item.contenders, key=lambda name: order.get(name, len(order)))
    rows: list[tuple[str, Any, str | None, float | None]] = []
    for name in names:
        engine, key = compared.get(name, (None, None))
        rows.append((name, item.contenders[name], engine,
                     item.speedups.get(key) if key is not None else None))
    return rows


def encoder_input_title(item: Any) -> str:
    """"32 short sentences (32 texts, 357 tokens)"."""
    texts = f"{item.texts} text" + ("s" if item.texts != 1 else "")
    return f"{item.name} ({texts}, {sum(item.tokens)} tokens)"


def encoder_setup_text(case: Any) -> str:
    """How the encoder case's contenders ran and were compared, in words."""
    from koschei.bench.encoder import MIN_COSINE

    text = (f"Every contender on {case.threads} thread(s), each call texts in and L2-normalized "
            "embeddings out, tokenization included, timed in the same rounds after its "
            "embeddings were checked against sentence-transformers' (lowest cosine per text: "
            f"fp32 ≥ {MIN_COSINE['fp32']:g}, int8 ≥ {MIN_COSINE['int8']:g}); koschei ÷ it: "
            "koschei's speed over the contender's, the median of per-round ratios (above 1: "
            "koschei is faster).")
    info = getattr(case, "onnxruntime_info", None) or {}
    if info.get("exporter"):
        fused = ", ".join(f"{name} {count}" for name, count
                          in (info.get("fused_operators") or {}).items())
        text += (f" ONNX Runtime {info.get('onnxruntime')}: the BertModel exported by "
                 f"{info['exporter']} (opset {info.get('opset')}), optimized by ONNX Runtime's "
                 f"transformer optimizer ({fused or 'nothing fused'}); int8: that graph through "
                 f"{info.get('quantization')}; sessions {info.get('session')}, "
                 f"{info.get('intra_op_num_threads')} intra-op thread(s), 1 inter-op; its call "
                 "pads the batch to its longest text, runs it once, and mean-pools and "
                 "normalizes in NumPy.")
    return text


def _encoder_lines(encoders: list[Any]) -> list[str]:
    lines: list[str] = []
    for case in encoders:
        lines += ["", (f"| {case.label}: input | contender | median | IQR | lowest cosine | "
                       "koschei ÷ it | verdict |"),
                  "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
        notes = [encoder_setup_text(case)]
        if case.onnxruntime_note:
            notes.append(case.onnxruntime_note)
        if not case.inputs:
            lines.append(f"| {case.label} | | | | | | **{case.verdict}** |")
        for item in case.inputs:
            title = encoder_input_title(item)
            for name, entry, engine, speedup in encoder_rows(item):
                timing = entry.timing
                cosine = "" if entry.min_cosine is None else f"{entry.min_cosine:.6f}"
                ratio = f"{engine} {format_ratio(speedup)}" if engine and speedup else ""
                verdict = entry.verdict if entry.verdict in ("ok", "reference") else \
                    f"**{entry.verdict}**"
                lines.append(
                    f"| {_cell(title)} | {name} | "
                    f"{format_seconds(timing.median_s) if timing else '—'} | "
                    f"{format_seconds(timing.iqr_s) if timing else '—'} | {cosine} | {ratio} | "
                    f"{verdict} |")
                if entry.verdict in ("wrong", "error") and entry.error:
                    notes.append(f"{item.name}: {name}: {entry.verdict}: "
                                 f"{first_line(entry.error)}")
            if item.goals:
                notes.append(f"{item.name}: goals: "
                             + "; ".join(goal_outcome(goal) for goal in item.goals))
        if case.verdict != "ok" and case.error:
            notes.append(f"{case.label}: {case.verdict}: {first_line(case.error)}")
        lines += ["", *[f"- {_cell(note)}" for note in notes]]
    return lines


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
