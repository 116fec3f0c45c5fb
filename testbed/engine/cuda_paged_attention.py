"""A fused paged-attention decode kernel for NVIDIA GPUs (`mx.fast.cuda_kernel`).

One thread block per (sequence, KV head) reads the sequence's keys and values straight from
the block pool through its block table -- no gather, no padding, no mask -- and serves all
query heads of that KV head (GQA) from each loaded K/V vector. Each warp walks a strided share
of the context, a tile of tokens at a time, with an online softmax; the warps' partial results
are merged in shared memory.
Lane `l` owns elements [l*E, (l+1)*E) of the head dimension (E = head_dim / 32), so a warp
loads one token's K (or V) head vector in a single coalesced read.

It must equal the gather-based reference in `paged_attention.py`; `tests/test_paged_kernel.py`
holds them equal on a GPU.
"""
from __future__ import annotations

import functools
import struct

import mlx.core as mx

from testbed.model.cuda_matmul import available  # the one CUDA check

MIN_WARPS, MAX_WARPS = 4, 16  # per thread block
TARGET_WARPS = 132 * 16  # 16 warps on each SM of an H100/H200: enough loads in flight
SHARED_BYTES = 45_000  # the merge buffers must fit the 48 KB of static shared memory

_HEADER = """
// E consecutive elements of a K or V head vector, as floats, in one load where they fill 4, 8
// or 16 bytes.
template <typename T, int E>
__device__ __forceinline__ void load_row(const T* p, float* out) {
    constexpr int BYTES = E * sizeof(T);
    if (BYTES == 16) {
        const uint4 r = *reinterpret_cast<const uint4*>(p);
        const T* h = reinterpret_cast<const T*>(&r);
        for (int e = 0; e < E; ++e) out[e] = static_cast<float>(h[e]);
    } else if (BYTES == 8) {
        const uint2 r = *reinterpret_cast<const uint2*>(p);
        const T* h = reinterpret_cast<const T*>(&r);
        for (int e = 0; e < E; ++e) out[e] = static_cast<float>(h[e]);
    } else if (BYTES == 4) {
        const unsigned r = *reinterpret_cast<const unsigned*>(p);
        const T* h = reinterpret_cast<const T*>(&r);
        for (int e = 0; e < E; ++e) out[e] = static_cast<float>(h[e]);
    } else {
        for (int e = 0; e < E; ++e) out[e] = static_cast<float>(p[e]);
    }
}
"""

_SOURCE = """
    constexpr int E = D / 32;
    const int n = blockIdx.x / KV;
    const int g = blockIdx.x % KV;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int context = context_lens[n];
    const float scale = SCALE;  // a literal: a scalar array would live in managed memory
    const int* table = block_tables + (size_t)n * block_tables_shape[1];

    float qv[G][E], acc[G][E], m[G], l[G];
    #pragma unroll
    for (int h = 0; h < G; ++h) {
        const size_t q_base = ((size_t)n * KV * G + g * G + h) * D + lane * E;
        #pragma unroll
        for (int e = 0; e < E; ++e) {
            qv[h][e] = static_cast<float>(q[q_base + e]) * scale;
            acc[h][e] = 0.f;
        }
        m[h] = -1e30f;
        l[h] = 0.f;
    }
    // Each warp takes TT tokens at a time: their loads are in flight together, and the
    // running softmax is rescaled once per tile rather than once per token.
    for (int t0 = warp * TT; t0 < context; t0 += NW * TT) {
        float kx[TT][E], vx[TT][E];
        #pragma unroll
        for (int u = 0; u < TT; ++u) {
            const int t = min(t0 + u, context - 1);  // past the end: a real token, weighted 0
            const size_t base = (((size_t)table[t / BS] * BS + t % BS) * KV + g) * D + lane * E;
            load_row<T, E>(k_pool + base, kx[u]);
            load_row<T, E>(v_pool + base, vx[u]);
        }
        #pragma unroll
        for (int h = 0; h < G; ++h) {
            float s[TT];
            #pragma unroll
            for (int u = 0; u < TT; ++u) {
                s[u] = 0.f;
                #pragma unroll
                for (int e = 0; e < E; ++e) s[u] += qv[h][e] * kx[u][e];
            }
            #pragma unroll
            for (int off = 16; off > 0; off >>= 1)
                #pragma unroll
                for (int u = 0; u < TT; ++u) s[u] += __shfl_xor_sync(0xffffffff, s[u], off);
            float top = m[h];
            #pragma unroll
            for (int u = 0; u < TT; ++u)
                if (t0 + u < context) top = fmaxf(top, s[u]);
            const float correction = __expf(m[h] - top);
            float total = 0.f, pv[E];
            #pragma unroll
            for (int e = 0; e < E; ++e) pv[e] = 0.f;
            #pragma unroll
            for (int u = 0; u < TT; ++u) {
                const float p = t0 + u < context ? __expf(s[u] - top) : 0.f;
                total += p;
                #pragma unroll
                for (int e = 0; e < E; ++e) pv[e] += p * vx[u][e];
            }
            l[h] = l[h] * correction + total;
            #pragma unroll
            for (int e = 0; e < E; ++e) acc[h][e] = acc[h][e] * correction + pv[e];
            m[h] = top;
        }
    }
    __shared__ float sm_m[NW][G];
    __shared__ float sm_l[NW][G];
    __shared__ float sm_acc[NW][G][D];
    for (int h = 0; h < G; ++h) {
        if (lane == 0) { sm_m[warp][h] = m[h]; sm_l[warp][h] = l[h]; }
        for (int e = 0; e < E; ++e) sm_acc[warp][h][lane * E + e] = acc[h][e];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < G * D; i += NW * 32) {
        const int h = i / D, d = i % D;
        float top = -1e30f;
        for (int w = 0; w < NW; ++w) top = fmaxf(top, sm_m[w][h]);
        float total = 0.f, value = 0.f;
        for (int w = 0; w < NW; ++w) {
            const float f = __expf(sm_m[w][h] - top);
            total += sm_l[w][h] * f;
            value += sm_acc[w][h][d] * f;
        }
        out[((size_t)n * KV * G + g * G + h) * D + d] = static_cast<T>(value / total);
    }
"""


