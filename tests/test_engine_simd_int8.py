"""The int8 dot-product tiles of koschei.engine._simd (AVX-512 VNNI, vpdpbusd) against NumPy,
and the assembly check: the quantized_linear kernels compile to vpdpbusd where the CPU has it.

The tiles exist only for a CPU with AVX-512 VNNI: elsewhere these tests are skipped (the
kernels take their portable path, which the generated tests compare with the tiles where both
run). A Numba or LLVM upgrade that stops selecting vpdpbusd fails test_*_kernel_uses_vpdpbusd.
"""

from __future__ import annotations

import functools
import importlib

import numpy as np
import pytest

# _runtime first: it sets Numba's cache folder before Numba loads
from koschei.engine import _runtime, _simd  # noqa: F401

numba = pytest.importorskip("numba")

needs_vnni = pytest.mark.skipif(not _simd.HAS_AVX512_VNNI,
                                reason="this CPU (or Numba's target) has no AVX-512 VNNI")

WRAP = 2**32


def wrapped(values: np.ndarray) -> np.ndarray:
    """int64 sums as int32 arithmetic leaves them: modulo 2**32, signed."""
    return ((values + 2**31) % WRAP - 2**31).astype(np.int64)


def misaligned(array: np.ndarray, offset: int) -> np.ndarray:
    """A copy of ``array`` whose data starts ``offset`` bytes past a 64-byte line."""
    buffer = np.empty(array.nbytes + 128, dtype=np.uint8)
    start = -buffer.ctypes.data % 64 + offset
    copy = buffer[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
    copy[...] = array
    return copy


@functools.cache
def u8s8_tile(rows: int, tokens: int, ahead: int = 0):
    """A compiled call of dot_tile_u8s8 with these literals."""
    @numba.njit
    def run(w, w_first, x, x_first, k_first, k_count, sums, sums_token, sums_row):
        _simd.dot_tile_u8s8(rows, tokens, ahead, w, w_first, x, x_first, k_first, k_count,
                            sums, sums_token, sums_row)
    return run


@functools.cache
def ternary_tile(rows: int, tokens: int, ahead: int = 0):
    """A compiled call of dot_tile_ternary with these literals."""
    @numba.njit
    def run(packed, w_first, planes, x_first, b_first, b_count, sums, sums_token, sums_row):
        _simd.dot_tile_ternary(rows, tokens, ahead, packed, w_first, planes, x_first, b_first,
                               b_count, sums, sums_token, sums_row)
    return run


def expected_u8s8(w, w_first, x, x_first, k_first, k_count, rows, tokens):
    """(tokens, rows): u(w) . x over the k range, rows and tokens past the last clamped."""
    row_index = np.minimum(np.arange(w_first, w_first + rows), w.shape[0] - 1)
    token_index = np.minimum(np.arange(x_first, x_first + tokens), x.shape[0] - 1)
    unsigned = w.astype(np.int64) + (128 if w.dtype == np.int8 else 0)
    k = slice(k_first, k_first + k_count)
    return wrapped(x[token_index, k].astype(np.int64) @ unsigned[row_index, k].T)


def run_u8s8(w, w_first, x, x_first, k_first, k_count, rows, tokens, ahead=0):
    """The tile into the middle of a sentinel-filled array; checks nothing else was written."""
    sums = np.full((tokens + 4, rows + 5), -7, dtype=np.int32)
    u8s8_tile(rows, tokens, ahead)(w, w_first, x, x_first, k_first, k_count, sums, 2, 3)
    tile = sums[2:2 + tokens, 3:3 + rows].copy()
    sums[2:2 + tokens, 3:3 + rows] = -7
    assert np.all(sums == -7), "the tile wrote outside its place"
    return tile.astype(np.int64)


# --- detection ------------------------------------------------------------------------------------


def test_the_features_are_read_from_the_flags():
    flags = "+avx512f,-avx512vnni,+avx512bw,+sse2"
    assert _simd._has_features(flags, "avx512f", "avx512bw")
    assert not _simd._has_features(flags, "avx512f", "avx512vnni")
    assert not _simd._has_features("", "avx512f")


def test_the_detection_follows_the_host():
    from llvmlite import binding

    host = binding.get_host_cpu_features()
    if numba.core.config.CPU_NAME in (None, "host") and numba.core.config.CPU_FEATURES is None:
        assert _simd.HAS_AVX512_VNNI == all(
            host.get(name, False) for name in ("avx512f", "avx512bw", "avx512vnni"))


def test_tile_shapes():
    assert _simd.dot_tile_fits(3, 8) and _simd.dot_tile_fits(1, 1) and _simd.dot_tile_fits(24, 1)
    assert not _simd.dot_tile_fits(5, 5) and not _simd.dot_tile_fits(0, 4)


def test_the_plane_index_interleaves_the_fields():
    index = [_simd.ternary_plane_index(j) for j in range(512)]
    assert sorted(index) == list(range(512))
    assert index[:5] == [0, 64, 128, 192, 1]  # byte 0's four fields, then byte 1's first
    assert index[256] == 256 and index[4 * 63 + 3] == 255


# --- dot_tile_u8s8 --------------------------------------------------------------------------------


@needs_vnni
@pytest.mark.parametrize("dtype", ["int8", "uint8"])
@pytest.mark.parametrize("length", [1, 3, 63, 64, 65, 127, 128, 129, 200, 1031])
def test_u8s8_tile_against_numpy(dtype, length):
    rng = np.random.default_rng(length)
    low, high = (-127, 128) if dtype == "int8" else (0, 256)
    w = rng.integers(low, high, (5, length)).astype(dtype)
    x = rng.integers(-128, 128, (9, length)).astype(np.int8)
    for rows, tokens in ((3, 8), (1, 1), (8, 1)):
        got = run_u8s8(w, 0, x, 0, 0, length, rows, tokens)
        np.testing.assert_array_equal(got, expected_u8s8(w, 0, x, 0, 0, length, rows, tokens))


@needs_vnni
@pytest.mark.parametrize("offset", [0, 1, 17, 32, 63])
def test_u8s8_tile_at_every_alignment_and_k_range(offset):
    """The partial first step (up to the first row's next 64-byte line) and the partial last
    one, for rows that start anywhere in a line, sub-ranges of k, rows and tokens past the end
    (read as the last ones)."""
    rng = np.random.default_rng(100 + offset)
    w = misaligned(rng.integers(-127, 128, (7, 333)).astype(np.int8), offset)
    x = misaligned(rng.integers(-127, 128, (10, 333)).astype(np.int8), (offset * 7) % 64)
    for w_first, x_first, k_first, k_count in ((0, 0, 0, 333), (5, 6, 0, 333), (2, 3, 1, 1),
                                               (1, 2, 70, 200), (4, 0, 300, 33), (0, 0, 5, 0)):
        got = run_u8s8(w, w_first, x, x_first, k_first, k_count, 4, 6)
        want = expected_u8s8(w, w_first, x, x_first, k_first, k_count, 4, 6)
        np.testing.assert_array_equal(got, want)


@needs_vnni
def test_u8s8_tile_extremes_do_not_saturate():
    """255 x -128 and 255 x 127 in every product: four of them per lane are 130560 or 129540,
    which vpmaddubsw's int16 pair sums would saturate at 32767; vpdpbusd's int32 sums do not."""
    length = 4099
    w = np.full((2, length), 255, dtype=np.uint8)
    x = np.full((2, length), 127, dtype=np.int8)
    x[1] = -128
    got = run_u8s8(w, 0, x, 0, 0, length, 2, 2)
    np.testing.assert_array_equal(got, [[255 * 127 * length] * 2, [-255 * 128 * length] * 2])
    # int8 weights at -127 and 127 are 1 and 255 after the sign flip
    q = np.array([[-127] * 130, [127] * 130], dtype=np.int8)
    x = np.full((1, 130), -127, dtype=np.int8)
    np.testing.assert_array_equal(run_u8s8(q, 0, x, 0, 0, 130, 2, 1),
                                  [[1 * -127 * 130, 255 * -127 * 130]])


@needs_vnni
def test_u8s8_tile_wraps_modulo_two_to_the_32():
    """Sums beyond int32 wrap (no saturation): 255 * 127 * 70000 > 2**31."""
    length = 70000
    w = np.full((1, length), 255, dtype=np.uint8)
    x = np.full((1, length), 127, dtype=np.int8)
    got = run_u8s8(w, 0, x, 0, 0, length, 1, 1)
    assert 255 * 127 * length > 2**31
    np.testing.assert_array_equal(got, wrapped(np.array([[255 * 127 * length]])))


@needs_vnni
def test_u8s8_tile_with_prefetching_gives_the_same_sums():
    rng = np.random.default_rng(5)
    w = rng.integers(-127, 128, (9, 500)).astype(np.int8)
    x = rng.integers(-127, 128, (2, 500)).astype(np.int8)
    for w_first in (0, 4, 8):  # the last prefetches past the array: harmless
        np.testing.assert_array_equal(run_u8s8(w, w_first, x, 0, 0, 500, 4, 2, ahead=4),
                                      expected_u8s8(w, w_first, x, 0, 0, 500, 4, 2))


def test_u8s8_tile_rejects_what_it_cannot_hold():
    @numba.njit
    def too_large(w, x, sums):
        _simd.dot_tile_u8s8(5, 5, 0, w, 0, x, 0, 0, 1, sums, 0, 0)

    @numba.njit
    def wide_activations(w, x, sums):
        _simd.dot_tile_u8s8(1, 1, 0, w, 0, x, 0, 0, 1, sums, 0, 0)

    w = np.zeros((5, 4), dtype=np.int8)
    sums = np.zeros((5, 5), dtype=np.int32)
    with pytest.raises(numba.core.errors.TypingError):
        too_large(w, np.zeros((5, 4), dtype=np.int8), sums)
    with pytest.raises(numba.core.errors.TypingError):
        wide_activations(w, np.zeros((5, 4), dtype=np.int16), sums)


# --- dot_tile_ternary -----------------------------------------------------------------------------


def pack(codes: np.ndarray) -> np.ndarray:
    """(rows, 4 nb) codes 0..3 -> (rows, nb) bytes, field f of byte b the code of 4 b + f."""
    return (codes[:, 0::4] | codes[:, 1::4] << 2 | codes[:, 2::4] << 4
            | codes[:, 3::4] << 6).astype(np.uint8)


def planes_of(x_q: np.ndarray, nb: int) -> np.ndarray:
    """The activations (n, d_in) int8 in dot_tile_ternary's planes, zero past d_in."""
    chunks = -(-nb // 64)
    planes = np.zeros((x_q.shape[0], 256 * chunks), dtype=np.int8)
    index = [_simd.ternary_plane_index(j) for j in range(x_q.shape[1])]
    planes[:, index] = x_q
    return planes


@needs_vnni
@pytest.mark.parametrize("length", [1, 2, 5, 255, 256, 257, 1027, 4096, 4099])
def test_ternary_tile_against_numpy(length):
    rng = np.random.default_rng(length)
    nb = -(-length // 4)
    # any 2-bit field, code 3 too; the padding fields meet activations 0
    codes = rng.integers(0, 4, (6, 4 * nb)).astype(np.uint8)
    packed = misaligned(pack(codes), length % 64)
    x_q = rng.integers(-127, 128, (5, length)).astype(np.int8)
    planes = planes_of(x_q, nb)
    for rows, tokens, ahead, w_first, x_first in ((4, 4, 4, 0, 0), (8, 1, 8, 3, 4),
                                                  (1, 1, 0, 5, 0), (6, 2, 0, 2, 3)):
        sums = np.full((tokens + 2, rows + 2), -7, dtype=np.int32)
        ternary_tile(rows, tokens, ahead)(packed, w_first, planes, x_first, 0, nb, sums, 1, 2)
        row_index = np.minimum(np.arange(w_first, w_first + rows), 5)
        token_index = np.minimum(np.arange(x_first, x_first + tokens), 4)
        want = x_q[token_index].astype(np.int64) @ codes[row_index, :length].T.astype(np.int64)
        np.testing.assert_array_equal(sums[1:1 + tokens, 2:2 + rows], want)
        sums[1:1 + tokens, 2:2 + rows] = -7
        assert np.all(sums == -7)


@needs_vnni
def test_ternary_tile_over_a_range_of_bytes():
    """b_first (a multiple of 64) and b_count pick a part of the rows."""
    rng = np.random.default_rng(7)
    length = 4 * 300
    codes = rng.integers(0, 3, (2, length)).astype(np.uint8)
    x_q = rng.integers(-127, 128, (1, length)).astype(np.int8)
    planes = planes_of(x_q, 300)
    sums = np.zeros((1, 2), dtype=np.int32)
    ternary_tile(2, 1)(pack(codes), 0, planes, 0, 128, 100, sums, 0, 0)
    part = slice(4 * 128, 4 * 228)
    np.testing.assert_array_equal(sums[0], codes[:, part].astype(np.int64) @ x_q[0, part])


# --- the assembly check ---------------------------------------------------------------------------


def compiled_asm(kernel, *args) -> str:
    """The machine code of a fresh compilation of ``kernel`` for these arguments (a cached
    compilation keeps no assembly to inspect)."""
    fresh = numba.njit(error_model="numpy")(kernel.py_func)
    fresh(*args)
    return "\n".join(fresh.inspect_asm().values())


@needs_vnni
def test_the_int8_kernel_uses_vpdpbusd():
    module = importlib.import_module("koschei.engine.int8_linear")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 300), dtype=np.float32)
    q = rng.integers(-127, 128, (50, 300)).astype(np.int8)
    scale = np.full(50, 0.01, dtype=np.float32)
    n = x.shape[0]
    asm = compiled_asm(module._vnni_serial, x, x.view(np.int32), module._rows_like(q, n),
                       np.empty(n, np.int32), np.empty(n, np.float32), q, scale, None,
                       np.empty((n, 50), np.float32))
    assert "vpdpbusd" in asm
    assert "vpmaddubsw" not in asm  # its int16 pair sums would saturate


@needs_vnni
def test_the_ternary_kernel_uses_vpdpbusd():
    module = importlib.import_module("koschei.engine.bitnet_linear")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 300), dtype=np.float32)
    packed = pack(rng.integers(0, 3, (40, 300)).astype(np.uint8))
    n = x.shape[0]
    planes = np.zeros((n, 256 * 2), dtype=np.int8)
    asm = compiled_asm(module._vnni_serial, x, x.view(np.int32), planes,
                       np.empty(n, np.float32), np.empty(n, np.int32), packed,
                       np.full(1, 0.5, np.float32), np.empty((n, 40), np.float32))
    assert "vpdpbusd" in asm
