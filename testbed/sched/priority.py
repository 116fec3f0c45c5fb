"""Priority scheduling: vLLM with the waiting queue ordered by (priority, arrival) (lower value
= more important) and the running list likewise, so the preemption victim is the least
important running sequence, the newest among equals."""
from __future__ import annotations

from testbed.request import Sequence
from testbed.sched.base import SCHEDULERS, BaseScheduler
from testbed.sched.queues import KeyedQueue


def _rank(seq: Sequence) -> tuple:
    return (seq.request.priority, seq.request.arrival_s, seq.seq_id)


@SCHEDULERS.register("priority")
class PriorityScheduler(BaseScheduler):
    def _make_waiting_queue(self) -> KeyedQueue:
        return KeyedQueue(_rank)

    def _order_running(self) -> None:
        self.running.sort(key=_rank)
