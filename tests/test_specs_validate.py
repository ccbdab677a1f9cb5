"""Checks across fields and across specs, each reported as ``path:line: field: message``."""

from __future__ import annotations

import textwrap
from pathlib import Path
from textwrap import dedent

import pytest

from koschei.errors import SpecError
from koschei.specs import load_specs
from koschei.workspace import Workspace

PLANNED = """\
name: {name}
title: A planned technique
tier: {tier}
requires: {requires}
"""

# An implemented spec; the line numbers in the tests below refer to this text (after edits).
SCALE = """\
name: scale
title: Scale rows
tier: foundation
aliases: [v1_scale]
kernel:
  family: custom
  params:
    source: |
      def _compute(x, idx, alpha, out):
          np.multiply(x, np.float32(alpha), out=out)
signature:
  inputs:
    - {name: x, dtype: float32, shape: ["...", n, d]}
    - {name: idx, dtype: int32, shape: [n], range: [0, 100]}
  output: {name: out, dtype: float32, shape: ["...", n, "d // 2"]}
  params:
    - {name: alpha, type: float, default: 2.0, greater_than: 0}
    - {name: groups, type: int, default: 1, min: 1}
  constraints:
    - {check: "d % (2 * groups) == 0", message: "d must split into 2 * groups halves"}
reference: |
  import numpy as np


  def reference(x, idx, *, alpha=2.0, groups=1):
      return x[..., ::2] * alpha
tests:
  cases:
    - {dims: {"...": [3], n: 4, d: 8}}
    - {dims: {"...": [], n: 2, d: 4}, params: {alpha: 0.5, groups: 2}}
  tolerance:
    float32: {rtol: 1.0e-6, atol: 1.0e-6}
  random_dims: {n: [1, 8], d: [2, 16]}
  invariants:
    - {name: finite, check: "np.all(np.isfinite(out)) and all(v == v for v in out.ravel())"}
  torch: |
    def torch_reference(x, idx, *, alpha=2.0, groups=1):
        return x[..., ::2] * alpha
bench:
  cases:
    - {dims: {"...": [64], n: 16, d: 256}}
    - {name: small, dims: {"...": [1], n: 2, d: 8}}
  bytes: "4 * rows * n * d + 4 * rows * n * (d // 2)"
  flops: "rows * n * d / 2"
tunables:
  parallel: {choices: [true, false], default: true}
  block: {choices: [8, 16], default: 8}
"""


def make_workspace(root: Path, files: dict[str, str]) -> Workspace:
    (root / "specs").mkdir(parents=True, exist_ok=True)
    (root / "koschei.toml").write_text("")
    for relpath, text in files.items():
        path = root / "specs" / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return Workspace(root.resolve())


def planned(name: str, tier: str = "foundation", requires: tuple[str, ...] = ()) -> str:
    return PLANNED.format(name=name, tier=tier, requires="[" + ", ".join(requires) + "]")


def problems(workspace: Workspace) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_specs(workspace)
    return [str(issue) for issue in caught.value.issues]


def scale_with(*replacements: tuple[str, str]) -> str:
    text = SCALE
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def scale_problems(tmp_path: Path, *replacements: tuple[str, str]) -> list[str]:
    workspace = make_workspace(tmp_path, {"foundation/scale.yaml": scale_with(*replacements)})
    return problems(workspace)


def test_the_implemented_fixture_is_valid(tmp_path):
    workspace = make_workspace(tmp_path, {"foundation/scale.yaml": SCALE})
    spec_set = load_specs(workspace)
    assert [loaded.name for loaded in spec_set.implemented()] == ["scale"]


# --- identity and location ----------------------------------------------------------------------


def test_the_folder_must_be_the_tier(tmp_path):
    workspace = make_workspace(tmp_path, {"ffn/alpha.yaml": planned("alpha", tier="foundation")})
    assert problems(workspace) == [
        ("specs/ffn/alpha.yaml:3: tier: the spec's tier is 'foundation' but the file is in "
        "specs/ffn/: move it to specs/foundation/alpha.yaml (or change the tier)")]


def test_the_file_name_must_be_the_spec_name(tmp_path):
    workspace = make_workspace(tmp_path, {"foundation/alpha.yaml": planned("beta")})
    assert problems(workspace) == [
        ("specs/foundation/alpha.yaml:1: name: the file is named alpha.yaml but the spec is "
        "'beta': name the file beta.yaml (or change the name)")]


