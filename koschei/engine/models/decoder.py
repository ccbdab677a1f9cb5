"""A decoder-only language model (the iGLA-LLM v2 architecture) composed of engine kernels.

For token ids t_0 .. t_{n-1} (positions p = 0 .. n-1), hidden size d, L layers:

    x = E[t]                                                   # token embedding, (n, d)
    for each layer:
        h = rmsnorm(x) * g_attn                                # RMSNorm, arXiv:1910.07467
        q, k, v = h W_q^T, h W_k^T, h W_v^T                    # (n, hq hd), (n, hkv hd) x 2
        q, k = rope(q, p), rope(k, p)                          # RoPE, rotate-half pairing
        x = x + attention(q, K_cache, V_cache) W_o^T           # causal GQA, arXiv:2305.13245
        h = rmsnorm(x) * g_ffn
        x = x + (silu(h W_gate^T) * (h W_up^T)) W_down^T       # SwiGLU, arXiv:2002.05202
    logits = (rmsnorm(x) * g_final) E^T                        # tied embeddings, arXiv:1608.05859

- RoPE pairs coordinate j with j + head_dim / 2 ("rotate half", as Llama in Hugging Face
  transformers and GPT-NeoX), angle p * theta^(-2j / head_dim), on queries and keys before they
  enter the cache (RoFormer, arXiv:2104.09864).
- Grouped-query attention: query head h reads key/value head h // (hq / hkv).
- The output projection is the embedding matrix itself (tied): logits = h E^T, E (vocab, d).
- Weights are in PyTorch's Linear layout (d_out, d_in), named as Hugging Face's Llama
  (``layers.0.self_attn.q_proj.weight``, ...), see :meth:`DecoderConfig.parameter_shapes`.
- ``weights="bf16"``: every weight matrix, the embedding included, is rounded once to bfloat16
  (to nearest, ties to even) and kept in 16 bits: the engine's ``bf16_linear`` widens the
  weights exactly to float32 in registers and sums in float32, so a decoding step reads half
  the bytes of float32 weights; the RMSNorm gains stay float32.
- ``weights="ternary"``: every projection matrix (q, k, v, o, gate, up, down) is quantized to
  BitNet b1.58 ternary weights {-1, 0, +1} times one absmean scale (arXiv:2402.17764) and applied
  by the engine's ``bitnet_linear`` (which quantizes the activations per token to int8);
  the embedding (and so the tied output projection) and the RMSNorm gains stay float32.
- ``kv_dtype="int8"``: the KV cache stores keys and values as int8 with one scale per
  (position, head), see :class:`~koschei.engine.models.kv_cache.KVCache`.

The kernels: ``rmsnorm``, ``rope``, ``attention``, ``matmul`` (the float32 projections: their
weights packed once, at load, into the panels of its GEMM), ``linear`` (the float32 logits),
``silu`` (the FFN's gate: swiglu's computation in the model's own buffers), ``bf16_linear``
(bfloat16 weights), ``bitnet_linear`` (ternary projections) and ``sample``; the embedding
gather and the residual adds are NumPy. Every buffer of a decoding step is allocated once per
model and reused. A prompt runs in chunks of at most ``PREFILL_CHUNK`` tokens.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from koschei.engine import _runtime as _rt
from koschei.engine import (
    attention,
    bf16_linear,
    bitnet_linear,
    bitnet_quantize,
    linear,
    matmul,
    rmsnorm,
    rope,
    sample,
    silu,
)
from koschei.engine.models.kv_cache import KVCache

# the module of the matmul kernel in use (the workspace's, when the engine runs one's): the float32
# projections run on its packed GEMM (packed_weight, gemm)
_matmul = importlib.import_module(matmul.__module__)

__all__ = ["Decoder", "DecoderConfig"]

_FLOAT32 = np.dtype(np.float32)
_BFLOAT16 = np.dtype("bfloat16")  # ml_dtypes' (registered by koschei.engine._runtime)
_WEIGHTS = ("fp32", "bf16", "ternary")
_KV_DTYPES = ("float32", "int8")
# the standard deviation of the random weights (GPT-2's and Llama's initializer range)
DEFAULT_INIT_STD = 0.02
# A prompt runs in chunks of at most this many tokens: the buffers of a forward pass hold one
# chunk, and its products are large enough for the GEMM's blocks.
PREFILL_CHUNK = 512


# --- the configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DecoderConfig:
    """The sizes of a decoder. ``DecoderConfig.named("igla_v2")`` is the seed's iGLA-LLM v2.

    rms_norm_eps is 1e-5 (Llama 2's value) unless given: added to the mean square in every RMSNorm.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_seq_length: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        function = "DecoderConfig"
        for field in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                      "intermediate_size", "max_seq_length"):
            object.__setattr__(self, field, _rt.as_int_at_least(function, field, getattr(self, field), 1))
        for field in ("rope_theta", "rms_norm_eps"):
            value = _rt.as_float(function, field, getattr(self, field))
            if not value > 0:
                raise ValueError(f"{function}: {field}: expected > 0, got {value!r}")
            object.__setattr__(self, field, value)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"{function}: hidden_size: expected a multiple of num_heads="
                             f"{self.num_heads}, got {self.hidden_size}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{function}: num_kv_heads: expected a divisor of num_heads="
                             f"{self.num_heads} (each key/value head serves a group of query "
                             f"heads), got {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"{function}: hidden_size: expected an even head_dim (RoPE turns "
                             f"pairs of coordinates), got hidden_size / num_heads = "
                             f"{self.hidden_size} / {self.num_heads} = {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @staticmethod
    def names() -> list[str]:
        """The named configurations."""
        return sorted(_NAMED)

    @staticmethod
    def named(name: str) -> DecoderConfig:
        """A named configuration: ``igla_v2`` (seed 004's table), ``tiny`` and ``small``."""
        config = _NAMED.get(name) if isinstance(name, str) else None
        if config is None:
            raise ValueError(f"DecoderConfig.named: name: expected one of {sorted(_NAMED)}, got "
                             f"{_rt.describe(name)}")
        return config

    def replace(self, **changes: Any) -> DecoderConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's name and shape (PyTorch Linear layout: (d_out, d_in))."""
        d, hd, f = self.hidden_size, self.head_dim, self.intermediate_size
        shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (self.vocab_size, d)}
        for layer in range(self.num_layers):
            prefix = f"layers.{layer}."
            shapes[prefix + "input_layernorm.weight"] = (d,)
            shapes[prefix + "self_attn.q_proj.weight"] = (self.num_heads * hd, d)
            shapes[prefix + "self_attn.k_proj.weight"] = (self.num_kv_heads * hd, d)
            shapes[prefix + "self_attn.v_proj.weight"] = (self.num_kv_heads * hd, d)
            shapes[prefix + "self_attn.o_proj.weight"] = (d, self.num_heads * hd)
            shapes[prefix + "post_attention_layernorm.weight"] = (d,)
            shapes[prefix + "mlp.gate_proj.weight"] = (f, d)
            shapes[prefix + "mlp.up_proj.weight"] = (f, d)
            shapes[prefix + "mlp.down_proj.weight"] = (d, f)
        shapes["norm.weight"] = (d,)
        return shapes

    def num_parameters(self) -> int:
        return sum(math.prod(shape) for shape in self.parameter_shapes().values())

    def random_parameters(self, seed: int = 0, *,
                          std: float = DEFAULT_INIT_STD) -> dict[str, np.ndarray]:
        """Random float32 parameters: every matrix N(0, std^2), every RMSNorm gain 1."""
        function = "DecoderConfig.random_parameters"
        seed = _rt.as_int_at_least(function, "seed", seed, 0)
        std = _rt.as_float(function, "std", std)
        if not std > 0:
            raise ValueError(f"{function}: std: expected > 0, got {std!r}")
        rng = np.random.default_rng(seed)
        parameters = {}
        for name, shape in self.parameter_shapes().items():
            if len(shape) == 1:
                parameters[name] = np.ones(shape, dtype=np.float32)
            else:
                matrix = rng.standard_normal(shape, dtype=np.float32)
                matrix *= np.float32(std)
                parameters[name] = matrix
        return parameters


