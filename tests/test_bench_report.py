"""The benchmark's reports from results built by hand: the README table (its columns, a cold case,
the faster PyTorch variant named, a case over its ceiling shown as an error and never as a ratio,
the machine's ceilings above it) and the charts (written, one roofline panel per spec, numbers
of points that do not cover each other)."""

from __future__ import annotations

import math
import re

import pytest

from koschei.bench import report
from koschei.bench.models import LlamaCppResult, ModelCaseResult, ModelWeightsResult
from koschei.bench.results import CaseResult
from koschei.bench.timing import ContenderTiming
from koschei.phases.benchmark import BenchmarkResult

CALIBRATION = {
    "threads": 2, "measured_at": "2026-12-01T12:29:29+00:00", "load_average": 0.62,
    "sgemm_gflops": 194.2,
    "levels": {
        "L1": {"capacity_bytes": 65536, "read_gbs": 420.0, "write_gbs": 210.0,
               "write_nt_gbs": None, "copy_gbs": 260.0, "triad_gbs": 286.3},
        "L2": {"capacity_bytes": 2097152, "read_gbs": 240.0, "write_gbs": 120.0,
               "copy_gbs": 160.0, "triad_gbs": 202.9},
        "DRAM": {"read_gbs": 40.1, "write_gbs": 18.5, "write_nt_gbs": 27.4, "copy_gbs": 26.0,
                 "triad_gbs": 35.4},
    },
}
MACHINE = {"cpu_model": "AMD EPYC", "cores": 2, "numpy": "2.4.6", "numba": "0.68.1",
           "torch": "2.13.0+cpu"}


def timing(seconds: float) -> ContenderTiming:
    return ContenderTiming(median_s=seconds, iqr_s=seconds * 0.02, rounds=10, batch=1,
                           min_s=seconds, samples_s=[seconds] * 10)


def measured_case(spec: str, case: str, *, engine_s: float, numpy_s: float,
                  torch_s: float | None = None, compiled_s: float | None = None,
                  read: float = 3.5e6, written: float = 0.5e6, flops: float = 1e6,
                  level: str = "L2", ceiling_gbs: float = 140.0, **fields) -> CaseResult:
    """A case measured as the phase would report it: every contender's median, the speedups
    against NumPy and the faster PyTorch variant, and the figures against its own ceiling."""
    contenders = {"engine": timing(engine_s), "numpy": timing(numpy_s)}
    result = CaseResult(spec=spec, case=case, verdict="ok", contenders=contenders,
                        speedup_vs_numpy=numpy_s / engine_s)
    variants = {}
    if torch_s is not None:
        contenders["torch"] = timing(torch_s)
        result.speedup_vs_torch_eager = variants["torch"] = torch_s / engine_s
    if compiled_s is not None:
        contenders["torch_compile"] = timing(compiled_s)
        result.speedup_vs_torch_compile = variants["torch_compile"] = compiled_s / engine_s
        result.torch_compile_s = 12.5
    if variants:
        result.torch_fastest = min(variants, key=variants.get)
        result.speedup_vs_torch = variants[result.torch_fastest]
    moved = read + written
    result.read_bytes, result.written_bytes, result.bytes, result.flops = read, written, moved, \
        flops
    result.gbs, result.gflops = moved / engine_s / 1e9, flops / engine_s / 1e9
    result.intensity = flops / moved
    result.memory_level, result.ceiling_gbs = level, ceiling_gbs
    result.ceiling_model = f"{level}: reads and writes at their own bandwidths"
    attainable = min(194.2, result.intensity * ceiling_gbs)
    result.attainable_gflops = attainable
    if result.intensity * ceiling_gbs < 194.2:
        result.bound, result.roofline_fraction = "memory", result.gbs / ceiling_gbs
    else:
        result.bound, result.roofline_fraction = "compute", result.gflops / 194.2
    for name, value in fields.items():
        setattr(result, name, value)
    return result


