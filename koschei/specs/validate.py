"""Checks across fields and across specs, each located at a line of a spec file.

The schema (``koschei.specs.schema``) checks each field on its own. This module checks what needs
more than one field or more than one file:

- the file is ``specs/<tier>/<name>.yaml``: its name is the spec's name, its folder the tier;
- names are unique; aliases are unique across all specs and never another spec's name;
- ``requires`` names specs that exist, and the requirements have no cycle;
- ``provided_by`` names a spec among the requirements that has a kernel or a composition (not a
  planned or itself provided one); a claim's ``measure`` names entries of its kind's table in
  ``koschei.specs.measures`` and suits the claim's metric;
- the signature agrees with itself: every output dimension is bound by an input dimension or an
  int parameter (or is an expression over those), an input dimension written as an expression
  reads only dimensions of the inputs before it, ``"..."`` only comes first, integer inputs give
  the value range to draw from, parameter defaults respect min / max / choices, constraints are
  expressions over known names; optional inputs follow the required ones and are sized by them,
  only optional inputs are keyword-only, generator parameters are optional and take no default;
- every test and bench case gives each named dimension (and nothing else; sizes at least 1, or 0
  where an input allows empty arrays), satisfies the constraints, and the bench ``bytes`` /
  ``flops`` formulas evaluate on it; ``with_inputs`` names optional inputs; invariants read only
  the inputs, params, the outputs, ``out`` and ``np``;
- embedded Python (``reference``, ``draw``, ``tests.torch``, a custom kernel's source) parses and
  defines the function it must define;
- tunables that become Numba flags (``parallel``, ``fastmath``) choose between booleans.
"""

from __future__ import annotations

import ast
import builtins
import math
import re
from collections.abc import Iterable, Sequence
from difflib import get_close_matches
from typing import Any

from koschei.errors import SpecIssue
from koschei.specs import expr, measures
from koschei.specs.graph import find_cycles
from koschei.specs.load import FieldPath, LoadedSpec, format_field, is_identifier, show
from koschei.specs.schema import Case, Param, Spec

