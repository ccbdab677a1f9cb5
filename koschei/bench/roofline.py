"""The derived figures of a measured case: bytes, FLOPs, GB/s, GFLOP/s, intensity and the
roofline fraction against the case's own ceiling (``koschei.bench.calibration``).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from koschei.bench.calibration import Calibration
from koschei.bench.check import evaluate_formula
from koschei.bench.results import CaseResult


def roofline_fraction(moved: float, operations: float, seconds: float, bandwidth: float,
                      peak: float) -> tuple[Literal["memory", "compute"], float]:
    """The bound and achieved / attainable, attainable = min(peak, intensity * bandwidth)."""
    if moved > 0 and operations / moved * bandwidth < peak:
        # attainable = intensity * bandwidth, so achieved/attainable is achieved bytes/s over
        # bandwidth (which also holds for kernels that do no floating-point work)
        return "memory", moved / seconds / bandwidth
    return "compute", operations / seconds / peak


def derive(result: CaseResult, bench: Any, names: dict[str, Any],
           calibration: Calibration, output_nbytes: float) -> None:
    """Bytes (read and written), FLOPs, GB/s, GFLOP/s and intensity from the engine median, and
    the roofline fraction against this case's own ceiling: the bandwidth that the memory level
    its working set is served from allows for its mix of reads and writes (``Calibration.
    ceiling``; DRAM for cold inputs), and the multiply-add peak. A fraction above 1 means the ceiling
    or the spec's formulas are wrong: the case becomes ``over_ceiling``, never a headline."""
    seconds = result.contenders["engine"].median_s
    moved = float(evaluate_formula(bench.bytes, names))
    written = (float(evaluate_formula(bench.written, names)) if bench.written is not None
               else min(output_nbytes, moved))
    operations = float(evaluate_formula(bench.flops, names))
    result.bytes, result.written_bytes, result.read_bytes = moved, written, max(moved - written, 0)
    result.flops = operations
    result.gbs = moved / seconds / 1e9
    result.gflops = operations / seconds / 1e9
    result.intensity = operations / moved if moved > 0 else None
    working_set = max(moved, calibration.cold_bytes) if result.cold_inputs else moved
    ceiling = calibration.ceiling(result.read_bytes, written, working_set)
    result.memory_level, result.ceiling_gbs = ceiling.level, ceiling.bandwidth_gbs
    result.ceiling_model = ceiling.model
    peak = calibration.peak_flops_per_s
    bandwidth = ceiling.bandwidth_gbs * 1e9
    result.bound, result.roofline_fraction = roofline_fraction(moved, operations, seconds,
                                                               bandwidth, peak)
    attainable = peak if moved <= 0 else min(peak, operations / moved * bandwidth)
    result.attainable_gflops = attainable / 1e9
    if result.roofline_fraction > 1:
        achieved = (f"{result.gbs:.1f} GB/s against a {ceiling.level} ceiling of "
                    f"{ceiling.bandwidth_gbs:.1f} GB/s ({ceiling.model})"
                    if result.bound == "memory" else
                    f"{result.gflops:.1f} GFLOP/s against the multiply-add peak's {peak / 1e9:.1f}")
        result.verdict = "over_ceiling"
        result.error = (f"measured {result.roofline_fraction:.0%} of its ceiling: {achieved}. A "
                        "kernel cannot beat the machine: the spec's bytes/flops formulas count "
                        "more than the kernel moves, or the calibration is low (koschei "
                        "benchmark --recalibrate)")


def output_bytes(outputs: Any) -> float:
    """The bytes of an output array, or of a tuple of them (what a kernel writes)."""
    arrays = outputs if isinstance(outputs, tuple) else (outputs,)
    return float(sum(np.asarray(array).nbytes for array in arrays))
