"""Continuous batching without traces: add requests, step, abort, stream tokens.

`Engine` ties one scheduler (with its KV manager), one executor (real or simulated) and a
clock. Each `step()` is one iteration of the serving loop: schedule, execute, update. The
replay driver and the HTTP server are both loops around it.

With `overlap=True` (an executor with `launch`/`resolve`, i.e. the real engine) the loop is
pipelined one step deep, as vLLM's async scheduling and mlx-lm's generator do: step N+1 is
scheduled and its graph launched on the device *before* step N's tokens are read back, so
host work (scheduling, batch layout, graph building) hides behind device work. The scheduler
then books step N's tokens as placeholders (`PENDING`) and the executor feeds them to step
N+1 straight from device memory; `step()` fills in their values, times and stop-token ends
when it resolves step N. A sequence stopped by a stop token this way has computed one token
too many, which is dropped. Outputs are identical to the synchronous loop.

With `fast_forward=True` (the simulator: a synchronous engine on the virtual clock whose
executor prices a decode step from its shape alone, `decode_seconds`) `fast_forward_steps`
takes a run of plain decode steps at once, as vLLM's multi-step scheduling does: when nothing
can be admitted and every running sequence decodes, the coming steps differ only by their
contexts and by who has finished, so they are priced from two numbers each and applied in one
go (`testbed.sched.decode_run`), with the same tokens, times, KV calls and step log as one
step at a time. The real engine always steps one by one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count, islice

from testbed.engine.base import Executor
from testbed.plan import StepPlan, StepResult
from testbed.replay.clock import Clock, VirtualClock
from testbed.request import PENDING_TOKEN, Request, Sequence, SeqStatus
from testbed.sim.features import StepFeatures, decode_features, step_features


@dataclass(slots=True)
class Occupancy:
    """Queue and KV state right after a step was scheduled (for the step log)."""

    kv_blocks_used: int
    kv_blocks_free: int
    prefix_hit_tokens: int  # prompt tokens served from the prefix cache by this step's admissions
    n_waiting: int
    n_running: int
    n_swapped: int


@dataclass(slots=True)
class StepOutput:
    """What one step did, for streaming and for the step log."""

    index: int
    t_start: float
    t_end: float
    plan: StepPlan
    result: StepResult
    features: StepFeatures
    occupancy: Occupancy
    new_tokens: list[tuple[Sequence, int]] = field(default_factory=list)
    finished: list[Sequence] = field(default_factory=list)  # finished, rejected or aborted


@dataclass(slots=True)
class StepRun:
    """Consecutive decode-only steps taken at once (fast-forward), as columns: entry j is step
    `first_index + j`. Times are the executor's `decode_seconds`, all device time (as the
    simulator reports a step). Nothing is admitted, preempted or swapped during a run, so the
    queues keep `n_waiting` / `n_swapped` and every running sequence is in `features.n_seqs`."""

    first_index: int
    t_start: list[float]
    t_end: list[float]
    seconds: list[float]
    features: StepFeatures  # fields are lists (one entry per step) or numbers (same in all)
    kv_blocks_used: list[int]  # once each step was scheduled
    kv_blocks_free: list[int]
    n_waiting: int
    n_swapped: int
    finished: list[Sequence]  # in the order step-by-step updates would have reported them

    @property
    def num_steps(self) -> int:
        return len(self.seconds)


@dataclass(slots=True)
class _InFlight:
    index: int
    t_start: float
    plan: StepPlan
    features: StepFeatures
    occupancy: Occupancy
    handle: object  # the executor's launch handle
    finished: list[Sequence]  # ended by the scheduler's (placeholder) update of this step
    samples: list[tuple[Sequence, int]]  # (sequence, output index) of each pending token


class Engine:
    def __init__(self, scheduler, executor: Executor, clock: Clock | None = None,
                 overlap: bool = False, fast_forward: bool = False):
        if overlap and not hasattr(executor, "launch"):
            raise ValueError(f"overlap=True needs an executor with launch/resolve; "
                             f"{type(executor).__name__} has none")
        clock = clock or VirtualClock()
        if fast_forward and (overlap or not isinstance(clock, VirtualClock)):
            raise ValueError("fast_forward=True needs a synchronous engine (overlap=False) on "
                             f"the virtual clock; got overlap={overlap}, {type(clock).__name__}")
        self.scheduler = scheduler
        self.executor = executor
        self.clock = clock
        self.overlap = overlap
        self.fast_forward = fast_forward
        self._ids = count()
        self._steps = 0  # index of the next step
        self._live: dict[str, Sequence] = {}
        self._inflight: _InFlight | None = None
        self._hits = scheduler.kv.stats.hit_tokens

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
        return self.scheduler.has_unfinished or self._inflight is not None

    def step(self) -> StepOutput:
        return self._step_overlapped() if self.overlap else self._step_sync()

    # -- one step at a time ----------------------------------------------------------------

    def _step_sync(self) -> StepOutput:
        t_start = self.clock.now
        plan = self.scheduler.schedule(t_start)
        occupancy = self._occupancy()
        result = self.executor.execute(plan) if not plan.is_empty else StepResult({}, 0.0)
        features = result.features or step_features(plan)
        self.clock.advance(result.seconds)
        t_end = self.clock.now
        finished = self.scheduler.update(plan, result, t_end)
        tokens = result.tokens
        new_tokens = [(s.seq, tokens[s.seq.seq_id]) for s in plan.scheduled if s.seq.seq_id in tokens]
        self._forget(finished)
        return StepOutput(self._next_index(), t_start, t_end, plan, result, features, occupancy,
                          new_tokens, finished)

    # -- many decode steps at once ---------------------------------------------------------------

    def fast_forward_steps(self, until: float, max_steps: int | None = None) -> StepRun | None:
        """Take the coming steps at once if they are plain decodes: those that start before
        `until` (the next arrival; the first step always), at most `max_steps`. None when
        fast-forward is off, the executor cannot price decode steps on their own, or the next
        step is anything else: then `step()`."""
        price = getattr(self.executor, "decode_seconds", None)
        if not self.fast_forward or price is None:
            return None
        sched = self.scheduler
        run = sched.plan_decodes(self.clock.now, self.executor.token_id)
        if run is None:
            return None
        limit = run.max_steps if max_steps is None else min(run.max_steps, max_steps)
        if limit < 1:
            return None
        t = t0 = self.clock.now
        shapes, seconds, t_end = [], [], []
        for shape in islice(run.shapes(), limit):
            if t_end and t >= until:
                break
            step_seconds = price(*shape)
            t += step_seconds  # as the clock adds, step after step
            shapes.append(shape)
            seconds.append(step_seconds)
            t_end.append(t)
        n_decodes, sum_context = map(list, zip(*shapes))
        t_start = [t0, *t_end[:-1]]
        n_waiting, n_swapped = sched.num_waiting, sched.num_swapped
        finished, used, free = sched.apply_decodes(run, t_end)
        self.clock.wait_until(t)
        self._forget(finished)
        return StepRun(self._next_index(len(seconds)), t_start, t_end, seconds,
                       decode_features(n_decodes, sum_context), used, free, n_waiting, n_swapped,
                       finished)

    # -- pipelined: launch step N+1, then resolve step N -------------------------------------

    def _step_overlapped(self) -> StepOutput:
        if self._inflight is None:  # fill the pipeline
            self._inflight = self._launch()
        current = self._inflight
        self._inflight = self._launch() if self.scheduler.has_unfinished else None
        return self._resolve(current)

    def _launch(self) -> _InFlight:
        t_start = self.clock.now
        plan = self.scheduler.schedule(t_start)
        features, occupancy = step_features(plan), self._occupancy()
        handle = self.executor.launch(plan) if not plan.is_empty else None
        samples = [(s.seq, s.seq.num_output_tokens) for s in plan.scheduled if s.samples]
        placeholders = StepResult({seq.seq_id: PENDING_TOKEN for seq, _ in samples}, 0.0)
        finished = self.scheduler.update(plan, placeholders, t_start)
        return _InFlight(self._next_index(), t_start, plan, features, occupancy, handle,
                         finished, samples)

    def _resolve(self, step: _InFlight) -> StepOutput:
        result = self.executor.resolve(step.handle) if step.handle is not None else StepResult({}, 0.0)
        self.clock.advance(result.seconds)
        now = self.clock.now
        finished, new_tokens = list(step.finished), []
        for seq, index in step.samples:
            if index >= len(seq.output_token_ids):  # cut off by a stop token one step earlier
                continue
            token = result.tokens[seq.seq_id]
            seq.output_token_ids[index] = token
            seq.token_times[index] = now
            if index == 0:
                seq.first_token_s = now
            new_tokens.append((seq, token))
            if seq.status.is_done and index == len(seq.output_token_ids) - 1:
                seq.finish_s = now
            elif self._stops(seq, token):
                self._stop(seq, index, now)
        self._forget(finished)
        return StepOutput(step.index, step.t_start, now, step.plan, result, step.features,
                          step.occupancy, new_tokens, finished)

    def _stops(self, seq: Sequence, token: int) -> bool:
        sampling = seq.request.sampling
        return not sampling.ignore_eos and token in sampling.stop_token_ids

    def _stop(self, seq: Sequence, index: int, now: float) -> None:
        """A stop token at output `index`, seen only now: end the sequence there."""
        del seq.output_token_ids[index + 1:], seq.token_times[index + 1:]
        if seq.status.is_done:  # ended by its length in the step launched meanwhile
            seq.reason, seq.finish_s = "stop", now
        else:  # frees its blocks; the scheduler reports it with a later step
            self.scheduler.finish(seq.seq_id, now, SeqStatus.FINISHED, "stop")

    # -- bookkeeping ---------------------------------------------------------------------------

    def _occupancy(self) -> Occupancy:
        sched, kv = self.scheduler, self.scheduler.kv
        hits = kv.stats.hit_tokens
        new_hits, self._hits = hits - self._hits, hits
        return Occupancy(kv.num_used_blocks, kv.num_free_blocks, new_hits,
                         sched.num_waiting, sched.num_running, sched.num_swapped)

    def _next_index(self, num_steps: int = 1) -> int:
        """Index of the next step, counting `num_steps` steps as taken."""
        index, self._steps = self._steps, self._steps + num_steps
        return index

    def _forget(self, finished: list[Sequence]) -> None:
        for seq in finished:
            self._live.pop(seq.request.request_id, None)