def test_names_are_unique(tmp_path):
    workspace = make_workspace(tmp_path, {
        "foundation/alpha.yaml": planned("alpha"),
        "ffn/alpha.yaml": planned("alpha", tier="ffn"),
    })
    assert problems(workspace) == [
        ("specs/foundation/alpha.yaml:1: name: the name 'alpha' is also used by "
        "specs/ffn/alpha.yaml")]


def test_aliases_are_unique_and_never_another_spec_name(tmp_path):
    workspace = make_workspace(tmp_path, {
        "foundation/alpha.yaml": planned("alpha") + "aliases: [v1_shared, alpha_again]\n",
        "foundation/beta.yaml": planned("beta") + "aliases: [v1_shared, alpha]\n",
        "foundation/gamma.yaml": planned("gamma") + "aliases: [gamma, v3, v3]\n",
    })
    assert problems(workspace) == [
        ("specs/foundation/beta.yaml:5: aliases[0]: the alias 'v1_shared' is also an alias of "
        "alpha (specs/foundation/alpha.yaml)"),
        ("specs/foundation/beta.yaml:5: aliases[1]: the alias 'alpha' is the name of another "
        "spec (specs/foundation/alpha.yaml)"),
        "specs/foundation/gamma.yaml:5: aliases[0]: the alias 'gamma' is the spec's own name",
        "specs/foundation/gamma.yaml:5: aliases[2]: the alias 'v3' is listed twice",
    ]


def test_a_missing_dependency_is_named_with_a_suggestion(tmp_path):
    workspace = make_workspace(tmp_path, {
        "foundation/softmax.yaml": planned("softmax") + "aliases: [v9_softmax]\n",
        "attention/alpha.yaml": textwrap.dedent("""\
            name: alpha
            title: Alpha
            tier: attention
            requires:
              - softmx
              - v9_softmax
              - nothing_like_it
            """),
    })
    assert problems(workspace) == [
        ("specs/attention/alpha.yaml:5: requires[0]: no spec is named 'softmx' (did you mean "
        "softmax?)"),
        ("specs/attention/alpha.yaml:6: requires[1]: 'v9_softmax' is an alias of softmax: require "
        "softmax"),
        "specs/attention/alpha.yaml:7: requires[2]: no spec is named 'nothing_like_it'",
    ]


def test_a_cycle_is_reported_with_its_path(tmp_path):
    workspace = make_workspace(tmp_path, {
        "foundation/a.yaml": planned("a", requires=("b",)),
        "foundation/b.yaml": planned("b", requires=("c",)),
        "foundation/c.yaml": planned("c", requires=("d", "a")),
        "foundation/d.yaml": planned("d"),
        "foundation/e.yaml": planned("e", requires=("e",)),
    })
    assert problems(workspace) == [
        "specs/foundation/a.yaml:4: requires[0]: dependency cycle: a -> b -> c -> a",
        "specs/foundation/e.yaml:4: requires[0]: dependency cycle: e -> e",
    ]


def test_a_broken_file_does_not_cascade_into_missing_dependencies(tmp_path):
    workspace = make_workspace(tmp_path, {
        "foundation/alpha.yaml": "name: alpha\ntitle: [\n",
        "foundation/beta.yaml": planned("beta", requires=("alpha",)),
    })
    found = problems(workspace)
    assert len(found) == 1 and found[0].startswith("specs/foundation/alpha.yaml:")


def test_arxiv_ids_are_bare(tmp_path):
    workspace = make_workspace(tmp_path, {"foundation/alpha.yaml": planned("alpha") + dedent(
        """\
        paper:
          title: P
          arxiv: "arXiv:2205.14135"
        """)})
    assert problems(workspace) == [
        ("specs/foundation/alpha.yaml:7: paper.arxiv: 'arXiv:2205.14135' is not an arXiv "
        "identifier: write the bare identifier, 2205.14135")]


# --- the signature ------------------------------------------------------------------------------


def test_an_output_dimension_must_be_bound(tmp_path):
    found = scale_problems(tmp_path, ('shape: ["...", n, "d // 2"]', 'shape: ["...", m, "d // k"]'))
    assert found == [
        ("specs/foundation/scale.yaml:15: signature.output.shape[1]: the output dimension 'm' is "
        "not bound by an input dimension or an int parameter (known: n, d, groups)"),
        ("specs/foundation/scale.yaml:15: signature.output.shape[2]: the output dimension 'k' is "
        "not bound by an input dimension or an int parameter (known: n, d, groups)"),
    ]


