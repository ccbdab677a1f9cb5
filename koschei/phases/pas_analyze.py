"""The pas_analyze phase: the specs' claims against this machine's measurements, and what next.

PAS (predictive analysis) reads every spec's claims and status and the run history
(``runs/<run-id>/benchmark.json`` and ``runs/<run-id>/test_run.json``) and reports three things.

**Claims.** Each claim next to its measured counterpart, with a verdict. A spec whose technique
another spec's code does (``provided_by``) is measured on that spec's bench cases.

- *speed* (``speedup``, or ``latency`` in ``x``): against another spec, the ratio of that spec's
  engine median to this spec's engine median on the same bench case of one benchmark run
  (``claim.case``, else the shared case where this spec's engine took longest); against
  ``numpy`` / ``pytorch`` or one of the spec's bench baselines (``bench.baselines``), the
  benchmark's paired speedup on that case.
- *size* (``memory``, ``compression``): against another implemented spec, the ratio of the bytes
  of the two signatures' tensors (inputs and output) at the same bench case's sizes.
- a claim with a ``measure`` (``koschei.specs.measures``) whose baseline needs no kernel:
  ``weights``, the bytes of a ``d_out`` x ``d_in`` matrix in two storage formats (scales
  included) at a bench case's sizes; ``kv_cache``, the KV cache bytes per position of two layouts
  (``KVCache.bytes_per_position`` of the engine) at a bench case's ``hq``, ``hkv``, ``hd`` (one
  layer) or, without ``claim.case``, at the decoder config of the latest decoder model case
  (``igla_v2`` when there is none); ``attention_memory``, the bytes attention holds (q, k, v,
  the output, and either the hq x n x m scores or the kernel's tiles) at the bench case with the
  most scores; ``decoder``, the decoder's model case of the latest benchmark run that has one
  (tokens/s for speed claims, preferring the run's paired speedup; weight bytes for sizes).
- anything else (accuracy, complexity, absolute figures, baselines nothing measures) is
  ``unmeasured``, and the detail says what would measure it: which spec to implement, which
  bench case or bench baseline to add, which command to run.

Claimed values are factors (``unit: x``) or percentages (``unit: "%"``: a speedup of 50% is
×1.5, a memory saving of 67% is ×3.03). Measured factor ``m`` against claimed factor ``c > 1``:
``confirmed`` when m >= c / 1.02 (the seeds' figures are rounded: -67% for two thirds, 4x for
8-bit weights with per-row scales), ``partly`` when 1 < m below that, ``refuted`` when m <= 1
(mirrored for c < 1).

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
requirements are all done (implemented, composed or provided) and whose gain is predicted from
evidence, by predicted gain
(log of the best predicted factor) times confidence; then re-tune implemented kernels below half
of the roofline, by their best evolve target's score (below); then implement the remaining ready
planned specs, by how many specs they unlock, then by claimed gain.

**Evolve targets**, ranked (what ``koschei cycle --loop`` evolves next): every measured bench case
of an implemented kernel with tunables, scored by its headroom to the roofline, halved for each
search of it on this machine that kept nothing since its last kept gain (the searches' results,
``runs/<run-id>/evolve.json``), and 0 once a search has evaluated every configuration (tuned to
exhaustion): a target that keeps yielding nothing drops down the ranking.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from koschei.phases.base import Progress, Result, SilentProgress
from koschei.specs.measures import KV_LAYOUTS, WEIGHT_FORMATS
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
# A measured factor this close below the claimed one confirms it: written claims are rounded.
CLAIM_ROUNDING = 0.02
# The statuses whose technique the engine does: measured (planned ones are predicted).
DONE_STATUSES = ("implemented", "composed", "provided")
DEFAULT_DECODER_CONFIG = "igla_v2"
# A baseline written as a figure ("100 ms per inference", "400 MB model"): another setup's.
ABSOLUTE_FIGURE = re.compile(r"^\d")
REALIZATION_CLIP = 2.0
DTYPE_BYTES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2, "int8": 1, "uint8": 1,
               "int32": 4, "int64": 8, "bool": 1}


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
    status: str  # the spec's: implemented / composed / provided / planned
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
    detail: str = ""  # how it was measured, or why it was not and what would measure it
    shapes: str | None = None  # the shapes a size from shapes and dtypes was computed at


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
    ready: bool = False  # every requirement is done (implemented, composed or provided)
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
class EvolveTarget:
    """One bench case of a kernel with tunables, as a target of ``koschei evolve``."""

    spec: str
    case: str
    run: str  # the benchmark run that measured it
    roofline_fraction: float
    # earlier searches of this case on this machine, with the spec and templates as they are now
    searches: int = 0
    fruitless: int = 0  # of those, the ones since the last kept gain that kept nothing
    exhausted: bool = False  # a search evaluated every configuration of the spec's space
    score: float = 0.0  # headroom, halved per fruitless search; 0 when exhausted
    reason: str = ""
    command: str = ""


@dataclass
class PasResult(Result):
    claims: list[ClaimCheck] = field(default_factory=list)
    predictions: list[Prediction] = field(default_factory=list)
    next_steps: list[NextStep] = field(default_factory=list)
    benchmark_runs: list[str] = field(default_factory=list)  # runs with benchmark results
    test_run: str | None = None  # the latest run with test results
    evidence: dict[str, Any] = field(default_factory=dict)  # per kind: realizations measured
    # kernel cases the evolve step could make faster, best first (see evolve_targets)
    evolve_targets: list[EvolveTarget] = field(default_factory=list)
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


def verdict_for(claimed: float, measured: float, rounding: float = CLAIM_ROUNDING) -> Verdict:
    """Compare factors in log space: same direction and at least as large, up to the claim's
    rounding (a factor within ``rounding`` below the claimed one), confirms."""
    wanted, got = math.log(claimed), math.log(measured)
    if wanted == 0.0:
        return "confirmed" if got >= 0.0 else "refuted"
    if wanted < 0.0:  # a claim that something is smaller/slower: mirror it
        wanted, got = -wanted, -got
    if got >= wanted - math.log1p(rounding):
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


def measure_speed_vs_spec(check: ClaimCheck, subject: str, other: str, wanted_case: str | None,
                          benchmarks: list[PhaseRecord]) -> None:
    """Ratio of ``other``'s engine median to ``subject``'s (the spec's own kernel, or the one
    that provides it), on one case of one run."""
    for run in reversed(benchmarks):
        mine, theirs = _cases_of(run, subject), _cases_of(run, other)
        label = _pick_case(mine, wanted_case, set(theirs))
        if label is None:
            continue
        check.run, check.case = run.run_id, label
        bad = [f"{name}/{label} was {case.get('verdict')}" for name, case in
               ((subject, mine[label]), (other, theirs[label])) if case.get("verdict") != "ok"]
        mine_s, theirs_s = _engine_median(mine[label]), _engine_median(theirs[label])
        if bad or mine_s is None or theirs_s is None:
            check.detail = (f"run {run.run_id}: {'; '.join(bad) or 'no engine timing'}: "
                            "fix it and benchmark again")
            return
        check.measured_factor = theirs_s / mine_s
        check.detail = (f"{other} {theirs_s * 1e3:.3g} ms / {subject} {mine_s * 1e3:.3g} ms "
                        f"on {label}")
        return
    case_text = f" case {wanted_case!r}" if wanted_case else " a shared case"
    check.detail = (f"no benchmark run measured {subject} and {other} on{case_text}: "
                    f"run koschei benchmark -k {subject} -k {other}")


def measure_speed_vs_library(check: ClaimCheck, subject: str, contender: str,
                             wanted_case: str | None, benchmarks: list[PhaseRecord]) -> None:
    """The benchmark's paired speedup of ``subject``'s engine over a contender timed beside it:
    ``numpy``, ``torch`` or one of the spec's bench baselines."""
    if contender in ("numpy", "torch"):
        label_text = "NumPy" if contender == "numpy" else "PyTorch"
    else:
        label_text = contender
    for run in reversed(benchmarks):
        mine = _cases_of(run, subject)
        label = _pick_case(mine, wanted_case)
        if label is None:
            continue
        check.run, check.case = run.run_id, label
        case = mine[label]
        if contender in ("numpy", "torch"):
            value = case.get(f"speedup_vs_{contender}")
        else:
            value = (case.get("speedup_vs_baselines") or {}).get(contender)
        if case.get("verdict") != "ok":
            check.detail = (f"run {run.run_id}: {subject}/{label} was {case.get('verdict')}: "
                            "fix it and benchmark again")
        elif not isinstance(value, (int, float)) or value <= 0:
            check.detail = f"run {run.run_id}: {subject}/{label} has no {label_text} timing"
        else:
            check.measured_factor = float(value)
            check.detail = f"{subject}'s engine vs {label_text} on {label}"
        return
    case_text = f" on case {wanted_case!r}" if wanted_case else ""
    check.detail = (f"no benchmark run measured {subject}{case_text}: "
                    f"run koschei benchmark -k {subject}")


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
        check.detail = (f"{spec.name} and {baseline.name} both need a signature and bench cases "
                        "to compare their tensor sizes")
        return
    mine = {case_label(case): case for case in spec.bench.cases}
    theirs = {case_label(case): case for case in baseline.bench.cases}
    shared = [label for label in mine if label in theirs]
    label = wanted_case if wanted_case in shared else (shared[-1] if shared and not wanted_case
                                                       else None)
    if label is None:
        check.detail = (f"{spec.name} and {baseline.name} share no bench case"
                        + (f" named {wanted_case!r}" if wanted_case else ""))
        return
    mine_bytes, theirs_bytes = tensor_bytes(spec, mine[label]), tensor_bytes(baseline,
                                                                             theirs[label])
    if not mine_bytes or not theirs_bytes:
        check.detail = f"the tensor shapes of case {label} cannot be resolved from its sizes"
        return
    check.case = label
    check.measured_factor = theirs_bytes / mine_bytes
    check.detail = (f"tensor bytes {baseline.name} {theirs_bytes:,} / {spec.name} "
                    f"{mine_bytes:,} at {label}")


