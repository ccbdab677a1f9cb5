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
) -> None:
    with handle_errors():
        from koschei.phases import evolve as phase

        names = split_names(only)
        from koschei.runs import RunRecord

        root_workspace = workspace(root)
        with RunRecord.recording(root_workspace, "evolve") as record:
            options = phase.Options(spec=spec, case=case, strategy=strategy,
                                    max_evaluations=max_evaluations, budget_s=budget, seed=seed,
                                    only=names or None, threads=threads, min_gain=min_gain,
                                    timeout_s=timeout, apply=not dry_run, record_dir=record.dir)
            result = phase.run(root_workspace, options, RichProgress())
            record.save_phase("evolve", result)
        finish(result, json_output, render)


def _values(config: dict[str, Any], searched: list[str]) -> str:
    return ", ".join(f"{name}={config[name]}" for name in searched if name in config)


def render(result: Any, console: Console) -> None:
    console.print(f"evolve {result.spec}/{result.case} · {result.strategy} (seed {result.seed}) "
                  f"over {', '.join(result.searched) or 'nothing'} · {result.space_size} "
                  f"configuration(s) · {result.threads} thread(s) · machine {result.fingerprint}",
                  highlight=False)
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
    console.print(Text(result.summary(), style=VERDICT_STYLES.get(result.verdict, "")))
    if result.chart:
        console.print(f"chart: {result.chart}", highlight=False)
    if result.tuned_values_file:
        console.print(f"kept in {result.tuned_values_file}; tests: {result.tests}",
                      highlight=False)
