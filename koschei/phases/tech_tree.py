"""The tech_tree phase: the technology graph of all specs, in order, with exports.

Every spec is a node (implemented: it has a kernel; composed: an engine model of kernels;
provided: another spec's kernel or composition already does it, ``provided_by``; planned:
identity and claims only); its ``requires`` are the edges, drawn from the requirement to what it
unlocks. The result lists the nodes in topological order (requirements first) with their
dependents, counts by tier and status, headline figures from the latest benchmark run, and the
graph as Mermaid, DOT or JSON text. A provided node points at its provider (``provided_by``,
``provided_how``) and its edge from the provider is drawn as "provides".

A seed module id that names a feature of the toolchain or branding rather than a technique
(:data:`SEED_MODULES_OUTSIDE_THE_TREE`, listed in ``specs/README.md``) is no node; selecting it
says what it is instead.

Loading and validating the specs is ``koschei.specs``; this phase never imports Numba.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from koschei.errors import UsageError
from koschei.phases.base import Progress, Result, SilentProgress, to_jsonable
from koschei.specs.graph import tier_rank
from koschei.workspace import Workspace

Format = Literal["tree", "mermaid", "dot", "json"]
FORMATS: tuple[str, ...] = ("tree", "mermaid", "dot", "json")

STATUS_MARKS = {"implemented": "✓", "composed": "◆", "provided": "↪", "planned": "○"}
STATUSES = tuple(STATUS_MARKS)
# The statuses of a node whose technique the engine does (the rest are planned).
DONE_STATUSES = ("implemented", "composed", "provided")

# Seed module ids that are no node of the tree: features of the toolchain itself, and branding.
SEED_MODULES_OUTSIDE_THE_TREE: dict[str, str] = {
    "v6790_koschei_pattern": "the toolchain's cycle of phases: koschei cycle",
    "v6791_self_evolution": "the toolchain's search over a spec's tunables (genetic autotuning)",
    "v6792_task_decomposer": "the toolchain's per-spec work: every phase takes -k SPEC",
    "v6793_test_generator": "the toolchain's generated tests: koschei code-generate writes "
                            "tests/engine/test_<spec>.py",
    "v6794_benchmark_runner": "the toolchain's benchmarks: koschei benchmark",
    "v6795_pattern_learner": "the toolchain's learning from run history: the predictions of "
                             "koschei pas-analyze",
    "v6796_code_improver": "the toolchain's variants of a spec: koschei spec-create and tunables",
    "v6797_feedback_loop": "the toolchain's loop: koschei cycle --loop",
    "v6799_koschei_pipeline": "the toolchain's pipeline: koschei cycle",
    "qml_benchmark": "the toolchain's benchmarks: koschei benchmark",
    "v6703_pas_reasoning": "the toolchain's claim analysis: koschei pas-analyze",
    "v6700_quantum_minilm": "branding ('quantum superposition states'), not a technique; the "
                            "MiniLM encoder is the node minilm",
    "v6720_sacred_formula": "numerology (V = n x 3^k x pi^m x phi^p), branding, not a technique",
}

# Words Mermaid's flowchart grammar reserves; a node id equal to one gets a trailing "_".
MERMAID_RESERVED = {"end", "graph", "flowchart", "subgraph", "class", "classdef", "style",
                    "click", "linkstyle", "direction", "default", "call", "href"}


@dataclass
class Options:
    format: Format = "tree"
    # A spec name or alias (that node, what it requires and what requires it) or a tier name.
    select: str | None = None


@dataclass
class TreeNode:
    name: str
    title: str
    tier: str
    status: Literal["implemented", "composed", "planned"]
    relpath: str
    aliases: list[str] = field(default_factory=list)
    requires: list[str] = field(default_factory=list)
    dependents: list[str] = field(default_factory=list)
    paper: str | None = None
    claims: int = 0
    headline: str | None = None  # e.g. "×2.10 vs PyTorch · ×5.31 vs NumPy @ 4096x768"
    composition: str | None = None  # the engine model that composes it, e.g. "KVCache"
    provided_by: str | None = None  # the spec whose code does it, e.g. "attention"
    provided_how: str | None = None  # how, e.g. "attention(q, k, v, window=W): ..."


@dataclass
class TechTreeResult(Result):
    format: str
    selected: str | None
    nodes: list[TreeNode] = field(default_factory=list)  # topological order
    order: list[str] = field(default_factory=list)
    edges: list[tuple[str, str]] = field(default_factory=list)  # (requirement, dependent)
    tiers: list[str] = field(default_factory=list)  # the tiers present, in display order
    counts: dict[str, Any] = field(default_factory=dict)
    benchmark_run: str | None = None  # the run the headline figures come from
    export: str | None = None  # the Mermaid / DOT / JSON text for those formats

    def summary(self) -> str:
        counts = self.counts
        return (f"{counts.get('total', 0)} specs in {len(self.tiers)} tiers: "
                f"{counts.get('implemented', 0)} implemented, {counts.get('composed', 0)} "
                f"composed, {counts.get('provided', 0)} provided by another spec, "
                f"{counts.get('planned', 0)} planned")


# --- headline figures ---------------------------------------------------------------------------


def _ratio(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 and number != float("inf") else None


def headline_for(cases: list[dict[str, Any]]) -> str | None:
    """One spec's headline from its benchmark cases: speedups and roofline on its largest case
    measured correctly (largest by bytes moved, else the last listed)."""
    measured = [case for case in cases if case.get("verdict") == "ok"]
    if not measured:
        return None
    largest = max(enumerate(measured),
                  key=lambda item: (_ratio(item[1].get("bytes")) or 0.0, item[0]))[1]
    parts: list[str] = []
    for key, label in (("speedup_vs_torch", "PyTorch"), ("speedup_vs_numpy", "NumPy")):
        value = _ratio(largest.get(key))
        if value is not None:
            parts.append(f"×{value:.2f} vs {label}")
    roofline = _ratio(largest.get("roofline_fraction"))
    if roofline is not None:
        parts.append(f"{roofline * 100:.0f}% of roofline")
    if not parts:
        return None
    return f"{' · '.join(parts)} @ {largest.get('case')}"


def latest_headlines(workspace: Workspace) -> tuple[str | None, dict[str, str]]:
    """The latest run with benchmark results and each spec's headline from it."""
    from koschei.phases.pas_analyze import phase_history

    history = phase_history(workspace, "benchmark")
    if not history:
        return None, {}
    latest = history[-1]
    by_spec: dict[str, list[dict[str, Any]]] = {}
    for case in latest.data.get("cases") or []:
        if isinstance(case, dict) and case.get("spec"):
            by_spec.setdefault(str(case["spec"]), []).append(case)
    headlines = {spec: text for spec, cases in by_spec.items()
                 if (text := headline_for(cases)) is not None}
    return latest.run_id, headlines