# --- sizes from shapes and dtypes, and the decoder's figures --------------------------------------


@dataclass
class Evidence:
    """What claims are measured against: the specs and the benchmark runs (oldest first)."""

    spec_set: Any
    benchmarks: list[PhaseRecord]

    def latest_decoder_case(self) -> tuple[PhaseRecord, dict[str, Any]] | None:
        """The decoder's model case of the latest run that has one, and that run."""
        for run in reversed(self.benchmarks):
            for case in run.data.get("models") or []:
                if isinstance(case, dict) and case.get("model") == "decoder":
                    return run, case
        return None

    def decoder_config_name(self) -> str:
        """The decoder config of the latest decoder model case, else ``igla_v2``."""
        found = self.latest_decoder_case()
        config = found[1].get("config") if found else None
        return str(config) if config else DEFAULT_DECODER_CONFIG

    def threads(self) -> int | None:
        """The thread count of the latest benchmark run."""
        for run in reversed(self.benchmarks):
            threads = run.data.get("threads")
            if isinstance(threads, int) and threads > 0:
                return threads
        return None


def provider_of(spec_set: Any, loaded: Any) -> Any:
    """The spec whose code measures ``loaded``'s claims: its provider, or itself."""
    provided_by = loaded.spec.provided_by
    if provided_by is not None:
        provider = spec_set.get(provided_by.spec)
        if provider is not None:
            return provider
    return loaded


