"""koschei.engine._testing, the tests every generated engine module gets, run on a hand-written
NumPy function that keeps the engine contract: the right function passes them all; a wrong
result fails the reference tests and only them; a function that writes into its input, that
checks no argument or whose signature differs fails the tests of that; a spec gets the tests it
has data for; inputs are drawn deterministically from the case."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from koschei.engine import _runtime as _rt
from koschei.engine import _testing

REPO = Path(__file__).resolve().parent.parent
FUNCTION = "scaled_rows"
FLOAT32 = np.dtype(np.float32)


def make_scaled_rows(*, factor: float = 1.0, checks: bool = True, writes_input: bool = False,
                     alpha_default: float = 1.0):
    """scaled_rows(x (n, d), weight (d,), *, alpha=1.0, out=None) = x * weight * alpha, with
    d <= 64; ``factor`` scales the result (1: right), ``checks`` the argument checks."""

    def scaled_rows(x, weight, *, alpha=alpha_default, out=None):
        if checks:
            _rt.check_array(FUNCTION, "x", x, FLOAT32, "(n, d)", ndim=2)
            _rt.check_array(FUNCTION, "weight", weight, FLOAT32, "(d,)", ndim=1)
            if weight.shape != (x.shape[1],):
                raise _rt.dim_mismatch(FUNCTION, "weight", weight, "(d,)", {"d": x.shape[1]},
                                       "x")
            alpha = _rt.as_float(FUNCTION, "alpha", alpha)
            if not alpha > 0:
                raise _rt.out_of_range(FUNCTION, "alpha", alpha, "> 0")
            if not x.shape[1] <= 64:
                raise _rt.constraint_failed(FUNCTION, "x", "d <= 64", "at most 64 columns",
                                            {"d": x.shape[1]})
            if out is not None:
                _rt.check_out(FUNCTION, out, FLOAT32, x.shape, "(n, d)", {"x": x, "weight": weight})
        if out is None:
            out = np.empty(np.broadcast_shapes(np.shape(x), np.shape(weight)), FLOAT32)
        np.multiply(x, np.asarray(weight) * np.float32(alpha * factor), out=out)
        if writes_input:
            x[...] = 0.0
        return out

    return scaled_rows


def reference(x, weight, *, alpha=1.0):
    return (x * weight * np.float32(alpha)).astype(np.float32)


def torch_reference(x, weight, *, alpha=1.0):
    return x * weight * alpha


def input_shapes(dims):
    return {"x": (dims["n"], dims["d"]), "weight": (dims["d"],)}


def output_shapes(dims, params):
    return [(dims["n"], dims["d"])]


CASES = [pytest.param("1x1", {"n": 1, "d": 1}, {}, [], id="1x1"),
         pytest.param("3x5", {"n": 3, "d": 5}, {}, [], id="3x5"),
         pytest.param("alpha", {"n": 2, "d": 64}, {"alpha": 0.5}, [], id="alpha")]
BAD_ALPHAS = [("alpha", "1.0", TypeError), ("alpha", True, TypeError), ("alpha", None, TypeError),
              ("alpha", 0.0, ValueError), ("alpha", float("nan"), ValueError)]


def spec_of(function=None, **changes: Any) -> _testing.Spec:
    """The Spec of scaled_rows (right unless another function is given), with changes."""
    spec = _testing.Spec(
        name=FUNCTION, function=function or make_scaled_rows(), reference=reference,
        tolerance={"float32": (1e-6, 1e-6)}, results=[("y", "float32")],
        defaults={"alpha": 1.0}, cases=CASES, base_dims={"n": 3, "d": 5}, base_params={},
        inputs=[("x", "float32", False, 2), ("weight", "float32", False, 1)], optional=[],
        generators=[], ranges={"x": None, "weight": None}, input_shapes=input_shapes,
        output_shapes=output_shapes,
        signature=[("x", _testing.POSITIONAL, _testing.REQUIRED),
                   ("weight", _testing.POSITIONAL, _testing.REQUIRED),
                   ("alpha", _testing.KEYWORD, 1.0), ("out", _testing.KEYWORD, None)],
        random_dims={"n": (1, 5), "d": (1, 70)}, random_params={},
        constraints=[("d <= 64", lambda d, **_: d <= 64)], empty_rejected=[0, 1],
        mismatches=[("d", 1)], bad_params=BAD_ALPHAS, overlap_position=0,
        torch_reference=torch_reference)
    return dataclasses.replace(spec, **changes)


def outcomes(test) -> dict[str, tuple[str, str]]:
    """Run a generic test on each of its parameter sets as pytest would: id -> (passed, failed
    or skipped, the message)."""
    marks = getattr(test, "pytestmark", [])
    if any(mark.name == "skipif" and mark.args[0] for mark in marks):
        return {"": ("skipped", "")}
    parametrize = next((mark for mark in marks if mark.name == "parametrize"), None)
    calls: dict[str, dict[str, Any]] = {"": {}}
    if parametrize is not None:
        names, values = parametrize.args
        names = [names] if isinstance(names, str) else list(names)
        ids = parametrize.kwargs.get("ids")
        calls = {}
        for index, value in enumerate(values):
            if isinstance(value, type(pytest.param())):
                key, value = value.id, value.values
            else:
                key = ids[index] if ids else str(value)
                value = value if len(names) > 1 else (value,)
            calls[key] = dict(zip(names, value, strict=True))
    found = {}
    for key, arguments in calls.items():
        try:
            test(**arguments)
        except pytest.skip.Exception as skip:
            found[key] = ("skipped", str(skip))
        # an assertion, pytest.raises' Failed, or an error of another kind than it expects
        except (AssertionError, TypeError, ValueError, pytest.fail.Exception) as error:
            found[key] = ("failed", str(error))
        else:
            found[key] = ("passed", "")
    return found


def statuses(spec: _testing.Spec) -> dict[str, set[str]]:
    """Test name -> the statuses of its parameter sets."""
    return {name: {status for status, _ in outcomes(test).values()}
            for name, test in spec.tests().items()}


REFERENCE_TESTS = {"test_matches_the_reference", "test_writes_into_out",
                   "test_random_shapes_match_the_reference", "test_matches_pytorch"}
ARGUMENT_TESTS = {"test_rejects_what_is_not_an_array", "test_rejects_a_wrong_dtype",
                  "test_rejects_a_wrong_number_of_dimensions",
                  "test_rejects_a_non_contiguous_array", "test_rejects_an_empty_array",
                  "test_rejects_dimensions_that_disagree", "test_rejects_a_bad_parameter",
                  "test_rejects_sizes_that_break_a_constraint",
                  "test_rejects_an_out_of_the_wrong_dtype", "test_rejects_an_out_of_the_wrong_shape",
                  "test_rejects_a_non_contiguous_out", "test_rejects_a_read_only_out",
                  "test_rejects_an_out_that_overlaps_an_input"}
EVERY_TEST = REFERENCE_TESTS | ARGUMENT_TESTS | {"test_signature_matches_the_spec"}


def test_a_right_function_passes_every_generic_test():
    found = statuses(spec_of())
    assert set(found) == EVERY_TEST
    pytorch = {"skipped"} if _testing.torch is None else {"passed"}
    assert found.pop("test_matches_pytorch") == pytorch
    assert found == {name: {"passed"} for name in found}


def test_the_parameter_sets_are_named_after_the_cases_inputs_and_values():
    tests = spec_of().tests()
    assert list(outcomes(tests["test_matches_the_reference"])) == ["1x1", "3x5", "alpha"]
    assert list(outcomes(tests["test_rejects_a_wrong_dtype"])) == ["x", "weight"]
    assert list(outcomes(tests["test_rejects_dimensions_that_disagree"])) == ["d-weight"]
    assert list(outcomes(tests["test_rejects_a_bad_parameter"])) == [
        "alpha='1.0'", "alpha=True", "alpha=None", "alpha=0.0", "alpha=nan"]
    assert list(outcomes(tests["test_rejects_sizes_that_break_a_constraint"])) == ["d <= 64"]


def test_a_wrong_result_fails_the_reference_tests_and_only_them():
    found = statuses(spec_of(make_scaled_rows(factor=1.001)))
    failed = {name for name, seen in found.items() if seen == {"failed"}}
    assert failed == REFERENCE_TESTS - ({"test_matches_pytorch"} if _testing.torch is None
                                        else set())
    assert all(found[name] == {"passed"} for name in ARGUMENT_TESTS)


def test_a_function_that_writes_into_its_input_fails_the_reference_test():
    tests = spec_of(make_scaled_rows(writes_input=True)).tests()
    found = outcomes(tests["test_matches_the_reference"])
    assert {status for status, _ in found.values()} == {"failed"}
    assert all("x was modified" in message for _, message in found.values())


def test_a_function_that_checks_no_argument_fails_every_argument_test():
    found = statuses(spec_of(make_scaled_rows(checks=False)))
    assert {name: found[name] for name in ARGUMENT_TESTS} == {
        name: {"failed"} for name in ARGUMENT_TESTS}
    assert found["test_matches_the_reference"] == {"passed"}


def test_another_default_fails_the_signature_test():
    test = spec_of(make_scaled_rows(alpha_default=2.0)).tests()["test_signature_matches_the_spec"]
    [(status, message)] = outcomes(test).values()
    assert status == "failed" and "2.0)" in message and "1.0)" in message  # got, expected


def test_a_spec_gets_only_the_tests_it_has_something_for():
    everything = set(spec_of().tests())
    bare = spec_of(random_dims={}, constraints=[], torch_reference=None, empty_rejected=[],
                   mismatches=[], bad_params=[], overlap_position=None)
    assert everything - set(bare.tests()) == {
        "test_random_shapes_match_the_reference", "test_rejects_sizes_that_break_a_constraint",
        "test_matches_pytorch", "test_rejects_an_empty_array",
        "test_rejects_dimensions_that_disagree", "test_rejects_a_bad_parameter",
        "test_rejects_an_out_that_overlaps_an_input"}
    # no out= (several results): none of the out= tests
    several = spec_of(signature=spec_of().signature[:-1])
    assert not several.takes_out
    assert everything - set(several.tests()) == {
        "test_writes_into_out", "test_rejects_an_out_of_the_wrong_dtype",
        "test_rejects_an_out_of_the_wrong_shape", "test_rejects_a_non_contiguous_out",
        "test_rejects_a_read_only_out", "test_rejects_an_out_that_overlaps_an_input"}
    assert all(name == test.__name__ for name, test in several.tests().items())


def test_inputs_are_drawn_from_the_seed_then_by_the_spec_draw():
    seen: list[tuple[dict, dict]] = []

    def draw(rng, dims, params):
        seen.append((dims, params))
        return {"codes": rng.integers(0, 4, size=dims["d"], dtype=np.uint8)}

    spec = spec_of(
        inputs=[("x", "float32", True, 1), ("codes", "uint8", False, 1),
                ("bias", "float32", False, 1)],
        optional=["bias"], ranges={"x": None, "codes": [0, 255], "bias": [-1.0, 1.0]},
        input_shapes=lambda dims: {"x": (*dims["..."], dims["d"]), "codes": (dims["d"],),
                                   "bias": (dims["d"],)},
        draw=draw, base_dims={"...": [2], "d": 3}, base_params={"alpha": 2.0})
    dims = {"...": [2, 3], "d": 6}
    inputs = spec.make_inputs(dims, 7, {"alpha": 3.0})
    assert inputs["x"].shape == (2, 3, 6) and inputs["x"].dtype == np.float32
    assert inputs["codes"].dtype == np.uint8 and inputs["codes"].max() < 4  # draw's, not 0..255
    assert np.all(np.abs(inputs["bias"]) <= 1.0)
    assert seen == [({"...": (2, 3), "d": 6}, {"alpha": 3.0})]
    again = spec.make_inputs(dims, 7, {"alpha": 3.0})
    assert all(np.array_equal(inputs[name], again[name]) for name in inputs)
    assert not np.array_equal(spec.make_inputs(dims, 8)["x"], inputs["x"])
    assert spec.make_inputs(dims, 7, with_inputs=[])["bias"] is None
    assert spec.base_inputs()["bias"] is not None  # the argument checks give every input
    assert seen[-1][1] == {"alpha": 2.0}  # the defaults under the base parameters


def test_generators_are_seeded_from_the_case_unless_it_sets_them():
    spec = spec_of(generators=["rng"])
    seed = spec.case_seed("3x5")
    assert seed == spec.case_seed("3x5") != spec.case_seed("1x1")
    inputs, params = spec.case_arguments("3x5", {"n": 3, "d": 5}, {"rng": 4}, [])
    assert params == {"rng": 4} and inputs["x"].shape == (3, 5)
    assert spec.case_arguments("3x5", {"n": 3, "d": 5}, {}, [])[1] == {"rng": seed}


def generic_test_names() -> set[str]:
    return set(spec_of().tests())


@pytest.mark.parametrize("path", sorted((REPO / "tests" / "engine").glob("test_*.py")),
                         ids=lambda path: path.name)
def test_no_generated_test_module_defines_a_name_of_a_generic_test(path):
    """A function of the module's own would be replaced by the generic one silently."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert not defined & generic_test_names()
    assert "globals().update(SPEC.tests())" in ast.unparse(tree)
