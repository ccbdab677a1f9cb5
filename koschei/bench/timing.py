"""Interleaved timing and its statistics: how the benchmark times contenders against each other.

- ``measure_interleaved``: each contender is warmed up (``WARM_UP_S``), given a batch of calls
  per sample so that a sample lasts at least ``SAMPLE_MIN_S``, then timed round by round with
  the order rotating each round, the garbage collector off, until the budget runs out (after at
  least ``MIN_ROUNDS``) or every median is stable (``STABLE_RELATIVE_IQR`` after
  ``STABLE_ROUNDS``); the result per contender is a ``ContenderTiming``.
- ``paired_speedup``: the median over rounds of one contender's time over another's from the same
  round; ``mann_whitney_p``: the one-sided significance test that compares samples of two runs
  (``SIGNIFICANCE_P``).
- ``OtherWork``: the share of the machine's cores that other processes kept busy over a block.
- ``measure_contention``: a call timed alone and beside one other busy process in alternating
  rounds, and right after a BLAS call.
"""

from __future__ import annotations

import gc
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from koschei.errors import UsageError

SAMPLE_MIN_S = 1e-3  # a timed sample (a batch of calls) lasts at least this long
WARM_UP_S = 5e-3  # each contender is called for this long before timing (at least once)
MIN_ROUNDS = 5  # even past the budget: a median, and a U test that can reach p < 0.01
STABLE_ROUNDS = 10  # rounds before a stable median may end the case early
STABLE_RELATIVE_IQR = 0.02  # a median is stable when IQR / median is at most this
MAX_ROUNDS = 2000
MAX_BATCH = 100_000
SIGNIFICANCE_P = 0.01


@dataclass
class ContenderTiming:
    """One contender's timing over the rounds of a measurement."""

    median_s: float
    iqr_s: float
    rounds: int
    batch: int  # calls per sample
    min_s: float
    samples_s: list[float]  # one per round: seconds per call, averaged over the batch

    @property
    def relative_iqr(self) -> float:
        return self.iqr_s / self.median_s if self.median_s > 0 else math.inf


def _time_batch(call: Callable[[], Any], batch: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(batch):
        call()
    return (time.perf_counter_ns() - start) / 1e9 / batch


def _warm_up(call: Callable[[], Any], seconds: float = WARM_UP_S) -> None:
    """Call until ``seconds`` have passed (at least once): caches, thread pools, lazy set-up."""
    deadline = time.perf_counter() + seconds
    call()
    while time.perf_counter() < deadline:
        call()


def _batch_size(call: Callable[[], Any]) -> int:
    """Calls per sample so that one sample lasts at least SAMPLE_MIN_S: grown like timeit's
    autorange, each size judged by the fastest of three timings (one preempted call must not
    leave the samples too short) unless a single timing is already far beyond the minimum."""
    batch = 1
    while True:
        per_call = _time_batch(call, batch)
        if per_call * batch < 20 * SAMPLE_MIN_S:
            per_call = min(per_call, _time_batch(call, batch), _time_batch(call, batch))
        if per_call * batch >= SAMPLE_MIN_S or batch >= MAX_BATCH:
            break
        grow = SAMPLE_MIN_S / max(per_call * batch, 1e-9)
        batch = min(MAX_BATCH, max(batch * 2, math.ceil(batch * min(grow * 1.1, 100))))
    return int(min(MAX_BATCH, max(batch, math.ceil(SAMPLE_MIN_S / max(per_call, 1e-9)))))


def _relative_iqr(samples: list[float]) -> float:
    q25, median, q75 = np.percentile(samples, [25, 50, 75])
    return float((q75 - q25) / median) if median > 0 else math.inf


def _summarize(samples: list[float], batch: int) -> ContenderTiming:
    values = np.asarray(samples)
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    return ContenderTiming(median_s=float(median), iqr_s=float(q75 - q25), rounds=len(samples),
                           batch=batch, min_s=float(values.min()),
                           samples_s=[float(v) for v in samples])


def measure_interleaved(contenders: dict[str, Callable[[], Any]], budget_s: float, *,
                        warm_s: float = 0.0) -> tuple[dict[str, ContenderTiming], str]:
    """Warm up, then time the contenders round by round (rotating order) until the budget is spent
    or every median is stable. Returns the timings and why it stopped.

    ``warm_s``: seconds of untimed calls of a contender (at least one) right before each of its
    samples, so that a sample measures it in its steady state (its weights back in the caches
    that the other contenders' calls took, the other contenders' thread pools, which spin for a
    while after their last call, wound down) rather than the first calls after another
    program's."""
    names = list(contenders)
    started = time.perf_counter()
    for name in names:
        _warm_up(contenders[name])
    batches = {name: _batch_size(contenders[name]) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        rounds = 0
        while True:
            shift = rounds % len(names)
            for name in names[shift:] + names[:shift]:
                if warm_s > 0:
                    _warm_up(contenders[name], warm_s)
                samples[name].append(_time_batch(contenders[name], batches[name]))
            rounds += 1
            if rounds >= STABLE_ROUNDS and all(
                    _relative_iqr(samples[n]) <= STABLE_RELATIVE_IQR for n in names):
                stopped = "stable"
                break
            if rounds >= MIN_ROUNDS and time.perf_counter() - started >= budget_s:
                stopped = "budget"
                break
            if rounds >= MAX_ROUNDS:
                stopped = "max_rounds"
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: _summarize(samples[name], batches[name]) for name in names}, stopped


def median_ratio(numerators: list[float], denominators: list[float]) -> float | None:
    """The median over rounds of numerator time / denominator time (both timed in the same
    round, the samples in round order); None without a round to compare."""
    ratios = [n / d for n, d in zip(numerators, denominators, strict=True) if d > 0]
    return float(np.median(ratios)) if ratios else None


def paired_speedup(baseline: ContenderTiming, engine: ContenderTiming) -> float | None:
    """Median over rounds of baseline time / engine time (both ran in the same round)."""
    return median_ratio(baseline.samples_s, engine.samples_s)


def mann_whitney_p(samples: list[float], baseline: list[float], alternative: str) -> float:
    """The p-value of a one-sided Mann-Whitney U test of ``samples`` against ``baseline``
    (``alternative``: "greater" or "less", as scipy names it)."""
    try:
        from scipy.stats import mannwhitneyu
    except ImportError:
        raise UsageError("--compare needs scipy for its significance test (Mann-Whitney U), "
                         "and scipy is not installed", hint="pip install scipy") from None
    return float(mannwhitneyu(samples, baseline, alternative=alternative).pvalue)


BUSY_SHARE = 0.1  # other processes using this share of the cores make a case's note


def _cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds every process has used, CPU seconds this process has used) so far, from
    Linux's /proc/stat; None where it is not available."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal: busy = all but idle and iowait
    values = [int(v) for v in fields[1:9]]
    busy = sum(values) - values[3] - values[4]
    return busy / os.sysconf("SC_CLK_TCK"), time.process_time()


