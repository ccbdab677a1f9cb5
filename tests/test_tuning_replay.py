"""koschei.tuning.replay: strategies replayed on a complete landscape, measuring nothing."""

from __future__ import annotations

import pytest
from test_tuning_search import SPACE, objective

from koschei.tuning.replay import (
    IncompleteLandscape,
    evaluations_to,
    landscape,
    replay,
    study,
)
from koschei.tuning.search import config_id


def values_of(space, objective_of):
    return landscape(space, objective_of)


def test_a_landscape_holds_every_valid_configuration_or_says_what_is_missing():
    values = values_of(SPACE, objective)
    assert len(values) == SPACE.valid_count()
    missing = {config_id(c) for c in list(SPACE.configurations())[:5]}
    with pytest.raises(IncompleteLandscape, match=f"5 of {SPACE.valid_count()} valid configurations have no "
                                                  "result in the log"):
        landscape(SPACE, lambda c: ... if config_id(c) in missing else objective(c))
    with pytest.raises(IncompleteLandscape, match="every configuration in the log failed"):
        landscape(SPACE, lambda c: None)


def test_a_replay_reads_values_and_never_evaluates_anything_else():
    values = values_of(SPACE, objective)
    asked: list[str] = []

    class Recording(dict):
        def __getitem__(self, key):
            asked.append(key)
            return super().__getitem__(key)

    found = replay(SPACE, Recording(values), "tpe", seed=1, max_evaluations=20)
    assert len(found.evaluations) == 20 and len(set(asked)) == 20
    assert [e.objective for e in found.evaluations] == [values[k] for k in asked]


def test_evaluations_to_counts_until_the_best_so_far_reaches_a_threshold():
    values = values_of(SPACE, objective)
    found = replay(SPACE, values, "exhaustive", seed=0)
    best = min(v for v in values.values() if v is not None)
    assert evaluations_to(found, best) == 1 + next(
        i for i, e in enumerate(found.evaluations) if e.objective == best)
    assert evaluations_to(found, best / 2) is None


def test_the_study_reports_each_strategy_over_seeds_against_the_exhaustive_optimum():
    values = values_of(SPACE, objective)
    values[config_id(SPACE.defaults)] = None  # a failed candidate is never the optimum
    result = study(SPACE, values, seeds=(0, 1, 2), max_evaluations=120)
    assert result.configurations == SPACE.valid_count() and result.failures == 1
    assert result.optimum_config == {"rows": 8, "depth": 384, "cols": 512, "order": "zig"}
    assert result.optimum == pytest.approx(1.0) and result.default_objective is None
    assert [row.strategy for row in result.strategies] == ["random", "genetic", "tpe"]
    for row in result.strategies:
        assert len(row.to_within) == len(row.to_optimum) == 3
        for within, exact in zip(row.to_within, row.to_optimum, strict=True):
            assert within is None or exact is None or within <= exact <= 120
    tpe = result.strategies[-1]
    # on this smooth landscape the model finds a configuration within 5% in a fraction of it
    assert tpe.median_to_within is not None and tpe.fraction_to_within < 0.25
