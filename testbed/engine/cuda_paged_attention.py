"""A fused paged-attention decode kernel for NVIDIA GPUs (`mx.fast.cuda_kernel`).

One thread block per (sequence, KV head) reads the sequence's keys and values straight from
the layer's block pool (keys and values side by side, see `kv_pool.py`) through its block
table -- no gather, no padding, no mask -- and serves all query heads of that KV head (GQA)
from each loaded K/V vector. Each warp walks a strided share of the context, a tile of tokens
at a time, with an online softmax; the warps' partial results are merged in shared memory.
Lane `l` owns elements [l*E, (l+1)*E) of the head dimension (E = head_dim / 32), so a warp
loads one token's K (or V) head vector in a single coalesced read.

A long context with too few (sequence, KV head) blocks to fill the GPU can be split into
parts (flash-decoding): each part's blocks write their normalized output and log-sum-exp,
and a second kernel merges the parts (`splits_for`, off until measured faster).

It must equal the gather-based reference in `paged_attention.py`; `tests/test_paged_kernel.py`
holds them equal on a GPU.
"""
from __future__ import annotations

import functools

import mlx.core as mx

from testbed.model.cuda import available, kernel_name

MIN_WARPS, MAX_WARPS = 4, 16  # per thread block
TARGET_WARPS = 132 * 16  # 16 warps on each SM of an H100/H200: enough loads in flight
SHARED_BYTES = 45_000  # the merge buffers must fit the 48 KB of static shared memory
FILL_BLOCKS = 2 * 132  # thread blocks that give every SM of an H100/H200 two
# Splitting long contexts over several blocks (flash-decoding) when a batch has too few
# (sequence, KV head) blocks to fill the GPU. Its tests pass on an H200; off until a
# long-context decode step has been measured faster with it (profile_steps --split-context).
SPLIT_CONTEXT = False
SPLIT_MIN_TOKENS = 1024

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
    const int split = blockIdx.x % SPLITS;
    const int n = blockIdx.x / (SPLITS * KV);
    const int g = (blockIdx.x / SPLITS) % KV;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int context = context_lens[n];
    const float scale = SCALE;  // a literal: a scalar array would live in managed memory
    const int* table = block_tables + (size_t)n * block_tables_shape[1];
    // This block's share of the context: all of it, or one of SPLITS equal parts of the
    // table's width (a part past a short sequence's end is empty).
    const int part = (block_tables_shape[1] * BS + SPLITS - 1) / SPLITS;
    const int begin = split * part;
    const int end = min(context, begin + part);

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
    for (int t0 = begin + warp * TT; t0 < end; t0 += NW * TT) {
        float kx[TT][E], vx[TT][E];
        #pragma unroll
        for (int u = 0; u < TT; ++u) {
            const int t = min(t0 + u, end - 1);  // past the end: a real token, weighted 0
            // The token's row holds its KV key heads, then its KV value heads.
            const size_t base = (((size_t)table[t / BS] * BS + t % BS) * 2 * KV + g) * D + lane * E;
            load_row<T, E>(kv_pool + base, kx[u]);
            load_row<T, E>(kv_pool + base + KV * D, vx[u]);
        }
        #pragma unroll
        for (int h = 0; h < G; ++h) {
            float score[TT];
            #pragma unroll
            for (int u = 0; u < TT; ++u) {
                score[u] = 0.f;
                #pragma unroll
                for (int e = 0; e < E; ++e) score[u] += qv[h][e] * kx[u][e];
            }
            #pragma unroll
            for (int off = 16; off > 0; off >>= 1)
                #pragma unroll
                for (int u = 0; u < TT; ++u) score[u] += __shfl_xor_sync(0xffffffff, score[u], off);
            float top = m[h];
            #pragma unroll
            for (int u = 0; u < TT; ++u)
                if (t0 + u < end) top = fmaxf(top, score[u]);
            const float correction = __expf(m[h] - top);
            float total = 0.f, pv[E];
            #pragma unroll
            for (int e = 0; e < E; ++e) pv[e] = 0.f;
            #pragma unroll
            for (int u = 0; u < TT; ++u) {
                const float p = t0 + u < end ? __expf(score[u] - top) : 0.f;
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
        STORE
    }
"""

# The whole context in one block per (sequence, KV head): the attention output itself.
_STORE_FINAL = "out[((size_t)n * KV * G + g * G + h) * D + d] = static_cast<T>(value / total);"
# One part of the context: its normalized output and log-sum-exp, for `_MERGE`.
_STORE_PART = """const size_t row = (((size_t)n * KV + g) * SPLITS + split) * G + h;
        part_out[row * D + d] = total > 0.f ? value / total : 0.f;
        if (d == 0) part_lse[row] = total > 0.f ? top + logf(total) : -1e30f;"""

# Combines the parts of each (sequence, query head): softmax weights from their
# log-sum-exps. One thread per output element.
_MERGE = """
    const int splits = part_lse_shape[2];
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int n_seqs = part_lse_shape[0];
    if (idx >= (size_t)n_seqs * KV * G * D) return;
    const int d = idx % D;
    const int head = (idx / D) % (KV * G);
    const int n = idx / ((size_t)D * KV * G);
    const size_t first = (((size_t)n * KV + head / G) * splits) * G + head % G;
    float top = -1e30f;
    for (int s = 0; s < splits; ++s) top = fmaxf(top, part_lse[first + (size_t)s * G]);
    float total = 0.f, value = 0.f;
    for (int s = 0; s < splits; ++s) {
        const float w = __expf(part_lse[first + (size_t)s * G] - top);
        total += w;
        value += w * part_out[(first + (size_t)s * G) * D + d];
    }
    out[idx] = static_cast<T>(value / total);
"""


def supports(head_dim: int) -> bool:
    """Whether decodes of a model with this head size can use the kernel here."""
    return available() and head_dim % 32 == 0


@functools.lru_cache(maxsize=None)
def _kernel(scale: float, split: bool):
    """The kernel with `scale` compiled in (see `testbed.model.cuda`)."""
    source = _SOURCE.replace("SCALE", f"{scale!r}f")
    name = kernel_name("paged_decode_attention", scale)
    if split:
        return mx.fast.cuda_kernel(
            name=name + "_part", input_names=_INPUTS, output_names=["part_out", "part_lse"],
            source=source.replace("STORE", _STORE_PART), header=_HEADER)
    return mx.fast.cuda_kernel(
        name=name, input_names=_INPUTS, output_names=["out"],
        source=source.replace("STORE", _STORE_FINAL).replace("SPLITS", "1"), header=_HEADER)


_INPUTS = ["q", "kv_pool", "block_tables", "context_lens"]


@functools.lru_cache(maxsize=None)
def _merge_kernel():
    return mx.fast.cuda_kernel(name="paged_decode_attention_merge",
                               input_names=["part_out", "part_lse"], output_names=["out"],
                               source=_MERGE)


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


def splits_for(sequences: int, kv_heads: int, width_tokens: int) -> int:
    """Parts to split each context into (1: none). Only with SPLIT_CONTEXT, for contexts of
    SPLIT_MIN_TOKENS or more whose (sequence, KV head) blocks leave SMs idle: enough parts
    to bring the grid to FILL_BLOCKS, each at least SPLIT_MIN_TOKENS / 2 long, rounded down
    to a power of two."""
    blocks = sequences * kv_heads
    if not SPLIT_CONTEXT or width_tokens < SPLIT_MIN_TOKENS or blocks >= FILL_BLOCKS:
        return 1
    parts = max(1, min(-(-FILL_BLOCKS // blocks), width_tokens // (SPLIT_MIN_TOKENS // 2)))
    return 1 << (parts.bit_length() - 1)  # a power of two: few kernel instantiations


def paged_decode_attention(q: mx.array, kv_pool: mx.array, block_tables: mx.array,
                           context_lens: mx.array, scale: float,
                           splits: int | None = None) -> mx.array:
    """q [N, heads, D]; kv_pool [blocks, block_size, 2 * kv_heads, D] (key heads, then value
    heads); block_tables [N, max_blocks]
    int32; context_lens [N] int32 (keys to attend, the new token's included) -> [N, heads, D].
    `splits` parts per context (default `splits_for`): each part's blocks attend over their
    share, and a second kernel merges the parts."""
    n, heads, dim = q.shape
    block_size, kv_heads = kv_pool.shape[1], kv_pool.shape[2] // 2
    if dim % 32:
        raise ValueError(f"paged decode kernel needs head_dim % 32 == 0, got {dim}")
    group = heads // kv_heads
    if splits is None:
        splits = splits_for(n, kv_heads, block_tables.shape[1] * block_size)
    blocks = n * kv_heads * splits
    warps = _warps(blocks, group, dim)
    template = [("T", q.dtype), ("G", group), ("D", dim), ("KV", kv_heads),
                ("BS", block_size), ("NW", warps), ("TT", _tile(dim))]
    inputs = [q, kv_pool, block_tables, context_lens]
    launch = dict(grid=(blocks * warps * 32, 1, 1), threadgroup=(warps * 32, 1, 1))
    if splits == 1:
        return _kernel(float(scale), False)(
            inputs=inputs, template=template, output_shapes=[q.shape],
            output_dtypes=[q.dtype], **launch)[0]
    part_out, part_lse = _kernel(float(scale), True)(
        inputs=inputs, template=template + [("SPLITS", splits)],
        output_shapes=[(n, kv_heads, splits, group, dim), (n, kv_heads, splits, group)],
        output_dtypes=[mx.float32, mx.float32], **launch)
    total = n * heads * dim
    return _merge_kernel()(
        inputs=[part_out, part_lse],
        template=[("T", q.dtype), ("G", group), ("D", dim), ("KV", kv_heads)],
        grid=(-(-total // 256) * 256, 1, 1), threadgroup=(256, 1, 1),
        output_shapes=[q.shape], output_dtypes=[q.dtype])[0]
