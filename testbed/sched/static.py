"""Static (request-level) batching, as FasterTransformer: when nothing runs, take up to
`max_num_seqs` waiting requests whose prompts fit one step's budget and whose maximum
length can be reserved, prefill them together, then decode until every one of them has
finished. Arrivals in the meantime wait for the whole batch, so what waits never stops the
batch's decode steps from being taken as one run (fast-forward)."""
from __future__ import annotations

from testbed.request import Sequence
from testbed.sched.base import NO_LIMIT, SCHEDULERS, BaseScheduler, StepBuilder


@SCHEDULERS.register("static")
class StaticScheduler(BaseScheduler):
    chunked_prefill = False

    def _schedule_step(self, step: StepBuilder) -> None:
        if self.running:
            self._schedule_running(step)
        else:
            self._schedule_waiting(step)

    def _admission_tokens(self, seq: Sequence, num_tokens: int) -> int:
        return seq.max_tokens

    def _decode_horizon(self, now: float) -> int:
        return NO_LIMIT  # the batch runs to its end whatever waits
