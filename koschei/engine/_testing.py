"""The tests every generated engine module gets, written once for all of them.

A generated test module, ``tests/engine/test_<name>.py``, declares its spec's data (the cases,
tolerances, inputs and their shapes, the constraints, the bad parameter values, the spec's
``draw`` and ``torch_reference``), gathers them in a :class:`Spec` and takes its generic tests
from :meth:`Spec.tests`::

    SPEC = _testing.Spec(name="rmsnorm", function=rmsnorm, reference=reference, ...)
    globals().update(SPEC.tests())

The tests become functions of the test module itself, so pytest names them after it
(``tests/engine/test_rmsnorm.py::test_matches_the_reference[3x7]``); the spec's invariants and
its family's own tests are written out in the module and use the same helpers
(:meth:`Spec.case_arguments`, :meth:`Spec.make_inputs`, :meth:`Spec.raises`, ...).

The generic tests, each where the spec has something for it to check:

- ``test_matches_the_reference[case]``: on every ``tests.cases`` entry the function's results
  have the output shapes and dtypes and match the NumPy reference within the tolerance of their
  dtype, and the inputs are left as they were;
- ``test_writes_into_out[case]`` (one output): ``out=`` is filled and returned;
- ``test_updates_the_state_in_place[case]`` (a state of several arrays): the final state's
  buffers given the initial arrays are returned, updated as new arrays would be;
- ``test_random_shapes_match_the_reference``: the same on 40 random shapes (hypothesis) within
  ``tests.random_dims``, random choices of the parameters with choices or of type bool, random
  optional inputs, under the signature's constraints;
- ``test_matches_pytorch[case]`` (``tests.torch``): the results match ``torch_reference``;
- ``test_signature_matches_the_spec``: names, kinds and defaults of the public parameters;
- ``test_rejects_*``: every kind of bad argument (not an array, a wrong dtype, a wrong number of
  dimensions, a strided view, an empty array, sizes that disagree, a bad parameter value, sizes
  that break a constraint, a state of several arrays given in part, and a bad ``out=``) raises
  the error the engine contract promises, ``<function>: <argument>: expected ...``.

Inputs come from a NumPy generator seeded from the case's label, through
:func:`koschei.engine._runtime.draw_array` (the benchmark draws them the same way), then the
spec's ``draw(rng, dims, params)`` when it has one.

Only tests import this module: it imports pytest, hypothesis and (when installed) PyTorch, which
are test dependencies; ``import koschei.engine`` never imports it.
"""

from __future__ import annotations

import inspect
import math
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from koschei.engine import _runtime

try:
    import torch
except ImportError:  # PyTorch is a test dependency; without it the PyTorch tests are skipped
    torch = None

# the kinds and the "no default" of the public function's parameters, for Spec.signature
POSITIONAL = inspect.Parameter.POSITIONAL_OR_KEYWORD
KEYWORD = inspect.Parameter.KEYWORD_ONLY
REQUIRED = inspect.Parameter.empty
# the arguments of a test parametrized by the cases: pytest.param(label, dims, params, with_inputs)
CASE_ARGUMENTS = ("label", "dims", "params", "with_inputs")
# how much test_rejects_sizes_that_break_a_constraint grows a dimension, in turn
CONSTRAINT_STEPS = (*range(1, 17), 32, 64, 128, 256, 512, 1024)
RANDOM_EXAMPLES = 40
# the largest number of leading ("...") dimensions a random shape has
RANDOM_LEADING_DIMS = 2

Dims = dict[str, Any]  # dimension -> size; "..." -> the list of leading sizes
Params = dict[str, Any]
Inputs = dict[str, Any]  # input name -> array, or None for an optional input not given
Test = Callable[..., None]


def copied(inputs: Inputs) -> Inputs:
    """The inputs with every array copied (None stays None)."""
    return {name: None if value is None else value.copy() for name, value in inputs.items()}


def results(value: Any) -> tuple[Any, ...]:
    """A function's or reference's result as a tuple of arrays, one per output."""
    return tuple(value) if isinstance(value, tuple) else (value,)


