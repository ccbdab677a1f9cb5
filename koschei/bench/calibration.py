"""Machine calibration: the ceilings of this machine's roofline, measured once per fingerprint.

Memory levels are found by measurement. The read kernel (below) sweeps the working set
geometrically, from 8 KiB per thread upwards by factors of sqrt(2), each thread summing its own
slice over and over so that the slice stays in its core's caches; the bandwidth falls in steps.
A *plateau* is a run of at least PLATEAU_MIN_POINTS sizes whose bandwidths stay within
PLATEAU_TOLERANCE of each other (fastest / slowest), taking each size's bandwidth as the fastest
measured at it or any larger size (other work only slows a run down), see ``find_plateaus``. The
plateaus, innermost first, are L1, L2, ... and the last one is DRAM; while the largest size is
not on a plateau yet, the sweep grows (up to ``array_mib``). A level's capacity is the largest
size measured before the next level's bandwidth has settled (within PLATEAU_SETTLED of its
plateau's median): sizes in a transition, still partly served by the inner level, count as its,
so that its ceiling, not the slower next one, bounds them, and the next level's figures stay its
own (``levels_from_sweep``). The cache sizes sysfs reports only decide how far the first sweep
goes (twice the largest), never the levels: on a shared host the L3 it reports is not what one
process gets.

Each level's bandwidths come from these Numba ``parallel=True`` kernels over float64 arrays, each
thread on its own slice, repeated so that a timed call moves at least BYTES_PER_CALL:

  read      sum of a          8 vector sums, so that the loads, not the adder's latency, set the
                              pace, over 4 parts of the slice side by side (as a matrix-vector
                              product reads rows: more streams for the prefetcher to follow)
  write     a = v             ordinary stores
  write_nt  a = v             non-temporal stores: ``koschei.engine._runtime.stream_copy`` from a
                              scratch block in L1, as the engine writes its large outputs
  copy      a = b             ordinary stores; copy_nt: non-temporal ones
  triad     a = b + s * c     the STREAM triad; triad_nt: a through a scratch block in L1 and
                              non-temporal stores

at the working set in the geometric middle of the level's plateau; DRAM's at max(256 MiB, 4 x the
outermost cache capacity), at most ``array_mib``. The ordinary kernels move one cache line per
vector load or store (an intrinsic each): Numba's vectorizer keeps to 256-bit vectors on CPUs that
prefer them, which halves what L1 delivers, and a ceiling has to hold for kernels that use the full
width. The arrays are page-aligned and start at different offsets within a page (a load 4 KiB from a
pending store would wait on it). Bytes are counted logically, the STREAM way (McCalpin, "Memory
Bandwidth and Machine Balance in Current High Performance Computers", 1995): the bytes a kernel
reads plus those it writes, not the read of each line that an ordinary store to an uncached line
costs (write-allocate); the benchmark counts a case's bytes the same way. A level's read figure is
at least the fastest sweep point among the sizes it serves. Every call's result is checked (a long
output at about a million elements spread over it); a wrong one voids the calibration
(RuntimeError).

The ceiling of a kernel that reads R bytes and writes W bytes out of a working set served by a
level (``Calibration.ceiling``): each kernel measured there is a point (w, t), w its share of
bytes written (read 0, triad 1/3, copy 1/2, write 1) and t its time per byte (1 / bandwidth).
Memory can serve any point on the straight line between two measured ones, by serving part of
the bytes the way it did for one kernel and the rest the way it did for the other (the times
add). So the least time per byte the measurements allow at w = W / (R + W) is the lower convex
hull of the points, and the ceiling is 1 / hull(w), made of at most two measured kernels. It
reproduces read-only and write-only (the better of the two kinds of stores) exactly, copy too
unless a combination of other kernels beats it (then the ceiling is that combination's, higher),
and no measured kernel exceeds the ceiling of its own mix. A GEMV streaming its weights gets the
read figure, an elementwise ``out = x + y`` at least the triad's. Between measured shares the
hull is a straight line: hardware that overlaps reads and writes better at a share in between
could beat it there.

Compute: the cores' float32 multiply-add throughput, measured with the engine's own register
tile (``koschei.engine._simd.mma_tile``: 12 x 32 values of C in vector registers, its operands
in L1) running on every thread at once; no matrix product can exceed it, so it is the compute
ceiling. Beside it, single-precision GEMM FLOP/s from a float32 NumPy matmul (default 2048^3,
``2 n^3`` FLOPs): what the machine's BLAS reaches on this CPU.

Every figure is the best of ``repeats`` timed calls taken round by round over all the kernels and
sizes (a burst of other work then spoils one run of each, not every run of one), each after an
untimed call that brings its data into the caches, with Numba, BLAS and PyTorch held to the same
thread count; on a machine so busy that the rounds would outlast ``budget_s`` (60 s), fewer.
Results live in ``runs/calibration/<fingerprint>.json``, one entry per thread count, and are
reused until ``--recalibrate`` (or a new fingerprint: other CPU, other numpy/numba/torch
versions).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import cgutils
from numba.extending import intrinsic

from koschei.bench import machine
from koschei.engine import _runtime as _rt  # Numba's cache folder, set before any kernel
from koschei.engine._simd import mma_tile
from koschei.errors import UsageError
from koschei.files import write_json_atomic

# 4: memory levels from a measured sweep; read, write, copy, triad each
# 5: the float32 multiply-add peak of the register-tile kernel beside sgemm
# 6: that peak as the best of many short rounds (the clock of a shared machine wanders)
CALIBRATION_FORMAT = 6
MIB = 1024 * 1024
DEFAULT_ARRAY_MIB = 4096  # the largest working set measured: the sweep may grow to it
DRAM_MIN_BYTES = 256 * MIB  # DRAM's kernels use at least this working set (if array_mib allows)
DEFAULT_GEMM_N = 2048
DEFAULT_REPEATS = 7
DEFAULT_BUDGET_S = 60.0  # a busy machine gets fewer rounds rather than a longer calibration
SWEEP_START_BYTES = 8 * 1024  # per thread: the sweep's smallest working set
SWEEP_FIRST_TOP_BYTES = 512 * MIB  # the first sweep goes at least this far
PLATEAU_TOLERANCE = 0.2  # fastest / slowest on one plateau at most 1 + this
PLATEAU_MIN_POINTS = 4  # sizes on a plateau at least (a factor of 2.8 at sqrt(2) steps)
PLATEAU_SETTLED = 0.1  # a level serves sizes from where its plateau is this close to its median
DRAM_CACHE_MULTIPLE = 4  # DRAM's working set: at least this times the outermost cache capacity
COLD_CACHE_MULTIPLE = 2  # cold data: this times the outermost cache capacity ...
COLD_MIN_BYTES = 256 * MIB  # ... and at least this
BYTES_PER_CALL = 256 * MIB  # a timed call repeats its kernel until it moves at least this
LINE_BYTES = 64
LINE_ELEMENTS = LINE_BYTES // 8  # float64 in a cache line
PAGE_BYTES = 4096
PAGE_ELEMENTS = PAGE_BYTES // 8
# the arrays of one kernel start this many float64 (5 cache lines) apart within a page: a load
# 4 KiB away from a pending store would otherwise look like it to the store buffer and wait
STAGGER_ELEMENTS = 40
CHECKED_ELEMENTS = 1 << 20  # of a longer output, about this many are checked
SUM_ACCUMULATORS = 8  # vector sums of the read kernel ...
SUM_STREAMS = 4  # ... over this many parts of its slice side by side
SUM_GROUP = SUM_ACCUMULATORS * LINE_ELEMENTS  # float64 the read kernel sums per step
STREAM_BLOCK = 2048  # float64 elements of a non-temporal kernel's scratch block (16 KiB, in L1)
PATTERN_PERIOD = 1009  # the arrays hold element i = i % PATTERN_PERIOD: sums stay exact
MEMORY_SHARE = 0.5  # the calibration's arrays take at most this share of the free memory

# kernel -> (arrays it reads, arrays it writes); its bytes per pass are the working set
KERNEL_ARRAYS: dict[str, tuple[int, int]] = {
    "read": (1, 0), "write": (0, 1), "write_nt": (0, 1), "copy": (1, 1), "copy_nt": (1, 1),
    "triad": (2, 1), "triad_nt": (2, 1)}
ORDINARY, NON_TEMPORAL = "ordinary", "non-temporal"


def stores_of(kernel: str) -> str:
    """The kind of stores a calibration kernel writes with."""
    return NON_TEMPORAL if kernel.endswith("_nt") else ORDINARY


@dataclass(frozen=True)
class Ceiling:
    """The attainable bandwidth of one mix of reads and writes at one memory level."""

    level: str  # "L1", "L2", ..., "DRAM"
    bandwidth_gbs: float  # logical bytes (read + written) per second / 1e9
    stores: str  # "ordinary" | "non-temporal": the stores the ceiling's writes are made with
    model: str  # one line: how the figure was made of measured kernels


@dataclass(frozen=True)
class Calibration:
    """The roofline ceilings for one machine fingerprint at one thread count."""

    sgemm_gflops: float  # GFLOP/s = 1e9 float32 FLOP/s of an n x n x n matmul (2 n^3 FLOPs)
    # "L1", "L2", ..., "DRAM", innermost first -> capacity_bytes (None for DRAM),
    # plateau_from_bytes, plateau_to_bytes (its plateau in the sweep), working_set_bytes (where
    # its kernels were measured) and "<kernel>_gbs" for each of KERNEL_ARRAYS
    levels: dict[str, dict[str, float | None]]
    measured_at: str  # ISO-8601 UTC
    threads: int
    # 1-minute load average when measured: other work on the machine lowers every ceiling
    load_average: float | None = None
    sweep_bytes: list[int] = field(default_factory=list)  # the sweep's working sets ...
    sweep_read_gbs: list[float] = field(default_factory=list)  # ... and read bandwidths
    gemm_n: int = DEFAULT_GEMM_N
    repeats: int = DEFAULT_REPEATS
    duration_s: float | None = None  # how long the measurement took
    # GFLOP/s of the engine's register-tile kernel on every thread with its operands in L1:
    # the float32 multiply-add throughput of the cores, which no product can exceed
    fma_gflops: float | None = None

    def __post_init__(self) -> None:
        if "DRAM" not in self.levels:
            raise ValueError(f"a calibration needs a DRAM level, got {sorted(self.levels)}")
        # innermost first, whatever order they were stored in (JSON may sort the names)
        ordered = sorted(self.levels.items(), key=lambda item: _capacity_order(item[1]))
        object.__setattr__(self, "levels", dict(ordered))

    @property
    def peak_flops_per_s(self) -> float:
        """The compute ceiling: the cores' multiply-add throughput (sgemm's rate if higher)."""
        return max(self.sgemm_gflops, self.fma_gflops or 0.0) * 1e9

    @property
    def dram_read_gbs(self) -> float:
        """DRAM's read bandwidth: the ceiling of a kernel that streams data read once."""
        return float(self.levels["DRAM"]["read_gbs"])

    @property
    def largest_cache_bytes(self) -> int:
        """The measured capacity of the outermost cache level (0 when none was found)."""
        return int(max((level["capacity_bytes"] or 0 for level in self.levels.values()),
                       default=0))

    @property
    def cold_bytes(self) -> int:
        """Bytes of distinct data to rotate through so that none is cached when used again."""
        return int(max(COLD_MIN_BYTES, COLD_CACHE_MULTIPLE * self.largest_cache_bytes))

    def memory_level(self, working_set_bytes: float) -> str:
        """The innermost level whose measured capacity holds ``working_set_bytes``; "DRAM" when
        none does."""
        for name, level in self.levels.items():
            capacity = level["capacity_bytes"]
            if capacity is not None and working_set_bytes <= capacity:
                return name
        return "DRAM"

    def ceiling(self, read_bytes: float, written_bytes: float,
                working_set_bytes: float) -> Ceiling:
        """The bandwidth ceiling of a kernel that reads ``read_bytes`` and writes
        ``written_bytes`` out of ``working_set_bytes`` (see the module docstring)."""
        level = self.memory_level(working_set_bytes)
        return ceiling_of_mix(level, self.levels[level], read_bytes, written_bytes)

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary for reports."""
        return {"threads": self.threads, "measured_at": self.measured_at,
                "load_average": self.load_average, "sgemm_gflops": self.sgemm_gflops,
                "fma_gflops": self.fma_gflops, "peak_gflops": self.peak_flops_per_s / 1e9,
                "levels": {name: dict(level) for name, level in self.levels.items()}}


def _capacity_order(level: Mapping[str, Any]) -> tuple[bool, float]:
    capacity = level.get("capacity_bytes")
    return capacity is None, capacity or 0.0


# --- the ceiling of a mix -----------------------------------------------------------------------


class _Point(NamedTuple):
    share: float  # of the kernel's bytes that are written
    gbs: float
    kernel: str


def _lower_hull(points: Sequence[_Point]) -> list[_Point]:
    """The lower convex hull of the points in (share, time per byte = 1 / gbs), by share."""
    best: dict[float, _Point] = {}
    for point in points:
        if point.share not in best or point.gbs > best[point.share].gbs:
            best[point.share] = point
    hull: list[_Point] = []
    for point in sorted(best.values()):
        while len(hull) >= 2:
            (a_share, a_gbs, _), (b_share, b_gbs, _) = hull[-2], hull[-1]
            turn = ((b_share - a_share) * (1 / point.gbs - 1 / a_gbs)
                    - (1 / b_gbs - 1 / a_gbs) * (point.share - a_share))
            if turn > 0:
                break
            hull.pop()  # on or above the line from hull[-2] to point
        hull.append(point)
    return hull


def ceiling_of_mix(level: str, figures: Mapping[str, float | None], read_bytes: float,
                   written_bytes: float) -> Ceiling:
    """The ceiling of reading ``read_bytes`` and writing ``written_bytes`` at a level with these
    measured ``figures`` ("<kernel>_gbs"): the lower convex hull of the measured kernels' time
    per byte at the mix's share of writes (see the module docstring)."""
    if read_bytes < 0 or written_bytes < 0 or read_bytes + written_bytes <= 0:
        raise ValueError(f"a ceiling needs bytes to move, got read_bytes={read_bytes}, "
                         f"written_bytes={written_bytes}")
    points = [_Point(written / (read + written), float(gbs), kernel)
              for kernel, (read, written) in KERNEL_ARRAYS.items()
              if (gbs := figures.get(f"{kernel}_gbs")) is not None and gbs > 0]
    hull = _lower_hull(points)
    if hull[0].share != 0 or hull[-1].share != 1:
        raise ValueError(f"{level}: the read-only and write-only figures are both needed, got "
                         f"{sorted(figures)}")
    total = read_bytes + written_bytes
    share = written_bytes / total
    right = next(index for index, point in enumerate(hull) if point.share >= share)
    parts: list[tuple[_Point, float]]  # (measured kernel, bytes moved the way it moves them)
    if hull[right].share == share:
        parts = [(hull[right], total)]
    else:
        low, high = hull[right - 1], hull[right]
        high_bytes = (written_bytes - total * low.share) / (high.share - low.share)
        high_bytes = min(total, max(0.0, high_bytes))  # rounding
        parts = [(low, total - high_bytes), (high, high_bytes)]
    # one measured kernel's own mix: its figure exactly (total / (total / gbs) can round below)
    bandwidth = (parts[0][0].gbs if len(parts) == 1 else
                 total / sum(moved / point.gbs for point, moved in parts))
    writer = max(parts, key=lambda part: part[0].share * part[1])[0]
    stores = stores_of(writer.kernel) if written_bytes > 0 else ORDINARY
    made_of = " + ".join(f"{moved / MIB:.1f} MiB like {point.kernel} at {point.gbs:.1f} GB/s"
                         for point, moved in parts)
    model = (f"{level}: {read_bytes / MIB:.1f} MiB read + {written_bytes / MIB:.1f} MiB written "
             f"= {made_of}: {bandwidth:.1f} GB/s")
    return Ceiling(level=level, bandwidth_gbs=bandwidth, stores=stores, model=model)


