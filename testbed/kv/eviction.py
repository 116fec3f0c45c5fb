"""Which unused cached block to drop first: LRU, LFU or FIFO.

A policy is just an ordering key over a block's counters; `Evictor` keeps the evictable
blocks ordered by (key, arrival), smallest first. Blocks often become evictable in key order
(under LRU a released block is the most recently used), so those go to the back of a queue in
O(1); only out-of-order ones go into a heap, and `pop` takes the smaller of the two heads.
Blocks leave lazily: `discard` only marks the entry stale, and stale entries are skipped on
`pop` (and swept when they pile up).
"""
from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from operator import attrgetter

from testbed.kv.block import Block

EVICTION_KEYS: dict[str, Callable[[Block], object]] = {
    "lru": attrgetter("last_access"),
    "lfu": attrgetter("hits", "last_access"),  # fewest hits, then least recently used
    "fifo": attrgetter("inserted"),  # first into the cache, whatever happened since
}


class Evictor:
    def __init__(self, policy: str = "lru"):
        if policy not in EVICTION_KEYS:
            raise ValueError(f"unknown eviction policy {policy!r}; choose one of: "
                             f"{', '.join(EVICTION_KEYS)}")
        self.policy = policy
        self._key = EVICTION_KEYS[policy]
        self._queue: deque[tuple[object, int, Block]] = deque()  # (key, entry) ascending
        self._heap: list[tuple[object, int, Block]] = []  # entries that came out of order
        self._next_entry = 0
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __contains__(self, block: Block) -> bool:
        return block.evict_entry >= 0

    def add(self, block: Block) -> None:
        """Make `block` evictable, ordered by the policy's key as of now."""
        self.add_all((block,))

    def add_all(self, blocks) -> None:
        """`add` each of `blocks`, in order."""
        key_of, queue, heap = self._key, self._queue, self._heap
        entry = self._next_entry
        last = queue[-1][0] if queue else None
        for block in blocks:
            if block.evict_entry >= 0:
                raise ValueError(f"block {block.block_id} is already evictable")
            block.evict_entry = entry
            key = key_of(block)
            if last is None or key >= last:
                queue.append((key, entry, block))
                last = key
            else:
                heapq.heappush(heap, (key, entry, block))
            entry += 1
        self._len += entry - self._next_entry
        self._next_entry = entry
        if len(queue) + len(heap) > 2 * self._len + 64:
            self._sweep()

    def discard(self, block: Block) -> None:
        """Take `block` out (it is in use again); no-op if it is not evictable."""
        if block.evict_entry >= 0:
            block.evict_entry = -1
            self._len -= 1

    def pop(self) -> Block:
        """Remove and return the block to evict first."""
        return self.pop_many(1)[0]

    def pop_many(self, count: int) -> list[Block]:
        """Remove and return the `count` blocks to evict first, first first."""
        if count > self._len:
            raise IndexError(f"{count} blocks to evict, {self._len} evictable")
        queue, heap, out = self._queue, self._heap, []
        while len(out) < count:
            if heap and (not queue or heap[0] < queue[0]):
                _, entry, block = heapq.heappop(heap)
            else:
                _, entry, block = queue.popleft()
            if block.evict_entry == entry:
                block.evict_entry = -1
                out.append(block)
        self._len -= count
        return out

    def _sweep(self) -> None:
        """Drop the stale entries."""
        self._queue = deque(e for e in self._queue if e[2].evict_entry == e[1])
        self._heap = [e for e in self._heap if e[2].evict_entry == e[1]]
        heapq.heapify(self._heap)