def bench_cases_with(loaded: Any, dims: tuple[str, ...]) -> list[tuple[str, dict[str, Any]]]:
    """(label, sizes) of the bench cases of ``loaded`` that size every one of ``dims``."""
    bench = loaded.spec.bench
    if bench is None:
        return []
    return [(case_label(case), dict(case.dims)) for case in bench.cases
            if all(isinstance(case.dims.get(dim), int) for dim in dims)]


def _pick_sized_case(check: ClaimCheck, claim: Any, subject: Any, dims: tuple[str, ...],
                     size: Any) -> tuple[str, dict[str, Any]] | None:
    """``claim.case`` among the subject's bench cases that size ``dims``, else the one where
    ``size(dims)`` is largest; None (with the reason in the detail) when there is none."""
    cases = bench_cases_with(subject, dims)
    if claim.case is not None:
        chosen = [(label, sizes) for label, sizes in cases if label == claim.case]
        if not chosen:
            check.detail = (f"{subject.name} has no bench case {claim.case!r} with the sizes "
                            f"{', '.join(dims)}: add one to its bench, or name another case")
            return None
        return chosen[0]
    if not cases:
        check.detail = (f"needs a bench case of {subject.name} with the sizes {', '.join(dims)} "
                        f"(a {claim.measure.kind} size is computed at them)")
        return None
    return max(cases, key=lambda item: size(item[1]))


def measure_weights(check: ClaimCheck, claim: Any, subject: Any, evidence: Evidence) -> None:
    """Bytes of a ``d_out`` x ``d_in`` weight matrix in two storage formats, scales included,
    at a bench case's sizes (``claim.case``, else the largest matrix)."""
    this, base = WEIGHT_FORMATS[claim.measure.this], WEIGHT_FORMATS[claim.measure.baseline]
    picked = _pick_sized_case(check, claim, subject, ("d_out", "d_in"),
                              lambda sizes: sizes["d_out"] * sizes["d_in"])
    if picked is None:
        return
    label, sizes = picked
    rows, cols = sizes["d_out"], sizes["d_in"]
    mine, theirs = this.nbytes(rows, cols), base.nbytes(rows, cols)
    check.case, check.measured_factor = label, theirs / mine
    check.shapes = f"a {rows} x {cols} weight matrix ({subject.name}'s bench case {label})"
    check.detail = (f"weight bytes, scales included: {base.name} {theirs:,} "
                    f"({base.bits_per_weight(rows, cols):.3g} bits a weight) / {this.name} "
                    f"{mine:,} ({this.bits_per_weight(rows, cols):.3g} bits) for {check.shapes}")
    wanted = check.claimed_factor
    if wanted is not None and verdict_for(wanted, check.measured_factor) != "confirmed":
        check.detail += (f"; ×{wanted:.3g} needs {base.bits_per_weight(rows, cols) / wanted:.3g} "
                         f"bits a weight against {base.name}")


def kv_bytes_per_position(layout: Any, layers: int, hq: int, hkv: int, head_dim: int) -> int:
    """Bytes one position of a KV cache takes (keys and values of every layer, int8 scales
    included), as ``koschei.engine.models.kv_cache.KVCache`` stores it."""
    from koschei.engine.models.kv_cache import KVCache

    cache = KVCache(layers, 1, layout.kv_heads(hq, hkv), head_dim, dtype=layout.dtype)
    return cache.bytes_per_position