# --- plateaus -----------------------------------------------------------------------------------


class Plateau(NamedTuple):
    """Sizes ``first`` to ``last`` (indices into a sweep, both included) of one plateau."""

    first: int
    last: int


def _envelope(bandwidths: Sequence[float]) -> list[float]:
    """Each bandwidth raised to the fastest measured at the same or a larger size."""
    return list(itertools.accumulate(reversed(bandwidths), max))[::-1]


def find_plateaus(bandwidths: Sequence[float], *, tolerance: float = PLATEAU_TOLERANCE,
                  min_points: int = PLATEAU_MIN_POINTS) -> list[Plateau]:
    """The plateaus of a sweep's bandwidths (by growing working set), innermost first.

    Other work on the machine only slows a measurement down, and a larger working set is not
    served faster than a smaller one, so each size counts with the fastest bandwidth measured at
    it or at any larger size: a dip left by a burst of other work is filled, a real step stays.
    A run of sizes goes on while its fastest and slowest stay within ``1 + tolerance`` of each
    other; when a size breaks it, the next run starts at the smallest size that size is within
    tolerance of (so a plateau begins as early as it can), but not inside an earlier plateau.
    Runs of at least ``min_points`` sizes are plateaus, the other sizes transitions between
    them; neighbouring plateaus whose medians are within ``1 + tolerance`` of each other are
    merged (noise cut one plateau in two).
    """
    envelope = _envelope(bandwidths)

    def within(low: int, high: int) -> bool:  # the envelope does not grow: ends are extremes
        return envelope[low] <= (1 + tolerance) * envelope[high]

    runs: list[Plateau] = []
    first = floor = 0  # floor: the first size after the last plateau
    for index in range(1, len(envelope) + 1):
        if index < len(envelope) and within(first, index):
            continue
        if index - first >= min_points:
            runs.append(Plateau(first, index - 1))
            floor = index
        if index < len(envelope):
            first = next(start for start in range(floor, index + 1) if within(start, index))
    merged: list[Plateau] = []
    for run in runs:
        if merged:
            previous = merged[-1]
            medians = (statistics.median(envelope[previous.first:previous.last + 1]),
                       statistics.median(envelope[run.first:run.last + 1]))
            if max(medians) <= (1 + tolerance) * min(medians):
                merged[-1] = Plateau(previous.first, run.last)
                continue
        merged.append(run)
    return merged