def test_a_float_parameter_cannot_size_the_output(tmp_path):
    found = scale_problems(tmp_path, ('shape: ["...", n, "d // 2"]', 'shape: ["...", n, alpha]'))
    assert found == [
        ("specs/foundation/scale.yaml:15: signature.output.shape[2]: the output dimension uses the "
        "parameter 'alpha', which is a float; only int parameters can size the output")]


def test_ellipsis_only_first(tmp_path):
    found = scale_problems(tmp_path, ('shape: ["...", n, d]}', 'shape: [n, "...", d]}'))
    assert found[0] == ("specs/foundation/scale.yaml:13: signature.inputs[0].shape[1]: '...' "
                        "(any number of leading dimensions) may only come first")


def test_integer_inputs_need_a_range(tmp_path):
    found = scale_problems(tmp_path, (", range: [0, 100]", ""))
    assert found == [
        ("specs/foundation/scale.yaml:14: signature.inputs[1].range: int32 inputs need a range "
        "[lo, hi] of the values tests and benchmarks draw")]
    found = scale_problems(tmp_path, ("range: [0, 100]", "range: [100, 0]"))
    assert found == [
        ("specs/foundation/scale.yaml:14: signature.inputs[1].range: the range's low end 100 is "
        "above its high end 0")]


def test_parameter_defaults_respect_their_bounds(tmp_path):
    found = scale_problems(tmp_path,
                           ("default: 2.0, greater_than: 0", "default: 0.0, greater_than: 0"),
                           ("default: 1, min: 1", "default: 1.5, min: 1"))
    assert found == [
        "specs/foundation/scale.yaml:17: signature.params[0].default: 0.0 must be greater than 0",
        "specs/foundation/scale.yaml:18: signature.params[1].default: expected an integer, got 1.5",
    ]


def test_names_are_not_used_twice(tmp_path):
    found = scale_problems(tmp_path, ("{name: groups, type: int", "{name: x, type: int"),
                           ("d % (2 * groups) == 0", "d % 2 == 0"), ("groups: 2}", "x: 2}"))
    assert found == [
        ("specs/foundation/scale.yaml:18: signature.params[1].name: the name 'x' is already used "
        "by signature.inputs[0].name (inputs, params and the output share the function's "
        "argument names)")]


def test_constraints_are_expressions_over_known_names(tmp_path):
    found = scale_problems(tmp_path, ("d % (2 * groups) == 0", "d % (2 * group) == 0"))
    assert found == [
        ("specs/foundation/scale.yaml:20: signature.constraints[0].check: 'd % (2 * group) == 0': "
        "unknown name group (known: alpha, d, groups, n)")]
    found = scale_problems(tmp_path, ("d % (2 * groups) == 0", "x.shape[0] > 0"))
    assert found[0].startswith(
        "specs/foundation/scale.yaml:20: signature.constraints[0].check: 'x.shape[0] > 0': "
        "subscripts (x.shape[0]) is not allowed")


# --- tests and bench cases ----------------------------------------------------------------------


def test_every_case_gives_every_named_dimension(tmp_path):
    found = scale_problems(tmp_path, ('{dims: {"...": [3], n: 4, d: 8}}',
                                      '{dims: {"...": [3], d: 8, k: 2}}'))
    assert found == [
        ("specs/foundation/scale.yaml:29: tests.cases[0].dims.k: unknown dimension 'k' (known: "
        "'...', 'n', 'd')"),
        "specs/foundation/scale.yaml:29: tests.cases[0].dims: missing dimension 'n'",
    ]


def test_cases_respect_the_constraints_and_parameters(tmp_path):
    found = scale_problems(tmp_path, ("n: 2, d: 4}, params: {alpha: 0.5, groups: 2}",
                                      "n: 2, d: 6}, params: {alpha: 0.5, groups: 2, beta: 1}"))
    assert found == [
        ("specs/foundation/scale.yaml:30: tests.cases[1].params.beta: unknown parameter (known: "
        "alpha, groups)")]
    found = scale_problems(tmp_path, ("n: 2, d: 4}, params: {alpha: 0.5, groups: 2}",
                                      "n: 2, d: 6}, params: {alpha: 0.5, groups: 2}"))
    assert found == [
        ("specs/foundation/scale.yaml:30: tests.cases[1]: the case breaks the constraint "
        "'d % (2 * groups) == 0': d must split into 2 * groups halves")]


def test_random_dims_name_known_dimensions_in_order(tmp_path):
    found = scale_problems(tmp_path, ("random_dims: {n: [1, 8], d: [2, 16]}",
                                      "random_dims: {n: [8, 1], dd: [2, 16]}"))
    assert found == [
        ("specs/foundation/scale.yaml:33: tests.random_dims.n: the low end 8 is above the high "
        "end 1"),
        ("specs/foundation/scale.yaml:33: tests.random_dims.dd: unknown dimension 'dd' (did you "
        "mean 'd'? known: '...', 'n', 'd')"),
    ]


