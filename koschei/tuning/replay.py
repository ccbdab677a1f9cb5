"""Replaying a complete search: how quickly each strategy finds the best configuration, measuring
nothing.

An exhaustive search leaves in its log (koschei.tuning.cache) a result for every valid
configuration of a space on one key (spec and template digests, case, machine). That is a
landscape: configuration -> objective (time over the defaults'; None for a failure).
``replay`` runs a strategy on it with an evaluator that only reads the landscape, so any number
of strategies and seeds cost no measurement, and ``study`` asks the question that matters for a
search budget: after how many evaluations is the best found within ``tolerance`` (5%) of the
exhaustive optimum, and after how many is it the optimum itself, per strategy, the median over
seeds, as a fraction of the exhaustive search's evaluations.

A replay starts from nothing (no incumbent, no learned configurations): it measures the
strategy, not the head start that ``koschei evolve`` gives it.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from koschei.tuning.search import STRATEGIES, SearchResult, config_id, search
from koschei.tuning.space import Config, SearchSpace

TOLERANCE = 0.05  # "within 5% of the optimum": objective <= optimum * 1.05
SEEDS = (0, 1, 2, 3, 4)
SAMPLED = tuple(strategy for strategy in STRATEGIES if strategy != "exhaustive")


class IncompleteLandscape(ValueError):
    """The log lacks results for some valid configurations: it was not an exhaustive search."""


def landscape(space: SearchSpace, objective_of: Callable[[Config], float | None | Any],
              ) -> dict[str, float | None]:
    """Every valid configuration's objective, as ``objective_of`` reads it from a log (it returns
    ``...`` for a configuration the log lacks). IncompleteLandscape names what is missing."""
    found: dict[str, float | None] = {}
    missing: list[Config] = []
    for config in space.configurations():
        value = objective_of(config)
        if value is ...:
            missing.append(config)
        else:
            found[config_id(config)] = value
    if missing:
        shown = "; ".join(", ".join(f"{k}={config[k]}" for k in space.searched)
                          for config in missing[:3])
        raise IncompleteLandscape(
            f"{len(missing)} of {len(missing) + len(found)} valid configurations have no result "
            f"in the log (e.g. {shown})")
    if all(value is None for value in found.values()):
        raise IncompleteLandscape("every configuration in the log failed: there is no optimum")
    return found


def replay(space: SearchSpace, values: Mapping[str, float | None], strategy: str, seed: int,
           max_evaluations: int | None = None) -> SearchResult:
    """``strategy`` over ``space``, each evaluation read from ``values`` (nothing is measured)."""
    return search(space, lambda config: values[config_id(config)], strategy=strategy, seed=seed,
                  max_evaluations=max_evaluations)


def evaluations_to(result: SearchResult, threshold: float) -> int | None:
    """The number of evaluations after which the best found is at most ``threshold`` (None:
    never, within the search's budget)."""
    best = None
    for count, evaluation in enumerate(result.evaluations, start=1):
        if evaluation.objective is not None and (best is None or evaluation.objective < best):
            best = evaluation.objective
        if best is not None and best <= threshold:
            return count
    return None


@dataclass
class StrategyReplay:
    strategy: str
    # per seed: evaluations until within tolerance of the optimum / until the optimum (None:
    # not within the budget)
    to_within: list[int | None] = field(default_factory=list)
    to_optimum: list[int | None] = field(default_factory=list)
    median_to_within: float | None = None  # None when most seeds never got there
    median_to_optimum: float | None = None
    fraction_to_within: float | None = None  # of the exhaustive search's evaluations


@dataclass
class ReplayStudy:
    configurations: int  # valid configurations: what the exhaustive search evaluated
    failures: int  # of those, failed candidates
    optimum: float
    optimum_config: dict[str, Any]
    default_objective: float | None
    tolerance: float
    seeds: list[int]
    max_evaluations: int
    strategies: list[StrategyReplay] = field(default_factory=list)


def _median(counts: list[int | None]) -> float | None:
    """The median, a search that never got there counting as infinitely many evaluations."""
    ordered = sorted(counts, key=lambda c: float("inf") if c is None else c)
    middle = len(ordered) // 2
    picks = ordered[middle:middle + 1] if len(ordered) % 2 else ordered[middle - 1:middle + 1]
    if any(pick is None for pick in picks):
        return None
    return float(statistics.mean(picks))


def study(space: SearchSpace, values: Mapping[str, float | None], *,
          strategies: tuple[str, ...] = SAMPLED, seeds: tuple[int, ...] = SEEDS,
          tolerance: float = TOLERANCE, max_evaluations: int | None = None) -> ReplayStudy:
    """Replay each strategy with each seed on a complete landscape (see the module docstring).
    ``max_evaluations`` defaults to the whole space (a strategy may then need all of it)."""
    ok = {key: value for key, value in values.items() if value is not None}
    optimum_key = min(ok, key=lambda key: (ok[key], key))
    optimum = ok[optimum_key]
    budget = max_evaluations or len(values)
    result = ReplayStudy(configurations=len(values), failures=len(values) - len(ok),
                         optimum=optimum, optimum_config=dict(json.loads(optimum_key)),
                         default_objective=values.get(config_id(space.defaults)),
                         tolerance=tolerance, seeds=list(seeds), max_evaluations=budget)
    for strategy in strategies:
        row = StrategyReplay(strategy)
        for seed in seeds:
            found = replay(space, values, strategy, seed, budget)
            row.to_within.append(evaluations_to(found, optimum * (1.0 + tolerance)))
            row.to_optimum.append(evaluations_to(found, optimum))
        row.median_to_within = _median(row.to_within)
        row.median_to_optimum = _median(row.to_optimum)
        if row.median_to_within is not None:
            row.fraction_to_within = row.median_to_within / len(values)
        result.strategies.append(row)
    return result


__all__ = ["IncompleteLandscape", "ReplayStudy", "StrategyReplay", "evaluations_to",
           "landscape", "replay", "study"]