class OtherWork:
    """Measures, over a ``with`` block, the share of the machine's cores that processes other
    than this one kept busy (``share``; None where the system does not say)."""

    def __enter__(self) -> Self:
        self.share: float | None = None
        self._start = _cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        end, started = _cpu_seconds(), self._start[0]
        wall = time.perf_counter() - self._start[1]
        if end is None or started is None or wall <= 0:
            return
        others = (end[0] - started[0]) - (end[1] - started[1])
        self.share = round(min(1.0, max(0.0, others / (wall * (os.cpu_count() or 1)))), 3)


CONTENTION_SETTLE_S = 2e-3  # after a busy process is resumed, before the engine is timed


def measure_contention(call: Callable[[], Any], budget_s: float, threads: int = 1,
                       ) -> dict[str, Any]:
    """The engine alone and beside other work, two ways:

    - beside one other busy process (a spinning interpreter), in alternating rounds: the process
      is stopped (SIGSTOP) for the quiet sample and resumed (SIGCONT) for the busy one, so both
      sides see the same machine. ``slowdown`` is the median of the per-round ratios busy /
      quiet; with T engine threads on T cores and one of the cores shared, a fair share is ~2x;
    - right after a NumPy GEMV on ``threads`` BLAS threads (OpenBLAS's pool keeps spinning for
      a while after a call): one call timed just after the GEMV against one timed just after
      another engine call, paired per round (``after_blas_slowdown``).
    """
    import signal
    import subprocess
    import sys

    from koschei.bench.calibration import after_blas

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.kill(busy.pid, signal.SIGSTOP)
        _warm_up(call)
        batch = _batch_size(call)
        quiet: list[float] = []
        loaded: list[float] = []
        started = time.perf_counter()
        while len(quiet) < MIN_ROUNDS or (time.perf_counter() - started < budget_s
                                          and len(quiet) < MAX_ROUNDS):
            os.kill(busy.pid, signal.SIGSTOP)
            quiet.append(_time_batch(call, batch))
            os.kill(busy.pid, signal.SIGCONT)
            time.sleep(CONTENTION_SETTLE_S)
            loaded.append(_time_batch(call, batch))
    finally:
        busy.kill()
        busy.wait()
    ratios = [b / q for q, b in zip(quiet, loaded, strict=True) if q > 0]
    return {"quiet_median_s": float(np.median(quiet)), "busy_median_s": float(np.median(loaded)),
            "slowdown": float(np.median(ratios)), "rounds": len(quiet), "batch": batch,
            "busy": "one spinning Python process",
            **after_blas(call, threads)}