_NAMED = {
    # seed 004, "iGLA-LLM v2 Architecture": 12 query heads over 4 KV heads of 64 values
    "igla_v2": DecoderConfig(vocab_size=32000, hidden_size=768, num_layers=12, num_heads=12,
                             num_kv_heads=4, intermediate_size=2048, max_seq_length=4096,
                             rope_theta=10000.0),
    # for tests: every shape differs from every other, GQA 2:1
    "tiny": DecoderConfig(vocab_size=97, hidden_size=64, num_layers=2, num_heads=4,
                          num_kv_heads=2, intermediate_size=160, max_seq_length=64),
    "small": DecoderConfig(vocab_size=1000, hidden_size=256, num_layers=4, num_heads=8,
                           num_kv_heads=2, intermediate_size=688, max_seq_length=512),
}


# --- projections ----------------------------------------------------------------------------------


def _reference(kernel: str) -> Any:
    """The NumPy reference of the engine kernel ``kernel``."""
    return importlib.import_module(f"koschei.engine.{kernel}").reference


class _Float32Projection:
    """y = x W^T with W (d_out, d_in) float32, kept only as the panels of matmul's packed GEMM
    (packed once, at load): a prompt's rows run the GEMM without packing anything, a decoding
    step streams the panels (both read the weights once, contiguously)."""

    def __init__(self, weight: np.ndarray) -> None:
        self.shape = weight.shape
        self.packed = _matmul.packed_weight(weight)  # (ceil(d_out / nr), d_in, nr)

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes

    @property
    def weight(self) -> np.ndarray:
        """W (d_out, d_in), unpacked (a new array)."""
        panels, d_in, nr = self.packed.shape
        return np.ascontiguousarray(self.packed.transpose(0, 2, 1).reshape(panels * nr, d_in)
                                    [:self.shape[0]])

    def __call__(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        _matmul.gemm(x, self.packed, None, out)
        return out

    def reference(self, x: np.ndarray) -> np.ndarray:
        return _reference("linear")(x, self.weight)


class _BFloat16Projection:
    """y = bf16_linear(x, W) with W (d_out, d_in) rounded once to bfloat16 (to nearest even;
    kept by reference when it is bfloat16 already): a decoding step reads 2 bytes per weight."""

    def __init__(self, weight: np.ndarray) -> None:
        self.stored = weight if weight.dtype == _BFLOAT16 else weight.astype(_BFLOAT16)

    @property
    def nbytes(self) -> int:
        return self.stored.nbytes

    @property
    def weight(self) -> np.ndarray:
        """W (d_out, d_in) as float32 (exactly the bfloat16 values; a new array)."""
        return self.stored.astype(np.float32)

    def __call__(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        return bf16_linear(x, self.stored, out=out)

    def reference(self, x: np.ndarray) -> np.ndarray:
        return _reference("bf16_linear")(x, self.stored)


class _Float32Output:
    """logits = h E^T on the float32 embedding E (vocab, d) itself (linear; no packed copy)."""

    def __init__(self, embedding: np.ndarray) -> None:
        self.stored = embedding

    def __call__(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        return linear(x, self.stored, out=out)

    def reference(self, x: np.ndarray) -> np.ndarray:
        return _reference("linear")(x, self.stored)


class _TernaryProjection:
    """y = bitnet_linear(x, packed, scale): W ~ scale * ternary(W), activations int8 per token."""

    def __init__(self, weight: np.ndarray) -> None:
        self.packed, self.scale = bitnet_quantize(weight)  # (d_out, (d_in + 3) // 4) uint8, ()

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + np.asarray(self.scale).nbytes

    def __call__(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        return bitnet_linear(x, self.packed, self.scale, out=out)

    def reference(self, x: np.ndarray) -> np.ndarray:
        return _reference("bitnet_linear")(x, self.packed, self.scale)


_Projection = _Float32Projection | _BFloat16Projection | _TernaryProjection
_PROJECTIONS = {"fp32": _Float32Projection, "bf16": _BFloat16Projection,
                "ternary": _TernaryProjection}


@dataclass
class _Layer:
    attention_norm: np.ndarray  # (d,)
    q_proj: _Projection  # (hq hd, d)
    k_proj: _Projection  # (hkv hd, d)
    v_proj: _Projection  # (hkv hd, d)
    o_proj: _Projection  # (d, hq hd)
    ffn_norm: np.ndarray  # (d,)
    gate_proj: _Projection  # (f, d)
    up_proj: _Projection  # (f, d)
    down_proj: _Projection  # (d, f)


class _Buffers:
    """Every intermediate of a forward pass over n tokens, allocated once."""

    def __init__(self, config: DecoderConfig, n: int, logits_rows: int) -> None:
        d, hd, f = config.hidden_size, config.head_dim, config.intermediate_size
        hq, hkv = config.num_heads, config.num_kv_heads
        self.n = n
        self.positions = np.zeros(n, dtype=np.int64)  # (n,)
        self.x = np.zeros((n, d), dtype=np.float32)  # the residual stream
        self.h = np.zeros((n, d), dtype=np.float32)  # normalized x
        self.q = np.zeros((n, hq * hd), dtype=np.float32)
        self.k = np.zeros((n, hkv * hd), dtype=np.float32)
        self.v = np.zeros((n, hkv * hd), dtype=np.float32)
        self.q_rotated = np.zeros((n, hq, hd), dtype=np.float32)
        self.k_rotated = np.zeros((n, hkv, hd), dtype=np.float32)
        self.attended = np.zeros((n, hq, hd), dtype=np.float32)
        self.projected = np.zeros((n, d), dtype=np.float32)  # attention or FFN output
        self.gate = np.zeros((n, f), dtype=np.float32)  # the FFN's hidden activations
        self.up = np.zeros((n, f), dtype=np.float32)
        self.activated = np.zeros((n, f), dtype=np.float32)
        self.logits = np.zeros((logits_rows, config.vocab_size), dtype=np.float32)


# --- the model ------------------------------------------------------------------------------------


class Decoder:
    """The decoder of the module docstring, with its KV cache.

    Args:
        config: the sizes.
        parameters: float32 arrays by name and shape as :meth:`DecoderConfig.parameter_shapes`
            (kept by reference when float32 and C-contiguous; bfloat16 and ternary weights
            are rounded or quantized and the float32 matrices not kept).
        weights: ``"fp32"``, ``"bf16"`` (every weight matrix in bfloat16, the embedding
            included) or ``"ternary"`` (BitNet b1.58 projections; embeddings float32).
        kv_dtype: ``"float32"`` or ``"int8"`` (the KV cache's storage).
        max_len: positions the KV cache holds (default: ``config.max_seq_length``).

    ``forward(ids)`` feeds tokens after the ones the cache holds and returns their logits;
    ``generate(ids, n)`` starts over from a prompt; ``reset()`` empties the cache.
    """

    def __init__(self, config: DecoderConfig, parameters: Mapping[str, np.ndarray], *,
                 weights: str = "fp32", kv_dtype: str = "float32",
                 max_len: int | None = None) -> None:
        function = "Decoder"
        if not isinstance(config, DecoderConfig):
            raise TypeError(f"{function}: config: expected a DecoderConfig, got "
                            f"{_rt.describe(config)}")
        self.config = config
        self.weights = _rt.as_choice(function, "weights", weights, _WEIGHTS)
        self.kv_dtype = _rt.as_choice(function, "kv_dtype", kv_dtype, _KV_DTYPES)
        if max_len is None:
            max_len = config.max_seq_length
        max_len = _rt.as_int_at_least(function, "max_len", max_len, 1)
        if max_len > config.max_seq_length:
            raise ValueError(f"{function}: max_len: expected <= max_seq_length="
                             f"{config.max_seq_length}, got {max_len}")
        arrays = self._check_parameters(function, parameters)
        projection = _PROJECTIONS[self.weights]
        # (vocab, d), float32 or bfloat16; also the output projection (tied)
        if self.weights == "bf16":
            self._output = _BFloat16Projection(arrays["embed_tokens.weight"])
            self._embedding = self._output.stored
        else:
            self._embedding = arrays["embed_tokens.weight"]
            self._output = _Float32Output(self._embedding)
        self._final_norm = arrays["norm.weight"]  # (d,)
        self._layers = []
        for index in range(config.num_layers):
            prefix = f"layers.{index}."
            self._layers.append(_Layer(
                attention_norm=arrays[prefix + "input_layernorm.weight"],
                q_proj=projection(arrays[prefix + "self_attn.q_proj.weight"]),
                k_proj=projection(arrays[prefix + "self_attn.k_proj.weight"]),
                v_proj=projection(arrays[prefix + "self_attn.v_proj.weight"]),
                o_proj=projection(arrays[prefix + "self_attn.o_proj.weight"]),
                ffn_norm=arrays[prefix + "post_attention_layernorm.weight"],
                gate_proj=projection(arrays[prefix + "mlp.gate_proj.weight"]),
                up_proj=projection(arrays[prefix + "mlp.up_proj.weight"]),
                down_proj=projection(arrays[prefix + "mlp.down_proj.weight"])))
        self.cache = KVCache(config.num_layers, max_len, config.num_kv_heads, config.head_dim,
                             dtype=self.kv_dtype)
        self._step_buffers = self._buffers(1, 1)  # one decoding step

    @classmethod
    def random(cls, config: DecoderConfig, *, seed: int = 0, std: float = DEFAULT_INIT_STD,
               weights: str = "fp32", kv_dtype: str = "float32",
               max_len: int | None = None) -> Decoder:
        """A decoder with :meth:`DecoderConfig.random_parameters` (N(0, std^2) matrices)."""
        if not isinstance(config, DecoderConfig):
            raise TypeError(f"Decoder.random: config: expected a DecoderConfig, got "
                            f"{_rt.describe(config)}")
        return cls(config, config.random_parameters(seed, std=std), weights=weights,
                   kv_dtype=kv_dtype, max_len=max_len)

    # --- what it holds ------------------------------------------------------------------------

    @property
    def max_len(self) -> int:
        return self.cache.max_len

    @property
    def length(self) -> int:
        """Positions the KV cache holds (the next token's position)."""
        return self.cache.length

    @property
    def weight_nbytes(self) -> int:
        """Bytes of all weights in their stored form (ternary: packed values and scales)."""
        total = self._embedding.nbytes + self._final_norm.nbytes
        for layer in self._layers:
            total += layer.attention_norm.nbytes + layer.ffn_norm.nbytes
            total += sum(projection.nbytes for projection in self._projections(layer))
        return total

    def bytes_per_token(self, context: int) -> int:
        """Bytes a decoding step that attends over ``context`` positions (the new one included)
        must read: every weight in its stored form (the embedding once, as the tied output
        projection) and ``context`` positions of the KV cache of every layer. A bandwidth
        ceiling on decoding is then ``bandwidth / bytes_per_token(context)`` tokens/s."""
        context = _rt.as_int_at_least("Decoder.bytes_per_token", "context", context, 1)
        if context > self.max_len:
            raise ValueError(f"Decoder.bytes_per_token: context: expected <= max_len="
                             f"{self.max_len}, got {context}")
        return self.weight_nbytes + context * self.cache.bytes_per_position

    def __repr__(self) -> str:
        return (f"Decoder({self.config!r}, weights={self.weights!r}, "
                f"kv_dtype={self.kv_dtype!r}, max_len={self.max_len}, length={self.length})")

    # --- running it ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Empty the KV cache: the next token is at position 0."""
        self.cache.reset()

    def forward(self, ids: np.ndarray) -> np.ndarray:
        """Feed ``ids`` (n,) after the cached positions; return their logits (n, vocab) float32.

        From an empty cache this is the prefill of a prompt; one id at a time it is decoding.
        The keys and values of the n tokens are added to the cache."""
        ids = self._check_ids("Decoder.forward", ids, self.cache.length)
        return self._prefill(ids, last_only=False)

    def generate(self, ids: np.ndarray, max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0,
                 rng: np.random.Generator | int | None = None) -> np.ndarray:
        """Start over from the prompt ``ids`` (n,) and return ``max_new_tokens`` new ids (int64).

        The prompt is one prefill; each new token is one decoding step over the KV cache.
        Sampling: ``temperature`` 0 is greedy (argmax), else softmax(logits / temperature)
        restricted to the ``top_k`` most likely tokens (0: all) and to the smallest set whose
        probability reaches ``top_p`` (nucleus). ``rng``: a numpy Generator, a seed or None.
        The prompt and the new tokens but the last fill the cache:
        ``n + max_new_tokens - 1 <= max_len``.
        """
        function = "Decoder.generate"
        ids = self._check_ids(function, ids, 0)
        max_new_tokens = _rt.as_int_at_least(function, "max_new_tokens", max_new_tokens, 0)
        if ids.shape[0] + max_new_tokens - 1 > self.max_len:
            raise ValueError(f"{function}: max_new_tokens: expected at most "
                             f"{self.max_len + 1 - ids.shape[0]} (a prompt of {ids.shape[0]} "
                             f"tokens, max_len {self.max_len}), got {max_new_tokens}")
        sampling = _Sampling(function, temperature, top_k, top_p, rng)
        self.reset()
        new_ids = np.zeros(max_new_tokens, dtype=np.int64)
        buffers = self._step_buffers
        logits = self._prefill(ids, last_only=True)  # (1, vocab)
        token = np.zeros(1, dtype=np.int64)  # sampled, then the input of the next step
        for index in range(max_new_tokens):
            sampling(logits, token)
            new_ids[index] = token[0]
            if index + 1 < max_new_tokens:
                logits = self._run(token, buffers, last_only=True)
        return new_ids

    def reference_logits(self, ids: np.ndarray) -> np.ndarray:
        """The logits (n, vocab) of a prompt ``ids`` (n,) from the kernels' NumPy references,
        one pass over the whole sequence without a cache: what ``forward`` from an empty cache
        must give (the benchmark checks it before timing a model). Slow, and it leaves the
        cache alone."""
        ids = self._check_ids("Decoder.reference_logits", ids, 0)
        config = self.config
        n, hq, hkv, hd = ids.shape[0], config.num_heads, config.num_kv_heads, config.head_dim
        eps, theta = config.rms_norm_eps, config.rope_theta
        rmsnorm_ref, rope_ref = _reference("rmsnorm"), _reference("rope")
        attention_ref, silu_ref = _reference("attention"), _reference("silu")
        positions = np.arange(n, dtype=np.int64)
        x = self._embedding[ids].astype(np.float32)  # (n, d)
        for layer in self._layers:
            h = rmsnorm_ref(x, layer.attention_norm, eps=eps)
            q = rope_ref(layer.q_proj.reference(h).reshape(n, hq, hd), positions, theta=theta)
            k = rope_ref(layer.k_proj.reference(h).reshape(n, hkv, hd), positions, theta=theta)
            v = layer.v_proj.reference(h).reshape(n, hkv, hd)
            attended = attention_ref(q, k, v, causal=True).reshape(n, hq * hd)
            x = x + layer.o_proj.reference(attended)
            h = rmsnorm_ref(x, layer.ffn_norm, eps=eps)
            hidden = silu_ref(layer.gate_proj.reference(h)) * layer.up_proj.reference(h)
            x = x + layer.down_proj.reference(hidden.astype(np.float32))
        h = rmsnorm_ref(x, self._final_norm, eps=eps)
        return self._output.reference(h)  # tied: logits = h E^T

    # --- the computation ----------------------------------------------------------------------

    def _buffers(self, n: int, logits_rows: int) -> _Buffers:
        return _Buffers(self.config, n, logits_rows)

    def _prefill(self, ids: np.ndarray, *, last_only: bool) -> np.ndarray:
        """The logits (a new array) of ``ids`` fed after the cached positions, in chunks of at
        most PREFILL_CHUNK tokens: of the last token (last_only) or of every token."""
        n = ids.shape[0]
        if n == 1:
            return self._run(ids, self._step_buffers, last_only=last_only).copy()
        start = self.cache.length
        logits = np.empty((1 if last_only else n, self.config.vocab_size), dtype=_FLOAT32)
        try:
            for begin in range(0, n, PREFILL_CHUNK):
                chunk = ids[begin:begin + PREFILL_CHUNK]
                last_chunk = begin + chunk.shape[0] == n
                if last_only and not last_chunk:
                    self._run(chunk, self._buffers(chunk.shape[0], 1), last_only=True)
                elif last_only:
                    logits[:] = self._run(chunk, self._buffers(chunk.shape[0], 1),
                                          last_only=True)
                else:
                    logits[begin:begin + chunk.shape[0]] = self._run(
                        chunk, self._buffers(chunk.shape[0], chunk.shape[0]), last_only=False)
        except BaseException:
            self.cache.truncate(start)  # an interrupted prefill leaves the cache as it was
            raise
        return logits

    def _run(self, ids: np.ndarray, buffers: _Buffers, *, last_only: bool) -> np.ndarray:
        """Logits of the last token (last_only) or of every token: buffers.logits."""
        cache = self.cache
        start = cache.length
        try:
            return self._layers_and_logits(ids, buffers, start, last_only)
        except BaseException:
            cache.truncate(start)  # an interrupted step leaves the cache as it was
            raise

    def _layers_and_logits(self, ids: np.ndarray, b: _Buffers, start: int,
                           last_only: bool) -> np.ndarray:
        config, cache = self.config, self.cache
        n, hq, hkv, hd = ids.shape[0], config.num_heads, config.num_kv_heads, config.head_dim
        eps, theta = config.rms_norm_eps, config.rope_theta
        if n == 1:
            b.positions[0] = start
        else:
            b.positions[:] = np.arange(start, start + n)
        if self._embedding.dtype == _FLOAT32:
            np.take(self._embedding, ids, axis=0, out=b.x)  # (n, d)
        else:
            b.x[:] = self._embedding[ids]  # widened
        q_heads = b.q.reshape(n, hq, hd)
        k_heads = b.k.reshape(n, hkv, hd)
        v_heads = b.v.reshape(n, hkv, hd)
        attended_rows = b.attended.reshape(n, hq * hd)
        for index, layer in enumerate(self._layers):
            # attention block: x += attention(rope(h W_q^T), rope(h W_k^T), h W_v^T) W_o^T
            rmsnorm(b.x, layer.attention_norm, eps=eps, out=b.h)
            layer.q_proj(b.h, b.q)
            layer.k_proj(b.h, b.k)
            layer.v_proj(b.h, b.v)
            rope(q_heads, b.positions, theta=theta, out=b.q_rotated)
            rope(k_heads, b.positions, theta=theta, out=b.k_rotated)
            cache.append(index, b.k_rotated, v_heads)
            attention(b.q_rotated, cache.keys(index), cache.values(index), causal=True,
                      out=b.attended)
            layer.o_proj(attended_rows, b.projected)
            np.add(b.x, b.projected, out=b.x)
            # feed-forward block: x += swiglu(h), see _feed_forward
            rmsnorm(b.x, layer.ffn_norm, eps=eps, out=b.h)
            self._feed_forward(layer, b)
            np.add(b.x, b.projected, out=b.x)
        rows = slice(n - 1, n) if last_only else slice(0, n)
        rmsnorm(b.x[rows], self._final_norm, eps=eps, out=b.h[rows])
        self._output(b.h[rows], b.logits)  # tied: logits = h E^T
        return b.logits

    def _feed_forward(self, layer: _Layer, b: _Buffers) -> None:
        """b.projected = (silu(b.h W_gate^T) * (b.h W_up^T)) W_down^T: swiglu's computation, in
        this model's buffers and projections."""
        layer.gate_proj(b.h, b.gate)  # (n, f)
        layer.up_proj(b.h, b.up)
        silu(b.gate, out=b.activated)
        np.multiply(b.activated, b.up, out=b.gate)  # silu(gate) * up
        layer.down_proj(b.gate, b.projected)

    @staticmethod
    def _projections(layer: _Layer) -> tuple[_Projection, ...]:
        return (layer.q_proj, layer.k_proj, layer.v_proj, layer.o_proj, layer.gate_proj,
                layer.up_proj, layer.down_proj)

    # --- checks -------------------------------------------------------------------------------

    def _check_parameters(self, function: str,
                          parameters: object) -> dict[str, np.ndarray]:
        if not isinstance(parameters, Mapping):
            raise TypeError(f"{function}: parameters: expected a mapping of name -> float32 "
                            f"array, got {_rt.describe(parameters)}")
        shapes = self.config.parameter_shapes()
        missing = [name for name in shapes if name not in parameters]
        unknown = [name for name in parameters if name not in shapes]
        if missing or unknown:
            raise ValueError(f"{function}: parameters: expected the names of "
                             f"DecoderConfig.parameter_shapes(), got {len(missing)} missing "
                             f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}) "
                             f"and {len(unknown)} unknown "
                             f"({', '.join(map(str, unknown[:3]))}"
                             f"{', ...' if len(unknown) > 3 else ''})")
        arrays = {}
        for name, shape in shapes.items():
            array = parameters[name]
            if not isinstance(array, np.ndarray):
                raise TypeError(f"{function}: parameters[{name!r}]: expected a float32 "
                                f"numpy.ndarray of shape {shape}, got {_rt.describe(array)}")
            if array.dtype != _FLOAT32:
                raise TypeError(f"{function}: parameters[{name!r}]: expected dtype float32, got "
                                f"{array.dtype}")
            if array.shape != shape:
                raise ValueError(f"{function}: parameters[{name!r}]: expected shape {shape}, "
                                 f"got {tuple(array.shape)}")
            arrays[name] = np.ascontiguousarray(array)
        return arrays

    def _check_ids(self, function: str, ids: object, cached: int) -> np.ndarray:
        """ids as a C-contiguous int64 (n,) array of tokens < vocab that fit after ``cached``."""
        vocab = self.config.vocab_size
        if not isinstance(ids, np.ndarray):
            raise TypeError(f"{function}: ids: expected a 1-D numpy.ndarray of integer token "
                            f"ids, got {_rt.describe(ids)}")
        if ids.dtype.kind not in "iu":
            raise TypeError(f"{function}: ids: expected an integer dtype (e.g. int64), got "
                            f"{ids.dtype}")
        if ids.ndim != 1 or ids.shape[0] == 0:
            raise ValueError(f"{function}: ids: expected shape (n,) with n >= 1, got "
                             f"{tuple(ids.shape)}")
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= vocab:
            bad = low if low < 0 else high
            raise ValueError(f"{function}: ids: expected token ids in 0 .. {vocab - 1} "
                             f"(vocab_size {vocab}), got {bad} at index "
                             f"{int(np.flatnonzero(ids == bad)[0])}")
        if cached + ids.shape[0] > self.max_len:
            raise ValueError(f"{function}: ids: expected at most {self.max_len - cached} tokens "
                             f"(the cache holds {cached} of max_len {self.max_len}), got "
                             f"{ids.shape[0]}")
        return np.ascontiguousarray(ids, dtype=np.int64)


# --- sampling -------------------------------------------------------------------------------------


class _Sampling:
    """The sampling options of one ``generate`` call, checked before anything runs."""

    def __init__(self, function: str, temperature: object, top_k: object, top_p: object,
                 rng: object) -> None:
        self.temperature = _rt.as_float(function, "temperature", temperature)
        if not 0 <= self.temperature < math.inf:
            raise ValueError(f"{function}: temperature: expected a finite value >= 0 (0: "
                             f"greedy), got {self.temperature!r}")
        self.top_k = _rt.as_int_at_least(function, "top_k", top_k, 0)
        self.top_p = _rt.as_float(function, "top_p", top_p)
        if not 0 <= self.top_p <= 1:
            raise ValueError(f"{function}: top_p: expected 0 <= top_p <= 1, got {self.top_p!r}")
        self.rng = _rt.as_generator(function, "rng", rng)

    def __call__(self, logits: np.ndarray, out: np.ndarray) -> np.ndarray:
        """logits (1, vocab) float32 -> out (1,) int64: the next token."""
        return sample(logits, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                      rng=self.rng, out=out)
