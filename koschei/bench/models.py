"""Model cases of the benchmark: decoding speed of the engine's decoder, fp32 against bfloat16
and ternary weights.

For a decoder config (``igla_v2`` by default, 004's architecture) with random weights
(``DecoderConfig.random_parameters(seed=0)``), one model with float32 weights, one with bfloat16
weights and one with BitNet b1.58 ternary projections are built from the same parameters. Each gets a prompt of
``context`` random tokens (its prefill fills the KV cache) and is checked before it is timed:
the logits of one decoding step after the prompt must equal ``Decoder.reference_logits`` (the
kernels' NumPy references composed over the whole sequence) within ``LOGIT_TOLERANCE`` of the
largest logit. A model that does not match is "wrong" and not timed.

Then the decoding steps are timed interleaved, round by round, as the kernel cases are: each call
goes back to its state after the prompt (``Decoder.snapshot`` / ``restore``: the KV cache cut
back to ``context`` positions, a linear layer's state put back) and decodes one token, so every
step attends over ``context + 1`` positions. Reported per weights: tokens/s (1 / median step), the bytes a
step must read (``Decoder.bytes_per_token``: every weight in its stored form and the KV cache),
the bandwidth ceiling (those bytes read once, at the read bandwidth of the memory level they are
served from: ``Calibration.ceiling``, as for the kernel cases) and the fraction of it reached; and
the paired speedups of bf16 and ternary over fp32 (medians of per-round ratios). The weights are cold
when a step's bytes exceed the largest cache the calibration measured (each layer's weights are
evicted before the next step reads them again: DRAM), as in a real model; a model small enough
to stay cached is labelled warm and held against that cache. A fraction above 1 is reported as
``over_ceiling``: a ceiling that a model beats is wrong.

The decoder runs on the kernels of the workspace's engine folder, as the kernel cases do; a
kernel the workspace has not generated comes from the installed package, and a note says so
(``kernel_files`` names the file of each).

Prefill: each model also runs the prompt of ``context`` tokens from an empty cache
(``Decoder.generate(prompt, 0)``: every token through every layer, the logits of the last one),
timed interleaved in rounds of its own; reported as seconds and prompt tokens/s.

llama.cpp, the anchor (``pip install -e '.[llama]'``: llama-cpp-python and gguf): when
``llama_cpp`` is importable, each decoder's weights are written once per run as GGUF files
(``koschei.engine.models.gguf.write_gguf``) into a scratch folder that is removed afterwards, and
llama.cpp runs them on the same thread count, with ``n_batch`` 512, a float32 KV cache (as the
engine's) and the same protocol: the same prompt as one prefill, and decoding steps that drop
the cache back to ``context`` positions before each token. The rows (``LLAMA_CPP_ROWS``): F32
against the fp32 decoder and TQ2_0 (2-bit ternary) against the ternary decoder, with the
engine's speed over llama.cpp's (medians of per-round ratios, above 1: the engine is faster);
F16 (the bf16 decoder's weights, 2 bytes each as in the engine) against the bf16 decoder;
Q8_0 and Q4_0 as reference figures without a ratio. Each file is checked before it is
timed: llama.cpp's logits of the decoding step after the prompt must match its decoder's within
the row's tolerance of the largest logit, else the row is "wrong" and not timed. Q8_0 and Q4_0
run through ggml's AMX kernels on a CPU with AMX, whose tile set-up GCC 12 miscompiles (its
``_tile_loadconfig`` declares an 8-byte operand, so the configuration's stores are dropped and
``ldtilecfg`` faults: SIGSEGV at the first evaluation; the README says how to build llama.cpp
without AMX): they are first evaluated in a child process, and reported "crashed" when it dies.
Without llama-cpp-python the case says so (``LLAMA_CPP_NOT_INSTALLED``) and measures the rest.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from koschei.bench.timing import measure_interleaved, paired_speedup
from koschei.errors import UsageError

DEFAULT_CONFIG = "igla_v2"
# The engine modules the decoder runs on: the workspace's where it has them generated.
KERNELS = ("attention", "bf16_linear", "bitnet_linear", "bitnet_quantize", "gla", "linear",
           "matmul", "rmsnorm", "rope", "sample", "selective_scan", "silu")
DEFAULT_CONTEXT = 512
WEIGHTS = ("fp32", "bf16", "ternary")
# The largest logit difference from the NumPy reference, as a share of the largest logit. Ternary
# projections quantize their activations to int8 per token: values that the reference path and
# the kernels compute a float32 rounding apart can land on neighbouring codes, and 12 layers add
# those up (about 1.5e-2 on igla_v2 with random weights).
LOGIT_TOLERANCE = {"fp32": 1e-4, "bf16": 1e-4, "ternary": 5e-2}
# Ternary decoders with linear layers (gla, mamba2, mamba): a recurrent state carries a flipped code's
# effect into every later token, and random weights amplify it layer by layer (on igla at 8
# tokens: 6e-7 with 4 layers, 6e-3 with 6, 4e-2 with 12; 0.10-0.13 at 512 tokens, 0.07 on
# igla_hybrid). A kernel's bug moves the logits by their own size.
TERNARY_RECURRENT_TOLERANCE = 0.2


def logit_tolerance(config: Any, weights: str) -> float:
    """The largest logit difference from the NumPy reference that a decoder of ``config`` with
    ``weights`` may show, as a share of the largest logit."""
    if weights == "ternary" and any(kind != "attention" for kind in config.layer_types):
        return TERNARY_RECURRENT_TOLERANCE
    return LOGIT_TOLERANCE[weights]

LLAMA_CPP_INSTALL = "pip install -e '.[llama]'"
LLAMA_CPP_NOT_INSTALLED = f"llama.cpp: not installed — {LLAMA_CPP_INSTALL}"
LLAMA_CPP_BATCH = 512  # n_batch and n_ubatch: a 512-token prompt is one batch
LLAMA_CPP_PROBE_TIMEOUT_S = 300.0


class LlamaCppRow(NamedTuple):
    """One GGUF file timed in llama.cpp."""

    tensor_type: str  # of the projection matrices (write_gguf's tensor_type)
    weights: str  # the engine decoder whose weights the file holds, and whose logits it must match
    compared: bool  # the engine's speed over llama.cpp's is reported (else: a reference figure)
    # the largest logit difference from that decoder's, as a share of its largest logit: F32 is
    # the same computation in another order (igla_v2: 1.5e-6); F16 rounds every weight (1.5e-3);
    # TQ2_0 holds the same ternary weights but quantizes activations per block of 256, the
    # engine per token (2.2e-2); Q8_0 and Q4_0 quantize the fp32 weights to 8 and 4 bits
    # (3.0e-2 and 0.40: the logits of random weights are small, and 4-bit rounding moves them
    # as much). A file with the rotary pairs of q and k left in Hugging Face's order is off by
    # more than 1.
    tolerance: float
    # evaluated in a child process first: ggml runs these through its AMX kernels
    probe: bool = False


LLAMA_CPP_ROWS = (
    LlamaCppRow("F32", "fp32", True, 1e-4),
    LlamaCppRow("TQ2_0", "ternary", True, 5e-2),
    LlamaCppRow("F16", "bf16", True, 1e-2),
    LlamaCppRow("Q8_0", "fp32", False, 0.1, probe=True),
    LlamaCppRow("Q4_0", "fp32", False, 0.6, probe=True),
)


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
    prefill_s: float | None = None  # the median prefill of the prompt (``context`` tokens)
    prefill_tokens_per_s: float | None = None  # context / prefill_s


@dataclass
class LlamaCppResult:
    """One GGUF file in llama.cpp, beside the engine decoder whose weights it holds."""

    tensor_type: str  # of the projection matrices: F32, TQ2_0, F16, Q8_0, Q4_0
    weights: str  # that engine decoder: fp32, bf16 or ternary
    compared: bool  # engine ÷ llama.cpp ratios reported (else a reference figure)
    verdict: str  # ok | wrong | error | crashed | unsupported
    error: str | None = None
    file_bytes: int | None = None
    tolerance: float | None = None
    max_logit_error: float | None = None  # vs that decoder's step, share of its largest logit
    decode: Any = None  # ContenderTiming of a decoding step at ``context``
    prefill: Any = None  # ContenderTiming of the prompt's prefill
    tokens_per_s: float | None = None  # 1 / the median decoding step
    prefill_tokens_per_s: float | None = None
    # the engine's speed over llama.cpp's: medians of per-round llama.cpp time / engine time
    engine_speedup: float | None = None  # decoding steps
    engine_prefill_speedup: float | None = None

    @property
    def name(self) -> str:
        return f"llama.cpp {self.tensor_type}"


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
    speedup_bf16_vs_fp32: float | None = None
    stopped: str | None = None
    # weights -> ContenderTiming of the prefill of the prompt (``context`` tokens)
    prefill: dict[str, Any] = field(default_factory=dict)
    prefill_stopped: str | None = None
    # llama.cpp, the anchor: one row per GGUF type (LLAMA_CPP_ROWS), its version and settings,
    # and why it was not measured (e.g. LLAMA_CPP_NOT_INSTALLED)
    llama_cpp: list[LlamaCppResult] = field(default_factory=list)
    llama_cpp_info: dict[str, Any] = field(default_factory=dict)
    llama_cpp_note: str | None = None
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


def model_module(name: str, kernels: tuple[str, ...]) -> Any:
    """``koschei.engine.models.<name>``, bound to the kernels ``koschei.engine`` resolves now
    (the workspace's after ``koschei.engine.use_workspace``): imported again when it was first
    imported beside the kernels of another folder (``kernels``: the ones it binds)."""
    import importlib

    import koschei.engine

    module = importlib.import_module(f"koschei.engine.models.{name}")
    for kernel in kernels:
        bound = getattr(module, kernel, None)
        if bound is not None and kernel_file(bound) != kernel_file(getattr(koschei.engine, kernel)):
            return importlib.reload(module)
    return module


def run_decoder_case(workspace: Any, config_name: str, budget_s: float, calibration: Any,
                     progress: Any, *, context: int = DEFAULT_CONTEXT,
                     threads: int | None = None) -> ModelCaseResult:
    """Check, then time, the prefill of a prompt and one decoding step of the fp32, bf16 and
    ternary decoders of a config, on the kernels of the workspace's engine folder; and llama.cpp
    on the same weights when it is installed (``threads``: its thread count, default all cores).
    """
    decoder = model_module("decoder", KERNELS)
    Decoder, DecoderConfig = decoder.Decoder, decoder.DecoderConfig
    config = DecoderConfig.named(config_name)
    context = min(context, config.max_seq_length - 1)
    threads = threads or os.cpu_count() or 1
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
        steps: dict[str, np.ndarray] = {}  # each model's checked logits of the decoding step
        after_prompt: dict[str, Any] = {}  # each model right after the prefill
        for weights in WEIGHTS:
            model = Decoder(config, parameters, weights=weights, max_len=context + 1)
            model.forward(ids[:context])  # the prefill
            after_prompt[weights] = model.snapshot()
            step = model.forward(ids[context:])[0]  # (vocab,)
            expected = model.reference_logits(ids)[-1]
            error = relative_error(step, expected)
            entry = ModelWeightsResult(bytes_per_token=model.bytes_per_token(context + 1),
                                       weight_bytes=model.weight_nbytes, max_logit_error=error)
            result.weights[weights] = entry
            tolerance = logit_tolerance(config, weights)
            if not error <= tolerance:
                result.verdict = "wrong"
                result.error = (f"{weights}: the decoding step's logits differ from the NumPy "
                                f"references by {error:.3g} of the largest logit (tolerance "
                                f"{tolerance:g})")
                return result
            models[weights] = model
            steps[weights] = step
        del parameters
    except Exception as error:  # noqa: BLE001 - reported as the case's error
        result.error = f"{type(error).__name__}: {error}"
        return result

    prompt, token = ids[:context], ids[context:]
    with tempfile.TemporaryDirectory(prefix="koschei-gguf-") as scratch, \
            contextlib.ExitStack() as loaded:
        anchors = load_llama_cpp(result, models, steps, prompt, token, threads, Path(scratch),
                                 progress, loaded)
        decode = {weights: decoding_step(model, after_prompt[weights], token)
                  for weights, model in models.items()}
        decode.update({row.name: anchors[row.tensor_type].step for row in result.llama_cpp
                       if row.tensor_type in anchors})
        prefill = {weights: prefill_call(model, prompt) for weights, model in models.items()}
        prefill.update({row.name: anchors[row.tensor_type].prefill for row in result.llama_cpp
                        if row.tensor_type in anchors})
        names = ", ".join(decode)
        try:
            progress.step(f"benchmark {result.label}: timing decoding steps ({names})")
            timings, result.stopped = measure_interleaved(decode, budget_s)
            progress.step(f"benchmark {result.label}: timing prefills of {context} tokens "
                          f"({names})")
            prefill_timings, result.prefill_stopped = measure_interleaved(prefill, budget_s)
        except Exception as error:  # noqa: BLE001
            result.error = f"{type(error).__name__}: {error}"
            return result
    result.contenders = {weights: timings[weights] for weights in models}
    result.prefill = {weights: prefill_timings[weights] for weights in models}
    result.verdict = "ok"
    result.error = None
    for weights, timing in result.contenders.items():
        entry = result.weights[weights]
        entry.tokens_per_s = 1.0 / timing.median_s
        entry.prefill_s = result.prefill[weights].median_s
        entry.prefill_tokens_per_s = context / entry.prefill_s
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
    result.speedup_bf16_vs_fp32 = paired_speedup(timings["fp32"], timings["bf16"])
    for row in result.llama_cpp:
        if row.name not in timings:
            continue
        row.decode, row.prefill = timings[row.name], prefill_timings[row.name]
        row.tokens_per_s = 1.0 / row.decode.median_s
        row.prefill_tokens_per_s = context / row.prefill.median_s
        if row.compared:
            row.engine_speedup = paired_speedup(row.decode, timings[row.weights])
            row.engine_prefill_speedup = paired_speedup(row.prefill, prefill_timings[row.weights])
    return result


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    """The largest difference, as a share of the largest magnitude in ``expected``."""
    return float(np.abs(got - expected).max() / max(float(np.abs(expected).max()), 1e-30))


def decoding_step(model: Any, after_prompt: Any, token: np.ndarray) -> Any:
    """One decoding step after the prompt: the model goes back to ``after_prompt`` (its
    snapshot: the KV cache cut back, the linear layers' states put back), then decodes."""
    def call() -> Any:
        model.restore(after_prompt)
        return model.forward(token)
    return call


def prefill_call(model: Any, prompt: np.ndarray) -> Any:
    """The prompt from an empty cache, the logits of its last token (as llama.cpp computes)."""
    def call() -> Any:
        return model.generate(prompt, 0)
    return call


# --- llama.cpp ------------------------------------------------------------------------------------


def llama_cpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except Exception:  # noqa: BLE001 - an install whose shared library does not load is absent
        return False
    return True


class LlamaCppModel:
    """A GGUF file in llama.cpp (through llama-cpp-python) with room for ``n_ctx`` positions,
    ``threads`` threads for prompts and steps alike, batches of LLAMA_CPP_BATCH tokens and a
    float32 KV cache; the logits of the last token of each call only."""

    def __init__(self, path: Path, n_ctx: int, threads: int) -> None:
        import llama_cpp

        self._llama_cpp = llama_cpp
        self.llama = llama_cpp.Llama(
            str(path), n_ctx=n_ctx, n_batch=LLAMA_CPP_BATCH, n_ubatch=LLAMA_CPP_BATCH,
            n_threads=threads, n_threads_batch=threads, type_k=llama_cpp.GGML_TYPE_F32,
            type_v=llama_cpp.GGML_TYPE_F32, logits_all=False, verbose=False)
        self.vocab = self.llama.n_vocab()

    def run_prompt(self, prompt: list[int]) -> None:
        """The prompt from an empty cache."""
        self.llama.reset()
        self.llama.eval(prompt)

    def run_step(self, context: int, token: list[int]) -> None:
        """One token at position ``context``: the cache first drops every later position."""
        self.llama.n_tokens = context
        self.llama.eval(token)

    def logits(self) -> np.ndarray:
        """The logits (vocab,) of the last token evaluated (a copy)."""
        pointer = self._llama_cpp.llama_get_logits_ith(self.llama.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.vocab,)).copy()

    def close(self) -> None:
        self.llama.close()


@dataclass
class _Anchor:
    """The timed calls of one loaded llama.cpp model."""

    step: Any
    prefill: Any


def llama_cpp_settings(threads: int, context: int) -> dict[str, Any]:
    """What the llama.cpp rows ran with (``ModelCaseResult.llama_cpp_info``)."""
    import llama_cpp

    return {"llama_cpp_python": getattr(llama_cpp, "__version__", None),
            "system_info": llama_cpp_system_info().strip(), "n_threads": threads,
            "n_batch": LLAMA_CPP_BATCH, "n_ubatch": LLAMA_CPP_BATCH, "n_ctx": context + 1,
            "kv_cache": "F32", "flash_attn": False}


def load_llama_cpp(result: ModelCaseResult, models: dict[str, Any], steps: dict[str, np.ndarray],
                   prompt: np.ndarray, token: np.ndarray, threads: int, scratch: Path,
                   progress: Any, loaded: contextlib.ExitStack) -> dict[str, _Anchor]:
    """Write each row's GGUF into ``scratch``, load it in llama.cpp and check its logits; the
    timed calls of every row that passed, by tensor type. Fills ``result.llama_cpp``."""
    if not llama_cpp_available():
        result.llama_cpp_note = LLAMA_CPP_NOT_INSTALLED
        return {}
    layer_types = sorted({kind for model in models.values() for kind in model.config.layer_types}
                         - {"attention"})
    if layer_types:
        result.llama_cpp_note = (f"llama.cpp: left out: the decoder has {', '.join(layer_types)} "
                                 "layers, which GGUF's llama architecture cannot hold")
        return {}
    from koschei.engine.models.gguf import TENSOR_TYPES, write_gguf

    context = prompt.shape[0]
    result.llama_cpp_info = llama_cpp_settings(threads, context)
    prompt_ids, token_ids = [int(i) for i in prompt], [int(i) for i in token]
    anchors: dict[str, _Anchor] = {}
    for row in LLAMA_CPP_ROWS:
        entry = LlamaCppResult(tensor_type=row.tensor_type, weights=row.weights,
                               compared=row.compared, verdict="error", tolerance=row.tolerance)
        result.llama_cpp.append(entry)
        config = models[row.weights].config
        block = TENSOR_TYPES[row.tensor_type]
        if config.hidden_size % block or config.intermediate_size % block:
            entry.verdict = "unsupported"
            entry.error = (f"{row.tensor_type} needs rows of a multiple of {block} values: "
                           f"hidden_size {config.hidden_size}, intermediate_size "
                           f"{config.intermediate_size}")
            continue
        progress.step(f"benchmark {result.label}: llama.cpp {row.tensor_type}: writing the "
                      "GGUF file and checking its logits")
        path = scratch / f"{result.config}-{row.tensor_type}.gguf"
        try:
            write_gguf(models[row.weights], path, row.tensor_type)
            entry.file_bytes = path.stat().st_size
            if row.probe:
                crash = probe_llama_cpp(path, context, threads)
                if crash is not None:
                    entry.verdict, entry.error = "crashed", crash
                    continue
            model = LlamaCppModel(path, context + 1, threads)
            loaded.callback(model.close)
            model.run_prompt(prompt_ids)
            model.run_step(context, token_ids)
            entry.max_logit_error = relative_error(model.logits(), steps[row.weights])
        except Exception as error:  # noqa: BLE001 - reported as the row's error
            entry.error = f"{type(error).__name__}: {error}"
            continue
        if not entry.max_logit_error <= row.tolerance:
            entry.verdict = "wrong"
            entry.error = (f"llama.cpp's logits of the decoding step differ from the {row.weights} "
                           f"decoder's by {entry.max_logit_error:.3g} of the largest logit "
                           f"(tolerance {row.tolerance:g})")
            continue
        entry.verdict = "ok"
        anchors[row.tensor_type] = _Anchor(
            step=_bound(model.run_step, context, token_ids),
            prefill=_bound(model.run_prompt, prompt_ids))
    return anchors


def _bound(function: Any, *args: Any) -> Any:
    def call() -> Any:
        return function(*args)
    return call


_PROBE = """
import sys
import llama_cpp
path, context, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llama = llama_cpp.Llama(path, n_ctx=context + 1, n_batch={batch}, n_ubatch={batch},
                        n_threads=threads, n_threads_batch=threads, verbose=False)
vocab = llama.n_vocab()
llama.eval([index % vocab for index in range(context)])
llama.eval([0])
"""


def probe_llama_cpp(path: Path, context: int, threads: int) -> str | None:
    """None when llama.cpp, in a child process, runs a prompt of ``context`` tokens and one step
    of the GGUF at ``path``; else what happened (a signal that killed it, an error)."""
    command = [sys.executable, "-c", _PROBE.format(batch=LLAMA_CPP_BATCH), str(path),
               str(context), str(threads)]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, errors="replace",
                                   timeout=LLAMA_CPP_PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return (f"llama.cpp took more than {LLAMA_CPP_PROBE_TIMEOUT_S:.0f} s for a prompt in a "
                "child process")
    if completed.returncode == 0:
        return None
    if completed.returncode < 0:
        try:
            name = signal.Signals(-completed.returncode).name
        except ValueError:
            name = f"signal {-completed.returncode}"
        amx = "AMX_INT8 = 1" in llama_cpp_system_info()
        return (f"llama.cpp died of {name} at its first evaluation (in a child process)"
                + ("; this build runs these weights through ggml's AMX kernels (AMX_INT8 = 1): "
                   "see the README on building llama.cpp without AMX" if amx else ""))
    lines = [line for line in completed.stderr.strip().splitlines() if line.strip()]
    return (f"llama.cpp failed in a child process (exit {completed.returncode}): "
            + (lines[-1] if lines else "no message"))


def llama_cpp_system_info() -> str:
    """llama.cpp's build features ("AVX512 = 1 | ..."), or "" when it does not load."""
    try:
        import llama_cpp
    except Exception:  # noqa: BLE001
        return ""
    system = llama_cpp.llama_print_system_info()
    return system.decode(errors="replace") if isinstance(system, bytes) else str(system)