def measure_kv_cache(check: ClaimCheck, claim: Any, subject: Any, evidence: Evidence) -> None:
    """KV cache bytes per position of two layouts: at ``claim.case`` (one layer, the case's hq,
    hkv, hd), else at the decoder config (all its layers); the subject's bench cases with those
    sizes are listed beside."""
    this, base = KV_LAYOUTS[claim.measure.this], KV_LAYOUTS[claim.measure.baseline]
    dims = ("hq", "hkv", "hd")
    cases = bench_cases_with(subject, dims)
    if claim.case is not None:
        picked = _pick_sized_case(check, claim, subject, dims, lambda sizes: 0)
        if picked is None:
            return
        label, sizes = picked
        layers, hq, hkv, head_dim = 1, sizes["hq"], sizes["hkv"], sizes["hd"]
        check.case = label
        check.shapes = (f"{subject.name}'s bench case {label} (one layer: {hq} query heads over "
                        f"{hkv} KV heads, head_dim {head_dim})")
    else:
        from koschei.engine.models.decoder import DecoderConfig

        name = evidence.decoder_config_name()
        config = DecoderConfig.named(name)
        layers, hq, hkv, head_dim = (config.num_layers, config.num_heads, config.num_kv_heads,
                                     config.head_dim)
        check.case = f"decoder config {name}"
        check.shapes = (f"decoder config {name} ({layers} layers, {hq} query heads over {hkv} KV "
                        f"heads, head_dim {head_dim})")
    mine = kv_bytes_per_position(this, layers, hq, hkv, head_dim)
    theirs = kv_bytes_per_position(base, layers, hq, hkv, head_dim)
    check.measured_factor = theirs / mine
    check.detail = (f"KV cache bytes per position (keys and values, scales included): {base.name} "
                    f"{theirs:,} / {this.name} {mine:,} at {check.shapes}")
    if this.dtype != base.dtype:
        vectors = {layout.name: bytes_per_position // (2 * layers * layout.kv_heads(hq, hkv))
                   for layout, bytes_per_position in ((base, theirs), (this, mine))}
        check.detail += (f"; a head vector of {head_dim} values takes {vectors[base.name]} bytes "
                         f"as {base.dtype}, {vectors[this.name]} as {this.dtype} with its scale")
    if claim.case is None and cases:
        by_factor: dict[float, list[str]] = {}
        for label, sizes in cases:
            factor = (kv_bytes_per_position(base, 1, sizes["hq"], sizes["hkv"], sizes["hd"])
                      / kv_bytes_per_position(this, 1, sizes["hq"], sizes["hkv"], sizes["hd"]))
            by_factor.setdefault(round(factor, 4), []).append(label)
        check.detail += f"; at {subject.name}'s bench cases: " + ", ".join(
            f"×{factor:.3g} ({', '.join(labels)})" for factor, labels in by_factor.items())
    wanted = check.claimed_factor
    if wanted is not None and {this.heads, base.heads} == {"hq", "hkv"} \
            and verdict_for(wanted, check.measured_factor) != "confirmed":
        check.detail += (f"; ×{wanted:.3g} needs {wanted:.3g} query heads per KV head (hq / hkv; "
                         f"here {hq} / {hkv})")


