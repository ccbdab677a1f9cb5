"""Machine calibration: the kernels and their checks, memory levels found in a sweep, the ceiling
of a mix of reads and writes, storage per fingerprint and thread count, thread control."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time

import numba
import numpy as np
import pytest

from koschei.bench import calibration, machine
from koschei.bench.calibration import KERNEL_ARRAYS, MIB, Calibration
from koschei.errors import UsageError

# a quick real calibration: sweep up to 8 MiB, every figure the best of 3 calls
SMALL = {"array_mib": 8, "gemm_n": 128, "repeats": 3, "bytes_per_call": 16 * MIB}
THREADS = min(2, calibration.max_threads())


@pytest.fixture(scope="module")
def measured() -> Calibration:
    return calibration.measure(1, **SMALL)


# --- kernels ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", list(KERNEL_ARRAYS))
def test_each_kernel_computes_its_result_and_counts_the_bytes_it_moves(kernel):
    count = 3 * 2 * 1003  # odd lengths: every thread's slice ends in a part of a cache line
    buffer = calibration.PatternBuffer().holding(2 * (count + 4 * calibration.PAGE_ELEMENTS))
    half = buffer.size // 2
    pattern, out = buffer[:half], buffer[half:]
    probe = calibration.kernel_probe(kernel, pattern, out, count, THREADS, bytes_per_call=10**6)
    reads, writes = KERNEL_ARRAYS[kernel]
    length = count // (reads + writes)
    assert probe.bytes_per_pass == 8 * count  # every array read once plus every array written
    assert probe.passes == round(10**6 / (8 * count))
    with calibration.limited_threads(THREADS):
        result = probe.run(3, 1)  # 3 passes with salt 1: writes 1.5 + 2, a triad's factor too
    assert probe.check(result, 3, 1)
    span = -(-length // calibration.PAGE_ELEMENTS) * calibration.PAGE_ELEMENTS \
        + calibration.STAGGER_ELEMENTS
    b, c = pattern[:length], pattern[span:span + length]
    if writes:
        written = out[reads * calibration.STAGGER_ELEMENTS:][:length]
        kind = kernel.removesuffix("_nt")
        expected = np.full(length, 3.5) if kind == "write" else b if kind == "copy" else \
            b + 3.5 * c
        assert np.array_equal(written, expected)
        written[length // 2] += 1.0  # one wrong element in the middle is caught
        assert not probe.check(result, 3, 1)
    else:
        assert np.sum(result) == 3 * b.sum()
        assert not probe.check(np.asarray(result) + 1, 3, 1)
        assert not probe.check(result, 2, 1)


def test_the_kernels_agree_with_numpy_on_short_and_odd_lengths():
    for length in (1, 7, 63, 64, 65, 1000, 4099):
        a = np.empty(3 * length)
        calibration._fill_pattern(a)
        b, c = a[:length], a[length:2 * length]
        out = np.zeros(length)
        with calibration.limited_threads(THREADS):
            slices = min(THREADS, length)
            totals = calibration._read(b, 2, slices)
            assert totals.sum() == 2 * b.sum()
            calibration._triad(out, b, c, 1.5, 2, slices)
            assert np.array_equal(out, b + 2.5 * c)
            calibration._triad_nt(out, c, b, 0.5, 1, slices)
            assert np.array_equal(out, c + 0.5 * b)
            calibration._copy(out, c, 1, slices)
            assert np.array_equal(out, c)
            calibration._write(out, 0.5, 3, slices)
            assert np.all(out == 2.5)


def test_a_long_output_is_checked_all_over_at_about_a_million_elements():
    assert calibration.checked_elements(1000) == slice(None, None, 1)
    picks = calibration.checked_elements(10**8)
    assert picks.step % 2 == 1 and 10**8 / picks.step == pytest.approx(1 << 20, rel=0.01)


def _probe(check=lambda result, passes, salt: True, calls=None) -> calibration.Probe:
    def run(passes: int, salt: int) -> None:
        if calls is not None:
            calls.append((passes, salt))

    return calibration.Probe(name="fake", run=run, check=check, bytes_per_pass=1000, passes=4)


def test_a_wrong_result_voids_the_measurement():
    with pytest.raises(RuntimeError, match="fake computed a wrong result"):
        calibration.best_bandwidths([_probe(check=lambda result, passes, salt: salt == 0)], 2)


def test_each_timed_call_follows_an_untimed_one_round_by_round():
    first, second = [], []
    bandwidths = calibration.best_bandwidths([_probe(calls=first), _probe(calls=second)], 3)
    assert first == second == [(1, 0), (4, 1)] * 3
    assert all(gbs > 0 for gbs in bandwidths)


def test_past_the_deadline_no_new_round_starts():
    calls = []
    calibration.best_bandwidths([_probe(calls=calls)], 5, deadline=time.perf_counter() - 1)
    assert calls == [(1, 0), (4, 1)]


# --- memory levels from a sweep -----------------------------------------------------------------


def _sizes(count: int) -> list[int]:
    return [calibration.sweep_size(1, step) for step in range(count)]


# L1 (6 sizes), L2 (9), a transition of 2, L3 (7), a transition of 2, DRAM (5)
STAIRCASE = ([600.0] * 6 + [300.0] * 9 + [200.0, 120.0] + [55.0] * 7 + [45.0, 40.0]
             + [30.0] * 5)


def test_the_plateaus_of_a_staircase_are_its_levels_and_transitions_count_as_the_inner_one():
    sizes = _sizes(len(STAIRCASE))
    assert calibration.find_plateaus(STAIRCASE) == [(0, 5), (6, 14), (17, 23), (26, 30)]
    levels = calibration.levels_from_sweep(sizes, STAIRCASE)
    assert [level.name for level in levels] == ["L1", "L2", "L3", "DRAM"]
    assert [level.capacity_bytes for level in levels] == [sizes[5], sizes[16], sizes[25], None]
    assert [level.read_gbs for level in levels] == [600.0, 300.0, 55.0, 30.0]
    l3 = levels[2]
    assert (l3.plateau_from_bytes, l3.plateau_to_bytes) == (sizes[17], sizes[23])
    assert l3.middle_bytes == int(math.sqrt(sizes[17] * sizes[23]))


def test_a_dip_from_other_work_does_not_split_a_plateau():
    noisy = list(STAIRCASE)
    noisy[2] = 350.0  # one slow measurement inside L1
    noisy[9] = 100.0  # and one inside L2
    noisy[20] = 20.0  # and one inside L3
    assert calibration.find_plateaus(noisy) == calibration.find_plateaus(STAIRCASE)


def test_noise_within_the_tolerance_is_one_plateau():
    wobbly = [300.0, 280.0, 310.0, 265.0, 300.0, 270.0, 260.0, 100.0, 98.0, 101.0, 99.0]
    assert calibration.find_plateaus(wobbly) == [(0, 6), (7, 10)]
    # cut in two runs (300 is more than 1.2 x 240) whose medians, 250 and 240, are close
    assert calibration.find_plateaus([300.0] * 2 + [250.0] * 4 + [240.0] * 4) == [(0, 9)]


def test_a_transition_size_close_to_the_next_plateau_starts_it():
    # 58.7 is 3% above the plateau after it but too far below the 70.0 before it to join that
    bandwidths = [300.0] * 5 + [70.0, 58.7] + [57.1, 57.4, 55.6, 55.2, 50.1] + [30.0] * 4
    plateaus = calibration.find_plateaus(bandwidths)
    assert plateaus == [(0, 4), (6, 11), (12, 15)]
    levels = calibration.levels_from_sweep(_sizes(len(bandwidths)), bandwidths)
    assert levels[0].capacity_bytes == _sizes(6)[5]  # the 70.0 size: still partly in L1


def test_a_level_serves_sizes_from_where_its_bandwidth_has_settled():
    # 37.0 is within 20% of the plateau's slowest (so on it) but 16% above its median, 32.0:
    # still partly served by the cache before, it counts as that cache's
    bandwidths = [55.0] * 6 + [37.0, 35.0, 32.0, 32.0, 31.0, 32.0, 31.0]
    assert calibration.find_plateaus(bandwidths) == [(0, 5), (6, 12)]
    sizes = _sizes(len(bandwidths))
    cache, dram = calibration.levels_from_sweep(sizes, bandwidths)
    assert cache.capacity_bytes == sizes[6] and cache.read_gbs == 55.0
    assert dram.plateau_from_bytes == sizes[7] and dram.read_gbs == 35.0


def test_a_gradual_decline_between_plateaus_is_no_level_of_its_own():
    bandwidths = [55.0] * 6 + [46.7, 39.0, 39.2, 34.4, 29.0] + [26.8] * 5
    assert len(calibration.levels_from_sweep(_sizes(len(bandwidths)), bandwidths)) == 2


def test_the_sweep_grows_until_its_largest_size_is_on_a_plateau_after_a_cache_plateau():
    assert calibration.sweep_reached_dram(STAIRCASE)
    assert not calibration.sweep_reached_dram(STAIRCASE[:-3])  # DRAM's plateau too short yet
    assert not calibration.sweep_reached_dram(STAIRCASE[:16])  # still falling out of L2
    assert not calibration.sweep_reached_dram([100.0] * 10)  # one plateau: no cache seen


def test_a_sweep_without_plateaus_is_all_dram_and_lengths_must_match():
    falling = [2.0 ** -step for step in range(8)]
    levels = calibration.levels_from_sweep(_sizes(8), falling)
    assert [(level.name, level.capacity_bytes, level.read_gbs) for level in levels] == \
        [("DRAM", None, 1.0)]
    with pytest.raises(ValueError, match="as many bandwidths as sizes"):
        calibration.levels_from_sweep(_sizes(3), [1.0, 2.0])


def test_sweep_sizes_grow_by_sqrt2_in_whole_cache_lines_per_thread():
    sizes = [calibration.sweep_size(3, step) for step in range(30)]
    assert sizes[0] == 3 * calibration.SWEEP_START_BYTES
    assert all(size % (3 * calibration.LINE_BYTES) == 0 for size in sizes)
    assert all(later / earlier == pytest.approx(math.sqrt(2), rel=0.01)
               for earlier, later in itertools.pairwise(sizes))


# --- the ceiling of a mix -----------------------------------------------------------------------

# a DRAM level where non-temporal stores win and the points are convex: every one on the hull
CONVEX = {"capacity_bytes": None, "read_gbs": 30.0, "write_gbs": 16.0, "write_nt_gbs": 32.0,
          "copy_gbs": 24.0, "copy_nt_gbs": 37.0, "triad_gbs": 27.0, "triad_nt_gbs": 36.0}


def _ceiling(figures, read_bytes, written_bytes) -> calibration.Ceiling:
    return calibration.ceiling_of_mix("DRAM", figures, read_bytes, written_bytes)


def test_the_ceiling_reproduces_read_write_copy_and_triad_exactly():
    mib = MIB
    assert _ceiling(CONVEX, 64 * mib, 0).bandwidth_gbs == pytest.approx(30.0)
    assert _ceiling(CONVEX, 64 * mib, 0).stores == "ordinary"  # nothing written
    write_only = _ceiling(CONVEX, 0, 64 * mib)
    assert (write_only.bandwidth_gbs, write_only.stores) == (pytest.approx(32.0), "non-temporal")
    assert _ceiling(CONVEX, 32 * mib, 32 * mib).bandwidth_gbs == pytest.approx(37.0)
    assert _ceiling(CONVEX, 64 * mib, 32 * mib).bandwidth_gbs == pytest.approx(36.0)


def test_between_measured_mixes_the_bytes_move_as_in_the_two_kernels_either_side():
    # 3 written for every 1 read: share 3/4, halfway between copy (1/2) and write (1), so the
    # 4 MiB are 2 MiB like copy_nt (1 read, 1 written) and 2 MiB like write_nt
    ceiling = _ceiling(CONVEX, 1 * MIB, 3 * MIB)
    assert ceiling.bandwidth_gbs == pytest.approx(4 / (2 / 37.0 + 2 / 32.0))
    assert ceiling.model == ("DRAM: 1.0 MiB read + 3.0 MiB written = 2.0 MiB like copy_nt at "
                             f"37.0 GB/s + 2.0 MiB like write_nt at 32.0 GB/s: "
                             f"{ceiling.bandwidth_gbs:.1f} GB/s")
    gemv = _ceiling(CONVEX, 64 * MIB, 0.01 * MIB)  # weights streamed, a short vector written
    assert 30.0 < gemv.bandwidth_gbs < 30.01 and gemv.stores == "non-temporal"


def test_ordinary_stores_when_they_are_the_faster():
    in_cache = {"read_gbs": 600.0, "write_gbs": 400.0, "write_nt_gbs": 30.0, "copy_gbs": 800.0,
                "copy_nt_gbs": 60.0, "triad_gbs": 700.0, "triad_nt_gbs": 65.0}
    for written in (1.0, 2.0, 5.0):
        assert _ceiling(in_cache, 2.0, written).stores == "ordinary"


def test_a_combination_of_kernels_that_beats_a_measured_one_lifts_the_ceiling_above_it():
    slow_copy = dict(CONVEX, copy_nt_gbs=30.0)  # above the line from triad_nt to write_nt
    ceiling = _ceiling(slow_copy, MIB, MIB)
    # 1 read + 1 written = 1/2 of a triad's bytes (2 read + 1 written) and 1/2 written alone
    assert ceiling.bandwidth_gbs == pytest.approx(2 / (1.5 / 36.0 + 0.5 / 32.0))
    assert ceiling.bandwidth_gbs > 30.0


def _random_figures(rng: np.random.Generator) -> dict[str, float]:
    return {f"{kernel}_gbs": float(rng.uniform(5.0, 500.0)) for kernel in KERNEL_ARRAYS}


def test_no_measured_kernel_and_no_mix_of_two_beats_the_ceiling():
    rng = np.random.default_rng(7)
    for _ in range(200):
        figures = _random_figures(rng)
        kernels = {kernel: (reads, writes, figures[f"{kernel}_gbs"])
                   for kernel, (reads, writes) in KERNEL_ARRAYS.items()}
        assert _ceiling(figures, 1.0, 0.0).bandwidth_gbs == pytest.approx(figures["read_gbs"])
        assert _ceiling(figures, 0.0, 1.0).bandwidth_gbs == pytest.approx(
            max(figures["write_gbs"], figures["write_nt_gbs"]))
        for (reads_a, writes_a, gbs_a), (reads_b, writes_b, gbs_b) in itertools.product(
                kernels.values(), repeat=2):
            weight = float(rng.uniform())  # of the bytes moved like kernel a
            read = weight * reads_a / (reads_a + writes_a) + \
                (1 - weight) * reads_b / (reads_b + writes_b)
            seconds = weight / gbs_a + (1 - weight) / gbs_b
            ceiling = _ceiling(figures, read, 1.0 - read).bandwidth_gbs
            assert ceiling >= (1.0 / seconds) * (1 - 1e-9)


def test_a_mix_needs_bytes_and_a_level_needs_read_and_write_figures():
    with pytest.raises(ValueError, match="needs bytes"):
        _ceiling(CONVEX, 0.0, 0.0)
    with pytest.raises(ValueError, match="needs bytes"):
        _ceiling(CONVEX, -1.0, 2.0)
    with pytest.raises(ValueError, match="read-only and write-only"):
        _ceiling({"read_gbs": 10.0, "copy_gbs": 10.0}, 1.0, 1.0)


# --- the calibration ----------------------------------------------------------------------------

KIB = 1024


def _level(capacity: int | None, read: float) -> dict[str, float | None]:
    return {"capacity_bytes": capacity, "read_gbs": read, "write_gbs": read / 2,
            "write_nt_gbs": 20.0, "copy_gbs": read * 0.8, "copy_nt_gbs": 25.0,
            "triad_gbs": read * 0.9, "triad_nt_gbs": 28.0}


def _calibration(**changes) -> Calibration:
    fields = {"sgemm_gflops": 250.0, "measured_at": "2000-01-01T00:00:00+00:00", "threads": 2,
              "levels": {"DRAM": _level(None, 33.0), "L1": _level(96 * KIB, 600.0),
                         "L3": _level(128 * MIB, 57.0), "L2": _level(4 * MIB, 300.0)}}
    return Calibration(**(fields | changes))


def test_levels_are_innermost_first_whatever_order_they_come_in():
    assert list(_calibration().levels) == ["L1", "L2", "L3", "DRAM"]
    with pytest.raises(ValueError, match="needs a DRAM level"):
        _calibration(levels={"L1": _level(96 * KIB, 600.0)})


def test_a_working_set_is_served_by_the_innermost_level_that_holds_it():
    ceilings = _calibration()
    assert ceilings.memory_level(0) == "L1"
    assert ceilings.memory_level(96 * KIB) == "L1"
    assert ceilings.memory_level(96 * KIB + 1) == "L2"
    assert ceilings.memory_level(128 * MIB) == "L3"
    assert ceilings.memory_level(128 * MIB + 1) == "DRAM"
    assert ceilings.memory_level(1e12) == "DRAM"
    in_l2 = ceilings.ceiling(MIB, 0, 2 * MIB)
    assert (in_l2.level, in_l2.bandwidth_gbs) == ("L2", pytest.approx(300.0))
    assert in_l2.model.startswith("L2: 1.0 MiB read + 0.0 MiB written")
    assert ceilings.ceiling(MIB, MIB, 1e12).level == "DRAM"


def test_dram_read_peak_flops_and_the_cold_working_set():
    ceilings = _calibration()
    assert ceilings.dram_read_gbs == 33.0
    assert ceilings.peak_flops_per_s == 250e9  # no FMA peak measured: sgemm's rate
    # the multiply-add peak is the compute ceiling, unless sgemm measured more
    assert dataclasses.replace(ceilings, fma_gflops=360.0).peak_flops_per_s == 360e9
    assert dataclasses.replace(ceilings, fma_gflops=200.0).peak_flops_per_s == 250e9
    assert ceilings.cold_bytes == 256 * MIB  # 2 x 128 MiB, the floor
    bigger = _calibration(levels={"L3": _level(300 * MIB, 57.0), "DRAM": _level(None, 33.0)})
    assert bigger.cold_bytes == 600 * MIB


def test_describe_is_the_json_summary_and_a_stored_calibration_reads_back_equal():
    ceilings = _calibration(sweep_bytes=[16384, 23168], sweep_read_gbs=[600.0, 590.5])
    described = json.loads(json.dumps(ceilings.describe()))
    assert set(described) == {"threads", "measured_at", "load_average", "sgemm_gflops",
                              "fma_gflops", "peak_gflops", "levels"}
    assert list(described["levels"]) == ["L1", "L2", "L3", "DRAM"]
    assert described["levels"]["DRAM"]["capacity_bytes"] is None
    stored = json.loads(json.dumps(dataclasses.asdict(ceilings), sort_keys=True))
    assert Calibration(**stored) == ceilings


def test_a_small_real_calibration_finds_levels_and_holds_every_sweep_point(measured):
    names = list(measured.levels)
    assert names[0] == "L1" and names[-1] == "DRAM" and len(names) >= 2
    capacities = [level["capacity_bytes"] for level in measured.levels.values()][:-1]
    assert capacities == sorted(capacities) and all(capacities)
    assert all(value > 0 for level in measured.levels.values()
               for key, value in level.items() if key.endswith("_gbs"))
    assert measured.levels["L1"]["read_gbs"] > measured.dram_read_gbs
    assert measured.sweep_bytes[0] == calibration.SWEEP_START_BYTES
    assert measured.sweep_bytes == sorted(measured.sweep_bytes)
    assert measured.sweep_bytes[-1] <= SMALL["array_mib"] * MIB
    for size, gbs in zip(measured.sweep_bytes, measured.sweep_read_gbs, strict=True):
        assert measured.ceiling(size, 0, size).bandwidth_gbs >= gbs
    assert measured.threads == 1 and measured.gemm_n == 128 and measured.sgemm_gflops > 0.1
    assert measured.fma_gflops > 0.1
    assert measured.duration_s is not None and measured.duration_s > 0


def test_too_small_a_calibration_is_a_usage_error():
    with pytest.raises(UsageError, match="too small"):
        calibration.measure(1, array_mib=0)
    with pytest.raises(UsageError, match="too small"):
        calibration.measure(1, array_mib=1, repeats=0)


# --- stored calibrations ------------------------------------------------------------------------


@pytest.fixture
def measurements(monkeypatch) -> list[int]:
    """calibration.measure replaced by a quick stand-in; the thread counts it was called with."""
    calls: list[int] = []

    def measure(threads: int, **options) -> Calibration:
        calls.append(threads)
        return _calibration(threads=threads, measured_at=f"2000-01-01T00:00:{len(calls):02}Z")

    monkeypatch.setattr(calibration, "measure", measure)
    return calls


def test_calibration_is_stored_per_fingerprint_and_reused(tmp_path, measurements):
    runs = tmp_path / "runs"
    first, measured = calibration.load_or_measure(runs, 2)
    assert measured and measurements == [2]
    path = runs / "calibration" / f"{machine.fingerprint()}.json"
    stored = json.loads(path.read_text())
    assert stored["format"] == calibration.CALIBRATION_FORMAT
    assert stored["fingerprint"] == machine.fingerprint()
    assert stored["machine"]["cores"] == machine.describe()["cores"]
    assert stored["by_threads"]["2"]["levels"]["DRAM"]["read_gbs"] == 33.0

    again, measured = calibration.load_or_measure(runs, 2)
    assert not measured and measurements == [2]
    assert again == first

    redone, measured = calibration.load_or_measure(runs, 2, recalibrate=True)
    assert measured and measurements == [2, 2] and redone.measured_at != first.measured_at
    assert [p.name for p in (runs / "calibration").iterdir()] == [path.name]  # no temp files


def test_another_thread_count_is_a_separate_entry(tmp_path, measurements):
    runs = tmp_path / "runs"
    calibration.load_or_measure(runs, 1)
    second, measured = calibration.load_or_measure(runs, 2)
    assert measured and second.threads == 2 and measurements == [1, 2]
    stored = json.loads(calibration.calibration_path(runs).read_text())
    assert set(stored["by_threads"]) == {"1", "2"}


def _store(runs, **fields) -> None:
    path = calibration.calibration_path(runs)
    path.parent.mkdir(parents=True)
    entry = dataclasses.asdict(_calibration(threads=1))
    path.write_text(json.dumps({"format": calibration.CALIBRATION_FORMAT,
                                "fingerprint": machine.fingerprint(),
                                "by_threads": {"1": entry}} | fields))


def test_a_file_from_another_fingerprint_is_not_trusted(tmp_path, measurements):
    _store(tmp_path, fingerprint="other")
    _, measured = calibration.load_or_measure(tmp_path, 1)
    assert measured and measurements == [1]


def test_a_file_of_another_format_is_measured_again_and_replaced(tmp_path, measurements):
    _store(tmp_path, format=calibration.CALIBRATION_FORMAT - 1)
    _, measured = calibration.load_or_measure(tmp_path, 1)
    assert measured and measurements == [1]
    stored = json.loads(calibration.calibration_path(tmp_path).read_text())
    assert stored["format"] == calibration.CALIBRATION_FORMAT


def test_an_entry_of_another_layout_is_measured_again(tmp_path, measurements):
    _store(tmp_path, by_threads={"1": {"stream_triad_gbs": 20.0}})
    _, measured = calibration.load_or_measure(tmp_path, 1)
    assert measured and measurements == [1]


def test_a_stored_entry_of_this_format_is_used_as_it_is(tmp_path, measurements):
    _store(tmp_path)
    stored, measured = calibration.load_or_measure(tmp_path, 1)
    assert not measured and measurements == [] and stored == _calibration(threads=1)


# --- threads ------------------------------------------------------------------------------------


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


def test_the_fingerprint_covers_cpu_cores_isa_caches_and_versions():
    described = machine.describe()
    assert set(described) >= {"cpu_model", "cores", "isa_flags", "caches", "numpy", "numba",
                              "torch"}
    assert described["cpu_model"] and described["cores"] >= 1


def test_numpy_blas_can_be_held_to_its_own_count():
    pytest.importorskip("threadpoolctl")
    with calibration.limited_threads(calibration.max_threads(), blas_threads=1) as applied:
        assert applied["blas"] == 1 and applied["numba"] == calibration.max_threads()
