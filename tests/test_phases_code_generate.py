"""code_generate: deterministic, atomic, idempotent rendering; --check; nothing written on errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import koschei.cli  # noqa: F401  (registers every command)
from koschei.cli.app import app
from koschei.errors import SpecError, UsageError
from koschei.phases import code_generate
from koschei.specs import load_specs
from koschei.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent
ROWWISE_SPECS = ("rmsnorm", "layernorm", "softmax")
GENERATED = sorted(
    [f"koschei/engine/{name}.py" for name in ROWWISE_SPECS]
    + [f"tests/engine/test_{name}.py" for name in ROWWISE_SPECS]
    + ["tests/engine/conftest.py"])


def make_workspace(root: Path, names: tuple[str, ...] = ROWWISE_SPECS) -> Workspace:
    """A workspace with some of the bundled foundation specs and the bundled templates."""
    (root / "specs" / "foundation").mkdir(parents=True)
    (root / "koschei.toml").write_text("", encoding="utf-8")
    for name in names:
        shutil.copy(REPO / "specs" / "foundation" / f"{name}.yaml",
                    root / "specs" / "foundation" / f"{name}.yaml")
    return Workspace.find(root)


def generated_files(root: Path) -> list[str]:
    found = [p for folder in ("koschei", "tests") if (root / folder).exists()
             for p in (root / folder).rglob("*") if p.is_file()]
    return sorted(p.relative_to(root).as_posix() for p in found)


def run(workspace: Workspace, **options) -> code_generate.CodeGenerateResult:
    return code_generate.run(workspace, code_generate.Options(**options))


def edit_spec(workspace: Workspace, name: str, old: str, new: str) -> None:
    path = workspace.specs_dir / "foundation" / f"{name}.yaml"
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} is not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_renders_every_implemented_spec_with_a_header(tmp_path):
    workspace = make_workspace(tmp_path)
    result = run(workspace)
    assert result.ok
    assert sorted(f.path for f in result.files) == GENERATED
    assert {f.action for f in result.files} == {"create"}
    assert sorted(result.written) == GENERATED
    assert generated_files(tmp_path) == GENERATED
    engine = (tmp_path / "koschei/engine/rmsnorm.py").read_text(encoding="utf-8")
    sha = load_specs(workspace).get("rmsnorm").sha256
    head = "\n".join(engine.splitlines()[:6])
    assert "do not edit" in head and "specs/foundation/rmsnorm.yaml" in head and sha in head
    assert "families/rowwise.py.j2" in head
    assert "arXiv:1910.07467" in engine  # the docstring cites the paper
    assert "def rmsnorm(x, weight, *, eps=1e-06, out=None):" in engine
    for path in GENERATED:  # every generated file is valid Python
        compile((tmp_path / path).read_text(encoding="utf-8"), path, "exec")


def test_a_second_run_is_identical_byte_for_byte_and_writes_nothing(tmp_path):
    workspace = make_workspace(tmp_path / "one")
    run(workspace)
    before = {path: (tmp_path / "one" / path).read_bytes() for path in GENERATED}
    stamps = {path: (tmp_path / "one" / path).stat().st_mtime_ns for path in GENERATED}
    again = run(workspace)
    assert {f.action for f in again.files} == {"identical"} and again.written == []
    assert {path: (tmp_path / "one" / path).read_bytes() for path in GENERATED} == before
    assert {path: (tmp_path / "one" / path).stat().st_mtime_ns for path in GENERATED} == stamps
    # the same specs in another folder render to the same bytes: nothing depends on where
    run(make_workspace(tmp_path / "two"))
    assert {path: (tmp_path / "two" / path).read_bytes() for path in GENERATED} == before


def test_a_changed_spec_updates_exactly_its_files(tmp_path):
    workspace = make_workspace(tmp_path)
    run(workspace)
    edit_spec(workspace, "rmsnorm", "default: 1.0e-6", "default: 1.0e-5")
    result = run(workspace)
    actions = {f.path: f.action for f in result.files}
    assert actions["koschei/engine/rmsnorm.py"] == "update"
    assert actions["tests/engine/test_rmsnorm.py"] == "update"
    assert {a for p, a in actions.items() if "rmsnorm" not in p} == {"identical"}
    assert sorted(result.written) == ["koschei/engine/rmsnorm.py", "tests/engine/test_rmsnorm.py"]
    text = (tmp_path / "koschei/engine/rmsnorm.py").read_text(encoding="utf-8")
    assert "eps=1e-05" in text


def test_check_reports_drift_writes_nothing_and_exits_1(tmp_path):
    workspace = make_workspace(tmp_path)
    fresh = run(workspace, check=True)
    assert not fresh.ok and {f.action for f in fresh.files} == {"create"}
    assert generated_files(tmp_path) == [] and fresh.written == []

    run(workspace)
    module = tmp_path / "koschei/engine/softmax.py"
    module.write_text(module.read_text(encoding="utf-8") + "# a hand edit\n", encoding="utf-8")
    edited = module.read_bytes()
    drift = run(workspace, check=True)
    assert not drift.ok
    assert [(f.path, f.action) for f in drift.drift] == [("koschei/engine/softmax.py", "update")]
    assert module.read_bytes() == edited

    runner = CliRunner()
    result = runner.invoke(app, ["code-generate", "--check", "--root", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "out of date" in result.output
    assert module.read_bytes() == edited

    assert runner.invoke(app, ["code-generate", "--root", str(tmp_path)]).exit_code == 0
    result = runner.invoke(app, ["code-generate", "--check", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output


def test_only_renders_the_named_specs_and_refuses_unknown_names(tmp_path):
    workspace = make_workspace(tmp_path)
    result = run(workspace, only=["llm_rmsnorm"])  # an alias of rmsnorm
    assert sorted(f.path for f in result.files) == [
        "koschei/engine/rmsnorm.py", "tests/engine/conftest.py", "tests/engine/test_rmsnorm.py"]
    with pytest.raises(UsageError, match="no spec has this name"):
        run(workspace, only=["nope"])
    planned = tmp_path / "specs/foundation/planned_thing.yaml"
    planned.write_text("name: planned_thing\ntitle: A planned thing\ntier: foundation\n",
                       encoding="utf-8")
    with pytest.raises(UsageError, match="planned"):
        run(workspace, only=["planned_thing"])


def test_a_spec_name_that_climbs_out_writes_nothing(tmp_path):
    workspace = make_workspace(tmp_path, ("rmsnorm",))
    edit_spec(workspace, "rmsnorm", "name: rmsnorm", "name: ../x")
    with pytest.raises(SpecError, match="name"):
        run(workspace)
    assert generated_files(tmp_path) == []
    assert not (tmp_path.parent / "x.py").exists()


def test_a_generated_folder_that_leads_outside_the_workspace_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    workspace = make_workspace(tmp_path / "ws", ("softmax",))
    (tmp_path / "ws" / "koschei").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UsageError, match="outside the workspace"):
        run(workspace)
    assert list(outside.rglob("*")) == []
    assert not (tmp_path / "ws" / "tests").exists()


def test_one_bad_spec_writes_nothing_at_all(tmp_path):
    workspace = make_workspace(tmp_path)
    edit_spec(workspace, "softmax", "shift: max", "shift: median")
    with pytest.raises(SpecError) as caught:
        run(workspace)
    issue = caught.value.issues[0]
    assert issue.path == "specs/foundation/softmax.yaml" and issue.field == "kernel.params.shift"
    assert issue.line is not None and "'median'" in issue.message
    assert generated_files(tmp_path) == []  # not even the good specs' files


def test_an_unknown_family_is_a_located_spec_error(tmp_path):
    workspace = make_workspace(tmp_path, ("softmax",))
    edit_spec(workspace, "softmax", "family: rowwise", "family: nonexistent")
    with pytest.raises(SpecError, match="no template family 'nonexistent'") as caught:
        run(workspace)
    assert caught.value.issues[0].field == "kernel.family"
    assert generated_files(tmp_path) == []


def test_a_reference_that_does_not_compile_writes_nothing(tmp_path):
    workspace = make_workspace(tmp_path, ("softmax",))
    edit_spec(workspace, "softmax", "def reference(x):", "def reference(x):\n      return (")
    with pytest.raises(SpecError):
        run(workspace)
    assert generated_files(tmp_path) == []


def test_tunables_choose_the_numba_flags(tmp_path):
    workspace = make_workspace(tmp_path, ("rmsnorm",))
    run(workspace)
    text = (tmp_path / "koschei/engine/rmsnorm.py").read_text(encoding="utf-8")
    assert "@njit(cache=True, nogil=True, fastmath=_FASTMATH, parallel=True)" in text
    assert "prange(" in text and "_PARALLEL_MIN_ELEMENTS = 32768" in text
    edit_spec(workspace, "rmsnorm", "parallel: {choices: [true, false], default: true",
              "parallel: {choices: [true, false], default: false")
    edit_spec(workspace, "rmsnorm", "fastmath: {choices: [true, false], default: true",
              "fastmath: {choices: [true, false], default: false")
    edit_spec(workspace, "rmsnorm", "accumulate: {choices: [float32, float64], default: float32",
              "accumulate: {choices: [float32, float64], default: float64")
    run(workspace)
    text = (tmp_path / "koschei/engine/rmsnorm.py").read_text(encoding="utf-8")
    assert "parallel=True" not in text and "prange(" not in text and "_FASTMATH" not in text
    assert "@njit(cache=True, nogil=True, fastmath=False)" in text
    assert "sum_squares = np.float64(0.0)" in text


def test_this_machines_tuned_values_replace_the_defaults_and_another_machines_do_not(tmp_path):
    from koschei.bench import machine
    from koschei.tuning import values

    workspace = make_workspace(tmp_path, ("rmsnorm", "softmax"))
    values.record(tmp_path, "0000000000000000", {}, "rmsnorm",  # another machine's
                  {"parallel_min_elements": 4096}, {"case": "4096x4096"})
    run(workspace)
    text = (tmp_path / "koschei/engine/rmsnorm.py").read_text(encoding="utf-8")
    assert "_PARALLEL_MIN_ELEMENTS = 32768" in text and "tuned for this machine" not in text
    source = f"tuning/{machine.fingerprint()}.json"
    values.record(tmp_path, machine.fingerprint(), machine.describe(), "rmsnorm",
                  {"parallel_min_elements": 8192, "accumulate": "float64"},
                  {"case": "4096x4096", "gain": 0.05})
    result = run(workspace)
    actions = {file.path: file.action for file in result.files}
    assert actions["koschei/engine/rmsnorm.py"] == "update"
    assert actions["koschei/engine/softmax.py"] == "identical"  # no tuned values: the defaults
    text = (tmp_path / "koschei/engine/rmsnorm.py").read_text(encoding="utf-8")
    assert "_PARALLEL_MIN_ELEMENTS = 8192" in text and "sum_squares = np.float64(0.0)" in text
    assert f"# (tuned for this machine: {source})" in text
    assert run(workspace).files and all(  # deterministic given the specs, templates and file
        file.action == "identical" for file in run(workspace).files)
    values.forget(tmp_path, machine.fingerprint(), "rmsnorm")
    run(workspace)
    text = (tmp_path / "koschei/engine/rmsnorm.py").read_text(encoding="utf-8")
    assert "_PARALLEL_MIN_ELEMENTS = 32768" in text


def test_tuned_values_that_the_spec_does_not_allow_are_refused_with_the_file_named(tmp_path):
    from koschei.bench import machine
    from koschei.tuning import values

    workspace = make_workspace(tmp_path, ("rmsnorm",))
    source = f"tuning/{machine.fingerprint()}.json"
    values.record(tmp_path, machine.fingerprint(), {}, "rmsnorm",
                  {"parallel_min_elements": 1000}, {})
    with pytest.raises(UsageError) as caught:
        run(workspace)
    assert str(caught.value).splitlines()[0] == (
        f"{source}: rmsnorm: tunable parallel_min_elements: 1000 is not one of its choices "
        "[4096, 8192, 16384, 32768, 65536]")
    assert generated_files(tmp_path) == []  # nothing written
    (tmp_path / source).write_text("{not json", encoding="utf-8")
    with pytest.raises(UsageError, match=rf"{source} is not a tuning file of format 1"):
        run(workspace)


def test_generated_modules_whose_spec_is_gone_are_reported(tmp_path):
    workspace = make_workspace(tmp_path)
    run(workspace)
    (tmp_path / "specs/foundation/layernorm.yaml").unlink()
    result = run(workspace)
    assert result.orphans == ["koschei/engine/layernorm.py", "tests/engine/test_layernorm.py"]
    assert (tmp_path / "koschei/engine/layernorm.py").exists()  # reported, never deleted


def test_the_json_output_lists_each_file_with_its_action(tmp_path):
    make_workspace(tmp_path, ("softmax",))
    result = CliRunner().invoke(app, ["code-generate", "--json", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True and data["counts"]["create"] == 3
    assert {"path": "koschei/engine/softmax.py", "spec": "softmax", "action": "create",
            "template": "engine_module.py.j2"} in data["files"]


# Every kind of argument the module and test templates must serve: leading dimensions shared by
# two inputs, an integer input with a range, optional and required-choice parameters, two
# constraints, an output dimension that is an expression. Its kernel is NumPy (family custom),
# so running its generated tests compiles nothing.
EVERY_KIND_OF_ARGUMENT = """\
name: toy_gqa
title: A toy with every kind of argument
tier: attention
kernel:
  family: custom
  params:
    source: |
      def _compute(q, k, positions, window, causal, mode, scale, out):
          out[...] = reference(q, k, positions, window=window, causal=causal, mode=mode,
                               scale=scale) * FACTOR
