"""What a claim's ``measure:`` may name: sizes that follow from shapes and dtypes alone, and the
decoder's figures, for claims whose baseline is not a kernel that a benchmark times.

A claim such as "GQA: -67% KV cache against multi-head attention" or "BitNet b1.58: -75% memory
against llama.cpp's Q4" compares two ways of storing the same tensors. Neither baseline needs a
kernel to be sized: the bytes follow from the shapes and the storage format. A claim says which
two it compares with ``measure: {kind: ..., this: ..., baseline: ...}``, naming entries of one of
the tables below; ``koschei.phases.pas_analyze`` computes the two sizes (or reads the two figures)
and their ratio.

- ``weights``: :data:`WEIGHT_FORMATS`, bytes of a (rows, cols) weight matrix in a storage format,
  its scales included; evaluated at a bench case's ``d_out`` x ``d_in``.
- ``kv_cache``: :data:`KV_LAYOUTS`, which heads a KV cache keeps (one per query head, one per
  group, one in all) and in which dtype; the bytes per position come from
  ``koschei.engine.models.kv_cache.KVCache``, evaluated at a bench case's ``hq``, ``hkv``, ``hd``
  or at a decoder configuration (``DecoderConfig.named``).
- ``attention_memory``: :data:`ATTENTION_MEMORY`, the memory attention needs besides its inputs
  and output: an n x m score matrix per head, or the attention kernel's tiles (online softmax).
- ``decoder``: :data:`DECODER_WEIGHTS`, the weight kinds of the decoder's model case in a
  benchmark run (tokens/s for speed claims, weight bytes for size claims).

Importing this module is cheap: no NumPy, no engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class WeightFormat:
    """A storage format of a weight matrix of ``rows`` x ``cols`` (one row per output feature):
    each row is cut into blocks of ``block_weights`` weights stored in ``block_bytes`` bytes
    (the block's scales included; a partial last block takes a whole one), each row adds
    ``row_bytes`` (per-row scales) and the matrix ``matrix_bytes`` (one scale for all)."""

    name: str
    title: str
    block_weights: int
    block_bytes: int
    row_bytes: int = 0
    matrix_bytes: int = 0
    source: str = ""

    def nbytes(self, rows: int, cols: int) -> int:
        """Bytes of a ``rows`` x ``cols`` matrix in this format."""
        blocks = math.ceil(cols / self.block_weights)
        return rows * (blocks * self.block_bytes + self.row_bytes) + self.matrix_bytes

    def bits_per_weight(self, rows: int | None = None, cols: int | None = None) -> float:
        """Bits per weight, scales included: of a ``rows`` x ``cols`` matrix, or of the blocks
        alone (a large matrix) when no shape is given."""
        if rows is None or cols is None:
            return 8.0 * self.block_bytes / self.block_weights
        return 8.0 * self.nbytes(rows, cols) / (rows * cols)


def _formats(*formats: WeightFormat) -> dict[str, WeightFormat]:
    return {form.name: form for form in formats}


# Bytes per weight, scales included. GGUF block layouts are llama.cpp's (ggml-common.h):
# block_q8_0 {fp16 d; int8 qs[32]}, block_q4_0 {fp16 d; uint8 qs[16]}, block_q4_K {fp16 d, dmin;
# uint8 scales[12]; uint8 qs[128]} per 256, block_tq2_0 {uint8 qs[64]; fp16 d} per 256,
# block_tq1_0 {uint8 qs[48]; uint8 qh[4]; fp16 d} per 256.
WEIGHT_FORMATS: dict[str, WeightFormat] = _formats(
    WeightFormat("fp32", "float32", 1, 4, source="IEEE binary32"),
    WeightFormat("fp16", "float16", 1, 2, source="IEEE binary16"),
    WeightFormat("bf16", "bfloat16", 1, 2, source="bfloat16 (float32's exponent, 7-bit mantissa)"),
    WeightFormat("int8_per_row", "int8, one float32 scale per row", 1, 1, row_bytes=4,
                 source="koschei int8_quantize / int8_linear"),
    WeightFormat("q8_0", "GGUF Q8_0: 32 int8 and an fp16 scale", 32, 34, source="llama.cpp"),
    WeightFormat("q4_0", "GGUF Q4_0: 32 4-bit and an fp16 scale", 32, 18, source="llama.cpp"),
    WeightFormat("q4_k", "GGUF Q4_K: 256 4-bit, fp16 scale and min, 6-bit sub-block scales",
                 256, 144, source="llama.cpp"),
    WeightFormat("int4_g128", "int4, an fp16 scale and an fp16 zero point per 128", 128, 68,
                 source="GPTQ / AWQ-style group-wise INT4"),
    WeightFormat("tq2_0", "GGUF TQ2_0: 256 ternary as 2-bit and an fp16 scale", 256, 66,
                 source="llama.cpp"),
    WeightFormat("tq1_0", "GGUF TQ1_0: 256 ternary as base-3 (1.6 bits) and an fp16 scale", 256,
                 54, source="llama.cpp"),
    WeightFormat("ternary_packed", "ternary, four 2-bit codes a byte, one float32 scale", 4, 1,
                 matrix_bytes=4, source="koschei bitnet_quantize / bitnet_linear"),
    WeightFormat("binary_packed", "binary, eight 1-bit signs a byte, one float32 scale", 8, 1,
                 matrix_bytes=4, source="BitNet (1-bit) weights"),
)


@dataclass(frozen=True)
class KVLayout:
    """Which key/value heads a KV cache keeps per position and layer, and their dtype:
    ``heads`` "hq" (one per query head: multi-head attention), "hkv" (one per group of query
    heads: grouped-query attention) or "one" (multi-query attention); ``dtype`` as
    ``KVCache(dtype=...)`` takes it."""

    name: str
    title: str
    heads: Literal["hq", "hkv", "one"]
    dtype: Literal["float32", "int8"]

    def kv_heads(self, hq: int, hkv: int) -> int:
        """The number of key/value heads for ``hq`` query heads over ``hkv`` groups."""
        return {"hq": hq, "hkv": hkv, "one": 1}[self.heads]


KV_LAYOUTS: dict[str, KVLayout] = {layout.name: layout for layout in (
    KVLayout("mha", "multi-head attention, float32 (a KV head per query head)", "hq", "float32"),
    KVLayout("gqa", "grouped-query attention, float32 (a KV head per group)", "hkv", "float32"),
    KVLayout("mqa", "multi-query attention, float32 (one KV head)", "one", "float32"),
    KVLayout("gqa_int8", "grouped-query attention, int8 with a float32 scale per position and "
             "head", "hkv", "int8"),
)}

# The memory attention needs besides q, k, v and its output.
ATTENTION_MEMORY: dict[str, str] = {
    "score_matrix": "the hq x n x m float32 scores, materialized (standard attention)",
    "online_softmax": "the attention kernel's tiles: per thread one task's score tile, scaled "
                      "queries, accumulator and V block, and the running statistics "
                      "(FlashAttention's online softmax)",
}

# The weight kinds of the decoder's model case (koschei.engine.Decoder(weights=...)).
DECODER_WEIGHTS: dict[str, str] = {
    "fp32": "float32 projection weights",
    "ternary": "BitNet b1.58 ternary projection weights (bitnet_linear)",
}

MEASURE_KINDS: dict[str, dict] = {
    "weights": WEIGHT_FORMATS,
    "kv_cache": KV_LAYOUTS,
    "attention_memory": ATTENTION_MEMORY,
    "decoder": DECODER_WEIGHTS,
}
# The claim metrics each kind measures: sizes, or (the decoder's tokens/s) speed too.
SIZE_METRICS = ("memory", "compression")
SPEED_METRICS = ("speedup", "latency")
KIND_METRICS: dict[str, tuple[str, ...]] = {
    "weights": SIZE_METRICS,
    "kv_cache": SIZE_METRICS,
    "attention_memory": SIZE_METRICS,
    "decoder": SPEED_METRICS + SIZE_METRICS,
}
