"""The register-tile kernels of koschei.engine._simd: exact against NumPy, and compiled to the
vector instructions they exist for (a Numba or LLVM upgrade that loses them fails here)."""

from __future__ import annotations

import importlib
import re

import numpy as np
import pytest
from llvmlite import binding as llvm
from numba import njit

from koschei.engine._simd import LANES, mma_tile, tile_fits, transpose_16x16

HOST_FEATURES = llvm.get_host_cpu_features()


def has_feature(name: str) -> bool:
    return bool(HOST_FEATURES.get(name, False))


@njit
def tile_12x32(kc, a, a_start, b, b_start, c, row, col, accumulate, bias):
    mma_tile(12, 32, kc, a, a_start, 1, 12, b, b_start, 32, c, row, col, accumulate, bias)


@njit
def tile_3x16(kc, a, a_start, b, b_start, c, row, col, accumulate, bias):
    mma_tile(3, 16, kc, a, a_start, 1, 3, b, b_start, 16, c, row, col, accumulate, bias)


def expected_tile(mr, nr, kc, a, a_start, b, b_start):
    panel_a = a[a_start:a_start + kc * mr].reshape(kc, mr).astype(np.float64)
    panel_b = b[b_start:b_start + kc * nr].reshape(kc, nr).astype(np.float64)
    return panel_a.T @ panel_b


@pytest.mark.parametrize("kernel, mr, nr", [(tile_12x32, 12, 32), (tile_3x16, 3, 16)])
@pytest.mark.parametrize("kc", [1, 7, 256])
def test_a_tile_is_the_sum_of_outer_products_stored_then_added(kernel, mr, nr, kc):
    rng = np.random.default_rng(kc)
    a = rng.standard_normal(5 + kc * mr, dtype=np.float32)
    b = rng.standard_normal(3 + kc * nr, dtype=np.float32)
    bias = rng.standard_normal(nr + 9, dtype=np.float32)
    c = np.full((mr + 4, nr + 20), 7.0, dtype=np.float32)
    expected = expected_tile(mr, nr, kc, a, 5, b, 3)
    kernel(kc, a, 5, b, 3, c, 2, 9, False, bias)
    np.testing.assert_allclose(c[2:2 + mr, 9:9 + nr], expected + bias[9:9 + nr], rtol=1e-5,
                               atol=1e-4)
    kernel(kc, a, 5, b, 3, c, 2, 9, True, None)  # accumulate: the bias is not added again
    np.testing.assert_allclose(c[2:2 + mr, 9:9 + nr], 2 * expected + bias[9:9 + nr],
                               rtol=1e-5, atol=2e-4)
    # nothing outside the tile was touched
    outside = np.ones(c.shape, dtype=bool)
    outside[2:2 + mr, 9:9 + nr] = False
    assert np.all(c[outside] == 7.0)


def test_a_tile_of_zero_depth_stores_zeros_or_the_bias():
    a = np.ones(12, dtype=np.float32)
    b = np.ones(32, dtype=np.float32)
    c = np.full((12, 32), 5.0, dtype=np.float32)
    tile_12x32(0, a, 0, b, 0, c, 0, 0, False, None)
    assert np.all(c == 0.0)
    tile_12x32(0, a, 0, b, 0, c, 0, 0, False, np.arange(32, dtype=np.float32))
    assert np.all(c == np.arange(32, dtype=np.float32))


def test_a_tile_writes_through_the_row_stride_of_a_view():
    rng = np.random.default_rng(1)
    a = rng.standard_normal(4 * 3, dtype=np.float32)
    b = rng.standard_normal(4 * 16, dtype=np.float32)
    big = np.zeros((10, 64), dtype=np.float32)
    view = big[1:, 8:40]  # rows 64 floats apart, unit stride along them
    tile_3x16(4, a, 0, b, 0, view, 2, 5, False, None)
    np.testing.assert_allclose(big[3:6, 13:29], expected_tile(3, 16, 4, a, 0, b, 0), rtol=1e-5,
                               atol=1e-5)


@njit
def tile_4x16_strided(kc, a, a_start, a_row, a_step, b, b_start, b_step, c):
    mma_tile(4, 16, kc, a, a_start, a_row, a_step, b, b_start, b_step, c, 0, 0, False, None)