def supports(head_dim: int) -> bool:
    """Whether decodes of a model with this head size can use the kernel here."""
    return available() and head_dim % 32 == 0


@functools.lru_cache(maxsize=None)
def _kernel(scale: float):
    """The kernel with `scale` compiled in: a one-element array would be host-written
    managed memory, which each GPU read can fault back in (measured: several us a call)."""
    return mx.fast.cuda_kernel(
        name=f"paged_decode_attention_{struct.pack('<f', scale).hex()}",  # one per scale
        input_names=["q", "k_pool", "v_pool", "block_tables", "context_lens"],
        output_names=["out"], source=_SOURCE.replace("SCALE", f"{scale!r}f"), header=_HEADER)


def _warps(blocks: int, group: int, dim: int) -> int:
    """Warps per block (a power of two): as many as bring the grid to TARGET_WARPS, so a
    small batch (one sequence: one block per KV head) splits its context finer, within
    MIN_WARPS..MAX_WARPS and what the merge buffers' shared memory allows."""
    fit = SHARED_BYTES // (4 * group * (dim + 2))
    warps = max(1, min(max(MIN_WARPS, TARGET_WARPS // blocks), fit, MAX_WARPS))
    return 1 << (warps.bit_length() - 1)


def _tile(dim: int) -> int:
    """Tokens a warp loads at once: 8, or 4 for 128-wide heads (register pressure)."""
    return 8 if dim <= 64 else 4


def paged_decode_attention(q: mx.array, k_pool: mx.array, v_pool: mx.array,
                           block_tables: mx.array, context_lens: mx.array,
                           scale: float) -> mx.array:
    """q [N, heads, D]; pools [blocks, block_size, kv_heads, D]; block_tables [N, max_blocks]
    int32; context_lens [N] int32 (keys to attend, the new token's included) -> [N, heads, D]."""
    n, heads, dim = q.shape
    _, block_size, kv_heads, _ = k_pool.shape
    if dim % 32:
        raise ValueError(f"paged decode kernel needs head_dim % 32 == 0, got {dim}")
    warps = _warps(n * kv_heads, heads // kv_heads, dim)
    return _kernel(float(scale))(
        inputs=[q, k_pool, v_pool, block_tables, context_lens],
        template=[("T", q.dtype), ("G", heads // kv_heads), ("D", dim), ("KV", kv_heads),
                  ("BS", block_size), ("NW", warps), ("TT", _tile(dim))],
        grid=(n * kv_heads * warps * 32, 1, 1), threadgroup=(warps * 32, 1, 1),
        output_shapes=[q.shape], output_dtypes=[q.dtype])[0]
