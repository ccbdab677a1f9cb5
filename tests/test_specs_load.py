"""Loading spec files: YAML with line numbers, schema errors mapped back to their lines.

Every problem reads ``path:line: field: message``; these tests pin the exact line and field.
"""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

from koschei.errors import SpecError
from koschei.specs import LoadedSpec, load_spec_file, load_spec_text, load_specs
from koschei.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent

PLANNED = """\
name: {name}
title: A planned technique
tier: {tier}
"""


def make_workspace(root: Path, files: dict[str, str]) -> Workspace:
    """A workspace whose ``specs/`` holds ``files`` (relative path -> text, dedented)."""
    (root / "specs").mkdir(parents=True, exist_ok=True)
    (root / "koschei.toml").write_text("")
    for relpath, text in files.items():
        path = root / "specs" / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return Workspace(root.resolve())


def problems(workspace: Workspace) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_specs(workspace)
    return [str(issue) for issue in caught.value.issues]


def test_a_valid_file_loads_with_its_hash_path_and_lines(tmp_path):
    text = PLANNED.format(name="alpha", tier="foundation") + textwrap.dedent("""\
        aliases: [v1_alpha]
        paper:
          title: "A paper: with a colon"
          arxiv: "2205.14135"
          year: 2022
        claims:
          - metric: speedup
            value: 1.5
            baseline: numpy
            source: "seed: alpha 1.5x"
        """)
    workspace = make_workspace(tmp_path, {"foundation/alpha.yaml": text})
    loaded = load_spec_file(workspace.specs_dir / "foundation" / "alpha.yaml", workspace)
    assert isinstance(loaded, LoadedSpec)
    assert loaded.relpath == "specs/foundation/alpha.yaml"
    assert loaded.sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert loaded.spec.paper is not None and loaded.spec.paper.arxiv == "2205.14135"
    assert loaded.status == "planned"
    assert loaded.line_of(("name",)) == 1
    assert loaded.line_of(("paper", "arxiv")) == 7
    assert loaded.line_of(("claims", 0)) == 10
    assert loaded.line_of(("claims", 0, "source")) == 13
    # a path the file does not spell out falls back to its nearest ancestor
    assert loaded.line_of(("claims", 0, "case")) == 10


def test_bad_yaml_is_reported_at_the_line_yaml_points_to(tmp_path):
    workspace = make_workspace(tmp_path, {"foundation/alpha.yaml": """\
        name: alpha
        title: Alpha
        tier: foundation
        aliases: [a, b
        summary: x
        """})
    assert problems(workspace) == [
        ("specs/foundation/alpha.yaml:5: invalid YAML: did not find expected ',' or ']' (while "
        "parsing a flow sequence); it started on line 4")]


def test_bad_indentation_is_reported_with_its_line(tmp_path):
    workspace = make_workspace(tmp_path, {"foundation/alpha.yaml": """\
        name: alpha
        title: Alpha
          tier: foundation
        """})
    [problem] = problems(workspace)
    assert problem.startswith("specs/foundation/alpha.yaml:3: invalid YAML: ")


def test_duplicate_keys_are_rejected_at_the_second_one(tmp_path):
    workspace = make_workspace(tmp_path, {"foundation/alpha.yaml": """\
        name: alpha
        title: Alpha
        tier: foundation
        title: Again
        """})
    assert problems(workspace) == [
        "specs/foundation/alpha.yaml:4: title: duplicate key (first given on line 2)"]


def test_non_string_keys_anchors_and_tags_are_rejected(tmp_path):
    workspace = make_workspace(tmp_path, {
        "foundation/alpha.yaml": """\
            name: alpha
            title: Alpha
            tier: foundation
            claims:
              - 1: one
            """,
        "foundation/beta.yaml": """\
            name: beta
            title: &t Beta
            tier: foundation
            summary: *t
            """,
        "foundation/gamma.yaml": """\
            name: gamma
            title: !!python/name:os.system Gamma
            tier: foundation
            """,
    })
    found = problems(workspace)
    assert found == [
        ("specs/foundation/alpha.yaml:5: claims[0]: keys must be strings, got 1: put the key in "
        "quotes"),
        "specs/foundation/beta.yaml:2: YAML anchors (&t) are not supported: write the value out",
        ("specs/foundation/beta.yaml:4: summary: YAML aliases (*name) are not supported: write "
        "the value out"),
        ("specs/foundation/gamma.yaml:2: title: unsupported YAML tag "
        "tag:yaml.org,2002:python/name:os.system: write plain values"),
    ]


