"""The spec schema: what a technique's YAML file may say.

A spec with identity and claims only is a *planned* node of the technology tree. A spec with a
``kernel`` is *implemented*: it must then also give ``signature``, ``reference`` and ``tests``,
and code_generate renders it into ``koschei/engine/<name>.py`` and ``tests/engine/test_<name>.py``.

Field checks that need only one field live here (pydantic); checks across fields and across specs
(dimensions that agree, ``requires`` that exist, no cycles) live in ``koschei.specs.validate``.
"""

from __future__ import annotations

import keyword
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


def _identifier(value: str) -> str:
    if not _IDENTIFIER.match(value) or keyword.iskeyword(value):
        raise ValueError(
            f"{value!r} is not a valid name: use lowercase letters, digits and '_', "
            "starting with a letter (it becomes a Python module and function name)")
    return value


Identifier = Annotated[str, AfterValidator(_identifier)]

_ARGUMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _argument_name(value: str) -> str:
    if not _ARGUMENT.match(value) or keyword.iskeyword(value):
        raise ValueError(
            f"{value!r} is not a valid argument name: use letters, digits and '_', starting "
            "with a letter (capitals for a paper's matrices, e.g. A, B, C)")
    return value


# The name of an array argument: a Python identifier, capitals allowed (a paper's A, B, C).
ArgumentName = Annotated[str, AfterValidator(_argument_name)]

# bfloat16 is ml_dtypes' NumPy dtype (float32's exponent, a 7-bit mantissa), float16 IEEE
# binary16: storage formats of weights, widened to float32 by the kernels that read them.
DType = Literal["float32", "float64", "bfloat16", "float16", "int8", "uint8", "int32", "int64",
                "bool"]
# A dimension of a symbolic shape: a name bound by the inputs ("d", "n"), a fixed size, or "..."
# (any number of leading dimensions, only first).
Dim = int | str


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paper(Strict):
    title: str
    authors: str | None = None  # as cited, e.g. "Biao Zhang, Rico Sennrich"
    arxiv: str | None = None
    year: int | None = Field(default=None, ge=1900, le=2100)
    url: str | None = None


class Measure(Strict):
    """How pas_analyze measures a claim whose baseline is not a kernel to time or a signature to
    size: two entries of one table of ``koschei.specs.measures`` (``kind``: weights, kv_cache,
    attention_memory or decoder), ``this`` for the spec's technique and ``baseline`` for what the
    claim compares it with, e.g. ``{kind: kv_cache, this: gqa, baseline: mha}``."""

    kind: Literal["weights", "kv_cache", "attention_memory", "decoder"]
    this: str
    baseline: str


class Claim(Strict):
    """What a paper or seed says; pas_analyze puts it next to what was measured here."""

    metric: Literal["speedup", "memory", "compression", "accuracy", "latency", "complexity"]
    value: float
    baseline: str
    unit: str = "x"
    source: str
    # The benchmark case and contender the claim is checked against, e.g. "4096x768" / "layernorm".
    case: str | None = None
    # Sizes from shapes and dtypes, or the decoder's figures, when the baseline has no kernel.
    measure: Measure | None = None


class ProvidedBy(Strict):
    """The implemented (or composed) spec whose code already does this technique, and how, e.g.
    ``{spec: attention, how: "window= parameter"}``: the node is then done, not planned."""

    spec: Identifier
    how: str = Field(min_length=1)


class TensorArg(Strict):
    name: ArgumentName
    dtype: DType = "float32"
    shape: list[Dim]
    # Value range used when tests and benchmarks draw inputs (e.g. positions in [0, 4096)).
    range: tuple[float, float] | None = None
    # An array with a zero-size dimension is accepted (by default the public function rejects it).
    allow_empty: bool = False
    # Inputs only: None is allowed and is the default (checked only when an array is given).
    optional: bool = False
    # Inputs only, with optional: keyword-only, after the parameters (e.g. a mask).
    keyword: bool = False
    # Inputs only: another shape the input may have instead, of another rank (e.g. one gate per
    # head (T, H) instead of one per channel (T, H, K)); its dimensions are bound by the inputs
    # before it. The kernels get either; the number of dimensions tells which.
    or_shape: list[Dim] | None = None
    doc: str = ""


class Param(Strict):
    """A scalar keyword parameter of the public function.

    ``generator`` is a source of randomness: None (fresh entropy), an int seed or a
    ``numpy.random.Generator``; the function turns it into a Generator.
    """

    name: Identifier
    type: Literal["float", "int", "bool", "str", "generator"]
    default: Any = None
    min: float | None = None
    max: float | None = None
    # Exclusive lower bound (e.g. eps > 0), as opposed to ``min`` which is inclusive.
    greater_than: float | None = None
    choices: list[Any] | None = None
    optional: bool = False  # None is allowed (and is the default when ``default`` is unset)
    doc: str = ""


