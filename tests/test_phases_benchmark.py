"""The benchmark phase on a tiny workspace: timings, ratios, roofline, wrong kernels, history.

The workspace's engine modules here are small hand-written NumPy stand-ins for generated ones
(no Numba compilation), so the phase's own logic is what is tested; one test measures the real
generated softmax kernel when the repository has it.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from koschei.bench import calibration, machine
from koschei.bench import models as bench_models
from koschei.bench.check import (
    case_params,
    compare_results,
    draw_inputs,
    formula_names,
    load_source_function,
    torch_available,
)
from koschei.bench.results import CaseResult
from koschei.bench.roofline import derive
from koschei.bench.timing import MIN_ROUNDS, SIGNIFICANCE_P, ContenderTiming
from koschei.errors import UsageError
from koschei.phases import benchmark
from koschei.runs import RunRecord
from koschei.specs.validate import case_label
from koschei.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent
BUDGET = 0.1
COMPARE_BUDGET = 0.3  # enough rounds for a significant U test on a busy machine

SPEC = """\
name: {name}
title: Scale by a constant ({name})
tier: foundation
summary: "y = alpha * x"
kernel:
  family: custom
  params:
    source: |
      def _compute(x, alpha, out):
          np.multiply(x, np.float32(alpha), out=out)
signature:
  inputs:
    - {{name: x, dtype: float32, shape: ["...", d]}}
  output: {{name: out, dtype: float32, shape: ["...", d]}}
  params:
    - {{name: alpha, type: float, default: 2.0}}
reference: |
  import numpy as np


  def reference(x, *, alpha=2.0):
      return (x * np.float32(alpha)).astype(np.float32)
tests:
  cases:
    - {{dims: {{"...": [4], d: 8}}}}
  tolerance:
    float32: {{rtol: 1.0e-6, atol: 1.0e-6}}
  torch: |
    def torch_reference(x, *, alpha=2.0):
        return x * alpha
bench:
  cases:
    - {{dims: {{"...": [64], d: 256}}}}
    - {{name: half, dims: {{"...": [8], d: 32}}, params: {{alpha: 0.5}}}}
  bytes: "2 * 4 * rows * d"
  flops: "rows * d"
