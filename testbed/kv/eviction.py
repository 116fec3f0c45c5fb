"""Which unused cached block to drop first: LRU, LFU or FIFO.

A policy is just an ordering key over a block's counters; `Evictor` keeps the evictable
blocks ordered by (key, arrival), smallest first. Blocks often become evictable in key order
(under LRU a released block is the most recently used), so those go to the back of a queue in
O(1); only out-of-order ones go into a heap, and `pop` takes the smaller of the two heads.
Blocks leave lazily: `discard` only marks the entry stale, and stale entries are skipped on
`pop` (and swept when they pile up).

Retired blocks (`add_retired`, LRU only) are ones nobody can use again, kept only until their
turn to be evicted comes: a run of them is one queue entry of block ids, never discarded,
taken a slice at a time. Their own counters are not kept up to date: the run knows when each
was let go. Evictions come out as block ids.
"""
from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from operator import attrgetter

from testbed.kv.block import Block

EVICTION_KEYS: dict[str, Callable[[Block], object]] = {
    "lru": attrgetter("last_access"),
    "lfu": attrgetter("hits", "last_access"),  # fewest hits, then least recently used
    "fifo": attrgetter("inserted"),  # first into the cache, whatever happened since
}


@dataclass(slots=True, eq=False)
class _Retired:
    """Blocks evicted in this order, from `block_ids[next]` on; block k was let go at tick
    `first_tick + k`."""

    block_ids: list[int]
    first_tick: int
    next: int = 0


class Evictor:
    def __init__(self, policy: str = "lru"):
        if policy not in EVICTION_KEYS:
            raise ValueError(f"unknown eviction policy {policy!r}; choose one of: "
                             f"{', '.join(EVICTION_KEYS)}")
        self.policy = policy
        self._key = EVICTION_KEYS[policy]
        # (key, entry, block or retired run) ascending; a run's key is that of its next block
        self._queue: deque[tuple[object, int, Block | _Retired]] = deque()
        self._last_key: object = None  # of the queue's last block
        self._heap: list[tuple[object, int, Block]] = []  # entries that came out of order
        self._next_entry = 0
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __contains__(self, block: Block) -> bool:
        """Whether `block` is evictable and may still be used (retired blocks are not)."""
        return block.evict_entry >= 0

    def add(self, block: Block) -> None:
        """Make `block` evictable, ordered by the policy's key as of now."""
        self.add_all((block,))

    def add_all(self, blocks) -> None:
        """`add` each of `blocks`, in order."""
        key_of, queue, heap = self._key, self._queue, self._heap
        entry, last = self._next_entry, self._last_key
        for block in blocks:
            if block.evict_entry >= 0:
                raise ValueError(f"block {block.block_id} is already evictable")
            block.evict_entry = entry
            key = key_of(block)
            if not queue or key >= last:
                queue.append((key, entry, block))
                last = key
            else:
                heapq.heappush(heap, (key, entry, block))
            entry += 1
        self._len += entry - self._next_entry
        self._next_entry, self._last_key = entry, last
        if len(queue) + len(heap) > 2 * self._len + 64:
            self._sweep()

    def add_retired(self, block_ids: list[int], first_tick: int) -> None:
        """Make blocks evictable for good under LRU: nobody will use them again, so they are
        evicted in this order as one entry and never discarded. Block k was let go at tick
        `first_tick + k` (its own `last_access` is not kept), after every block added before."""
        if self.policy != "lru":
            raise ValueError(f"retired blocks need the lru policy, not {self.policy}")
        if not block_ids:
            return
        if self._queue and first_tick <= self._last_key:
            raise ValueError(f"retired blocks let go at tick {first_tick}, before the last "
                             f"evictable block (tick {self._last_key})")
        self._queue.append((first_tick, self._next_entry, _Retired(block_ids, first_tick)))
        self._next_entry += 1
        self._last_key = first_tick + len(block_ids) - 1
        self._len += len(block_ids)

    def retired(self) -> Iterator[int]:
        """Ids of the retired blocks still to be evicted (for inspection)."""
        for _, _, item in self._queue:
            if type(item) is _Retired:
                yield from item.block_ids[item.next:]

    def discard(self, block: Block) -> None:
        """Take `block` out (it is in use again); no-op if it is not evictable."""
        if block.evict_entry >= 0:
            block.evict_entry = -1
            self._len -= 1

    def pop(self) -> int:
        """Remove the block to evict first; its id."""
        return self.pop_many(1)[0]

    def pop_many(self, count: int) -> list[int]:
        """Remove the `count` blocks to evict first; their ids, first first."""
        return self.evict(count)[0]

    def evict(self, count: int) -> tuple[list[int], list[Block]]:
        """Remove the `count` blocks to evict first: their ids, first first, and those of them
        that are not retired (in the same order)."""
        if count > self._len:
            raise IndexError(f"{count} blocks to evict, {self._len} evictable")
        queue, heap, out, kept = self._queue, self._heap, [], []
        while len(out) < count:
            if heap and (not queue or heap[0] < queue[0]):
                _, entry, block = heapq.heappop(heap)
            else:
                _, entry, item = queue[0]
                if type(item) is _Retired:
                    self._take_retired(item, count - len(out) if not heap else 1, out)
                    continue
                queue.popleft()
                block = item
            if block.evict_entry == entry:
                block.evict_entry = -1
                out.append(block.block_id)
                kept.append(block)
        self._len -= count
        return out, kept

    def _take_retired(self, run: _Retired, count: int, out: list[int]) -> None:
        """Move up to `count` block ids from the front run of the queue to `out`."""
        start = run.next
        run.next = stop = min(start + count, len(run.block_ids))
        out += run.block_ids[start:stop]
        queue = self._queue
        if stop == len(run.block_ids):
            queue.popleft()
        else:
            queue[0] = (run.first_tick + stop, queue[0][1], run)

    def _sweep(self) -> None:
        """Drop the stale entries."""
        self._queue = deque(e for e in self._queue
                            if type(e[2]) is _Retired or e[2].evict_entry == e[1])
        self._heap = [e for e in self._heap if e[2].evict_entry == e[1]]
        heapq.heapify(self._heap)
