"""The cycle: every phase in order, into one run record, with a journal that makes it resumable.

    pas_analyze -> tech_tree -> spec_create -> code_generate -> test_run -> benchmark -> git_commit
    (--loop: ... -> benchmark -> evolve -> git_commit -> the next iteration)

Each phase is ``koschei.phases.<phase>.run(workspace, <phase>.Options(...), progress)``; its result
is saved as ``runs/<run-id>/<phase>.json`` and the journal ``journal.json`` is written after each
phase (the phases done, the status, the cycle's options, the iteration). The whole cycle holds the
workspace lock (``runs/.lock``): a second cycle in the same workspace is refused.

- Specs are validated before a new run record is made: a spec error (exit 2) leaves no record.
- A failed check (a phase whose result is not ok, e.g. failing tests) stops the cycle there:
  git_commit does not run, the journal says ``failed``, the result is not ok (exit 1).
- ``resume`` continues the latest cycle run whose journal is not ``finished`` (killed, even with
  ``kill -9``, interrupted or failed) from its first phase not done, with the options it was
  started with. Re-running a phase that was cut off half-way is safe: every write is atomic and
  idempotent.
- Ctrl-C: the first one asks the cycle to stop after the current phase (the journal then says
  ``interrupted`` and KeyboardInterrupt is raised at that phase boundary); a second one stops at
  once, leaving the current phase not done. A phase whose result is not ok after a stop was asked
  for (its subprocess got the Ctrl-C too) counts as interrupted, not failed, and is re-run on
  resume.
- ``loop`` runs up to ``max_iterations`` iterations, each into its own run record, and each one
  makes the engine faster or says why not: after the benchmark, the evolve phase searches the
  best target of pas_analyze's ranking (``next_evolve_target``: the largest headroom to the
  roofline first, searches that kept nothing pulling a target down, targets tuned to exhaustion
  left out), and git_commit commits its result with the evidence (a kept gain: the tuned values
  and the re-rendered module; none: the search's record, "no significant gain" and its numbers).
  Targets searched without a kept gain are not searched again in the same loop until one gains;
  the loop ends early when no target is left (a full pass found nothing, or nothing has
  tunables and headroom). From the second iteration on, code_generate, test_run and benchmark
  take only the spec the previous iteration evolved (unless ``select`` says otherwise): nothing
  else changed. A first Ctrl-C during the search stops it after the candidate under way (no
  confirmation; the same search goes on from its cache on resume). Resuming a loop finishes the
  stopped iteration and runs the ones left; a Ctrl-C that lands between two iterations stops
  before the next one starts (every run so far is finished, so there is nothing to resume).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import ModuleType
from typing import Any, Self

from koschei.errors import CheckFailed, KoscheiError, UsageError
from koschei.phases import LOOP_PHASES, PHASES
from koschei.phases.base import Progress, Result, SilentProgress
from koschei.runs import RunRecord, list_runs, workspace_lock
from koschei.specs import load_specs
from koschei.workspace import Workspace

DEFAULT_LOOP_ITERATIONS = 3
# Phases that act per spec and take the cycle's ``select``.
SELECTING_PHASES = ("code_generate", "test_run", "benchmark")
SELECTION_FIELDS = ("select", "only")  # what those phases call their list of spec names


@dataclass
class Options:
    resume: bool = False
    loop: bool = False
    max_iterations: int = 1
    force: bool = False  # passed to git_commit: commit even when the tests failed
    select: list[str] | None = None  # only these specs (code_generate, test_run, benchmark)
    budget_s: float | None = None  # the benchmark's timing budget per case (None: its default)
    evaluations: int | None = None  # the loop's searches: candidates at most (None: evolve's)

    @property
    def phases(self) -> tuple[str, ...]:
        return LOOP_PHASES if self.loop else PHASES

    def to_journal(self) -> dict[str, Any]:
        return {"loop": self.loop, "max_iterations": self.max_iterations, "force": self.force,
                "select": self.select, "budget_s": self.budget_s,
                "evaluations": self.evaluations}

    @classmethod
    def from_journal(cls, data: dict[str, Any]) -> Options:
        return cls(resume=True, loop=bool(data.get("loop")),
                   max_iterations=int(data.get("max_iterations") or 1),
                   force=bool(data.get("force")), select=data.get("select"),
                   budget_s=data.get("budget_s"), evaluations=data.get("evaluations"))


@dataclass
class PhaseOutcome:
    phase: str
    status: str  # ok | failed | error | interrupted | skipped | done-before (resumed past it)
    duration_s: float = 0.0
    summary: str = ""


@dataclass
class RunOutcome:
    run_id: str
    iteration: int
    status: str  # finished | failed | interrupted
    resumed: bool = False
    phases: list[PhaseOutcome] = field(default_factory=list)
    commit: str | None = None
    failed_phase: str | None = None


@dataclass
class CycleResult(Result):
    runs: list[RunOutcome] = field(default_factory=list)
    max_iterations: int = 1
    ended: str | None = None  # why a loop ended before max_iterations (nothing left to evolve)

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(run.status == "finished" for run in self.runs)

    @property
    def run_ids(self) -> list[str]:
        return [run.run_id for run in self.runs]

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["run_ids"] = self.run_ids
        return data


# --- the phases ------------------------------------------------------------------------------------


def load_phase_modules(phases: tuple[str, ...] = PHASES) -> dict[str, ModuleType]:
    """Every phase module, or a UsageError naming the ones this installation lacks."""
    modules: dict[str, ModuleType] = {}
    missing: list[str] = []
    for phase in phases:
        name = f"koschei.phases.{phase}"
        try:
            modules[phase] = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
            missing.append(phase)
    if missing:
        raise UsageError(f"this koschei installation has no phase module for: "
                         f"{', '.join(missing)} (koschei/phases/<phase>.py), so the cycle cannot "
                         "run", hint="reinstall koschei, or run the phases that exist one by one")
    for phase, module in modules.items():
        if not hasattr(module, "run") or not hasattr(module, "Options"):
            raise UsageError(f"koschei.phases.{phase} has no run() or no Options: it is not a "
                             "phase module", hint="reinstall koschei")
    return modules


def phase_options(phase: str, module: ModuleType, record: RunRecord, options: Options,
                  iteration: int, loop: dict[str, Any] | None = None,
                  stop: StopRequest | None = None) -> Any:
    """The phase's Options for this cycle: defaults, plus the record folder, the selection, the
    benchmark budget, git_commit's run id, and in a loop the evolve target and the selection of
    what the previous iteration evolved."""
    loop = loop or {}
    names = {item.name for item in dataclasses.fields(module.Options)}
    values: dict[str, Any] = {}
    if "record_dir" in names:
        values["record_dir"] = record.dir
    select = options.select or ([loop["previous"]] if loop.get("previous") else None)
    if phase in SELECTING_PHASES and select:
        for name in SELECTION_FIELDS:
            if name in names:
                values[name] = list(select)
    if phase == "benchmark" and options.budget_s is not None and "budget_s" in names:
        values["budget_s"] = options.budget_s
    if phase == "evolve":
        spec, case = loop["target"]
        wanted = {"spec": spec, "case": case, "should_stop": (lambda: stop.requested)
                  if stop is not None else None}
        if options.evaluations is not None:
            wanted["max_evaluations"] = options.evaluations
        values.update({name: value for name, value in wanted.items() if name in names})
    if phase == "git_commit":
        # a later iteration commits when it changed something, or searched (its evidence)
        searched = options.loop and bool(loop.get("target"))
        wanted = {"run_id": record.id, "force": options.force,
                  "require_changes": iteration > 1 and not searched}
        values.update({name: value for name, value in wanted.items() if name in names})
    return module.Options(**values)


# --- Ctrl-C ----------------------------------------------------------------------------------------


class StopRequest:
    """SIGINT handling for the cycle: the first Ctrl-C asks for a stop at the next phase boundary,
    the second raises KeyboardInterrupt at once. The previous handler is restored on exit."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.progress.step("stopping after the current phase (Ctrl-C again to stop now)")