"""

ENGINE = '''\
"""{name}: a hand-written stand-in for a generated engine module."""

import numpy as np


def reference(x, *, alpha=2.0):
    return (x * np.float32(alpha)).astype(np.float32)


def {name}(x, *, alpha=2.0, out=None):
    if out is None:
        out = np.empty_like(x)
    np.multiply(x, np.float32(alpha), out=out)
    out += np.float32({offset})
    return out
'''


pytestmark = pytest.mark.usefixtures("engine_path_restored")


def options(**values) -> benchmark.Options:
    """The phase's options; no model is measured, and nothing compiled by torch.compile, unless
    a test asks for it."""
    return benchmark.Options(**{"models": [], "torch_compile": False, **values})


def make_workspace(root: Path, kernels: dict[str, float]) -> Workspace:
    """A workspace with one spec per name; the engine adds ``offset`` (0.0 = correct)."""
    (root / "specs" / "foundation").mkdir(parents=True)
    (root / "koschei.toml").write_text("")
    engine_dir = root / "koschei" / "engine"
    engine_dir.mkdir(parents=True)
    for name, offset in kernels.items():
        (root / "specs" / "foundation" / f"{name}.yaml").write_text(SPEC.format(name=name))
        (engine_dir / f"{name}.py").write_text(ENGINE.format(name=name, offset=offset))
    workspace = Workspace(root.resolve())
    # small calibration arrays keep the test quick; the phase reuses the stored entry
    calibration.load_or_measure(workspace.runs_dir, calibration.resolve_threads(None),
                                array_mib=2, gemm_n=128, repeats=2)
    return workspace


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    workspace = make_workspace(root, {"scale": 0.0, "shifted": 0.5})
    result = benchmark.run(workspace, options(budget_s=BUDGET))
    return workspace, result


def cases_of(result, spec):
    return [case for case in result.cases if case.spec == spec]


def test_every_contender_has_a_median_and_ratios_are_paired(measured):
    _, result = measured
    scale = cases_of(result, "scale")
    assert [case.case for case in scale] == ["64x256", "half"]
    for case in scale:
        assert case.verdict == "ok", case.error
        names = {"engine", "numpy", "torch"} if torch_available() else {"engine", "numpy"}
        assert set(case.contenders) == names
        for timing in case.contenders.values():
            assert timing.median_s > 0 and timing.iqr_s >= 0
            assert timing.rounds >= MIN_ROUNDS
            assert len(timing.samples_s) == timing.rounds
            assert timing.batch >= 1 and timing.batch * timing.median_s >= 0.5e-3
        rounds = {timing.rounds for timing in case.contenders.values()}
        assert len(rounds) == 1, "interleaved contenders run the same number of rounds"
        engine, numpy = case.contenders["engine"], case.contenders["numpy"]
        ratios = [n / e for n, e in zip(numpy.samples_s, engine.samples_s, strict=True)]
        assert case.speedup_vs_numpy == pytest.approx(statistics.median(ratios))
        if "torch" in case.contenders:
            assert case.speedup_vs_torch > 0
        assert case.stopped in ("stable", "budget", "max_rounds")


def test_roofline_figures_follow_the_spec_formulas(measured):
    _, result = measured
    case = cases_of(result, "scale")[0]
    rows, d = 64, 256
    assert case.bytes == 2 * 4 * rows * d
    assert case.flops == rows * d
    median = case.contenders["engine"].median_s
    assert case.gbs == pytest.approx(case.bytes / median / 1e9)
    assert case.gflops == pytest.approx(case.flops / median / 1e9)
    assert case.intensity == pytest.approx(1 / 8)
    assert case.written_bytes == 4 * rows * d and case.read_bytes == 4 * rows * d
    assert case.memory_level in result.calibration["levels"]
    bandwidth = case.ceiling_gbs
    peak = result.calibration["peak_gflops"]
    if case.intensity * bandwidth < peak:  # below the ridge point (always, with real ceilings)
        assert case.bound == "memory"
        assert case.roofline_fraction == pytest.approx(case.gbs / bandwidth)
    else:
        assert case.bound == "compute"
        assert case.roofline_fraction == pytest.approx(case.gflops / peak)
    half = cases_of(result, "scale")[1]
    assert half.params == {"alpha": 0.5} and half.bytes == 2 * 4 * 8 * 32


def test_a_wrong_kernel_is_reported_and_not_timed(measured):
    _, result = measured
    for case in cases_of(result, "shifted"):
        assert case.verdict == "wrong"
        assert "does not match the reference" in case.error
        assert case.max_abs_error == pytest.approx(0.5, rel=1e-3)
        assert case.contenders == {} and case.gbs is None and case.speedup_vs_numpy is None
    assert not result.ok
    assert result.counts == {"ok": 2, "wrong": 2}


def test_the_result_is_the_json_contract(measured):
    _, result = measured
    data = json.loads(json.dumps(result.to_dict()))
    assert data["ok"] is False
    assert data["threads"] == calibration.resolve_threads(None)
    assert data["fingerprint"] == machine.fingerprint()
    assert data["machine"]["cores"] == machine.describe()["cores"]
    assert set(data["calibration"]) >= {"levels", "sgemm_gflops", "measured_at"}
    assert "DRAM" in data["calibration"]["levels"]
    assert data["thread_control"]["numba"] == data["threads"]
    case = data["cases"][0]
    assert set(case) >= {"spec", "case", "verdict", "error", "contenders", "bytes", "flops", "gbs",
                         "gflops", "intensity", "bound", "roofline_fraction", "speedup_vs_numpy",
                         "speedup_vs_torch", "torch_fastest", "speedup_vs_torch_compile",
                         "memory_level", "ceiling_gbs", "ceiling_model", "read_bytes",
                         "written_bytes", "compare"}
    assert set(case["contenders"]["engine"]) >= {"median_s", "iqr_s", "rounds", "samples_s"}


def test_select_and_errors(tmp_path):
    workspace = make_workspace(tmp_path, {"scale": 0.0, "gone": 0.0})
    (workspace.engine_dir / "gone.py").unlink()
    with pytest.raises(UsageError, match="gone.py") as refused:  # before anything is measured
        benchmark.run(workspace, options(select=["gone"], budget_s=BUDGET))
    assert "code-generate" in refused.value.hint
    with pytest.raises(UsageError, match="1 of 2 engine modules"):
        benchmark.run(workspace, options(budget_s=BUDGET))
    with pytest.raises(UsageError, match="nope"):
        benchmark.run(workspace, benchmark.Options(select=["nope"]))
    with pytest.raises(UsageError, match="--compare"):
        benchmark.run(workspace, options(fail_on_regression=5))
    # --select none: no spec (and, without --model, no model either)
    nothing = benchmark.run(workspace, options(select=["none"], models=None, budget_s=BUDGET))
    assert (nothing.cases, nothing.models, nothing.encoders) == ([], [], [])


def save_run(workspace: Workspace, run_id: str, data: dict) -> None:
    folder = workspace.runs_dir / run_id
    folder.mkdir(parents=True)
    (folder / "benchmark.json").write_text(json.dumps(data))


def save_record(workspace: Workspace, data: dict) -> str:
    """Save ``data`` as the benchmark result of a new run record; its run id."""
    record = RunRecord.create(workspace, "benchmark")
    record.save_phase("benchmark", data)
    return record.id


def scaled(data: dict, factors: dict[str, float], started_at: str) -> dict:
    """A copy of a benchmark result whose contenders' times are multiplied by ``factors``."""
    data = json.loads(json.dumps(data))
    data["started_at"] = started_at
    for case in data["cases"]:
        for name, factor in factors.items():
            timing = case["contenders"][name]
            timing["samples_s"] = [s * factor for s in timing["samples_s"]]
            timing["median_s"] *= factor
    return data


