"""``koschei init DIR``: a new workspace with the bundled specs, a git repository and a first commit.

A new workspace has:

- ``specs/``: a copy of the bundled specs (``koschei.workspace.bundled_path("specs")``);
- ``koschei.toml``: the marker by which commands find the workspace from any folder inside it;
- ``.gitignore``: caches (``__pycache__``, Numba's, hypothesis's, pytest's) and the local state of
  runs (the cycle's lock, each run's journal and commit result, the per-machine calibration and
  search logs);
- ``runs/`` for run records and ``tests/engine/`` for the generated tests;
- with ``git``: a repository (branch ``main``) and a first commit "koschei: new workspace".

A missing ``DIR`` is built in a temporary sibling folder and renamed into place at the end, so a
failure leaves nothing behind. An existing folder that is not a workspace gets the workspace added
to it, and whatever was added is removed again on failure; an empty one gets its own repository,
a non-empty one inside a repository (a project) gets a commit of only the new files in that
repository, the user's other changes left as they were. A folder that already is a workspace is
refused.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from koschei.errors import UsageError
from koschei.workspace import MARKERS, bundled_path

MARKER = "koschei.toml"
FIRST_COMMIT_MESSAGE = "koschei: new workspace"
BRANCH = "main"

MARKER_TEXT = """\
# This file marks a koschei workspace: koschei's commands find the workspace by walking up from
# the current folder to the first folder with specs/ and this file (or pass --root DIR).
#
# specs/          one YAML spec per technique, in tier folders (yours to edit)
# templates/      optional: your own Jinja templates (the bundled ones are used when absent)
# koschei/engine/ generated Numba modules, tests/engine/ generated tests (do not edit them)
# runs/           run records: one folder per run (manifest, phase results, journal)

