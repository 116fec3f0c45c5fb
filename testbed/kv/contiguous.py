"""Contiguous reservation (the pre-paging baseline, Orca / FasterTransformer): at its first
allocation a sequence reserves one run of adjacent blocks for its maximum length
(prompt + output_len), whatever it will really use. No sharing.

This shows both kinds of waste paging removes: reserved-but-unused tokens inside a run
(internal fragmentation) and free blocks split into runs too short for the next request
(external fragmentation; first fit).

How much a sequence reserves (`reservation`, the three Orca baselines of the vLLM paper):
`exact` its own maximum, prompt + output_len (Orca Oracle: a replayed trace knows each
output length); `pow2` that rounded up to a power of two (Orca Pow2); `max` the model's
`max_model_len` for every request (Orca Max).
"""
from __future__ import annotations

import bisect

from testbed.kv.base import BlockCounts, KVStats, cdiv, check_pool_sizes, too_big_reason
from testbed.kv.host import HostPool
from testbed.request import Sequence


RESERVATIONS = ("exact", "pow2", "max")


class ContiguousKVManager(BlockCounts):
    def __init__(self, num_blocks: int, block_size: int = 16, num_host_blocks: int = 0,
                 reservation: str = "exact", max_model_len: int | None = None):
        check_pool_sizes(num_blocks, block_size, num_host_blocks)
        if reservation not in RESERVATIONS:
            raise ValueError(f"unknown contiguous reservation {reservation!r}; choose one of: "
                             f"{', '.join(RESERVATIONS)}")
        if reservation == "max" and not (max_model_len and max_model_len >= 1):
            raise ValueError(f"reservation 'max' needs max_model_len >= 1, got {max_model_len}")
        self.reservation = reservation
        self.max_model_len = max_model_len
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_host_blocks = num_host_blocks
        self._run_starts = [0]  # free runs, sorted by start
        self._run_lengths = {0: num_blocks}
        self._num_used = 0
        self._host = HostPool(num_host_blocks)
        self.stats = KVStats()

    @property
    def largest_free_run(self) -> int:
        return max(self._run_lengths.values(), default=0)

    def can_ever_fit(self, seq: Sequence) -> str | None:
        return too_big_reason(seq, self._reservation(seq), self.num_blocks, self.block_size)

    def lookup(self, seq: Sequence) -> int:
        return 0

    def allocate(self, seq: Sequence, num_tokens: int) -> bool:
        if seq.block_table:
            if num_tokens > len(seq.block_table) * self.block_size:
                raise ValueError(f"sequence {seq.seq_id}: {num_tokens} tokens exceed its "
                                 f"reservation of {len(seq.block_table)} blocks")
            return True
        if not self._reserve(seq):
            return False
        if seq.num_preemptions == 0:
            self.stats.queried_tokens += seq.prompt_len
        return True

    def commit(self, seq: Sequence) -> None:
        """Nothing is shared, so nothing to register."""

    def free(self, seq: Sequence, finished: bool = False) -> None:
        self._release_all(seq)
        self._host.release(seq.seq_id)

    def swap_in(self, seq: Sequence) -> list[tuple[int, int]] | None:
        host = self._host.table(seq.seq_id)
        if seq.block_table:
            raise ValueError(f"sequence {seq.seq_id} is swapped out but holds device blocks")
        if not self._reserve(seq):
            return None
        pairs = list(zip(host, seq.block_table))
        self._host.release(seq.seq_id)
        self.stats.swapped_in_blocks += len(pairs)
        return pairs

    def _reservation(self, seq: Sequence) -> int:
        """Blocks reserved for `seq` (never fewer than its own maximum needs)."""
        tokens = seq.max_tokens
        if self.reservation == "pow2":
            tokens = 1 << (tokens - 1).bit_length()
            if self.max_model_len:
                tokens = max(min(tokens, self.max_model_len), seq.max_tokens)
        elif self.reservation == "max":
            tokens = max(self.max_model_len, tokens)
        return cdiv(tokens, self.block_size)

    def _reserve(self, seq: Sequence) -> bool:
        """First fit: the lowest free run long enough for the whole reservation."""
        need = self._reservation(seq)
        for start in self._run_starts:
            length = self._run_lengths[start]
            if length >= need:
                break
        else:
            return False
        del self._run_lengths[start]
        self._run_starts.remove(start)
        if length > need:
            bisect.insort(self._run_starts, start + need)
            self._run_lengths[start + need] = length - need
        seq.block_table[:] = range(start, start + need)
        self._num_used += need
        self.stats.allocated_blocks += need
        self.stats.peak_used_blocks = max(self.stats.peak_used_blocks, self._num_used)
        return True

    def _release_all(self, seq: Sequence, finished: bool = False) -> None:
        """Give the run back, merged with free neighbours."""
        table = seq.block_table
        if not table:
            return
        start, length = table[0], len(table)
        table.clear()
        self._num_used -= length
        self.stats.freed_blocks += length
        i = bisect.bisect_left(self._run_starts, start)
        after = start + length
        if after in self._run_lengths:  # the next free run starts right after ours
            length += self._run_lengths.pop(after)
            del self._run_starts[i]
        if i and (before := self._run_starts[i - 1]) + self._run_lengths[before] == start:
            self._run_lengths[before] += length
        else:
            self._run_starts.insert(i, start)
            self._run_lengths[start] = length