signature:
  inputs:
    - {name: q, dtype: float32, shape: ["...", s, hq, dh]}
    - {name: k, dtype: float32, shape: ["...", t, hkv, dh]}
    - {name: positions, dtype: int32, shape: [s], range: [0, 64]}
  params:
    - {name: window, type: int, optional: true, min: 1}
    - {name: causal, type: bool, default: true}
    - {name: mode, type: str, default: a, choices: [a, b]}
    - {name: scale, type: float, optional: true, greater_than: 0, max: 10}
  constraints:
    - {check: "hq % hkv == 0", message: "query heads must be a multiple of key heads"}
    - {check: "dh <= 64", message: "head size at most 64"}
  output: {name: y, dtype: float32, shape: ["...", s, "hq * dh"]}
reference: |
  def reference(q, k, positions, *, window=None, causal=True, mode="a", scale=None):
      group = q.shape[-2] // k.shape[-2]
      keys = np.repeat(k[..., :1, :, :], group, axis=-2)
      y = q * keys + positions[:, None, None].astype(q.dtype)
      if window is not None:
          y = y * window
      if not causal:
          y = -y
      if mode == "b":
          y = y + 1
      if scale is not None:
          y = y * np.float32(scale)
      return y.reshape(*q.shape[:-2], q.shape[-2] * q.shape[-1]).astype(q.dtype)
