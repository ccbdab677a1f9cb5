"""koschei.bench.encoder: the MiniLM sentence encoder of the engine against sentence-transformers and
ONNX Runtime, checked and then timed on four inputs; its JSON, terminal and README reports; and
how `koschei benchmark` selects it."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # sentence-transformers must not try a hub

import io
import json
import statistics
import sys

import numpy as np
import pytest
from rich.console import Console

from koschei.bench import encoder, report
from koschei.bench.encoder import (
    INPUTS,
    KOSCHEI_FP32,
    KOSCHEI_INT8,
    ONNXRUNTIME_FP32,
    ONNXRUNTIME_INT8,
    SENTENCE_TRANSFORMERS,
    EncoderContender,
)
from koschei.bench.timing import MIN_ROUNDS
from koschei.engine.models import minilm
from koschei.errors import UsageError
from koschei.phases import benchmark
from koschei.phases.base import SilentProgress, to_jsonable
from koschei.workspace import Workspace

BUDGET = 0.2
THREADS = 1
REVERSED = "reversed coordinates"  # a contender with a layout bug: wrong, never timed


def reversed_coordinates(model: minilm.MiniLM) -> EncoderContender:
    """Each embedding with its coordinates in reverse order, as a wrong memory layout gives."""
    def encode(texts: list[str]) -> np.ndarray:
        return np.ascontiguousarray(model.encode(texts)[:, ::-1])
    return EncoderContender(REVERSED, "fp32", encode)


# torch.compile takes tens of seconds: the compiled contender is the benchmark's, not the tests'
UNCOMPILED = [name for name in encoder.CONTENDERS
              if name != encoder.SENTENCE_TRANSFORMERS_COMPILED]


@pytest.fixture(scope="module")
def fp32_model() -> minilm.MiniLM:
    return minilm.MiniLM.load()


@pytest.fixture(scope="module")
def case(fp32_model):
    """Every contender on every input, with one more that gives wrong embeddings."""
    return encoder.run_encoder_case(BUDGET, SilentProgress(), threads=THREADS,
                                    contenders=UNCOMPILED,
                                    extra_contenders=[reversed_coordinates(fp32_model)])


def test_every_contender_is_checked_then_timed_on_every_input(case) -> None:
    assert case.verdict == "ok", case.error
    assert case.threads == THREADS and case.label == "encoder/minilm"
    assert [item.name for item in case.inputs] == list(INPUTS)
    assert set(case.kernel_files) == set(encoder.KERNELS)
    for item in case.inputs:
        assert item.error is None
        assert set(item.contenders) == {*UNCOMPILED, REVERSED}
        timed = {name: entry.timing for name, entry in item.contenders.items() if entry.timing}
        # sentence-transformers is the reference; a contender below its floor is not timed
        assert item.contenders[SENTENCE_TRANSFORMERS].verdict == "reference"
        for name in (KOSCHEI_FP32, KOSCHEI_INT8, ONNXRUNTIME_FP32, ONNXRUNTIME_INT8):
            entry = item.contenders[name]
            floor = encoder.MIN_COSINE[encoder.PRECISION[name]]
            assert entry.required_cosine == floor and entry.min_cosine is not None
            assert entry.verdict == ("ok" if entry.min_cosine >= floor else "wrong"), entry.error
            assert (entry.timing is not None) == (entry.verdict == "ok")
        # the engine and the fp32 anchors pass on every input
        for name in (KOSCHEI_FP32, KOSCHEI_INT8, SENTENCE_TRANSFORMERS, ONNXRUNTIME_FP32):
            assert name in timed, (item.name, name, item.contenders[name].error)
        rounds = {timing.rounds for timing in timed.values()}
        assert len(rounds) == 1 and rounds.pop() >= MIN_ROUNDS  # timed in the same rounds
        for key, (baseline, engine) in encoder.SPEEDUPS.items():
            if baseline in timed and engine in timed:
                assert item.speedups[key] == pytest.approx(statistics.median(
                    b / e for b, e in zip(timed[baseline].samples_s, timed[engine].samples_s,
                                          strict=True)))
            else:
                assert item.speedups[key] is None
        assert [goal["goal"] for goal in item.goals] == \
            [goal.text for goal in encoder.GOALS[item.name]]


def test_a_contender_with_wrong_embeddings_is_reported_wrong_and_not_timed(case) -> None:
    for item in case.inputs:
        entry = item.contenders[REVERSED]
        assert entry.verdict == "wrong" and entry.timing is None
        assert entry.min_cosine < 0.99999
        assert entry.error.startswith("lowest cosine similarity to sentence-transformers' "
                                      "embeddings ")
    assert case.verdict == "ok"  # not one of koschei's


def test_goals_are_judged_on_the_measured_figures(case) -> None:
    short = case.inputs[0]
    [time_goal, fp32_goal, int8_goal] = short.goals
    median = short.contenders[KOSCHEI_FP32].timing.median_s
    assert time_goal["goal"] == "koschei fp32 ≤ 2 ms" and time_goal["measured"] == median
    assert time_goal["met"] == (median <= 2e-3)
    assert fp32_goal["goal"] == "koschei fp32 ≥ 4× ONNX Runtime fp32"
    assert fp32_goal["measured"] == short.speedups["fp32_vs_onnxruntime_fp32"]
    assert fp32_goal["met"] == (fp32_goal["measured"] >= 4.0)
    outcome = report.goal_outcome(fp32_goal)
    assert outcome.startswith(f"koschei fp32 ≥ 4× ONNX Runtime fp32: "
                              f"{fp32_goal['measured']:.2f}×, ")
    assert outcome.endswith(", met") or "short by" in outcome
    if int8_goal["measured"] is None:  # ONNX Runtime int8 fell below its cosine floor
        assert report.goal_outcome(int8_goal).endswith(": not measured")
        assert short.contenders[ONNXRUNTIME_INT8].verdict == "wrong"


def test_the_inputs_are_deterministic_and_the_long_one_is_128_tokens(case, fp32_model) -> None:
    from sentence_transformers import SentenceTransformer

    texts = encoder.encoder_inputs(fp32_model.tokenizer)
    assert texts == encoder.encoder_inputs(fp32_model.tokenizer)
    assert [len(texts[name]) for name in INPUTS] == [1, 1, 32, 32]
    [long_text] = texts[encoder.INPUT_LONG]
    assert [len(ids) for ids in fp32_model.tokenize([long_text])] == [128]
    reference = SentenceTransformer(str(minilm.default_model_folder()), device="cpu")
    assert len(reference.tokenizer(long_text)["input_ids"]) == 128
    assert 10 <= len(fp32_model.tokenize(texts[encoder.INPUT_SHORT])[0]) <= 12
    words = [len(text.split()) for text in texts[encoder.INPUT_MIXED_BATCH]]
    assert min(words) >= 3 and max(words) <= 120 and len(set(words)) > 10
    assert [item.tokens for item in case.inputs][1] == [128]
    assert [len(item.tokens) for item in case.inputs] == [1, 1, 32, 32]


def test_the_json_holds_every_contender_and_the_speedups(case) -> None:
    data = json.loads(json.dumps(to_jsonable(case)))
    assert data["model"] == "minilm" and data["verdict"] == "ok"
    assert data["onnxruntime_info"]["exporter"].startswith("torch.onnx.export")
    assert data["onnxruntime_info"]["intra_op_num_threads"] == THREADS
    for item in data["inputs"]:
        assert set(item["contenders"]) >= set(UNCOMPILED)
        fp32 = item["contenders"][KOSCHEI_FP32]
        assert fp32["timing"]["median_s"] > 0 and fp32["min_cosine"] >= 0.99999
        assert set(item["speedups"]) == set(encoder.SPEEDUPS)
        assert item["speedups"]["fp32_vs_onnxruntime_fp32"] > 0
        assert item["speedups"]["fp32_vs_sentence_transformers"] > 0


def benchmark_result(case) -> benchmark.BenchmarkResult:
    return benchmark.BenchmarkResult(
        threads=THREADS, fingerprint="test", machine={}, calibration={}, thread_control={},
        started_at="2025-01-01T00:00:00", budget_s=BUDGET, load_average=None, encoders=[case])


def test_the_reports_show_a_table_per_input_with_speedups_and_goals(case) -> None:
    from koschei.bench import report
    from koschei.cli.benchmark import render

    result = benchmark_result(case)
    assert result.ok and result.counts == {"ok": 1}
    assert result.to_dict()["encoders"][0]["inputs"][0]["name"] == encoder.INPUT_SHORT
    output = io.StringIO()
    render(result, Console(file=output, width=160, color_system=None))
    text = output.getvalue()
    for item in case.inputs:
        assert f"encoder/minilm: {report.encoder_input_title(item)}" in text
    assert "encoder/minilm: 1 short sentence (1 text, 12 tokens)" in text
    assert "goal: koschei fp32 ≤ 2 ms: " in text
    speedup = case.inputs[0].speedups["fp32_vs_onnxruntime_fp32"]
    assert f"koschei fp32 {speedup:.2f}×" in text
    assert f"{REVERSED}: wrong: lowest cosine similarity" in text
    table = report.readme_table(result, "run", "koschei benchmark --readme")
    assert ("| encoder/minilm: input | contender | median | IQR | lowest cosine | koschei ÷ it "
            "| verdict |") in table
    assert (f"| 1 short sentence (1 text, 12 tokens) | {ONNXRUNTIME_FP32} | "
            f"{report.format_seconds(case.inputs[0].contenders[ONNXRUNTIME_FP32].timing.median_s)}"
            ) in table
    assert "- 1 short sentence: goals: koschei fp32 ≤ 2 ms: " in table


def test_without_onnxruntime_its_rows_say_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import` finds uninstalled
    assert not encoder.onnxruntime_available()
    case = encoder.run_encoder_case(
        BUDGET, SilentProgress(), threads=THREADS, inputs=[encoder.INPUT_SHORT],
        contenders=[KOSCHEI_FP32, SENTENCE_TRANSFORMERS, ONNXRUNTIME_FP32, ONNXRUNTIME_INT8])
    assert case.verdict == "ok", case.error
    assert case.onnxruntime_note == "ONNX Runtime: not installed — pip install -e '.[onnx]'"
    assert case.onnxruntime_info == {}
    [item] = case.inputs
    assert set(item.contenders) == {KOSCHEI_FP32, SENTENCE_TRANSFORMERS, ONNXRUNTIME_FP32,
                                    ONNXRUNTIME_INT8}
    for name in (ONNXRUNTIME_FP32, ONNXRUNTIME_INT8):
        entry = item.contenders[name]
        assert entry.verdict == "not_installed" and entry.timing is None
        assert entry.error == case.onnxruntime_note
    assert item.contenders[KOSCHEI_FP32].timing is not None
    assert item.speedups["fp32_vs_sentence_transformers"] > 0
    assert item.speedups["fp32_vs_onnxruntime_fp32"] is None
    assert report.goal_outcome(item.goals[1]) == \
        "koschei fp32 ≥ 4× ONNX Runtime fp32: not measured"


def test_a_koschei_contender_that_is_wrong_makes_the_case_wrong(fp32_model) -> None:
    wrong = reversed_coordinates(fp32_model)
    wrong.engine = True
    case = encoder.run_encoder_case(BUDGET, SilentProgress(), threads=THREADS,
                                    inputs=[encoder.INPUT_SHORT],
                                    contenders=[SENTENCE_TRANSFORMERS], extra_contenders=[wrong])
    assert case.verdict == "wrong"
    assert case.error.startswith(f"{REVERSED} on 1 short sentence: lowest cosine similarity")
    [item] = case.inputs
    assert item.contenders[REVERSED].timing is None
    assert item.contenders[SENTENCE_TRANSFORMERS].timing is not None
    assert not benchmark_result(case).ok


def test_unknown_contenders_and_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown contender or input 'llama.cpp'"):
        encoder.run_encoder_case(BUDGET, SilentProgress(), contenders=["llama.cpp"])


def test_the_benchmark_measures_the_encoder_by_default_beside_the_decoder() -> None:
    selection = benchmark.model_selection
    assert selection(benchmark.Options()) == (["igla_v2"], ["minilm"], [])
    assert selection(benchmark.Options(select=["rmsnorm"])) == ([], [], [])
    assert selection(benchmark.Options(models=["minilm"])) == ([], ["minilm"], [])
    assert selection(benchmark.Options(models=["tiny", "minilm"])) == (["tiny"], ["minilm"], [])
    assert selection(benchmark.Options(models=[])) == ([], [], [])  # --model none


@pytest.mark.usefixtures("engine_path_restored")
def test_an_unknown_model_names_the_decoder_configs_and_the_encoder(tmp_path) -> None:
    (tmp_path / "specs" / "foundation").mkdir(parents=True)
    (tmp_path / "koschei.toml").write_text("")
    with pytest.raises(UsageError, match="--model huge: no decoder config") as refused:
        benchmark.run(Workspace(tmp_path), benchmark.Options(models=["huge"], budget_s=BUDGET))
    assert refused.value.hint.endswith("; the encoder: minilm; linear-time layers against "
                                       "attention: crossover")
    assert "igla_v2" in refused.value.hint


def test_missing_requirements_name_each_module_with_its_install_command(monkeypatch) -> None:
    from koschei.bench import encoder

    assert encoder.missing_requirements() == []  # the test set-up installs them all
    monkeypatch.setattr(encoder, "REQUIREMENTS",
                        {"numpy": "pip install numpy", "koschei_no_such_module": "pip install x"})
    assert encoder.missing_requirements() == ["koschei_no_such_module (`pip install x`)"]
