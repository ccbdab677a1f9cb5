"""koschei.tuning.evaluate: a candidate rendered, checked against the reference and timed in a
child process that gets everything as text (the spec, the modules); a wrong, crashing, hanging
or broken candidate is a verdict with its reason."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from koschei.bench import machine
from koschei.bench.timing import median_ratio
from koschei.specs import load_specs
from koschei.tuning.evaluate import (
    CANDIDATE_PREFIX,
    RenderError,
    evaluate,
    make_request,
    render_candidate,
    write_module,
)
from koschei.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent
BUDGET_S = 0.2


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("workspace")
    (root / "specs" / "foundation").mkdir(parents=True)
    (root / "koschei.toml").write_text("", encoding="utf-8")
    shutil.copy(REPO / "specs" / "foundation" / "rmsnorm.yaml", root / "specs" / "foundation")
    return Workspace.find(root)


@pytest.fixture(scope="module")
def rmsnorm(workspace):
    return load_specs(workspace)["rmsnorm"]


def request(rmsnorm, candidate: Path, incumbent: Path, folder: Path) -> dict:
    return make_request(rmsnorm, "4096x4096", candidate, incumbent, threads=2,
                        budget_s=BUDGET_S, folder=folder)


def test_a_candidate_is_one_file_per_configuration(workspace, rmsnorm, tmp_path):
    first = render_candidate(workspace, rmsnorm, {"parallel_min_elements": 4096}, tmp_path)
    again = render_candidate(workspace, rmsnorm, {"parallel_min_elements": 4096}, tmp_path)
    other = render_candidate(workspace, rmsnorm, {"parallel_min_elements": 8192}, tmp_path)
    assert first == again != other and first.name.startswith(CANDIDATE_PREFIX + "rmsnorm_")
    assert "_PARALLEL_MIN_ELEMENTS = 4096" in first.read_text(encoding="utf-8")
    with pytest.raises(RenderError, match="parallel_min_elements: 1000 is not one of its choices"):
        render_candidate(workspace, rmsnorm, {"parallel_min_elements": 1000}, tmp_path)


def test_a_right_candidate_is_timed_beside_the_incumbent(workspace, rmsnorm, tmp_path):
    incumbent = render_candidate(workspace, rmsnorm, {}, tmp_path)
    candidate = render_candidate(workspace, rmsnorm, {"accumulate": "float64"}, tmp_path)
    elsewhere = tmp_path / "elsewhere"  # as on a machine without the workspace's files
    outcome = evaluate(request(rmsnorm, candidate, incumbent, elsewhere), timeout_s=120)
    assert outcome["verdict"] == "ok", outcome
    assert outcome["fingerprint"] == machine.fingerprint() and outcome["helpers"]
    assert (elsewhere / candidate.name).read_bytes() == candidate.read_bytes()
    assert (elsewhere / incumbent.name).read_bytes() == incumbent.read_bytes()
    samples, beside = outcome["candidate_samples_s"], outcome["incumbent_samples_s"]
    assert len(samples) == len(beside) >= 5 and min(samples) > 0
    assert 0.2 < median_ratio(samples, beside) < 5 and outcome["max_abs_error"] < 1e-3


# appended to a right candidate's module: each breaks it in one way
BROKEN = {
    "wrong": (("_right = rmsnorm\n\n\ndef rmsnorm(*args, **kwargs):\n"
               "    result = _right(*args, **kwargs)\n    result *= 1.01\n    return result\n"),
              "wrong", "elements differ beyond"),
    "crash": (("def rmsnorm(*args, **kwargs):\n    import os, signal\n"
               "    os.kill(os.getpid(), signal.SIGSEGV)\n"), "crashed", "died of SIGSEGV"),
    "hang": ("def rmsnorm(*args, **kwargs):\n    import time\n    time.sleep(3600)\n",
             "timeout", "no result in 20 s (killed)"),
    "typing": (("@njit\ndef _broken(x):\n    return x.no_such_attribute\n\n\n"
                "_right = rmsnorm\n\n\ndef rmsnorm(*args, **kwargs):\n"
                "    _broken(next(iter(kwargs.values())))\n"
                "    return _right(*args, **kwargs)\n"), "compile_error", "TypingError"),
    "import": ("import koschei_has_no_such_module  # noqa\n", "compile_error",
               "ModuleNotFoundError"),
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_a_broken_candidate_is_a_verdict_with_its_reason(kind, workspace, rmsnorm, tmp_path):
    incumbent = render_candidate(workspace, rmsnorm, {}, tmp_path)
    right = render_candidate(workspace, rmsnorm, {"parallel_min_elements": 8192}, tmp_path)
    code, verdict, reason = BROKEN[kind]
    broken = tmp_path / f"{CANDIDATE_PREFIX}rmsnorm_{kind}.py"
    broken.write_text(right.read_text(encoding="utf-8") + "\n\n" + code, encoding="utf-8")
    outcome = evaluate(request(rmsnorm, broken, incumbent, tmp_path), timeout_s=20)
    assert outcome["verdict"] == verdict, outcome
    assert reason in outcome["reason"], outcome
    assert "candidate_samples_s" not in outcome  # nothing timed


def test_a_module_file_name_stays_inside_its_folder(tmp_path):
    module = {"name": f"{CANDIDATE_PREFIX}rmsnorm_0123.py", "text": "X = 1\n"}
    path = write_module(tmp_path, module)
    assert path == tmp_path / module["name"] and path.read_text() == "X = 1\n"
    stamp = path.stat().st_mtime_ns
    assert write_module(tmp_path, module).stat().st_mtime_ns == stamp  # unchanged: not rewritten
    for name in ("../escape.py", "/tmp/escape.py", "not-a-module.py", "module.txt"):
        with pytest.raises(ValueError, match="plain name.py"):
            write_module(tmp_path, {"name": name, "text": ""})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_candidate_process_does_not_outlive_a_killed_search():
    # the candidate waits for its request on a pipe this test keeps open: only its parent's
    # death can end it
    read_end, write_end = os.pipe()
    script = ("import subprocess, sys, time\n"
              "child = subprocess.Popen([sys.executable, '-m', 'koschei.tuning.evaluate'],\n"
              f"                         stdin={read_end}, start_new_session=True)\n"
              "print(child.pid, flush=True)\n"
              "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              pass_fds=(read_end,))
    os.close(read_end)
    try:
        child = int(parent.stdout.readline())
        time.sleep(1.0)  # the child is waiting for its request
        os.kill(child, 0)  # alive
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(child, signal.SIGKILL)
        pytest.fail("the candidate's process outlived the search that started it")
    finally:
        os.close(write_end)
