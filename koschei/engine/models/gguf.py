"""A :class:`~koschei.engine.models.decoder.Decoder`'s weights as a GGUF file that llama.cpp runs.

    from koschei.engine.models.gguf import write_gguf
    write_gguf(decoder, "igla_v2-f32.gguf")                    # F32 everywhere
    write_gguf(ternary_decoder, "igla_v2-tq2_0.gguf", "TQ2_0")  # ternary projections as TQ2_0

The file is llama.cpp's "llama" architecture (GGUF: github.com/ggml-org/ggml, docs/gguf.md)
with the decoder's own sizes: ``llama.embedding_length`` (hidden size), ``block_count``,
``feed_forward_length``, ``attention.head_count`` / ``head_count_kv``, ``key_length`` /
``value_length`` and ``rope.dimension_count`` (head dim), ``rope.freq_base`` (theta),
``attention.layer_norm_rms_epsilon``, ``vocab_size`` and ``context_length``.

How the decoder's tensors become llama.cpp's (as ``convert_hf_to_gguf.py`` does for Hugging
Face's Llama, whose names and layout the decoder shares):

- names: ``embed_tokens`` -> ``token_embd``, ``layers.i.self_attn.q_proj`` -> ``blk.i.attn_q``
  (``attn_k``, ``attn_v``, ``attn_output``), ``input_layernorm`` -> ``attn_norm``,
  ``post_attention_layernorm`` -> ``ffn_norm``, ``mlp.gate_proj`` -> ``ffn_gate`` (``ffn_up``,
  ``ffn_down``), ``norm`` -> ``output_norm``. No ``output.weight``: with the embeddings tied,
  llama.cpp uses ``token_embd`` as the output projection when ``output`` is absent.
- RoPE: the decoder pairs coordinate j of a head with j + head_dim / 2 ("rotate half"); llama.cpp's
  "llama" pairs 2i with 2i + 1. The rows of W_q and W_k are reordered within each head so that
  row 2i holds the decoder's row i and row 2i + 1 its row i + head_dim / 2 (``LlamaModel.permute``
  in llama.cpp's converter). Attention scores are unchanged: q and k are reordered alike.
- a PyTorch Linear weight (d_out, d_in) is GGUF's (ne0 = d_in, ne1 = d_out) as it is.
- the tokenizer: a placeholder SentencePiece-style ("llama") vocabulary of ``vocab_size`` tokens
  ``<unk>``, ``<s>``, ``</s>``, ``<t3>``, ``<t4>``, ...: the model has no tokenizer, and callers
  feed token ids.

Tensor types (``tensor_type``) of the projection matrices (q, k, v, o, gate, up, down):
``F32``, ``F16``, ``TQ2_0`` (ternary: 2 bits a weight and one float16 scale per 256, for a
decoder with ``weights="ternary"``; each block's scale is the matrix's absmean scale, so the
file holds exactly the decoder's ternary weights, the scale rounded to float16), and ``Q8_0`` /
``Q4_0`` (llama.cpp's block quantizations, from the decoder's float32 weights, or its ternary
weights times their scale). A decoder with ``weights="bf16"`` gives its bfloat16 values (exact
in F32, and in F16 but for magnitudes below float16's normal range, 6.1e-5). The RMSNorm gains are always F32; the embedding (and so the tied
output projection) is F32 unless ``tensor_type`` is F16, or ``embedding_type`` says otherwise.

The quantized types need every row length (d_in) to be a multiple of their block (TQ2_0: 256,
Q8_0 and Q4_0: 32). The ``gguf`` package (``pip install gguf``, in the ``llama`` and ``test``
extras) writes the file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EMBEDDING_TYPES", "TENSOR_TYPES", "gguf_tensor_names", "write_gguf"]

# the types write_gguf writes projection matrices as, and their block sizes (1: not blocked)
TENSOR_TYPES: dict[str, int] = {"F32": 1, "F16": 1, "TQ2_0": 256, "Q8_0": 32, "Q4_0": 32}
EMBEDDING_TYPES = ("F32", "F16")
# llama.cpp's general.file_type (LlamaFileType) of a file whose matrices are of that type
_FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 7, "TQ2_0": 37}
# the decoder's projection (an attribute of its layers, a Hugging Face Llama name) -> llama.cpp's
_PROJECTIONS = {
    "q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
    "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down",
}
_PLACEHOLDER_TOKENS = ("<unk>", "<s>", "</s>")
_FUNCTION = "write_gguf"


def _gguf() -> Any:
    try:
        import gguf
    except ImportError:  # pragma: no cover - the test extra installs it
        raise ImportError(f"{_FUNCTION}: needs the gguf package: pip install gguf (or pip "
                          "install -e '.[llama]' for llama.cpp too)") from None
    return gguf


def gguf_tensor_names(num_layers: int) -> dict[str, str]:
    """The decoder's parameter name (``DecoderConfig.parameter_shapes``) -> the GGUF tensor name,
    in the order the file holds them."""
    names = {"embed_tokens.weight": "token_embd.weight"}
    for layer in range(num_layers):
        hf, blk = f"layers.{layer}.", f"blk.{layer}."
        names[hf + "input_layernorm.weight"] = blk + "attn_norm.weight"
        for projection in ("q_proj", "k_proj", "v_proj", "o_proj"):
            names[hf + f"self_attn.{projection}.weight"] = blk + f"{_PROJECTIONS[projection]}.weight"
        names[hf + "post_attention_layernorm.weight"] = blk + "ffn_norm.weight"
        for projection in ("gate_proj", "up_proj", "down_proj"):
            names[hf + f"mlp.{projection}.weight"] = blk + f"{_PROJECTIONS[projection]}.weight"
    names["norm.weight"] = "output_norm.weight"
    return names


def _rope_pairs_adjacent(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Rows of W (heads * head_dim, d_in) reordered within each head from rotate-half pairs
    (j, j + head_dim / 2) to adjacent pairs (2i, 2i + 1): llama.cpp's LlamaModel.permute."""
    rows, d_in = weight.shape
    head_dim = rows // num_heads
    return np.ascontiguousarray(
        weight.reshape(num_heads, 2, head_dim // 2, d_in).swapaxes(1, 2).reshape(rows, d_in))


def _ternary_weight(projection: Any, d_in: int) -> np.ndarray:
    """A ternary projection's weights (d_out, d_in) as float32: its ternary values times its
    scale (the packing of ``bitnet_quantize``: four 2-bit codes t + 1 a byte, low bits first)."""
    packed = projection.packed  # (d_out, (d_in + 3) // 4) uint8
    fields = (packed[:, :, None] >> np.array([0, 2, 4, 6], dtype=np.uint8)) & np.uint8(3)
    codes = fields.reshape(packed.shape[0], -1)[:, :d_in]  # ternary value + 1
    return (codes.astype(np.float32) - np.float32(1.0)) * np.float32(projection.scale)


def _check_decoder(decoder: Any) -> None:
    config = getattr(decoder, "config", None)
    if (getattr(decoder, "weights", None) not in ("fp32", "bf16", "ternary") or config is None
            or not hasattr(decoder, "_layers")):
        raise TypeError(f"{_FUNCTION}: decoder: expected a koschei Decoder, got "
                        f"{type(decoder).__name__}")
    mixers = sorted(set(config.layer_types) - {"attention"})
    if mixers:
        raise ValueError(f"{_FUNCTION}: decoder: expected attention layers only (llama.cpp's "
                         f"llama architecture), got layer types {', '.join(mixers)}")


def _check_type(name: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.upper() not in choices:
        raise ValueError(f"{_FUNCTION}: {name}: expected one of {', '.join(choices)}, got "
                         f"{value!r}")
    return value.upper()


def write_gguf(decoder: Any, path: str | os.PathLike[str], tensor_type: str = "F32", *,
               embedding_type: str | None = None, name: str = "koschei-decoder") -> Path:
    """Write ``decoder``'s weights to ``path`` as a GGUF file for llama.cpp; return the path.

    ``tensor_type``: the projection matrices' type, one of :data:`TENSOR_TYPES` (``TQ2_0`` only
    for a decoder with ``weights="ternary"``; a ternary decoder's file holds its ternary weights
    times their scale in any type). ``embedding_type``: ``F32`` or ``F16`` (default: F16 for an
    F16 file, else F32). ``name``: ``general.name``.

    The file is written to a temporary file in the same folder, then renamed: ``path`` is either
    as it was or complete. Raises TypeError / ValueError before anything is written.
    """
    _check_decoder(decoder)
    tensor_type = _check_type("tensor_type", tensor_type, tuple(TENSOR_TYPES))
    if embedding_type is None:
        embedding_type = "F16" if tensor_type == "F16" else "F32"
    embedding_type = _check_type("embedding_type", embedding_type, EMBEDDING_TYPES)
    if tensor_type == "TQ2_0" and decoder.weights != "ternary":
        raise ValueError(f"{_FUNCTION}: tensor_type: TQ2_0 holds ternary weights, and this "
                         f"decoder's are {decoder.weights} (build it with weights='ternary', or "
                         "write F32, F16, Q8_0 or Q4_0)")
    config = decoder.config
    block = TENSOR_TYPES[tensor_type]
    if block > 1:
        for d_in, what in ((config.hidden_size, "hidden_size"),
                           (config.intermediate_size, "intermediate_size")):
            if d_in % block:
                raise ValueError(f"{_FUNCTION}: tensor_type: {tensor_type} needs rows whose "
                                 f"length is a multiple of {block}, and {what} is {d_in}")
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"{_FUNCTION}: path: expected a file in an existing folder, got {path} "
                         f"({path.parent} is not a folder)")
    gguf = _gguf()

    writer = gguf.GGUFWriter(None, "llama")
    _add_metadata(writer, gguf, config, name, tensor_type)
    for tensor_name, array, kind in _tensors(decoder):
        if kind == "norm":
            writer.add_tensor(tensor_name, np.ascontiguousarray(array, dtype=np.float32))
        elif kind == "embedding":
            writer.add_tensor(tensor_name, _as_type(gguf, array, embedding_type))
        else:
            data = _as_type(gguf, array, tensor_type)
            # quantized data is uint8 (rows, bytes per row): the writer derives the shape
            writer.add_tensor(tensor_name, data, raw_dtype=_ggml_type(gguf, tensor_type))

    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        writer.write_header_to_file(Path(temporary))
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        writer.close()
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return path


def _add_metadata(writer: Any, gguf: Any, config: Any, name: str, tensor_type: str) -> None:
    writer.add_name(name)
    writer.add_file_type(_FILE_TYPES[tensor_type])
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_seq_length)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_heads)
    writer.add_head_count_kv(config.num_kv_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(float(config.rope_theta))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    # a placeholder vocabulary: ids are fed directly
    count = config.vocab_size
    tokens = [*_PLACEHOLDER_TOKENS, *(f"<t{index}>" for index in range(3, count))][:count]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types = [*types, *[gguf.TokenType.NORMAL] * max(0, count - 3)][:count]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * count)
    writer.add_token_types(types)
    for key, token in (("unk", 0), ("bos", 1), ("eos", 2)):
        if token < count:
            getattr(writer, f"add_{key}_token_id")(token)
    writer.add_add_bos_token(False)


