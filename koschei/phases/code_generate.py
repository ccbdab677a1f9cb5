"""The code_generate phase: every implemented spec rendered into its engine module and tests.

For each implemented spec ``S`` (topological order; only those named in ``Options.only`` when
given):

    templates/engine_module.py.j2  ->  koschei/engine/S.py
    templates/test_module.py.j2    ->  tests/engine/test_S.py

plus ``tests/engine/conftest.py`` (templates/conftest.py.j2), which makes the workspace's engine
folder the one its tests import.

Everything is loaded, validated and rendered in memory first, and each rendered module must
compile: a spec error (or a template that chokes on a spec) raises before any file is written.
Output is deterministic (no timestamps, fixed order), so a re-run reports every file
``identical``. Writes are atomic (a temporary file in the same folder, then ``os.replace``) and
never leave the workspace. With ``check`` nothing is written and the result fails (exit 1) when
any file would change — the drift check for CI.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jinja2

from koschei.errors import SpecError, SpecIssue, UsageError
from koschei.files import write_bytes_atomic
from koschei.phases.base import Progress, Result, SilentProgress
from koschei.specs import expr
from koschei.specs.load import LoadedSpec
from koschei.specs.schema import Param, Signature, TensorArg
from koschei.specs.validate import case_label
from koschei.templating import TemplateSpecError, environment, pyrepr, shape_doc
from koschei.workspace import Workspace

Action = Literal["create", "identical", "update"]

ENGINE_TEMPLATE = "engine_module.py.j2"
TEST_TEMPLATE = "test_module.py.j2"
CONFTEST_TEMPLATE = "conftest.py.j2"
MACROS_TEMPLATE = "macros.j2"
ELLIPSIS = "..."
# fastmath without 'nnan' and 'ninf': reductions still vectorize and fuse, and inf / nan inputs
# keep their IEEE meaning (a masked logit of -inf stays -inf).
FASTMATH_FLAGS = ("afn", "arcp", "contract", "nsz", "reassoc")
# Names the generated public function uses for itself; a dimension cannot take them.
RESERVED_LOCALS = frozenset({"out", "out_shape", "lead", "np", "_rt", "_compute", "_FUNCTION"})
PYTHON_TYPES = {"float": "float", "int": "int", "bool": "bool", "str": "str",
                "generator": "numpy.random.Generator"}
# the class a parameter's value must have to skip its conversion
TYPE_CODE = {"float": "float", "int": "int", "bool": "bool", "str": "str",
             "generator": "np.random.Generator"}


@dataclass
class Options:
    check: bool = False  # compute what would change, write nothing, fail on any drift
    only: list[str] | None = None  # spec names or aliases; None: every implemented spec


@dataclass
class GeneratedFile:
    path: str  # workspace-relative, POSIX
    spec: str | None  # None for files shared by every spec (the conftest)
    action: Action
    template: str


@dataclass
class CodeGenerateResult(Result):
    check: bool
    files: list[GeneratedFile] = field(default_factory=list)
    written: list[str] = field(default_factory=list)  # workspace-relative paths written
    # generated modules and tests whose spec no longer exists or has no kernel (left in place)
    orphans: list[str] = field(default_factory=list)

    @property
    def drift(self) -> list[GeneratedFile]:
        return [file for file in self.files if file.action != "identical"]

    @property
    def ok(self) -> bool:
        return not (self.check and self.drift)

    @property
    def counts(self) -> dict[str, int]:
        counts = {"create": 0, "identical": 0, "update": 0}
        for file in self.files:
            counts[file.action] += 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["counts"] = self.counts
        return data


@dataclass(frozen=True)
class RenderedFile:
    relpath: str  # workspace-relative target
    spec: str | None
    template: str
    text: str


# --- the signature, planned for the templates ---------------------------------------------------


@dataclass(frozen=True)
class InputPlan:
    name: str
    dtype: str
    dtype_const: str  # the module-level np.dtype constant, e.g. _FLOAT32
    shape: list[Any]
    shape_doc: str  # (..., d)
    shape_code: str  # (*lead, d): the shape from the dimension variables
    leading: bool  # starts with "..."
    ndim: int  # dimensions besides the leading ones
    allow_empty: bool
    range: tuple[float, float] | None
    doc: str
    axes: list[tuple[Any, str]]  # (dimension, index into .shape) for every non-"..." dimension
    optional: bool  # None is allowed (the default)
    keyword: bool  # keyword-only, after the parameters
    or_ndim: int | None = None  # the number of dimensions of the other shape it may have

    @property
    def signature_code(self) -> str:
        return f"{self.name}=None" if self.optional else self.name

    @property
    def ndim_code(self) -> str:
        """The check_array argument for the number of dimensions: one, or both shapes'."""
        return f"({self.ndim}, {self.or_ndim})" if self.or_ndim is not None else str(self.ndim)

    @property
    def fast_failures(self) -> list[str]:
        """Cheap conditions, one of which is true when the array needs a closer look (after
        ``type(name) is not np.ndarray``)."""
        name = self.name
        conditions = [f"{name}.dtype is not {self.dtype_const}"]
        if self.leading and self.ndim:
            conditions.append(f"{name}.ndim < {self.ndim}")
        elif self.or_ndim is not None:
            conditions.append(f"{name}.ndim != {self.ndim} and {name}.ndim != {self.or_ndim}")
        elif not self.leading:
            conditions.append(f"{name}.ndim != {self.ndim}")
        conditions.append(f"not {name}.flags.c_contiguous")
        if not self.allow_empty:
            conditions.append(f"{name}.size == 0")
        return conditions

    @property
    def leading_code(self) -> str:
        return f"{self.name}.shape[:-{self.ndim}]" if self.ndim else f"{self.name}.shape"


