"""`koschei benchmark`: measure the engine against NumPy, PyTorch and this machine's roofline."""

from __future__ import annotations

import math
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from koschei.bench.report import (
    OVER_CEILING,
    calibration_summary,
    case_title,
    compile_seconds_text,
    contention_text,
    crossover_setup_text,
    crossover_summary,
    crossover_table,
    encoder_input_title,
    encoder_rows,
    encoder_setup_text,
    format_fraction,
    format_rate,
    format_seconds,
    goal_outcome,
    is_measured,
    llama_cpp_rows,
    llama_cpp_setup_text,
    torch_fastest_name,
    warm_median_s,
)
from koschei.cli.app import command
from koschei.cli.common import (
    JsonOption,
    RichProgress,
    RootOption,
    finish,
    handle_errors,
    split_names,
    workspace,
)

BAR_WIDTH = 24
TABLE_WIDTH = 160  # columns of the table when stdout is not a terminal
PARTIAL_BLOCKS = " ▏▎▍▌▋▊▉"
VERDICT_STYLES = {"ok": "green", "wrong": "bold red", "error": "red", "regression": "bold red",
                  "over_ceiling": "bold red", "crashed": "bold red", "unsupported": "dim",
                  "not_installed": "dim", "reference": "dim"}


@command("benchmark", seed_name="benchmark",
         summary="Measure each implemented spec's bench cases against NumPy, PyTorch and this "
                 "machine's memory bandwidth and peak FLOP/s (exit 1 on a wrong result or a "
                 "significant regression beyond --fail-on-regression).",
         example="koschei benchmark --select rmsnorm --compare latest")
def benchmark(
    root: RootOption = None,
    json_output: JsonOption = False,
    select: Annotated[list[str] | None, typer.Option(
        "--select", "-k", help="Only this spec (repeat for more, or separate with commas); "
                              "--select none for the models of --model only.",
        show_default=False)] = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="Threads for Numba, PyTorch and BLAS alike (default: all cores).",
        show_default=False)] = None,
    budget: Annotated[float, typer.Option(
        "--budget", help="Timing budget per case, in seconds.")] = 2.0,
    recalibrate: Annotated[bool, typer.Option(
        "--recalibrate", help="Measure the bandwidths, the multiply-add peak and sgemm again for this machine.",
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
                        "weights; with minilm the sentence encoder against "
                        "sentence-transformers and ONNX Runtime; with crossover linear-time "
                        "layers against softmax attention over context lengths (default: "
                        "igla_v2 and minilm when no --select is given; --model none for no "
                        "model).",
        show_default=False)] = None,
    torch_compile: Annotated[bool, typer.Option(
        "--torch-compile/--no-torch-compile",
        help="Also time each PyTorch contender compiled with torch.compile (compilation is not "
             "timed; it is reported).")] = True,
    contention: Annotated[bool, typer.Option(
        "--contention", help="Also time the engine while one other busy process runs, in "
                             "alternating rounds, and report the slowdown.")] = False,
) -> None:
    with handle_errors():
        from koschei.phases import benchmark as phase
        from koschei.runs import RunRecord

        names = split_names(select)
        models = None if model is None else \
            [name for name in split_names(model) if name != "none"]
        root_workspace = workspace(root)
        with RunRecord.recording(root_workspace, "benchmark") as record:
            options = phase.Options(select=names or None, threads=threads, budget_s=budget,
                                    record_dir=record.dir, recalibrate=recalibrate, compare=compare,
                                    fail_on_regression=fail_on_regression, charts=charts,
                                    readme=readme, models=models, torch_compile=torch_compile,
                                    contention=contention)
            result = phase.run(root_workspace, options, RichProgress())
            record.save_phase("benchmark", result)
        finish(result, json_output, render)


# --- rendering ----------------------------------------------------------------------------------


