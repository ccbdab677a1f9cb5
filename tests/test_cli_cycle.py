"""`koschei cycle` end to end: the real phases, in a workspace made by `koschei init`.

Each cycle runs as its own process (`python -m koschei`), restricted to one small spec
(softmax) with a tiny benchmark budget; this machine's roofline calibration is measured once,
cheaply, and copied into each workspace so that no test pays for a full calibration.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import git
import pytest
import yaml

from koschei.phases import PHASES
from koschei.runs import list_runs, workspace_lock
from koschei.workspace import Workspace, bundled_path

SPEC = "softmax"
SPEC_FILE = Path("specs/foundation/softmax.yaml")
CYCLE = ["cycle", "--select", SPEC, "--budget", "0.05"]
CACHES = {".git", "__pycache__", ".hypothesis", ".pytest_cache", ".numba_cache"}
RUN_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")


def require_the_phases() -> None:
    """Fail (not skip) with what is missing when the phases or the spec are not there."""
    missing = [phase for phase in PHASES
               if importlib.util.find_spec(f"koschei.phases.{phase}") is None]
    if missing:
        pytest.fail(f"the cycle needs every phase module; missing: {', '.join(missing)} "
                    "(koschei/phases/<phase>.py)")
    if not (bundled_path("specs") / SPEC_FILE.relative_to("specs")).is_file():
        pytest.fail(f"the bundled specs have no {SPEC_FILE}: the end-to-end cycle tests use it")


@pytest.fixture(scope="module")
def environment(tmp_path_factory) -> dict[str, str]:
    """Git identity of our own, offline, and a cheap calibration to copy into workspaces."""
    require_the_phases()
    home = tmp_path_factory.mktemp("home")
    gitconfig = home / "gitconfig"
    gitconfig.write_text("[user]\n\tname = Test Author\n\temail = author@example.com\n")
    env = dict(os.environ, GIT_CONFIG_GLOBAL=str(gitconfig), GIT_CONFIG_NOSYSTEM="1",
               HF_HUB_OFFLINE="1")
    calibration_runs = home / "runs"
    code = ("import sys; from pathlib import Path; from koschei.bench import calibration as c;"
            "c.load_or_measure(Path(sys.argv[1]), c.resolve_threads(None), array_mib=8,"
            " gemm_n=256, repeats=1)")
    subprocess.run([sys.executable, "-c", code, str(calibration_runs)], check=True, env=env)
    env["KOSCHEI_TEST_CALIBRATION"] = str(calibration_runs / "calibration")
    return env


def new_workspace(parent: Path, env: dict[str, str]) -> Path:
    root = parent / "kernels"
    result = koschei(parent, env, "init", str(root))
    assert result.returncode == 0, result.stderr
    shutil.copytree(env["KOSCHEI_TEST_CALIBRATION"], root / "runs" / "calibration")
    return root


def koschei(cwd: Path, env: dict[str, str], *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "koschei", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900, check=False, **kwargs)


def journal(root: Path) -> dict:
    return json.loads((list_runs(Workspace(root))[-1].dir / "journal.json").read_text())


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file of the workspace but git's and the caches; run ids replaced by <run>; the
    content of everything outside runs/ (run records hold timings, which differ)."""
    files: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if not path.is_file() or CACHES & set(relative.parts):
            continue
        name = RUN_ID.sub("<run>", relative.as_posix())
        files[name] = None if relative.parts[0] == "runs" else path.read_bytes()
    return files


def temporaries(root: Path) -> list[str]:
    return [str(path) for path in root.rglob("*.tmp") if ".git" not in path.parts]


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, environment) -> tuple[Path, subprocess.CompletedProcess]:
    """One uninterrupted cycle, shared by the tests that check its outcome."""
    root = new_workspace(tmp_path_factory.mktemp("clean"), environment)
    return root, koschei(root, environment, *CYCLE)


