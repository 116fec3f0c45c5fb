"""The Qwen2 kernels, each in two versions chosen by `kernels="reference" | "fast"`.

`reference` is written in plain `mlx.core` ops so it reads like the math; `fast` uses
`mx.fast.*` and `mx.compile` (the linear layers, dense and quantized, live in `linear.py`).
Tests hold the two equal, so a new fast kernel only has to match its reference.

Shapes: token-major activations are [T, ...]; attention works on [B, heads, L, head_dim].
"""
from __future__ import annotations

import functools
from typing import Literal

import mlx.core as mx

from testbed.model import cuda, cuda_norm, cuda_rope

Kernels = Literal["reference", "fast"]
KERNELS: tuple[str, ...] = ("reference", "fast")


def check_kernels(kernels: str) -> Kernels:
    if kernels not in KERNELS:
        raise ValueError(f"kernels={kernels!r}: choose one of {', '.join(KERNELS)}")
    return kernels  # type: ignore[return-value]


# --- RMSNorm -----------------------------------------------------------------------------

def rms_norm(x: mx.array, weight: mx.array, eps: float, kernels: Kernels = "fast") -> mx.array:
    """`weight * x / sqrt(mean(x^2) + eps)` over the last axis, statistics in float32."""
    if kernels == "fast":
        return mx.fast.rms_norm(x, weight, eps)
    x32 = x.astype(mx.float32)
    normed = x32 * mx.rsqrt(mx.mean(mx.square(x32), axis=-1, keepdims=True) + eps)
    return weight * normed.astype(x.dtype)


@functools.lru_cache(maxsize=None)
def _compiled_add_rms_norm(eps: float):
    def fused(x: mx.array, residual: mx.array, weight: mx.array):
        h = x + residual
        return h, mx.fast.rms_norm(h, weight, eps)
    return mx.compile(fused, shapeless=True)


def add_rms_norm(x: mx.array, residual: mx.array, weight: mx.array, eps: float,
                 kernels: Kernels = "fast") -> tuple[mx.array, mx.array]:
    """Residual add followed by RMSNorm: returns (x + residual, rms_norm(x + residual))."""
    if kernels == "fast" and cuda_norm.supports(x):
        return cuda_norm.add_rms_norm(x, residual, weight, eps)
    if kernels == "fast":
        return _compiled_add_rms_norm(float(eps))(x, residual, weight)
    h = x + residual
    return h, rms_norm(h, weight, eps, kernels)


# --- RoPE --------------------------------------------------------------------------------

def rope(x: mx.array, positions: mx.array, theta: float, kernels: Kernels = "fast") -> mx.array:
    """Rotary embedding in Qwen2's rotate-half layout.

    x: [T, heads, head_dim]; positions: [T] int, each token's position in its sequence.
    """
    # MLX's CUDA rope lays a launch over (head_dim / 2, 1, tokens * heads / 4) threads; below
    # head_dim 32 its thread block gets a z size over CUDA's limit of 64 and the launch fails
    # ("invalid argument") once a step has enough tokens, so small heads take the reference.
    if kernels == "fast" and not (x.shape[-1] < 32 and cuda.available()):
        # mx.fast.rope ropes axis -2 from `offset`; with that axis of length 1 and one offset
        # per leading row, every token is roped at its own position.
        out = mx.fast.rope(x[:, :, None, :], x.shape[-1], traditional=False, base=theta,
                           scale=1.0, offset=positions)
        return out[:, :, 0, :]
    half = x.shape[-1] // 2
    inv_freq = theta ** (-mx.arange(0, half, dtype=mx.float32) / half)
    angles = positions.astype(mx.float32)[:, None] * inv_freq[None, :]  # [T, half]
    cos, sin = mx.cos(angles)[:, None, :], mx.sin(angles)[:, None, :]
    x1, x2 = x[..., :half].astype(mx.float32), x[..., half:].astype(mx.float32)
    out = mx.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def rope_qkv(qkv: mx.array, positions: mx.array, theta: float, heads: int, kv_heads: int,
             kernels: Kernels = "fast") -> tuple[mx.array, mx.array]:
    """A fused projection qkv [T, heads + 2 * kv_heads, D] -> roped Q [T, heads, D] and
    KV [T, 2 * kv_heads, D]: roped K, then V (not roped), the rows the KV pool stores."""
    if kernels == "fast" and cuda_rope.supports(qkv):
        return cuda_rope.rope_qkv(qkv, positions, theta, heads, kv_heads)
    # One rotary call over every head (V's rotated copy is unused), then K and V joined.
    roped = rope(qkv, positions, theta, kernels)
    kv = mx.concatenate([roped[:, heads:heads + kv_heads], qkv[:, heads + kv_heads:]], axis=1)
    return roped[:, :heads], kv