# --- the journal -----------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def new_journal(options: Options, iteration: int,
                loop: dict[str, Any] | None = None) -> dict[str, Any]:
    """A new iteration's journal; ``loop`` carries the loop's state from the previous one: the
    targets searched without a kept gain (``tried``) and the spec it evolved (``previous``)."""
    loop = dict(loop or {})
    return {"status": "running", "iteration": iteration,
            "loop": {"tried": list(loop.get("tried") or []),
                     "previous": (loop.get("target") or [None])[0],
                     "target": None, "ended": None} if options.loop else None,
            "max_iterations": options.max_iterations if options.loop else 1,
            "options": options.to_journal(), "phases": [], "current_phase": None,
            "failed_phase": None, "interrupted_phase": None, "error": None,
            "started_at": _now(), "pid": os.getpid(), "resumed_at": []}


def phases_done(journal: dict[str, Any]) -> list[str]:
    return [entry["phase"] for entry in journal.get("phases") or [] if isinstance(entry, dict)]


def find_resumable(workspace: Workspace) -> tuple[RunRecord, dict[str, Any]]:
    """The latest cycle run whose journal is not finished, and its journal."""
    cycles = [(record, journal) for record in list_runs(workspace)
              if (journal := record.journal()) is not None]
    if not cycles:
        raise UsageError("there is no cycle run to resume in "
                         f"{workspace.relative(workspace.runs_dir)}/",
                         hint="start one with: koschei cycle")
    record, journal = cycles[-1]
    if journal.get("status") == "finished":
        raise UsageError(f"there is no unfinished cycle run to resume: the latest, {record.id}, "
                         "finished", hint="start a new one with: koschei cycle")
    return record, journal


