"""Longest prefix match first (SGLang's cache-aware policy): before each admission round the
waiting queue is sorted by cached prefix length (`kv.lookup`), longest first, ties by
arrival; swapped-out sequences stay ahead (their KV is already computed). Otherwise vLLM.
Past `lpm_max_sorted` waiting requests the queue stays FCFS, as in SGLang, because each
sort costs one lookup per waiting request."""
from __future__ import annotations

from testbed.request import Sequence, SeqStatus
from testbed.sched.base import SCHEDULERS, BaseScheduler


@SCHEDULERS.register("lpm")
class LPMScheduler(BaseScheduler):
    def _order_waiting(self) -> None:
        if len(self.waiting) <= self.config.lpm_max_sorted:
            self.waiting.sort(key=self._rank)

    def _rank(self, seq: Sequence) -> tuple:
        if seq.status is SeqStatus.SWAPPED:
            return (0, 0, seq.request.arrival_s)
        return (1, -self.kv.lookup(seq), seq.request.arrival_s)