def test_empty_file_and_a_list_at_the_top(tmp_path):
    workspace = make_workspace(tmp_path, {
        "foundation/alpha.yaml": "",
        "foundation/beta.yaml": "- name: beta\n",
    })
    assert problems(workspace) == [
        ("specs/foundation/alpha.yaml:1: the file is empty: a spec needs at least name, title and "
        "tier"),
        ("specs/foundation/beta.yaml:1: expected a mapping of fields (name: ..., title: ...), got "
        "a list"),
    ]


def test_unknown_field_lists_the_allowed_ones_and_suggests_the_closest(tmp_path):
    workspace = make_workspace(tmp_path, {"foundation/alpha.yaml": """\
        name: alpha
        title: Alpha
        tier: foundation
        requries: [beta]
        """})
    [problem] = problems(workspace)
    assert problem.startswith("specs/foundation/alpha.yaml:4: requries: unknown field (did you "
                              "mean requires? allowed: name, title, tier, summary, aliases, ")


def test_unknown_field_inside_a_nested_model(tmp_path):
    workspace = make_workspace(tmp_path, {"foundation/alpha.yaml": """\
        name: alpha
        title: Alpha
        tier: foundation
        paper:
          title: P
          yaer: 2020
        """})
    assert problems(workspace) == [
        ("specs/foundation/alpha.yaml:6: paper.yaer: unknown field (did you mean year? allowed: "
        "title, authors, arxiv, year, url)")]


def test_wrong_types_read_well(tmp_path):
    workspace = make_workspace(tmp_path, {"foundation/alpha.yaml": """\
        name: alpha
        title: Alpha
        tier: foundation
        paper: {title: P, year: abc}
        claims:
          - metric: speed
            value: fast
            baseline: numpy
            source: s
        """})
    assert problems(workspace) == [
        "specs/foundation/alpha.yaml:4: paper.year: expected an integer, got 'abc'",
        ("specs/foundation/alpha.yaml:6: claims[0].metric: expected one of 'speedup', 'memory', "
        "'compression', 'accuracy', 'latency' or 'complexity', got 'speed'"),
        "specs/foundation/alpha.yaml:7: claims[0].value: expected a number, got 'fast'",
    ]


def test_union_branches_are_merged_into_one_message(tmp_path):
    workspace = make_workspace(tmp_path, {"foundation/alpha.yaml": """\
        name: alpha
        title: Alpha
        tier: foundation
        signature:
          inputs:
            - name: x
              shape:
                - n
                - 1.5
          output: {name: out, shape: [n]}
        """})
    assert problems(workspace) == [
        ("specs/foundation/alpha.yaml:9: signature.inputs[0].shape[1]: expected an integer or a "
        "string, got 1.5")]


def test_a_missing_required_field_points_at_its_parent(tmp_path):
    workspace = make_workspace(tmp_path, {"foundation/alpha.yaml": """\
        name: alpha
        tier: foundation
        paper:
          year: 2020
        """})
    assert problems(workspace) == [
        "specs/foundation/alpha.yaml:1: title: required field is missing",
        "specs/foundation/alpha.yaml:3: paper.title: required field is missing",
    ]


def test_a_name_that_is_a_path_is_rejected(tmp_path):
    workspace = make_workspace(tmp_path, {"foundation/alpha.yaml": """\
        title: Alpha
        tier: foundation
        name: ../x
        """})
    [problem] = problems(workspace)
    assert problem.startswith("specs/foundation/alpha.yaml:3: name: '../x' is not a valid name")


def test_a_bad_dictionary_key_is_named(tmp_path):
    workspace = make_workspace(tmp_path, {"foundation/alpha.yaml": """\
        name: alpha
        title: Alpha
        tier: foundation
        tunables:
          Block-N: {choices: [8, 16], default: 8}
        """})
    [problem] = problems(workspace)
    assert problem.startswith("specs/foundation/alpha.yaml:5: tunables['Block-N']: invalid key: "
                              "'Block-N' is not a valid name")


