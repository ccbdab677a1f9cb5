"""git_commit: exactly the run's paths are committed; everything else a user has stays as it was.

Every test works in a real repository in a temporary folder.
"""

from __future__ import annotations

import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import git
import pytest
from typer.testing import CliRunner

import koschei.cli  # noqa: F401  (registers every command)
from koschei.cli.app import app
from koschei.errors import CheckFailed, UsageError
from koschei.phases import git_commit
from koschei.phases.test_run import SpecTestResult, TestRunResult
from koschei.runs import RunRecord
from koschei.workspace import Workspace

runner = CliRunner()


def configure_identity(repo: git.Repo) -> None:
    with repo.config_writer() as config:
        config.set_value("user", "name", "Test Author")
        config.set_value("user", "email", "author@example.com")


def status(repo: git.Repo) -> set[str]:
    return set(repo.git.status("--porcelain=v1", "--untracked-files=all").splitlines())


def committed_files(repo: git.Repo, rev: str = "HEAD") -> set[str]:
    output = repo.git.show("--name-only", "--format=", rev)
    return {line for line in output.splitlines() if line}


@pytest.fixture
def setup(tmp_path: Path):
    """A workspace in a repository with one commit, and a user's work in progress around it."""
    root = (tmp_path / "ws").resolve()
    (root / "specs" / "foundation").mkdir(parents=True)
    (root / "tests" / "engine").mkdir(parents=True)
    (root / "koschei.toml").write_text("[workspace]\nformat = 1\n")
    (root / "specs" / "foundation" / "softmax.yaml").write_text("name: softmax\n")
    (root / "tests" / "engine" / "test_softmax.py").write_text("# old generated test\n")
    for name in ("notes.txt", "staged.txt", "partial.txt"):
        (root / name).write_text(f"{name} as committed\n")
    repo = git.Repo.init(root, initial_branch="main")
    configure_identity(repo)
    repo.git.add("--all")
    repo.git.commit("-qm", "start")
    return Workspace(root), repo


def user_work_in_progress(root: Path, repo: git.Repo) -> None:
    (root / "notes.txt").write_text("an unstaged edit\n")  # unstaged, unrelated
    (root / "staged.txt").write_text("a staged edit\n")  # staged, unrelated
    repo.git.add("staged.txt")
    (root / "partial.txt").write_text("staged part\n")  # staged, then edited again
    repo.git.add("partial.txt")
    (root / "partial.txt").write_text("staged part\nand an unstaged part\n")
    (root / "new_staged.txt").write_text("a new staged file\n")  # staged, new
    repo.git.add("new_staged.txt")
    (root / "scratch.txt").write_text("untracked\n")  # untracked, unrelated


def simulate_run(workspace: Workspace, *, tests_ok: bool = True, benchmark: bool = False,
                 generate: bool = True) -> RunRecord:
    """What a cycle leaves behind: generated files, and a record of the phases that wrote them."""
    root = workspace.root
    record = RunRecord.create(workspace, "cycle")
    if generate:
        (root / "koschei" / "engine").mkdir(parents=True, exist_ok=True)
        (root / "tests" / "engine").mkdir(parents=True, exist_ok=True)
        (root / "koschei" / "engine" / "softmax.py").write_text("# generated engine module\n")
        (root / "tests" / "engine" / "test_softmax.py").write_text("# new generated test\n")
        record.save_phase("code_generate", {"files": [
            {"spec": "softmax", "path": "koschei/engine/softmax.py", "action": "create"},
            {"spec": "softmax", "path": "tests/engine/test_softmax.py", "action": "update"},
            {"spec": "softmax", "path": "tests/engine/conftest.py", "action": "identical"},
        ], "ok": True})
    spec = SpecTestResult(spec="softmax", test_file="tests/engine/test_softmax.py",
                          status="passed" if tests_ok else "failed", passed=11 if tests_ok else 9,
                          failed=0 if tests_ok else 2, duration_s=3.5,
                          first_failure=None if tests_ok else "test_cases[0]: mismatch")
    record.save_phase("test_run", TestRunResult(specs=[spec], pytest_exit_code=0 if tests_ok
                                                else 1, duration_s=4.0))
    if benchmark:
        record.save_phase("benchmark", {"threads": 2, "ok": True, "cases": [{
            "spec": "softmax", "case": "4096x768", "verdict": "ok",
            "contenders": {"engine": {"median_s": 0.00121}}, "gbs": 20.8, "gflops": 13.0,
            "bound": "memory", "roofline_fraction": 0.61, "speedup_vs_numpy": 3.4,
            "speedup_vs_torch": 1.2}]})
    record.write_journal({"status": "running", "phases": []})  # local: never committed
    return record