def test_a_tile_reads_row_major_operands_in_place():
    """a_row / a_step and b_step walk unpacked matrices: A (m, k) and B (k, n) row-major."""
    rng = np.random.default_rng(4)
    a = rng.standard_normal((9, 11), dtype=np.float32)
    b = rng.standard_normal((11, 40), dtype=np.float32)
    c = np.zeros((4, 16), dtype=np.float32)
    # rows 2..5 of A, columns 3..10 (kc = 8), times rows 3..10 of B, columns 20..35
    tile_4x16_strided(8, a.reshape(-1), 2 * 11 + 3, 11, 1, b.reshape(-1), 3 * 40 + 20, 40, c)
    expected = a[2:6, 3:11].astype(np.float64) @ b[3:11, 20:36]
    np.testing.assert_allclose(c, expected, rtol=1e-5, atol=1e-5)


@njit
def transpose_block(src, row, col, dst, start, stride):
    transpose_16x16(src, row, col, dst, start, stride)


def test_a_16x16_block_is_written_transposed_and_nothing_else():
    src = np.random.default_rng(3).standard_normal((40, 50), dtype=np.float32)
    dst = np.full(16 * 32 + 7, -1.0, dtype=np.float32)
    transpose_block(src, 3, 5, dst, 7, 32)
    written = np.stack([dst[7 + q * 32:7 + q * 32 + 16] for q in range(16)])
    np.testing.assert_array_equal(written, src[3:19, 5:21].T)  # exact: values are only moved
    untouched = np.ones(dst.shape, dtype=bool)
    for q in range(16):
        untouched[7 + q * 32:7 + q * 32 + 16] = False
    assert np.all(dst[untouched] == -1.0)
    view = src[1:, 2:]  # rows 50 floats apart, starting mid-row
    transpose_block(view, 0, 0, dst, 0, 16)
    np.testing.assert_array_equal(dst[:256].reshape(16, 16), view[:16, :16].T)


def test_tile_fits_in_the_vector_registers():
    assert tile_fits(12, 32) and tile_fits(14, 32) and tile_fits(28, 16)
    assert not tile_fits(15, 32)  # 30 accumulators + 2 loads + a broadcast > 32 registers
    assert not tile_fits(4, 24)  # not whole vectors
    assert not tile_fits(0, 16)
    assert LANES == 16


def fma_lines(assembly: str) -> list[str]:
    return [line for line in assembly.splitlines() if re.search(r"\bvfmadd\d*ps\b", line)]


def test_the_tile_compiles_to_vector_fmas():
    """Packed multiply-adds on whole vectors: zmm with AVX-512, ymm with AVX2 and FMA."""
    a = np.ones(12 * 8, dtype=np.float32)
    b = np.ones(32 * 8, dtype=np.float32)
    c = np.zeros((12, 32), dtype=np.float32)
    tile_12x32(8, a, 0, b, 0, c, 0, 0, False, None)
    assembly = next(iter(tile_12x32.inspect_asm().values()))
    lines = fma_lines(assembly)
    if has_feature("avx512f"):
        # 12 rows x 2 vectors of 16 lanes: 24 FMAs on zmm registers in the loop
        assert sum("zmm" in line for line in lines) >= 24, lines
    elif has_feature("fma") and has_feature("avx2"):
        assert sum("ymm" in line for line in lines) >= 48, lines
    else:
        pytest.skip("no FMA on this machine: the tile is computed with separate multiplies")


def test_the_matmul_kernel_runs_on_vector_fmas():
    """The generated GEMM's tile loop inlines the register tile: its own assembly has the FMAs
    (compiled afresh here: Numba shows no assembly for code loaded from its cache)."""
    if not has_feature("avx512f"):
        pytest.skip("the zmm check is for AVX-512 machines")
    module = importlib.import_module("koschei.engine.matmul")
    rng = np.random.default_rng(2)
    m, k, n = 50, 40, 70
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    c = np.empty((m, n), dtype=np.float32)
    panels_a = np.empty((-(-m // module._MR), k, module._MR), dtype=np.float32)
    panels_b = np.empty((-(-n // module._NR), k, module._NR), dtype=np.float32)
    module._pack_a(a, 0, panels_a.shape[0], panels_a.reshape(-1))
    module._pack_rows(b, 0, n, panels_b.reshape(-1))
    tiles = njit(cache=False, fastmath=module._FASTMATH)(module._tiles.py_func)
    tile = np.empty((module._MR, module._NR), dtype=np.float32)
    tiles(panels_a, 0, m, 0, k, panels_b.reshape(-1), 0, k * module._NR, c, 0, n, False, None,
          tile)
    np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)
    assembly = next(iter(tiles.inspect_asm().values()))
    assert sum("zmm" in line for line in fma_lines(assembly)) >= module._MR * module._NR // LANES
