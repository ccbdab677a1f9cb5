"""`koschei code-generate`: render the implemented specs into engine modules and their tests."""

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

ACTION_STYLES = {"create": "green", "update": "yellow", "identical": "dim"}


@command("code-generate", seed_name="code_generate",
         summary="Render every implemented spec into its engine module (koschei/engine/<name>.py) "
                 "and tests (tests/engine/test_<name>.py), reporting create / identical / update "
                 "per file. Output is deterministic; --check writes nothing and exits 1 when any "
                 "file would change.",
         example="koschei code-generate --check")
def code_generate(
    root: RootOption = None,
    json_output: JsonOption = False,
    check: Annotated[bool, typer.Option(
        "--check", help="Write nothing; exit 1 if any generated file would change (for CI).")
    ] = False,
    only: Annotated[list[str] | None, typer.Option(
        "--only", "-k", help="Only this spec (repeat for more, or separate with commas).",
        show_default=False)] = None,
) -> None:
    with handle_errors():
        from koschei.phases import code_generate as phase

        names = split_names(only)
        result = phase.run(workspace(root), phase.Options(check=check, only=names or None),
                           RichProgress())
        finish(result, json_output, render)


def render(result: Any, console: Console) -> None:
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    table.add_column("file")
    table.add_column("spec")
    table.add_column("action")
    for file in result.files:
        style = ACTION_STYLES.get(file.action, "")
        action = file.action if not result.check or file.action == "identical" else \
            f"would {file.action}"
        table.add_row(file.path, file.spec or "", Text(action, style=style))
    console.print(table)
    counts = result.counts
    summary = ", ".join(f"{counts[action]} {action}" for action in ("create", "update", "identical")
                        if counts[action])
    if result.check:
        if result.drift:
            console.print(Text(f"{len(result.drift)} generated file(s) out of date ({summary}): "
                               "run `koschei code-generate`", style="bold red"))
        else:
            console.print(Text(f"up to date: {summary}", style="green"))
    else:
        console.print(f"{summary}; wrote {len(result.written)} file(s)")
    for orphan in result.orphans:
        console.print(Text(f"{orphan}: generated, but no implemented spec has its name any more "
                           "(left in place; delete it if the spec is gone for good)",
                           style="yellow"))
