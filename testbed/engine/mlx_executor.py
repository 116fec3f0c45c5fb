"""The real engine: runs a StepPlan through the raw-MLX Qwen2 model over the paged KV pool.

One model call per step over the mixed batch (decodes and prefill chunks together), sampling
on device, one evaluation per step. Prefix-cache hits need nothing here: the scheduler starts
such a sequence at `num_computed_tokens = hit`, so those tokens are simply never computed.

`execute(plan)` runs a step start to end. `launch(plan)` only builds the step's graph and
starts it on the device (`mx.async_eval`); `resolve(handle)` waits for its tokens. Between
the two the engine schedules and launches the next step: a token the previous step sampled
but nobody has read yet (`PENDING_TOKEN` in the sequence) is fed to it from device memory.

With `compile_decode` (the default on an NVIDIA GPU), steps of decodes only -- the steady
state of serving -- run through one `mx.compile`d function (model + paged attention, pools in
and out), so building their graph costs one call instead of hundreds of Python-level ops. Its
batch is padded to a few bucket sizes (the padding rows decode into the pool's scratch block)
so it compiles once per bucket. On the H200 this took ~0.5-1 ms off a Qwen2-0.5B decode step,
whose host time is what small-batch decode waits on; on the CPU, where the step waits on the
arithmetic, it is off by default.
"""
from __future__ import annotations

import time
import weakref
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from testbed.engine import cuda_paged_attention
from testbed.engine.kv_pool import LayerPools, PagedKVPool
from testbed.engine.paged_attention import BatchLayout, PagedAttention, pad_tables
from testbed.plan import ScheduledSeq, StepPlan, StepResult
from testbed.request import PENDING_TOKEN


@dataclass(slots=True)
class StepRows:
    """A step's flattened batch on the host: decode rows first, then prefill chunks."""

    tokens: np.ndarray  # [T] int32 (PENDING_TOKEN where the previous step's token goes)
    positions: np.ndarray  # [T] int32
    slots: np.ndarray  # [T] int64: pool slot of each new token
    decode_tables: list  # per decode row, its block table up to its new token
    decode_lens: list[int]  # per decode row, keys it attends to
    prefills: list[tuple[int, int, int, np.ndarray]]  # (first row, length, context, table)
    samplers: list[tuple[int, ScheduledSeq]]  # (row, scheduled sequence) of each sample
    pending: list[tuple[int, int]]  # (row, row of the previous step's sampled tokens)


@dataclass(slots=True)
class Launched:
    sampled: mx.array | None  # [n] int32 token ids being computed; None if none samples
    seq_ids: list[int]  # the sequence of each row
    t_start: float
    host_seconds: float


