"""koschei.engine.models.gguf: a Decoder's weights as a GGUF file, read back with gguf's reader,
and run by llama.cpp (when llama-cpp-python is installed) to the engine's own logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from koschei.engine.models.decoder import Decoder, DecoderConfig
from koschei.engine.models.gguf import TENSOR_TYPES, gguf_tensor_names, write_gguf

gguf = pytest.importorskip("gguf")

# tiny, with a theta and an epsilon of its own: llama.cpp must take both from the file
TINY = DecoderConfig.named("tiny").replace(rope_theta=500.0, rms_norm_eps=1e-6)
# rows of 256 values: what TQ2_0 (and Q8_0 / Q4_0) blocks need
BLOCKED = DecoderConfig(vocab_size=64, hidden_size=256, num_layers=1, num_heads=4,
                        num_kv_heads=2, intermediate_size=512, max_seq_length=32)


@pytest.fixture(scope="module")
def tiny() -> Decoder:
    return Decoder.random(TINY, seed=3, std=0.2)


@pytest.fixture(scope="module")
def ternary() -> Decoder:
    return Decoder.random(BLOCKED, seed=4, std=0.2, weights="ternary")


def read(path: Path) -> tuple[dict, dict]:
    """(metadata by key, tensors by name) of a GGUF file."""
    reader = gguf.GGUFReader(path)
    fields = {key: field.contents() for key, field in reader.fields.items()
              if not key.startswith("GGUF.")}
    return fields, {tensor.name: tensor for tensor in reader.tensors}


def rope_pairs_adjacent(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute, written out: within each head, row
    2i is the rotate-half row i and row 2i + 1 the row i + head_dim / 2."""
    rows = weight.shape[0]
    half = rows // heads // 2
    out = np.empty_like(weight)
    for head in range(heads):
        base = head * 2 * half
        for i in range(half):
            out[base + 2 * i] = weight[base + i]
            out[base + 2 * i + 1] = weight[base + half + i]
    return out


# --- the file, read back ------------------------------------------------------------------------


def test_an_f32_file_holds_the_decoders_sizes_names_and_weights(tiny, tmp_path):
    path = write_gguf(tiny, tmp_path / "tiny.gguf")
    assert path == tmp_path / "tiny.gguf" and [p.name for p in tmp_path.iterdir()] == ["tiny.gguf"]
    fields, tensors = read(path)
    config = tiny.config
    assert fields["general.architecture"] == "llama"
    assert fields["general.file_type"] == 0
    expected = {"llama.vocab_size": 97, "llama.context_length": 64, "llama.embedding_length": 64,
                "llama.block_count": 2, "llama.feed_forward_length": 160,
                "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
                "llama.attention.key_length": 16, "llama.attention.value_length": 16,
                "llama.rope.dimension_count": 16}
    assert {key: fields[key] for key in expected} == expected
    assert fields["llama.rope.freq_base"] == pytest.approx(500.0)
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    # a placeholder vocabulary of vocab_size tokens: callers feed ids
    assert fields["tokenizer.ggml.model"] == "llama"
    assert len(fields["tokenizer.ggml.tokens"]) == config.vocab_size
    assert fields["tokenizer.ggml.tokens"][:4] == ["<unk>", "<s>", "</s>", "<t3>"]

    names = gguf_tensor_names(config.num_layers)
    assert list(tensors) == list(names.values())  # in the decoder's order, no output.weight
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    parameters = config.random_parameters(3, std=0.2)
    for parameter, name in names.items():
        tensor, weight = tensors[name], parameters[parameter]
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
        assert tuple(tensor.shape) == weight.shape[::-1]  # GGUF: ne0 = d_in first
        if parameter.endswith("q_proj.weight"):
            weight = rope_pairs_adjacent(weight, config.num_heads)
        elif parameter.endswith("k_proj.weight"):
            weight = rope_pairs_adjacent(weight, config.num_kv_heads)
        np.testing.assert_array_equal(np.asarray(tensor.data).reshape(weight.shape), weight,
                                      err_msg=name)


@pytest.mark.parametrize("tensor_type, tolerance", [("F16", 1e-3), ("Q8_0", 1e-2),
                                                    ("Q4_0", 0.2)])