[workspace]
# The version of this file's layout; koschei reads nothing else from it yet.
format = 1
# The koschei version that created the workspace (for information).
created_by = "koschei {version}"
"""

GITIGNORE_TEXT = """\
# Caches: Python's, Numba's compiled kernels, hypothesis's examples, pytest's.
__pycache__/
.numba_cache/
.hypothesis/
.pytest_cache/
# Local state of runs: the cycle's lock, each run's journal and commit result (they describe the
# commit they are part of), and this machine's roofline calibration.
runs/.lock
runs/*/journal.json
runs/*/git_commit.json
runs/calibration/
# This machine's search logs and candidate modules (koschei evolve): a cache. What a search
# keeps is tuning/<machine>.json, which is committed.
runs/tuning/
"""


def _is_workspace(directory: Path) -> bool:
    return (directory / "specs").is_dir() and any((directory / m).is_file() for m in MARKERS)


def _populate(directory: Path) -> list[Path]:
    """Write the workspace's files into ``directory``; return the top-level paths created."""
    import koschei

    created: list[Path] = []
    specs = directory / "specs"
    if not specs.exists():
        shutil.copytree(bundled_path("specs"), specs,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
        created.append(specs)
    for name, text in ((MARKER, MARKER_TEXT.format(version=koschei.__version__)),
                       (".gitignore", GITIGNORE_TEXT)):
        path = directory / name
        if path.exists():
            if name == ".gitignore":  # keep the user's and add ours below it
                existing = path.read_text(encoding="utf-8")
                path.write_text(existing.rstrip("\n") + "\n\n# koschei\n" + text,
                                encoding="utf-8")
            continue
        path.write_text(text, encoding="utf-8")
        created.append(path)
    for folder in (directory / "runs", directory / "tests" / "engine"):
        top = directory / folder.relative_to(directory).parts[0]
        if not top.exists():
            created.append(top)
        folder.mkdir(parents=True, exist_ok=True)
    return created


def _check_git_identity(cwd: Path) -> None:
    """Refuse before anything is created when git cannot name the author of the first commit."""
    import git

    for variable in ("GIT_AUTHOR_IDENT", "GIT_COMMITTER_IDENT"):
        try:
            git.Git(str(cwd)).var(variable)
        except git.GitCommandError:
            raise UsageError(
                "git does not know who you are, so koschei init cannot make the first commit",
                hint='git config --global user.name "Your Name" && git config --global '
                     "user.email you@example.com (or use --no-git)") from None


def _git_failure(error: Exception) -> UsageError:
    details = (getattr(error, "stderr", "") or "").strip().replace("stderr: ", "")
    return UsageError(f"git failed while creating the workspace: {details or error}",
                      hint="nothing was left behind; fix the problem and run koschei init again")


def _new_repository(directory: Path, paths: list[str] | None = None) -> None:
    """``git init`` (branch main) and a first commit of ``paths`` (default: everything)."""
    import git

    try:
        repo = git.Repo.init(directory, initial_branch=BRANCH)
    except git.GitCommandError:  # git older than 2.28 has no --initial-branch
        repo = git.Repo.init(directory)
        repo.git.symbolic_ref("HEAD", f"refs/heads/{BRANCH}")
    with repo:
        if paths is None:
            repo.git.add("--all")
        else:
            repo.git(literal_pathspecs=True).add("--", *paths)
        repo.git.commit("--quiet", "-m", FIRST_COMMIT_MESSAGE)


def _enclosing_repository(directory: Path):
    import git

    try:
        return git.Repo(directory, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return None


def _commit_into_existing(repo, directory: Path, created: list[Path]) -> None:
    """Commit only the workspace's new files (and the .gitignore) into the user's repository."""
    from koschei.phases.git_commit import check_repository_state, commit_paths

    check_repository_state(repo)
    root = Path(repo.working_tree_dir).resolve()
    paths = [(directory / ".gitignore").resolve().relative_to(root).as_posix()]
    paths += [path.resolve().relative_to(root).as_posix() for path in created
              if path.name != ".gitignore"]
    command = repo.git(literal_pathspecs=True)

    def listed(*options: str) -> list[str]:
        output = command.execute(["git", "ls-files", "-z", *options, "--", *paths],
                                 strip_newline_in_stdout=False)
        return [path for path in output.split("\0") if path]

    untracked = listed("--others", "--exclude-standard")
    files = list(dict.fromkeys(untracked + listed("--modified")))
    if files:
        commit_paths(repo, files, untracked, FIRST_COMMIT_MESSAGE, retry="koschei init")


def init_workspace(directory: Path, *, git: bool = True) -> Path:
    """Create a workspace in ``directory`` (see the module docstring); return its path."""
    directory = Path(directory).expanduser().absolute()
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory} exists and is not a folder",
                         hint="choose a new folder name")
    if directory.is_dir() and _is_workspace(directory):
        raise UsageError(f"{directory} already is a koschei workspace (it has specs/ and "
                         f"{'/'.join(MARKERS)})", hint=f"work in it: cd {directory} && koschei cycle")
    bundled_path("specs")  # fail early when the installation lacks them
    parent = directory.parent
    if not parent.is_dir():
        raise UsageError(f"the folder {parent} does not exist",
                         hint=f"create it first: mkdir -p {parent}")
    if git:
        _check_git_identity(directory if directory.is_dir() else parent)

    import git as gitpython

    try:
        if directory.is_dir():
            return _init_in_place(directory, git=git, empty=not any(directory.iterdir()))
        return _init_new(directory, git=git)
    except gitpython.GitCommandError as error:
        raise _git_failure(error) from None


def _init_new(directory: Path, *, git: bool) -> Path:
    parent = directory.parent

    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".koschei-init",
                                    dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; a workspace is an ordinary folder
    try:
        _populate(staging)
        if git:
            _new_repository(staging)
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _init_in_place(directory: Path, *, git: bool, empty: bool) -> Path:
    """An existing folder: add the workspace to it, and remove what was added on failure. A
    non-empty folder in a repository commits to it; otherwise the folder gets its own."""
    created: list[Path] = []
    gitignore = directory / ".gitignore"
    gitignore_before = gitignore.read_bytes() if gitignore.is_file() else None
    try:
        created = _populate(directory)
        if git:
            repo = None if empty else _enclosing_repository(directory)
            if repo is not None:
                with repo:
                    _commit_into_existing(repo, directory, created)
            else:
                ours = [path.relative_to(directory).as_posix() for path in created
                        if path.is_file() or any(p.is_file() for p in path.rglob("*"))]
                created.append(directory / ".git")
                _new_repository(directory, sorted({*ours, ".gitignore"}))
    except BaseException:
        for path in created:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if gitignore_before is not None:
            gitignore.write_bytes(gitignore_before)
        raise
    return directory
