"""koschei.tuning.space: a spec's tunables as a search space, with its constraints."""

from __future__ import annotations

import pytest

from koschei.specs.schema import Constraint, Tunable
from koschei.tuning.space import SearchSpace


class FakeSpec:
    name = "tile"

    def __init__(self, constraints=()):
        self.tunables = {
            "parallel": Tunable(choices=[True, False], default=True),
            "rows": Tunable(choices=[4, 8, 12], default=8),
            "cols": Tunable(choices=[16, 32], default=32),
        }
        self.tunable_constraints = [Constraint(check=check, message=message)
                                    for check, message in constraints]


def test_the_space_is_the_product_of_the_choices_less_what_constraints_rule_out():
    space = SearchSpace.of(FakeSpec([("rows * cols <= 256", "the tile fits")]))
    assert space.size == 12 and space.names == ["parallel", "rows", "cols"]
    configs = list(space.configurations())
    assert len(configs) == space.valid_count() == 10  # 12 x 32 is out, for both parallel values
    assert configs[0] == {"parallel": True, "rows": 4, "cols": 16}  # the spec's order
    assert {"parallel": True, "rows": 12, "cols": 32} not in configs
    assert space.why_invalid({"parallel": False, "rows": 12, "cols": 32}) == \
        "the tile fits (rows * cols <= 256)"
    assert space.valid(space.defaults)


def test_only_some_tunables_can_be_searched():
    space = SearchSpace.of(FakeSpec(), only=["rows"])
    assert space.searched == ["rows"] and space.size == 3
    assert [config["rows"] for config in space.configurations()] == [4, 8, 12]
    assert all(config["cols"] == 32 and config["parallel"] for config in space.configurations())
    with pytest.raises(ValueError, match="tile has no tunable 'depth'; its tunables: parallel, "
                                         "rows, cols"):
        SearchSpace.of(FakeSpec(), only=["depth"])


def test_a_partial_configuration_is_completed_with_the_defaults_and_checked():
    space = SearchSpace.of(FakeSpec())
    assert space.complete({"rows": 12}) == {"parallel": True, "rows": 12, "cols": 32}
    with pytest.raises(ValueError, match=r"tunable rows: 5 is not one of its choices \[4, 8, 12\]"):
        space.complete({"rows": 5})
    with pytest.raises(ValueError, match="no tunable 'depth'"):
        space.complete({"depth": 2})


def test_the_bundled_matmul_spec_has_a_register_constraint():
    from koschei.specs import load_specs
    from koschei.workspace import Workspace

    matmul = load_specs(Workspace.find()).get("matmul").spec
    space = SearchSpace.of(matmul)
    assert space.valid(space.defaults)
    assert not space.valid({**space.defaults, "mr": 16, "nr": 32})  # 32 accumulators: spills
    assert space.valid({**space.defaults, "mr": 14, "nr": 32})
