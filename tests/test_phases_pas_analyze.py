"""The pas_analyze phase on hand-written specs and run records: every verdict, the prediction
rule, and the ranking of next steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from koschei.phases import pas_analyze
from koschei.runs import RunRecord
from koschei.workspace import Workspace

IMPLEMENTED = """\
name: {name}
title: Scale by two ({name})
tier: foundation
claims:
{claims}
kernel:
  family: custom
  params:
    source: |
      def _compute(x, out):
          np.multiply(x, 2.0, out=out)
signature:
  inputs:
    - {{name: x, dtype: {dtype}, shape: ["...", d]}}
  output: {{name: out, dtype: {dtype}, shape: ["...", d]}}
reference: |
  import numpy as np


  def reference(x):
      return x * 2.0
tests:
  cases:
    - {{dims: {{"...": [4], d: 8}}}}
  tolerance:
    {dtype}: {{rtol: 1.0e-6, atol: 1.0e-6}}
bench:
  cases:
    - {{name: big, dims: {{"...": [4096], d: 768}}}}
    - {{name: small, dims: {{"...": [8], d: 32}}}}
  bytes: "2 * 4 * rows * d"
  flops: "rows * d"
"""

PLANNED = """\
name: {name}
title: Planned ({name})
tier: foundation
requires: {requires}
claims:
{claims}
"""

FAST_CLAIMS = [
    # measured against another spec's engine on the same case: 2.0 ms / 1.0 ms = x2.0
    '{metric: speedup, value: 1.5, baseline: slow, case: big, source: "paper A"}',
    # against NumPy: x1.2 measured
    '{metric: speedup, value: 3.0, baseline: numpy, case: big, source: "paper B"}',
    # 50% faster than PyTorch = x1.5; x0.8 measured
    '{metric: speedup, value: 50, unit: "%", baseline: pytorch, case: big, source: "paper C"}',
    '{metric: accuracy, value: 2.0, unit: "%", baseline: gelu, source: "paper D"}',
    '{metric: speedup, value: 2.0, baseline: cuda, source: "paper E"}',
    # float32 tensors against float64 ones: half the bytes, x2.0
    '{metric: memory, value: 2.0, baseline: slow, case: big, source: "paper F"}',
    # a 75% saving is x4; x2.0 measured
    '{metric: memory, value: -75, unit: "%", baseline: slow, case: big, source: "paper G"}',
    '{metric: latency, value: 15, unit: ms, baseline: slow, source: "paper H"}',
]
SLOW_CLAIMS = ['{metric: speedup, value: 1.2, baseline: numpy, case: small, source: "paper I"}']


def claims_yaml(claims: list[str]) -> str:
    return "\n".join(f"  - {claim}" for claim in claims) if claims else "  []"


def make_workspace(root: Path, generated: bool = True) -> Workspace:
    root.mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'tiny-workspace'\n", encoding="utf-8")
    specs = root / "specs" / "foundation"
    specs.mkdir(parents=True)
    files = {
        "fast": IMPLEMENTED.format(name="fast", dtype="float32", claims=claims_yaml(FAST_CLAIMS)),
        "slow": IMPLEMENTED.format(name="slow", dtype="float64", claims=claims_yaml(SLOW_CLAIMS)),
        "planned_a": PLANNED.format(name="planned_a", requires="[fast]", claims=claims_yaml([
            '{metric: speedup, value: 2.0, baseline: slow, source: "paper J"}',
            '{metric: memory, value: 4.0, baseline: slow, source: "paper K"}'])),
        "planned_b": PLANNED.format(name="planned_b", requires="[planned_a]", claims=claims_yaml([
            '{metric: speedup, value: 3.0, baseline: numpy, source: "paper L"}'])),
        "planned_c": PLANNED.format(name="planned_c", requires="[]", claims=claims_yaml([
            '{metric: accuracy, value: 1.0, unit: "%", baseline: fast, source: "paper M"}'])),
        "planned_d": PLANNED.format(name="planned_d", requires="[slow]", claims="  []"),
    }
    for name, text in files.items():
        (specs / f"{name}.yaml").write_text(text, encoding="utf-8")
    if generated:
        for name in ("fast", "slow"):
            engine = root / "koschei" / "engine" / f"{name}.py"
            engine.parent.mkdir(parents=True, exist_ok=True)
            engine.write_text("# generated\n", encoding="utf-8")
            test = root / "tests" / "engine" / f"test_{name}.py"
            test.parent.mkdir(parents=True, exist_ok=True)
            test.write_text("# generated\n", encoding="utf-8")
    return Workspace(root.resolve())


def write_run(workspace: Workspace, phase: str, payload: dict) -> str:
    """A real run record holding one phase's result; its id."""
    record = RunRecord.create(workspace, phase)
    record.save_phase(phase, payload)
    return record.id