tests:
  cases:
    - dims: {"...": [2], s: 3, hq: 4, hkv: 2, t: 5, dh: 8}
    - dims: {"...": [], s: 1, hq: 1, hkv: 1, t: 1, dh: 1}
    - name: params
      dims: {"...": [1, 2], s: 2, hq: 6, hkv: 3, t: 2, dh: 4}
      params: {window: 3, causal: false, mode: b, scale: 0.5}
  tolerance:
    float32: {rtol: 1.0e-6, atol: 1.0e-6}
  random_dims: {"...": [1, 3], s: [1, 4], hq: [1, 8], hkv: [1, 4], t: [1, 3], dh: [1, 70]}
  invariants:
    - {name: flattened_heads, check: "y.shape[-1] == q.shape[-2] * q.shape[-1] and out is y"}
  torch: |
    def torch_reference(q, k, positions, *, window=None, causal=True, mode="a", scale=None):
        group = q.shape[-2] // k.shape[-2]
        keys = torch.repeat_interleave(k[..., :1, :, :], group, dim=-2)
        y = q * keys + positions[:, None, None].to(q.dtype)
        if window is not None:
            y = y * window
        if not causal:
            y = -y
        if mode == "b":
            y = y + 1
        if scale is not None:
            y = y * scale
        return y.reshape(*q.shape[:-2], q.shape[-2] * q.shape[-1])
