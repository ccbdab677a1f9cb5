"""`koschei init DIR`: a new workspace with the bundled specs, a git repository and a first commit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from koschei.cli.app import command
from koschei.cli.common import handle_errors, stdout


@command("init",
         summary="Create a workspace in DIR: the bundled specs, koschei.toml, a .gitignore, "
                 "runs/ and tests/engine/, a git repository (branch main) and a first commit. "
                 "Refuses a folder that already is a workspace.",
         example="koschei init ~/kernels && cd ~/kernels && koschei cycle")
def init(
    directory: Annotated[Path, typer.Argument(
        help="The folder to create (or an empty one, or an existing project to add a "
             "workspace to).", show_default=False)],
    no_git: Annotated[bool, typer.Option(
        "--no-git", help="Make no git repository and no commit.")] = False,
) -> None:
    with handle_errors():
        from koschei.workspace_init import init_workspace

        created = init_workspace(directory, git=not no_git)
        specs = sorted(created.joinpath("specs").rglob("*.yaml"))
        lines = [
            Text(f"created the workspace {created}", style="green"),
            f"  specs/         {len(specs)} spec(s), from the bundled library",
            "  koschei.toml   marks the workspace",
            "  runs/          run records; tests/engine/ generated tests",
        ]
        if not no_git:
            lines.append('  git            committed as "koschei: new workspace"')
        lines.append(f"next: cd {created} && koschei cycle")
        for line in lines:
            stdout.print(line, highlight=False, soft_wrap=True)
