"""Which unused cached block to drop first: LRU, LFU or FIFO.

A policy is just an ordering key over a block's counters; `Evictor` keeps the evictable
blocks in a heap by that key. Blocks leave the heap lazily: `discard` only marks the entry
stale, and stale entries are skipped on `pop` (and swept when they pile up).
"""
from __future__ import annotations

import heapq
from collections.abc import Callable

from testbed.kv.block import Block


EVICTION_KEYS: dict[str, Callable[[Block], tuple]] = {
    "lru": lambda b: (b.last_access,),
    "lfu": lambda b: (b.hits, b.last_access),  # fewest hits, then least recently used
    "fifo": lambda b: (b.inserted,),  # first into the cache, whatever happened since
}


class Evictor:
    def __init__(self, policy: str = "lru"):
        if policy not in EVICTION_KEYS:
            raise ValueError(f"unknown eviction policy {policy!r}; choose one of: "
                             f"{', '.join(EVICTION_KEYS)}")
        self.policy = policy
        self._key = EVICTION_KEYS[policy]
        self._heap: list[tuple[tuple, int, Block]] = []
        self._next_entry = 0
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __contains__(self, block: Block) -> bool:
        return block.evict_entry >= 0

    def add(self, block: Block) -> None:
        """Make `block` evictable, ordered by the policy's key as of now."""
        if block.evict_entry >= 0:
            raise ValueError(f"block {block.block_id} is already evictable")
        block.evict_entry = entry = self._next_entry
        self._next_entry += 1
        heapq.heappush(self._heap, (self._key(block), entry, block))
        self._len += 1
        if len(self._heap) > 2 * self._len + 64:
            self._heap = [e for e in self._heap if e[2].evict_entry == e[1]]
            heapq.heapify(self._heap)

    def discard(self, block: Block) -> None:
        """Take `block` out (it is in use again); no-op if it is not evictable."""
        if block.evict_entry >= 0:
            block.evict_entry = -1
            self._len -= 1

    def pop(self) -> Block:
        """Remove and return the block to evict first."""
        heap = self._heap
        while heap:
            _, entry, block = heapq.heappop(heap)
            if block.evict_entry == entry:
                block.evict_entry = -1
                self._len -= 1
                return block
        raise IndexError("no evictable block")