@dataclass(frozen=True)
class DimCheck:
    """The shape test of one input against dimensions other inputs (or the spec) fixed."""

    input: str
    shape_doc: str
    condition: str  # true when the shape is wrong
    dims: list[str]  # the named dimensions to report with their values
    bound_by: str  # where those values came from
    optional: bool  # the input may be None (then nothing is checked)


@dataclass(frozen=True)
class ParamPlan:
    name: str
    type: str
    python_type: str  # float / int / bool / str / numpy.random.Generator, for the docstring
    type_code: str  # the class a value must have to skip the conversion
    convert: str  # the _rt helper that converts or rejects a value of another type
    default: Any
    required: bool
    optional: bool
    choices: list[Any] | None
    checks: list[tuple[str, str]]  # (condition true when out of range, what was expected)
    bad_values: list[tuple[str, str]]  # (Python literal, the exception it must raise), for tests
    doc: str

    @property
    def signature_code(self) -> str:
        return self.name if self.required else f"{self.name}={pyrepr(self.default)}"


@dataclass(frozen=True)
class ConstraintPlan:
    check: str
    message: str
    names: list[str]
    arguments: str  # the inputs whose dimensions it reads, e.g. "q, k"


@dataclass(frozen=True)
class OutputPlan:
    name: str
    dtype: str
    dtype_const: str
    shape: list[Any]
    shape_doc: str
    shape_code: str
    same_as: str | None  # a required input with exactly this symbolic shape: out's is its shape
    doc: str

    @property
    def shape_expr(self) -> str:
        """Python code for this output's shape in the public function."""
        return f"{self.same_as}.shape" if self.same_as else self.shape_code


@dataclass(frozen=True)
class StateArrayPlan:
    """One array of the recurrent state: returned as ``name``, started from ``input``."""

    name: str
    input: str
    dtype: str
    dtype_const: str
    dims: list[str]  # the named dimensions of its shape
    shape_code: str
    shape_doc: str
    doc: str


@dataclass(frozen=True)
class StatePlan:
    """The recurrent state: its arrays (one, or several such as mLSTM's C, n and m), started
    from their inputs together and returned after the outputs, in order, when ``flag``."""

    flag: str
    arrays: list[StateArrayPlan]

    @property
    def names(self) -> list[str]:
        """The final state's buffers and results, in order."""
        return [array.name for array in self.arrays]

    @property
    def inputs(self) -> list[str]:
        """The inputs the state starts from, in order."""
        return [array.input for array in self.arrays]

    @property
    def dims(self) -> list[str]:
        """The named dimensions of the arrays' shapes, each once, in order."""
        return list(dict.fromkeys(dim for array in self.arrays for dim in array.dims))