bench:
  cases:
    - dims: {"...": [1], s: 1, hq: 12, hkv: 4, t: 16, dh: 64}
  bytes: "4 * rows * (2 * s * hq * dh + t * hkv * dh)"
  flops: "2 * rows * s * hq * dh"
"""


def run_generated_tests(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KOSCHEI_NUMBA_CACHE_DIR": str(root / ".cache")}
    return subprocess.run([sys.executable, "-m", "pytest", "tests/engine", "-q", "-rs",
                           "-p", "no:cacheprovider"], check=False, cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(("factor", "passes"), [("1", True), ("1.001", False)])
def test_the_generated_tests_pass_a_right_kernel_and_catch_a_wrong_one(tmp_path, factor, passes):
    (tmp_path / "specs" / "attention").mkdir(parents=True)
    (tmp_path / "koschei.toml").write_text("", encoding="utf-8")
    (tmp_path / "specs/attention/toy_gqa.yaml").write_text(
        EVERY_KIND_OF_ARGUMENT.replace("FACTOR", factor), encoding="utf-8")
    run(Workspace.find(tmp_path))
    engine = (tmp_path / "koschei/engine/toy_gqa.py").read_text(encoding="utf-8")
    assert "if k.shape[:-3] != lead:" in engine and "out_shape = (*lead, s, (hq * dh))" in engine
    assert 'if mode not in ("a", "b"):' in engine and "if window is not None:" in engine
    tests = run_generated_tests(tmp_path)
    output = tests.stdout + tests.stderr
    if passes:
        assert tests.returncode == 0, output
        assert "skipped" not in output  # every check had something to check
    else:
        assert tests.returncode == 1, output
        assert "test_matches_the_reference" in output and "test_matches_pytorch" in output
        assert "test_rejects_a_bad_parameter" not in output  # the argument checks still hold


# Every kind of input and result beyond the plain ones: an input drawn by the spec's draw()
# whose size is derived from another's, an optional positional input, an optional keyword-only
# input, a generator parameter, and two outputs returned as a tuple (so no out=).
EVERY_KIND_OF_RESULT = (REPO / "tests" / "data" / "toy_unpack.yaml").read_text(encoding="utf-8")


def toy_workspace(root: Path, spec_text: str, tier: str, name: str) -> Workspace:
    (root / "specs" / tier).mkdir(parents=True)
    (root / "koschei.toml").write_text("", encoding="utf-8")
    (root / "specs" / tier / f"{name}.yaml").write_text(spec_text, encoding="utf-8")
    return Workspace.find(root)


@pytest.mark.parametrize(("factor", "passes"), [("1", True), ("-1", False)])
def test_optional_inputs_derived_sizes_generators_and_two_outputs(tmp_path, factor, passes):
    workspace = toy_workspace(tmp_path, EVERY_KIND_OF_RESULT.replace("FACTOR", factor),
                              "quantization", "toy_unpack")
    run(workspace)
    engine = (tmp_path / "koschei/engine/toy_unpack.py").read_text(encoding="utf-8")
    assert "def toy_unpack(x, packed, bias=None, *, shift=0.0, rng=None, mask=None):" in engine
    assert "packed.shape[1] != ((k + 1) // 2)" in engine and "return y, total" in engine
    assert "if bias is not None and (" in engine and "out=None" not in engine
    tests = run_generated_tests(tmp_path)
    output = tests.stdout + tests.stderr
    if passes:
        assert tests.returncode == 0, output
        assert "skipped" not in output
    else:
        assert tests.returncode == 1, output
        assert "test_matches_the_reference" in output
        assert "test_rejects_a_bad_parameter" not in output


def test_the_generated_checks_of_optional_inputs_and_generators(tmp_path):
    import importlib.util

    import numpy as np

    run(toy_workspace(tmp_path, EVERY_KIND_OF_RESULT.replace("FACTOR", "1"), "quantization",
                      "toy_unpack"))
    location = importlib.util.spec_from_file_location(
        "toy_unpack_module", tmp_path / "koschei/engine/toy_unpack.py")
    module = importlib.util.module_from_spec(location)
    location.loader.exec_module(module)
    x = np.ones((2, 3), np.float32)
    packed = np.zeros((2, 2), np.uint8)
    y, total = module.toy_unpack(x, packed, rng=np.random.default_rng(1))
    expected_y, expected_total = module.reference(x, packed, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(total, expected_total)
    with pytest.raises(ValueError, match=r"^toy_unpack: packed: expected shape \(n, \(k \+ 1\) "
                                         r"// 2\) with n=2, k=3 \(from x\), got \(2, 3\)"):
        module.toy_unpack(x, np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match=r"^toy_unpack: bias: expected shape \(n,\) with n=2"):
        module.toy_unpack(x, packed, np.zeros(3, np.float32))
    with pytest.raises(TypeError, match=r"^toy_unpack: mask: expected dtype bool"):
        module.toy_unpack(x, packed, mask=np.zeros(3, np.float32))
    with pytest.raises(TypeError, match=r"^toy_unpack: rng: expected None, a seed or a numpy"):
        module.toy_unpack(x, packed, rng=1.5)
    with pytest.raises(ValueError, match=r"^toy_unpack: rng: expected a seed >= 0, got -1"):
        module.toy_unpack(x, packed, rng=-1)


@pytest.mark.parametrize(("spec", "old", "new", "field", "message"), [
    ("softmax", "scale: sum}", "scale: sum, eps: eps}", "kernel.params.eps", "only applies"),
    ("softmax", "scale: sum}", "scale: sum, bias: nothing}", "kernel.params",
     "nothing must name an input"),
    ("softmax", "scale: sum}", "scale: sum, center: yes}", "kernel.params.center",
     "no such parameter"),
    ("rmsnorm", "scale: rms, weight: weight, eps: eps}", "scale: rms, weight: weight}",
     "kernel.params.eps", "scale: rms needs eps"),
    ("rmsnorm", "accumulate: {choices: [float32, float64], default: float32",
     "accumulate: {choices: [float32, int8], default: int8", "tunables.accumulate",
     "float32 or float64"),
])
def test_the_rowwise_family_rejects_what_it_cannot_render(tmp_path, spec, old, new, field,
                                                          message):
    workspace = make_workspace(tmp_path, (spec,))
    edit_spec(workspace, spec, old, new)
    with pytest.raises(SpecError, match=message) as caught:
        run(workspace)
    issue = caught.value.issues[0]
    assert issue.field == field and issue.line is not None
    assert generated_files(tmp_path) == []


# A state of two arrays (as mLSTM's C, n, m): a running mean that carries its total and its
# count from call to call. Its kernel is NumPy (FACTOR 1 is right, anything else wrong).
STATE_OF_TWO_ARRAYS = """\
name: toy_mean
title: A running mean whose state is two arrays
tier: architectures
kernel:
  family: custom
  params:
    source: |
      def _compute(x, initial_total, initial_count, output_final_state, out, final_total,
                   final_count):
          y, total, count = reference(x, initial_total=initial_total,
                                      initial_count=initial_count, output_final_state=True)
          out[...] = y * FACTOR
          if final_total is not None:
              final_total[...] = total
          if final_count is not None:
              final_count[...] = count