def case(spec: str, label: str, engine_s: float, verdict: str = "ok", **figures) -> dict:
    return {"spec": spec, "case": label, "verdict": verdict,
            "contenders": {"engine": {"median_s": engine_s}, "numpy": {"median_s": 1.0}},
            **figures}


def benchmark(cases: list[dict]) -> dict:
    return {"threads": 2, "fingerprint": "f",
            "calibration": {"stream_triad_gbs": 10.0, "sgemm_gflops": 100.0}, "cases": cases}


@pytest.fixture
def history(tmp_path: Path) -> tuple[Workspace, dict[str, str]]:
    """A workspace with two benchmark runs and a test run between them; the run ids."""
    workspace = make_workspace(tmp_path / "ws")
    runs: dict[str, str] = {}
    # an older run in which fast and slow were equally fast: the newer run must win
    runs["old"] = write_run(workspace, "benchmark", benchmark([
        case("fast", "big", 1e-3, speedup_vs_numpy=9.0, speedup_vs_torch=9.0),
        case("slow", "big", 1e-3),
    ]))
    runs["tests"] = write_run(workspace, "test_run", {"specs": [
        {"spec": "fast", "status": "failed", "passed": 3, "failed": 1, "errors": 0,
         "first_failure": "test_reference_equivalence: boom", "ok": False},
        {"spec": "slow", "status": "passed", "passed": 4, "failed": 0, "errors": 0, "ok": True},
    ]})
    runs["new"] = write_run(workspace, "benchmark", benchmark([
        case("fast", "big", 1e-3, speedup_vs_numpy=1.2, speedup_vs_torch=0.8,
             roofline_fraction=0.2),
        case("fast", "small", 1e-5, speedup_vs_numpy=0.5, roofline_fraction=0.3),
        case("slow", "big", 2e-3, speedup_vs_numpy=1.0, roofline_fraction=0.9),
        case("slow", "small", 1e-5, verdict="wrong"),
    ]))
    return workspace, runs


@pytest.fixture
def workspace(history: tuple[Workspace, dict[str, str]]) -> Workspace:
    return history[0]


def claim(result: pas_analyze.PasResult, spec: str, source: str) -> pas_analyze.ClaimCheck:
    return next(c for c in result.claims if c.spec == spec and c.source == source)


def test_each_claim_gets_its_measured_counterpart_and_verdict(history):
    workspace, runs = history
    result = pas_analyze.run(workspace, pas_analyze.Options())

    versus_spec = claim(result, "fast", "paper A")
    assert versus_spec.verdict == "confirmed"
    assert versus_spec.measured_factor == pytest.approx(2.0)
    assert (versus_spec.case, versus_spec.run) == ("big", runs["new"])

    versus_numpy = claim(result, "fast", "paper B")
    assert (versus_numpy.verdict, versus_numpy.measured_factor) == ("partly", pytest.approx(1.2))

    versus_torch = claim(result, "fast", "paper C")
    assert versus_torch.claimed_factor == pytest.approx(1.5)
    assert (versus_torch.verdict, versus_torch.measured_factor) == ("refuted", pytest.approx(0.8))

    accuracy = claim(result, "fast", "paper D")
    assert accuracy.verdict == "unmeasured" and "accuracy" in accuracy.detail
    no_such_baseline = claim(result, "fast", "paper E")
    assert no_such_baseline.verdict == "unmeasured" and "cuda" in no_such_baseline.detail
    absolute = claim(result, "fast", "paper H")
    assert absolute.verdict == "unmeasured" and absolute.measured_factor is None

    memory = claim(result, "fast", "paper F")  # float64 tensors over float32 ones
    assert (memory.verdict, memory.measured_factor) == ("confirmed", pytest.approx(2.0))
    assert "bytes" in memory.detail
    saving = claim(result, "fast", "paper G")
    assert saving.claimed_factor == pytest.approx(4.0)
    assert (saving.verdict, saving.measured_factor) == ("partly", pytest.approx(2.0))

    wrong = claim(result, "slow", "paper I")  # its case was wrong in the latest run
    assert wrong.verdict == "unmeasured" and "wrong" in wrong.detail

    planned = claim(result, "planned_a", "paper J")
    assert planned.verdict == "unmeasured" and planned.status == "planned"

    assert result.verdicts == {"confirmed": 2, "partly": 2, "refuted": 1, "unmeasured": 8}
    assert result.benchmark_runs == [runs["old"], runs["new"]]
    assert result.test_run == runs["tests"]
    data = json.loads(json.dumps(result.to_dict()))
    assert data["verdicts"]["confirmed"] == 2 and data["ok"] is True