def run_files(record: RunRecord, *names: str) -> set[str]:
    return {f"{record.relative_dir}/{name}" for name in names}


# --- what is committed ----------------------------------------------------------------------------


def test_commits_exactly_the_runs_paths_and_leaves_the_users_changes_as_they_were(setup):
    workspace, repo = setup
    user_work_in_progress(workspace.root, repo)
    record = simulate_run(workspace)
    staged_before = repo.git.diff("--cached", "--", "staged.txt", "partial.txt",
                                  "new_staged.txt")
    unstaged_before = repo.git.diff("--", "notes.txt", "partial.txt")
    contents_before = {name: (workspace.root / name).read_text() for name in
                       ("notes.txt", "staged.txt", "partial.txt", "new_staged.txt",
                        "scratch.txt")}
    head_before = repo.head.commit.hexsha

    result = git_commit.run(workspace, git_commit.Options())

    assert result.ok and result.commit == repo.head.commit.hexsha
    assert repo.head.commit.parents[0].hexsha == head_before
    expected = {"koschei/engine/softmax.py", "tests/engine/test_softmax.py"} | run_files(
        record, "manifest.json", "code_generate.json", "test_run.json", "written.json")
    assert committed_files(repo) == expected
    assert set(result.paths) == expected
    assert set(result.new_paths) == expected - {"tests/engine/test_softmax.py"}
    # the user's work: same content, same staging, nothing of it committed
    assert repo.git.diff("--cached", "--", "staged.txt", "partial.txt",
                         "new_staged.txt") == staged_before
    assert repo.git.diff("--", "notes.txt", "partial.txt") == unstaged_before
    assert {name: (workspace.root / name).read_text() for name in contents_before} == \
        contents_before
    assert status(repo) == {"M  staged.txt", "MM partial.txt", " M notes.txt",
                            "A  new_staged.txt", "?? scratch.txt", "?? runs/.lock",
                            f"?? {record.relative_dir}/journal.json"}
    # the message carries the evidence
    message = repo.head.commit.message
    assert message.splitlines()[0] == f"koschei: run {record.id}: 1 spec, tests 11/11"
    assert "softmax: 11/11 passed in 3.5 s" in message
    assert "new      koschei/engine/softmax.py" in message
    assert "modified tests/engine/test_softmax.py" in message
    assert result.message == message


def test_dry_run_lists_the_commit_and_changes_nothing(setup):
    workspace, repo = setup
    user_work_in_progress(workspace.root, repo)
    record = simulate_run(workspace, benchmark=True)
    head, index, before = repo.head.commit.hexsha, repo.git.diff("--cached"), status(repo)

    result = git_commit.run(workspace, git_commit.Options(dry_run=True))

    assert result.ok and result.commit is None and result.dry_run
    assert "koschei/engine/softmax.py" in result.paths
    assert f"{record.relative_dir}/benchmark.json" in result.paths
    assert (repo.head.commit.hexsha, repo.git.diff("--cached")) == (head, index)
    assert status(repo) == before | {"?? runs/.lock"}
    assert "softmax 4096x768: 1.210 ms median, 20.8 GB/s, 61% of roofline (memory-bound), " \
           "x3.40 vs NumPy, x1.20 vs PyTorch" in result.message


def test_nothing_to_commit_is_a_result_not_an_error(setup):
    workspace, repo = setup
    simulate_run(workspace)
    first = git_commit.run(workspace, git_commit.Options())
    again = git_commit.run(workspace, git_commit.Options())
    assert first.commit and again.ok and again.commit is None
    assert again.skipped.startswith("nothing to commit")
    assert repo.head.commit.hexsha == first.commit
    assert len(again.unchanged) == len(first.paths)


def test_later_loop_iterations_commit_only_when_something_changed(setup):
    workspace, repo = setup
    simulate_run(workspace)
    git_commit.run(workspace, git_commit.Options())
    head = repo.head.commit.hexsha
    simulate_run(workspace, generate=False)  # a record, and nothing new outside it
    result = git_commit.run(workspace, git_commit.Options(require_changes=True))
    assert result.ok and result.commit is None and result.paths == []
    assert "nothing changed outside the run record" in result.skipped
    assert repo.head.commit.hexsha == head