def test_a_string_field_given_a_number_suggests_quotes(tmp_path):
    workspace = make_workspace(tmp_path, {"foundation/alpha.yaml": """\
        name: alpha
        title: 2024
        tier: foundation
        """})
    assert problems(workspace) == [
        ("specs/foundation/alpha.yaml:2: title: expected a string, got 2024 (put it in quotes to "
        "keep it as text)")]


def test_every_problem_of_every_file_is_reported(tmp_path):
    workspace = make_workspace(tmp_path, {
        "foundation/alpha.yaml": "name: alpha\ntitle: A\ntier: foundation\nbogus: 1\n",
        "ffn/beta.yaml": "name: beta\ntitle: [B\n",
        "ffn/gamma.yaml": PLANNED.format(name="gamma", tier="ffn"),
    })
    found = problems(workspace)
    assert [problem.split(":")[0:2] for problem in found] == [
        ["specs/ffn/beta.yaml", "3"], ["specs/foundation/alpha.yaml", "4"]]
    with pytest.raises(SpecError) as caught:
        load_specs(workspace)
    assert str(caught.value).startswith("2 spec problems:\n  specs/ffn/beta.yaml:3: ")


def test_yaml_12_floats_and_plain_values(tmp_path):
    workspace = make_workspace(tmp_path, {"foundation/alpha.yaml": """\
        name: alpha
        title: Alpha
        tier: foundation
        claims:
          - {metric: speedup, value: 1e-6, baseline: numpy, source: s, case: 1e3x}
          - {metric: speedup, value: 2.5E+3, baseline: "1e-6", source: s}
        """})
    spec = load_specs(workspace).get("alpha").spec
    assert spec.claims[0].value == pytest.approx(1e-6)
    assert spec.claims[0].case == "1e3x"
    assert spec.claims[1].value == 2500.0
    assert spec.claims[1].baseline == "1e-6"


def test_misplaced_and_misnamed_files(tmp_path):
    workspace = make_workspace(tmp_path, {
        "alpha.yaml": PLANNED.format(name="alpha", tier="foundation"),
        "foundation/deep/beta.yaml": PLANNED.format(name="beta", tier="foundation"),
        "foundation/gamma.yml": PLANNED.format(name="gamma", tier="foundation"),
        "foundation/README.md": "not a spec",
        "foundation/.delta.yaml.swp": "not a spec either",
    })
    assert problems(workspace) == [
        "specs/alpha.yaml: spec files live in a tier folder: specs/<tier>/<name>.yaml",
        ("specs/foundation/deep/beta.yaml: spec files live in a tier folder: "
        "specs/<tier>/<name>.yaml"),
        "specs/foundation/gamma.yml: spec files end in .yaml: rename it to gamma.yaml",
    ]


def test_load_spec_file_raises_for_one_file(tmp_path):
    workspace = make_workspace(tmp_path, {"foundation/alpha.yaml": "name: alpha\ntier: x\n"})
    with pytest.raises(SpecError) as caught:
        load_spec_file(workspace.specs_dir / "foundation" / "alpha.yaml", workspace)
    assert [str(issue) for issue in caught.value.issues] == [
        "specs/foundation/alpha.yaml:1: title: required field is missing"]
    assert caught.value.exit_code == 2


def test_a_spec_from_its_text_loads_as_its_file_does():
    """What a candidate's evaluation on another machine relies on: the same spec, the same
    sha256, and the same problems named after the same path."""
    workspace = Workspace(REPO)
    path = workspace.specs_dir / "foundation" / "rmsnorm.yaml"
    from_file = load_spec_file(path, workspace)
    from_text = load_spec_text(path.read_bytes().decode("utf-8"), from_file.relpath)
    assert from_text.spec == from_file.spec and from_text.sha256 == from_file.sha256
    assert from_text.relpath == "specs/foundation/rmsnorm.yaml"
    with pytest.raises(SpecError) as caught:
        load_spec_text("name: alpha\ntier: x\n", "specs/foundation/alpha.yaml")
    assert [str(issue) for issue in caught.value.issues] == [
        "specs/foundation/alpha.yaml:1: title: required field is missing"]
    with pytest.raises(SpecError, match="the file is in specs/model/"):
        load_spec_text(path.read_text(encoding="utf-8"), "specs/model/rmsnorm.yaml")


