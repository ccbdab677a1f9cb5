"""The pas_analyze phase: the specs' claims against this machine's measurements, and what next.

PAS (predictive analysis) reads every spec's claims and status and the run history
(``runs/<run-id>/benchmark.json`` and ``runs/<run-id>/test_run.json``) and reports three things.

**Claims.** Each claim next to its measured counterpart, with a verdict:

- *speed* (``speedup``, or ``latency`` in ``x``): against another spec, the ratio of that spec's
  engine median to this spec's engine median on the same bench case of one benchmark run
  (``claim.case``, else the shared case where this spec's engine took longest); against
  ``numpy`` / ``pytorch``, the benchmark's paired speedup on that case.
- *size* (``memory``, ``compression``): against another implemented spec, the ratio of the bytes
  of the two signatures' tensors (inputs and output) at the same bench case's sizes.
- anything else (accuracy, complexity, absolute latencies, baselines no benchmark has) is
  ``unmeasured``, with the reason.

Claimed values are factors (``unit: x``) or percentages (``unit: "%"``: a speedup of 50% is
×1.5, a memory saving of 67% is ×3.03). Measured factor ``m`` against claimed factor ``c > 1``:
``confirmed`` when m >= c, ``partly`` when 1 < m < c, ``refuted`` when m <= 1 (mirrored for
c < 1).

**Predictions** for every claim of a planned spec. The rule: on this machine, each measured
claim of the same kind (speed or size) realized a fraction ``r = log(m) / log(c)`` of its claimed
gain (clipped to [-2, 2]). The predicted factor is ``c ** min(1, median(r))``: a machine that beat
some claims is not taken to beat the others, so a prediction never exceeds its claim, while
claims that fell short discount it. The confidence grows with
the number n of measured claims and shrinks as they disagree: ``n / (n + 2) / (1 + stdev(r))``
(stdev 0 for n = 1). Labels: none (n = 0: the prediction is then the paper's own figure,
unverified), low (< 0.35), medium (< 0.65), high.

**Next steps**, ranked: fix failing tests and wrong benchmark results first; then generate, test
and benchmark implemented specs that lack results; then implement planned specs whose
requirements are all implemented and whose gain is predicted from evidence, by predicted gain
(log of the best predicted factor) times confidence; then re-tune implemented kernels below half
of the roofline, lowest first (measured headroom); then implement the remaining ready planned
specs, by how many specs they unlock, then by claimed gain.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from koschei.phases.base import Progress, Result, SilentProgress
from koschei.specs.validate import case_label
from koschei.workspace import Workspace

Verdict = Literal["confirmed", "partly", "refuted", "unmeasured"]
Action = Literal["fix_tests", "generate", "fix_benchmark", "test", "benchmark", "implement",
                 "retune"]

# The order of the groups of next steps; "implement" with a gain predicted from evidence comes
# before re-tuning, "implement" without one after it.
STEP_GROUPS: tuple[str, ...] = ("fix_tests", "generate", "fix_benchmark", "test", "benchmark",
                                "implement", "retune", "implement_unpredicted")
SPEED_METRICS = ("speedup", "latency")
SIZE_METRICS = ("memory", "compression")
NUMPY_BASELINES = ("numpy", "np")
TORCH_BASELINES = ("pytorch", "torch")
RETUNE_ROOFLINE = 0.5  # kernels below this fraction of the roofline are worth re-tuning
REALIZATION_CLIP = 2.0
DTYPE_BYTES = {"float32": 4, "float64": 8, "int8": 1, "uint8": 1, "int32": 4, "int64": 8,
               "bool": 1}


# --- run history --------------------------------------------------------------------------------


@dataclass
class PhaseRecord:
    """One phase's saved result in one run record."""

    run_id: str
    dir: Path
    data: dict[str, Any]


