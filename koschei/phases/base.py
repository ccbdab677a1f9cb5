"""What every phase shares: its result type and the way it reports progress."""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Any, Protocol


class Progress(Protocol):
    """Where a phase says what it is doing. The command line renders it on stderr."""

    def step(self, message: str) -> None: ...

    def advance(self, total: int | None = None, detail: str | None = None) -> None:
        """One more unit of ``total`` done (a bar where the renderer draws one); ``detail``:
        what to show beside it (e.g. the best so far)."""


class SilentProgress:
    def step(self, message: str) -> None:
        pass

    def advance(self, total: int | None = None, detail: str | None = None) -> None:
        pass


def to_jsonable(value: Any) -> Any:
    """Dataclasses, enums, paths, tuples and numpy scalars as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return value.as_posix()
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return value.item()
    return value


@dataclasses.dataclass
class Result:
    """Base of every phase result. ``ok`` False means a check failed (exit code 1)."""

    @property
    def ok(self) -> bool:
        return True

    def summary(self) -> str:
        """One line about the result, for the cycle's report and journal."""
        counts = getattr(self, "counts", None)  # e.g. files per action, cases per verdict
        if isinstance(counts, dict) and counts and all(isinstance(n, int) for n in counts.values()):
            return ", ".join(f"{n} {key}" for key, n in counts.items() if n) or "nothing to do"
        return ""

    def to_dict(self) -> dict[str, Any]:
        data = to_jsonable(self)
        data["ok"] = self.ok
        return data
