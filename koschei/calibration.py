"""Machine calibration: the two ceilings of this machine's roofline, measured once per fingerprint.

- Memory bandwidth: the STREAM triad ``a[i] = b[i] + s * c[i]`` (McCalpin, "Memory Bandwidth and
  Machine Balance in Current High Performance Computers", 1995) as a Numba ``parallel=True`` loop
  over float64 arrays far larger than the last-level cache (default 3 x 64 MiB). Bytes are counted
  the STREAM way: 3 arrays per iteration (read b, read c, write a = 24 bytes), *not* the 4 a
  write-allocate cache really moves. The benchmark's per-spec byte formulas count logical bytes
  the same way, so a kernel's GB/s and this ceiling are on one scale.
  A write-allocate cache also reads each written line before it overwrites it, so with ordinary
  stores the triad moves 4 arrays for the 3 it counts. The triad is measured twice: with
  ordinary stores, and with non-temporal ones (a written line goes to memory without being read
  first: ``koschei.engine._runtime.stream_copy``, as the engine's large outputs are written).
  The DRAM ceiling is the faster of the two, and ``write_allocate_limit`` says how much of it a
  kernel with ordinary stores can reach at all (2/3 for one read and one write, against the
  non-temporal triad; 8/9 against the ordinary one).
- Cache bandwidth: the same triad over arrays that fit in each data cache level (half of the
  capacity the threads can fill: ``size * instances``, L1, L2, L3 as sysfs reports them), each
  thread repeating it over its own slice so that the data stays in its core's caches. A kernel
  whose working set fits in a level (up to 3/4 of its capacity) is served from that level, so
  its ceiling is that level's triad, not DRAM's.
- Compute: single-precision GEMM FLOP/s from a large float32 NumPy matmul (default 2048^3,
  ``2 n^3`` FLOPs), i.e. what the machine's BLAS reaches on this CPU.

Both take the best (fastest) of several runs after a warm-up, with Numba, BLAS and PyTorch held
to the same thread count. Results live in ``runs/calibration/<fingerprint>.json``, one entry per
thread count, and are reused until ``--recalibrate`` (or a new fingerprint: other CPU, other
numpy/numba/torch versions).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit, prange

from koschei import machine
from koschei.engine import _runtime as _rt  # Numba's cache folder, set before any kernel
from koschei.errors import UsageError
from koschei.files import write_json_atomic

CALIBRATION_FORMAT = 3  # 2: cache-level triads; 3: the triad with non-temporal stores too
STREAM_COUNTED_ARRAYS = 3  # read b, read c, write a; write-allocate traffic is not counted
DEFAULT_ARRAY_MIB = 64
DEFAULT_GEMM_N = 2048
CACHE_FILL_FRACTION = 0.5  # a cache level's triad uses this fraction of its capacity
CACHE_FIT_FRACTION = 0.75  # a working set up to this fraction of a level's capacity is served there
CACHE_TRIAD_BYTES = 512 * 1024 * 1024  # bytes one timed cache-level triad moves (all repeats)


@dataclass(frozen=True)
class Calibration:
    """The roofline ceilings for one machine fingerprint at one thread count."""

    stream_triad_gbs: float  # GB/s = 1e9 bytes/s, 3 arrays counted per iteration: the DRAM ceiling
    sgemm_gflops: float  # GFLOP/s = 1e9 float32 FLOP/s of an n x n x n matmul (2 n^3 FLOPs)
    measured_at: str  # ISO-8601 UTC
    threads: int
    stream_array_mib: int  # size of each of the three triad arrays
    stream_counted_arrays: int
    gemm_n: int
    repeats: int
    # 1-minute load average when measured: other work on the machine lowers both ceilings
    load_average: float | None = None
    # "L1", "L2", "L3" -> GB/s of the triad over arrays that fit in that level (3 arrays counted)
    cache_triad_gbs: dict[str, float] = field(default_factory=dict)
    # "L1", "L2", "L3" -> the working set of that triad
    cache_working_set_bytes: dict[str, int] = field(default_factory=dict)
    # "L1", "L2", "L3" -> the capacity the threads can fill (size times the caches they use)
    cache_capacity_bytes: dict[str, int] = field(default_factory=dict)
    # the DRAM triad with each kind of store; stream_triad_gbs is the faster, made with these
    stream_triad_ordinary_gbs: float | None = None
    stream_triad_nontemporal_gbs: float | None = None
    stream_stores: str = "ordinary"  # "ordinary" | "non-temporal"

    @property
    def bandwidth_bytes_per_s(self) -> float:
        return self.stream_triad_gbs * 1e9

    @property
    def peak_flops_per_s(self) -> float:
        return self.sgemm_gflops * 1e9

    def memory_level(self, working_set_bytes: float) -> tuple[str, float]:
        """The innermost calibrated level that holds ``working_set_bytes`` (at most
        CACHE_FIT_FRACTION of its capacity: the rest is for everything else), and that level's
        bandwidth in GB/s; ("DRAM", STREAM triad) when none does."""
        for level, gbs in sorted(self.cache_triad_gbs.items()):
            capacity = self.cache_capacity_bytes.get(
                level, self.cache_working_set_bytes.get(level, 0) / CACHE_FILL_FRACTION)
            if working_set_bytes <= CACHE_FIT_FRACTION * capacity:
                return level, gbs
        return "DRAM", self.stream_triad_gbs


def write_allocate_limit(moved_bytes: float, written_bytes: float,
                         triad_stores: str = "ordinary") -> float | None:
    """The largest fraction of the STREAM-triad figure a kernel with ordinary stores can reach
    when it counts ``moved_bytes`` of which ``written_bytes`` are written.

    With write-allocate every written byte is also read, so the memory carries
    ``moved + written`` bytes for the ``moved`` counted: the kernel's counted rate is
    ``moved / (moved + written)`` of the real one. The triad's is 3/4 with ordinary stores (4
    arrays carried, 3 counted), 1 with non-temporal ones. The limit is their ratio: for read one,
    write one, 8/9 of the ordinary triad, 2/3 of the non-temporal one.
    """
    if moved_bytes <= 0 or written_bytes < 0:
        return None
    triad_counted_share = (1.0 if triad_stores == "non-temporal" else
                           STREAM_COUNTED_ARRAYS / (STREAM_COUNTED_ARRAYS + 1))
    return moved_bytes / (moved_bytes + written_bytes) / triad_counted_share


def max_threads() -> int:
    """The most threads Numba can run on (its pool is sized when numba is first imported)."""
    import numba

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
    import numba

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


@njit(parallel=True, nogil=True, cache=True)
def _triad(a, b, c, scalar):  # pragma: no cover - compiled by numba
    """STREAM triad: a = b + scalar * c, split across Numba's threads."""
    for i in prange(a.shape[0]):
        a[i] = b[i] + scalar * c[i]


