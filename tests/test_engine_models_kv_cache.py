"""koschei.engine.models.kv_cache: appending per layer and step, the views attention reads, the
int8 storage and its stated error, and every misuse refused with a message."""

from __future__ import annotations

import numpy as np
import pytest

from koschei.engine import KVCache, attention

LAYERS, MAX_LEN, KV_HEADS, HEAD_DIM = 3, 40, 2, 16


def draw(rng: np.random.Generator, t: int, heads: int = KV_HEADS,
         head_dim: int = HEAD_DIM) -> np.ndarray:
    """Head vectors of very different magnitudes, so that per-head scales matter."""
    magnitude = np.exp(rng.uniform(-4, 3, size=(t, heads, 1)))
    return (magnitude * rng.standard_normal((t, heads, head_dim))).astype(np.float32)


def fill(cache: KVCache, steps: list[int], seed: int = 0) -> tuple[list, list]:
    """Append steps of the given sizes to every layer; return what went in, per layer."""
    rng = np.random.default_rng(seed)
    keys = [[] for _ in range(cache.num_layers)]
    values = [[] for _ in range(cache.num_layers)]
    for t in steps:
        for layer in range(cache.num_layers):
            k, v = draw(rng, t, cache.kv_heads, cache.head_dim), draw(rng, t, cache.kv_heads,
                                                                       cache.head_dim)
            cache.append(layer, k, v)
            keys[layer].append(k)
            values[layer].append(v)
    return ([np.concatenate(k) for k in keys], [np.concatenate(v) for v in values])


# --- float32 --------------------------------------------------------------------------------------


def test_the_float32_cache_returns_what_was_appended_as_zero_copy_views():
    cache = KVCache(LAYERS, MAX_LEN, KV_HEADS, HEAD_DIM)
    keys, values = fill(cache, [7, 1, 1, 5])
    assert cache.length == 14 and not cache.step_in_progress
    for layer in range(LAYERS):
        k, v = cache.keys(layer), cache.values(layer)
        assert k.shape == v.shape == (14, KV_HEADS, HEAD_DIM)
        assert k.dtype == np.float32 and k.flags.c_contiguous and not k.flags.writeable
        assert np.array_equal(k, keys[layer]) and np.array_equal(v, values[layer])
        assert np.shares_memory(k, cache.keys(layer))  # a view of the storage, not a copy
    assert cache.buffer_nbytes == 0
    assert cache.nbytes == MAX_LEN * 2 * LAYERS * KV_HEADS * HEAD_DIM * 4


def test_the_length_advances_once_per_step_when_every_layer_has_appended():
    cache = KVCache(LAYERS, MAX_LEN, KV_HEADS, HEAD_DIM)
    rng = np.random.default_rng(1)
    cache.append(0, draw(rng, 3), draw(rng, 3))
    assert cache.length == 0 and cache.step_in_progress
    assert cache.filled(0) == 3 and cache.filled(1) == 0
    assert cache.keys(0).shape[0] == 3 and cache.keys(1).shape[0] == 0
    cache.append(2, draw(rng, 3), draw(rng, 3))  # any order of layers
    assert cache.length == 0
    cache.append(1, draw(rng, 3), draw(rng, 3))
    assert cache.length == 3 and not cache.step_in_progress


def test_a_single_layer_cache_advances_on_every_append():
    cache = KVCache(1, 4, 1, 2)
    cache.append(0, np.ones((2, 1, 2), np.float32), np.ones((2, 1, 2), np.float32))
    assert cache.length == 2


def test_attention_reads_the_views_directly():
    cache = KVCache(1, MAX_LEN, KV_HEADS, HEAD_DIM)
    keys, values = fill(cache, [9, 1])
    q = np.random.default_rng(2).standard_normal((1, 4, HEAD_DIM)).astype(np.float32)
    out = attention(q, cache.keys(0), cache.values(0), causal=True)
    assert np.array_equal(out, attention(q, keys[0], values[0], causal=True))


def test_strided_inputs_are_copied_in():
    cache = KVCache(1, 8, KV_HEADS, HEAD_DIM)
    wide = np.random.default_rng(3).standard_normal((3, KV_HEADS, 2 * HEAD_DIM)).astype(
        np.float32)
    cache.append(0, wide[:, :, ::2], wide[:, :, 1::2])
    assert np.array_equal(cache.keys(0), wide[:, :, ::2])
    assert np.array_equal(cache.values(0), wide[:, :, 1::2])


def test_truncate_and_reset():
    cache = KVCache(2, 10, 1, 4)
    fill(cache, [3, 2])
    cache.append(0, np.zeros((1, 1, 4), np.float32), np.zeros((1, 1, 4), np.float32))
    cache.truncate(cache.length)  # abandons the step in progress only
    assert cache.length == 5 and not cache.step_in_progress and cache.filled(0) == 5
    cache.truncate(3)
    assert cache.length == 3 and cache.keys(1).shape == (3, 1, 4)
    cache.reset()
    assert cache.length == 0 and cache.keys(0).shape == (0, 1, 4)
    with pytest.raises(ValueError, match=r"KVCache.truncate: length: expected 0 .. 0 \(the "
                                         r"positions the cache holds\), got 1"):
        cache.truncate(1)
    with pytest.raises(TypeError, match="KVCache.truncate: length: expected an int, got float"):
        cache.truncate(0.0)


