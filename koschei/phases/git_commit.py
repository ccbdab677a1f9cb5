"""The git_commit phase: commit exactly what a run wrote, with the evidence in the message.

The paths committed are the run's own (``RunRecord.written_paths()``): specs it created, engine
modules and generated tests it created or updated, and its record folder ``runs/<id>/`` (without
``journal.json`` and ``git_commit.json``, which describe the commit itself). Of those, only the
files git sees as new or changed are committed, with ``git commit --only -- <paths>``: git builds
the commit from HEAD plus those paths' working-tree content in a temporary index, so anything
else a user has changed, staged or not, stays exactly as it was (changes and staging alike).

Refused, before anything is touched:
- the run's tests are missing or failed (CheckFailed, exit 1) unless ``force`` (a search's run,
  ``koschei evolve``, ran its spec's tests on the values it kept: ``evolve.json`` says how);
- a file the run wrote was changed afterwards (its sha256 differs from the one recorded when the
  phase wrote it): committing it would pass someone's edit off as the run's (exit 2, ``force``
  commits it anyway);
- no repository, no git identity, a detached HEAD, or a merge / rebase / cherry-pick / revert in
  progress (exit 2, each with what to do).

Nothing to commit (every path is already in HEAD as it is) is a result, not an error.
Repository hooks (pre-commit, commit-msg) run as for any commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from koschei.errors import CheckFailed, UsageError
from koschei.files import file_sha256
from koschei.phases.base import Progress, Result, SilentProgress
from koschei.runs import LOCAL_RECORD_FILES, RunRecord, workspace_lock
from koschei.workspace import Workspace

# Git's markers of an operation that has to be finished (or aborted) before committing.
IN_PROGRESS = (
    ("MERGE_HEAD", "a merge", "git merge --continue (or git merge --abort)"),
    ("CHERRY_PICK_HEAD", "a cherry-pick", "git cherry-pick --continue (or --abort)"),
    ("REVERT_HEAD", "a revert", "git revert --continue (or --abort)"),
    ("rebase-merge", "a rebase", "git rebase --continue (or git rebase --abort)"),
    ("rebase-apply", "a rebase or git am",
     "git rebase --continue / git am --continue (or --abort)"),
    ("BISECT_LOG", "a bisect", "git bisect reset"),
)
MAX_FILES_IN_MESSAGE = 40


@dataclass
class Options:
    run_id: str = "latest"
    force: bool = False  # commit even when the tests failed or a written file changed since
    dry_run: bool = False  # list what would be committed, commit nothing
    # Commit only when the run wrote something outside its own record (later loop iterations).
    require_changes: bool = False


@dataclass
class GitCommitResult(Result):
    run_id: str
    commit: str | None = None  # the new commit's sha (None: nothing committed)
    branch: str | None = None
    paths: list[str] = field(default_factory=list)  # committed (would be, on a dry run)
    new_paths: list[str] = field(default_factory=list)  # of those, not tracked before
    message: str = ""
    dry_run: bool = False
    skipped: str | None = None  # why nothing was committed
    unchanged: list[str] = field(default_factory=list)  # written, but already in HEAD as is
    ignored: list[str] = field(default_factory=list)  # written, but excluded by .gitignore
    missing: list[str] = field(default_factory=list)  # reported written, gone from disk
    forced: list[str] = field(default_factory=list)  # the refusals --force overrode

    def summary(self) -> str:
        if self.commit:
            return f"committed {len(self.paths)} file(s) as {self.commit[:12]}"
        if self.dry_run:
            return f"would commit {len(self.paths)} file(s)"
        return self.skipped or ""


# --- the repository -------------------------------------------------------------------------------


def open_repository(root: Path) -> Any:
    """The git repository holding ``root`` (UsageError when there is none)."""
    import git

    try:
        return git.Repo(root, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise UsageError(f"{root} is not in a git repository, so there is nothing to commit to",
                         hint=f"run git init in {root} (koschei init DIR makes a workspace with "
                              "a repository and a first commit)") from None


def check_repository_state(repo: Any) -> None:
    """Refuse states in which a commit would land somewhere unexpected or mix with other work."""
    git_dir = Path(repo.git_dir)
    for marker, what, resolve in IN_PROGRESS:
        if (git_dir / marker).exists():
            raise UsageError(f"{what} is in progress in {repo.working_tree_dir}: koschei does not "
                             "commit in the middle of it", hint=f"finish it first: {resolve}")
    if repo.head.is_detached:
        raise UsageError(f"HEAD is detached in {repo.working_tree_dir} (at "
                         f"{repo.head.commit.hexsha[:12]}): a commit would belong to no branch",
                         hint="check out a branch first: git switch <branch> "
                              "(or git switch -c <new-branch>)")
    unmerged = [line for line in repo.git.ls_files("--unmerged").splitlines() if line]
    if unmerged:
        raise UsageError(f"the index of {repo.working_tree_dir} has unmerged paths",
                         hint="resolve the conflicts and git add them first")


def check_identity(repo: Any) -> None:
    """Refuse early (with the fix) when git does not know who is committing."""
    import git

    for variable in ("GIT_AUTHOR_IDENT", "GIT_COMMITTER_IDENT"):
        try:
            repo.git.var(variable)
        except git.GitCommandError:
            raise UsageError(
                f"git does not know who you are, so it cannot commit in {repo.working_tree_dir}",
                hint='git config user.name "Your Name" && git config user.email you@example.com '
                     "(add --global to set it for every repository)") from None


def repository_status(repo: Any, paths: list[str]) -> dict[str, str]:
    """Repository-relative path -> two-letter porcelain status, for ``paths`` that git reports
    (new ``??``, ignored ``!!``, changed ``XY``); paths identical to HEAD are absent."""
    if not paths:
        return {}
    output = repo.git(literal_pathspecs=True).execute(
        ["git", "status", "--porcelain=v1", "-z", "--untracked-files=all",
         "--ignored=traditional", "--", *paths], strip_newline_in_stdout=False)
    status: dict[str, str] = {}
    ignored_folders: list[str] = []
    entries = iter(output.split("\0"))
    for entry in entries:
        if len(entry) < 4:
            continue
        code, path = entry[:2], entry[3:]
        if path.endswith("/"):
            if code == "!!":
                ignored_folders.append(path)
            continue
        status[path] = code
        if code[0] in "RC":  # a rename or copy is followed by its source path
            next(entries, None)
    for path in paths:
        if path not in status and any(path.startswith(folder) for folder in ignored_folders):
            status[path] = "!!"
    return status


def commit_paths(repo: Any, paths: list[str], new_paths: list[str], message: str,
                 retry: str = "koschei git-commit") -> str:
    """Commit the working-tree content of ``paths`` (repository-relative) and nothing else.

    New files are added to the index first (``git commit --only`` takes only known paths); if
    the commit fails they are taken out again, so a failure leaves the index as it was.
    """
    import git

    command = repo.git(literal_pathspecs=True)
    if new_paths:
        command.add("--", *new_paths)
    try:
        command.commit("--only", "--quiet", "-m", message, "--", *paths)
    except git.GitCommandError as error:
        if new_paths:
            try:
                command.rm("--cached", "--quiet", "--", *new_paths)
            except git.GitCommandError:
                pass
        details = (error.stderr or error.stdout or "").strip().replace("stderr: ", "")
        raise UsageError(f"git commit failed: {details or error}",
                         hint=f"a hook may have refused the commit; fix what it says and run "
                              f"{retry} again") from None
    return repo.git.rev_parse("HEAD").strip()


# --- what the run wrote --------------------------------------------------------------------------


def _record_files(record: RunRecord) -> list[Path]:
    """The files of the run folder that are committed: all but the local ones and temporaries."""
    files = []
    for path in sorted(record.dir.rglob("*")):
        relative = path.relative_to(record.dir)
        if not path.is_file() or path.name.endswith(".tmp") or "__pycache__" in relative.parts:
            continue
        if relative.as_posix() in LOCAL_RECORD_FILES:
            continue
        files.append(path)
    return files


def candidate_files(workspace: Workspace, record: RunRecord) -> tuple[list[str], list[str]]:
    """(existing files to consider, reported paths that are gone), workspace-relative."""
    files: dict[str, None] = {}
    missing: list[str] = []
    for relative in record.written_paths():
        path = workspace.root / relative
        if path.resolve() == record.dir.resolve():
            files.update(dict.fromkeys(workspace.relative(p) for p in _record_files(record)))
        elif path.is_file():
            files[relative] = None
        elif path.is_dir():
            files.update(dict.fromkeys(workspace.relative(p) for p in sorted(path.rglob("*"))
                                       if p.is_file() and not p.name.endswith(".tmp")))
        else:
            missing.append(relative)
    return list(files), missing


def changed_since_written(workspace: Workspace, record: RunRecord) -> list[str]:
    """Files whose content differs from what the run's phases wrote."""
    changed = []
    for relative, sha in record.written_files().items():
        path = workspace.root / relative
        if sha is None or not path.is_file():
            continue
        if file_sha256(path) != sha:
            changed.append(relative)
    return changed