def phase_history(workspace: Workspace, phase: str) -> list[PhaseRecord]:
    """Every run record's saved ``phase`` result, oldest first (run ids sort in time order)."""
    from koschei.runs import list_runs

    history: list[PhaseRecord] = []
    for record in list_runs(workspace):
        data = record.phase(phase)
        if data is not None:
            history.append(PhaseRecord(record.id, record.dir, data))
    return history


# --- result types -------------------------------------------------------------------------------


@dataclass
class ClaimCheck:
    spec: str
    status: str  # the spec's: implemented / planned
    metric: str
    baseline: str
    claimed: float  # as written in the spec
    unit: str
    source: str
    claimed_factor: float | None  # the claim as a factor (> 1: better than the baseline)
    measured_factor: float | None = None
    verdict: Verdict = "unmeasured"
    case: str | None = None  # the bench case it was measured on
    run: str | None = None  # the run it was measured in
    detail: str = ""  # how it was measured, or why it was not


@dataclass
class Prediction:
    spec: str
    tier: str
    metric: str
    baseline: str
    claimed_factor: float | None
    predicted_factor: float | None
    confidence: float  # 0..1
    confidence_label: Literal["none", "low", "medium", "high"]
    evidence: list[str] = field(default_factory=list)  # "spec metric vs baseline: m / c"
    basis: str = ""
    ready: bool = False  # every requirement is implemented
    missing_requires: list[str] = field(default_factory=list)


@dataclass
class NextStep:
    rank: int
    action: Action
    spec: str
    reason: str
    command: str
    score: float = 0.0  # orders steps of one action (higher first)


@dataclass
class PasResult(Result):
    claims: list[ClaimCheck] = field(default_factory=list)
    predictions: list[Prediction] = field(default_factory=list)
    next_steps: list[NextStep] = field(default_factory=list)
    benchmark_runs: list[str] = field(default_factory=list)  # runs with benchmark results
    test_run: str | None = None  # the latest run with test results
    evidence: dict[str, Any] = field(default_factory=dict)  # per kind: realizations measured
    notes: list[str] = field(default_factory=list)

    @property
    def verdicts(self) -> dict[str, int]:
        counts = {"confirmed": 0, "partly": 0, "refuted": 0, "unmeasured": 0}
        for claim in self.claims:
            counts[claim.verdict] += 1
        return counts

    def summary(self) -> str:
        verdicts = ", ".join(f"{n} {verdict}" for verdict, n in self.verdicts.items() if n)
        return (f"{len(self.claims)} claim(s): {verdicts or 'none'}; "
                f"{len(self.next_steps)} next step(s)")

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["verdicts"] = self.verdicts
        return data


@dataclass
class Options:
    # Implemented kernels below this fraction of the roofline are proposed for re-tuning.
    retune_below: float = RETUNE_ROOFLINE


# --- claims as factors, and verdicts ------------------------------------------------------------


def claimed_factor(metric: str, value: float, unit: str) -> float | None:
    """The claim as a factor > 1 for "better than the baseline", or None when its unit is not a
    ratio (absolute latencies, accuracy points ...)."""
    unit = unit.strip().lower()
    if unit in ("x", "×", "times"):
        return value if value > 0 else None
    if unit in ("%", "percent"):
        if metric in SIZE_METRICS:  # a saving: -67% memory is 1 / (1 - 0.67)
            saving = abs(value) / 100.0
            return 1.0 / (1.0 - saving) if saving < 1.0 else None
        if metric in SPEED_METRICS:
            return 1.0 + value / 100.0 if value > -100.0 else None
    return None


def verdict_for(claimed: float, measured: float) -> Verdict:
    """Compare factors in log space: same direction and at least as large confirms."""
    wanted, got = math.log(claimed), math.log(measured)
    if wanted == 0.0:
        return "confirmed" if got >= 0.0 else "refuted"
    if wanted < 0.0:  # a claim that something is smaller/slower: mirror it
        wanted, got = -wanted, -got
    if got >= wanted:
        return "confirmed"
    if got > 0.0:
        return "partly"
    return "refuted"


