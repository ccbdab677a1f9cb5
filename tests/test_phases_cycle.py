"""The cycle's mechanics: order, journal, failed checks, resume, Ctrl-C, the lock, the loop.

These tests replace the phase modules with small stand-ins whose timing and verdicts the test
controls (a Ctrl-C in the middle of a phase, a failing check, a phase that never ends), so the
mechanics are tested exactly and fast. The real phases, end to end, are in test_cli_cycle.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import git
import pytest

from koschei.errors import SpecError, UsageError
from koschei.phases import LOOP_PHASES, PHASES, cycle
from koschei.phases import git_commit as real_git_commit
from koschei.phases.base import Result
from koschei.runs import RunRecord, list_runs, workspace_lock
from koschei.workspace import Workspace


@dataclass
class StandInResult(Result):
    phase: str
    passed: bool = True
    files: list[dict] = field(default_factory=list)
    specs: list[dict] = field(default_factory=list)
    # what an evolve result says
    verdict: str = "no_significant_gain"
    tuned_values_file: str | None = None
    stopped: str = "budget"

    @property
    def ok(self) -> bool:
        return self.passed


class StandIns:
    """Stand-in phase modules in sys.modules; each records its calls and can be told what to do."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, real_git_commit: bool = False):
        self.calls: list[tuple[str, object]] = []
        self.actions: dict[str, object] = {}  # phase -> callable(workspace, options) before return
        self.verdicts: dict[str, bool] = {}  # phase -> ok
        # pas_analyze's ranking of evolve targets, best first
        self.targets = [("softmax", "1x768"), ("matmul", "square"), ("rope", "decode")]
        for phase in LOOP_PHASES:
            if phase == "git_commit" and real_git_commit:
                continue
            monkeypatch.setitem(sys.modules, f"koschei.phases.{phase}", self.module(phase))

    def module(self, phase: str) -> types.ModuleType:
        module = types.ModuleType(f"koschei.phases.{phase}")

        @dataclass
        class Options:
            select: list[str] | None = None
            only: list[str] | None = None
            record_dir: Path | None = None
            budget_s: float = 2.0
            run_id: str = "latest"
            force: bool = False
            require_changes: bool = False
            spec: str | None = None
            case: str | None = None
            max_evaluations: int = 40
            should_stop: object = None

        def run(workspace, options, progress=None):
            self.calls.append((phase, options))
            result = StandInResult(phase=phase, passed=self.verdicts.get(phase, True))
            action = self.actions.get(phase)
            if action is not None:
                action(workspace, options, result)
            if phase == "test_run":
                result.specs = [{"spec": "softmax", "passed": 3, "failed": 0, "errors": 0,
                                 "skipped": 0, "status": "passed" if result.passed else "failed",
                                 "ok": result.passed}]
            return result

        def next_evolve_target(workspace, exclude=(), select=None):
            excluded = {tuple(pair) for pair in exclude}
            for spec, case in self.targets:
                if (spec, case) not in excluded and (select is None or spec in select):
                    return types.SimpleNamespace(spec=spec, case=case, reason="headroom")
            return None

        module.Options, module.run = Options, run
        if phase == "pas_analyze":
            module.next_evolve_target = next_evolve_target
        return module

    @property
    def phases_called(self) -> list[str]:
        return [phase for phase, _ in self.calls]


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    root = (tmp_path / "ws").resolve()
    (root / "specs").mkdir(parents=True)
    (root / "koschei.toml").write_text("")
    return Workspace(root)


def journal_of(workspace: Workspace, run_id: str | None = None) -> dict:
    record = RunRecord.load(workspace, run_id or "latest")
    return json.loads((record.dir / "journal.json").read_text())


def temporaries(root: Path) -> list[Path]:
    return [path for path in root.rglob("*.tmp") if ".git" not in path.parts]


# --- order, journal, options ---------------------------------------------------------------------


