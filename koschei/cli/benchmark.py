"""`koschei benchmark`: measure the engine against NumPy, PyTorch and this machine's roofline."""

from __future__ import annotations

import math
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from koschei.benchmark_report import format_seconds, goal_outcome
from koschei.cli.app import command
from koschei.cli.common import (
    JsonOption,
    RichProgress,
    RootOption,
    finish,
    handle_errors,
    workspace,
)

BAR_WIDTH = 24
TABLE_WIDTH = 120  # columns of the table when stdout is not a terminal
PARTIAL_BLOCKS = " ▏▎▍▌▋▊▉"
VERDICT_STYLES = {"ok": "green", "wrong": "bold red", "error": "red", "regression": "bold red"}


@command("benchmark", seed_name="benchmark",
         summary="Measure each implemented spec's bench cases against NumPy, PyTorch and this "
                 "machine's memory bandwidth and peak FLOP/s (exit 1 on a wrong result or a "
                 "significant regression beyond --fail-on-regression).",
         example="koschei benchmark --select rmsnorm --compare latest")
def benchmark(
    root: RootOption = None,
    json_output: JsonOption = False,
    select: Annotated[list[str] | None, typer.Option(
        "--select", "-k", help="Only this spec (repeat for more, or separate with commas).",
        show_default=False)] = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="Threads for Numba, PyTorch and BLAS alike (default: all cores).",
        show_default=False)] = None,
    budget: Annotated[float, typer.Option(
        "--budget", help="Timing budget per case, in seconds.")] = 2.0,
    recalibrate: Annotated[bool, typer.Option(
        "--recalibrate", help="Measure STREAM bandwidth and sgemm FLOP/s again for this machine.",
    )] = False,
    compare: Annotated[str | None, typer.Option(
        "--compare", help="Compare with an earlier run: 'latest' or a run id.",
        show_default=False)] = None,
    fail_on_regression: Annotated[float | None, typer.Option(
        "--fail-on-regression", metavar="PCT",
        help="Exit 1 when a case is slower than the compared run by more than PCT percent and the "
             "difference is significant (Mann-Whitney U, p < 0.01).", show_default=False)] = None,
    charts: Annotated[bool, typer.Option(
        "--charts/--no-charts",
        help="Write roofline.png and speedup.png beside the run record (needs matplotlib).",
    )] = True,
    readme: Annotated[bool, typer.Option(
        "--readme", help="Rewrite the table between <!-- benchmark:begin --> and "
                         "<!-- benchmark:end --> in the workspace's README.md from this run.",
    )] = False,
    model: Annotated[list[str] | None, typer.Option(
        "--model", help="Measure the decoding speed of this decoder config, fp32 against ternary "
                        "weights (default: igla_v2 when no --select is given; --model none for "
                        "no model).", show_default=False)] = None,
) -> None:
    with handle_errors():
        from koschei.phases import benchmark as phase
        from koschei.runs import RunRecord

        names = [name.strip() for item in select or [] for name in item.split(",") if name.strip()]
        models = None if model is None else \
            [name.strip() for item in model for name in item.split(",")
             if name.strip() and name.strip() != "none"]
        root_workspace = workspace(root)
        with RunRecord.recording(root_workspace, "benchmark") as record:
            options = phase.Options(select=names or None, threads=threads, budget_s=budget,
                                    record_dir=record.dir, recalibrate=recalibrate, compare=compare,
                                    fail_on_regression=fail_on_regression, charts=charts,
                                    readme=readme, models=models)
            result = phase.run(root_workspace, options, RichProgress())
            record.save_phase("benchmark", result)
        finish(result, json_output, render)


# --- rendering ----------------------------------------------------------------------------------