def test_invariants_read_known_names(tmp_path):
    found = scale_problems(tmp_path, ("np.all(np.isfinite(out))", "np.all(np.isfinite(result))"))
    assert found == [
        ("specs/foundation/scale.yaml:35: tests.invariants[0].check: unknown name result (an "
        "invariant reads the inputs, the params, out, np, module and importlib)")]


def test_bench_formulas_are_safe_expressions(tmp_path):
    found = scale_problems(tmp_path, ('flops: "rows * n * d / 2"', 'flops: "x.size * 2"'))
    assert found == [
        ("specs/foundation/scale.yaml:44: bench.flops: 'x.size * 2': attribute access (x.size) is "
        "not allowed in a spec expression (allowed: numbers, names, + - * / // % **, "
        "comparisons, and/or/not, 'a if c else b' and min()/max())")]
    found = scale_problems(tmp_path, ('flops: "rows * n * d / 2"', 'flops: "rows * n * e"'))
    assert found == [
        ("specs/foundation/scale.yaml:44: bench.flops: 'rows * n * e': unknown name e (known: "
        "alpha, d, groups, lead, n, rows)")]


def test_bench_formulas_evaluate_on_every_case(tmp_path):
    found = scale_problems(tmp_path, ('flops: "rows * n * d / 2"', 'flops: "rows * d / (n - 2)"'))
    assert found == [
        ("specs/foundation/scale.yaml:42: bench.cases[1]: flops: 'rows * d / (n - 2)': division "
        "by zero")]


def test_bench_case_labels_are_unique(tmp_path):
    found = scale_problems(tmp_path, ("{name: small, dims:", "{name: 64x16x256, dims:"))
    assert found == [
        ("specs/foundation/scale.yaml:42: bench.cases[1]: the case label '64x16x256' is also "
        "bench.cases[0]'s: give the cases different sizes or names")]


# --- embedded Python and tunables ---------------------------------------------------------------


def test_a_syntax_error_in_the_reference_is_reported_at_its_own_line(tmp_path):
    found = scale_problems(tmp_path, ("return x[..., ::2] * alpha\ntests:",
                                      "return (x[..., ::2] * alpha\ntests:"))
    assert found == [
        ("specs/foundation/scale.yaml:26: reference: Python syntax error on line 5 of the source: "
        "'(' was never closed")]


def test_sources_define_their_function(tmp_path):
    found = scale_problems(tmp_path, ("def _compute(", "def compute("),
                           ("def torch_reference(", "def torch_ref("))
    assert found == [
        ("specs/foundation/scale.yaml:8: kernel.params.source: the source must define a function "
        "_compute(...) at its top level"),
        ("specs/foundation/scale.yaml:36: tests.torch: the source must define a function "
        "torch_reference(...) at its top level"),
    ]


def test_numba_flag_tunables_are_booleans(tmp_path):
    found = scale_problems(tmp_path, ("parallel: {choices: [true, false], default: true}",
                                      "parallel: {choices: [1, 0], default: 1}"))
    assert found == [
        ("specs/foundation/scale.yaml:46: tunables.parallel: expected a list of booleans as "
        "choices (it becomes numba's parallel= flag), got [1, 0]")]


def test_a_tunable_default_must_be_a_choice(tmp_path):
    found = scale_problems(tmp_path, ("block: {choices: [8, 16], default: 8}",
                                      "block: {choices: [8, 16], default: 32}"))
    assert found == [
        ("specs/foundation/scale.yaml:47: tunables.block: default 32 is not one of the choices "
        "[8, 16]")]


def test_tunable_constraints_are_expressions_over_the_tunables_that_the_defaults_satisfy(
        tmp_path):
    block = "block: {choices: [8, 16], default: 8}"
    found = scale_problems(tmp_path, (block, block + """
tunable_constraints:
  - {check: "block * width <= 64", message: "a tile fits"}
  - {check: "block >= 16", message: "at least 16 lanes"}
  - {check: "block <= 16", message: "no more than 16"}"""))
    assert found == [
        ("specs/foundation/scale.yaml:49: tunable_constraints[0].check: 'block * width <= 64': "
         "unknown name width (known: block, parallel)"),
        ("specs/foundation/scale.yaml:50: tunable_constraints[1].check: the defaults break it "
         "(at least 16 lanes): block=8")]


