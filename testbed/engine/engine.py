"""Continuous batching without traces: add requests, step, abort, stream tokens.

`Engine` ties one scheduler (with its KV manager), one executor (real or simulated) and a
clock. Each `step()` is one iteration of the serving loop: schedule, execute, update. The
replay driver and the HTTP server are both loops around it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count

from testbed.engine.base import Executor
from testbed.plan import StepPlan, StepResult
from testbed.replay.clock import Clock, VirtualClock
from testbed.request import Request, Sequence
from testbed.sim.features import StepFeatures, step_features


@dataclass(slots=True)
class StepOutput:
    """What one step did, for streaming and for the step log."""

    index: int
    t_start: float
    t_end: float
    plan: StepPlan
    result: StepResult
    features: StepFeatures
    new_tokens: list[tuple[Sequence, int]] = field(default_factory=list)
    finished: list[Sequence] = field(default_factory=list)  # finished, rejected or aborted


class Engine:
    def __init__(self, scheduler, executor: Executor, clock: Clock | None = None):
        self.scheduler = scheduler
        self.executor = executor
        self.clock = clock or VirtualClock()
        self._ids = count()
        self._steps = count()
        self._live: dict[str, Sequence] = {}

    def add_request(self, request: Request) -> Sequence:
        if request.request_id in self._live:
            raise ValueError(f"request id {request.request_id!r} is already in the engine")
        seq = Sequence(next(self._ids), request)
        self._live[request.request_id] = seq
        self.scheduler.add(seq, self.clock.now)
        return seq

    def abort(self, request_id: str) -> Sequence | None:
        seq = self._live.get(request_id)
        if seq is None:
            return None
        return self.scheduler.abort(seq.seq_id, self.clock.now)

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished

    def step(self) -> StepOutput:
        t_start = self.clock.now
        plan = self.scheduler.schedule(t_start)
        features = step_features(plan)
        result = self.executor.execute(plan) if not plan.is_empty else StepResult({}, 0.0)
        self.clock.advance(result.seconds)
        t_end = self.clock.now
        finished = self.scheduler.update(plan, result, t_end)
        tokens = result.tokens
        new_tokens = [(s.seq, tokens[s.seq.seq_id]) for s in plan.scheduled if s.seq.seq_id in tokens]
        for seq in finished:
            self._live.pop(seq.request.request_id, None)
        return StepOutput(next(self._steps), t_start, t_end, plan, result, features,
                          new_tokens, finished)