def test_compare_gates_on_a_large_significant_regression(tmp_path):
    pytest.importorskip("scipy")
    workspace = make_workspace(tmp_path, {"scale": 0.0})
    first = benchmark.run(workspace, options(budget_s=BUDGET, compare="latest"))
    assert first.compared_with is None and any("nothing to compare" in n for n in first.notes)
    # the earlier engine a thousand times faster: no amount of machine noise hides that
    fast_run = save_record(workspace, scaled(first.to_dict(), {"engine": 1e-3}, "2000-01-01"))
    gated = benchmark.run(workspace, options(budget_s=COMPARE_BUDGET, compare="latest",
                                             fail_on_regression=10))
    assert gated.compared_with == fast_run
    for case in gated.cases:
        assert case.compare["status"] == "slower", case.compare
        assert case.compare["change_pct"] > 100
        assert case.compare["p_value"] < SIGNIFICANCE_P
        assert case.compare["relative_to_numpy"]["direction"] == "slower"
        assert case.verdict == "regression" and "beyond the 10% gate" in case.error
    assert not gated.ok

    slow_run = save_record(workspace, scaled(first.to_dict(), {"engine": 1e3}, "2001-01-01"))
    latest = benchmark.run(workspace, options(budget_s=COMPARE_BUDGET, compare="latest",
                                              fail_on_regression=10))
    assert latest.compared_with == slow_run
    assert latest.ok
    assert all(case.compare["status"] == "faster" for case in latest.cases)


def timed_case(engine: list[float], numpy: list[float]) -> CaseResult:
    def timing(samples: list[float]) -> ContenderTiming:
        return ContenderTiming(median_s=statistics.median(samples), iqr_s=0.0,
                               rounds=len(samples), batch=1, min_s=min(samples),
                               samples_s=samples)

    return CaseResult(spec="scale", case="64x256", verdict="ok",
                      contenders={"engine": timing(engine), "numpy": timing(numpy)})


def test_a_change_counts_when_absolute_and_numpy_relative_times_agree():
    pytest.importorskip("scipy")
    base = [1.0 + 0.01 * i for i in range(20)]
    earlier = {"contenders": {"engine": {"samples_s": base, "median_s": statistics.median(base)},
                              "numpy": {"samples_s": [2 * b for b in base]}}}

    def status(engine_factor: float, numpy_factor: float, threshold: float = 10.0) -> str:
        case = timed_case([engine_factor * b for b in base], [2 * numpy_factor * b for b in base])
        return benchmark.compare_case(case, earlier, "r1", threshold)["status"]

    assert status(1.5, 1.0) == "slower"  # the engine alone got slower
    assert status(0.5, 1.0) == "faster"
    assert status(1.5, 1.5) == "unchanged"  # the whole machine got slower: drift
    assert status(1.05, 1.0) == "unchanged"  # significant but within the threshold
    assert status(1.05, 1.0, threshold=2.0) == "slower"
    few = timed_case([5.0], [2.0])  # one round: no test possible, so never significant
    assert benchmark.compare_case(few, earlier, "r1", 10.0)["p_value"] is None
    assert benchmark.compare_case(few, earlier, "r1", 10.0)["status"] == "unchanged"
    assert benchmark.compare_case(few, None, "r1", 10.0) is None


def test_compare_refuses_another_machine_and_unknown_runs(tmp_path):
    workspace = make_workspace(tmp_path, {"scale": 0.0})
    save_run(workspace, "elsewhere", {"fingerprint": "0" * 16, "threads": 1, "cases": [],
                                      "started_at": "2000-01-01T00:00:00"})
    with pytest.raises(UsageError, match="fingerprint"):
        benchmark.run(workspace, options(budget_s=BUDGET, compare="latest"))
    with pytest.raises(UsageError, match="no run 'missing'"):
        benchmark.run(workspace, options(budget_s=BUDGET, compare="missing"))