def test_tests_without_a_signature(tmp_path):
    workspace = make_workspace(tmp_path, {"foundation/alpha.yaml": planned("alpha") + dedent(
        """\
        tests:
          cases: [{dims: {n: 1}}]
          tolerance: {float32: {rtol: 0, atol: 0}}
        """)})
    assert problems(workspace) == [
        ("specs/foundation/alpha.yaml:5: tests: tests need a signature to say what the dimensions "
        "and parameters are")]


def test_zero_sizes_need_an_input_that_allows_empty_arrays(tmp_path):
    zero_case = ('{dims: {"...": [3], n: 4, d: 8}}', '{dims: {"...": [0], n: 4, d: 8}}')
    found = scale_problems(tmp_path, zero_case)
    assert found == [
        ("specs/foundation/scale.yaml:29: tests.cases[0].dims['...']: leading sizes must be at "
         "least 1 (set allow_empty on an input with this dimension to test empty arrays), got "
         "[0]")]
    text = scale_with(zero_case,
                      ('shape: ["...", n, d]}', 'shape: ["...", n, d], allow_empty: true}'),
                      ("random_dims: {n: [1, 8]", 'random_dims: {"...": [0, 3], n: [0, 8]'))
    workspace = make_workspace(tmp_path / "allowed", {"foundation/scale.yaml": text})
    assert load_specs(workspace).get("scale").spec.signature.inputs[0].allow_empty


# --- optional inputs, derived input sizes, generators, several outputs --------------------------


def test_optional_inputs_come_last_are_sized_by_required_ones_and_only_they_are_keywords(
        tmp_path):
    found = scale_problems(
        tmp_path,
        ('    - {name: x, dtype: float32, shape: ["...", n, d]}',
         ('    - {name: gain, dtype: float32, shape: [g], optional: true}\n'
          '    - {name: x, dtype: float32, shape: ["...", n, d], keyword: true}')),
        ("    - {name: idx, dtype: int32, shape: [n], range: [0, 100]}",
         ("    - {name: idx, dtype: int32, shape: [n], range: [0, 100]}\n"
          '    - {name: rows_mask, dtype: bool, shape: ["...", n], optional: true}')))
    assert found == [
        ("specs/foundation/scale.yaml:13: signature.inputs[0].shape[0]: the dimension 'g' of an "
         "optional input must be bound by a required input before it (None tells nothing about "
         "its size)"),
        ("specs/foundation/scale.yaml:14: signature.inputs[1].keyword: only an optional input "
         "can be keyword-only (give it optional: true, or drop keyword)"),
        ("specs/foundation/scale.yaml:14: signature.inputs[1].optional: a required input cannot "
         "follow an optional positional one: put the required inputs first"),
        ("specs/foundation/scale.yaml:15: signature.inputs[2].optional: a required input cannot "
         "follow an optional positional one: put the required inputs first"),
        ("specs/foundation/scale.yaml:16: signature.inputs[3].shape[0]: an optional input cannot "
         "have leading '...' dimensions: give it named ones"),
    ]


def test_a_derived_input_size_reads_only_earlier_dimensions(tmp_path):
    found = scale_problems(
        tmp_path, ("shape: [n], range: [0, 100]}", 'shape: ["(n + m) // 2"], range: [0, 100]}'))
    assert found == [
        ("specs/foundation/scale.yaml:14: signature.inputs[1].shape[0]: the input dimension "
         "'(n + m) // 2' reads 'm', which no earlier input binds (an input dimension is a name, "
         "a size, '...' or an expression over the dimensions of the inputs before it: n, d)")]


def test_with_inputs_names_optional_inputs_and_generators_take_no_default(tmp_path):
    found = scale_problems(
        tmp_path,
        ("    - {dims: {\"...\": [3], n: 4, d: 8}}",
         "    - {dims: {\"...\": [3], n: 4, d: 8}, with_inputs: [idx]}"),
        ("    - {name: groups, type: int, default: 1, min: 1}",
         ("    - {name: groups, type: int, default: 1, min: 1}\n"
          "    - {name: rng, type: generator, default: 3}")))
    assert found == [
        ("specs/foundation/scale.yaml:19: signature.params[2].default: a generator parameter "
         "takes no default: it is None (fresh entropy), a seed or a numpy.random.Generator"),
        ("specs/foundation/scale.yaml:19: signature.params[2].optional: a generator parameter is "
         "optional (None: fresh entropy); add optional: true"),
        ("specs/foundation/scale.yaml:30: tests.cases[0].with_inputs[0]: 'idx' is not an "
         "optional input (optional inputs: none)"),
    ]


