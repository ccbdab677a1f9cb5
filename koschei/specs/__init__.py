"""Specs: loading with line numbers, validation, and the technology graph.

``load_specs(workspace)`` reads every ``specs/<tier>/<name>.yaml`` of a workspace, validates each
file (YAML, schema, checks across fields) and the set (unique names and aliases, requirements
that exist, no cycles), and returns a :class:`SpecSet` that iterates in topological order —
requirements first. Any problem in any file raises one :class:`koschei.errors.SpecError` listing
all of them as ``specs/foundation/rmsnorm.yaml:14: tunables.parallel: expected ...``.
``load_spec_text(text, relpath)`` validates one spec that travels without its workspace (the
evaluation of a candidate, possibly on another machine) as ``load_spec_file`` validates a file.

Importing this package is cheap: PyYAML, pydantic and the schema; never Numba.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

from koschei.errors import SpecError, SpecIssue, UsageError
from koschei.specs import graph
from koschei.specs.graph import TIER_ORDER, find_cycles, tier_rank, topological_order
from koschei.specs.load import LoadedSpec, parse_spec
from koschei.specs.validate import check_set, check_spec
from koschei.workspace import Workspace

__all__ = [
    "TIER_ORDER",
    "LoadedSpec",
    "SpecSet",
    "check_set",
    "check_spec",
    "find_cycles",
    "graph",
    "load_spec_file",
    "load_spec_text",
    "load_specs",
    "parse_spec",
    "spec_files",
    "tier_rank",
    "topological_order",
]


class SpecSet:
    """All specs of a workspace, validated, in topological order (requirements first; ties by
    tier, then name)."""

    def __init__(self, specs: Sequence[LoadedSpec]):
        by_name = {loaded.name: loaded for loaded in specs}
        order = topological_order({name: loaded.spec.requires for name, loaded in by_name.items()},
                                  {name: loaded.tier for name, loaded in by_name.items()})
        self._specs = [by_name[name] for name in order]
        self._by_name = by_name
        self._aliases = {alias: loaded.name for loaded in specs for alias in loaded.spec.aliases}

    def __iter__(self) -> Iterator[LoadedSpec]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name or name in self._aliases

    def __getitem__(self, name: str) -> LoadedSpec:
        loaded = self.get(name)
        if loaded is None:
            raise KeyError(f"no spec named {name!r}")
        return loaded

    def __repr__(self) -> str:
        return f"SpecSet({len(self)} specs: {', '.join(self.names())})"

    def get(self, name: str) -> LoadedSpec | None:
        """The spec named ``name`` (or with ``name`` among its aliases), else None."""
        loaded = self._by_name.get(name)
        if loaded is None and name in self._aliases:
            loaded = self._by_name[self._aliases[name]]
        return loaded

    def resolve(self, name: str) -> str | None:
        """The spec name for a name or alias, else None."""
        loaded = self.get(name)
        return loaded.name if loaded is not None else None

    def names(self) -> list[str]:
        """Every spec's name, in topological order."""
        return [loaded.name for loaded in self._specs]

    def implemented(self) -> list[LoadedSpec]:
        """The specs with a kernel, in topological order."""
        return [loaded for loaded in self._specs if loaded.spec.kernel is not None]

    def planned(self) -> list[LoadedSpec]:
        """The specs without a kernel (identity and claims only), in topological order."""
        return [loaded for loaded in self._specs if loaded.spec.kernel is None]

    def tiers(self) -> list[str]:
        """The tiers present, in tier order."""
        return sorted({loaded.tier for loaded in self._specs}, key=tier_rank)

    def in_tier(self, tier: str) -> list[LoadedSpec]:
        return [loaded for loaded in self._specs if loaded.tier == tier]

    def requires_map(self) -> dict[str, list[str]]:
        """Each spec's requirements, by name (the graph's edges)."""
        return {loaded.name: list(loaded.spec.requires) for loaded in self._specs}

    def dependencies(self, name: str, transitive: bool = False) -> list[str]:
        """What ``name`` (or an alias) requires: directly, or everything it needs."""
        return graph.dependencies(self.requires_map(), self[name].name, transitive)

    def dependents(self, name: str, transitive: bool = False) -> list[str]:
        """What requires ``name`` (or an alias): directly, or everything that needs it."""
        return graph.dependents(self.requires_map(), self[name].name, transitive)

    def roots(self) -> list[str]:
        """The specs that require nothing."""
        return graph.roots(self.requires_map())


