"""The search's results, in an append-only log that survives a kill at any point.

One JSON object per line, appended as each result arrives and forced to disk (flush, fsync)
before the search goes on: a search killed with ``kill -9`` loses at most the evaluation it was
running, and a restarted one finds every finished result and measures none of them again.

A line is keyed by everything its result depends on (``CandidateKey``): the spec's name and
sha256, a digest of the templates it was rendered with, its tunable values, the bench case, and
the fingerprint of the machine it was measured on. A change to any of them makes a new key:
nothing measured for other code, another shape or another machine is reused.

Reading tolerates what a kill leaves: a last line cut short (no newline, or not JSON) is
skipped and counted (``CacheLog.repaired``), and the next append first ends it with a newline,
so that the cut stays one unreadable line and every later record stays whole. Failures
(a candidate that did not render, compile, pass its checks, or finish in time) are results like
the others: a repeated search does not try them again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# a result's verdict: measured, or why not
OK = "ok"
FAILURES = ("invalid", "render_error", "compile_error", "wrong", "crashed", "timeout", "error")


@dataclass(frozen=True)
class CandidateKey:
    """What a result depends on."""

    spec: str  # the spec's name
    spec_sha256: str  # of the spec file's bytes
    templates_sha256: str  # of the templates the engine module was rendered with
    tunables: tuple[tuple[str, Any], ...]  # (name, value), sorted by name
    case: str  # the bench case's label, e.g. "ffn_512x768x2048"
    fingerprint: str  # of the machine (koschei's machine fingerprint)

    @classmethod
    def of(cls, *, spec: str, spec_sha256: str, templates_sha256: str,
           tunables: Mapping[str, Any], case: str, fingerprint: str) -> CandidateKey:
        return cls(spec, spec_sha256, templates_sha256, tuple(sorted(tunables.items())), case,
                   fingerprint)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["tunables"] = dict(self.tunables)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CandidateKey:
        return cls.of(spec=data["spec"], spec_sha256=data["spec_sha256"],
                      templates_sha256=data["templates_sha256"], tunables=data["tunables"],
                      case=data["case"], fingerprint=data["fingerprint"])


@dataclass
class CandidateResult:
    """One evaluation: ``verdict`` ok with the candidate's timing samples (seconds per call) and
    the same rounds' samples of the configuration it was compared with, or a failure and why."""

    key: CandidateKey
    verdict: str  # OK or one of FAILURES
    reason: str | None = None  # what went wrong (a failure), in one line
    median_s: float | None = None
    samples_s: list[float] = field(default_factory=list)
    incumbent: dict[str, Any] | None = None  # {"tunables": ..., "samples_s": [...]}
    max_abs_error: float | None = None  # against the reference, over the checked cases
    seconds: float | None = None  # the evaluation's wall time, compile included
    recorded_at: str | None = None  # ISO 8601, UTC

    @property
    def ok(self) -> bool:
        return self.verdict == OK

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["key"] = self.key.as_json()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CandidateResult:
        values = {name: data.get(name) for name in (
            "verdict", "reason", "median_s", "incumbent", "max_abs_error", "seconds",
            "recorded_at")}
        return cls(key=CandidateKey.from_json(data["key"]), samples_s=list(data.get("samples_s")
                                                                           or []), **values)


class CacheLog:
    """The log at ``path`` (created on the first record, with its folder)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.repaired = 0  # lines that could not be read (cut by a kill)
        self._results: dict[CandidateKey, CandidateResult] = {}
        for result in self._read():
            self._results[result.key] = result  # a later line for the same key wins

    def _read(self) -> Iterator[CandidateResult]:
        try:
            text = self.path.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                yield CandidateResult.from_json(json.loads(line))
            except (ValueError, KeyError, TypeError):
                self.repaired += 1

    def __len__(self) -> int:
        return len(self._results)

    def __contains__(self, key: CandidateKey) -> bool:
        return key in self._results

    def get(self, key: CandidateKey) -> CandidateResult | None:
        return self._results.get(key)

    def results(self) -> list[CandidateResult]:
        return list(self._results.values())

    def record(self, result: CandidateResult) -> None:
        """Append ``result`` and force it to disk before returning."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(result.as_json(), sort_keys=True, default=str) + "\n"
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(descriptor).st_size
            if size and os.pread(descriptor, 1, size - 1) != b"\n":
                line = "\n" + line  # end the line a kill cut short: it stays one bad line
            os.write(descriptor, line.encode("utf-8"))
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        self._results[result.key] = result