def sweep_reached_dram(bandwidths: Sequence[float], **plateau_options: Any) -> bool:
    """Whether the sweep's largest size is on a plateau past at least one cache plateau: then
    that last plateau is DRAM's, else the sweep must grow."""
    plateaus = find_plateaus(bandwidths, **plateau_options)
    return len(plateaus) >= 2 and plateaus[-1].last == len(bandwidths) - 1


@dataclass(frozen=True)
class SweepLevel:
    """A memory level as the sweep shows it."""

    name: str  # "L1", "L2", ..., "DRAM"
    capacity_bytes: int | None  # the largest size before the next plateau; None for DRAM
    plateau_from_bytes: int  # the plateau's sizes, from where the level serves them
    plateau_to_bytes: int
    middle_bytes: int  # the geometric middle of the plateau
    read_gbs: float  # the fastest read at any size the level serves (capacity and below)


def levels_from_sweep(sizes: Sequence[int], bandwidths: Sequence[float], *,
                      settled: float = PLATEAU_SETTLED, **plateau_options: Any,
                      ) -> list[SweepLevel]:
    """The memory levels of a sweep (sizes growing), innermost first: one per plateau, the last
    DRAM (a sweep without plateaus is all DRAM). A level serves the sizes from the first on its
    plateau whose bandwidth is within ``1 + settled`` of the plateau's median (the bandwidth
    has settled there) to the last before the next level's: a size in a transition, still partly
    served by an inner cache, counts as that cache's, so that the next level's figures are its
    own."""
    if len(sizes) != len(bandwidths) or not sizes:
        raise ValueError(f"a sweep needs as many bandwidths as sizes, got {len(sizes)} sizes and "
                         f"{len(bandwidths)} bandwidths")
    plateaus = find_plateaus(bandwidths, **plateau_options) or [Plateau(0, len(sizes) - 1)]
    envelope = _envelope(bandwidths)
    starts = [0]  # the first size each level serves
    for plateau in plateaus[1:]:
        median = statistics.median(envelope[plateau.first:plateau.last + 1])
        starts.append(next(index for index in range(plateau.first, plateau.last + 1)
                           if envelope[index] <= (1 + settled) * median))
    levels = []
    for number, (plateau, start) in enumerate(zip(plateaus, starts, strict=True), start=1):
        outermost = number == len(plateaus)
        end = len(sizes) if outermost else starts[number]  # after the last size it serves
        low, high = sizes[max(start, plateau.first)], sizes[plateau.last]
        levels.append(SweepLevel(
            name="DRAM" if outermost else f"L{number}",
            capacity_bytes=None if outermost else int(sizes[end - 1]),
            plateau_from_bytes=int(low), plateau_to_bytes=int(high),
            middle_bytes=int(math.sqrt(low * high)),
            read_gbs=float(max(bandwidths[start:end]))))
    return levels