# --- the message -----------------------------------------------------------------------------------


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _test_totals(test_run: dict[str, Any]) -> tuple[int, int, int]:
    """Tests passed, collected and skipped over every spec of a test_run result."""
    passed = total = skipped = 0
    for spec in test_run.get("specs") or []:
        passed += int(spec.get("passed") or 0)
        skipped += int(spec.get("skipped") or 0)
        total += sum(int(spec.get(k) or 0) for k in ("passed", "failed", "errors", "skipped"))
    return passed, total, skipped


def _seconds(value: Any) -> str:
    seconds = float(value)
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} µs"


def benchmark_lines(benchmark: dict[str, Any]) -> list[str]:
    """One headline line per benchmark case."""
    lines = []
    for case in benchmark.get("cases") or []:
        label = f"{case.get('spec')} {case.get('case')}"
        if case.get("verdict") not in ("ok", "regression"):
            lines.append(f"  {label}: {case.get('verdict')}: {case.get('error') or ''}".rstrip())
            continue
        parts = []
        engine = (case.get("contenders") or {}).get("engine") or {}
        if engine.get("median_s") is not None:
            parts.append(f"{_seconds(engine['median_s'])} median")
        if case.get("gbs") is not None:
            parts.append(f"{case['gbs']:.1f} GB/s")
        if case.get("gflops") is not None and case.get("bound") == "compute":
            parts.append(f"{case['gflops']:.1f} GFLOP/s")
        if case.get("roofline_fraction") is not None:
            bound = f" ({case['bound']}-bound)" if case.get("bound") else ""
            parts.append(f"{case['roofline_fraction'] * 100:.0f}% of roofline{bound}")
        if case.get("speedup_vs_numpy") is not None:
            parts.append(f"x{case['speedup_vs_numpy']:.2f} vs NumPy")
        if case.get("speedup_vs_torch") is not None:
            parts.append(f"x{case['speedup_vs_torch']:.2f} vs PyTorch")
        if case.get("verdict") == "regression":
            parts.append(f"REGRESSION: {case.get('error')}")
        lines.append(f"  {label}: " + ", ".join(parts))
    return lines


