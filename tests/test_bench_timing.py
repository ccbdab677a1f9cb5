"""Interleaved timing: contenders timed in the same rotating rounds, tiny calls batched, and the
engine timed alone and beside a busy process in alternating rounds."""

from __future__ import annotations

import math
import time

import numpy as np

from koschei.bench.timing import MIN_ROUNDS, measure_contention, measure_interleaved


def test_interleaved_timing_rotates_and_stops():
    calls: list[str] = []
    contenders = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    timings, stopped = measure_interleaved(contenders, budget_s=0.05)
    assert stopped in ("stable", "budget", "max_rounds")
    assert {t.rounds for t in timings.values()} == {timings["a"].rounds}
    assert all(t.batch > 1 for t in timings.values()), "tiny calls are batched"
    assert all(math.isfinite(t.median_s) and t.median_s > 0 for t in timings.values())


def test_contention_pairs_quiet_and_busy_rounds():
    data = np.ones(1 << 16)
    result = measure_contention(lambda: float(data.sum()), budget_s=0.2)
    assert result["rounds"] >= MIN_ROUNDS
    assert result["quiet_median_s"] > 0 and result["busy_median_s"] > 0
    assert result["slowdown"] > 0
    assert result["warm_call_s"] > 0 and result["after_blas_call_s"] > 0
    assert result["after_blas_slowdown"] > 0


def test_warm_up_runs_untimed_before_each_sample():
    """A contender whose first call after another contender's is slow (its caches taken): with
    warm-up calls before each sample, no sample contains that slow call."""
    state = {"last": None}

    def contender(name: str, slow_after_other: float):
        def call():
            if state["last"] != name:
                time.sleep(slow_after_other)
            state["last"] = name
        return call

    # three: with the order rotating, no contender ever follows itself from one round to the next
    contenders = {name: contender(name, 0.004) for name in ("a", "b", "c")}
    cold, _ = measure_interleaved(contenders, budget_s=0.05)
    warm, _ = measure_interleaved(contenders, budget_s=0.05, warm_s=0.001)
    # cold: every sample's batch starts with the slow call; warm: none does
    assert all(timing.min_s * timing.batch >= 0.004 for timing in cold.values())
    assert all(timing.median_s < 0.001 for timing in warm.values())
