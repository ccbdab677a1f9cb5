"""The test_run phase: pytest on the generated tests, with results per spec.

pytest runs in a subprocess (``python -m pytest`` in the workspace root, HF_HUB_OFFLINE=1, no
cache provider) on the generated test files of the chosen specs, ``tests/engine/test_<spec>.py``,
and writes a JUnit XML report (into the run record when there is one). The report is read back
into one result per spec: passed, failed, errors, skipped, duration and the first failure.

A spec fails the phase when any of its tests failed or errored, when its test module collected
no test, or when it has no generated test module at all (run ``koschei code-generate``). The run
as a whole fails when pytest could not run or wrote no report.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from xml.etree import ElementTree

from koschei.errors import UsageError
from koschei.phases.base import Progress, Result, SilentProgress
from koschei.workspace import Workspace

OUTPUT_TAIL_LINES = 40
FAILURE_MESSAGE_CHARS = 600
# pytest's exit codes: 0 all passed, 1 some failed, 5 nothing collected. Anything else means
# pytest itself did not run the session to the end (interrupted, internal or usage error).
PYTEST_COMPLETED = (0, 1, 5)

SpecStatus = Literal["passed", "failed", "error", "skipped", "missing"]


@dataclass
class Options:
    select: list[str] | None = None  # spec names (or aliases); None: every implemented spec
    junit_xml: Path | None = None  # also copy the JUnit report here
    record_dir: Path | None = None  # the run record: the report is kept as <record_dir>/junit.xml
    extra_args: list[str] = field(default_factory=list)  # passed on to pytest


@dataclass
class SpecTestResult:
    spec: str
    test_file: str  # workspace-relative
    status: SpecStatus
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    duration_s: float = 0.0  # sum of the test cases' times
    first_failure: str | None = None  # "<test>: <message>"
    has_spec: bool = True  # False: a generated test module whose spec no longer exists

    @property
    def collected(self) -> int:
        return self.passed + self.failed + self.errors + self.skipped

    @property
    def ok(self) -> bool:
        return self.status in ("passed", "skipped")


@dataclass
class TestRunResult(Result):
    __test__ = False  # not a pytest test class

    specs: list[SpecTestResult] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    pytest_exit_code: int | None = None  # None: pytest was not started
    duration_s: float = 0.0  # wall time of the pytest subprocess
    junit_xml: str | None = None  # where the report was kept (record or --junit-xml)
    output_tail: list[str] = field(default_factory=list)  # pytest's last lines of output
    problems: list[str] = field(default_factory=list)  # why the run as a whole failed
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(spec.ok for spec in self.specs)

    @property
    def totals(self) -> dict[str, int]:
        return {key: sum(getattr(spec, key) for spec in self.specs)
                for key in ("passed", "failed", "errors", "skipped")}

    def summary(self) -> str:
        collected = sum(self.totals.values())
        skipped = f" ({self.totals['skipped']} skipped)" if self.totals["skipped"] else ""
        return (f"{self.totals['passed']}/{collected} tests passed{skipped} in "
                f"{len(self.specs)} spec(s)")

    def to_dict(self) -> dict:
        data = super().to_dict()
        data["totals"] = self.totals
        for entry, spec in zip(data["specs"], self.specs, strict=True):
            entry["ok"] = spec.ok
        return data


# --- choosing the test modules ------------------------------------------------------------------


def generated_test_path(workspace: Workspace, spec_name: str) -> Path:
    return workspace.tests_dir / f"test_{spec_name}.py"


def generated_test_modules(workspace: Workspace) -> dict[str, Path]:
    """Spec name -> test module, for every ``tests/engine/test_<name>.py`` in the workspace."""
    if not workspace.tests_dir.is_dir():
        return {}
    return {path.stem[len("test_"):]: path
            for path in sorted(workspace.tests_dir.glob("test_*.py")) if path.is_file()}


def choose_specs(workspace: Workspace, select: list[str] | None) -> list[tuple[str, bool]]:
    """The specs to test as (name, has_spec), in the specs' topological order.

    Without ``select``: every implemented spec, plus generated test modules whose spec is gone
    (they still run, and say so). With ``select``: those names, aliases resolved.
    """
    from koschei.specs import load_specs

    spec_set = load_specs(workspace)
    loaded_specs = list(spec_set)
    implemented = [loaded.spec.name for loaded in loaded_specs if loaded.spec.kernel is not None]
    planned = {loaded.spec.name for loaded in loaded_specs if loaded.spec.kernel is None}
    aliases = {alias: loaded.spec.name for loaded in loaded_specs for alias in loaded.spec.aliases}
    modules = generated_test_modules(workspace)
    known = set(implemented) | planned

    if not select:
        chosen = [(name, True) for name in implemented]
        chosen += [(name, False) for name in modules if name not in known]
        return chosen

    chosen: list[tuple[str, bool]] = []
    for requested in select:
        name = aliases.get(requested, requested)
        if name in planned:
            raise UsageError(f"-k {requested}: spec {name!r} is planned (it has no kernel), so "
                             "there is nothing to test",
                             hint="implement it (give it a kernel) and run koschei code-generate")
        if name in implemented:
            entry = (name, True)
        elif name in modules:
            entry = (name, False)
        else:
            available = ", ".join(implemented) or "none"
            raise UsageError(f"-k {requested}: no implemented spec or generated test module "
                             f"named {requested!r}", hint=f"implemented specs: {available}")
        if entry not in chosen:
            chosen.append(entry)
    return chosen


# --- reading the JUnit report -------------------------------------------------------------------


def _module_of(testcase: ElementTree.Element, stems: set[str]) -> str | None:
    """The test module stem a JUnit test case belongs to.

    Test cases carry ``classname="tests.engine.test_softmax[.Class]"``; a module that failed to
    import is reported with an empty classname and ``name="tests.engine.test_softmax"``.
    """
    for attribute in ("classname", "name", "file"):
        value = testcase.get(attribute) or ""
        parts = value.replace("/", ".").replace("::", ".").split(".")
        for part in parts:
            if part in stems:
                return part
    return None


def _failure_text(testcase: ElementTree.Element, element: ElementTree.Element) -> str:
    """``<test>: <message>`` for a failed or errored test case, on one line."""
    message = (element.get("message") or "").strip()
    body = (element.text or "").strip()
    collection = message == "collection failure"
    if collection or not message:
        # pytest's own lines that start with "E " say what went wrong
        reasons = [line[1:].strip() for line in body.splitlines() if line.startswith("E ")]
        if reasons:
            message = " / ".join(reasons)
        elif body:
            message = body.splitlines()[-1].strip()
    message = " / ".join(line.strip() for line in message.splitlines() if line.strip())
    name = "collection" if collection else (testcase.get("name") or "?")
    text = f"{name}: {message}" if message else name
    return text if len(text) <= FAILURE_MESSAGE_CHARS else text[:FAILURE_MESSAGE_CHARS] + "…"


def empty_counts() -> dict:
    return {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "duration_s": 0.0,
            "first_failure": None}


def read_junit(path: Path, names: set[str]) -> tuple[dict[str, dict], list[str]]:
    """Counts per spec (test module ``test_<spec>``) from a JUnit report, and the test cases
    that belong to none of them."""
    root = ElementTree.parse(path).getroot()
    stems = {f"test_{name}": name for name in names}
    counts: dict[str, dict] = {name: empty_counts() for name in names}
    strays: list[str] = []
    for testcase in root.iter("testcase"):
        stem = _module_of(testcase, set(stems))
        if stem is None:
            strays.append(f"{testcase.get('classname')}::{testcase.get('name')}")
            continue
        entry = counts[stems[stem]]
        entry["duration_s"] += float(testcase.get("time") or 0.0)
        failure = testcase.find("failure")
        error = testcase.find("error")
        if error is not None:
            entry["errors"] += 1
        elif failure is not None:
            entry["failed"] += 1
        elif testcase.find("skipped") is not None:
            entry["skipped"] += 1
        else:
            entry["passed"] += 1
        problem = error if error is not None else failure
        if problem is not None and entry["first_failure"] is None:
            entry["first_failure"] = _failure_text(testcase, problem)
    return counts, strays


def spec_result(workspace: Workspace, name: str, has_spec: bool, counts: dict) -> SpecTestResult:
    result = SpecTestResult(spec=name, test_file=workspace.relative(generated_test_path(workspace, name)),
                            status="passed", has_spec=has_spec,
                            passed=counts["passed"], failed=counts["failed"],
                            errors=counts["errors"], skipped=counts["skipped"],
                            duration_s=round(counts["duration_s"], 6),
                            first_failure=counts["first_failure"])
    if result.errors:
        result.status = "error"
    elif result.failed:
        result.status = "failed"
    elif result.collected == 0:
        result.status = "error"
        result.first_failure = (f"{result.test_file} collected no tests: regenerate it with "
                                "koschei code-generate")
    elif result.passed == 0:
        result.status = "skipped"
    return result


# --- the phase ----------------------------------------------------------------------------------


def _write_copy(source: Path, destination: Path) -> None:
    """Copy ``source`` to ``destination`` atomically (temp file in the same folder + rename)."""
    destination = destination.resolve()
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp",
                                         dir=destination.parent)
    os.close(handle)
    try:
        shutil.copyfile(source, temporary)
        os.replace(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def pytest_command(workspace: Workspace, test_files: list[Path], junit_path: Path,
                   extra_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest",
            *(workspace.relative(path) for path in test_files),
            "-p", "no:cacheprovider", "-q", "--rootdir", str(workspace.root),
            "--continue-on-collection-errors", f"--junit-xml={junit_path}",
            *extra_args]


def run(workspace: Workspace, options: Options, progress: Progress | None = None,
        ) -> TestRunResult:
    progress = progress or SilentProgress()
    chosen = choose_specs(workspace, options.select)
    result = TestRunResult()
    if not chosen:
        result.notes.append("no implemented spec and no generated test module: nothing to test")
        return result

    missing = {name for name, _ in chosen if not generated_test_path(workspace, name).is_file()}
    runnable = [(name, has_spec) for name, has_spec in chosen if name not in missing]
    if not runnable:
        folder = workspace.relative(workspace.tests_dir)
        raise UsageError(f"nothing is generated yet: {folder}/ has no test module for "
                         f"{', '.join(sorted(missing))}",
                         hint="run `koschei code-generate` (or `koschei cycle`) first")
    for name, has_spec in chosen:
        if not has_spec:
            result.notes.append(f"{workspace.relative(generated_test_path(workspace, name))} has no "
                                f"spec named {name!r} (left over from a removed spec?)")

    counts: dict[str, dict] = {}
    if runnable:
        counts = _run_pytest(workspace, options, [name for name, _ in runnable], result, progress)

    for name, has_spec in chosen:
        if name in missing:
            path = workspace.relative(generated_test_path(workspace, name))
            result.specs.append(SpecTestResult(
                spec=name, test_file=path, status="missing", has_spec=has_spec,
                first_failure=f"{path} does not exist: run koschei code-generate first"))
        elif not result.problems or name in counts:
            result.specs.append(spec_result(workspace, name, has_spec, counts.get(name, empty_counts())))
        else:  # pytest did not get to report on it
            result.specs.append(SpecTestResult(
                spec=name, test_file=workspace.relative(generated_test_path(workspace, name)),
                status="error", has_spec=has_spec,
                first_failure="pytest did not report on this module (see the output)"))
    return result


def _run_pytest(workspace: Workspace, options: Options, names: list[str], result: TestRunResult,
                progress: Progress) -> dict[str, dict]:
    """Run pytest on the test modules of ``names``; fill in the run facts of ``result``."""
    with tempfile.TemporaryDirectory(prefix="koschei-test-run-") as scratch:
        if options.record_dir is not None:
            Path(options.record_dir).mkdir(parents=True, exist_ok=True)
            junit_path = Path(options.record_dir).resolve() / "junit.xml"
        else:
            junit_path = Path(scratch) / "junit.xml"
        junit_path.unlink(missing_ok=True)
        command = pytest_command(workspace, [generated_test_path(workspace, n) for n in names],
                                 junit_path, list(options.extra_args))
        result.command = command
        environment = dict(os.environ, HF_HUB_OFFLINE="1")
        progress.step(f"pytest on {len(names)} spec(s): {', '.join(names)}")
        started = time.perf_counter()
        try:
            completed = subprocess.run(command, cwd=workspace.root, env=environment,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, errors="replace", check=False)
        except OSError as error:
            result.problems.append(f"could not start pytest: {error}")
            return {}
        result.duration_s = round(time.perf_counter() - started, 3)
        result.pytest_exit_code = completed.returncode
        result.output_tail = completed.stdout.splitlines()[-OUTPUT_TAIL_LINES:]
        if completed.returncode not in PYTEST_COMPLETED:
            result.problems.append(f"pytest stopped with exit code {completed.returncode} "
                                   "(interrupted, internal or usage error): see its output")
        if not junit_path.is_file():
            result.problems.append("pytest wrote no JUnit report: see its output")
            return {}
        try:
            counts, strays = read_junit(junit_path, set(names))
        except ElementTree.ParseError as error:
            result.problems.append(f"pytest's JUnit report is unreadable: {error}")
            return {}
        if strays:
            result.notes.append(f"{len(strays)} test case(s) of no chosen module: "
                                f"{', '.join(strays[:5])}")
        if options.record_dir is not None:
            result.junit_xml = workspace.relative(junit_path)
        if options.junit_xml is not None:
            _write_copy(junit_path, Path(options.junit_xml))
            result.junit_xml = str(Path(options.junit_xml))
        return counts