def render_models(models: list[Any], console: Console) -> None:
    """Decoding speed per model and weights (cold or warm), beside the bandwidth ceiling of each;
    a fraction above 1 is shown as an error of the ceiling, not as a result."""
    table = Table(show_edge=False, pad_edge=False, header_style="bold", box=None,
                  collapse_padding=True, title="decoding speed", title_justify="left")
    for column in ("model", "weights", "step ±IQR", "tokens/s", "MB/token", "ceiling tok/s",
                   "of ceiling", "verdict"):
        table.add_column(column, justify="left" if column in ("model", "weights", "verdict")
                         else "right", no_wrap=True)
    for case in models:
        for weights, entry in case.weights.items():
            timing = case.contenders.get(weights)
            state = getattr(entry, "weights_state", None)
            fraction = entry.ceiling_fraction
            of_ceiling = (Text("—", style="dim") if not fraction else
                          Text("over ceiling", style="bold red") if fraction > 1 else
                          Text(f"{fraction * 100:.0f}%"))
            table.add_row(
                case.label, f"{weights} {state}" if state else weights,
                format_timing(timing, spread=True),
                f"{entry.tokens_per_s:.1f}" if entry.tokens_per_s else "—",
                f"{entry.bytes_per_token / 1e6:.1f}" if entry.bytes_per_token else "—",
                f"{entry.ceiling_tokens_per_s:.1f}" if entry.ceiling_tokens_per_s else "—",
                of_ceiling, Text(case.verdict, style=VERDICT_STYLES.get(case.verdict, "")))
    console.print()
    print_wide(console, table)
    for case in models:
        if case.speedup_ternary_vs_fp32 is not None and case.verdict == "ok":
            bf16 = getattr(case, "speedup_bf16_vs_fp32", None)
            console.print(f"{case.label}: "
                          + (f"bf16 ×{bf16:.2f}, " if bf16 is not None else "")
                          + f"ternary ×{case.speedup_ternary_vs_fp32:.2f} the fp32 "
                          "tokens/s (paired rounds); ceilings: "
                          + ", ".join(f"{weights} {entry.memory_level} read "
                                      f"{entry.ceiling_gbs:.1f} GB/s"
                                      for weights, entry in case.weights.items()
                                      if entry.ceiling_gbs), highlight=False)
        if case.error:
            console.print(Text(f"{case.label}: {case.verdict}: {case.error}",
                               style=VERDICT_STYLES.get(case.verdict, "")))
        for note in case.notes:
            console.print(f"[dim]{case.label}: {escape(note)}[/dim]", highlight=False)
    for case in models:
        render_llama_cpp(case, console)


def render_encoders(encoders: list[Any], console: Console) -> None:
    """Per input of each encoder case: every contender's median call, its lowest cosine to
    sentence-transformers' embeddings, koschei's speed over it, its verdict; then the input's
    goals, met or not."""
    for case in encoders:
        for item in case.inputs:
            table = Table(show_edge=False, pad_edge=False, header_style="bold", box=None,
                          collapse_padding=True, title_justify="left",
                          title=f"{case.label}: {encoder_input_title(item)}")
            for column in ("contender", "median ±IQR", "lowest cosine", "koschei ÷ it",
                           "verdict"):
                table.add_column(column, justify="left" if column in ("contender", "verdict")
                                 else "right", no_wrap=True)
            for name, entry, engine, speedup in encoder_rows(item):
                table.add_row(
                    name, format_timing(entry.timing, spread=True),
                    "—" if entry.min_cosine is None else f"{entry.min_cosine:.6f}",
                    format_ratio(speedup, engine) if engine else "",
                    Text(entry.verdict, style=VERDICT_STYLES.get(entry.verdict, "")))
            console.print()
            print_wide(console, table)
            for name, entry, _, _ in encoder_rows(item):
                if entry.verdict in ("wrong", "error") and entry.error:
                    console.print(Text(f"{name}: {entry.verdict}: {entry.error}",
                                       style=VERDICT_STYLES.get(entry.verdict, "")))
            if item.error:
                console.print(Text(f"{item.name}: timing failed: {item.error}", style="red"))
            for goal in item.goals:
                console.print(Text(f"goal: {goal_outcome(goal)}",
                                   style="green" if goal["met"] else "yellow"))
        if case.error:
            console.print(Text(f"{case.label}: {case.verdict}: {case.error}",
                               style=VERDICT_STYLES.get(case.verdict, "")))
        if case.onnxruntime_note:
            console.print(f"{case.label}: {case.onnxruntime_note}", highlight=False,
                          markup=False)
        if case.inputs:
            console.print(f"[dim]{escape(encoder_setup_text(case))}[/dim]", highlight=False)
        for note in case.notes:
            console.print(f"[dim]{case.label}: {escape(note)}[/dim]", highlight=False)


