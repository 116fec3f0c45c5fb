"""The small-batch tensor-core matmul equals a float32 matmul of the same 16-bit inputs.

The kernel runs only where MLX has its CUDA backend (an NVIDIA GPU); elsewhere those tests
are skipped with that reason.
"""
from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from testbed.model import cuda_matmul

needs_cuda = pytest.mark.skipif(not cuda_matmul.available(),
                                reason="needs MLX's CUDA backend (an NVIDIA GPU)")


@needs_cuda
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16])
@pytest.mark.parametrize("m", [1, 5, 16, 17, 40, 64])
@pytest.mark.parametrize("n,k", [(1152, 896), (896, 4864), (64, 32), (4608, 3584), (9728, 896)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_small_matmul_equals_float32(dtype, m, n, k, with_bias):
    rng = np.random.default_rng(m * 7 + n)
    x = mx.array(rng.standard_normal((m, k)).astype(np.float32)).astype(dtype)
    w = mx.array((rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)).astype(dtype)
    b = mx.array(rng.standard_normal(n).astype(np.float32)).astype(dtype) if with_bias else None
    assert cuda_matmul.supports(x, w) == (2 <= m <= cuda_matmul.MAX_ROWS
                                          and n * k <= cuda_matmul.MAX_WEIGHT)
    got = cuda_matmul.small_matmul(x, w, b, out_dtype=mx.float32)
    want = x.astype(mx.float32) @ w.astype(mx.float32).T
    if b is not None:
        want = want + b.astype(mx.float32)
    assert got.shape == (m, n) and got.dtype == mx.float32
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=2e-3, atol=2e-3)
    # Output in the input dtype: the same values, rounded.
    rounded = cuda_matmul.small_matmul(x, w, b)
    assert rounded.dtype == dtype
    np.testing.assert_allclose(np.array(rounded.astype(mx.float32)), np.array(want),
                               rtol=1e-2, atol=1e-2)


@needs_cuda
@pytest.mark.parametrize("m", [3, 64])
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 8), (2, 4, 2), (4, 2, 1), (4, 1, 4),
                                   (1, 8, 2)])
def test_every_launch_shape_computes_the_same_product(m, shape):
    """Column tiles per warp (NT), warps across columns (WN) and across K (WK): each way of
    laying the product out gives the float32 result."""
    rng = np.random.default_rng(m)
    n, k = 1024, 896
    x = mx.array(rng.standard_normal((m, k)).astype(np.float32)).astype(mx.bfloat16)
    w = mx.array((rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)).astype(mx.bfloat16)
    b = mx.array(rng.standard_normal(n).astype(np.float32)).astype(mx.bfloat16)
    got = cuda_matmul.small_matmul(x, w, b, out_dtype=mx.float32, shape=shape)
    want = x.astype(mx.float32) @ w.astype(mx.float32).T + b.astype(mx.float32)
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=2e-3, atol=2e-3)


def test_launch_shapes_fit_their_product():
    for m in (2, 16, 17, 64):
        for n, k in [(1152, 896), (896, 896), (9728, 896), (896, 4864), (151936, 896),
                     (4608, 3584), (37888, 3584), (3584, 18944), (64, 32), (8, 64)]:
            nt, wn, wk = cuda_matmul.launch_shape(m, n, k)
            assert n % (8 * nt * wn) == 0 and k // 32 >= wk
            assert wk * wn * -(-m // 16) * nt * 128 <= cuda_matmul.SMEM_FLOATS


@needs_cuda
def test_unsupported_shapes_fall_back():
    x = mx.zeros((cuda_matmul.MAX_ROWS + 1, 64), dtype=mx.bfloat16)
    assert not cuda_matmul.supports(x, mx.zeros((64, 64), dtype=mx.bfloat16))  # too many rows
    x = mx.zeros((1, 64), dtype=mx.bfloat16)
    assert not cuda_matmul.supports(x, mx.zeros((64, 64), dtype=mx.bfloat16))  # MLX's gemv
    x = mx.zeros((4, 48), dtype=mx.bfloat16)
    assert not cuda_matmul.supports(x, mx.zeros((64, 48), dtype=mx.bfloat16))  # K % 32
    x = mx.zeros((4, 64), dtype=mx.float32)
    assert not cuda_matmul.supports(x, mx.zeros((64, 64), dtype=mx.float32))  # float32
