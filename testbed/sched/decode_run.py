"""Fast-forward: many plain decode steps taken at once.

When nothing can be admitted and every running sequence is decoding, the coming steps
differ only in that each context grows by one token per step and sequences leave as they
reach their output length. A `DecodeRun` describes those steps from the scheduler's state
now; the engine prices as many of them as it wants in one vectorized call, and the
scheduler applies them in one go (`BaseScheduler.plan_decodes` / `apply_decodes`).

Applying a run makes the very calls a step-by-step replay would make, in the same order:
step j allocates KV for the sequences whose next token opens a new block (in scheduling
order), then its update commits newly full blocks and finishes sequences (again in order).
Only the steps where something happens cost Python work; `run_events` lists them.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from testbed.request import Sequence


@dataclass(slots=True)
class DecodeRun:
    """Up to `max_steps` decode steps of `seqs` (in scheduling order), starting now.

    Sequence i has computed `computed[i]` tokens, holds `num_blocks[i]` KV blocks and decodes
    `remaining[i]` more tokens, the last of them ending it for `reasons[i]`."""

    seqs: list[Sequence]
    computed: np.ndarray  # int64, per sequence
    remaining: np.ndarray  # int64, per sequence, >= 1
    num_blocks: list[int]
    reasons: list[str]
    token: int  # the token every decode samples
    max_steps: int

    def shape(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Decodes and summed decode context (keys attended, own token included) of steps
        `start` to `stop` - 1: sequence i decodes in step j while j < remaining[i], at
        context computed[i] + j + 1."""
        steps = np.arange(start, stop, dtype=np.int64)[:, None]
        alive = self.remaining[None, :] > steps
        n_decodes = alive.sum(axis=1)
        sum_context = np.where(alive, self.computed[None, :] + steps + 1, 0).sum(axis=1)
        return n_decodes, sum_context


def new_block_steps(computed: int, num_blocks: int, remaining: int, block_size: int) -> range:
    """Steps of a run in which a decoding sequence needs one more KV block: its next token
    falls past the `num_blocks` it holds."""
    return range(num_blocks * block_size - computed, remaining, block_size)


def steps_within_blocks(run: DecodeRun, free_blocks: int, block_size: int) -> int:
    """How many steps of `run` find every new KV block they need among `free_blocks`
    (blocks freed by sequences that end during the run are not counted on)."""
    block_steps = _block_steps(run, block_size)
    if sum(len(steps) for steps in block_steps) <= free_blocks:
        return run.max_steps
    return min(run.max_steps, sorted(j for steps in block_steps for j in steps)[free_blocks])


def _block_steps(run: DecodeRun, block_size: int) -> list[range]:
    return [new_block_steps(c, b, r, block_size) for c, b, r in
            zip(run.computed.tolist(), run.num_blocks, run.remaining.tolist())]


@dataclass(slots=True)
class StepEvents:
    """What step `step` of a run does beyond counting: KV allocations (before it runs) and
    updates (commit, and maybe finish) after it, by sequence index in scheduling order."""

    step: int
    allocate: list[int]
    update: list[int]


def run_events(run: DecodeRun, num_steps: int, block_size: int) -> list[StepEvents]:
    """The steps among the first `num_steps` of `run` that allocate, commit or finish, in order.

    Step 0 updates every sequence (its update is the first since whatever happened before the
    run, as in a normal step); later steps update a sequence when a block of it has just
    filled up (so a prefix cache may index it) or when it ends."""
    allocate: dict[int, list[int]] = defaultdict(list)
    update: dict[int, list[int]] = defaultdict(list)
    update[0] = list(range(len(run.seqs)))
    for i, (c, r, steps) in enumerate(zip(run.computed.tolist(), run.remaining.tolist(),
                                          _block_steps(run, block_size))):
        stop = min(r, num_steps)
        for j in steps:
            if j >= stop:
                break
            allocate[j].append(i)
        first_full = block_size - 1 - c % block_size  # the step whose token fills a block
        last = r - 1 if r <= num_steps else num_steps
        for j in range(first_full if first_full > 0 else block_size, last, block_size):
            update[j].append(i)
        if 0 < r - 1 < num_steps:  # it ends (after its last commit)
            update[r - 1].append(i)
    return [StepEvents(j, allocate.get(j, []), update.get(j, []))
            for j in sorted(allocate.keys() | update.keys())]