def test_runs_every_phase_in_order_into_one_record(workspace, monkeypatch):
    stand_ins = StandIns(monkeypatch)
    journals: list[dict] = []
    for phase in PHASES:  # the journal as each phase starts
        stand_ins.actions[phase] = lambda ws, options, result: journals.append(journal_of(ws))

    result = cycle.run(workspace, cycle.Options(select=["softmax"], budget_s=0.1))

    assert stand_ins.phases_called == list(PHASES)
    assert result.ok and len(result.runs) == 1
    run = result.runs[0]
    assert run.status == "finished" and [p.phase for p in run.phases] == list(PHASES)
    assert all(p.status == "ok" and p.duration_s >= 0 for p in run.phases)
    record = RunRecord.load(workspace, run.run_id)
    assert record.manifest["command"] == "cycle"
    for phase in PHASES:
        assert record.phase(phase)["phase"] == phase
    # the journal was written after each phase: phase k starts with k-1 phases done
    for index, journal in enumerate(journals):
        assert [p["phase"] for p in journal["phases"]] == list(PHASES[:index])
        assert journal["current_phase"] == PHASES[index] and journal["status"] == "running"
    final = journal_of(workspace)
    assert final["status"] == "finished" and final["options"]["select"] == ["softmax"]
    assert [p["phase"] for p in final["phases"]] == list(PHASES)
    # the options each phase got
    options = dict(stand_ins.calls)
    assert options["test_run"].select == ["softmax"]
    assert options["code_generate"].only == ["softmax"]
    assert options["benchmark"].select == ["softmax"] and options["benchmark"].budget_s == 0.1
    assert options["tech_tree"].select is None  # not a per-spec phase
    assert options["test_run"].record_dir == record.dir
    assert options["git_commit"].run_id == record.id
    assert options["git_commit"].require_changes is False
    assert temporaries(workspace.root) == []


def test_a_missing_phase_module_is_a_clear_error(workspace, monkeypatch):
    StandIns(monkeypatch)
    monkeypatch.setattr(cycle, "PHASES", (*PHASES[:3], "no_such_phase", *PHASES[3:]))
    with pytest.raises(UsageError, match="no phase module for: no_such_phase"):
        cycle.run(workspace, cycle.Options())
    assert list_runs(workspace) == []  # refused before a record was made


def test_a_spec_error_is_raised_before_a_record_is_made(workspace, monkeypatch):
    stand_ins = StandIns(monkeypatch)
    (workspace.root / "specs" / "foundation").mkdir()
    (workspace.root / "specs" / "foundation" / "broken.yaml").write_text(
        "name: broken\ntitle: Broken\ntier: foundation\nrequires: [nowhere]\n")
    with pytest.raises(SpecError, match=r"broken.yaml:4: requires\[0\]: no spec is named"):
        cycle.run(workspace, cycle.Options())
    assert list_runs(workspace) == [] and stand_ins.calls == []


def test_option_errors(workspace, monkeypatch):
    StandIns(monkeypatch)
    with pytest.raises(UsageError, match="--max-iterations needs --loop"):
        cycle.run(workspace, cycle.Options(max_iterations=3))
    with pytest.raises(UsageError, match="at least 1"):
        cycle.run(workspace, cycle.Options(loop=True, max_iterations=0))
    with pytest.raises(UsageError, match="--resume .* takes no other option"):
        cycle.run(workspace, cycle.Options(resume=True, select=["softmax"]))


# --- failed checks and resume --------------------------------------------------------------------


def test_a_failed_check_stops_before_git_commit_and_resume_retries_it(workspace, monkeypatch):
    stand_ins = StandIns(monkeypatch)
    stand_ins.verdicts["test_run"] = False

    result = cycle.run(workspace, cycle.Options())

    assert not result.ok
    assert stand_ins.phases_called == list(PHASES[:PHASES.index("test_run") + 1])
    run = result.runs[0]
    assert run.status == "failed" and run.failed_phase == "test_run"
    journal = journal_of(workspace)
    assert journal["status"] == "failed" and journal["failed_phase"] == "test_run"
    assert "test_run" not in [p["phase"] for p in journal["phases"]]

    stand_ins.calls.clear()
    stand_ins.verdicts["test_run"] = True  # fixed
    resumed = cycle.run(workspace, cycle.Options(resume=True))
    assert resumed.ok and resumed.runs[0].run_id == run.run_id and resumed.runs[0].resumed
    assert stand_ins.phases_called == ["test_run", "benchmark", "git_commit"]
    assert [p.status for p in resumed.runs[0].phases[:4]] == ["done-before"] * 4
    assert journal_of(workspace)["status"] == "finished"
    assert len(journal_of(workspace)["resumed_at"]) == 1


