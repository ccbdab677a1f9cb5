"""Search strategies over a SearchSpace: which configuration to evaluate next.

The strategies (``STRATEGIES``):

- ``exhaustive``: every valid configuration, in the space's fixed order;
- ``random``: uniform draws (Optuna's RandomSampler);
- ``genetic``: a genetic algorithm, the seeds' method (Optuna's NSGAIISampler: a population,
  crossover and mutation; with one objective it is a plain elitist GA);
- ``tpe``: model-based, a Tree-structured Parzen Estimator (Optuna's TPESampler).

All walk the space through Optuna's ask/tell interface, every tunable a categorical
distribution over its choices, and with one ``seed`` a search proposes the same configurations
in the same order. A proposal that breaks a tunable constraint is told as failed (never
evaluated); one already evaluated is told its known value again (no second evaluation). The
search stops when the evaluation budget or the time budget is spent, when every valid
configuration has been evaluated, when the strategy keeps proposing only known or invalid
configurations, or when the caller asks it to stop.

``evaluate(config)`` is the caller's: it returns the configuration's objective (smaller is
better: the evaluator's time relative to the current configuration), or None for a candidate
that failed (it did not compile, gave wrong results, crashed, timed out); a failure is never
the best. Whether a value came from a cache is the evaluator's business too: a search that
replays a complete cache measures nothing.

Several evaluators at once (the workers of a Dask cluster, koschei.tuning.distributed) take
configurations in batches: with ``evaluate_batch(configs)`` and ``batch`` > 1, the ``start`` and
exhaustive configurations go ``batch`` at a time, and a sampler is asked up to ``batch``
proposals (Optuna's ask, several times) before it is told their values. The budgets are checked
between batches, and a batch never holds more evaluations than the budget leaves. With
``batch`` 1 a search proposes what it proposes one at a time, in the same order for one seed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from koschei.tuning.space import Config, SearchSpace

STRATEGIES = ("exhaustive", "random", "genetic", "tpe")
# proposals in a row that bring nothing new before a sampler-driven search gives up
STALE_PROPOSALS = 200


@dataclass
class Evaluation:
    config: Config
    objective: float | None  # None: the candidate failed
    index: int  # 0, 1, ...: the order of evaluation


@dataclass
class SearchResult:
    strategy: str
    seed: int
    evaluations: list[Evaluation] = field(default_factory=list)
    invalid: int = 0  # proposals that broke a constraint (not evaluated)
    repeated: int = 0  # proposals of a configuration already evaluated (not evaluated again)
    stopped: str = ""  # budget | time | exhausted | stale | interrupted

    @property
    def best(self) -> Evaluation | None:
        """The evaluated configuration with the smallest objective (the first, on a tie)."""
        ok = [e for e in self.evaluations if e.objective is not None]
        return min(ok, key=lambda e: (e.objective, e.index)) if ok else None

    def best_after(self, count: int) -> float | None:
        """The best objective among the first ``count`` evaluations."""
        ok = [e.objective for e in self.evaluations[:count] if e.objective is not None]
        return min(ok) if ok else None


def config_id(config: Config) -> str:
    """A configuration as a stable string (its tunables sorted by name)."""
    return json.dumps(sorted(config.items()), default=str)


def _sampler(strategy: str, seed: int, space: SearchSpace, batch: int = 1) -> Any:
    import warnings

    import optuna

    if strategy == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if strategy == "genetic":
        population = max(8, min(50, 2 * len(space.searched) + 4))
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    if strategy == "tpe":
        with warnings.catch_warnings():  # constant_liar is "experimental"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # proposals asked together: each pending one counts as a poor result, so that the
            # batch spreads instead of proposing the same point again
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=8, multivariate=True,
                                              constant_liar=batch > 1)
    raise ValueError(f"unknown strategy {strategy!r}: one of {', '.join(STRATEGIES)}")


def search(space: SearchSpace, evaluate: Callable[[Config], float | None] | None, *,
           strategy: str = "tpe", seed: int = 0, max_evaluations: int | None = None,
           budget_s: float | None = None, start: list[Config] | None = None,
           on_evaluation: Callable[[Evaluation, SearchResult], None] | None = None,
           should_stop: Callable[[], bool] | None = None,
           evaluate_batch: Callable[[list[Config]], list[float | None]] | None = None,
           batch: int = 1,
           ) -> SearchResult:
    """Evaluate configurations of ``space`` as ``strategy`` proposes them. ``start``: configurations
    to evaluate first (the current one, what won before for similar specs); ``on_evaluation`` is
    called after each evaluation (progress, a chart). ``evaluate_batch``: evaluates a list of
    at most ``batch`` configurations in one call, their objectives in the same order (it is used
    instead of ``evaluate``, which may then be None). The search ends with ``stopped``
    "interrupted" on KeyboardInterrupt (the evaluation, or the batch, under way is dropped) or,
    after the one under way, once ``should_stop()`` is true (a Ctrl-C the caller caught)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: one of {', '.join(STRATEGIES)}")
    if batch < 1:
        raise ValueError(f"batch {batch}: at least one evaluation at a time")
    if evaluate is None and evaluate_batch is None:
        raise ValueError("search needs evaluate or evaluate_batch")
    result = SearchResult(strategy, seed)
    known: dict[str, float | None] = {}
    deadline = None if budget_s is None else time.monotonic() + budget_s
    valid_total = space.valid_count() if strategy != "exhaustive" else None

    def spent() -> str | None:
        if should_stop is not None and should_stop():
            return "interrupted"
        if max_evaluations is not None and len(result.evaluations) >= max_evaluations:
            return "budget"
        if deadline is not None and time.monotonic() >= deadline:
            return "time"
        if valid_total is not None and len(known) >= valid_total:
            return "exhausted"
        return None

    def room() -> int:
        """How many evaluations the next batch may hold (at least 1 while the budget lasts)."""
        if max_evaluations is None:
            return batch
        return max(1, min(batch, max_evaluations - len(result.evaluations)))

    def run_batch(configs: list[Config]) -> list[float | None]:
        """Evaluate ``configs`` (new ones), record each, and return their objectives."""
        values = None
        if evaluate_batch is not None:
            values = list(evaluate_batch([dict(config) for config in configs]))
            if len(values) != len(configs):
                raise ValueError(f"evaluate_batch returned {len(values)} objectives for "
                                 f"{len(configs)} configurations")
        found = []
        for position, config in enumerate(configs):
            value = values[position] if values is not None else evaluate(config)
            evaluation = Evaluation(dict(config), value, len(result.evaluations))
            result.evaluations.append(evaluation)
            known[config_id(config)] = value
            if on_evaluation is not None:
                on_evaluation(evaluation, result)
            found.append(value)
        return found

    def run_all(configs: Iterable[Config]) -> str | None:
        """Evaluate the valid ``configs`` not evaluated yet, in batches; why the search stopped
        before the end, else None."""
        pending = iter(configs)  # drawn lazily: an exhaustive space may hold millions
        while True:
            size, chosen, keys = room(), [], set()
            for config in pending:
                key = config_id(config)
                if key not in known and key not in keys and space.valid(config):
                    chosen.append(config)
                    keys.add(key)
                    if len(chosen) == size:
                        break
            if not chosen:  # every one evaluated: exhausted, even if the budget is spent too
                return None
            if (reason := spent()) is not None:
                return reason
            run_batch(chosen)

    try:
        if (reason := run_all(space.complete(config) for config in start or [])) is not None:
            result.stopped = reason
            return result
        if strategy == "exhaustive":
            result.stopped = run_all(space.configurations()) or "exhausted"
            return result
        result.stopped = _ask_and_tell(space, strategy, seed, result, known, run_batch, spent,
                                       room, batch)
    except KeyboardInterrupt:
        result.stopped = "interrupted"
    return result