def test_a_baseline_defines_baseline_and_is_not_named_like_a_contender(tmp_path):
    found = scale_problems(tmp_path, ('  flops: "rows * n * d / 2"\n', (
        '  flops: "rows * n * d / 2"\n'
        '  baselines:\n'
        '    torch: "def baseline(x, idx):\\n    return x"\n'
        '    halves: "def half(x, idx):\\n    return x"\n')))
    assert found == [
        ("specs/foundation/scale.yaml:46: bench.baselines.torch: 'torch' is the name of a "
         "contender the benchmark always has; name the baseline after what it does"),
        ("specs/foundation/scale.yaml:47: bench.baselines.halves: the source must define a "
         "function baseline(...) at its top level"),
    ]


def test_output_and_outputs_are_exclusive_and_every_output_is_checked(tmp_path):
    both = scale_problems(tmp_path / "both", (
        '  output: {name: out, dtype: float32, shape: ["...", n, "d // 2"]}',
        ('  output: {name: out, dtype: float32, shape: ["...", n, "d // 2"]}\n'
         '  outputs: [{name: a, shape: [n]}, {name: b, shape: [n]}]')))
    assert len(both) == 1 and "give either output" in both[0]
    unbound = scale_problems(tmp_path / "unbound", (
        '  output: {name: out, dtype: float32, shape: ["...", n, "d // 2"]}',
        '  outputs: [{name: out, shape: ["...", n, "d // 2"]}, {name: total, shape: [q]}]'))
    assert unbound == [
        ("specs/foundation/scale.yaml:15: signature.outputs[1].shape[0]: the output dimension "
         "'q' is not bound by an input dimension or an int parameter (known: n, d, groups)")]


def test_an_or_shape_has_another_rank_and_only_dimensions_bound_before(tmp_path):
    found = scale_problems(
        tmp_path,
        ("    - {name: idx, dtype: int32, shape: [n], range: [0, 100]}",
         ("    - {name: idx, dtype: int32, shape: [n], range: [0, 100], or_shape: [n, m]}\n"
          "    - {name: gain, dtype: float32, shape: [n, d], or_shape: [d, n]}")),
        ('  output: {name: out, dtype: float32, shape: ["...", n, "d // 2"]}',
         '  output: {name: out, dtype: float32, shape: ["...", n, "d // 2"], or_shape: [n]}'))
    assert found == [
        ("specs/foundation/scale.yaml:14: signature.inputs[1].or_shape: the dimension 'm' of an "
         "input with an or_shape must be a name bound by an input before it"),
        ("specs/foundation/scale.yaml:15: signature.inputs[2].or_shape: expected another number "
         "of dimensions than the shape's 2 (a call tells the two apart by it)"),
        ("specs/foundation/scale.yaml:16: signature.output.or_shape: or_shape describes inputs, "
         "not outputs"),
    ]


def test_a_state_starts_from_an_optional_keyword_input_and_is_asked_for_by_a_flag(tmp_path):
    found = scale_problems(
        tmp_path,
        ("    - {name: groups, type: int, default: 1, min: 1}",
         ("    - {name: groups, type: int, default: 1, min: 1}\n"
          "    - {name: keep, type: bool, default: true}")),
        ("  constraints:", "  state: {name: last, input: idx, flag: keep}\n  constraints:"))
    assert found == [
        ("specs/foundation/scale.yaml:20: signature.state.input: expected the name of an "
         "optional keyword input (the state a call starts from), got 'idx'"),
        ("specs/foundation/scale.yaml:20: signature.state.flag: expected the name of a bool "
         "parameter with default false (asks for the final state), got 'keep'"),
    ]


def test_a_composition_names_an_engine_model_and_excludes_a_kernel(tmp_path):
    workspace = make_workspace(tmp_path / "unknown", {
        "inference/cache.yaml": planned("cache", tier="inference") + "composition: Cache\n"})
    [problem] = problems(workspace)
    assert problem.startswith("specs/inference/cache.yaml:5: composition: 'Cache' is not a model "
                              "of koschei.engine (its models: Decoder, DecoderConfig, KVCache")
    both = scale_problems(tmp_path / "both", ("tier: foundation\n",
                                              "tier: foundation\ncomposition: Decoder\n"))
    assert len(both) == 1 and "a kernel or a composition, not both" in both[0]


