"""The ``koschei`` command line: one module per command, each thin (parse, call a phase, render).

Command modules import their phase inside the command function, so ``koschei --help`` and
``koschei tech-tree`` never import numba.
"""

from __future__ import annotations

import importlib
import os

# Before anything loads NumPy's OpenBLAS: its idle threads then sleep right after a call instead
# of spinning for ~0.1 s (2^28 cycles), which took a core from whatever ran next (a parallel
# kernel right after a BLAS call ran 5-17x slower). The benchmark gives NumPy's BLAS as many
# threads as every other contender only when they do not spin. A value of the user's stays.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from koschei.cli.app import app

COMMAND_MODULES = (
    "init",
    "pas_analyze",
    "tech_tree",
    "spec_create",
    "code_generate",
    "test_run",
    "benchmark",
    "evolve",
    "git_commit",
    "cycle",
)

for _module in COMMAND_MODULES:
    importlib.import_module(f"koschei.cli.{_module}")


def main() -> None:
    app()
