"""A small-batch matmul for NVIDIA GPUs (`mx.fast.cuda_kernel`): `x @ W.T (+ bias)` on tensor
cores, for the few-row activations of decode steps.

Why: on MLX's CUDA backend a cuBLAS matmul costs ~45-80 us of host time to encode (a cuBLASLt
descriptor, an algorithm query and a stream capture per call), against ~15 us for a custom
kernel; a decode step runs ~100 of them, and small-batch decode is bound by that host time,
not by the GPU. A decode matmul moves the weight once and does little arithmetic, so a
straightforward kernel that streams the weight is enough.

Layout: each warp computes all M rows (M <= 16 * MT) of 8 * NT output columns, walking K in
chunks of 32. A thread loads 8 consecutive K elements of a weight row (one 16-byte load) and
of each activation row it owns; the mma.m16n8k16 fragments read them with K permuted within
the chunk (the same permutation for both operands, so the dot products are unchanged): for
lane group t, logical columns {2t, 2t+1, 2t+8, 2t+9} of the two k16 steps are physical
columns 8t + {0..3} and 8t + {4..7}. Accumulation is float32.
"""
from __future__ import annotations

import functools

import mlx.core as mx

MIN_ROWS, MAX_ROWS = 2, 16  # one row: MLX's own gemv is faster; more: cuBLAS is faster on
# the GPU and its host cost is shared by more tokens
MAX_WEIGHT = 32 << 20  # elements; larger weights (an LM head, a 7B MLP) stream faster in cuBLAS
WARPS = 4  # warps per thread block
NT = 1  # n8 tiles per warp: many warps in flight hide the weight stream's latency

_HEADER = """
__device__ __forceinline__ void mma_16816(float* c, const unsigned* a, const unsigned* b) {
#if defined(IS_BF16)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
#endif
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
"""

_SOURCE = """
    const int M = x_shape[0];
    const int N = w_shape[0];
    const int K = w_shape[1];
    const int lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    const int warp = blockIdx.x * WARPS + threadIdx.x / 32;
    const int n0 = warp * 8 * NT;
    if (n0 >= N) return;
    float acc[MT][NT][4];
    #pragma unroll
    for (int i = 0; i < MT; ++i)
        #pragma unroll
        for (int j = 0; j < NT; ++j)
            #pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    #pragma unroll 4
    for (int k0 = 0; k0 < K; k0 += 32) {
        const int k = k0 + 8 * t;
        uint4 bw[NT];
        #pragma unroll
        for (int j = 0; j < NT; ++j)
            bw[j] = *reinterpret_cast<const uint4*>(w + (size_t)(n0 + 8 * j + g) * K + k);
        uint4 lo[MT], hi[MT];
        #pragma unroll
        for (int i = 0; i < MT; ++i) {
            const int r = 16 * i + g;
            lo[i] = r < M ? *reinterpret_cast<const uint4*>(x + (size_t)r * K + k) : zero;
            hi[i] = r + 8 < M ? *reinterpret_cast<const uint4*>(x + (size_t)(r + 8) * K + k) : zero;
        }
        #pragma unroll
        for (int s = 0; s < 2; ++s) {
            #pragma unroll
            for (int i = 0; i < MT; ++i) {
                const unsigned* l = reinterpret_cast<const unsigned*>(&lo[i]);
                const unsigned* h = reinterpret_cast<const unsigned*>(&hi[i]);
                const unsigned a[4] = {l[2 * s], h[2 * s], l[2 * s + 1], h[2 * s + 1]};
                #pragma unroll
                for (int j = 0; j < NT; ++j) {
                    const unsigned* b = reinterpret_cast<const unsigned*>(&bw[j]);
                    const unsigned bb[2] = {b[2 * s], b[2 * s + 1]};
                    mma_16816(acc[i][j], a, bb);
                }
            }
        }
    }
    #pragma unroll
    for (int i = 0; i < MT; ++i) {
        #pragma unroll
        for (int j = 0; j < NT; ++j) {
            const int col = n0 + 8 * j + 2 * t;
            float b0 = 0.f, b1 = 0.f;
            BIAS_LOAD
            #pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int r = 16 * i + g + 8 * half;
                if (r < M) {
                    out[(size_t)r * N + col] = static_cast<OutT>(acc[i][j][2 * half] + b0);
                    out[(size_t)r * N + col + 1] = static_cast<OutT>(acc[i][j][2 * half + 1] + b1);
                }
            }
        }
    }
"""


@functools.lru_cache(maxsize=None)
def _has_cuda() -> bool:
    cuda = getattr(mx, "cuda", None)
    return cuda is not None and cuda.is_available()


def available() -> bool:
    """True on an NVIDIA GPU running MLX's CUDA backend."""
    return _has_cuda() and mx.default_device() == mx.gpu


def single_row(x: mx.array) -> bool:
    """One row on CUDA: MLX's gemv serves `x @ W.T` without cuBLAS, so a bias is better
    added after it than fused into a cuBLAS addmm (~50 us more host time per call)."""
    return x.ndim == 2 and x.shape[0] == 1 and available()


def supports(x: mx.array, weight: mx.array) -> bool:
    """Whether `x @ weight.T` can run here: a few rows, 16-bit floats, K a multiple of 32,
    N of 8 * NT."""
    return (x.ndim == 2 and MIN_ROWS <= x.shape[0] <= MAX_ROWS
            and x.dtype in (mx.bfloat16, mx.float16) and weight.dtype == x.dtype
            and weight.shape[1] % 32 == 0 and weight.shape[0] % (8 * NT) == 0
            and weight.size <= MAX_WEIGHT and available())


@functools.lru_cache(maxsize=None)
def _kernel(is_bf16: bool, with_bias: bool):
    names = ["x", "w"] + (["bias"] if with_bias else [])
    header = ("#define IS_BF16\n" if is_bf16 else "") + _HEADER
    bias_load = ("b0 = static_cast<float>(bias[col]); b1 = static_cast<float>(bias[col + 1]);"
                 if with_bias else "")
    return mx.fast.cuda_kernel(name=f"small_matmul_{'bf16' if is_bf16 else 'f16'}"
                               f"{'_bias' if with_bias else ''}",
                               input_names=names, output_names=["out"],
                               source=_SOURCE.replace("BIAS_LOAD", bias_load), header=header)


def small_matmul(x: mx.array, weight: mx.array, bias: mx.array | None = None,
                 out_dtype=None) -> mx.array:
    """x [M, K] @ weight[N, K].T (+ bias [N]) -> [M, N] in `out_dtype` (default x's)."""
    m, k = x.shape
    n = weight.shape[0]
    out_dtype = out_dtype or x.dtype
    inputs = [x, weight] + ([bias] if bias is not None else [])
    warps = -(-n // (8 * NT))
    blocks = -(-warps // WARPS)
    return _kernel(x.dtype == mx.bfloat16, bias is not None)(
        inputs=inputs,
        template=[("OutT", out_dtype), ("MT", -(-m // 16)), ("NT", NT), ("WARPS", WARPS)],
        grid=(blocks * WARPS * 32, 1, 1), threadgroup=(WARPS * 32, 1, 1),
        output_shapes=[(m, n)], output_dtypes=[out_dtype])[0]