def _tensors(decoder: Any) -> list[tuple[str, np.ndarray, str]]:
    """(GGUF name, float32 array in llama.cpp's row order, kind) of every tensor, in the file's
    order; kind "embedding", "norm" or "projection"."""
    config = decoder.config
    names = gguf_tensor_names(config.num_layers)
    tensors = [(names["embed_tokens.weight"], decoder._embedding, "embedding")]
    for index, layer in enumerate(decoder._layers):
        hf = f"layers.{index}."
        for parameter in names:
            if not parameter.startswith(hf):
                continue
            attribute = parameter[len(hf):].removesuffix(".weight").split(".")[-1]
            if attribute == "input_layernorm":
                tensors.append((names[parameter], layer.attention_norm, "norm"))
                continue
            if attribute == "post_attention_layernorm":
                tensors.append((names[parameter], layer.ffn_norm, "norm"))
                continue
            projection = getattr(layer, attribute)
            if decoder.weights == "ternary":
                d_in = config.intermediate_size if attribute == "down_proj" else \
                    config.num_heads * config.head_dim if attribute == "o_proj" else \
                    config.hidden_size
                weight = _ternary_weight(projection, d_in)
            else:
                weight = projection.weight
            if attribute == "q_proj":
                weight = _rope_pairs_adjacent(weight, config.num_heads)
            elif attribute == "k_proj":
                weight = _rope_pairs_adjacent(weight, config.num_kv_heads)
            tensors.append((names[parameter], weight, "projection"))
    tensors.append((names["norm.weight"], decoder._final_norm, "norm"))
    return tensors


def _ggml_type(gguf: Any, tensor_type: str) -> Any:
    return getattr(gguf.GGMLQuantizationType, tensor_type)


def _as_type(gguf: Any, array: np.ndarray, tensor_type: str) -> np.ndarray:
    """``array`` (float32) as the data of a GGUF tensor of ``tensor_type``."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if tensor_type == "F32":
        return array
    if tensor_type == "F16":
        return array.astype(np.float16)
    return gguf.quants.quantize(array, _ggml_type(gguf, tensor_type))