signature:
  inputs:
    - {name: x, dtype: float32, shape: [T, d]}
    - {name: initial_total, dtype: float32, shape: [d], optional: true, keyword: true}
    - {name: initial_count, dtype: float32, shape: [d], range: [1, 5], optional: true,
       keyword: true}
  params:
    - {name: output_final_state, type: bool, default: false}
  output: {name: y, dtype: float32, shape: [T, d]}
  state:
    - {name: final_total, input: initial_total, flag: output_final_state}
    - {name: final_count, input: initial_count, flag: output_final_state, doc: tokens seen}
reference: |
  def reference(x, *, output_final_state=False, initial_total=None, initial_count=None):
      total = np.zeros(x.shape[1]) if initial_total is None else initial_total.astype(float)
      count = np.zeros(x.shape[1]) if initial_count is None else initial_count.astype(float)
      totals = total + np.cumsum(x, axis=0, dtype=np.float64)
      counts = count + np.arange(1, x.shape[0] + 1)[:, None]
      y = (totals / counts).astype(np.float32)
      if output_final_state:
          return y, totals[-1].astype(np.float32), counts[-1].astype(np.float32)
      return y
tests:
  cases:
    - dims: {T: 3, d: 4}
    - {name: from_a_state, dims: {T: 5, d: 2}, with_inputs: [initial_total, initial_count],
       params: {output_final_state: true}}
    - {name: final_state_from_zeros, dims: {T: 1, d: 3}, params: {output_final_state: true}}
  tolerance:
    float32: {rtol: 1.0e-5, atol: 1.0e-6}
  random_dims: {T: [1, 6], d: [1, 5]}
