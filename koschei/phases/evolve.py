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
   p < ``significance_p`` over at least ``MIN_SAMPLES`` interleaved samples of each, and if it
   is not slower by ``min_gain`` or more (same test, the other way) on any other bench case of
   the spec: tuned values hold for every shape the spec is called with (``other_cases``).
5. The search's chart (each evaluation's ratio and the best so far) goes beside the run record
   (koschei.tuning.chart). A winner is written to ``tuning/<fingerprint>.json`` with its
   evidence, the spec is rendered again (code_generate) and its generated tests run (test_run); if they fail, the tuned values
   are taken back and the modules rendered as before (``tests_failed``).

With ``Options.scheduler`` (``--scheduler ADDRESS``), the candidates and the confirmation are
evaluated on the workers of that Dask cluster (koschei.tuning.distributed), one per worker at a
time: the search asks as many configurations at once as there are workers. The workers must all
be of one machine fingerprint, and it is theirs that keys the log, the incumbent's tuned values
and the winner's tuning file. When it is not this machine's, the winner is written to that
machine's tuning file only: nothing is rendered or tested here (the result's reason says so).

The verdict: ``improved``, ``no_significant_gain`` (with the numbers that fell short),
``no_valid_candidate`` or ``tests_failed``. A search that finds nothing is not a failed check:
the phase's exit code is 0 unless the winner's tests failed.
"""

from __future__ import annotations

import hashlib
import os
import statistics
from collections.abc import Callable, Iterator
from contextlib import ExitStack
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
    # asked after each candidate: true stops the search there (the cycle's Ctrl-C)
    should_stop: Callable[[], bool] | None = None
    # a Dask scheduler (tcp://host:8786): evaluate on its workers instead of here
    scheduler: str | None = None


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
    # what the candidates' code came from: results of other digests tell nothing about it
    spec_sha256: str = ""
    templates_sha256: str = ""
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
    # the best beside the current values on the spec's other bench cases: {case, gain,
    # p_value_slower, samples} each (a significant loss on one of them keeps nothing)
    other_cases: list[dict[str, Any]] = field(default_factory=list)
    verdict: str = ""  # improved | no_significant_gain | no_valid_candidate | tests_failed
    reason: str = ""
    tuned_values_file: str | None = None  # where an improvement was kept (its tests passed)
    cache_file: str = ""
    tests: str | None = None  # the winner's test_run summary
    chart: str | None = None  # search.png beside the run record (needs matplotlib)
    scheduler: str | None = None  # the Dask scheduler the candidates were evaluated through
    workers: list[str] = field(default_factory=list)  # its workers that evaluated them
    written: list[str] = field(default_factory=list)  # the tuning file, the re-rendered files

    @property
    def ok(self) -> bool:
        return self.verdict != "tests_failed"

    def summary(self) -> str:
        if self.verdict == "improved" and self.confirmation:
            return (f"{self.spec}/{self.case}: {self.confirmation['gain']:+.1%} "
                    f"(p={self.confirmation['p_value']:.2g}) with "
                    + ", ".join(f"{k}={v}" for k, v in self.best["tunables"].items()
                                if self.incumbent.get(k) != v)
                    + ("" if self.tuned_values_file else " (not kept: a dry run)")
                    + (f" ({self.reason})" if self.reason else ""))
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


def _bench_labels(loaded: Any) -> list[str]:
    from koschei.specs.validate import case_label

    spec = loaded.spec
    return [case_label(case) for case in (spec.bench.cases if spec.bench else [])]


def _choose_case(loaded: Any, wanted: str | None) -> str:
    spec = loaded.spec
    labels = _bench_labels(loaded)
    if not labels:
        raise UsageError(f"{spec.name} has no bench cases: there is nothing to time",
                         hint=f"add bench.cases to {loaded.relpath}")
    if wanted is None:
        return labels[0]
    if wanted not in labels:
        raise UsageError(f"{spec.name} has no bench case {wanted!r}",
                         hint=f"its cases: {', '.join(labels)}")
    return wanted


def _target(workspace: Workspace, options: Options) -> tuple[Any, Any, str]:
    """(the spec set, the spec to tune, the bench case's label), or a UsageError saying why
    the spec cannot be searched."""
    from koschei.specs import load_specs

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
    return spec_set, loaded, _choose_case(loaded, options.case)


def _space(workspace: Workspace, loaded: Any, only: list[str] | None,
           fingerprint: str) -> tuple[Any, Any, dict[str, Any]]:
    """(the whole space, the space searched, the current configuration): ``only`` searches
    some tunables, the others staying as they are now (the machine's tuned values over the
    defaults)."""
    from koschei.tuning import values
    from koschei.tuning.space import SearchSpace

    spec = loaded.spec
    try:
        space = SearchSpace.of(spec, only=only)
    except ValueError as error:
        raise UsageError(f"--only: {error}") from None
    tuned = values.tunables_for(workspace.root, fingerprint).get(spec.name, {})
    whole = SearchSpace.of(spec)
    incumbent = whole.complete(tuned)
    if only is not None:
        space = SearchSpace({name: (choices if name in only else (incumbent[name],))
                             for name, choices in space.choices.items()},
                            space.defaults, space.constraints)
    return whole, space, incumbent


def _log(workspace: Workspace, loaded: Any, case: str, fingerprint: str,
         ) -> tuple[Any, dict[str, Any]]:
    """The spec's result log on machine ``fingerprint``, and the key fields of this case's
    results in it (all but the tunables)."""
    from koschei.tuning.cache import CacheLog

    log = CacheLog(workspace.runs_dir / "tuning" / fingerprint / f"{loaded.name}.jsonl")
    return log, {"spec": loaded.name, "spec_sha256": loaded.sha256,
                 "templates_sha256": templates_digest(workspace, loaded), "case": case,
                 "fingerprint": fingerprint}


@dataclass
class ReplayResult(Result):
    """``replay``: the strategies replayed on a complete exhaustive search of one case."""

    spec: str
    case: str
    fingerprint: str
    searched: list[str]
    cache_file: str
    study: Any = None  # koschei.tuning.replay.ReplayStudy

    def summary(self) -> str:
        rows = ", ".join(f"{row.strategy} {row.median_to_within:g}" if row.median_to_within
                         else f"{row.strategy} never" for row in self.study.strategies)
        return (f"{self.spec}/{self.case}: {self.study.configurations} configurations; median "
                f"evaluations to within {self.study.tolerance:.0%} of the optimum: {rows}")


def replay(workspace: Workspace, options: Options, seeds: tuple[int, ...] | None = None,
           tolerance: float | None = None) -> ReplayResult:
    """How fast each strategy would have found the best configuration of ``options``' space,
    replayed on this machine's log of a complete exhaustive search of it (koschei.tuning.replay):
    nothing is rendered or measured. A log that lacks some configurations is a UsageError
    saying how many and the command that completes it."""
    from koschei.bench import machine
    from koschei.tuning import replay as replaying
    from koschei.tuning.cache import CandidateKey

    _, loaded, case = _target(workspace, options)
    fingerprint = machine.fingerprint()
    _, space, _ = _space(workspace, loaded, options.only, fingerprint)
    log, key_fields = _log(workspace, loaded, case, fingerprint)

    def objective_of(config: dict[str, Any]) -> Any:
        known = log.get(CandidateKey.of(tunables=config, **key_fields))
        return ... if known is None else _ratio(known)

    try:
        landscape = replaying.landscape(space, objective_of)
    except replaying.IncompleteLandscape as error:
        only = f" --only {','.join(options.only)}" if options.only else ""
        raise UsageError(f"{loaded.name}/{case}: {error}: a replay needs an exhaustive search "
                         "of the space first",
                         hint=f"koschei evolve {loaded.name} --case {case}{only} --strategy "
                              f"exhaustive --max-evaluations {space.valid_count()} "
                              "--dry-run") from None
    study = replaying.study(space, landscape, seeds=seeds or replaying.SEEDS,
                            tolerance=replaying.TOLERANCE if tolerance is None else tolerance)
    return ReplayResult(spec=loaded.name, case=case, fingerprint=fingerprint,
                        searched=space.searched, cache_file=workspace.relative(log.path),
                        study=study)


def run(workspace: Workspace, options: Options, progress: Progress | None = None,
        ) -> EvolveResult:
    """The search of the module docstring; a cluster (``Options.scheduler``) stays connected
    for its duration."""
    with ExitStack() as stack:
        return _run(workspace, options, progress, stack)


def _run(workspace: Workspace, options: Options, progress: Progress | None,
         stack: ExitStack) -> EvolveResult:
    from koschei.bench import machine
    from koschei.tuning import values
    from koschei.tuning.cache import OK, CandidateKey, CandidateResult
    from koschei.tuning.evaluate import (
        RenderError,
        evaluate,
        make_request,
        render_candidate,
        spec_text,
    )
    from koschei.tuning.search import STRATEGIES, search

    progress = progress or SilentProgress()
    spec_set, loaded, case = _target(workspace, options)
    spec = loaded.spec
    strategy = options.strategy
    if strategy not in (DEFAULT_STRATEGY, *STRATEGIES):
        raise UsageError(f"--strategy {strategy}: expected one of "
                         f"{', '.join((DEFAULT_STRATEGY, *STRATEGIES))}")
    fingerprint = machine.fingerprint()
    cluster = None
    if options.scheduler is not None:
        from koschei.tuning.distributed import Cluster

        progress.step(f"evolve {spec.name}/{case}: connecting to the Dask scheduler at "
                      f"{options.scheduler}")
        cluster = stack.enter_context(Cluster.connect(options.scheduler))
        fingerprint = cluster.fingerprint  # the search's machine is the workers'
    threads = options.threads or (cluster.cores if cluster else os.cpu_count()) or 1
    whole, space, incumbent = _space(workspace, loaded, options.only, fingerprint)
    if strategy == DEFAULT_STRATEGY:
        fits = options.max_evaluations is None or space.valid_count() <= options.max_evaluations
        strategy = "exhaustive" if fits else "tpe"
    result = EvolveResult(spec=spec.name, case=case, strategy=strategy, seed=options.seed,
                          fingerprint=fingerprint, threads=threads, searched=space.searched,
                          space_size=space.size, incumbent=incumbent)
    if cluster is not None:
        result.scheduler, result.workers = cluster.address, cluster.workers
    candidates_dir = workspace.runs_dir / "tuning" / "candidates"
    log, key_fields = _log(workspace, loaded, case, fingerprint)
    result.cache_file = workspace.relative(log.path)
    result.spec_sha256 = key_fields["spec_sha256"]
    result.templates_sha256 = key_fields["templates_sha256"]
    defaults = whole.defaults
    progress.step(f"evolve {spec.name}/{case}: rendering the default configuration")
    baseline = render_candidate(workspace, loaded, defaults, candidates_dir)

    spec_yaml = spec_text(loaded)

    def request(candidate: Path, beside: Path, budget_s: float, on: str = case,
                ) -> dict[str, Any]:
        return make_request(loaded, on, candidate, beside, threads=threads, budget_s=budget_s,
                            folder=candidates_dir, spec_yaml=spec_yaml)

    def run_requests(requests: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """The outcomes of ``requests``, in order: each in a child process here, one after the
        other, or on the cluster's workers, one per worker at a time."""
        if cluster is not None:
            yield from cluster.evaluate_many(requests, options.timeout_s)
            return
        for one in requests:
            yield evaluate(one, options.timeout_s)

    def keep(key: Any, config: dict[str, Any], outcome: dict[str, Any]) -> EvaluationRecord:
        """A measured outcome, written to the log (a ``transient`` one, the cluster's failure
        rather than the candidate's, is not: the next search tries it again)."""
        known = CandidateResult(
            key, outcome["verdict"], outcome.get("reason"),
            median_s=outcome.get("candidate_median_s"),
            samples_s=outcome.get("candidate_samples_s") or [],
            incumbent=({"tunables": defaults,
                        "samples_s": outcome.get("incumbent_samples_s") or []}
                       if outcome["verdict"] == OK else None),
            max_abs_error=outcome.get("max_abs_error"), seconds=outcome.get("seconds"),
            recorded_at=datetime.now(UTC).isoformat(timespec="seconds"))
        if not outcome.get("transient"):
            log.record(known)
        result.measured += 1
        return EvaluationRecord(config, known.verdict, _ratio(known), known.reason)

    def best_so_far() -> str | None:
        ratios = [r.ratio for r in result.evaluations if r.ratio is not None]
        return f"×{min(ratios):.3f}" if ratios else None

    def evaluate_configs(configs: list[dict[str, Any]]) -> list[float | None]:
        """The objectives of a batch of configurations (one here; one per worker on a
        cluster): the log's where it knows them, else measured (all at once on a cluster)."""
        records: list[EvaluationRecord | None] = [None] * len(configs)
        pending: list[tuple[int, Any, dict[str, Any], dict[str, Any]]] = []
        for position, config in enumerate(configs):
            key = CandidateKey.of(tunables=config, **key_fields)
            known = log.get(key)
            if known is not None:
                result.cache_hits += 1
                records[position] = EvaluationRecord(config, known.verdict, _ratio(known),
                                                     known.reason, True)
                continue
            best = best_so_far()
            progress.step(f"evolve {spec.name}/{case}: candidate "
                          f"{len(result.evaluations) + position + 1}"
                          + (f" (best so far {best})" if best else "") + ": "
                          + ", ".join(f"{k}={v}" for k, v in config.items()
                                      if k in space.searched))
            try:
                path = render_candidate(workspace, loaded, config, candidates_dir)
            except RenderError as error:
                records[position] = keep(key, config,
                                         {"verdict": "render_error", "reason": str(error)})
                continue
            pending.append((position, key, config,
                            request(path, baseline, options.candidate_budget_s)))
        outcomes = run_requests([entry[3] for entry in pending])
        for (position, key, config, _), outcome in zip(pending, outcomes, strict=True):
            records[position] = keep(key, config, outcome)
        for record in records:
            result.evaluations.append(record)
            if record.verdict != OK:
                result.failures[record.verdict] = result.failures.get(record.verdict, 0) + 1
            best = best_so_far()
            progress.advance(options.max_evaluations,
                             f"best {best} of the defaults' time" if best else
                             "no valid candidate yet")
        return [record.ratio for record in records]

    learned = similar_winners(spec_set, loaded, space, incumbent,
                              values.tunables_for(workspace.root, fingerprint))
    result.learned_from = [name for name, _ in learned]
    found = search(space, None, strategy=strategy, seed=options.seed,
                   max_evaluations=options.max_evaluations, budget_s=options.budget_s,
                   start=[incumbent, *(config for _, config in learned)],
                   should_stop=options.should_stop, evaluate_batch=evaluate_configs,
                   batch=len(cluster.workers) if cluster is not None else 1)
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
    [outcome] = run_requests([request(winner, current, options.confirm_budget_s)])
    if outcome["verdict"] != OK:
        result.verdict = "no_significant_gain"
        result.reason = f"the confirmation failed: {outcome['verdict']}: {outcome.get('reason')}"
        return result
    compared = _compare(outcome, "less")
    gain, p_value, samples = compared["gain"], compared["p_value"], compared["samples"]
    result.confirmation = {**compared, "candidate_samples_s": outcome["candidate_samples_s"],
                           "incumbent_samples_s": outcome["incumbent_samples_s"]}
    short = []
    if samples < MIN_SAMPLES:
        short.append(f"{samples} samples < {MIN_SAMPLES}")
    if gain < options.min_gain:
        short.append(f"gain {gain:+.1%} < {options.min_gain:.0%}")
    if not p_value < options.significance_p:
        short.append(f"p={p_value:.2g} >= {options.significance_p:g}")
    if short:
        result.verdict, result.reason = "no_significant_gain", "; ".join(short)
        return result
    # tuned values hold for every shape the spec is called with: the winner must not cost
    # the spec's other bench cases what it gains on this one
    for other in _bench_labels(loaded):
        if other == case:
            continue
        progress.step(f"evolve {spec.name}/{case}: checking that the best is not slower on "
                      f"{other}")
        [outcome] = run_requests([request(winner, current, options.confirm_budget_s, other)])
        if outcome["verdict"] != OK:
            result.verdict = "no_significant_gain"
            result.reason = (f"the best failed on case {other}: {outcome['verdict']}: "
                             f"{outcome.get('reason')}")
            return result
        compared = _compare(outcome, "greater")
        other_gain, slower_p = compared["gain"], compared["p_value"]
        result.other_cases.append({"case": other, "gain": other_gain, "p_value_slower": slower_p,
                                   "samples": compared["samples"]})
        if other_gain <= -options.min_gain and slower_p < options.significance_p:
            result.verdict = "no_significant_gain"
            result.reason = (f"{other_gain:+.1%} on case {other} (p={slower_p:.2g}): tuned values "
                             "hold for every case of the spec")
            return result
    result.verdict = "improved"
    if options.apply:
        elsewhere = (cluster.machine if cluster is not None
                     and fingerprint != machine.fingerprint() else None)
        _apply(workspace, result, loaded, progress, elsewhere)
    return result


def _apply(workspace: Workspace, result: EvolveResult, loaded: Any, progress: Progress,
           elsewhere: dict[str, Any] | None = None) -> None:
    """Write the winner to this machine's tuning file, render the spec again and run its
    tests; take the values back when the tests fail. ``elsewhere``: the description of the
    machine the search measured on (a cluster's workers) when it is not this one: the winner
    goes to that machine's tuning file, and nothing is rendered or tested here."""
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
                **({"scheduler": result.scheduler, "workers": result.workers}
                   if result.scheduler else {}),
                "recorded_at": datetime.now(UTC).isoformat(timespec="seconds")}
    path = values.record(workspace.root, fingerprint, elsewhere or machine.describe(),
                         result.spec, result.best["tunables"], evidence)
    result.written.append(workspace.relative(path))
    if elsewhere is not None:
        result.tuned_values_file = workspace.relative(path)
        result.reason = (f"kept for the workers' machine {fingerprint}; not rendered or tested "
                         f"here, a machine of another kind ({machine.fingerprint()}): "
                         f"`koschei code-generate --only {result.spec}` and `koschei test-run "
                         f"--select {result.spec}` on a machine of that kind use it")
        return
    progress.step(f"evolve {result.spec}: rendering with the tuned values and running its tests")
    generated = code_generate.run(workspace, code_generate.Options(only=[result.spec]), progress)
    result.written += [p for p in generated.written if p not in result.written]
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
    generated = code_generate.run(workspace, code_generate.Options(only=[result.spec]), progress)
    result.written += [p for p in generated.written if p not in result.written]


