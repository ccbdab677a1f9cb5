"""The result of one measured bench case (``CaseResult``) and its verdicts, as the benchmark's
JSON records it; each contender's timing is a ``koschei.bench.timing.ContenderTiming``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from koschei.bench.timing import ContenderTiming

Verdict = Literal["ok", "wrong", "error", "regression", "over_ceiling"]


@dataclass
class CaseResult:
    """One bench case of a spec: its verdict, the contenders' timings and what is derived from
    them (``koschei.bench.roofline.derive``)."""

    spec: str
    case: str
    verdict: Verdict
    error: str | None = None
    dims: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    contenders: dict[str, ContenderTiming] = field(default_factory=dict)
    stopped: str | None = None  # "stable" | "budget" | "max_rounds"
    max_abs_error: float | None = None  # engine vs reference, on the measured inputs
    bytes: float | None = None  # read_bytes + written_bytes
    read_bytes: float | None = None
    written_bytes: float | None = None
    flops: float | None = None
    gbs: float | None = None
    gflops: float | None = None
    intensity: float | None = None  # FLOP per byte
    bound: Literal["memory", "compute"] | None = None
    # where the working set is served from: a cache level it fits in (as measured), or "DRAM"
    memory_level: str | None = None
    # the bandwidth that level allows for this case's own mix of reads and writes, and how
    ceiling_gbs: float | None = None
    ceiling_model: str | None = None
    attainable_gflops: float | None = None  # min(peak, intensity * ceiling)
    roofline_fraction: float | None = None  # achieved / attainable; above 1: a benchmark error
    # inputs rotated through copies so that none is cached when used again (bench case "cold")
    cold_inputs: list[str] = field(default_factory=list)
    cold_copies: int | None = None
    goals: list[dict[str, Any]] = field(default_factory=list)  # bench.goals of this case
    # share of the machine's cores that other processes used while this case was timed
    other_work_share: float | None = None
    speedup_vs_numpy: float | None = None
    # against the fastest PyTorch variant of the same rounds ("torch" eager, "torch_compile")
    speedup_vs_torch: float | None = None
    torch_fastest: str | None = None
    speedup_vs_torch_eager: float | None = None
    speedup_vs_torch_compile: float | None = None
    torch_compile_s: float | None = None  # seconds torch.compile took (first call, not timed)
    # the engine on warm copies of the cold inputs over the engine on cold ones (same rounds)
    warm_speedup: float | None = None
    speedup_vs_baselines: dict[str, float | None] = field(default_factory=dict)
    # the engine beside one other busy process, in alternating rounds (--contention)
    contention: dict[str, Any] | None = None
    compare: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