def test_resume_continues_after_the_last_phase_done(workspace, monkeypatch):
    """A journal as a run killed during test_run leaves it: running, three phases done."""
    stand_ins = StandIns(monkeypatch)
    cycle.run(workspace, cycle.Options(select=["softmax"]))
    record = RunRecord.load(workspace)
    journal = journal_of(workspace)
    journal.update(status="running", current_phase="test_run",
                   phases=journal["phases"][:PHASES.index("test_run")])
    (record.dir / "journal.json").write_text(json.dumps(journal))
    (record.dir / ".test_run.json.x1y2.tmp").write_text("{ half a result")  # cut off mid-write
    stand_ins.calls.clear()

    result = cycle.run(workspace, cycle.Options(resume=True))

    assert stand_ins.phases_called == ["test_run", "benchmark", "git_commit"]
    assert dict(stand_ins.calls)["test_run"].select == ["softmax"]  # the run's own options
    assert result.ok and journal_of(workspace)["status"] == "finished"
    assert temporaries(workspace.root) == []


def test_resume_with_nothing_to_resume(workspace, monkeypatch):
    StandIns(monkeypatch)
    with pytest.raises(UsageError, match="no cycle run to resume"):
        cycle.run(workspace, cycle.Options(resume=True))
    cycle.run(workspace, cycle.Options())
    RunRecord.create(workspace, "test-run")  # a later run that is not a cycle
    with pytest.raises(UsageError, match="no unfinished cycle run to resume: the latest, .* "
                                         "finished"):
        cycle.run(workspace, cycle.Options(resume=True))


# --- Ctrl-C --------------------------------------------------------------------------------------


def press_ctrl_c(times: int = 1):
    def action(workspace, options, result):
        for _ in range(times):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs between bytecodes of this thread
    return action


def test_first_ctrl_c_stops_after_the_current_phase(workspace, monkeypatch):
    stand_ins = StandIns(monkeypatch)
    stand_ins.actions["tech_tree"] = press_ctrl_c()
    handler_before = signal.getsignal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        cycle.run(workspace, cycle.Options())

    assert signal.getsignal(signal.SIGINT) is handler_before
    assert stand_ins.phases_called == ["pas_analyze", "tech_tree"]  # tech_tree finished
    journal = journal_of(workspace)
    assert journal["status"] == "interrupted"
    assert [p["phase"] for p in journal["phases"]] == ["pas_analyze", "tech_tree"]
    assert RunRecord.load(workspace).phase("tech_tree") is not None

    stand_ins.calls.clear()
    stand_ins.actions.clear()
    assert cycle.run(workspace, cycle.Options(resume=True)).ok
    assert stand_ins.phases_called == list(PHASES[2:])


def test_second_ctrl_c_stops_at_once_and_the_phase_is_not_done(workspace, monkeypatch):
    stand_ins = StandIns(monkeypatch)
    stand_ins.actions["spec_create"] = press_ctrl_c(times=2)

    with pytest.raises(KeyboardInterrupt):
        cycle.run(workspace, cycle.Options())

    journal = journal_of(workspace)
    assert journal["status"] == "interrupted" and journal["interrupted_phase"] == "spec_create"
    assert [p["phase"] for p in journal["phases"]] == ["pas_analyze", "tech_tree"]
    assert RunRecord.load(workspace).phase("spec_create") is None  # cut off: nothing saved
    stand_ins.calls.clear()
    stand_ins.actions.clear()
    cycle.run(workspace, cycle.Options(resume=True))
    assert stand_ins.phases_called == list(PHASES[2:])


def test_a_phase_that_fails_because_of_the_ctrl_c_is_interrupted_not_failed(workspace,
                                                                           monkeypatch):
    stand_ins = StandIns(monkeypatch)
    stand_ins.actions["test_run"] = press_ctrl_c()  # pytest got the Ctrl-C too and stopped
    stand_ins.verdicts["test_run"] = False
    with pytest.raises(KeyboardInterrupt):
        cycle.run(workspace, cycle.Options())
    journal = journal_of(workspace)
    assert journal["status"] == "interrupted" and journal["failed_phase"] is None
    assert "test_run" not in [p["phase"] for p in journal["phases"]]


# --- the lock, the loop, the real git_commit ---------------------------------------------------------


def test_a_second_cycle_in_the_same_workspace_is_refused(workspace, monkeypatch):
    stand_ins = StandIns(monkeypatch)
    code = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from koschei.runs import workspace_lock
        from koschei.workspace import Workspace
        with workspace_lock(Workspace(Path(sys.argv[1])), "cycle"):
            print("held", flush=True)
            time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code, str(workspace.root)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match=rf"another koschei cycle is running in this "
                                             rf"workspace \(pid {holder.pid}, started "):
            cycle.run(workspace, cycle.Options())
    finally:
        holder.kill()
        holder.wait()
    assert stand_ins.calls == [] and list_runs(workspace) == []


