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
configuration has been evaluated, or when the strategy keeps proposing only known or invalid
configurations.

``evaluate(config)`` is the caller's: it returns the configuration's objective (smaller is
better: the evaluator's time relative to the current configuration), or None for a candidate
that failed (it did not compile, gave wrong results, crashed, timed out); a failure is never
the best. Whether a value came from a cache is the evaluator's business too: a search that
replays a complete cache measures nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
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


def _sampler(strategy: str, seed: int, space: SearchSpace) -> Any:
    import optuna

    if strategy == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if strategy == "genetic":
        population = max(8, min(50, 2 * len(space.searched) + 4))
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    if strategy == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=8, multivariate=True)
    raise ValueError(f"unknown strategy {strategy!r}: one of {', '.join(STRATEGIES)}")


def search(space: SearchSpace, evaluate: Callable[[Config], float | None], *,
           strategy: str = "tpe", seed: int = 0, max_evaluations: int | None = None,
           budget_s: float | None = None, start: list[Config] | None = None,
           on_evaluation: Callable[[Evaluation, SearchResult], None] | None = None,
           ) -> SearchResult:
    """Evaluate configurations of ``space`` as ``strategy`` proposes them. ``start``: configurations
    to evaluate first (the current one, what won before for similar specs); ``on_evaluation`` is
    called after each evaluation (progress, a chart). KeyboardInterrupt ends the search after
    the evaluation under way, with ``stopped`` "interrupted"."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: one of {', '.join(STRATEGIES)}")
    result = SearchResult(strategy, seed)
    known: dict[str, float | None] = {}
    deadline = None if budget_s is None else time.monotonic() + budget_s
    valid_total = space.valid_count() if strategy != "exhaustive" else None

    def spent() -> str | None:
        if max_evaluations is not None and len(result.evaluations) >= max_evaluations:
            return "budget"
        if deadline is not None and time.monotonic() >= deadline:
            return "time"
        if valid_total is not None and len(known) >= valid_total:
            return "exhausted"
        return None

    def run_one(config: Config) -> float | None:
        value = evaluate(config)
        evaluation = Evaluation(dict(config), value, len(result.evaluations))
        result.evaluations.append(evaluation)
        known[config_id(config)] = value
        if on_evaluation is not None:
            on_evaluation(evaluation, result)
        return value

    try:
        for config in start or []:
            config = space.complete(config)
            if config_id(config) in known or not space.valid(config):
                continue
            if (reason := spent()) is not None:
                result.stopped = reason
                return result
            run_one(config)
        if strategy == "exhaustive":
            for config in space.configurations():
                if config_id(config) in known:
                    continue
                if (reason := spent()) is not None:
                    result.stopped = reason
                    return result
                run_one(config)
            result.stopped = "exhausted"
            return result
        result.stopped = _ask_and_tell(space, strategy, seed, result, known, run_one, spent)
    except KeyboardInterrupt:
        result.stopped = "interrupted"
    return result


def _ask_and_tell(space: SearchSpace, strategy: str, seed: int, result: SearchResult,
                  known: dict[str, float | None], run_one: Callable[[Config], float | None],
                  spent: Callable[[], str | None]) -> str:
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=_sampler(strategy, seed, space))
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
    stale = 0
    while (reason := spent()) is None:
        if stale >= STALE_PROPOSALS:
            return "stale"
        trial = study.ask(distributions)
        config = {**fixed, **trial.params}
        config = {name: config[name] for name in space.choices}  # the spec's order
        if not space.valid(config):
            result.invalid += 1
            stale += 1
            study.tell(trial, state=TrialState.FAIL)
            continue
        key = config_id(config)
        if key in known:
            result.repeated += 1
            stale += 1
            value = known[key]
        else:
            stale = 0
            value = run_one(config)
        if value is None:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, value)
    return reason