def sample_result() -> BenchmarkResult:
    """Four specs: a warm L2 case beaten by torch.compile's speed, a cold DRAM case with its warm
    figure, a case measured over its ceiling, a compute-bound one, and a wrong one."""
    softmax = measured_case("softmax", "64x2048", engine_s=40e-6, numpy_s=400e-6, torch_s=60e-6,
                            compiled_s=46e-6, level="L2", ceiling_gbs=140.0)
    small = measured_case("softmax", "1x768", engine_s=1.2e-6, numpy_s=9.6e-6, torch_s=2.1e-6,
                          compiled_s=2.9e-6, read=3072, written=3072, level="L1",
                          ceiling_gbs=280.0)
    cold = measured_case("linear", "decode_4096x4096", engine_s=2.5e-3, numpy_s=3.8e-3,
                         torch_s=4.2e-3, read=67e6, written=16384, flops=33.5e6, level="DRAM",
                         ceiling_gbs=40.1, cold_inputs=["weight"], cold_copies=3,
                         warm_speedup=2.27)
    cold.contenders["engine_warm"] = timing(1.1e-3)
    cold.goals = [{"goal": "×PyTorch ≥ 1", "kind": "vs_torch", "target": 1.0,
                   "measured": cold.speedup_vs_torch, "met": True, "short_by_pct": None}]
    prefill = measured_case("linear", "prefill_512x768x2048", engine_s=9.8e-3, numpy_s=18e-3,
                            torch_s=10e-3, compiled_s=13e-3, read=10e6, written=4e6,
                            flops=1.6e9, level="L3", ceiling_gbs=133.0)
    over = measured_case("gelu", "tanh_4096x4096", engine_s=4.5e-3, numpy_s=88e-3,
                         torch_s=39e-3, read=67e6, written=67e6, level="DRAM",
                         ceiling_gbs=26.8)
    over.verdict = "over_ceiling"
    over.error = ("measured 111% of its ceiling: 29.8 GB/s against a DRAM ceiling of 26.8 "
                  "GB/s: the spec's bytes/flops formulas count more than the kernel moves")
    over.goals = [{"goal": "roofline ≥ 80%", "kind": "roofline", "target": 0.8,
                   "measured": over.roofline_fraction, "met": True, "short_by_pct": None}]
    wrong = CaseResult(spec="rope", case="decode", verdict="wrong",
                       error="engine output does not match the reference: 3 of 64 differ")
    model = ModelCaseResult(model="decoder", config="tiny", context=63, verdict="ok",
                            contenders={"fp32": timing(1e-3), "ternary": timing(5e-4)},
                            speedup_ternary_vs_fp32=2.0,
                            kernel_files={"linear": "koschei/engine/linear.py"})
    model.weights = {
        "fp32": ModelWeightsResult(tokens_per_s=1000.0, bytes_per_token=20_000_000,
                                   ceiling_tokens_per_s=2005.0, ceiling_fraction=0.4988,
                                   weights_state="warm", memory_level="L3", ceiling_gbs=40.1),
        "ternary": ModelWeightsResult(tokens_per_s=2000.0, bytes_per_token=5_000_000,
                                      ceiling_tokens_per_s=8020.0, ceiling_fraction=0.2494,
                                      weights_state="warm", memory_level="L3", ceiling_gbs=40.1)}
    return BenchmarkResult(
        threads=2, fingerprint="9c631b6f915902f8", machine=MACHINE, calibration=CALIBRATION,
        thread_control={"numba": 2, "torch": 2, "blas": 1}, started_at="2026-12-01T12:30:00",
        budget_s=0.3, load_average=0.87, cases=[softmax, small, cold, prefill, over, wrong],
        models=[model])


def row(table: str, title: str) -> list[str]:
    """The cells of the README table's row whose case is ``title``."""
    for line in table.splitlines():
        if line.startswith(f"| {title} |"):
            return [cell.strip() for cell in line.strip().strip("|").split(" | ")]
    raise AssertionError(f"no row {title!r} in:\n{table}")


def header(table: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith("| case |"))
    return [cell.strip() for cell in line.strip().strip("|").split(" | ")]


@pytest.fixture
def table() -> str:
    return report.readme_table(sample_result(), "20261201-1", "koschei benchmark")


def test_the_readme_table_has_every_contender_the_ratios_and_the_ceiling(table):
    assert table.startswith(report.README_BEGIN + "\n")
    assert table.endswith(report.README_END + "\n")
    assert header(table) == ["case", "engine", "NumPy", "PyTorch eager", "torch.compile",
                             "×NumPy", "×PyTorch", "GB/s", "of its ceiling", "goals"]
    cells = dict(zip(header(table), row(table, "softmax/64x2048"), strict=True))
    assert cells["engine"] == "40 µs" and cells["NumPy"] == "400 µs"
    assert cells["PyTorch eager"] == "60 µs" and cells["torch.compile"] == "46 µs"
    assert cells["×NumPy"] == "10.00×"
    gbs = 4e6 / 40e-6 / 1e9
    assert cells["GB/s"] == f"{gbs:.1f}"
    assert cells["of its ceiling"] == f"{gbs / 140:.0%} of L2 read-mostly 140 GB/s"