def test_the_current_run_record_is_never_its_own_baseline(tmp_path):
    workspace = make_workspace(tmp_path, {"scale": 0.0})
    first = benchmark.run(workspace, options(budget_s=BUDGET))
    save_run(workspace, "current", first.to_dict())
    result = benchmark.run(workspace, options(
        budget_s=BUDGET, compare="latest", record_dir=workspace.runs_dir / "current"))
    assert result.compared_with is None


def engine_only(seconds: float) -> CaseResult:
    timing = ContenderTiming(median_s=seconds, iqr_s=0.0, rounds=5, batch=1,
                             min_s=seconds, samples_s=[seconds] * 5)
    return CaseResult(spec="scale", case="64x256", verdict="ok",
                      contenders={"engine": timing})


def level(capacity: int | None, read: float, write: float) -> dict:
    return {"capacity_bytes": capacity, "read_gbs": read, "write_gbs": write,
            "write_nt_gbs": write / 2, "copy_gbs": None, "copy_nt_gbs": None, "triad_gbs": None,
            "triad_nt_gbs": None}


CEILINGS = calibration.Calibration(
    sgemm_gflops=100.0, measured_at="2000-01-01T00:00:00+00:00", threads=1,
    levels={"L1": level(2**15, 400.0, 200.0), "L2": level(2**20, 100.0, 50.0),
            "DRAM": level(None, 20.0, 10.0)})


def bench_formulas(written: str | None = None):
    from koschei.specs.schema import Bench

    return Bench(cases=[{"dims": {}}], bytes="2 * 4 * rows * d", flops="rows * d", written=written)


def test_a_case_is_held_against_the_ceiling_of_its_level_and_its_mix():
    # 256 KiB (read 128 KiB, write 128 KiB) in 4 us: 65.5 GB/s, within L2's figures
    case = engine_only(4e-6)
    derive(case, bench_formulas(), {"rows": 128, "d": 256}, CEILINGS, 4 * 128 * 256)
    assert case.verdict == "ok" and case.bound == "memory" and case.memory_level == "L2"
    assert case.read_bytes == case.written_bytes == 4 * 128 * 256
    # half read at 100 GB/s, half written at 50 GB/s: 2 / (1/100 + 1/50) = 66.7 GB/s
    assert case.ceiling_gbs == pytest.approx(200 / 3)
    assert case.roofline_fraction == pytest.approx(case.gbs / case.ceiling_gbs)
    read_only = engine_only(4e-6)
    derive(read_only, bench_formulas(written="0"), {"rows": 128, "d": 256}, CEILINGS,
           4 * 128 * 256)
    assert read_only.ceiling_gbs == pytest.approx(100.0)  # the level's read bandwidth


def test_a_case_above_its_ceiling_is_a_benchmark_error_not_a_headline():
    case = engine_only(1e-3)  # 128 MiB in 1 ms: 134 GB/s from DRAM
    derive(case, bench_formulas(), {"rows": 4096, "d": 4096}, CEILINGS, 4 * 4096**2)
    assert case.memory_level == "DRAM" and case.roofline_fraction > 1
    assert case.verdict == "over_ceiling"
    assert "of its ceiling" in case.error and "DRAM" in case.error
    cold = engine_only(1.0)
    cold.cold_inputs = ["x"]  # a small case, rotated cold: held against DRAM
    derive(cold, bench_formulas(), {"rows": 2, "d": 2}, CEILINGS, 16)
    assert cold.memory_level == "DRAM"


def test_goals_are_met_or_short_by_a_percentage():
    from koschei.specs.schema import Goal

    case = engine_only(0.01)
    derive(case, bench_formulas(), {"rows": 4096, "d": 4096}, CEILINGS, 4 * 4096**2)
    case.speedup_vs_numpy, case.speedup_vs_torch = 2.0, 1.5
    goals = [Goal(vs="numpy", at_least=1.5), Goal(vs="torch", at_least=3.0),
             Goal(roofline=0.8)]
    evaluated = benchmark.evaluate_goals(goals, case)
    assert [goal["goal"] for goal in evaluated] == ["×NumPy ≥ 1.5", "×PyTorch ≥ 3",
                                                     "roofline ≥ 80%"]
    assert [goal["met"] for goal in evaluated] == [True, False, case.roofline_fraction >= 0.8]
    assert evaluated[0]["short_by_pct"] is None
    assert evaluated[1]["short_by_pct"] == pytest.approx(50.0)
    assert evaluated[2]["measured"] == case.roofline_fraction


def test_without_matplotlib_a_note_and_no_image(measured, tmp_path, monkeypatch):
    from koschei.bench import report

    _, result = measured
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    written, note = report.write_charts(result, tmp_path)
    assert written == [] and "matplotlib is not installed" in note
    assert list(tmp_path.iterdir()) == []


