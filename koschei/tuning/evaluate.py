"""One candidate: rendered, compiled, checked against the reference, then timed beside the
current configuration, in a process of its own.

``render_candidate`` writes the engine module of a spec with given tunable values (as
code_generate renders it with tuned values) to ``<folder>/koschei_tune_<spec>_<digest>.py``, the
digest being that of the module's text: the same configuration is the same file, so Numba's
cache (keyed by the file) compiles it once across evaluations, kills and restarts.

``evaluate`` runs ``python -m koschei.tuning.evaluate`` with a JSON request on stdin. The child
imports the candidate and the incumbent (the module it is compared with), runs the candidate on
every test case of the spec and on the bench case and compares each result with the spec's NumPy
reference (koschei.bench.check, at the spec's tolerances), and only then times candidate and
incumbent interleaved, round by round (koschei.bench.timing.measure_interleaved), on the bench
case's inputs. It prints one JSON line. The parent turns what happened into a verdict:

- ``ok``: the samples of both, seconds per call, round by round;
- ``render_error`` (the templates refused the values), ``compile_error`` (the module did not
  import or the kernel did not compile: Numba's typing errors), ``wrong`` (a result differs from
  the reference: which case, by how much), ``crashed`` (the child died of a signal, e.g. a
  segmentation fault), ``timeout`` (no result in ``timeout_s``: the child is killed), ``error``
  (anything else the child reported).

A failure costs one child process; the search goes on.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CANDIDATE_PREFIX = "koschei_tune_"
DEFAULT_TIMEOUT_S = 300.0


class RenderError(Exception):
    """The templates refused a configuration."""


def render_candidate(workspace: Any, loaded: Any, tunables: dict[str, Any], folder: Path) -> Path:
    """The engine module of ``loaded`` with ``tunables``, written (once) into ``folder``."""
    from koschei.errors import SpecError, UsageError
    from koschei.files import write_bytes_atomic
    from koschei.phases.code_generate import ENGINE_TEMPLATE, render_spec
    from koschei.templating import environment

    env = environment(workspace.templates_dir)
    try:
        files = render_spec(env, loaded, tunables, "the search's candidate")
    except (SpecError, UsageError) as error:
        raise RenderError(str(error).splitlines()[0]) from None
    [engine] = [file for file in files if file.template == ENGINE_TEMPLATE]
    data = engine.text.encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()[:16]
    path = Path(folder) / f"{CANDIDATE_PREFIX}{loaded.name}_{digest}.py"
    if not path.exists():
        write_bytes_atomic(path, data)
    return path


def evaluate(request: dict[str, Any], timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """Run the child on ``request`` (see ``child_main``); the outcome as a dict with
    ``verdict`` and, when ok, ``candidate_samples_s`` and ``incumbent_samples_s`` (round by
    round) and ``candidate_median_s``."""
    started = time.monotonic()
    command = [sys.executable, "-m", "koschei.tuning.evaluate"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    try:
        completed = subprocess.run(command, input=json.dumps(request), capture_output=True,
                                   text=True, errors="replace", timeout=timeout_s, check=False,
                                   env=environment)
    except subprocess.TimeoutExpired:
        return {"verdict": "timeout", "reason": f"no result in {timeout_s:g} s (killed)",
                "seconds": time.monotonic() - started}
    seconds = time.monotonic() - started
    if completed.returncode < 0:
        try:
            name = signal.Signals(-completed.returncode).name
        except ValueError:
            name = f"signal {-completed.returncode}"
        return {"verdict": "crashed", "reason": f"the candidate's process died of {name}",
                "seconds": seconds}
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = [line for line in completed.stderr.strip().splitlines() if line.strip()]
        return {"verdict": "error", "seconds": seconds,
                "reason": f"the candidate's process exited {completed.returncode}: "
                          + (tail[-1] if tail else "no output")}
    outcome = json.loads(lines[-1])
    outcome["seconds"] = seconds
    return outcome


# --- the child ------------------------------------------------------------------------------------


def _import_file(path: Path) -> Any:
    """The module at ``path``, imported under its file name (registered, so that Numba's cache
    can find it again)."""
    import importlib.util

    name = path.stem
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def check_and_time(request: dict[str, Any]) -> dict[str, Any]:
    """The child's work (module docstring); raises on what the parent reports as an error."""
    from koschei.bench import check
    from koschei.bench.timing import measure_interleaved
    from koschei.engine import _runtime
    from koschei.specs import load_specs
    from koschei.specs.validate import case_label
    from koschei.workspace import Workspace

    workspace = Workspace.find(Path(request["root"]))
    loaded = load_specs(workspace)[request["spec"]]
    spec = loaded.spec
    _runtime.set_threads(int(request["threads"]))
    incumbent_module = (_import_file(Path(request["incumbent"])) if request.get("incumbent")
                        else check.load_engine_module(workspace, spec.name))
    try:
        candidate_module = _import_file(Path(request["candidate"]))
    except Exception as error:  # noqa: BLE001 - reported as the candidate's verdict
        return {"verdict": "compile_error", "reason": f"{type(error).__name__}: {error}"}
    candidate = getattr(candidate_module, spec.name)
    reference = candidate_module.reference
    [bench_case] = [case for case in spec.bench.cases if case_label(case) == request["case"]]
    max_error = 0.0
    for case in [*spec.tests.cases, bench_case]:
        label = case_label(case)
        params = check.case_params(spec, case)
        names = check.formula_names(case, params)
        inputs = check.draw_inputs(spec, case, params, names, loaded.relpath)
        try:
            got = check.kernel_call(candidate, inputs, params,
                                    check.output_buffer(spec, case, names))()
        except Exception as error:  # noqa: BLE001
            kind = type(error).__name__
            verdict = "compile_error" if "Typing" in kind or "Lowering" in kind else "error"
            first = str(error).splitlines()[0] if str(error) else ""
            return {"verdict": verdict, "reason": f"case {label}: {kind}: {first}"}
        matches, error, reason = check.compare_results(spec, got, reference(**inputs, **params))
        max_error = max(max_error, error or 0.0)
        if not matches:
            return {"verdict": "wrong", "reason": f"case {label}: {reason}",
                    "max_abs_error": error}
    params = check.case_params(spec, bench_case)
    names = check.formula_names(bench_case, params)
    inputs = check.draw_inputs(spec, bench_case, params, names, loaded.relpath)
    contenders = {
        "candidate": check.kernel_call(candidate, inputs, params,
                                       check.output_buffer(spec, bench_case, names)),
        "incumbent": check.kernel_call(getattr(incumbent_module, spec.name), inputs, params,
                                       check.output_buffer(spec, bench_case, names)),
    }
    timings, stopped = measure_interleaved(contenders, float(request["budget_s"]))
    return {"verdict": "ok", "max_abs_error": max_error, "stopped": stopped,
            "candidate_samples_s": timings["candidate"].samples_s,
            "incumbent_samples_s": timings["incumbent"].samples_s,
            "candidate_median_s": timings["candidate"].median_s}


def child_main() -> None:
    request = json.loads(sys.stdin.read())
    try:
        outcome = check_and_time(request)
    except Exception as error:  # noqa: BLE001 - the parent records it
        outcome = {"verdict": "error", "reason": f"{type(error).__name__}: {error}"}
    sys.stdout.write("\n" + json.dumps(outcome, default=float) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    child_main()
