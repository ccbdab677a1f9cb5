"""The evolve phase: search a spec's tunables for a faster configuration that is still correct,
and keep it only when the gain is real.

For one spec and one of its bench cases (``Options.case``; default: its first):

1. The space is the spec's tunables (``Options.only``: some of them) less what its
   ``tunable_constraints`` rule out (koschei.tuning.space). The incumbent is the configuration
   the workspace renders now: this machine's tuned values (koschei.tuning.values) over the
   defaults.
2. A strategy (koschei.tuning.search: exhaustive, random, genetic, tpe; exhaustive by default
   when the whole space fits in the evaluation budget) proposes configurations, the incumbent
   first, then what won on this machine for specs of the same template family
   (``similar_winners``: learning from history). Each is rendered, compiled, checked against the reference on every test case and the
   bench case, and timed beside the spec's default configuration, in a child process with a
   timeout (koschei.tuning.evaluate). Its objective is the median of per-round time ratios to
   the defaults: comparable across child processes, searches and days.
3. Every result goes to the crash-safe log ``runs/tuning/<fingerprint>/<spec>.jsonl``
   (koschei.tuning.cache), keyed by the spec's and templates' digests, the values, the case and
   the machine: a repeated or resumed search measures nothing it already knows (``cache_hits``),
   failures included.
4. The best configuration is a winner only if a fresh re-measurement beside the incumbent, in a
   new child, shows it faster by at least ``min_gain`` with a one-sided Mann-Whitney U test at
   p < ``significance_p`` over at least ``MIN_SAMPLES`` interleaved samples of each.
5. The search's chart (each evaluation's ratio and the best so far) goes beside the run record
   (koschei.tuning.chart). A winner is written to ``tuning/<fingerprint>.json`` with its evidence, the spec is rendered
   again (code_generate) and its generated tests run (test_run); if they fail, the tuned values
   are taken back and the modules rendered as before (``tests_failed``).

The verdict: ``improved``, ``no_significant_gain`` (with the numbers that fell short),
``no_valid_candidate`` or ``tests_failed``. A search that finds nothing is not a failed check:
the phase's exit code is 0 unless the winner's tests failed.
"""

from __future__ import annotations

import hashlib
import os
import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from koschei.errors import UsageError
from koschei.phases.base import Progress, Result, SilentProgress
from koschei.workspace import Workspace

DEFAULT_MAX_EVALUATIONS = 40
DEFAULT_STRATEGY = "auto"  # exhaustive when the space fits in the budget, else tpe
MIN_SAMPLES = 6  # interleaved samples per side in the confirmation (asv's threshold)
SIGNIFICANCE_P = 0.002
MIN_GAIN = 0.02  # 2% faster at least
CANDIDATE_BUDGET_S = 1.0  # timing per candidate
CONFIRM_BUDGET_S = 3.0
TIMEOUT_S = 300.0


@dataclass
class Options:
    spec: str
    case: str | None = None  # a bench case label; None: the spec's first
    strategy: str = DEFAULT_STRATEGY
    max_evaluations: int | None = DEFAULT_MAX_EVALUATIONS
    budget_s: float | None = None  # the whole search's time budget
    seed: int = 0
    only: list[str] | None = None  # tunables to search (the others stay as they are)
    threads: int | None = None  # default: every core
    candidate_budget_s: float = CANDIDATE_BUDGET_S
    confirm_budget_s: float = CONFIRM_BUDGET_S
    timeout_s: float = TIMEOUT_S
    min_gain: float = MIN_GAIN
    significance_p: float = SIGNIFICANCE_P
    apply: bool = True  # write a winner to the tuning file and regenerate
    record_dir: Path | None = None  # the run record: the search's chart (search.png) goes there


@dataclass
class EvaluationRecord:
    tunables: dict[str, Any]
    verdict: str  # ok or a failure (koschei.tuning.cache.FAILURES)
    ratio: float | None = None  # median time over the defaults' in the same rounds
    reason: str | None = None
    cached: bool = False  # read from the log, not measured now


