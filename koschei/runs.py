"""Run records: one folder per run under ``runs/``, and the lock that keeps cycles apart.

A run record ``runs/<run-id>/`` holds:

- ``manifest.json``: the run id, the command, when it started, the git sha of HEAD and whether the
  tree had uncommitted changes, the machine (``koschei.bench.machine.describe()`` and its
  fingerprint) and the versions of koschei, numpy, numba, torch and Python;
- ``<phase>.json``: each phase's result (``Result.to_dict()``);
- ``written.json``: every workspace-relative file the phases reported writing, with the sha256 of
  its content right after the phase wrote it (git_commit uses it to notice later edits);
- ``journal.json`` (cycles only): the phases done, in order, the status (running, finished,
  failed, interrupted), the cycle's options and the iteration; ``koschei cycle --resume`` reads it.

Run ids are ``YYYYMMDD-HHMMSS-xxxxxx`` in UTC, the last part being the microsecond in hex, so ids
sort in time order even within one second; the folder is created exclusively, so ids are unique.
Every file is written atomically (a temporary file in the same folder, then ``os.replace``): a run
killed at any point leaves each file either as it was or complete.

A phase reports what it wrote in its result, in either of two shapes, anywhere in the result:
entries ``{"path": ..., "action": "create" | "update"}`` (code_generate's files, spec_create's
spec) or lists of paths under a key ``created`` or ``written``. A result of a dry run or a check
(``"dry_run": true`` or ``"check": true`` at its top level) wrote nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from koschei.errors import UsageError
from koschei.files import file_sha256, read_json, write_json_atomic
from koschei.workspace import Workspace

MANIFEST = "manifest.json"
JOURNAL = "journal.json"
WRITTEN = "written.json"
LOCK_FILE = ".lock"
RUN_ID_PATTERN = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")
# Files of a record that describe its own commit or its local progress: never committed.
LOCAL_RECORD_FILES = (JOURNAL, "git_commit.json")
WRITE_ACTIONS = ("create", "update")
PATH_KEYS = ("path", "file", "target")
LIST_KEYS = ("created", "written")


# --- what a run knows about its surroundings ----------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def new_run_id(moment: datetime) -> str:
    return f"{moment:%Y%m%d-%H%M%S}-{moment.microsecond:06x}"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def software_versions() -> dict[str, str | None]:
    import koschei

    return {"koschei": koschei.__version__, "numpy": _version("numpy"),
            "numba": _version("numba"), "torch": _version("torch"),
            "python": platform.python_version()}


def git_state(root: Path) -> dict[str, Any]:
    """HEAD's sha, the branch and whether tracked files had uncommitted changes (None: no repo,
    or a repository without commits for the sha)."""
    state: dict[str, Any] = {"sha": None, "branch": None, "dirty": None}
    try:
        import git
    except ImportError:
        return state
    try:
        repo = git.Repo(root, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return state
    try:
        with repo:
            if repo.head.is_valid():
                state["sha"] = repo.head.commit.hexsha
            if not repo.head.is_detached:
                state["branch"] = repo.active_branch.name
            state["dirty"] = repo.is_dirty(untracked_files=False)
    except (git.GitCommandError, ValueError, TypeError):
        pass
    return state


# --- what phases report writing ------------------------------------------------------------------


def reported_writes(result: Any) -> list[str]:
    """The paths a phase result says it wrote (see the module docstring for the two shapes)."""
    if not isinstance(result, dict) or result.get("dry_run") is True or result.get("check") is True:
        return []
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            action = value.get("action")
            if isinstance(action, str) and action.lower() in WRITE_ACTIONS:
                for key in PATH_KEYS:
                    if isinstance(value.get(key), str):
                        found.append(value[key])
                        break
            for key, item in value.items():
                if key in LIST_KEYS:
                    items = [item] if isinstance(item, str) else item
                    if isinstance(items, list):
                        found.extend(entry for entry in items if isinstance(entry, str))
                elif isinstance(item, (dict, list)):
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(result)
    return list(dict.fromkeys(found))


def _workspace_relative(workspace: Workspace, path: str) -> str | None:
    """``path`` as a workspace-relative POSIX path, or None when it lies outside the workspace."""
    candidate = Path(path)
    absolute = candidate if candidate.is_absolute() else workspace.root / candidate
    try:
        relative = Path(os.path.normpath(absolute)).relative_to(workspace.root)
    except ValueError:
        return None
    text = relative.as_posix()
    return None if text in ("", ".") or text.startswith("../") else text


# --- run records ---------------------------------------------------------------------------------


@dataclass
class RunRecord:
    """One run's folder ``runs/<id>/`` and what is in it."""

    workspace: Workspace
    id: str
    dir: Path
    _manifest: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def run_id(self) -> str:
        return self.id

    @property
    def relative_dir(self) -> str:
        return self.workspace.relative(self.dir)

    @property
    def manifest(self) -> dict[str, Any]:
        if self._manifest is None:
            self._manifest = read_json(self.dir / MANIFEST) or {}
        return self._manifest

    @classmethod
    def create(cls, workspace: Workspace, command: str) -> RunRecord:
        """A new run folder with its manifest (written before the folder is returned)."""
        from koschei.bench import machine

        workspace.runs_dir.mkdir(parents=True, exist_ok=True)
        while True:
            started = _now()
            run_id = new_run_id(started)
            folder = workspace.runs_dir / run_id
            try:
                folder.mkdir()
                break
            except FileExistsError:
                continue
        state = git_state(workspace.root)
        manifest = {
            "run_id": run_id,
            "command": command,
            "started_at": _iso(started),
            "git_sha": state["sha"],
            "git_branch": state["branch"],
            "dirty": state["dirty"],
            "machine": machine.describe(),
            "fingerprint": machine.fingerprint(),
            "versions": software_versions(),
        }
        write_json_atomic(folder / MANIFEST, manifest)
        return cls(workspace, run_id, folder, manifest)

    @classmethod
    @contextlib.contextmanager
    def recording(cls, workspace: Workspace, command: str) -> Iterator[RunRecord]:
        """A new record for one command; removed again when the command fails before any phase
        result was saved in it (a usage or spec error leaves no record behind)."""
        record = cls.create(workspace, command)
        try:
            yield record
        except BaseException:
            if not record.phases():
                shutil.rmtree(record.dir, ignore_errors=True)
            raise

    @classmethod
    def load(cls, workspace: Workspace, run_id: str = "latest") -> RunRecord:
        """The run ``run_id`` (or a unique prefix of it), or the latest run for ``"latest"``."""
        runs = list_runs(workspace)
        where = workspace.relative(workspace.runs_dir)
        if not runs:
            raise UsageError(f"there are no run records in {where}/",
                             hint="run koschei cycle (or a phase such as koschei test-run) first")
        if run_id == "latest":
            return runs[-1]
        matches = [record for record in runs if record.id == run_id] or \
                  [record for record in runs if record.id.startswith(run_id)]
        if len(matches) == 1:
            return matches[0]
        recent = ", ".join(record.id for record in runs[-5:])
        if matches:
            raise UsageError(f"run id {run_id!r} is ambiguous: it starts "
                             f"{len(matches)} runs in {where}/", hint="give more of the id")
        raise UsageError(f"no run {run_id!r} in {where}/",
                         hint=f"latest runs: {recent} (or pass latest)")

    # phase results

    def phase_path(self, phase: str) -> Path:
        return self.dir / f"{phase}.json"

    def save_phase(self, phase: str, result: Any) -> Path:
        """Write ``<phase>.json`` and add the files the phase reports writing to ``written.json``."""
        data = result.to_dict() if hasattr(result, "to_dict") else result
        path = self.phase_path(phase)
        write_json_atomic(path, data)
        writes = [relative for reported in reported_writes(data)
                  if (relative := _workspace_relative(self.workspace, reported)) is not None]
        if writes:
            written = self.written_files()
            for relative in writes:
                target = self.workspace.root / relative
                written[relative] = file_sha256(target) if target.is_file() else None
            write_json_atomic(self.dir / WRITTEN, written)
        return path

    def phase(self, phase: str) -> dict[str, Any] | None:
        data = read_json(self.phase_path(phase))
        return data if isinstance(data, dict) else None

    def phases(self) -> list[str]:
        """The phases that saved a result in this record."""
        return sorted(path.stem for path in self.dir.glob("*.json")
                      if path.name not in (MANIFEST, JOURNAL, WRITTEN))

    # the journal (cycles)

    def journal(self) -> dict[str, Any] | None:
        data = read_json(self.dir / JOURNAL)
        return data if isinstance(data, dict) else None

    def write_journal(self, journal: dict[str, Any]) -> None:
        journal = dict(journal, run_id=self.id, updated_at=_iso(_now()))
        write_json_atomic(self.dir / JOURNAL, journal)

    def remove_temporaries(self) -> list[Path]:
        """Delete what atomic writes cut off by a killed process left: ``.<name>.*.tmp`` files."""
        removed = []
        for path in self.dir.rglob(".*.tmp"):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    # what the run wrote

    def written_files(self) -> dict[str, str | None]:
        """Workspace-relative path -> sha256 right after a phase wrote it (None: it was gone)."""
        data = read_json(self.dir / WRITTEN)
        return {str(k): v for k, v in data.items()} if isinstance(data, dict) else {}

    def written_paths(self) -> list[str]:
        """Every workspace-relative path the run's phases report writing, and the run folder."""
        paths: dict[str, None] = dict.fromkeys(self.written_files())
        for phase in self.phases():
            for reported in reported_writes(self.phase(phase)):
                relative = _workspace_relative(self.workspace, reported)
                if relative is not None:
                    paths[relative] = None
        paths[self.relative_dir] = None
        return sorted(paths)