def render_crossovers(crossovers: list[Any], console: Console) -> None:
    """Per crossover case and mode, a row per contender and a column per length; then where
    each linear layer starts to win, and how each contender's time grows."""
    for case in crossovers:
        for mode in ("decode", "prefill"):
            header, rows = crossover_table(case, mode)
            if not rows:
                continue
            unit = "ms per token" if mode == "decode" else "tokens per second"
            table = Table(show_edge=False, pad_edge=False, header_style="bold", box=None,
                          collapse_padding=True, title_justify="left",
                          title=f"{case.label}: {mode} ({unit})")
            for index, column in enumerate(header):
                table.add_column(column, justify="left" if index == 0 else "right",
                                 no_wrap=True)
            for row in rows:
                table.add_row(*row)
            console.print()
            print_wide(console, table)
        for line in crossover_summary(case):
            console.print(line, highlight=False, markup=False)
        if case.error:
            console.print(Text(f"{case.label}: {case.verdict}: {case.error}",
                               style=VERDICT_STYLES.get(case.verdict, "")))
        if case.points:
            console.print(f"[dim]{escape(crossover_setup_text(case))}[/dim]", highlight=False)
        for note in case.notes:
            console.print(f"[dim]{case.label}: {escape(note)}[/dim]", highlight=False)


def render_llama_cpp(case: Any, console: Console) -> None:
    """The prefill of the prompt and the decoding step, engine and llama.cpp side by side, with
    the engine's speed over llama.cpp's; or why llama.cpp was not measured."""
    rows = llama_cpp_rows(case) if case.prefill else []
    if rows:
        table = Table(show_edge=False, pad_edge=False, header_style="bold", box=None,
                      collapse_padding=True, title_justify="left",
                      title=f"{case.model}/{case.config}: prefill of {case.context} tokens, "
                            f"decoding step at {case.context}")
        for column in ("contender", "prefill ±IQR", "prompt tok/s", "step ±IQR", "tokens/s",
                       "÷llama.cpp prefill", "÷llama.cpp step", "verdict"):
            table.add_column(column, justify="left" if column in ("contender", "verdict")
                             else "right", no_wrap=True)
        for name, prefill, step, anchor in rows:
            verdict = anchor.verdict if anchor is not None else case.verdict
            compared = anchor is not None and anchor.compared
            table.add_row(
                name, format_timing(prefill, spread=True),
                f"{case.context / prefill.median_s:.0f}" if prefill else "—",
                format_timing(step, spread=True), f"{1 / step.median_s:.1f}" if step else "—",
                format_ratio(anchor.engine_prefill_speedup) if compared else "",
                format_ratio(anchor.engine_speedup) if compared else "",
                Text(verdict, style=VERDICT_STYLES.get(verdict, "")))
        console.print()
        print_wide(console, table)
        for _, _, _, anchor in rows:
            if anchor is not None and anchor.error:
                console.print(Text(f"llama.cpp {anchor.tensor_type}: {anchor.verdict}: "
                                   f"{anchor.error}", style=VERDICT_STYLES.get(anchor.verdict,
                                                                               "")))
    setup = llama_cpp_setup_text(case)
    if setup:
        console.print(f"[dim]{escape(setup)}[/dim]", highlight=False)
    if case.llama_cpp_note:
        console.print(f"{case.label}: {case.llama_cpp_note}", highlight=False, markup=False)


def format_timing(timing: Any, *, spread: bool = False) -> str:
    """Median time, with the interquartile range as a percentage of it when ``spread``."""
    if timing is None:
        return "—"
    text = format_seconds(timing.median_s, separator="")
    if spread and timing.median_s:
        text += f" ±{timing.iqr_s / timing.median_s * 100:.0f}%"
    return text


def format_ratio(value: float | None, name: str | None = None) -> Text:
    """A speedup, green from 1× up, red below, after the contender it is against when named
    ("compiled 1.15×": the numbers stay aligned in a right-justified column)."""
    if value is None or not math.isfinite(value):
        return Text("—", style="dim")
    text = Text(f"{name} ", style="dim") if name else Text("")
    text.append(f"{value:.2f}×", style="green" if value >= 1.0 else "red")
    return text


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