@dataclass(frozen=True)
class SignaturePlan:
    function: str
    inputs: list[InputPlan]
    dims: list[str]  # named dimensions in the order the inputs bind them
    bindings: list[tuple[str, str]]  # (dimension, code reading it) at its first appearance
    leading_from: InputPlan | None  # the first input with "..." dimensions
    leading_checks: list[InputPlan]  # later inputs whose leading dimensions must agree
    dim_checks: list[DimCheck]
    params: list[ParamPlan]
    constraints: list[ConstraintPlan]
    outputs: list[OutputPlan]  # one, written into out=; or several, returned as a tuple
    takes_out: bool  # a single output: the function has out=None
    dtype_consts: list[tuple[str, str]]  # (constant, dtype), sorted
    uses_lead: bool  # the variable ``lead`` is needed by the public function
    state: StatePlan | None = None

    @property
    def output(self) -> OutputPlan:
        """The first (for most families the only) output."""
        return self.outputs[0]

    @property
    def outputs_have_leading(self) -> bool:
        return any(ELLIPSIS in output.shape for output in self.outputs)

    @property
    def input_names(self) -> list[str]:
        return [tensor.name for tensor in self.inputs]

    @property
    def required_inputs(self) -> list[InputPlan]:
        return [tensor for tensor in self.inputs if not tensor.optional]

    @property
    def param_names(self) -> list[str]:
        return [param.name for param in self.params]

    @property
    def output_names(self) -> list[str]:
        """The local names of the results in the public function (``out`` for one output)."""
        return ["out"] if self.takes_out else [output.name for output in self.outputs]

    @property
    def call_signature(self) -> str:
        """The public function's parameters: positional inputs, ``*``, the parameters, keyword
        inputs, and ``out=None`` for a single output."""
        positional = [t.signature_code for t in self.inputs if not t.keyword]
        keywords = [param.signature_code for param in self.params]
        keywords += [t.signature_code for t in self.inputs if t.keyword]
        if self.takes_out:
            keywords.append("out=None")
        if self.state is not None:
            keywords += [f"{name}=None" for name in self.state.names]
        return ", ".join([*positional, *(["*", *keywords] if keywords else [])])

    @property
    def compute_args(self) -> str:
        """_compute's arguments: the inputs, the parameters, the results (and the buffer of the
        final state's arrays: the caller's, new ones when the call asks for the state, else
        None)."""
        state = self.state.names if self.state is not None else []
        return ", ".join([*self.input_names, *self.param_names, *self.output_names, *state])


def dtype_const(dtype: str) -> str:
    return f"_{dtype.upper()}"


def shape_code(shape: Sequence[Any]) -> str:
    """Python code for a shape from the dimension variables (and ``lead``)."""
    parts: list[str] = []
    for dim in shape:
        if dim == ELLIPSIS:
            parts.append("*lead")
        elif isinstance(dim, int):
            parts.append(str(dim))
        elif dim.isidentifier():
            parts.append(dim)
        else:
            parts.append(f"({dim})")
    return f"({parts[0]},)" if len(parts) == 1 else "(" + ", ".join(parts) + ")"


def _format_bound(value: float) -> str:
    return repr(int(value)) if float(value).is_integer() else repr(float(value))


def plan_param(param: Param) -> ParamPlan:
    python_type = PYTHON_TYPES[param.type]
    checks: list[tuple[str, str]] = []
    name = param.name
    if param.greater_than is not None:
        bound = _format_bound(param.greater_than)
        checks.append((f"not {name} > {bound}", f"> {bound}"))
    if param.min is not None:
        bound = _format_bound(param.min)
        checks.append((f"not {name} >= {bound}", f">= {bound}"))
    if param.max is not None:
        bound = _format_bound(param.max)
        checks.append((f"not {name} <= {bound}", f"<= {bound}"))
    if param.choices is not None:
        choices = pyrepr(tuple(param.choices))
        checks.append((f"{name} not in {choices}", f"one of {choices}"))
    required = param.default is None and not param.optional
    return ParamPlan(name=name, type=param.type, python_type=python_type,
                     type_code=TYPE_CODE[param.type], convert=f"as_{param.type}",
                     default=param.default, required=required,
                     optional=param.optional, choices=param.choices, checks=checks,
                     bad_values=bad_param_values(param), doc=param.doc)


def bad_param_values(param: Param) -> list[tuple[str, str]]:
    """Values the public function must refuse, as (Python literal, exception name)."""
    wrong_types = {"float": ['"1.0"', "True"], "int": ["1.5", '"1"', "True"],
                   "bool": ["1", '"yes"'], "str": ["1"],
                   "generator": ["1.5", '"1"', "True"]}[param.type]
    values = [(literal, "TypeError") for literal in wrong_types]
    if param.type == "generator":
        return [*values, ("-1", "ValueError")]
    if not param.optional:
        values.append(("None", "TypeError"))
    numeric = param.type in ("float", "int")
    if numeric and param.greater_than is not None:
        bound = param.greater_than if param.type == "float" else math.floor(param.greater_than)
        values.append((pyrepr(bound), "ValueError"))
    if numeric and param.min is not None:
        values.append((pyrepr(_step_below(param.min, param.type)), "ValueError"))
    if numeric and param.max is not None:
        values.append((pyrepr(_step_above(param.max, param.type)), "ValueError"))
    if param.type == "float" and (param.min, param.max, param.greater_than) != (None,) * 3:
        values.append(('float("nan")', "ValueError"))
    if param.choices is not None:
        if param.type == "str":
            outsider: Any = "-".join(["not", *map(str, param.choices)])
        elif param.type == "bool":
            outsider = next((v for v in (True, False) if v not in param.choices), None)
        else:
            outsider = max(param.choices) + 1
        if outsider is not None:
            values.append((pyrepr(outsider), "ValueError"))
    return values


