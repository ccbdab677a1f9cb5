"""The correctness gate and the inputs of a bench case: what every contender is checked on.

- Inputs: ``case_params`` (the case's parameters over the spec's defaults), ``formula_names``
  (the names a ``bench.bytes`` / ``bench.flops`` formula or a shape may use), ``resolve_shape``,
  ``draw_inputs`` (drawn as the generated tests draw them, from a generator seeded by the case:
  ``case_seed``).
- Code to run: ``load_engine_module`` (the workspace's generated module, imported again when its
  file changed), ``load_source_function`` / ``source_module`` (a spec's Python source: bench
  baselines, ``bench.numpy``, ``draw``), ``load_torch_reference`` and ``torch_available``.
- The gate: ``compare_results`` holds each output against the reference at the spec's tolerance
  for its dtype (``tolerance_for``, ``compare_outputs``): the largest error and the first reason
  it does not match.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from koschei.specs.validate import case_label
from koschei.workspace import Workspace

FLOAT_DTYPES = ("float32", "float64")


def formula_names(case: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Names a ``bench.bytes`` / ``bench.flops`` formula or a shape expression may use.

    The case's named dimensions, its parameters, and for leading ``"..."`` dimensions ``rows``
    (their product) and ``lead`` (how many there are).
    """
    names: dict[str, Any] = {}
    for key, value in case.dims.items():
        if key == "...":
            leading = list(value) if isinstance(value, list) else [value]
            names["rows"] = int(np.prod(leading)) if leading else 1
            names["lead"] = len(leading)
        else:
            names[key] = value
    for key, value in params.items():
        if isinstance(value, (bool, int, float)):
            names[key] = value
    return names


def evaluate_formula(expression: str, names: dict[str, Any]) -> int | float:
    """The value of a spec's formula or shape expression over ``names`` (``formula_names``)."""
    from koschei.specs.expr import evaluate

    return evaluate(expression, names)


def resolve_shape(shape: list[Any], case: Any, names: dict[str, Any]) -> tuple[int, ...]:
    sizes: list[int] = []
    for dim in shape:
        if isinstance(dim, int):
            sizes.append(dim)
        elif dim == "...":
            leading = case.dims.get("...", [])
            sizes.extend(int(v) for v in (leading if isinstance(leading, list) else [leading]))
        elif dim in case.dims:
            sizes.append(int(case.dims[dim]))
        else:
            sizes.append(int(evaluate_formula(str(dim), names)))
    return tuple(sizes)


def case_params(spec: Any, case: Any) -> dict[str, Any]:
    """The case's parameters over the spec's defaults (unset optional parameters are left out,
    unset generators seeded from the case)."""
    params: dict[str, Any] = {}
    for param in spec.signature.params:
        if param.name in case.params:
            params[param.name] = case.params[param.name]
        elif param.type == "generator":  # seeded, so that engine and reference draw alike
            params[param.name] = case_seed(spec.name, case_label(case))
        elif param.default is not None:
            params[param.name] = param.default
    unknown = sorted(set(case.params) - {p.name for p in spec.signature.params})
    if unknown:
        raise ValueError(f"bench case sets unknown parameters: {', '.join(unknown)}")
    return params


def draw_inputs(spec: Any, case: Any, params: dict[str, Any], names: dict[str, Any],
                origin: str) -> dict[str, np.ndarray | None]:
    """The case's inputs by name, drawn as the generated tests draw them: every input from one
    generator seeded by the case (koschei.engine._runtime.draw_array), then the spec's
    ``draw(rng, dims, params)``; optional inputs not in the case's ``with_inputs`` are None."""
    from koschei.engine import _runtime

    rng = np.random.default_rng(case_seed(spec.name, case_label(case)))
    inputs: dict[str, np.ndarray | None] = {
        arg.name: _runtime.draw_array(rng, arg.dtype, resolve_shape(arg.shape, case, names),
                                      arg.range)
        for arg in spec.signature.inputs}
    if spec.draw:
        dims = {key: tuple(value) if key == "..." else value for key, value in case.dims.items()}
        defaults = {param.name: param.default for param in spec.signature.params}
        inputs.update(load_source_function(spec.draw, "draw", origin)(
            rng, dims, {**defaults, **params}))
    for arg in spec.signature.inputs:
        if arg.optional and arg.name not in case.with_inputs:
            inputs[arg.name] = None
    return inputs


def output_buffer(spec: Any, case: Any, names: dict[str, Any]) -> np.ndarray | None:
    """The out= buffer of a spec with one output, at the case's sizes; None for several outputs
    (the function returns new arrays)."""
    output = spec.signature.output
    if output is None:
        return None
    return np.empty(resolve_shape(output.shape, case, names), dtype=np.dtype(output.dtype))


def state_buffers(spec: Any, inputs: dict[str, Any],
                  params: dict[str, Any]) -> dict[str, np.ndarray]:
    """Buffers for the final state when a call asks for it and starts from a given state: one
    array like each initial one, by the final state's keyword (``final_state``), made once, as
    a decoding loop keeps them; none otherwise (the function then returns new arrays)."""
    signature = spec.signature
    flag = signature.state_flag
    if flag is None or not params.get(flag):
        return {}
    states = signature.states
    if any(inputs.get(state.input) is None for state in states):
        return {}
    return {state.name: np.empty_like(inputs[state.input]) for state in states}