# --- misuse ---------------------------------------------------------------------------------------


def test_appending_twice_to_a_layer_in_one_step_is_refused():
    cache = KVCache(2, 10, 1, 4)
    one = np.zeros((1, 1, 4), np.float32)
    cache.append(0, one, one)
    with pytest.raises(ValueError, match=r"KVCache.append: layer: expected a layer that has not "
                                         r"appended in this step .*got layer 0, which already "
                                         r"holds positions 0..0"):
        cache.append(0, one, one)
    assert cache.filled(0) == 1 and cache.length == 0  # nothing changed


def test_every_layer_of_a_step_appends_the_same_number_of_positions():
    cache = KVCache(2, 10, 1, 4)
    cache.append(0, np.zeros((2, 1, 4), np.float32), np.zeros((2, 1, 4), np.float32))
    with pytest.raises(ValueError, match=r"KVCache.append: k: expected 2 new positions \(the "
                                         r"step in progress.*got 1"):
        cache.append(1, np.zeros((1, 1, 4), np.float32), np.zeros((1, 1, 4), np.float32))


def test_appending_past_max_len_is_refused():
    cache = KVCache(1, 5, 1, 4)
    cache.append(0, np.zeros((4, 1, 4), np.float32), np.zeros((4, 1, 4), np.float32))
    with pytest.raises(ValueError, match=r"KVCache.append: k: expected at most 1 new positions "
                                         r"\(the cache holds 4 of max_len 5\), got 2"):
        cache.append(0, np.zeros((2, 1, 4), np.float32), np.zeros((2, 1, 4), np.float32))
    assert cache.length == 4


@pytest.mark.parametrize("k, v, error, message", [
    ([[[0.0] * 4]], None, TypeError, ("KVCache.append: k: expected a numpy.ndarray of float32 "
                                     "with shape (t, kv_heads, head_dim) with kv_heads=2, "
                                     "head_dim=4, got list")),
    (np.zeros((1, 2, 4)), None, TypeError, ("KVCache.append: k: expected dtype float32, got "
                                           "float64")),
    (np.zeros((1, 3, 4), np.float32), None, ValueError, ("KVCache.append: k: expected shape (t, "
                                                        "kv_heads, head_dim) with kv_heads=2, "
                                                        "head_dim=4, t >= 1, got (1, 3, 4)")),
    (np.zeros((0, 2, 4), np.float32), None, ValueError, "t >= 1, got (0, 2, 4)"),
    (np.zeros((2, 4), np.float32), None, ValueError, "got (2, 4)"),
    (np.zeros((1, 2, 4), np.float32), np.zeros((1, 2, 4), np.int8), TypeError,
     "KVCache.append: v: expected dtype float32, got int8"),
    (np.zeros((1, 2, 4), np.float32), np.zeros((2, 2, 4), np.float32), ValueError,
     "KVCache.append: v: expected the shape of k (1, 2, 4), got (2, 2, 4)"),
])
def test_append_checks_its_arrays(k, v, error, message):
    cache = KVCache(2, 8, 2, 4)
    with pytest.raises(error) as raised:
        cache.append(0, k, np.zeros((1, 2, 4), np.float32) if v is None else v)
    assert message in str(raised.value)
    assert cache.filled(0) == 0


@pytest.mark.parametrize("method", ["append", "keys", "values", "filled"])
def test_layers_are_checked(method):
    cache = KVCache(2, 8, 1, 4)
    arrays = (np.zeros((1, 1, 4), np.float32),) * 2 if method == "append" else ()
    with pytest.raises(ValueError, match=f"KVCache.{method}: layer: expected 0 .. 1, got 2"):
        getattr(cache, method)(2, *arrays)
    with pytest.raises(TypeError, match=f"KVCache.{method}: layer: expected an int, got bool"):
        getattr(cache, method)(True, *arrays)


@pytest.mark.parametrize("arguments, options, error, message", [
    ((0, 8, 1, 4), {}, ValueError, "KVCache: num_layers: expected >= 1, got 0"),
    ((1, 8.0, 1, 4), {}, TypeError, "KVCache: max_len: expected an int, got float 8.0"),
    ((1, 8, 1, -4), {}, ValueError, "KVCache: head_dim: expected >= 1, got -4"),
    ((1, 8, 1, 4), {"dtype": "int4"}, ValueError, ("KVCache: dtype: expected one of ('float32', "
                                                  "'int8'), got 'int4'")),
    ((1, 8, 1, 4), {"dtype": np.int8}, TypeError, "KVCache: dtype: expected one of"),
])
def test_the_constructor_checks_its_arguments(arguments, options, error, message):
    with pytest.raises(error) as raised:
        KVCache(*arguments, **options)
    assert message in str(raised.value)


