"""A spec's search space: its tunables' choices, less the configurations its
``tunable_constraints`` rule out.

A configuration is a dict of every tunable's value. The space is the product of the choices
(``size``); ``valid(config)`` says whether it satisfies every constraint, and ``why_invalid``
which one it breaks. ``configurations()`` walks the valid ones in a fixed order (the product in
the order the spec lists its tunables, choices in their listed order): exhaustive search, and
the reference order of a replay.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from koschei.specs import expr

Config = dict[str, Any]


@dataclass(frozen=True)
class SearchSpace:
    """The tunables (name -> choices, in the spec's order), their defaults and constraints
    ((check, message) pairs over the tunables' names)."""

    choices: dict[str, tuple[Any, ...]]
    defaults: Config
    constraints: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, spec: Any, *, only: list[str] | None = None) -> SearchSpace:
        """The space of ``spec``'s tunables (a koschei.specs Spec); ``only``: search these
        tunables and hold the others at their defaults."""
        choices = {name: tuple(tunable.choices) for name, tunable in spec.tunables.items()}
        defaults = {name: tunable.default for name, tunable in spec.tunables.items()}
        if only is not None:
            unknown = [name for name in only if name not in choices]
            if unknown:
                raise ValueError(f"{spec.name} has no tunable {unknown[0]!r}; its tunables: "
                                 f"{', '.join(choices) or 'none'}")
            choices = {name: (values if name in only else (defaults[name],))
                       for name, values in choices.items()}
        constraints = tuple((c.check, c.message) for c in spec.tunable_constraints)
        return cls(choices, defaults, constraints)

    @property
    def names(self) -> list[str]:
        return list(self.choices)

    @property
    def size(self) -> int:
        """Configurations in the product of the choices, valid or not."""
        size = 1
        for values in self.choices.values():
            size *= len(values)
        return size

    @property
    def searched(self) -> list[str]:
        """The tunables with more than one choice."""
        return [name for name, values in self.choices.items() if len(values) > 1]

    def complete(self, partial: Mapping[str, Any]) -> Config:
        """``partial`` with every missing tunable at its default; unknown names or values that
        are not choices raise ValueError."""
        config = dict(self.defaults)
        for name, value in partial.items():
            if name not in self.choices:
                raise ValueError(f"no tunable {name!r}; the tunables: {', '.join(self.choices)}")
            if value not in self.choices[name]:
                raise ValueError(f"tunable {name}: {value!r} is not one of its choices "
                                 f"{list(self.choices[name])}")
            config[name] = value
        return config

    def why_invalid(self, config: Mapping[str, Any]) -> str | None:
        """The message of the first constraint ``config`` breaks, or None."""
        for check, message in self.constraints:
            try:
                holds = expr.evaluate(check, config)
            except (expr.ExpressionError, ArithmeticError) as error:
                return f"{check}: {error}"
            if not holds:
                return f"{message} ({check})"
        return None

    def valid(self, config: Mapping[str, Any]) -> bool:
        return self.why_invalid(config) is None

    def configurations(self) -> Iterator[Config]:
        """Every valid configuration, in the fixed order of the module docstring."""
        names = self.names
        for values in itertools.product(*(self.choices[name] for name in names)):
            config = dict(zip(names, values, strict=True))
            if self.valid(config):
                yield config

    def valid_count(self) -> int:
        """Valid configurations: the size without constraints, else counted (once)."""
        if not self.constraints:
            return self.size
        return self._counted

    @cached_property
    def _counted(self) -> int:
        return sum(1 for _ in self.configurations())
