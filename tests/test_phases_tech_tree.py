"""The tech_tree phase on a small graph of specs: order, dependents, counts, selection, headline
figures from a benchmark run, and the Mermaid / DOT / JSON exports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from koschei.errors import UsageError
from koschei.phases import tech_tree
from koschei.runs import RunRecord
from koschei.workspace import Workspace

IMPLEMENTED = """\
name: norm
title: Scale by two
tier: foundation
aliases: [seed_norm]
paper: {title: "Scaling Things", arxiv: "1234.56789", year: 2019}
kernel:
  family: custom
  params:
    source: |
      def _compute(x, out):
          np.multiply(x, np.float32(2.0), out=out)
signature:
  inputs:
    - {name: x, dtype: float32, shape: ["...", d]}
  output: {name: out, dtype: float32, shape: ["...", d]}
reference: |
  import numpy as np


  def reference(x):
      return (x * np.float32(2.0)).astype(np.float32)
tests:
  cases:
    - {dims: {"...": [4], d: 8}}
  tolerance:
    float32: {rtol: 1.0e-6, atol: 1.0e-6}
bench:
  cases:
    - {dims: {"...": [64], d: 256}}
    - {dims: {"...": [4096], d: 768}}
  bytes: "2 * 4 * rows * d"
  flops: "rows * d"
