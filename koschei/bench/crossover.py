"""The crossover case of the benchmark: from which context length on does a linear-time layer
beat softmax attention with a KV cache on this CPU, for decoding and for prefill?

One layer's token mixing, batch 1, ``HEADS`` heads of ``HEAD_DIM`` (K = V = 128), float32, every
contender on the benchmark's threads:

- softmax attention: the engine's ``attention`` (a KV cache of the context's keys and values,
  token-major (L, H, 128), as the engine's decoder keeps it) and PyTorch's
  ``scaled_dot_product_attention`` on its native (1, H, L, 128) layout, inputs made outside the
  timed call;
- linear time, a state of H x 128 x 128 per layer instead of a cache: ``gla`` (GLA, a gate per
  key channel), ``gla`` with one gate per head (``mamba2``: Mamba-2's SSD is simple GLA with q = C,
  k = B, v = dt x, g = A dt), ``delta_rule`` with gates (``gated_deltanet``, keys
  L2-normalized), ``rwkv6`` (GLA's decays with the bonus u), ``rwkv7`` (the generalized
  delta rule, a = -kappa, b = kappa * rate) and ``mlstm`` (xLSTM's matrix memory, with its
  normalizer and stabilizer); and Mamba-1's ``selective_scan`` over the same
  H x 128 = 2048 channels with N = 16 (a state of 2048 x 16: Mamba's own, much smaller). Each
  runs when the engine has its kernel.

Decoding (``DECODE_CONTEXTS``): one new token after a context of L tokens, in milliseconds per
token. Softmax attention reads the L + 1 keys and values of the cache (16 KiB per token here);
a linear layer reads and writes its state (1 MiB, updated in place), whatever L. The per-layer data of
``LAYERS`` layers rotate from call to call, as a decoder of that depth reads them (capped at
``ROTATION_BYTES`` per contender): a layer's cache or state is not still in the core's caches
when its turn comes again. Prefill (``PREFILL_LENGTHS``): L tokens from nothing, in tokens per
second (causal attention; the linear layers' chunked form).

Before timing, each length's outputs are checked: the engine's attention against SDPA's, and
every linear contender against its own float64 reference on the first length
(``check_linear``). Timing is ``measure_interleaved`` within the benchmark's budget per length;
the comparisons use paired ratios from the same rounds. Each sample of a decoding step or a
short prefill follows ``WARM_S`` seconds of the same contender's calls: PyTorch's and Numba's
idle threads spin after a call and would slow the contender timed next.

Reported: each contender's median at each length; per linear contender and softmax contender,
the crossover length (``crossover``): the shortest measured length from which the linear layer
is faster at every longer one, with a log-log interpolation between the two lengths around it;
and each contender's measured complexity exponent (``exponent``: the slope of log time against
log length over the upper half of the lengths), which pas_analyze holds against the O(N) and
O(N^2) claims. A chart (``crossover.png``) beside the run record shows both.
"""

from __future__ import annotations

import contextlib
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from koschei.bench.timing import measure_interleaved, median_ratio

MODEL = "crossover"
HEADS = 16
HEAD_DIM = 128
SEED = 0
DECODE_CONTEXTS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
# softmax attention's prefill at 32k is ~9 TFLOP (~45 s a call here): the prefill grid stops at
# 8k, where the trend of each contender is plain
PREFILL_LENGTHS = (128, 256, 512, 1024, 2048, 4096, 8192)
LAYERS = 24  # the decoder depth whose per-layer caches or states rotate in decoding
ROTATION_BYTES = 1 << 30  # at most this much rotated data per contender
# seconds of a contender's own calls before each of its samples (measure_interleaved's
# warm_s), for decoding steps and prefills up to WARM_MAX_PREFILL tokens
WARM_S = 0.15
WARM_MAX_PREFILL = 1024
DECODE, PREFILL = "decode", "prefill"
MODES = (DECODE, PREFILL)