def attention_bytes(layout: str, sizes: dict[str, int], block_q: int, block_k: int,
                    threads: int) -> tuple[int, int]:
    """(bytes of q, k, v and the output, bytes attention holds besides them), float32, for
    ``sizes`` n, m, hq, hkv, hd: ``score_matrix``, the hq x n x m scores; ``online_softmax``,
    one task's buffers on each busy thread (a task is block_q query positions of one KV head's
    group: rows = block_q hq / hkv, each with a block_k score tile, its scaled query and
    accumulator of hd values and its running maximum and sum; and a transposed hd x block_k V
    block). The partial results of a decoding step split across threads are not counted."""
    n, m, hq, hkv, hd = (sizes[name] for name in ("n", "m", "hq", "hkv", "hd"))
    io = 4 * (2 * n * hq * hd + 2 * m * hkv * hd)
    if layout == "score_matrix":
        return io, 4 * hq * n * m
    rows = min(block_q, n) * (hq // hkv)
    tasks = hkv * math.ceil(n / block_q)
    return io, min(threads, tasks) * 4 * (rows * (2 * hd + block_k + 2) + hd * block_k)


def measure_attention_memory(check: ClaimCheck, claim: Any, subject: Any,
                             evidence: Evidence) -> None:
    """Bytes attention holds (inputs, output and working memory) in two layouts, at the bench
    case with the most scores (or ``claim.case``); tiles from the subject's tunable defaults and
    the latest run's thread count."""
    picked = _pick_sized_case(check, claim, subject, ("n", "m", "hq", "hkv", "hd"),
                              lambda sizes: sizes["hq"] * sizes["n"] * sizes["m"])
    if picked is None:
        return
    label, sizes = picked
    tunables = subject.spec.tunables
    block_q = int(tunables["block_q"].default) if "block_q" in tunables else 64
    block_k = int(tunables["block_k"].default) if "block_k" in tunables else 192
    threads = evidence.threads() or 1

    def total(layout: str, at: dict[str, int]) -> tuple[int, int]:
        return attention_bytes(layout, at, block_q, block_k, threads)

    io, mine_extra = total(claim.measure.this, sizes)
    _, theirs_extra = total(claim.measure.baseline, sizes)
    check.case, check.measured_factor = label, (io + theirs_extra) / (io + mine_extra)
    check.shapes = (f"{subject.name}'s bench case {label} (n {sizes['n']}, m {sizes['m']}, hq "
                    f"{sizes['hq']}, hkv {sizes['hkv']}, hd {sizes['hd']}; tiles block_q "
                    f"{block_q} x block_k {block_k} on {threads} thread(s))")
    check.detail = (f"bytes held, q, k, v and output ({io:,}) included: "
                    f"{claim.measure.baseline} {io + theirs_extra:,} / {claim.measure.this} "
                    f"{io + mine_extra:,} at {check.shapes}")
    wanted = check.claimed_factor
    if wanted is not None and verdict_for(wanted, check.measured_factor) != "confirmed":
        def ratio(length: int) -> float:
            at = {**sizes, "n": length, "m": length}
            io_at, mine_at = total(claim.measure.this, at)
            return (io_at + total(claim.measure.baseline, at)[1]) / (io_at + mine_at)

        low, high = 1, 1 << 24
        if ratio(high) >= wanted:
            while low < high:
                middle = (low + high) // 2
                low, high = (low, middle) if ratio(middle) >= wanted else (middle + 1, high)
            check.detail += (f"; the ratio grows with the sequence length: ×{wanted:.3g} from "
                             f"n = m = {low:,} at these heads (a bench case of {subject.name} "
                             "that long would show it)")


def measure_decoder(check: ClaimCheck, claim: Any, subject: Any, evidence: Evidence) -> None:
    """The decoder's model case of the latest run that has one: tokens/s (the run's paired
    speedup when it has it) for speed claims, weight bytes for sizes."""
    this, base = claim.measure.this, claim.measure.baseline
    found = evidence.latest_decoder_case()
    if found is None:
        check.detail = (f"needs a benchmark run with the decoder's model case: koschei benchmark "
                        f"--model {DEFAULT_DECODER_CONFIG}")
        return
    run, case = found
    label = f"decoder/{case.get('config')}_decode_{case.get('context')}"
    check.run, check.case = run.run_id, label
    weights = case.get("weights") or {}
    mine, theirs = weights.get(this) or {}, weights.get(base) or {}
    if case.get("verdict") != "ok":
        check.detail = (f"run {run.run_id}: {label} was {case.get('verdict')}: fix it and "
                        f"benchmark again (koschei benchmark --model {case.get('config')})")
        return
    threads = run.data.get("threads")
    where = f"{label}, {threads} thread(s)" if threads else label
    if claim.metric in SPEED_METRICS:
        rates = mine.get("tokens_per_s"), theirs.get("tokens_per_s")
        if not all(isinstance(rate, (int, float)) and rate > 0 for rate in rates):
            check.detail = f"run {run.run_id}: {label} has no tokens/s for {this} and {base}"
            return
        paired = case.get(f"speedup_{this}_vs_{base}")
        check.measured_factor = (float(paired) if isinstance(paired, (int, float)) and paired > 0
                                 else rates[0] / rates[1])
        check.detail = (f"decoding tokens/s {this} {rates[0]:.1f} / {base} {rates[1]:.1f}"
                        + (" (paired rounds)" if paired else "") + f" on {where}")
        per_token = mine.get("bytes_per_token"), theirs.get("bytes_per_token")
        if all(isinstance(value, (int, float)) and value > 0 for value in per_token):
            check.detail += (f"; bytes a step reads {this} {per_token[0] / 1e6:.1f} MB, {base} "
                             f"{per_token[1] / 1e6:.1f} MB")
        return
    sizes = mine.get("weight_bytes"), theirs.get("weight_bytes")
    if not all(isinstance(value, (int, float)) and value > 0 for value in sizes):
        check.detail = f"run {run.run_id}: {label} has no weight bytes for {this} and {base}"
        return
    check.measured_factor = sizes[1] / sizes[0]
    check.detail = (f"decoder weight bytes {base} {sizes[1]:,} / {this} {sizes[0]:,} on {where}")


# how far a measured complexity exponent may sit above the claimed one and still confirm it
# (fixed costs and caches bend a measured curve; the upper half of the lengths is fitted)
EXPONENT_SLACK = 0.2


def measure_complexity(check: ClaimCheck, claim: Any, subject: Any, evidence: Evidence) -> None:
    """An exponent claim (cost ~ N^value, e.g. O(N) against attention's O(N^2)) against the
    latest crossover case (``koschei benchmark --select none --model crossover``): the slope of
    log time against log length of the subject's prefill, beside softmax attention's, and of
    their decoding steps per token. Confirmed when the prefill exponent is at most the claimed
    one plus EXPONENT_SLACK and below attention's; refuted when it is not below attention's."""
    if claim.unit.strip().lower() != "exponent" or "memory" in claim.baseline.lower():
        return  # an exponent of memory (FlashAttention's O(N)) is not one of time
    for run in reversed(evidence.benchmarks):
        for case in run.data.get("crossovers") or []:
            exponents = case.get("exponents") or {} if isinstance(case, dict) else {}
            prefill, decode = exponents.get("prefill") or {}, exponents.get("decode") or {}
            mine = prefill.get(subject.name)
            theirs = prefill.get("attention")
            if mine is None or theirs is None:
                continue
            check.run = run.run_id
            check.case = case.get("label")
            check.measured_factor = mine
            if mine <= claim.value + EXPONENT_SLACK and mine < theirs:
                check.verdict = "confirmed"
            elif mine < theirs:
                check.verdict = "partly"
            else:
                check.verdict = "refuted"
            check.detail = (f"prefill time ~ N^{mine:.2f} for {subject.name}, N^{theirs:.2f} "
                            f"for attention")
            if decode.get(subject.name) is not None and decode.get("attention") is not None:
                check.detail += (f"; a decoding step ~ N^{decode[subject.name]:.2f} against "
                                 f"N^{decode['attention']:.2f} (the context's length)")
            check.detail += f" (run {run.run_id}, the crossover case)"
            return


MEASURES = {"weights": measure_weights, "kv_cache": measure_kv_cache,
            "attention_memory": measure_attention_memory, "decoder": measure_decoder}


# --- what would measure a claim -------------------------------------------------------------------


def _example_case(claim: Any, subject: Any) -> str:
    if claim.case:
        return f" (e.g. {claim.case})"
    bench = subject.spec.bench
    return f" (e.g. {case_label(bench.cases[0])})" if bench is not None and bench.cases else ""


def what_would_measure(spec_set: Any, loaded: Any, claim: Any) -> str:
    """Why a claim has no measured value here and what would give it one: the spec to
    implement, the bench case or baseline to add, the command to run."""
    spec = loaded.spec
    subject = provider_of(spec_set, loaded)
    target = subject.name
    baseline = claim.baseline.strip()
    other = spec_set.get(baseline)
    factor = claimed_factor(claim.metric, claim.value, claim.unit)
    example = _example_case(claim, subject)
    if claim.metric == "accuracy":
        return (f"model quality (accuracy): needs models trained with and without {spec.name} and "
                "evaluated on one task; koschei's benchmarks time kernels, they do not train or "
                "evaluate models")
    if claim.metric == "complexity":
        from koschei.bench.crossover import CONTENDERS

        if "memory" in baseline.lower():
            reason = (f"an exponent of memory: needs the bytes {target} holds at several "
                      "sequence lengths N, not its time (a claim with measure: attention_memory "
                      "compares the bytes at one bench case)")
        elif target in CONTENDERS:
            reason = ("asymptotic: needs the crossover case, which times it at lengths from "
                      "64 to 32k: koschei benchmark --select none --model crossover")
        else:
            reason = (f"asymptotic: needs bench cases of {target} at several sequence lengths N, "
                      "the other sizes fixed, to fit the exponent of its cost against N")
    elif factor is None:
        return (f"{claim.value:g} {claim.unit} is an absolute figure from another setup: only a "
                "ratio against a baseline measured on this machine compares")
    elif ABSOLUTE_FIGURE.match(baseline):
        reason = (f"the baseline {baseline!r} is a figure from another setup: needs {target} "
                  "measured here against a contender timed or sized on this machine (e.g. the "
                  "PyTorch model doing the same job, as a bench baseline)")
    elif claim.measure is not None:
        reason = (f"its {claim.measure.kind} figures ({claim.measure.this} against "
                  f"{claim.measure.baseline}) are computed from shapes once it is implemented")
    elif claim.metric in SPEED_METRICS:
        lower = baseline.lower()
        if lower in NUMPY_BASELINES or lower in TORCH_BASELINES:
            reason = f"needs a benchmark of {target}: koschei benchmark -k {target}"
        elif other is not None and provider_of(spec_set, other).name == target:
            reason = (f"needs a bench baseline of {target} doing {baseline!r} instead of "
                      f"{spec.name}, timed beside its engine on a case{example}")
        elif other is not None:
            theirs = provider_of(spec_set, other)
            via = f" ({theirs.name}'s code)" if theirs is not other else ""
            if other.status == "planned":
                reason = (f"needs {other.name} implemented and benchmarked beside {target} on a "
                          f"shared bench case{example}: koschei benchmark -k {target} -k "
                          f"{other.name}")
            elif theirs.spec.bench is None:
                reason = (f"needs {target} timed beside {other.name}{via} on the same model and "
                          "input (a model case of koschei benchmark)")
            else:
                reason = (f"needs a benchmark run with {target} and {theirs.name}{via} on a shared "
                          f"bench case{example}: koschei benchmark -k {target} -k {theirs.name}")
        else:
            reason = (f"needs a bench baseline doing {baseline!r} in {target}'s bench "
                      f"(bench.baselines: Python defining baseline(...)), timed beside the engine "
                      f"on a case{example}")
    elif other is not None and other.status == "planned":
        reason = (f"needs {other.name} implemented with a signature and bench cases shared with "
                  f"{target}, or a measure on the claim (koschei.specs.measures: a weight format, "
                  "a KV cache layout)")
    elif other is not None:
        reason = (f"needs bench cases shared by {target} and {other.name}, to compare their "
                  "tensor bytes")
    else:
        reason = (f"needs the sizes of {baseline!r}: a measure on the claim "
                  "(koschei.specs.measures: weights, kv_cache, attention_memory or decoder), or a "
                  "spec of it with a signature and bench cases")
    if spec.status == "planned":
        return (f"planned: implement {spec.name} (a kernel, a composition, or provided_by a spec "
                f"that does it). Then: {reason}")
    return reason


def check_claim(spec_set: Any, loaded: Any, claim: Any, evidence: Evidence) -> ClaimCheck:
    """One claim against this machine: a measured factor and a verdict, or the reason there is
    none and what would measure it."""
    spec = loaded.spec
    check = ClaimCheck(spec=spec.name, status=spec.status, metric=claim.metric,
                       baseline=claim.baseline, claimed=claim.value, unit=claim.unit,
                       source=claim.source,
                       claimed_factor=claimed_factor(claim.metric, claim.value, claim.unit))
    subject = provider_of(spec_set, loaded)  # the spec whose code measures it
    baseline_name = claim.baseline.strip()
    other = spec_set.get(baseline_name)  # a spec named so, or with that alias
    bench_baselines = subject.spec.bench.baselines if subject.spec.bench is not None else {}
    measurable = (claim.metric in (*SPEED_METRICS, *SIZE_METRICS)
                  and check.claimed_factor is not None and spec.status != "planned")
    if claim.metric == "complexity" and spec.status != "planned":
        measure_complexity(check, claim, subject, evidence)
        if not check.detail:
            check.detail = what_would_measure(spec_set, loaded, claim)
        return check
    if not measurable:
        pass
    elif claim.measure is not None:
        MEASURES[claim.measure.kind](check, claim, subject, evidence)
    elif claim.metric in SPEED_METRICS:
        lower = baseline_name.lower()
        if lower in NUMPY_BASELINES:
            measure_speed_vs_library(check, subject.name, "numpy", claim.case,
                                     evidence.benchmarks)
        elif lower in TORCH_BASELINES:
            measure_speed_vs_library(check, subject.name, "torch", claim.case,
                                     evidence.benchmarks)
        elif baseline_name in bench_baselines:
            measure_speed_vs_library(check, subject.name, baseline_name, claim.case,
                                     evidence.benchmarks)
        elif other is not None and provider_of(spec_set, other).name != subject.name \
                and provider_of(spec_set, other).spec.bench is not None:
            measure_speed_vs_spec(check, subject.name, provider_of(spec_set, other).name,
                                  claim.case, evidence.benchmarks)
    elif other is not None and other.status != "planned":
        measure_size_vs_spec(check, subject, provider_of(spec_set, other), claim.case)
    if check.measured_factor is not None and check.claimed_factor is not None:
        check.verdict = verdict_for(check.claimed_factor, check.measured_factor)
        if claim.unit.strip() in ("%", "percent"):
            check.detail += f" (measured: {as_percent(claim.metric, check.measured_factor)})"
    elif not check.detail:
        check.detail = what_would_measure(spec_set, loaded, claim)
    return check


def as_percent(metric: str, factor: float) -> str:
    """A measured factor in a percentage claim's terms: a saving (sizes) or a gain (speed)."""
    if metric in SIZE_METRICS:
        return f"{-(1.0 - 1.0 / factor) * 100:+.1f}%"
    return f"{(factor - 1.0) * 100:+.1f}%"


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
            done: set[str]) -> Prediction:
    """A planned spec's claim, discounted by what measured claims of its kind realized here;
    ``done``: the specs whose technique the engine does (implemented, composed, provided)."""
    spec = loaded.spec
    factor = claimed_factor(claim.metric, claim.value, claim.unit)
    missing = [name for name in spec.requires if name not in done]
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


