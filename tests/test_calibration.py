"""Machine calibration: positive ceilings, cached per fingerprint and thread count, thread control."""

from __future__ import annotations

import json

import numba
import pytest

from koschei import calibration, machine
from koschei.errors import UsageError

SMALL = {"array_mib": 2, "gemm_n": 128, "repeats": 2}


def test_measure_gives_positive_ceilings_and_records_how():
    result = calibration.measure(1, **SMALL)
    assert result.stream_triad_gbs > 0.1
    assert result.sgemm_gflops > 0.1
    assert result.threads == 1
    assert result.stream_counted_arrays == 3
    assert (result.stream_array_mib, result.gemm_n) == (2, 128)
    assert result.bandwidth_bytes_per_s == pytest.approx(result.stream_triad_gbs * 1e9)


def test_calibration_is_stored_per_fingerprint_and_reused(tmp_path):
    runs = tmp_path / "runs"
    first, measured = calibration.load_or_measure(runs, 1, **SMALL)
    assert measured
    path = runs / "calibration" / f"{machine.fingerprint()}.json"
    stored = json.loads(path.read_text())
    assert stored["fingerprint"] == machine.fingerprint()
    assert stored["machine"]["cores"] == machine.describe()["cores"]
    assert stored["by_threads"]["1"]["stream_triad_gbs"] == first.stream_triad_gbs

    again, measured = calibration.load_or_measure(runs, 1, **SMALL)
    assert not measured
    assert again == first  # same measured_at: read back, not measured again

    redone, measured = calibration.load_or_measure(runs, 1, recalibrate=True, **SMALL)
    assert measured
    assert redone.threads == 1
    assert [p.name for p in (runs / "calibration").iterdir()] == [path.name]  # no temp files


def test_another_thread_count_is_a_separate_entry(tmp_path):
    runs = tmp_path / "runs"
    calibration.load_or_measure(runs, 1, **SMALL)
    threads = calibration.max_threads()
    second, measured = calibration.load_or_measure(runs, threads, **SMALL)
    assert second.threads == threads
    stored = json.loads(calibration.calibration_path(runs).read_text())
    assert set(stored["by_threads"]) == {"1", str(threads)}
    assert measured == (threads != 1)


def test_a_file_from_another_fingerprint_is_not_trusted(tmp_path):
    runs = tmp_path / "runs"
    path = calibration.calibration_path(runs)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"format": calibration.CALIBRATION_FORMAT, "fingerprint": "other",
                                "by_threads": {"1": {"stream_triad_gbs": 1e9}}}))
    result, measured = calibration.load_or_measure(runs, 1, **SMALL)
    assert measured and result.stream_triad_gbs < 1e6


def test_limited_threads_applies_and_restores():
    before = numba.get_num_threads()
    with calibration.limited_threads(1) as applied:
        assert numba.get_num_threads() == 1
        assert applied["numba"] == 1
        torch = pytest.importorskip("torch")
        assert torch.get_num_threads() == 1 and applied["torch"] == 1
    assert numba.get_num_threads() == before


def test_thread_counts_outside_the_pool_are_usage_errors():
    assert calibration.resolve_threads(None) >= 1
    assert calibration.resolve_threads(1) == 1
    for bad in (0, calibration.max_threads() + 1):
        with pytest.raises(UsageError, match="--threads"):
            calibration.resolve_threads(bad)


def test_cache_levels_are_measured_and_pick_the_level_a_working_set_fits_in():
    result = calibration.measure(1, **SMALL)
    levels = [level for level, _ in calibration.cache_levels(1)]
    assert sorted(result.cache_triad_gbs) == sorted(result.cache_working_set_bytes)
    assert set(result.cache_triad_gbs) <= set(levels)
    if not result.cache_triad_gbs:
        pytest.skip("this system reports no cache sizes")
    assert all(gbs > 0.1 for gbs in result.cache_triad_gbs.values())
    innermost = min(result.cache_working_set_bytes)
    assert result.memory_level(1)[0] == innermost
    assert result.memory_level(result.cache_working_set_bytes[innermost])[0] == innermost
    assert result.memory_level(2**40) == ("DRAM", result.stream_triad_gbs)
    outermost = max(result.cache_capacity_bytes)
    just_fits = calibration.CACHE_FIT_FRACTION * result.cache_capacity_bytes[outermost]
    assert result.memory_level(just_fits)[0] == outermost
    assert result.memory_level(just_fits + 1)[0] == "DRAM"


def test_the_dram_ceiling_is_the_faster_triad_ordinary_or_non_temporal():
    result = calibration.measure(1, **SMALL)
    both = (result.stream_triad_ordinary_gbs, result.stream_triad_nontemporal_gbs)
    assert all(gbs > 0.01 for gbs in both)
    assert result.stream_triad_gbs == max(both)
    assert result.stream_stores == ("non-temporal" if both[1] > both[0] else "ordinary")


def test_write_allocate_caps_a_read_one_write_one_kernel_at_eight_ninths_of_the_triad():
    assert calibration.write_allocate_limit(2.0, 1.0) == pytest.approx(8 / 9)
    assert calibration.write_allocate_limit(2.0, 1.0, "non-temporal") == pytest.approx(2 / 3)
    assert calibration.write_allocate_limit(3.0, 1.0) == pytest.approx(1.0)  # the triad itself
    assert calibration.write_allocate_limit(0.0, 0.0) is None


def test_the_fingerprint_covers_cpu_cores_isa_caches_and_versions():
    described = machine.describe()
    assert set(described) >= {"cpu_model", "cores", "isa_flags", "caches", "numpy", "numba",
                              "torch"}
    assert described["cpu_model"] and described["cores"] >= 1


def test_numpy_blas_can_be_held_to_its_own_count():
    pytest.importorskip("threadpoolctl")
    with calibration.limited_threads(calibration.max_threads(), blas_threads=1) as applied:
        assert applied["blas"] == 1 and applied["numba"] == calibration.max_threads()
