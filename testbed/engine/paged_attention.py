"""Paged attention over the KV pool, for one step's flattened mixed batch.

The step's tokens are laid out decodes first (one token each), then prefill chunks. Each
layer writes its new keys and values (one [T, 2 * kv_heads, D] array) into the pool at the
tokens' slots, then attends:
- decodes: all in one call. On an NVIDIA GPU a fused kernel reads the pool through the block
  tables (`cuda_paged_attention.py`); elsewhere the reference gathers each sequence's blocks
  (tables padded to a bucketed width, masked past each context length) for one batched call.
  `pool` is anything with `write(layer, slots, kv) -> layer's pool`: the KV pool, or the
  traced pool arrays of the compiled decode step.
- prefill chunks that start a sequence (no cached context): their K/V are this step's own, so
  they need no pool read. Chunks of similar length are right-padded into one batch and run
  with a causal mask, which keeps every real query away from the padding keys after it.
- other chunks (continuing a prompt, after a prefix-cache hit or a preemption): each attends
  over its gathered context with a causal mask aligned to the end.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from testbed.engine import cuda_paged_attention
from testbed.engine.kv_pool import PagedKVPool

MIN_TABLE_WIDTH = 8  # the compiled decode step pads block tables to a power of two >= this
PAD_SLACK = 1.5  # batch fresh prefills while padded tokens <= slack * real tokens


@dataclass(slots=True)
class ContextChunk:
    """A prefill chunk that attends over cached context: rows [start, start + length)."""

    start: int
    length: int
    context_len: int  # tokens in the cache after this step (earlier + chunk)
    block_table: mx.array  # [ceil(context_len / block_size)] int32


@dataclass(slots=True)
class FreshGroup:
    """Prefill chunks that start their sequences, batched: `rows` [n, width] indexes the
    flattened batch (padding repeats a chunk's last row); `keep` [real tokens] indexes the
    flattened [n * width] output back to the batch order of `starts`."""

    rows: mx.array
    keep: mx.array
    chunks: list[tuple[int, int]]  # (first row, length) of each chunk, in group order


@dataclass(slots=True)
class BatchLayout:
    slots: mx.array  # [T] int32: pool slot of each new token
    num_decodes: int
    decode_tables: mx.array | None  # [num_decodes, width] int32 (padded with block 0)
    decode_lens: mx.array | None  # [num_decodes] int32: keys each decode attends to
    fresh: list[FreshGroup]
    chunks: list[ContextChunk]
    fused_decode: bool
    order: mx.array | None  # rows of the attention parts back in batch order (None: in order)

    @classmethod
    def build(cls, slots: np.ndarray, decode_tables: list[np.ndarray], decode_lens: list[int],
              prefills: list[tuple[int, int, int, np.ndarray]], fused: bool = False) -> "BatchLayout":
        """`prefills`: (first row, chunk length, context length after the step, block table);
        `fused`: decode with the CUDA kernel (see `cuda_paged_attention.supports`)."""
        tables = lens = None
        if decode_tables:
            tables = mx.array(pad_tables(decode_tables, bucket=1))  # no padded keys to attend
            lens = mx.array(np.asarray(decode_lens, dtype=np.int32))
        fresh = _fresh_groups([(start, n) for start, n, ctx, _ in prefills if ctx == n])
        chunks = [ContextChunk(start, n, ctx, mx.array(table.astype(np.int32)))
                  for start, n, ctx, table in prefills if ctx != n]
        parts = [(0, len(decode_tables))] + [c for g in fresh for c in g.chunks] + \
            [(c.start, c.length) for c in chunks]
        order = np.concatenate([np.arange(start, start + n) for start, n in parts]) \
            if prefills else None  # decodes only: already in batch order
        inverse = None
        if order is not None and not np.array_equal(order, np.arange(len(order))):
            inverse = np.empty(len(order), dtype=np.int32)
            inverse[order] = np.arange(len(order), dtype=np.int32)
            inverse = mx.array(inverse)
        return cls(mx.array(slots.astype(np.int32)), len(decode_tables), tables, lens,
                   fresh, chunks, fused, inverse)

    @classmethod
    def decodes(cls, slots: mx.array, tables: mx.array, lens: mx.array, fused: bool) -> "BatchLayout":
        """A batch of decodes only (what the compiled decode step runs)."""
        return cls(slots, slots.shape[0], tables, lens, [], [], fused, None)


def pad_tables(tables: list, rows: int | None = None, fill: int = 0,
               bucket: int | None = None) -> np.ndarray:
    """Block tables (lists or arrays of block ids) as one int32 array [rows, width], extra
    rows and columns `fill`. The width is rounded up to a multiple of `bucket`, or by default
    to a power of two (at least MIN_TABLE_WIDTH): a compiled step traces once per width (~40
    ms for Qwen2-0.5B on a 2-core host), so contexts that grow through a long run cost a few
    traces, not one every few blocks."""
    lengths = np.fromiter(map(len, tables), dtype=np.int64, count=len(tables))
    longest = int(lengths.max())
    if bucket is None:
        width = max(MIN_TABLE_WIDTH, 1 << (longest - 1).bit_length())
    else:
        width = -(-longest // bucket) * bucket
    out = np.full((rows or len(tables), width), fill, dtype=np.int32)
    # One pass over every id (this runs each decode step: ~2x faster than padding lists).
    ids = np.fromiter(itertools.chain.from_iterable(tables), dtype=np.int32,
                      count=int(lengths.sum()))
    out[:len(tables)][np.arange(width) < lengths[:, None]] = ids
    return out


def _fresh_groups(fresh: list[tuple[int, int]]) -> list[FreshGroup]:
    """Group (start row, length) chunks, longest first, so padding stays within PAD_SLACK."""
    groups, current = [], []
    for start, n in sorted(fresh, key=lambda c: -c[1]):
        real = sum(length for _, length in current) + n
        if current and (len(current) + 1) * current[0][1] > PAD_SLACK * real:
            groups.append(current)
            current = []
        current.append((start, n))
    if current:
        groups.append(current)
    out = []
    for group in groups:
        width = group[0][1]
        rows = np.array([[start + min(j, n - 1) for j in range(width)] for start, n in group],
                        dtype=np.int32)
        keep = np.concatenate([i * width + np.arange(n) for i, (_, n) in enumerate(group)])
        out.append(FreshGroup(mx.array(rows), mx.array(keep.astype(np.int32)), group))
    return out


class PagedAttention:
    """The model's attention backend for one step (see testbed.model's AttentionFn)."""

    def __init__(self, pool: PagedKVPool, layout: BatchLayout, attend, scale: float):
        self.pool, self.layout, self.attend, self.scale = pool, layout, attend, scale
        self._decode_mask = None  # the same for every layer: built once per step

    def __call__(self, layer: int, q: mx.array, kv: mx.array) -> mx.array:
        lay = self.layout
        pool = self.pool.write(layer, lay.slots, kv)
        parts = []
        if lay.num_decodes:
            parts.append(self._decode(q[:lay.num_decodes], pool))
        for group in lay.fresh:
            parts.append(self._fresh(group, q, kv))
        for chunk in lay.chunks:
            parts.append(self._chunk(chunk, q, pool))
        out = parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=0)
        return out if lay.order is None else out[lay.order]

    def _decode(self, q, pool):
        lay = self.layout
        if lay.fused_decode:
            return cuda_paged_attention.paged_decode_attention(
                q, pool, lay.decode_tables, lay.decode_lens, self.scale)
        keys, values = gather_kv(pool, lay.decode_tables)
        if self._decode_mask is None:
            mask = mx.arange(keys.shape[2])[None, :] < lay.decode_lens[:, None]
            self._decode_mask = mask[:, None, None, :]
        out = self.attend(q[:, :, None, :], keys, values, self._decode_mask, self.scale)
        return out[:, :, 0, :]

    def _fresh(self, group: FreshGroup, q, kv):
        # [n, width, heads, dim] -> [n, heads, width, dim]
        qs, kvs = (x[group.rows].transpose(0, 2, 1, 3) for x in (q, kv))
        kv_heads = kv.shape[1] // 2
        ks, vs = kvs[:, :kv_heads], kvs[:, kv_heads:]
        out = self.attend(qs, ks, vs, "causal", self.scale).transpose(0, 2, 1, 3)
        return out.reshape(-1, *out.shape[2:])[group.keep]

    def _chunk(self, chunk: ContextChunk, q, pool):
        keys, values = gather_kv(pool, chunk.block_table[None], chunk.context_len)
        queries = q[chunk.start:chunk.start + chunk.length].transpose(1, 0, 2)[None]
        out = self.attend(queries, keys, values, "causal", self.scale)
        return out[0].transpose(1, 0, 2)


def gather_kv(pool: mx.array, tables: mx.array, length: int | None = None
              ) -> tuple[mx.array, mx.array]:
    """A layer's pool [blocks, size, 2 * kv_heads, dim] read through block tables [B, nb]:
    keys and values [B, kv_heads, nb * size (or the first `length`), dim]."""
    b, nb = tables.shape
    g = pool[tables]  # [B, nb, size, 2 * kv_heads, dim]
    g = g.reshape(b, nb * pool.shape[1], pool.shape[2], pool.shape[3]).transpose(0, 2, 1, 3)
    if length is not None:
        g = g[:, :, :length]
    kv_heads = pool.shape[2] // 2
    return g[:, :kv_heads], g[:, kv_heads:]
