"""The scheduler seam and what every policy shares.

One step: running sequences first (each gets its next chunk or decode token, preempting the
least important unscheduled running sequence when the KV pool is full), then, if nothing was
preempted, waiting sequences from the head of the queue while the token budget, the sequence
cap and the KV pool allow. `update` then applies the step's tokens. Policies differ in the
order of the waiting queue (`_make_waiting_queue`, `_order_waiting`), the order of the
running list (`_order_running`; its last unscheduled member is the preemption victim) and
how much KV an admission reserves, so each policy file is short.

Preemption by recompute frees a sequence's blocks and resets it to zero computed tokens
(its generated tokens are kept and recomputed like prompt); by swap it moves the blocks to
the host pool (recompute when that is full). Either way it goes back to the *front* of the
waiting queue (to its rank, in queues ordered by a key). A step never both swaps out and
swaps in, so the executor's block copies (all swap-outs, then all swap-ins) cannot
overwrite a host block still to be read.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import repeat
from typing import Protocol

from testbed.kv.base import KVManager
from testbed.kv.decode import advance_decodes
from testbed.plan import ScheduledSeq, StepPlan, StepResult
from testbed.registry import Registry
from testbed.request import Sequence, SeqStatus
from testbed.sched.config import SchedulerConfig
from testbed.sched.decode_run import DecodeRun, steps_within_blocks
from testbed.sched.queues import FifoQueue

RUNNING, WAITING, SWAPPED = SeqStatus.RUNNING, SeqStatus.WAITING, SeqStatus.SWAPPED
NO_LIMIT = 1 << 62  # a horizon without a policy bound


class Scheduler(Protocol):
    kv: KVManager

    def add(self, seq: Sequence, now: float) -> None:
        """Queue a new sequence; one that can never be served is rejected (reported by `update`)."""

    def schedule(self, now: float) -> StepPlan: ...

    def update(self, plan: StepPlan, result: StepResult, now: float) -> list[Sequence]:
        """Apply a step's result; return the sequences that ended since the last call."""

    def abort(self, seq_id: int, now: float) -> Sequence | None: ...

    def finish(self, seq_id: int, now: float, status: SeqStatus = SeqStatus.FINISHED,
               reason: str = "stop") -> Sequence | None: ...

    @property
    def num_waiting(self) -> int: ...

    @property
    def num_running(self) -> int: ...

    @property
    def num_swapped(self) -> int: ...

    @property
    def has_unfinished(self) -> bool: ...


SCHEDULERS: Registry[Scheduler] = Registry("scheduler")


@dataclass(slots=True)
class StepBuilder:
    """The plan of the step being scheduled and what is left of its budgets."""

    now: float
    tokens_left: int
    seqs_left: int
    plan: StepPlan = field(default_factory=StepPlan)
    scheduled_ids: set[int] = field(default_factory=set)

    @property
    def has_room(self) -> bool:
        return self.tokens_left > 0 and self.seqs_left > 0

    @property
    def preempted_any(self) -> bool:
        return bool(self.plan.preempted or self.plan.swap_out)

    def add(self, seq: Sequence, num_new_tokens: int) -> None:
        self.plan.scheduled.append(ScheduledSeq(seq, num_new_tokens))
        self.tokens_left -= num_new_tokens
        self.seqs_left -= 1
        self.scheduled_ids.add(seq.seq_id)