bench:
  cases:
    - dims: {T: 64, d: 256}
  bytes: "8 * T * d"
  flops: "2 * T * d"
"""


@pytest.mark.parametrize(("factor", "passes"), [("1", True), ("-1", False)])
def test_a_state_of_two_arrays_is_two_inputs_two_buffers_and_two_results(tmp_path, factor,
                                                                          passes):
    workspace = toy_workspace(tmp_path, STATE_OF_TWO_ARRAYS.replace("FACTOR", factor),
                              "architectures", "toy_mean")
    run(workspace)
    engine = (tmp_path / "koschei/engine/toy_mean.py").read_text(encoding="utf-8")
    assert ("def toy_mean(x, *, output_final_state=False, initial_total=None, "
            "initial_count=None, out=None, final_total=None, final_count=None):") in engine
    assert ("if not (initial_total is None) == (initial_count is None):" in engine
            and "return out, final_total, final_count" in engine)
    assert "final_count: float32 (d,), the state after the last position (pass it as " \
           "initial_count to go on); tokens seen." in engine
    tests = (tmp_path / "tests/engine/test_toy_mean.py").read_text(encoding="utf-8")
    assert '("final_total", "float32"), ("final_count", "float32")]' in tests
    assert 'state_flag="output_final_state", state_inputs=["initial_total", "initial_count"])' \
        in tests
    result = run_generated_tests(tmp_path)
    output = result.stdout + result.stderr
    if passes:
        assert result.returncode == 0, output
        assert "skipped" not in output
    else:
        assert result.returncode == 1, output
        assert "test_matches_the_reference" in output
        assert "test_rejects_a_state_given_in_part" not in output  # the checks still hold


def test_a_state_of_two_arrays_is_updated_in_place_and_given_whole(tmp_path):
    import importlib.util

    import numpy as np

    run(toy_workspace(tmp_path, STATE_OF_TWO_ARRAYS.replace("FACTOR", "1"), "architectures",
                      "toy_mean"))
    location = importlib.util.spec_from_file_location(
        "toy_mean_module", tmp_path / "koschei/engine/toy_mean.py")
    module = importlib.util.module_from_spec(location)
    location.loader.exec_module(module)
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    _, total, count = module.toy_mean(x[:2], output_final_state=True)
    np.testing.assert_array_equal(total, [2, 4])
    np.testing.assert_array_equal(count, [2, 2])
    # a decoding step: the state updated in place, the same arrays returned
    step, same_total, same_count = module.toy_mean(
        x[2:], initial_total=total, initial_count=count, final_total=total, final_count=count,
        output_final_state=True)
    assert same_total is total and same_count is count
    np.testing.assert_array_equal(total, [6, 9])
    np.testing.assert_array_equal(step, [[2, 3]])
    with pytest.raises(ValueError, match=r"^toy_mean: initial_count: expected an array, as "
                                         r"initial_total is given \(the arrays of a state are "
                                         r"given together, or none"):
        module.toy_mean(x, initial_total=total)
    with pytest.raises(ValueError, match=r"^toy_mean: initial_total: expected an array, as "
                                         r"initial_count is given"):
        module.toy_mean(x, initial_count=count)
    buffer = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"^toy_mean: final_count: expected a buffer of its own, "
                                         r"got one that overlaps the input final_total"):
        module.toy_mean(x, final_total=buffer[:2], final_count=buffer[1:])
    with pytest.raises(ValueError, match=r"^toy_mean: final_total: expected a buffer of its own, "
                                         r"got one that overlaps the input initial_count"):
        one = np.ones(1, np.float32)
        module.toy_mean(x[:, :1].copy(), initial_total=one * 2, initial_count=one,
                        final_total=one)