def _step_below(bound: float, kind: str) -> int | float:
    return math.ceil(bound) - 1 if kind == "int" else bound - max(1.0, abs(bound))


def _step_above(bound: float, kind: str) -> int | float:
    return math.floor(bound) + 1 if kind == "int" else bound + max(1.0, abs(bound))


def plan_signature(loaded: LoadedSpec) -> SignaturePlan:
    """What the public function checks, in order, worked out once for the templates."""
    spec = loaded.spec
    signature: Signature = spec.signature  # type: ignore[assignment]
    issues: list[SpecIssue] = []
    inputs: list[InputPlan] = []
    dims: list[str] = []
    owner: dict[str, str] = {}
    bindings: list[tuple[str, str]] = []
    dim_checks: list[DimCheck] = []
    leading_from: InputPlan | None = None
    leading_checks: list[InputPlan] = []
    names_taken = {tensor.name for tensor in signature.inputs} | {p.name for p in signature.params}

    for index, tensor in enumerate(signature.inputs):
        plan = _plan_input(tensor)
        inputs.append(plan)
        if plan.leading:
            if leading_from is None:
                leading_from = plan
            else:
                leading_checks.append(plan)
        failing: list[str] = []
        reported: list[str] = []
        bound_by: list[str] = []
        for dim, position in plan.axes:
            if isinstance(dim, int):
                failing.append(f"{tensor.name}.shape[{position}] != {dim}")
                bound_by.append("the signature")
            elif not dim.isidentifier():  # derived from earlier inputs' dimensions
                names = sorted(expr.names_in(dim))
                failing.append(f"{tensor.name}.shape[{position}] != ({dim})")
                reported.extend(names)
                bound_by.extend(owner[name] for name in names)
            elif dim in owner:
                failing.append(f"{tensor.name}.shape[{position}] != {dim}")
                reported.append(dim)
                bound_by.append(owner[dim])
            else:
                if dim in names_taken or dim in RESERVED_LOCALS:
                    issues.append(loaded.issue(("signature", "inputs", index, "shape"),
                                               f"the dimension {dim!r} has the name of an "
                                               "argument or of a variable the generated code "
                                               "uses; rename the dimension"))
                owner[dim] = tensor.name
                dims.append(dim)
                bindings.append((dim, f"{tensor.name}.shape[{position}]"))
        condition = " or ".join(failing)
        if tensor.or_shape is not None:  # every dimension bound before it (validated)
            other = [f"{tensor.name}.shape[{position}] != {dim}"
                     for position, dim in enumerate(tensor.or_shape)]
            reported.extend(dim for dim in tensor.or_shape if isinstance(dim, str))
            condition = (f"({tensor.name}.ndim == {plan.ndim} and ({condition or 'False'})"
                         f" or {tensor.name}.ndim == {plan.or_ndim} and "
                         f"({' or '.join(other) or 'False'}))")
        if condition:
            dim_checks.append(DimCheck(input=tensor.name, shape_doc=plan.shape_doc,
                                       condition=condition,
                                       dims=list(dict.fromkeys(reported)),
                                       bound_by=", ".join(dict.fromkeys(bound_by)),
                                       optional=tensor.optional))

    params = [plan_param(param) for param in signature.params]
    known = [*dims, *(p.name for p in signature.params)]
    constraints: list[ConstraintPlan] = []
    for index, constraint in enumerate(signature.constraints):
        try:
            expr.check(constraint.check, known)
            names = [n for n in known if n in expr.names_in(constraint.check)]
        except expr.ExpressionError as error:
            issues.append(loaded.issue(("signature", "constraints", index, "check"), str(error)))
            continue
        arguments = list(dict.fromkeys(owner[n] for n in names if n in owner))
        constraints.append(ConstraintPlan(check=constraint.check.strip(),
                                          message=constraint.message.strip(), names=names,
                                          arguments=", ".join(arguments) or spec.name))

    int_params = [p.name for p in signature.params if p.type == "int"]
    field = ("output",) if signature.output is not None else ("outputs",)
    for number, output in enumerate(signature.results):
        path = ("signature", *field, *(() if signature.output is not None else (number,)))
        if signature.outputs is not None and (output.name in RESERVED_LOCALS
                                              or output.name in dims):  # locals when returned
            issues.append(loaded.issue((*path, "name"), f"the output name {output.name!r} is a "
                                       "dimension or a variable the generated code uses; "
                                       "rename the output"))
        for index, dim in enumerate(output.shape):
            if isinstance(dim, str) and dim != ELLIPSIS:
                try:
                    expr.check(dim, [*dims, *int_params])
                except expr.ExpressionError as error:
                    issues.append(loaded.issue((*path, "shape", index), str(error)))
    if issues:
        raise SpecError(issues)
    outputs = [_plan_output(output, signature) for output in signature.results]
    # read a dimension into a variable only when something below uses it
    used: set[str] = {dim for check in dim_checks for dim in check.dims}
    used |= {name for constraint in constraints for name in constraint.names}
    for output in outputs:
        if output.same_as is None:
            for dim in output.shape:
                if isinstance(dim, str) and dim != ELLIPSIS:
                    used |= expr.names_in(dim)
    state: StatePlan | None = None
    if signature.state_flag is not None:
        arrays = [StateArrayPlan(name=result.name, input=entry.input, dtype=result.dtype,
                                 dtype_const=dtype_const(result.dtype),
                                 dims=[dim for dim in result.shape if isinstance(dim, str)],
                                 shape_code=shape_code(result.shape),
                                 shape_doc=shape_doc(result.shape), doc=result.doc)
                  for entry, result in zip(signature.states, signature.state_results,
                                           strict=True)]
        used |= {dim for array in arrays for dim in array.dims}
        state = StatePlan(flag=signature.state_flag, arrays=arrays)
    bindings = [(dim, code) for dim, code in bindings if dim in used]
    consts = sorted({(dtype_const(t.dtype), t.dtype)
                     for t in [*signature.inputs, *signature.results]})
    uses_lead = bool(leading_checks) or any(ELLIPSIS in output.shape and output.same_as is None
                                            for output in outputs)
    return SignaturePlan(function=spec.name, inputs=inputs, dims=dims, bindings=bindings,
                         leading_from=leading_from, leading_checks=leading_checks,
                         dim_checks=dim_checks, params=params, constraints=constraints,
                         outputs=outputs, takes_out=signature.output is not None,
                         dtype_consts=consts, uses_lead=uses_lead, state=state)


