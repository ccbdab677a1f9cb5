"""`koschei init DIR`: a complete workspace and a first commit, or nothing at all."""

from __future__ import annotations

import filecmp
import os
import stat
from pathlib import Path

import git
import pytest
from typer.testing import CliRunner

import koschei.cli  # noqa: F401  (registers every command)
from koschei.cli.app import app
from koschei.workspace import Workspace, bundled_path

runner = CliRunner()


@pytest.fixture
def identity(tmp_path, monkeypatch) -> Path:
    """A global git configuration of our own: the tests do not depend on the machine's."""
    config = tmp_path / "gitconfig"
    config.write_text("[user]\n\tname = Test Author\n\temail = author@example.com\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    return config


@pytest.fixture
def no_identity(tmp_path, monkeypatch) -> None:
    config = tmp_path / "gitconfig-without-identity"
    config.write_text("[user]\n\tuseConfigOnly = true\n")  # no guessing from the host name
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for variable in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME",
                     "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(variable, raising=False)


def init(*args: str):
    return runner.invoke(app, ["init", *map(str, args)], terminal_width=200)


def tree_files(root: Path) -> list[str]:
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*")
                  if path.is_file() and "__pycache__" not in path.parts)


def committed(repo: git.Repo) -> set[str]:
    return set(repo.git.ls_tree("-r", "--name-only", "HEAD").splitlines())


def test_init_creates_a_workspace_with_a_first_commit(tmp_path, identity):
    target = tmp_path / "kernels"
    result = init(target)
    assert result.exit_code == 0, result.output
    assert f"created the workspace {target}" in result.output

    bundled = bundled_path("specs")
    assert tree_files(target / "specs") == tree_files(bundled)
    for relative in tree_files(bundled):
        assert filecmp.cmp(bundled / relative, target / "specs" / relative, shallow=False)
    assert "[workspace]" in (target / "koschei.toml").read_text()
    ignored = (target / ".gitignore").read_text().splitlines()
    for entry in ("__pycache__/", ".numba_cache/", ".hypothesis/", ".pytest_cache/", "runs/.lock",
                  "runs/*/journal.json"):
        assert entry in ignored
    assert (target / "runs").is_dir() and (target / "tests" / "engine").is_dir()
    assert Workspace.find(start=target / "tests" / "engine").root == target.resolve()

    repo = git.Repo(target)
    assert repo.active_branch.name == "main"
    assert [c.message.strip() for c in repo.iter_commits()] == ["koschei: new workspace"]
    assert committed(repo) == {"koschei.toml", ".gitignore"} | {
        f"specs/{relative}" for relative in tree_files(bundled)}
    assert repo.git.status("--porcelain") == ""
    # an ordinary folder (not the private mode of a temporary one), and nothing left beside it
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["kernels", identity.name])


def test_init_refuses_a_workspace(tmp_path, identity):
    target = tmp_path / "kernels"
    assert init(target).exit_code == 0
    head = git.Repo(target).head.commit.hexsha
    again = init(target)
    assert again.exit_code == 2
    assert "already is a koschei workspace" in again.output
    assert git.Repo(target).head.commit.hexsha == head


def test_without_a_git_identity_nothing_is_left_behind(tmp_path, no_identity):
    target = tmp_path / "kernels"
    result = init(target)
    assert result.exit_code == 2
    assert "git does not know who you are" in result.output
    assert "git config --global user.name" in result.output
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["gitconfig-without-identity"]


def test_no_git(tmp_path, no_identity):
    target = tmp_path / "kernels"
    result = init(target, "--no-git")
    assert result.exit_code == 0, result.output
    assert (target / "specs").is_dir() and not (target / ".git").exists()


def test_an_empty_existing_folder_gets_its_own_repository(tmp_path, identity):
    outer = git.Repo.init(tmp_path / "outer", initial_branch="main")
    target = tmp_path / "outer" / "kernels"
    target.mkdir()
    assert init(target).exit_code == 0
    assert (target / "koschei.toml").is_file() and (target / ".git").is_dir()
    assert git.Repo(target).head.commit.message.strip() == "koschei: new workspace"
    assert not outer.head.is_valid()  # nothing was committed to the enclosing repository


def test_a_failure_in_an_existing_folder_removes_what_was_added(tmp_path, identity):
    project = tmp_path / "project"
    repo = git.Repo.init(project, initial_branch="main")
    (project / ".gitignore").write_text("*.log\n")
    repo.git.add("--all")
    repo.git.commit("-qm", "start")
    hook = Path(repo.git_dir) / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho 'no commits today' >&2\nexit 1\n")
    hook.chmod(0o755)
    (project / "notes.txt").write_text("mine\n")

    result = init(project)

    assert result.exit_code == 2 and "no commits today" in result.output
    assert sorted(p.name for p in project.iterdir()) == [".git", ".gitignore", "notes.txt"]
    assert (project / ".gitignore").read_text() == "*.log\n"
    assert repo.git.status("--porcelain") == "?? notes.txt"


def test_a_project_with_a_repository_gets_a_commit_of_only_the_workspace(tmp_path, identity):
    project = tmp_path / "project"
    repo = git.Repo.init(project, initial_branch="trunk")
    (project / "README").write_text("project\n")
    (project / ".gitignore").write_text("*.log\n")
    repo.git.add("--all")
    repo.git.commit("-qm", "start")
    (project / "README").write_text("a staged edit\n")
    repo.git.add("README")
    (project / "notes.txt").write_text("untracked\n")

    result = init(project)

    assert result.exit_code == 0, result.output
    assert repo.head.commit.message.strip() == "koschei: new workspace"
    changed = set(repo.git.show("--name-only", "--format=", "HEAD").splitlines())
    assert changed == {".gitignore", "koschei.toml"} | {
        f"specs/{relative}" for relative in tree_files(bundled_path("specs"))}
    gitignore = (project / ".gitignore").read_text()
    assert gitignore.startswith("*.log\n") and "runs/*/journal.json" in gitignore
    assert set(repo.git.status("--porcelain").splitlines()) == {"M  README", "?? notes.txt"}
    assert repo.active_branch.name == "trunk"


def test_a_project_without_a_repository_commits_only_the_workspace(tmp_path, identity):
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("mine\n")
    assert init(project).exit_code == 0
    repo = git.Repo(project)
    assert "notes.txt" not in committed(repo)
    assert "koschei.toml" in committed(repo)
    assert repo.git.status("--porcelain") == "?? notes.txt"


def test_bad_targets(tmp_path, identity):
    (tmp_path / "a-file").write_text("")
    result = init(tmp_path / "a-file")
    assert result.exit_code == 2 and "is not a folder" in result.output
    result = init(tmp_path / "missing" / "kernels")
    assert result.exit_code == 2 and "does not exist" in result.output
