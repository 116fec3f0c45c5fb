"""A fused paged-attention decode kernel for NVIDIA GPUs (`mx.fast.cuda_kernel`).

One thread block per (sequence, KV head) reads the sequence's keys and values straight from
the block pool through its block table -- no gather, no padding, no mask -- and serves all
query heads of that KV head (GQA) from each loaded K/V vector. Each warp walks a strided share
of the context with an online softmax; the warps' partial results are merged in shared memory.
Lane `l` owns elements [l*E, (l+1)*E) of the head dimension (E = head_dim / 32), so a warp
loads one token's K (or V) head vector in a single coalesced read.

It must equal the gather-based reference in `paged_attention.py`; `tests/test_paged_kernel.py`
holds them equal on a GPU.
"""
from __future__ import annotations

import functools

import mlx.core as mx

from testbed.model.cuda_matmul import available  # the one CUDA check

WARPS = 4  # per thread block when the batch has blocks enough to fill the GPU
MAX_WARPS = 16  # a small batch (one sequence: one block per KV head) splits its context finer
FILL_BLOCKS = 132  # thread blocks that occupy every SM of an H100/H200 once
SHARED_BYTES = 45_000  # the merge buffers must fit the 48 KB of static shared memory

_SOURCE = """
    constexpr int E = D / 32;
    const int n = blockIdx.x / KV;
    const int g = blockIdx.x % KV;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int context = context_lens[n];
    const float scale = scale_in[0];

    float qv[G][E], acc[G][E], m[G], l[G];
    for (int h = 0; h < G; ++h) {
        const size_t q_base = ((size_t)n * KV * G + g * G + h) * D + lane * E;
        for (int e = 0; e < E; ++e) {
            qv[h][e] = static_cast<float>(q[q_base + e]) * scale;
            acc[h][e] = 0.f;
        }
        m[h] = -1e30f;
        l[h] = 0.f;
    }
    for (int t = warp; t < context; t += NW) {
        const int block = block_tables[(size_t)n * block_tables_shape[1] + t / BS];
        const size_t base = (((size_t)block * BS + t % BS) * KV + g) * D + lane * E;
        float kx[E], vx[E];
        for (int e = 0; e < E; ++e) {
            kx[e] = static_cast<float>(k_pool[base + e]);
            vx[e] = static_cast<float>(v_pool[base + e]);
        }
        for (int h = 0; h < G; ++h) {
            float s = 0.f;
            for (int e = 0; e < E; ++e) s += qv[h][e] * kx[e];
            for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffff, s, off);
            const float m_new = fmaxf(m[h], s);
            const float correction = __expf(m[h] - m_new);
            const float p = __expf(s - m_new);
            l[h] = l[h] * correction + p;
            for (int e = 0; e < E; ++e) acc[h][e] = acc[h][e] * correction + p * vx[e];
            m[h] = m_new;
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
def _kernel():
    return mx.fast.cuda_kernel(
        name="paged_decode_attention",
        input_names=["q", "k_pool", "v_pool", "block_tables", "context_lens", "scale_in"],
        output_names=["out"], source=_SOURCE)


@functools.lru_cache(maxsize=8)
def _scalar(value: float) -> mx.array:
    return mx.array([value], dtype=mx.float32)


def _warps(blocks: int, group: int, dim: int) -> int:
    """Warps per block: WARPS once the blocks fill the GPU; for fewer blocks (small batches,
    which would leave most SMs idle) as many as the merge buffers allow, up to MAX_WARPS."""
    if blocks >= FILL_BLOCKS:
        return WARPS
    fit = SHARED_BYTES // (4 * group * (dim + 2))
    return max(WARPS, min(MAX_WARPS, 1 << (fit.bit_length() - 1)))


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
    return _kernel()(
        inputs=[q, k_pool, v_pool, block_tables, context_lens, _scalar(scale)],
        template=[("T", q.dtype), ("G", heads // kv_heads), ("D", dim), ("KV", kv_heads),
                  ("BS", block_size), ("NW", warps)],
        grid=(n * kv_heads * warps * 32, 1, 1), threadgroup=(warps * 32, 1, 1),
        output_shapes=[q.shape], output_dtypes=[q.dtype])[0]