class BaseScheduler:
    """vLLM-v1-style budgeted scheduling; the policies subclass it and override its hooks."""

    chunked_prefill: bool | None = None  # None: follow config.enable_chunked_prefill

    def __init__(self, config: SchedulerConfig, kv: KVManager):
        self.config = config
        self.kv = kv
        self.chunked = (config.enable_chunked_prefill if self.chunked_prefill is None
                        else self.chunked_prefill)
        self.waiting = self._make_waiting_queue()  # WAITING and SWAPPED sequences
        self.running: list[Sequence] = []
        self._num_swapped = 0
        self._live: dict[int, Sequence] = {}
        self._done: list[Sequence] = []  # ended since the last update()
        self._in_flight: set[int] = set()  # scheduled by the last schedule(), until its update()
        # Aborted while in flight: the executor still reads their blocks, freed at update().
        self._free_after_step: list[Sequence] = []
        # Whether the last step scheduled every sequence running now (so each has its computed
        # blocks committed): a run of decode steps starts only then.
        self._all_running_scheduled = False

    # -- the Scheduler protocol ----------------------------------------------------------------

    @property
    def num_waiting(self) -> int:
        return len(self.waiting) - self._num_swapped

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_swapped(self) -> int:
        return self._num_swapped

    @property
    def has_unfinished(self) -> bool:
        """True while a sequence is live or an ended one is still to be reported by `update`."""
        return bool(self._live or self._done)

    def add(self, seq: Sequence, now: float) -> None:
        self._check_new(seq)
        reason = self._rejection_reason(seq)
        if reason:
            self._end(seq, SeqStatus.REJECTED, reason, now)
            return
        self._live[seq.seq_id] = seq
        self._on_add(seq, now)
        self.waiting.push(seq)

    def schedule(self, now: float) -> StepPlan:
        step = StepBuilder(now, self.config.max_num_batched_tokens, self.config.max_num_seqs)
        self._schedule_step(step)
        self._in_flight = step.scheduled_ids
        return step.plan

    def update(self, plan: StepPlan, result: StepResult, now: float) -> list[Sequence]:
        for seq in self._free_after_step:
            self.kv.free(seq, finished=True)
        self._free_after_step.clear()
        self._in_flight = set()
        tokens, commit = result.tokens, self.kv.commit
        finished_any, still_running = False, 0
        for item in plan.scheduled:
            seq = item.seq
            if seq.status is not RUNNING:  # aborted since schedule()
                continue
            seq.num_computed_tokens += item.num_new_tokens
            if seq.num_computed_tokens < seq.request.prompt_len + len(seq.output_token_ids):
                commit(seq)
                still_running += 1
                continue
            token = tokens.get(seq.seq_id)
            if token is None:
                raise ValueError(f"step result has no token for sequence {seq.seq_id} "
                                 f"(request {seq.request.request_id!r}), which sampled this step")
            seq.output_token_ids.append(token)
            if seq.first_token_s is None:
                seq.first_token_s = now
            seq.token_times.append(now)
            commit(seq)
            sampling = seq.request.sampling
            if not sampling.ignore_eos and token in sampling.stop_token_ids:
                self._finish(seq, "stop", now)
                finished_any = True
            elif len(seq.output_token_ids) >= seq.request.output_len:
                self._finish(seq, "length", now)
                finished_any = True
            else:
                still_running += 1
        if finished_any:
            self.running = [s for s in self.running if s.status is RUNNING]
        self._all_running_scheduled = still_running == len(self.running)
        done, self._done = self._done, []
        return done

    def abort(self, seq_id: int, now: float) -> Sequence | None:
        return self.finish(seq_id, now, SeqStatus.ABORTED, "aborted")

    def finish(self, seq_id: int, now: float, status: SeqStatus = SeqStatus.FINISHED,
               reason: str = "stop") -> Sequence | None:
        """End a live sequence early: aborted by its client, or finished by a stop the
        engine saw outside `update` (a stop string, a stop token read back late). Its blocks
        are freed and the next `update` reports it."""
        seq = self._live.get(seq_id)
        if seq is None:
            return None
        if seq.status is RUNNING:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
            if seq.status is SWAPPED:
                self._num_swapped -= 1
        if seq.seq_id in self._in_flight:
            self._free_after_step.append(seq)
        else:
            self.kv.free(seq, finished=True)
        self._end(seq, status, reason, now)
        return seq

    # -- fast-forward: many plain decode steps at once (testbed.sched.decode_run) ---------------

    def plan_decodes(self, now: float, token: int) -> DecodeRun | None:
        """The coming steps as a run of plain decodes of every running sequence, each sampling
        `token`; None when the next step would be anything else (an admission, a prefill
        chunk, a preemption, a sequence left out of the batch). Like a step's schedule, it
        first puts the running list in scheduling order."""
        running, config = self.running, self.config
        if (not running or self._free_after_step or not self._all_running_scheduled
                or len(running) > min(config.max_num_seqs, config.max_num_batched_tokens)):
            return None
        horizon = self._decode_horizon(now)
        if horizon < 1:
            return None
        for seq in running:
            if (not seq.output_token_ids or seq.num_computed_tokens
                    != seq.request.prompt_len + len(seq.output_token_ids) - 1):
                return None  # not decoding (or a recompute still to finish)
        self._order_running()
        running, bs = list(self.running), self.kv.block_size
        computed, remaining, num_blocks, reasons = [], [], [], []
        new_blocks = 0  # that the whole run would open
        for seq in running:
            request, c, b = seq.request, seq.num_computed_tokens, len(seq.block_table)
            sampling = request.sampling
            if not sampling.ignore_eos and token in sampling.stop_token_ids:
                r, reason = 1, "stop"
            else:
                r, reason = max(1, request.output_len - len(seq.output_token_ids)), "length"
            computed.append(c)
            remaining.append(r)
            num_blocks.append(b)
            reasons.append(reason)
            if c + r > b * bs:
                new_blocks += (c + r - 1) // bs + 1 - b
        run = DecodeRun(running, computed, remaining, num_blocks, reasons, token,
                        min(horizon, max(remaining)))
        if new_blocks > self.kv.num_free_blocks:
            run.max_steps = steps_within_blocks(run, self.kv.num_free_blocks, bs)
        return run if run.max_steps > 0 else None

    def apply_decodes(self, run: DecodeRun, ends: list[float]) -> tuple[list[Sequence], list[int], list[int]]:
        """Apply the first `len(ends)` steps of `run`, step j ending at `ends[j]`, as that many
        `schedule`/`update` rounds would: the same KV calls in the same order, the same tokens,
        times and ends. Returns the sequences that ended (in the order the updates would have
        reported them) and, per step, the KV blocks used and free once it was scheduled."""
        seqs, computed, remaining, num_steps = run.seqs, run.computed, run.remaining, len(ends)
        steps = [r if r < num_steps else num_steps for r in remaining]
        # Tokens first: a block's content key reads only its own tokens.
        for seq, n in zip(seqs, steps):
            seq.output_token_ids.extend(repeat(run.token, n))
            seq.token_times.extend(ends[:n])
        used, free = advance_decodes(self.kv, seqs, computed, remaining, num_steps)
        for seq, c, n in zip(seqs, computed, steps):
            seq.num_computed_tokens = c + n
        for r, i in sorted((r, i) for i, r in enumerate(remaining) if r <= num_steps):
            self._on_finish(seqs[i])  # its blocks were freed by advance_decodes
            self._end(seqs[i], SeqStatus.FINISHED, run.reasons[i], ends[r - 1])
        self.running = [s for s in self.running if s.status is RUNNING]
        self._all_running_scheduled = True
        self._after_decodes(run, ends)
        done, self._done = self._done, []
        return done, used, free

    # -- building blocks of a step -------------------------------------------------------------

    def _schedule_step(self, step: StepBuilder) -> None:
        """Fill the step: running sequences first, then (if nobody was preempted) waiting ones."""
        self._order_running()
        self._schedule_running(step)
        if not step.preempted_any:
            self._order_waiting()
            self._schedule_waiting(step)

    def _schedule_running(self, step: StepBuilder) -> None:
        for seq in list(self.running):  # preemption removes victims while we walk
            if not step.has_room:
                break
            if seq.status is RUNNING:
                self._run(seq, step)

    def _schedule_waiting(self, step: StepBuilder) -> None:
        while self.waiting and step.has_room and self._can_hold_more():
            if not self._admit_next(step):
                break

    def _run(self, seq: Sequence, step: StepBuilder) -> None:
        """Give a running sequence its next chunk (or decode token), if KV can be found for it."""
        computed = seq.num_computed_tokens
        n = min(seq.request.prompt_len + len(seq.output_token_ids) - computed, step.tokens_left)
        if self.kv.allocate(seq, computed + n) or self._reserve(seq, computed + n, step):
            step.add(seq, n)

    def _admit_next(self, step: StepBuilder) -> bool:
        """Start (or swap back in) the head of the waiting queue; False if it has to wait."""
        seq = self.waiting.pop()
        admitted = self._resume(seq, step) if seq.status is SWAPPED else self._admit(seq, step)
        if not admitted:
            self.waiting.push_front(seq)
        return admitted

    def _admit(self, seq: Sequence, step: StepBuilder) -> bool:
        hit = self.kv.lookup(seq)
        n = self._prefill_chunk(seq.num_tokens - hit, step.tokens_left)
        if n == 0 or not self._reserve(seq, self._admission_tokens(seq, hit + n), step):
            return False
        seq.num_computed_tokens = hit
        if seq.num_preemptions == 0:
            seq.num_cached_tokens = hit
        if seq.first_scheduled_s is None:
            seq.first_scheduled_s = step.now
        seq.status = RUNNING
        self.running.append(seq)
        step.add(seq, n)
        return True

    def _resume(self, seq: Sequence, step: StepBuilder) -> bool:
        """Swap a sequence back in; it runs this step if one more block can be found too."""
        if step.plan.swap_out:
            return False
        pairs = self.kv.swap_in(seq)
        if pairs is None:
            return False
        step.plan.swap_in.extend(pairs)
        self._num_swapped -= 1
        seq.status = RUNNING
        self.running.append(seq)
        n = min(seq.num_tokens - seq.num_computed_tokens, step.tokens_left)
        if self.kv.allocate(seq, seq.num_computed_tokens + n):
            step.add(seq, n)
        return True

    def _prefill_chunk(self, remaining: int, tokens_left: int) -> int:
        """Tokens of a new prefill to run this step. Without chunked prefill a prompt runs whole
        or waits; only a recompute longer than the whole budget is split, or it could never run."""
        if self.chunked or remaining > self.config.max_num_batched_tokens:
            return min(remaining, tokens_left)
        return remaining if remaining <= tokens_left else 0

    def _reserve(self, seq: Sequence, num_tokens: int, step: StepBuilder) -> bool:
        """Allocate KV for `seq`, preempting victims while the policy offers one. False if it
        did not get the blocks (then, if it was the victim itself, it was preempted)."""
        while not self.kv.allocate(seq, num_tokens):
            victim = self._pick_victim(seq, step)
            if victim is None:
                return False
            self._preempt(victim, step)
            if victim is seq:
                return False
        return True

    def _pick_victim(self, seq: Sequence, step: StepBuilder) -> Sequence | None:
        """Who makes room for `seq`: the last running sequence not yet scheduled in this step
        (possibly `seq` itself). Admissions never preempt."""
        if seq.status is not RUNNING:
            return None
        return self._last_unscheduled(step)

    def _last_unscheduled(self, step: StepBuilder) -> Sequence | None:
        for seq in reversed(self.running):
            if seq.seq_id not in step.scheduled_ids:
                return seq
        return None

    def _preempt(self, seq: Sequence, step: StepBuilder) -> None:
        self.running.remove(seq)
        seq.num_preemptions += 1
        pairs = None
        if self.config.preemption == "swap" and not step.plan.swap_in:
            pairs = self.kv.swap_out(seq)
        if pairs is not None:
            seq.status = SWAPPED
            self._num_swapped += 1
            step.plan.swap_out.extend(pairs)
        else:
            self.kv.free(seq)
            seq.num_computed_tokens = 0
            seq.status = WAITING
            step.plan.preempted.append(seq)
        self.waiting.push_front(seq)

    def _finish(self, seq: Sequence, reason: str, now: float) -> None:
        self.kv.free(seq, finished=True)
        self._on_finish(seq)
        self._end(seq, SeqStatus.FINISHED, reason, now)

    def _end(self, seq: Sequence, status: SeqStatus, reason: str, now: float) -> None:
        seq.status, seq.reason, seq.finish_s = status, reason, now
        self._live.pop(seq.seq_id, None)
        self._done.append(seq)

    def _check_new(self, seq: Sequence) -> None:
        req = seq.request
        where = f"request {req.request_id!r} (sequence {seq.seq_id})"
        if seq.seq_id in self._live:
            raise ValueError(f"{where}: sequence id {seq.seq_id} is already in the scheduler")
        if seq.status is not WAITING or seq.block_table or seq.num_computed_tokens or seq.output_token_ids:
            raise ValueError(f"{where}: not a fresh sequence (status {seq.status.value}, "
                             f"{len(seq.output_token_ids)} outputs, {len(seq.block_table)} blocks)")
        if req.prompt_len < 1 or req.output_len < 1:
            raise ValueError(f"{where}: prompt_len and output_len must be >= 1, "
                             f"got {req.prompt_len} and {req.output_len}")
        if req.prompt_token_ids is not None and len(req.prompt_token_ids) != req.prompt_len:
            raise ValueError(f"{where}: prompt_token_ids has {len(req.prompt_token_ids)} ids "
                             f"but prompt_len is {req.prompt_len}")

    def _rejection_reason(self, seq: Sequence) -> str | None:
        c, p, o = self.config, seq.prompt_len, seq.request.output_len
        if p + o > c.max_model_len:
            return f"too long: prompt {p} + output {o} = {p + o} tokens > max_model_len {c.max_model_len}"
        if not self.chunked and p > c.max_num_batched_tokens:
            return (f"prompt of {p} tokens exceeds the step token budget "
                    f"{c.max_num_batched_tokens} and chunked prefill is off")
        return self.kv.can_ever_fit(seq)

    # -- policy hooks ----------------------------------------------------------------------------

    def _make_waiting_queue(self):
        return FifoQueue()

    def _order_running(self) -> None:
        """Put the running list in scheduling order; its tail is preempted first."""

    def _order_waiting(self) -> None:
        """Reorder the waiting queue before admissions (for orders that change every step)."""

    def _can_hold_more(self) -> bool:
        return len(self.running) < self.config.max_num_seqs

    def _admission_tokens(self, seq: Sequence, num_tokens: int) -> int:
        """Tokens to reserve KV for when admitting `seq` for its first `num_tokens`."""
        return num_tokens

    def _on_add(self, seq: Sequence, now: float) -> None:
        """A new sequence is about to be queued."""

    def _on_finish(self, seq: Sequence) -> None:
        """A sequence finished (its blocks are already free)."""

    def _decode_horizon(self, now: float) -> int:
        """How many coming steps this policy would spend decoding every running sequence (if
        they have the KV), by its own rules: 0 while a waiting or swapped sequence might be
        admitted. A policy whose choices change between such steps bounds it here."""
        return 0 if self.waiting else NO_LIMIT

    def _after_decodes(self, run: DecodeRun, ends: list[float]) -> None:
        """`apply_decodes` applied `len(ends)` steps of `run`: bring policy state up to date."""
