"""`koschei pas-analyze`: claims against measurements, predicted gains, and what to do next."""

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
    workspace,
)

VERDICT_STYLES = {"confirmed": "bold green", "partly": "yellow", "refuted": "bold red",
                  "unmeasured": "dim"}
CONFIDENCE_STYLES = {"none": "dim", "low": "yellow", "medium": "cyan", "high": "green"}
ACTION_STYLES = {"fix_tests": "bold red", "fix_benchmark": "bold red", "generate": "red",
                 "test": "yellow", "benchmark": "yellow", "implement": "cyan", "retune": "magenta"}


@command("pas-analyze", seed_name="pas_analyze",
         summary="Check every spec's claims against this machine's measurements (confirmed, "
                 "partly, refuted, unmeasured), predict gains of planned specs with a stated "
                 "confidence, and rank what the next iteration should do.",
         example="koschei pas-analyze --all --top 30")
def pas_analyze(
    root: RootOption = None,
    json_output: JsonOption = False,
    show_all: Annotated[bool, typer.Option(
        "--all", help="Also list the claims of planned specs (unmeasured until implemented, "
                      "with what would measure them) and the predictions for specs whose "
                      "requirements are not implemented yet.",
    )] = False,
    top: Annotated[int, typer.Option("--top", help="How many next steps to show.", min=1)] = 15,
    retune_below: Annotated[float, typer.Option(
        "--retune-below", help="Propose re-tuning kernels below this fraction of the roofline.",
        min=0.0, max=1.0)] = 0.5,
) -> None:
    with handle_errors():
        from koschei.phases import pas_analyze as phase

        result = phase.run(workspace(root), phase.Options(retune_below=retune_below),
                           RichProgress())
        finish(result, json_output,
               lambda result, console: render(result, console, show_all=show_all, top=top))


def _factor(value: float | None, unit: str = "x") -> str:
    if value is None:
        return "—"
    if unit.strip().lower() == "exponent":
        return f"{value:.2f} exponent"
    return f"×{value:,.0f}" if value >= 100 else f"×{value:.2f}"


def _claimed(value: float, unit: str) -> str:
    return f"×{value:g}" if unit.strip().lower() in ("x", "×") else f"{value:g} {unit}"


