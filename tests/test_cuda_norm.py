"""The fused residual-add + RMSNorm kernel equals the reference add and norm.

Runs only where MLX has its CUDA backend (an NVIDIA GPU); elsewhere it is skipped with that
reason, since the kernel cannot run.
"""
from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from testbed.model import cuda_norm
from testbed.model.kernels import rms_norm

pytestmark = pytest.mark.skipif(not cuda_norm.available(),
                                reason="needs MLX's CUDA backend (an NVIDIA GPU)")


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16, mx.float16])
@pytest.mark.parametrize("rows", [1, 7, 64])
@pytest.mark.parametrize("hidden", [64, 896, 3584, 5000])
def test_add_rms_norm_equals_reference(dtype, rows, hidden):
    rng = np.random.default_rng(rows + hidden)
    x, residual = (mx.array(rng.standard_normal((rows, hidden)).astype(np.float32)).astype(dtype)
                   for _ in range(2))
    weight = mx.array(rng.uniform(0.5, 1.5, hidden).astype(np.float32)).astype(dtype)
    assert cuda_norm.supports(x)
    h, normed = cuda_norm.add_rms_norm(x, residual, weight, 1e-6)
    want_h = x + residual
    want = rms_norm(want_h, weight, 1e-6, "reference")
    assert h.dtype == normed.dtype == dtype
    # The sum is rounded to the activation dtype once, as the plain add rounds it.
    np.testing.assert_array_equal(np.array(h.astype(mx.float32)), np.array(want_h.astype(mx.float32)))
    tol = 1e-5 if dtype == mx.float32 else 2e-2
    np.testing.assert_allclose(np.array(normed.astype(mx.float32)), np.array(want.astype(mx.float32)),
                               rtol=tol, atol=tol)


def test_wider_rows_are_not_supported():
    assert not cuda_norm.supports(mx.zeros((2, cuda_norm.THREADS * cuda_norm.MAX_ITEMS + 1)))