def list_runs(workspace: Workspace) -> list[RunRecord]:
    """Every run record of the workspace, oldest first (folders named like run ids that have a
    manifest; ``runs/calibration/`` and the lock are not runs)."""
    if not workspace.runs_dir.is_dir():
        return []
    return [RunRecord(workspace, folder.name, folder)
            for folder in sorted(workspace.runs_dir.iterdir(), key=lambda item: item.name)
            if RUN_ID_PATTERN.match(folder.name) and (folder / MANIFEST).is_file()]


# --- the workspace lock --------------------------------------------------------------------------

_held_locks: dict[Path, list[int]] = {}  # lock file -> [descriptor, depth]
_held_guard = threading.Lock()


@contextlib.contextmanager
def workspace_lock(workspace: Workspace, command: str = "cycle") -> Iterator[None]:
    """Hold ``runs/.lock`` with ``flock`` for the duration: one cycle per workspace at a time.

    The operating system releases the lock when the process ends, however it ends (even
    ``kill -9``), so a stale lock cannot block later cycles. Taking it again in the process that
    holds it is allowed (the cycle holds it while git_commit takes it too).
    """
    workspace.runs_dir.mkdir(parents=True, exist_ok=True)
    path = (workspace.runs_dir / LOCK_FILE).resolve()
    with _held_guard:
        held = _held_locks.get(path)
        if held is not None:
            held[1] += 1
    if held is not None:
        try:
            yield
        finally:
            with _held_guard:
                held[1] -= 1
        return

    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(descriptor)
        os.close(descriptor)
        pid = holder.get("pid", "unknown")
        since = holder.get("started_at", "an unknown time")
        what = holder.get("command", "cycle")
        raise UsageError(
            f"another koschei cycle is running in this workspace (pid {pid}, started {since}, "
            f"command: koschei {what})",
            hint="wait for it to finish, or stop it (Ctrl-C stops it after its current phase)",
        ) from None
    except BaseException:
        os.close(descriptor)
        raise
    try:
        holder = json.dumps({"pid": os.getpid(), "started_at": _iso(_now()), "command": command})
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, (holder + "\n").encode(), 0)
        with _held_guard:
            _held_locks[path] = [descriptor, 1]
        try:
            yield
        finally:
            with _held_guard:
                _held_locks.pop(path, None)
            with contextlib.suppress(OSError):
                os.ftruncate(descriptor, 0)
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(descriptor, fcntl.LOCK_UN)
        os.close(descriptor)


def _read_holder(descriptor: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(descriptor, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
