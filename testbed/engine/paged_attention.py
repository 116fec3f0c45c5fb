"""Paged attention over the KV pool, for one step's flattened mixed batch.

The step's tokens are laid out decodes first (one token each), then prefill chunks. Each
layer writes its new K/V into the pool at the tokens' slots, then attends: all decodes in one
batched call over their gathered block tables (padded, masked past each context length), and
each prefill chunk over its own gathered context with a causal mask aligned to the end (the
chunk's queries see every earlier token and themselves). This is the gather-based reference;
it is what a fused kernel must equal.
"""
from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from testbed.engine.kv_pool import PagedKVPool


@dataclass(slots=True)
class PrefillSegment:
    start: int  # first row of the chunk in the flattened batch
    length: int  # tokens in the chunk
    context_len: int  # tokens in the cache after this step (earlier + chunk)
    block_table: mx.array  # [ceil(context_len / block_size)] int32


@dataclass(slots=True)
class BatchLayout:
    slots: mx.array  # [T] int32: pool slot of each new token
    num_decodes: int
    decode_block_tables: mx.array | None  # [num_decodes, max_blocks] int32 (padded with 0)
    decode_mask: mx.array | None  # [num_decodes, 1, 1, max_blocks * block_size] bool
    prefills: list[PrefillSegment]

    @classmethod
    def build(cls, slots: np.ndarray, decode_tables: list[list[int]], decode_lens: list[int],
              prefills: list[tuple[int, int, int, list[int]]], block_size: int) -> "BatchLayout":
        tables = mask = None
        if decode_tables:
            width = max(len(t) for t in decode_tables)
            padded = np.zeros((len(decode_tables), width), dtype=np.int32)
            for i, t in enumerate(decode_tables):
                padded[i, :len(t)] = t
            keep = np.arange(width * block_size)[None, :] < np.asarray(decode_lens)[:, None]
            tables = mx.array(padded)
            mask = mx.array(keep[:, None, None, :])
        segments = [PrefillSegment(start, n, ctx, mx.array(np.asarray(table, dtype=np.int32)))
                    for start, n, ctx, table in prefills]
        return cls(mx.array(slots.astype(np.int32)), len(decode_tables), tables, mask, segments)


class PagedAttention:
    """The model's attention backend for one step (see testbed.model's AttentionFn)."""

    def __init__(self, pool: PagedKVPool, layout: BatchLayout, attend, scale: float):
        self.pool, self.layout, self.attend, self.scale = pool, layout, attend, scale

    def __call__(self, layer: int, q: mx.array, k: mx.array, v: mx.array) -> mx.array:
        lay = self.layout
        k_pool, v_pool = self.pool.write(layer, lay.slots, k, v)
        outputs = []
        if lay.num_decodes:
            nd = lay.num_decodes
            keys = _gather(k_pool, lay.decode_block_tables)
            values = _gather(v_pool, lay.decode_block_tables)
            queries = q[:nd][:, :, None, :]  # [nd, heads, 1, dim]
            out = self.attend(queries, keys, values, lay.decode_mask, self.scale)
            outputs.append(out[:, :, 0, :])
        for seg in lay.prefills:
            keys = _gather(k_pool, seg.block_table[None])[:, :, :seg.context_len]
            values = _gather(v_pool, seg.block_table[None])[:, :, :seg.context_len]
            queries = q[seg.start:seg.start + seg.length].transpose(1, 0, 2)[None]
            out = self.attend(queries, keys, values, "causal", self.scale)
            outputs.append(out[0].transpose(1, 0, 2))
        return outputs[0] if len(outputs) == 1 else mx.concatenate(outputs, axis=0)


def _gather(pool: mx.array, tables: mx.array) -> mx.array:
    """[blocks, size, kv_heads, dim] pool + [B, nb] tables -> [B, kv_heads, nb * size, dim]."""
    b, nb = tables.shape
    g = pool[tables]  # [B, nb, size, kv_heads, dim]
    g = g.reshape(b, nb * pool.shape[1], pool.shape[2], pool.shape[3])
    return g.transpose(0, 2, 1, 3)
