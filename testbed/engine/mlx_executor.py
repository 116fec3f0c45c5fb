"""The real engine: runs a StepPlan through the raw-MLX Qwen2 model over the paged KV pool.

One model call per step over the mixed batch (decodes and prefill chunks together), sampling
on device, one `mx.eval` per step. Prefix-cache hits need nothing here: the scheduler starts
such a sequence at `num_computed_tokens = hit`, so those tokens are simply never computed.
"""
from __future__ import annotations

import time

import mlx.core as mx
import numpy as np

from testbed.engine import cuda_paged_attention
from testbed.engine.kv_pool import PagedKVPool
from testbed.engine.paged_attention import BatchLayout, PagedAttention
from testbed.plan import ScheduledSeq, StepPlan, StepResult


class MLXExecutor:
    def __init__(self, model, pool: PagedKVPool, sampler):
        self.model = model
        self.pool = pool
        self.sampler = sampler
        self.block_size = pool.block_size
        self.fused_decode = cuda_paged_attention.supports(model.config.head_dim)

    def execute(self, plan: StepPlan) -> StepResult:
        t0 = time.perf_counter()
        self.pool.swap_out(plan.swap_out)
        self.pool.swap_in(plan.swap_in)
        if not plan.scheduled:
            return StepResult({}, time.perf_counter() - t0)
        # Decodes first, then prefill chunks: decodes attend in one batched call.
        order = sorted(plan.scheduled, key=lambda s: s.num_new_tokens > 1)
        tokens, positions, layout, samplers = self._layout(order)
        logits_rows = mx.array(np.asarray([row for row, _ in samplers], dtype=np.int32))
        attention = PagedAttention(self.pool, layout, self.model.attend, self.model.scale)
        t1 = time.perf_counter()
        logits = self.model(mx.array(tokens), mx.array(positions), attention,
                            logits_indices=logits_rows)
        if samplers:  # a step of mid-prompt chunks only fills the cache
            sampled = self.sampler([s.seq for _, s in samplers], logits)
            mx.eval(sampled, *self.pool.arrays())
        else:
            sampled = mx.array([], dtype=mx.int32)
            mx.eval(logits, *self.pool.arrays())
        t2 = time.perf_counter()
        ids = sampled.tolist()
        out = {s.seq.seq_id: int(t) for (_, s), t in zip(samplers, ids)}
        t3 = time.perf_counter()
        return StepResult(out, seconds=t3 - t0, host_seconds=(t1 - t0) + (t3 - t2),
                          device_seconds=t2 - t1)

    def _layout(self, order: list[ScheduledSeq]):
        bs = self.block_size
        tokens, positions, slots = [], [], []
        decode_tables, decode_lens, prefills, samplers = [], [], [], []
        row = 0
        for s in order:
            seq, start, n = s.seq, s.seq.num_computed_tokens, s.num_new_tokens
            end = start + n
            tokens.extend(_token_range(seq, start, end))
            pos = np.arange(start, end, dtype=np.int64)
            positions.append(pos)
            table = np.asarray(seq.block_table[:(end + bs - 1) // bs], dtype=np.int64)
            slots.append(table[pos // bs] * bs + pos % bs)
            if n == 1:
                decode_tables.append(table)
                decode_lens.append(end)
            else:
                prefills.append((row, n, end, table))
            row += n
            if s.samples:
                samplers.append((row - 1, s))
        layout = BatchLayout.build(np.concatenate(slots), decode_tables, decode_lens, prefills, bs,
                                   self.fused_decode)
        return (np.asarray(tokens, dtype=np.int32), np.concatenate(positions).astype(np.int32),
                layout, samplers)


def _token_range(seq, start: int, end: int) -> list[int]:
    """Token ids of positions [start, end) of prompt + output."""
    prompt = seq.request.prompt_token_ids
    p = len(prompt)
    head = prompt[start:min(end, p)] if start < p else []
    tail = seq.output_token_ids[max(start - p, 0):end - p] if end > p else []
    return head + tail
