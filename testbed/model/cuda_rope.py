"""Rotary embedding of Q and K straight out of the fused QKV projection, for NVIDIA GPUs
(`mx.fast.cuda_kernel`).

Why: with `mx.fast.rope` a layer ropes the whole [T, heads + 2 * kv_heads, D] projection
(V's rotated copy unused), copies Q out of it (attention wants Q contiguous) and joins roped K
with V for the KV pool: three kernels, where small-batch decode is bound by the ~10 us of host
time each kernel costs. This kernel reads the projection once and writes roped Q [T, heads, D]
and KV [T, 2 * kv_heads, D] (roped K, then V as it is), both contiguous: one kernel. It also
works for any even head size (MLX's CUDA rope fails below 32, see `kernels.rope`).

One thread per (token, head, rotated pair). The inverse frequencies theta^(-2i/D) are compiled
in as float64 constants and the angle position * frequency is reduced to [-pi, pi] in float64
before a float32 sine and cosine: long positions keep their precision (a float32 angle near
32K rad is off by ~2e-3) without float64 transcendentals, which made the kernel ~3x slower.
"""
from __future__ import annotations

import functools

import mlx.core as mx

from testbed.model.cuda import available, kernel_name

THREADS = 256
ENABLED = True  # False: `mx.fast.rope` and copies (for A/B runs: profile_steps --rope-kernel)

_SOURCE = """
    constexpr int HALF = D / 2;
    constexpr int HEADS = H + 2 * KV;
    const int tokens = qkv_shape[0];
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)tokens * HEADS * HALF) return;
    const int i = idx % HALF;
    const int head = (idx / HALF) % HEADS;
    const int t = idx / ((size_t)HALF * HEADS);
    const T* src = qkv + ((size_t)t * HEADS + head) * D;
    T* dst = head < H ? q + ((size_t)t * H + head) * D : kv + ((size_t)t * 2 * KV + head - H) * D;
    if (head >= H + KV) {  // V: not roped
        dst[i] = src[i];
        dst[i + HALF] = src[i + HALF];
        return;
    }
    const double two_pi = 6.283185307179586;
    double angle = static_cast<double>(positions[t]) * INV_FREQ[i];
    angle -= two_pi * rint(angle / two_pi);
    float s, c;
    sincosf(static_cast<float>(angle), &s, &c);
    const float x1 = static_cast<float>(src[i]), x2 = static_cast<float>(src[i + HALF]);
    dst[i] = static_cast<T>(x1 * c - x2 * s);
    dst[i + HALF] = static_cast<T>(x2 * c + x1 * s);
"""


def inverse_frequencies(theta: float, dim: int) -> list[float]:
    """theta^(-2i/dim) for i < dim/2, in float64."""
    half = dim // 2
    return [theta ** (-i / half) for i in range(half)]


@functools.lru_cache(maxsize=None)
def _kernel(theta: float, dim: int):
    """The kernel for one (theta, head size), its frequencies compiled in."""
    table = ", ".join(repr(f) for f in inverse_frequencies(theta, dim))
    return mx.fast.cuda_kernel(
        name=kernel_name(f"rope_qkv_d{dim}", theta), input_names=["qkv", "positions"],
        output_names=["q", "kv"], source=_SOURCE,
        header=f"__constant__ double INV_FREQ[{dim // 2}] = {{{table}}};\n")


def supports(qkv: mx.array) -> bool:
    """Whether the model should rope `qkv` [T, heads, D] with this kernel here."""
    return ENABLED and qkv.ndim == 3 and qkv.shape[-1] % 2 == 0 and available()


def rope_qkv(qkv: mx.array, positions: mx.array, theta: float, heads: int,
             kv_heads: int) -> tuple[mx.array, mx.array]:
    """qkv [T, heads + 2 * kv_heads, D], positions [T] -> roped q [T, heads, D] and
    kv [T, 2 * kv_heads, D] (roped K, then V), contiguous, in qkv's dtype."""
    tokens, _, dim = qkv.shape
    total = tokens * (heads + 2 * kv_heads) * (dim // 2)
    return tuple(_kernel(float(theta), dim)(
        inputs=[qkv, positions],
        template=[("T", qkv.dtype), ("H", heads), ("KV", kv_heads), ("D", dim)],
        grid=(max(1, -(-total // THREADS)) * THREADS, 1, 1), threadgroup=(THREADS, 1, 1),
        output_shapes=[(tokens, heads, dim), (tokens, 2 * kv_heads, dim)],
        output_dtypes=[qkv.dtype, qkv.dtype]))

