"""Shortest job first: vLLM with the waiting queue (and the running list) ordered by predicted
output length, then arrival. The prediction is made once, on arrival, by a pluggable
`LengthPredictor` (`config.predictor`: oracle | learned), which learns from every finished
sequence. The preemption victim is the running sequence predicted longest."""
from __future__ import annotations

from testbed.kv.base import KVManager
from testbed.request import Sequence
from testbed.sched.base import SCHEDULERS, BaseScheduler
from testbed.sched.config import SchedulerConfig
from testbed.sched.predictors import make_predictor
from testbed.sched.queues import KeyedQueue


def _rank(seq: Sequence) -> tuple:
    return (seq.policy_state["predicted_len"], seq.request.arrival_s, seq.seq_id)


@SCHEDULERS.register("sjf")
class SJFScheduler(BaseScheduler):
    def __init__(self, config: SchedulerConfig, kv: KVManager):
        super().__init__(config, kv)
        self.predictor = make_predictor(config)

    def _make_waiting_queue(self) -> KeyedQueue:
        return KeyedQueue(_rank)

    def _order_running(self) -> None:
        self.running.sort(key=_rank)

    def _on_add(self, seq: Sequence, now: float) -> None:
        seq.policy_state["predicted_len"] = self.predictor.predict(seq.request)

    def _on_finish(self, seq: Sequence) -> None:
        self.predictor.observe(seq)