def test_charts_are_the_same_for_the_same_result(measured, tmp_path):
    pytest.importorskip("matplotlib")
    from koschei.bench import report

    _, result = measured
    first, _ = report.write_charts(result, tmp_path / "a")
    again, _ = report.write_charts(result, tmp_path / "b")
    assert [p.name for p in first] == ["roofline.png", "speedup.png"]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]


def test_generated_kernels_measured_and_a_wrong_reference_caught(tmp_path):
    """The real flow: the repository's softmax spec (with small bench cases), rendered by
    code_generate, measured; a copy whose reference is deliberately different is "wrong"."""
    source = REPO / "specs" / "foundation" / "softmax.yaml"
    if not source.is_file():
        pytest.skip("the softmax spec is not in this checkout")
    from koschei.phases import code_generate

    document = yaml.safe_load(source.read_text(encoding="utf-8"))
    document["bench"]["cases"] = [{"dims": {"...": [64], "d": 512}}]
    doubled = json.loads(json.dumps(document))
    doubled["name"] = "softmax_doubled"
    doubled["reference"] = document["reference"].replace("return (", "return 2 * (")
    assert doubled["reference"] != document["reference"]
    (tmp_path / "specs" / "foundation").mkdir(parents=True)
    for spec in (document, doubled):
        path = tmp_path / "specs" / "foundation" / f"{spec['name']}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    (tmp_path / "koschei.toml").write_text("")
    workspace = Workspace(tmp_path.resolve())
    assert code_generate.run(workspace, code_generate.Options()).ok
    calibration.load_or_measure(workspace.runs_dir, calibration.resolve_threads(None),
                                array_mib=2, gemm_n=128, repeats=2)

    result = benchmark.run(workspace, options(budget_s=BUDGET))
    softmax, wrong = cases_of(result, "softmax"), cases_of(result, "softmax_doubled")
    assert [case.case for case in softmax] == ["64x512"]
    for case in softmax:
        assert case.verdict == "ok", case.error
        assert case.contenders["engine"].median_s > 0 and case.speedup_vs_numpy > 0
        assert case.bytes == 4 * 2 * math.prod(case.dims["..."]) * case.dims["d"]
        assert case.roofline_fraction > 0 and case.bound in ("memory", "compute")
    for case in wrong:
        assert case.verdict == "wrong" and case.contenders == {}
        assert "does not match the reference" in case.error
    assert not result.ok


@pytest.mark.parametrize(("factor", "verdict"), [("1", "ok"), ("-1", "wrong")])
def test_optional_inputs_drawn_inputs_and_two_outputs_are_measured(tmp_path, factor, verdict):
    """A generated module with an optional input, a spec-drawn input, a generator parameter and
    two outputs (no out=): the phase draws the inputs as its tests do and checks both outputs."""
    from koschei.phases import code_generate

    spec = (REPO / "tests" / "data" / "toy_unpack.yaml").read_text(encoding="utf-8")
    (tmp_path / "specs" / "quantization").mkdir(parents=True)
    (tmp_path / "koschei.toml").write_text("")
    (tmp_path / "specs" / "quantization" / "toy_unpack.yaml").write_text(
        spec.replace("FACTOR", factor))
    workspace = Workspace(tmp_path.resolve())
    code_generate.run(workspace, code_generate.Options())
    calibration.load_or_measure(workspace.runs_dir, calibration.resolve_threads(None),
                                array_mib=2, gemm_n=128, repeats=2)
    result = benchmark.run(workspace, options(budget_s=BUDGET))
    [case] = result.cases
    assert case.verdict == verdict, case.error
    if verdict == "ok":
        assert set(case.contenders) == {"engine", "numpy", "row_sums"}
        assert case.speedup_vs_numpy > 0 and case.speedup_vs_baselines["row_sums"] > 0
        rounds = {timing.rounds for timing in case.contenders.values()}
        assert len(rounds) == 1, "the baseline is timed in the same interleaved rounds"
    else:
        assert case.error.startswith("engine output does not match the reference: y: ")
        assert case.contenders == {}


# --- models ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def decoding(tmp_path_factory):
    workspace = make_workspace(tmp_path_factory.mktemp("models"), {"scale": 0.0})
    return workspace, benchmark.run(workspace, options(
        select=["scale"], models=["tiny"], budget_s=BUDGET, charts=False))