def test_the_faster_pytorch_variant_is_named(table):
    cells = dict(zip(header(table), row(table, "softmax/64x2048"), strict=True))
    assert cells["×PyTorch"] == "1.15× (compiled)"  # 46 µs compiled beats 60 µs eager
    cells = dict(zip(header(table), row(table, "softmax/1x768"), strict=True))
    assert cells["×PyTorch"] == "1.75× (eager)"
    cells = dict(zip(header(table), row(table, "linear/prefill_512x768x2048"), strict=True))
    assert cells["of its ceiling"].endswith("of the compute peak 194 GFLOP/s")  # compute-bound


def test_a_cold_case_is_labelled_with_its_warm_figure(table):
    cells = dict(zip(header(table), row(table, "linear/decode_4096x4096 (cold)"), strict=True))
    assert cells["engine"] == "2.5 ms (warm 1.1 ms)"
    assert cells["of its ceiling"].endswith("of DRAM read-mostly 40.1 GB/s")
    assert "| linear/decode_4096x4096 |" not in table
    assert "- (cold): " in table


def test_a_case_over_its_ceiling_is_an_error_and_never_a_ratio(table):
    cells = dict(zip(header(table), row(table, "gelu/tanh_4096x4096"), strict=True))
    assert cells["engine"] == "4.5 ms" and cells["NumPy"] == "88 ms"  # the numbers stay
    assert cells["×NumPy"] == "—" and cells["×PyTorch"] == "—"
    assert cells["of its ceiling"].startswith("**error**, over ceiling: ")
    assert "26.8 GB/s" in cells["of its ceiling"]
    assert "met" not in cells["goals"]  # not even a roofline goal it "met" by the error
    for cell in cells.values():
        assert not re.search(r"\d%|\d×", cell), cell
    assert re.search(r"^- gelu/tanh_4096x4096: over its ceiling, a benchmark error: measured",
                     table, re.MULTILINE)


def test_a_wrong_case_shows_its_verdict(table):
    cells = row(table, "rope/decode")
    assert cells[1] == "**wrong**" and all(cell == "" for cell in cells[2:])
    assert "- rope/decode: wrong: engine output does not match" in table


def test_the_headline_describes_the_machines_ceilings(table):
    headline = table.splitlines()[1]
    assert "AMD EPYC, 2 cores, 2 thread(s) for Numba and PyTorch, NumPy's BLAS on 1" in headline
    assert "numpy 2.4.6, numba 0.68.1, torch 2.13.0+cpu" in headline
    assert "1-minute load 0.87" in headline
    assert "measured 2026-12-01 at load 0.62" in headline
    assert ("GB/s read/write/copy/triad: L1 (64 KiB) 420/210/260/286, "
            "L2 (2 MiB) 240/120/160/203, DRAM 40.1/18.5/26.0/35.4 (non-temporal write 27.4); "
            "sgemm (NumPy's BLAS) 194 GFLOP/s") in headline


def test_compile_seconds_contention_and_models_are_reported(table):
    assert "torch.compile took 12.5 s per case to compile, which no timing includes" in table
    column = "slower: busy process / after BLAS"
    assert column not in table  # not measured: no column
    result = sample_result()
    result.cases[0].contention = {"quiet_median_s": 40e-6, "busy_median_s": 80e-6,
                                  "slowdown": 1.96, "rounds": 12, "after_blas_slowdown": 5.1}
    busy = report.readme_table(result, "run", "koschei benchmark")
    assert column in header(busy)
    cells = dict(zip(header(busy), row(busy, "softmax/64x2048"), strict=True))
    assert cells[column] == "1.96× / 5.10×"
    assert "| decoder/tiny_decode_63 | fp32 (warm) | 1 ms | 1000.0 | 20.0 | 2005.0 | 50% |" \
        in table
    assert "| decoder/tiny_decode_63 | ternary ÷ fp32 | | 2.00× | | | |" in table


def test_a_model_over_its_ceiling_is_an_error():
    result = sample_result()
    [model] = result.models
    model.verdict = "over_ceiling"
    model.weights["ternary"].ceiling_fraction = 1.3
    model.error = "ternary: 2000.0 tokens/s is 130% of the bandwidth ceiling"
    table = report.readme_table(result, "run", "koschei benchmark")
    assert "| decoder/tiny_decode_63 | ternary (warm) | 500 µs | 2000.0 | 5.0 | 8020.0 | " \
           "**error**: over its ceiling |" in table
    assert "ternary ÷ fp32" not in table
    assert "- decoder/tiny_decode_63: over_ceiling: ternary: 2000.0 tokens/s" in table


