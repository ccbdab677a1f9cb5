"""One candidate: rendered, compiled, checked against the reference, then timed beside the
current configuration, in a process of its own.

``render_candidate`` writes the engine module of a spec with given tunable values (as
code_generate renders it with tuned values) to ``<folder>/koschei_tune_<spec>_<digest>.py``, the
digest being that of the module's text: the same configuration is the same file, so Numba's
cache (keyed by the file) compiles it once across evaluations, kills and restarts.

``make_request`` puts into a JSON request everything the child needs, as text: the spec's YAML
(and its workspace-relative path, for messages), the candidate's and the incumbent's (the module
it is compared with) file names and texts, the bench case, the threads and the timing budget.
Nothing is read from the workspace: the same request runs in a child of this process and on a
worker of a Dask cluster that shares no files with it (koschei.tuning.distributed). The child
writes the modules under their digest-named file names into ``folder`` (locally the search's
``runs/tuning/candidates``, where they already are; elsewhere ``candidates_dir()``, a per-user
cache), so that Numba's ``cache=True`` finds them again, and loads the spec from its text with
the same validation as a file (koschei.specs.load_spec_text).

``evaluate`` runs ``python -m koschei.tuning.evaluate`` with the request on stdin, so that a
candidate that crashes or hangs takes down a child, never the caller (nor a Dask worker). The
child imports the candidate and the incumbent, runs the candidate on every test case of the spec
and on the bench case and compares each result with the spec's NumPy reference
(koschei.bench.check, at the spec's tolerances), and only then times candidate and incumbent
interleaved, round by round (koschei.bench.timing.measure_interleaved), on the bench case's
inputs. It prints one JSON line. The parent turns what happened into a verdict:

- ``ok``: the samples of both, seconds per call, round by round;
- ``render_error`` (the templates refused the values), ``compile_error`` (the module did not
  import or the kernel did not compile: Numba's typing errors), ``wrong`` (a result differs from
  the reference: which case, by how much), ``crashed`` (the child died of a signal, e.g. a
  segmentation fault), ``timeout`` (no result in ``timeout_s``: the child is killed), ``error``
  (anything else the child reported).

A failure costs one child process; the search goes on. Every outcome also names where it was
measured: the machine's ``fingerprint`` and the digest of koschei's engine ``helpers``
(``machine_identity``).
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


def candidates_dir() -> Path:
    """Where a child writes the modules of a request that names no folder (a Dask worker's):
    ``$XDG_CACHE_HOME/koschei/candidates``, by default ``~/.cache/koschei/candidates``."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home).expanduser() / "koschei" / "candidates"


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


def spec_text(loaded: Any) -> str:
    """The spec file's text as a request carries it: its bytes decoded without newline
    translation, so that the child's spec has the file's sha256."""
    return Path(loaded.path).read_bytes().decode("utf-8")


def make_request(loaded: Any, case: str, candidate: Path, incumbent: Path, *, threads: int,
                 budget_s: float, folder: Path | None = None, spec_yaml: str | None = None,
                 ) -> dict[str, Any]:
    """The request that checks and times the module file ``candidate`` beside ``incumbent``
    (both from ``render_candidate``) on bench case ``case`` of ``loaded``: texts, not paths
    (module docstring). ``folder``: where the child writes the modules (None: the
    ``candidates_dir()`` of the machine it runs on); ``spec_yaml``: the spec's text when the
    caller has read it already (``spec_text``)."""
    request = {"spec": loaded.name, "spec_path": loaded.relpath,
               "spec_yaml": spec_yaml if spec_yaml is not None else spec_text(loaded),
               "candidate": {"name": Path(candidate).name,
                             "text": Path(candidate).read_text(encoding="utf-8")},
               "incumbent": {"name": Path(incumbent).name,
                             "text": Path(incumbent).read_text(encoding="utf-8")},
               "case": case, "threads": int(threads), "budget_s": float(budget_s)}
    if folder is not None:
        request["folder"] = str(folder)
    return request


def machine_identity() -> dict[str, str]:
    """Where an outcome was measured: this machine's ``fingerprint`` (koschei.bench.machine) and
    the digest of koschei's engine ``helpers`` (the hand-written code every kernel compiles
    in: two installs with different helpers compile different code)."""
    from koschei.bench import machine
    from koschei.engine._runtime import helpers_key

    return {"fingerprint": machine.fingerprint(), "helpers": helpers_key()}


def evaluate(request: dict[str, Any], timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """Run the child on ``request`` (``make_request``); the outcome as a dict with ``verdict``,
    the ``fingerprint`` and ``helpers`` of this machine (``machine_identity``) and, when ok,
    ``candidate_samples_s`` and ``incumbent_samples_s`` (round by round) and
    ``candidate_median_s``."""
    return {**_run_child(request, timeout_s), **machine_identity()}


def _run_child(request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    started = time.monotonic()
    command = [sys.executable, "-m", "koschei.tuning.evaluate"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    try:
        # a session of its own: a Ctrl-C in the terminal reaches the search, not the candidate
        # (the search decides: drop it at once, or let it finish and stop after it)
        completed = subprocess.run(command, input=json.dumps(request), capture_output=True,
                                   text=True, errors="replace", timeout=timeout_s, check=False,
                                   env=environment, start_new_session=True)
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


def write_module(folder: Path, module: dict[str, str]) -> Path:
    """A request's module (``{"name", "text"}``) as the file ``folder/name``, written only when
    it is missing or differs (an unchanged file keeps Numba's cache valid)."""
    from koschei.files import write_bytes_atomic

    name = module["name"]
    if Path(name).name != name or not name.endswith(".py") or not name[:-3].isidentifier():
        raise ValueError(f"a module's file name must be a plain name.py, not {name!r}")
    path = Path(folder) / name
    data = module["text"].encode("utf-8")
    try:
        unchanged = path.read_bytes() == data
    except FileNotFoundError:
        unchanged = False
    if not unchanged:
        write_bytes_atomic(path, data)
    return path


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
    from koschei.specs import load_spec_text
    from koschei.specs.validate import case_label

    loaded = load_spec_text(request["spec_yaml"], request["spec_path"])
    spec = loaded.spec
    if spec.name != request["spec"]:
        raise ValueError(f"the request is for {request['spec']} but its spec is {spec.name}")
    _runtime.set_threads(int(request["threads"]))
    folder = Path(request.get("folder") or candidates_dir())
    incumbent_module = _import_file(write_module(folder, request["incumbent"]))
    candidate_path = write_module(folder, request["candidate"])
    try:
        candidate_module = _import_file(candidate_path)
    except Exception as error:  # noqa: BLE001 - reported as the candidate's verdict
        return {"verdict": "compile_error", "reason": f"{type(error).__name__}: {error}"}
    candidate = getattr(candidate_module, spec.name)
    reference = candidate_module.reference
    [bench_case] = [case for case in spec.bench.cases if case_label(case) == request["case"]]
    max_error = 0.0
    for case in [*spec.tests.cases, bench_case]:  # the bench case last: its inputs are timed
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
    # one output buffer for both: within a process, where an array lies against the inputs
    # moves a small case's time by up to ~3%, the size of a minimum gain; shared, only the
    # code differs (the calls never overlap)
    out = check.output_buffer(spec, bench_case, names)
    buffers = check.state_buffers(spec, inputs, params)
    contenders = {
        "candidate": check.kernel_call(candidate, inputs, params, out, buffers),
        "incumbent": check.kernel_call(getattr(incumbent_module, spec.name), inputs, params, out,
                                       buffers),
    }
    timings, stopped = measure_interleaved(contenders, float(request["budget_s"]))
    return {"verdict": "ok", "max_abs_error": max_error, "stopped": stopped,
            "candidate_samples_s": timings["candidate"].samples_s,
            "incumbent_samples_s": timings["incumbent"].samples_s,
            "candidate_median_s": timings["candidate"].median_s}


def die_with_parent() -> None:
    """On Linux, have the kernel kill this process when the thread that started it ends (its
    parent killed, even with ``kill -9``): a candidate runs in a session of its own, out of
    reach of the terminal's Ctrl-C, and must not outlive its search. Elsewhere, nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def child_main() -> None:
    die_with_parent()
    request = json.loads(sys.stdin.read())
    try:
        outcome = check_and_time(request)
    except Exception as error:  # noqa: BLE001 - the parent records it
        outcome = {"verdict": "error", "reason": f"{type(error).__name__}: {error}"}
    sys.stdout.write("\n" + json.dumps(outcome, default=float) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    child_main()
