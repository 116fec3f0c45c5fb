"""FastServe's skip-join multi-level feedback queue.

Level i (0 = highest) has a quantum of `mlfq_base_quantum * 2**i` iterations. A new request
skips straight to the first level whose prompt threshold `mlfq_join_tokens * 2**i` holds
its prompt (long prefills would burn the short quanta anyway), and a sequence is demoted one
level each time it has run its level's quantum. Every step considers sequences level by
level, highest first; within a level running sequences go before waiting ones, each level
FCFS. Sequences of lower levels keep their KV but are not scheduled while higher levels
fill the batch; the number holding KV is bounded by memory, not by `max_num_seqs` (which
caps each step's batch). Out of KV, a running sequence preempts the lowest-level, newest
unscheduled one (possibly itself); a waiting one may preempt only strictly lower levels.
A sequence not scheduled for `mlfq_starvation_s` goes back to level 0.

A run of plain decode steps (fast-forward) stops at the first quantum that ends, so the
levels only change after its last step, as they would step by step.
"""
from __future__ import annotations

from itertools import count

from testbed.kv.base import KVManager
from testbed.plan import StepPlan, StepResult
from testbed.request import Sequence, SeqStatus
from testbed.sched.base import NO_LIMIT, SCHEDULERS, BaseScheduler, StepBuilder
from testbed.sched.decode_run import DecodeRun
from testbed.sched.config import SchedulerConfig
from testbed.sched.queues import LevelQueues


def _level(seq: Sequence) -> int:
    return seq.policy_state["level"]


def _rank(seq: Sequence) -> tuple:
    return (seq.policy_state["level"], seq.policy_state["entered"])


@SCHEDULERS.register("mlfq")
class MLFQScheduler(BaseScheduler):
    def __init__(self, config: SchedulerConfig, kv: KVManager):
        super().__init__(config, kv)
        self._entries = count()  # FCFS order within a level
        self._admitting = True

    def _schedule_step(self, step: StepBuilder) -> None:
        self._promote_starved(step.now)
        self._admitting = True
        self._order_running()
        for seq in list(self.running):
            self._admit_above(_level(seq), step)
            if not step.has_room:
                break
            if seq.status is SeqStatus.RUNNING:
                self._run(seq, step)
        self._admit_above(self.config.mlfq_levels, step)

    def update(self, plan: StepPlan, result: StepResult, now: float) -> list[Sequence]:
        done = super().update(plan, result, now)
        last = self.config.mlfq_levels - 1
        for item in plan.scheduled:
            seq = item.seq
            if seq.status is not SeqStatus.RUNNING:
                continue
            state = seq.policy_state
            state["iterations"] += 1
            state["last_run"] = now
            if state["level"] < last and state["iterations"] >= self._quantum(state["level"]):
                self._enter(seq, state["level"] + 1, now)
        return done

    def _admit_above(self, level: int, step: StepBuilder) -> None:
        """Admit waiting sequences of levels above `level` while they fit. Admissions stop for
        the step at the first that does not, and after any preemption (as in vLLM)."""
        while (self._admitting and not step.preempted_any and self.waiting and step.has_room
               and _level(self.waiting.peek()) < level):
            self._admitting = self._admit_next(step)

    def _pick_victim(self, seq: Sequence, step: StepBuilder) -> Sequence | None:
        victim = self._last_unscheduled(step)
        if victim is not None and (seq.status is SeqStatus.RUNNING or _level(victim) > _level(seq)):
            return victim
        return None

    def _promote_starved(self, now: float) -> None:
        deadline = now - self.config.mlfq_starvation_s
        starved = lambda seq: _level(seq) > 0 and seq.policy_state["last_run"] <= deadline  # noqa: E731
        for seq in self.running:
            if starved(seq):
                self._enter(seq, 0, now)
        for level in range(1, self.config.mlfq_levels):
            # FCFS levels: the head has waited longest, so only heads need checking.
            for seq in self.waiting.pop_heads(level, starved):
                self._enter(seq, 0, now)
                self.waiting.push(seq)

    def _enter(self, seq: Sequence, level: int, now: float) -> None:
        seq.policy_state.update(level=level, entered=next(self._entries), iterations=0, last_run=now)

    def _quantum(self, level: int) -> int:
        return self.config.mlfq_base_quantum << level

    def _join_level(self, prompt_len: int) -> int:
        level, last = 0, self.config.mlfq_levels - 1
        while level < last and prompt_len > self.config.mlfq_join_tokens << level:
            level += 1
        return level

    # -- hooks of BaseScheduler --

    def _order_running(self) -> None:
        self.running.sort(key=_rank)

    def _decode_horizon(self, now: float) -> int:
        """Decode steps until the first running sequence's quantum ends; 0 if one is starved
        (its promotion comes first) or anything waits."""
        if self.waiting:
            return 0
        deadline, last, horizon = now - self.config.mlfq_starvation_s, self.config.mlfq_levels - 1, NO_LIMIT
        for seq in self.running:
            state = seq.policy_state
            if state["level"] > 0 and state["last_run"] <= deadline:
                return 0
            if state["level"] < last:
                horizon = min(horizon, self._quantum(state["level"]) - state["iterations"])
        return horizon

    def _after_decodes(self, run: DecodeRun, ends: list[float]) -> None:
        """What `update` does to each sequence over the run's steps: a sequence counts the
        iterations it ran and ended (those ended ran one more, uncounted); the quanta that
        end with the last step demote, in scheduling order."""
        last, now = self.config.mlfq_levels - 1, ends[-1]
        for seq, remaining in zip(run.seqs, run.remaining):
            state = seq.policy_state
            if seq.status is not SeqStatus.RUNNING:
                if remaining >= 2:
                    state["iterations"] += remaining - 1
                    state["last_run"] = ends[remaining - 2]
                continue
            state["iterations"] += len(ends)
            state["last_run"] = now
            if state["level"] < last and state["iterations"] >= self._quantum(state["level"]):
                self._enter(seq, state["level"] + 1, now)

    def _make_waiting_queue(self) -> LevelQueues:
        return LevelQueues(self.config.mlfq_levels, _level)

    def _can_hold_more(self) -> bool:
        return True

    def _on_add(self, seq: Sequence, now: float) -> None:
        self._enter(seq, self._join_level(seq.prompt_len), now)
