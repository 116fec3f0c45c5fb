"""Sarathi-Serve (stall-free batching): every step runs all decodes first, then ongoing
prefill chunks, then new prefills, each prefill chunk as large as the leftover budget. Decodes
never wait behind a long prompt; the budget bounds the step's latency."""
from __future__ import annotations

from testbed.sched.base import SCHEDULERS, BaseScheduler


@SCHEDULERS.register("sarathi")
class SarathiScheduler(BaseScheduler):
    chunked_prefill = True

    def _order_running(self) -> None:
        # Stable: decodes keep their order ahead of prefills, which keep theirs.
        self.running.sort(key=lambda s: s.num_tokens - s.num_computed_tokens > 1)