def evolve_lines(evolve: dict[str, Any]) -> list[str]:
    """The search's evidence: what it searched, the best it found, the confirmation's medians,
    gain and p-value, and what was kept."""
    spec, case = evolve.get("spec"), evolve.get("case")
    evaluations = evolve.get("evaluations") or []
    lines = [(f"  {spec} {case}: {evolve.get('strategy')} search (seed {evolve.get('seed')}) "
              f"over {', '.join(evolve.get('searched') or [])}: {len(evaluations)} candidates, "
              f"{evolve.get('measured', 0)} measured, {evolve.get('cache_hits', 0)} from the "
              f"cache; stopped: {evolve.get('stopped')}")]
    failures = evolve.get("failures") or {}
    if failures:
        lines.append("  failed candidates (never chosen): "
                     + ", ".join(f"{n} {verdict}" for verdict, n in failures.items()))
    best, incumbent = evolve.get("best") or {}, evolve.get("incumbent") or {}
    if best.get("tunables"):
        changed = {k: v for k, v in best["tunables"].items() if incumbent.get(k) != v}
        lines.append(f"  best: x{best.get('ratio', 0):.3f} of the defaults' time with "
                     + (", ".join(f"{k}={v}" for k, v in changed.items()) or "the current "
                        "values"))
    confirmation = evolve.get("confirmation")
    if confirmation:
        lines.append(f"  confirmed beside the current values: "
                     f"{_seconds(confirmation['incumbent_median_s'])} -> "
                     f"{_seconds(confirmation['candidate_median_s'])} median, gain "
                     f"{confirmation['gain']:+.1%}, p = {confirmation['p_value']:.2g} "
                     f"(Mann-Whitney U, {confirmation['samples']} samples each)")
    for other in evolve.get("other_cases") or []:
        lines.append(f"  on {other['case']}: {other['gain']:+.1%} (p = "
                     f"{other['p_value_slower']:.2g} that it is slower)")
    verdict = str(evolve.get("verdict", "")).replace("_", " ")
    reason = evolve.get("reason")
    lines.append(f"  verdict: {verdict}" + (f" ({reason})" if reason else ""))
    if evolve.get("tuned_values_file"):
        lines.append(f"  kept in {evolve['tuned_values_file']}; the spec's tests: "
                     f"{evolve.get('tests')}")
    return lines