@dataclass
class EvolveResult(Result):
    spec: str = ""
    case: str = ""
    strategy: str = ""
    seed: int = 0
    fingerprint: str = ""
    threads: int = 0
    searched: list[str] = field(default_factory=list)
    space_size: int = 0  # configurations in the product of the choices
    incumbent: dict[str, Any] = field(default_factory=dict)
    # specs of the same family whose tuned values were tried first (learning from history)
    learned_from: list[str] = field(default_factory=list)
    evaluations: list[EvaluationRecord] = field(default_factory=list)
    cache_hits: int = 0
    measured: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    stopped: str = ""
    best: dict[str, Any] | None = None  # {"tunables", "ratio"}
    confirmation: dict[str, Any] | None = None  # medians, gain, p_value, samples
    verdict: str = ""  # improved | no_significant_gain | no_valid_candidate | tests_failed
    reason: str = ""
    tuned_values_file: str | None = None  # where an improvement was kept (its tests passed)
    cache_file: str = ""
    tests: str | None = None  # the winner's test_run summary
    chart: str | None = None  # search.png beside the run record (needs matplotlib)

    @property
    def ok(self) -> bool:
        return self.verdict != "tests_failed"

    def summary(self) -> str:
        if self.verdict == "improved" and self.confirmation:
            return (f"{self.spec}/{self.case}: {self.confirmation['gain']:+.1%} "
                    f"(p={self.confirmation['p_value']:.2g}) with "
                    + ", ".join(f"{k}={v}" for k, v in self.best["tunables"].items()
                                if self.incumbent.get(k) != v)
                    + ("" if self.tuned_values_file else " (not kept: a dry run)"))
        return f"{self.spec}/{self.case}: {self.verdict.replace('_', ' ')}" + (
            f" ({self.reason})" if self.reason else "")


