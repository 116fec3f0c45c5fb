"""Paged KV blocks (vLLM): a sequence holds `ceil(tokens / block_size)` blocks, taken on demand.

`PagedKVManager` does no sharing. It is also the base of the prefix-caching managers, which
fill in `_match` (cached blocks a new sequence can reuse), `commit` and `_on_unused` (what
happens to a block nobody uses any more).
"""
from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate

from testbed.kv.base import BlockCounts, KVStats, cdiv, check_pool_sizes, too_big_reason
from testbed.kv.block import Block
from testbed.kv.decode import advance_decodes_stepwise, fill_steps, new_block_steps
from testbed.kv.host import HostPool
from testbed.request import Sequence


class PagedKVManager(BlockCounts):
    def __init__(self, num_blocks: int, block_size: int = 16, num_host_blocks: int = 0):
        check_pool_sizes(num_blocks, block_size, num_host_blocks)
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_host_blocks = num_host_blocks
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free = list(range(num_blocks - 1, -1, -1))  # uncached unused blocks; pop() gives 0 first
        self._host = HostPool(num_host_blocks)
        self._num_used = 0
        self._tick = 0  # logical clock for eviction order
        self.stats = KVStats()

    def can_ever_fit(self, seq: Sequence) -> str | None:
        return too_big_reason(seq, cdiv(seq.max_tokens, self.block_size), self.num_blocks,
                              self.block_size)

    def lookup(self, seq: Sequence) -> int:
        return len(self._match(seq)) * self.block_size

    def allocate(self, seq: Sequence, num_tokens: int) -> bool:
        table = seq.block_table
        if table or seq.num_computed_tokens:
            need = -(-num_tokens // self.block_size) - len(table)
            if need <= 0:
                return True
            if need > self.num_blocks - self._num_used:
                return False
            self._extend(table, need)
            return True
        hits = self._match(seq)
        need = cdiv(num_tokens, self.block_size) - len(hits)
        if need < 0:
            raise ValueError(f"sequence {seq.seq_id}: allocate({num_tokens}) covers less than its "
                             f"{len(hits) * self.block_size} cached tokens")
        unused_hits = sum(1 for b in hits if b.ref_count == 0)  # they stop counting as free
        if need > self.num_blocks - self._num_used - unused_hits:
            return False
        for block in hits:
            self._acquire(block)
            block.hits += 1
            table.append(block.block_id)
        self._extend(table, need)
        self._on_admitted(seq, len(hits))
        if seq.num_preemptions == 0:
            self.stats.queried_tokens += seq.prompt_len
            self.stats.hit_tokens += len(hits) * self.block_size
        return True

    def commit(self, seq: Sequence) -> None:
        """Nothing to register without a prefix cache."""

    def advance_decodes(self, seqs: list[Sequence], computed: list[int], remaining: list[int],
                        num_steps: int) -> tuple[list[int], list[int]]:
        """`testbed.kv.decode.advance_decodes` in bulk. Between two sequences that end, a run
        only takes blocks and indexes full ones, which do not interact unless a full block
        finds its content already indexed: so each stretch takes its blocks at once, in the
        order the steps would, then indexes its full blocks at once, in order; a run where
        some content is already indexed goes call by call."""
        indexing = self._fills_to_index(seqs, computed, remaining, num_steps)
        if indexing is None:
            return advance_decodes_stepwise(self, seqs, computed, remaining, num_steps)
        bs = self.block_size
        # (step, sequence index) of each block to open, each to index and each end, in order
        opens = []
        for i, (seq, c, r) in enumerate(zip(seqs, computed, remaining)):
            steps = new_block_steps(c, len(seq.block_table), r if r < num_steps else num_steps, bs)
            if steps:
                opens += [(j, i) for j in steps]
        opens.sort()
        fills = sorted((j, i) for i in indexing
                       for j in fill_steps(computed[i], remaining[i], num_steps, bs))
        ends = sorted((r - 1, i) for i, r in enumerate(remaining) if r <= num_steps)
        opened = [0] * num_steps
        for j, _ in opens:
            opened[j] += 1
        used = list(accumulate(opened, initial=self._num_used))[1:]
        taken = indexed = 0
        for end, k in ends:  # settle the stretch before the blocks of who ends go
            n, m = bisect_right(opens, (end, len(seqs))), bisect_right(fills, (end, k))
            self._open_and_fill(seqs, computed, opens[taken:n], fills[indexed:m])
            taken, indexed = n, m
            self._settle(seqs[k], (computed[k] + remaining[k]) // bs)
            freed = self._num_used
            self.free(seqs[k], finished=True)
            freed -= self._num_used
            used[end + 1:] = [u - freed for u in used[end + 1:]]
        self._open_and_fill(seqs, computed, opens[taken:], fills[indexed:])
        for seq, c, r in zip(seqs, computed, remaining):
            if r > num_steps:
                self._settle(seq, (c + num_steps) // bs)
        return used, [self.num_blocks - u for u in used]

    def _open_and_fill(self, seqs: list[Sequence], computed: list[int],
                       opens: list[tuple[int, int]], fills: list[tuple[int, int]]) -> None:
        """Hand out the blocks of `opens` and index the full ones of `fills` ((step, sequence
        index) each, in order) of a run."""
        self._hand_out([seqs[i].block_table for _, i in opens])
        if fills:
            bs = self.block_size
            self._index_filled([(seqs[i], (computed[i] + j + 1) // bs) for j, i in fills])

    def free(self, seq: Sequence, finished: bool = False) -> None:
        self._release_all(seq, finished)
        self._host.release(seq.seq_id)
        self._forget(seq)

    def swap_in(self, seq: Sequence) -> list[tuple[int, int]] | None:
        host = self._host.table(seq.seq_id)
        if seq.block_table:
            raise ValueError(f"sequence {seq.seq_id} is swapped out but holds device blocks")
        if len(host) > self.num_blocks - self._num_used:
            return None
        self._extend(seq.block_table, len(host))
        self._host.release(seq.seq_id)
        self._on_swapped_in(seq)
        self.stats.swapped_in_blocks += len(host)
        return list(zip(host, seq.block_table))

    # -- block life cycle ------------------------------------------------------------------

    def _extend(self, table: list[int], count: int) -> None:
        table.extend(self._take_fresh(count))

    def _hand_out(self, tables: list[list[int]]) -> None:
        """One fresh block to the end of each of `tables` (one may come more than once), in order."""
        for table, block_id in zip(tables, self._take_fresh(len(tables))):
            table.append(block_id)

    def _take_fresh(self, count: int) -> list[int]:
        """Ids of `count` blocks for fresh content, now held once and counted as used."""
        if count > self.num_blocks - self._num_used:
            raise RuntimeError(f"{count} KV blocks to hand out, {self.num_blocks - self._num_used} free")
        block_ids = self._take_blocks(count)
        self._num_used += count
        self.stats.allocated_blocks += count
        if self._num_used > self.stats.peak_used_blocks:
            self.stats.peak_used_blocks = self._num_used
        return block_ids

    def _acquire(self, block: Block) -> None:
        if block.ref_count == 0:
            self._num_used += 1
            if self._num_used > self.stats.peak_used_blocks:
                self.stats.peak_used_blocks = self._num_used
        block.ref_count += 1

    def _release(self, block: Block) -> None:
        block.ref_count -= 1
        if block.ref_count == 0:
            self._num_used -= 1
            self.stats.freed_blocks += 1
            self._tick += 1
            block.last_access = self._tick
            self._on_unused(block)

    def _release_all(self, seq: Sequence, finished: bool = False) -> None:
        """`_release` every block of `seq`, tail first: under LRU a sequence's last blocks (the
        least shared) go before its prefix. `finished`: `seq` will never run again."""
        self._release_ids(reversed(seq.block_table))
        seq.block_table.clear()

    def _release_ids(self, block_ids) -> None:
        """`_release` the blocks `block_ids`, in order."""
        unused, tick = [], self._tick
        for block in map(self.blocks.__getitem__, block_ids):
            block.ref_count -= 1
            if not block.ref_count:
                tick += 1
                block.last_access = tick
                unused.append(block)
        self._tick = tick
        self._num_used -= len(unused)
        self.stats.freed_blocks += len(unused)
        self._on_all_unused(unused)

    # -- hooks for the prefix-caching managers ---------------------------------------------

    def _match(self, seq: Sequence) -> list[Block]:
        """Cached blocks holding the leading full blocks of `seq`, as many as may be reused."""
        return []

    def _take_blocks(self, count: int) -> list[int]:
        """Ids of `count` unused blocks for fresh content, each now held once (callers checked
        that they exist)."""
        free, blocks = self._free, self.blocks
        block_ids = free[len(free) - count:]
        del free[len(free) - count:]
        block_ids.reverse()
        for block_id in block_ids:
            blocks[block_id].ref_count = 1
        return block_ids

    def _on_unused(self, block: Block) -> None:
        self._free.append(block.block_id)

    def _on_all_unused(self, blocks: list[Block]) -> None:
        """`_on_unused` of each of `blocks`, in order."""
        self._free.extend([block.block_id for block in blocks])

    def _fills_to_index(self, seqs: list[Sequence], computed: list[int], remaining: list[int],
                        num_steps: int) -> list[int] | None:
        """Which sequences of a run (by index) have the blocks they fill up indexed as they
        fill; None when one of those blocks would find its content already indexed."""
        return []

    def _index_filled(self, filled: list[tuple[Sequence, int]]) -> None:
        """Commit each (sequence, its first n blocks), in order."""

    def _settle(self, seq: Sequence, full: int) -> None:
        """A run left the first `full` blocks of `seq` computed (and indexed, where due)."""

    def _on_admitted(self, seq: Sequence, num_cached_blocks: int) -> None:
        """`seq` just got its first blocks, the first `num_cached_blocks` of them from the cache."""

    def _on_swapped_in(self, seq: Sequence) -> None:
        """`seq` got fresh device blocks holding its swapped-in content."""

    def _forget(self, seq: Sequence) -> None:
        """Drop whatever is remembered about `seq` (it holds no block any more)."""