def _plan_output(output: TensorArg, signature: Signature) -> OutputPlan:
    same_as = next((tensor.name for tensor in signature.inputs
                    if tensor.shape == output.shape and not tensor.optional), None)
    return OutputPlan(name=output.name, dtype=output.dtype, dtype_const=dtype_const(output.dtype),
                      shape=list(output.shape), shape_doc=shape_doc(output.shape),
                      shape_code=shape_code(output.shape), same_as=same_as, doc=output.doc)


def _plan_input(tensor: TensorArg) -> InputPlan:
    leading = bool(tensor.shape) and tensor.shape[0] == ELLIPSIS
    named = tensor.shape[1:] if leading else tensor.shape
    size = len(named)
    axes = [(dim, str(position - size) if leading else str(position))
            for position, dim in enumerate(named)]
    doc_of_shape = shape_doc(tensor.shape)
    if tensor.or_shape is not None:
        doc_of_shape += " or " + shape_doc(tensor.or_shape)
    return InputPlan(name=tensor.name, dtype=tensor.dtype, dtype_const=dtype_const(tensor.dtype),
                     shape=list(tensor.shape), shape_doc=doc_of_shape,
                     shape_code=shape_code(tensor.shape), leading=leading, ndim=size,
                     allow_empty=tensor.allow_empty, range=tensor.range,
                     doc=tensor.doc, axes=axes, optional=tensor.optional, keyword=tensor.keyword,
                     or_ndim=len(tensor.or_shape) if tensor.or_shape is not None else None)


# --- rendering ----------------------------------------------------------------------------------


def jit_options(tunables: dict[str, Any], *, parallel: bool | None = None) -> str:
    """The numba.njit keywords for a spec's kernels: cache and nogil always; fastmath and
    parallel from the tunables when the spec has them (``parallel`` overrides)."""
    options = ["cache=True", "nogil=True"]
    if "fastmath" in tunables:
        options.append("fastmath=_FASTMATH" if tunables["fastmath"] else "fastmath=False")
    chosen = tunables.get("parallel") if parallel is None else parallel
    if "parallel" in tunables and chosen:
        options.append("parallel=True")
    return ", ".join(options)


def _normalized_case(case: Any) -> dict[str, Any]:
    dims = {}
    for name, value in case.dims.items():
        dims[name] = list(value) if isinstance(value, list) else ([value] if name == ELLIPSIS
                                                                 else value)
    return {"label": case_label(case), "dims": dims, "params": dict(case.params),
            "with_inputs": list(case.with_inputs)}


