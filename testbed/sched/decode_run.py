"""Fast-forward: many plain decode steps taken at once.

When nothing can be admitted and every running sequence is decoding, the coming steps
differ only in that each context grows by one token per step and sequences leave as they
reach their output length. A `DecodeRun` describes those steps from the scheduler's state
now; the engine prices as many of them as it wants, and the scheduler applies them in one go
(`BaseScheduler.plan_decodes` / `apply_decodes`), the KV manager doing the same block work
as step-by-step calls would (`testbed.kv.decode`).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from testbed.kv.decode import new_block_steps
from testbed.request import Sequence


@dataclass(slots=True)
class DecodeRun:
    """Up to `max_steps` decode steps of `seqs` (in scheduling order), starting now.

    Sequence i has computed `computed[i]` tokens, holds `num_blocks[i]` KV blocks and decodes
    `remaining[i]` more tokens, the last of them ending it for `reasons[i]`."""

    seqs: list[Sequence]
    computed: list[int]
    remaining: list[int]  # each >= 1
    num_blocks: list[int]
    reasons: list[str]
    token: int  # the token every decode samples
    max_steps: int

    def shapes(self) -> Iterator[tuple[int, int]]:
        """(decodes, summed decode context) of each step in turn: sequence i decodes in step j
        while j < remaining[i], attending to computed[i] + j + 1 keys."""
        leaving: dict[int, list[int]] = {}  # step after which they leave -> [count, sum of computed]
        for c, r in zip(self.computed, self.remaining):
            entry = leaving.setdefault(r, [0, 0])
            entry[0] += 1
            entry[1] += c
        n = len(self.seqs)
        context = sum(self.computed) + n
        for j in range(1, self.max_steps + 1):
            yield n, context
            if j in leaving:
                count, computed = leaving[j]
                n -= count
                context -= computed + count * j
            context += n


def steps_within_blocks(run: DecodeRun, free_blocks: int, block_size: int) -> int:
    """How many steps of `run` find every new KV block they need among `free_blocks`
    (blocks freed by sequences that end during the run are not counted on)."""
    block_steps = [new_block_steps(c, b, r, block_size)
                   for c, b, r in zip(run.computed, run.num_blocks, run.remaining)]
    if sum(len(steps) for steps in block_steps) <= free_blocks:
        return run.max_steps
    return min(run.max_steps, sorted(j for steps in block_steps for j in steps)[free_blocks])
