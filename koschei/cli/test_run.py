"""`koschei test-run`: pytest on the generated tests, with results per spec in a run record."""

from __future__ import annotations

from pathlib import Path
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

STATUS_STYLES = {"passed": "green", "skipped": "yellow", "failed": "bold red", "error": "bold red",
                 "missing": "bold red"}


@command("test-run", seed_name="test_run",
         summary="Run pytest on the generated tests (tests/engine/test_<spec>.py) and record "
                 "pass/fail/duration per spec in a run record (exit 1 on any failure).",
         example="koschei test-run -k rmsnorm --junit-xml report.xml")
def test_run(
    root: RootOption = None,
    json_output: JsonOption = False,
    select: Annotated[list[str] | None, typer.Option(
        "--select", "-k", help="Only this spec (repeat for more, or separate with commas).",
        show_default=False)] = None,
    junit_xml: Annotated[Path | None, typer.Option(
        "--junit-xml", help="Also write pytest's JUnit XML report to this file.",
        show_default=False)] = None,
) -> None:
    with handle_errors():
        from koschei.phases import test_run as phase
        from koschei.runs import RunRecord

        names = split_names(select)
        root_workspace = workspace(root)
        with RunRecord.recording(root_workspace, "test-run") as record:
            options = phase.Options(select=names or None, junit_xml=junit_xml,
                                    record_dir=record.dir)
            result = phase.run(root_workspace, options, RichProgress())
            record.save_phase("test_run", result)
        finish(result, json_output, render)


def render(result: Any, console: Console) -> None:
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    table.add_column("spec")
    table.add_column("passed", justify="right")
    table.add_column("failed", justify="right")
    table.add_column("errors", justify="right")
    table.add_column("skipped", justify="right")
    table.add_column("time", justify="right")
    table.add_column("status")
    for spec in result.specs:
        table.add_row(
            spec.spec if spec.has_spec else Text(f"{spec.spec} (no spec)", style="dim"),
            str(spec.passed),
            Text(str(spec.failed), style="red" if spec.failed else ""),
            Text(str(spec.errors), style="red" if spec.errors else ""),
            Text(str(spec.skipped), style="yellow" if spec.skipped else ""),
            f"{spec.duration_s:.2f} s",
            Text(spec.status, style=STATUS_STYLES.get(spec.status, "")),
        )
    if result.specs:
        console.print(table)
    for spec in result.specs:
        if spec.first_failure:
            console.print(Text(f"{spec.spec}: {spec.first_failure}",
                               style=STATUS_STYLES.get(spec.status, "")))
    if result.problems:
        console.print(Text("pytest output (last lines):", style="bold"))
        for line in result.output_tail:
            console.print(Text(line, style="dim"))
        for problem in result.problems:
            console.print(Text(problem, style="bold red"))
    for note in result.notes:
        console.print(f"[dim]{note}[/dim]", highlight=False)
    totals = result.totals
    passing = sum(1 for spec in result.specs if spec.ok)
    summary = Text(f"{passing}/{len(result.specs)} spec(s) ok · tests: {totals['passed']} passed, "
                   f"{totals['failed']} failed, {totals['errors']} errors, "
                   f"{totals['skipped']} skipped in {result.duration_s:.1f} s",
                   style="green" if result.ok else "bold red")
    console.print(summary)
    if result.junit_xml:
        console.print(f"[dim]JUnit report: {result.junit_xml}[/dim]", highlight=False)