def _base_case(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """The case the argument checks start from: the first whose sizes are all at least 2 (so
    that every array can be given a strided view and a mismatched size), else the largest."""
    def sizes(case: dict[str, Any]) -> list[int]:
        found: list[int] = []
        for value in case["dims"].values():
            found.extend(value if isinstance(value, list) else [value])
        return found

    for case in cases:
        if all(size >= 2 for size in sizes(case)) and case["dims"].get(ELLIPSIS, [2]):
            return case
    return max(cases, key=lambda case: math.prod(sizes(case)))


def _names_read(source: str, mode: Literal["eval", "exec"] = "eval") -> list[str]:
    tree = ast.parse(source.strip(), mode=mode)
    return sorted({node.id for node in ast.walk(tree)
                   if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)})


def _uses_name(sources: Iterable[str | None], name: str) -> bool:
    """Whether any of the spec's Python sources (functions) reads ``name``; a source that does
    not parse counts as reading it (compiling the generated module then reports the error)."""
    for source in sources:
        if not source:
            continue
        try:
            if name in _names_read(source, mode="exec"):
                return True
        except SyntaxError:
            return True
    return False


def context_for_tests(loaded: LoadedSpec, plan: SignaturePlan) -> dict[str, Any]:
    """What the test template needs beyond the engine module's context."""
    spec = loaded.spec
    tests = spec.tests
    assert tests is not None
    cases = [_normalized_case(case) for case in tests.cases]
    random_draws: list[tuple[str, int, int]] = []
    for dim in ([ELLIPSIS] if plan.leading_from else []) + plan.dims:
        if dim in tests.random_dims:
            low, high = tests.random_dims[dim]
            random_draws.append((dim, max(int(low), 1), max(int(high), 1)))
    mismatches: list[tuple[str, int]] = []
    seen: set[str] = set()
    for position, tensor in enumerate(plan.inputs):
        named = [dim for dim in tensor.shape
                 if isinstance(dim, str) and (dim == ELLIPSIS or dim.isidentifier())]
        for dim in dict.fromkeys(named):
            if dim in seen:
                mismatches.append((dim, position))
            seen.add(dim)
    output_names: set[str] = set()
    for output in plan.outputs:
        for dim in output.shape:
            if isinstance(dim, str) and dim != ELLIPSIS:
                output_names |= expr.names_in(dim)
    overlap = next((i for i, t in enumerate(plan.inputs) if t.dtype == plan.output.dtype), None)
    invariant_names = {inv.name: _names_read(inv.check) for inv in tests.invariants}
    return {
        "cases": cases,
        "base_case": _base_case(cases),
        "random_draws": random_draws,
        "mismatches": mismatches,
        "output_names": sorted(output_names),
        "bad_params": [(param.name, literal, error) for param in plan.params
                       for literal, error in param.bad_values],
        "overlap_position": overlap,
        "empty_rejected": [i for i, tensor in enumerate(plan.inputs) if not tensor.allow_empty],
        "invariant_names": invariant_names,
        # the parameters the random-shape test draws, with the values it draws them from
        "random_params": [(param.name, list(param.choices) if param.choices else [False, True])
                          for param in plan.params if param.choices or param.type == "bool"],
        # NumPy is imported for the spec's own code: draw, torch_reference, the invariants
        "spec_code_uses_numpy": (_uses_name([spec.draw, tests.torch], "np")
                                 or any("np" in names for names in invariant_names.values())),
    }


def template_context(loaded: LoadedSpec, templates_folder: Path,
                     tuned: Mapping[str, Any] | None = None,
                     tuned_from: str | None = None) -> dict[str, Any]:
    """What the templates are given; ``tuned``: tunable values that replace the defaults
    (checked: see tuned_tunables), read from the file ``tuned_from`` (named in the header)."""
    spec = loaded.spec
    assert spec.kernel is not None and spec.signature is not None
    tunables = {name: tunable.default for name, tunable in spec.tunables.items()}
    tunables.update(tuned or {})
    plan = plan_signature(loaded)
    family = spec.kernel.family
    family_tests = f"families/{family}.tests.py.j2"
    if not (templates_folder / family_tests).is_file():
        family_tests = None
    return {
        **context_for_tests(loaded, plan),
        "spec": spec,
        "signature": spec.signature,
        "params": dict(spec.kernel.params),
        "family": family,
        "tunables": tunables,
        "tuned_from": tuned_from if tuned else None,
        "jit": jit_options(tunables),
        "jit_serial": jit_options(tunables, parallel=False),
        "fastmath_flags": FASTMATH_FLAGS,
        "plan": plan,
        "inputs": {tensor.name: tensor for tensor in plan.inputs},
        "spec_path": loaded.relpath,
        "spec_sha256": loaded.sha256,
        "templates": [ENGINE_TEMPLATE, f"families/{family}.py.j2", MACROS_TEMPLATE],
        "test_templates": [TEST_TEMPLATE, *([family_tests] if family_tests else []),
                           MACROS_TEMPLATE],
        "family_tests": family_tests,
    }


