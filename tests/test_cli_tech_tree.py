"""`koschei tech-tree`: the rich tree, the plain-text exports on stdout, JSON, errors, and no
Numba import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import koschei.cli  # noqa: F401  (registers every command)
from koschei.cli.app import app
from koschei.runs import RunRecord
from koschei.workspace import Workspace

NORM = """\
name: norm
title: Scale by two
tier: foundation
aliases: [seed_norm]
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
    - {dims: {"...": [4096], d: 768}}
  bytes: "2 * 4 * rows * d"
  flops: "rows * d"
"""

GATED = """\
name: gated
title: Gated unit
tier: ffn
aliases: [llm_gated_unit]
requires: [norm]
claims:
  - {metric: speedup, value: 2.0, baseline: numpy, source: "a paper"}
"""

runner = CliRunner()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "specs" / "foundation").mkdir(parents=True)
    (root / "specs" / "ffn").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'tiny-workspace'\n", encoding="utf-8")
    (root / "specs" / "foundation" / "norm.yaml").write_text(NORM, encoding="utf-8")
    (root / "specs" / "ffn" / "gated.yaml").write_text(GATED, encoding="utf-8")
    record = RunRecord.create(Workspace(root.resolve()), "benchmark")
    record.save_phase("benchmark", {"cases": [
        {"spec": "norm", "case": "4096x768", "verdict": "ok", "bytes": 25165824,
         "speedup_vs_numpy": 3.0, "speedup_vs_torch": 1.5, "roofline_fraction": 0.6}]})
    return root


def invoke(*args: str):
    return runner.invoke(app, list(args), terminal_width=200)


def test_the_tree_shows_tiers_status_aliases_and_headlines(root):
    result = invoke("tech-tree", "--root", str(root))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "foundation" in out and "ffn" in out
    assert "✓ norm" in out and "○ gated" in out
    assert "llm_gated_unit" in out and "← norm" in out
    assert "×1.50 vs PyTorch" in out and "@ 4096x768" in out
    assert "2 specs: 1 implemented ✓, 0 composed ◆, 1 planned ○" in out


@pytest.mark.parametrize(("form", "first_line"), [("mermaid", "flowchart LR"),
                                                  ("dot", "digraph tech_tree {")])
def test_exports_are_plain_text_on_stdout(root, form, first_line):
    result = invoke("tech-tree", "--root", str(root), "--format", form)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == first_line
    assert ("norm --> gated" if form == "mermaid" else '"norm" -> "gated";') in result.stdout
    assert "\x1b[" not in result.stdout  # no terminal styling in a file meant for other tools


def test_json_format_and_json_result(root):
    exported = invoke("tech-tree", "--root", str(root), "--format", "json")
    assert exported.exit_code == 0, exported.output
    graph = json.loads(exported.stdout)
    assert graph["order"] == ["norm", "gated"]
    assert graph["edges"] == [{"from": "norm", "to": "gated"}]

    result = invoke("tech-tree", "--root", str(root), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True and data["order"] == ["norm", "gated"]
    assert data["nodes"][0]["headline"].startswith("×1.50 vs PyTorch")
    assert data["benchmark_run"] == RunRecord.load(Workspace(root.resolve())).id


def test_select_and_the_seed_name(root):
    result = invoke("tech_tree", "--root", str(root), "--select", "llm_gated_unit",
                    "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["order"] == ["norm", "gated"]
    tier = invoke("tech-tree", "--root", str(root), "-k", "foundation", "--json")
    assert json.loads(tier.stdout)["order"] == ["norm"]


def test_bad_arguments_exit_2_with_a_message(root):
    result = invoke("tech-tree", "--root", str(root), "--format", "svg")
    assert result.exit_code == 2
    assert "--format svg" in result.stderr
    unknown = invoke("tech-tree", "--root", str(root), "--select", "gatde")
    assert unknown.exit_code == 2
    assert "gated" in unknown.stderr  # the suggestion


def test_a_bad_spec_exits_2_naming_the_file(root):
    (root / "specs" / "ffn" / "broken.yaml").write_text("name: broken\ntier: ffn\n",
                                                        encoding="utf-8")
    result = invoke("tech-tree", "--root", str(root))
    assert result.exit_code == 2
    assert "broken.yaml" in result.stderr


def test_the_command_never_imports_numba(root):
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "import koschei.cli\n"
        "from koschei.cli.app import app\n"
        "runner = CliRunner()\n"
        f"for form in ('tree', 'mermaid', 'dot', 'json'):\n"
        f"    r = runner.invoke(app, ['tech-tree', '--root', {str(root)!r}, '--format', form])\n"
        "    assert r.exit_code == 0, r.output\n"
        "print(','.join(m for m in ('numba', 'llvmlite', 'torch') if m in sys.modules) or 'none')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "none"


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("seed_id", "node"), [
    ("v6704_golden_tokenizer", "bpe_tokenizer"),
    ("v6705_trinity_inference", "bitnet_linear"),
    ("v6733_gqa", "attention"),
    ("v6734_sliding", "sliding_window_attention"),
])
def test_the_repository_tree_finds_seed_module_ids(seed_id, node):
    result = invoke("tech-tree", "--root", str(REPO), "-k", seed_id, "--format", "json")
    assert result.exit_code == 0, result.output
    graph = json.loads(result.stdout)
    found = next(entry for entry in graph["nodes"] if entry["name"] == node)
    assert seed_id in found["aliases"]


def test_the_repository_tree_shows_provided_nodes_as_done():
    result = invoke("tech-tree", "--root", str(REPO), "-k", "sliding_window_attention")
    assert result.exit_code == 0, result.output
    assert "↪ sliding_window_attention" in result.stdout
    assert "1 provided ↪" in result.stdout
    data = json.loads(invoke("tech-tree", "--root", str(REPO), "-k", "sliding_window_attention",
                             "--json").stdout)
    node = next(node for node in data["nodes"] if node["name"] == "sliding_window_attention")
    assert (node["status"], node["provided_by"]) == ("provided", "attention")
    assert node["provided_how"].startswith("attention(q, k, v, window=W)")