def test_a_decoder_is_checked_then_its_fp32_bf16_and_ternary_steps_timed_together(decoding):
    from koschei.engine import Decoder, DecoderConfig

    _, result = decoding
    [case] = result.models
    assert case.verdict == "ok", case.error
    assert (case.model, case.config, case.label) == ("decoder", "tiny", "decoder/tiny_decode_63")
    assert set(case.contenders) == {"fp32", "bf16", "ternary"}
    rounds = {timing.rounds for timing in case.contenders.values()}
    assert len(rounds) == 1 and rounds.pop() >= MIN_ROUNDS
    config = DecoderConfig.named("tiny")
    levels = result.calibration["levels"]
    # the workspace generated none of the decoder's kernels: the package's ran, and it says so
    assert set(case.kernel_files) == set(bench_models.KERNELS)
    assert any("installed package's" in note for note in case.notes)
    for weights, entry in case.weights.items():
        model = Decoder.random(config, weights=weights, max_len=case.context + 1)
        assert entry.bytes_per_token == model.bytes_per_token(case.context + 1)
        assert entry.tokens_per_s == pytest.approx(1 / case.contenders[weights].median_s)
        # the read bandwidth of the level a step's bytes fit in (tiny: a cache, so warm)
        fits = [name for name, level in levels.items()
                if name == "DRAM" or entry.bytes_per_token <= level["capacity_bytes"]]
        assert entry.memory_level == fits[0]
        assert entry.weights_state == ("cold" if fits[0] == "DRAM" else "warm")
        bandwidth = levels[fits[0]]["read_gbs"] * 1e9
        assert entry.ceiling_gbs * 1e9 == pytest.approx(bandwidth)
        assert entry.ceiling_tokens_per_s == pytest.approx(bandwidth / entry.bytes_per_token)
        assert entry.ceiling_fraction == pytest.approx(
            entry.tokens_per_s / entry.ceiling_tokens_per_s)
        assert 0 <= entry.max_logit_error <= bench_models.logit_tolerance(config, weights)
    fp32 = case.contenders["fp32"].samples_s
    for weights in ("bf16", "ternary"):
        samples = case.contenders[weights].samples_s
        assert getattr(case, f"speedup_{weights}_vs_fp32") == pytest.approx(
            statistics.median(f / t for f, t in zip(fp32, samples, strict=True)))
    data = json.loads(json.dumps(result.to_dict()))
    stored = data["models"][0]["weights"]
    assert stored["ternary"]["bytes_per_token"] < stored["bf16"]["bytes_per_token"] < \
        stored["fp32"]["bytes_per_token"]
    assert result.counts == {"ok": 3}
    from koschei.bench import report

    table = report.readme_table(result, "run", "koschei benchmark --readme")
    for weights, entry in case.weights.items():
        assert f"| decoder/tiny_decode_63 | {weights} ({entry.weights_state}) | " in table
        assert f"| {entry.tokens_per_s:.1f} | {entry.bytes_per_token / 1e6:.1f} | " in table


def test_a_decoders_prefill_of_the_prompt_is_timed_in_rounds_of_its_own(decoding):
    _, result = decoding
    [case] = result.models
    engine = {"fp32", "bf16", "ternary"}
    assert set(case.prefill) == engine
    rounds = {case.prefill[weights].rounds for weights in engine}
    assert len(rounds) == 1 and rounds.pop() >= MIN_ROUNDS
    for weights, entry in case.weights.items():
        assert entry.prefill_s == case.prefill[weights].median_s
        assert entry.prefill_tokens_per_s == pytest.approx(case.context / entry.prefill_s)
    from koschei.bench import report

    table = report.readme_table(result, "run", "koschei benchmark --readme")
    assert ("| decoder/tiny: prefill of 63 tokens, decoding step at 63 | prefill | prompt "
            "tokens/s | step | tokens/s | engine ÷ llama.cpp: prefill | engine ÷ llama.cpp: "
            "step |") in table
    entry = case.weights["fp32"]
    assert (f"| engine fp32 | {report.format_seconds(entry.prefill_s)} | "
            f"{entry.prefill_tokens_per_s:.0f} | ") in table