def _render(env: jinja2.Environment, template: str, context: dict[str, Any],
            loaded: LoadedSpec | None) -> str:
    """Render one template; a spec the template rejects becomes a located SpecError."""
    try:
        return env.get_template(template).render(context)
    except TemplateSpecError as error:
        if loaded is None:
            raise UsageError(f"templates/{template}: {error}") from None
        path = tuple(int(p) if p.isdigit() else p for p in error.field.split("."))
        raise SpecError([loaded.issue(path, error.message)]) from None
    except jinja2.TemplateNotFound as error:
        if loaded is not None and loaded.spec.kernel is not None \
                and error.name == f"families/{loaded.spec.kernel.family}.py.j2":
            raise SpecError([loaded.issue(("kernel", "family"),
                                          f"no template family {loaded.spec.kernel.family!r} "
                                          f"(templates/{error.name} does not exist; families: "
                                          f"{', '.join(available_families(env)) or 'none'})")]) \
                from None
        raise UsageError(f"template {error.name} not found in {_templates_root(env)}") from None
    except jinja2.UndefinedError as error:
        if loaded is None:
            raise UsageError(f"templates/{template}: {error.message}") from None
        # most often a family reading a kernel parameter the spec does not give
        raise SpecError([loaded.issue(("kernel", "params"), f"the {context['family']} family "
                                      f"could not render this spec: {error.message}")]) from None
    except jinja2.TemplateSyntaxError as error:
        raise UsageError(f"templates/{error.name or template}:{error.lineno}: template syntax "
                         f"error: {error.message}") from None


def _templates_root(env: jinja2.Environment) -> str:
    loader = env.loader
    return str(getattr(loader, "folder", "the templates folder"))


def available_families(env: jinja2.Environment) -> list[str]:
    folder = Path(_templates_root(env)) / "families"
    return sorted(p.name[: -len(".py.j2")] for p in folder.glob("*.py.j2")) if folder.is_dir() \
        else []


def _compiles(text: str, relpath: str, loaded: LoadedSpec | None) -> None:
    try:
        compile(text, relpath, "exec")
    except SyntaxError as error:
        line = (error.text or "").strip()
        message = (f"the generated {relpath} does not compile: {error.msg} on its line "
                   f"{error.lineno}: {line!r}")
        if loaded is None:
            raise UsageError(message) from None
        raise SpecError([loaded.issue((), message + " (check the Python source in the spec)")]) \
            from None