def test_the_views_cannot_write_into_the_cache():
    cache = KVCache(1, 8, 1, 4)
    cache.append(0, np.ones((2, 1, 4), np.float32), np.ones((2, 1, 4), np.float32))
    with pytest.raises(ValueError, match="read-only"):
        cache.keys(0)[0, 0, 0] = 5.0


# --- int8 -----------------------------------------------------------------------------------------

# |dequantized - x| <= absmax(head vector) / 254 per element (absmax / 127 is the step, rounding
# to the nearest is off by half of it), with a little room for the float32 product q * scale.
INT8_BOUND = (1 / 254) * (1 + 1e-5)


def test_int8_keys_and_values_are_within_the_stated_error():
    cache = KVCache(LAYERS, MAX_LEN, KV_HEADS, HEAD_DIM, dtype="int8")
    keys, values = fill(cache, [11, 1, 1, 4], seed=5)
    worst = 0.0
    for layer in range(LAYERS):
        for got, exact in ((cache.keys(layer), keys[layer]), (cache.values(layer),
                                                              values[layer])):
            assert got.dtype == np.float32 and got.shape == exact.shape
            assert got.flags.c_contiguous and not got.flags.writeable
            absmax = np.max(np.abs(exact), axis=-1, keepdims=True)  # per (position, head)
            relative = np.abs(got.astype(np.float64) - exact) / absmax
            worst = max(worst, float(relative.max()))
    assert worst <= INT8_BOUND, worst
    assert worst > 0.8 / 254  # the bound is tight: rounding does reach almost half a step


def test_int8_takes_about_a_quarter_of_the_memory():
    exact = KVCache(12, 4096, 4, 64)
    quantized = KVCache(12, 4096, 4, 64, dtype="int8")
    assert quantized.bytes_per_position == 2 * 12 * 4 * (64 + 4)
    assert exact.nbytes / quantized.nbytes == pytest.approx(4 * 64 / 68)  # 3.76x
    assert quantized.buffer_nbytes == 2 * 4096 * 4 * 64 * 4  # one layer's worth, float32


def test_attention_over_the_int8_cache_is_within_its_error_bound():
    """Attention from dequantized K', V' vs from K, V. With |K' - K| and |V' - V| per element
    and delta = scale * max_j sum_d |q_d| |K'_jd - K_jd| bounding how far each score moves, the
    softmax weights change by a factor within exp(+-2 delta), so

        |out' - out| <= max_j |V'_j - V_j| + (exp(2 delta) - 1) max_j |V'_j|

    per element (per query head over its key/value head), plus the kernels' float32 rounding."""
    rng = np.random.default_rng(8)
    m, hq, hkv, hd = 300, 8, 2, 64
    k = rng.standard_normal((m, hkv, hd)).astype(np.float32)
    v = rng.standard_normal((m, hkv, hd)).astype(np.float32)
    q = rng.standard_normal((5, hq, hd)).astype(np.float32)
    cache = KVCache(1, m, hkv, hd, dtype="int8")
    cache.append(0, k, v)
    k_int8, v_int8 = cache.keys(0).copy(), cache.values(0).copy()
    exact = attention(q, k, v, causal=True)
    approximate = attention(q, k_int8, v_int8, causal=True)
    scale = 1 / np.sqrt(hd)
    group = hq // hkv
    for h in range(hq):
        g = h // group
        delta = scale * np.max(np.abs(q[:, h]) @ np.abs(k_int8[:, g] - k[:, g]).T, axis=1)
        bound = (np.max(np.abs(v_int8[:, g] - v[:, g]))
                 + (np.exp(2 * delta) - 1) * np.max(np.abs(v_int8[:, g]))
                 + 1e-5 * np.max(np.abs(v[:, g])))  # (n,)
        error = np.max(np.abs(approximate[:, h] - exact[:, h]), axis=1)
        assert np.all(error <= bound), (h, error, bound)
    relative = np.max(np.abs(approximate - exact)) / np.max(np.abs(exact))
    assert 0 < relative < 3e-2, relative  # measured 9.8e-3 of max |out| at these sizes


def test_the_int8_buffer_is_shared_and_overwritten_by_the_next_read():
    cache = KVCache(2, 8, 1, 4, dtype="int8")
    rng = np.random.default_rng(4)
    layer_0 = draw(rng, 3, 1, 4)
    cache.append(0, layer_0, layer_0)
    cache.append(1, 10 * layer_0, layer_0)
    first = cache.keys(0)
    assert np.allclose(first, layer_0, rtol=0, atol=np.abs(layer_0).max() / 200)
    cache.keys(1)
    assert np.allclose(first, 10 * layer_0, rtol=0, atol=10 * np.abs(layer_0).max() / 200)


def test_int8_zero_vectors_stay_zero():
    cache = KVCache(1, 4, 2, 8, dtype="int8")
    zeros = np.zeros((2, 2, 8), np.float32)
    cache.append(0, zeros, zeros)
    assert np.array_equal(cache.keys(0), zeros) and np.array_equal(cache.values(0), zeros)