def render(result: Any, console: Console, *, show_all: bool = False, top: int = 15) -> None:
    shown = [c for c in result.claims if show_all or c.status != "planned"]
    hidden = len(result.claims) - len(shown)
    claims = Table(title="claims vs this machine", title_justify="left", show_edge=False,
                   pad_edge=False, header_style="bold", title_style="bold")
    claims.add_column("spec", no_wrap=True)
    claims.add_column("claim")
    claims.add_column("claimed", justify="right", no_wrap=True)
    claims.add_column("measured", justify="right", no_wrap=True)
    claims.add_column("verdict", no_wrap=True)
    claims.add_column("how / why not", ratio=1)
    for claim in shown:
        claims.add_row(
            claim.spec,
            f"{claim.metric} vs {claim.baseline}",
            _claimed(claim.claimed, claim.unit),
            _factor(claim.measured_factor, claim.unit),
            Text(claim.verdict, style=VERDICT_STYLES[claim.verdict]),
            Text(claim.detail, style="dim"),
        )
    if shown:
        console.print(claims)
        measured_in = sorted({claim.run for claim in shown if claim.run})
        if measured_in:
            console.print(f"[dim]measured in run(s) {', '.join(measured_in)}[/dim]",
                          highlight=False)
    verdicts = result.verdicts
    line = Text(f"{len(result.claims)} claim(s): ")
    for index, (verdict, count) in enumerate(verdicts.items()):
        line.append(f"{count} {verdict}", style=VERDICT_STYLES[verdict])
        if index < len(verdicts) - 1:
            line.append(", ")
    if hidden:
        line.append(f"  ({hidden} claims of planned specs not shown: --all)", style="dim")
    console.print(line)

    predicted = [p for p in result.predictions if show_all or p.ready]
    if predicted:
        predictions = Table(title="predicted gains of planned specs", title_justify="left",
                            show_edge=False, pad_edge=False, header_style="bold",
                            title_style="bold")
        predictions.add_column("spec", no_wrap=True)
        predictions.add_column("claim")
        predictions.add_column("claimed", justify="right", no_wrap=True)
        predictions.add_column("predicted", justify="right", no_wrap=True)
        predictions.add_column("confidence", no_wrap=True)
        predictions.add_column("ready")
        for prediction in predicted:
            ready = Text("yes", style="green") if prediction.ready else Text(
                "needs " + ", ".join(prediction.missing_requires), style="dim")
            predictions.add_row(
                prediction.spec, f"{prediction.metric} vs {prediction.baseline}",
                _factor(prediction.claimed_factor), _factor(prediction.predicted_factor),
                Text(f"{prediction.confidence_label} {prediction.confidence:.2f}",
                     style=CONFIDENCE_STYLES[prediction.confidence_label]),
                ready)
        console.print()
        console.print(predictions)
        waiting = len(result.predictions) - len(predicted)
        if waiting:
            console.print(f"[dim]{waiting} prediction(s) for specs whose requirements are not "
                          "implemented yet not shown: --all[/dim]", highlight=False)
        for kind, found in result.evidence.items():
            if found["n"]:
                console.print(
                    f"[dim]{kind}: {found['n']} claim(s) measured here realized a median "
                    f"{found['median_realization']:.2f} of their claimed gain (log scale); "
                    f"predictions of {kind} claims are discounted by it[/dim]", highlight=False)
            else:
                console.print(f"[dim]{kind}: no claim measured here yet: predictions are the "
                              "papers' figures, unverified (confidence none)[/dim]",
                              highlight=False)

    console.print()
    if result.next_steps:
        steps = Table(title="next steps", title_justify="left", show_edge=False, pad_edge=False,
                      header_style="bold", title_style="bold")
        steps.add_column("#", justify="right", no_wrap=True)
        steps.add_column("action", no_wrap=True)
        steps.add_column("spec", no_wrap=True)
        steps.add_column("why, and how", ratio=1)
        for step in result.next_steps[:top]:
            why = Text(step.reason)
            why.append(f"\n{step.command}", style="dim")
            steps.add_row(str(step.rank),
                          Text(step.action.replace("_", " "),
                               style=ACTION_STYLES.get(step.action, "")),
                          step.spec, why)
        console.print(steps)
        if len(result.next_steps) > top:
            console.print(f"[dim]… {len(result.next_steps) - top} more (--top N, or --json)[/dim]",
                          highlight=False)
    else:
        console.print("[green]nothing to do: every spec is implemented, tested and measured[/green]")
    if result.evolve_targets:
        targets = Table(title="evolve targets (what koschei cycle --loop tunes next)",
                        title_justify="left", show_edge=False, pad_edge=False,
                        header_style="bold", title_style="bold")
        for column in ("spec", "case"):
            targets.add_column(column, no_wrap=True)
        targets.add_column("roofline", justify="right", no_wrap=True)
        targets.add_column("searches", justify="right", no_wrap=True)
        targets.add_column("score", justify="right", no_wrap=True)
        targets.add_column("why", ratio=1)
        for target in result.evolve_targets[:top]:
            targets.add_row(target.spec, target.case, f"{target.roofline_fraction:.0%}",
                            str(target.searches), f"{target.score:.2f}",
                            Text(target.reason, style="dim" if not target.score else ""))
        console.print(targets)
    runs = result.benchmark_runs
    console.print(f"[dim]benchmark runs read: {len(runs)}"
                  + (f" (latest {runs[-1]})" if runs else "")
                  + f"; latest test run: {result.test_run or 'none'}[/dim]", highlight=False)
    for note in result.notes:
        console.print(f"[dim]{note}[/dim]", highlight=False)