def test_provided_by_names_a_required_spec_with_code_of_its_own(tmp_path):
    def provided(name: str, provider: str, requires: tuple[str, ...]) -> str:
        return (planned(name, requires=requires)
                + f"provided_by: {{spec: {provider}, how: \"a parameter of {provider}\"}}\n")

    workspace = make_workspace(tmp_path / "good", {
        "foundation/scale.yaml": SCALE,
        "foundation/windowed.yaml": provided("windowed", "scale", ("scale",))})
    assert load_specs(workspace)["windowed"].status == "provided"

    assert problems(make_workspace(tmp_path / "planned", {
        "foundation/idea.yaml": planned("idea"),
        "foundation/windowed.yaml": provided("windowed", "idea", ("idea",))})) == [
        ("specs/foundation/windowed.yaml:5: provided_by.spec: idea is planned: only a spec with "
        "a kernel or a composition of its own provides another (specs/foundation/idea.yaml)")]
    assert problems(make_workspace(tmp_path / "missing", {
        "foundation/scale.yaml": SCALE,
        "foundation/windowed.yaml": provided("windowed", "scael", ())})) == [
        ("specs/foundation/windowed.yaml:5: provided_by.spec: 'scael' is not among the "
        "requirements: add it to requires (the node is built on what provides it)"),
        ("specs/foundation/windowed.yaml:5: provided_by.spec: no spec is named 'scael' "
        "(did you mean scale?)")]
    assert problems(make_workspace(tmp_path / "itself", {
        "foundation/windowed.yaml": provided("windowed", "windowed", ())})) == [
        "specs/foundation/windowed.yaml:5: provided_by.spec: a spec cannot be provided by itself"]
    chained = problems(make_workspace(tmp_path / "chained", {
        "foundation/scale.yaml": SCALE,
        "foundation/windowed.yaml": provided("windowed", "scale", ("scale",)),
        "foundation/again.yaml": provided("again", "windowed", ("windowed",))}))
    assert chained == [("specs/foundation/again.yaml:5: provided_by.spec: windowed is provided: "
                       "only a spec with a kernel or a composition of its own provides another "
                       "(specs/foundation/windowed.yaml)")]
    both = scale_problems(tmp_path / "both", (
        "tier: foundation\n", "tier: foundation\nprovided_by: {spec: scale, how: itself}\n"))
    assert len(both) == 1 and "no kernel or composition of its own" in both[0]


def test_a_claim_measure_names_known_entries_for_its_metric(tmp_path):
    def with_claim(claim: str) -> str:
        return planned("idea") + f"claims:\n  - {claim}\n"

    good = make_workspace(tmp_path / "good", {"foundation/idea.yaml": with_claim(
        '{metric: memory, value: -67, unit: "%", baseline: MHA, source: s, '
        'measure: {kind: kv_cache, this: gqa, baseline: mha}}')})
    assert load_specs(good)["idea"].spec.claims[0].measure.kind == "kv_cache"

    assert problems(make_workspace(tmp_path / "unknown", {"foundation/idea.yaml": with_claim(
        '{metric: memory, value: 4, baseline: Q4, source: s, '
        'measure: {kind: weights, this: ternary_packd, baseline: q4_0}}')})) == [
        ("specs/foundation/idea.yaml:6: claims[0].measure.this: unknown weights entry "
        "'ternary_packd' (did you mean 'ternary_packed'? known: fp32, fp16, bf16, int8_per_row, "
        "q8_0, q4_0, q4_k, int4_g128, tq2_0, tq1_0, ternary_packed, binary_packed)")]
    wrong_metric = problems(make_workspace(tmp_path / "metric", {"foundation/idea.yaml": with_claim(
        '{metric: speedup, value: 3, baseline: MHA, source: s, '
        'measure: {kind: kv_cache, this: gqa, baseline: mha}}')}))
    assert wrong_metric == [("specs/foundation/idea.yaml:6: claims[0].measure.kind: a kv_cache "
                            "measure checks memory or compression claims, not speedup")]


# A state of two arrays on the SCALE fixture: two optional keyword inputs and the flag.
STATE_INPUTS = ("    - {name: idx, dtype: int32, shape: [n], range: [0, 100]}", (
    "    - {name: idx, dtype: int32, shape: [n], range: [0, 100]}\n"
    "    - {name: s0, dtype: float32, shape: [n], optional: true, keyword: true}\n"
    "    - {name: s1, dtype: float32, shape: [n, d], optional: true, keyword: true}"))
STATE_FLAGS = ("    - {name: groups, type: int, default: 1, min: 1}", (
    "    - {name: groups, type: int, default: 1, min: 1}\n"
    "    - {name: keep, type: bool, default: false}\n"
    "    - {name: other, type: bool, default: false}"))