def evolve_result(verdict: str, kept: bool) -> dict:
    confirmation = {"candidate_median_s": 0.000571, "incumbent_median_s": 0.000612,
                    "gain": 0.0718, "p_value": 0.00031, "samples": 9}
    return {"spec": "softmax", "case": "4096x768", "strategy": "tpe", "seed": 3, "threads": 2,
            "fingerprint": "aba5a72f6fca1765", "searched": ["fastmath", "parallel_min_elements"],
            "evaluations": [{}] * 12, "measured": 10, "cache_hits": 2, "stopped": "budget",
            "failures": {"wrong": 1}, "incumbent": {"fastmath": False, "parallel_min_elements": 4},
            "best": {"tunables": {"fastmath": True, "parallel_min_elements": 4}, "ratio": 0.93},
            "confirmation": confirmation, "verdict": verdict,
            "reason": "" if kept else "gain +7.2% but p=0.0031 >= 0.002",
            "tuned_values_file": "tuning/aba5a72f6fca1765.json" if kept else None,
            "tests": "11 passed" if kept else None,
            "written": ["tuning/aba5a72f6fca1765.json"] if kept else [], "ok": True}


def test_a_search_commits_its_tuned_values_with_the_evidence_in_the_message(setup):
    workspace, repo = setup
    record = simulate_run(workspace, generate=False, benchmark=True)
    (workspace.root / "tuning").mkdir()
    (workspace.root / "tuning" / "aba5a72f6fca1765.json").write_text('{"format": 1}\n')
    record.save_phase("evolve", evolve_result("improved", kept=True))

    result = git_commit.run(workspace, git_commit.Options(require_changes=True))

    assert result.commit == repo.head.commit.hexsha
    assert "tuning/aba5a72f6fca1765.json" in committed_files(repo)
    message = repo.head.commit.message
    assert message.startswith(f"koschei: run {record.id}: softmax 4096x768 +7.2% (p=0.00031), "
                              "tuned\n")
    assert "tpe search (seed 3) over fastmath, parallel_min_elements: 12 candidates, 10 " \
           "measured, 2 from the cache" in message
    assert "failed candidates (never chosen): 1 wrong" in message
    assert "best: x0.930 of the defaults' time with fastmath=True" in message
    assert "612.0 µs -> 571.0 µs median, gain +7.2%, p = 0.00031 (Mann-Whitney U, 9 samples " \
           "each)" in message
    assert "kept in tuning/aba5a72f6fca1765.json; the spec's tests: 11 passed" in message


def test_a_search_without_a_significant_gain_is_committed_as_such(setup):
    workspace, repo = setup
    record = simulate_run(workspace, generate=False)
    record.save_phase("evolve", evolve_result("no_significant_gain", kept=False))
    result = git_commit.run(workspace, git_commit.Options())
    message = repo.head.commit.message
    assert result.commit and message.startswith(
        f"koschei: run {record.id}: softmax 4096x768: no significant gain\n")
    assert "verdict: no significant gain (gain +7.2% but p=0.0031 >= 0.002)" in message
    assert committed_files(repo) >= run_files(record, "evolve.json")


def test_a_workspace_below_the_repository_root(tmp_path):
    repo = git.Repo.init(tmp_path / "project", initial_branch="main")
    configure_identity(repo)
    (tmp_path / "project" / "README").write_text("project\n")
    repo.git.add("--all")
    repo.git.commit("-qm", "start")
    root = tmp_path / "project" / "kernels"
    (root / "specs").mkdir(parents=True)
    (root / "tests" / "engine").mkdir(parents=True)
    (root / "koschei.toml").write_text("")
    workspace = Workspace(root.resolve())
    record = simulate_run(workspace)
    result = git_commit.run(workspace, git_commit.Options())
    assert "kernels/koschei/engine/softmax.py" in committed_files(repo)
    assert f"kernels/{record.relative_dir}/manifest.json" in committed_files(repo)
    assert "koschei/engine/softmax.py" in result.paths  # reported workspace-relative