def tuned_tunables(loaded: LoadedSpec, tuned: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``tuned`` checked against the spec: every name a tunable, every value one of its choices,
    the whole configuration within the spec's tunable_constraints; else a UsageError that names
    ``source`` (the tuning file) and what to do."""
    from koschei.tuning.space import SearchSpace

    space = SearchSpace.of(loaded.spec)
    hint = (f"fix the values, or remove {loaded.name} from {source} to render with the spec's "
            "defaults")
    try:
        config = space.complete(tuned)
    except ValueError as error:
        raise UsageError(f"{source}: {loaded.name}: {error}", hint=hint) from None
    broken = space.why_invalid(config)
    if broken is not None:
        raise UsageError(f"{source}: {loaded.name}: the tuned values break a constraint: "
                         f"{broken}", hint=hint)
    return dict(tuned)


def render_spec(env: jinja2.Environment, loaded: LoadedSpec,
                tuned: Mapping[str, Any] | None = None,
                tuned_from: str | None = None) -> list[RenderedFile]:
    """The engine module and test module of one implemented spec, rendered and compiled, with
    ``tuned`` tunable values (from the file ``tuned_from``) instead of the defaults."""
    spec = loaded.spec
    if spec.kernel is None:
        raise UsageError(f"{spec.name} is a planned spec (no kernel): there is nothing to render")
    if tuned:
        tuned = tuned_tunables(loaded, tuned, tuned_from or "tuned values")
    context = template_context(loaded, Path(_templates_root(env)), tuned, tuned_from)
    files = [
        RenderedFile(f"koschei/engine/{spec.name}.py", spec.name, ENGINE_TEMPLATE,
                     _render(env, ENGINE_TEMPLATE, context, loaded)),
        RenderedFile(f"tests/engine/test_{spec.name}.py", spec.name, TEST_TEMPLATE,
                     _render(env, TEST_TEMPLATE, context, loaded)),
    ]
    for file in files:
        _compiles(file.text, file.relpath, loaded)
    return files


def render_conftest(env: jinja2.Environment) -> RenderedFile:
    text = _render(env, CONFTEST_TEMPLATE, {"templates": [CONFTEST_TEMPLATE]}, None)
    _compiles(text, "tests/engine/conftest.py", None)
    return RenderedFile("tests/engine/conftest.py", None, CONFTEST_TEMPLATE, text)


def choose(spec_set: Any, only: Sequence[str] | None) -> list[LoadedSpec]:
    """The implemented specs to render, in topological order."""
    implemented = spec_set.implemented()
    if not only:
        return implemented
    chosen: list[str] = []
    for requested in only:
        loaded = spec_set.get(requested)
        if loaded is None:
            names = ", ".join(sorted(s.name for s in implemented)) or "none"
            raise UsageError(f"--only {requested}: no spec has this name or alias",
                             hint=f"implemented specs: {names}")
        if loaded.spec.kernel is None:
            raise UsageError(f"--only {requested}: {loaded.name} is planned (it has no kernel "
                             "yet): there is nothing to render",
                             hint=f"give it a kernel, signature, reference and tests in "
                                  f"{loaded.relpath}")
        chosen.append(loaded.name)
    wanted = set(chosen)
    return [loaded for loaded in implemented if loaded.name in wanted]


def machine_tuning(workspace: Workspace) -> tuple[dict[str, dict[str, Any]], str]:
    """This machine's tuned values in the workspace (spec name -> values; {} without a file)
    and the file's path relative to the workspace."""
    from koschei.bench import machine
    from koschei.tuning import values

    fingerprint = machine.fingerprint()
    source = workspace.relative(values.path_for(workspace.root, fingerprint))
    return values.tunables_for(workspace.root, fingerprint), source


def render_all(workspace: Workspace, specs: Iterable[LoadedSpec],
               progress: Progress | None = None) -> list[RenderedFile]:
    """Every file of ``specs``, each with this machine's tuned values when the workspace has
    them (koschei.tuning.values), else with the specs' defaults."""
    progress = progress or SilentProgress()
    env = environment(workspace.templates_dir)
    tuned, source = machine_tuning(workspace)
    files: list[RenderedFile] = []
    for loaded in specs:
        family = loaded.spec.kernel.family  # type: ignore[union-attr]
        chosen = tuned.get(loaded.name)
        progress.step(f"rendering {loaded.name} ({family})"
                      + (f" with the tuned values of {source}" if chosen else ""))
        files.extend(render_spec(env, loaded, chosen, source))
    files.append(render_conftest(env))
    return files


# --- writing ------------------------------------------------------------------------------------


def action_for(path: Path, data: bytes) -> Action:
    if not path.exists():
        return "create"
    return "identical" if path.read_bytes() == data else "update"


def find_orphans(workspace: Workspace, implemented: Iterable[str]) -> list[str]:
    """Generated engine modules and tests with no implemented spec behind them."""
    names = set(implemented)
    found: list[str] = []
    for folder, prefix in ((workspace.engine_dir, ""), (workspace.tests_dir, "test_")):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(f"{prefix}*.py")):
            stem = path.stem[len(prefix):]
            if stem.startswith("_") or stem in names or path.name == "conftest.py":
                continue
            head = path.read_text(encoding="utf-8", errors="replace")[:300]
            if "koschei code-generate" in head and "do not edit" in head:
                found.append(workspace.relative(path))
    return found


def run(workspace: Workspace, options: Options, progress: Progress | None = None,
        ) -> CodeGenerateResult:
    from koschei.specs import load_specs

    progress = progress or SilentProgress()
    progress.step("loading and validating the specs")
    spec_set = load_specs(workspace)
    chosen = choose(spec_set, options.only)
    rendered = render_all(workspace, chosen, progress)

    targets: list[tuple[RenderedFile, Path, bytes, Action]] = []
    for file in rendered:
        path = workspace.inside(Path(file.relpath))
        data = file.text.encode("utf-8")
        targets.append((file, path, data, action_for(path, data)))

    result = CodeGenerateResult(check=options.check)
    for file, path, data, action in targets:
        result.files.append(GeneratedFile(path=file.relpath, spec=file.spec, action=action,
                                          template=file.template))
        if action != "identical" and not options.check:
            write_bytes_atomic(path, data)
            result.written.append(file.relpath)
    result.orphans = find_orphans(workspace, [s.name for s in spec_set.implemented()])
    return result


__all__ = ["CodeGenerateResult", "GeneratedFile", "Options", "render_all", "render_spec", "run"]
