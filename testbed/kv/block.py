"""The bookkeeping record of one device KV block."""
from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass(slots=True, eq=False)
class Block:
    """One device KV block and the counters that caching and eviction read.

    `key` is set while the block is in the prefix index (its content is reusable). Ticks
    come from the manager's logical clock, so they are unique and totally ordered. A retired
    block (`Evictor.add_retired`) keeps its counters as they were when its one holder let go
    (`ref_count` 1) until it is handed out again, to a new one holder.
    """

    block_id: int
    ref_count: int = 0
    key: Hashable | None = None
    hits: int = 0  # prefix-cache hits since it entered the cache
    last_access: int = 0  # tick of the last time a sequence let go of it
    inserted: int = 0  # tick of its entry into the cache
    # Radix-tree links (used by the radix manager only).
    parent: "Block | None" = None
    children: dict = field(default_factory=dict)
    evict_entry: int = -1  # the id of its live heap entry; -1 while not evictable