def test_ignored_paths_are_reported_not_committed(setup):
    workspace, repo = setup
    (workspace.root / ".gitignore").write_text("koschei/engine/\n")
    repo.git.add(".gitignore")
    repo.git.commit("-qm", "ignore the engine")
    simulate_run(workspace)
    result = git_commit.run(workspace, git_commit.Options())
    assert result.ignored == ["koschei/engine/softmax.py"]
    assert "koschei/engine/softmax.py" not in committed_files(repo)


# --- refusals ------------------------------------------------------------------------------------


def test_failed_tests_are_refused_unless_forced(setup):
    workspace, repo = setup
    simulate_run(workspace, tests_ok=False)
    head = repo.head.commit.hexsha
    with pytest.raises(CheckFailed, match="tests failed: softmax") as caught:
        git_commit.run(workspace, git_commit.Options())
    assert caught.value.exit_code == 1 and "--force" in caught.value.hint
    assert repo.head.commit.hexsha == head and "?? koschei/engine/softmax.py" in status(repo)

    result = git_commit.run(workspace, git_commit.Options(force=True))
    assert result.commit == repo.head.commit.hexsha
    assert result.forced and "tests failed" in result.forced[0]
    assert "tests 9/11" in repo.head.commit.message.splitlines()[0]
    assert "Committed with --force despite:" in repo.head.commit.message


def test_a_run_without_test_results_is_refused(setup):
    workspace, _ = setup
    record = RunRecord.create(workspace, "benchmark")
    with pytest.raises(CheckFailed, match="has no test results"):
        git_commit.run(workspace, git_commit.Options(run_id=record.id))


def test_a_file_edited_after_the_run_wrote_it_is_refused_unless_forced(setup):
    workspace, _ = setup
    simulate_run(workspace)
    (workspace.root / "koschei" / "engine" / "softmax.py").write_text("# hand edit\n")
    with pytest.raises(UsageError, match="changed after run .* wrote them: "
                                         "koschei/engine/softmax.py") as caught:
        git_commit.run(workspace, git_commit.Options())
    assert caught.value.exit_code == 2
    result = git_commit.run(workspace, git_commit.Options(force=True))
    assert result.commit and any("changed after run" in reason for reason in result.forced)


def test_not_a_repository(tmp_path):
    root = tmp_path / "ws"
    (root / "specs").mkdir(parents=True)
    workspace = Workspace(root.resolve())
    simulate_run(workspace)
    with pytest.raises(UsageError, match="not in a git repository") as caught:
        git_commit.run(workspace, git_commit.Options())
    assert "koschei init" in caught.value.hint


def test_no_git_identity(setup, tmp_path, monkeypatch):
    workspace, repo = setup
    with repo.config_writer() as config:
        config.remove_section("user")
        config.set_value("user", "useConfigOnly", "true")  # no guessing from the host name
    empty = tmp_path / "empty-gitconfig"
    empty.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for variable in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME",
                     "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(variable, raising=False)
    simulate_run(workspace)
    head = repo.head.commit.hexsha
    with pytest.raises(UsageError, match="git does not know who you are") as caught:
        git_commit.run(workspace, git_commit.Options())
    assert "git config user.name" in caught.value.hint
    assert repo.head.commit.hexsha == head
    assert "?? koschei/engine/softmax.py" in status(repo)  # nothing was staged either


def test_detached_head(setup):
    workspace, repo = setup
    repo.git.checkout("--detach", "--quiet")
    simulate_run(workspace)
    with pytest.raises(UsageError, match="HEAD is detached") as caught:
        git_commit.run(workspace, git_commit.Options())
    assert "git switch" in caught.value.hint


def make_conflict(workspace: Workspace, repo: git.Repo, operation: str) -> None:
    """Leave ``operation`` (merge, cherry-pick, rebase) stopped on a real conflict."""
    conflict = workspace.root / "conflict.txt"
    conflict.write_text("base\n")
    repo.git.add("conflict.txt")
    repo.git.commit("-qm", "base")
    repo.git.checkout("-q", "-b", "other")
    conflict.write_text("theirs\n")
    repo.git.commit("-qam", "theirs")
    repo.git.checkout("-q", "main")
    conflict.write_text("ours\n")
    repo.git.commit("-qam", "ours")
    if operation == "rebase":
        repo.git.checkout("-q", "other")
    with pytest.raises(git.GitCommandError):
        {"merge": lambda: repo.git.merge("other"),
         "cherry-pick": lambda: repo.git.cherry_pick("other"),
         "rebase": lambda: repo.git.rebase("main")}[operation]()


