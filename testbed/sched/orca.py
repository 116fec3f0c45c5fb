"""Orca: iteration-level scheduling with whole-prompt prefill. A request is admitted only when
KV for its maximum length (prompt + output_len) can be reserved at once, so a running
sequence never runs out of blocks and nothing is ever preempted."""
from __future__ import annotations

from testbed.request import Sequence
from testbed.sched.base import SCHEDULERS, BaseScheduler


@SCHEDULERS.register("orca")
class OrcaScheduler(BaseScheduler):
    chunked_prefill = False

    def _admission_tokens(self, seq: Sequence, num_tokens: int) -> int:
        return seq.max_tokens