# --- selection ----------------------------------------------------------------------------------


def _closure(start: str, neighbours: dict[str, list[str]]) -> set[str]:
    seen: set[str] = set()
    stack = [start]
    while stack:
        name = stack.pop()
        for other in neighbours.get(name, []):
            if other not in seen:
                seen.add(other)
                stack.append(other)
    return seen


def select_nodes(nodes: list[TreeNode], select: str) -> set[str]:
    """The names a ``select`` keeps: a tier's nodes, or a node (by name or alias) with everything
    it requires and everything that requires it."""
    by_name = {node.name: node for node in nodes}
    aliases = {alias: node.name for node in nodes for alias in node.aliases}
    tiers = {node.tier for node in nodes}
    name = aliases.get(select, select)
    if name in by_name:
        requires = {node.name: node.requires for node in nodes}
        dependents = {node.name: node.dependents for node in nodes}
        return {name} | _closure(name, requires) | _closure(name, dependents)
    if select in tiers:
        return {node.name for node in nodes if node.tier == select}
    if select in SEED_MODULES_OUTSIDE_THE_TREE:
        raise UsageError(f"--select {select}: a seed module that is no node of the tree: "
                         f"{SEED_MODULES_OUTSIDE_THE_TREE[select]}",
                         hint="specs/README.md lists the seed items that are not techniques")
    candidates = sorted(set(by_name) | set(aliases) | tiers)
    close = difflib.get_close_matches(select, candidates, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "run koschei tech-tree to list them"
    raise UsageError(f"--select {select}: no spec, alias or tier of that name", hint=hint)


# --- exports ------------------------------------------------------------------------------------


def mermaid_id(name: str) -> str:
    return f"{name}_" if name.lower() in MERMAID_RESERVED else name


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;")


def to_mermaid(result: TechTreeResult) -> str:
    """A Mermaid flowchart: one subgraph per tier, an arrow from each requirement to what it
    unlocks (labelled "provides" from a provider to the node it provides), implemented nodes
    filled."""
    lines = ["flowchart LR"]
    providers = provider_edges(result)
    for tier in result.tiers:
        lines.append(f'  subgraph tier_{tier}["{_mermaid_text(tier)}"]')
        for node in result.nodes:
            if node.tier == tier:
                label = f"{STATUS_MARKS[node.status]} {node.name}<br/>{node.title}"
                if node.provided_by:
                    label += f"<br/>provided by {node.provided_by}"
                lines.append(f'    {mermaid_id(node.name)}["{_mermaid_text(label)}"]')
        lines.append("  end")
    for requirement, dependent in result.edges:
        arrow = "-->|provides|" if (requirement, dependent) in providers else "-->"
        lines.append(f"  {mermaid_id(requirement)} {arrow} {mermaid_id(dependent)}")
    lines.append("  classDef implemented fill:#d9f2d9,stroke:#2e7d32")
    lines.append("  classDef composed fill:#e3eefb,stroke:#1565c0")
    lines.append("  classDef provided fill:#eef8ee,stroke:#2e7d32,stroke-dasharray:2 2")
    lines.append("  classDef planned fill:#f5f5f5,stroke:#9e9e9e,stroke-dasharray:4 3")
    for status in STATUSES:
        members = [mermaid_id(node.name) for node in result.nodes if node.status == status]
        if members:
            lines.append(f"  class {','.join(members)} {status}")
    return "\n".join(lines) + "\n"


def _dot_text(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def provider_edges(result: TechTreeResult) -> set[tuple[str, str]]:
    """The edges (provider, node) of the nodes that another spec provides."""
    return {(node.provided_by, node.name) for node in result.nodes if node.provided_by}


DOT_STYLES = {"implemented": 'fillcolor="#d9f2d9", color="#2e7d32"',
              "composed": 'fillcolor="#e3eefb", color="#1565c0"',
              "provided": 'fillcolor="#eef8ee", color="#2e7d32", style="rounded,filled,dotted"',
              "planned": 'fillcolor="#f5f5f5", color="#9e9e9e", style="rounded,filled,dashed"'}


def to_dot(result: TechTreeResult) -> str:
    """A Graphviz digraph: one cluster per tier, an edge from each requirement to what it
    unlocks (labelled "provides" from a provider), implemented nodes filled green, provided ones
    dotted with their provider and how in the label, planned ones dashed."""
    providers = provider_edges(result)
    lines = ["digraph tech_tree {", "  rankdir=LR;",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica"];']
    for tier in result.tiers:
        lines.append(f"  subgraph {_dot_text('cluster_' + tier)} {{")
        lines.append(f"    label={_dot_text(tier)};")
        for node in result.nodes:
            if node.tier != tier:
                continue
            label = f"{STATUS_MARKS[node.status]} {node.name}\n{node.title}"
            if node.provided_by:
                label += f"\nprovided by {node.provided_by}: {node.provided_how}"
            if node.headline:
                label += f"\n{node.headline}"
            attributes = DOT_STYLES[node.status]
            lines.append(f"    {_dot_text(node.name)} [label={_dot_text(label)}, {attributes}];")
        lines.append("  }")
    for requirement, dependent in result.edges:
        label = ' [label="provides"]' if (requirement, dependent) in providers else ""
        lines.append(f"  {_dot_text(requirement)} -> {_dot_text(dependent)}{label};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_json(result: TechTreeResult) -> str:
    """The graph as JSON: nodes (topological order), edges, counts, the benchmark run used."""
    data = {
        "nodes": to_jsonable(result.nodes),
        "edges": [{"from": requirement, "to": dependent}
                  for requirement, dependent in result.edges],
        "order": result.order,
        "tiers": result.tiers,
        "counts": result.counts,
        "benchmark_run": result.benchmark_run,
        "selected": result.selected,
    }
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


EXPORTERS = {"mermaid": to_mermaid, "dot": to_dot, "json": to_json}


# --- the phase ----------------------------------------------------------------------------------


def paper_text(paper: Any) -> str | None:
    if paper is None:
        return None
    text = f"{paper.authors}: {paper.title}" if paper.authors else paper.title
    if paper.year:
        text += f" ({paper.year})"
    if paper.arxiv:
        text += f", arXiv:{paper.arxiv}"
    elif paper.url:
        text += f", {paper.url}"
    return text


def count_nodes(nodes: list[TreeNode], tiers: list[str]) -> dict[str, Any]:
    """How many nodes of each status, in all and by tier; ``done``: implemented, composed or
    provided (the engine does the technique)."""
    by_tier = {tier: dict.fromkeys(STATUSES, 0) for tier in tiers}
    for node in nodes:
        by_tier[node.tier][node.status] += 1
    return {
        "total": len(nodes),
        **{status: sum(1 for node in nodes if node.status == status) for status in STATUSES},
        "done": sum(1 for node in nodes if node.status in DONE_STATUSES),
        "by_tier": by_tier,
    }


def run(workspace: Workspace, options: Options, progress: Progress | None = None,
        ) -> TechTreeResult:
    from koschei.specs import load_specs

    progress = progress or SilentProgress()
    if options.format not in FORMATS:
        raise UsageError(f"--format {options.format}: expected one of {', '.join(FORMATS)}")
    progress.step("loading and validating the specs")
    spec_set = load_specs(workspace)
    benchmark_run, headlines = latest_headlines(workspace)

    nodes: list[TreeNode] = []
    for loaded in spec_set:  # topological order: requirements first
        spec = loaded.spec
        nodes.append(TreeNode(
            name=spec.name, title=spec.title, tier=spec.tier, status=spec.status,
            relpath=loaded.relpath, aliases=list(spec.aliases), requires=list(spec.requires),
            paper=paper_text(spec.paper), claims=len(spec.claims),
            headline=headlines.get(spec.name), composition=spec.composition,
            provided_by=spec.provided_by.spec if spec.provided_by else None,
            provided_how=spec.provided_by.how if spec.provided_by else None))
    by_name = {node.name: node for node in nodes}
    for node in nodes:
        for requirement in node.requires:
            if requirement in by_name:
                by_name[requirement].dependents.append(node.name)

    if options.select:
        keep = select_nodes(nodes, options.select)
        nodes = [node for node in nodes if node.name in keep]
        for node in nodes:
            node.requires = [name for name in node.requires if name in keep]
            node.dependents = [name for name in node.dependents if name in keep]

    tiers = sorted({node.tier for node in nodes}, key=tier_rank)
    result = TechTreeResult(
        format=options.format, selected=options.select, nodes=nodes,
        order=[node.name for node in nodes],
        edges=[(requirement, node.name) for node in nodes for requirement in node.requires],
        tiers=tiers, counts=count_nodes(nodes, tiers),
        benchmark_run=benchmark_run if any(node.headline for node in nodes) else None)
    exporter = EXPORTERS.get(options.format)
    if exporter is not None:
        result.export = exporter(result)
    return result
