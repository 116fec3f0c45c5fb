"""The KV work of a run of plain decode steps (the simulator's fast-forward), at once.

Sequence i of a run (in scheduling order) has computed `computed[i]` tokens and decodes one
token per step until it ends after `remaining[i]` steps. Step by step, each step first
allocates a block for every sequence whose next token opens one (`allocate`), then, after
the step, commits the blocks that filled up and frees the sequences that end (`commit`,
`free`), in scheduling order. `decode_events` lists the steps where that does anything;
`advance_decodes` makes those calls, through a manager's own bulk `advance_decodes` where it
has one. Every computed block must already be committed, as after a step that scheduled
each sequence.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import repeat

from testbed.request import Sequence


@dataclass(slots=True)
class StepEvents:
    """Step `step` of a run: the sequences that need a block before it (`allocate`) and
    those whose update after it commits a full block or ends them (`update`), by index."""

    step: int
    allocate: list[int]
    update: list[int]


def new_block_steps(computed: int, num_blocks: int, remaining: int, block_size: int) -> range:
    """Steps of a run in which a decoding sequence needs one more KV block: its next token
    falls past the `num_blocks` it holds."""
    return range(num_blocks * block_size - computed, remaining, block_size)


def fill_steps(computed: int, remaining: int, num_steps: int, block_size: int) -> range:
    """Steps among the first `num_steps` of a run after which a decoding sequence's newest
    block is full (its token of that step is the block's last)."""
    return range(block_size - 1 - computed % block_size, min(remaining, num_steps), block_size)


def decode_events(num_blocks: list[int], computed: list[int], remaining: list[int], num_steps: int,
                  block_size: int) -> list[StepEvents]:
    """The steps among the first `num_steps` of a run that allocate, commit or free, in order."""
    allocate: dict[int, list[int]] = defaultdict(list)
    update: dict[int, list[int]] = defaultdict(list)
    for i, (b, c, r) in enumerate(zip(num_blocks, computed, remaining)):
        stop = min(r, num_steps)
        for j in new_block_steps(c, b, stop, block_size):
            allocate[j].append(i)
        last = r - 1 if r <= num_steps else num_steps  # its last step's update comes below
        for j in fill_steps(c, last, num_steps, block_size):
            update[j].append(i)
        if r <= num_steps:
            update[r - 1].append(i)
    return [StepEvents(j, allocate.get(j, []), update.get(j, []))
            for j in sorted(allocate.keys() | update.keys())]


def advance_decodes(kv, seqs: list[Sequence], computed: list[int], remaining: list[int],
                    num_steps: int) -> tuple[list[int], list[int]]:
    """Make the `allocate` / `commit` / `free` calls of `num_steps` decode steps of `seqs`
    (see the module docstring). Returns, per step, the blocks used and free once its
    allocations were made. The sequences' tokens must already be appended; their
    `num_computed_tokens` is left as the calls leave it."""
    bulk = getattr(kv, "advance_decodes", None)
    if bulk is not None:
        return bulk(seqs, computed, remaining, num_steps)
    return advance_decodes_stepwise(kv, seqs, computed, remaining, num_steps)


def advance_decodes_stepwise(kv, seqs: list[Sequence], computed: list[int], remaining: list[int],
                             num_steps: int) -> tuple[list[int], list[int]]:
    """`advance_decodes` through the manager's public calls, one event at a time."""
    used: list[int] = []
    free: list[int] = []
    events = decode_events([len(s.block_table) for s in seqs], computed, remaining, num_steps,
                           kv.block_size)
    for events_of_step in events:
        j = events_of_step.step
        used += repeat(kv.num_used_blocks, j - len(used))
        free += repeat(kv.num_free_blocks, j - len(free))
        for i in events_of_step.allocate:
            if not kv.allocate(seqs[i], computed[i] + j + 1):
                raise RuntimeError(f"decode run: no KV block for sequence {seqs[i].seq_id} at "
                                   f"step {j}, though the run was planned within the free blocks")
        used.append(kv.num_used_blocks)
        free.append(kv.num_free_blocks)
        for i in events_of_step.update:
            seq = seqs[i]
            seq.num_computed_tokens = computed[i] + j + 1
            kv.commit(seq)
            if remaining[i] == j + 1:
                kv.free(seq, finished=True)
    used += repeat(kv.num_used_blocks, num_steps - len(used))
    free += repeat(kv.num_free_blocks, num_steps - len(free))
    return used, free
