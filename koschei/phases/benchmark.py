"""The benchmark phase: each implemented spec's bench cases against NumPy, PyTorch and the roofline.

For every case: inputs are drawn from a seeded generator (float inputs standard normal, integer
inputs uniform in their declared range), the engine runs once (compilation, never timed) into a
preallocated ``out=`` buffer and that output is compared with the spec's NumPy reference at the
spec's tolerance. A mismatch makes the case "wrong" and it is not timed. Every other contender
is checked the same way before it is timed, and left out (with a note) when it disagrees.

The contenders are the strongest their users would run:

- the engine with ``out=``; the NumPy reference; the spec's ``bench.baselines``;
- PyTorch as an expert writes it: ``bench.torch`` prepares the inputs once, outside the timed
  call (PyTorch's own layouts, tables computed once, no mask where the data implies none), and
  only ``run`` is timed; without it, ``tests.torch`` on tensors that share the arrays' memory;
- ``torch_compile``: the same ``run`` through ``torch.compile`` (``Options.torch_compile``); the
  compilation is its first call, never timed, and its seconds are reported.

"×PyTorch" is against the fastest PyTorch variant of the same rounds. Inputs a case names
``cold`` (the weights of a decoding step) are rotated through enough copies that none is still
cached when it is used again (``Calibration.cold_bytes``), for every contender alike, as in a
real model; ``engine_warm`` times the engine on one warm copy beside them.

Timing: after warm-up, interleaved, round by round, with the order rotating each round, many
calls per sample for tiny cases (a sample lasts at least ~1 ms), until the per-case budget runs
out or every median is stable. Numba, PyTorch and NumPy's BLAS run on the same thread count,
except when OpenBLAS's idle threads are measured to spin after a call (its default: ~0.1 s),
which would steal a core from whichever contender is timed next: then NumPy's BLAS is held to
one thread, and a note says so (``blas_threads_for``; the ``koschei`` command sets
OPENBLAS_THREAD_TIMEOUT so that they sleep at once).

Derived figures use the spec's ``bench.bytes`` (of which ``bench.written`` are written, by
default the outputs' bytes) and ``bench.flops`` formulas and this machine's calibration
(``koschei.bench.calibration``): GB/s, GFLOP/s, intensity, and the roofline fraction against the
case's own ceiling — the bandwidth that the memory level its working set is served from allows
for its mix of reads and writes, and the cores' multiply-add peak. A case above 100% of its ceiling is
``over_ceiling``: a benchmark error reported with its numbers, never a headline. Speedups are
medians of the per-round time ratios. The spec's ``bench.goals`` are reported as met or short by
how much.

``Options.contention`` also times the engine beside one other busy process, in alternating
rounds (``koschei.bench.timing.measure_contention``), and reports the slowdown.

Models (``koschei.bench.models``): the prefill and decoding speed of the engine's decoder,
on the workspace's kernels, with fp32 and with ternary weights, beside the bandwidth ceiling of
each, and against llama.cpp on the same weights and thread count when llama-cpp-python is
installed; by default for ``igla_v2`` when no spec is selected (``Options.models``). The encoder
(``koschei.bench.encoder``, ``minilm``): all-MiniLM-L6-v2's embeddings by the engine's ``MiniLM``
in fp32 and int8 against sentence-transformers and ONNX Runtime on the same weights; by default
beside the decoder. The crossover case (``koschei.bench.crossover``, ``crossover``, only when
asked for): one layer's linear-time token mixing (GLA, Mamba-2's SSD, gated DeltaNet) against
softmax attention with a KV cache (the engine's and PyTorch SDPA) over context lengths, for
decoding and prefill, with the length from which each linear layer is faster.

Nothing is measured when an engine module it needs is not generated: ``check_generated`` stops
the run at once with the command to run.

With ``compare``, each case's engine samples are tested against an earlier run's with a one-sided
Mann-Whitney U test, both as absolute times and relative to the NumPy reference of the same round
(which cancels drift of the machine between runs); a regression is slower by more than
``fail_on_regression`` percent AND significant at p < 0.01, in both views.

This module runs the phase; the measuring is ``koschei.bench``'s: the inputs and the correctness
gate (``koschei.bench.check``), interleaved timing and its statistics (``koschei.bench.timing``),
the derived figures (``koschei.bench.roofline``), the case results (``koschei.bench.results``),
the charts and the README table (``koschei.bench.report``).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from koschei.bench import calibration as machine_calibration
from koschei.bench import crossover as bench_crossover
from koschei.bench import encoder as bench_encoder
from koschei.bench import machine
from koschei.bench import models as bench_models
from koschei.bench.check import (
    case_params,
    compare_results,
    draw_inputs,
    formula_names,
    kernel_call,
    load_engine_module,
    load_source_function,
    load_torch_reference,
    output_buffer,
    source_module,
    state_buffers,
    torch_available,
)
from koschei.bench.crossover import CrossoverCaseResult
from koschei.bench.encoder import EncoderCaseResult
from koschei.bench.models import ModelCaseResult
from koschei.bench.results import CaseResult
from koschei.bench.roofline import derive, output_bytes
from koschei.bench.timing import (
    BUSY_SHARE,
    SIGNIFICANCE_P,
    ContenderTiming,
    OtherWork,
    mann_whitney_p,
    measure_contention,
    measure_interleaved,
    paired_speedup,
)
from koschei.errors import UsageError
from koschei.phases.base import Progress, Result, SilentProgress
from koschei.specs.validate import case_label
from koschei.workspace import Workspace

DEFAULT_CHANGE_THRESHOLD_PCT = 5.0  # labels faster/slower when no regression gate is given


@dataclass
class Options:
    select: list[str] | None = None  # spec names; None: every implemented spec
    threads: int | None = None  # None: all cores
    budget_s: float = 2.0  # timing budget per case
    record_dir: Path | None = None  # the run record this benchmark belongs to
    recalibrate: bool = False
    compare: str | None = None  # "latest" or a run id
    fail_on_regression: float | None = None  # percent
    charts: bool = True  # roofline.png and speedup.png into record_dir (needs matplotlib)
    readme: bool = False  # rewrite the benchmark block of the workspace's README.md
    # decoder configs whose decoding speed is measured (koschei.bench.models), and "minilm" for
    # the encoder case (koschei.bench.encoder); None: igla_v2 and minilm when no spec is
    # selected, none otherwise
    models: list[str] | None = None
    torch_compile: bool = True  # also time each PyTorch contender compiled by torch.compile
    contention: bool = False  # also time the engine beside one other busy process


@dataclass
class BenchmarkResult(Result):
    threads: int
    fingerprint: str
    machine: dict[str, Any]
    calibration: dict[str, Any]
    thread_control: dict[str, Any]
    started_at: str
    budget_s: float
    load_average: float | None  # 1-minute load when the benchmark started
    compared_with: str | None = None
    fail_on_regression: float | None = None
    cases: list[CaseResult] = field(default_factory=list)
    models: list[ModelCaseResult] = field(default_factory=list)  # decoding speed of models
    encoders: list[EncoderCaseResult] = field(default_factory=list)  # sentence embeddings
    # linear-time layers against softmax attention over context lengths
    crossovers: list[CrossoverCaseResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    charts: list[str] = field(default_factory=list)  # image files beside the run record

    @property
    def ok(self) -> bool:
        """False when any case is wrong, a gated regression, or could not be measured (error)."""
        return all(case.verdict == "ok"
                   for case in [*self.cases, *self.models, *self.encoders, *self.crossovers])

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for case in [*self.cases, *self.models, *self.encoders, *self.crossovers]:
            counts[case.verdict] = counts.get(case.verdict, 0) + 1
        return counts


# --- goals --------------------------------------------------------------------------------------


CONTENDER_NAMES = {"numpy": "NumPy", "torch": "PyTorch", "torch_compile": "torch.compile"}


def goal_text(goal: Any) -> str:
    """``roofline ≥ 80%`` or ``×PyTorch ≥ 3``."""
    if goal.roofline is not None:
        return f"roofline ≥ {goal.roofline:.0%}"
    return f"×{CONTENDER_NAMES.get(goal.vs, goal.vs)} ≥ {goal.at_least:g}"


def evaluate_goals(goals: list[Any], case: CaseResult) -> list[dict[str, Any]]:
    """Each of a bench case's goals: target, measured, met, and when not met, how far short in
    percent of the target. ``vs: torch`` is the fastest PyTorch variant of the same rounds."""
    evaluated: list[dict[str, Any]] = []
    speedups = {"numpy": case.speedup_vs_numpy, "torch": case.speedup_vs_torch,
                "torch_compile": case.speedup_vs_torch_compile,
                **(getattr(case, "speedup_vs_baselines", None) or {})}
    for goal in goals:
        if goal.roofline is not None:
            kind, target, measured = "roofline", goal.roofline, case.roofline_fraction
        else:
            kind, target, measured = f"vs_{goal.vs}", goal.at_least, speedups.get(goal.vs)
        met = None if measured is None else measured >= target
        short = None if measured is None or met else (1 - measured / target) * 100
        evaluated.append({"goal": goal_text(goal), "kind": kind, "target": target,
                          "measured": measured, "met": met, "short_by_pct": short})
    return evaluated


# --- contenders of one case ---------------------------------------------------------------------


MAX_COLD_COPIES = 4096


def cold_input_sets(inputs: dict[str, Any], cold: list[str], cold_bytes: int,
                    ) -> list[dict[str, Any]]:
    """``inputs`` and copies of it whose ``cold`` arrays are each in memory of their own, enough
    that together they hold ``cold_bytes``: a contender that uses them in turn finds none of the
    cold arrays still cached (a real model reads each layer's weights once per token)."""
    per_copy = sum(inputs[name].nbytes for name in cold if inputs.get(name) is not None)
    if not cold or per_copy == 0:
        return [inputs]
    copies = min(MAX_COLD_COPIES, max(2, math.ceil(cold_bytes / per_copy)))
    return [inputs] + [{**inputs, **{name: np.copy(inputs[name]) for name in cold
                                     if inputs.get(name) is not None}}
                       for _ in range(copies - 1)]


def rotating(calls: list[Callable[[], Any]]) -> Callable[[], Any]:
    """One call that runs ``calls`` in turn (the same call when there is one)."""
    if len(calls) == 1:
        return calls[0]
    turn = itertools.cycle(calls)

    def call() -> Any:
        return next(turn)()
    return call


@dataclass
class TorchContender:
    """The PyTorch contender of a spec: ``prepare`` (outside the timed call) returns the
    arguments of ``run`` (timed), ``result`` turns its output into the reference's NumPy form."""

    prepare: Callable[..., tuple[Any, ...]]
    run: Callable[..., Any]
    result: Callable[[Any], Any]


def _torch_to_numpy(output: Any) -> Any:
    if isinstance(output, tuple):
        return tuple(t.detach().numpy() for t in output)
    return output.detach().numpy()


def torch_contender(spec: Any, origin: str, params: dict[str, Any]) -> TorchContender | None:
    """``bench.torch`` as written, or else ``tests.torch`` on the inputs as tensors that share
    the arrays' memory (PyTorch's layout is then the spec's own); None without either."""
    import torch

    source = spec.bench.torch if spec.bench is not None else None
    if source is not None:
        namespace = source_module(source, f"{origin}: bench.torch", torch=torch).__dict__
        return TorchContender(prepare=namespace["prepare"], run=namespace["run"],
                              result=namespace.get("result", _torch_to_numpy))
    if not spec.tests.torch:
        return None
    torch_reference = load_torch_reference(spec.tests.torch, origin)
    names = [arg.name for arg in spec.signature.inputs]

    def prepare(**given: Any) -> tuple[Any, ...]:  # the inputs (params are bound in run)
        return tuple(None if given[name] is None else torch.from_numpy(given[name])
                     for name in names)

    def run(*tensors: Any) -> Any:
        return torch_reference(**dict(zip(names, tensors, strict=True)), **params)

    return TorchContender(prepare=prepare, run=run, result=_torch_to_numpy)


def add_torch_contenders(contenders: dict[str, Callable[[], Any]], result: CaseResult,
                         spec: Any, origin: str, input_sets: list[dict[str, Any]],
                         params: dict[str, Any], expected: Any, compiled: bool) -> None:
    """PyTorch eager and, with ``compiled``, ``torch.compile``d, each checked against the
    reference before it joins the contenders (a note says why one is left out)."""
    import torch

    try:
        contender = torch_contender(spec, origin, params)
        if contender is None:
            return
        with torch.inference_mode():
            argument_sets = [contender.prepare(**inputs, **params) for inputs in input_sets]
            output = contender.result(contender.run(*argument_sets[0]))
    except Exception as error:  # noqa: BLE001 - the case goes on without it
        result.notes.append(f"torch left out: {type(error).__name__}: {error}")
        return
    joined = join_if_correct(contenders, result, spec, "torch", contender.run, argument_sets,
                             output, expected)
    if not joined or not compiled:
        return
    try:
        torch._dynamo.reset()  # each case compiles afresh: no cache limit reached across cases
        compiled_run = torch.compile(contender.run, dynamic=False)
        started = time.perf_counter()
        with torch.inference_mode():
            output = contender.result(compiled_run(*argument_sets[0]))
        result.torch_compile_s = round(time.perf_counter() - started, 2)
    except Exception as error:  # noqa: BLE001
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        result.notes.append(f"torch_compile left out: {type(error).__name__}: {message}")
        return
    join_if_correct(contenders, result, spec, "torch_compile", compiled_run, argument_sets,
                    output, expected)


def join_if_correct(contenders: dict[str, Callable[[], Any]], result: CaseResult, spec: Any,
                    name: str, run: Callable[..., Any], argument_sets: list[tuple[Any, ...]],
                    output: Any, expected: Any) -> bool:
    """Add ``run`` over the argument sets in turn as the contender ``name`` when its ``output``
    matches the reference; else a note says why it is left out."""
    matches, _, reason = compare_results(spec, output, expected)
    if not matches:
        result.notes.append(f"{name} left out: it disagrees with the reference: {reason}")
        return False
    contenders[name] = rotating([lambda a=a: run(*a) for a in argument_sets])
    return True


@contextmanager
def _no_autograd(use_torch: bool) -> Iterator[None]:
    """PyTorch without autograd bookkeeping for the whole timing (it is inference)."""
    if not use_torch:
        yield
        return
    import torch

    with torch.inference_mode():
        yield


# --- one case -----------------------------------------------------------------------------------


def run_case(workspace: Workspace, loaded: Any, case: Any, options: Options,
             calibration: machine_calibration.Calibration, use_torch: bool,
             progress: Progress) -> CaseResult:
    spec = loaded.spec
    label = case_label(case)
    budget_s = options.budget_s
    result = CaseResult(spec=spec.name, case=label, verdict="error",
                        cold_inputs=list(case.cold))
    try:
        params = case_params(spec, case)
        result.params = dict(params)
        result.dims = dict(case.dims)
        names = formula_names(case, params)
        inputs = draw_inputs(spec, case, params, names, loaded.relpath)
        module = load_engine_module(workspace, spec.name)
        engine = getattr(module, spec.name)
        reference = module.reference
        input_sets = cold_input_sets(inputs, list(case.cold), calibration.cold_bytes)
        if case.cold:
            result.cold_copies = len(input_sets)
        # one output: every call writes into one out=; several: new arrays each call (part of
        # what is measured). A final state asked for from a given one: into buffers made once
        out = output_buffer(spec, case, names)
        buffers = state_buffers(spec, inputs, params)
        run_engine = rotating([kernel_call(engine, given, params, out, buffers)
                               for given in input_sets])
        run_engine_warm = kernel_call(engine, inputs, params, out, buffers)
    except Exception as error:  # noqa: BLE001 - reported per case, the run goes on
        result.error = f"{type(error).__name__}: {error}"
        return result

    progress.step(f"benchmark {spec.name}/{label}: compiling and checking against the reference")
    try:
        engine_output = run_engine_warm()  # compiles (never timed)
        expected = reference(**inputs, **params)
    except Exception as error:  # noqa: BLE001
        result.error = f"{type(error).__name__}: {error}"
        return result
    matches, max_abs_error, reason = compare_results(spec, engine_output, expected)
    result.max_abs_error = max_abs_error
    if not matches:
        result.verdict = "wrong"
        result.error = f"engine output does not match the reference: {reason}"
        return result

    numpy_contender = reference
    if spec.bench is not None and spec.bench.numpy is not None:
        try:
            numpy_contender = load_source_function(spec.bench.numpy, "numpy_contender",
                                                   f"{loaded.relpath}: bench.numpy")
            matches, _, reason = compare_results(spec, numpy_contender(**inputs, **params),
                                                 expected)
            if not matches:
                raise ValueError(f"it disagrees with the reference: {reason}")
        except Exception as error:  # noqa: BLE001 - the reference is timed instead
            result.notes.append(f"bench.numpy left out, the reference timed as NumPy: "
                                f"{type(error).__name__}: {error}")
            numpy_contender = reference
    contenders: dict[str, Callable[[], Any]] = {
        "engine": run_engine,
        "numpy": rotating([lambda given=given: numpy_contender(**given, **params)
                           for given in input_sets]),
    }
    if case.cold:
        contenders["engine_warm"] = run_engine_warm
    for name, source in (spec.bench.baselines if spec.bench is not None else {}).items():
        try:
            # a baseline that makes its own form of the weights rotates COLD_BYTES of them
            baseline = load_source_function(source, "baseline", f"{loaded.relpath}: {name}",
                                            COLD_BYTES=calibration.cold_bytes if case.cold else 0)
            baseline(**inputs, **params)  # warm: a baseline may build what it reuses
        except Exception as error:  # noqa: BLE001 - the case goes on without it
            result.notes.append(f"baseline {name} left out: {type(error).__name__}: {error}")
            continue
        contenders[name] = rotating([lambda baseline=baseline, given=given:
                                     baseline(**given, **params) for given in input_sets])
    if use_torch:
        progress.step(f"benchmark {spec.name}/{label}: preparing PyTorch"
                      + (" and torch.compile" if options.torch_compile else ""))
        add_torch_contenders(contenders, result, spec, loaded.relpath, input_sets, params,
                             expected, options.torch_compile and case.torch_compile)
        if options.torch_compile and not case.torch_compile:
            result.notes.append("torch_compile left out: at this case the PyTorch contender "
                                "loops over tokens or chunks, which torch.compile unrolls")

    progress.step(f"benchmark {spec.name}/{label}: timing {', '.join(contenders)}")
    try:
        with _no_autograd(use_torch), OtherWork() as other_work:
            timings, stopped = measure_interleaved(contenders, budget_s)
        result.contenders, result.stopped = timings, stopped
        result.other_work_share = other_work.share
        if other_work.share is not None and other_work.share >= BUSY_SHARE:
            result.notes.append(
                f"other processes used {other_work.share:.0%} of the cores while this case was "
                "timed: parallel contenders lose more to them than serial ones")
        # the measured engine path must still produce the checked result
        matches, _, reason = compare_results(spec, run_engine_warm(), expected)
        if not matches:
            result.verdict = "wrong"
            result.error = f"engine output changed while timing: {reason}"
            result.contenders = {}
            return result
        engine_timing = timings["engine"]
        result.speedup_vs_numpy = paired_speedup(timings["numpy"], engine_timing)
        if "torch" in timings:
            result.speedup_vs_torch_eager = paired_speedup(timings["torch"], engine_timing)
        if "torch_compile" in timings:
            result.speedup_vs_torch_compile = paired_speedup(timings["torch_compile"],
                                                             engine_timing)
        variants = [name for name in ("torch", "torch_compile") if name in timings]
        if variants:
            result.torch_fastest = min(variants, key=lambda name: timings[name].median_s)
            result.speedup_vs_torch = paired_speedup(timings[result.torch_fastest],
                                                     engine_timing)
        if "engine_warm" in timings:
            result.warm_speedup = paired_speedup(engine_timing, timings["engine_warm"])
        for name in (spec.bench.baselines if spec.bench is not None else {}):
            if name in timings:
                result.speedup_vs_baselines[name] = paired_speedup(timings[name], engine_timing)
        if options.contention:
            progress.step(f"benchmark {spec.name}/{label}: the engine beside a busy process")
            import numba  # held to the run's thread count by limited_threads

            result.contention = measure_contention(run_engine, budget_s,
                                                   numba.get_num_threads())
        result.verdict = "ok"
        if spec.bench is not None:
            derive(result, spec.bench, names, calibration, output_bytes(expected))
            result.goals = evaluate_goals(case.goals, result)
    except Exception as error:  # noqa: BLE001
        result.verdict = "error"
        result.error = f"{type(error).__name__}: {error}"
        return result
    return result


# --- history ------------------------------------------------------------------------------------


def _benchmark_payload(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if isinstance(data, dict) and "cases" not in data and isinstance(data.get("result"), dict):
        data = data["result"]
    return data if isinstance(data, dict) and isinstance(data.get("cases"), list) else None


def earlier_runs(runs_dir: Path, exclude: Path | None) -> list[tuple[str, Path, dict[str, Any]]]:
    """Runs with benchmark results, oldest first: (run id, folder, benchmark result)."""
    found: list[tuple[str, str, Path, dict[str, Any]]] = []
    if not runs_dir.is_dir():
        return []
    excluded = exclude.resolve() if exclude is not None else None
    for folder in runs_dir.iterdir():
        if not folder.is_dir() or folder.name == "calibration" or folder.resolve() == excluded:
            continue
        payload = _benchmark_payload(folder / "benchmark.json")
        if payload is None:
            continue
        started = str(payload.get("started_at") or "")
        found.append((started, folder.name, folder, payload))
    found.sort(key=lambda item: (item[0], item[1]))
    return [(name, folder, payload) for _, name, folder, payload in found]


def load_baseline(workspace: Workspace, compare: str, exclude: Path | None,
                  fingerprint: str | None = None, threads: int | None = None,
                  ) -> tuple[str, dict[str, Any]] | None:
    """The earlier run to compare with: ``latest`` or a run id. None: no earlier run exists.

    ``latest`` is the latest run measured on ``fingerprint`` at ``threads`` threads (when given):
    runs of other machines or software are passed over, and when there are only such runs, the
    comparison is refused with what differs rather than silently skipped."""
    runs = earlier_runs(workspace.runs_dir, exclude)
    if compare == "latest":
        if fingerprint is not None:
            same = [run for run in runs if run[2].get("fingerprint") == fingerprint
                    and (threads is None or run[2].get("threads") == threads)]
            if same or not runs:
                return (same[-1][0], same[-1][2]) if same else None
        return (runs[-1][0], runs[-1][2]) if runs else None
    for name, _, payload in runs:
        if name == compare:
            return name, payload
    available = ", ".join(name for name, _, _ in runs[-5:]) or "none"
    raise UsageError(f"--compare {compare}: no run {compare!r} with benchmark results in "
                     f"{workspace.relative(workspace.runs_dir)}/ (latest runs: {available})",
                     hint="pass --compare latest or one of the run ids above")


def _change(now: list[float], before: list[float], threshold_pct: float) -> dict[str, Any]:
    """How ``now`` differs from ``before``: ratio of medians, percent change, one-sided
    Mann-Whitney p-value in the direction of the change, and the direction when it is both
    beyond ``threshold_pct`` and significant ("slower", "faster", else "unchanged")."""
    ratio = float(np.median(now) / np.median(before))
    change_pct = (ratio - 1.0) * 100.0
    p_value = None
    if len(now) >= 2 and len(before) >= 2:
        p_value = mann_whitney_p(now, before, "greater" if ratio >= 1.0 else "less")
    significant = p_value is not None and p_value < SIGNIFICANCE_P
    direction = "unchanged"
    if significant and change_pct > threshold_pct:
        direction = "slower"
    elif significant and change_pct < -threshold_pct:
        direction = "faster"
    return {"ratio": ratio, "change_pct": change_pct, "p_value": p_value,
            "significant": significant, "direction": direction}


def _per_round_ratios(contenders: dict[str, Any], numerator: str, denominator: str,
                      ) -> list[float] | None:
    def samples(name: str) -> list[float]:
        timing = contenders.get(name)
        values = timing.samples_s if isinstance(timing, ContenderTiming) else \
            (timing or {}).get("samples_s") or []
        return [float(v) for v in values]

    top, bottom = samples(numerator), samples(denominator)
    if not top or len(top) != len(bottom):
        return None
    return [t / b for t, b in zip(top, bottom, strict=True) if b > 0]


def compare_case(case: CaseResult, previous: dict[str, Any] | None, run_id: str,
                 threshold_pct: float) -> dict[str, Any] | None:
    """The engine against the same case of an earlier run.

    Two views of the change: the engine's own per-round times, and its per-round times relative
    to the NumPy reference of the same round, which cancels drift of the machine itself (load,
    clock) between the runs. A case is "slower" or "faster" only when both views agree (beyond
    the threshold, each significant); a change seen in absolute times only is drift.
    """
    if previous is None or case.verdict != "ok":
        return None
    contenders_before = previous.get("contenders") or {}
    before = contenders_before.get("engine")
    if not before or not before.get("samples_s"):
        return None
    absolute = _change(case.contenders["engine"].samples_s,
                       [float(v) for v in before["samples_s"]], threshold_pct)
    relative = None
    now_ratios = _per_round_ratios(case.contenders, "engine", "numpy")
    before_ratios = _per_round_ratios(contenders_before, "engine", "numpy")
    if now_ratios and before_ratios:
        relative = _change(now_ratios, before_ratios, threshold_pct)
    status = absolute["direction"]
    if relative is not None and relative["direction"] != status:
        status = "unchanged"
    return {"run": run_id, "previous_median_s": float(before.get("median_s") or
                                                      np.median(before["samples_s"])),
            "ratio": absolute["ratio"], "change_pct": absolute["change_pct"],
            "p_value": absolute["p_value"], "significant": absolute["significant"],
            "relative_to_numpy": relative, "threshold_pct": threshold_pct, "status": status}


def machine_differences(before: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """The fields of two machine descriptions that differ, as "field: before -> now"."""
    if not isinstance(before, dict):
        return []
    return [f"{key}: {before.get(key)} -> {now.get(key)}"
            for key in sorted(set(before) | set(now)) if before.get(key) != now.get(key)]


def check_comparable(run_id: str, baseline: dict[str, Any], fingerprint: str,
                     threads: int) -> None:
    """Refuse a comparison across machines, software versions or thread counts."""
    if baseline.get("fingerprint") != fingerprint:
        differences = machine_differences(baseline.get("machine"), machine.describe())
        detail = f"; {'; '.join(differences)}" if differences else ""
        raise UsageError(
            f"cannot compare with run {run_id}: it was measured on another machine or software "
            f"(fingerprint {baseline.get('fingerprint')} vs this machine's {fingerprint}"
            f"{detail}): its times are not comparable with these",
            hint="compare with a run made on this machine with these numpy/numba/torch versions")
    if baseline.get("threads") != threads:
        raise UsageError(
            f"cannot compare with run {run_id}: it ran on {baseline.get('threads')} threads, "
            f"this run on {threads}", hint=f"rerun with --threads {baseline.get('threads')}")


def apply_comparison(result: BenchmarkResult, run_id: str, baseline: dict[str, Any],
                     fail_on_regression: float | None) -> None:
    check_comparable(run_id, baseline, result.fingerprint, result.threads)
    threshold = fail_on_regression if fail_on_regression is not None else \
        DEFAULT_CHANGE_THRESHOLD_PCT
    previous_cases = {(c.get("spec"), c.get("case")): c for c in baseline["cases"]}
    for case in result.cases:
        case.compare = compare_case(case, previous_cases.get((case.spec, case.case)), run_id,
                                    threshold)
        if fail_on_regression is not None and case.compare and case.compare["status"] == "slower":
            case.verdict = "regression"
            relative = case.compare["relative_to_numpy"]
            against_numpy = (f"; {relative['change_pct']:+.1f}% relative to NumPy, "
                             f"p = {relative['p_value']:.2g}" if relative else "")
            case.error = (f"{case.compare['change_pct']:+.1f}% slower than run {run_id} "
                          f"(p = {case.compare['p_value']:.2g}{against_numpy}), beyond the "
                          f"{fail_on_regression:g}% gate")
    result.compared_with = run_id


# --- the phase ----------------------------------------------------------------------------------


def select_specs(spec_set: Any, select: list[str] | None) -> list[Any]:
    """The specs to measure: every benchmarkable one without ``select``, none for ["none"]
    (only the models of ``--model``)."""
    implemented = [loaded for loaded in spec_set.implemented() if loaded.spec.bench is not None]
    if not select:
        return implemented
    if select == ["none"]:
        return []
    by_name = {loaded.spec.name: loaded for loaded in implemented}
    unknown = [name for name in select if name not in by_name]
    if unknown:
        planned = [n for n in unknown if n in set(spec_set.names())]
        detail = (f" ({', '.join(planned)}: planned or without bench cases)" if planned else "")
        raise UsageError(f"--select: no benchmarkable spec named {', '.join(unknown)}{detail}",
                         hint=f"benchmarkable specs: {', '.join(sorted(by_name)) or 'none'}")
    return [by_name[name] for name in dict.fromkeys(select)]


def check_generated(workspace: Workspace, specs: list[str]) -> None:
    """A UsageError, before anything is measured, when the engine module of a spec to be
    benchmarked has not been generated in the workspace."""
    needed = list(dict.fromkeys(specs))
    missing = [name for name in needed
               if not (workspace.engine_dir / f"{name}.py").is_file()]
    if not missing:
        return
    folder = workspace.relative(workspace.engine_dir)
    what = ("nothing is generated yet" if len(missing) == len(needed) else
            f"{len(missing)} of {len(needed)} engine modules are not generated")
    raise UsageError(f"{what}: {folder}/ has no {', '.join(f'{n}.py' for n in missing)}",
                     hint="run `koschei code-generate` (or `koschei cycle`) first")


def model_selection(options: Options) -> tuple[list[str], list[str], list[str]]:
    """The decoder configs, the encoders (``minilm``) and the crossover case (``crossover``)
    ``options.models`` asks for; by default igla_v2 and minilm when no spec is selected, nothing
    otherwise (the crossover case only when asked for: it takes minutes)."""
    names = options.models
    if names is None:
        names = [] if options.select else [bench_models.DEFAULT_CONFIG, bench_encoder.MODEL]
    others = (bench_encoder.MODEL, bench_crossover.MODEL)
    return ([name for name in names if name not in others],
            [bench_encoder.MODEL] if bench_encoder.MODEL in names else [],
            [bench_crossover.MODEL] if bench_crossover.MODEL in names else [])


def run(workspace: Workspace, options: Options, progress: Progress | None = None,
        ) -> BenchmarkResult:
    from koschei.specs import load_specs

    progress = progress or SilentProgress()
    if options.budget_s <= 0:
        raise UsageError(f"--budget must be positive, got {options.budget_s}")
    if options.fail_on_regression is not None and options.fail_on_regression < 0:
        raise UsageError(f"--fail-on-regression must be a percentage >= 0, "
                         f"got {options.fail_on_regression}")
    if options.fail_on_regression is not None and options.compare is None:
        raise UsageError("--fail-on-regression needs --compare (latest or a run id)")
    if options.readme:
        from koschei.bench import report

        problem = report.readme_problem(workspace.root / "README.md")
        if problem:
            raise UsageError(f"--readme: {problem}", hint=(
                f"add a line {report.README_BEGIN} and a line "
                f"{report.README_END} where the table goes"))
    chosen = select_specs(load_specs(workspace), options.select)
    decoders, encoders, crossovers = model_selection(options)
    check_generated(workspace, [loaded.spec.name for loaded in chosen])
    import koschei.engine

    koschei.engine.use_workspace(workspace.root)  # kernels and models run the workspace's modules
    try:
        bench_models.check_configs(decoders)
    except UsageError as error:
        raise UsageError(error.message, hint=f"{error.hint}; the encoder: "
                                             f"{bench_encoder.MODEL}; linear-time layers "
                                             f"against attention: {bench_crossover.MODEL}"
                         ) from None
    threads = machine_calibration.resolve_threads(options.threads)
    started_at = datetime.now(UTC).isoformat(timespec="microseconds")
    baseline = None
    if options.compare is not None:
        baseline = load_baseline(workspace, options.compare, options.record_dir,
                                 machine.fingerprint(), threads)
        if baseline is not None:
            check_comparable(baseline[0], baseline[1], machine.fingerprint(), threads)

    progress.step(f"calibration of this machine at {threads} threads")
    calibration, measured_now = machine_calibration.load_or_measure(
        workspace.runs_dir, threads, recalibrate=options.recalibrate)
    notes = [("measured the roofline ceilings now" if measured_now else
              "roofline ceilings from runs/calibration/ (use --recalibrate to measure again)")]
    if machine_calibration.machine_is_busy(calibration.load_average):
        notes.append(f"the roofline ceilings were measured while the machine was busy (load "
                     f"{calibration.load_average}): they are low; measure again with "
                     "--recalibrate on a quiet machine")
    load = machine_calibration.load_average()
    if machine_calibration.machine_is_busy(load):
        notes.append(f"other work is running (1-minute load {load} on {os.cpu_count()} cores): "
                     "timings are noisier and slower than on a quiet machine")
    if encoders and options.models is None:  # the default, not asked for: only when it can run
        missing = bench_encoder.missing_requirements()
        if missing:
            encoders = []
            notes.append(f"the encoder case ({bench_encoder.MODEL}) is left out: it needs "
                         f"{', '.join(missing)}")
    use_torch = torch_available()
    if not use_torch:
        notes.append("torch is not importable: PyTorch is left out")

    cases: list[CaseResult] = []
    with machine_calibration.limited_threads(threads, blas_threads=1):
        blas_threads, blas_spin = machine_calibration.blas_threads_for(threads)
    if blas_threads < threads:
        notes.append(f"NumPy's BLAS runs on 1 thread, not {threads}: right after a BLAS call a "
                     f"parallel kernel ran {blas_spin:.1f}x slower (OpenBLAS's idle threads "
                     "spin and would take a core from the contender timed next). The koschei "
                     "command sets OPENBLAS_THREAD_TIMEOUT=4 before NumPy loads, which stops it")
    with machine_calibration.limited_threads(threads, blas_threads=blas_threads) as \
            thread_control:
        if thread_control["blas"] is None:
            notes.append("threadpoolctl is not installed: NumPy's BLAS runs on its default "
                         "thread count, and its spinning pool slows the contender timed after it")
        for loaded in chosen:
            for case in loaded.spec.bench.cases:
                cases.append(run_case(workspace, loaded, case, options, calibration, use_torch,
                                      progress))
                progress.advance()
        model_cases = [bench_models.run_decoder_case(workspace, name, options.budget_s,
                                                     calibration, progress, threads=threads)
                       for name in decoders]
        encoder_contenders = [name for name in bench_encoder.CONTENDERS if options.torch_compile
                              or name != bench_encoder.SENTENCE_TRANSFORMERS_COMPILED]
        encoder_cases = [bench_encoder.run_encoder_case(options.budget_s, progress,
                                                        threads=threads, workspace=workspace,
                                                        contenders=encoder_contenders)
                         for _ in encoders]
        crossover_cases = [bench_crossover.run_crossover_case(options.budget_s, progress,
                                                              threads=threads,
                                                              workspace=workspace)
                           for _ in crossovers]

    result = BenchmarkResult(
        threads=threads, fingerprint=machine.fingerprint(), machine=machine.describe(),
        calibration=calibration.describe(),
        thread_control=thread_control, started_at=started_at, budget_s=options.budget_s,
        load_average=load,
        fail_on_regression=options.fail_on_regression, cases=cases, models=model_cases,
        encoders=encoder_cases, crossovers=crossover_cases, notes=notes)
    if options.compare is not None:
        if baseline is None:
            result.notes.append("no earlier run with benchmark results: nothing to compare with")
        else:
            apply_comparison(result, baseline[0], baseline[1], options.fail_on_regression)
    write_reports(workspace, options, result)
    return result


README_COMMAND = "koschei benchmark --readme"


def readme_command(options: Options) -> str:
    """The command that measures what the README's table shows, with the options that change
    what it shows."""
    extra = [*(f"--select {name}" for name in options.select or []),
             *(["--contention"] if options.contention else []),
             *([] if options.torch_compile else ["--no-torch-compile"])]
    return " ".join([README_COMMAND, *extra])


def write_reports(workspace: Workspace, options: Options, result: BenchmarkResult) -> None:
    """The charts beside the run record, and with ``options.readme`` the README's table."""
    from koschei.bench import report

    if options.charts and options.record_dir is not None:
        written, note = report.write_charts(result, options.record_dir)
        result.charts = [workspace.relative(path) for path in written]
        if note:
            result.notes.append(note)
    if options.readme:
        readme = workspace.root / "README.md"
        run_id = options.record_dir.name if options.record_dir is not None else "not recorded"
        try:
            changed = report.update_readme(
                readme, report.readme_table(result, run_id, readme_command(options)))
        except (OSError, ValueError) as error:
            raise UsageError(f"--readme: {error}", hint=(
                f"add a line {report.README_BEGIN} and a line "
                f"{report.README_END} where the table goes")) from None
        result.notes.append(f"{workspace.relative(readme)}: benchmark table "
                            f"{'rewritten' if changed else 'unchanged'} from run {run_id}")
