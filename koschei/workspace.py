"""Workspaces: the folder koschei works in.

A workspace holds ``specs/`` (one YAML file per technique, in tier folders), optionally
``templates/`` (the bundled templates are used when it is absent), the generated engine modules
in ``koschei/engine/``, the generated tests in ``tests/engine/`` and the run records in
``runs/``. It is found by walking up from the current folder to the first folder that has a
``specs/`` folder and a ``koschei.toml`` or ``pyproject.toml``; ``--root`` names it directly.
This repository is itself a workspace.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from koschei.errors import UsageError

MARKERS = ("koschei.toml", "pyproject.toml")


def bundled_path(kind: str) -> Path:
    """The folder of bundled ``specs`` or ``templates`` shipped with the package.

    A wheel carries them in ``koschei/_bundled/``; a source checkout (editable install) has them
    at the top of the repository, one folder above the package.
    """
    if kind not in ("specs", "templates"):
        raise ValueError(f"bundled_path: kind must be 'specs' or 'templates', got {kind!r}")
    packaged = Path(str(resources.files("koschei"))) / "_bundled" / kind
    if packaged.is_dir():
        return packaged
    source_tree = Path(__file__).resolve().parent.parent / kind
    if source_tree.is_dir():
        return source_tree
    raise UsageError(f"the bundled {kind} are missing from this koschei installation",
                     hint="reinstall koschei")


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def specs_dir(self) -> Path:
        return self.root / "specs"

    @property
    def templates_dir(self) -> Path:
        own = self.root / "templates"
        return own if own.is_dir() else bundled_path("templates")

    @property
    def engine_dir(self) -> Path:
        return self.root / "koschei" / "engine"

    @property
    def tests_dir(self) -> Path:
        return self.root / "tests" / "engine"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def relative(self, path: Path) -> str:
        """``path`` relative to the workspace root, in POSIX form, for messages and records."""
        try:
            return Path(path).resolve().relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def inside(self, path: Path) -> Path:
        """Resolve ``path`` and insist that it stays inside the workspace."""
        resolved = (self.root / path).resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise UsageError(f"refusing to touch {path}: it is outside the workspace {self.root}")
        return resolved

    @classmethod
    def find(cls, root: Path | None = None, start: Path | None = None) -> Workspace:
        """The workspace at ``root``, or the nearest one at or above ``start`` (default: cwd)."""
        if root is not None:
            root = Path(root).resolve()
            if not (root / "specs").is_dir():
                raise UsageError(f"{root} is not a koschei workspace (it has no specs/ folder)",
                                 hint=f"create one with: koschei init {root}")
            return cls(root)
        here = Path(start or Path.cwd()).resolve()
        for folder in (here, *here.parents):
            if (folder / "specs").is_dir() and any((folder / m).is_file() for m in MARKERS):
                return cls(folder)
        raise UsageError(f"no koschei workspace at or above {here}",
                         hint="run inside a workspace, pass --root DIR, or create one with: koschei init DIR")
