"""`koschei git-commit`: commit exactly what a run wrote, with the evidence in the message."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.panel import Panel
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


@command("git-commit", seed_name="git_commit",
         summary="Commit exactly the paths a run wrote (specs it created, engine modules and "
                 "generated tests it created or updated, its run record) and nothing else you "
                 "have changed, staged or not. Refuses when the run's tests are missing or failed "
                 "(exit 1; --force overrides) and when the repository is not in a state to commit "
                 "(exit 2).",
         example="koschei git-commit --dry-run")
def git_commit(
    root: RootOption = None,
    json_output: JsonOption = False,
    run_id: Annotated[str, typer.Option(
        "--run", help="The run to commit: a run id (or a unique prefix of one), or 'latest'.",
    )] = "latest",
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="List what would be committed, with the message; commit nothing.",
    )] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Commit even when the run's tests are missing or failed, or a file it "
                        "wrote was changed since.")] = False,
) -> None:
    with handle_errors():
        from koschei.phases import git_commit as phase

        options = phase.Options(run_id=run_id, force=force, dry_run=dry_run)
        result = phase.run(workspace(root), options, RichProgress())
        finish(result, json_output, render)


def render(result: Any, console: Console) -> None:
    if result.paths:
        new = set(result.new_paths)
        table = Table(show_edge=False, pad_edge=False, header_style="bold")
        table.add_column("")
        table.add_column("path")
        for path in result.paths:
            table.add_row(Text("new", style="green") if path in new
                          else Text("modified", style="yellow"), path)
        console.print(table)
    for label, paths in (("already committed as is", result.unchanged),
                         ("ignored by .gitignore", result.ignored),
                         ("reported written but gone", result.missing)):
        if paths:
            console.print(Text(f"{label}: {', '.join(paths)}", style="dim"))
    for reason in result.forced:
        console.print(Text(f"forced: {reason}", style="bold yellow"))
    if result.message and (result.dry_run or result.commit):
        console.print(Panel(result.message.rstrip(), title="commit message", title_align="left",
                            border_style="dim", expand=False), highlight=False)
    if result.commit:
        branch = f" on {result.branch}" if result.branch else ""
        console.print(Text(f"committed {len(result.paths)} file(s) of run {result.run_id} as "
                           f"{result.commit[:12]}{branch}", style="green"))
    elif result.dry_run and result.paths:
        console.print(Text(f"dry run: would commit {len(result.paths)} file(s) of run "
                           f"{result.run_id}; nothing was committed", style="yellow"))
    else:
        console.print(Text(result.skipped or "nothing committed", style="yellow"))
