"""Rotary embedding of Q and K straight out of the fused QKV projection, for NVIDIA GPUs
(`mx.fast.cuda_kernel`).

Why: with `mx.fast.rope` a layer ropes the whole [T, heads + 2 * kv_heads, D] projection
(V's rotated copy unused) and then copies Q out of it, since attention wants Q contiguous:
two kernels, where small-batch decode is bound by the ~10 us of host time each kernel costs.
This kernel reads the projection once and writes roped Q [T, heads, D] and K [T, kv_heads,
D], both contiguous: one kernel. It also works for any even head size (MLX's CUDA rope
fails below 32, see `kernels.rope`).

One thread per (token, head, rotated pair); the angle position * theta^(-2i/D) and its sine
and cosine are computed in float64, so long positions keep their precision.
"""
from __future__ import annotations

import functools

import mlx.core as mx

from testbed.model.cuda import available, kernel_name

THREADS = 256
# Not yet run on a GPU: the model keeps `mx.fast.rope` until tests/test_cuda_rope.py has
# passed on one and a decode step measured faster with it (then this becomes True).
ENABLED = False

_SOURCE = """
    constexpr int HALF = D / 2;
    const int tokens = qkv_shape[0];
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)tokens * (H + KV) * HALF) return;
    const int i = idx % HALF;
    const int head = (idx / HALF) % (H + KV);
    const int t = idx / ((size_t)HALF * (H + KV));
    const double angle = static_cast<double>(positions[t]) * pow(THETA, -static_cast<double>(i) / HALF);
    double s, c;
    sincos(angle, &s, &c);
    const T* src = qkv + ((size_t)t * (H + 2 * KV) + head) * D;
    const float x1 = static_cast<float>(src[i]), x2 = static_cast<float>(src[i + HALF]);
    const float sf = static_cast<float>(s), cf = static_cast<float>(c);
    T* dst = head < H ? q + ((size_t)t * H + head) * D : k + ((size_t)t * KV + head - H) * D;
    dst[i] = static_cast<T>(x1 * cf - x2 * sf);
    dst[i + HALF] = static_cast<T>(x2 * cf + x1 * sf);
"""


@functools.lru_cache(maxsize=None)
def _kernel(theta: float):
    """The kernel with `theta` compiled in (see `testbed.model.cuda`)."""
    return mx.fast.cuda_kernel(name=kernel_name("rope_qk", theta),
                               input_names=["qkv", "positions"], output_names=["q", "k"],
                               source=_SOURCE.replace("THETA", repr(float(theta))))


def supports(qkv: mx.array) -> bool:
    """Whether the model should rope `qkv` [T, heads, D] with this kernel here."""
    return ENABLED and qkv.ndim == 3 and qkv.shape[-1] % 2 == 0 and available()


def rope_qk(qkv: mx.array, positions: mx.array, theta: float, heads: int,
            kv_heads: int) -> tuple[mx.array, mx.array]:
    """qkv [T, heads + 2 * kv_heads, D], positions [T] -> roped (q [T, heads, D],
    k [T, kv_heads, D]), contiguous, in qkv's dtype."""
    tokens, _, dim = qkv.shape
    total = tokens * (heads + kv_heads) * (dim // 2)
    return tuple(_kernel(float(theta))(
        inputs=[qkv, positions],
        template=[("T", qkv.dtype), ("H", heads), ("KV", kv_heads), ("D", dim)],
        grid=(max(1, -(-total // THREADS)) * THREADS, 1, 1), threadgroup=(THREADS, 1, 1),
        output_shapes=[(tokens, heads, dim), (tokens, kv_heads, dim)],
        output_dtypes=[qkv.dtype, qkv.dtype]))
