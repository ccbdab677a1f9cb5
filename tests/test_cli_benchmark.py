"""`koschei benchmark` end to end on generated kernels: the JSON contract, a regression gate that
catches a slowed kernel and passes an unchanged one, a wrong kernel never timed, the charts.

Everything is real: the repository's softmax spec with a small bench case is rendered by
code-generate, compiled by Numba and measured against NumPy and PyTorch.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import koschei.cli  # noqa: F401  (registers every command)
from koschei.bench import calibration
from koschei.bench import models as bench_models
from koschei.bench.report import calibration_summary
from koschei.bench.timing import MIN_ROUNDS
from koschei.cli.app import app
from koschei.phases import code_generate
from koschei.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent
SOFTMAX = REPO / "specs" / "foundation" / "softmax.yaml"
BUDGET = "0.4"
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("engine_path_restored")


def softmax_workspace(root: Path, *, slowed: bool = False) -> Workspace:
    """A workspace with the softmax spec (one 64 x 2048 bench case with a goal: 1 MiB in and out,
    in one core's L2, out of reach of what other processes do to the shared L3), rendered;
    ``slowed``: its tunables parallel and fastmath set to false (a slower, still correct kernel).
    """
    document = yaml.safe_load(SOFTMAX.read_text(encoding="utf-8"))
    document["bench"]["cases"] = [{"dims": {"...": [64], "d": 2048},
                                   "goals": [{"vs": "numpy", "at_least": 1.0}]}]
    if slowed:
        document["tunables"]["parallel"]["default"] = False
        document["tunables"]["fastmath"]["default"] = False
    folder = root / "specs" / "foundation"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "softmax.yaml").write_text(yaml.safe_dump(document, sort_keys=False),
                                         encoding="utf-8")
    (root / "koschei.toml").write_text("")
    (root / "README.md").write_text("# kernels\n\n<!-- benchmark:begin -->\nold\n"
                                    "<!-- benchmark:end -->\n\nthe rest\n")
    workspace = Workspace(root.resolve())
    assert code_generate.run(workspace, code_generate.Options()).ok
    calibration.load_or_measure(workspace.runs_dir, calibration.resolve_threads(None),
                                array_mib=2, gemm_n=128, repeats=2)
    return workspace


def bench(workspace: Workspace, *arguments: str) -> tuple[int, dict]:
    """The benchmark's JSON; no model is measured and nothing is compiled by torch.compile
    unless ``arguments`` ask for it."""
    models = [] if "--model" in arguments else ["--model", "none"]
    compiled = [] if "--torch-compile" in arguments else ["--no-torch-compile"]
    result = runner.invoke(app, ["benchmark", "--root", str(workspace.root), "--json",
                                 "--budget", BUDGET, *models, *compiled, *arguments])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    workspace = softmax_workspace(tmp_path_factory.mktemp("bench_cli"))
    return workspace, bench(workspace, "--torch-compile")


def test_json_has_medians_ratios_bandwidth_roofline_and_threads(first_run):
    workspace, (exit_code, data) = first_run
    assert exit_code == 0
    assert data["threads"] == calibration.resolve_threads(None)
    assert data["thread_control"]["numba"] == data["threads"]
    assert data["thread_control"]["torch"] == data["threads"]
    # NumPy's BLAS: every thread, or one with a note when its idle threads spin (as in this
    # process, where NumPy was loaded before OPENBLAS_THREAD_TIMEOUT was set)
    spinning = any("NumPy's BLAS runs on 1 thread" in note for note in data["notes"])
    assert data["thread_control"]["blas"] == (1 if spinning else data["threads"])
    assert set(data["calibration"]) >= {"levels", "sgemm_gflops", "measured_at"}
    assert list(data["calibration"]["levels"])[-1] == "DRAM"
    [case] = data["cases"]
    assert case["verdict"] == "ok", case["error"]
    assert set(case["contenders"]) == {"engine", "numpy", "torch", "torch_compile"}
    assert case["torch_compile_s"] > 0  # compiled on its first call, which is not timed
    fastest = min(("torch", "torch_compile"),
                  key=lambda name: case["contenders"][name]["median_s"])
    assert case["torch_fastest"] == fastest
    assert case["speedup_vs_torch"] == case[
        "speedup_vs_torch_eager" if fastest == "torch" else "speedup_vs_torch_compile"]
    for timing in case["contenders"].values():
        assert timing["median_s"] > 0 and timing["iqr_s"] >= 0
        assert len(timing["samples_s"]) == timing["rounds"] >= MIN_ROUNDS
    assert case["speedup_vs_numpy"] > 0 and case["speedup_vs_torch"] > 0
    assert case["bytes"] == 4 * 2 * 64 * 2048
    assert case["gbs"] == pytest.approx(case["bytes"] / case["contenders"]["engine"]["median_s"]
                                        / 1e9)
    assert 0 < case["roofline_fraction"] <= 1, case["error"]
    assert case["memory_level"] in data["calibration"]["levels"]
    assert case["ceiling_gbs"] > 0 and case["memory_level"] in case["ceiling_model"]
    assert case["written_bytes"] == 4 * 64 * 2048
    assert case["other_work_share"] is None or 0 <= case["other_work_share"] <= 1
    [goal] = case["goals"]
    assert goal["goal"] == "×NumPy ≥ 1" and goal["measured"] == case["speedup_vs_numpy"]
    assert goal["met"] == (case["speedup_vs_numpy"] >= 1.0)
    record = workspace.runs_dir / Path(data["charts"][0]).parent.name
    assert sorted(Path(chart).name for chart in data["charts"]) == ["roofline.png",
                                                                    "speedup.png"]
    for chart in data["charts"]:
        assert (workspace.root / chart).read_bytes().startswith(b"\x89PNG")
    stored = json.loads((record / "benchmark.json").read_text())
    stored = stored.get("result", stored)
    assert stored["cases"][0]["contenders"]["engine"]["samples_s"] == \
        case["contenders"]["engine"]["samples_s"]


UNCHANGED_ATTEMPTS = 3


def test_the_gate_passes_an_unchanged_rerun_and_fails_a_slowed_kernel(tmp_path):
    """On one thread (a parallel kernel on a shared 2-core machine is at the mercy of the other
    work on it): the unchanged kernel passes the 10% gate, the one regenerated with parallel and
    fastmath off (no vectorized sums: ~10x slower) fails it. Other work on a shared machine can
    slow a whole run of a 50 us kernel by more than 10% (a real, significant change of the
    machine, which the gate rightly reports), so the unchanged kernel gets a few re-runs, each
    against the one before, and must pass at least one; the slowed one must fail at once."""
    workspace = softmax_workspace(tmp_path)
    gate = ("--threads", "1", "--compare", "latest", "--fail-on-regression", "10")
    exit_code, before = bench(workspace, *gate)
    assert exit_code == 0 and before["compared_with"] is None  # no earlier run
    flagged = []
    for _ in range(UNCHANGED_ATTEMPTS):
        exit_code, unchanged = bench(workspace, *gate)
        [case] = unchanged["cases"]
        assert unchanged["compared_with"] == Path(before["charts"][0]).parent.name
        assert case["compare"] is not None
        if exit_code == 0:
            assert case["compare"]["status"] != "slower" and case["verdict"] == "ok"
            break
        assert case["verdict"] == "regression"
        flagged.append(case["compare"])
        before = unchanged
    else:
        pytest.fail(f"an unchanged kernel failed the gate {UNCHANGED_ATTEMPTS} times: {flagged}")

    softmax_workspace(workspace.root, slowed=True)  # the same workspace, regenerated slower
    exit_code, slowed = bench(workspace, *gate)
    [case] = slowed["cases"]
    assert slowed["compared_with"] == Path(unchanged["charts"][0]).parent.name
    assert case["verdict"] == "regression", case["compare"]
    assert case["compare"]["change_pct"] > 10 and case["compare"]["p_value"] < 0.01
    assert case["compare"]["relative_to_numpy"]["direction"] == "slower"
    assert exit_code == 1


def test_a_wrong_kernel_is_reported_and_never_timed(tmp_path):
    workspace = softmax_workspace(tmp_path)
    module = workspace.engine_dir / "softmax.py"
    source = module.read_text(encoding="utf-8")
    correct = "        out[j] = out[j] * inv_scale\n"
    assert source.count(correct) == 1  # the last step of each row: a bias added on purpose
    module.write_text(source.replace(correct, correct[:-1] + " + np.float32(1e-3)\n"))
    exit_code, data = bench(workspace, "--no-charts")
    [case] = data["cases"]
    assert exit_code == 1 and not data["ok"]
    assert case["verdict"] == "wrong"
    assert case["error"].startswith("engine output does not match the reference")
    assert case["contenders"] == {} and case["gbs"] is None and case["speedup_vs_numpy"] is None
    assert data["charts"] == []


def test_readme_block_is_rewritten_from_the_run(tmp_path):
    workspace = softmax_workspace(tmp_path)
    exit_code, data = bench(workspace, "--readme", "--no-charts")
    assert exit_code == 0
    text = (workspace.root / "README.md").read_text(encoding="utf-8")
    # the command that measured the table, with the options that shaped it
    assert text.startswith("# kernels\n\n<!-- benchmark:begin -->\nMeasured by `koschei "
                           "benchmark --readme --no-torch-compile` (run `")
    assert text.endswith("<!-- benchmark:end -->\n\nthe rest\n") and "\nold\n" not in text
    [case] = data["cases"]
    assert "| softmax/64x2048 | " in text
    assert ("| case | engine | NumPy | PyTorch eager | torch.compile | ×NumPy | ×PyTorch | GB/s "
            "| of its ceiling | goals |") in text
    assert f"{case['speedup_vs_numpy']:.2f}×" in text
    fastest = {"torch": "eager", "torch_compile": "compiled"}[case["torch_fastest"]]
    assert f"{case['speedup_vs_torch']:.2f}× ({fastest})" in text
    assert f"of {case['memory_level']} " in text or case["bound"] == "compute"
    headline = next(line for line in text.splitlines() if line.startswith("Measured by"))
    # the ceilings as this run's calibration found them (how many cache levels a short sweep
    # tells apart depends on how busy the machine is)
    assert calibration_summary(data["calibration"]) in headline
    assert "GB/s read/write/copy/triad: " in headline and "sgemm" in headline
    assert any("README.md: benchmark table rewritten" in note for note in data["notes"])

    (workspace.root / "README.md").write_text("no markers\n")
    result = runner.invoke(app, ["benchmark", "--root", str(workspace.root), "--readme"])
    assert result.exit_code == 2 and "benchmark:begin" in result.output


def test_a_goal_against_an_unknown_contender_is_a_spec_error(tmp_path):
    workspace = softmax_workspace(tmp_path)
    path = workspace.root / "specs" / "foundation" / "softmax.yaml"
    path.write_text(path.read_text().replace("vs: numpy", "vs: jax"))
    result = runner.invoke(app, ["benchmark", "--root", str(workspace.root)])
    assert result.exit_code == 2
    assert "softmax.yaml:" in result.output and "unknown contender 'jax'" in result.output


def test_help_does_not_import_matplotlib():
    code = ("import sys; from koschei.cli import app; import typer.testing as tt;"
            "r = tt.CliRunner().invoke(app, ['benchmark', '--help']); assert r.exit_code == 0;"
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported by --help'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_model_is_reported_beside_its_ceiling_and_a_bad_one_leaves_no_record(tmp_path):
    workspace = softmax_workspace(tmp_path)
    result = runner.invoke(app, ["benchmark", "--root", str(workspace.root), "--budget", BUDGET,
                                 "--select", "softmax", "--model", "tiny", "--no-charts"],
                           terminal_width=140)
    assert result.exit_code == 0, result.output
    assert "decoding speed" in result.stdout
    for weights in ("fp32", "ternary"):
        assert re.search(rf"decoder/tiny_decode_63 +{weights} .* ok", result.stdout), \
            result.stdout
    assert re.search(r"ternary ×\d+\.\d\d the fp32 tokens/s", result.stdout)
    # the prefill and the step side by side, and llama.cpp beside the engine or why not
    assert "decoder/tiny: prefill of 63 tokens, decoding step at 63" in result.stdout
    assert re.search(r"engine fp32 +\d", result.stdout), result.stdout
    if bench_models.llama_cpp_available():
        assert re.search(r"llama\.cpp F32 .* ok", result.stdout), result.stdout
    else:
        assert "llama.cpp: not installed — pip install -e '.[llama]'" in result.stdout
    records = sorted(workspace.runs_dir.glob("2*"))
    refused = runner.invoke(app, ["benchmark", "--root", str(workspace.root), "--model", "huge"])
    assert refused.exit_code == 2
    assert "--model huge: no decoder config of that name" in refused.stderr
    assert sorted(workspace.runs_dir.glob("2*")) == records  # no record of the refused run


def test_a_fresh_workspace_stops_at_once_with_the_command_to_run(tmp_path):
    """Nothing generated yet: benchmark and test-run exit 2 before calibrating or running
    anything, and say what to run; no run record is left behind."""
    import time

    root = tmp_path / "fresh"
    assert runner.invoke(app, ["init", str(root)]).exit_code == 0
    for command in (["benchmark"], ["test-run"]):
        started = time.perf_counter()
        result = runner.invoke(app, [*command, "--root", str(root)])
        assert result.exit_code == 2, result.output
        assert "nothing is generated yet" in result.output
        assert "koschei code-generate" in result.output
        assert time.perf_counter() - started < 10
    assert not (root / "runs" / "calibration").exists()
    assert [p.name for p in (root / "runs").iterdir()] == []
