"""A decoder-only language model (the iGLA-LLM v2 architecture) composed of engine kernels.

For token ids t_0 .. t_{n-1} (positions p = 0 .. n-1), hidden size d, L layers:

    x = E[t]                                                   # token embedding, (n, d)
    for each layer:
        h = rmsnorm(x) * g_attn                                # RMSNorm, arXiv:1910.07467
        x = x + mixer(h)                                       # the layer's token mixer
        h = rmsnorm(x) * g_ffn
        x = x + (silu(h W_gate^T) * (h W_up^T)) W_down^T       # SwiGLU, arXiv:2002.05202
    logits = (rmsnorm(x) * g_final) E^T                        # tied embeddings, arXiv:1608.05859

Each layer has a type, ``DecoderConfig.layer_types`` (default: every layer "attention"), which
chooses its token mixer; the rest of the layer is the same for every type. With H = num_heads
heads of hd = head_dim values:

- ``"attention"``: softmax attention over a KV cache (Llama's)::

      q, k, v = h W_q^T, h W_k^T, h W_v^T                    # (n, hq hd), (n, hkv hd) x 2
      q, k = rope(q, p), rope(k, p)                          # RoPE, rotate-half pairing
      mixer(h) = attention(q, K_cache, V_cache) W_o^T        # causal GQA, arXiv:2305.13245

- ``"gla"``: gated linear attention (Yang et al., arXiv:2312.06635; flash-linear-attention's
  ``GatedLinearAttention`` without short convolutions, K = V = hd), no RoPE::

      q, k, v = h W_q^T, h W_k^T, h W_v^T                    # (n, H, hd) each
      g = logsigmoid((h W_gk0^T) W_gk1^T + b_gk) / 16        # (n, H, hd) log-decays <= 0
      S_t = Diag(exp g_t) S_{t-1} + k_t^T v_t,  o_t = hd^-1/2 q_t S_t    # per head, S (hd, hd)
      mixer(h) = (rmsnorm_hd(o) * w_gnorm * silu(h W_g^T)) W_o^T

  The gate's projection is low rank (rank GLA_GATE_RANK = 16, with a bias) and its logits are
  divided by GLA_GATE_NORMALIZER = 16, both as in flash-linear-attention; the output norm is
  an RMSNorm over each head's hd values with one gain of hd values shared by the heads (its
  FusedRMSNormSwishGate).
- ``"mamba2"``: Mamba-2's SSD mixing (Dao and Gu, arXiv:2405.21060), one scalar decay per head,
  with d_inner = d (expand 1), head dim P = hd, state size N = hd, one group (B and C shared by
  the heads)::

      z = h W_z^T                                            # (n, H P)
      x, B, C = silu(conv([h W_x^T, h W_B^T, h W_C^T]))      # (n, H P), (n, N), (n, N)
      dt = softplus(h W_dt^T + dt_bias)                      # (n, H)
      S_t = exp(A dt_t) S_{t-1} + B_t^T (dt_t x_t),  y_t = C_t S_t + D x_t  # per head, S (N, P)
      mixer(h) = (rmsnorm(y * silu(z)) * w_norm) W_out^T     # gated RMSNorm over d_inner

  with A = -exp(A_log) per head, and conv mamba_ssm's short causal depthwise convolution over
  the H P + 2 N channels of x, B and C together: conv(u)_t = b + sum_j w[:, j] u_{t-3+j},
  j = 0 .. 3 (MAMBA_CONV_WIDTH = 4, PyTorch's Conv1d with weight (channels, 1, 4) and 3 zeros
  of padding), so each layer also keeps the last 3 rows of its input: its conv state.
- ``"mamba"``: Mamba's selective SSM block (Gu and Dao, arXiv:2312.00752; mamba_ssm's Mamba
  with expand 1), d_inner = d channels, each with its own state of N = MAMBA_STATE values::

      x, z = h W_in^T                                        # (n, d_inner) each
      x = silu(conv(x))                                      # the same causal convolution
      dt_low, B, C = x W_x^T                                 # (n, r), (n, N), (n, N)
      dt = softplus(dt_low W_dt^T + b_dt)                    # (n, d_inner)
      h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,  y_t = h_t C_t + D x_t   # per channel
      mixer(h) = (y * silu(z)) W_out^T

  with A = -exp(A_log) (d_inner, N) and r = ceil(d / 16), run by the engine's
  ``selective_scan``; its state is (d_inner, N) and a conv state (3, d_inner).

The gla and mamba2 types run the engine's ``gla`` (Mamba-2 as gla(C, B, dt x, A dt, scale=1))
and keep a recurrent state S (H, hd, hd) float32 per layer, mamba a state (d_inner, N), instead
of a KV cache: a prompt, in any
pieces, and the decoding steps after it pass the state on (``initial_state``,
``output_final_state``), so every step costs the same whatever the context. The KV cache holds
the attention layers only (none: ``Decoder.cache`` is None).

- RoPE pairs coordinate j with j + head_dim / 2 ("rotate half", as Llama in Hugging Face
  transformers and GPT-NeoX), angle p * theta^(-2j / head_dim), on queries and keys before they
  enter the cache (RoFormer, arXiv:2104.09864).
- Grouped-query attention: query head h reads key/value head h // (hq / hkv).
- The output projection is the embedding matrix itself (tied): logits = h E^T, E (vocab, d).
- Weights are in PyTorch's Linear layout (d_out, d_in), named as Hugging Face's Llama
  (``layers.0.self_attn.q_proj.weight``, ...) and, for the other mixers, as their reference
  implementations (``layers.0.gla.q_proj.weight``, ``layers.0.mamba2.A_log``, ...), see
  :meth:`DecoderConfig.parameter_shapes`.
- ``weights="bf16"``: every weight matrix, the embedding included, is rounded once to bfloat16
  (to nearest, ties to even) and kept in 16 bits: the engine's ``bf16_linear`` widens the
  weights exactly to float32 in registers and sums in float32, so a decoding step reads half
  the bytes of float32 weights; the vectors (RMSNorm gains, biases, A_log, dt_bias, D) stay
  float32.
- ``weights="ternary"``: every projection matrix (every 2-D parameter but the embedding: q, k,
  v, o, gate, up, down and the mixers' own) is quantized to BitNet b1.58 ternary weights
  {-1, 0, +1} times one absmean scale (arXiv:2402.17764) and applied by the engine's
  ``bitnet_linear`` (which quantizes the activations per token to int8); the embedding (and so
  the tied output projection) and the vectors stay float32, and so do the projections that
  make the linear layers' decays (GLA's low-rank ``gk_proj``, Mamba-2's ``dt_proj``, Mamba's
  ``x_proj`` and ``dt_proj``; a few % of the weights at most): their outputs are exponents that every later token's state
  multiplies by, so an activation's int8 code that one float32 rounding flips would move the
  whole state from then on.
- ``kv_dtype="int8"``: the KV cache stores keys and values as int8 with one scale per
  (position, head), see :class:`~koschei.engine.models.kv_cache.KVCache`.

The kernels: ``rmsnorm``, ``rope``, ``attention``, ``gla``, ``matmul`` (the float32
projections: their weights packed once, at load, into the panels of its GEMM), ``linear`` (the
float32 logits), ``silu`` (the FFN's gate: swiglu's computation in the model's own buffers; the
mixers' gates), ``bf16_linear`` (bfloat16 weights), ``bitnet_linear`` (ternary projections) and
``sample``; the embedding gather, the residual adds, logsigmoid and softplus are NumPy. Every
buffer of a decoding step is allocated once per model (but ``gla``'s final state, a new array a
step). A prompt runs in chunks of at most ``PREFILL_CHUNK`` tokens.
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
    gla,
    linear,
    matmul,
    rmsnorm,
    rope,
    sample,
    selective_scan,
    silu,
)
from koschei.engine.models.kv_cache import KVCache

# the module of the matmul kernel in use (the workspace's, when the engine runs one's): the float32
# projections run on its packed GEMM (packed_weight, gemm)
_matmul = importlib.import_module(matmul.__module__)

__all__ = ["Decoder", "DecoderConfig", "DecoderSnapshot"]

_FLOAT32 = np.dtype(np.float32)
_BFLOAT16 = np.dtype("bfloat16")  # ml_dtypes' (registered by koschei.engine._runtime)
_WEIGHTS = ("fp32", "bf16", "ternary")
_KV_DTYPES = ("float32", "int8")
# the token mixers a layer can have (DecoderConfig.layer_types); the last two are linear: a
# recurrent state instead of a KV cache
LAYER_TYPES = ("attention", "gla", "mamba2", "mamba")
_LINEAR_TYPES = ("gla", "mamba2", "mamba")
# the types with a short causal convolution before their recurrence (and a conv state)
_CONV_TYPES = ("mamba2", "mamba")
# flash-linear-attention's GatedLinearAttention: the rank of the gate's projection and the divisor
# of its log-sigmoid (gate_logit_normalizer)
GLA_GATE_RANK = 16
GLA_GATE_NORMALIZER = 16.0
# Mamba-2's initialization (mamba_ssm): A uniform in [1, 16], dt log-uniform in [1e-3, 1e-1]
_MAMBA2_A_RANGE = (1.0, 16.0)
# Mamba's and Mamba-2's short causal convolution (mamba_ssm's d_conv)
MAMBA_CONV_WIDTH = 4
# Mamba's state size per channel (mamba_ssm's d_state) and its initialization: A_n = n (S4D-real)
MAMBA_STATE = 16
_MAMBA2_DT_RANGE = (1e-3, 1e-1)
# the standard deviation of the random weights (GPT-2's and Llama's initializer range)
DEFAULT_INIT_STD = 0.02
# A prompt runs in chunks of at most this many tokens: the buffers of a forward pass hold one
# chunk, and its products are large enough for the GEMM's blocks.
PREFILL_CHUNK = 512


# --- the configuration ----------------------------------------------------------------------------


def _check_layer_types(function: str, layer_types: object,
                       num_layers: int) -> tuple[str, ...]:
    """layer_types as a tuple of num_layers known types (None: every layer "attention")."""
    if layer_types is None:
        return ("attention",) * num_layers
    expected = (f"a sequence of {num_layers} layer types (num_layers), each one of "
                f"{LAYER_TYPES}")
    if isinstance(layer_types, (str, bytes)) or not isinstance(layer_types, (tuple, list)):
        raise TypeError(f"{function}: layer_types: expected {expected}, got "
                        f"{_rt.describe(layer_types)}")
    for index, kind in enumerate(layer_types):
        if not isinstance(kind, str):
            raise TypeError(f"{function}: layer_types[{index}]: expected one of {LAYER_TYPES}, "
                            f"got {_rt.describe(kind)}")
        if kind not in LAYER_TYPES:
            raise ValueError(f"{function}: layer_types[{index}]: expected one of {LAYER_TYPES}, "
                             f"got {kind!r}")
    if len(layer_types) != num_layers:
        raise ValueError(f"{function}: layer_types: expected {expected}, got "
                         f"{len(layer_types)} types")
    return tuple(layer_types)


@dataclass(frozen=True)
class DecoderSnapshot:
    """A Decoder's position and recurrent states (``Decoder.snapshot``), for
    ``Decoder.restore``."""

    length: int
    states: tuple[np.ndarray | None, ...]
    conv_states: tuple[np.ndarray | None, ...]
    epoch: int
    owner: int  # id() of the Decoder it was taken of


@dataclass(frozen=True)
class DecoderConfig:
    """The sizes of a decoder. ``DecoderConfig.named("igla_v2")`` is the seed's iGLA-LLM v2.

    rms_norm_eps is 1e-5 (Llama 2's value) unless given: added to the mean square in every RMSNorm.
    layer_types: one of LAYER_TYPES per layer (``"attention"``, ``"gla"``, ``"mamba2"``,
    ``"mamba"``; see the
    module docstring), any mix; None (the default) is every layer ``"attention"``. A sequence of
    strings is kept as a tuple. ``replace(num_layers=...)`` without layer_types keeps a config
    whose layers all have one type that type; a mix must be given again.
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
    layer_types: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        function = "DecoderConfig"
        for field in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                      "intermediate_size", "max_seq_length"):
            value = _rt.as_int_at_least(function, field, getattr(self, field), 1)
            object.__setattr__(self, field, value)
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
        object.__setattr__(self, "layer_types", _check_layer_types(
            function, self.layer_types, self.num_layers))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def dt_rank(self) -> int:
        """The rank of a "mamba" layer's dt projection: ceil(d / 16), mamba_ssm's "auto"."""
        return -(-self.hidden_size // 16)

    @staticmethod
    def names() -> list[str]:
        """The named configurations."""
        return sorted(_NAMED)

    @property
    def attention_layers(self) -> tuple[int, ...]:
        """The indices of the layers of type "attention" (the layers a KV cache holds)."""
        return tuple(i for i, kind in enumerate(self.layer_types) if kind == "attention")

    @staticmethod
    def named(name: str) -> DecoderConfig:
        """A named configuration: ``igla_v2`` (seed 004's table), ``igla`` (its shapes, every
        layer "gla"), ``igla_hybrid`` (its shapes, "attention" every fourth layer: layers 3, 7
        and 11, "gla" the others), ``mamba`` and ``mamba_hybrid`` (the same with "mamba"
        layers), ``tiny`` and ``small``."""
        config = _NAMED.get(name) if isinstance(name, str) else None
        if config is None:
            raise ValueError(f"DecoderConfig.named: name: expected one of {sorted(_NAMED)}, got "
                             f"{_rt.describe(name)}")
        return config

    def replace(self, **changes: Any) -> DecoderConfig:
        """A copy with some fields changed (validated again). A new num_layers without
        layer_types keeps the type of a config whose layers all have one."""
        if "num_layers" in changes and "layer_types" not in changes \
                and len(set(self.layer_types)) == 1:
            num_layers = changes["num_layers"]
            if isinstance(num_layers, int) and not isinstance(num_layers, bool) \
                    and num_layers >= 1:
                changes["layer_types"] = self.layer_types[:1] * num_layers
        return dataclasses.replace(self, **changes)

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's name and shape (PyTorch Linear layout: (d_out, d_in)), in order.

        Per layer: ``input_layernorm.weight``, the mixer's parameters, then
        ``post_attention_layernorm.weight`` and ``mlp.{gate,up,down}_proj.weight``. The mixers'
        (inner = num_heads * head_dim = hidden_size, H = num_heads, hd = head_dim, r = 16):

        - attention: ``self_attn.{q,k,v,o}_proj.weight`` (Llama's, GQA: k and v have
          num_kv_heads heads);
        - gla: ``gla.{q,k,v,g}_proj.weight`` (inner, d), ``gla.gk_proj.0.weight`` (r, d),
          ``gla.gk_proj.1.weight`` (inner, r), ``gla.gk_proj.1.bias`` (inner,),
          ``gla.g_norm.weight`` (hd,), ``gla.o_proj.weight`` (d, inner) (fla's names);
        - mamba2: ``mamba2.{z,x}_proj.weight`` (inner, d), ``mamba2.{B,C}_proj.weight`` (hd, d),
          ``mamba2.dt_proj.weight`` (H, d), ``mamba2.dt_bias``, ``mamba2.A_log``, ``mamba2.D``
          (H,), ``mamba2.conv1d.weight`` (inner + 2 hd, 1, MAMBA_CONV_WIDTH) and
          ``mamba2.conv1d.bias`` (inner + 2 hd,) (PyTorch's Conv1d), ``mamba2.norm.weight``
          (inner,), ``mamba2.out_proj.weight`` (d, inner);
        - mamba (mamba_ssm's names, d_inner = inner, N = MAMBA_STATE, r = dt_rank):
          ``mamba.in_proj.weight`` (2 inner, d), ``mamba.conv1d.weight`` (inner, 1,
          MAMBA_CONV_WIDTH), ``mamba.conv1d.bias`` (inner,), ``mamba.x_proj.weight`` (r + 2 N,
          inner), ``mamba.dt_proj.weight`` (inner, r), ``mamba.dt_proj.bias`` (inner,),
          ``mamba.A_log`` (inner, N), ``mamba.D`` (inner,), ``mamba.out_proj.weight`` (d, inner).
        """
        d, hd, f = self.hidden_size, self.head_dim, self.intermediate_size
        heads, inner = self.num_heads, self.num_heads * self.head_dim
        shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (self.vocab_size, d)}
        for layer, kind in enumerate(self.layer_types):
            prefix = f"layers.{layer}."
            shapes[prefix + "input_layernorm.weight"] = (d,)
            if kind == "attention":
                shapes[prefix + "self_attn.q_proj.weight"] = (self.num_heads * hd, d)
                shapes[prefix + "self_attn.k_proj.weight"] = (self.num_kv_heads * hd, d)
                shapes[prefix + "self_attn.v_proj.weight"] = (self.num_kv_heads * hd, d)
                shapes[prefix + "self_attn.o_proj.weight"] = (d, self.num_heads * hd)
            elif kind == "gla":
                mixer = prefix + "gla."
                for name in ("q_proj", "k_proj", "v_proj"):
                    shapes[mixer + name + ".weight"] = (inner, d)
                shapes[mixer + "gk_proj.0.weight"] = (GLA_GATE_RANK, d)
                shapes[mixer + "gk_proj.1.weight"] = (inner, GLA_GATE_RANK)
                shapes[mixer + "gk_proj.1.bias"] = (inner,)
                shapes[mixer + "g_proj.weight"] = (inner, d)
                shapes[mixer + "g_norm.weight"] = (hd,)
                shapes[mixer + "o_proj.weight"] = (d, inner)
            elif kind == "mamba":
                mixer = prefix + "mamba."
                shapes[mixer + "in_proj.weight"] = (2 * inner, d)
                shapes[mixer + "conv1d.weight"] = (inner, 1, MAMBA_CONV_WIDTH)
                shapes[mixer + "conv1d.bias"] = (inner,)
                shapes[mixer + "x_proj.weight"] = (self.dt_rank + 2 * MAMBA_STATE, inner)
                shapes[mixer + "dt_proj.weight"] = (inner, self.dt_rank)
                shapes[mixer + "dt_proj.bias"] = (inner,)
                shapes[mixer + "A_log"] = (inner, MAMBA_STATE)
                shapes[mixer + "D"] = (inner,)
                shapes[mixer + "out_proj.weight"] = (d, inner)
            else:  # mamba2
                mixer = prefix + "mamba2."
                shapes[mixer + "z_proj.weight"] = (inner, d)
                shapes[mixer + "x_proj.weight"] = (inner, d)
                shapes[mixer + "B_proj.weight"] = (hd, d)
                shapes[mixer + "C_proj.weight"] = (hd, d)
                shapes[mixer + "dt_proj.weight"] = (heads, d)
                shapes[mixer + "dt_bias"] = (heads,)
                shapes[mixer + "A_log"] = (heads,)
                shapes[mixer + "D"] = (heads,)
                shapes[mixer + "conv1d.weight"] = (inner + 2 * hd, 1, MAMBA_CONV_WIDTH)
                shapes[mixer + "conv1d.bias"] = (inner + 2 * hd,)
                shapes[mixer + "norm.weight"] = (inner,)
                shapes[mixer + "out_proj.weight"] = (d, inner)
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
        """Random float32 parameters: every matrix N(0, std^2), every RMSNorm gain 1; GLA's gate
        bias 0; Mamba-2's as mamba_ssm initializes them: A = -exp(A_log) with A uniform in
        [1, 16], dt_bias = softplus^-1(dt) with dt log-uniform in [1e-3, 1e-1], D = 1, the
        convolution's weight and bias uniform in +-1/sqrt(MAMBA_CONV_WIDTH) (PyTorch's Conv1d);
        Mamba's A_n = n (n = 1 .. N, S4D-real) and its dt_proj's bias as Mamba-2's dt_bias.
        The matrices are drawn in the order of :meth:`parameter_shapes`, then Mamba's and
        Mamba-2's vectors and convolutions."""
        function = "DecoderConfig.random_parameters"
        seed = _rt.as_int_at_least(function, "seed", seed, 0)
        std = _rt.as_float(function, "std", std)
        if not std > 0:
            raise ValueError(f"{function}: std: expected > 0, got {std!r}")
        rng = np.random.default_rng(seed)
        parameters = {}
        for name, shape in self.parameter_shapes().items():
            if ".conv1d." in name or name.endswith(".A_log"):
                continue  # below
            if len(shape) == 1:
                value = 0.0 if name.endswith(".bias") else 1.0
                parameters[name] = np.full(shape, value, dtype=np.float32)
            else:
                matrix = rng.standard_normal(shape, dtype=np.float32)
                matrix *= np.float32(std)
                parameters[name] = matrix
        # Mamba's and Mamba-2's own after every matrix: a config without them draws what it
        # drew before there were layer types
        for name, shape in self.parameter_shapes().items():
            if name.endswith(".A_log") and len(shape) == 2:  # Mamba's
                a = np.broadcast_to(np.arange(1, shape[1] + 1, dtype=np.float32), shape)
                parameters[name] = np.log(a)
            elif name.endswith(".A_log"):
                parameters[name] = np.log(rng.uniform(*_MAMBA2_A_RANGE, shape)).astype(np.float32)
            elif name.endswith((".dt_bias", ".dt_proj.bias")):
                low, high = np.log(_MAMBA2_DT_RANGE)
                dt = np.exp(rng.uniform(low, high, shape))
                parameters[name] = (dt + np.log(-np.expm1(-dt))).astype(np.float32)
            elif ".conv1d." in name:
                bound = MAMBA_CONV_WIDTH ** -0.5
                parameters[name] = rng.uniform(-bound, bound, shape).astype(np.float32)
        return {name: parameters[name] for name in self.parameter_shapes()}


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
# iGLA-LLM v2's shapes with gated linear attention in every layer, and a hybrid of it with one
# softmax attention layer every fourth (the last of each group of four)
_NAMED["igla"] = _NAMED["igla_v2"].replace(layer_types=("gla",) * 12)
_NAMED["igla_hybrid"] = _NAMED["igla_v2"].replace(
    layer_types=("gla", "gla", "gla", "attention") * 3)
# igla_v2's sizes with Mamba's layers, and with attention every fourth layer (Jamba's ratio)
_NAMED["mamba"] = _NAMED["igla_v2"].replace(layer_types=("mamba",) * 12)
_NAMED["mamba_hybrid"] = _NAMED["igla_v2"].replace(
    layer_types=("mamba", "mamba", "mamba", "attention") * 3)


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
    """A layer of type "attention" (Llama's; its fields are what gguf.py exports)."""

    attention_norm: np.ndarray  # (d,)
    q_proj: _Projection  # (hq hd, d)
    k_proj: _Projection  # (hkv hd, d)
    v_proj: _Projection  # (hkv hd, d)
    o_proj: _Projection  # (d, hq hd)
    ffn_norm: np.ndarray  # (d,)
    gate_proj: _Projection  # (f, d)
    up_proj: _Projection  # (f, d)
    down_proj: _Projection  # (d, f)
    kind = "attention"

    def projections(self) -> tuple[_Projection, ...]:
        return (self.q_proj, self.k_proj, self.v_proj, self.o_proj, self.gate_proj,
                self.up_proj, self.down_proj)

    def vectors(self) -> tuple[np.ndarray, ...]:
        return (self.attention_norm, self.ffn_norm)


@dataclass
class _GLAMixer:
    """The token mixer of a "gla" layer (inner = H hd, r = GLA_GATE_RANK)."""

    q_proj: _Projection  # (inner, d)
    k_proj: _Projection  # (inner, d)
    v_proj: _Projection  # (inner, d)
    gk_down: _Projection  # (r, d): the gate's low-rank projection ...
    gk_up: _Projection  # (inner, r)
    gk_bias: np.ndarray  # (inner,) ... and its bias
    g_proj: _Projection  # (inner, d): the output gate
    g_norm: np.ndarray  # (hd,): the gain of the per-head RMSNorm
    o_proj: _Projection  # (d, inner)

    def projections(self) -> tuple[_Projection, ...]:
        return (self.q_proj, self.k_proj, self.v_proj, self.gk_down, self.gk_up, self.g_proj,
                self.o_proj)

    def vectors(self) -> tuple[np.ndarray, ...]:
        return (self.gk_bias, self.g_norm)


@dataclass
class _Mamba2Mixer:
    """The token mixer of a "mamba2" layer (inner = H P = d, N = P = hd)."""

    z_proj: _Projection  # (inner, d): the output gate
    x_proj: _Projection  # (inner, d)
    B_proj: _Projection  # (N, d)
    C_proj: _Projection  # (N, d)
    dt_proj: _Projection  # (H, d)
    dt_bias: np.ndarray  # (H,)
    A: np.ndarray  # (H,): -exp(A_log), < 0
    D: np.ndarray  # (H,): the skip
    conv_weight: np.ndarray  # (inner + 2 N, MAMBA_CONV_WIDTH): the causal convolution's taps
    conv_bias: np.ndarray  # (inner + 2 N,)
    norm: np.ndarray  # (inner,): the gain of the gated RMSNorm
    out_proj: _Projection  # (d, inner)

    def projections(self) -> tuple[_Projection, ...]:
        return (self.z_proj, self.x_proj, self.B_proj, self.C_proj, self.dt_proj,
                self.out_proj)

    def vectors(self) -> tuple[np.ndarray, ...]:
        return (self.dt_bias, self.A, self.D, self.conv_weight, self.conv_bias, self.norm)


@dataclass
class _MambaMixer:
    """The token mixer of a "mamba" layer (d_inner = inner = d, N = MAMBA_STATE)."""

    in_proj: _Projection  # (2 inner, d): x and z
    conv_weight: np.ndarray  # (inner, MAMBA_CONV_WIDTH): the causal convolution's taps
    conv_bias: np.ndarray  # (inner,)
    x_proj: _Projection  # (r + 2 N, inner): dt's low rank, B and C
    dt_proj: _Projection  # (inner, r)
    dt_bias: np.ndarray  # (inner,)
    A: np.ndarray  # (inner, N): -exp(A_log), < 0
    D: np.ndarray  # (inner,): the skip
    out_proj: _Projection  # (d, inner)

    def projections(self) -> tuple[_Projection, ...]:
        return (self.in_proj, self.x_proj, self.dt_proj, self.out_proj)

    def vectors(self) -> tuple[np.ndarray, ...]:
        return (self.conv_weight, self.conv_bias, self.dt_bias, self.A, self.D)


@dataclass
class _LinearLayer:
    """A layer of type "gla", "mamba2" or "mamba": a linear recurrence as token mixer, a
    recurrent state instead of a KV cache."""

    kind: str
    attention_norm: np.ndarray  # (d,)
    mixer: _GLAMixer | _Mamba2Mixer | _MambaMixer
    ffn_norm: np.ndarray  # (d,)
    gate_proj: _Projection  # (f, d)
    up_proj: _Projection  # (f, d)
    down_proj: _Projection  # (d, f)

    def projections(self) -> tuple[_Projection, ...]:
        return self.mixer.projections() + (self.gate_proj, self.up_proj, self.down_proj)

    def vectors(self) -> tuple[np.ndarray, ...]:
        return (self.attention_norm, self.ffn_norm) + self.mixer.vectors()


def _read_only_zeros(shape: tuple[int, ...]) -> np.ndarray:
    zeros = np.zeros(shape, dtype=np.float32)
    zeros.flags.writeable = False
    return zeros


def conv_channels(config: DecoderConfig, kind: str) -> int:
    """The channels of a layer type's short convolution: mamba2's x, B and C; mamba's x."""
    inner = config.num_heads * config.head_dim
    return inner + 2 * config.head_dim if kind == "mamba2" else inner


class _ConvBuffers:
    """A short causal convolution over n new rows: its input (the conv state's rows, then the n
    new ones), its output, a product of one tap, and the SiLU of the output."""

    def __init__(self, n: int, channels: int) -> None:
        self.n = n
        self.input = np.zeros((MAMBA_CONV_WIDTH - 1 + n, channels), dtype=np.float32)
        self.output = np.zeros((n, channels), dtype=np.float32)
        self.tap = np.zeros((n, channels), dtype=np.float32)
        self.activated = np.zeros((n, channels), dtype=np.float32)

    def run(self, conv_state: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """self.activated = silu(bias + sum_j weight[:, j] input[t + j]) for the new rows in
        self.input[MAMBA_CONV_WIDTH - 1:] after ``conv_state``; returns the conv state after
        them (a new array)."""
        n, lag = self.n, MAMBA_CONV_WIDTH - 1
        self.input[:lag] = conv_state
        np.multiply(self.input[:n], weight[:, 0], out=self.output)
        for j in range(1, MAMBA_CONV_WIDTH):
            np.multiply(self.input[j:j + n], weight[:, j], out=self.tap)
            np.add(self.output, self.tap, out=self.output)
        np.add(self.output, bias, out=self.output)
        silu(self.output, out=self.activated)
        return self.input[n:n + lag].copy()


class _Buffers:
    """Every intermediate of a forward pass over n tokens, allocated once."""

    def __init__(self, config: DecoderConfig, n: int, logits_rows: int) -> None:
        d, hd, f = config.hidden_size, config.head_dim, config.intermediate_size
        hq, hkv = config.num_heads, config.num_kv_heads
        types = set(config.layer_types)
        self.n = n
        self.positions = np.zeros(n, dtype=np.int64)  # (n,)
        self.x = np.zeros((n, d), dtype=np.float32)  # the residual stream
        self.h = np.zeros((n, d), dtype=np.float32)  # normalized x
        self.q = np.zeros((n, hq * hd), dtype=np.float32)  # also GLA's q
        if "attention" in types:
            self.k = np.zeros((n, hkv * hd), dtype=np.float32)
            self.v = np.zeros((n, hkv * hd), dtype=np.float32)
            self.q_rotated = np.zeros((n, hq, hd), dtype=np.float32)
            self.k_rotated = np.zeros((n, hkv, hd), dtype=np.float32)
            self.attended = np.zeros((n, hq, hd), dtype=np.float32)
        if types & {"gla", "mamba2"}:  # the mixers on gla (inner = hq hd)
            self.lin_k = np.zeros((n, hq * hd), dtype=np.float32)  # GLA's k; Mamba-2's dt x
            self.lin_v = np.zeros((n, hq * hd), dtype=np.float32)  # GLA's v; Mamba-2's x
            self.lin_g = np.zeros((n, hq * hd), dtype=np.float32)  # GLA's g; Mamba-2's z
            self.mixed = np.zeros((n, hq, hd), dtype=np.float32)  # gla's output
            self.normed = np.zeros((n, hq * hd), dtype=np.float32)
            self.scratch = np.zeros((n, hq * hd), dtype=np.float32)
        if "gla" in types:
            self.gate_low = np.zeros((n, GLA_GATE_RANK), dtype=np.float32)
        # the short convolutions' buffers by layer type: mamba2's over x, B and C, mamba's over x
        self.convs = {kind: _ConvBuffers(n, conv_channels(config, kind))
                      for kind in _CONV_TYPES if kind in types}
        if "mamba" in types:
            inner, rank = hq * hd, config.dt_rank
            self.xz = np.zeros((n, 2 * inner), dtype=np.float32)  # x and z
            self.z = np.zeros((n, inner), dtype=np.float32)
            self.x_dbl = np.zeros((n, rank + 2 * MAMBA_STATE), dtype=np.float32)
            self.dt_low = np.zeros((n, rank), dtype=np.float32)
            self.ssm_bc = np.zeros((2, n, MAMBA_STATE), dtype=np.float32)  # B and C
            self.delta = np.zeros((n, inner), dtype=np.float32)
            self.scanned = np.zeros((n, inner), dtype=np.float32)
        if "mamba2" in types:
            self.ssm_raw = np.zeros((n, hd), dtype=np.float32)  # h W_B^T, then h W_C^T
            self.ssm_b = np.zeros((n, hd), dtype=np.float32)  # B (n, N)
            self.ssm_c = np.zeros((n, hd), dtype=np.float32)
            self.ssm_k = np.zeros((n, hq, hd), dtype=np.float32)  # B for every head
            self.ssm_q = np.zeros((n, hq, hd), dtype=np.float32)  # C for every head
            self.dt = np.zeros((n, hq), dtype=np.float32)
            self.dt_scratch = np.zeros((n, hq), dtype=np.float32)
            self.ssm_g = np.zeros((n, hq), dtype=np.float32)  # A dt
        self.projected = np.zeros((n, d), dtype=np.float32)  # attention or FFN output
        self.gate = np.zeros((n, f), dtype=np.float32)  # the FFN's hidden activations
        self.up = np.zeros((n, f), dtype=np.float32)
        self.activated = np.zeros((n, f), dtype=np.float32)
        self.logits = np.zeros((logits_rows, config.vocab_size), dtype=np.float32)


def _mixer(kind: str, prefix: str, arrays: Mapping[str, np.ndarray], projection: type,
           decay_projection: type) -> _GLAMixer | _Mamba2Mixer | _MambaMixer:
    """The token mixer of the linear layer ``prefix`` of type ``kind`` ("gla", "mamba2" or
    "mamba"); ``decay_projection`` makes the projections whose outputs become log-decays."""
    if kind == "mamba":
        p = prefix + "mamba."
        return _MambaMixer(
            in_proj=projection(arrays[p + "in_proj.weight"]),
            conv_weight=np.ascontiguousarray(arrays[p + "conv1d.weight"][:, 0, :]),
            conv_bias=arrays[p + "conv1d.bias"],
            x_proj=decay_projection(arrays[p + "x_proj.weight"]),
            dt_proj=decay_projection(arrays[p + "dt_proj.weight"]),
            dt_bias=arrays[p + "dt_proj.bias"],
            A=np.ascontiguousarray(-np.exp(arrays[p + "A_log"])),
            D=arrays[p + "D"],
            out_proj=projection(arrays[p + "out_proj.weight"]))
    if kind == "gla":
        p = prefix + "gla."
        return _GLAMixer(
            q_proj=projection(arrays[p + "q_proj.weight"]),
            k_proj=projection(arrays[p + "k_proj.weight"]),
            v_proj=projection(arrays[p + "v_proj.weight"]),
            gk_down=decay_projection(arrays[p + "gk_proj.0.weight"]),
            gk_up=decay_projection(arrays[p + "gk_proj.1.weight"]),
            gk_bias=arrays[p + "gk_proj.1.bias"],
            g_proj=projection(arrays[p + "g_proj.weight"]),
            g_norm=arrays[p + "g_norm.weight"],
            o_proj=projection(arrays[p + "o_proj.weight"]))
    p = prefix + "mamba2."
    return _Mamba2Mixer(
        z_proj=projection(arrays[p + "z_proj.weight"]),
        x_proj=projection(arrays[p + "x_proj.weight"]),
        B_proj=projection(arrays[p + "B_proj.weight"]),
        C_proj=projection(arrays[p + "C_proj.weight"]),
        dt_proj=decay_projection(arrays[p + "dt_proj.weight"]),
        dt_bias=arrays[p + "dt_bias"],
        A=-np.exp(arrays[p + "A_log"]),
        D=arrays[p + "D"],
        conv_weight=np.ascontiguousarray(arrays[p + "conv1d.weight"][:, 0, :]),
        conv_bias=arrays[p + "conv1d.bias"],
        norm=arrays[p + "norm.weight"],
        out_proj=projection(arrays[p + "out_proj.weight"]))


def _conv_reference(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The short causal convolution of x (n, channels) from zeros, in float64, as float32:
    y_t = bias + sum_j weight[:, j] x_{t - (MAMBA_CONV_WIDTH - 1) + j}."""
    n, lag = x.shape[0], MAMBA_CONV_WIDTH - 1
    padded = np.concatenate([np.zeros((lag, x.shape[1])), x.astype(np.float64)])
    y = bias + sum(weight[:, j] * padded[j:j + n] for j in range(MAMBA_CONV_WIDTH))
    return y.astype(np.float32)


def _logsigmoid(x: np.ndarray, scratch: np.ndarray, divisor: float) -> None:
    """x = logsigmoid(x) / divisor in place, = (min(x, 0) - log1p(exp(-|x|))) / divisor (no
    overflow for any x); scratch: an array of x's shape."""
    np.abs(x, out=scratch)
    np.negative(scratch, out=scratch)
    np.exp(scratch, out=scratch)
    np.log1p(scratch, out=scratch)
    np.minimum(x, 0, out=x)
    np.subtract(x, scratch, out=x)
    np.multiply(x, np.float32(1 / divisor), out=x)


def _softplus(x: np.ndarray, scratch: np.ndarray) -> None:
    """x = softplus(x) = log(1 + exp(x)) in place, = max(x, 0) + log1p(exp(-|x|)) (no overflow
    for any x); scratch: an array of x's shape."""
    np.abs(x, out=scratch)
    np.negative(scratch, out=scratch)
    np.exp(scratch, out=scratch)
    np.log1p(scratch, out=scratch)
    np.maximum(x, 0, out=x)
    np.add(x, scratch, out=x)


def _logsigmoid_reference(x: np.ndarray) -> np.ndarray:
    """logsigmoid(x) = -log(1 + exp(-x)) in float64."""
    return -np.logaddexp(0.0, -x.astype(np.float64))


def _softplus_reference(x: np.ndarray) -> np.ndarray:
    """softplus(x) = log(1 + exp(x)) in float64."""
    return np.logaddexp(0.0, x.astype(np.float64))


# --- the model ------------------------------------------------------------------------------------


class Decoder:
    """The decoder of the module docstring, with its KV cache and recurrent states.

    Args:
        config: the sizes.
        parameters: float32 arrays by name and shape as :meth:`DecoderConfig.parameter_shapes`
            (kept by reference when float32 and C-contiguous; bfloat16 and ternary weights
            are rounded or quantized and the float32 matrices not kept).
        weights: ``"fp32"``, ``"bf16"`` (every weight matrix in bfloat16, the embedding
            included) or ``"ternary"`` (BitNet b1.58 projections; embeddings float32).
            Every layer type takes every kind: the mixers' matrices are projections like
            the others, their vectors stay float32.
        kv_dtype: ``"float32"`` or ``"int8"`` (the KV cache's storage).
        max_len: positions the model holds (default: ``config.max_seq_length``).

    ``forward(ids)`` feeds tokens after the ones the model holds and returns their logits;
    ``generate(ids, n)`` starts over from a prompt; ``reset()`` empties the cache and the states.
    ``cache`` is the KV cache of the attention layers (None when there is none); ``states``
    the recurrent state of each linear layer. A state cannot be rewound: truncating ``cache``
    of a model with linear layers makes the next ``forward`` refuse (``reset()`` starts over).
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
        # the decays' projections: float32 under ternary weights (see the module's docstring)
        decay_projection = _Float32Projection if self.weights == "ternary" else projection
        # (vocab, d), float32 or bfloat16; also the output projection (tied)
        if self.weights == "bf16":
            self._output = _BFloat16Projection(arrays["embed_tokens.weight"])
            self._embedding = self._output.stored
        else:
            self._embedding = arrays["embed_tokens.weight"]
            self._output = _Float32Output(self._embedding)
        self._final_norm = arrays["norm.weight"]  # (d,)
        self._layers: list[_Layer | _LinearLayer] = []
        for index, kind in enumerate(config.layer_types):
            prefix = f"layers.{index}."
            ffn = {"attention_norm": arrays[prefix + "input_layernorm.weight"],
                   "ffn_norm": arrays[prefix + "post_attention_layernorm.weight"],
                   "gate_proj": projection(arrays[prefix + "mlp.gate_proj.weight"]),
                   "up_proj": projection(arrays[prefix + "mlp.up_proj.weight"]),
                   "down_proj": projection(arrays[prefix + "mlp.down_proj.weight"])}
            if kind == "attention":
                self._layers.append(_Layer(
                    q_proj=projection(arrays[prefix + "self_attn.q_proj.weight"]),
                    k_proj=projection(arrays[prefix + "self_attn.k_proj.weight"]),
                    v_proj=projection(arrays[prefix + "self_attn.v_proj.weight"]),
                    o_proj=projection(arrays[prefix + "self_attn.o_proj.weight"]), **ffn))
            else:
                self._layers.append(_LinearLayer(
                    kind=kind, mixer=_mixer(kind, prefix, arrays, projection,
                                            decay_projection), **ffn))
        self._max_len = max_len
        # the KV cache holds the attention layers only: layer index -> its layer in the cache
        self._cache_layer = {index: slot for slot, index in enumerate(config.attention_layers)}
        self.cache: KVCache | None = None
        if self._cache_layer:
            self.cache = KVCache(len(self._cache_layer), max_len, config.num_kv_heads,
                                 config.head_dim, dtype=self.kv_dtype)
        # the recurrent state of each linear layer (None: attention), (H, hd, hd) or mamba's
        # (d_inner, N), read-only: a step replaces a state by the kernel's final state, never
        # writes into one
        self._linear = [index for index, kind in enumerate(config.layer_types)
                        if kind in _LINEAR_TYPES]
        shapes = {"gla": (config.num_heads, config.head_dim, config.head_dim),
                  "mamba2": (config.num_heads, config.head_dim, config.head_dim),
                  "mamba": (config.num_heads * config.head_dim, MAMBA_STATE)}
        self._zero_states = {index: _read_only_zeros(shapes[config.layer_types[index]])
                             for index in self._linear}
        self._states: list[np.ndarray | None] = [None] * config.num_layers
        # the conv state (MAMBA_CONV_WIDTH - 1, its channels) of each mamba2 and mamba layer
        # (None: the others), read-only like the states: the last rows its convolution has seen
        self._zero_conv_states = {
            index: _read_only_zeros((MAMBA_CONV_WIDTH - 1, conv_channels(config, kind)))
            for index, kind in enumerate(config.layer_types) if kind in _CONV_TYPES}
        self._conv_states: list[np.ndarray | None] = [None] * config.num_layers
        self._states_length = 0  # the positions the states hold
        self._epoch = 0  # counts reset(): a snapshot belongs to one
        self.reset()
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
        return self._max_len

    @property
    def length(self) -> int:
        """Positions the model holds (the next token's position): the KV cache's, else the
        recurrent states'."""
        return self.cache.length if self.cache is not None else self._states_length

    @property
    def states(self) -> tuple[np.ndarray | None, ...]:
        """Per layer: a linear layer's recurrent state (H, hd, hd) float32, read-only (zeros
        before the first token), None for an attention layer."""
        return tuple(self._states)

    @property
    def conv_states(self) -> tuple[np.ndarray | None, ...]:
        """Per layer: a mamba2 layer's conv state (MAMBA_CONV_WIDTH - 1, inner + 2 hd) float32,
        the last rows of x, B and C before their convolution (zeros before the first token),
        read-only; None for the other layers."""
        return tuple(self._conv_states)

    @property
    def state_nbytes(self) -> int:
        """Bytes of the recurrent states of the linear layers, the conv states included (fixed,
        whatever the context)."""
        return (sum(state.nbytes for state in self._zero_states.values())
                + sum(state.nbytes for state in self._zero_conv_states.values()))

    @property
    def weight_nbytes(self) -> int:
        """Bytes of all weights in their stored form (ternary: packed values and scales)."""
        total = self._embedding.nbytes + self._final_norm.nbytes
        for layer in self._layers:
            total += sum(vector.nbytes for vector in layer.vectors())
            total += sum(projection.nbytes for projection in layer.projections())
        return total

    def bytes_per_token(self, context: int) -> int:
        """Bytes a decoding step that attends over ``context`` positions (the new one included)
        must move: every weight in its stored form (the embedding once, as the tied output
        projection), ``context`` positions of the KV cache of every attention layer, and the
        recurrent state of every linear layer read and written once (2 H hd hd 4 bytes each,
        whatever the context). A bandwidth ceiling on decoding is then
        ``bandwidth / bytes_per_token(context)`` tokens/s."""
        context = _rt.as_int_at_least("Decoder.bytes_per_token", "context", context, 1)
        if context > self.max_len:
            raise ValueError(f"Decoder.bytes_per_token: context: expected <= max_len="
                             f"{self.max_len}, got {context}")
        kv = context * self.cache.bytes_per_position if self.cache is not None else 0
        return self.weight_nbytes + kv + 2 * self.state_nbytes

    def __repr__(self) -> str:
        return (f"Decoder({self.config!r}, weights={self.weights!r}, "
                f"kv_dtype={self.kv_dtype!r}, max_len={self.max_len}, length={self.length})")

    # --- running it ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Empty the KV cache and zero the recurrent states: the next token is at position 0."""
        if self.cache is not None:
            self.cache.reset()
        for index, state in self._zero_states.items():
            self._states[index] = state
        for index, state in self._zero_conv_states.items():
            self._conv_states[index] = state
        self._states_length = 0
        self._epoch += 1

    def snapshot(self) -> DecoderSnapshot:
        """Where the model is: its position and the linear layers' states (arrays that later
        steps replace and never write into), for ``restore``: decode several continuations of
        one prompt, or time one decoding step again and again."""
        return DecoderSnapshot(length=self.length, states=tuple(self._states),
                               conv_states=tuple(self._conv_states),
                               epoch=self._epoch, owner=id(self))

    def restore(self, snapshot: DecoderSnapshot) -> None:
        """Go back to ``snapshot``: the KV cache cut back to its position, the recurrent states
        put back. It must have been taken since the last ``reset`` (or ``generate``), at a
        position the model still holds; the cache's positions below it must not have been
        rewritten since (after ``cache.truncate`` and new tokens they are other keys)."""
        function = "Decoder.restore"
        if not isinstance(snapshot, DecoderSnapshot):
            raise TypeError(f"{function}: snapshot: expected a DecoderSnapshot (from "
                            f"Decoder.snapshot), got {_rt.describe(snapshot)}")
        if snapshot.owner != id(self):
            raise ValueError(f"{function}: snapshot: expected one of this model's, got another "
                             f"model's")
        if snapshot.epoch != self._epoch or snapshot.length > self.length:
            raise ValueError(f"{function}: snapshot: expected one taken since the last reset() "
                             f"at a position the model still holds (<= {self.length}), got one "
                             f"at position {snapshot.length}"
                             + ("" if snapshot.epoch == self._epoch else
                                " from before a reset() or generate()"))
        if self.cache is not None:
            self.cache.truncate(snapshot.length)
        self._states[:] = snapshot.states
        self._conv_states[:] = snapshot.conv_states
        self._states_length = snapshot.length

    def forward(self, ids: np.ndarray) -> np.ndarray:
        """Feed ``ids`` (n,) after the positions held; return their logits (n, vocab) float32.

        From an empty model this is the prefill of a prompt; one id at a time it is decoding.
        The keys and values of the n tokens are added to the cache, the linear layers' states
        advanced over them."""
        function = "Decoder.forward"
        ids = self._check_ids(function, ids, self.length)
        self._check_states(function)
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
        one pass over the whole sequence without a cache or a state carried between calls (the
        linear layers run gla's or selective_scan's token-by-token float64 recurrence): what ``forward`` from an
        empty model must give (the benchmark checks it before timing a model). Slow, and it
        leaves the cache and the states alone."""
        ids = self._check_ids("Decoder.reference_logits", ids, 0)
        config = self.config
        n, hq, hkv, hd = ids.shape[0], config.num_heads, config.num_kv_heads, config.head_dim
        eps, theta = config.rms_norm_eps, config.rope_theta
        rmsnorm_ref, rope_ref = _reference("rmsnorm"), _reference("rope")
        attention_ref, silu_ref = _reference("attention"), _reference("silu")
        gla_ref, scan_ref = _reference("gla"), _reference("selective_scan")
        positions = np.arange(n, dtype=np.int64)
        x = self._embedding[ids].astype(np.float32)  # (n, d)
        for layer in self._layers:
            h = rmsnorm_ref(x, layer.attention_norm, eps=eps)
            if isinstance(layer, _LinearLayer) and layer.kind == "gla":
                m = layer.mixer
                q, k, v = (projection.reference(h).reshape(n, hq, hd)
                           for projection in (m.q_proj, m.k_proj, m.v_proj))
                logits = m.gk_up.reference(m.gk_down.reference(h)) + m.gk_bias
                g = _logsigmoid_reference(logits) / GLA_GATE_NORMALIZER
                o = gla_ref(q, k, v, g.astype(np.float32).reshape(n, hq, hd))
                normed = rmsnorm_ref(o, m.g_norm, eps=eps).reshape(n, hq * hd)
                gated = normed * silu_ref(m.g_proj.reference(h))
                x = x + m.o_proj.reference(gated.astype(np.float32))
            elif isinstance(layer, _LinearLayer) and layer.kind == "mamba":
                m = layer.mixer
                inner, rank = hq * hd, config.dt_rank
                xz = m.in_proj.reference(h)
                xs = silu_ref(_conv_reference(xz[:, :inner], m.conv_weight, m.conv_bias))
                x_dbl = m.x_proj.reference(xs)
                delta = m.dt_proj.reference(np.ascontiguousarray(x_dbl[:, :rank]))
                bs, cs = (np.ascontiguousarray(x_dbl[:, rank + j * MAMBA_STATE:][:, :MAMBA_STATE])
                          for j in range(2))
                y = scan_ref(xs, delta, m.A, bs, cs, D=m.D,
                             z=np.ascontiguousarray(xz[:, inner:]), delta_bias=m.dt_bias,
                             delta_softplus=True)
                x = x + m.out_proj.reference(y)
            elif isinstance(layer, _LinearLayer):  # mamba2
                m = layer.mixer
                z = m.z_proj.reference(h)
                raw = np.concatenate([m.x_proj.reference(h), m.B_proj.reference(h),
                                      m.C_proj.reference(h)], axis=1)
                xbc = silu_ref(_conv_reference(raw, m.conv_weight, m.conv_bias))
                inner = hq * hd
                xs = xbc[:, :inner].reshape(n, hq, hd)
                b, c = xbc[:, inner:inner + hd], xbc[:, inner + hd:]
                dt = _softplus_reference(m.dt_proj.reference(h) + m.dt_bias)  # (n, H) float64
                o = gla_ref(np.repeat(c[:, None, :], hq, axis=1),
                            np.repeat(b[:, None, :], hq, axis=1),
                            (xs * dt[:, :, None]).astype(np.float32),
                            (m.A * dt).astype(np.float32), scale=1.0)
                y = (o + m.D[:, None] * xs).reshape(n, hq * hd) * silu_ref(z)
                normed = rmsnorm_ref(y.astype(np.float32), m.norm, eps=eps)
                x = x + m.out_proj.reference(normed)
            else:
                q = rope_ref(layer.q_proj.reference(h).reshape(n, hq, hd), positions,
                             theta=theta)
                k = rope_ref(layer.k_proj.reference(h).reshape(n, hkv, hd), positions,
                             theta=theta)
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
        start, states = self.length, (list(self._states), list(self._conv_states))
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
            # an interrupted prefill leaves the cache and the states as they were
            self._rewind(start, states)
            raise
        return logits

    def _rewind(self, length: int,
                states: tuple[list[np.ndarray | None], list[np.ndarray | None]]) -> None:
        """Back to ``length`` positions and the ``states`` (and conv states) held then."""
        if self.cache is not None:
            self.cache.truncate(length)
        self._states[:], self._conv_states[:] = states
        self._states_length = length

    def _run(self, ids: np.ndarray, buffers: _Buffers, *, last_only: bool) -> np.ndarray:
        """Logits of the last token (last_only) or of every token: buffers.logits. The states
        of the linear layers advance when every layer has run."""
        start = self.length
        states: dict[int, np.ndarray] = {}  # the linear layers' new states
        conv_states: dict[int, np.ndarray] = {}  # the mamba2 layers' new conv states
        try:
            logits = self._layers_and_logits(ids, buffers, start, last_only, states,
                                             conv_states)
        except BaseException:
            if self.cache is not None:
                self.cache.truncate(start)  # an interrupted step leaves the cache as it was
            raise
        for index, state in states.items():
            state.flags.writeable = False
            self._states[index] = state
        for index, state in conv_states.items():
            state.flags.writeable = False
            self._conv_states[index] = state
        self._states_length = start + ids.shape[0]
        return logits

    def _layers_and_logits(self, ids: np.ndarray, b: _Buffers, start: int, last_only: bool,
                           states: dict[int, np.ndarray],
                           conv_states: dict[int, np.ndarray]) -> np.ndarray:
        config = self.config
        eps = config.rms_norm_eps
        n = ids.shape[0]
        if n == 1:
            b.positions[0] = start
        else:
            b.positions[:] = np.arange(start, start + n)
        if self._embedding.dtype == _FLOAT32:
            np.take(self._embedding, ids, axis=0, out=b.x)  # (n, d)
        else:
            b.x[:] = self._embedding[ids]  # widened
        for index, layer in enumerate(self._layers):
            # token mixer: x += mixer(rmsnorm(x)), into b.projected
            rmsnorm(b.x, layer.attention_norm, eps=eps, out=b.h)
            if layer.kind == "attention":
                self._attention(self._cache_layer[index], layer, b)
            elif layer.kind == "gla":
                states[index] = self._gla(layer.mixer, self._states[index], b)
            elif layer.kind == "mamba2":
                states[index], conv_states[index] = self._mamba2_mix(
                    layer.mixer, self._states[index], self._conv_states[index], b)
            else:
                states[index], conv_states[index] = self._mamba_mix(
                    layer.mixer, self._states[index], self._conv_states[index], b)
            np.add(b.x, b.projected, out=b.x)
            # feed-forward block: x += swiglu(h), see _feed_forward
            rmsnorm(b.x, layer.ffn_norm, eps=eps, out=b.h)
            self._feed_forward(layer, b)
            np.add(b.x, b.projected, out=b.x)
        rows = slice(n - 1, n) if last_only else slice(0, n)
        rmsnorm(b.x[rows], self._final_norm, eps=eps, out=b.h[rows])
        self._output(b.h[rows], b.logits)  # tied: logits = h E^T
        return b.logits

    def _attention(self, slot: int, layer: _Layer, b: _Buffers) -> None:
        """b.projected = attention(rope(h W_q^T), rope(h W_k^T), h W_v^T) W_o^T over the KV
        cache's layer ``slot``, which the new keys and values join."""
        config, cache = self.config, self.cache
        n, hq, hkv, hd = b.n, config.num_heads, config.num_kv_heads, config.head_dim
        theta = config.rope_theta
        layer.q_proj(b.h, b.q)
        layer.k_proj(b.h, b.k)
        layer.v_proj(b.h, b.v)
        rope(b.q.reshape(n, hq, hd), b.positions, theta=theta, out=b.q_rotated)
        rope(b.k.reshape(n, hkv, hd), b.positions, theta=theta, out=b.k_rotated)
        cache.append(slot, b.k_rotated, b.v.reshape(n, hkv, hd))
        attention(b.q_rotated, cache.keys(slot), cache.values(slot), causal=True,
                  out=b.attended)
        layer.o_proj(b.attended.reshape(n, hq * hd), b.projected)

    def _gla(self, m: _GLAMixer, state: np.ndarray, b: _Buffers) -> np.ndarray:
        """b.projected = the GLA mixer of b.h (see the module docstring), from ``state``;
        returns the state after the last token (a new array)."""
        config = self.config
        n, heads, hd = b.n, config.num_heads, config.head_dim
        m.q_proj(b.h, b.q)  # (n, H hd)
        m.k_proj(b.h, b.lin_k)
        m.v_proj(b.h, b.lin_v)
        m.gk_down(b.h, b.gate_low)  # (n, r)
        m.gk_up(b.gate_low, b.lin_g)  # (n, H hd)
        np.add(b.lin_g, m.gk_bias, out=b.lin_g)
        _logsigmoid(b.lin_g, b.scratch, GLA_GATE_NORMALIZER)  # log-decays <= 0
        _, final = gla(b.q.reshape(n, heads, hd), b.lin_k.reshape(n, heads, hd),
                       b.lin_v.reshape(n, heads, hd), b.lin_g.reshape(n, heads, hd),
                       initial_state=state, output_final_state=True, out=b.mixed)
        # output gate: rmsnorm over each head's hd values, times silu(h W_g^T)
        rmsnorm(b.mixed.reshape(n * heads, hd), m.g_norm, eps=config.rms_norm_eps,
                out=b.normed.reshape(n * heads, hd))
        m.g_proj(b.h, b.lin_v)  # v is used: its buffer takes the gate
        silu(b.lin_v, out=b.scratch)
        np.multiply(b.normed, b.scratch, out=b.normed)
        m.o_proj(b.normed, b.projected)
        return final

    def _mamba2_mix(self, m: _Mamba2Mixer, state: np.ndarray, conv_state: np.ndarray,
                    b: _Buffers) -> tuple[np.ndarray, np.ndarray]:
        """b.projected = the Mamba-2 mixer of b.h (see the module docstring), from ``state`` and
        ``conv_state``; returns both after the last token (new arrays)."""
        config = self.config
        n, heads, hd = b.n, config.num_heads, config.head_dim
        inner, lag = heads * hd, MAMBA_CONV_WIDTH - 1
        conv = b.convs["mamba2"]
        m.z_proj(b.h, b.lin_g)  # z (n, H P)
        # the convolution's new rows: x, B and C of the n tokens
        m.x_proj(b.h, b.scratch)
        conv.input[lag:, :inner] = b.scratch
        m.B_proj(b.h, b.ssm_raw)  # (n, N)
        conv.input[lag:, inner:inner + hd] = b.ssm_raw
        m.C_proj(b.h, b.ssm_raw)
        conv.input[lag:, inner + hd:] = b.ssm_raw
        new_conv_state = conv.run(conv_state, m.conv_weight, m.conv_bias)
        b.lin_v[:] = conv.activated[:, :inner]  # x
        b.ssm_b[:] = conv.activated[:, inner:inner + hd]
        b.ssm_c[:] = conv.activated[:, inner + hd:]
        b.ssm_k[:] = b.ssm_b[:, None, :]  # B and C are shared by the heads
        b.ssm_q[:] = b.ssm_c[:, None, :]
        m.dt_proj(b.h, b.dt)  # (n, H)
        np.add(b.dt, m.dt_bias, out=b.dt)
        _softplus(b.dt, b.dt_scratch)
        np.multiply(b.dt, m.A, out=b.ssm_g)  # log-decays A dt <= 0, one per head
        x_heads, v_heads = b.lin_v.reshape(n, heads, hd), b.lin_k.reshape(n, heads, hd)
        np.multiply(x_heads, b.dt[:, :, None], out=v_heads)  # v = dt x
        _, final = gla(b.ssm_q, b.ssm_k, v_heads, b.ssm_g, scale=1.0, initial_state=state,
                       output_final_state=True, out=b.mixed)
        np.multiply(x_heads, m.D[:, None], out=v_heads)  # y = o + D x
        np.add(b.mixed, v_heads, out=b.mixed)
        silu(b.lin_g, out=b.scratch)  # gated RMSNorm: rmsnorm(y silu(z)) w
        mixed_rows = b.mixed.reshape(n, heads * hd)
        np.multiply(mixed_rows, b.scratch, out=mixed_rows)
        rmsnorm(mixed_rows, m.norm, eps=config.rms_norm_eps, out=b.normed)
        m.out_proj(b.normed, b.projected)
        return final, new_conv_state

    def _mamba_mix(self, m: _MambaMixer, state: np.ndarray, conv_state: np.ndarray,
                   b: _Buffers) -> tuple[np.ndarray, np.ndarray]:
        """b.projected = the Mamba mixer of b.h (see the module docstring), from ``state`` and
        ``conv_state``; returns both after the last token (new arrays)."""
        inner, rank, lag = self.config.hidden_size, self.config.dt_rank, MAMBA_CONV_WIDTH - 1
        conv = b.convs["mamba"]
        m.in_proj(b.h, b.xz)  # x and z (n, 2 inner)
        conv.input[lag:] = b.xz[:, :inner]
        new_conv_state = conv.run(conv_state, m.conv_weight, m.conv_bias)
        x = conv.activated  # silu(conv(x)) (n, inner)
        m.x_proj(x, b.x_dbl)  # dt's low rank, B, C
        b.dt_low[:] = b.x_dbl[:, :rank]
        b.ssm_bc[0] = b.x_dbl[:, rank:rank + MAMBA_STATE]
        b.ssm_bc[1] = b.x_dbl[:, rank + MAMBA_STATE:]
        m.dt_proj(b.dt_low, b.delta)  # softplus(. + dt_bias) inside the scan
        b.z[:] = b.xz[:, inner:]
        _, final = selective_scan(x, b.delta, m.A, b.ssm_bc[0], b.ssm_bc[1], D=m.D, z=b.z,
                                  delta_bias=m.dt_bias, delta_softplus=True,
                                  initial_state=state, output_final_state=True, out=b.scanned)
        m.out_proj(b.scanned, b.projected)
        return final, new_conv_state

    def _feed_forward(self, layer: _Layer | _LinearLayer, b: _Buffers) -> None:
        """b.projected = (silu(b.h W_gate^T) * (b.h W_up^T)) W_down^T: swiglu's computation, in
        this model's buffers and projections."""
        layer.gate_proj(b.h, b.gate)  # (n, f)
        layer.up_proj(b.h, b.up)
        silu(b.gate, out=b.activated)
        np.multiply(b.activated, b.up, out=b.gate)  # silu(gate) * up
        layer.down_proj(b.gate, b.projected)

    # --- checks -------------------------------------------------------------------------------

    def _check_states(self, function: str) -> None:
        """The recurrent states hold the positions the KV cache holds (truncating the cache of a
        model with linear layers cannot rewind their states)."""
        if self._linear and self.cache is not None and \
                self.cache.length != self._states_length:
            raise ValueError(f"{function}: the KV cache holds {self.cache.length} positions but "
                             f"the recurrent states of the linear layers "
                             f"{self._linear} hold {self._states_length}: a recurrent state "
                             f"cannot be rewound (cache.truncate); call reset() and feed the "
                             f"tokens again")

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
