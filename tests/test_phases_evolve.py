"""koschei.phases.evolve: a search over a toy family whose tunable picks a right, a slow, a wrong,
a crashing and a hanging kernel. The bad ones are recorded with their reason and never chosen;
a search killed with SIGKILL and started again measures nothing twice; the winner is kept in
the machine's tuning file only when significant, and its generated tests run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from evolve_toy import toy_workspace

from koschei.bench import machine
from koschei.errors import UsageError
from koschei.phases import evolve
from koschei.tuning import values
from koschei.tuning.cache import CacheLog
from koschei.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def workspace(tmp_path) -> Workspace:
    return toy_workspace(tmp_path)


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def evolve_command(root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "koschei", "evolve", "double", "--root", str(root),
            "--timeout", "15", "--json", *extra]


def test_bad_candidates_are_recorded_never_chosen_and_a_killed_search_resumes(workspace):
    log_path = workspace.runs_dir / "tuning" / machine.fingerprint() / "double.jsonl"
    # first run: killed with SIGKILL once two results are in the log
    first = subprocess.Popen(evolve_command(workspace.root), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, cwd=REPO)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        if log_path.exists() and log_path.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.1)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    before = len(CacheLog(log_path))
    assert before >= 2
    # second run: every configuration, the ones logged before not measured again
    second = subprocess.run(evolve_command(workspace.root), capture_output=True, text=True,
                            cwd=REPO, timeout=600, check=False)
    assert second.returncode == 0, second.stderr
    result = json.loads(second.stdout)
    assert result["strategy"] == "exhaustive" and len(result["evaluations"]) == 5
    assert result["cache_hits"] == before and result["measured"] == 5 - before
    verdicts = {record["tunables"]["mode"]: record for record in result["evaluations"]}
    assert verdicts["wrong"]["verdict"] == "wrong"
    assert "elements differ beyond" in verdicts["wrong"]["reason"]
    assert verdicts["crash"]["verdict"] == "crashed"
    assert "SIGSEGV" in verdicts["crash"]["reason"]
    assert verdicts["hang"]["verdict"] == "timeout"
    assert verdicts["slow"]["verdict"] == verdicts["right"]["verdict"] == "ok"
    assert verdicts["right"]["ratio"] < 0.5  # against the defaults (slow), same rounds
    # the winner: right, confirmed beside the incumbent (slow), kept, its tests run
    assert result["best"]["tunables"] == {"mode": "right"}
    assert result["verdict"] == "improved", result["reason"]
    confirmation = result["confirmation"]
    assert confirmation["gain"] > 1 and confirmation["p_value"] < 0.002
    assert confirmation["samples"] >= evolve.MIN_SAMPLES
    assert result["tuned_values_file"] == f"tuning/{machine.fingerprint()}.json"
    assert values.tunables_for(workspace.root, machine.fingerprint()) == {
        "double": {"mode": "right"}}
    assert result["tests"].startswith("3/3 tests passed") or "passed" in result["tests"]
    if result["chart"] is not None or _has_matplotlib():  # beside the run record
        assert result["chart"].endswith("/search.png")
        assert (workspace.root / result["chart"]).stat().st_size > 0
    module = (workspace.engine_dir / "double.py").read_text()
    assert "the right way" in module and "tuned for this machine" in module
    # a third run knows everything: nothing measured, and the current one is now the best
    third = json.loads(subprocess.run(evolve_command(workspace.root), capture_output=True,
                                      text=True, cwd=REPO, timeout=600, check=True).stdout)
    assert third["measured"] == 0 and third["cache_hits"] == 5
    assert third["incumbent"] == {"mode": "right"}
    assert third["verdict"] == "no_significant_gain"


def test_bad_requests_are_usage_errors(workspace):
    for options, message in [
            (evolve.Options(spec="triple"), "no spec named 'triple'"),
            (evolve.Options(spec="double", case="tiny"), "double has no bench case 'tiny'"),
            (evolve.Options(spec="double", only=["depth"]), "double has no tunable 'depth'"),
            (evolve.Options(spec="double", strategy="annealing"), "--strategy annealing")]:
        with pytest.raises(UsageError, match=message):
            evolve.run(workspace, options)


def test_a_search_starts_from_what_won_for_specs_of_the_same_family():
    from koschei.specs import load_specs
    from koschei.tuning.space import SearchSpace

    spec_set = load_specs(Workspace.find(REPO))
    rmsnorm = spec_set["rmsnorm"]
    space = SearchSpace.of(rmsnorm.spec)
    incumbent = dict(space.defaults)
    tuned = {"layernorm": {"parallel_min_elements": 8192, "accumulate": "float64"},
             "softmax": {"parallel_min_elements": 8192, "accumulate": "float64"},  # the same
             "linear": {"gemm_min_rows": 32},  # another family
             "rmsnorm": {"parallel_min_elements": 4096}}  # itself: that is the incumbent
    learned = evolve.similar_winners(spec_set, rmsnorm, space, incumbent, tuned)
    assert learned == [("layernorm", {**incumbent, "parallel_min_elements": 8192,
                                      "accumulate": "float64"})]
    only = SearchSpace.of(rmsnorm.spec, only=["accumulate"])
    assert evolve.similar_winners(spec_set, rmsnorm, only, incumbent, tuned) == [
        ("layernorm", {**incumbent, "accumulate": "float64"})]


def test_a_replay_needs_a_complete_log_and_measures_nothing(workspace):
    from koschei.bench.machine import fingerprint
    from koschei.phases.evolve import _log
    from koschei.specs import load_specs
    from koschei.tuning.cache import CandidateKey, CandidateResult

    options = evolve.Options(spec="double")
    loaded = load_specs(workspace)["double"]
    log, key_fields = _log(workspace, loaded, "long", fingerprint())
    times = {"slow": 3.0, "right": 0.1, "wrong": None, "crash": None}
    for mode, seconds in times.items():
        key = CandidateKey.of(tunables={"mode": mode}, **key_fields)
        log.record(CandidateResult(key, "ok", samples_s=[seconds] * 3,
                                   incumbent={"tunables": {"mode": "slow"},
                                              "samples_s": [3.0] * 3})
                   if seconds else CandidateResult(key, "wrong", "case n=1: off by one"))
    with pytest.raises(UsageError, match=r"1 of 5 valid configurations have no result in the "
                                         r"log \(e\.g\. mode=hang\)") as refused:
        evolve.replay(workspace, options)
    assert "--strategy exhaustive --max-evaluations 5 --dry-run" in refused.value.hint

    log.record(CandidateResult(CandidateKey.of(tunables={"mode": "hang"}, **key_fields),
                               "timeout", "no result in 15 s (killed)"))
    before = len(log)
    result = evolve.replay(workspace, options, seeds=(0, 1))
    study = result.study
    assert (study.configurations, study.failures) == (5, 3)
    assert study.optimum_config == {"mode": "right"} and study.optimum == pytest.approx(1 / 30)
    assert study.default_objective == pytest.approx(1.0)
    for row in study.strategies:  # 5 configurations: every strategy gets there
        assert all(1 <= count <= 5 for count in row.to_optimum)
    assert len(log) == before and not (workspace.runs_dir / "tuning" / "candidates").exists()


def test_a_winner_that_is_slower_on_another_bench_case_is_not_kept(tmp_path):
    workspace = toy_workspace(tmp_path, modes=("slow", "lopsided"))
    result = evolve.run(workspace, evolve.Options(
        spec="double", case="short", strategy="exhaustive", candidate_budget_s=0.3,
        confirm_budget_s=0.5, timeout_s=60))
    assert result.best["tunables"] == {"mode": "lopsided"}
    assert result.confirmation["gain"] > 5 and result.confirmation["p_value"] < 0.002
    [other] = result.other_cases
    assert other["case"] == "long" and other["gain"] < -0.3 and other["p_value_slower"] < 0.002
    assert result.verdict == "no_significant_gain"
    assert result.reason.startswith(f"{other['gain']:+.1%} on case long")
    assert result.tuned_values_file is None and not (workspace.root / "tuning").exists()
