"""The Q/K rotary kernel equals the reference rotary embedding of the same heads.

The kernel runs only where MLX has its CUDA backend (an NVIDIA GPU); elsewhere that test is
skipped with that reason.
"""
from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from testbed.model import cuda_rope
from testbed.model.kernels import rope

needs_cuda = pytest.mark.skipif(not cuda_rope.available(),
                                reason="needs MLX's CUDA backend (an NVIDIA GPU)")


def rope_float64(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """Rotate-half RoPE in float64 (angles up to 32K rad lose ~1e-3 in float32)."""
    half = x.shape[-1] // 2
    angles = positions.astype(np.float64)[:, None] * theta ** (-np.arange(half) / half)
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    x1, x2 = x[..., :half].astype(np.float64), x[..., half:].astype(np.float64)
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def test_float64_reference_matches_the_model_rope_at_small_positions():
    """The test's own reference is the model's rotary embedding where float32 is exact enough."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3, 16)).astype(np.float32)
    pos = np.arange(6, dtype=np.int32)
    got = np.array(rope(mx.array(x), mx.array(pos), 10_000.0, "reference"))
    np.testing.assert_allclose(got, rope_float64(x, pos, 10_000.0), rtol=1e-5, atol=1e-5)


@needs_cuda
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,dim", [(14, 2, 64), (28, 4, 128), (4, 2, 16), (8, 8, 32)])
@pytest.mark.parametrize("tokens", [1, 5, 300])
def test_rope_qkv_equals_reference(dtype, heads, kv_heads, dim, tokens):
    rng = np.random.default_rng(tokens + dim)
    qkv = mx.array(rng.standard_normal((tokens, heads + 2 * kv_heads, dim)).astype(np.float32)).astype(dtype)
    positions = mx.array(rng.integers(0, 32_768, tokens).astype(np.int32))
    q, kv = cuda_rope.rope_qkv(qkv, positions, 1_000_000.0, heads, kv_heads)
    x = np.array(qkv.astype(mx.float32))
    want = rope_float64(x, np.array(positions), 1_000_000.0)
    assert q.shape == (tokens, heads, dim) and kv.shape == (tokens, 2 * kv_heads, dim)
    assert q.dtype == kv.dtype == dtype
    tol = 1e-5 if dtype == mx.float32 else 2e-2
    got_q, got_kv = np.array(q.astype(mx.float32)), np.array(kv.astype(mx.float32))
    np.testing.assert_allclose(got_q, want[:, :heads], rtol=tol, atol=tol)
    np.testing.assert_allclose(got_kv[:, :kv_heads], want[:, heads:heads + kv_heads],
                               rtol=tol, atol=tol)
    np.testing.assert_array_equal(got_kv[:, kv_heads:], x[:, heads + kv_heads:])  # V as it is