def test_f16_q8_0_and_q4_0_files_hold_the_projections_in_their_type(tensor_type, tolerance,
                                                                    tmp_path):
    decoder = Decoder.random(BLOCKED, seed=5, std=0.2)
    fields, tensors = read(write_gguf(decoder, tmp_path / "f.gguf", tensor_type))
    kind = getattr(gguf.GGMLQuantizationType, tensor_type)
    assert fields["general.file_type"] == {"F16": 1, "Q8_0": 7, "Q4_0": 2}[tensor_type]
    parameters = BLOCKED.random_parameters(5, std=0.2)
    for parameter, name in gguf_tensor_names(BLOCKED.num_layers).items():
        tensor, weight = tensors[name], parameters[parameter]
        if weight.ndim == 1:
            assert tensor.tensor_type == gguf.GGMLQuantizationType.F32, name
            continue
        embedding = parameter == "embed_tokens.weight"
        # the embedding (the tied output projection too) is F16 in an F16 file, else F32
        expected = (gguf.GGMLQuantizationType.F16 if tensor_type == "F16" else
                    gguf.GGMLQuantizationType.F32) if embedding else kind
        assert tensor.tensor_type == expected, name
        assert tuple(tensor.shape) == weight.shape[::-1]
        if parameter.endswith("q_proj.weight"):
            weight = rope_pairs_adjacent(weight, BLOCKED.num_heads)
        elif parameter.endswith("k_proj.weight"):
            weight = rope_pairs_adjacent(weight, BLOCKED.num_kv_heads)
        values = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
        assert np.abs(values.reshape(weight.shape) - weight).max() <= \
            tolerance * np.abs(weight).max(), name


def test_a_tq2_0_file_holds_exactly_the_ternary_weights(ternary, tmp_path):
    fields, tensors = read(write_gguf(ternary, tmp_path / "t.gguf", "TQ2_0"))
    assert fields["general.file_type"] == 37
    layer = ternary._layers[0]
    for attribute, heads in (("q_proj", BLOCKED.num_heads), ("k_proj", BLOCKED.num_kv_heads),
                             ("v_proj", None), ("o_proj", None), ("gate_proj", None),
                             ("up_proj", None), ("down_proj", None)):
        projection = getattr(layer, attribute)
        codes = (projection.packed[:, :, None] >> np.array([0, 2, 4, 6], dtype=np.uint8)) & 3
        ternary_values = codes.reshape(projection.packed.shape[0], -1).astype(np.float32) - 1
        if heads is not None:
            ternary_values = rope_pairs_adjacent(ternary_values, heads)
        name = gguf_tensor_names(1)[f"layers.0.{'mlp' if attribute[0] in 'gud' else 'self_attn'}"
                                    f".{attribute}.weight"]
        tensor = tensors[name]
        assert tensor.tensor_type == gguf.GGMLQuantizationType.TQ2_0
        values = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
        scale = np.float32(np.float16(projection.scale))  # one float16 scale per block of 256
        np.testing.assert_array_equal(values.reshape(ternary_values.shape),
                                      ternary_values * scale, err_msg=name)
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F32


# --- what it refuses ----------------------------------------------------------------------------


def test_bad_arguments_are_refused_before_anything_is_written(tiny, ternary, tmp_path):
    target = tmp_path / "x.gguf"
    with pytest.raises(ValueError, match=r"write_gguf: tensor_type: expected one of F32, F16, "
                                         r"TQ2_0, Q8_0, Q4_0, got 'Q5_K'"):
        write_gguf(tiny, target, "Q5_K")
    with pytest.raises(ValueError, match="TQ2_0 holds ternary weights, and this decoder's are "
                                         "fp32"):
        write_gguf(tiny, target, "TQ2_0")
    tiny_ternary = Decoder.random(TINY, weights="ternary")
    with pytest.raises(ValueError, match="TQ2_0 needs rows whose length is a multiple of 256, "
                                         "and hidden_size is 64"):
        write_gguf(tiny_ternary, target, "TQ2_0")
    with pytest.raises(ValueError, match="embedding_type: expected one of F32, F16"):
        write_gguf(tiny, target, embedding_type="Q8_0")
    with pytest.raises(TypeError, match="write_gguf: decoder: expected a koschei Decoder, got "
                                        "dict"):
        write_gguf({}, target)
    with pytest.raises(ValueError, match="expected a file in an existing folder"):
        write_gguf(tiny, tmp_path / "missing" / "x.gguf")
    hybrid = Decoder.random(TINY.replace(layer_types=("gla",) * (TINY.num_layers - 1)
                                         + ("attention",)))
    with pytest.raises(ValueError, match="write_gguf: decoder: expected attention layers only "
                                         r"\(llama.cpp's llama architecture\), got layer types "
                                         "gla"):
        write_gguf(hybrid, target)
    assert list(tmp_path.iterdir()) == []
    assert set(TENSOR_TYPES) == {"F32", "F16", "TQ2_0", "Q8_0", "Q4_0"}