"""


def planned(name: str, tier: str, requires: list[str], title: str | None = None,
            aliases: list[str] | None = None) -> str:
    return (f"name: {name}\n"
            f"title: {json.dumps(title or name.replace('_', ' ').title())}\n"
            f"tier: {tier}\n"
            f"aliases: {json.dumps(aliases or [])}\n"
            f"requires: {json.dumps(requires)}\n"
            "claims:\n"
            "  - {metric: speedup, value: 2.0, baseline: norm, source: \"a paper\"}\n")


# name -> (tier, yaml)
SPECS = {
    "norm": ("foundation", IMPLEMENTED),
    "fast_norm": ("foundation", planned("fast_norm", "foundation", ["norm"],
                                        title='Fast "fused" norm', aliases=["v1_fast_norm"])),
    "attention": ("attention", planned("attention", "attention", ["norm"])),
    "fused_attention": ("attention", planned("fused_attention", "attention",
                                             ["attention", "fast_norm"])),
    "end": ("ffn", planned("end", "ffn", []) + "composition: Decoder\n"),  # an engine model
}
EDGES = {("norm", "fast_norm"), ("norm", "attention"), ("attention", "fused_attention"),
         ("fast_norm", "fused_attention")}


def make_workspace(root: Path) -> Workspace:
    root.mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'tiny-workspace'\n", encoding="utf-8")
    for name, (tier, text) in SPECS.items():
        folder = root / "specs" / tier
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.yaml").write_text(text, encoding="utf-8")
    return Workspace(root.resolve())


def write_benchmark(workspace: Workspace, cases: list[dict]) -> str:
    """A real run record with a benchmark result; its id."""
    record = RunRecord.create(workspace, "benchmark")
    record.save_phase("benchmark", {"threads": 2, "fingerprint": "f", "calibration": {},
                                    "cases": cases})
    return record.id


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path / "ws")


def test_nodes_come_in_topological_order_with_dependents_and_counts(workspace):
    result = tech_tree.run(workspace, tech_tree.Options())

    assert result.ok
    assert sorted(result.order) == sorted(SPECS)
    position = {name: index for index, name in enumerate(result.order)}
    for requirement, dependent in EDGES:
        assert position[requirement] < position[dependent]
    assert set(result.edges) == EDGES

    nodes = {node.name: node for node in result.nodes}
    assert nodes["norm"].status == "implemented" and nodes["fast_norm"].status == "planned"
    assert nodes["end"].status == "composed" and nodes["end"].composition == "Decoder"
    assert sorted(nodes["norm"].dependents) == ["attention", "fast_norm"]
    assert nodes["fused_attention"].requires == ["attention", "fast_norm"]
    assert nodes["fast_norm"].aliases == ["v1_fast_norm"]
    assert nodes["norm"].paper == "Scaling Things (2019), arXiv:1234.56789"
    assert nodes["norm"].relpath == "specs/foundation/norm.yaml"
    assert nodes["norm"].claims == 0 and nodes["end"].claims == 1
    assert nodes["norm"].headline is None and result.benchmark_run is None  # no runs yet

    assert result.tiers == ["foundation", "attention", "ffn"]  # the tree's own tier order
    assert result.counts["total"] == 5
    assert (result.counts["implemented"], result.counts["composed"],
            result.counts["planned"]) == (1, 1, 3)
    assert result.counts["provided"] == 0 and result.counts["done"] == 2
    assert result.counts["by_tier"]["foundation"] == {"implemented": 1, "composed": 0,
                                                      "provided": 0, "planned": 1}
    assert result.counts["by_tier"]["attention"] == {"implemented": 0, "composed": 0,
                                                     "provided": 0, "planned": 2}
    assert result.counts["by_tier"]["ffn"] == {"implemented": 0, "composed": 1, "provided": 0,
                                               "planned": 0}
    assert result.export is None  # the rich tree is drawn by the command line


def test_mermaid_has_every_node_and_edge(workspace):
    text = tech_tree.run(workspace, tech_tree.Options(format="mermaid")).export

    lines = [line.strip() for line in text.splitlines()]
    assert lines[0] == "flowchart LR"
    edges = {tuple(line.split(" --> ")) for line in lines if " --> " in line}
    expected = {(tech_tree.mermaid_id(a), tech_tree.mermaid_id(b)) for a, b in EDGES}
    assert edges == expected
    # one subgraph per tier, each closed, with ids that cannot clash with node ids
    assert lines.count("end") == 3
    assert 'subgraph tier_attention["attention"]' in lines
    # "end" is a Mermaid keyword: that node gets another id
    assert tech_tree.mermaid_id("end") != "end"
    assert any(line.startswith('end_["') for line in lines)
    # quotes inside labels are escaped, not closing the label early
    fast = next(line for line in lines if line.startswith('fast_norm["'))
    assert fast.count('"') == 2 and "#quot;fused#quot;" in fast
    assert "class norm implemented" in lines
    planned_line = next(line for line in lines if line.endswith(" planned"))
    assert set(planned_line.split()[1].split(",")) == {"fast_norm", "attention",
                                                       "fused_attention"}
    assert "class end_ composed" in lines


def test_dot_is_a_well_formed_digraph(workspace):
    text = tech_tree.run(workspace, tech_tree.Options(format="dot")).export

    assert text.startswith("digraph tech_tree {") and text.rstrip().endswith("}")
    assert text.count("{") == text.count("}")
    edges = set(re.findall(r'^\s*"(\w+)" -> "(\w+)";$', text, flags=re.MULTILINE))
    assert edges == EDGES
    for name in SPECS:
        assert re.search(rf'^\s*"{name}" \[label=', text, flags=re.MULTILINE)
    for tier in ("foundation", "attention", "ffn"):
        assert f'subgraph "cluster_{tier}" {{' in text
    # every quoted string is closed: the escaped quotes of a title do not end it
    assert 'Fast \\"fused\\" norm' in text
    unescaped = re.sub(r'\\.', "", text)
    assert unescaped.count('"') % 2 == 0


def test_json_export_round_trips(workspace):
    result = tech_tree.run(workspace, tech_tree.Options(format="json"))
    data = json.loads(result.export)

    assert data["order"] == result.order
    assert [node["name"] for node in data["nodes"]] == result.order
    assert {(edge["from"], edge["to"]) for edge in data["edges"]} == EDGES
    assert data["counts"] == result.counts
    node = next(node for node in data["nodes"] if node["name"] == "fast_norm")
    assert node["title"] == 'Fast "fused" norm' and node["requires"] == ["norm"]
    # and the result itself serializes
    assert json.loads(json.dumps(result.to_dict()))["order"] == result.order


def test_select_a_node_keeps_what_it_requires_and_what_requires_it(workspace):
    result = tech_tree.run(workspace, tech_tree.Options(select="fast_norm"))
    assert set(result.order) == {"norm", "fast_norm", "fused_attention"}
    nodes = {node.name: node for node in result.nodes}
    assert nodes["fused_attention"].requires == ["fast_norm"]  # edges leaving the selection go
    assert nodes["norm"].dependents == ["fast_norm"]
    assert result.counts["total"] == 3

    by_alias = tech_tree.run(workspace, tech_tree.Options(select="v1_fast_norm"))
    assert by_alias.order == result.order

    tier = tech_tree.run(workspace, tech_tree.Options(select="attention", format="mermaid"))
    # "attention" is both a spec and a tier: the spec wins (with its requirements and dependents)
    assert set(tier.order) == {"norm", "attention", "fused_attention"}
    ffn = tech_tree.run(workspace, tech_tree.Options(select="ffn"))
    assert ffn.order == ["end"] and ffn.tiers == ["ffn"]


def test_an_unknown_selection_is_a_usage_error_with_suggestions(workspace):
    with pytest.raises(UsageError) as error:
        tech_tree.run(workspace, tech_tree.Options(select="fast_nrom"))
    assert "fast_norm" in str(error.value)
    with pytest.raises(UsageError, match="--format"):
        tech_tree.run(workspace, tech_tree.Options(format="svg"))  # type: ignore[arg-type]


def test_headline_figures_come_from_the_latest_benchmark_run(workspace):
    small = {"spec": "norm", "case": "64x256", "verdict": "ok", "bytes": 131072,
             "speedup_vs_numpy": 9.0, "speedup_vs_torch": 9.0, "roofline_fraction": 0.9}
    large = {"spec": "norm", "case": "4096x768", "verdict": "ok", "bytes": 25165824,
             "speedup_vs_numpy": 4.0, "speedup_vs_torch": 2.5, "roofline_fraction": 0.4}
    write_benchmark(workspace, [{**large, "speedup_vs_torch": 1.1}, small])
    latest = write_benchmark(workspace, [small, large])

    result = tech_tree.run(workspace, tech_tree.Options(format="dot"))
    nodes = {node.name: node for node in result.nodes}
    assert nodes["norm"].headline == "×2.50 vs PyTorch · ×4.00 vs NumPy · 40% of roofline @ 4096x768"
    assert result.benchmark_run == latest
    assert nodes["fast_norm"].headline is None
    assert "×2.50 vs PyTorch" in result.export


def test_a_wrong_case_gives_no_headline():
    assert tech_tree.headline_for([{"case": "a", "verdict": "wrong", "speedup_vs_numpy": 3.0}]) \
        is None
    assert tech_tree.headline_for([{"case": "a", "verdict": "ok", "speedup_vs_numpy": 3.0}]) \
        == "×3.00 vs NumPy @ a"


def test_the_phase_never_imports_numba(workspace):
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from koschei.phases import tech_tree\n"
        "from koschei.workspace import Workspace\n"
        f"workspace = Workspace(Path({str(workspace.root)!r}))\n"
        "for form in ('tree', 'mermaid', 'dot', 'json'):\n"
        "    tech_tree.run(workspace, tech_tree.Options(format=form))\n"
        "print(','.join(m for m in ('numba', 'torch', 'llvmlite') if m in sys.modules) or 'none')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "none"


def test_a_provided_node_is_done_and_points_at_its_provider(workspace):
    folder = workspace.specs_dir / "foundation"
    (folder / "twice_norm.yaml").write_text(
        planned("twice_norm", "foundation", ["norm"], aliases=["v2_twice_norm"])
        + "provided_by: {spec: norm, how: \"norm(x) applied once\"}\n", encoding="utf-8")
    result = tech_tree.run(workspace, tech_tree.Options())
    nodes = {node.name: node for node in result.nodes}
    provided = nodes["twice_norm"]
    assert provided.status == "provided"
    assert (provided.provided_by, provided.provided_how) == ("norm", "norm(x) applied once")
    assert (result.counts["implemented"], result.counts["provided"],
            result.counts["planned"]) == (1, 1, 3)
    assert result.counts["done"] == 3  # implemented, composed and provided
    assert result.counts["by_tier"]["foundation"]["provided"] == 1
    assert "1 provided by another spec" in result.summary()

    mermaid = tech_tree.run(workspace, tech_tree.Options(format="mermaid")).export
    assert "  norm -->|provides| twice_norm" in mermaid.splitlines()
    assert "provided by norm" in mermaid and "class twice_norm provided" in mermaid
    dot = tech_tree.run(workspace, tech_tree.Options(format="dot")).export
    assert '"norm" -> "twice_norm" [label="provides"];' in dot
    assert "provided by norm: norm(x) applied once" in dot
    data = json.loads(tech_tree.run(workspace, tech_tree.Options(format="json")).export)
    node = next(node for node in data["nodes"] if node["name"] == "twice_norm")
    assert node["status"] == "provided" and node["provided_by"] == "norm"
    assert data["counts"]["provided"] == 1


def test_a_seed_module_of_the_toolchain_says_what_it_is(workspace):
    with pytest.raises(UsageError) as error:
        tech_tree.run(workspace, tech_tree.Options(select="v6794_benchmark_runner"))
    assert "koschei benchmark" in str(error.value) and "no node" in str(error.value)
    with pytest.raises(UsageError, match="branding"):
        tech_tree.run(workspace, tech_tree.Options(select="v6720_sacred_formula"))
