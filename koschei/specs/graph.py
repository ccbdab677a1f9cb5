"""The technology graph: specs are nodes, ``requires`` are the edges.

An edge runs from a spec to each spec it requires. The order used everywhere (code generation,
tests, the tree) is topological — requirements first — and stable: among the specs whose
requirements are all placed, the next one is the lowest tier (in :data:`TIER_ORDER`), then the
lowest name. Requirements that name no node are ignored here (validation reports them).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence

# The tiers of the tree, from the ground up; a tier not listed sorts after these, by name.
TIER_ORDER: tuple[str, ...] = (
    "foundation", "attention", "ffn", "quantization", "inference", "compression",
    "architectures", "training", "parallelism", "adaptation",
)

Requires = Mapping[str, Sequence[str]]


def tier_rank(tier: str) -> tuple[int, str]:
    """A sort key that puts the tiers in :data:`TIER_ORDER` order, unknown tiers last by name."""
    return (TIER_ORDER.index(tier), "") if tier in TIER_ORDER else (len(TIER_ORDER), tier)


def _edges(requires: Requires) -> dict[str, list[str]]:
    """Each node's requirements that are nodes, without repeats, in the order written."""
    return {name: [r for r in dict.fromkeys(needed) if r in requires]
            for name, needed in requires.items()}


def topological_order(requires: Requires, tiers: Mapping[str, str] | None = None) -> list[str]:
    """Every node, requirements first; ties broken by tier then name.

    Nodes on a cycle (which validation rejects) are appended at the end in the same tie order,
    so that the function always returns every node once.
    """
    tiers = tiers or {}
    edges = _edges(requires)

    def key(name: str) -> tuple[tuple[int, str], str]:
        return (tier_rank(tiers.get(name, "")), name)

    waiting = {name: len(needed) for name, needed in edges.items()}
    unlocks: dict[str, list[str]] = {name: [] for name in edges}
    for name, needed in edges.items():
        for requirement in needed:
            unlocks[requirement].append(name)
    ready = [(key(name), name) for name, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, name = heapq.heappop(ready)
        order.append(name)
        for dependent in unlocks[name]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, (key(dependent), dependent))
    if len(order) < len(edges):
        placed = set(order)
        order.extend(sorted((name for name in edges if name not in placed), key=key))
    return order


def find_cycles(requires: Requires) -> list[list[str]]:
    """One cycle per strongly connected group of nodes that has one, as a closed path
    ``[a, b, a]`` starting at the group's lowest name; sorted by that name."""
    edges = _edges(requires)
    cycles: list[list[str]] = []
    for component in _strongly_connected(edges):
        members = set(component)
        start = min(component)
        if len(component) == 1 and start not in edges[start]:
            continue
        cycles.append(_cycle_through(start, edges, members))
    return sorted(cycles, key=lambda cycle: cycle[0])


def _cycle_through(start: str, edges: Mapping[str, Sequence[str]], members: set[str]) -> list[str]:
    """The shortest path from ``start`` back to itself inside one strongly connected group
    (breadth-first, neighbours in the order written, so the answer is deterministic)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for name in frontier:
            for requirement in edges[name]:
                if requirement not in members:
                    continue
                if requirement == start:
                    path = [name]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if requirement not in previous:
                    previous[requirement] = name
                    following.append(requirement)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a strongly connected group has one


def _strongly_connected(edges: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (deep requirement chains must not hit the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            name, position = work.pop()
            if position == 0:
                index[name] = low[name] = counter
                counter += 1
                stack.append(name)
                on_stack.add(name)
            needed = edges[name]
            if position < len(needed):
                work.append((name, position + 1))
                requirement = needed[position]
                if requirement not in index:
                    work.append((requirement, 0))
                elif requirement in on_stack:
                    low[name] = min(low[name], index[requirement])
                continue
            if low[name] == index[name]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == name:
                        break
                components.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[name])
    return components


def dependencies(requires: Requires, name: str, transitive: bool = False) -> list[str]:
    """What ``name`` requires (directly, or everything it needs), sorted by name."""
    edges = _edges(requires)
    if not transitive:
        return sorted(edges.get(name, []))
    return sorted(_reachable(name, edges))


def dependents(requires: Requires, name: str, transitive: bool = False) -> list[str]:
    """What requires ``name`` (directly, or everything that needs it), sorted by name."""
    reverse: dict[str, list[str]] = {node: [] for node in requires}
    for node, needed in _edges(requires).items():
        for requirement in needed:
            reverse[requirement].append(node)
    if not transitive:
        return sorted(reverse.get(name, []))
    return sorted(_reachable(name, reverse))


def roots(requires: Requires) -> list[str]:
    """The nodes that require nothing (among the nodes), sorted by name."""
    return sorted(name for name, needed in _edges(requires).items() if not needed)


def _reachable(start: str, neighbours: Mapping[str, Iterable[str]]) -> set[str]:
    seen: set[str] = set()
    stack = [start]
    while stack:
        for other in neighbours.get(stack.pop(), ()):
            if other not in seen and other != start:
                seen.add(other)
                stack.append(other)
    return seen