class MLXExecutor:
    def __init__(self, model, pool: PagedKVPool, sampler, compile_decode: bool | None = None):
        self.model = model
        self.pool = pool
        self.sampler = sampler
        self.block_size = pool.block_size
        self.fused_decode = cuda_paged_attention.supports(model.config.head_dim)
        if compile_decode is None:
            compile_decode = cuda_paged_attention.available()
        self._decode_step = compiled_decode_step(model, self.fused_decode) \
            if compile_decode else None
        self._last: Launched | None = None  # the latest launch, whose tokens may be PENDING
        self._last_resolved = 0.0

    def execute(self, plan: StepPlan) -> StepResult:
        return self.resolve(self.launch(plan))

    def launch(self, plan: StepPlan) -> Launched:
        t0 = time.perf_counter()
        self.pool.swap_out(plan.swap_out)
        self.pool.swap_in(plan.swap_in)
        # Decodes first, then prefill chunks: decodes attend in one batched call.
        order = sorted(plan.scheduled, key=lambda s: s.num_new_tokens > 1)
        rows = self._rows(order)
        samplers = rows.samplers
        token_ids = self._token_ids(rows)
        # A one-token chunk inside a prompt computes but does not sample; None: every row does.
        sample_rows = mx.array(np.asarray([r for r, _ in samplers], dtype=np.int32)) \
            if len(samplers) != len(rows.tokens) else None
        if self._decode_step is not None and order and len(rows.decode_lens) == len(order):
            logits = self._compiled_decodes(token_ids, rows)
            logits = logits if sample_rows is None else logits[sample_rows]
        elif order:
            layout = BatchLayout.build(rows.slots, rows.decode_tables, rows.decode_lens,
                                       rows.prefills, self.fused_decode)
            attention = PagedAttention(self.pool, layout, self.model.attend, self.model.scale)
            logits = self.model(token_ids, mx.array(rows.positions), attention,
                                logits_indices=sample_rows)
        sampled = self.sampler([s.seq for _, s in samplers], logits) if samplers else None
        # A step of mid-prompt chunks only just fills the cache: the pools are its result.
        mx.async_eval(*([sampled] if sampled is not None else []), *self.pool.arrays())
        launched = Launched(sampled, [s.seq.seq_id for _, s in samplers], t0,
                            time.perf_counter() - t0)
        self._last = launched
        return launched

    def resolve(self, launched: Launched) -> StepResult:
        """Wait for a launched step's tokens. Its time runs from its launch, or from the
        previous step's end if it was launched while that one still ran (overlap)."""
        if launched.sampled is None:
            mx.eval(*self.pool.arrays())
        ids = [] if launched.sampled is None else launched.sampled.tolist()
        t_end = time.perf_counter()
        start = max(launched.t_start, self._last_resolved)
        self._last_resolved = t_end
        return StepResult(dict(zip(launched.seq_ids, ids)), seconds=t_end - start,
                          host_seconds=launched.host_seconds,
                          device_seconds=t_end - launched.t_start - launched.host_seconds)

    def _token_ids(self, rows: StepRows) -> mx.array:
        """The step's input tokens, those the previous step sampled taken from the device."""
        previous = self._last.sampled if rows.pending else None
        if previous is not None and previous.shape[0] == len(rows.tokens) and \
                rows.pending == [(i, i) for i in range(len(rows.tokens))]:
            return previous  # steady decoding: the same sequences in the same order
        token_ids = mx.array(rows.tokens)
        if rows.pending:
            at, prev = (mx.array(np.asarray(x, dtype=np.int32)) for x in zip(*rows.pending))
            token_ids[at] = previous[prev]
        return token_ids

    def _compiled_decodes(self, token_ids: mx.array, rows: StepRows) -> mx.array:
        """Logits of a decodes-only step through the compiled function, batch padded: the
        padding rows decode one token at position 0 into the scratch block."""
        n, padded = len(rows.decode_lens), _bucket(len(rows.decode_lens))
        scratch = self.pool.scratch_block
        tables = pad_tables(rows.decode_tables + [[scratch]] * (padded - n))
        lens = np.ones(padded, dtype=np.int32)
        lens[:n] = rows.decode_lens
        pos = np.zeros(padded, dtype=np.int32)
        pos[:n] = rows.positions
        slots = np.full(padded, scratch * self.block_size, dtype=np.int32)
        slots[:n] = rows.slots
        tokens = mx.concatenate([token_ids, mx.zeros((padded - n,), dtype=mx.int32)]) \
            if padded > n else token_ids
        out = self._decode_step(tokens, mx.array(pos), mx.array(slots), mx.array(tables),
                                mx.array(lens), *self.pool.kv)
        self.pool.kv = list(out[1:])
        return out[0][:n]

    def _rows(self, order: list[ScheduledSeq]) -> StepRows:
        bs = self.block_size
        tokens, positions, slots = [], [], []  # decode rows as ints, then prefill chunks as arrays
        decode_tables, decode_lens, prefills, samplers, pending = [], [], [], [], []
        prev_rows = {sid: i for i, sid in enumerate(self._last.seq_ids)} if self._last else {}
        row = 0
        for s in order:
            seq, start, n = s.seq, s.seq.num_computed_tokens, s.num_new_tokens
            end = start + n
            if n == 1:  # a decode (or a one-token chunk): plain ints, the hot path of serving
                token = _token_at(seq, start)
                if token == PENDING_TOKEN:  # only a sequence's last token can be pending
                    pending.append((row, prev_rows[seq.seq_id]))
                tokens.append(token)
                table = seq.block_table[:start // bs + 1]
                positions.append(start)
                slots.append(table[-1] * bs + start % bs)
                decode_tables.append(table)
                decode_lens.append(end)
            else:
                chunk = _token_range(seq, start, end)
                if chunk[-1] == PENDING_TOKEN:
                    pending.append((row + n - 1, prev_rows[seq.seq_id]))
                tokens.extend(chunk)
                pos = np.arange(start, end, dtype=np.int64)
                table = np.asarray(seq.block_table[:(end + bs - 1) // bs], dtype=np.int64)
                positions.append(pos)
                slots.append(table[pos // bs] * bs + pos % bs)
                prefills.append((row, n, end, table))
            row += n
            if s.samples:
                samplers.append((row - 1, s))
        nd = len(decode_tables)
        positions = np.concatenate([np.asarray(positions[:nd], dtype=np.int64)] + positions[nd:])
        slots = np.concatenate([np.asarray(slots[:nd], dtype=np.int64)] + slots[nd:])
        return StepRows(np.asarray(tokens, dtype=np.int32), positions.astype(np.int32), slots,
                        decode_tables, decode_lens, prefills, samplers, pending)


_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def compiled_decode_step(model, fused_decode: bool):
    """The model's decode step as one compiled pure function of its inputs and the pool
    arrays. Shared by every executor of the model, so its traces (one per batch bucket and
    table width) outlive an engine: a sweep or a restarted engine does not trace again."""
    steps = _COMPILED.setdefault(model, {})
    if fused_decode not in steps:
        model_ref = weakref.ref(model)  # a strong one would keep the cache's key alive

        def decode_graph(tokens, positions, slots, tables, lens, *pools):
            model = model_ref()
            traced = LayerPools(list(pools))
            layout = BatchLayout.decodes(slots, tables, lens, fused_decode)
            attention = PagedAttention(traced, layout, model.attend, model.scale)
            logits = model(tokens, positions, attention)
            return (logits, *traced.kv)
        steps[fused_decode] = mx.compile(decode_graph)
    return steps[fused_decode]


def _token_at(seq, pos: int) -> int:
    """The token id at position `pos` of prompt + output."""
    prompt = seq.request.prompt_token_ids
    return prompt[pos] if pos < len(prompt) else seq.output_token_ids[pos - len(prompt)]


def _token_range(seq, start: int, end: int) -> list[int]:
    """Token ids of positions [start, end) of prompt + output."""
    prompt = seq.request.prompt_token_ids
    p = len(prompt)
    head = prompt[start:min(end, p)] if start < p else []
    tail = seq.output_token_ids[max(start - p, 0):end - p] if end > p else []
    return head + tail


_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def _bucket(n: int) -> int:
    """The padded batch size of a compiled decode step."""
    for b in _BUCKETS:
        if n <= b:
            return b
    return -(-n // 256) * 256