def kernel_call(function: Callable[..., Any], inputs: dict[str, Any], params: dict[str, Any],
                out: np.ndarray | None,
                buffers: dict[str, np.ndarray] | None = None) -> Callable[[], Any]:
    """A call of an engine function on ``inputs``: into ``out`` (then returned) when the spec
    has one output (``output_buffer``), else returning its new arrays; the final state into
    ``buffers`` (``state_buffers``) when given."""
    keywords = {**params, **(buffers or {})}
    if out is not None:
        def call() -> Any:  # out, or (out, the final state) when the call asks for it
            return function(**inputs, out=out, **keywords)
        return call

    def call_returning() -> Any:
        return function(**inputs, **keywords)
    return call_returning


def case_seed(spec_name: str, label: str) -> int:
    return zlib.crc32(f"{spec_name}/{label}".encode())


_loaded_stamps: dict[Path, int] = {}  # engine module file -> mtime_ns when it was imported


def load_engine_module(workspace: Workspace, name: str) -> ModuleType:
    """The workspace's ``koschei/engine/<name>.py``, imported as ``koschei.engine.<name>``.

    The workspace's engine folder is put first on the engine package's path (so a workspace made
    by ``koschei init`` measures its own modules), and a module whose file changed since it was
    imported (a cycle regenerates modules between benchmarks) is imported again.
    """
    import koschei.engine

    path = (workspace.engine_dir / f"{name}.py").resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{workspace.relative(path)} does not exist: "
                                "run `koschei code-generate` first")
    koschei.engine.use_workspace(workspace.root)
    module = importlib.import_module(f"koschei.engine.{name}")
    origin = Path(getattr(module, "__file__", "") or "").resolve()
    if origin != path:
        raise ImportError(f"koschei.engine.{name} was imported from {origin}, not {path}")
    stamp = path.stat().st_mtime_ns
    if _loaded_stamps.setdefault(path, stamp) != stamp:
        module = importlib.reload(module)
        _loaded_stamps[path] = stamp
    return module


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def source_module(source: str, origin: str, **names: Any) -> ModuleType:
    """A spec's Python source run as a module of its own, registered in ``sys.modules`` (so that
    ``torch.compile`` can trace its functions); it sees NumPy as ``np`` and the given names."""
    import sys

    module = ModuleType(f"koschei_spec_source_{zlib.crc32(origin.encode()):08x}")
    module.__dict__.update({"np": np, **names})
    sys.modules[module.__name__] = module
    exec(compile(source, f"<{origin}>", "exec"), module.__dict__)  # noqa: S102 - own spec
    return module


def load_source_function(source: str, name: str, origin: str,
                         **names: Any) -> Callable[..., Any]:
    """The function ``name`` that a spec's Python source defines; the source sees NumPy as
    ``np`` and the given ``names`` (e.g. ``torch``)."""
    namespace = source_module(source, f"{origin}: {name}", **names).__dict__
    function = namespace.get(name)
    if not callable(function):
        raise TypeError(f"{origin}: the source does not define {name}(...)")
    return function


def load_torch_reference(source: str, origin: str) -> Callable[..., Any]:
    import torch

    return load_source_function(source, "torch_reference", origin, torch=torch)


def compare_outputs(actual: Any, expected: Any, rtol: float, atol: float,
                    ) -> tuple[bool, float | None, str]:
    """Whether ``actual`` matches ``expected`` within tolerance, the largest finite absolute
    error (None when there is none to measure), and the reason when it does not match."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        return False, None, f"shape {actual.shape} != reference shape {expected.shape}"
    if actual.size == 0:
        return True, 0.0, ""
    difference = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    finite = difference[np.isfinite(difference)]
    max_abs_error = float(finite.max()) if finite.size else None
    close = np.isclose(actual.astype(np.float64), expected.astype(np.float64), rtol=rtol,
                       atol=atol, equal_nan=True)
    if close.all():
        return True, max_abs_error, ""
    bad = int((~close).sum())
    first = tuple(int(i) for i in np.argwhere(~close)[0])
    return False, max_abs_error, (
        f"{bad} of {close.size} elements differ beyond rtol={rtol}, atol={atol} "
        f"(max abs error {max_abs_error if max_abs_error is None else f'{max_abs_error:.3g}'}; first at {first}: "
        f"{float(actual[first]):.6g} vs {float(expected[first]):.6g})")


def tolerance_for(spec: Any, dtype: str) -> tuple[float, float]:
    chosen = spec.tests.tolerance.get(dtype)
    if chosen is None:
        return 0.0, 0.0
    return chosen.rtol, chosen.atol


def compare_results(spec: Any, actual: Any, expected: Any) -> tuple[bool, float | None, str]:
    """``compare_outputs`` for each of the spec's outputs (a tuple when there are several, or
    when the final state was asked for), at the tolerance of its dtype; the largest error over
    all, the first reason."""
    results = spec.signature.results
    actual = actual if isinstance(actual, tuple) else (actual,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    state = spec.signature.state_results
    if state and len(actual) == len(results) + len(state):  # the final state, asked for
        results = [*results, *state]
    if len(actual) != len(results) or len(expected) != len(results):
        return False, None, (f"{len(actual)} result(s) and {len(expected)} from the reference, "
                             f"expected {len(results)}")
    errors: list[float] = []
    for result, got, wanted in zip(results, actual, expected, strict=True):
        matches, error, reason = compare_outputs(got, wanted, *tolerance_for(spec, result.dtype))
        if error is not None:
            errors.append(error)
        if not matches:
            prefix = f"{result.name}: " if len(results) > 1 else ""
            return False, max(errors, default=None), prefix + reason
    return True, max(errors, default=None), ""
