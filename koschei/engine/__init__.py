"""The engine: one generated module per spec, each exporting the function it is named after.

    from koschei.engine import rmsnorm      # the function rmsnorm(x, weight, *, eps, out)
    from koschei.engine.rmsnorm import reference   # its plain NumPy reference

Loading is lazy: ``import koschei.engine`` imports neither Numba nor any kernel module. The first
use of a name imports ``koschei.engine.<name>`` (which imports Numba and compiles its kernels, or
loads them from Numba's cache, on their first call) and hands out its function.

One mechanism keeps the names meaning functions: the package is a :class:`ModuleType` subclass
whose ``__setattr__`` turns the attribute Python's import system sets for a submodule
(``koschei.engine.rmsnorm`` = the module) into that module's function. So ``from koschei.engine
import rmsnorm`` gives the function whether or not ``koschei.engine.rmsnorm`` was imported first.
(``import koschei.engine.rmsnorm as m`` binds ``m`` through that same attribute, so it is the
function too; use ``from koschei.engine.rmsnorm import reference`` or ``importlib.import_module``
to reach the module.)

The models composed of these kernels (``KVCache``, ``Decoder``, ``DecoderConfig``; see
:mod:`koschei.engine.models`) are reachable the same lazy way: ``from koschei.engine import
Decoder`` imports ``koschei.engine.models.decoder`` on first use.

A workspace made by ``koschei init`` has its own generated modules in ``<root>/koschei/engine``;
:func:`use_workspace` puts that folder first on this package's ``__path__`` (its generated
``tests/engine/conftest.py`` does it), so those modules are the ones imported.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType


def kernel_names() -> list[str]:
    """The names of the engine's kernel modules, found on ``__path__`` (no import)."""
    names: set[str] = set()
    for folder in __path__:
        directory = Path(folder)
        if not directory.is_dir():
            continue
        for entry in directory.glob("*.py"):
            if entry.stem.isidentifier() and not entry.stem.startswith("_"):
                names.add(entry.stem)
    return sorted(names)


def _is_subpackage(name: str) -> bool:
    return any((Path(folder) / name / "__init__.py").is_file() for folder in __path__)


def model_names() -> list[str]:
    """The public names of :mod:`koschei.engine.models` (imports neither NumPy nor Numba)."""
    return list(importlib.import_module(f"{__name__}.models").__all__)


def __getattr__(name: str) -> object:
    if name == "__all__":
        return sorted({*kernel_names(), *model_names()})
    if name.startswith("_"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if not (name in kernel_names() or _is_subpackage(name)):
        if name in model_names():
            value = getattr(importlib.import_module(f"{__name__}.models"), name)
            globals()[name] = value
            return value
        raise AttributeError(f"module {__name__!r} has no attribute {name!r} (its kernels: "
                             f"{', '.join(kernel_names()) or 'none yet: run koschei code-generate'}"
                             f"; its models: {', '.join(model_names())})")
    module = importlib.import_module(f"{__name__}.{name}")
    if name not in globals():  # loaded by file location, which sets no attribute
        setattr(sys.modules[__name__], name, module)
    return globals()[name]


def _subpackages() -> list[str]:
    return sorted({entry.name for folder in __path__ if Path(folder).is_dir()
                   for entry in Path(folder).iterdir()
                   if entry.name.isidentifier() and (entry / "__init__.py").is_file()})


def __dir__() -> list[str]:
    return sorted({*kernel_names(), *_subpackages(), *model_names(), "kernel_names",
                   "model_names", "use_workspace"})


def use_workspace(root: str | Path) -> None:
    """Import kernel modules from ``<root>/koschei/engine`` before any other engine folder.

    Modules already imported from another folder that the workspace has its own version of are
    forgotten, so that the next use imports the workspace's. Nothing changes when the folder is
    this package's own."""
    folder = (Path(root) / "koschei" / "engine").resolve()
    if __path__ and Path(__path__[0]).resolve() == folder:
        return
    __path__[:] = [str(folder)] + [p for p in __path__ if Path(p).resolve() != folder]
    package = sys.modules[__name__]
    for module_name, module in list(sys.modules.items()):
        prefix, _, short = module_name.partition(f"{__name__}.")
        if prefix or not short or short.startswith("_"):
            continue
        top = short.split(".")[0]
        replaced = (folder / f"{top}.py").is_file() or (folder / top).is_dir()
        origin = getattr(module, "__file__", None)
        if replaced and (origin is None or not Path(origin).resolve().is_relative_to(folder)):
            del sys.modules[module_name]
            if "." not in short:
                package.__dict__.pop(short, None)
    importlib.invalidate_caches()


class _EnginePackage(ModuleType):
    """The package module: a submodule set as an attribute becomes the function it exports."""

    def __setattr__(self, name: str, value: object) -> None:
        if (isinstance(value, ModuleType) and value.__name__ == f"{self.__name__}.{name}"
                and callable(getattr(value, name, None))):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _EnginePackage