def _compare(outcome: dict[str, Any], alternative: str) -> dict[str, Any]:
    """A candidate's samples against the current configuration's from one child: the medians,
    the gain (current median / candidate median - 1), the samples of the smaller side, and the
    p-value of a one-sided Mann-Whitney U test that the candidate is faster (``alternative``
    "less") or slower ("greater")."""
    from koschei.bench.timing import mann_whitney_p

    mine, theirs = outcome["candidate_samples_s"], outcome["incumbent_samples_s"]
    median_mine, median_theirs = statistics.median(mine), statistics.median(theirs)
    samples = min(len(mine), len(theirs))
    return {"candidate_median_s": median_mine, "incumbent_median_s": median_theirs,
            "gain": median_theirs / median_mine - 1.0, "samples": samples,
            "p_value": mann_whitney_p(mine, theirs, alternative) if samples > 1 else 1.0}


def _ratio(result: Any) -> float | None:
    """A measured result's time over its baseline's (the defaults'), the median of per-round
    ratios; None for a failure."""
    from koschei.bench.timing import median_ratio

    if not result.ok or not result.samples_s or not result.incumbent:
        return None
    return median_ratio(result.samples_s, result.incumbent.get("samples_s") or [])


__all__ = ["EvolveResult", "Options", "ReplayResult", "replay", "run"]