# --- thread control -----------------------------------------------------------------------------


AFTER_BLAS_SIZE = 1024  # the NumPy GEMV before a call timed "after BLAS": 4 MiB of float32
AFTER_BLAS_ROUNDS = 30
BLAS_SPINS = 1.5  # a parallel kernel this much slower right after a BLAS call: BLAS spins


def after_blas(call: Callable[[], Any], threads: int, rounds: int = AFTER_BLAS_ROUNDS,
               ) -> dict[str, float]:
    """One ``call`` right after a NumPy GEMV on ``threads`` BLAS threads, against one right after
    another ``call``, paired per round. OpenBLAS's idle threads spin after a call for
    2^OPENBLAS_THREAD_TIMEOUT cycles (28 by default: ~0.1 s) and take a core from what runs next.
    Returns the two medians and the median per-round ratio (``after_blas_slowdown``); empty
    without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return {}
    matrix = np.ones((AFTER_BLAS_SIZE, AFTER_BLAS_SIZE), dtype=np.float32)
    vector = np.ones(AFTER_BLAS_SIZE, dtype=np.float32)

    def timed() -> float:
        start = time.perf_counter_ns()
        call()
        return (time.perf_counter_ns() - start) / 1e9

    warm: list[float] = []
    after: list[float] = []
    for _ in range(rounds):
        call()
        warm.append(timed())
        with threadpool_limits(limits=threads, user_api="blas"):
            matrix @ vector
        after.append(timed())
    ratios = [a / w for w, a in zip(warm, after, strict=True) if w > 0]
    return {"warm_call_s": float(np.median(warm)), "after_blas_call_s": float(np.median(after)),
            "after_blas_slowdown": float(np.median(ratios))}


def blas_threads_for(threads: int) -> tuple[int, float | None]:
    """The threads NumPy's BLAS gets beside Numba's ``threads`` (held to them already): the same
    count, unless a small parallel kernel runs BLAS_SPINS times slower right after a BLAS call
    (its idle threads spin and would take a core from the contender timed next): then one. Also
    the measured slowdown (None on one thread, where there is nothing to measure)."""
    if threads <= 1:
        return 1, None
    # 8 MiB: beyond the caches a GEMV's matrix evicts from, so only a taken core slows it
    # (1.0x here with idle BLAS threads asleep, ~20x with them spinning)
    data = np.ones(1 << 20)
    measured = after_blas(lambda: _read(data, 1, threads), threads)
    slowdown = measured.get("after_blas_slowdown")
    if slowdown is None:
        return 1, None
    return (1 if slowdown >= BLAS_SPINS else threads), slowdown


def max_threads() -> int:
    """The most threads Numba can run on (its pool is sized when numba is first imported)."""
    return int(numba.config.NUMBA_NUM_THREADS)


def resolve_threads(threads: int | None) -> int:
    """``threads`` checked against this machine; None means every core Numba can use."""
    limit = max_threads()
    if threads is None:
        return min(os.cpu_count() or 1, limit)
    if threads < 1 or threads > limit:
        raise UsageError(f"--threads must be between 1 and {limit} on this machine, got {threads}",
                         hint="Numba's pool size is NUMBA_NUM_THREADS (default: the core count)")
    return threads


@contextmanager
def limited_threads(threads: int, blas_threads: int | None = None) -> Iterator[dict[str, Any]]:
    """Hold Numba and PyTorch (when importable) to ``threads`` threads, and the BLAS behind
    NumPy to ``blas_threads`` (default: ``threads`` too).

    Yields what was applied: ``{"numba": n, "torch": n | None, "blas": n | None}`` (None: that
    library is absent, or, for BLAS, threadpoolctl is not installed so NumPy's BLAS runs with its
    own default). Everything is restored on exit.
    """
    applied: dict[str, Any] = {"numba": threads, "torch": None, "blas": None}
    # PyTorch first: imported before Numba starts its OpenMP pool, it keeps an OpenMP runtime of
    # its own. Sharing Numba's, a torch.set_num_threads() makes PyTorch's parallel kernels up to
    # 100x slower on this runtime, so the count is set only when it differs.
    torch_module, torch_before = None, None
    try:
        import torch as torch_module

        torch_before = torch_module.get_num_threads()
        if torch_before != threads:
            torch_module.set_num_threads(threads)
        applied["torch"] = threads
    except ImportError:
        torch_module = None
    numba_before = numba.get_num_threads()
    numba.set_num_threads(threads)
    blas_limits = None
    try:
        from threadpoolctl import threadpool_limits

        blas_count = threads if blas_threads is None else blas_threads
        blas_limits = threadpool_limits(limits=blas_count, user_api="blas")
        applied["blas"] = blas_count
    except ImportError:
        pass
    try:
        yield applied
    finally:
        if blas_limits is not None:
            blas_limits.restore_original_limits()
        if torch_module is not None and torch_before not in (None, threads):
            torch_module.set_num_threads(torch_before)
        numba.set_num_threads(numba_before)


# --- kernels ------------------------------------------------------------------------------------
# Each of ``slices`` threads works on its own slice of the arrays (slice_bounds), ``passes``
# times over, so that a slice that fits in a core's caches stays there. The ordinary kernels load
# and store whole cache lines as one vector each (the intrinsics below): Numba's vectorizer stops
# at 256-bit vectors on CPUs that prefer them, which halves what a core's L1 delivers, and a
# ceiling must hold for kernels that use the full width.

_LINE = ir.VectorType(ir.DoubleType(), LINE_ELEMENTS)


def _is_float64_vector(value: Any) -> bool:
    return (isinstance(value, numba.types.Array) and value.ndim == 1 and value.layout == "C"
            and value.dtype == numba.types.float64)


def _line_loop(context: Any, builder: Any, signature: Any, args: Sequence[Any],
               body: Callable[[Any, list[Any]], None]) -> None:
    """Emit ``body(element index, array data pointers)`` for each whole line of the first array
    (the others at least as long)."""
    arrays = [context.make_array(kind)(context, builder, value)
              for kind, value in zip(signature.args, args, strict=True)
              if isinstance(kind, numba.types.Array)]
    index_type = ir.IntType(64)
    lines = builder.udiv(builder.extract_value(arrays[0].shape, 0),
                         ir.Constant(index_type, LINE_ELEMENTS))
    with cgutils.for_range(builder, lines) as loop:
        body(builder.mul(loop.index, ir.Constant(index_type, LINE_ELEMENTS)),
             [array.data for array in arrays])


def _line_at(builder: Any, data: Any, index: Any) -> Any:
    return builder.bitcast(builder.gep(data, [index]), _LINE.as_pointer())


def _splat(builder: Any, value: Any) -> Any:
    line = ir.Constant(_LINE, ir.Undefined)
    for lane in range(LINE_ELEMENTS):
        line = builder.insert_element(line, value, ir.Constant(ir.IntType(32), lane))
    return line


@intrinsic
def _sum_lines(typingctx, x, passes):
    """The sum of x's first len(x) // SUM_GROUP * SUM_GROUP elements over ``passes`` passes, read
    as SUM_STREAMS equal parts side by side (as a matrix-vector product reads its rows; each
    one a stream the prefetcher follows), one vector load per line into SUM_ACCUMULATORS vector
    sums (enough loads in flight to cover the adder's latency), added up once at the end."""
    if not (_is_float64_vector(x) and isinstance(passes, numba.types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        index_type = ir.IntType(64)
        count = context.cast(builder, args[1], signature.args[1], numba.types.int64)
        groups = builder.udiv(builder.extract_value(array.shape, 0),
                              ir.Constant(index_type, SUM_GROUP))
        stream_step = SUM_GROUP // SUM_STREAMS  # elements of one stream in one group
        stream_length = builder.mul(groups, ir.Constant(index_type, stream_step))
        sums = [cgutils.alloca_once_value(builder, ir.Constant(_LINE, [0.0] * LINE_ELEMENTS))
                for _ in range(SUM_ACCUMULATORS)]
        with cgutils.for_range(builder, count), cgutils.for_range(builder, groups) as loop:
            offset = builder.mul(loop.index, ir.Constant(index_type, stream_step))
            for number, total in enumerate(sums):
                stream, line = number % SUM_STREAMS, number // SUM_STREAMS
                start = builder.mul(stream_length, ir.Constant(index_type, stream))
                index = builder.add(builder.add(start, offset),
                                    ir.Constant(index_type, line * LINE_ELEMENTS))
                loaded = builder.load(_line_at(builder, array.data, index), align=8)
                builder.store(builder.fadd(builder.load(total), loaded), total)
        vectors = [builder.load(total) for total in sums]
        while len(vectors) > 1:
            vectors = [builder.fadd(vectors[i], vectors[i + 1]) for i in range(0, len(vectors), 2)]
        result = builder.extract_element(vectors[0], ir.Constant(ir.IntType(32), 0))
        for lane in range(1, LINE_ELEMENTS):
            result = builder.fadd(result, builder.extract_element(
                vectors[0], ir.Constant(ir.IntType(32), lane)))
        return result

    return numba.types.float64(x, passes), codegen


@intrinsic
def _fill_lines(typingctx, x, value):
    """x[:whole lines] = value, one vector store per line."""
    if not (_is_float64_vector(x) and isinstance(value, numba.types.Float)):
        return None

    def codegen(context, builder, signature, args):
        line = _splat(builder, context.cast(builder, args[1], signature.args[1],
                                            numba.types.float64))

        def body(index: Any, data: list[Any]) -> None:
            builder.store(line, _line_at(builder, data[0], index), align=8)

        _line_loop(context, builder, signature, args, body)
        return context.get_dummy_value()

    return numba.types.void(x, value), codegen


@intrinsic
def _copy_lines(typingctx, x, y):
    """x[:whole lines] = y[:same], one vector load and store per line."""
    if not (_is_float64_vector(x) and _is_float64_vector(y)):
        return None

    def codegen(context, builder, signature, args):
        def body(index: Any, data: list[Any]) -> None:
            line = builder.load(_line_at(builder, data[1], index), align=8)
            builder.store(line, _line_at(builder, data[0], index), align=8)

        _line_loop(context, builder, signature, args, body)
        return context.get_dummy_value()

    return numba.types.void(x, y), codegen


@intrinsic
def _triad_lines(typingctx, x, y, z, factor):
    """x[:whole lines] = y + factor * z, one vector operation per line."""
    if not (_is_float64_vector(x) and _is_float64_vector(y) and _is_float64_vector(z)
            and isinstance(factor, numba.types.Float)):
        return None

    def codegen(context, builder, signature, args):
        scale = _splat(builder, context.cast(builder, args[3], signature.args[3],
                                             numba.types.float64))

        def body(index: Any, data: list[Any]) -> None:
            y_line = builder.load(_line_at(builder, data[1], index), align=8)
            z_line = builder.load(_line_at(builder, data[2], index), align=8)
            line = builder.fadd(y_line, builder.fmul(scale, z_line))
            builder.store(line, _line_at(builder, data[0], index), align=8)

        _line_loop(context, builder, signature, args, body)
        return context.get_dummy_value()

    return numba.types.void(x, y, z, factor), codegen


@njit(inline="always", cache=True)
def slice_bounds(count, slices, part):  # pragma: no cover - compiled by numba
    """[low, high) of slice ``part`` of ``slices`` over ``count`` elements (the last one takes
    the rest)."""
    per_slice = count // slices
    low = part * per_slice
    return low, (count if part == slices - 1 else low + per_slice)


@njit(parallel=True, nogil=True, cache=True)
def _fill_pattern(a):  # pragma: no cover - compiled by numba
    """a[i] = i % PATTERN_PERIOD: small integers, whose sums are exact in float64, and slices of
    equal length have different sums."""
    for i in prange(a.shape[0]):
        a[i] = i % PATTERN_PERIOD


@njit(parallel=True, nogil=True, cache=True)
def _read(a, passes, slices):  # pragma: no cover - compiled by numba
    """Each slice's sum over ``passes`` passes."""
    totals = np.zeros(slices)
    for part in prange(slices):
        low, high = slice_bounds(a.shape[0], slices, part)
        x = a[low:high]
        rest = x[x.shape[0] // SUM_GROUP * SUM_GROUP:]
        total = _sum_lines(x, passes)
        for _ in range(passes):
            for i in range(rest.shape[0]):
                total += rest[i]
        totals[part] = total
    return totals


@njit(parallel=True, nogil=True, cache=True)
def _write(a, value, passes, slices):  # pragma: no cover - compiled by numba
    """a = value + r in pass r, ordinary stores."""
    for part in prange(slices):
        low, high = slice_bounds(a.shape[0], slices, part)
        x = a[low:high]
        rest = x[x.shape[0] // LINE_ELEMENTS * LINE_ELEMENTS:]
        for r in range(passes):
            filler = value + r
            _fill_lines(x, filler)
            for i in range(rest.shape[0]):
                rest[i] = filler


@njit(parallel=True, nogil=True, cache=True)
def _write_nt(a, value, passes, slices):  # pragma: no cover - compiled by numba
    """a = value + r in pass r, non-temporal stores from a scratch block in L1."""
    for part in prange(slices):
        low, high = slice_bounds(a.shape[0], slices, part)
        x = a[low:high]
        scratch = np.empty(STREAM_BLOCK, a.dtype)
        for r in range(passes):
            scratch[:] = value + r
            for start in range(0, x.shape[0], STREAM_BLOCK):
                stop = min(x.shape[0], start + STREAM_BLOCK)
                _rt.stream_copy(x[start:stop], scratch[:stop - start])


@njit(parallel=True, nogil=True, cache=True)
def _copy(a, b, passes, slices):  # pragma: no cover - compiled by numba
    """a = b, ordinary stores."""
    for part in prange(slices):
        low, high = slice_bounds(a.shape[0], slices, part)
        x, y = a[low:high], b[low:high]
        whole = x.shape[0] // LINE_ELEMENTS * LINE_ELEMENTS
        for _ in range(passes):
            _copy_lines(x, y)
            for i in range(whole, x.shape[0]):
                x[i] = y[i]


@njit(parallel=True, nogil=True, cache=True)
def _copy_nt(a, b, passes, slices):  # pragma: no cover - compiled by numba
    """a = b, non-temporal stores."""
    for part in prange(slices):
        low, high = slice_bounds(a.shape[0], slices, part)
        x, y = a[low:high], b[low:high]
        for _ in range(passes):
            for start in range(0, x.shape[0], STREAM_BLOCK):
                stop = min(x.shape[0], start + STREAM_BLOCK)
                _rt.stream_copy(x[start:stop], y[start:stop])


@njit(parallel=True, nogil=True, cache=True)
def _triad(a, b, c, scalar, passes, slices):  # pragma: no cover - compiled by numba
    """a = b + (scalar + r) * c in pass r, ordinary stores."""
    for part in prange(slices):
        low, high = slice_bounds(a.shape[0], slices, part)
        x, y, z = a[low:high], b[low:high], c[low:high]
        whole = x.shape[0] // LINE_ELEMENTS * LINE_ELEMENTS
        for r in range(passes):
            factor = scalar + r
            _triad_lines(x, y, z, factor)
            for i in range(whole, x.shape[0]):
                x[i] = y[i] + factor * z[i]


@njit(parallel=True, nogil=True, cache=True)
def _triad_nt(a, b, c, scalar, passes, slices):  # pragma: no cover - compiled by numba
    """a = b + (scalar + r) * c in pass r, each block computed into a scratch block in L1 and
    written to a with non-temporal stores."""
    for part in prange(slices):
        low, high = slice_bounds(a.shape[0], slices, part)
        x, y, z = a[low:high], b[low:high], c[low:high]
        scratch = np.empty(STREAM_BLOCK, a.dtype)
        for r in range(passes):
            factor = scalar + r
            for start in range(0, x.shape[0], STREAM_BLOCK):
                stop = min(x.shape[0], start + STREAM_BLOCK)
                block = scratch[:stop - start]
                _triad_lines(block, y[start:stop], z[start:stop], factor)
                for i in range(stop - start - (stop - start) % LINE_ELEMENTS, stop - start):
                    block[i] = y[start + i] + factor * z[start + i]
                _rt.stream_copy(x[start:stop], block)


# --- timing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One kernel over one working set: ``run(passes, salt)`` makes that many passes over it (the
    ``salt`` changes what a writing kernel writes, so that each call's output is its own) and
    ``check(result, passes, salt)`` says whether it computed the right thing."""

    name: str
    run: Callable[[int, int], Any]
    check: Callable[[Any, int, int], bool]
    bytes_per_pass: int  # logical: the bytes the kernel reads plus the bytes it writes
    passes: int  # in a timed call


def best_bandwidths(probes: Sequence[Probe], repeats: int,
                    deadline: float | None = None) -> list[float]:
    """GB/s of each probe: the best of ``repeats`` timed calls, taken round by round over all
    the probes, each after an untimed call (salt 0) that brings its data into the caches; after
    the first round, no new round starts once ``time.perf_counter()`` has passed ``deadline``.
    A wrong result voids the measurement: RuntimeError."""
    best = [math.inf] * len(probes)
    for round_number in range(repeats):
        if round_number and deadline is not None and time.perf_counter() > deadline:
            break
        for index, probe in enumerate(probes):
            for salt, passes in ((0, 1), (1, probe.passes)):
                start = time.perf_counter_ns()
                result = probe.run(passes, salt)
                seconds = (time.perf_counter_ns() - start) / 1e9
                if not probe.check(result, passes, salt):
                    raise RuntimeError(f"the calibration kernel {probe.name} computed a wrong "
                                       "result; the measurement is void")
            best[index] = min(best[index], seconds)
    return [probe.bytes_per_pass * probe.passes / seconds / 1e9
            for probe, seconds in zip(probes, best, strict=True)]


def _salted(salt: int) -> float:
    return salt + 0.5


def checked_elements(length: int) -> slice:
    """The elements of an output that are checked: all of a short one; of a long one, about
    CHECKED_ELEMENTS spread over all of it at an odd stride (so that every position in a cache
    line comes up, and every thread's slice)."""
    return slice(None, None, max(1, length // CHECKED_ELEMENTS) | 1)


def kernel_probe(kernel: str, pattern: np.ndarray, out: np.ndarray, count: int, threads: int,
                 bytes_per_call: int = BYTES_PER_CALL) -> Probe:
    """A probe of ``kernel`` (one of KERNEL_ARRAYS) over a working set of ``count`` float64 in
    all: it reads from ``pattern`` (never written, holding _fill_pattern's values) and writes
    into ``out``; with several arrays, each is count / arrays long. The arrays start
    STAGGER_ELEMENTS apart within a page (``pattern`` and ``out`` page-aligned, each at least
    ``count`` + 4 pages long)."""
    reads, writes = KERNEL_ARRAYS[kernel]
    length = count // (reads + writes)
    span = -(-length // PAGE_ELEMENTS) * PAGE_ELEMENTS + STAGGER_ELEMENTS
    sources = [pattern[index * span:index * span + length] for index in range(reads)]
    target = out[reads * STAGGER_ELEMENTS:reads * STAGGER_ELEMENTS + length]
    picks = checked_elements(length)
    if kernel == "read":
        source = sources[0]
        expected = np.array([source[slice(*slice_bounds(length, threads, part))].sum()
                             for part in range(threads)])

        def run(passes: int, salt: int) -> Any:
            return _read(source, passes, threads)

        def check(totals: Any, passes: int, salt: int) -> bool:
            return bool(np.array_equal(totals, expected * passes))
    elif kernel in ("write", "write_nt"):
        write = _write if kernel == "write" else _write_nt

        def run(passes: int, salt: int) -> Any:
            return write(target, _salted(salt), passes, threads)

        def check(_: Any, passes: int, salt: int) -> bool:
            return bool(np.all(target[picks] == _salted(salt) + passes - 1)
                        and target[-1] == _salted(salt) + passes - 1)
    elif kernel in ("copy", "copy_nt"):
        copy, source = (_copy if kernel == "copy" else _copy_nt), sources[0]

        def run(passes: int, salt: int) -> Any:
            return copy(target, source, passes, threads)

        def check(_: Any, passes: int, salt: int) -> bool:
            return bool(np.array_equal(target[picks], source[picks])
                        and target[-1] == source[-1])
    else:
        triad, (b, c) = (_triad if kernel == "triad" else _triad_nt), sources

        def run(passes: int, salt: int) -> Any:
            return triad(target, b, c, _salted(salt), passes, threads)

        def check(_: Any, passes: int, salt: int) -> bool:
            factor = _salted(salt) + passes - 1
            return bool(np.array_equal(target[picks], b[picks] + factor * c[picks])
                        and target[-1] == b[-1] + factor * c[-1])
    bytes_per_pass = 8 * length * (reads + writes)
    return Probe(name=f"{kernel} over {bytes_per_pass / MIB:.3g} MiB", run=run, check=check,
                 bytes_per_pass=bytes_per_pass,
                 passes=max(1, round(bytes_per_call / bytes_per_pass)))


class PatternBuffer:
    """One page-aligned float64 buffer holding _fill_pattern's values (its pages touched once,
    by the threads that use them), grown on demand."""

    def __init__(self) -> None:
        self.buffer = np.empty(0)

    def holding(self, count: int) -> np.ndarray:
        """The buffer, at least ``count`` long."""
        if self.buffer.size < count:
            self.buffer = np.empty(0)  # let the old one go first
            raw = np.empty(count + PAGE_ELEMENTS)
            skip = (-raw.ctypes.data % PAGE_BYTES) // 8
            self.buffer = raw[skip:skip + count]
            _fill_pattern(self.buffer)
        return self.buffer


def sweep_size(threads: int, step: int) -> int:
    """The sweep's ``step``-th working set: SWEEP_START_BYTES per thread times sqrt(2)^step,
    each thread's slice a whole number of cache lines."""
    per_thread = int(SWEEP_START_BYTES * 2 ** (step / 2)) // LINE_BYTES * LINE_BYTES
    return per_thread * threads


def _hinted_cache_bytes(threads: int) -> int:
    """The largest cache capacity sysfs reports for ``threads`` threads: a hint of how far to
    sweep, not a measurement."""
    return max((int(cache["size_bytes"]) * max(1, min(int(cache["instances"]), threads))
                for cache in machine.describe().get("caches", [])), default=0)


def _free_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def measure_sweep(buffer: PatternBuffer, threads: int, *, largest_bytes: int, repeats: int,
                  bytes_per_call: int = BYTES_PER_CALL,
                  deadline: float | None = None) -> tuple[list[int], list[float]]:
    """The read kernel's GB/s over growing working sets: first up to twice the largest cache
    sysfs reports (at least SWEEP_FIRST_TOP_BYTES), then on while the largest size is not on a
    plateau after a cache plateau, up to ``largest_bytes`` (and ``deadline``, see
    best_bandwidths)."""
    first_top = min(largest_bytes, max(SWEEP_FIRST_TOP_BYTES, 2 * _hinted_cache_bytes(threads)))
    sizes: list[int] = []
    bandwidths: list[float] = []
    step = 0
    while sweep_size(threads, step) <= largest_bytes:
        batch = []
        while (sweep_size(threads, step) <= largest_bytes
               and (sweep_size(threads, step) <= first_top or len(batch) < 2)):
            batch.append(sweep_size(threads, step))
            step += 1
        pattern = buffer.holding(batch[-1] // 8)
        probes = [kernel_probe("read", pattern, pattern, size // 8, threads, bytes_per_call)
                  for size in batch]
        sizes += batch
        bandwidths += best_bandwidths(probes, repeats, deadline)
        if sweep_reached_dram(bandwidths) or (deadline is not None
                                              and time.perf_counter() > deadline):
            break
    return sizes, bandwidths


def measure_levels(buffer: PatternBuffer, threads: int, swept: Sequence[SweepLevel], *,
                   largest_bytes: int, repeats: int,
                   bytes_per_call: int = BYTES_PER_CALL,
                   deadline: float | None = None) -> dict[str, dict[str, float | None]]:
    """Every kernel of KERNEL_ARRAYS at each level: in the middle of a cache level's plateau,
    and for DRAM at max(DRAM_MIN_BYTES, DRAM_CACHE_MULTIPLE x the outermost cache capacity), at
    most ``largest_bytes``."""
    outermost_cache = max((level.capacity_bytes or 0 for level in swept), default=0)
    # whole cache lines per thread in each array of a kernel with 1, 2 or 3 arrays
    unit = threads * LINE_ELEMENTS * 6
    counts = []
    for level in swept:
        wanted = level.middle_bytes if level.capacity_bytes is not None else \
            min(largest_bytes, max(DRAM_MIN_BYTES, DRAM_CACHE_MULTIPLE * outermost_cache))
        counts.append(max(unit, wanted // 8 // unit * unit))
    half = (-(-max(counts) // PAGE_ELEMENTS) + 4) * PAGE_ELEMENTS
    whole = buffer.holding(2 * half)
    pattern, out = whole[:half], whole[half:]
    probes = [kernel_probe(kernel, pattern, out, count, threads, bytes_per_call)
              for count in counts for kernel in KERNEL_ARRAYS]
    bandwidths = iter(best_bandwidths(probes, repeats, deadline))
    levels: dict[str, dict[str, float | None]] = {}
    for level, count in zip(swept, counts, strict=True):
        figures: dict[str, float | None] = {
            "capacity_bytes": level.capacity_bytes,
            "plateau_from_bytes": level.plateau_from_bytes,
            "plateau_to_bytes": level.plateau_to_bytes,
            "working_set_bytes": 8 * count}
        for kernel in KERNEL_ARRAYS:
            figures[f"{kernel}_gbs"] = round(next(bandwidths), 3)
        figures["read_gbs"] = round(max(figures["read_gbs"] or 0.0, level.read_gbs), 3)
        levels[level.name] = figures
    return levels


def measure_sgemm(*, n: int = DEFAULT_GEMM_N, repeats: int = 3) -> float:
    """Best float32 ``n x n @ n x n`` NumPy matmul rate in GFLOP/s (2 n^3 FLOPs)."""
    rng = np.random.default_rng(0)
    left = rng.standard_normal((n, n), dtype=np.float32)
    right = rng.standard_normal((n, n), dtype=np.float32)
    product = np.empty((n, n), dtype=np.float32)
    np.matmul(left, right, out=product)  # warm-up: BLAS thread pool, page faults
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter_ns()
        np.matmul(left, right, out=product)
        best = min(best, (time.perf_counter_ns() - start) / 1e9)
    return 2.0 * n**3 / best / 1e9


# the register tile timed by measure_fma_peak (the matmul spec's default tile) and its depth:
# A's 12 x 256 and B's 256 x 32 floats (44 KiB) stay in L1
FMA_TILE_ROWS, FMA_TILE_COLS, FMA_TILE_DEPTH = 12, 32, 256
FMA_TILES_PER_CALL = 2048
# rounds of measure_fma_peak (~2 ms each at 2 threads): the best of many, because on a shared
# machine the cores' clock moves with the neighbours' load and a ceiling must be the highest
FMA_REPEATS = 25


@njit(parallel=True, cache=True)
def _fma_tiles(panels_a, panels_b, tiles, count):  # pragma: no cover - compiled by numba
    for thread in prange(tiles.shape[0]):
        for _ in range(count):
            mma_tile(FMA_TILE_ROWS, FMA_TILE_COLS, FMA_TILE_DEPTH, panels_a[thread], 0, 1,
                     FMA_TILE_ROWS, panels_b[thread], 0, FMA_TILE_COLS, tiles[thread], 0, 0, True,
                     None)


def measure_fma_peak(threads: int, *, repeats: int = FMA_REPEATS) -> float:
    """Best float32 multiply-add rate in GFLOP/s of the engine's register-tile kernel
    (koschei.engine._simd.mma_tile) running on ``threads`` threads at once, each on its own
    operands in L1: the compute ceiling no matrix product can beat."""
    rng = np.random.default_rng(0)
    panels_a = rng.standard_normal((threads, FMA_TILE_DEPTH * FMA_TILE_ROWS), dtype=np.float32)
    panels_b = rng.standard_normal((threads, FMA_TILE_DEPTH * FMA_TILE_COLS), dtype=np.float32)
    tiles = np.zeros((threads, FMA_TILE_ROWS, FMA_TILE_COLS), dtype=np.float32)
    _fma_tiles(panels_a, panels_b, tiles, 16)  # compile / load, wake the threads
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter_ns()
        _fma_tiles(panels_a, panels_b, tiles, FMA_TILES_PER_CALL)
        best = min(best, (time.perf_counter_ns() - start) / 1e9)
    flops = 2.0 * FMA_TILE_ROWS * FMA_TILE_COLS * FMA_TILE_DEPTH * FMA_TILES_PER_CALL * threads
    return flops / best / 1e9


def measure(threads: int, *, array_mib: int = DEFAULT_ARRAY_MIB, gemm_n: int = DEFAULT_GEMM_N,
            repeats: int = DEFAULT_REPEATS, bytes_per_call: int = BYTES_PER_CALL,
            budget_s: float = DEFAULT_BUDGET_S) -> Calibration:
    """Measure the ceilings at ``threads`` threads (Numba, BLAS and PyTorch alike): the sweep,
    each level's kernels, sgemm. ``array_mib`` bounds the working sets: the sweep's read array
    and the arrays of DRAM's kernels together (it is itself bounded by half the free memory); a
    small one makes a quick calibration whose outermost plateau stands for DRAM. On a machine
    so busy that the rounds would take longer than ``budget_s``, fewer are taken (at least one):
    the sweep's stop at half of it, the levels' at 9/10."""
    if array_mib < 1 or gemm_n < 16 or repeats < 1 or bytes_per_call < 1:
        raise UsageError(f"calibration sizes too small: array_mib={array_mib}, gemm_n={gemm_n}, "
                         f"repeats={repeats}, bytes_per_call={bytes_per_call}")
    started = time.perf_counter()
    largest_bytes = array_mib * MIB
    free = _free_memory_bytes()
    if free is not None:
        largest_bytes = min(largest_bytes, int(MEMORY_SHARE * free) // 2)
    if largest_bytes < sweep_size(threads, PLATEAU_MIN_POINTS):
        raise UsageError(f"calibration sizes too small: a sweep up to {largest_bytes} bytes at "
                         f"{threads} threads has not even one plateau's sizes")
    load = load_average()
    buffer = PatternBuffer()
    with limited_threads(threads):
        _rt.start_thread_pool()  # the non-temporal kernels, loaded from the cache, need it
        sizes, bandwidths = measure_sweep(buffer, threads, largest_bytes=largest_bytes,
                                          repeats=repeats, bytes_per_call=bytes_per_call,
                                          deadline=started + budget_s / 2)
        levels = measure_levels(buffer, threads, levels_from_sweep(sizes, bandwidths),
                                largest_bytes=largest_bytes,
                                repeats=repeats, bytes_per_call=bytes_per_call,
                                deadline=started + 0.9 * budget_s)
        del buffer  # before sgemm's matrices
        flops = measure_sgemm(n=gemm_n, repeats=repeats)
        fma = measure_fma_peak(threads)
    return Calibration(
        sgemm_gflops=round(flops, 3),
        fma_gflops=round(fma, 3),
        levels=levels,
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
        threads=threads,
        load_average=load,
        sweep_bytes=[int(size) for size in sizes],
        sweep_read_gbs=[round(gbs, 3) for gbs in bandwidths],
        gemm_n=gemm_n,
        repeats=repeats,
        duration_s=round(time.perf_counter() - started, 2),
    )


# --- stored calibrations ------------------------------------------------------------------------


def load_average() -> float | None:
    """The 1-minute load average (None where the system does not report one)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def machine_is_busy(load: float | None) -> bool:
    """Whether other work was using at least half of the cores' time."""
    return load is not None and load >= 0.5 * (os.cpu_count() or 1)


def calibration_path(runs_dir: Path, fingerprint: str | None = None) -> Path:
    return Path(runs_dir) / "calibration" / f"{fingerprint or machine.fingerprint()}.json"


def _read_stored(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
        return {}
    return data


def load_or_measure(runs_dir: Path, threads: int, *, recalibrate: bool = False,
                    array_mib: int = DEFAULT_ARRAY_MIB, gemm_n: int = DEFAULT_GEMM_N,
                    repeats: int = DEFAULT_REPEATS,
                    bytes_per_call: int = BYTES_PER_CALL,
                    budget_s: float = DEFAULT_BUDGET_S) -> tuple[Calibration, bool]:
    """The calibration for this machine at ``threads`` threads, and whether it was measured now.

    Stored in ``<runs_dir>/calibration/<fingerprint>.json`` as
    ``{"format", "fingerprint", "machine", "by_threads": {"<n>": {...Calibration}}}``; a file of
    another format or fingerprint is measured again.
    """
    fingerprint = machine.fingerprint()
    path = calibration_path(runs_dir, fingerprint)
    stored = _read_stored(path)
    if stored.get("fingerprint") != fingerprint:
        stored = {}
    entry = stored.get("by_threads", {}).get(str(threads))
    if entry is not None and not recalibrate:
        try:
            return Calibration(**entry), False
        except (TypeError, ValueError, KeyError):
            pass  # an entry written by another layout: measure again
    calibration = measure(threads, array_mib=array_mib, gemm_n=gemm_n, repeats=repeats,
                          bytes_per_call=bytes_per_call, budget_s=budget_s)
    by_threads = dict(stored.get("by_threads", {}))
    by_threads[str(threads)] = asdict(calibration)
    write_json_atomic(path, sort_keys=True, data={
        "format": CALIBRATION_FORMAT,
        "fingerprint": fingerprint,
        "machine": machine.describe(),
        "by_threads": by_threads,
    })
    return calibration, True