def test_predictions_discount_claims_by_what_was_confirmed_here(workspace):
    result = pas_analyze.run(workspace, pas_analyze.Options())
    predictions = {(p.spec, p.metric): p for p in result.predictions}

    # speed evidence: realizations log(m)/log(c) of the three measured speed claims
    speed = [math.log(2.0) / math.log(1.5), math.log(1.2) / math.log(3.0),
             math.log(0.8) / math.log(1.5)]
    speed.sort()
    spread = (sum((r - sum(speed) / 3) ** 2 for r in speed) / 2) ** 0.5
    a_speed = predictions[("planned_a", "speedup")]
    assert a_speed.predicted_factor == pytest.approx(2.0 ** speed[1])
    assert a_speed.confidence == pytest.approx(3 / 5 / (1 + spread), abs=1e-4)
    assert a_speed.confidence_label == "low"
    assert len(a_speed.evidence) == 3 and a_speed.ready

    # size evidence: x2 of x2 (r = 1) and x2 of x4 (r = 0.5)
    a_memory = predictions[("planned_a", "memory")]
    assert a_memory.predicted_factor == pytest.approx(4.0 ** 0.75)
    assert a_memory.confidence == pytest.approx(2 / 4 / (1 + 0.5 ** 0.5 / 2), abs=1e-4)
    assert a_memory.confidence_label == "medium"

    b_speed = predictions[("planned_b", "speedup")]
    assert not b_speed.ready and b_speed.missing_requires == ["planned_a"]

    c_accuracy = predictions[("planned_c", "accuracy")]
    assert c_accuracy.predicted_factor is None and c_accuracy.confidence_label == "none"


def test_next_steps_fix_first_then_implement_then_retune(workspace):
    result = pas_analyze.run(workspace, pas_analyze.Options())
    steps = [(step.action, step.spec) for step in result.next_steps]

    assert steps == [
        ("fix_tests", "fast"),
        ("fix_benchmark", "slow"),
        ("implement", "planned_a"),  # a gain predicted from evidence (and it unlocks planned_b)
        ("retune", "fast"),  # 20% of the roofline: measured headroom
        ("implement", "planned_c"),  # nothing predictable: ties broken by name
        ("implement", "planned_d"),
    ]
    assert [step.rank for step in result.next_steps] == list(range(1, 7))
    assert "boom" in result.next_steps[0].reason
    assert "small wrong" in result.next_steps[1].reason
    assert "unlocks 1" in result.next_steps[2].reason
    retune = result.next_steps[3]
    assert "20% of the roofline" in retune.reason and "refuted" in retune.reason
    # planned_b needs planned_a: not proposed yet
    assert "planned_b" not in {spec for _, spec in steps}

    strict = pas_analyze.run(workspace, pas_analyze.Options(retune_below=0.1))
    assert "retune" not in {step.action for step in strict.next_steps}