# --- the measurements a claim needs -------------------------------------------------------------


def _engine_median(case: dict[str, Any]) -> float | None:
    engine = (case.get("contenders") or {}).get("engine") or {}
    value = engine.get("median_s")
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def _cases_of(run: PhaseRecord, spec: str) -> dict[str, dict[str, Any]]:
    return {str(case.get("case")): case for case in run.data.get("cases") or []
            if isinstance(case, dict) and case.get("spec") == spec}


def _pick_case(cases: dict[str, dict[str, Any]], wanted: str | None,
               allowed: set[str] | None = None) -> str | None:
    """``wanted`` when present; else, among ``allowed``, the case where the engine took longest
    (the largest workload measured)."""
    if wanted is not None:
        return wanted if wanted in cases and (allowed is None or wanted in allowed) else None
    candidates = [label for label in cases if allowed is None or label in allowed]
    if not candidates:
        return None
    return max(candidates, key=lambda label: (_engine_median(cases[label]) or 0.0))


def measure_speed_vs_spec(check: ClaimCheck, other: str, wanted_case: str | None,
                          benchmarks: list[PhaseRecord]) -> None:
    """Ratio of ``other``'s engine median to this spec's, on one case of one run."""
    for run in reversed(benchmarks):
        mine, theirs = _cases_of(run, check.spec), _cases_of(run, other)
        label = _pick_case(mine, wanted_case, set(theirs))
        if label is None:
            continue
        check.run, check.case = run.run_id, label
        bad = [f"{name}/{label} was {case.get('verdict')}" for name, case in
               ((check.spec, mine[label]), (other, theirs[label])) if case.get("verdict") != "ok"]
        mine_s, theirs_s = _engine_median(mine[label]), _engine_median(theirs[label])
        if bad or mine_s is None or theirs_s is None:
            check.detail = (f"run {run.run_id}: {'; '.join(bad) or 'no engine timing'}: "
                            "fix it and benchmark again")
            return
        check.measured_factor = theirs_s / mine_s
        check.detail = (f"{other} {theirs_s * 1e3:.3g} ms / {check.spec} {mine_s * 1e3:.3g} ms "
                        f"on {label}")
        return
    case_text = f" case {wanted_case!r}" if wanted_case else " a shared case"
    check.detail = (f"no benchmark run measured {check.spec} and {other} on{case_text}: "
                    f"run koschei benchmark -k {check.spec} -k {other}")


def measure_speed_vs_library(check: ClaimCheck, library: Literal["numpy", "torch"],
                             wanted_case: str | None, benchmarks: list[PhaseRecord]) -> None:
    key = f"speedup_vs_{library}"
    label_text = "NumPy" if library == "numpy" else "PyTorch"
    for run in reversed(benchmarks):
        mine = _cases_of(run, check.spec)
        label = _pick_case(mine, wanted_case)
        if label is None:
            continue
        check.run, check.case = run.run_id, label
        case = mine[label]
        value = case.get(key)
        if case.get("verdict") != "ok":
            check.detail = (f"run {run.run_id}: {check.spec}/{label} was {case.get('verdict')}: "
                            "fix it and benchmark again")
        elif not isinstance(value, (int, float)) or value <= 0:
            check.detail = f"run {run.run_id}: {check.spec}/{label} has no {label_text} timing"
        else:
            check.measured_factor = float(value)
            check.detail = f"engine vs {label_text} on {label}"
        return
    case_text = f" on case {wanted_case!r}" if wanted_case else ""
    check.detail = (f"no benchmark run measured {check.spec}{case_text}: "
                    f"run koschei benchmark -k {check.spec}")