def render_models(models: list[Any], console: Console) -> None:
    """Decoding speed per model and weights, beside the bandwidth ceiling of each."""
    table = Table(show_edge=False, pad_edge=False, header_style="bold", box=None,
                  collapse_padding=True, title="decoding speed", title_justify="left")
    for column in ("model", "weights", "step ±IQR", "tokens/s", "MB/token", "ceiling tok/s",
                   "of ceiling", "verdict"):
        table.add_column(column, justify="left" if column in ("model", "weights", "verdict")
                         else "right", no_wrap=True)
    for case in models:
        for weights, entry in case.weights.items():
            timing = case.contenders.get(weights)
            table.add_row(
                case.label, weights, format_timing(timing, spread=True),
                f"{entry.tokens_per_s:.1f}" if entry.tokens_per_s else "—",
                f"{entry.bytes_per_token / 1e6:.1f}" if entry.bytes_per_token else "—",
                f"{entry.ceiling_tokens_per_s:.1f}" if entry.ceiling_tokens_per_s else "—",
                f"{entry.ceiling_fraction * 100:.0f}%" if entry.ceiling_fraction else "—",
                Text(case.verdict, style=VERDICT_STYLES.get(case.verdict, "")))
    console.print()
    print_wide(console, table)
    for case in models:
        if case.speedup_ternary_vs_fp32 is not None:
            console.print(f"{case.label}: ternary ×{case.speedup_ternary_vs_fp32:.2f} the fp32 "
                          f"tokens/s (paired rounds); ceilings at {case.bandwidth_gbs} GB/s",
                          highlight=False)
        if case.error:
            console.print(Text(f"{case.label}: {case.verdict}: {case.error}",
                               style=VERDICT_STYLES.get(case.verdict, "")))


def format_timing(timing: Any, *, spread: bool = False) -> str:
    """Median time, with the interquartile range as a percentage of it when ``spread``."""
    if timing is None:
        return "—"
    text = format_seconds(timing.median_s, separator="")
    if spread and timing.median_s:
        text += f" ±{timing.iqr_s / timing.median_s * 100:.0f}%"
    return text


def format_ratio(value: float | None) -> Text:
    if value is None or not math.isfinite(value):
        return Text("—", style="dim")
    return Text(f"{value:.2f}×", style="green" if value >= 1.0 else "red")


def format_change(compare: dict[str, Any] | None) -> Text:
    if not compare:
        return Text("—", style="dim")
    style = {"slower": "red", "faster": "green"}.get(compare["status"], "dim")
    mark = "*" if compare["status"] in ("slower", "faster") else ""
    return Text(f"{compare['change_pct']:+.0f}%{mark}", style=style)


def speedup_bar(value: float | None, scale: float) -> Text:
    """A bar proportional to ``value`` on a scale where ``scale`` fills BAR_WIDTH cells."""
    if value is None or not math.isfinite(value) or scale <= 0:
        return Text("")
    eighths = max(1, round(value / scale * BAR_WIDTH * 8))
    full, partial = divmod(min(eighths, BAR_WIDTH * 8), 8)
    bar = "█" * full + (PARTIAL_BLOCKS[partial] if partial else "")
    return Text(bar, style="green" if value >= 1.0 else "red")


def print_wide(console: Console, renderable: Any) -> None:
    """Print ``renderable``; a log or a pipe has no width of its own, so a table is not squeezed
    into the 80 columns rich assumes there."""
    if console.is_terminal or console.width >= TABLE_WIDTH:
        console.print(renderable)
        return
    width = console.width
    console.width = TABLE_WIDTH
    try:
        console.print(renderable)
    finally:
        console.width = width


def format_roofline(case: Any) -> str:
    """The fraction of the roofline of the level the case runs from: "70% DRAM", "48% L3",
    "20% FLOP" (compute-bound)."""
    fraction = case.level_roofline_fraction
    if fraction is None:
        fraction = case.roofline_fraction
    if fraction is None:
        return "—"
    where = (case.memory_level or "mem") if case.bound == "memory" else "FLOP"
    return f"{fraction * 100:.0f}% {where}"


def format_goals(goals: list[dict[str, Any]]) -> Text:
    if not goals:
        return Text("")
    met = sum(1 for goal in goals if goal["met"])
    return Text(f"{met}/{len(goals)}", style="green" if met == len(goals) else "yellow")


def goal_line(goal: dict[str, Any]) -> Text:
    return Text(goal_outcome(goal), style="green" if goal["met"] else "yellow")