def test_a_cycle_generates_tests_benchmarks_and_commits(clean_run):
    root, result = clean_run
    assert result.returncode == 0, result.stdout + result.stderr
    for phase in PHASES:  # progress on stderr: each phase as it starts and ends
        assert f"▶ {phase}" in result.stderr
        assert re.search(rf"✓ {phase} ok in \d+\.\d s", result.stderr), result.stderr
    assert (root / "koschei" / "engine" / f"{SPEC}.py").is_file()
    assert (root / "tests" / "engine" / f"test_{SPEC}.py").is_file()
    record = list_runs(Workspace(root))[-1]
    assert journal(root)["status"] == "finished"
    for phase in PHASES:
        assert record.phase(phase) is not None, phase
    summaries = {entry["phase"]: entry["summary"] for entry in journal(root)["phases"]}
    assert re.fullmatch(r"\d+ claim\(s\): .*; \d+ next step\(s\)", summaries["pas_analyze"])
    assert re.fullmatch(r"\d+ specs in \d+ tiers: \d+ implemented, \d+ composed, "
                        r"\d+ provided by another spec, \d+ planned", summaries["tech_tree"])
    assert summaries["code_generate"] == "3 create"  # engine module, its tests, conftest.py
    assert re.fullmatch(r"(\d+)/\1 tests passed in 1 spec\(s\)", summaries["test_run"])
    assert (record.dir / "junit.xml").is_file()
    repo = git.Repo(root)
    subject = repo.head.commit.message.splitlines()[0]
    assert re.fullmatch(rf"koschei: run {record.id}: 1 spec, tests (\d+)/\1", subject), subject
    committed = set(repo.git.show("--name-only", "--format=", "HEAD").splitlines())
    assert {f"koschei/engine/{SPEC}.py", f"tests/engine/test_{SPEC}.py",
            f"runs/{record.id}/manifest.json", f"runs/{record.id}/test_run.json",
            f"runs/{record.id}/benchmark.json"} <= committed
    assert repo.git.status("--porcelain", "--untracked-files=all") == ""
    assert temporaries(root) == []


def test_kill_9_during_test_run_then_resume_ends_like_a_clean_run(tmp_path, environment,
                                                                  clean_run):
    clean_root, clean = clean_run
    assert clean.returncode == 0, clean.stderr
    root = new_workspace(tmp_path, environment)
    process = subprocess.Popen([sys.executable, "-m", "koschei", *CYCLE], cwd=root,
                               env=environment, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            runs = list_runs(Workspace(root))
            current = runs and (json.loads((runs[-1].dir / "journal.json").read_text())
                                if (runs[-1].dir / "journal.json").is_file() else {})
            if current and current.get("current_phase") == "test_run":
                break
            assert process.poll() is None, "the cycle ended before test_run started"
            assert time.monotonic() < deadline, "test_run did not start"
            time.sleep(0.05)
        time.sleep(0.5)  # pytest is starting up: the kill lands inside test_run
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the cycle and its pytest, like a power cut
        process.wait()
    killed = journal(root)
    assert killed["status"] == "running" and killed["current_phase"] == "test_run"

    resumed = koschei(root, environment, "cycle", "--resume")

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming run" in resumed.stderr
    final = journal(root)
    assert final["status"] == "finished" and len(final["resumed_at"]) == 1
    assert [p["phase"] for p in final["phases"]] == list(PHASES)
    assert len(list_runs(Workspace(root))) == 1
    assert snapshot(root) == snapshot(clean_root)
    assert temporaries(root) == []
    repo, clean_repo = git.Repo(root), git.Repo(clean_root)
    assert repo.git.status("--porcelain", "--untracked-files=all") == ""
    assert [RUN_ID.sub("<run>", c.message.splitlines()[0]) for c in repo.iter_commits()] == \
        [RUN_ID.sub("<run>", c.message.splitlines()[0]) for c in clean_repo.iter_commits()]
    assert {RUN_ID.sub("<run>", p) for p in repo.git.ls_tree("-r", "--name-only",
                                                              "HEAD").splitlines()} == \
        {RUN_ID.sub("<run>", p) for p in clean_repo.git.ls_tree("-r", "--name-only",
                                                                 "HEAD").splitlines()}


def test_the_loop_evolves_and_commits_each_search_with_its_evidence(tmp_path, environment):
    root = new_workspace(tmp_path, environment)
    repo = git.Repo(root)
    head = repo.head.commit.hexsha

    result = koschei(root, environment, *CYCLE, "--loop", "--max-iterations", "2",
                     "--evaluations", "3")

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.count("▶ evolve") == 2 and "evolve target: softmax/" in result.stderr
    records = list_runs(Workspace(root))
    assert len(records) == 2
    searches = [record.phase("evolve") for record in records]
    for search in searches:
        assert search["spec"] == SPEC and len(search["evaluations"]) == 3
        assert search["verdict"] in ("improved", "no_significant_gain"), search
    # the second iteration searched another case, or the same one again after a kept gain
    first, second = searches
    assert second["case"] != first["case"] or first["tuned_values_file"]
    commits = list(repo.iter_commits(f"{head}..HEAD"))
    assert len(commits) == 2
    for commit, search, record in zip(reversed(commits), searches, records, strict=True):
        subject = commit.message.splitlines()[0]
        assert subject.startswith(f"koschei: run {record.id}: {SPEC} {search['case']}")
        assert "search (seed 0) over parallel, fastmath" in commit.message
        if search["tuned_values_file"]:
            assert subject.endswith("tuned") and "p = " in commit.message
            assert search["tuned_values_file"] in commit.stats.files
        else:
            assert subject.endswith("no significant gain")
        assert f"runs/{record.id}/evolve.json" in commit.stats.files
    assert repo.git.status("--porcelain", "--untracked-files=all") == ""


def break_the_reference(spec_path: Path) -> None:
    """Make the spec's reference raise when its module is imported: the generated tests then
    fail at once (no kernel is compiled), which is all a failed check needs to be."""
    spec = yaml.safe_load(spec_path.read_text())
    spec["reference"] = spec["reference"] + "\n\nraise RuntimeError('broken on purpose')\n"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))