@njit(parallel=True, nogil=True, cache=True)
def _triad_in_cache(a, b, c, scalar, repeats, slices):  # pragma: no cover - compiled by numba
    """The triad ``repeats`` times, each of ``slices`` threads over its own slice of the arrays
    (so the slice stays in that thread's caches); repeat r uses scalar + r."""
    n = a.shape[0]
    per_slice = n // slices
    for part in prange(slices):
        low = part * per_slice
        high = n if part == slices - 1 else low + per_slice
        # slices indexed from 0, so that LLVM sees no negative index and vectorizes
        a_part, b_part, c_part = a[low:high], b[low:high], c[low:high]
        for r in range(repeats):
            factor = scalar + r
            for i in range(a_part.shape[0]):
                a_part[i] = b_part[i] + factor * c_part[i]


def cache_levels(threads: int) -> list[tuple[str, int]]:
    """("L1", bytes), ... : the data cache levels and the capacity ``threads`` threads on
    separate cores can fill (a private cache counts once per thread, a shared one once)."""
    levels = []
    for cache in machine.describe().get("caches", []):
        instances = max(1, min(int(cache["instances"]), threads))
        levels.append((f"L{cache['level']}", int(cache["size_bytes"]) * instances))
    return levels


def measure_cache_triads(threads: int, *, repeats: int = 5
                         ) -> tuple[dict[str, float], dict[str, int], dict[str, int]]:
    """GB/s of the triad at each cache level (best of ``repeats``), its working set, and the
    level's capacity."""
    bandwidths: dict[str, float] = {}
    working_sets: dict[str, int] = {}
    capacities: dict[str, int] = {}
    for level, capacity in cache_levels(threads):
        n = int(capacity * CACHE_FILL_FRACTION) // (STREAM_COUNTED_ARRAYS * 8)
        n -= n % (8 * threads)
        if n < 64 * threads:
            continue
        a = np.zeros(n)
        b = np.full(n, 1.0)
        c = np.full(n, 2.0)
        inner = max(1, CACHE_TRIAD_BYTES // (STREAM_COUNTED_ARRAYS * 8 * n))
        _triad_in_cache(a, b, c, 3.0, 1, threads)  # compiles; the slices into their caches
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter_ns()
            _triad_in_cache(a, b, c, 3.0, inner, threads)
            best = min(best, (time.perf_counter_ns() - start) / 1e9)
        if not np.all(a == 1.0 + 2.0 * (3.0 + inner - 1)):
            raise RuntimeError(f"the {level} triad produced a wrong result; the measurement "
                               "is void")
        bandwidths[level] = round(STREAM_COUNTED_ARRAYS * 8 * n * inner / best / 1e9, 3)
        working_sets[level] = STREAM_COUNTED_ARRAYS * 8 * n
        capacities[level] = capacity
    return bandwidths, working_sets, capacities


STREAM_BLOCK = 2048  # float64 elements per block of the non-temporal triad (16 KiB, in L1)
STREAM_TASKS = 64  # tasks of the non-temporal triad: each has one scratch block


@njit(parallel=True, nogil=True, cache=True)
def _triad_nontemporal(a, b, c, scalar):  # pragma: no cover - compiled by numba
    """a = b + scalar * c, a written with non-temporal stores: each block is computed into the
    task's scratch block, which stays in L1, and copied to a by _rt.stream_copy."""
    n = a.shape[0]
    blocks = (n + STREAM_BLOCK - 1) // STREAM_BLOCK
    per_task = (blocks + STREAM_TASKS - 1) // STREAM_TASKS
    for task in prange(STREAM_TASKS):
        scratch = np.empty(STREAM_BLOCK, a.dtype)
        for block in range(task * per_task, min(blocks, (task + 1) * per_task)):
            low = block * STREAM_BLOCK
            high = min(n, low + STREAM_BLOCK)
            part, b_part, c_part = scratch[: high - low], b[low:high], c[low:high]
            for i in range(high - low):
                part[i] = b_part[i] + scalar * c_part[i]
            _rt.stream_copy(a[low:high], part)


def measure_stream_triad(*, array_mib: int = DEFAULT_ARRAY_MIB, repeats: int = 10,
                         nontemporal: bool = False) -> float:
    """Best STREAM-triad bandwidth in GB/s, counting 3 arrays of float64 per iteration; with
    ``nontemporal``, a is written with non-temporal stores."""
    n = array_mib * 1024 * 1024 // 8
    if nontemporal:
        _rt.start_thread_pool()
    triad = _triad_nontemporal if nontemporal else _triad
    a = np.empty(n, dtype=np.float64)
    b = np.empty(n, dtype=np.float64)
    c = np.empty(n, dtype=np.float64)
    triad(b, a, a, 0.0)  # compiles; first touch of the pages by the worker threads
    b.fill(1.0)
    c.fill(2.0)
    triad(a, b, c, 3.0)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter_ns()
        triad(a, b, c, 3.0)
        best = min(best, (time.perf_counter_ns() - start) / 1e9)
    if not np.all(a[:: max(1, n // 1024)] == 7.0):
        raise RuntimeError("STREAM triad produced a wrong result; the measurement is void")
    return STREAM_COUNTED_ARRAYS * 8 * n / best / 1e9


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


def measure(threads: int, *, array_mib: int = DEFAULT_ARRAY_MIB, gemm_n: int = DEFAULT_GEMM_N,
            repeats: int = 5) -> Calibration:
    """Measure the ceilings at ``threads`` threads (Numba, BLAS and PyTorch alike): DRAM and
    cache-level triads, sgemm."""
    if array_mib < 1 or gemm_n < 16 or repeats < 1:
        raise UsageError(f"calibration sizes too small: array_mib={array_mib}, gemm_n={gemm_n}, "
                         f"repeats={repeats}")
    load = load_average()
    with limited_threads(threads):
        ordinary = measure_stream_triad(array_mib=array_mib, repeats=max(repeats, 5))
        nontemporal = measure_stream_triad(array_mib=array_mib, repeats=max(repeats, 5),
                                           nontemporal=True)
        cache_bandwidths, cache_working_sets, cache_capacities = measure_cache_triads(threads)
        flops = measure_sgemm(n=gemm_n, repeats=repeats)
    return Calibration(
        stream_triad_gbs=round(max(ordinary, nontemporal), 3),
        sgemm_gflops=round(flops, 3),
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
        threads=threads,
        stream_array_mib=array_mib,
        stream_counted_arrays=STREAM_COUNTED_ARRAYS,
        gemm_n=gemm_n,
        repeats=repeats,
        load_average=load,
        cache_triad_gbs=cache_bandwidths,
        cache_working_set_bytes=cache_working_sets,
        cache_capacity_bytes=cache_capacities,
        stream_triad_ordinary_gbs=round(ordinary, 3),
        stream_triad_nontemporal_gbs=round(nontemporal, 3),
        stream_stores="non-temporal" if nontemporal > ordinary else "ordinary",
    )


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


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
        return {}
    return data


def load_or_measure(runs_dir: Path, threads: int, *, recalibrate: bool = False,
                    array_mib: int = DEFAULT_ARRAY_MIB, gemm_n: int = DEFAULT_GEMM_N,
                    repeats: int = 5) -> tuple[Calibration, bool]:
    """The calibration for this machine at ``threads`` threads, and whether it was measured now.

    Stored in ``<runs_dir>/calibration/<fingerprint>.json`` as
    ``{"format", "fingerprint", "machine", "by_threads": {"<n>": {...Calibration}}}``.
    """
    fingerprint = machine.fingerprint()
    path = calibration_path(runs_dir, fingerprint)
    stored = _read(path)
    if stored.get("fingerprint") != fingerprint:
        stored = {}
    entry = stored.get("by_threads", {}).get(str(threads))
    if entry is not None and not recalibrate:
        try:
            return Calibration(**entry), False
        except TypeError:
            pass  # an entry written by another layout: measure again
    calibration = measure(threads, array_mib=array_mib, gemm_n=gemm_n, repeats=repeats)
    by_threads = dict(stored.get("by_threads", {}))
    by_threads[str(threads)] = asdict(calibration)
    write_json_atomic(path, sort_keys=True, data={
        "format": CALIBRATION_FORMAT,
        "fingerprint": fingerprint,
        "machine": machine.describe(),
        "by_threads": by_threads,
    })
    return calibration, True
