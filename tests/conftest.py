"""Fixtures shared by the toolchain tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def engine_path_restored():
    """The benchmark points ``koschei.engine`` at each test workspace's engine folder; put the
    package's own path back afterwards and forget the modules imported from elsewhere."""
    import koschei.engine

    saved = list(koschei.engine.__path__)
    yield
    koschei.engine.__path__[:] = saved
    for name, module in list(sys.modules.items()):
        if name.startswith("koschei.engine.") and not name.startswith("koschei.engine._"):
            origin = str(Path(getattr(module, "__file__", "") or "").resolve())
            if not any(origin.startswith(str(Path(folder).resolve())) for folder in saved):
                del sys.modules[name]
                koschei.engine.__dict__.pop(name.rpartition(".")[2], None)
