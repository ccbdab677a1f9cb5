"""The Typer application and the decorator every command module registers itself with."""

from __future__ import annotations

from collections.abc import Callable

import typer

app = typer.Typer(
    name="koschei",
    help=(
        "Run the Koschei cycle over a library of CPU kernels for small language models:\n\n"
        "pas_analyze -> tech_tree -> spec_create -> code_generate -> test_run -> benchmark -> "
        "git_commit -> loop\n\n"
        "Each phase is a command (also reachable by its seed name, e.g. `koschei pas_analyze`). "
        "Exit codes: 0 success, 1 a check failed, 2 usage or spec error."
    ),
    epilog="Example: koschei init ~/kernels && cd ~/kernels && koschei cycle",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def command(name: str, *, summary: str, example: str, seed_name: str | None = None) -> Callable:
    """Register a command under ``name`` (and, hidden from --help, under its seed name).

    ``summary`` is the help text; ``example`` ends every help page.
    """

    def register(function: Callable) -> Callable:
        options = {"help": summary, "epilog": f"Example: {example}"}
        app.command(name, **options)(function)
        if seed_name and seed_name != name:
            app.command(seed_name, hidden=True, **options)(function)
        return function

    return register
