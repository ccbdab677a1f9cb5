"""koschei.tuning.search: the strategies over a search space, on objectives computed here (a
search's logic does not need a kernel: the evaluator is the caller's)."""

from __future__ import annotations

import statistics
from typing import ClassVar

import pytest

from koschei.specs.schema import Constraint, Tunable
from koschei.tuning.search import STRATEGIES, config_id, search
from koschei.tuning.space import SearchSpace


class BlockSpec:
    """Four tunables, 4 x 5 x 4 x 4 = 320 configurations, one constraint."""

    name = "block"
    tunables: ClassVar = {
        "rows": Tunable(choices=[4, 6, 8, 12], default=4),
        "depth": Tunable(choices=[64, 128, 256, 384, 512], default=128),
        "cols": Tunable(choices=[256, 512, 1024, 2048], default=1024),
        "order": Tunable(choices=["ij", "ji", "zig", "zag"], default="ij"),
    }
    tunable_constraints: ClassVar = [Constraint(check="rows * depth <= 4096",
                                                message="fits in L1")]


SPACE = SearchSpace.of(BlockSpec())


def objective(config):
    """A smooth landscape with one best point (rows 8, depth 384 is invalid: 3072 fits; the
    optimum is rows 8, depth 384, cols 512, order "zig"), plus a ridge per tunable."""
    rows = {4: 1.3, 6: 1.1, 8: 1.0, 12: 1.2}[config["rows"]]
    depth = {64: 1.5, 128: 1.2, 256: 1.05, 384: 1.0, 512: 1.1}[config["depth"]]
    cols = {256: 1.1, 512: 1.0, 1024: 1.02, 2048: 1.3}[config["cols"]]
    order = {"ij": 1.1, "ji": 1.15, "zig": 1.0, "zag": 1.25}[config["order"]]
    return rows * depth * cols * order


def test_exhaustive_evaluates_every_valid_configuration_once_and_finds_the_best():
    result = search(SPACE, objective, strategy="exhaustive")
    assert len(result.evaluations) == SPACE.valid_count() < SPACE.size
    assert len({config_id(e.config) for e in result.evaluations}) == len(result.evaluations)
    assert all(SPACE.valid(e.config) for e in result.evaluations)
    assert result.best.config == {"rows": 8, "depth": 384, "cols": 512, "order": "zig"}
    assert result.stopped == "exhausted"


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "exhaustive"])
def test_a_seed_makes_a_search_reproducible_and_invalid_proposals_are_never_evaluated(strategy):
    runs = [search(SPACE, objective, strategy=strategy, seed=7, max_evaluations=30)
            for _ in range(2)]
    assert [e.config for e in runs[0].evaluations] == [e.config for e in runs[1].evaluations]
    assert len(runs[0].evaluations) == 30 and runs[0].stopped == "budget"
    assert all(SPACE.valid(e.config) for e in runs[0].evaluations)
    assert len({config_id(e.config) for e in runs[0].evaluations}) == 30  # no repeats measured
    other = search(SPACE, objective, strategy=strategy, seed=8, max_evaluations=30)
    assert [e.config for e in other.evaluations] != [e.config for e in runs[0].evaluations]


def test_the_model_based_and_genetic_searches_beat_random_to_the_optimum():
    """Within 5% of the exhaustive optimum in at most a quarter of its evaluations (median over
    five seeds), for the genetic and model-based strategies; random is shown beside them."""
    optimum = search(SPACE, objective, strategy="exhaustive").best.objective
    quarter = SPACE.valid_count() // 4
    reached = {}
    for strategy in ("random", "genetic", "tpe"):
        found = [search(SPACE, objective, strategy=strategy, seed=seed,
                        max_evaluations=quarter).best.objective for seed in range(5)]
        reached[strategy] = statistics.median(found) / optimum
    assert reached["genetic"] <= 1.05 and reached["tpe"] <= 1.05, reached


def test_failures_are_never_the_best_and_start_configurations_come_first():
    def failing(config):
        return None if config["order"] == "zig" else objective(config)

    start = [{"rows": 12, "depth": 256}, {"rows": 4}]
    result = search(SPACE, failing, strategy="tpe", seed=1, max_evaluations=40, start=start)
    assert [e.config for e in result.evaluations[:2]] == [SPACE.complete(c) for c in start]
    assert result.best.config["order"] != "zig"
    assert any(e.objective is None for e in result.evaluations)


def test_a_time_budget_and_an_interrupt_end_the_search_after_the_evaluation_under_way():
    calls = []

    def interrupted(config):
        calls.append(config)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return objective(config)

    result = search(SPACE, interrupted, strategy="random", seed=0, max_evaluations=50)
    assert result.stopped == "interrupted" and len(result.evaluations) == 4
    timed = search(SPACE, objective, strategy="random", seed=0, budget_s=0.0)
    assert timed.stopped == "time" and timed.evaluations == []


def test_a_small_space_is_exhausted_without_repeats():
    small = SearchSpace.of(BlockSpec(), only=["rows"])
    result = search(small, objective, strategy="tpe", seed=0, max_evaluations=100)
    assert len(result.evaluations) == 4 and result.stopped == "exhausted"


def test_an_exhaustive_search_whose_budget_is_the_space_says_exhausted():
    result = search(SPACE, objective, strategy="exhaustive",
                    max_evaluations=SPACE.valid_count())
    assert result.stopped == "exhausted" and len(result.evaluations) == SPACE.valid_count()
    short = search(SPACE, objective, strategy="exhaustive",
                   max_evaluations=SPACE.valid_count() - 1)
    assert short.stopped == "budget"