def _ask_and_tell(space: SearchSpace, strategy: str, seed: int, result: SearchResult,
                  known: dict[str, float | None],
                  run_batch: Callable[[list[Config]], list[float | None]],
                  spent: Callable[[], str | None], room: Callable[[], int], batch: int) -> str:
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize",
                                sampler=_sampler(strategy, seed, space, batch))
    distributions = {name: CategoricalDistribution(list(choices))
                     for name, choices in space.choices.items() if len(choices) > 1}
    fixed = {name: choices[0] for name, choices in space.choices.items() if len(choices) == 1}
    for config_key, value in known.items():  # what ``start`` evaluated
        config = dict(json.loads(config_key))
        params = {name: config[name] for name in distributions}
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=distributions, value=value)
            if value is not None else
            optuna.trial.create_trial(params=params, distributions=distributions,
                                      state=TrialState.FAIL))

    def tell(trial: Any, value: float | None) -> None:
        if value is None:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, value)

    stale = 0
    while (reason := spent()) is None:
        if stale >= STALE_PROPOSALS:
            return "stale"
        # ask up to room() new configurations; a proposal made twice in one batch is told once
        # its value is known
        proposed: dict[str, list[Any]] = {}  # config_id -> its trials
        configs: list[Config] = []
        size = room()
        while len(configs) < size and stale < STALE_PROPOSALS:
            trial = study.ask(distributions)
            config = {**fixed, **trial.params}
            config = {name: config[name] for name in space.choices}  # the spec's order
            if not space.valid(config):
                result.invalid += 1
                stale += 1
                study.tell(trial, state=TrialState.FAIL)
                continue
            key = config_id(config)
            if key in known or key in proposed:
                result.repeated += 1
                stale += 1
                if key in known:
                    tell(trial, known[key])
                else:
                    proposed[key].append(trial)
                continue
            stale = 0
            proposed[key] = [trial]
            configs.append(config)
        if configs:
            for config, value in zip(configs, run_batch(configs), strict=True):
                for trial in proposed[config_id(config)]:
                    tell(trial, value)
    return reason
