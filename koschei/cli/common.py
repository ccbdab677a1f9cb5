"""What every command shares: common options, output channels, errors and exit codes.

Data goes to stdout (a rich rendering, or JSON with --json); progress and diagnostics go to
stderr. A ``KoscheiError`` becomes its message on stderr and its exit code; a failed check
(``result.ok`` false) exits 1.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Self

import typer
from rich.console import Console

from koschei.errors import EXIT_CHECK_FAILED, EXIT_USAGE, KoscheiError

RootOption = Annotated[
    Path | None,
    typer.Option("--root", help="The workspace folder (default: found from the current folder).",
                 show_default=False),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON on stdout instead of a report.")
]

stdout = Console(soft_wrap=False)
stderr = Console(stderr=True)


class RichProgress:
    """Phase progress on stderr: one dim line per step, and a bar (done / total, elapsed time,
    a detail such as the best so far) for a phase that counts its work with a total. The bar
    is drawn only on a terminal; use the progress as a context manager so that it is cleared
    before the result is printed."""

    def __init__(self, console: Console = stderr):
        self.console = console
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def step(self, message: str) -> None:
        self.console.print(f"[dim]· {message}[/dim]", highlight=False)

    def advance(self, total: int | None = None, detail: str | None = None) -> None:
        if total is None:
            return
        if self._bar is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("{task.fields[detail]}"), console=self.console,
                                 transient=True)
            self._bar.start()
            self._task = self._bar.add_task("", total=total, detail="")
        self._bar.update(self._task, advance=1, total=total, detail=detail or "")

    def close(self) -> None:
        """Clear the bar (the next phase starts its own)."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = self._task = None


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def fail(error: KoscheiError) -> typer.Exit:
    stderr.print(f"[bold red]error:[/bold red] {error.message}", highlight=False, markup=True,
                 soft_wrap=True)
    if error.hint:
        stderr.print(f"[yellow]hint:[/yellow] {error.hint}", highlight=False, soft_wrap=True)
    return typer.Exit(error.exit_code)


@contextmanager
def handle_errors() -> Iterator[None]:
    """Turn koschei's errors into messages and exit codes; Ctrl-C into exit 130."""
    try:
        yield
    except KoscheiError as error:
        raise fail(error) from None
    except KeyboardInterrupt:
        stderr.print("[yellow]interrupted[/yellow]")
        raise typer.Exit(130) from None


def finish(result: Any, json_output: bool, render: Callable[[Any, Console], None]) -> None:
    """Show ``result`` (JSON or rich) and exit 1 if it says a check failed."""
    if json_output:
        print_json(result.to_dict())
    else:
        render(result, stdout)
    if not result.ok:
        raise typer.Exit(EXIT_CHECK_FAILED)


def split_names(items: list[str] | None) -> list[str]:
    """The names of a repeatable option that also takes comma-separated lists: ``-k a,b -k c``
    gives ["a", "b", "c"] (blanks dropped)."""
    return [name.strip() for item in items or [] for name in item.split(",") if name.strip()]


def workspace(root: Path | None):
    from koschei.workspace import Workspace

    return Workspace.find(root)


__all__ = [
    "EXIT_USAGE", "JsonOption", "RichProgress", "RootOption", "finish", "handle_errors",
    "print_json", "split_names", "stderr", "stdout", "workspace",
]
