"""Machine calibration: the two ceilings of this machine's roofline, measured once per fingerprint.

- Memory bandwidth: the STREAM triad ``a[i] = b[i] + s * c[i]`` (McCalpin, "Memory Bandwidth and
  Machine Balance in Current High Performance Computers", 1995) as a Numba ``parallel=True`` loop
  over float64 arrays far larger than the last-level cache (default 3 x 64 MiB). Bytes are counted
  the STREAM way: 3 arrays per iteration (read b, read c, write a = 24 bytes), *not* the 4 a
  write-allocate cache really moves. The benchmark's per-spec byte formulas count logical bytes
  the same way, so a kernel's GB/s and this ceiling are on one scale.
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
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit, prange

import koschei.engine._runtime  # noqa: F401  (Numba's cache folder, set before any kernel)
from koschei import machine
from koschei.errors import UsageError

CALIBRATION_FORMAT = 1
STREAM_COUNTED_ARRAYS = 3  # read b, read c, write a; write-allocate traffic is not counted
DEFAULT_ARRAY_MIB = 64
DEFAULT_GEMM_N = 2048


@dataclass(frozen=True)
class Calibration:
    """The roofline ceilings for one machine fingerprint at one thread count."""

    stream_triad_gbs: float  # GB/s = 1e9 bytes/s, 3 arrays counted per iteration
    sgemm_gflops: float  # GFLOP/s = 1e9 float32 FLOP/s of an n x n x n matmul (2 n^3 FLOPs)
    measured_at: str  # ISO-8601 UTC
    threads: int
    stream_array_mib: int  # size of each of the three triad arrays
    stream_counted_arrays: int
    gemm_n: int
    repeats: int
    # 1-minute load average when measured: other work on the machine lowers both ceilings
    load_average: float | None = None

    @property
    def bandwidth_bytes_per_s(self) -> float:
        return self.stream_triad_gbs * 1e9

    @property
    def peak_flops_per_s(self) -> float:
        return self.sgemm_gflops * 1e9


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
def limited_threads(threads: int) -> Iterator[dict[str, Any]]:
    """Hold Numba, PyTorch (when importable) and the BLAS behind NumPy to ``threads`` threads.

    Yields what was applied: ``{"numba": n, "torch": n | None, "blas": n | None}`` (None: that
    library is absent, or, for BLAS, threadpoolctl is not installed so NumPy's BLAS runs with its
    own default). Everything is restored on exit.
    """
    import numba

    applied: dict[str, Any] = {"numba": threads, "torch": None, "blas": None}
    numba_before = numba.get_num_threads()
    numba.set_num_threads(threads)
    torch_module, torch_before = None, None
    try:
        import torch as torch_module

        torch_before = torch_module.get_num_threads()
        torch_module.set_num_threads(threads)
        applied["torch"] = threads
    except ImportError:
        torch_module = None
    blas_limits = None
    try:
        from threadpoolctl import threadpool_limits

        blas_limits = threadpool_limits(limits=threads, user_api="blas")
        applied["blas"] = threads
    except ImportError:
        pass
    try:
        yield applied
    finally:
        if blas_limits is not None:
            blas_limits.restore_original_limits()
        if torch_module is not None and torch_before is not None:
            torch_module.set_num_threads(torch_before)
        numba.set_num_threads(numba_before)


@njit(parallel=True, nogil=True, cache=True)
def _triad(a, b, c, scalar):  # pragma: no cover - compiled by numba
    """STREAM triad: a = b + scalar * c, split across Numba's threads."""
    for i in prange(a.shape[0]):
        a[i] = b[i] + scalar * c[i]


def measure_stream_triad(*, array_mib: int = DEFAULT_ARRAY_MIB, repeats: int = 10) -> float:
    """Best STREAM-triad bandwidth in GB/s, counting 3 arrays of float64 per iteration."""
    n = array_mib * 1024 * 1024 // 8
    triad = _triad
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
    """Measure both ceilings at ``threads`` threads (Numba, BLAS and PyTorch alike)."""
    if array_mib < 1 or gemm_n < 16 or repeats < 1:
        raise UsageError(f"calibration sizes too small: array_mib={array_mib}, gemm_n={gemm_n}, "
                         f"repeats={repeats}")
    load = load_average()
    with limited_threads(threads):
        bandwidth = measure_stream_triad(array_mib=array_mib, repeats=max(repeats, 5))
        flops = measure_sgemm(n=gemm_n, repeats=repeats)
    return Calibration(
        stream_triad_gbs=round(bandwidth, 3),
        sgemm_gflops=round(flops, 3),
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
        threads=threads,
        stream_array_mib=array_mib,
        stream_counted_arrays=STREAM_COUNTED_ARRAYS,
        gemm_n=gemm_n,
        repeats=repeats,
        load_average=load,
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


def _write_atomically(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent=2, sort_keys=True)
            stream.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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
    _write_atomically(path, {
        "format": CALIBRATION_FORMAT,
        "fingerprint": fingerprint,
        "machine": machine.describe(),
        "by_threads": by_threads,
    })
    return calibration, True