def evolve_targets(workspace: Workspace, spec_set: Any, benchmarks: list[PhaseRecord],
                   searches: list[PhaseRecord], fingerprint: str) -> list[EvolveTarget]:
    """Every measured bench case of an implemented kernel with tunables, best target first.

    The score is the case's headroom to its roofline (1 - the fraction reached in the latest
    benchmark of the spec), halved for each search of that case on this machine that kept
    nothing since the last one that kept a gain, and 0 once a search has evaluated every
    configuration of the spec's tunables (tuned to exhaustion). Searches count only while the
    spec and the templates are as they were for them (their digests in ``evolve.json``): a
    changed kernel is a new target.
    """
    from koschei.phases.evolve import templates_digest

    bench = latest_bench_cases(benchmarks)
    targets: list[EvolveTarget] = []
    for loaded in spec_set:
        spec = loaded.spec
        if spec.status != "implemented" or spec.kernel is None or not spec.tunables \
                or spec.name not in bench:
            continue
        run_id, cases = bench[spec.name]
        digest = templates_digest(workspace, loaded)
        tunables = set(spec.tunables)
        for case in cases:
            fraction = case.get("roofline_fraction")
            if case.get("verdict") != "ok" or not isinstance(fraction, (int, float)):
                continue
            target = EvolveTarget(spec=spec.name, case=str(case.get("case")), run=run_id,
                                  roofline_fraction=float(fraction),
                                  command=f"koschei evolve {spec.name} --case {case.get('case')}")
            for search in searches:
                data = search.data
                if (data.get("spec"), data.get("case"), data.get("fingerprint"),
                        data.get("spec_sha256"), data.get("templates_sha256")) != (
                        spec.name, target.case, fingerprint, loaded.sha256, digest):
                    continue
                if data.get("stopped") == "interrupted":
                    continue
                target.searches += 1
                if data.get("stopped") == "exhausted" and set(data.get("searched") or ()) \
                        == tunables:
                    target.exhausted = True
                kept = data.get("verdict") == "improved" and data.get("tuned_values_file")
                target.fruitless = 0 if kept else target.fruitless + 1
            headroom = max(0.0, 1.0 - target.roofline_fraction)
            target.score = 0.0 if target.exhausted else headroom * 0.5 ** target.fruitless
            target.reason = f"reaches {target.roofline_fraction * 100:.0f}% of the roofline"
            if target.exhausted:
                target.reason += "; tuned to exhaustion on this machine"
            elif target.fruitless:
                target.reason += (f"; {target.fruitless} search(es) here kept nothing since the "
                                  "last gain")
            targets.append(target)
    targets.sort(key=lambda t: (-t.score, t.roofline_fraction, t.spec, t.case))
    return targets


