"""A contiguous KV cache for a fixed batch of sequences: the attention backend of `generate`.

Each layer keeps K and V buffers [B, n_kv_heads, capacity, head_dim]; sequence b's tokens
sit at [b, :, 0:length_b]. A step first declares how many new tokens each sequence brings
(`prepare`): a whole prompt, a chunk, one decode token, or none. The model's flattened batch
then holds those tokens sequence by sequence, and every layer's call writes its K/V at the
tokens' positions and attends over a padded [B, heads, L, S] view whose mask lets query i of
sequence b see exactly keys 0..start_b + i of its own sequence, as if it ran alone.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from testbed.model.config import ModelConfig
from testbed.model.kernels import Kernels, attention
from testbed.model.qwen2 import DTYPES, Qwen2Model

_GROW = 256  # buffers grow in multiples of this many tokens


@dataclass(slots=True)
class _StepLayout:
    """Where this step's flattened tokens go and how they attend (built on the host)."""

    write_seq: mx.array  # [T] sequence of each new token
    write_pos: mx.array  # [T] its position in that sequence
    active: mx.array | None  # sequences with new tokens, None when all have some
    kv_len: int  # keys in the attention view: the longest active sequence after the step
    query_len: int  # queries per sequence in the padded view: the most new tokens
    query_rows: mx.array | None  # [B', L] row of T feeding each padded query; None = reshape
    output_rows: mx.array | None  # [T] row of the flattened [B' * L] output for each token
    mask: mx.array | str | None


class ContiguousKVCache:
    """AttentionFn over per-layer contiguous K/V buffers for `batch_size` sequences."""

    def __init__(self, config: ModelConfig, batch_size: int, *, dtype: str = "float32",
                 kernels: Kernels = "fast", capacity: int = _GROW):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        self.config = config
        self.batch_size = batch_size
        self.kernels = kernels
        self.scale = config.head_dim ** -0.5
        self.lengths = [0] * batch_size
        shape = (batch_size, config.num_key_value_heads, _round_up(max(capacity, 1)),
                 config.head_dim)
        self.keys = [mx.zeros(shape, DTYPES[dtype]) for _ in range(config.num_hidden_layers)]
        self.values = [mx.zeros(shape, DTYPES[dtype]) for _ in range(config.num_hidden_layers)]
        self._layout: _StepLayout | None = None

    @classmethod
    def for_model(cls, model: Qwen2Model, batch_size: int, capacity: int = _GROW
                  ) -> "ContiguousKVCache":
        return cls(model.config, batch_size, dtype=model.dtype, kernels=model.kernels,
                   capacity=capacity)

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def prepare(self, num_new: Sequence[int]) -> mx.array:
        """Declare the next forward: sequence b brings `num_new[b]` tokens (0 = skip it).
        Returns the positions [T] of the flattened batch and advances the lengths."""
        if len(num_new) != self.batch_size:
            raise ValueError(f"num_new has {len(num_new)} entries for a batch of "
                             f"{self.batch_size} sequences")
        if any(n < 0 for n in num_new) or not any(num_new):
            raise ValueError(f"num_new={list(num_new)}: counts must be >= 0, not all zero")
        starts = np.asarray(self.lengths, dtype=np.int64)
        counts = np.asarray(num_new, dtype=np.int64)
        ends = starts + counts
        self._ensure_capacity(int(ends.max()))
        seq = np.repeat(np.arange(self.batch_size), counts)
        positions = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)])
        self._layout = _build_layout(seq, positions, starts, counts)
        self.lengths = ends.tolist()
        return mx.array(positions.astype(np.int32))

    def __call__(self, layer: int, q: mx.array, kv: mx.array) -> mx.array:
        lay = self._layout
        if lay is None:
            raise RuntimeError("ContiguousKVCache: call prepare() before the model's forward")
        kv_heads = self.config.num_key_value_heads
        k, v = kv[:, :kv_heads], kv[:, kv_heads:]
        self.keys[layer][lay.write_seq, :, lay.write_pos] = k
        self.values[layer][lay.write_seq, :, lay.write_pos] = v
        keys = self.keys[layer][:, :, :lay.kv_len]
        values = self.values[layer][:, :, :lay.kv_len]
        if lay.active is not None:
            keys, values = keys[lay.active], values[lay.active]
        n_heads, dim = q.shape[1], q.shape[2]
        if lay.query_rows is None:
            queries = q.reshape(-1, lay.query_len, n_heads, dim)
        else:
            queries = q[lay.query_rows]
        out = attention(queries.transpose(0, 2, 1, 3), keys, values, lay.mask, self.scale,
                        self.kernels)
        out = out.transpose(0, 2, 1, 3).reshape(-1, n_heads, dim)
        return out if lay.output_rows is None else out[lay.output_rows]

    def arrays(self) -> list[mx.array]:
        """The cache buffers, to evaluate together with a step's outputs."""
        return self.keys + self.values

    def _ensure_capacity(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        extra = _round_up(needed) - self.capacity

        def grow(buf: mx.array) -> mx.array:
            pad = mx.zeros((buf.shape[0], buf.shape[1], extra, buf.shape[3]), buf.dtype)
            return mx.concatenate([buf, pad], axis=2)

        self.keys = [grow(b) for b in self.keys]
        self.values = [grow(b) for b in self.values]


def _build_layout(seq: np.ndarray, positions: np.ndarray, starts: np.ndarray,
                  counts: np.ndarray) -> _StepLayout:
    active = np.flatnonzero(counts)
    active_arr = None if len(active) == len(counts) else mx.array(active.astype(np.int32))
    starts, counts = starts[active], counts[active]
    ends = starts + counts
    kv_len, query_len = int(ends.max()), int(counts.max())
    rectangular = (counts == query_len).all()
    if rectangular and (starts == starts[0]).all() and ends[0] == kv_len:
        # Every sequence has the same history: the end-aligned causal mask is exact.
        mask = "causal" if query_len > 1 else None
    else:
        query_pos = starts[:, None] + np.arange(query_len)[None, :]  # [B', L]
        key_pos = np.arange(kv_len)
        keep = (key_pos[None, None, :] <= query_pos[:, :, None]) & (
            key_pos[None, None, :] < ends[:, None, None])
        mask = mx.array(keep[:, None])  # [B', 1, L, S]
    query_rows = output_rows = None
    if not rectangular:
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        within = np.minimum(np.arange(query_len)[None, :], counts[:, None] - 1)
        query_rows = mx.array((offsets[:, None] + within).astype(np.int32))
        output_rows = mx.array(np.concatenate(
            [b * query_len + np.arange(n) for b, n in enumerate(counts)]).astype(np.int32))
    return _StepLayout(mx.array(seq.astype(np.int32)), mx.array(positions.astype(np.int32)),
                       active_arr, kv_len, query_len, query_rows, output_rows, mask)


def _round_up(n: int) -> int:
    return -(-n // _GROW) * _GROW
