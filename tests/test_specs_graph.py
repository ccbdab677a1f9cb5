"""The technology graph: stable topological order, cycles with their path, neighbours, roots,
and a SpecSet that iterates in that order."""

from __future__ import annotations

import textwrap
from pathlib import Path

from koschei.specs import SpecSet, graph, load_specs
from koschei.workspace import Workspace


def test_topological_order_puts_requirements_first_then_tier_then_name():
    requires = {
        "swiglu": [],
        "attention": ["softmax", "rope"],
        "softmax": [],
        "rope": [],
        "flash": ["attention", "softmax"],
        "moe": ["swiglu", "softmax"],
        "zeta": [],
    }
    tiers = {"swiglu": "ffn", "attention": "attention", "softmax": "foundation",
             "rope": "foundation", "flash": "attention", "moe": "ffn", "zeta": "custom_tier"}
    order = graph.topological_order(requires, tiers)
    assert order == ["rope", "softmax", "attention", "flash", "swiglu", "moe", "zeta"]
    position = {name: index for index, name in enumerate(order)}
    for name, needed in requires.items():
        assert all(position[r] < position[name] for r in needed)


def test_topological_order_is_stable_and_independent_of_input_order():
    requires = {"c": ["a"], "b": ["a"], "a": [], "d": ["b", "c"]}
    reversed_input = dict(reversed(list(requires.items())))
    assert graph.topological_order(requires) == ["a", "b", "c", "d"]
    assert graph.topological_order(reversed_input) == ["a", "b", "c", "d"]


def test_topological_order_ignores_unknown_requirements_and_keeps_cycles():
    order = graph.topological_order({"a": ["ghost"], "b": ["c"], "c": ["b"], "d": []})
    assert order == ["a", "d", "b", "c"]


def test_find_cycles_gives_each_cycle_once_as_a_closed_path():
    requires = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": [], "e": ["e"], "f": ["g"],
                "g": ["f", "a"]}
    assert graph.find_cycles(requires) == [["a", "b", "c", "a"], ["e", "e"], ["f", "g", "f"]]
    assert graph.find_cycles({"a": [], "b": ["a"]}) == []


def test_find_cycles_takes_the_shortest_way_back():
    requires = {"a": ["b", "c"], "b": ["c"], "c": ["a"]}
    assert graph.find_cycles(requires) == [["a", "c", "a"]]


def test_a_deep_chain_does_not_hit_the_recursion_limit():
    size = 5000
    requires = {f"n{i}": [f"n{i + 1}"] for i in range(size)}
    requires[f"n{size}"] = ["n0"]
    [cycle] = graph.find_cycles(requires)
    assert len(cycle) == size + 2
    requires[f"n{size}"] = []
    assert graph.find_cycles(requires) == []
    assert graph.topological_order(requires)[0] == f"n{size}"


def test_dependencies_dependents_and_roots():
    requires = {"a": [], "b": ["a"], "c": ["b"], "d": ["a", "c"], "e": []}
    assert graph.dependencies(requires, "d") == ["a", "c"]
    assert graph.dependencies(requires, "d", transitive=True) == ["a", "b", "c"]
    assert graph.dependents(requires, "a") == ["b", "d"]
    assert graph.dependents(requires, "a", transitive=True) == ["b", "c", "d"]
    assert graph.roots(requires) == ["a", "e"]


def test_tier_rank_orders_known_tiers_first():
    tiers = ["training", "mystery", "foundation", "attention", "alpha_custom"]
    assert sorted(tiers, key=graph.tier_rank) == ["foundation", "attention", "training",
                                                  "alpha_custom", "mystery"]


def write_spec(root: Path, tier: str, name: str, extra: str = "") -> None:
    folder = root / "specs" / tier
    folder.mkdir(parents=True, exist_ok=True)
    text = f"name: {name}\ntitle: {name.title()}\ntier: {tier}\n" + textwrap.dedent(extra)
    (folder / f"{name}.yaml").write_text(text)


def test_spec_set_iterates_in_topological_order_and_finds_aliases(tmp_path):
    (tmp_path / "koschei.toml").write_text("")
    write_spec(tmp_path, "attention", "attention", "requires: [softmax]\naliases: [v1_attn]\n")
    write_spec(tmp_path, "foundation", "softmax")
    write_spec(tmp_path, "foundation", "rope")
    write_spec(tmp_path, "inference", "kv_cache", "requires: [attention]\n")
    write_spec(tmp_path, "attention", "flash", "requires: [attention, softmax]\n")
    spec_set = load_specs(Workspace(tmp_path.resolve()))
    assert isinstance(spec_set, SpecSet)
    assert spec_set.names() == ["rope", "softmax", "attention", "flash", "kv_cache"]
    assert [loaded.name for loaded in spec_set] == spec_set.names()
    assert len(spec_set) == 5
    assert spec_set.get("v1_attn").name == "attention"
    assert spec_set.get("nothing") is None
    assert "v1_attn" in spec_set and "softmax" in spec_set and "nothing" not in spec_set
    assert spec_set.resolve("v1_attn") == "attention"
    assert spec_set.implemented() == []
    assert len(spec_set.planned()) == 5
    assert spec_set.tiers() == ["foundation", "attention", "inference"]
    assert spec_set.dependents("softmax") == ["attention", "flash"]
    assert spec_set.dependents("softmax", transitive=True) == ["attention", "flash", "kv_cache"]
    assert spec_set.dependencies("v1_attn") == ["softmax"]
    assert spec_set.roots() == ["rope", "softmax"]
    assert [loaded.name for loaded in spec_set.in_tier("attention")] == ["attention", "flash"]