def next_evolve_target(workspace: Workspace, *, exclude: Any = (),
                       select: list[str] | None = None) -> EvolveTarget | None:
    """The best evolve target now (``evolve_targets`` over the whole run history), leaving out
    the (spec, case) pairs in ``exclude``, specs not in ``select``, and targets scored 0 (tuned
    to exhaustion); None when nothing is left."""
    from koschei.bench.machine import fingerprint
    from koschei.specs import load_specs

    excluded = {tuple(pair) for pair in exclude}
    targets = evolve_targets(workspace, load_specs(workspace),
                             phase_history(workspace, "benchmark"),
                             phase_history(workspace, "evolve"), fingerprint())
    for target in targets:
        if target.score > 0 and (target.spec, target.case) not in excluded \
                and (select is None or target.spec in select):
            return target
    return None


def plan_next_steps(spec_set: Any, claims: list[ClaimCheck], predictions: list[Prediction],
                    benchmarks: list[PhaseRecord], test_runs: list[PhaseRecord],
                    workspace: Workspace, retune_below: float = RETUNE_ROOFLINE,
                    targets: list[EvolveTarget] | None = None) -> list[NextStep]:
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
            command = f"try other tunables in {loaded.relpath}, then koschei cycle"
            score = 1.0 - worst
            mine = [target for target in targets or [] if target.spec == name]
            if mine:  # searchable: the best target of the spec says how, and how promising
                best = mine[0]
                reason = f"{best.case} {best.reason} (run {run_id})"
                command, score = best.command, best.score
            if refuted:
                reason += "; " + "; ".join(
                    f"{check.verdict}: ×{check.measured_factor:.2f} vs {check.baseline} "
                    f"(claimed ×{check.claimed_factor:.2f})" for check in refuted)
            add("retune", name, reason, command, score=score)

    by_spec: dict[str, list[Prediction]] = {}
    for prediction in predictions:
        by_spec.setdefault(prediction.spec, []).append(prediction)
    done = {loaded.spec.name for loaded in loaded_specs if loaded.spec.status in DONE_STATUSES}
    for loaded in loaded_specs:
        spec = loaded.spec
        if spec.status != "planned" or any(r not in done for r in spec.requires):
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
        result.notes.append("no benchmark results in runs/: claims measured by a benchmark are "
                            "unmeasured (run koschei benchmark); sizes from shapes are computed")

    progress.step("checking the claims against the measurements")
    measured_against = Evidence(spec_set, benchmarks)
    for loaded in spec_set:
        for claim in loaded.spec.claims:
            result.claims.append(check_claim(spec_set, loaded, claim, measured_against))

    evidence = evidence_by_kind(result.claims)
    result.evidence = evidence
    done = {loaded.spec.name for loaded in spec_set if loaded.spec.status in DONE_STATUSES}
    progress.step("predicting the gains of planned specs")
    for loaded in spec_set:
        if loaded.spec.status == "planned":
            for claim in loaded.spec.claims:
                result.predictions.append(predict(loaded, claim, evidence, done))

    from koschei.bench.machine import fingerprint

    result.evolve_targets = evolve_targets(workspace, spec_set, benchmarks,
                                           phase_history(workspace, "evolve"), fingerprint())
    result.next_steps = plan_next_steps(spec_set, result.claims, result.predictions, benchmarks,
                                        test_runs, workspace, options.retune_below,
                                        result.evolve_targets)
    return result