def to_numpy(value: Any) -> Any:
    """A tensor, or a tuple of them, as NumPy arrays."""
    return tuple(to_numpy(v) for v in value) if isinstance(value, tuple) else value.numpy()


def to_torch(array: np.ndarray) -> Any:
    """A NumPy array as a tensor sharing its memory. torch.from_numpy does not take ml_dtypes'
    bfloat16: its bits go through int16 and are viewed as torch.bfloat16 (the same format)."""
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def non_contiguous(array: np.ndarray) -> np.ndarray | None:
    """The same values through a strided view, or None when the array cannot have one."""
    axis = next((i for i, size in enumerate(array.shape) if size > 1), None)
    if axis is None:
        return None
    index = (slice(None),) * axis + (slice(None, None, 2),)
    return np.repeat(array, 2, axis=axis)[index]


def torch_missing(*_: Any, **__: Any) -> Any:
    """The torch_reference of a test module when PyTorch is not installed (never called: the
    PyTorch tests are skipped then)."""
    raise RuntimeError("PyTorch is not installed")


@dataclass(frozen=True, eq=False, repr=False)
class Spec:
    """What the generic tests know of one spec's function: its data, as the generated test module
    declares it."""

    name: str  # the function's name, the first word of its error messages
    function: Callable[..., Any]
    reference: Callable[..., Any]
    tolerance: Mapping[str, tuple[float, float]]  # output dtype -> (rtol, atol); absent: exact
    results: Sequence[tuple[str, str]]  # (name, dtype) of each output, in order
    defaults: Mapping[str, Any]  # the parameters' defaults
    cases: Sequence[Any]  # pytest.param(label, dims, params, with_inputs, id=label)
    base_dims: Mapping[str, Any]  # the sizes the argument checks start from
    base_params: Mapping[str, Any]
    inputs: Sequence[tuple[str, str, bool, int]]  # (name, dtype, has "...", other dimensions)
    optional: Sequence[str]  # the inputs that may be None
    generators: Sequence[str]  # the generator parameters, seeded from the case
    ranges: Mapping[str, Sequence[float] | None]  # input -> (low, high) of its values, or None
    input_shapes: Callable[[Dims], dict[str, tuple[int, ...]]]
    output_shapes: Callable[[Dims, Params], list[tuple[int, ...]]]
    # the public function's parameters: (name, POSITIONAL or KEYWORD, default or REQUIRED);
    # a keyword "out" means the function writes its one result into out=
    signature: Sequence[tuple[str, Any, Any]]
    random_dims: Mapping[str, tuple[int, int]]  # dimension -> (low, high) of its random sizes
    random_params: Mapping[str, Sequence[Any]]  # parameter -> the values it is drawn from
    # (check, whether dimensions and parameters given by keyword satisfy it)
    constraints: Sequence[tuple[str, Callable[..., bool]]] = ()
    draw: Callable[..., dict[str, Any]] | None = None  # the spec's draw(rng, dims, params)
    torch_reference: Callable[..., Any] | None = None  # None: the spec has no PyTorch reference
    empty_rejected: Sequence[int] = ()  # positions in inputs of those that must not be empty
    # (dimension, position of an input whose size of it is made to disagree with earlier inputs)
    mismatches: Sequence[tuple[str, int]] = ()
    bad_params: Sequence[tuple[str, Any, type[Exception]]] = ()  # (name, value, error)
    overlap_position: int | None = None  # an input out= can be made to overlap (its dtype)
    # the bool parameter that asks for the final state (the last of results), or None
    state_flag: str | None = None
    # the inputs a state of several arrays starts from (mLSTM's C, n, m): given together or not
    # at all, and the final state is as many results; empty for a state of one array
    state_inputs: Sequence[str] = ()

    def __repr__(self) -> str:  # short: tracebacks show it
        return f"Spec({self.name!r})"

    # --- the data, derived --------------------------------------------------------------------

    @property
    def takes_out(self) -> bool:
        return any(name == "out" and kind == KEYWORD for name, kind, _ in self.signature)

    @property
    def output_dtype(self) -> np.dtype:
        """The dtype of the first (for most functions the only) output."""
        return np.dtype(self.results[0][1])

    @property
    def input_ids(self) -> list[str]:
        return [name for name, _, _, _ in self.inputs]

    def results_for(self, params: Mapping[str, Any] | None) -> Sequence[tuple[str, str]]:
        """The results a call with params returns: the final state only when asked for."""
        if self.state_flag is None or {**self.defaults, **(params or {})}.get(self.state_flag):
            return self.results
        return self.results[:-max(1, len(self.state_inputs))]

    def output_shape(self, dims: Mapping[str, Any], params: Mapping[str, Any]) -> tuple[int, ...]:
        """The shape of the first output."""
        return self.output_shapes(dims, params)[0]

    # --- inputs -------------------------------------------------------------------------------

    def case_seed(self, label: str) -> int:
        return zlib.crc32(f"{self.name}/{label}".encode())

    def seeded(self, params: Mapping[str, Any], seed: int) -> Params:
        """params with every generator parameter it does not set seeded with seed."""
        return {**{name: seed for name in self.generators}, **params}

    def make_inputs(self, dims: Mapping[str, Any], seed: int,
                    params: Mapping[str, Any] | None = None,
                    with_inputs: Sequence[str] | None = None) -> Inputs:
        """The inputs by name, drawn from one generator seeded with seed; the optional inputs not
        in with_inputs (default: all of them) are None."""
        rng = np.random.default_rng(seed)
        shapes = self.input_shapes(dict(dims))
        given = self.optional if with_inputs is None else with_inputs
        inputs = {name: _runtime.draw_array(rng, dtype, shapes[name], self.ranges[name])
                  for name, dtype, _, _ in self.inputs}
        if self.draw is not None:
            leading = {"...": tuple(dims["..."])} if "..." in dims else {}
            inputs.update(self.draw(rng, {**dims, **leading},
                                    {**self.defaults, **self.base_params, **(params or {})}))
        return {name: (value if name not in self.optional or name in given else None)
                for name, value in inputs.items()}

    def case_arguments(self, label: str, dims: Mapping[str, Any], params: Mapping[str, Any],
                       with_inputs: Sequence[str]) -> tuple[Inputs, Params]:
        """The inputs of one case and its parameters, generators seeded from its label (so that
        the function and its reference draw the same numbers)."""
        seed = self.case_seed(label)
        params = self.seeded(params, seed)
        return self.make_inputs(dims, seed, params, with_inputs), params

    def base_inputs(self, dims: Mapping[str, Any] | None = None) -> Inputs:
        """Every input of the case the argument checks start from, optional ones included."""
        return self.make_inputs(dims or self.base_dims, 0, self.base_params)

    def call(self, inputs: Inputs, **overrides: Any) -> Any:
        """The function on inputs, with the base parameters and overrides."""
        return self.function(**inputs, **{**self.base_params, **overrides})

    def constraints_hold(self, dims: Mapping[str, Any], params: Mapping[str, Any],
                         only: str | None = None) -> bool:
        """Whether the sizes and parameters satisfy every constraint (or the one named)."""
        values = {name: size for name, size in dims.items() if name != "..."}
        values.update(self.defaults)
        values.update(params)
        return all(holds(**values) for check, holds in self.constraints if only in (None, check))

    # --- assertions ---------------------------------------------------------------------------

    def assert_close(self, actual: np.ndarray, expected: Any, dtype: str | None = None,
                     name: str | None = None) -> None:
        """actual equals expected within the tolerance of dtype (the first output's); name (the
        first output's) is the result the messages name."""
        name = name or self.results[0][0]
        expected = np.asarray(expected)
        assert actual.shape == expected.shape, \
            f"{name}: shape {actual.shape} != reference {expected.shape}"
        rtol, atol = self.tolerance.get(dtype or self.output_dtype.name, (0.0, 0.0))
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol,
                                   err_msg=f"{self.name}: {name}")

    def assert_results_close(self, actual: Any, expected: Any,
                             params: Mapping[str, Any] | None = None) -> None:
        """Each result is an array of its output's dtype, close to the expected one (params:
        the call's, which say whether the final state is among them)."""
        actual, expected = results(actual), results(expected)
        wanted_results = self.results_for(params)
        assert len(actual) == len(expected) == len(wanted_results), \
            f"{len(actual)} results, {len(expected)} expected, the spec has {len(wanted_results)}"
        for (name, dtype), got, wanted in zip(wanted_results, actual, expected, strict=True):
            assert isinstance(got, np.ndarray) and got.dtype == np.dtype(dtype), \
                f"{name}: expected a {dtype} array, got {_runtime.describe(got)}"
            self.assert_close(got, wanted, dtype, name)

    def raises(self, error: type[Exception], argument: str, pattern: str = "") -> Any:
        """pytest.raises for the message ``<function>: <argument>: expected <pattern>...``."""
        return pytest.raises(error, match=f"^{self.name}: {re.escape(argument)}: expected "
                                          f"{pattern}")

    # --- the tests ----------------------------------------------------------------------------

    def tests(self) -> dict[str, Test]:
        """The generic tests that have something to check for this spec, by name."""
        builders: list[Callable[[], Test]] = [self._matches_the_reference]
        if self.takes_out:
            builders.append(self._writes_into_out)
        if self.state_inputs:
            builders.append(self._updates_the_state_in_place)
        if self.random_dims:
            builders.append(self._random_shapes_match_the_reference)
        if self.torch_reference is not None:
            builders.append(self._matches_pytorch)
        builders += [self._signature_matches_the_spec, self._rejects_what_is_not_an_array,
                     self._rejects_a_wrong_dtype, self._rejects_a_wrong_number_of_dimensions,
                     self._rejects_a_non_contiguous_array]
        if self.empty_rejected:
            builders.append(self._rejects_an_empty_array)
        if self.mismatches:
            builders.append(self._rejects_dimensions_that_disagree)
        if self.bad_params:
            builders.append(self._rejects_a_bad_parameter)
        if self.constraints:
            builders.append(self._rejects_sizes_that_break_a_constraint)
        if self.state_inputs:
            builders.append(self._rejects_a_state_given_in_part)
        if self.takes_out:
            builders += [self._rejects_an_out_of_the_wrong_dtype,
                         self._rejects_an_out_of_the_wrong_shape,
                         self._rejects_a_non_contiguous_out, self._rejects_a_read_only_out]
            if self.overlap_position is not None:
                builders.append(self._rejects_an_out_that_overlaps_an_input)
        tests = [build() for build in builders]
        return {test.__name__: test for test in tests}

    def _over_the_cases(self, test: Test) -> Test:
        return pytest.mark.parametrize(CASE_ARGUMENTS, self.cases)(test)

    def _over_the_inputs(self, test: Test, positions: Sequence[int] | None = None) -> Test:
        positions = range(len(self.inputs)) if positions is None else positions
        ids = [self.input_ids[i] for i in positions]
        return pytest.mark.parametrize("position", positions, ids=ids)(test)

    # the reference

    def _matches_the_reference(self) -> Test:
        spec = self

        def test_matches_the_reference(label, dims, params, with_inputs):
            inputs, params = spec.case_arguments(label, dims, params, with_inputs)
            originals = copied(inputs)
            expected = spec.reference(**originals, **params)
            actual = spec.function(**inputs, **params)
            shapes = [array.shape for array in results(actual)]
            expected_shapes = spec.output_shapes(dims, params)
            assert shapes == expected_shapes, f"result shapes {shapes} != {expected_shapes}"
            spec.assert_results_close(actual, expected, params)
            for name, original in originals.items():
                np.testing.assert_array_equal(inputs[name], original,
                                              err_msg=f"{name} was modified")

        return self._over_the_cases(test_matches_the_reference)

    def _writes_into_out(self) -> Test:
        spec = self

        def test_writes_into_out(label, dims, params, with_inputs):
            inputs, params = spec.case_arguments(label, dims, params, with_inputs)
            expected = spec.reference(**copied(inputs), **params)
            shape, dtype = spec.output_shape(dims, params), spec.output_dtype
            if dtype.name in ("float32", "float64"):  # NaN where the function forgets to write
                out = np.full(shape, np.nan, dtype=dtype)
            else:
                out = np.zeros(shape, dtype=dtype)
            result = spec.function(**inputs, **params, out=out)
            assert results(result)[0] is out, "the function did not return out"
            spec.assert_close(out, results(expected)[0])

        return self._over_the_cases(test_writes_into_out)

    def _updates_the_state_in_place(self) -> Test:
        spec = self

        def test_updates_the_state_in_place(label, dims, params, with_inputs):
            """The final state's buffers given the initial arrays themselves (a decoding loop
            that allocates nothing): they are returned, updated, and the results are those of
            a call into new arrays."""
            inputs, params = spec.case_arguments(label, dims, params,
                                                 [*with_inputs, *spec.state_inputs])
            params = {**params, spec.state_flag: True}
            expected = spec.function(**copied(inputs), **params)
            finals = [name for name, _ in spec.results[-len(spec.state_inputs):]]
            buffers = {final: inputs[initial]
                       for final, initial in zip(finals, spec.state_inputs, strict=True)}
            actual = spec.function(**inputs, **params, **buffers)
            spec.assert_results_close(actual, results(expected), params)
            for final, returned in zip(finals, results(actual)[-len(finals):], strict=True):
                assert returned is buffers[final], f"{final}: not the buffer given"

        return self._over_the_cases(test_updates_the_state_in_place)

    def _random_shapes_match_the_reference(self) -> Test:
        spec = self

        @settings(max_examples=RANDOM_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
        @given(data=st.data())
        def test_random_shapes_match_the_reference(data):
            dims = dict(spec.base_dims)
            for dim, (low, high) in spec.random_dims.items():
                sizes = st.integers(low, high)
                if dim == "...":
                    sizes = st.lists(sizes, max_size=RANDOM_LEADING_DIMS)
                dims[dim] = data.draw(sizes, label=dim)
            params = dict(spec.base_params)
            for name, values in spec.random_params.items():
                params[name] = data.draw(st.sampled_from(values), label=name)
            assume(spec.constraints_hold(dims, params))
            with_inputs = []
            if spec.optional:
                with_inputs = data.draw(st.lists(st.sampled_from(spec.optional), unique=True),
                                        label="with_inputs")
                if set(with_inputs) & set(spec.state_inputs):  # a state is given whole
                    with_inputs = list(dict.fromkeys([*with_inputs, *spec.state_inputs]))
            seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
            params = spec.seeded(params, seed)
            inputs = spec.make_inputs(dims, seed, params, with_inputs)
            expected = spec.reference(**copied(inputs), **params)
            spec.assert_results_close(spec.function(**inputs, **params), expected, params)

        return test_random_shapes_match_the_reference

    def _matches_pytorch(self) -> Test:
        spec = self

        def test_matches_pytorch(label, dims, params, with_inputs):
            inputs, params = spec.case_arguments(label, dims, params, with_inputs)
            with torch.inference_mode():
                tensors = {name: None if array is None else to_torch(array)
                           for name, array in copied(inputs).items()}
                expected = spec.torch_reference(**tensors, **params)
            spec.assert_results_close(spec.function(**inputs, **params), to_numpy(expected),
                                      params)

        test = self._over_the_cases(test_matches_pytorch)
        return pytest.mark.skipif(torch is None, reason="PyTorch is not installed")(test)

    # the signature and bad arguments

    def _signature_matches_the_spec(self) -> Test:
        spec = self

        def test_signature_matches_the_spec():
            parameters = inspect.signature(spec.function).parameters.values()
            actual = [(p.name, p.kind, p.default) for p in parameters]
            assert actual == list(spec.signature), f"{actual} != the spec's {spec.signature}"

        return test_signature_matches_the_spec

    def _rejects_what_is_not_an_array(self) -> Test:
        spec = self

        def test_rejects_what_is_not_an_array(position):
            inputs = spec.base_inputs()
            name = spec.inputs[position][0]
            inputs[name] = inputs[name].tolist()
            with spec.raises(TypeError, name, "a numpy.ndarray"):
                spec.call(inputs)

        return self._over_the_inputs(test_rejects_what_is_not_an_array)

    def _rejects_a_wrong_dtype(self) -> Test:
        spec = self

        def test_rejects_a_wrong_dtype(position):
            name, dtype, _, _ = spec.inputs[position]
            inputs = spec.base_inputs()
            wrong = "float64" if dtype != "float64" else "float32"
            inputs[name] = inputs[name].astype(wrong)
            with spec.raises(TypeError, name, f"dtype {dtype}, got {wrong}"):
                spec.call(inputs)

        return self._over_the_inputs(test_rejects_a_wrong_dtype)

    def _rejects_a_wrong_number_of_dimensions(self) -> Test:
        spec = self

        def test_rejects_a_wrong_number_of_dimensions(position):
            name, dtype, leading, ndim = spec.inputs[position]
            inputs = spec.base_inputs()
            if leading:
                if ndim == 0:
                    pytest.skip(f"{spec.name}: {name} takes any number of dimensions")
                array = inputs[name]
                inputs[name] = np.zeros(array.shape[array.ndim - ndim + 1:], dtype=dtype)
            else:
                inputs[name] = np.ascontiguousarray(inputs[name][np.newaxis])
            with spec.raises(ValueError, name, r"(at least )?\d+( or \d+)? dimension"):
                spec.call(inputs)

        return self._over_the_inputs(test_rejects_a_wrong_number_of_dimensions)

    def _rejects_a_non_contiguous_array(self) -> Test:
        spec = self

        def test_rejects_a_non_contiguous_array(position):
            inputs = spec.base_inputs()
            name = spec.inputs[position][0]
            strided = non_contiguous(inputs[name])
            if strided is None:
                pytest.skip(f"{spec.name}: {name}: a one-element array is always contiguous")
            inputs[name] = strided
            with spec.raises(ValueError, name, "a C-contiguous array"):
                spec.call(inputs)

        return self._over_the_inputs(test_rejects_a_non_contiguous_array)

    def _rejects_an_empty_array(self) -> Test:
        spec = self

        def test_rejects_an_empty_array(position):
            name, dtype, leading, ndim = spec.inputs[position]
            inputs = spec.base_inputs()
            shape = inputs[name].shape
            if leading:
                shape = (0, *shape[len(shape) - ndim:])
            elif shape:
                shape = (0, *shape[1:])
            else:
                pytest.skip(f"{spec.name}: {name} is a scalar array")
            inputs[name] = np.zeros(shape, dtype=dtype)
            with spec.raises(ValueError, name, "a non-empty array"):
                spec.call(inputs)

        return self._over_the_inputs(test_rejects_an_empty_array, self.empty_rejected)

    def _rejects_dimensions_that_disagree(self) -> Test:
        spec = self

        def test_rejects_dimensions_that_disagree(dim, position):
            inputs = spec.base_inputs()
            if dim == "...":
                lead = list(spec.base_dims["..."])
                changed = {**spec.base_dims, "...": [*lead[:-1], lead[-1] + 1] if lead else [2]}
            else:
                changed = {**spec.base_dims, dim: spec.base_dims[dim] + 1}
            name, dtype, _, _ = spec.inputs[position]
            inputs[name] = np.zeros(spec.input_shapes(changed)[name], dtype=dtype)
            with spec.raises(ValueError, name, "shape"):
                spec.call(inputs)

        ids = [f"{dim}-{self.input_ids[position]}" for dim, position in self.mismatches]
        return pytest.mark.parametrize(("dim", "position"), self.mismatches, ids=ids)(
            test_rejects_dimensions_that_disagree)

    def _rejects_a_bad_parameter(self) -> Test:
        spec = self

        def test_rejects_a_bad_parameter(name, value, error):
            with spec.raises(error, name):
                spec.call(spec.base_inputs(), **{name: value})

        ids = [f"{name}={value!r}" for name, value, _ in self.bad_params]
        return pytest.mark.parametrize(("name", "value", "error"), self.bad_params, ids=ids)(
            test_rejects_a_bad_parameter)

    def _rejects_sizes_that_break_a_constraint(self) -> Test:
        spec = self

        def test_rejects_sizes_that_break_a_constraint(check):
            """Grow one dimension of the check until it fails while the other constraints
            hold."""
            names = [n for n in re.findall(r"[A-Za-z_]\w*", check) if n in spec.base_dims]
            others = [other for other, _ in spec.constraints if other != check]
            for name in names:
                for step in CONSTRAINT_STEPS:
                    dims = {**spec.base_dims, name: spec.base_dims[name] + step}
                    if not spec.constraints_hold(dims, spec.base_params, only=check) and all(
                            spec.constraints_hold(dims, spec.base_params, only=other)
                            for other in others):
                        with pytest.raises(ValueError,
                                           match=f"^{spec.name}: .*expected {re.escape(check)}"):
                            spec.call(spec.base_inputs(dims))
                        return
            pytest.skip(f"{spec.name}: no larger sizes break {check}")

        checks = [check for check, _ in self.constraints]
        return pytest.mark.parametrize("check", checks)(test_rejects_sizes_that_break_a_constraint)

    def _rejects_a_state_given_in_part(self) -> Test:
        spec = self

        def test_rejects_a_state_given_in_part(missing):
            """The state's other arrays given, this one None."""
            inputs = {**spec.base_inputs(), missing: None}
            with spec.raises(ValueError, missing, "an array"):
                spec.call(inputs)

        return pytest.mark.parametrize("missing", self.state_inputs)(
            test_rejects_a_state_given_in_part)

    # a bad out=

    def _rejects_an_out_of_the_wrong_dtype(self) -> Test:
        spec = self

        def test_rejects_an_out_of_the_wrong_dtype():
            inputs = spec.base_inputs()
            wrong = np.float64 if spec.output_dtype != np.float64 else np.float32
            out = np.zeros(spec.output_shape(spec.base_dims, spec.base_params), dtype=wrong)
            with spec.raises(TypeError, "out", "dtype"):
                spec.call(inputs, out=out)

        return test_rejects_an_out_of_the_wrong_dtype

    def _rejects_an_out_of_the_wrong_shape(self) -> Test:
        spec = self

        def test_rejects_an_out_of_the_wrong_shape():
            inputs = spec.base_inputs()
            shape = spec.output_shape(spec.base_dims, spec.base_params)
            out = np.zeros((*shape[:-1], shape[-1] + 1) if shape else (2,),
                           dtype=spec.output_dtype)
            with spec.raises(ValueError, "out", "shape"):
                spec.call(inputs, out=out)

        return test_rejects_an_out_of_the_wrong_shape

    def _rejects_a_non_contiguous_out(self) -> Test:
        spec = self

        def test_rejects_a_non_contiguous_out():
            shape = spec.output_shape(spec.base_dims, spec.base_params)
            out = non_contiguous(np.zeros(shape, dtype=spec.output_dtype))
            if out is None:
                pytest.skip(f"{spec.name}: out: a one-element array is always contiguous")
            with spec.raises(ValueError, "out", "a C-contiguous array"):
                spec.call(spec.base_inputs(), out=out)

        return test_rejects_a_non_contiguous_out

    def _rejects_a_read_only_out(self) -> Test:
        spec = self

        def test_rejects_a_read_only_out():
            out = np.zeros(spec.output_shape(spec.base_dims, spec.base_params),
                           dtype=spec.output_dtype)
            out.flags.writeable = False
            with spec.raises(ValueError, "out", "a writeable array"):
                spec.call(spec.base_inputs(), out=out)

        return test_rejects_a_read_only_out

    def _rejects_an_out_that_overlaps_an_input(self) -> Test:
        spec = self

        def test_rejects_an_out_that_overlaps_an_input():
            inputs = spec.base_inputs()
            name = spec.inputs[spec.overlap_position][0]
            shape = spec.output_shape(spec.base_dims, spec.base_params)
            size = max(inputs[name].size, math.prod(shape))
            buffer = np.zeros(size, dtype=spec.output_dtype)
            buffer[:inputs[name].size] = inputs[name].ravel()
            inputs[name] = buffer[:inputs[name].size].reshape(inputs[name].shape)
            out = buffer[:math.prod(shape)].reshape(shape)
            with spec.raises(ValueError, "out", "a buffer of its own"):
                spec.call(inputs, out=out)

        return test_rejects_an_out_that_overlaps_an_input


__all__ = ["CASE_ARGUMENTS", "KEYWORD", "POSITIONAL", "REQUIRED", "Spec", "copied",
           "non_contiguous", "results", "to_numpy", "to_torch", "torch", "torch_missing"]
