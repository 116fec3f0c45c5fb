"""Reference kernels against brute-force NumPy oracles, and fast kernels against reference."""
import mlx.core as mx
import numpy as np
import pytest

from testbed.model.kernels import add_rms_norm, attention, rms_norm, rope, swiglu
from testbed.model.linear import Linear, QuantizedLinear

rng = np.random.default_rng(0)


def randn(*shape) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def numpy_attention(q, k, v, allowed, scale):
    """Per (batch, head) loops with K/V repeated for the query head's group."""
    b, h, length, d = q.shape
    group = h // k.shape[1]
    out = np.zeros_like(q)
    for i in range(b):
        for j in range(h):
            s = q[i, j] @ k[i, j // group].T * scale
            s = np.where(allowed[i], s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            out[i, j] = (p / p.sum(-1, keepdims=True)) @ v[i, j // group]
    return out


def random_bool_mask(b, length, keys):
    mask = rng.random((b, length, keys)) < 0.6
    mask[..., 0] = True  # every query sees at least one key
    return mask


@pytest.mark.parametrize("kernels", ["reference", "fast"])
@pytest.mark.parametrize("mask_kind", ["none", "causal", "bool", "additive"])
def test_attention_matches_numpy(kernels, mask_kind):
    b, h, kv, length, keys, d = 2, 8, 2, 5, 9, 16
    q, k, v = randn(b, h, length, d), randn(b, kv, keys, d), randn(b, kv, keys, d)
    if mask_kind == "none":
        mask, allowed = None, np.ones((b, length, keys), bool)
    elif mask_kind == "causal":
        allowed = np.arange(keys)[None, :] <= np.arange(length)[:, None] + keys - length
        mask, allowed = "causal", np.broadcast_to(allowed, (b, length, keys))
    else:
        allowed = random_bool_mask(b, length, keys)
        mask = mx.array(allowed[:, None]) if mask_kind == "bool" else mx.array(
            np.where(allowed, 0.0, -1e9).astype(np.float32)[:, None])
    scale = d ** -0.5
    ours = attention(mx.array(q), mx.array(k), mx.array(v), mask, scale, kernels)
    np.testing.assert_allclose(np.array(ours), numpy_attention(q, k, v, allowed, scale),
                               atol=1e-5)


def test_attention_per_head_mask_and_half_precision():
    b, h, kv, length, keys, d = 1, 4, 2, 3, 6, 8
    q, k, v = randn(b, h, length, d), randn(b, kv, keys, d), randn(b, kv, keys, d)
    allowed = rng.random((b, h, length, keys)) < 0.5
    allowed[..., 0] = True
    args = [mx.array(x).astype(mx.bfloat16) for x in (q, k, v)]
    ref = attention(*args, mx.array(allowed), 0.3, "reference")
    fast = attention(*args, mx.array(allowed), 0.3, "fast")
    assert ref.dtype == fast.dtype == mx.bfloat16
    np.testing.assert_allclose(np.array(ref.astype(mx.float32)),
                               np.array(fast.astype(mx.float32)), atol=2e-2)


def numpy_rope(x, positions, theta):
    half = x.shape[-1] // 2
    inv_freq = theta ** (-np.arange(half, dtype=np.float64) / half)
    angle = positions[:, None].astype(np.float64) * inv_freq[None]
    cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


@pytest.mark.parametrize("kernels", ["reference", "fast"])
@pytest.mark.parametrize("theta", [10_000.0, 1_000_000.0])
def test_rope_matches_numpy_at_scattered_positions(kernels, theta):
    x = randn(7, 3, 32)
    positions = np.array([0, 1, 2, 40, 41, 5, 3000])
    ours = rope(mx.array(x), mx.array(positions.astype(np.int32)), theta, kernels)
    np.testing.assert_allclose(np.array(ours), numpy_rope(x, positions, theta), atol=2e-4)


@pytest.mark.parametrize("kernels", ["reference", "fast"])
def test_rms_norm_matches_numpy(kernels):
    x, w = randn(4, 64) * 3, randn(64)
    expected = w * x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(np.array(rms_norm(mx.array(x), mx.array(w), 1e-6, kernels)),
                               expected, rtol=1e-5, atol=1e-5)
    residual = randn(4, 64)
    h, normed = add_rms_norm(mx.array(x), mx.array(residual), mx.array(w), 1e-6, kernels)
    np.testing.assert_allclose(np.array(h), x + residual, atol=1e-6)
    np.testing.assert_allclose(
        np.array(normed), np.array(rms_norm(h, mx.array(w), 1e-6, "reference")), atol=1e-5)


def test_rms_norm_statistics_in_float32_for_half_inputs():
    # Large values whose squares overflow float16: float32 statistics keep the result finite.
    x = mx.array(randn(2, 64) * 400).astype(mx.float16)
    w = mx.ones((64,), mx.float16)
    for kernels in ("reference", "fast"):
        out = np.array(rms_norm(x, w, 1e-6, kernels).astype(mx.float32))
        assert np.isfinite(out).all()
        np.testing.assert_allclose(np.sqrt((out ** 2).mean(-1)), 1.0, atol=1e-2)


@pytest.mark.parametrize("kernels", ["reference", "fast"])
def test_swiglu_matches_numpy(kernels):
    gate, up = randn(5, 32), randn(5, 32)
    expected = gate / (1 + np.exp(-gate)) * up
    np.testing.assert_allclose(np.array(swiglu(mx.array(gate), mx.array(up), kernels)),
                               expected, atol=1e-5)


@pytest.mark.parametrize("kernels", ["reference", "fast"])
def test_linear_with_and_without_bias(kernels):
    x, w, b = randn(3, 16), randn(8, 16), randn(8)
    np.testing.assert_allclose(np.array(Linear(mx.array(w), None, kernels)(mx.array(x))),
                               x @ w.T, atol=1e-5)
    np.testing.assert_allclose(np.array(Linear(mx.array(w), mx.array(b), kernels)(mx.array(x))),
                               x @ w.T + b, atol=1e-5)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [64, 128])
def test_quantized_linear_reference_and_fast_agree(bits, group_size):
    x, w, b = randn(3, 256), randn(24, 256), randn(24)
    layers = {k: QuantizedLinear.from_dense("w", mx.array(w), mx.array(b), bits, group_size, k)
              for k in ("reference", "fast")}
    ref, fast = (np.array(layers[k](mx.array(x))) for k in ("reference", "fast"))
    np.testing.assert_allclose(ref, fast, atol=1e-3)
    # The quantization error itself stays within a few rounding steps per group.
    step = (w.max() - w.min()) / (2 ** bits - 1)
    assert np.abs(np.array(layers["fast"].dequantized()) - w).max() <= step
    rows = layers["fast"].rows(mx.array([2, 0]))
    np.testing.assert_allclose(np.array(rows), np.array(layers["fast"].dequantized())[[2, 0]])