@pytest.mark.parametrize("operation", ["merge", "cherry-pick", "rebase"])
def test_an_operation_in_progress(setup, operation):
    workspace, repo = setup
    make_conflict(workspace, repo, operation)
    simulate_run(workspace)
    with pytest.raises(UsageError, match=f"a {operation.split('-')[0]}.* is in progress") as caught:
        git_commit.run(workspace, git_commit.Options())
    assert "--abort" in caught.value.hint


def test_a_refusing_hook_leaves_the_index_as_it_was(setup):
    workspace, repo = setup
    hook = Path(repo.git_dir) / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho 'generated files must be reviewed' >&2\nexit 1\n")
    hook.chmod(hook.stat().st_mode | stat.S_IEXEC)
    simulate_run(workspace)
    before = status(repo)
    with pytest.raises(UsageError, match="git commit failed: .*must be reviewed"):
        git_commit.run(workspace, git_commit.Options())
    assert status(repo) == before | {"?? runs/.lock"}
    assert "?? koschei/engine/softmax.py" in status(repo)


def test_a_running_cycle_holds_the_workspace(setup):
    workspace, _ = setup
    simulate_run(workspace)
    code = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from koschei.runs import workspace_lock
        from koschei.workspace import Workspace
        with workspace_lock(Workspace(Path(sys.argv[1]))):
            print("held", flush=True)
            time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code, str(workspace.root)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match=f"another koschei cycle .*pid {holder.pid}"):
            git_commit.run(workspace, git_commit.Options())
    finally:
        holder.kill()
        holder.wait()


# --- through the command line: exit codes and messages ---------------------------------------------


def invoke(workspace: Workspace, *args: str):
    return runner.invoke(app, ["git-commit", "--root", str(workspace.root), *args],
                         terminal_width=200)


def test_cli_dry_run_and_commit(setup):
    workspace, repo = setup
    simulate_run(workspace)
    head = repo.head.commit.hexsha
    dry = invoke(workspace, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "koschei/engine/softmax.py" in dry.output and "would commit" in dry.output
    assert repo.head.commit.hexsha == head
    done = invoke(workspace)
    assert done.exit_code == 0, done.output
    assert repo.head.commit.hexsha != head and repo.head.commit.hexsha[:12] in done.output
    again = invoke(workspace, "--json")
    assert again.exit_code == 0 and '"skipped": "nothing to commit' in again.output


@pytest.mark.parametrize("state", ["not a repository", "detached", "merge", "dirty"])
def test_cli_refuses_unusable_repository_states_with_exit_2(tmp_path, setup, state):
    workspace, repo = setup
    if state == "not a repository":
        root = tmp_path / "plain"
        (root / "specs").mkdir(parents=True)
        workspace = Workspace(root.resolve())
        expected = "not in a git repository"
    elif state == "detached":
        repo.git.checkout("--detach", "--quiet")
        expected = "HEAD is detached"
    elif state == "merge":
        make_conflict(workspace, repo, "merge")
        expected = "a merge is in progress"
    else:
        expected = "changed after run"
    simulate_run(workspace)
    if state == "dirty":
        (workspace.root / "tests" / "engine" / "test_softmax.py").write_text("# edited\n")
    result = invoke(workspace)
    assert result.exit_code == 2, result.output
    assert expected in result.output


def test_cli_failed_tests_exit_1(setup):
    workspace, _ = setup
    simulate_run(workspace, tests_ok=False)
    result = invoke(workspace)
    assert result.exit_code == 1, result.output
    assert "refusing to commit" in result.output and "--force" in result.output
    assert invoke(workspace, "--force").exit_code == 0



def test_a_search_run_of_its_own_commits_on_its_own_tests(setup):
    workspace, repo = setup
    record = RunRecord.create(workspace, "evolve")
    (workspace.root / "tuning").mkdir()
    (workspace.root / "tuning" / "aba5a72f6fca1765.json").write_text('{"format": 1}\n')
    record.save_phase("evolve", evolve_result("improved", kept=True))
    result = git_commit.run(workspace, git_commit.Options())
    assert result.commit and "tuning/aba5a72f6fca1765.json" in committed_files(repo)

    failed = RunRecord.create(workspace, "evolve")
    failed.save_phase("evolve", {**evolve_result("tests_failed", kept=False), "ok": False})
    with pytest.raises(CheckFailed, match="has no test results"):
        git_commit.run(workspace, git_commit.Options())