ATTENTION, SDPA = "attention", "sdpa"
GLA, MAMBA2, GATED_DELTANET = "gla", "mamba2", "gated_deltanet"
RWKV6, RWKV7, MLSTM, SELECTIVE_SCAN = "rwkv6", "rwkv7", "mlstm", "selective_scan"
SOFTMAX = (ATTENTION, SDPA)
LINEAR = (GLA, MAMBA2, GATED_DELTANET, RWKV6, RWKV7, MLSTM, SELECTIVE_SCAN)
# Mamba-1's state size per channel (its channels: HEADS x HEAD_DIM)
SSM_STATE = 16
CONTENDERS = (*SOFTMAX, *LINEAR)
DESCRIPTION = {
    ATTENTION: "koschei attention, KV cache",
    SDPA: "PyTorch SDPA, KV cache",
    GLA: "koschei gla (a gate per channel)",
    MAMBA2: "koschei gla, a gate per head (Mamba-2 SSD)",
    GATED_DELTANET: "koschei delta_rule with gates (gated DeltaNet)",
    RWKV6: "koschei rwkv6 (RWKV-6)",
    RWKV7: "koschei rwkv7 (RWKV-7)",
    MLSTM: "koschei mlstm (xLSTM's mLSTM)",
    SELECTIVE_SCAN: "koschei selective_scan (Mamba-1, N = 16)",
}
# the engine kernel each of the koschei contenders runs
KERNELS = {ATTENTION: "attention", GLA: "gla", MAMBA2: "gla", GATED_DELTANET: "delta_rule",
           RWKV6: "rwkv6", RWKV7: "rwkv7", MLSTM: "mlstm", SELECTIVE_SCAN: "selective_scan"}
# outputs of the engine's attention against SDPA's, and of a linear layer against its reference
TOLERANCE = (1e-3, 1e-4)  # rtol, atol


@dataclass
class CrossoverPoint:
    mode: str
    length: int
    contender: str
    median_s: float
    iqr_s: float
    rounds: int


@dataclass
class Crossover:
    """Where ``linear`` starts to beat ``softmax`` in ``mode``: ``length`` (interpolated) within
    (``below``, ``at``]; ``at`` None when it never does on the lengths measured, ``below`` None
    when it does from the shortest."""

    mode: str
    linear: str
    softmax: str
    length: float | None
    below: int | None
    at: int | None
    ratios: dict[int, float] = field(default_factory=dict)  # length -> linear / softmax time
    text: str = ""  # in words, e.g. "~160 (between 128 and 256)"


@dataclass
class CrossoverCaseResult:
    label: str = MODEL
    heads: int = HEADS
    head_dim: int = HEAD_DIM
    threads: int | None = None
    verdict: str = "ok"  # ok, wrong (a contender disagreed), error
    error: str | None = None
    points: list[CrossoverPoint] = field(default_factory=list)
    crossovers: list[Crossover] = field(default_factory=list)
    exponents: dict[str, dict[str, float]] = field(default_factory=dict)  # mode -> contender ->
    checks: dict[str, float] = field(default_factory=dict)  # contender -> max abs error
    kernel_files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    versions: dict[str, str | None] = field(default_factory=dict)
    layers_rotated: int = LAYERS
    def median(self, mode: str, contender: str, length: int) -> float | None:
        return next((p.median_s for p in self.points if (p.mode, p.contender, p.length)
                     == (mode, contender, length)), None)

    def lengths(self, mode: str) -> list[int]:
        return sorted({p.length for p in self.points if p.mode == mode})

    def contenders(self) -> list[str]:
        measured = {p.contender for p in self.points}
        return [name for name in CONTENDERS if name in measured]


# --- the analysis ----------------------------------------------------------------------------