# --- the cycle ----------------------------------------------------------------------------------------


def _check_options(options: Options) -> None:
    if options.max_iterations < 1:
        raise UsageError(f"--max-iterations must be at least 1, got {options.max_iterations}")
    if options.max_iterations > 1 and not options.loop:
        raise UsageError("--max-iterations needs --loop",
                         hint=f"koschei cycle --loop --max-iterations {options.max_iterations}")
    if options.evaluations is not None and not options.loop:
        raise UsageError("--evaluations sets the loop's searches: it needs --loop",
                         hint=f"koschei cycle --loop --evaluations {options.evaluations}")
    if options.evaluations is not None and options.evaluations < 1:
        raise UsageError(f"--evaluations must be at least 1, got {options.evaluations}")
    if options.resume and (options.loop or options.select or options.force
                           or options.max_iterations != 1 or options.budget_s is not None
                           or options.evaluations is not None):
        raise UsageError("--resume continues a run with the options it was started with; it "
                         "takes no other option", hint="koschei cycle --resume")
    if options.budget_s is not None and options.budget_s <= 0:
        raise UsageError(f"--budget must be positive, got {options.budget_s}")


def _call(progress: Progress, method: str, *args: Any) -> None:
    """Tell a progress that knows phases (``phase_started`` / ``phase_finished``) about them."""
    handler = getattr(progress, method, None)
    if callable(handler):
        handler(*args)


def run(workspace: Workspace, options: Options, progress: Progress | None = None,
        ) -> CycleResult:
    progress = progress or SilentProgress()
    _check_options(options)
    with workspace_lock(workspace, "cycle"), StopRequest(progress) as stop:
        record: RunRecord | None = None
        journal: dict[str, Any] | None = None
        if options.resume:
            record, journal = find_resumable(workspace)
            record.remove_temporaries()
            options = Options.from_journal(journal.get("options") or {})
            iteration = int(journal.get("iteration") or 1)
            loop = journal.get("loop")
            journal["resumed_at"] = [*journal.get("resumed_at", []), _now()]
            journal["pid"] = os.getpid()
            progress.step(f"resuming run {record.id} (iteration {iteration}) after "
                          f"{', '.join(phases_done(journal)) or 'no phase'}")
        else:
            iteration, loop = 1, None
        modules = load_phase_modules(options.phases)
        total = options.max_iterations if options.loop else 1
        result = CycleResult(max_iterations=total)
        while iteration <= total:
            resumed = record is not None
            if record is None or journal is None:
                if stop.requested:  # between iterations: stop before starting another
                    raise KeyboardInterrupt
                load_specs(workspace)  # a spec error stops here, before the record exists
                record = RunRecord.create(workspace, "cycle")
                journal = new_journal(options, iteration, loop)
                record.write_journal(journal)
            _call(progress, "run_started", record.id, iteration, total)
            outcome = RunOutcome(run_id=record.id, iteration=iteration, status="running",
                                 resumed=resumed)
            result.runs.append(outcome)
            run_iteration(workspace, modules, record, journal, options, iteration, outcome,
                          stop, progress)
            if outcome.status != "finished":
                break
            loop = journal.get("loop")
            if loop and loop.get("ended"):
                result.ended = loop["ended"]
                break
            record = journal = None
            iteration += 1
        return result