def test_the_loop_evolves_the_ranked_targets_in_turn_until_a_full_pass_finds_nothing(
        workspace, monkeypatch):
    stand_ins = StandIns(monkeypatch)
    result = cycle.run(workspace, cycle.Options(loop=True, max_iterations=5, evaluations=7))

    assert result.ok and [run.iteration for run in result.runs] == [1, 2, 3, 4]
    assert len(set(result.run_ids)) == 4 == len(list_runs(workspace))
    searches = [options for phase, options in stand_ins.calls if phase == "evolve"]
    # no search kept a gain: each target once, then the loop ends (a full pass found nothing)
    assert [(o.spec, o.case) for o in searches] == stand_ins.targets
    assert {o.max_evaluations for o in searches} == {7} and callable(searches[0].should_stop)
    assert result.ended.startswith("a full pass found no significant gain")
    assert [p.status for p in result.runs[-1].phases if p.phase == "evolve"] == ["skipped"]
    # iterations that searched commit their evidence; the last one only what changed
    commits = [options for phase, options in stand_ins.calls if phase == "git_commit"]
    assert [options.require_changes for options in commits] == [False, False, False, True]
    # after the first iteration only the spec the previous one evolved is generated, tested
    # and benchmarked again
    benchmarks = [options.select for phase, options in stand_ins.calls if phase == "benchmark"]
    assert benchmarks == [None, ["softmax"], ["matmul"], ["rope"]]
    assert [journal_of(workspace, run_id)["iteration"] for run_id in result.run_ids] == \
        [1, 2, 3, 4]
    assert journal_of(workspace)["loop"]["tried"] == [list(t) for t in stand_ins.targets]


def test_a_kept_gain_opens_every_target_again(workspace, monkeypatch):
    stand_ins = StandIns(monkeypatch)
    searched: list[str] = []

    def gain_on_the_first_search(ws, options, result):
        searched.append(options.spec)
        if len(searched) == 1:
            result.verdict, result.tuned_values_file = "improved", "tuning/x.json"

    stand_ins.actions["evolve"] = gain_on_the_first_search
    result = cycle.run(workspace, cycle.Options(loop=True, max_iterations=3))
    assert result.ok and result.ended is None
    assert searched == ["softmax", "softmax", "matmul"]


def test_a_ctrl_c_during_a_search_stops_after_its_candidate_and_resume_goes_on(
        workspace, monkeypatch):
    stand_ins = StandIns(monkeypatch)
    stops: list[bool] = []

    def ctrl_c_then_stop_after_the_candidate(ws, options, result):
        press_ctrl_c()(ws, options, result)
        stops.append(options.should_stop())  # what the search asks after each candidate
        result.stopped = "interrupted"

    stand_ins.actions["evolve"] = ctrl_c_then_stop_after_the_candidate
    with pytest.raises(KeyboardInterrupt):
        cycle.run(workspace, cycle.Options(loop=True, max_iterations=2))
    journal = journal_of(workspace)
    assert stops == [True] and journal["status"] == "interrupted"
    assert journal["interrupted_phase"] == "evolve" and journal["loop"]["tried"] == []
    stand_ins.calls.clear()
    stand_ins.actions.pop("evolve")

    result = cycle.run(workspace, cycle.Options(resume=True))
    assert result.ok
    searches = [(o.spec, o.case) for phase, o in stand_ins.calls if phase == "evolve"]
    assert searches == [("softmax", "1x768"), ("matmul", "square")]


def test_evaluations_need_the_loop(workspace, monkeypatch):
    StandIns(monkeypatch)
    with pytest.raises(UsageError, match="--evaluations .* needs --loop"):
        cycle.run(workspace, cycle.Options(evaluations=3))


def test_resuming_a_loop_finishes_its_iteration_and_runs_the_rest(workspace, monkeypatch):
    stand_ins = StandIns(monkeypatch)

    def ctrl_c_in_the_second_iteration(ws, options, result):
        if len([c for c in stand_ins.calls if c[0] == "benchmark"]) == 2:
            press_ctrl_c()(ws, options, result)

    stand_ins.actions["benchmark"] = ctrl_c_in_the_second_iteration
    with pytest.raises(KeyboardInterrupt):
        cycle.run(workspace, cycle.Options(loop=True, max_iterations=3))
    assert [journal_of(workspace, r.id)["status"] for r in list_runs(workspace)] == \
        ["finished", "interrupted"]
    stand_ins.calls.clear()

    result = cycle.run(workspace, cycle.Options(resume=True))

    assert result.ok and [run.iteration for run in result.runs] == [2, 3]
    assert stand_ins.phases_called == ["evolve", "git_commit", *LOOP_PHASES]
    assert [journal_of(workspace, r.id)["status"] for r in list_runs(workspace)] == \
        ["finished"] * 3


