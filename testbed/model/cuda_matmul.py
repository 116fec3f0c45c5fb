"""A small-batch matmul for NVIDIA GPUs (`mx.fast.cuda_kernel`): `x @ W.T (+ bias)` on tensor
cores, for the few-row activations of decode steps.

Why: on MLX's CUDA backend a cuBLAS matmul costs more host time to encode (a cuBLASLt
descriptor, an algorithm query and a stream capture per call; ~25 us against ~15 us for a
custom kernel, tiny shapes back to back on an H200); a decode step runs ~100 of them, and
small-batch decode is bound by that host time, not by the GPU. A decode matmul moves the
weight once and does little arithmetic, so a kernel that streams the weight with enough
loads in flight is enough.

Layout: a thread block owns 8 * NT * WN output columns for all M rows (M <= 16 * MT): WN
warps side by side over the columns, WK warps splitting K between them (warp w takes the
32-wide chunks w, w + WK, ...). Each warp keeps float32 partial sums in mma.m16n8k16
fragments; the WK partials are added up through shared memory at the end. `launch_shape`
picks one 8-column tile per block and K split 8 ways: the most blocks, so even an
896-column projection keeps the SMs streaming. In a chunk a thread loads 8 consecutive K
elements of a weight row (one 16-byte load) and of each activation row it owns; the fragments
read them with K permuted within the chunk (the same permutation for both operands, so the
dot products are unchanged): for lane group t, logical columns {2t, 2t+1, 2t+8, 2t+9} of the
two k16 steps are physical columns 8t + {0..3} and 8t + {4..7}.
"""
from __future__ import annotations

import functools

import mlx.core as mx

from testbed.model.cuda import available

MIN_ROWS, MAX_ROWS = 2, 16  # one row: MLX's own gemv is faster; more: cuBLAS is faster on
# the GPU (measured on the H200 inside decode steps) and its host cost is shared by more tokens
MAX_WEIGHT = 32 << 20  # elements; larger weights (an LM head, a 7B MLP) stream faster in cuBLAS
SMEM_FLOATS = 12 * 1024  # the partial sums' shared memory (48 KiB, the static limit)

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
    const int wn = (threadIdx.x / 32) % WN, wk = threadIdx.x / 32 / WN;
    const int g = lane / 4, t = lane % 4;
    const int n0 = (blockIdx.x * WN + wn) * 8 * NT;
    float acc[MT][NT][4];
    #pragma unroll
    for (int i = 0; i < MT; ++i)
        #pragma unroll
        for (int j = 0; j < NT; ++j)
            #pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    #pragma unroll 2
    for (int k0 = 32 * wk; k0 < K; k0 += 32 * WK) {
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
    // Partial sums of every warp -> shared memory, [wk][wn][fragment value][lane]; then
    // each output is the sum over wk.
    constexpr int F = MT * NT * 4;
    __shared__ float partial[WK * WN * F * 32];
    #pragma unroll
    for (int i = 0; i < MT; ++i)
        #pragma unroll
        for (int j = 0; j < NT; ++j)
            #pragma unroll
            for (int e = 0; e < 4; ++e)
                partial[((wk * WN + wn) * F + (i * NT + j) * 4 + e) * 32 + lane] = acc[i][j][e];
    __syncthreads();
    for (int idx = threadIdx.x; idx < WN * F * 32; idx += WN * WK * 32) {
        float sum = 0.f;
        #pragma unroll
        for (int v = 0; v < WK; ++v) sum += partial[v * WN * F * 32 + idx];
        const int l = idx % 32, f = (idx / 32) % F, c = idx / (32 * F);
        const int e = f % 4, j = (f / 4) % NT, i = f / (4 * NT);
        const int r = 16 * i + l / 4 + 8 * (e / 2);
        const int col = (blockIdx.x * WN + c) * 8 * NT + 8 * j + 2 * (l % 4) + e % 2;
        if (r < M) {
            BIAS_ADD
            out[(size_t)r * N + col] = static_cast<OutT>(sum);
        }
    }
"""


def single_row(x: mx.array) -> bool:
    """One row on CUDA: MLX's gemv serves `x @ W.T` without cuBLAS, so a bias is better
    added after it than fused into a cuBLAS addmm (~50 us more host time per call)."""
    return x.ndim == 2 and x.shape[0] == 1 and available()


def supports(x: mx.array, weight: mx.array) -> bool:
    """Whether `x @ weight.T` can run here: a few rows, 16-bit floats, K a multiple of 32,
    N of 8."""
    return (x.ndim == 2 and MIN_ROWS <= x.shape[0] <= MAX_ROWS
            and x.dtype in (mx.bfloat16, mx.float16) and weight.dtype == x.dtype
            and weight.shape[1] % 32 == 0 and weight.shape[0] % 8 == 0
            and weight.size <= MAX_WEIGHT and available())


def launch_shape(m: int, n: int, k: int) -> tuple[int, int, int]:
    """(NT, WN, WK): each warp 8 * NT columns, WN warps across columns and WK across K. One
    n8 tile per block and up to 8 warps splitting K: the most thread blocks, so even a
    896-column projection keeps most SMs streaming (a wider tile left the H200's SMs idle:
    fewer blocks than SMs, ~5x slower on the device at 64 rows)."""
    wk = 8
    while wk > 1 and (k // 32 < 2 * wk or wk * -(-m // 16) * 128 > SMEM_FLOATS):
        wk //= 2
    return 1, 1, wk


@functools.lru_cache(maxsize=None)
def _kernel(is_bf16: bool, with_bias: bool):
    names = ["x", "w"] + (["bias"] if with_bias else [])
    header = ("#define IS_BF16\n" if is_bf16 else "") + _HEADER
    bias_add = "sum += static_cast<float>(bias[col]);" if with_bias else ""
    return mx.fast.cuda_kernel(name=f"small_matmul_{'bf16' if is_bf16 else 'f16'}"
                               f"{'_bias' if with_bias else ''}",
                               input_names=names, output_names=["out"],
                               source=_SOURCE.replace("BIAS_ADD", bias_add), header=header)


def small_matmul(x: mx.array, weight: mx.array, bias: mx.array | None = None,
                 out_dtype=None, shape: tuple[int, int, int] | None = None) -> mx.array:
    """x [M, K] @ weight[N, K].T (+ bias [N]) -> [M, N] in `out_dtype` (default x's)."""
    m, k = x.shape
    n = weight.shape[0]
    out_dtype = out_dtype or x.dtype
    nt, wn, wk = shape or launch_shape(m, n, k)
    inputs = [x, weight] + ([bias] if bias is not None else [])
    return _kernel(x.dtype == mx.bfloat16, bias is not None)(
        inputs=inputs,
        template=[("OutT", out_dtype), ("MT", -(-m // 16)), ("NT", nt), ("WN", wn), ("WK", wk)],
        grid=(n // (8 * nt * wn) * wn * wk * 32, 1, 1), threadgroup=(wn * wk * 32, 1, 1),
        output_shapes=[(m, n)], output_dtypes=[out_dtype])[0]