def test_llama_cpp_runs_the_same_weights_in_the_same_rounds_when_installed(decoding):
    _, result = decoding
    [case] = result.models
    if not bench_models.llama_cpp_available():
        assert case.llama_cpp == [] and case.llama_cpp_note == \
            "llama.cpp: not installed — pip install -e '.[llama]'"
        return
    assert case.llama_cpp_note is None
    assert case.llama_cpp_info["n_threads"] == result.threads
    assert case.llama_cpp_info["n_batch"] == 512 and case.llama_cpp_info["kv_cache"] == "F32"
    rows = {row.tensor_type: row for row in case.llama_cpp}
    assert list(rows) == [row.tensor_type for row in bench_models.LLAMA_CPP_ROWS]
    # tiny's rows of 64 values cannot be TQ2_0 blocks of 256
    assert rows["TQ2_0"].verdict == "unsupported" and rows["TQ2_0"].decode is None
    f32 = rows["F32"]
    assert f32.verdict == "ok", f32.error
    assert f32.weights == "fp32" and f32.compared and f32.file_bytes > 0
    assert 0 <= f32.max_logit_error <= 1e-4
    # timed in the engine's rounds: the ratio is the median of per-round ratios
    assert f32.decode.rounds == case.contenders["fp32"].rounds
    assert f32.prefill.rounds == case.prefill["fp32"].rounds
    assert f32.engine_speedup == pytest.approx(statistics.median(
        llama / engine for llama, engine in zip(f32.decode.samples_s,
                                                case.contenders["fp32"].samples_s, strict=True)))
    assert f32.engine_prefill_speedup == pytest.approx(statistics.median(
        llama / engine for llama, engine in zip(f32.prefill.samples_s,
                                                case.prefill["fp32"].samples_s, strict=True)))
    assert f32.tokens_per_s == pytest.approx(1 / f32.decode.median_s)
    f16 = rows["F16"]  # the bf16 decoder's weights, compared with it
    assert f16.verdict == "ok" and f16.weights == "bf16" and f16.compared
    assert f16.engine_speedup == pytest.approx(statistics.median(
        llama / engine for llama, engine in zip(f16.decode.samples_s,
                                                case.contenders["bf16"].samples_s, strict=True)))
    for name in ("Q8_0", "Q4_0"):  # ok, or crashed in the child process that tried them first
        assert rows[name].verdict in ("ok", "crashed"), rows[name].error
    from koschei.bench import report

    table = report.readme_table(result, "run", "koschei benchmark --readme")
    assert f"| llama.cpp F32 | {report.format_seconds(f32.prefill.median_s)} | " \
        in table
    assert "| llama.cpp TQ2_0 | **unsupported** |" in table
    assert "| llama.cpp F16 | " in table and "| llama.cpp Q8_0 (reference) | " in table
    assert "- llama.cpp (llama-cpp-python " in table


def test_without_llama_cpp_the_decoder_case_says_how_to_install_it(tmp_path, monkeypatch):
    workspace = make_workspace(tmp_path, {"scale": 0.0})
    monkeypatch.setattr(bench_models, "llama_cpp_available", lambda: False)
    result = benchmark.run(workspace, options(
        select=["scale"], models=["tiny"], budget_s=BUDGET, charts=False))
    [case] = result.models
    assert case.verdict == "ok" and result.ok
    assert case.llama_cpp == [] and case.llama_cpp_info == {}
    assert case.llama_cpp_note == "llama.cpp: not installed — pip install -e '.[llama]'"
    assert set(case.prefill) == {"fp32", "bf16", "ternary"}
    from koschei.bench import report

    table = report.readme_table(result, "run", "koschei benchmark --readme")
    assert "- llama.cpp: not installed — pip install -e '.[llama]'" in table
    assert "| llama.cpp" not in table


