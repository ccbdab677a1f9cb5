"""`koschei tech-tree`: the technology tree of all specs, or its Mermaid / DOT / JSON export.

Never imports Numba: the phase reads specs and run records only.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from koschei.cli.app import command
from koschei.cli.common import (
    JsonOption,
    RichProgress,
    RootOption,
    finish,
    handle_errors,
    workspace,
)

STATUS_BADGES = {"implemented": ("✓", "bold green"), "composed": ("◆", "bold blue"),
                 "provided": ("↪", "bold green"), "planned": ("○", "dim")}


@command("tech-tree", seed_name="tech_tree",
         summary="Show the technology tree of all specs by tier, with status (implemented ✓ / "
                 "composed ◆ / provided by another spec's code ↪ / planned ○) and headline figures "
                 "from the latest benchmark, or export it as Mermaid, DOT or JSON.",
         example="koschei tech-tree --format mermaid > tree.mmd")
def tech_tree(
    root: RootOption = None,
    json_output: JsonOption = False,
    output_format: Annotated[str, typer.Option(
        "--format", "-f", help="tree (rich, by tier), mermaid, dot or json (plain text).",
        metavar="tree|mermaid|dot|json")] = "tree",
    select: Annotated[str | None, typer.Option(
        "--select", "-k", help="A spec name or alias (with what it requires and what requires "
                               "it), or a tier.", show_default=False)] = None,
) -> None:
    with handle_errors():
        from koschei.errors import UsageError
        from koschei.phases import tech_tree as phase

        if output_format not in phase.FORMATS:
            raise UsageError(f"--format {output_format}: expected one of "
                             f"{', '.join(phase.FORMATS)}")
        result = phase.run(workspace(root),
                           phase.Options(format=output_format, select=select),  # type: ignore[arg-type]
                           RichProgress())
        if result.export is not None and not json_output:
            sys.stdout.write(result.export)
            sys.stdout.flush()
            return
        finish(result, json_output, render)


def node_label(node: Any) -> Text:
    mark, style = STATUS_BADGES[node.status]
    label = Text()
    label.append(f"{mark} ", style=style)
    label.append(node.name, style="" if node.status == "planned" else "bold")
    label.append(f"  {node.title}")
    if node.composition:
        label.append(f"  = koschei.engine.{node.composition}", style="blue")
    if node.provided_by:
        label.append(f"  provided by {node.provided_by}: {node.provided_how}", style="green")
    if node.aliases:
        label.append(f"  ({', '.join(node.aliases)})", style="dim")
    if node.headline:
        label.append(f"  {node.headline}", style="cyan")
    if node.requires:
        label.append(f"  ← {', '.join(node.requires)}", style="dim")
    return label


def render(result: Any, console: Console) -> None:
    counts = result.counts
    title = Text("technology tree", style="bold")
    provided = f"{counts['provided']} provided ↪, " if counts.get("provided") else ""
    title.append(f"  {counts['total']} specs: {counts['implemented']} implemented ✓, "
                 f"{counts['composed']} composed ◆, {provided}{counts['planned']} planned ○",
                 style="")
    if result.selected:
        title.append(f"  (selected: {result.selected})", style="dim")
    tree = Tree(title)
    for tier in result.tiers:
        tier_counts = counts["by_tier"][tier]
        done = sum(tier_counts[status] for status in ("implemented", "composed", "provided"))
        total = sum(tier_counts.values())
        branch = tree.add(Text.assemble((tier, "bold magenta"), (f"  {done}/{total} implemented",
                                                                  "dim")))
        for node in result.nodes:
            if node.tier == tier:
                branch.add(node_label(node))
    console.print(tree)
    if result.benchmark_run:
        console.print(f"[dim]headline figures from run {result.benchmark_run}[/dim]",
                      highlight=False)
