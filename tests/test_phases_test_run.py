"""The test_run phase on a tiny workspace: real pytest subprocesses on hand-written test modules
in the place and shape of generated ones (no Numba), read back per spec from the JUnit report."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree

import pytest

from koschei.errors import UsageError
from koschei.phases import test_run
from koschei.workspace import Workspace

IMPLEMENTED = """\
name: {name}
title: Scale by two ({name})
tier: foundation
aliases: [{alias}]
kernel:
  family: custom
  params:
    source: |
      def _compute(x, out):
          np.multiply(x, np.float32(2.0), out=out)
signature:
  inputs:
    - {{name: x, dtype: float32, shape: ["...", d]}}
  output: {{name: out, dtype: float32, shape: ["...", d]}}
reference: |
  import numpy as np


  def reference(x):
      return (x * np.float32(2.0)).astype(np.float32)
tests:
  cases:
    - {{dims: {{"...": [4], d: 8}}}}
  tolerance:
    float32: {{rtol: 1.0e-6, atol: 1.0e-6}}
"""

PLANNED = """\
name: {name}
title: A planned technique ({name})
tier: foundation
claims:
  - {{metric: speedup, value: 2.0, baseline: numpy, source: "a paper"}}
"""

PASSING = '''\
"""Generated-style tests that pass (and one that skips)."""
import os

import pytest


def test_reference_equivalence():
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # the phase runs the tests offline


@pytest.mark.parametrize("rows", [1, 3])
def test_random_shapes(rows):
    assert rows > 0


def test_torch_equivalence():
    pytest.skip("torch is not needed here")
'''

FAILING = '''\
"""Generated-style tests, one of which fails."""


def test_reference_equivalence():
    assert 1 == 2, "beta disagrees with its reference"


def test_bad_inputs():
    assert True
'''

BROKEN = '''\
import a_module_that_does_not_exist_anywhere  # noqa: F401


def test_never_collected():
    pass
'''

EMPTY = '''\
"""A test module without tests."""
VALUE = 1
'''


def make_workspace(root: Path, implemented: dict[str, str | None], planned: tuple[str, ...] = (),
                   ) -> Workspace:
    """Specs named in ``implemented`` with their test module source (None: no test module)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'tiny-workspace'\n", encoding="utf-8")
    specs = root / "specs" / "foundation"
    specs.mkdir(parents=True)
    tests = root / "tests" / "engine"
    tests.mkdir(parents=True)
    for name, source in implemented.items():
        (specs / f"{name}.yaml").write_text(IMPLEMENTED.format(name=name, alias=f"seed_{name}"),
                                            encoding="utf-8")
        if source is not None:
            (tests / f"test_{name}.py").write_text(source, encoding="utf-8")
    for name in planned:
        (specs / f"{name}.yaml").write_text(PLANNED.format(name=name), encoding="utf-8")
    return Workspace(root.resolve())


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path / "ws", {"alpha": PASSING, "beta": FAILING},
                          planned=("gamma",))


def by_spec(result: test_run.TestRunResult) -> dict[str, test_run.SpecTestResult]:
    return {spec.spec: spec for spec in result.specs}


def test_every_implemented_spec_runs_and_failures_are_reported_per_spec(workspace, tmp_path):
    # a generated test module whose spec was removed still runs, and says so
    (workspace.tests_dir / "test_orphan.py").write_text(PASSING, encoding="utf-8")
    record = tmp_path / "runs" / "r1"
    result = test_run.run(workspace, test_run.Options(record_dir=record))

    assert not result.ok
    specs = by_spec(result)
    assert list(specs) == ["alpha", "beta", "orphan"]  # gamma is planned: nothing to test
    alpha, beta, orphan = specs["alpha"], specs["beta"], specs["orphan"]
    assert (alpha.status, alpha.passed, alpha.failed, alpha.errors, alpha.skipped) == \
        ("passed", 3, 0, 0, 1)
    assert alpha.ok and alpha.first_failure is None and alpha.has_spec
    assert alpha.test_file == "tests/engine/test_alpha.py"
    assert (beta.status, beta.passed, beta.failed) == ("failed", 1, 1)
    assert not beta.ok
    assert beta.first_failure.startswith("test_reference_equivalence: ")
    assert "beta disagrees with its reference" in beta.first_failure
    assert orphan.status == "passed" and not orphan.has_spec
    assert any("orphan" in note for note in result.notes)
    assert result.totals == {"passed": 7, "failed": 1, "errors": 0, "skipped": 2}
    assert result.pytest_exit_code == 1 and not result.problems

    # the report is kept in the run record, and it is pytest's real JUnit XML
    junit = record / "junit.xml"
    assert result.junit_xml == str(junit.resolve())
    classnames = {case.get("classname") for case in ElementTree.parse(junit).iter("testcase")}
    assert classnames == {"tests.engine.test_alpha", "tests.engine.test_beta",
                          "tests.engine.test_orphan"}
    assert any("1 failed" in line for line in result.output_tail)
    assert "-p" in result.command and "no:cacheprovider" in result.command

    data = json.loads(json.dumps(result.to_dict()))
    assert data["ok"] is False
    assert data["totals"]["failed"] == 1
    assert [entry["ok"] for entry in data["specs"]] == [True, False, True]