def test_a_prediction_never_exceeds_its_claim(tmp_path):
    workspace = make_workspace(tmp_path / "ws")
    # only one speed claim is measurable here, and it beat its claim: x2.0 for a claimed x1.5
    write_run(workspace, "benchmark", benchmark([case("fast", "big", 1e-3),
                                                 case("slow", "big", 2e-3)]))
    result = pas_analyze.run(workspace, pas_analyze.Options())
    assert claim(result, "fast", "paper A").verdict == "confirmed"
    assert claim(result, "fast", "paper B").verdict == "unmeasured"  # no NumPy timing
    assert result.evidence["speed"]["median_realization"] > 1.0
    speed = next(p for p in result.predictions if (p.spec, p.metric) == ("planned_a", "speedup"))
    assert speed.predicted_factor == pytest.approx(2.0)  # the claim, not more
    assert speed.confidence == pytest.approx(1 / 3, abs=1e-4) and speed.confidence_label == "low"


def test_without_history_everything_is_unmeasured_and_measuring_comes_first(tmp_path):
    workspace = make_workspace(tmp_path / "ws", generated=False)
    result = pas_analyze.run(workspace, pas_analyze.Options())

    assert {c.verdict for c in result.claims if c.metric != "memory"} == {"unmeasured"}
    # memory from tensor shapes needs no run
    assert claim(result, "fast", "paper F").verdict == "confirmed"
    speed = next(p for p in result.predictions if p.spec == "planned_b")
    assert speed.predicted_factor == pytest.approx(3.0)  # the paper's figure ...
    assert speed.confidence == 0.0 and speed.confidence_label == "none"  # ... and says so
    assert "unverified" in speed.basis
    assert [(s.action, s.spec) for s in result.next_steps[:2]] == [("generate", "fast"),
                                                                  ("generate", "slow")]
    assert any("no benchmark results" in note for note in result.notes)

    for name in ("fast", "slow"):  # generated but never run: test and benchmark them
        for path in (workspace.engine_dir / f"{name}.py", workspace.tests_dir / f"test_{name}.py"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("# generated\n", encoding="utf-8")
    measured_first = pas_analyze.run(workspace, pas_analyze.Options())
    assert [s.action for s in measured_first.next_steps[:4]] == ["test", "test", "benchmark",
                                                                "benchmark"]
    assert measured_first.next_steps[0].command == "koschei test-run -k fast"


@pytest.mark.parametrize(("claimed", "measured", "verdict"), [
    (2.0, 2.0, "confirmed"), (2.0, 3.0, "confirmed"), (2.0, 1.5, "partly"),
    (2.0, 1.0, "refuted"), (2.0, 0.5, "refuted"),
    # a claim that something gets smaller (factor < 1) is mirrored
    (0.5, 0.4, "confirmed"), (0.5, 0.8, "partly"), (0.5, 1.2, "refuted"),
])
def test_verdicts_compare_factors_in_the_claimed_direction(claimed, measured, verdict):
    assert pas_analyze.verdict_for(claimed, measured) == verdict


def test_claims_become_factors():
    assert pas_analyze.claimed_factor("speedup", 2.0, "x") == 2.0
    assert pas_analyze.claimed_factor("speedup", 50, "%") == pytest.approx(1.5)
    assert pas_analyze.claimed_factor("memory", -67, "%") == pytest.approx(1 / 0.33)
    assert pas_analyze.claimed_factor("compression", 32, "x") == 32
    assert pas_analyze.claimed_factor("latency", 15, "ms") is None
    assert pas_analyze.claimed_factor("memory", 100, "%") is None


# --- claims measured from shapes and dtypes, from the decoder, and through a provider ----------

def custom_spec(name: str, inputs: list[tuple[str, list[str]]], output: list[str],
                bench_cases: list[str], claims: list[str], extra: str = "") -> str:
    """An implemented spec with a custom kernel over float32 inputs of the given shapes."""
    arguments = ", ".join(arg for arg, _ in inputs)
    return "\n".join([
        f"name: {name}", f"title: {name}", "tier: foundation",
        "claims:", claims_yaml(claims),
        "kernel:", "  family: custom", "  params:", "    source: |",
        f"      def _compute({arguments}, out):", "          out[...] = 0.0",
        "signature:", "  inputs:",
        *(f"    - {{name: {arg}, dtype: float32, shape: {json.dumps(shape)}}}"
          for arg, shape in inputs),
        f"  output: {{name: out, dtype: float32, shape: {json.dumps(output)}}}",
        "reference: |", "  import numpy as np", "",
        f"  def reference({arguments}):", f"      return np.zeros({tuple(output)!r})",
        "tests:", "  cases:", f"    - {{dims: {bench_cases[0].split('dims: ')[1]}",
        "  tolerance:", "    float32: {rtol: 1.0e-6, atol: 1.0e-6}",
        "bench:", "  cases:", *(f"    - {case}" for case in bench_cases),
        '  bytes: "1"', '  flops: "1"', extra]) + "\n"


GQA_CASES = ["{name: decode, dims: {n: 1, m: 2048, hq: 12, hkv: 4, hd: 64}}",
             "{name: prefill, dims: {n: 512, m: 512, hq: 12, hkv: 4, hd: 64}}",
             "{name: heads, dims: {n: 128, m: 128, hq: 12, hkv: 12, hd: 32}}"]
KV = "measure: {kind: kv_cache, this: gqa, baseline: mha}"


def make_measured_workspace(root: Path) -> Workspace:
    workspace = make_workspace(root)
    folder = workspace.specs_dir / "foundation"
    gqa = custom_spec(
        "gqa", [("q", ["n", "hq", "hd"]), ("k", ["m", "hkv", "hd"])], ["n", "hq", "hd"],
        GQA_CASES, [
            (f'{{metric: memory, value: -67, unit: "%", baseline: MHA, case: decode, source: A, '
            f'{KV}}}'),
            f'{{metric: memory, value: 8, baseline: MHA, source: B, {KV}}}',
            ('{metric: compression, value: 4, baseline: float32 KV, case: decode, source: C, '
            'measure: {kind: kv_cache, this: gqa_int8, baseline: gqa}}'),
        ],
        extra="tunables:\n  block_q: {choices: [64], default: 64}\n"
              "  block_k: {choices: [128], default: 128}")
    windowed = "\n".join([
        "name: windowed", "title: Windowed", "tier: foundation", "requires: [gqa]",
        "provided_by: {spec: gqa, how: \"window= parameter\"}", "claims:", claims_yaml([
            ('{metric: memory, value: 5, baseline: scores, source: D, '
            'measure: {kind: attention_memory, this: online_softmax, baseline: score_matrix}}'),
            '{metric: speedup, value: 3, baseline: numpy, case: decode, source: E}',
            '{metric: speedup, value: 2, baseline: gqa without windows, source: F}']), ""])
    ternary = custom_spec(
        "ternary", [("x", ["n", "d_in"]), ("w", ["d_out", "d_in"])], ["n", "d_out"],
        ["{name: big, dims: {n: 1, d_in: 4096, d_out: 4096}}",
         "{name: small, dims: {n: 1, d_in: 64, d_out: 32}}"], [
            ('{metric: memory, value: -75, unit: "%", baseline: Q4, source: G, '
            'measure: {kind: weights, this: ternary_packed, baseline: q4_0}}'),
            ('{metric: speedup, value: 2, baseline: fp32 weights, source: H, '
            'measure: {kind: decoder, this: ternary, baseline: fp32}}')])
    later = PLANNED.format(name="later", requires="[ternary, windowed]", claims=claims_yaml([
        '{metric: speedup, value: 2, baseline: ternary, source: I}']))
    for name, text in {"gqa": gqa, "windowed": windowed, "ternary": ternary,
                       "later": later}.items():
        (folder / f"{name}.yaml").write_text(text, encoding="utf-8")
    return workspace


def decoder_case(config: str = "tiny", **changes) -> dict:
    return {"model": "decoder", "config": config, "context": 8, "verdict": "ok",
            "weights": {"fp32": {"tokens_per_s": 50.0, "weight_bytes": 400,
                                 "bytes_per_token": 420},
                        "ternary": {"tokens_per_s": 90.0, "weight_bytes": 120,
                                    "bytes_per_token": 140}},
            "speedup_ternary_vs_fp32": 1.75, **changes}


def test_kv_cache_claims_are_sizes_from_shapes_at_a_case_or_the_decoder_config(tmp_path):
    workspace = make_measured_workspace(tmp_path / "ws")
    result = pas_analyze.run(workspace, pas_analyze.Options())  # no run: igla_v2

    # 12 query heads over 4 KV heads of 64 float32 values: 2 * 12 * 64 * 4 against 2 * 4 * 64 * 4
    at_case = claim(result, "gqa", "A")
    assert at_case.measured_factor == pytest.approx(6144 / 2048)
    assert at_case.verdict == "confirmed"  # -67% is two thirds, rounded
    assert at_case.case == "decode" and "12 query heads over 4 KV heads" in at_case.shapes
    assert "(measured: -66.7%)" in at_case.detail

    eightfold = claim(result, "gqa", "B")  # igla_v2: 12 layers, 12 / 4 heads, head_dim 64
    assert (eightfold.verdict, eightfold.measured_factor) == ("partly", pytest.approx(3.0))
    assert "mha 73,728 / gqa 24,576" in eightfold.detail
    assert eightfold.shapes.startswith("decoder config igla_v2 (12 layers")
    assert "×3 (decode, prefill), ×1 (heads)" in eightfold.detail
    assert "×8 needs 8 query heads per KV head" in eightfold.detail

    int8 = claim(result, "gqa", "C")  # 64 float32 values against 64 int8 and a float32 scale
    assert (int8.verdict, int8.measured_factor) == ("partly", pytest.approx(256 / 68))

    # a decoder model case in a run: its config sizes the caches (tiny: 2 layers, 4 / 2 heads)
    write_run(workspace, "benchmark", {**benchmark([]), "models": [decoder_case("tiny")]})
    measured = claim(pas_analyze.run(workspace, pas_analyze.Options()), "gqa", "B")
    assert measured.measured_factor == pytest.approx(2.0)
    assert "mha 1,024 / gqa 512 at decoder config tiny" in measured.detail


def test_weight_formats_and_the_decoder_measure_bitnet_style_claims(tmp_path):
    workspace = make_measured_workspace(tmp_path / "ws")
    result = pas_analyze.run(workspace, pas_analyze.Options())
    memory = claim(result, "ternary", "G")  # 4096 x 4096: 18 bytes per 32 against 2 bits + 4
    assert memory.measured_factor == pytest.approx(4096 * 128 * 18 / (4096 * 1024 + 4))
    assert memory.verdict == "partly" and memory.case == "big"
    assert "q4_0 9,437,184 (4.5 bits a weight)" in memory.detail
    assert "×4 needs 1.12 bits a weight" in memory.detail
    speed = claim(result, "ternary", "H")
    assert speed.verdict == "unmeasured" and "koschei benchmark --model igla_v2" in speed.detail

    run = write_run(workspace, "benchmark", {**benchmark([]), "models": [decoder_case()]})
    speed = claim(pas_analyze.run(workspace, pas_analyze.Options()), "ternary", "H")
    assert (speed.verdict, speed.measured_factor) == ("partly", pytest.approx(1.75))  # paired
    assert (speed.run, speed.case) == (run, "decoder/tiny_decode_8")
    assert "tokens/s ternary 90.0 / fp32 50.0" in speed.detail

    unpaired = decoder_case(speedup_ternary_vs_fp32=None)
    write_run(workspace, "benchmark", {**benchmark([]), "models": [unpaired]})
    speed = claim(pas_analyze.run(workspace, pas_analyze.Options()), "ternary", "H")
    assert speed.measured_factor == pytest.approx(90 / 50)
    write_run(workspace, "benchmark", {**benchmark([]),
                                       "models": [decoder_case(verdict="wrong")]})
    speed = claim(pas_analyze.run(workspace, pas_analyze.Options()), "ternary", "H")
    assert speed.verdict == "unmeasured" and "was wrong" in speed.detail


def test_a_provided_spec_is_measured_through_its_provider(tmp_path):
    workspace = make_measured_workspace(tmp_path / "ws")
    write_run(workspace, "benchmark", benchmark([
        case("gqa", "decode", 1e-4, speedup_vs_numpy=4.0),
        case("gqa", "prefill", 1e-3, speedup_vs_numpy=2.0)]))
    result = pas_analyze.run(workspace, pas_analyze.Options())

    memory = claim(result, "windowed", "D")
    assert memory.status == "provided" and memory.case == "prefill"  # the most scores
    n = m = 512
    hq, hkv, hd, threads = 12, 4, 64, 2
    io = 4 * (2 * n * hq * hd + 2 * m * hkv * hd)
    rows = 64 * hq // hkv  # block_q query positions of one group's heads
    tiles = threads * 4 * (rows * (2 * hd + 128 + 2) + hd * 128)
    assert memory.measured_factor == pytest.approx((io + 4 * hq * n * m) / (io + tiles))
    assert memory.verdict == "partly" and "from n = m =" in memory.detail

    speed = claim(result, "windowed", "E")  # gqa's engine against NumPy on gqa's case
    assert (speed.verdict, speed.measured_factor, speed.case) == ("confirmed", 4.0, "decode")
    no_baseline = claim(result, "windowed", "F")
    assert no_baseline.verdict == "unmeasured"
    assert "bench baseline doing 'gqa without windows' in gqa's bench" in no_baseline.detail

    later = claim(result, "later", "I")
    assert later.detail.startswith("planned: implement later")
    assert "koschei benchmark -k later -k ternary" in later.detail
    # a provided spec counts as done: what requires it is ready to implement
    prediction = next(p for p in result.predictions if p.spec == "later")
    assert prediction.ready and prediction.missing_requires == []
    assert "windowed" not in {step.spec for step in result.next_steps}


@pytest.mark.parametrize(("claimed", "measured", "verdict"), [
    (1 / 0.33, 3.0, "confirmed"), (4.0, 3.99, "confirmed"), (4.0, 3.9, "partly"),
    (0.25, 0.2525, "confirmed")])
def test_a_factor_within_the_claims_rounding_confirms_it(claimed, measured, verdict):
    assert pas_analyze.verdict_for(claimed, measured) == verdict


def test_tensor_bytes_counts_16_bit_weights_at_two_bytes():
    from koschei.specs.load import parse_spec

    repo = Path(__file__).resolve().parent.parent
    loaded = {}
    for name in ("linear", "bf16_linear", "fp16_linear"):
        [path] = repo.glob(f"specs/*/{name}.yaml")
        loaded[name], issues = parse_spec(path.read_bytes(), path, path.name)
        assert not issues
    case = next(case for case in loaded["bf16_linear"].spec.bench.cases
                if case.name == "decode_4096x4096")
    n, d_in, d_out = case.dims["n"], case.dims["d_in"], case.dims["d_out"]
    floats = 4 * (n * d_in + d_out + n * d_out)  # x, bias and y stay float32
    for name in ("bf16_linear", "fp16_linear"):
        assert pas_analyze.tensor_bytes(loaded[name].spec, case) == floats + 2 * d_out * d_in
    assert pas_analyze.tensor_bytes(loaded["linear"].spec, case) == floats + 4 * d_out * d_in


# --- evolve targets ------------------------------------------------------------------------------


def make_tunable_workspace(root: Path) -> tuple[Workspace, dict[str, str]]:
    """``fast`` with two tunables, the repository's templates, and a benchmark of its cases."""
    import shutil

    workspace = make_workspace(root)
    spec = workspace.root / "specs" / "foundation" / "fast.yaml"
    spec.write_text(spec.read_text() + (
        "tunables:\n"
        "  parallel: {choices: [true, false], default: true, doc: threads}\n"
        "  fastmath: {choices: [true, false], default: true, doc: reassociation}\n"))
    shutil.copytree(Path(__file__).resolve().parents[1] / "templates", workspace.root / "templates")
    write_run(workspace, "benchmark", benchmark([
        case("fast", "big", 1e-3, roofline_fraction=0.6),
        case("fast", "small", 1e-5, roofline_fraction=0.2),
        case("slow", "big", 2e-3, roofline_fraction=0.1),  # no tunables: no target
    ]))
    from koschei.phases.evolve import templates_digest
    from koschei.specs import load_specs

    loaded = load_specs(workspace)["fast"]
    return workspace, {"spec_sha256": loaded.sha256,
                       "templates_sha256": templates_digest(workspace, loaded)}


def search(digests: dict[str, str], case: str, verdict: str = "no_significant_gain",
           stopped: str = "budget", kept: bool = False, **changes) -> dict:
    from koschei.bench.machine import fingerprint

    return {"spec": "fast", "case": case, "fingerprint": fingerprint(), **digests,
            "searched": ["parallel", "fastmath"], "stopped": stopped, "verdict": verdict,
            "tuned_values_file": "tuning/x.json" if kept else None, **changes}


def targets(workspace: Workspace) -> list[tuple[str, str, float]]:
    result = pas_analyze.run(workspace, pas_analyze.Options())
    return [(t.spec, t.case, round(t.score, 3)) for t in result.evolve_targets]


def test_evolve_targets_rank_by_headroom_and_drop_after_fruitless_searches(tmp_path):
    workspace, digests = make_tunable_workspace(tmp_path / "ws")
    assert targets(workspace) == [("fast", "small", 0.8), ("fast", "big", 0.4)]

    write_run(workspace, "evolve", search(digests, "small"))
    assert targets(workspace) == [("fast", "small", 0.4), ("fast", "big", 0.4)]
    write_run(workspace, "evolve", search(digests, "small"))
    assert targets(workspace) == [("fast", "big", 0.4), ("fast", "small", 0.2)]
    # an interrupted search is no verdict; one of another machine or another version of the
    # spec or templates tells nothing about this one
    write_run(workspace, "evolve", search(digests, "small", stopped="interrupted"))
    write_run(workspace, "evolve", search(digests, "small", fingerprint="elsewhere"))
    write_run(workspace, "evolve", search({**digests, "spec_sha256": "old"}, "small"))
    assert targets(workspace)[-1] == ("fast", "small", 0.2)
    # a kept gain starts the count again
    write_run(workspace, "evolve", search(digests, "small", verdict="improved", kept=True))
    assert targets(workspace)[0] == ("fast", "small", 0.8)
    # every configuration evaluated: tuned to exhaustion, last, and never the next target
    write_run(workspace, "evolve", search(digests, "big", stopped="exhausted"))
    result = pas_analyze.run(workspace, pas_analyze.Options())
    last = result.evolve_targets[-1]
    assert (last.case, last.score, last.exhausted) == ("big", 0.0, True)
    assert "tuned to exhaustion" in last.reason and last.searches == 1
    assert last.command == "koschei evolve fast --case big"
    retune = {step.spec: step for step in result.next_steps if step.action == "retune"}
    assert retune["fast"].command == "koschei evolve fast --case small"
    assert retune["slow"].command.startswith("try other tunables")  # it has none to search

    chosen = pas_analyze.next_evolve_target(workspace, exclude=[["fast", "small"]])
    assert chosen is None  # small excluded, big exhausted
    assert pas_analyze.next_evolve_target(workspace).case == "small"
    assert pas_analyze.next_evolve_target(workspace, select=["slow"]) is None


def test_complexity_claims_are_held_against_the_crossover_cases_exponents(tmp_path):
    workspace = make_workspace(tmp_path / "ws")
    specs = workspace.root / "specs" / "foundation"
    (specs / "gla.yaml").write_text(IMPLEMENTED.format(name="gla", dtype="float32", claims=(
        '  - {metric: complexity, value: 1, unit: exponent, baseline: attention, '
        'source: "paper N"}')), encoding="utf-8")
    before = claim(pas_analyze.run(workspace, pas_analyze.Options()), "gla", "paper N")
    assert before.verdict == "unmeasured"
    assert "koschei benchmark --select none --model crossover" in before.detail

    def crossover_run(gla_prefill: float) -> str:
        exponents = {"prefill": {"gla": gla_prefill, "attention": 1.9},
                     "decode": {"gla": 0.02, "attention": 0.97}}
        return write_run(workspace, "benchmark", {**benchmark([]), "crossovers": [
            {"label": "crossover", "verdict": "ok", "exponents": exponents}]})

    run = crossover_run(1.05)
    found = claim(pas_analyze.run(workspace, pas_analyze.Options()), "gla", "paper N")
    assert (found.verdict, found.run, found.measured_factor) == ("confirmed", run, 1.05)
    assert "prefill time ~ N^1.05 for gla, N^1.90 for attention" in found.detail
    assert "a decoding step ~ N^0.02 against N^0.97" in found.detail
    crossover_run(1.5)  # below attention's, above the claim: partly
    assert claim(pas_analyze.run(workspace, pas_analyze.Options()), "gla",
                 "paper N").verdict == "partly"
    crossover_run(2.0)  # no better than attention's
    assert claim(pas_analyze.run(workspace, pas_analyze.Options()), "gla",
                 "paper N").verdict == "refuted"
