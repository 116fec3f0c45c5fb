"""The replay loop: feed a trace's requests to an engine at their arrival times, step until
every request has ended, and log every step and request.

    admit arrivals due by now -> engine.step() -> log the step and the requests that ended
    (idle: jump/wait to the next arrival)

The loop is the same for the real engine and the simulator, and for the virtual and wall
clocks; only the parts handed to it differ. An engine that fast-forwards (the simulator)
takes runs of plain decode steps at once, up to the next arrival, and they are logged as
one row per step all the same.
"""
from __future__ import annotations

import math
import sys
import time
from collections import deque
from dataclasses import dataclass

from testbed.engine.engine import Engine, StepOutput, StepRun
from testbed.metrics import SLO
from testbed.replay.recorder import Recorder
from testbed.request import Request, Sequence


@dataclass(slots=True)
class ReplayCounts:
    requests: int = 0
    finished: int = 0
    rejected: int = 0
    aborted: int = 0
    steps: int = 0
    output_tokens: int = 0
    wall_seconds: float = 0.0
    sim_seconds: float = 0.0

    def count_ended(self, seq: Sequence) -> None:
        """Count a request that has ended, by how it ended, and its output tokens."""
        status = seq.status.value
        if status == "finished":
            self.finished += 1
        elif status == "rejected":
            self.rejected += 1
        else:
            self.aborted += 1
        self.output_tokens += seq.num_output_tokens


class StalledError(RuntimeError):
    """The scheduler can make no progress and nothing else will arrive."""


LIVELOCK_STEPS = 10_000  # steps in a row without new work that end a run as a livelock


class LivelockWatch:
    """Tells a livelock from slow progress: steps go on, but no sequence ever computes a
    position it had not computed before and no request ends -- as when recompute preemption
    keeps undoing the same prefills (say, two sequences that each need the whole pool,
    trading it every few steps)."""

    def __init__(self, patience: int = LIVELOCK_STEPS):
        self.patience = patience
        self.furthest: dict[int, int] = {}  # seq_id -> most tokens it has had computed
        self.steps_without_news = 0

    def stalled(self, scheduled, ended: list[Sequence]) -> bool:
        """After a step: True once `patience` steps in a row brought nothing new."""
        news = bool(ended)
        for item in scheduled:
            seq = item.seq
            if seq.num_computed_tokens > self.furthest.get(seq.seq_id, 0):
                self.furthest[seq.seq_id] = seq.num_computed_tokens
                news = True
        for seq in ended:
            self.furthest.pop(seq.seq_id, None)
        self.steps_without_news = 0 if news else self.steps_without_news + 1
        return self.steps_without_news >= self.patience

    def progressed(self) -> None:
        """A run of decode steps: every one computed new tokens."""
        self.steps_without_news = 0