def with_state(state: str) -> tuple[str, str]:
    return ("  constraints:", f"  state:\n{state}  constraints:")


def with_state_line(state: str) -> tuple[str, str]:
    return ("  constraints:", f"  state: {state}\n  constraints:")


def test_a_state_of_several_arrays_is_a_list_of_entries_in_order(tmp_path):
    workspace = make_workspace(tmp_path, {"foundation/scale.yaml": scale_with(
        STATE_INPUTS, STATE_FLAGS, with_state(
            "    - {name: last1, input: s1, flag: keep}\n"
            "    - {name: last0, input: s0, flag: keep, doc: the first}\n"))})
    signature = load_specs(workspace)["scale"].spec.signature
    assert [state.name for state in signature.states] == ["last1", "last0"]
    assert signature.state_flag == "keep"
    assert [(result.name, result.shape, result.doc) for result in signature.state_results] == [
        ("last1", ["n", "d"], ""), ("last0", ["n"], "the first")]


def test_one_state_entry_is_a_list_of_one_and_no_state_an_empty_one(tmp_path):
    one = make_workspace(tmp_path / "one", {"foundation/scale.yaml": scale_with(
        STATE_INPUTS, STATE_FLAGS, with_state_line("{name: last0, input: s0, flag: keep}"))})
    signature = load_specs(one)["scale"].spec.signature
    assert [state.name for state in signature.states] == ["last0"]
    assert [result.name for result in signature.state_results] == ["last0"]
    none = load_specs(make_workspace(tmp_path / "none", {"foundation/scale.yaml": SCALE}))
    signature = none["scale"].spec.signature
    assert signature.states == [] and signature.state_flag is None
    assert signature.state_results == []


def test_the_arrays_of_a_state_share_one_flag_and_each_has_an_input_and_a_name(tmp_path):
    found = scale_problems(tmp_path, STATE_INPUTS, STATE_FLAGS, with_state(
        "    - {name: last0, input: s0, flag: keep}\n"
        "    - {name: last1, input: s1, flag: other}\n"
        "    - {name: last0, input: s0, flag: keep}\n"
        "    - {name: last3, input: idx, flag: keep}\n"))
    assert found == [
        ("specs/foundation/scale.yaml:25: signature.state[1].flag: expected 'keep', the flag of "
         "signature.state[0]: one flag asks for the whole state, got 'other'"),
        ("specs/foundation/scale.yaml:26: signature.state[2].name: the name 'last0' is already "
         "used by signature.state[0].name (inputs, params and the output share the function's "
         "argument names)"),
        ("specs/foundation/scale.yaml:26: signature.state[2].input: 's0' already starts "
         "signature.state[0]: each array of the state starts from an input of its own"),
        ("specs/foundation/scale.yaml:27: signature.state[3].input: expected the name of an "
         "optional keyword input (the state a call starts from), got 'idx'"),
    ]


def test_the_flag_of_a_state_of_several_arrays_is_checked_once(tmp_path):
    found = scale_problems(tmp_path, STATE_INPUTS, STATE_FLAGS, with_state(
        "    - {name: last0, input: s0, flag: groups}\n"
        "    - {name: last1, input: s1, flag: groups}\n"))
    assert found == [
        ("specs/foundation/scale.yaml:24: signature.state[0].flag: expected the name of a bool "
         "parameter with default false (asks for the final state), got 'groups'")]


def test_a_state_is_one_entry_or_a_list_of_at_least_one_and_names_its_fields(tmp_path):
    empty = scale_problems(tmp_path / "empty", with_state_line("[]"))
    assert empty == [
        "specs/foundation/scale.yaml:19: signature.state: expected at least 1 item, got 0"]
    unknown = scale_problems(tmp_path / "unknown", STATE_INPUTS, STATE_FLAGS, with_state(
        "    - {name: last0, input: s0, flag: keep, shape: [n]}\n"))
    assert unknown == [
        ("specs/foundation/scale.yaml:24: signature.state[0].shape: unknown field (allowed: "
         "name, input, flag, doc)")]
    single = scale_problems(tmp_path / "single", STATE_INPUTS, STATE_FLAGS,
                            with_state_line("{name: last0, input: s0, flaag: keep}"))
    assert single == [
        "specs/foundation/scale.yaml:23: signature.state.flag: required field is missing",
        ("specs/foundation/scale.yaml:23: signature.state.flaag: unknown field (did you mean "
         "flag? allowed: name, input, flag, doc)")]
