"""The ``koschei`` command line: one module per command, each thin (parse, call a phase, render).

Command modules import their phase inside the command function, so ``koschei --help`` and
``koschei tech-tree`` never import numba.
"""

from __future__ import annotations

import importlib

from koschei.cli.app import app

COMMAND_MODULES = (
    "init",
    "pas_analyze",
    "tech_tree",
    "spec_create",
    "code_generate",
    "test_run",
    "benchmark",
    "git_commit",
    "cycle",
)

for _module in COMMAND_MODULES:
    importlib.import_module(f"koschei.cli.{_module}")


def main() -> None:
    app()
