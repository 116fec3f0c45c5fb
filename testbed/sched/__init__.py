"""Scheduling policies, picked by name: static, orca, vllm, sarathi, priority, sjf, mlfq, lpm."""
from __future__ import annotations

from collections.abc import Mapping

from testbed.kv.base import KVManager
from testbed.sched import lpm, mlfq, orca, priority, sarathi, sjf, static, vllm  # noqa: F401  (register)
from testbed.sched.base import SCHEDULERS, BaseScheduler, Scheduler
from testbed.sched.config import SchedulerConfig
from testbed.sched.predictors import PREDICTORS, LengthPredictor


def make_scheduler(name: str, config: SchedulerConfig | Mapping, kv: KVManager) -> Scheduler:
    """Build the scheduler `name` over `kv`; `config` may be a SchedulerConfig or a mapping of its fields."""
    if not isinstance(config, SchedulerConfig):
        config = SchedulerConfig.from_dict(config)
    return SCHEDULERS.get(name)(config, kv)


__all__ = ["SCHEDULERS", "PREDICTORS", "BaseScheduler", "LengthPredictor", "Scheduler",
           "SchedulerConfig", "make_scheduler"]