def _tier_folder(workspace: Workspace, path: Path) -> str | None:
    """The folder under ``specs/`` that holds ``path``, or None when it is not directly in one."""
    try:
        parts = path.resolve().relative_to(workspace.specs_dir.resolve()).parts
    except ValueError:
        return None
    return parts[0] if len(parts) == 2 else None


def _load_one(path: Path, workspace: Workspace) -> tuple[LoadedSpec | None, list[SpecIssue]]:
    relpath = workspace.relative(path)
    try:
        content = path.read_bytes()
    except OSError as error:
        return None, [SpecIssue(relpath, None, "", f"cannot read the file: {error.strerror}")]
    loaded, issues = parse_spec(content, path, relpath)
    if loaded is None:
        return None, issues
    return loaded, check_spec(loaded, _tier_folder(workspace, path))


def _sorted(issues: list[SpecIssue]) -> list[SpecIssue]:
    return sorted(issues, key=lambda issue: (issue.path, issue.line or 0))


def load_spec_file(path: Path, workspace: Workspace) -> LoadedSpec:
    """One spec file, validated on its own (checks across specs need :func:`load_specs`)."""
    loaded, issues = _load_one(Path(path), workspace)
    if issues or loaded is None:
        raise SpecError(_sorted(issues))
    return loaded


def load_spec_text(text: str, relpath: str) -> LoadedSpec:
    """One spec from its YAML ``text``, validated on its own as :func:`load_spec_file` validates
    a file. ``relpath`` is where the text comes from, workspace-relative
    (``specs/<tier>/<name>.yaml``): messages name it, and its folders are checked like a file's.
    The sha256 is that of the text's UTF-8 bytes, the file's when the text is the file's bytes
    decoded (no newline translation)."""
    loaded, issues = parse_spec(text.encode("utf-8"), Path(relpath), relpath)
    if loaded is not None:
        parts = PurePosixPath(relpath).parts
        issues = check_spec(loaded, parts[1] if len(parts) == 3 and parts[0] == "specs" else None)
    if issues or loaded is None:
        raise SpecError(_sorted(issues))
    return loaded


def spec_files(workspace: Workspace) -> tuple[list[Path], list[SpecIssue]]:
    """The spec files of a workspace (``specs/<tier>/<name>.yaml``), and files that look like
    specs in the wrong place. Hidden files and folders are skipped; other files are ignored."""
    specs_dir = workspace.specs_dir
    if not specs_dir.is_dir():
        raise UsageError(f"{workspace.root} has no specs/ folder",
                         hint=f"create one with: koschei init {workspace.root}")
    files: list[Path] = []
    issues: list[SpecIssue] = []
    for path in sorted(specs_dir.rglob("*")):
        relative = path.relative_to(specs_dir)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if path.suffix not in (".yaml", ".yml"):
            continue
        relpath = workspace.relative(path)
        if path.suffix == ".yml":
            issues.append(SpecIssue(relpath, None, "", f"spec files end in .yaml: rename it to "
                                    f"{path.with_suffix('.yaml').name}"))
        elif len(relative.parts) != 2:
            issues.append(SpecIssue(relpath, None, "", "spec files live in a tier folder: "
                                    "specs/<tier>/<name>.yaml"))
        else:
            files.append(path)
    return files, issues


def load_specs(workspace: Workspace) -> SpecSet:
    """Every spec of ``workspace``, validated; raises SpecError listing every problem found."""
    files, issues = spec_files(workspace)
    loaded_specs: list[LoadedSpec] = []
    unreadable: set[str] = set()  # files that did not parse: a requirement of them is no news
    for path in files:
        loaded, file_issues = _load_one(path, workspace)
        issues.extend(file_issues)
        if loaded is not None:
            loaded_specs.append(loaded)
        else:
            unreadable.add(path.stem)
    issues.extend(check_set(loaded_specs, unreadable))
    if issues:
        raise SpecError(_sorted(issues))
    return SpecSet(loaded_specs)