def test_a_failed_write_leaves_no_file_and_the_old_one_as_it_was(tiny, tmp_path, monkeypatch):
    target = tmp_path / "tiny.gguf"
    target.write_bytes(b"the old file")

    def fail(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail)
    with pytest.raises(OSError, match="disk full"):
        write_gguf(tiny, target)
    assert target.read_bytes() == b"the old file"
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.gguf"]  # no temporary file left


# --- llama.cpp runs it --------------------------------------------------------------------------


def llama_logits(llama_cpp, path: Path, ids: np.ndarray, **options) -> np.ndarray:
    """llama.cpp's logits (n, vocab) of every token of ``ids`` from an empty cache."""
    llama = llama_cpp.Llama(str(path), n_ctx=64, n_batch=64, n_ubatch=64, n_threads=1,
                            n_threads_batch=1, logits_all=True, verbose=False,
                            type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32,
                            **options)
    try:
        llama.eval([int(i) for i in ids])
        return np.array(llama.scores[:len(ids)], dtype=np.float32)
    finally:
        llama.close()


def test_llama_cpp_gives_the_engines_logits_for_the_f32_file(tiny, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    path = write_gguf(tiny, tmp_path / "tiny.gguf")
    ids = np.random.default_rng(0).integers(0, TINY.vocab_size, 12)
    tiny.reset()
    expected = tiny.forward(ids)  # (12, vocab)
    got = llama_logits(llama_cpp, path, ids)
    # float32 both, summed in other orders: the permutation, theta and epsilon are right
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_llama_cpp_gives_the_ternary_engines_logits_for_the_tq2_0_file(ternary, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    path = write_gguf(ternary, tmp_path / "ternary.gguf", "TQ2_0")
    ids = np.random.default_rng(1).integers(0, BLOCKED.vocab_size, 8)
    ternary.reset()
    expected = ternary.forward(ids)
    got = llama_logits(llama_cpp, path, ids)
    # the same ternary weights; llama.cpp quantizes activations to int8 per block of 256 (Q8_K),
    # the engine per token, and its scale is a float16
    assert np.abs(got - expected).max() <= 5e-2 * np.abs(expected).max()


def test_a_bf16_decoders_files_hold_its_rounded_weights_and_llama_cpp_matches_it(tmp_path):
    """A bf16 decoder's F32 file holds its bfloat16 values exactly (the embedding too); its F16
    file the same values in float16, which llama.cpp runs to the decoder's logits."""
    decoder = Decoder.random(TINY, seed=6, std=0.2, weights="bf16")
    parameters = TINY.random_parameters(6, std=0.2)
    _, tensors = read(write_gguf(decoder, tmp_path / "f32.gguf"))
    for parameter, name in gguf_tensor_names(TINY.num_layers).items():
        weight = parameters[parameter]
        if weight.ndim == 2:
            weight = weight.astype(np.dtype("bfloat16")).astype(np.float32)
        if parameter.endswith("q_proj.weight"):
            weight = rope_pairs_adjacent(weight, TINY.num_heads)
        elif parameter.endswith("k_proj.weight"):
            weight = rope_pairs_adjacent(weight, TINY.num_kv_heads)
        assert np.array_equal(np.asarray(tensors[name].data).reshape(weight.shape), weight), name
    llama_cpp = pytest.importorskip("llama_cpp")
    path = write_gguf(decoder, tmp_path / "f16.gguf", "F16")
    ids = np.random.default_rng(2).integers(0, TINY.vocab_size, 10)
    decoder.reset()
    expected = decoder.forward(ids)
    got = llama_logits(llama_cpp, path, ids)
    # llama.cpp's F16 kernels round the activations to float16 too
    assert np.abs(got - expected).max() <= 1e-2 * np.abs(expected).max()