def test_the_prefill_and_llama_cpp_rows_follow_the_decoding_table():
    result = sample_result()
    [model] = result.models
    model.prefill = {"fp32": timing(0.063), "ternary": timing(0.021)}
    model.llama_cpp_info = {"llama_cpp_python": "0.3.36", "n_threads": 2, "n_batch": 512,
                            "kv_cache": "F32"}
    model.llama_cpp = [
        LlamaCppResult(tensor_type="F32", weights="fp32", compared=True, verdict="ok",
                       decode=timing(2e-3), prefill=timing(0.126), engine_speedup=2.0,
                       engine_prefill_speedup=2.0),
        LlamaCppResult(tensor_type="TQ2_0", weights="ternary", compared=True, verdict="wrong",
                       error="llama.cpp's logits of the decoding step differ"),
        LlamaCppResult(tensor_type="F16", weights="fp32", compared=False, verdict="ok",
                       decode=timing(1e-3), prefill=timing(0.05)),
        LlamaCppResult(tensor_type="Q8_0", weights="fp32", compared=False, verdict="crashed",
                       error="llama.cpp died of SIGSEGV at its first evaluation")]
    table = report.readme_table(result, "run", "koschei benchmark")
    lines = table.splitlines()
    start = lines.index("| decoder/tiny: prefill of 63 tokens, decoding step at 63 | prefill | "
                        "prompt tokens/s | step | tokens/s | engine ÷ llama.cpp: prefill | "
                        "engine ÷ llama.cpp: step |")
    # each engine decoder, then the file compared with it; the reference files last
    assert lines[start + 2:start + 8] == [
        "| engine fp32 | 63 ms | 1000 | 1 ms | 1000.0 |  |  |",
        "| llama.cpp F32 | 126 ms | 500 | 2 ms | 500.0 | 2.00× | 2.00× |",
        "| engine ternary | 21 ms | 3000 | 500 µs | 2000.0 |  |  |",
        "| llama.cpp TQ2_0 | **wrong** | | | | | |",
        "| llama.cpp F16 (reference) | 50 ms | 1260 | 1 ms | 1000.0 |  |  |",
        "| llama.cpp Q8_0 (reference) | **crashed** | | | | | |"]
    assert ("- llama.cpp (llama-cpp-python 0.3.36) ran the same weights as GGUF files" in table
            and "on 2 thread(s), n_batch 512, a float32 (as the engine's) KV cache" in table)
    assert ("- llama.cpp Q8_0 (reference): crashed: llama.cpp died of SIGSEGV at its first "
            "evaluation") in table
    model.llama_cpp, model.llama_cpp_info = [], {}
    model.llama_cpp_note = "llama.cpp: not installed — pip install -e '.[llama]'"
    table = report.readme_table(result, "run", "koschei benchmark")
    assert "- llama.cpp: not installed — pip install -e '.[llama]'" in table
    assert "| engine ternary | 21 ms | 3000 | 500 µs | 2000.0 |  |  |" in table


def test_missing_calibration_keys_are_tolerated():
    result = sample_result()
    result.calibration = {}
    table = report.readme_table(result, "run", "koschei benchmark")
    assert "no memory levels" in table.splitlines()[1]
    assert report.calibration_summary({"levels": {"DRAM": {"read_gbs": 40.0}}}) == \
        "GB/s read/write/copy/triad: DRAM 40.0/—/—/—"


def test_shares_below_one_percent_keep_a_digit():
    assert report.format_fraction(0.004) == "0.4%"
    assert report.format_fraction(0.83) == "83%"
    assert report.access_mix(100, 0) == "read-only"
    assert report.access_mix(90, 10) == "read-mostly"
    assert report.access_mix(50, 50) == "read+write"
    assert report.access_mix(10, 90) == "write-mostly"


# --- charts -------------------------------------------------------------------------------------


def test_charts_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    written, note = report.write_charts(sample_result(), tmp_path)
    assert note is None
    assert [path.name for path in written] == ["roofline.png", "speedup.png"]
    for path in written:
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 20_000