def _evolve_subject(record: RunRecord, evolve: dict[str, Any]) -> str:
    target = f"{evolve.get('spec')} {evolve.get('case')}"
    confirmation = evolve.get("confirmation") or {}
    if evolve.get("verdict") == "improved" and evolve.get("tuned_values_file"):
        return (f"koschei: run {record.id}: {target} {confirmation.get('gain', 0):+.1%} "
                f"(p={confirmation.get('p_value', 1):.2g}), tuned")
    return (f"koschei: run {record.id}: {target}: "
            f"{str(evolve.get('verdict', '')).replace('_', ' ')}")


def build_message(record: RunRecord, paths: list[str], new_paths: list[str],
                  forced: list[str]) -> str:
    test_run = record.phase("test_run")
    evolve = record.phase("evolve")
    if evolve is not None:
        subject = _evolve_subject(record, evolve)
    elif test_run is not None:
        specs = test_run.get("specs") or []
        passed, total, skipped = _test_totals(test_run)
        subject = f"koschei: run {record.id}: {_plural(len(specs), 'spec')}, tests {passed}/{total}"
        if skipped:
            subject += f" ({skipped} skipped)"
    else:
        subject = f"koschei: run {record.id}: tests not run"
    manifest = record.manifest
    machine = manifest.get("machine") or {}
    headline = (f"Run {record.id} (koschei {manifest.get('command', '?')}) on "
                f"{machine.get('cpu_model', 'an unknown CPU')}, {machine.get('cores', '?')} "
                f"cores, fingerprint {manifest.get('fingerprint', '?')}.")
    body = [headline]
    if test_run is not None:
        body += ["", "Tests (passed/collected per spec):"]
        for spec in test_run.get("specs") or []:
            collected = sum(int(spec.get(k) or 0) for k in ("passed", "failed", "errors",
                                                            "skipped"))
            line = (f"  {spec.get('spec')}: {spec.get('passed', 0)}/{collected} "
                    f"{spec.get('status', '?')}")
            if spec.get("duration_s") is not None:
                line += f" in {float(spec['duration_s']):.1f} s"
            body.append(line)
    benchmark = record.phase("benchmark")
    if benchmark is not None:
        threads = benchmark.get("threads")
        body += ["", (f"Benchmark (engine medians on {threads} threads; speedups are paired "
                      "ratios within this run):")]
        body += benchmark_lines(benchmark) or ["  no cases"]
    if evolve is not None:
        body += ["", (f"Evolve (each candidate checked against the reference, then timed "
                      f"beside the defaults on {evolve.get('threads')} threads; machine "
                      f"{evolve.get('fingerprint')}):")]
        body += evolve_lines(evolve)
    if forced:
        body += ["", "Committed with --force despite:"] + [f"  {reason}" for reason in forced]
    new = set(new_paths)
    body += ["", f"Files ({len(paths)}):"]
    shown = paths[:MAX_FILES_IN_MESSAGE]
    body += [f"  {'new     ' if path in new else 'modified'} {path}" for path in shown]
    if len(paths) > len(shown):
        body.append(f"  ... and {len(paths) - len(shown)} more")
    return subject + "\n\n" + "\n".join(body) + "\n"