def render(result: Any, console: Console) -> None:
    calibration = result.calibration
    caches = ", ".join(f"{level} {gbs:.0f}" for level, gbs in
                       sorted((calibration.get("cache_triad_gbs") or {}).items()))
    console.print(
        f"[bold]benchmark[/bold] · {result.threads} thread(s) (Numba, PyTorch; NumPy's BLAS "
        f"{result.thread_control.get('blas') or 'default'}) · roofline: STREAM triad "
        f"{calibration['stream_triad_gbs']:.1f} GB/s"
        + (f" (cache triads {caches} GB/s)" if caches else "")
        + f", sgemm {calibration['sgemm_gflops']:.1f} GFLOP/s · fingerprint {result.fingerprint}",
        highlight=False)
    comparing = result.compared_with is not None
    table = Table(show_edge=False, pad_edge=False, header_style="bold", box=None,
                  collapse_padding=True)
    table.add_column("case", no_wrap=True)
    table.add_column("engine ±IQR", justify="right", no_wrap=True)
    table.add_column("numpy", justify="right", no_wrap=True)
    table.add_column("torch", justify="right", no_wrap=True)
    table.add_column("GB/s", justify="right")
    table.add_column("roofline", justify="right", no_wrap=True)
    table.add_column("×NumPy", justify="right")
    table.add_column("×PyTorch", justify="right")
    table.add_column("goals", justify="right")
    if comparing:
        table.add_column("Δ", justify="right")
    table.add_column("verdict")
    for case in result.cases:
        contenders = case.contenders
        roofline = format_roofline(case)
        row: list[Any] = [
            f"{case.spec}/{case.case}",
            format_timing(contenders.get("engine"), spread=True),
            format_timing(contenders.get("numpy")),
            format_timing(contenders.get("torch")),
            f"{case.gbs:.1f}" if case.gbs is not None else "—",
            roofline,
            format_ratio(case.speedup_vs_numpy),
            format_ratio(case.speedup_vs_torch),
            format_goals(case.goals),
        ]
        if comparing:
            row.append(format_change(case.compare))
        row.append(Text(case.verdict, style=VERDICT_STYLES.get(case.verdict, "")))
        table.add_row(*row)
    print_wide(console, table)
    if comparing:
        console.print(f"[dim]Δ: engine median against run {result.compared_with}; * marks a "
                      "change beyond the threshold, significant (Mann-Whitney p < 0.01) in "
                      "absolute time and relative to NumPy[/dim]", highlight=False)

    if result.models:
        render_models(result.models, console)

    measured = [c for c in result.cases if c.speedup_vs_numpy is not None]
    if measured:
        speedups = [c.speedup_vs_numpy for c in measured]
        speedups += [c.speedup_vs_torch for c in measured if c.speedup_vs_torch is not None]
        speedups += [s for c in measured for s in c.speedup_vs_baselines.values() if s is not None]
        scale = max([1.0, *[s for s in speedups if math.isfinite(s)]])
        width = max(len(f"{c.spec}/{c.case}") for c in measured)
        console.print(f"\n[bold]engine speedup[/bold] (full bar = {scale:.2f}×)")
        for case in measured:
            for label, value in (("numpy", case.speedup_vs_numpy),
                                 ("torch", case.speedup_vs_torch),
                                 *case.speedup_vs_baselines.items()):
                if value is None:
                    continue
                line = Text(f"{case.spec}/{case.case}".ljust(width) + f"  vs {label}  ")
                line.append_text(speedup_bar(value, scale))
                line.append(f" {value:.2f}×")
                console.print(line)

    goals = [(case, goal) for case in result.cases for goal in case.goals]
    if goals:
        console.print("\n[bold]goals[/bold] (from the specs' bench.goals)")
        width = max(len(f"{case.spec}/{case.case}") for case, _ in goals)
        for case, goal in goals:
            line = Text(f"{case.spec}/{case.case}".ljust(width) + "  ")
            line.append_text(goal_line(goal))
            console.print(line)

    for case in result.cases:
        if case.verdict != "ok":
            console.print(Text(f"{case.spec}/{case.case}: {case.verdict}: {case.error}",
                               style=VERDICT_STYLES.get(case.verdict, "")))
        for note in case.notes:
            console.print(f"[dim]{case.spec}/{case.case}: {note}[/dim]", highlight=False)
    for note in result.notes:
        console.print(f"[dim]{note}[/dim]", highlight=False)
    for chart in result.charts:
        console.print(f"[dim]chart: {chart}[/dim]", highlight=False)
    counts = ", ".join(f"{n} {verdict}" for verdict, n in sorted(result.counts.items()))
    measured = f"{len(result.cases)} case(s)" + (f" and {len(result.models)} model(s)"
                                                   if result.models else "")
    console.print(f"{measured}: {counts or 'none'}", highlight=False)
