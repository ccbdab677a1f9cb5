"""Model cases of the benchmark: decoding speed of the engine's decoder, fp32 against ternary.

For a decoder config (``igla_v2`` by default, 004's architecture) with random weights
(``DecoderConfig.random_parameters(seed=0)``), one model with float32 projections and one with
BitNet b1.58 ternary projections are built from the same parameters. Each gets a prompt of
``context`` random tokens (its prefill fills the KV cache) and is checked before it is timed:
the logits of one decoding step after the prompt must equal ``Decoder.reference_logits`` (the
kernels' NumPy references composed over the whole sequence) within ``LOGIT_TOLERANCE`` of the
largest logit. A model that does not match is "wrong" and not timed.

Then the decoding steps are timed interleaved, round by round, as the kernel cases are: each call
truncates the cache back to ``context`` positions and decodes one token, so every step attends
over ``context + 1`` positions. Reported per weights: tokens/s (1 / median step), the bytes a
step must read (``Decoder.bytes_per_token``: every weight in its stored form and the KV cache),
the bandwidth ceiling (those bytes read once, at the read bandwidth of the memory level they are
served from: ``Calibration.ceiling``, as for the kernel cases) and the fraction of it reached; and
the paired speedup of ternary over fp32 (the median of per-round ratios). The weights are cold
when a step's bytes exceed the largest cache the calibration measured (each layer's weights are
evicted before the next step reads them again: DRAM), as in a real model; a model small enough
to stay cached is labelled warm and held against that cache. A fraction above 1 is reported as
``over_ceiling``: a ceiling that a model beats is wrong.

The decoder runs on the kernels of the workspace's engine folder, as the kernel cases do; a
kernel the workspace has not generated comes from the installed package, and a note says so
(``kernel_files`` names the file of each).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from koschei.errors import UsageError

DEFAULT_CONFIG = "igla_v2"
# The engine modules the decoder runs on: the workspace's where it has them generated.
KERNELS = ("attention", "bitnet_linear", "bitnet_quantize", "linear", "rmsnorm", "rope", "sample",
           "silu")
DEFAULT_CONTEXT = 512
WEIGHTS = ("fp32", "ternary")
# The largest logit difference from the NumPy reference, as a share of the largest logit. Ternary
# projections quantize their activations to int8 per token: values that the reference path and
# the kernels compute a float32 rounding apart can land on neighbouring codes, and 12 layers add
# those up (about 1.5e-2 on igla_v2 with random weights).
LOGIT_TOLERANCE = {"fp32": 1e-4, "ternary": 5e-2}


@dataclass
class ModelWeightsResult:
    tokens_per_s: float | None = None  # 1 / the median decoding step
    bytes_per_token: int | None = None  # what one step must read
    ceiling_tokens_per_s: float | None = None  # DRAM bandwidth / bytes_per_token
    ceiling_fraction: float | None = None  # tokens_per_s / ceiling_tokens_per_s
    weight_bytes: int | None = None
    max_logit_error: float | None = None  # vs the reference, relative to the largest logit
    weights_state: str | None = None  # "cold" (read from memory every step) or "warm"
    memory_level: str | None = None  # where a step's bytes are served from
    ceiling_gbs: float | None = None  # that level's read bandwidth


@dataclass
class ModelCaseResult:
    model: str  # "decoder"
    config: str  # e.g. "igla_v2"
    context: int  # positions in the cache before each timed step
    verdict: str  # ok | wrong | error
    error: str | None = None
    contenders: dict[str, Any] = field(default_factory=dict)  # weights -> ContenderTiming
    weights: dict[str, ModelWeightsResult] = field(default_factory=dict)
    speedup_ternary_vs_fp32: float | None = None
    stopped: str | None = None
    # where each kernel the decoder ran came from: the workspace's engine folder, or the
    # installed package's for a kernel the workspace has not generated
    kernel_files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.model}/{self.config}_decode_{self.context}"


def check_configs(names: list[str]) -> None:
    """A UsageError unless every name is a decoder config."""
    from koschei.engine.models.decoder import DecoderConfig

    unknown = [name for name in names if name not in DecoderConfig.names()]
    if unknown:
        raise UsageError(f"--model {unknown[0]}: no decoder config of that name",
                         hint=f"decoder configs: {', '.join(DecoderConfig.names())}")


def kernel_file(function: Any) -> Path:
    import inspect

    return Path(inspect.getfile(function)).resolve()


def decoder_module() -> Any:
    """``koschei.engine.models.decoder``, bound to the kernels ``koschei.engine`` resolves now
    (the workspace's after ``koschei.engine.use_workspace``): imported again when it was first
    imported beside the kernels of another folder."""
    import importlib

    import koschei.engine

    module = importlib.import_module("koschei.engine.models.decoder")
    for name in KERNELS:
        bound = getattr(module, name, None)
        if bound is not None and kernel_file(bound) != kernel_file(getattr(koschei.engine, name)):
            return importlib.reload(module)
    return module


def run_decoder_case(workspace: Any, config_name: str, budget_s: float, calibration: Any,
                     progress: Any, *, context: int = DEFAULT_CONTEXT) -> ModelCaseResult:
    """Check, then time, one decoding step of the fp32 and the ternary decoder of a config, on
    the kernels of the workspace's engine folder."""
    from koschei.phases.benchmark import measure_interleaved, paired_speedup

    decoder = decoder_module()
    Decoder, DecoderConfig = decoder.Decoder, decoder.DecoderConfig
    config = DecoderConfig.named(config_name)
    context = min(context, config.max_seq_length - 1)
    result = ModelCaseResult(model="decoder", config=config_name, context=context,
                             verdict="error")
    folder = workspace.engine_dir.resolve()
    elsewhere = []
    for name in KERNELS:
        path = kernel_file(getattr(decoder, name))
        inside = path.is_relative_to(folder)
        result.kernel_files[name] = workspace.relative(path) if inside else str(path)
        if not inside:
            elsewhere.append(name)
    if elsewhere:
        result.notes.append(f"the decoder ran the installed package's {', '.join(elsewhere)}: "
                            f"{workspace.relative(workspace.engine_dir)}/ has no generated "
                            "module of that name")
    progress.step(f"benchmark {result.label}: random weights, prefill of {context} tokens and "
                  "a check against the NumPy references")
    try:
        parameters = config.random_parameters(0)
        ids = np.random.default_rng(0).integers(0, config.vocab_size, context + 1)
        models: dict[str, Any] = {}
        for weights in WEIGHTS:
            model = Decoder(config, parameters, weights=weights, max_len=context + 1)
            model.forward(ids[:context])  # the prefill
            step = model.forward(ids[context:])[0]  # (vocab,)
            expected = model.reference_logits(ids)[-1]
            error = float(np.abs(step - expected).max() / max(np.abs(expected).max(), 1e-30))
            entry = ModelWeightsResult(bytes_per_token=model.bytes_per_token(context + 1),
                                       weight_bytes=model.weight_nbytes, max_logit_error=error)
            result.weights[weights] = entry
            if not error <= LOGIT_TOLERANCE[weights]:
                result.verdict = "wrong"
                result.error = (f"{weights}: the decoding step's logits differ from the NumPy "
                                f"references by {error:.3g} of the largest logit (tolerance "
                                f"{LOGIT_TOLERANCE[weights]:g})")
                return result
            models[weights] = model
        del parameters
    except Exception as error:  # noqa: BLE001 - reported as the case's error
        result.error = f"{type(error).__name__}: {error}"
        return result

    def decoding_step(model: Any, token: np.ndarray) -> Any:
        def call() -> Any:
            model.cache.truncate(context)
            return model.forward(token)
        return call

    progress.step(f"benchmark {result.label}: timing {', '.join(WEIGHTS)} decoding steps")
    token = ids[context:]
    try:
        timings, result.stopped = measure_interleaved(
            {weights: decoding_step(model, token) for weights, model in models.items()},
            budget_s)
    except Exception as error:  # noqa: BLE001
        result.error = f"{type(error).__name__}: {error}"
        return result
    result.contenders = timings
    result.verdict = "ok"
    result.error = None
    for weights, timing in timings.items():
        entry = result.weights[weights]
        entry.tokens_per_s = 1.0 / timing.median_s
        ceiling = calibration.ceiling(entry.bytes_per_token, 0.0, entry.bytes_per_token)
        entry.memory_level, entry.ceiling_gbs = ceiling.level, ceiling.bandwidth_gbs
        entry.ceiling_tokens_per_s = ceiling.bandwidth_gbs * 1e9 / entry.bytes_per_token
        entry.ceiling_fraction = entry.tokens_per_s / entry.ceiling_tokens_per_s
        entry.weights_state = "cold" if ceiling.level == "DRAM" else "warm"
        if entry.weights_state == "warm":
            result.notes.append(
                f"{weights}: warm — a step reads {entry.bytes_per_token / 2**20:.0f} MiB, which "
                f"fits in the measured {ceiling.level} (held against its read bandwidth, "
                f"{ceiling.bandwidth_gbs:.1f} GB/s)")
        if entry.ceiling_fraction > 1:
            result.verdict = "over_ceiling"
            result.error = (f"{weights}: {entry.tokens_per_s:.1f} tokens/s is "
                            f"{entry.ceiling_fraction:.0%} of the bandwidth ceiling "
                            f"({entry.ceiling_tokens_per_s:.1f} tokens/s at "
                            f"{ceiling.bandwidth_gbs:.1f} GB/s, {ceiling.level}): the ceiling "
                            "is wrong")
    result.speedup_ternary_vs_fp32 = paired_speedup(timings["fp32"], timings["ternary"])
    return result