# --- the phase -------------------------------------------------------------------------------------


def check_tests(record: RunRecord, force: bool) -> list[str]:
    """Refuse a run whose tests are missing or failed; with ``force``, say what was overridden."""
    test_run = record.phase("test_run")
    evolve = record.phase("evolve")
    if test_run is None and evolve is not None and evolve.get("ok", True):
        return []  # a search: it ran its spec's tests on what it kept (or kept nothing)
    if test_run is None:
        problem = f"run {record.id} has no test results (no test_run.json)"
        hint = "run the tests first (koschei cycle, or koschei test-run then koschei git-commit)"
    elif not test_run.get("ok", False):
        failing = [s.get("spec") for s in test_run.get("specs") or [] if not s.get("ok", True)]
        detail = f": {', '.join(map(str, failing))}" if failing else ""
        problem = f"run {record.id}'s tests failed{detail}"
        hint = "fix them and run the cycle again"
    else:
        return []
    if not force:
        raise CheckFailed(f"refusing to commit: {problem}",
                          hint=f"{hint}; or commit anyway with --force")
    return [problem]


def run(workspace: Workspace, options: Options, progress: Progress | None = None,
        ) -> GitCommitResult:
    progress = progress or SilentProgress()
    with workspace_lock(workspace, "git-commit"):
        return _commit(workspace, options, progress)


def _commit(workspace: Workspace, options: Options, progress: Progress) -> GitCommitResult:
    record = RunRecord.load(workspace, options.run_id)
    result = GitCommitResult(run_id=record.id, dry_run=options.dry_run)
    repo = open_repository(workspace.root)
    with repo:
        check_repository_state(repo)
        result.branch = None if repo.head.is_detached else repo.active_branch.name
        result.forced += check_tests(record, options.force)

        changed = changed_since_written(workspace, record)
        if changed:
            problem = (f"{_plural(len(changed), 'file')} changed after run {record.id} wrote "
                       f"them: {', '.join(changed)}")
            if not options.force:
                raise UsageError(f"refusing to commit: {problem}; committing would record "
                                 "those edits as the run's",
                                 hint="commit the edits yourself, or run the cycle again; or "
                                      "commit them with the run anyway with --force")
            result.forced.append(problem)

        progress.step(f"finding what run {record.id} wrote")
        files, result.missing = candidate_files(workspace, record)
        repo_root = Path(repo.working_tree_dir).resolve()

        def in_repo(relative: str) -> str:
            return (workspace.root / relative).resolve().relative_to(repo_root).as_posix()

        to_repo = {relative: in_repo(relative) for relative in files}
        status = repository_status(repo, list(to_repo.values()))
        for relative, repo_path in to_repo.items():
            code = status.get(repo_path)
            if code is None:
                result.unchanged.append(relative)
            elif code == "!!":
                result.ignored.append(relative)
            else:
                result.paths.append(relative)
                if code == "??":
                    result.new_paths.append(relative)

        record_prefix = record.relative_dir + "/"
        outside_record = [p for p in result.paths if not p.startswith(record_prefix)]
        if not result.paths:
            result.skipped = (f"nothing to commit: every file run {record.id} wrote is already "
                              "committed as it is")
            return result
        if options.require_changes and not outside_record:
            result.skipped = ("not committed: nothing changed outside the run record (no new "
                              f"or different spec, module or test); it stays in "
                              f"{record.relative_dir}/")
            result.paths, result.new_paths = [], []
            return result

        result.message = build_message(record, result.paths, result.new_paths, result.forced)
        if options.dry_run:
            result.skipped = "dry run: nothing was committed"
            return result

        check_identity(repo)
        progress.step(f"committing {_plural(len(result.paths), 'file')}")
        result.commit = commit_paths(repo, [to_repo[p] for p in result.paths],
                                     [to_repo[p] for p in result.new_paths], result.message)
    return result