def test_failing_tests_stop_the_cycle_before_git_commit(tmp_path, environment):
    root = new_workspace(tmp_path, environment)
    break_the_reference(root / SPEC_FILE)
    head = git.Repo(root).head.commit.hexsha

    result = koschei(root, environment, *CYCLE)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "✗ test_run failed" in result.stderr
    assert "▶ benchmark" not in result.stderr and "▶ git_commit" not in result.stderr
    state = journal(root)
    assert state["status"] == "failed" and state["failed_phase"] == "test_run"
    assert git.Repo(root).head.commit.hexsha == head
    record = list_runs(Workspace(root))[-1]
    assert record.phase("test_run")["ok"] is False and record.phase("benchmark") is None


def test_a_second_cycle_is_refused_while_one_runs(tmp_path, environment):
    root = new_workspace(tmp_path, environment)
    with workspace_lock(Workspace(root)):
        result = koschei(root, environment, "cycle")
    assert result.returncode == 2
    assert f"another koschei cycle is running in this workspace (pid {os.getpid()}" in \
        " ".join(result.stderr.split())
    assert list_runs(Workspace(root)) == []


def test_resume_with_nothing_to_resume(tmp_path, environment):
    root = new_workspace(tmp_path, environment)
    result = koschei(root, environment, "cycle", "--resume")
    assert result.returncode == 2
    assert "no cycle run to resume" in result.stderr and "koschei cycle" in result.stderr


def test_option_errors_exit_2(tmp_path, environment):
    root = new_workspace(tmp_path, environment)
    result = koschei(root, environment, "cycle", "--max-iterations", "2")
    assert result.returncode == 2 and "--max-iterations needs --loop" in result.stderr
    result = koschei(root, environment, "cycle", "--resume", "--select", SPEC)
    assert result.returncode == 2 and "--resume" in result.stderr


# --- Ctrl-C through the command line (stand-in phases: no compiling, exact timing) ---------------

CYCLE_WITH_A_SLOW_PHASE = """
import sys, time, types
from dataclasses import dataclass
from koschei.phases import PHASES
from koschei.phases.base import Result

@dataclass
class Done(Result):
    phase: str

for phase in PHASES:
    module = types.ModuleType("koschei.phases." + phase)

    @dataclass
    class Options:
        pass

    def run(workspace, options, progress=None, phase=phase):
        if phase == "tech_tree":
            print("in tech_tree", flush=True)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                time.sleep(0.01)
            print("tech_tree done", flush=True)
        return Done(phase)

    module.Options, module.run = Options, run
    sys.modules["koschei.phases." + phase] = module

from koschei.cli import main
sys.argv = ["koschei", "cycle"]
main()
"""


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_stops_after_the_phase_or_at_once_and_exits_130(tmp_path, presses):
    root = tmp_path / "ws"
    (root / "specs").mkdir(parents=True)
    (root / "koschei.toml").write_text("")
    process = subprocess.Popen([sys.executable, "-c", CYCLE_WITH_A_SLOW_PHASE], cwd=root,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "in tech_tree"
    for _ in range(presses):
        process.send_signal(signal.SIGINT)
        time.sleep(0.2)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "stopping after the current phase (Ctrl-C again to stop now)" in stderr
    state = journal(root)
    assert state["status"] == "interrupted"
    done = [p["phase"] for p in state["phases"]]
    if presses == 1:  # tech_tree ran to its end, nothing after it started
        assert "tech_tree done" in stdout and done == ["pas_analyze", "tech_tree"]
        assert "▶ spec_create" not in stderr
    else:  # cut off: tech_tree is not done and runs again on resume
        assert "tech_tree done" not in stdout and done == ["pas_analyze"]
        assert state["interrupted_phase"] == "tech_tree"
    assert temporaries(root) == []
