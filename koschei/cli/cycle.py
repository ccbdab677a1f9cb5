"""`koschei cycle`: every phase in order into a run record, resumable, optionally in a loop."""

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
    stderr,
    workspace,
)

STATUS_STYLES = {"ok": "green", "done-before": "dim", "failed": "bold red", "error": "bold red",
                 "interrupted": "yellow", "finished": "green", "skipped": "dim"}


class CycleProgress(RichProgress):
    """Each phase on stderr as it starts and ends, with its duration; the phases' own steps
    in between."""

    def run_started(self, run_id: str, iteration: int, total: int) -> None:
        loop = f" (iteration {iteration}/{total})" if total > 1 else ""
        self.console.print(f"[bold]run {run_id}[/bold]{loop}", highlight=False)

    def phase_started(self, phase: str, index: int, total: int) -> None:
        self.close()
        self.console.print(f"[bold cyan]▶ {phase}[/bold cyan] [dim]({index}/{total})[/dim]",
                           highlight=False)

    def phase_finished(self, phase: str, status: str, duration_s: float, summary: str) -> None:
        self.close()
        mark = {"ok": "✓", "failed": "✗", "error": "✗", "interrupted": "■",
                "skipped": "–"}.get(status, "·")
        style = STATUS_STYLES.get(status, "")
        text = Text(f"{mark} {phase} {status} in {duration_s:.1f} s", style=style)
        if summary:
            text.append(f"  {summary}", style="dim")
        self.console.print(text)


@command("cycle",
         summary="Run every phase in order (pas-analyze, tech-tree, spec-create, code-generate, "
                 "test-run, benchmark, git-commit) into a run record runs/<run-id>/ with a "
                 "journal written after each phase. A failed check stops before git-commit "
                 "(exit 1). Ctrl-C stops after the current phase (twice: at once); --resume "
                 "continues a run that was stopped or killed. One cycle per workspace at a time. "
                 "--loop makes each iteration evolve the best target of pas-analyze's ranking "
                 "and commit the gain, or record that none was significant.",
         example="koschei cycle --loop --max-iterations 2 --evaluations 30")
def cycle(
    root: RootOption = None,
    json_output: JsonOption = False,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the latest unfinished run from its first phase not done, "
                         "with the options it was started with.")] = False,
    loop: Annotated[bool, typer.Option(
        "--loop", help="Run iterations that make the engine faster: each a cycle into its own "
                       "run record with an evolve step before git-commit (the target with the "
                       "most headroom to its roofline that no search of this loop has tried "
                       "since the last gain). Ends after --max-iterations, when no target is "
                       "left, or on Ctrl-C after the candidate under way.",
    )] = False,
    max_iterations: Annotated[int | None, typer.Option(
        "--max-iterations", metavar="N",
        help="How many iterations --loop runs (default 3).", show_default=False)] = None,
    select: Annotated[list[str] | None, typer.Option(
        "--select", "-k", help="Only this spec in code_generate, test_run and benchmark (repeat "
                               "for more, or separate with commas).", show_default=False)] = None,
    budget: Annotated[float | None, typer.Option(
        "--budget", help="The benchmark's timing budget per case, in seconds (default: the "
                         "benchmark's).", show_default=False)] = None,
    evaluations: Annotated[int | None, typer.Option(
        "--evaluations", metavar="N", min=1,
        help="Candidates each search of --loop evaluates at most (default: koschei evolve's).",
        show_default=False)] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Let git_commit commit even when it would refuse (see koschei "
                        "git-commit --help).")] = False,
) -> None:
    with handle_errors():
        from koschei.phases import cycle as phase

        names = split_names(select)
        if max_iterations is None:
            max_iterations = phase.DEFAULT_LOOP_ITERATIONS if loop else 1
        options = phase.Options(resume=resume, loop=loop, max_iterations=max_iterations,
                                force=force, select=names or None, budget_s=budget,
                                evaluations=evaluations)
        with CycleProgress(stderr) as progress:
            result = phase.run(workspace(root), options, progress)
        finish(result, json_output, render)


def render(result: Any, console: Console) -> None:
    for run in result.runs:
        title = f"run {run.run_id}"
        if result.max_iterations > 1:
            title += f" · iteration {run.iteration}/{result.max_iterations}"
        if run.resumed:
            title += " · resumed"
        table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False,
                      header_style="bold")
        table.add_column("phase")
        table.add_column("status")
        table.add_column("time", justify="right")
        table.add_column("result")
        for phase in run.phases:
            duration = "" if phase.status == "done-before" else f"{phase.duration_s:.1f} s"
            table.add_row(phase.phase, Text(phase.status, style=STATUS_STYLES.get(phase.status,
                                                                                  "")),
                          duration, phase.summary)
        console.print(table)
        line = Text(f"run {run.run_id}: {run.status}",
                    style=STATUS_STYLES.get(run.status, "bold red"))
        if run.failed_phase:
            line.append(f" at {run.failed_phase}")
        if run.commit:
            line.append(f" · commit {run.commit[:12]}")
        console.print(line)
    if result.ended:
        console.print(Text(f"the loop ended: {result.ended}", style="yellow"))
    if not result.ok:
        console.print(Text("the cycle stopped on a failed check: nothing after it ran "
                           "(fix it, then koschei cycle --resume or a new koschei cycle)",
                           style="bold red"))
