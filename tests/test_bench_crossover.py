"""The crossover case: where a linear-time layer starts to beat softmax attention, and how the
cost of each grows; a short real run of every contender."""

import math

import numpy as np
import pytest

from koschei.bench import crossover as bench_crossover
from koschei.bench.crossover import DECODE, PREFILL, crossover, exponent
from koschei.bench.report import crossover_summary, crossover_table
from koschei.engine import _runtime
from koschei.phases.base import to_jsonable
from koschei.phases.benchmark import Options, model_selection


class _Progress:
    def step(self, _message: str) -> None:
        pass


def test_the_crossover_is_where_the_linear_layer_stays_faster():
    found = crossover(DECODE, "gla", "attention", {64: 2.0, 128: 1.5, 256: 0.5, 512: 0.25})
    assert (found.below, found.at) == (128, 256)
    # log-log interpolation: log ratio falls from log 1.5 to log 0.5 over one doubling
    expected = 128 * 2 ** (math.log(1.5) / (math.log(1.5) - math.log(0.5)))
    assert found.length == pytest.approx(expected)
    assert found.text.startswith("~") and "between 128 and 256" in found.text


def test_a_layer_faster_then_slower_again_has_its_crossover_after_the_last_loss():
    found = crossover(PREFILL, "gla", "sdpa", {128: 0.8, 256: 1.1, 512: 0.9, 1024: 0.5})
    assert (found.below, found.at) == (256, 512)


def test_faster_everywhere_and_never_faster_say_so():
    everywhere = crossover(DECODE, "gla", "attention", {64: 0.9, 128: 0.5})
    assert (everywhere.below, everywhere.at, everywhere.length) == (None, 64, 64.0)
    assert everywhere.text.startswith("≤ 64")
    never = crossover(DECODE, "gla", "attention", {64: 1.5, 128: 1.2})
    assert (never.at, never.length) == (None, None) and never.text.startswith("never")


def test_the_exponent_is_the_slope_over_the_upper_half():
    lengths = [128, 256, 512, 1024, 2048, 4096]
    quadratic = [1e-6 + (n / 1024) ** 2 for n in lengths]  # a fixed cost, then n^2
    assert exponent(lengths, quadratic) == pytest.approx(2.0, abs=0.02)
    assert exponent(lengths, [5e-3] * 6) == pytest.approx(0.0, abs=1e-9)
    assert exponent([128], [1.0]) is None


def test_the_case_is_asked_for_by_name_and_never_by_default():
    decoders, encoders, crossovers = model_selection(Options(models=["crossover"]))
    assert (decoders, encoders, crossovers) == ([], [], ["crossover"])
    assert model_selection(Options())[2] == []


def test_a_short_run_measures_every_contender_and_finds_the_crossovers(monkeypatch):
    """Every contender at two short lengths per mode, checked before it is timed; a ratio per
    length for each linear and softmax pair, and a JSON record."""
    monkeypatch.setattr(bench_crossover, "LAYERS", 2)
    with _runtime.threads(1):
        case = bench_crossover.run_crossover_case(0.01, _Progress(), threads=1,
                                                  decode_contexts=(16, 64),
                                                  prefill_lengths=(16, 64))
    assert case.verdict == "ok", case.error
    contenders = case.contenders()
    assert set(contenders) == set(bench_crossover.CONTENDERS)  # the engine has every kernel
    for mode in (DECODE, PREFILL):
        assert case.lengths(mode) == [16, 64]
        for name in contenders:
            assert all(case.median(mode, name, n) > 0 for n in (16, 64))
        header, rows = crossover_table(case, mode)
        assert header == ["contender", "16", "64"] and len(rows) == len(contenders)
    linear = [name for name in contenders if name in bench_crossover.LINEAR]
    softmax = [name for name in contenders if name in bench_crossover.SOFTMAX]
    assert len(case.crossovers) == 2 * len(linear) * len(softmax)
    assert all(set(c.ratios) == {16, 64} and c.text for c in case.crossovers)
    assert set(case.checks) >= set(bench_crossover.LINEAR)
    assert all(error < 1e-3 for error in case.checks.values())
    assert len(crossover_summary(case)) >= len(case.crossovers)
    record = to_jsonable(case)
    assert record["crossovers"][0]["text"] and record["points"][0]["median_s"] > 0


def test_a_linear_layer_that_disagrees_with_its_reference_makes_the_case_wrong(monkeypatch):
    def broken_gla(*args, **kwargs):
        result = real_gla(*args, **kwargs)
        first = result[0] if isinstance(result, tuple) else result
        first += np.float32(0.5)
        return result

    from koschei import engine

    real_gla = engine.gla
    monkeypatch.setattr(engine, "gla", broken_gla)
    case = bench_crossover.run_crossover_case(0.01, _Progress(), threads=1,
                                              decode_contexts=(16,), prefill_lengths=(16,))
    assert case.verdict == "wrong"
    assert "gla" in case.error and "reference" in case.error
    assert case.points == []