def test_a_llama_cpp_file_that_kills_its_process_is_reported_not_loaded(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_models, "_PROBE",
                        "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    crash = bench_models.probe_llama_cpp(tmp_path / "x.gguf", 8, 1)
    assert crash.startswith("llama.cpp died of SIGSEGV at its first evaluation (in a child "
                            "process)")
    monkeypatch.setattr(bench_models, "_PROBE", "raise SystemExit('no such file')\n")
    assert bench_models.probe_llama_cpp(tmp_path / "x.gguf", 8, 1) == \
        "llama.cpp failed in a child process (exit 1): no such file"
    monkeypatch.setattr(bench_models, "_PROBE", "pass\n")
    assert bench_models.probe_llama_cpp(tmp_path / "x.gguf", 8, 1) is None


def test_a_decoder_that_misses_its_reference_is_wrong_and_not_timed(tmp_path, monkeypatch):
    workspace = make_workspace(tmp_path, {"scale": 0.0})
    monkeypatch.setitem(bench_models.LOGIT_TOLERANCE, "fp32", 0.0)  # any rounding is off
    result = benchmark.run(workspace, options(
        select=["scale"], models=["tiny"], budget_s=BUDGET, charts=False))
    [case] = result.models
    assert case.verdict == "wrong" and case.contenders == {}
    assert case.error.startswith("fp32: the decoding step's logits differ from the NumPy")
    assert not result.ok


def test_models_run_by_default_only_without_a_selection_and_unknown_ones_are_refused(tmp_path):
    workspace = make_workspace(tmp_path, {"scale": 0.0})
    result = benchmark.run(workspace, options(select=["scale"], budget_s=BUDGET,
                                                        charts=False))
    assert result.models == []
    with pytest.raises(UsageError, match="--model huge: no decoder config of that name"):
        benchmark.run(workspace, benchmark.Options(models=["huge"], budget_s=BUDGET))


# --- the PyTorch contenders of the bundled specs ----------------------------------------------


def bundled_specs_with(contender: str) -> list:
    """The bundled implemented specs whose bench block writes this contender (torch, numpy)."""
    from koschei.specs import load_specs

    specs = load_specs(Workspace(REPO))
    return [loaded for loaded in specs.implemented()
            if loaded.spec.bench is not None and getattr(loaded.spec.bench, contender)]


@pytest.mark.parametrize("loaded", bundled_specs_with("torch"), ids=lambda loaded: loaded.spec.name)
def test_each_bench_torch_contender_agrees_with_the_reference_on_every_test_case(loaded):
    """A spec's bench.torch (prepared inputs, the timed run, its result) computes what the NumPy
    reference does on each of the spec's test cases and a bench-like one, so the benchmark never
    has to leave it out; run in PyTorch eager (torch.compile is the benchmark's)."""
    pytest.importorskip("torch")
    import torch

    spec = loaded.spec
    reference = load_source_function(spec.reference, "reference", loaded.relpath)
    cases = [*spec.tests.cases, *(case for case in spec.bench.cases
                                  if math.prod(v if isinstance(v, int) else math.prod(v)
                                               for v in case.dims.values()) <= 2**22)]
    assert cases
    for case in cases:
        params = case_params(spec, case)
        names = formula_names(case, params)
        inputs = draw_inputs(spec, case, params, names, loaded.relpath)
        expected = reference(**inputs, **params)
        contender = benchmark.torch_contender(spec, loaded.relpath, params)
        with torch.inference_mode():
            output = contender.result(contender.run(*contender.prepare(**inputs, **params)))
        matches, _, reason = compare_results(spec, output, expected)
        assert matches, f"{case_label(case)}: {reason}"


def test_cold_inputs_are_copied_until_they_hold_the_cold_bytes():
    weight = np.ones((64, 64), dtype=np.float32)  # 16 KiB
    x = np.ones(64, dtype=np.float32)
    sets = benchmark.cold_input_sets({"x": x, "weight": weight}, ["weight"], 160 * 1024)
    assert len(sets) == 10
    assert all(given["x"] is x for given in sets)  # only the cold input is copied
    assert len({id(given["weight"]) for given in sets}) == 10
    assert benchmark.cold_input_sets({"x": x}, [], 10**9) == [{"x": x}]
    calls = []
    turn = benchmark.rotating([lambda i=i: calls.append(i) for i in range(3)])
    for _ in range(7):
        turn()
    assert calls == [0, 1, 2, 0, 1, 2, 0]


@pytest.mark.parametrize("loaded", bundled_specs_with("numpy"), ids=lambda loaded: loaded.spec.name)
def test_each_bench_numpy_contender_agrees_with_the_reference_on_every_test_case(loaded):
    """A spec's bench.numpy (float32, as a NumPy user writes it) computes what the reference
    does on each test case, so the benchmark times it as NumPy rather than the reference."""
    spec = loaded.spec
    reference = load_source_function(spec.reference, "reference", loaded.relpath)
    contender = load_source_function(spec.bench.numpy, "numpy_contender", loaded.relpath)
    for case in spec.tests.cases:
        params = case_params(spec, case)
        names = formula_names(case, params)
        inputs = draw_inputs(spec, case, params, names, loaded.relpath)
        matches, _, reason = compare_results(spec, contender(**inputs, **params),
                                             reference(**inputs, **params))
        assert matches, f"{case_label(case)}: {reason}"


def test_the_readme_names_the_command_that_measured_its_table():
    assert benchmark.readme_command(options()) == \
        "koschei benchmark --readme --no-torch-compile"
    assert benchmark.readme_command(benchmark.Options(contention=True, select=["rope"])) == \
        "koschei benchmark --readme --select rope --contention"


def test_a_decoder_with_linear_layers_leaves_llama_cpp_out_and_says_why(monkeypatch):
    """GGUF's llama architecture holds attention layers only: no file is written, no row runs."""
    from koschei.engine import Decoder, DecoderConfig

    monkeypatch.setattr(bench_models, "llama_cpp_available", lambda: True)
    config = DecoderConfig.named("tiny").replace(layer_types=("gla", "attention"))
    models = {"fp32": Decoder.random(config, max_len=8)}
    result = bench_models.ModelCaseResult(model="decoder", config="tiny", context=4,
                                          verdict="ok")
    anchors = bench_models.load_llama_cpp(result, models, {}, np.arange(4), np.arange(1), 1,
                                          Path("unused"), None, None)
    assert anchors == {} and result.llama_cpp == []
    assert result.llama_cpp_note == ("llama.cpp: left out: the decoder has gla layers, which "
                                     "GGUF's llama architecture cannot hold")