def run_iteration(workspace: Workspace, modules: dict[str, ModuleType], record: RunRecord,
                  journal: dict[str, Any], options: Options, iteration: int, outcome: RunOutcome,
                  stop: StopRequest, progress: Progress) -> None:
    """Run the phases of one iteration that are not done yet; keep the journal up to date."""
    done = phases_done(journal)
    journal.update(status="running", failed_phase=None, interrupted_phase=None, error=None)
    for entry in journal.get("phases") or []:
        outcome.phases.append(PhaseOutcome(entry["phase"], "done-before",
                                           float(entry.get("duration_s") or 0.0),
                                           entry.get("summary", "")))
    phases = options.phases
    loop = journal.get("loop") or {}
    for index, phase in enumerate(phases, start=1):
        if phase in done:
            continue
        if stop.requested:
            _interrupted(record, journal, outcome, phase=None)
            raise KeyboardInterrupt
        if phase == "evolve" and not loop.get("target"):
            target = modules["pas_analyze"].next_evolve_target(
                workspace, exclude=loop.get("tried") or [], select=options.select)
            if target is None:
                loop["ended"] = ("a full pass found no significant gain: every target was "
                                 "searched since the last kept gain" if loop.get("tried") else
                                 "nothing to evolve: no benchmarked kernel with tunables has "
                                 "headroom left")
                _skipped(record, journal, outcome, phase, loop["ended"], progress)
                continue
            loop["target"] = [target.spec, target.case]
            progress.step(f"evolve target: {target.spec}/{target.case} ({target.reason})")
        journal["current_phase"] = phase
        record.write_journal(journal)
        _call(progress, "phase_started", phase, index, len(phases))
        module = modules[phase]
        started = time.perf_counter()
        try:
            phase_result = module.run(workspace, phase_options(phase, module, record, options,
                                                               iteration, loop, stop), progress)
        except KeyboardInterrupt:
            duration = time.perf_counter() - started
            outcome.phases.append(PhaseOutcome(phase, "interrupted", round(duration, 3)))
            _call(progress, "phase_finished", phase, "interrupted", duration, "")
            _interrupted(record, journal, outcome, phase=phase)
            raise
        except KoscheiError as error:
            duration = time.perf_counter() - started
            outcome.phases.append(PhaseOutcome(phase, "error", round(duration, 3), error.message))
            _call(progress, "phase_finished", phase, "error", duration, error.message)
            _failed(record, journal, outcome, phase, error.message)
            if isinstance(error, CheckFailed):
                return
            raise
        except BaseException as error:
            duration = time.perf_counter() - started
            outcome.phases.append(PhaseOutcome(phase, "error", round(duration, 3), repr(error)))
            _call(progress, "phase_finished", phase, "error", duration, repr(error))
            _failed(record, journal, outcome, phase, f"{type(error).__name__}: {error}")
            raise
        duration = time.perf_counter() - started
        record.save_phase(phase, phase_result)
        ok = bool(getattr(phase_result, "ok", True))
        summary = phase_result.summary() if hasattr(phase_result, "summary") else ""
        if phase == "git_commit":
            outcome.commit = getattr(phase_result, "commit", None)
        cut_short = getattr(phase_result, "stopped", None) == "interrupted"
        if stop.requested and (not ok or cut_short):
            # the Ctrl-C reached the phase's own work (e.g. pytest, a search): not a verdict,
            # re-run it on resume (a search goes on from its cache)
            outcome.phases.append(PhaseOutcome(phase, "interrupted", round(duration, 3), summary))
            _call(progress, "phase_finished", phase, "interrupted", duration, summary)
            _interrupted(record, journal, outcome, phase=phase)
            raise KeyboardInterrupt
        status = "ok" if ok else "failed"
        outcome.phases.append(PhaseOutcome(phase, status, round(duration, 3), summary))
        _call(progress, "phase_finished", phase, status, duration, summary)
        if not ok:
            _failed(record, journal, outcome, phase, f"{phase} failed: {summary}".rstrip(": "))
            return
        if phase == "evolve":  # a kept gain opens every target again
            kept = getattr(phase_result, "verdict", "") == "improved" \
                and getattr(phase_result, "tuned_values_file", None)
            loop["tried"] = [] if kept else [*(loop.get("tried") or []), loop["target"]]
        journal["phases"] = [*journal.get("phases", []),
                             {"phase": phase, "status": status, "duration_s": round(duration, 3),
                              "summary": summary, "finished_at": _now()}]
        journal["current_phase"] = None
        record.write_journal(journal)
    journal.update(status="finished", current_phase=None, finished_at=_now())
    record.write_journal(journal)
    outcome.status = "finished"


def _skipped(record: RunRecord, journal: dict[str, Any], outcome: RunOutcome, phase: str,
             why: str, progress: Progress) -> None:
    outcome.phases.append(PhaseOutcome(phase, "skipped", 0.0, why))
    _call(progress, "phase_finished", phase, "skipped", 0.0, why)
    journal["phases"] = [*journal.get("phases", []),
                         {"phase": phase, "status": "skipped", "duration_s": 0.0,
                          "summary": why, "finished_at": _now()}]
    record.write_journal(journal)


def _interrupted(record: RunRecord, journal: dict[str, Any], outcome: RunOutcome,
                 phase: str | None) -> None:
    journal.update(status="interrupted", current_phase=None, interrupted_phase=phase)
    record.write_journal(journal)
    outcome.status = "interrupted"


def _failed(record: RunRecord, journal: dict[str, Any], outcome: RunOutcome, phase: str,
            message: str) -> None:
    journal.update(status="failed", current_phase=None, failed_phase=phase, error=message)
    record.write_journal(journal)
    outcome.status = "failed"
    outcome.failed_phase = phase