class Constraint(Strict):
    """A relation between dimensions the public function enforces, e.g. ``hq % hkv == 0``."""

    check: str
    message: str


class State(Strict):
    """A recurrent state carried from one call to the next, so that a long input can be fed in
    pieces (and a decoding step is a call with one token): the optional keyword ``input`` it
    starts from (None: zeros), and, when the bool parameter ``flag`` is true, the state after
    the last token returned as ``name`` after the other results, e.g. ``{name: final_state,
    input: initial_state, flag: output_final_state}``. Its dtype and shape are the input's.

    A state of several arrays (mLSTM's C, n and m) is a list of entries, one per array, that
    share one flag: the inputs are given together or not at all, and the final arrays are
    returned in the list's order."""

    name: ArgumentName
    input: ArgumentName
    flag: Identifier
    doc: str = ""


class Signature(Strict):
    """Inputs (positional, then optional ones; keyword inputs after the parameters), and either
    one ``output`` (the function takes ``out=``) or several ``outputs`` (returned as a tuple);
    optionally a recurrent ``state``: one entry, or a list of entries for a state of several
    arrays (``states`` is the list either way)."""

    inputs: list[TensorArg] = Field(min_length=1)
    output: TensorArg | None = None
    outputs: list[TensorArg] | None = Field(default=None, min_length=2)
    params: list[Param] = []
    constraints: list[Constraint] = []
    state: State | Annotated[list[State], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _one_kind_of_output(self) -> Signature:
        if (self.output is None) == (self.outputs is None):
            raise ValueError("give either output (one array, written into out=) or outputs "
                             "(two or more arrays, returned as a tuple)")
        return self

    @property
    def results(self) -> list[TensorArg]:
        """The outputs, in order (one for ``output``); not the state."""
        return [self.output] if self.output is not None else list(self.outputs or [])

    @property
    def states(self) -> list[State]:
        """The entries of the state, one per array, in order (none without a state)."""
        if self.state is None:
            return []
        return list(self.state) if isinstance(self.state, list) else [self.state]

    @property
    def state_flag(self) -> str | None:
        """The bool parameter that asks for the final state (the first entry's), or None."""
        states = self.states
        return states[0].flag if states else None

    @property
    def state_results(self) -> list[TensorArg]:
        """The final state as results, one per entry in order, each with its input's dtype and
        shape (an entry whose input is missing is left out: validation reports it)."""
        found: list[TensorArg] = []
        for state in self.states:
            source = next((t for t in self.inputs if t.name == state.input), None)
            if source is not None:
                found.append(TensorArg(name=state.name, dtype=source.dtype, shape=source.shape,
                                       doc=state.doc))
        return found


class Kernel(Strict):
    """How the engine module is made: a template family and its parameters.

    ``family`` names ``templates/families/<family>.py.j2``; ``params`` are that family's own.
    The family ``custom`` takes the kernel's Python source in ``params.source``.
    """

    family: Identifier
    params: dict[str, Any] = {}


class Tunable(Strict):
    """A named choice that changes the generated code (numba flags, block sizes, loop order)."""

    choices: list[bool | int | float | str] = Field(min_length=1)
    default: bool | int | float | str
    doc: str = ""

    @model_validator(mode="after")
    def _default_is_a_choice(self) -> Tunable:
        if self.default not in self.choices:
            raise ValueError(f"default {self.default!r} is not one of the choices {self.choices!r}")
        if len({type(c) for c in self.choices}) != 1:
            raise ValueError(f"choices must all have one type, got {self.choices!r}")
        return self


class Tolerance(Strict):
    rtol: float = Field(ge=0)
    atol: float = Field(ge=0)


class Goal(Strict):
    """A performance goal of a bench case: a speedup over a contender (``vs`` with ``at_least``,
    e.g. ``{vs: torch, at_least: 3.0}``) or a fraction of the roofline of the memory level the
    case runs from (``{roofline: 0.8}``). The benchmark reports each as met or short by how
    much; a goal missed never fails a run."""

    vs: str | None = None  # "numpy", "torch" or a baseline's name
    at_least: float | None = Field(default=None, gt=0)
    roofline: float | None = Field(default=None, gt=0, le=1)


class Case(Strict):
    """Concrete sizes for the symbolic dimensions, and parameter values."""

    name: str | None = None
    # Sizes of the named dimensions; "..." gives the leading dimensions as a list.
    dims: dict[str, int | list[int]]
    params: dict[str, Any] = {}
    goals: list[Goal] = []  # bench cases only
    # The optional inputs given in this case (the others are None).
    with_inputs: list[ArgumentName] = []
    # Bench cases only: inputs a real model streams from memory at every call (the weights of a
    # decoding step). The benchmark rotates every contender through enough copies of them that
    # none is still cached when it is used again, and times the engine on one warm copy beside.
    cold: list[ArgumentName] = []
    # Bench cases only: whether torch.compile is tried on the PyTorch contender; false where it
    # loops over many tokens or chunks, which dynamo unrolls (minutes of compiling a thousand
    # copies of the loop's body, which nobody who runs it would do). The report says so.
    torch_compile: bool = True


class Invariant(Strict):
    """A property of every result: a Python expression over the inputs, params, ``out``, ``np``,
    ``module`` (the spec's engine module) and ``importlib`` (to reach another kernel)."""

    name: Identifier
    check: str


class Tests(Strict):
    cases: list[Case] = Field(min_length=1)
    tolerance: dict[DType, Tolerance]
    # Inclusive bounds for each dimension when hypothesis draws random shapes. For "...", the
    # bounds of each leading dimension's size (zero to two leading dimensions are drawn).
    # Dimensions not listed keep their size in the first test case whose sizes are all >= 2.
    random_dims: dict[str, tuple[int, int]] = {}
    invariants: list[Invariant] = []
    # Python source defining ``torch_reference(...)`` with the public function's signature, taking
    # and returning torch tensors; absent when PyTorch has no equivalent.
    torch: str | None = None


class Bench(Strict):
    cases: list[Case] = Field(min_length=1)
    # Arithmetic over the case's dims (and params): bytes moved and floating-point operations.
    bytes: str
    flops: str
    # How many of those bytes are written (the rest are read): the ceiling of a case is that of
    # its own mix of reads and writes. None: the bytes of the outputs.
    written: str | None = None
    # The PyTorch contender as an expert writes it, when the test-time ``tests.torch`` is not
    # that: Python source defining ``prepare(<inputs>, **params)``, run once outside the timed
    # call, returning the arguments of ``run(*args)`` (tensors in PyTorch's own layouts, tables
    # computed once), and ``run(*args)``, the timed call, which ``torch.compile`` also compiles;
    # optionally ``result(output)``, the NumPy output(s) in the spec's layout for the check.
    torch: str | None = None
    # The NumPy contender as a NumPy user writes it, when the reference (written for clarity,
    # often in float64) is not that: Python source defining ``numpy_contender(...)``, called like
    # the public function (float32 arithmetic, no needless copies); else the reference.
    numpy: str | None = None
    # Other ways to do the job, timed beside the engine but never compared with it: name ->
    # Python source defining ``baseline(...)``, called with the function's inputs and params by
    # name (e.g. an fp32 GEMV of the same shape as a quantized one).
    baselines: dict[Identifier, str] = {}


class Spec(Strict):
    name: Identifier
    title: str
    tier: Identifier
    summary: str = ""  # the math, for the module docstring and the tree
    aliases: list[Identifier] = []
    paper: Paper | None = None
    requires: list[Identifier] = []
    claims: list[Claim] = []
    # Another spec's kernel or composition already does this technique (no code of its own).
    provided_by: ProvidedBy | None = None

    kernel: Kernel | None = None
    # The engine model that composes kernels into this technique (no kernel of its own), as its
    # name in koschei.engine, e.g. "KVCache" or "Decoder".
    composition: str | None = None
    signature: Signature | None = None
    reference: str | None = None  # Python source defining ``reference(...)`` with NumPy
    # Python source defining ``draw(rng, dims, params)``: a dict of the inputs that tests and
    # benchmarks must not draw the default way (e.g. packed weights made by quantizing);
    # ``dims`` has the case's sizes ("..." a tuple), ``params`` its parameters with defaults.
    draw: str | None = None
    tunables: dict[Identifier, Tunable] = {}
    # Relations between tunable values that every configuration must satisfy, over the tunables'
    # names (e.g. "mr * (nr // 16) <= 28": a register tile that fits): a search never tries a
    # configuration that breaks one.
    tunable_constraints: list[Constraint] = []
    tests: Tests | None = None
    bench: Bench | None = None

    @property
    def status(self) -> Literal["implemented", "composed", "provided", "planned"]:
        """implemented: a kernel of its own; composed: an engine model built of kernels;
        provided: done by another spec's kernel or composition (``provided_by``); planned:
        identity and claims only."""
        if self.kernel is not None:
            return "implemented"
        if self.composition is not None:
            return "composed"
        return "provided" if self.provided_by is not None else "planned"

    @model_validator(mode="after")
    def _implemented_specs_are_complete(self) -> Spec:
        if self.kernel is not None and self.composition is not None:
            raise ValueError("a spec has a kernel or a composition, not both")
        if self.provided_by is not None and (self.kernel is not None
                                             or self.composition is not None):
            raise ValueError("a spec provided by another has no kernel or composition of its "
                             "own: drop provided_by, or the kernel / composition")
        if self.kernel is not None:
            missing = [f for f in ("signature", "reference", "tests") if getattr(self, f) is None]
            if missing:
                raise ValueError(f"a spec with a kernel also needs: {', '.join(missing)}")
        return self