def format_ceiling(case: Any) -> Text:
    """The fraction of the case's own ceiling, short: "83% of L2 140" (GB/s, the bandwidth of
    the level it is served from for its mix of reads and writes), "41% of peak" (compute-bound: of the multiply-add peak);
    "over ceiling" in red for a case measured above it (an error of the benchmark, explained
    under the table), never a percentage."""
    if case.verdict == OVER_CEILING:
        return Text("over ceiling", style="bold red")
    if case.roofline_fraction is None:
        return Text("—", style="dim")
    fraction = format_fraction(case.roofline_fraction)
    if case.bound == "compute":
        return Text(f"{fraction} of peak")
    return Text(f"{fraction} of {case.memory_level or 'memory'} {format_rate(case.ceiling_gbs)}")


def format_goals(goals: list[dict[str, Any]]) -> Text:
    if not goals:
        return Text("")
    met = sum(1 for goal in goals if goal["met"])
    return Text(f"{met}/{len(goals)}", style="green" if met == len(goals) else "yellow")


def goal_line(goal: dict[str, Any]) -> Text:
    return Text(goal_outcome(goal), style="green" if goal["met"] else "yellow")


def cold_line(case: Any) -> str | None:
    """What a cold case streamed and how the engine did on warm copies: "linear/decode_4096x4096
    (cold): weight from 12 copies; warm 1.1ms (2.27× faster)"."""
    if not getattr(case, "cold_inputs", None):
        return None
    copies = f" from {case.cold_copies} copies" if case.cold_copies else ""
    line = f"{case_title(case)}: {', '.join(case.cold_inputs)} read cold{copies}"
    warm = warm_median_s(case)
    if warm is not None:
        line += f"; warm {format_seconds(warm, separator='')}"
        if case.warm_speedup is not None:
            line += f" ({case.warm_speedup:.2f}× faster)"
    return line