def replay(requests: list[Request], engine: Engine, recorder: Recorder | None = None, *,
           slo: SLO | None = None, progress: bool = False, max_steps: int | None = None
           ) -> ReplayCounts:
    pending = deque(sorted(requests, key=lambda r: r.arrival_s))
    counts = ReplayCounts(requests=len(pending))
    clock, sched = engine.clock, engine.scheduler
    bar = Progress(counts, clock) if progress else None
    watch = LivelockWatch()
    t0 = time.perf_counter()
    while pending or engine.has_unfinished:
        while pending and pending[0].arrival_s <= clock.now:
            engine.add_request(pending.popleft())
        if not engine.has_unfinished:
            clock.wait_until(pending[0].arrival_s)
            continue
        run = engine.fast_forward_steps(pending[0].arrival_s if pending else math.inf,
                                        None if max_steps is None else max_steps - counts.steps)
        if run is not None:  # many decode steps at once, up to the next arrival
            counts.steps += run.num_steps
            if recorder is not None:
                recorder.step_batch(step_columns(run), run.num_steps)
            finished = run.finished
            watch.progressed()
        else:
            out = engine.step()
            counts.steps += 1
            if recorder is not None:
                recorder.step(step_row(out))
            finished = out.finished
        for seq in finished:
            counts.count_ended(seq)
            if recorder is not None:
                recorder.ended(seq, slo)
                if recorder.tokens is not None:
                    recorder.request_tokens(seq.request.request_id, seq.token_times)
        if run is None and out.plan.is_empty and not out.finished:
            if not pending:
                raise StalledError(
                    f"the {type(sched).__name__} scheduler made no progress with "
                    f"{sched.num_waiting} waiting, {sched.num_running} running, "
                    f"{sched.num_swapped} swapped and nothing left to arrive")
            clock.wait_until(pending[0].arrival_s)
        if run is None and watch.stalled(out.plan.scheduled, finished):
            raise StalledError(
                f"livelock: {watch.patience} steps in a row computed nothing new and ended no "
                f"request ({counts.requests - _ended(counts)} requests unfinished; "
                f"{type(sched).__name__} keeps preempting and recomputing the same work); "
                f"try preemption=swap, a larger KV pool or another scheduler")
        if bar is not None:
            bar.update()
        if max_steps is not None and counts.steps >= max_steps:
            raise StalledError(f"stopped after max_steps={max_steps} with "
                               f"{counts.requests - _ended(counts)} requests unfinished")
    counts.wall_seconds = time.perf_counter() - t0
    counts.sim_seconds = clock.now
    if bar is not None:
        bar.update(final=True)
    return counts


def step_row(out: StepOutput) -> dict:
    plan, f, occ = out.plan, out.features, out.occupancy
    return {
        "step": out.index, "t_start": out.t_start, "t_end": out.t_end,
        "seconds": out.result.seconds, "host_seconds": out.result.host_seconds,
        "device_seconds": out.result.device_seconds,
        "sum_context": f.sum_prefill_context + f.sum_decode_context,
        "kv_blocks_used": occ.kv_blocks_used, "kv_blocks_free": occ.kv_blocks_free,
        "prefix_hit_tokens": occ.prefix_hit_tokens, "n_preempted": len(plan.preempted),
        "n_swapped_out": len(plan.swap_out), "n_swapped_in": len(plan.swap_in),
        "n_waiting": occ.n_waiting, "n_running": occ.n_running, "n_swapped": occ.n_swapped,
        **f.as_dict(),
    }


def step_columns(run: StepRun) -> dict:
    """The columns of `step_row` over a run of decode steps (a number: the same in every step)."""
    f = run.features
    return {
        "step": list(range(run.first_index, run.first_index + run.num_steps)),
        "t_start": run.t_start, "t_end": run.t_end, "seconds": run.seconds, "host_seconds": 0.0,
        "device_seconds": run.seconds, "sum_context": f.sum_decode_context,
        "kv_blocks_used": run.kv_blocks_used, "kv_blocks_free": run.kv_blocks_free,
        "prefix_hit_tokens": 0, "n_preempted": 0, "n_swapped_out": 0, "n_swapped_in": 0,
        "n_waiting": run.n_waiting, "n_running": f.n_seqs, "n_swapped": run.n_swapped,
        **f.as_dict(),
    }


def _ended(counts: ReplayCounts) -> int:
    return counts.finished + counts.rejected + counts.aborted


class Progress:
    """One status line on stderr, redrawn at most twice a second."""

    def __init__(self, counts: ReplayCounts, clock):
        self.counts, self.clock = counts, clock
        self.t0 = self.last = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def update(self, final: bool = False) -> None:
        now = time.perf_counter()
        if not final and now - self.last < (0.5 if self.tty else 10.0):
            return
        self.last = now
        c, wall = self.counts, now - self.t0
        sim = self.clock.now
        line = (f"[replay] {_ended(c)}/{c.requests} requests done | {c.steps} steps | "
                f"sim {sim:,.1f} s | {c.output_tokens / sim if sim > 0 else 0:,.0f} out tok/s (sim) "
                f"| wall {wall:,.1f} s")
        end = "\n" if final or not self.tty else ""
        sys.stderr.write(("\r" if self.tty else "") + line + end)
        sys.stderr.flush()