def crossover(mode: str, linear: str, softmax: str, ratios: dict[int, float]) -> Crossover:
    """The shortest length from which ``linear / softmax`` stays below 1 at every longer length
    measured, interpolated on log length against log ratio from the length before it."""
    lengths = sorted(ratios)
    result = Crossover(mode=mode, linear=linear, softmax=softmax, length=None, below=None,
                       at=None, ratios=dict(ratios))
    faster_from = None
    for index in range(len(lengths) - 1, -1, -1):
        if ratios[lengths[index]] >= 1.0:
            break
        faster_from = index
    if faster_from is None:
        result.text = "never (slower at every length measured)"
        return result
    result.at = lengths[faster_from]
    if faster_from == 0:
        result.length = float(result.at)
        result.text = f"≤ {result.at} (faster at every length measured)"
        return result
    below = lengths[faster_from - 1]
    result.below = below
    r0, r1 = math.log(ratios[below]), math.log(ratios[result.at])
    x0, x1 = math.log(below), math.log(result.at)
    result.length = math.exp(x0 + (0.0 - r0) * (x1 - x0) / (r1 - r0)) if r1 != r0 else result.at
    result.text = f"~{result.length:,.0f} (between {below} and {result.at})"
    return result


def exponent(lengths: list[int], times: list[float]) -> float | None:
    """The slope of log time against log length over the upper half of the lengths (at least
    two): how the cost grows once fixed costs no longer dominate."""
    pairs = [(n, t) for n, t in zip(lengths, times, strict=True) if t and t > 0]
    upper = pairs[len(pairs) // 2:] if len(pairs) >= 4 else pairs
    if len(upper) < 2:
        return None
    x = np.log([n for n, _ in upper])
    y = np.log([t for _, t in upper])
    return float(np.polyfit(x, y, 1)[0])


# --- the contenders --------------------------------------------------------------------------


def _rotation(item_bytes: int) -> int:
    return max(1, min(LAYERS, ROTATION_BYTES // max(item_bytes, 1)))


def _rotating(calls: list[Callable[[], Any]]) -> Callable[[], Any]:
    state = {"next": 0}

    def call() -> Any:
        index = state["next"]
        state["next"] = (index + 1) % len(calls)
        return calls[index]()
    return call


def _unit_keys(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    k = rng.standard_normal(shape, dtype=np.float32)
    return (k / np.linalg.norm(k, axis=-1, keepdims=True)).astype(np.float32)


def _gates(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Log-decays as trained GLA layers have them: log sigmoid of a normal, scaled down (most
    gates between 0.9 and 1)."""
    x = rng.standard_normal(shape, dtype=np.float32) + 2.0
    return (-np.logaddexp(0.0, -x) / 8.0).astype(np.float32)


def linear_inputs(name: str, rng: np.random.Generator,
                  tokens: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The inputs of one call of a linear contender over ``tokens`` tokens: those with a row per
    token, and the others (weights and options of the layer)."""
    channels = HEADS * HEAD_DIM
    if name == SELECTIVE_SCAN:
        per_token = {key: rng.standard_normal((tokens, channels), dtype=np.float32)
                     for key in ("u", "delta", "z")}
        per_token["B"], per_token["C"] = (
            rng.standard_normal((tokens, SSM_STATE), dtype=np.float32) for _ in range(2))
        fixed = {"A": -rng.uniform(0.5, 4.0, (channels, SSM_STATE)).astype(np.float32),
                 "D": rng.standard_normal(channels, dtype=np.float32),
                 "delta_bias": rng.uniform(-4.0, -2.0, channels).astype(np.float32),
                 "delta_softplus": True}
        return per_token, fixed
    shape = (tokens, HEADS, HEAD_DIM)
    q = rng.standard_normal(shape, dtype=np.float32)
    v = rng.standard_normal(shape, dtype=np.float32)
    if name == GATED_DELTANET:
        return {"q": q, "k": _unit_keys(rng, shape), "v": v,
                "beta": rng.uniform(0.2, 0.9, (tokens, HEADS)).astype(np.float32),
                "g": _gates(rng, (tokens, HEADS))}, {}
    if name == MLSTM:
        return {"q": q, "k": rng.standard_normal(shape, dtype=np.float32), "v": v,
                "i": rng.standard_normal((tokens, HEADS), dtype=np.float32),
                "f": rng.standard_normal((tokens, HEADS), dtype=np.float32) + 3.0}, {}
    if name == RWKV7:
        kappa = _unit_keys(rng, shape)
        rate = rng.uniform(0.0, 1.0, shape).astype(np.float32)
        return {"r": q, "w": _gates(rng, shape), "k": rng.standard_normal(shape, np.float32),
                "v": v, "a": -kappa, "b": kappa * rate}, {"scale": 1.0}
    k = rng.standard_normal(shape, dtype=np.float32)
    if name == RWKV6:
        return ({"r": q, "k": k, "v": v, "w": _gates(rng, shape)},
                {"u": rng.standard_normal((HEADS, HEAD_DIM), dtype=np.float32),
                 "scale": 1.0})
    g = _gates(rng, shape if name == GLA else (tokens, HEADS))
    return {"q": q, "k": k, "v": v, "g": g}, {}


def linear_state_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """A linear contender's state, by the name of the keyword input it starts from: H x K x V,
    Mamba-1's channels x N, or mLSTM's memory, normalizer and stabilizer."""
    if name == SELECTIVE_SCAN:
        return {"initial_state": (HEADS * HEAD_DIM, SSM_STATE)}
    if name == MLSTM:
        return {"initial_C": (HEADS, HEAD_DIM, HEAD_DIM), "initial_n": (HEADS, HEAD_DIM),
                "initial_m": (HEADS,)}
    return {"initial_state": (HEADS, HEAD_DIM, HEAD_DIM)}


def state_arguments(name: str, arrays: tuple[np.ndarray, ...], *,
                    in_place: bool = False) -> dict[str, np.ndarray]:
    """The keyword arguments that start a call of ``name`` from the state ``arrays`` (as its
    final results come, in order); ``in_place``: the final state written back into them."""
    keys = list(linear_state_shapes(name))
    arguments = dict(zip(keys, arrays, strict=True))
    if in_place:
        arguments |= {"final_" + key.removeprefix("initial_"): array
                      for key, array in zip(keys, arrays, strict=True)}
    return arguments


def linear_function(engine: Any, name: str) -> Callable[..., Any]:
    return getattr(engine, KERNELS[name])


def check_linear(engine: Any, name: str, rng: np.random.Generator, tokens: int) -> float:
    """The largest difference between a linear contender's outputs (prefill, then a decoding
    step from its final state) and its float64 reference's; ValueError beyond TOLERANCE."""
    function = linear_function(engine, name)
    reference = importlib.import_module(f"{engine.__name__}.{KERNELS[name]}").reference
    inputs, fixed = linear_inputs(name, rng, tokens + 1)
    first = {key: value[:tokens] for key, value in inputs.items()} | fixed
    step = {key: value[tokens:] for key, value in inputs.items()} | fixed
    o, *state = function(**first, output_final_state=True)
    o_step = function(**step, **state_arguments(name, tuple(state)))
    expected, *expected_state = reference(**first, output_final_state=True)
    expected_step = reference(**step, **state_arguments(name, tuple(expected_state)))
    error = 0.0
    for got, wanted in ((o, expected), (o_step, expected_step)):
        if not np.allclose(got, wanted, rtol=TOLERANCE[0], atol=TOLERANCE[1]):
            raise ValueError(f"{name}: its outputs differ from its reference's by up to "
                             f"{float(np.abs(got - wanted).max()):.3g}")
        error = max(error, float(np.abs(got - wanted).max()))
    return error


def decode_calls(engine: Any, names: list[str], context: int, rng: np.random.Generator,
                 torch: Any) -> tuple[dict[str, Callable[[], Any]], dict[str, float]]:
    """One decoding step after ``context`` tokens, per contender, over rotating layers; and the
    engine attention's largest difference from SDPA's on the first layer."""
    calls: dict[str, Callable[[], Any]] = {}
    errors: dict[str, float] = {}
    m = context + 1
    kv_bytes = 2 * m * HEADS * HEAD_DIM * 4
    softmax_layers = []
    if ATTENTION in names or SDPA in names:
        for _ in range(_rotation(kv_bytes)):
            q = rng.standard_normal((1, HEADS, HEAD_DIM), dtype=np.float32)
            k, v = (rng.standard_normal((m, HEADS, HEAD_DIM), dtype=np.float32)
                    for _ in range(2))
            softmax_layers.append((q, k, v))
    if ATTENTION in names:
        out = np.empty((1, HEADS, HEAD_DIM), np.float32)
        calls[ATTENTION] = _rotating([lambda q=q, k=k, v=v: engine.attention(q, k, v, out=out)
                                      for q, k, v in softmax_layers])
    if SDPA in names and torch is not None:
        sdpa = torch.nn.functional.scaled_dot_product_attention
        layers = [tuple(torch.from_numpy(t).transpose(0, 1).unsqueeze(0).contiguous()
                        for t in layer) for layer in softmax_layers]
        calls[SDPA] = _rotating([lambda q=q, k=k, v=v: sdpa(q, k, v) for q, k, v in layers])
        if ATTENTION in names:
            mine = engine.attention(*softmax_layers[0])
            with torch.inference_mode():
                theirs = sdpa(*layers[0])[0].transpose(0, 1).numpy()
            errors[ATTENTION] = _checked("attention against SDPA", mine, theirs)
    for name in names:
        if name not in LINEAR:
            continue
        function = linear_function(engine, name)
        steps = []
        shapes = linear_state_shapes(name)
        layer_out = None
        for _ in range(_rotation(4 * sum(math.prod(shape) for shape in shapes.values()))):
            inputs, fixed = linear_inputs(name, rng, 1)
            state = tuple(rng.standard_normal(shape, dtype=np.float32) * 0.1
                          for shape in shapes.values())
            if layer_out is None:  # the layer's output, one buffer for every layer
                layer_out = np.empty_like(function(**inputs, **fixed,
                                                   **state_arguments(name, state)))
            # the state updated in place, as a decoder keeps it: nothing allocated per token
            arguments = inputs | fixed | state_arguments(name, state, in_place=True)
            steps.append(lambda function=function, arguments=arguments, out=layer_out:
                         function(**arguments, out=out))
        calls[name] = _rotating(steps)
    return calls, errors


def prefill_calls(engine: Any, names: list[str], length: int, rng: np.random.Generator,
                  torch: Any) -> tuple[dict[str, Callable[[], Any]], dict[str, float]]:
    """``length`` tokens from nothing, per contender (causal)."""
    calls: dict[str, Callable[[], Any]] = {}
    errors: dict[str, float] = {}
    shape = (length, HEADS, HEAD_DIM)
    q, k, v = (rng.standard_normal(shape, dtype=np.float32) for _ in range(3))
    if ATTENTION in names:
        out = np.empty(shape, np.float32)
        calls[ATTENTION] = lambda: engine.attention(q, k, v, out=out)
    if SDPA in names and torch is not None:
        sdpa = torch.nn.functional.scaled_dot_product_attention
        tq, tk, tv = (torch.from_numpy(t).transpose(0, 1).unsqueeze(0).contiguous()
                      for t in (q, k, v))
        calls[SDPA] = lambda: sdpa(tq, tk, tv, is_causal=True)
        if ATTENTION in names and length <= 1024:  # the check costs two more calls
            with torch.inference_mode():
                theirs = sdpa(tq, tk, tv, is_causal=True)[0].transpose(0, 1).numpy()
            errors[ATTENTION] = _checked("attention against SDPA",
                                         engine.attention(q, k, v), theirs)
    for name in names:
        if name in LINEAR:
            function = linear_function(engine, name)
            inputs, fixed = linear_inputs(name, rng, length)
            calls[name] = lambda function=function, inputs=inputs | fixed: function(**inputs)
    return calls, errors


def _checked(what: str, got: np.ndarray, expected: np.ndarray) -> float:
    error = float(np.abs(got - expected).max())
    if not np.allclose(got, expected, rtol=TOLERANCE[0], atol=TOLERANCE[1]):
        raise ValueError(f"{what}: the outputs differ by up to {error:.3g}")
    return error


# --- the case --------------------------------------------------------------------------------


def available_contenders(engine: Any, torch: Any) -> tuple[list[str], list[str]]:
    """The contenders that can run here, and notes on those that cannot."""
    names, notes = [], []
    for name in CONTENDERS:
        if name == SDPA:
            if torch is None:
                notes.append("PyTorch SDPA left out: torch is not installed")
                continue
        elif not hasattr(engine, KERNELS[name]) or KERNELS[name] not in engine.kernel_names():
            notes.append(f"{name} left out: the engine has no {KERNELS[name]} (run "
                         "`koschei code-generate`)")
            continue
        names.append(name)
    return names, notes


def run_crossover_case(budget_s: float, progress: Any, *, threads: int | None = None,
                       workspace: Any = None,
                       decode_contexts: tuple[int, ...] = DECODE_CONTEXTS,
                       prefill_lengths: tuple[int, ...] = PREFILL_LENGTHS
                       ) -> CrossoverCaseResult:
    """Measure every contender at every length (see the module docstring)."""
    from koschei import engine
    from koschei.bench.models import kernel_file
    from koschei.engine import _runtime

    try:
        import torch
    except ImportError:
        torch = None
    result = CrossoverCaseResult(threads=threads)
    names, result.notes = available_contenders(engine, torch)
    result.versions = {"torch": getattr(torch, "__version__", None),
                       "numpy": np.__version__}
    for name in names:
        if name in KERNELS:
            path = kernel_file(getattr(engine, KERNELS[name]))
            result.kernel_files[name] = (workspace.relative(path) if workspace is not None
                                         else str(path))
    rng = np.random.default_rng(SEED)
    # (mode, linear, softmax) -> length -> linear time / softmax time, paired by round
    ratios: dict[tuple[str, str, str], dict[int, float]] = {}
    previous_threads = torch.get_num_threads() if torch is not None else None
    try:
        if torch is not None and threads:
            torch.set_num_threads(threads)
        with _runtime.threads(threads or _runtime.max_threads()):
            for name in names:
                if name in LINEAR:
                    progress.step(f"benchmark {MODEL}: checking {name} against its reference")
                    result.checks[name] = check_linear(engine, name, rng, 100)
            for mode, lengths, make in ((DECODE, decode_contexts, decode_calls),
                                        (PREFILL, prefill_lengths, prefill_calls)):
                for length in lengths:
                    progress.step(f"benchmark {MODEL}: {mode} at {length} tokens: "
                                  f"{', '.join(names)}")
                    calls, errors = make(engine, names, length, rng, torch)
                    for name, error in errors.items():
                        result.checks[name] = max(result.checks.get(name, 0.0), error)
                    context = (torch.inference_mode() if torch is not None
                               else contextlib.nullcontext())
                    # PyTorch's and Numba's idle threads spin for a while after a call: a short
                    # call is timed after WARM_S of its own calls (see the encoder case)
                    warm_s = WARM_S if mode == DECODE or length <= WARM_MAX_PREFILL else 0.0
                    with context:
                        timings, _ = measure_interleaved(calls, budget_s, warm_s=warm_s)
                    for name, timing in timings.items():
                        result.points.append(CrossoverPoint(
                            mode=mode, length=length, contender=name,
                            median_s=timing.median_s, iqr_s=timing.iqr_s,
                            rounds=timing.rounds))
                    for linear in (n for n in names if n in LINEAR):
                        for softmax in (n for n in names if n in SOFTMAX):
                            ratio = median_ratio(timings[linear].samples_s,
                                                 timings[softmax].samples_s)
                            if ratio is not None:
                                ratios.setdefault((mode, linear, softmax), {})[length] = ratio
                    del calls
    except ValueError as error:
        result.verdict, result.error = "wrong", str(error)
        return result
    except MemoryError as error:
        result.verdict, result.error = "error", f"out of memory: {error}"
        return result
    finally:
        if torch is not None and previous_threads:
            torch.set_num_threads(previous_threads)
    result.crossovers = [crossover(mode, linear, softmax, by_length)
                         for (mode, linear, softmax), by_length in ratios.items()]
    for mode in MODES:
        lengths = result.lengths(mode)
        result.exponents[mode] = {}
        for name in result.contenders():
            times = [result.median(mode, name, n) for n in lengths]
            slope = exponent(lengths, [t or 0.0 for t in times])
            if slope is not None:
                result.exponents[mode][name] = slope
    return result