def tensor_bytes(spec: Any, case: Any) -> int | None:
    """Bytes of the signature's inputs and output at a bench case's sizes; None when a shape
    cannot be resolved from the case."""
    from koschei.specs.expr import evaluate

    names: dict[str, Any] = {key: value for key, value in case.params.items()
                             if isinstance(value, (bool, int, float))}
    names.update({key: value for key, value in case.dims.items() if key != "..."})
    total = 0
    given = [arg for arg in spec.signature.inputs
             if not arg.optional or arg.name in case.with_inputs]
    for arg in [*given, *spec.signature.results]:
        count = 1
        for dim in arg.shape:
            if isinstance(dim, int):
                count *= dim
            elif dim == "...":
                leading = case.dims.get("...", [])
                for size in (leading if isinstance(leading, list) else [leading]):
                    count *= int(size)
            elif dim in names:
                count *= int(names[dim])
            else:
                try:
                    count *= int(evaluate(str(dim), names))
                except Exception:  # noqa: BLE001 - an unresolvable shape: not measurable
                    return None
        total += count * DTYPE_BYTES.get(arg.dtype, 4)
    return total


def measure_size_vs_spec(check: ClaimCheck, loaded: Any, other: Any,
                         wanted_case: str | None) -> None:
    spec, baseline = loaded.spec, other.spec
    if spec.signature is None or baseline.signature is None or spec.bench is None \
            or baseline.bench is None:
        check.detail = (f"{check.spec} and {baseline.name} both need a signature and bench cases "
                        "to compare their tensor sizes")
        return
    mine = {case_label(case): case for case in spec.bench.cases}
    theirs = {case_label(case): case for case in baseline.bench.cases}
    shared = [label for label in mine if label in theirs]
    label = wanted_case if wanted_case in shared else (shared[-1] if shared and not wanted_case
                                                       else None)
    if label is None:
        check.detail = (f"{check.spec} and {baseline.name} share no bench case"
                        + (f" named {wanted_case!r}" if wanted_case else ""))
        return
    mine_bytes, theirs_bytes = tensor_bytes(spec, mine[label]), tensor_bytes(baseline,
                                                                             theirs[label])
    if not mine_bytes or not theirs_bytes:
        check.detail = f"the tensor shapes of case {label} cannot be resolved from its sizes"
        return
    check.case = label
    check.measured_factor = theirs_bytes / mine_bytes
    check.detail = (f"tensor bytes {baseline.name} {theirs_bytes:,} / {check.spec} "
                    f"{mine_bytes:,} at {label}")


def check_claim(spec_set: Any, loaded: Any, claim: Any, benchmarks: list[PhaseRecord],
                ) -> ClaimCheck:
    spec = loaded.spec
    check = ClaimCheck(spec=spec.name, status=spec.status, metric=claim.metric,
                       baseline=claim.baseline, claimed=claim.value, unit=claim.unit,
                       source=claim.source,
                       claimed_factor=claimed_factor(claim.metric, claim.value, claim.unit))
    baseline_name = claim.baseline.strip()
    other = spec_set.get(baseline_name)  # a spec named so, or with that alias
    if claim.metric == "accuracy":
        check.detail = "model quality: kernel benchmarks do not measure accuracy"
    elif claim.metric == "complexity":
        check.detail = "asymptotic complexity: no single benchmark ratio measures it"
    elif check.claimed_factor is None:
        check.detail = (f"{claim.value:g} {claim.unit} is not a ratio: absolute figures from "
                        "other machines do not compare")
    elif spec.status != "implemented":
        check.detail = "planned: nothing to measure until it is implemented"
    elif claim.metric in SPEED_METRICS:
        if baseline_name.lower() in NUMPY_BASELINES:
            measure_speed_vs_library(check, "numpy", claim.case, benchmarks)
        elif baseline_name.lower() in TORCH_BASELINES:
            measure_speed_vs_library(check, "torch", claim.case, benchmarks)
        elif other is not None:
            measure_speed_vs_spec(check, other.spec.name, claim.case, benchmarks)
        else:
            check.detail = (f"no benchmark measures {baseline_name!r} (not a spec, not numpy or "
                            "pytorch)")
    elif claim.metric in SIZE_METRICS:
        if other is not None:
            measure_size_vs_spec(check, loaded, other, claim.case)
        else:
            check.detail = (f"baseline {baseline_name!r} is not a spec: no tensor shapes to "
                            "compare with")
    if check.measured_factor is not None and check.claimed_factor is not None:
        check.verdict = verdict_for(check.claimed_factor, check.measured_factor)
    return check