def test_the_repository_specs_load_without_problems():
    spec_set = load_specs(Workspace(REPO))
    assert len(spec_set) >= 80
    names = spec_set.names()
    assert len(names) == len(set(names))
    for loaded in spec_set:
        assert loaded.relpath == f"specs/{loaded.tier}/{loaded.name}.yaml"


def test_every_repository_spec_file_is_valid_on_its_own():
    workspace = Workspace(REPO)
    paths = sorted(workspace.specs_dir.glob("*/*.yaml"))
    assert len(paths) >= 80
    reserved_aliases = {"llm_rmsnorm", "v6732_rope_embeddings", "llm_ffn_swiglu",
                        "v6733_group_query_attention", "llm_attention_gqa", "qml_attention"}
    owners = {"rmsnorm", "layernorm", "softmax", "rope", "swiglu", "attention"}
    for path in paths:
        loaded = load_spec_file(path, workspace)
        spec = loaded.spec
        assert spec.title and spec.summary.strip(), loaded.relpath
        if spec.name not in owners:
            assert not reserved_aliases & set(spec.aliases), loaded.relpath
        if spec.status == "planned":
            # claims quote the seed documents they come from
            assert all(claim.source.startswith("seed 00") for claim in spec.claims), loaded.relpath


def test_the_repository_specs_carry_the_seed_module_ids_and_their_providers():
    spec_set = load_specs(Workspace(REPO))
    for seed_id, node in (("v6704_golden_tokenizer", "bpe_tokenizer"),
                          ("v6704_golden", "bpe_tokenizer"),
                          ("v6705_trinity_inference", "bitnet_linear"),
                          ("v6723_quantization", "int8_linear"),
                          ("v6730_matryoshka", "matryoshka_embeddings"),
                          ("v6731_flash", "flash_attention"),
                          ("v6732_rope", "rope"),
                          ("v6733_gqa", "attention"),
                          ("v6734_sliding", "sliding_window_attention"),
                          ("v6735_alibi", "alibi"),
                          ("v6760_igla_core", "gla"),
                          ("qml_igla_core", "gla"),
                          ("v6742_state_space_model", "selective_scan"),
                          ("v6768_multiscale_retention", "multiscale_retention"),
                          # the seed's iGLA layer: the node that does each module's job
                          ("v6761_rwkv_linear", "rwkv6"),
                          ("v6762_retnet", "multiscale_retention"),
                          ("v6763_hyena_operator", "long_conv"),
                          ("v6764_hgrn", "hgrn2"),
                          ("v6765_xlstm", "mlstm"),
                          ("v6766_griffin", "rg_lru")):
        assert spec_set.resolve(seed_id) == node, seed_id
    provided = {loaded.name: loaded.spec.provided_by.spec for loaded in spec_set
                if loaded.status == "provided"}
    assert provided == {"sliding_window_attention": "attention", "alibi": "attention",
                        "multi_query_attention": "attention", "flash_attention": "attention",
                        "flash_decoding": "attention", "kv_cache_compression": "kv_cache",
                        "autoregressive_generation": "decoder_lm", "bf16": "bf16_linear",
                        "fp16": "fp16_linear", "multiscale_retention": "gla",
                        "linear_attention": "gla", "hgrn2": "gla"}


def test_the_specs_readme_names_the_seed_items_that_are_not_techniques():
    from koschei.phases.tech_tree import SEED_MODULES_OUTSIDE_THE_TREE

    text = (REPO / "specs" / "README.md").read_text(encoding="utf-8")
    for item in ("sacred formula", "φ² + 1/φ² = 3", "PHOENIX = 999", "Quantum superposition",
                 "AGI", "consciousness", "Trinity", "Implemented ✅"):
        assert item in text, item
    spec_set = load_specs(Workspace(REPO))
    for seed_id in SEED_MODULES_OUTSIDE_THE_TREE:
        assert f"`{seed_id}`" in text, seed_id
        assert seed_id not in spec_set, seed_id  # no node claims it
    # one line each, saying what it is and why it is no spec
    items = [line for line in text.splitlines() if line.startswith("- **")]
    assert len(items) >= 25
    assert all(":" in line.split("**", 2)[2] for line in items)