def test_the_loop_stops_at_a_failed_iteration(workspace, monkeypatch):
    stand_ins = StandIns(monkeypatch)
    stand_ins.actions["benchmark"] = lambda ws, options, result: setattr(
        result, "passed", len([c for c in stand_ins.calls if c[0] == "benchmark"]) < 2)
    result = cycle.run(workspace, cycle.Options(loop=True, max_iterations=3))
    assert not result.ok and [run.status for run in result.runs] == ["finished", "failed"]


def test_with_the_real_git_commit_the_cycle_commits_what_it_wrote(workspace, monkeypatch):
    repo = git.Repo.init(workspace.root, initial_branch="main")
    with repo.config_writer() as config:
        config.set_value("user", "name", "Test Author")
        config.set_value("user", "email", "author@example.com")
    (workspace.root / ".gitignore").write_text("runs/.lock\nruns/*/journal.json\n"
                                               "runs/*/git_commit.json\n")
    (workspace.root / "mine.txt").write_text("mine\n")
    repo.git.add("--all")
    repo.git.commit("-qm", "start")
    (workspace.root / "mine.txt").write_text("my unfinished edit\n")
    stand_ins = StandIns(monkeypatch, real_git_commit=True)
    monkeypatch.setitem(sys.modules, "koschei.phases.git_commit", real_git_commit)

    def generate(ws, options, result):
        (ws.root / "koschei" / "engine").mkdir(parents=True, exist_ok=True)
        (ws.root / "koschei" / "engine" / "softmax.py").write_text("# generated\n")
        result.files = [{"path": "koschei/engine/softmax.py", "action": "create"}]

    stand_ins.actions["code_generate"] = generate
    result = cycle.run(workspace, cycle.Options())

    run = result.runs[0]
    assert result.ok and run.commit == repo.head.commit.hexsha
    committed = set(repo.git.show("--name-only", "--format=", "HEAD").splitlines())
    assert "koschei/engine/softmax.py" in committed
    assert all(path == "koschei/engine/softmax.py" or path.startswith(f"runs/{run.run_id}/")
               for path in committed)
    assert f"runs/{run.run_id}/journal.json" not in committed
    assert repo.git.status("--porcelain") == " M mine.txt"  # the user's edit, and nothing else
    assert journal_of(workspace)["status"] == "finished"


# --- kill -9 ----------------------------------------------------------------------------------

KILLABLE_CYCLE = textwrap.dedent("""
    import sys, time, types
    from dataclasses import dataclass
    from pathlib import Path
    from koschei.phases import PHASES
    from koschei.phases.base import Result
    from koschei.workspace import Workspace

    @dataclass
    class Done(Result):
        phase: str

    for phase in PHASES:
        module = types.ModuleType("koschei.phases." + phase)

        @dataclass
        class Options:
            select: list | None = None
            record_dir: Path | None = None
            run_id: str = "latest"
            force: bool = False
            require_changes: bool = False

        def run(workspace, options, progress=None, phase=phase):
            if phase == sys.argv[2]:
                print("in " + phase, flush=True)
                time.sleep(600)
            return Done(phase)

        module.Options, module.run = Options, run
        sys.modules["koschei.phases." + phase] = module

    from koschei.phases import cycle
    cycle.run(Workspace(Path(sys.argv[1])), cycle.Options(resume=len(sys.argv) > 3))
    print("finished", flush=True)
""")


def test_kill_9_mid_phase_then_resume(workspace):
    killed = subprocess.Popen([sys.executable, "-c", KILLABLE_CYCLE, str(workspace.root),
                               "test_run"], stdout=subprocess.PIPE, text=True)
    assert killed.stdout.readline().strip() == "in test_run"
    killed.kill()  # SIGKILL: no handler, no cleanup
    killed.wait()
    journal = journal_of(workspace)
    assert journal["status"] == "running" and journal["current_phase"] == "test_run"

    resumed = subprocess.run([sys.executable, "-c", KILLABLE_CYCLE, str(workspace.root),
                              "none", "--resume"], capture_output=True, text=True, timeout=120,
                             check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == "finished"
    journal = journal_of(workspace)
    assert journal["status"] == "finished" and len(journal["resumed_at"]) == 1
    assert [p["phase"] for p in journal["phases"]] == list(PHASES)
    assert len(list_runs(workspace)) == 1
    assert temporaries(workspace.root) == []
    with workspace_lock(workspace):  # the dead process's lock went with it
        pass