def render(result: Any, console: Console) -> None:
    """The cases' table (every contender's median, ratios, GB/s, the fraction of each case's own
    ceiling, goals), the models' decoding speed, speedup bars, goals, and what needs saying."""
    calibration = result.calibration or {}
    console.print(
        f"[bold]benchmark[/bold] · {result.threads} thread(s) (Numba, PyTorch; NumPy's BLAS "
        f"{result.thread_control.get('blas') or 'default'}) · fingerprint {result.fingerprint}",
        highlight=False)
    measured_at = str(calibration.get("measured_at") or "")[:10]
    console.print("ceilings of this machine" + (f" (measured {measured_at})" if measured_at
                                                else "")
                  + f", {calibration_summary(calibration)}", highlight=False)
    comparing = result.compared_with is not None
    contention = any(getattr(case, "contention", None) for case in result.cases)
    table = Table(show_edge=False, pad_edge=False, header_style="bold", box=None,
                  collapse_padding=True)
    table.add_column("case", min_width=18, overflow="fold")  # folds on a narrow terminal
    table.add_column("engine ±IQR", justify="right", no_wrap=True)
    table.add_column("numpy", justify="right", no_wrap=True)
    table.add_column("torch", justify="right", no_wrap=True)
    table.add_column("compiled", justify="right", no_wrap=True)
    table.add_column("×NumPy", justify="right", no_wrap=True)
    table.add_column("×PyTorch", justify="right", min_width=5)
    table.add_column("GB/s", justify="right")
    table.add_column("of its ceiling GB/s", min_width=12)
    table.add_column("goals", justify="right")
    if contention:
        table.add_column("busy", justify="right", no_wrap=True)
    if comparing:
        table.add_column("Δ", justify="right")
    table.add_column("verdict", no_wrap=True, min_width=7)
    for case in result.cases:
        contenders = case.contenders
        trusted = is_measured(case)
        row: list[Any] = [
            case_title(case),
            format_timing(contenders.get("engine"), spread=True),
            format_timing(contenders.get("numpy")),
            format_timing(contenders.get("torch")),
            format_timing(contenders.get("torch_compile")),
            format_ratio(case.speedup_vs_numpy if trusted else None),
            format_ratio(case.speedup_vs_torch if trusted else None, torch_fastest_name(case)),
            f"{case.gbs:.1f}" if case.gbs is not None else "—",
            format_ceiling(case),
            format_goals(case.goals if trusted else []),
        ]
        if contention:
            row.append(contention_text(case))
        if comparing:
            row.append(format_change(case.compare))
        row.append(Text(case.verdict, style=VERDICT_STYLES.get(case.verdict, "")))
        table.add_row(*row)
    print_wide(console, table)
    console.print("[dim]×PyTorch: against the faster of PyTorch eager and torch.compile in the "
                  "same rounds (named); of its ceiling: the bandwidth of the memory level the "
                  "case is served from, for its mix of reads and writes (GB/s), or the cores' "
                  "multiply-add peak (GFLOP/s) when compute-bound"
                  + ("; busy: how many times slower the engine ran beside one spinning "
                     "process than alone / one call right after a NumPy GEMV on every BLAS "
                     "thread than after another engine call" if contention else "") + "[/dim]", highlight=False)
    if comparing:
        console.print(f"[dim]Δ: engine median against run {result.compared_with}; * marks a "
                      "change beyond the threshold, significant (Mann-Whitney p < 0.01) in "
                      "absolute time and relative to NumPy[/dim]", highlight=False)

    if result.models:
        render_models(result.models, console)
    encoders = getattr(result, "encoders", None) or []
    if encoders:
        render_encoders(encoders, console)
    crossovers = getattr(result, "crossovers", None) or []
    if crossovers:
        render_crossovers(crossovers, console)

    measured = [c for c in result.cases if is_measured(c) and c.speedup_vs_numpy is not None]
    if measured:
        speedups = [c.speedup_vs_numpy for c in measured]
        speedups += [c.speedup_vs_torch for c in measured if c.speedup_vs_torch is not None]
        speedups += [s for c in measured for s in c.speedup_vs_baselines.values() if s is not None]
        scale = max([1.0, *[s for s in speedups if math.isfinite(s)]])
        width = max(len(case_title(c)) for c in measured)
        console.print(f"\n[bold]engine speedup[/bold] (full bar = {scale:.2f}×; torch: the "
                      "faster variant)")
        for case in measured:
            torch_label = f"torch {torch_fastest_name(case) or ''}".strip()
            labels = [("numpy", case.speedup_vs_numpy), (torch_label, case.speedup_vs_torch),
                      *case.speedup_vs_baselines.items()]
            label_width = max(len(label) for label, _ in labels)
            for label, value in labels:
                if value is None:
                    continue
                line = Text(case_title(case).ljust(width) + f"  vs {label.ljust(label_width)}  ")
                line.append_text(speedup_bar(value, scale))
                line.append(f" {value:.2f}×")
                console.print(line)

    goals = [(case, goal) for case in result.cases if is_measured(case) for goal in case.goals]
    if goals:
        console.print("\n[bold]goals[/bold] (from the specs' bench.goals)")
        width = max(len(case_title(case)) for case, _ in goals)
        for case, goal in goals:
            line = Text(case_title(case).ljust(width) + "  ")
            line.append_text(goal_line(goal))
            console.print(line)

    compile_text = compile_seconds_text(result.cases)
    if compile_text:
        console.print(f"[dim]{compile_text}[/dim]", highlight=False)
    for case in result.cases:
        cold = cold_line(case)
        if cold and is_measured(case):
            console.print(f"[dim]{escape(cold)}[/dim]", highlight=False)
    for case in result.cases:
        if case.verdict != "ok":
            console.print(Text(f"{case_title(case)}: {case.verdict}: {case.error}",
                               style=VERDICT_STYLES.get(case.verdict, "")))
        for note in case.notes:
            console.print(f"[dim]{escape(case_title(case))}: {escape(note)}[/dim]", highlight=False)
    for note in result.notes:
        console.print(f"[dim]{escape(note)}[/dim]", highlight=False)
    for chart in result.charts:
        console.print(f"[dim]chart: {chart}[/dim]", highlight=False)
    counts = ", ".join(f"{n} {verdict}" for verdict, n in sorted(result.counts.items()))
    model_count = len(result.models) + len(encoders) + len(crossovers)
    measured_text = f"{len(result.cases)} case(s)" + (f" and {model_count} model(s)"
                                                        if model_count else "")
    console.print(f"{measured_text}: {counts or 'none'}", highlight=False)
