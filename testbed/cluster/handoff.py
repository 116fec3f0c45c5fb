"""Disaggregated prefill and decode (Splitwise, DistServe): how a request moves from the
prefill replica that computed its prompt and first token to a decode replica.

- `KVLink`: the prompt's KV (prompt_len x the model's KV bytes per token) crosses a link of
  `bandwidth` bytes/s after `latency_s`. Each prefill replica sends one transfer at a time
  (its transfers queue), each at the full bandwidth.
- `decode_request`: what the decode replica is given: the prompt plus the first token as its
  prompt, the remaining output length as its output.
- `HandoffExecutor`: the decode replica's executor. Its scheduler prefills that prompt like
  any other (so KV blocks are allocated for it, and the decode replica's admission and
  memory limits apply), but the KV of the original prompt has arrived over the link: this
  executor prices only the tokens past it, so the handoff's first step on the decode replica
  costs one decode token. A preempted (recomputed) request pays its full prefill again.
- `merged_sequence`: one request's record from its two halves. Its first token reaches the
  client when the handoff is done: TTFT counts the prefill, the transfer and its queueing.
"""
from __future__ import annotations

import dataclasses
import math

from testbed.plan import ScheduledSeq, StepPlan, StepResult
from testbed.request import Request, Sequence


class KVLink:
    """Transfers from each prefill replica, one at a time, over a link of `bandwidth` bytes/s
    (None: instantaneous) and a fixed `latency_s`."""

    def __init__(self, bandwidth: float | None, latency_s: float = 0.0):
        if bandwidth is not None and not bandwidth > 0:
            raise ValueError(f"kv_transfer.bandwidth must be > 0 bytes/s (or null: instant), got {bandwidth}")
        if not latency_s >= 0:
            raise ValueError(f"kv_transfer.latency_s must be >= 0, got {latency_s}")
        self.bandwidth, self.latency_s = bandwidth, latency_s
        self._free_at: dict[int, float] = {}  # source replica -> when its link is free again

    def send(self, source: int, now: float, nbytes: float) -> float:
        """Start sending `nbytes` from replica `source` at `now`; returns when they have arrived."""
        start = max(now, self._free_at.get(source, -math.inf))
        busy = nbytes / self.bandwidth if self.bandwidth else 0.0
        self._free_at[source] = start + busy
        return start + busy + self.latency_s


def prefill_request(request: Request) -> Request:
    """The prefill replica's part of `request`: its prompt and first token."""
    return dataclasses.replace(request, output_len=1, sampling=dataclasses.replace(request.sampling))


def decode_request(request: Request, first_token: int) -> Request:
    """The decode replica's part of `request`: prompt + first token in, the rest out."""
    tokens = request.prompt_token_ids
    return dataclasses.replace(
        request, prompt_len=request.prompt_len + 1, output_len=request.output_len - 1,
        prompt_token_ids=None if tokens is None else [*tokens, first_token],
        sampling=dataclasses.replace(request.sampling))


class HandoffExecutor:
    """Wraps a decode replica's executor: the prompt KV of handed-over requests is free."""

    def __init__(self, inner):
        self.inner = inner
        self.token_id = inner.token_id
        self._arrived: dict[int, Request] = {}  # seq_id -> the original request, while its KV is pending use
        if hasattr(inner, "decode_seconds"):  # fast-forward: runs of plain decodes (no handoff in them)
            self.decode_seconds = inner.decode_seconds

    def receive(self, seq: Sequence, original: Request) -> None:
        """`seq` (a `decode_request`) comes with the KV of `original`'s prompt."""
        self._arrived[seq.seq_id] = original

    def execute(self, plan: StepPlan) -> StepResult:
        arrived = self._arrived
        for seq in plan.preempted:  # its blocks are gone: it recomputes everything
            arrived.pop(seq.seq_id, None)
        if not arrived:
            return self.inner.execute(plan)
        scheduled = []
        for item in plan.scheduled:
            original = arrived.get(item.seq.seq_id)
            if original is None:
                scheduled.append(item)
                continue
            start, end = item.seq.num_computed_tokens, item.seq.num_computed_tokens + item.num_new_tokens
            have = original.prompt_len
            if end >= have:
                del arrived[item.seq.seq_id]
            if end > max(start, have):
                scheduled.append(_computed_part(item, original, max(start, have)))
        result = self.inner.execute(dataclasses.replace(plan, scheduled=scheduled))
        result.features = None  # those of the plan it ran, not of `plan`
        return result


def _computed_part(item: ScheduledSeq, original: Request, start: int) -> ScheduledSeq:
    """The tokens of `item` from `start` on, seen as the original request's (so the first
    token's KV and the next token's sampling is a decode)."""
    seq = item.seq
    outputs = [0] * (1 + seq.num_output_tokens)  # the first token, then the decode side's
    proxy = Sequence(seq.seq_id, original, output_token_ids=outputs, num_computed_tokens=start)
    return ScheduledSeq(proxy, seq.num_computed_tokens + item.num_new_tokens - start)


def merged_sequence(original: Request, prefill: Sequence, decode: Sequence, handoff_s: float) -> Sequence:
    """`original`'s record: prefilled as `prefill`, handed over at `handoff_s`, then `decode`."""
    return Sequence(
        prefill.seq_id, original, status=decode.status,
        output_token_ids=prefill.output_token_ids + decode.output_token_ids,
        num_computed_tokens=decode.num_computed_tokens,
        num_cached_tokens=prefill.num_cached_tokens,
        num_preemptions=prefill.num_preemptions + decode.num_preemptions,
        reason=decode.reason, first_scheduled_s=prefill.first_scheduled_s,
        first_token_s=handoff_s, finish_s=decode.finish_s,
        token_times=[handoff_s, *decode.token_times])
