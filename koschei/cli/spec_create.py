"""`koschei spec-create`: scaffold a new spec, or list the spec set with status and sha256."""

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


@command("spec-create", seed_name="spec_create",
         summary="Scaffold specs/TIER/NAME.yaml: a spec that validates and renders, with its "
                 "reference and tests marked TO FILL IN (its generated tests fail until they are "
                 "filled in). Without NAME: list every spec with its status and sha256.",
         example="koschei spec-create geglu --family rowwise --tier ffn")
def spec_create(
    name: Annotated[str | None, typer.Argument(
        help="The new spec's name: a Python identifier (module and function name).",
        show_default=False)] = None,
    root: RootOption = None,
    json_output: JsonOption = False,
    family: Annotated[str | None, typer.Option(
        "--family", help="The template family (templates/families/<family>.py.j2; "
                         "default: custom).", show_default=False)] = None,
    tier: Annotated[str | None, typer.Option(
        "--tier", help="The tier folder under specs/ (default: foundation).",
        show_default=False)] = None,
    title: Annotated[str | None, typer.Option(
        "--title", help="A one-line title (default: the name in words).",
        show_default=False)] = None,
) -> None:
    with handle_errors():
        from koschei.phases import spec_create as phase

        options = phase.Options(name=name, family=family, tier=tier, title=title)
        finish(phase.run(workspace(root), options, RichProgress()), json_output, render)


def render(result: Any, console: Console) -> None:
    if result.created:
        for path in result.created:
            console.print(Text(f"created {path}", style="green"))
        for step in result.next_steps:
            console.print(f"  next: {step}")
        return
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    for column in ("spec", "tier", "status", "family", "file", "sha256"):
        table.add_column(column)
    for spec in result.specs:
        table.add_row(spec.name, spec.tier,
                      Text(spec.status, style="green" if spec.status == "implemented" else "dim"),
                      spec.family or "", spec.path, spec.sha256[:12])
    console.print(table)
    implemented = sum(1 for spec in result.specs if spec.status == "implemented")
    console.print(f"{len(result.specs)} specs: {implemented} implemented, "
                  f"{len(result.specs) - implemented} planned")