def test_select_by_alias_runs_only_that_specs_module_and_copies_the_report(workspace, tmp_path):
    report = tmp_path / "reports" / "junit.xml"
    result = test_run.run(workspace, test_run.Options(select=["seed_alpha"], junit_xml=report))

    assert result.ok, result.output_tail
    assert [spec.spec for spec in result.specs] == ["alpha"]
    assert "tests/engine/test_alpha.py" in result.command
    assert "tests/engine/test_beta.py" not in result.command
    names = {case.get("classname") for case in ElementTree.parse(report).getroot().iter("testcase")}
    assert names == {"tests.engine.test_alpha"}
    assert result.junit_xml == str(report)
    assert not list(report.parent.glob(".*.tmp"))  # the copy was atomic and left nothing behind


def test_missing_broken_and_empty_test_modules_are_errors(tmp_path):
    workspace = make_workspace(tmp_path / "ws", {"alpha": PASSING, "broken": BROKEN,
                                                 "hollow": EMPTY, "delta": None})
    with pytest.raises(UsageError, match="nothing is generated yet") as only_missing:
        test_run.run(workspace, test_run.Options(select=["delta"]))  # pytest is not started
    assert "code-generate" in only_missing.value.hint

    result = test_run.run(workspace, test_run.Options())
    specs = by_spec(result)
    assert specs["alpha"].status == "passed"  # the other modules still ran
    assert specs["broken"].status == "error" and specs["broken"].errors == 1
    assert "a_module_that_does_not_exist_anywhere" in specs["broken"].first_failure
    assert specs["hollow"].status == "error" and specs["hollow"].collected == 0
    assert "collected no tests" in specs["hollow"].first_failure
    assert specs["delta"].status == "missing"
    assert not result.ok


def test_unknown_and_planned_selections_are_usage_errors(workspace):
    with pytest.raises(UsageError, match="no implemented spec or generated test module"):
        test_run.run(workspace, test_run.Options(select=["nonexistent"]))
    with pytest.raises(UsageError, match="planned"):
        test_run.run(workspace, test_run.Options(select=["gamma"]))


def test_pytest_that_cannot_run_fails_the_phase_with_its_output(workspace):
    result = test_run.run(workspace, test_run.Options(select=["alpha"],
                                                      extra_args=["--no-such-pytest-option"]))
    assert not result.ok
    assert result.pytest_exit_code == 4
    assert result.problems
    assert any("no-such-pytest-option" in line for line in result.output_tail)
    assert by_spec(result)["alpha"].status == "error"


def test_a_workspace_with_nothing_implemented_has_nothing_to_test(tmp_path):
    workspace = make_workspace(tmp_path / "ws", {}, planned=("gamma",))
    result = test_run.run(workspace, test_run.Options())
    assert result.ok and result.specs == [] and result.pytest_exit_code is None
    assert "nothing to test" in result.notes[0]


def test_the_summary_counts_skipped_tests_apart():
    from koschei.phases.test_run import SpecTestResult, TestRunResult

    result = TestRunResult(specs=[
        SpecTestResult(spec="a", test_file="tests/engine/test_a.py", status="passed", passed=7,
                       skipped=2),
        SpecTestResult(spec="b", test_file="tests/engine/test_b.py", status="passed", passed=3)])
    assert result.summary() == "10/12 tests passed (2 skipped) in 2 spec(s)"
    result.specs[0].skipped = 0
    assert result.summary() == "10/10 tests passed in 2 spec(s)"