# --- Attention ---------------------------------------------------------------------------

def attention(q: mx.array, k: mx.array, v: mx.array, mask: mx.array | str | None,
              scale: float, kernels: Kernels = "fast") -> mx.array:
    """Grouped-query scaled dot-product attention.

    q: [B, n_heads, L, D]; k, v: [B, n_kv_heads, S, D] (not repeated per query head).
    mask: None, "causal" (aligned to the end: query i sees keys up to S - L + i), a boolean
    array (True = attend) or an additive float array, broadcastable to [B, n_heads, L, S].
    Returns [B, n_heads, L, D] in q's dtype.
    """
    if kernels == "fast" and mx.default_device() == mx.gpu:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    # The reference math below is also the fast path on the CPU: MLX's fused attention has no
    # optimized CPU kernel, while these matmuls run on the BLAS (~2-4x faster measured).
    b, n_heads, length, dim = q.shape
    n_kv, keys = k.shape[1], k.shape[2]
    group = n_heads // n_kv
    # Each kv head serves `group` consecutive query heads: their rows are stacked into one
    # [G * L, D] query matrix per kv head, so K and V enter the matmuls as they are (4-D
    # batches; a broadcast 5-D batch costs the CPU ~3x more).
    qg = q.reshape(b, n_kv, group * length, dim).astype(mx.float32)
    scores = (qg * scale) @ k.astype(mx.float32).swapaxes(-1, -2)  # [B, kv, G*L, S]
    scores = scores.reshape(b, n_kv, group, length, keys)
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"attention mask {mask!r}: the only named mask is 'causal'")
        rows = mx.arange(length)[:, None] + (keys - length)
        scores = mx.where(mx.arange(keys)[None, :] <= rows, scores, -mx.inf)
    elif mask is not None:
        grouped = _group_mask(mask, n_kv, group)
        if grouped.dtype == mx.bool_:
            scores = mx.where(grouped, scores, -mx.inf)
        else:
            scores = scores + grouped.astype(mx.float32)
    weights = mx.softmax(scores, axis=-1).reshape(b, n_kv, group * length, keys)
    out = weights @ v.astype(mx.float32)  # [B, kv, G*L, D]
    return out.reshape(b, n_heads, length, dim).astype(q.dtype)


def _group_mask(mask: mx.array, n_kv: int, group: int) -> mx.array:
    """A mask broadcastable to [B, H, L, S] -> one broadcastable to [B, kv, G, L, S]."""
    while mask.ndim < 4:
        mask = mask[None]
    if mask.shape[1] == 1:
        return mask[:, :, None]
    return mask.reshape(mask.shape[0], n_kv, group, *mask.shape[2:])


# --- SwiGLU -------------------------------------------------------------------------------

def swiglu(gate: mx.array, up: mx.array, kernels: Kernels = "fast") -> mx.array:
    """The MLP's activation `silu(gate) * up`; fast fuses it into one compiled kernel."""
    if kernels == "fast":
        return _swiglu_compiled(gate, up)
    return gate * mx.sigmoid(gate) * up


_swiglu_compiled = mx.compile(lambda gate, up: gate * mx.sigmoid(gate) * up, shapeless=True)
