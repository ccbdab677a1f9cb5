"""`koschei evolve SPEC`: search a spec's tunables for a faster configuration that is still
correct, and keep it only when the gain is significant."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

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

VERDICT_STYLES = {"improved": "bold green", "no_significant_gain": "yellow",
                  "no_valid_candidate": "red", "tests_failed": "bold red"}


@command("evolve",
         summary="Search SPEC's tunables on one of its bench cases: each candidate rendered, "
                 "compiled, checked against the reference and timed beside the defaults in a "
                 "process of its own; every result kept in runs/tuning/ (a repeated or "
                 "interrupted search measures nothing twice). The best is re-measured beside "
                 "the current configuration and kept (tuning/<machine>.json, then the spec is "
                 "rendered again and its tests run) only when it is faster by --min-gain with "
                 "p < 0.002 (Mann-Whitney U).",
         example="koschei evolve matmul --case encoder_128x384x1536 --max-evaluations 30")
def evolve(
    spec: Annotated[str, typer.Argument(help="The spec to tune.", show_default=False)],
    root: RootOption = None,
    json_output: JsonOption = False,
    case: Annotated[str | None, typer.Option(
        "--case", help="The bench case to tune for (default: the spec's first).",
        show_default=False)] = None,
    strategy: Annotated[str, typer.Option(
        "--strategy", help="exhaustive, random, genetic, tpe, or auto (exhaustive when the "
                           "space fits in --max-evaluations, else tpe).")] = "auto",
    max_evaluations: Annotated[int, typer.Option(
        "--max-evaluations", min=1, help="Candidates to evaluate at most (cache hits "
                                         "included).")] = 40,
    budget: Annotated[float | None, typer.Option(
        "--budget", min=0.0, help="Stop proposing candidates after this many seconds.",
        show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Makes a search reproducible.")] = 0,
    only: Annotated[list[str] | None, typer.Option(
        "--only", "-t", help="Search only this tunable (repeat, or separate with commas); the "
                             "others stay as they are.", show_default=False)] = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, help="Threads for the kernels (default: all cores).",
        show_default=False)] = None,
    min_gain: Annotated[float, typer.Option(
        "--min-gain", min=0.0, help="The smallest gain kept, as a fraction (0.02: 2%).")] = 0.02,
    timeout: Annotated[float, typer.Option(
        "--timeout", min=1.0, help="Seconds a candidate may take (compile, check and timing) "
                                   "before it is killed.")] = 300.0,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Search and confirm, but keep nothing (no tuning file, no "
                          "regeneration).")] = False,
    scheduler: Annotated[str | None, typer.Option(
        "--scheduler", metavar="ADDRESS",
        help="Evaluate the candidates on the workers of this Dask scheduler "
             "(tcp://HOST:8786), one per worker at a time; the workers must be of one kind of "
             "machine, whose fingerprint keys the results and the tuning file. Needs "
             "pip install 'koschei[distributed]' here and on the workers.",
        show_default=False)] = None,
    replay: Annotated[bool, typer.Option(
        "--replay", help="Measure nothing: replay the random, genetic and tpe strategies, "
                         "--seeds of each, on this machine's log of a complete exhaustive "
                         "search of the space (same --case and --only), and report after how "
                         "many evaluations each was within 5% of the optimum and at it.")] = False,
    seeds: Annotated[int, typer.Option(
        "--seeds", min=1, help="How many seeds --replay runs per strategy.")] = 5,
) -> None:
    with handle_errors():
        from koschei.phases import evolve as phase
        from koschei.runs import RunRecord

        names = split_names(only)
        root_workspace = workspace(root)
        if replay:
            options = phase.Options(spec=spec, case=case, only=names or None)
            finish(phase.replay(root_workspace, options, tuple(range(seeds))), json_output,
                   render_replay)
            return
        with RunRecord.recording(root_workspace, "evolve") as record:
            options = phase.Options(spec=spec, case=case, strategy=strategy,
                                    max_evaluations=max_evaluations, budget_s=budget, seed=seed,
                                    only=names or None, threads=threads, min_gain=min_gain,
                                    timeout_s=timeout, apply=not dry_run, record_dir=record.dir,
                                    scheduler=scheduler)
            with RichProgress() as progress:
                result = phase.run(root_workspace, options, progress)
            record.save_phase("evolve", result)
        finish(result, json_output, render)


def render_replay(result: Any, console: Console) -> None:
    study = result.study
    optimum = ", ".join(f"{name}={study.optimum_config[name]}" for name in result.searched)
    default = (f"×{study.default_objective:.3f}" if study.default_objective is not None
               else "failed")
    console.print(f"replay of {result.spec}/{result.case} over {', '.join(result.searched)}: "
                  f"{study.configurations} configurations ({study.failures} failed) from "
                  f"{result.cache_file}, measured nothing", highlight=False)
    console.print(f"optimum ×{study.optimum:.3f} of the defaults' time with {optimum}; the "
                  f"defaults {default}", highlight=False)
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    table.add_column("strategy")
    table.add_column(f"evaluations to within {study.tolerance:.0%} (median)", justify="right")
    table.add_column("share of the exhaustive search", justify="right")
    table.add_column("to the optimum (median)", justify="right")
    table.add_column("per seed: within / optimum")

    def count(value: float | None) -> str:
        return "never" if value is None else f"{value:g}"

    for row in study.strategies:
        share = (f"{row.fraction_to_within:.0%}" if row.fraction_to_within is not None
                 else "—")
        seeds = "  ".join(f"{count(a)}/{count(b)}"
                          for a, b in zip(row.to_within, row.to_optimum, strict=True))
        table.add_row(row.strategy, count(row.median_to_within), share,
                      count(row.median_to_optimum), seeds)
    console.print(table)
    console.print(f"[dim]seeds {', '.join(map(str, study.seeds))}; each replay may use up to "
                  f"{study.max_evaluations} evaluations; 'never': not within that[/dim]",
                  highlight=False)


def _values(config: dict[str, Any], searched: list[str]) -> str:
    return ", ".join(f"{name}={config[name]}" for name in searched if name in config)


def render(result: Any, console: Console) -> None:
    console.print(f"evolve {result.spec}/{result.case} · {result.strategy} (seed {result.seed}) "
                  f"over {', '.join(result.searched) or 'nothing'} · {result.space_size} "
                  f"configuration(s) · {result.threads} thread(s) · machine {result.fingerprint}"
                  + (f" · {len(result.workers)} worker(s) of {result.scheduler}"
                     if result.scheduler else ""), highlight=False)
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    table.add_column("#", justify="right")
    table.add_column("tunables")
    table.add_column("× defaults' time", justify="right")
    table.add_column("verdict")
    best = (result.best or {}).get("tunables")
    for index, record in enumerate(result.evaluations, start=1):
        ratio = f"{record.ratio:.3f}" if record.ratio is not None else "—"
        verdict = record.verdict + (" (cached)" if record.cached else "")
        if record.reason and record.verdict != "ok":
            verdict += f": {record.reason}"
        style = "bold" if record.tunables == best else ""
        table.add_row(str(index), _values(record.tunables, result.searched), ratio,
                      Text(verdict, style=style or ("dim" if record.cached else "")))
    console.print(table)
    failed = ", ".join(f"{count} {verdict}" for verdict, count in result.failures.items())
    console.print(f"{len(result.evaluations)} evaluation(s): {result.measured} measured, "
                  f"{result.cache_hits} from {result.cache_file}"
                  + (f"; failed: {failed}" if failed else "") + f"; stopped: {result.stopped}",
                  highlight=False)
    if result.confirmation:
        c = result.confirmation
        before, after = c["incumbent_median_s"] * 1e3, c["candidate_median_s"] * 1e3
        console.print(f"confirmation beside the current configuration: {before:.3f} ms → "
                      f"{after:.3f} ms ({c['gain']:+.1%}), p = {c['p_value']:.2g} over "
                      f"{c['samples']} samples each", highlight=False)
    for other in result.other_cases:
        console.print(f"on {other['case']}: {other['gain']:+.1%} (p = "
                      f"{other['p_value_slower']:.2g} that it is slower)", highlight=False)
    console.print(Text(result.summary(), style=VERDICT_STYLES.get(result.verdict, "")))
    if result.chart:
        console.print(f"chart: {result.chart}", highlight=False)
    if result.tuned_values_file:
        console.print(f"kept in {result.tuned_values_file}; tests: {result.tests}",
                      highlight=False)