def test_the_roofline_has_one_panel_per_spec_with_each_case_numbered():
    pytest.importorskip("matplotlib")
    result = sample_result()
    figure = report.roofline_figure(result)
    panels = {axes.get_title(loc="left"): axes for axes in figure.axes}
    assert list(panels) == ["softmax", "linear", "gelu"]  # the wrong rope case has no figures
    legend = [text.get_text() for text in panels["linear"].get_legend().get_texts()]
    assert "1  decode_4096x4096 (cold): " + report.ceiling_text(
        result.cases[2], CALIBRATION) in legend
    assert any(label.startswith("2  prefill_512x768x2048: ") for label in legend)
    assert "DRAM read-mostly 40.1 GB/s" in legend and "compute peak 194 GFLOP/s" in legend
    gelu = [text.get_text() for text in panels["gelu"].get_legend().get_texts()]
    assert "1  tanh_4096x4096: over its ceiling, a benchmark error" in gelu
    numbers = sorted(text.get_text() for text in panels["softmax"].texts)
    assert numbers == ["1", "2"]


def test_the_speedup_chart_leaves_out_a_case_over_its_ceiling():
    pytest.importorskip("matplotlib")
    figure = report.speedup_figure(sample_result())
    numpy_panel, torch_panel = figure.axes
    labels = [tick.get_text() for tick in numpy_panel.get_yticklabels()]
    assert "gelu/tanh_4096x4096" not in labels and "rope/decode" not in labels
    # sorted by ×PyTorch, highest first
    assert labels == ["softmax/1x768", "linear/decode_4096x4096 (cold)", "softmax/64x2048",
                      "linear/prefill_512x768x2048"]
    assert "gelu/tanh_4096x4096" in figure.get_suptitle()
    # bars start at 1×: a case slower than PyTorch points left of the line
    [bar] = [patch for patch in torch_panel.patches
             if math.isclose(patch.get_y() + patch.get_height() / 2, 3)]
    assert bar.get_x() == 1.0 and bar.get_width() == pytest.approx(10e-3 / 9.8e-3 - 1)


def test_point_numbers_do_not_cover_each_other_in_a_cluster():
    points = [(100.0, 100.0 + 3 * i) for i in range(6)] + [(100.0, 100.0)]
    offsets = report._place_labels(points)
    width, height = report.LABEL_BOX
    boxes = [(x + dx, y + dy, x + dx + width, y + dy + height)
             for (x, y), (dx, dy) in zip(points, offsets, strict=True)]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)


# --- the terminal table -------------------------------------------------------------------------


def rendered(result: BenchmarkResult) -> str:
    from rich.console import Console

    from koschei.cli.benchmark import render

    console = Console(record=True, width=200, no_color=True, force_terminal=False)
    render(result, console)
    return console.export_text()


def terminal_row(text: str, title: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(title + " "))


def test_the_terminal_table_names_the_faster_pytorch_and_labels_cold_cases():
    text = rendered(sample_result())
    assert "ceilings of this machine (measured 2026-12-01), GB/s read/write/copy/triad: L1 " \
           "(64 KiB) 420/210/260/286" in text
    head = next(line for line in text.splitlines() if line.startswith("case "))
    assert re.search(r"engine ±IQR +numpy +torch +compiled +×NumPy +×PyTorch +GB/s +of its "
                     r"ceiling GB/s +goals +verdict", head), head
    assert re.search(r"10\.00× +compiled 1\.15× +100\.0 +71% of L2 140 ", terminal_row(
        text, "softmax/64x2048"))
    assert "eager 1.75×" in terminal_row(text, "softmax/1x768")
    assert "% of peak" in terminal_row(text, "linear/prefill_512x768x2048")
    cold = terminal_row(text, "linear/decode_4096x4096 (cold)")
    assert "2.5ms ±2%" in cold and "of DRAM 40.1" in cold
    assert "linear/decode_4096x4096 (cold): weight read cold from 3 copies; warm 1.1ms " \
           "(2.27× faster)" in text
    assert "torch.compile took 12.5 s per case to compile" in text
    assert re.search(r"decoder/tiny_decode_63 +fp32 warm +1ms ±2% +1000\.0", text)


def test_the_terminal_table_shows_a_case_over_its_ceiling_as_an_error():
    text = rendered(sample_result())
    over = terminal_row(text, "gelu/tanh_4096x4096")
    assert "over ceiling" in over and over.rstrip().endswith("over_ceiling")
    assert "4.5ms ±2%" in over and "88ms" in over  # the times stay
    assert not re.search(r"\d%|\d×", over.replace("±2%", "")), over
    assert "gelu/tanh_4096x4096: over_ceiling: measured 111% of its ceiling" in text
    bars = text.split("engine speedup", 1)[1].split("goals", 1)[0]
    assert "gelu/tanh" not in bars and "vs torch compiled" in bars
    goals = text.split("\ngoals", 1)[1]
    assert "gelu/tanh_4096x4096  roofline" not in goals