# --- predictions --------------------------------------------------------------------------------


def claim_kind(metric: str) -> str | None:
    if metric in SPEED_METRICS:
        return "speed"
    if metric in SIZE_METRICS:
        return "size"
    return None


def realization(check: ClaimCheck) -> float | None:
    """The fraction of the claimed gain realized here, in log space: 1 as claimed, 0 no gain,
    negative the opposite (clipped)."""
    if check.measured_factor is None or check.claimed_factor is None:
        return None
    wanted = math.log(check.claimed_factor)
    if wanted == 0.0:
        return None
    value = math.log(check.measured_factor) / wanted
    return max(-REALIZATION_CLIP, min(REALIZATION_CLIP, value))


def evidence_by_kind(claims: list[ClaimCheck]) -> dict[str, dict[str, Any]]:
    evidence: dict[str, dict[str, Any]] = {}
    for kind in ("speed", "size"):
        measured = [(check, realization(check)) for check in claims
                    if claim_kind(check.metric) == kind and check.verdict != "unmeasured"]
        measured = [(check, value) for check, value in measured if value is not None]
        values = [value for _, value in measured]
        confidence = 0.0
        if values:
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            confidence = len(values) / (len(values) + 2) / (1.0 + spread)
        evidence[kind] = {
            "n": len(values),
            "median_realization": statistics.median(values) if values else None,
            "confidence": round(confidence, 4),
            "claims": [f"{check.spec} {check.metric} vs {check.baseline}: "
                       f"×{check.measured_factor:.3g} measured / ×{check.claimed_factor:.3g} "
                       f"claimed" for check, _ in measured],
        }
    return evidence


def confidence_label(confidence: float) -> Literal["none", "low", "medium", "high"]:
    if confidence <= 0.0:
        return "none"  # nothing measured
    if confidence < 0.35:
        return "low"
    if confidence < 0.65:
        return "medium"
    return "high"


def predict(loaded: Any, claim: Any, evidence: dict[str, dict[str, Any]],
            implemented: set[str]) -> Prediction:
    spec = loaded.spec
    factor = claimed_factor(claim.metric, claim.value, claim.unit)
    missing = [name for name in spec.requires if name not in implemented]
    prediction = Prediction(spec=spec.name, tier=spec.tier, metric=claim.metric,
                            baseline=claim.baseline, claimed_factor=factor,
                            predicted_factor=None, confidence=0.0, confidence_label="none",
                            ready=not missing, missing_requires=missing)
    kind = claim_kind(claim.metric)
    if kind is None or factor is None:
        prediction.basis = ("not predictable here: a kernel benchmark does not measure "
                            f"{claim.metric} {claim.value:g} {claim.unit}")
        return prediction
    found = evidence[kind]
    if not found["n"]:
        prediction.predicted_factor = factor
        prediction.basis = (f"no {kind} claim has been measured on this machine yet: this is "
                            "the paper's figure, unverified")
        return prediction
    median = found["median_realization"]
    prediction.predicted_factor = factor ** min(1.0, median)
    prediction.confidence = found["confidence"]
    prediction.confidence_label = confidence_label(found["confidence"])
    prediction.evidence = list(found["claims"])
    prediction.basis = (f"claimed ×{factor:.3g}, times the median realization "
                        f"{min(1.0, median):.2f} (at most 1) of {found['n']} measured {kind} "
                        "claim(s) here, on a log scale")
    return prediction


# --- next steps ---------------------------------------------------------------------------------