def templates_digest(workspace: Workspace, loaded: Any) -> str:
    """A digest of everything besides the spec that the candidate's code depends on: the
    templates it renders from and the engine's hand-written helpers."""
    from koschei.engine import _runtime

    digest = hashlib.sha256()
    family = loaded.spec.kernel.family
    for relpath in ("engine_module.py.j2", f"families/{family}.py.j2", "macros.j2"):
        path = workspace.templates_dir / relpath
        digest.update(relpath.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(_runtime.helpers_key().encode())
    return digest.hexdigest()


def similar_winners(spec_set: Any, loaded: Any, space: Any, incumbent: dict[str, Any],
                    tuned: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """What won on this machine for other specs of the same template family, as configurations
    of this spec's space (their values for the tunables this spec searches too, where they are
    choices here; the rest as now): (spec name, configuration) each, valid ones only. A search
    evaluates them right after the incumbent."""
    family = loaded.spec.kernel.family
    found = []
    for other in spec_set:
        if other.name == loaded.name or other.spec.kernel is None \
                or other.spec.kernel.family != family or other.name not in tuned:
            continue
        config = dict(incumbent)
        for name, value in tuned[other.name].items():
            if name in space.searched and value in space.choices[name]:
                config[name] = value
        if config != incumbent and space.valid(config) \
                and all(config != seen for _, seen in found):
            found.append((other.name, config))
    return found


def _choose_case(loaded: Any, wanted: str | None) -> str:
    from koschei.specs.validate import case_label

    spec = loaded.spec
    labels = [case_label(case) for case in (spec.bench.cases if spec.bench else [])]
    if not labels:
        raise UsageError(f"{spec.name} has no bench cases: there is nothing to time",
                         hint=f"add bench.cases to {loaded.relpath}")
    if wanted is None:
        return labels[0]
    if wanted not in labels:
        raise UsageError(f"{spec.name} has no bench case {wanted!r}",
                         hint=f"its cases: {', '.join(labels)}")
    return wanted


def run(workspace: Workspace, options: Options, progress: Progress | None = None,
        ) -> EvolveResult:
    from koschei.bench import machine
    from koschei.bench.timing import mann_whitney_p
    from koschei.specs import load_specs
    from koschei.tuning import values
    from koschei.tuning.cache import OK, CacheLog, CandidateKey, CandidateResult
    from koschei.tuning.evaluate import RenderError, evaluate, render_candidate
    from koschei.tuning.search import STRATEGIES, search
    from koschei.tuning.space import SearchSpace

    progress = progress or SilentProgress()
    spec_set = load_specs(workspace)
    loaded = spec_set.get(options.spec)
    if loaded is None:
        raise UsageError(f"no spec named {options.spec!r}",
                         hint="koschei tech-tree lists the specs")
    spec = loaded.spec
    if spec.kernel is None:
        raise UsageError(f"{spec.name} has no kernel of its own ({spec.status}): nothing to tune")
    if not spec.tunables:
        raise UsageError(f"{spec.name} has no tunables: nothing to search",
                         hint=f"add tunables to {loaded.relpath}")
    strategy = options.strategy
    if strategy not in (DEFAULT_STRATEGY, *STRATEGIES):
        raise UsageError(f"--strategy {strategy}: expected one of "
                         f"{', '.join((DEFAULT_STRATEGY, *STRATEGIES))}")
    case = _choose_case(loaded, options.case)
    try:
        space = SearchSpace.of(spec, only=options.only)
    except ValueError as error:
        raise UsageError(f"--only: {error}") from None
    fingerprint = machine.fingerprint()
    threads = options.threads or os.cpu_count() or 1
    tuned = values.tunables_for(workspace.root, fingerprint).get(spec.name, {})
    whole = SearchSpace.of(spec)
    incumbent = whole.complete(tuned)
    if options.only is not None:  # the tunables not searched stay as they are now
        space = SearchSpace({name: (choices if name in options.only else (incumbent[name],))
                             for name, choices in space.choices.items()},
                            space.defaults, space.constraints)
    if strategy == DEFAULT_STRATEGY:
        fits = options.max_evaluations is None or space.valid_count() <= options.max_evaluations
        strategy = "exhaustive" if fits else "tpe"
    result = EvolveResult(spec=spec.name, case=case, strategy=strategy, seed=options.seed,
                          fingerprint=fingerprint, threads=threads, searched=space.searched,
                          space_size=space.size, incumbent=incumbent)
    tuning_dir = workspace.runs_dir / "tuning"
    candidates_dir = tuning_dir / "candidates"
    log = CacheLog(tuning_dir / fingerprint / f"{spec.name}.jsonl")
    result.cache_file = workspace.relative(log.path)
    key_fields = {"spec": spec.name, "spec_sha256": loaded.sha256,
                  "templates_sha256": templates_digest(workspace, loaded), "case": case,
                  "fingerprint": fingerprint}
    defaults = whole.defaults
    progress.step(f"evolve {spec.name}/{case}: rendering the default configuration")
    baseline = render_candidate(workspace, loaded, defaults, candidates_dir)

    def request(candidate: Path, beside: Path, budget_s: float) -> dict[str, Any]:
        return {"root": str(workspace.root), "spec": spec.name, "candidate": str(candidate),
                "incumbent": str(beside), "case": case, "threads": threads,
                "budget_s": budget_s}

    def evaluate_config(config: dict[str, Any]) -> float | None:
        key = CandidateKey.of(tunables=config, **key_fields)
        known = log.get(key)
        if known is not None:
            result.cache_hits += 1
            record = EvaluationRecord(config, known.verdict, _ratio(known), known.reason, True)
        else:
            ratios = [r.ratio for r in result.evaluations if r.ratio is not None]
            best_so_far = f" (best so far ×{min(ratios):.3f})" if ratios else ""
            progress.step(f"evolve {spec.name}/{case}: candidate {len(result.evaluations) + 1}"
                          f"{best_so_far}: "
                          + ", ".join(f"{k}={v}" for k, v in config.items()
                                      if k in space.searched))
            try:
                path = render_candidate(workspace, loaded, config, candidates_dir)
                outcome = evaluate(request(path, baseline, options.candidate_budget_s),
                                   options.timeout_s)
            except RenderError as error:
                outcome = {"verdict": "render_error", "reason": str(error)}
            known = CandidateResult(
                key, outcome["verdict"], outcome.get("reason"),
                median_s=outcome.get("candidate_median_s"),
                samples_s=outcome.get("candidate_samples_s") or [],
                incumbent=({"tunables": defaults,
                            "samples_s": outcome.get("incumbent_samples_s") or []}
                           if outcome["verdict"] == OK else None),
                max_abs_error=outcome.get("max_abs_error"), seconds=outcome.get("seconds"),
                recorded_at=datetime.now(UTC).isoformat(timespec="seconds"))
            log.record(known)
            result.measured += 1
            record = EvaluationRecord(config, known.verdict, _ratio(known), known.reason)
        result.evaluations.append(record)
        if record.verdict != OK:
            result.failures[record.verdict] = result.failures.get(record.verdict, 0) + 1
        progress.advance(options.max_evaluations)
        return record.ratio

    learned = similar_winners(spec_set, loaded, space, incumbent,
                              values.tunables_for(workspace.root, fingerprint))
    result.learned_from = [name for name, _ in learned]
    found = search(space, evaluate_config, strategy=strategy, seed=options.seed,
                   max_evaluations=options.max_evaluations, budget_s=options.budget_s,
                   start=[incumbent, *(config for _, config in learned)])
    result.stopped = found.stopped
    if options.record_dir is not None:
        from koschei.tuning.chart import write_search_chart

        chart = write_search_chart(result, Path(options.record_dir) / "search.png")
        result.chart = workspace.relative(chart) if chart else None
    best = found.best
    if best is None:
        result.verdict, result.reason = "no_valid_candidate", "every candidate failed"
        return result
    result.best = {"tunables": best.config, "ratio": best.objective}
    if found.stopped == "interrupted":
        result.verdict = "no_significant_gain"
        result.reason = ("interrupted before the confirmation: run the same command again to "
                         "go on (nothing already measured is measured again)")
        return result
    if best.config == incumbent:
        result.verdict = "no_significant_gain"
        result.reason = "the current configuration was the fastest found"
        return result
    progress.step(f"evolve {spec.name}/{case}: confirming the best beside the current "
                  "configuration")
    current = render_candidate(workspace, loaded, incumbent, candidates_dir)
    winner = render_candidate(workspace, loaded, best.config, candidates_dir)
    outcome = evaluate(request(winner, current, options.confirm_budget_s), options.timeout_s)
    if outcome["verdict"] != OK:
        result.verdict = "no_significant_gain"
        result.reason = f"the confirmation failed: {outcome['verdict']}: {outcome.get('reason')}"
        return result
    mine, theirs = outcome["candidate_samples_s"], outcome["incumbent_samples_s"]
    median_mine, median_theirs = statistics.median(mine), statistics.median(theirs)
    gain = median_theirs / median_mine - 1.0
    p_value = mann_whitney_p(mine, theirs, "less") if min(len(mine), len(theirs)) > 1 else 1.0
    result.confirmation = {"candidate_median_s": median_mine, "incumbent_median_s": median_theirs,
                           "gain": gain, "p_value": p_value, "samples": min(len(mine),
                                                                            len(theirs)),
                           "candidate_samples_s": mine, "incumbent_samples_s": theirs}
    short = []
    if min(len(mine), len(theirs)) < MIN_SAMPLES:
        short.append(f"{min(len(mine), len(theirs))} samples < {MIN_SAMPLES}")
    if gain < options.min_gain:
        short.append(f"gain {gain:+.1%} < {options.min_gain:.0%}")
    if not p_value < options.significance_p:
        short.append(f"p={p_value:.2g} >= {options.significance_p:g}")
    if short:
        result.verdict, result.reason = "no_significant_gain", "; ".join(short)
        return result
    result.verdict = "improved"
    if options.apply:
        _apply(workspace, result, loaded, progress)
    return result


def _apply(workspace: Workspace, result: EvolveResult, loaded: Any, progress: Progress) -> None:
    """Write the winner to this machine's tuning file, render the spec again and run its
    tests; take the values back when the tests fail."""
    from koschei.bench import machine
    from koschei.phases import code_generate, test_run
    from koschei.tuning import values

    fingerprint = result.fingerprint
    previous = values.tunables_for(workspace.root, fingerprint).get(result.spec)
    previous_evidence = (values.load(workspace.root, fingerprint).get("specs", {})
                         .get(result.spec, {}).get("evidence", {}))
    confirmation = dict(result.confirmation or {})
    evidence = {"case": result.case, "strategy": result.strategy, "seed": result.seed,
                "evaluations": len(result.evaluations), "measured": result.measured,
                "gain": confirmation.get("gain"), "p_value": confirmation.get("p_value"),
                "candidate_median_s": confirmation.get("candidate_median_s"),
                "incumbent_median_s": confirmation.get("incumbent_median_s"),
                "samples": confirmation.get("samples"), "incumbent": result.incumbent,
                "spec_sha256": loaded.sha256,
                "recorded_at": datetime.now(UTC).isoformat(timespec="seconds")}
    path = values.record(workspace.root, fingerprint, machine.describe(), result.spec,
                         result.best["tunables"], evidence)
    progress.step(f"evolve {result.spec}: rendering with the tuned values and running its tests")
    code_generate.run(workspace, code_generate.Options(only=[result.spec]), progress)
    tests = test_run.run(workspace, test_run.Options(select=[result.spec]), progress)
    result.tests = tests.summary()
    if tests.ok:
        result.tuned_values_file = workspace.relative(path)
        return
    result.verdict = "tests_failed"
    result.reason = f"the winner's generated tests failed ({tests.summary()}): values taken back"
    if previous is None:
        values.forget(workspace.root, fingerprint, result.spec)
    else:
        values.record(workspace.root, fingerprint, machine.describe(), result.spec, previous,
                      previous_evidence)
    code_generate.run(workspace, code_generate.Options(only=[result.spec]), progress)


def _ratio(result: Any) -> float | None:
    """A measured result's time over its baseline's (the defaults'), the median of per-round
    ratios; None for a failure."""
    from koschei.bench.timing import median_ratio

    if not result.ok or not result.samples_s or not result.incumbent:
        return None
    return median_ratio(result.samples_s, result.incumbent.get("samples_s") or [])


__all__ = ["EvolveResult", "Options", "run"]