INTEGER_RANGES = {
    "int8": (-(2**7), 2**7 - 1),
    "uint8": (0, 2**8 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
}
FLOAT_DTYPES = ("float32", "float64")
# Tunables the renderer turns into numba.njit keywords; they can only be on or off.
BOOLEAN_TUNABLES = ("parallel", "fastmath")
# Names a bench formula may use besides dimensions and parameters: the product of the leading
# "..." dimensions and how many there are (see koschei.bench.check.formula_names).
LEADING_NAMES = ("rows", "lead")
ARXIV_ID = re.compile(r"^(\d{4}\.\d{4,5}|[a-z][a-z.-]*(\.[A-Z]{2})?/\d{7})(v\d+)?$")
# What an invariant may read besides the function's arguments and result (see schema.Invariant):
# the generated test module's NumPy, its engine module and importlib (for another kernel).
INVARIANT_NAMES = frozenset({"np", "out", "module", "importlib", *dir(builtins)})
ELLIPSIS = "..."
# What a provided_by may name: a spec with code of its own in the engine.
PROVIDER_STATUSES = ("implemented", "composed")
# The benchmark's own contenders; a baseline needs another name.
RESERVED_CONTENDERS = ("engine", "engine_warm", "numpy", "torch", "torch_compile")


# --- one spec -----------------------------------------------------------------------------------


def check_spec(loaded: LoadedSpec, tier_folder: str | None = None) -> list[SpecIssue]:
    """Every check that needs only this spec. ``tier_folder`` is the folder the file sits in under
    ``specs/`` (None when the file is not inside a workspace's specs folder)."""
    return _SpecChecker(loaded).run(tier_folder)


class _SpecChecker:
    def __init__(self, loaded: LoadedSpec):
        self.loaded = loaded
        self.spec: Spec = loaded.spec
        self.issues: list[SpecIssue] = []
        signature = self.spec.signature
        self.dims: list[str] = []  # named dimensions bound by the inputs, in order
        self.leading = False  # some input has leading "..." dimensions
        # dimensions that may be 0: they appear in an input that accepts empty arrays
        self.may_be_empty: set[str] = set()
        self.params: dict[str, Param] = {}
        self.output_ok = True  # the output shape checked out (its expressions can be evaluated)
        self.inputs_ok = True  # so did the input shapes
        # the dimensions bound by the inputs before each input (its shape's expressions read them)
        self.bound_before: list[list[str]] = []
        if signature is not None:
            for tensor in signature.inputs:
                self.bound_before.append(list(self.dims))
                if tensor.allow_empty:
                    self.may_be_empty.update(d for d in tensor.shape if isinstance(d, str))
                for dim in tensor.shape:
                    if dim == ELLIPSIS:
                        self.leading = True
                    elif isinstance(dim, str) and is_identifier(dim) and dim not in self.dims \
                            and not tensor.optional:  # None binds no dimension
                        self.dims.append(dim)
            self.params = {param.name: param for param in signature.params}

    def add(self, path: FieldPath, message: str, line: int | None = None) -> None:
        self.issues.append(self.loaded.issue(path, message, line))

    def run(self, tier_folder: str | None) -> list[SpecIssue]:
        self.location(tier_folder)
        self.identity()
        if self.spec.signature is not None:
            self.signature()
        self.python_sources()
        self.composition()
        self.tunables()
        for section, verb in (("tests", "need"), ("bench", "needs")):
            if getattr(self.spec, section) is not None and self.spec.signature is None:
                self.add((section,), f"{section} {verb} a signature to say what the dimensions "
                         "and parameters are")
        if self.spec.signature is not None:
            if self.spec.tests is not None:
                self.tests()
            if self.spec.bench is not None:
                self.bench()
        return self.issues

    # identity ------------------------------------------------------------------------------

    def location(self, tier_folder: str | None) -> None:
        spec, path = self.spec, self.loaded.path
        if path.suffix != ".yaml" or path.stem != spec.name:
            self.add(("name",), f"the file is named {path.name} but the spec is {spec.name!r}: "
                     f"name the file {spec.name}.yaml (or change the name)")
        if tier_folder is not None and tier_folder != spec.tier:
            self.add(("tier",), f"the spec's tier is {spec.tier!r} but the file is in "
                     f"specs/{tier_folder}/: move it to specs/{spec.tier}/{path.name} "
                     "(or change the tier)")

    def identity(self) -> None:
        spec = self.spec
        seen: dict[str, int] = {}
        for index, alias in enumerate(spec.aliases):
            if alias == spec.name:
                self.add(("aliases", index), f"the alias {alias!r} is the spec's own name")
            elif alias in seen:
                self.add(("aliases", index), f"the alias {alias!r} is listed twice")
            seen.setdefault(alias, index)
        listed: set[str] = set()
        for index, requirement in enumerate(spec.requires):
            if requirement in listed:
                self.add(("requires", index), f"{requirement!r} is listed twice")
            listed.add(requirement)
        if spec.paper is not None and spec.paper.arxiv is not None:
            arxiv = spec.paper.arxiv.strip()
            if not ARXIV_ID.match(arxiv):
                bare = re.sub(r"^(arxiv:|https?://arxiv\.org/(abs|pdf)/)", "", arxiv,
                              flags=re.IGNORECASE)
                hint = (f": write the bare identifier, {bare}" if ARXIV_ID.match(bare)
                        else " (expected an identifier such as 2205.14135)")
                self.add(("paper", "arxiv"), f"{arxiv!r} is not an arXiv identifier{hint}")
        if spec.provided_by is not None:
            provider = spec.provided_by.spec
            if provider == spec.name:
                self.add(("provided_by", "spec"), "a spec cannot be provided by itself")
            elif provider not in spec.requires:
                self.add(("provided_by", "spec"), f"{provider!r} is not among the requirements: "
                         f"add it to requires (the node is built on what provides it)")
        for index, claim in enumerate(spec.claims):
            if claim.measure is not None:
                self.measure(claim.metric, claim.measure, ("claims", index, "measure"))

    def measure(self, metric: str, measure: Any, path: FieldPath) -> None:
        """A claim's measure names entries of its kind's table and suits the claim's metric."""
        table = measures.MEASURE_KINDS[measure.kind]
        for role in ("this", "baseline"):
            name = getattr(measure, role)
            if name not in table:
                close = get_close_matches(name, list(table), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                self.add((*path, role), f"unknown {measure.kind} entry {name!r} ({hint}known: "
                         f"{', '.join(table)})")
        if measure.this == measure.baseline:
            self.add((*path, "baseline"), f"{measure.this!r} against itself measures nothing")
        allowed = measures.KIND_METRICS[measure.kind]
        if metric not in allowed:
            self.add((*path, "kind"), f"a {measure.kind} measure checks {' or '.join(allowed)} "
                     f"claims, not {metric}")

    # signature -----------------------------------------------------------------------------

    def signature(self) -> None:
        signature = self.spec.signature
        assert signature is not None
        owners: dict[str, FieldPath] = {}

        def claim_name(name: str, path: FieldPath) -> None:
            if name in owners:
                self.add(path, f"the name {name!r} is already used by "
                         f"{format_field(owners[name])} (inputs, params and the output share "
                         "the function's argument names)")
            else:
                owners[name] = path

        for index, tensor in enumerate(signature.inputs):
            base: FieldPath = ("signature", "inputs", index)
            claim_name(tensor.name, (*base, "name"))
            self.shape(tensor.shape, (*base, "shape"), is_input=True, position=index)
            self.value_range(tensor.dtype, tensor.range, base)
            self.optional_input(index)
            self.alternative_shape(index)
        for index, param in enumerate(signature.params):
            base = ("signature", "params", index)
            claim_name(param.name, (*base, "name"))
            if param.name in self.dims:
                self.add((*base, "name"), f"the parameter {param.name!r} has the name of a "
                         "dimension; constraints and formulas could not tell them apart")
            self.param(param, base)
        for path, result in self.results():
            claim_name(result.name, (*path, "name"))
            if result.optional or result.keyword:
                self.add((*path, "optional" if result.optional else "keyword"),
                         "optional and keyword describe inputs, not outputs")
            if result.or_shape is not None:
                self.add((*path, "or_shape"), "or_shape describes inputs, not outputs")
            self.shape(result.shape, (*path, "shape"), is_input=False)
            if ELLIPSIS in result.shape and not self.leading:
                self.add((*path, "shape"), "the output has leading '...' dimensions but no input "
                         "does, so nothing says how many there are")
        for path, state in self.states():
            claim_name(state.name, (*path, "name"))
        if signature.states:
            self.state()
        known = self.expression_names()
        for index, constraint in enumerate(signature.constraints):
            self.expression(constraint.check, known, ("signature", "constraints", index, "check"))
            if not constraint.message.strip():
                self.add(("signature", "constraints", index, "message"),
                         "say what is wrong when the check fails")

    def results(self) -> list[tuple[FieldPath, Any]]:
        """Each output with the field path it is written at."""
        signature = self.spec.signature
        assert signature is not None
        if signature.output is not None:
            return [(("signature", "output"), signature.output)]
        return [(("signature", "outputs", index), result)
                for index, result in enumerate(signature.outputs or [])]

    def optional_input(self, index: int) -> None:
        """Optional inputs come after the required positional ones, are sized by the required
        inputs, and are the only ones that may be keyword-only."""
        signature = self.spec.signature
        assert signature is not None
        tensor = signature.inputs[index]
        base: FieldPath = ("signature", "inputs", index)
        if tensor.keyword and not tensor.optional:
            self.add((*base, "keyword"), "only an optional input can be keyword-only (give it "
                     "optional: true, or drop keyword)")
        earlier = signature.inputs[:index]
        if not tensor.optional and any(other.optional and not other.keyword for other in earlier):
            self.add((*base, "optional"), "a required input cannot follow an optional positional "
                     "one: put the required inputs first")
        if tensor.optional:
            for position, dim in enumerate(tensor.shape):
                if dim == ELLIPSIS:
                    self.add((*base, "shape", position), "an optional input cannot have leading "
                             "'...' dimensions: give it named ones")
                elif isinstance(dim, str) and is_identifier(dim) \
                        and dim not in self.bound_before[index]:
                    self.add((*base, "shape", position), f"the dimension {dim!r} of an optional "
                             "input must be bound by a required input before it (None tells "
                             "nothing about its size)")

    def states(self) -> list[tuple[FieldPath, Any]]:
        """Each entry of the state with the field path it is written at (the state itself when
        it is one entry, not a list)."""
        signature = self.spec.signature
        assert signature is not None
        if not isinstance(signature.state, list):
            return [(("signature", "state"), state) for state in signature.states]
        return [(("signature", "state", index), state)
                for index, state in enumerate(signature.states)]

    def state(self) -> None:
        """Each array of the state starts from an optional keyword input of its own, and one
        bool parameter that defaults to False asks for all of them."""
        signature = self.spec.signature
        assert signature is not None
        entries = self.states()
        first_path, first = entries[0]
        starts: dict[str, FieldPath] = {}
        for path, state in entries:
            source = next((t for t in signature.inputs if t.name == state.input), None)
            if source is None or not (source.optional and source.keyword):
                self.add((*path, "input"), f"expected the name of an optional keyword input "
                         f"(the state a call starts from), got {state.input!r}")
            elif state.input in starts:
                self.add((*path, "input"), f"{state.input!r} already starts "
                         f"{format_field(starts[state.input])}: each array of the state "
                         "starts from an input of its own")
            else:
                starts[state.input] = path
            if state is not first and state.flag != first.flag:
                self.add((*path, "flag"), f"expected {first.flag!r}, the flag of "
                         f"{format_field(first_path)}: one flag asks for the whole state, "
                         f"got {state.flag!r}")
        flag = self.params.get(first.flag)
        if flag is None or flag.type != "bool" or flag.default is not False:
            self.add((*first_path, "flag"), f"expected the name of a bool parameter "
                     f"with default false (asks for the final state), got {first.flag!r}")

    def alternative_shape(self, index: int) -> None:
        """An input's or_shape: named dimensions that the inputs before it bind, and another
        number of dimensions than its shape (which is how a call tells them apart)."""
        signature = self.spec.signature
        assert signature is not None
        tensor = signature.inputs[index]
        if tensor.or_shape is None:
            return
        path: FieldPath = ("signature", "inputs", index, "or_shape")
        if len(tensor.or_shape) == len(tensor.shape):
            self.add(path, f"expected another number of dimensions than the shape's "
                     f"{len(tensor.shape)} (a call tells the two apart by it)")
        for position, dim in enumerate([*tensor.shape, *tensor.or_shape]):
            where = path if position >= len(tensor.shape) else (
                "signature", "inputs", index, "shape", position)
            if dim == ELLIPSIS:
                self.add(where, "an input with an or_shape cannot have '...' dimensions")
            elif isinstance(dim, str) and (not is_identifier(dim)
                                           or dim not in self.bound_before[index]):
                self.add(where, f"the dimension {dim!r} of an input with an or_shape must be "
                         "a name bound by an input before it")

    def expression_names(self) -> list[str]:
        return [*self.dims, *self.params]

    def shape(self, shape: Sequence[Any], path: FieldPath, is_input: bool,
              position: int | None = None) -> None:
        before = len(self.issues)
        self._shape(shape, path, is_input, position)
        if len(self.issues) > before:
            if is_input:
                self.inputs_ok = False
            else:
                self.output_ok = False

    def _shape(self, shape: Sequence[Any], path: FieldPath, is_input: bool,
               position: int | None = None) -> None:
        int_params = [name for name, param in self.params.items() if param.type == "int"]
        for index, dim in enumerate(shape):
            where = (*path, index)
            if dim == ELLIPSIS:
                if index != 0:
                    self.add(where, "'...' (any number of leading dimensions) may only come first")
                continue
            if isinstance(dim, int):
                if dim < 1:
                    self.add(where, f"a fixed dimension must be at least 1, got {dim}")
                continue
            if is_input:
                if not is_identifier(dim):
                    self.derived_input_dim(dim, where, self.bound_before[position or 0])
                continue
            if is_identifier(dim):
                if dim not in self.dims and dim not in int_params:
                    self.add(where, self.unbound(dim, int_params))
                continue
            try:
                names = expr.names_in(dim)
            except expr.ExpressionError as error:
                self.add(where, str(error))
                continue
            unknown = sorted(names - set(self.dims) - set(int_params))
            if unknown:
                self.add(where, self.unbound(unknown[0], int_params))

    def derived_input_dim(self, dim: str, where: FieldPath, bound: list[str]) -> None:
        """An input dimension written as an expression, e.g. "(k + 3) // 4" for packed weights:
        it may read only the dimensions that the inputs before it bind."""
        try:
            names = expr.names_in(dim)
        except expr.ExpressionError as error:
            self.add(where, str(error))
            return
        unknown = sorted(names - set(bound))
        if unknown:
            self.add(where, f"the input dimension {dim!r} reads {unknown[0]!r}, which no earlier "
                     f"input binds (an input dimension is a name, a size, '...' or an expression "
                     f"over the dimensions of the inputs before it: "
                     f"{', '.join(bound) or 'none'})")

    def unbound(self, name: str, int_params: list[str]) -> str:
        param = self.params.get(name)
        if param is not None:
            return (f"the output dimension uses the parameter {name!r}, which is a "
                    f"{param.type}; only int parameters can size the output")
        known = ", ".join([*self.dims, *int_params]) or "none"
        return (f"the output dimension {name!r} is not bound by an input dimension or an int "
                f"parameter (known: {known})")

    def value_range(self, dtype: str, bounds: tuple[float, float] | None, base: FieldPath) -> None:
        if bounds is not None and bounds[0] > bounds[1]:
            self.add((*base, "range"), f"the range's low end {bounds[0]:g} is above its high end "
                     f"{bounds[1]:g}")
            return
        if dtype not in INTEGER_RANGES:
            return
        if bounds is None:
            self.add((*base, "range"), f"{dtype} inputs need a range [lo, hi] of the values "
                     "tests and benchmarks draw")
            return
        lowest, highest = INTEGER_RANGES[dtype]
        if bounds[0] < lowest or bounds[1] > highest:
            self.add((*base, "range"), f"[{bounds[0]:g}, {bounds[1]:g}] does not fit in {dtype} "
                     f"([{lowest}, {highest}])")

    def param(self, param: Param, base: FieldPath) -> None:
        if param.type == "generator":
            for field_name in ("default", "choices", "min", "max", "greater_than"):
                if getattr(param, field_name) is not None:
                    self.add((*base, field_name), f"a generator parameter takes no {field_name}: "
                             "it is None (fresh entropy), a seed or a numpy.random.Generator")
            if not param.optional:
                self.add((*base, "optional"), "a generator parameter is optional (None: fresh "
                         "entropy); add optional: true")
            return
        numeric = param.type in ("int", "float")
        for bound in ("min", "max", "greater_than"):
            if getattr(param, bound) is not None and not numeric:
                self.add((*base, bound), f"{bound} only applies to int and float parameters, "
                         f"not {param.type}")
        if param.min is not None and param.max is not None and param.min > param.max:
            self.add((*base, "min"), f"min {param.min:g} is above max {param.max:g}")
        if param.greater_than is not None and param.max is not None \
                and param.greater_than >= param.max:
            self.add((*base, "greater_than"), f"greater_than {param.greater_than:g} leaves "
                     f"nothing below max {param.max:g}")
        if param.choices is not None:
            for index, choice in enumerate(param.choices):
                problem = param_value_problem(param, choice, check_choices=False)
                if problem:
                    self.add((*base, "choices", index), problem)
        if param.default is not None:
            problem = param_value_problem(param, param.default)
            if problem:
                self.add((*base, "default"), problem)

    def expression(self, text: str, known: Iterable[str], path: FieldPath) -> bool:
        try:
            expr.check(text, known)
        except expr.ExpressionError as error:
            self.add(path, str(error))
            return False
        return True

    # embedded Python -----------------------------------------------------------------------

    def composition(self) -> None:
        """A composition names an engine model (read from its package without importing it)."""
        from koschei.engine.models import EXPORTS

        name = self.spec.composition
        if name is not None and name not in EXPORTS:
            self.add(("composition",), f"{name!r} is not a model of koschei.engine (its models: "
                     f"{', '.join(sorted(EXPORTS))})")

    def python_sources(self) -> None:
        spec = self.spec
        if spec.reference is not None:
            self.source(spec.reference, ("reference",), "reference")
        if spec.tests is not None and spec.tests.torch is not None:
            self.source(spec.tests.torch, ("tests", "torch"), "torch_reference")
        if spec.bench is not None and spec.bench.torch is not None:
            for function in ("prepare", "run"):
                self.source(spec.bench.torch, ("bench", "torch"), function)
        if spec.bench is not None and spec.bench.numpy is not None:
            self.source(spec.bench.numpy, ("bench", "numpy"), "numpy_contender")
        if spec.draw is not None:
            self.source(spec.draw, ("draw",), "draw")
        for name, source in (spec.bench.baselines if spec.bench is not None else {}).items():
            if name in RESERVED_CONTENDERS:
                self.add(("bench", "baselines", name), f"{name!r} is the name of a contender the "
                         "benchmark always has; name the baseline after what it does")
            self.source(source, ("bench", "baselines", name), "baseline")
        if spec.kernel is not None and spec.kernel.family == "custom":
            source = spec.kernel.params.get("source")
            if not isinstance(source, str) or not source.strip():
                self.add(("kernel", "params", "source"), "the custom family needs the kernel's "
                         "Python source in kernel.params.source, defining _compute(...)")
            else:
                self.source(source, ("kernel", "params", "source"), "_compute")

    def source(self, text: str, path: FieldPath, function: str) -> None:
        first_line = self.loaded.text_lines.get(path)
        try:
            tree = ast.parse(text)
        except SyntaxError as error:
            line = first_line + error.lineno - 1 if first_line and error.lineno else None
            self.add(path, f"Python syntax error on line {error.lineno} of the source: "
                     f"{error.msg}", line)
            return
        defined = {node.name for node in tree.body
                   if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
        if function not in defined:
            self.add(path, f"the source must define a function {function}(...) at its top level")

    # tunables ------------------------------------------------------------------------------

    def tunables(self) -> None:
        for name in BOOLEAN_TUNABLES:
            tunable = self.spec.tunables.get(name)
            if tunable is not None and not all(isinstance(c, bool) for c in tunable.choices):
                self.add(("tunables", name), f"expected a list of booleans as choices (it becomes "
                         f"numba's {name}= flag), got {show(tunable.choices)}")
        defaults = {name: tunable.default for name, tunable in self.spec.tunables.items()}
        for index, constraint in enumerate(self.spec.tunable_constraints):
            path: FieldPath = ("tunable_constraints", index, "check")
            if not self.expression(constraint.check, defaults, path):
                continue
            try:
                holds = expr.evaluate(constraint.check, defaults)
            except (expr.ExpressionError, ArithmeticError) as error:
                self.add(path, f"cannot be evaluated at the defaults: {error}")
                continue
            if not holds:
                self.add(path, f"the defaults break it ({constraint.message}): "
                         + ", ".join(f"{name}={value!r}" for name, value in defaults.items()
                                     if name in expr.names_in(constraint.check)))

    # tests and bench -----------------------------------------------------------------------

    def tests(self) -> None:
        tests = self.spec.tests
        signature = self.spec.signature
        assert tests is not None and signature is not None
        for index, case in enumerate(tests.cases):
            self.case(case, ("tests", "cases", index))
            if case.goals:
                self.add(("tests", "cases", index, "goals"), "goals belong to bench cases "
                         "(the benchmark measures them; tests only check results)")
            if case.cold:
                self.add(("tests", "cases", index, "cold"), "cold inputs belong to bench cases "
                         "(the benchmark rotates them out of the caches; tests only check results)")
            if not case.torch_compile:
                self.add(("tests", "cases", index, "torch_compile"), "torch_compile belongs to "
                         "bench cases (the benchmark's PyTorch contender)")
        for result in signature.results:
            if result.dtype in FLOAT_DTYPES and result.dtype not in tests.tolerance:
                self.add(("tests", "tolerance"), f"no tolerance for the dtype {result.dtype} of "
                         f"the output {result.name!r}")
        for dim, (low, high) in tests.random_dims.items():
            path: FieldPath = ("tests", "random_dims", dim)
            if dim == ELLIPSIS and not self.leading:
                self.add(path, "no input has leading '...' dimensions")
                continue
            if dim != ELLIPSIS and dim not in self.dims:
                self.add(path, self.unknown_dim(dim))
                continue
            smallest = self.smallest_size(dim)
            if low < smallest:
                self.add(path, f"expected sizes >= {smallest}{self.empty_hint(dim)}, got "
                         f"[{low}, {high}]")
            if low > high:
                self.add(path, f"the low end {low} is above the high end {high}")
        known = {*(t.name for t in signature.inputs), *self.params,
                 *(result.name for result in signature.results), *INVARIANT_NAMES}
        for index, invariant in enumerate(tests.invariants):
            self.invariant(invariant.check, known, ("tests", "invariants", index, "check"))

    def bench(self) -> None:
        bench = self.spec.bench
        assert bench is not None
        labels: dict[str, int] = {}
        for index, case in enumerate(bench.cases):
            path: FieldPath = ("bench", "cases", index)
            label = case_label(case)
            if label in labels:
                self.add(path, f"the case label {label!r} is also bench.cases[{labels[label]}]'s: "
                         "give the cases different sizes or names")
            labels.setdefault(label, index)
        known = [*self.dims, *(n for n, p in self.params.items() if p.type != "str")]
        if self.leading:
            known.extend(LEADING_NAMES)
        formulas = [f for f in ("bytes", "flops", "written") if getattr(bench, f) is not None]
        formulas_ok = [self.expression(getattr(bench, formula), known, ("bench", formula))
                       for formula in formulas]
        inputs = {arg.name for arg in self.spec.signature.inputs} if self.spec.signature else set()
        for index, case in enumerate(bench.cases):
            path = ("bench", "cases", index)
            for number, name in enumerate(case.cold):
                if name not in inputs:
                    self.add((*path, "cold", number), f"{name!r} is not an input (inputs: "
                             f"{', '.join(sorted(inputs)) or 'none'})")
            names = self.case(case, path)
            if names is None:
                continue
            for formula, ok in zip(formulas, formulas_ok, strict=True):
                if not ok:
                    continue
                try:
                    value = expr.evaluate(getattr(bench, formula), names)
                except expr.ExpressionError as error:
                    self.add(path, f"{formula}: {error}")
                    continue
                if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                    self.add(path, f"{formula} is {show(value)} for this case; expected a finite "
                             "number >= 0")
        contenders = {"numpy", "torch", "torch_compile", *getattr(bench, "baselines", {})}
        for index, case in enumerate(bench.cases):
            for number, goal in enumerate(case.goals):
                path = ("bench", "cases", index, "goals", number)
                if (goal.roofline is None) == (goal.vs is None and goal.at_least is None):
                    self.add(path, "a goal is either {roofline: FRACTION} or {vs: CONTENDER, "
                             "at_least: SPEEDUP}")
                elif goal.roofline is None and (goal.vs is None or goal.at_least is None):
                    self.add(path, "a speedup goal needs both vs and at_least")
                elif goal.vs is not None and goal.vs not in contenders:
                    self.add((*path, "vs"), f"unknown contender {goal.vs!r} (known: "
                             f"{', '.join(sorted(contenders))})")

    def smallest_size(self, dim: str) -> int:
        return 0 if dim in self.may_be_empty else 1

    def empty_hint(self, dim: str) -> str:
        if dim in self.may_be_empty:
            return ""
        return " (set allow_empty on an input with this dimension to test empty arrays)"

    def unknown_dim(self, dim: str) -> str:
        known = ([ELLIPSIS] if self.leading else []) + self.dims
        close = get_close_matches(dim, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown dimension {dim!r} ({hint}known: {', '.join(map(repr, known)) or 'none'})"

    def case(self, case: Case, path: FieldPath) -> dict[str, Any] | None:
        """Check one test or bench case; return the names its formulas see, or None when the
        case itself is wrong."""
        ok = True
        names: dict[str, Any] = {}
        for dim, value in case.dims.items():
            where = (*path, "dims", dim)
            if dim == ELLIPSIS:
                if not self.leading:
                    self.add(where, "no input has leading '...' dimensions")
                    ok = False
                    continue
                leading = value if isinstance(value, list) else [value]
                smallest = self.smallest_size(dim)
                if any(size < smallest for size in leading):
                    self.add(where, f"leading sizes must be at least {smallest}"
                             f"{self.empty_hint(dim)}, got {show(value)}")
                    ok = False
                names["rows"] = math.prod(leading)
                names["lead"] = len(leading)
            elif dim not in self.dims:
                self.add(where, self.unknown_dim(dim))
                ok = False
            elif isinstance(value, list):
                self.add(where, f"expected one size, got the list {show(value)} (only '...' "
                         "takes a list)")
                ok = False
            elif value < self.smallest_size(dim):
                self.add(where, f"sizes must be at least {self.smallest_size(dim)}"
                         f"{self.empty_hint(dim)}, got {value}")
                ok = False
            else:
                names[dim] = value
        missing = [dim for dim in ([ELLIPSIS] if self.leading else []) + self.dims
                   if dim not in case.dims]
        if missing:
            self.add((*path, "dims"), f"missing dimension{'s' if len(missing) > 1 else ''} "
                     f"{', '.join(map(repr, missing))}")
            ok = False
        signature = self.spec.signature
        assert signature is not None
        optional = [tensor.name for tensor in signature.inputs if tensor.optional]
        for index, name in enumerate(case.with_inputs):
            if name not in optional:
                self.add((*path, "with_inputs", index), f"{name!r} is not an optional input "
                         f"(optional inputs: {', '.join(optional) or 'none'})")
                ok = False
        for name, value in case.params.items():
            param = self.params.get(name)
            if param is None:
                known = ", ".join(self.params) or "none"
                self.add((*path, "params", name), f"unknown parameter (known: {known})")
                ok = False
                continue
            problem = param_value_problem(param, value)
            if problem:
                self.add((*path, "params", name), problem)
                ok = False
        if not ok:
            return None
        for param_name, param in self.params.items():
            value = case.params.get(param_name, param.default)
            # a default that is itself wrong is reported once, on the parameter
            if value is not None and param.type not in ("str", "generator") \
                    and param_value_problem(param, value) is None:
                names[param_name] = value
        for constraint in signature.constraints:
            try:
                holds = expr.evaluate(constraint.check, names)
            except expr.ExpressionError:
                continue  # reported on the constraint itself, or a parameter left unset
            if not holds:
                self.add(path, f"the case breaks the constraint {constraint.check!r}: "
                         f"{constraint.message}")
                ok = False
        derived = [(f"{result.name}'s dimension {index}", dim)
                   for result in (signature.results if self.output_ok else [])
                   for index, dim in enumerate(result.shape)]
        derived += [(f"{tensor.name}'s dimension {index}", dim)
                    for tensor in (signature.inputs if self.inputs_ok else [])
                    for index, dim in enumerate(tensor.shape)]
        for where, dim in derived:
            if isinstance(dim, str) and dim != ELLIPSIS and not is_identifier(dim):
                try:
                    size = expr.evaluate(dim, names)
                except expr.ExpressionError as error:
                    self.add(path, f"{where} ({dim!r}): {error}")
                    ok = False
                    continue
                if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                    self.add(path, f"{where} ({dim!r}) is {show(size)} for this case; expected "
                             "an integer >= 0")
                    ok = False
        return names if ok else None

    def invariant(self, text: str, known: set[str], path: FieldPath) -> None:
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as error:
            self.add(path, f"{text.strip()!r} is not a valid Python expression: {error.msg}")
            return
        bound = {node.id for node in ast.walk(tree)
                 if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}
        bound |= {arg.arg for node in ast.walk(tree) if isinstance(node, ast.Lambda)
                  for arg in node.args.args}
        used = {node.id for node in ast.walk(tree)
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
        unknown = sorted(used - bound - known)
        if unknown:
            self.add(path, f"unknown name{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                     "(an invariant reads the inputs, the params, out, np, module and importlib)")


def case_label(case: Case) -> str:
    """A case's name, or its sizes joined by "x" — the label benchmark results carry."""
    if case.name:
        return case.name
    sizes: list[str] = []
    for value in case.dims.values():
        sizes.extend(str(v) for v in (value if isinstance(value, list) else [value]))
    return "x".join(sizes)


def param_value_problem(param: Param, value: Any, check_choices: bool = True) -> str | None:
    """Why ``value`` is not a valid value of ``param``, or None."""
    if value is None:
        return None if param.optional else "is None but the parameter is not optional"
    if param.type == "generator":
        fits = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        return None if fits else f"expected a seed (an integer >= 0), got {show(value)}"
    expected = {"float": "a number", "int": "an integer", "bool": "true or false",
                "str": "a string"}[param.type]
    if isinstance(value, bool):
        fits = param.type == "bool"
    elif isinstance(value, int):
        fits = param.type in ("int", "float")
    elif isinstance(value, float):
        fits = param.type == "float"
    else:
        fits = isinstance(value, str) and param.type == "str"
    if not fits:
        return f"expected {expected}, got {show(value)}"
    if param.type in ("int", "float"):
        if param.min is not None and value < param.min:
            return f"{value!r} is below the minimum {param.min:g}"
        if param.max is not None and value > param.max:
            return f"{value!r} is above the maximum {param.max:g}"
        if param.greater_than is not None and not value > param.greater_than:
            return f"{value!r} must be greater than {param.greater_than:g}"
    if check_choices and param.choices is not None and value not in param.choices:
        return f"{show(value)} is not one of the choices {show(param.choices)}"
    return None


# --- all specs together -------------------------------------------------------------------------


def check_set(specs: Sequence[LoadedSpec], unreadable: Iterable[str] = ()) -> list[SpecIssue]:
    """Checks across specs: unique names and aliases, requirements that exist, no cycles, and
    providers (``provided_by``) that exist and have code of their own.

    ``unreadable`` are the names of spec files that could not be read (already reported): a
    requirement naming one of them is not reported again."""
    skip = set(unreadable)
    issues: list[SpecIssue] = []
    by_name: dict[str, LoadedSpec] = {}
    for loaded in specs:
        first = by_name.get(loaded.name)
        if first is not None:
            issues.append(loaded.issue(("name",), f"the name {loaded.name!r} is also used by "
                                       f"{first.relpath}"))
        else:
            by_name[loaded.name] = loaded
    alias_owner: dict[str, LoadedSpec] = {}
    for loaded in specs:
        for index, alias in enumerate(loaded.spec.aliases):
            if alias in by_name and by_name[alias] is not loaded:
                issues.append(loaded.issue(("aliases", index), f"the alias {alias!r} is the name "
                                           f"of another spec ({by_name[alias].relpath})"))
                continue
            owner = alias_owner.get(alias)
            if owner is not None and owner is not loaded:
                issues.append(loaded.issue(("aliases", index), f"the alias {alias!r} is also an "
                                           f"alias of {owner.name} ({owner.relpath})"))
            alias_owner.setdefault(alias, loaded)
    for loaded in specs:
        for index, requirement in enumerate(loaded.spec.requires):
            if requirement in by_name or requirement in skip:
                continue
            if requirement in alias_owner:
                message = (f"{requirement!r} is an alias of {alias_owner[requirement].name}: "
                           f"require {alias_owner[requirement].name}")
            else:
                close = get_close_matches(requirement, list(by_name), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                message = f"no spec is named {requirement!r}{hint}"
            issues.append(loaded.issue(("requires", index), message))
    for loaded in specs:
        provided_by = loaded.spec.provided_by
        if provided_by is None or provided_by.spec == loaded.name:
            continue
        provider = by_name.get(provided_by.spec)
        if provider is None:
            if provided_by.spec in skip or provided_by.spec in loaded.spec.requires:
                continue  # reported once, on the requirement
            owner = alias_owner.get(provided_by.spec)
            close = get_close_matches(provided_by.spec, list(by_name), n=1)
            hint = (f" ({provided_by.spec!r} is an alias of {owner.name}: name {owner.name})"
                    if owner is not None else f" (did you mean {close[0]}?)" if close else "")
            issues.append(loaded.issue(("provided_by", "spec"),
                                       f"no spec is named {provided_by.spec!r}{hint}"))
        elif provider.status not in PROVIDER_STATUSES:
            issues.append(loaded.issue(("provided_by", "spec"), (
                f"{provider.name} is {provider.status}: only a spec with a kernel or a "
                f"composition of its own provides another ({provider.relpath})")))
    requires = {name: list(loaded.spec.requires) for name, loaded in by_name.items()}
    for cycle in find_cycles(requires):
        start, following = cycle[0], cycle[1]
        loaded = by_name[start]
        index = loaded.spec.requires.index(following)
        issues.append(loaded.issue(("requires", index),
                                   f"dependency cycle: {' -> '.join(cycle)}"))
    return issues