def latest_test_results(test_runs: list[PhaseRecord]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each spec's most recent test result: spec -> (run id, its entry in test_run.json)."""
    latest: dict[str, tuple[str, dict[str, Any]]] = {}
    for run in reversed(test_runs):
        for entry in run.data.get("specs") or []:
            if isinstance(entry, dict) and entry.get("spec") and entry["spec"] not in latest:
                latest[str(entry["spec"])] = (run.run_id, entry)
    return latest


def latest_bench_cases(benchmarks: list[PhaseRecord]) -> dict[str, tuple[str, list[dict]]]:
    """Each spec's cases from the most recent run that benchmarked it."""
    latest: dict[str, tuple[str, list[dict]]] = {}
    for run in reversed(benchmarks):
        for case in run.data.get("cases") or []:
            if not isinstance(case, dict) or not case.get("spec"):
                continue
            name = str(case["spec"])
            if name not in latest:
                latest[name] = (run.run_id, [])
            if latest[name][0] == run.run_id:
                latest[name][1].append(case)
    return latest


def _count_unlocked(name: str, dependents: dict[str, list[str]]) -> int:
    seen: set[str] = set()
    stack = [name]
    while stack:
        for other in dependents.get(stack.pop(), []):
            if other not in seen:
                seen.add(other)
                stack.append(other)
    return len(seen)


def plan_next_steps(spec_set: Any, claims: list[ClaimCheck], predictions: list[Prediction],
                    benchmarks: list[PhaseRecord], test_runs: list[PhaseRecord],
                    workspace: Workspace, retune_below: float = RETUNE_ROOFLINE,
                    ) -> list[NextStep]:
    steps: list[tuple[str, float, tuple, NextStep]] = []

    def add(action: Action, spec: str, reason: str, command: str, score: float = 0.0,
            tie: tuple = ()) -> None:
        steps.append((action, score, tie, NextStep(rank=0, action=action, spec=spec,
                                                   reason=reason, command=command,
                                                   score=round(score, 4))))

    tests = latest_test_results(test_runs)
    bench = latest_bench_cases(benchmarks)
    loaded_specs = list(spec_set)
    implemented = [loaded for loaded in loaded_specs if loaded.spec.status == "implemented"]
    dependents: dict[str, list[str]] = {}
    for loaded in loaded_specs:
        for requirement in loaded.spec.requires:
            dependents.setdefault(requirement, []).append(loaded.spec.name)

    for loaded in implemented:
        name = loaded.spec.name
        engine = workspace.engine_dir / f"{name}.py"
        test_module = workspace.tests_dir / f"test_{name}.py"
        if not engine.is_file() or not test_module.is_file():
            add("generate", name, "its engine module or generated test is missing",
                "koschei code-generate")
            continue
        if name in tests:
            run_id, entry = tests[name]
            failed, errors = int(entry.get("failed") or 0), int(entry.get("errors") or 0)
            if entry.get("status") == "missing":  # generated since that run
                add("test", name, f"generated after run {run_id}, which had no test module",
                    f"koschei test-run -k {name}")
            elif failed or errors or entry.get("ok") is False:
                first = entry.get("first_failure") or "see the run's junit.xml"
                add("fix_tests", name, f"{failed} failed, {errors} errors in run {run_id}: "
                    f"{first}", f"koschei test-run -k {name}", score=failed + errors)
        else:
            add("test", name, "no test results in any run", f"koschei test-run -k {name}")
        if loaded.spec.bench is None:
            continue
        if name not in bench:
            add("benchmark", name, "no benchmark results in any run",
                f"koschei benchmark -k {name}")
            continue
        run_id, cases = bench[name]
        broken = [case for case in cases if case.get("verdict") != "ok"]
        if broken:
            listed = ", ".join(f"{case.get('case')} {case.get('verdict')}" for case in broken)
            add("fix_benchmark", name, f"run {run_id}: {listed}",
                f"koschei benchmark -k {name}", score=len(broken))
        fractions = [float(case["roofline_fraction"]) for case in cases
                     if case.get("verdict") == "ok"
                     and isinstance(case.get("roofline_fraction"), (int, float))]
        refuted = [check for check in claims if check.spec == name and check.verdict in
                   ("refuted", "partly") and claim_kind(check.metric) == "speed"]
        worst = min(fractions) if fractions else None
        if worst is not None and worst < retune_below:
            reason = f"reaches {worst * 100:.0f}% of the roofline (run {run_id})"
            if refuted:
                reason += "; " + "; ".join(
                    f"{check.verdict}: ×{check.measured_factor:.2f} vs {check.baseline} "
                    f"(claimed ×{check.claimed_factor:.2f})" for check in refuted)
            add("retune", name, reason,
                f"try other tunables in {loaded.relpath}, then koschei cycle",
                score=1.0 - worst)

    by_spec: dict[str, list[Prediction]] = {}
    for prediction in predictions:
        by_spec.setdefault(prediction.spec, []).append(prediction)
    implemented_names = {loaded.spec.name for loaded in implemented}
    for loaded in loaded_specs:
        spec = loaded.spec
        if spec.status != "planned" or any(r not in implemented_names for r in spec.requires):
            continue
        mine = [p for p in by_spec.get(spec.name, []) if p.predicted_factor]
        best = max(mine, key=lambda p: math.log(p.predicted_factor) * p.confidence,
                   default=None)
        score = math.log(best.predicted_factor) * best.confidence if best else 0.0
        claimed_gain = max((math.log(p.claimed_factor) for p in mine if p.claimed_factor),
                           default=0.0)
        unlocks = _count_unlocked(spec.name, dependents)
        if best is None:
            reason = "no claim to predict a gain from"
        else:
            reason = (f"predicted ×{best.predicted_factor:.3g} {best.metric} vs {best.baseline} "
                      f"(confidence {best.confidence_label})")
        if unlocks:
            reason += f"; unlocks {unlocks} planned spec(s)"
        add("implement", spec.name, reason,
            f"give {loaded.relpath} a kernel, signature, reference and tests, then "
            "koschei code-generate", score=score, tie=(unlocks, claimed_gain))

    def group(action: str, score: float) -> int:
        if action == "implement" and score <= 0.0:
            return STEP_GROUPS.index("implement_unpredicted")
        return STEP_GROUPS.index(action)

    steps.sort(key=lambda item: (group(item[0], item[1]), -item[1],
                                 tuple(-value for value in item[2]), item[3].spec))
    ordered = [step for _, _, _, step in steps]
    for rank, step in enumerate(ordered, start=1):
        step.rank = rank
    return ordered


# --- the phase ----------------------------------------------------------------------------------


def run(workspace: Workspace, options: Options, progress: Progress | None = None) -> PasResult:
    from koschei.specs import load_specs

    progress = progress or SilentProgress()
    progress.step("loading the specs and the run history")
    spec_set = load_specs(workspace)
    benchmarks = phase_history(workspace, "benchmark")
    test_runs = phase_history(workspace, "test_run")

    result = PasResult(benchmark_runs=[run.run_id for run in benchmarks],
                       test_run=test_runs[-1].run_id if test_runs else None)
    if not benchmarks:
        result.notes.append("no benchmark results in runs/: every claim is unmeasured "
                            "(run koschei benchmark)")

    progress.step("checking the claims against the measurements")
    for loaded in spec_set:
        for claim in loaded.spec.claims:
            result.claims.append(check_claim(spec_set, loaded, claim, benchmarks))

    evidence = evidence_by_kind(result.claims)
    result.evidence = evidence
    implemented = {loaded.spec.name for loaded in spec_set if loaded.spec.status == "implemented"}
    progress.step("predicting the gains of planned specs")
    for loaded in spec_set:
        if loaded.spec.status == "planned":
            for claim in loaded.spec.claims:
                result.predictions.append(predict(loaded, claim, evidence, implemented))

    result.next_steps = plan_next_steps(spec_set, result.claims, result.predictions, benchmarks,
                                        test_runs, workspace, options.retune_below)
    return result
