"""The small-batch tensor-core matmul equals a float32 matmul of the same 16-bit inputs.

Runs only where MLX has its CUDA backend (an NVIDIA GPU); elsewhere it is skipped with that
reason, since the kernel cannot run.
"""
from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from testbed.model import cuda_matmul

pytestmark = pytest.mark.skipif(not cuda_matmul.available(),
                                reason="needs MLX's CUDA backend (an NVIDIA GPU)")


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16])
@pytest.mark.parametrize("m", [1, 5, 16, 17, 40, 64])
@pytest.mark.parametrize("n,k", [(1152, 896), (896, 4864), (64, 32), (4608, 3584)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_small_matmul_equals_float32(dtype, m, n, k, with_bias):
    rng = np.random.default_rng(m * 7 + n)
    x = mx.array(rng.standard_normal((m, k)).astype(np.float32)).astype(dtype)
    w = mx.array((rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)).astype(dtype)
    b = mx.array(rng.standard_normal(n).astype(np.float32)).astype(dtype) if with_bias else None
    assert cuda_matmul.supports(x, w) == (2 <= m <= 16 and n * k <= cuda_matmul.MAX_WEIGHT)
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


def test_unsupported_shapes_fall_back():
    x = mx.zeros((17, 64), dtype=mx.bfloat16)
    assert not cuda_matmul.supports(x, mx.zeros((64, 64), dtype=mx.bfloat16))  # too many rows
    x = mx.zeros((1, 64), dtype=mx.bfloat16)
    assert not cuda_matmul.supports(x, mx.zeros((64, 64), dtype=mx.bfloat16))  # MLX's gemv
    x = mx.zeros((4, 48), dtype=mx.bfloat16)
    assert not cuda_matmul.supports(x, mx.zeros((64, 48), dtype=mx.bfloat16))  # K % 32
    x = mx.zeros((4, 64), dtype=mx.float32)
    assert not cuda_matmul.supports(x, mx.zeros((64, 64), dtype=mx.float32))  # float32
